"""The operator's guide, run (docs/guide/README.md says how): every `sh tested` block of every
page, in reading order, against the one-machine cluster its `sh tested background` block starts.
Each page runs in a network namespace of this test's own (so the guide's fixed ports cannot
clash with anything), with HOME an empty directory and `warren` this checkout's CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import guide
from tests.waiting import wait_for
from warren.network import links

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BLOCK_TIMEOUT = 120.0


@dataclass
class GuideMachine:
    """The reader's machine: a network namespace, a home directory and a PATH with `warren`."""

    netns: str
    home: Path
    env: dict[str, str]

    def run(self, script: str, timeout: float = BLOCK_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            links.nsenter(self.netns, ["bash", "-euo", "pipefail", "-c", script]),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.home,
            timeout=timeout,
        )


def _kill_netns_processes(netns: str) -> None:
    """Every process left in the namespace this test created (the manager, its tasks)."""
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuideMachine]:
    root = tmp_path_factory.mktemp("guide")
    home, bin_dir = root / "home", root / "bin"
    home.mkdir()
    bin_dir.mkdir()
    warren = bin_dir / "warren"
    warren.write_text(f'#!/bin/sh\nexec {sys.executable} -m warren.cli.main "$@"\n')
    warren.chmod(0o755)
    env = {
        "HOME": str(home),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "LANG": "C.UTF-8",
    }
    netns = f"wguide-{uuid.uuid4().hex[:8]}"
    links.create_netns(netns)
    started: subprocess.Popen[bytes] | None = None
    log = root / "background.log"
    try:
        links.link_up("lo", netns)
        host = GuideMachine(netns, home, env)
        [background] = [b for page in guide.pages() for b in guide.blocks(page) if b.background]
        with open(log, "ab") as out:
            started = subprocess.Popen(
                links.nsenter(netns, ["bash", "-euo", "pipefail", "-c", background.text]),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=home,
                start_new_session=True,
            )
        wait_for(
            lambda: started.poll() is not None or host.run("warren cluster info", timeout=30).returncode == 0,
            timeout=60,
            interval=0.5,
            message=f"the cluster of {background.where} to serve",
        )
        assert started.poll() is None, f"{background.where} exited:\n{log.read_text()[-4000:]}"
        yield host
    finally:
        if started is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.pid, signal.SIGKILL)
            started.wait()
        _kill_netns_processes(netns)
        links.remove_netns(netns)
        if log.exists():
            print(f"---- {log.name} ----\n{log.read_text()[-6000:]}")


@pytest.mark.parametrize("page", guide.pages())
def test_the_guide_page_runs_as_written(machine: GuideMachine, page: str) -> None:
    blocks = guide.blocks(page)
    for index, block in enumerate(blocks):
        if not block.tested or block.background:
            continue
        result = machine.run(block.text)
        shown = f"{block.where}:\n{block.text}\n-- stdout --\n{result.stdout}\n-- stderr --\n{result.stderr}"
        assert result.returncode == 0, f"exit {result.returncode} from {shown}"
        expected = guide.expected_output(blocks, index)
        if expected is not None:
            missing = guide.unmatched_output(expected, result.stdout)
            assert missing is None, f"no line matching {missing!r} in the output of {shown}"
