"""`warren task exec` into a containerd task (ADR 59): Tasks.Exec with stdio FIFOs, a terminal
through ResizePty, the command's exit code, a command that does not exist (127), and a caller
that goes away (the exec'd process is killed). The
module's private containerd and registry come from tests/fixtures (plugin.py); the cluster is
test_e2e_containerd's (a manager without tasks, one worker on containerd)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.containerd import ContainerdDaemon
from tests.fixtures.registry import LocalRegistry
from tests.integration.test_e2e_containerd import Cluster, containerd_cluster
from tests.integration.test_task_exec import _processes_running, _Screen, _wait_pid
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path, containerd: ContainerdDaemon, registry: LocalRegistry) -> Iterator[Cluster]:
    with containerd_cluster(tmp_path, containerd, registry) as c:
        yield c


def test_exec_in_a_containerd_task(cluster: Cluster) -> None:
    c = cluster
    c.ok("service", "create", "box", "--image", c.image, "--stop-grace-period", "1s", "--", "sleep", "1000")
    wait_for(lambda: len(c.running_tasks("box")) == 1, timeout=60, message="the task running")
    [task] = c.running_tasks("box")

    ran = c.cli("task", "exec", task, "--", "sh", "-c", "echo out; echo err >&2; cat /proc/1/cmdline; exit 5")
    assert ran.returncode == 5, ran.stderr
    assert ran.stdout == "out\nsleep\x001000\x00"  # its pid 1 is the task's: the container's namespaces
    assert ran.stderr == "err\n"

    missing = c.cli("task", "exec", task, "--", "no-such-command-xyz")
    assert missing.returncode == 127, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    # A caller that goes away: the exec'd process is killed in the container.
    cli = subprocess.Popen(
        [sys.executable, "-m", "warren.cli.main", "task", "exec", task, "--", "sh", "-c", "echo started; sleep 302"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=c.manager.env(),
    )  # fmt: skip
    try:
        assert cli.stdout is not None and cli.stdout.readline() == "started\n"
        wait_for(lambda: _processes_running("sleep 302"), timeout=10, message="the exec'd command running")
    finally:
        cli.kill()
        cli.wait()
    wait_for(lambda: not _processes_running("sleep 302"), timeout=15, message="the exec'd process to be killed")

    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(c.manager.env())
        os.execv(sys.executable, [sys.executable, "-m", "warren.cli.main", "task", "exec", "-it", task, "--", "sh"])
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        screen = _Screen(fd)
        screen.send(b"echo rea''dy\n")
        screen.expect(b"ready")
        screen.send(b"echo $((6*7)) | tr 4 X\n")
        screen.expect(b"X2")
        screen.send(b"stty size\n")
        screen.expect(b"24 80")
        screen.send(b"exit 3\n")
        _, status = _wait_pid(pid, 20)
        assert os.waitstatus_to_exitcode(status) == 3, screen.seen[-500:]
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
