"""The real cluster under test: `warren` manager and worker processes, one per lab namespace,
started with nsenter and driven by signals; plus the probe that reads the cluster for the runner.

Every process is started through `Lab.record_process`, so a crashed run's leftovers can be
killed by recorded PID and start time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chaos.lab import Host, Lab, pid_alive

REPO = Path(__file__).resolve().parents[1]
API_PORT = 4242
JOIN_PORT = API_PORT + 2
HEARTBEAT = "1s"


def _env(config: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["WARREN_CONFIG"] = str(config)
    env["PYTHONPATH"] = str(REPO) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("WARREN_DEBUG", None)
    env["GRPC_VERBOSITY"] = "NONE"
    return env


class NodeProc:
    """One `warren` process (a manager or a worker agent) and the command that (re)starts it."""

    def __init__(self, lab: Lab, host: Host, role: str, root: Path) -> None:
        self.lab, self.host, self.role = lab, host, role
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.argv: list[str] = []
        self.process: subprocess.Popen | None = None
        self.runs = 0
        self.stopped = False  # SIGSTOPped

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def api_addr(self) -> str:
        return f"{self.host.ip}:{API_PORT}"

    @property
    def log_path(self) -> Path:
        return self.root / "node.log"

    def start(self, argv: list[str] | None = None) -> None:
        if argv is not None:
            self.argv = argv
        self.runs += 1
        with self.log_path.open("ab") as log:
            log.write(f"---- run {self.runs} at {time.time():.3f}: {' '.join(self.argv)}\n".encode())
            log.flush()
            cmd = self.host.nsenter([sys.executable, "-m", "warren.cli.main", *self.argv])
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_env(self.config),
                cwd=self.root,
            )
        self.stopped = False
        self.lab.record_process(self.process.pid, cmd)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            self.process.send_signal(sig)
            if sig == signal.SIGSTOP:
                self.stopped = True
            elif sig == signal.SIGCONT:
                self.stopped = False

    def kill(self) -> None:
        if self.alive:
            if self.stopped:
                self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=15)
        self.stopped = False

    def terminate(self, timeout: float = 15.0) -> None:
        if not self.alive:
            return
        if self.stopped:
            self.signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def node_id(self) -> str:
        name = "manager.json" if self.role == "manager" else "node.json"
        try:
            return json.loads((self.data_dir / name).read_text())["node_id"]
        except (OSError, ValueError, KeyError):
            return ""

    def task_processes(self) -> dict[str, bool]:
        """Exec-runtime tasks recorded on this worker: task id -> its process is alive."""
        found = {}
        for record in sorted((self.data_dir / "exec").glob("*/record.json")):
            try:
                data = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if data.get("state") == "running" or data.get("pid"):
                found[data["runtime_id"]] = pid_alive(int(data.get("pid") or 0), int(data.get("proc_start") or 0))
        return found

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Probe:
    """The chaos.probe process in the client namespace, called with one JSON line per request."""

    def __init__(self, lab: Lab, host: Host, creds: Path, root: Path, log_name: str = "probe.log") -> None:
        cmd = host.nsenter([sys.executable, "-m", "chaos.probe", "--creds", str(creds)])
        self._err = (root / log_name).open("ab")
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True, env=_env(root / "none")
        )
        lab.record_process(self.process.pid, cmd)
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError("the probe did not start (see probe.log)")

    def call(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the probe exited")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._err.close()


class Cluster:
    """N managers (the first inits, the others join) and M exec workers in a lab."""

    def __init__(self, lab: Lab, root: Path, managers: int, workers: int) -> None:
        self.lab, self.root = lab, root
        self.managers = [NodeProc(lab, lab.hosts[f"m{i + 1}"], "manager", root / f"m{i + 1}") for i in range(managers)]
        self.workers = [NodeProc(lab, lab.hosts[f"w{i + 1}"], "worker", root / f"w{i + 1}") for i in range(workers)]
        self.probe: Probe | None = None

    @property
    def nodes(self) -> list[NodeProc]:
        return [*self.managers, *self.workers]

    @property
    def addrs(self) -> list[str]:
        return [m.api_addr for m in self.managers]

    @property
    def creds(self) -> Path:
        return self.managers[0].data_dir / "admin"

    def bring_up(self, timeout: float = 60.0) -> None:
        m1 = self.managers[0]
        ip = m1.host.ip
        m1.start(
            [
                "cluster",
                "init",
                "--data-dir",
                str(m1.data_dir),
                "--listen-addr",
                f"{ip}:{API_PORT}",
                "--advertise-addr",
                f"{ip}:{API_PORT}",
                "--heartbeat-period",
                HEARTBEAT,
                "--manager-only",
                "--no-resolve-images",  # the workload's images are in no registry (ADR 34)
            ]
        )
        deadline = time.monotonic() + timeout
        while not (self.creds / "key.pem").exists():
            self._check_alive(m1, deadline)
            time.sleep(0.1)
        self.probe = Probe(self.lab, self.lab.hosts["client"], self.creds, self.root)
        self.wait_ready(m1, deadline)
        manager_token = self._token("manager")
        worker_token = self._token("worker")
        join = f"{ip}:{JOIN_PORT}"
        for m in self.managers[1:]:
            mip = m.host.ip
            m.start(
                [
                    "cluster",
                    "join",
                    "--token",
                    manager_token,
                    join,
                    "--data-dir",
                    str(m.data_dir),
                    "--listen-addr",
                    f"{mip}:{API_PORT}",
                    "--advertise-addr",
                    f"{mip}:{API_PORT}",
                    "--manager-only",
                    "--no-resolve-images",
                ]
            )
            self.wait_ready(m, deadline)
        for w in self.workers:
            w.start(
                [
                    "cluster",
                    "join",
                    "--token",
                    worker_token,
                    join,
                    "--data-dir",
                    str(w.data_dir),
                    "--runtime",
                    "exec",
                    "--advertise-addr",
                    w.host.ip,
                    "--wireguard",  # the chaos suite is about Raft and agents, not the overlay
                    "off",
                ]
            )
        while True:
            state = self.probe.call(op="state", addr=m1.api_addr)
            ready = [n for n in state.get("nodes", []) if n["role"] == "worker" and n["status"] == "ready"]
            if len(ready) >= len(self.workers):
                break
            for w in self.workers:
                self._check_alive(w, deadline)
            time.sleep(0.2)

    def _token(self, role: str) -> str:
        reply = self.probe.call(op="token", addr=self.managers[0].api_addr, role=role)
        if not reply["ok"]:
            raise RuntimeError(f"join-token {role}: {reply}")
        return reply["token"]

    def _check_alive(self, node: NodeProc, deadline: float) -> None:
        if not node.alive:
            raise RuntimeError(f"{node.name} exited with {node.process.returncode}:\n{node.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster bring-up timed out at {node.name}:\n{node.log_tail()}")

    def wait_ready(self, node: NodeProc, deadline: float) -> None:
        """Until the manager answers a read and knows a leader."""
        while True:
            reply = self.probe.call(op="info", addr=node.api_addr, timeout=1.0)
            if reply["ok"] and reply["leader_api_addr"]:
                return
            self._check_alive(node, deadline)
            time.sleep(0.1)

    def leader(self, timeout: float = 30.0) -> NodeProc | None:
        """The manager that answers as leader (asked of live, running managers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.managers:
                if not m.alive or m.stopped:
                    continue
                reply = self.probe.call(op="info", addr=m.api_addr, timeout=1.0)
                if reply["ok"] and reply["raft_state"] == "leader":
                    return m
            time.sleep(0.1)
        return None

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.terminate(timeout=10)
            except Exception:
                node.kill()
        if self.probe is not None:
            self.probe.close()
