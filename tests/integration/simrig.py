"""A `warren sim` process for integration tests (ADR 50): started against a manager's join
address, asked for its status and told to kill nodes through its control socket, stopped by PID."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.harness import Manager
from tests.waiting import wait_for
from warren.node.sim import SOCKET_FILE, control


class SimProcess:
    def __init__(self, manager: Manager, root: Path, nodes: int, *extra: str) -> None:
        self.data_dir = root / "sim"
        self.log_path = root / "sim.log"
        command = ["sim", "--nodes", str(nodes), "--token", manager.join_token(), manager.join_addr]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "warren.cli.main", *command, "--data-dir", str(self.data_dir), *extra],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=manager.env(),
                cwd=root,  # `python -m` puts the working directory first on sys.path
            )
        wait_for(self._listening, timeout=30, message="the simulator's control socket")

    def _listening(self) -> bool:
        assert self.process.poll() is None, f"the simulator exited:\n{self.log()}"
        return (self.data_dir / SOCKET_FILE).exists()

    def status(self, states: bool = True) -> dict[str, Any]:
        """The simulator's status; its tasks by state only if `states` (that reads every task)."""
        assert self.process.poll() is None, f"the simulator exited:\n{self.log()}"
        return control(self.data_dir, {"status": True, "states": states})

    def kill(self, count: int) -> list[str]:
        """Kill `count` nodes; their hostnames."""
        return [n["hostname"] for n in control(self.data_dir, {"kill": count})["killed"]]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
