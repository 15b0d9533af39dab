"""`--watch`, `node ps` and shell completion (ADR 63) with the real CLI against a real manager and
a real exec-runtime worker (one cluster for the module): the manager's own node keeps its tasks
"assigned", the worker runs its own, so each node has tasks of its own to list."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.fixtures.ports import free_port
from tests.integration.harness import Manager
from tests.integration.test_agent_exec import Processes
from tests.waiting import wait_for
from warren import pki, tls
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc

pytestmark = pytest.mark.integration

WORKER = "exec-worker"  # the exec agent's hostname (tests.integration.test_agent_exec.Agent)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Manager, Processes]]:
    from tests.fixtures.exec_cluster import exec_cluster

    with exec_cluster(tmp_path_factory.mktemp("cli-watch"), "cli-watch") as (manager, _agent, procs):
        wait_for(
            lambda: len([n for n in manager.cli_json("node", "ls") if n["status"] == "ready"]) == 2,  # type: ignore[union-attr]
            timeout=20,
            message="both nodes ready",
        )
        yield manager, procs


def _sleeper(procs: Processes) -> list[str]:
    return ["--", "sh", "-c", "sleep 600; exit 0", procs.marker.decode()]


class Watch:
    """`warren service ps NAME --watch` with stdout a pipe; its output read by a thread."""

    def __init__(self, manager: Manager, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "warren.cli.main", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=manager.env(),
        )
        self.text = ""
        self._chunks: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None
        threading.Thread(target=lambda: [self._chunks.put(line) for line in stdout], daemon=True).start()

    def frames(self) -> list[str]:
        while not self._chunks.empty():
            self.text += self._chunks.get()
        return [frame.split("\n", 1)[1] for frame in self.text.split("--- ")[1:] if "\n" in frame]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_service_ps_watch_redraws_on_a_scale_and_exits_0_on_ctrl_c(cluster: tuple[Manager, Processes]) -> None:
    manager, procs = cluster
    create = manager.cli("service", "create", "watched", "--image", "exec", "--detach", *_sleeper(procs))
    assert create.returncode == 0, create.stderr
    watching = Watch(manager, "service", "ps", "watched", "--watch")
    try:
        wait_for(lambda: any("watched.1" in f for f in watching.frames()), timeout=15, message="the first table")
        assert watching.frames()[0].splitlines()[0].split()[:3] == ["ID", "NAME", "NODE"]
        scale = manager.cli("service", "scale", "watched=2", "--detach")
        assert scale.returncode == 0, scale.stderr
        # Events drive the redraw: into a pipe, nothing is polled while the stream is up.
        wait_for(
            lambda: any("watched.2" in f for f in watching.frames()), timeout=15, message="a table with the new task"
        )
        watching.process.send_signal(signal.SIGINT)
        assert watching.process.wait(timeout=15) == 0
        stderr = watching.process.stderr.read() if watching.process.stderr else ""
        assert "Traceback" not in stderr and stderr.strip() == "", stderr
    finally:
        watching.stop()


def _placed(manager: Manager, service: str = "") -> dict[str, str]:
    """Every live task's node (of `service`, if given), as the manager has it (asked in-process:
    a CLI run costs ~1 s)."""
    with manager._admin_channel() as channel:
        reply = control_pb2_grpc.ControlStub(channel).ListTasks(cpb.ListTasksRequest(service=service), timeout=10)
    return {t.id: t.node_id for t in reply.tasks}


def test_node_ps_lists_exactly_the_nodes_tasks(cluster: tuple[Manager, Processes]) -> None:
    manager, procs = cluster
    # The manager's node has no agent: its tasks stay "assigned" (hence --detach).
    create = manager.cli(
        "service", "create", "spread", "--image", "exec", "--replicas", "4", "--detach", *_sleeper(procs)
    )
    assert create.returncode == 0, create.stderr
    # The create returns once the service is committed; its tasks come with the next pass.
    placed = wait_for(
        lambda: len(_placed(manager, "spread")) == 4 and (p := _placed(manager)) and all(p.values()) and p,
        message="every task placed",
    )
    nodes = {n["hostname"]: n["id"] for n in manager.cli_json("node", "ls")}  # type: ignore[union-attr]
    manager_host = next(h for h in nodes if h != WORKER)
    assert set(placed.values()) == set(nodes.values())  # both nodes have tasks

    listed = manager.cli_json("node", "ps", WORKER, manager_host)
    for host, node_id in nodes.items():
        assert {t["id"] for t in listed if t["node_id"] == node_id} == {  # type: ignore[union-attr]
            task for task, node in placed.items() if node == node_id
        }, host
    assert {t["id"] for t in listed} == set(placed)  # type: ignore[union-attr]
    quiet = manager.cli("node", "ps", WORKER, "-q")
    assert set(quiet.stdout.split()) == {task for task, node in placed.items() if node == nodes[WORKER]}

    table = manager.cli("node", "ps", WORKER, "--filter", "desired-state=running").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "IMAGE", "NODE", "DESIRED", "CURRENT", "ERROR/MESSAGE"]
    assert len(table) - 1 == len(quiet.stdout.split())
    assert all(line.split()[2:5] == ["exec", WORKER, "running"] for line in table[1:]), table
    assert manager.cli("node", "ps", WORKER, "--filter", "desired-state=shutdown", "-q").stdout == ""

    missing = manager.cli("node", "ps", "no-such-node")
    assert missing.returncode == 3 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr


# -- completion, as bash runs it ------------------------------------------------------------------
DRIVE = r"""
source "$1"
line="$2"
COMP_LINE="$line"
COMP_POINT=${#line}
read -ra COMP_WORDS <<< "$line"
[[ "$line" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_python_argcomplete warren "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def bash_completion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script `warren completion bash` prints, and a `warren` on PATH that runs this tree."""
    root = tmp_path_factory.mktemp("completion")
    script = subprocess.run(
        [sys.executable, "-m", "warren.cli.main", "completion", "bash"], capture_output=True, text=True, check=True
    ).stdout
    (root / "warren.bash").write_text(script)
    (root / "drive.sh").write_text(DRIVE)
    (root / "bin").mkdir()
    (root / "bin" / "warren").write_text(f'#!/bin/sh\nexec {sys.executable} -m warren.cli.main "$@"\n')
    (root / "bin" / "warren").chmod(0o755)
    return root


def complete(root: Path, line: str, env: dict[str, str]) -> tuple[list[str], str, float]:
    """The bash function the script registers, called as bash calls it on TAB."""
    env = {**env, "PATH": f"{root / 'bin'}:{os.environ['PATH']}"}
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(root / "drive.sh"), str(root / "warren.bash"), line],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return [w.strip() for w in done.stdout.splitlines() if w.strip()], done.stderr, time.monotonic() - started


def test_bash_completes_commands_and_live_names(cluster: tuple[Manager, Processes], bash_completion: Path) -> None:
    manager, _ = cluster
    words, err, _ = complete(bash_completion, "warren service sc", manager.env())
    assert words == ["scale"] and err == ""
    words, err, _ = complete(bash_completion, "warren service inspect ", manager.env())
    assert "watched" in words and err == "", (words, err)
    words, _, _ = complete(bash_completion, "warren node ps exec", manager.env())
    assert words == [WORKER]


@contextlib.contextmanager
def mute_manager(manager: Manager) -> Iterator[str]:
    """A server with a manager certificate of the cluster that takes every call and never answers:
    only the completion's own budget ends the wait (the call's deadline would be 10 s)."""
    ca = manager.authority()
    cert, key = ca.issue_keypair("mute-manager", pki.ROLE_MANAGER)
    released = threading.Event()

    def never(request: bytes, context: grpc.ServicerContext) -> bytes:
        released.wait(30)
        return b""

    handler = grpc.unary_unary_rpc_method_handler(never)  # raw bytes: no (de)serializer
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("warren.api.v1.Control", {"ListServices": handler})]
    )
    addr = f"127.0.0.1:{free_port()}"
    server.add_secure_port(addr, tls.server_credentials(ca.cert_pem, cert, key))
    server.start()
    try:
        yield addr
    finally:
        released.set()
        server.stop(grace=None)


def test_bash_completion_without_a_cluster_is_quick_and_quiet(
    cluster: tuple[Manager, Processes], bash_completion: Path
) -> None:
    manager, _ = cluster
    with mute_manager(manager) as addr:
        words, err, elapsed = complete(bash_completion, f"warren --manager {addr} service inspect ", manager.env())
    assert words == [] and err == ""
    assert elapsed < 8.0  # the 1 s budget and two interpreter starts, not the call's 10 s deadline
    no_config = {**manager.env(), "WARREN_CONFIG": "/nonexistent"}
    words, err, _ = complete(bash_completion, "warren service inspect ", no_config)
    assert words == [] and err == ""


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_printed_scripts_parse(shell: str, tmp_path: Path) -> None:
    binary = shutil.which(shell)
    if binary is None:
        pytest.skip(f"{shell} is not installed (cmd/install-deps.sh installs it)")
    script = tmp_path / f"warren.{shell}"
    script.write_text(
        subprocess.run(
            [sys.executable, "-m", "warren.cli.main", "completion", shell], capture_output=True, text=True, check=True
        ).stdout
    )
    checked = subprocess.run([binary, "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
