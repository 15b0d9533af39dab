"""Real manager processes driven by the real CLI, for integration tests.

Everything started here is stopped by PID in `stop()`, which the fixtures call even when a
test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import lmdb
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.ports import free_port
from tests.waiting import wait_for
from warren import pki, tls
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc
from warren.clientconfig import ConfigError, load_context
from warren.manager import cakey
from warren.model import ClusterInfo
from warren.state import CLUSTER_KEY

REPO = Path(__file__).resolve().parents[2]


def off_the_overlay(args: Iterable[str]) -> list[str]:
    """`--wireguard off` unless `args` choose otherwise: these agents run in the test machine's
    own network namespace, where the overlay (on by default) would create the node's WireGuard
    interface and bridge. The overlay's tests run their nodes in namespaces of their own."""
    args = list(args)
    return [] if "--wireguard" in args or "--manager-only" in args else ["--wireguard", "off"]


@dataclass
class Manager:
    """One manager process on 127.0.0.1 (or another loopback `host`) with its own data dir and
    CLI config."""

    root: Path
    api_port: int = field(default_factory=free_port)
    raft_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    join_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    start_args: list[str] = field(default_factory=list)  # extra `cluster init` flags
    # Most tests predate the worker agent and have no containerd: they run the manager without its
    # embedded agent, and put its (drained) node back to active so that tasks are placed there and
    # stay "assigned", which is what they assert. Tests of the embedded agent set agent_args.
    agent_args: list[str] = field(default_factory=lambda: ["--manager-only"])
    schedule_on_manager: bool = True
    # A manager that joins `founder`'s cluster with a manager token (`cluster join`) instead of
    # creating one; it shares the founder's CLI config.
    founder: Manager | None = None
    token: str = ""
    # Put before the command, e.g. ["prlimit", "--nofile=200"] to run it with few descriptors.
    launcher: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    # Test images ("busybox", "x") are in no registry, and a lookup would leave loopback (DNS):
    # these managers pin no image to a digest unless a test asks (ADR 34).
    resolve_images: bool = False
    # What creates or resumes the manager: `cluster restore FILE` starts one from a backup (ADR 56).
    command: list[str] = field(default_factory=lambda: ["cluster", "init"])
    # The warren that runs, for the manager and for cli(): the Debian package's test runs /usr/bin/warren.
    program: list[str] = field(default_factory=lambda: [sys.executable, "-m", "warren.cli.main"])

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.founder.config if self.founder is not None else self.root / "config.json"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.api_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["WARREN_CONFIG"] = str(self.config)
        env["PYTHONPATH"] = str(REPO)
        env.pop("WARREN_DEBUG", None)
        return env

    @property
    def join_addr(self) -> str:
        return f"{self.host}:{self.join_port}"

    @property
    def node_id(self) -> str:
        return json.loads((self.data_dir / "manager.json").read_text())["node_id"]

    def start(self, timeout: float = 20.0, wait: bool = True) -> None:
        """Start the process and wait until it serves (`wait=False`: a locked manager, ADR 44,
        serves only its unlock socket; the caller waits for what it expects)."""
        first_start = not (self.data_dir / "manager.json").exists()
        log = open(self.root / "manager.log", "ab")  # noqa: SIM115 - owned by the process
        if self.founder is not None:
            command = ["cluster", "join", "--token", self.token, self.founder.join_addr]
        else:
            command = self.command
        self.process = subprocess.Popen(
            [
                *self.launcher,
                *self.program,
                *command,
                "--data-dir",
                str(self.data_dir),
                "--listen-addr",
                self.addr,
                "--raft-addr",
                f"{self.host}:{self.raft_port}",
                "--metrics-addr",
                f"{self.host}:{self.metrics_port}",
                "--join-addr",
                self.join_addr,
                *self.agent_args,
                *([] if self.resolve_images else ["--no-resolve-images"]),
                *off_the_overlay([*self.agent_args, *self.start_args]),
                *self.start_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.root,
        )
        if not wait:
            return
        try:
            wait_for(self._serving, timeout=timeout, message="the manager to serve")
        except AssertionError:
            raise RuntimeError(f"manager did not become ready in {timeout}s:\n{self.log()}") from None
        if self.founder is None and first_start and self.schedule_on_manager and "--manager-only" in self.agent_args:
            with self._admin_channel() as channel:
                request = cpb.UpdateNodeRequest(node=self.node_id, availability="active")
                control_pb2_grpc.ControlStub(channel).UpdateNode(request, timeout=30)

    def _admin_channel(self) -> grpc.Channel:
        """A channel to this manager with the admin credentials its CLI config names."""
        context = load_context(path=self.config)
        creds = tls.channel_credentials(context.ca.read_bytes(), context.cert.read_bytes(), context.key.read_bytes())
        return grpc.secure_channel(self.addr, creds, options=tls.channel_options())

    def _serving(self) -> bool:
        """The API answers with the CLI's credentials (what `warren cluster info` checks), asked
        in-process: a CLI run per poll costs about a second of interpreter start-up."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"manager exited with {self.process.returncode}:\n{self.log()}")
        if not self.config.exists():
            return False
        try:
            with self._admin_channel() as channel:
                control_pb2_grpc.ControlStub(channel).GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=2)
        except (ConfigError, OSError, grpc.RpcError):
            return False
        return True

    def log(self) -> str:
        path = self.root / "manager.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.program, *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            cwd=self.root,
        )

    def cli_json(self, *args: str) -> object:
        result = self.cli(*args, "--format", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def join_token(self, role: str = "worker") -> str:
        result = self.cli("cluster", "join-token", role, "-q")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def authority(self) -> pki.CertificateAuthority:
        """The cluster CA as this manager's state holds it (read-only; the key unwrapped with the
        Raft secret, ADR 24), for tests that mint certificates of their own."""
        env = lmdb.open(str(self.data_dir / "db"), readonly=True, max_dbs=16, lock=True)
        try:
            with env.begin() as txn:
                raw = txn.get(CLUSTER_KEY.encode(), db=env.open_db(b"state_cluster", txn=txn, create=False))
        finally:
            env.close()
        cluster = msgspec.msgpack.decode(raw, type=ClusterInfo)
        key = cakey.unwrap(cluster.ca_key_pem, (self.data_dir / "raft.secret").read_text().strip())
        return pki.CertificateAuthority.from_pem(cluster.ca_cert_pem, key)

    def channel(self, creds_dir: Path | None = None) -> grpc.Channel:
        creds = tls.load_credentials(creds_dir or self.data_dir / "admin")
        return grpc.secure_channel(self.addr, tls.channel_credentials(*creds), options=tls.channel_options())

    def control(self, creds_dir: Path | None = None) -> control_pb2_grpc.ControlStub:
        return control_pb2_grpc.ControlStub(self.channel(creds_dir))


def join_managers(
    first: Manager, names: list[str], into: list[Manager], timeout: float = 40.0, hosts: list[str] | None = None
) -> None:
    """Start one manager per name under `first.root.parent`, each joining `first`'s cluster with
    a manager token (on the loopback address in `hosts`, if given). Each is appended to `into`
    before it starts, so that the caller's cleanup stops it even if its start fails."""
    token = first.join_token("manager")
    for i, name in enumerate(names):
        (first.root.parent / name).mkdir()
        host = hosts[i] if hosts else "127.0.0.1"
        manager = Manager(first.root.parent / name, founder=first, token=token, host=host)
        into.append(manager)
        manager.start(timeout=timeout)


class Joiner:
    """`warren cluster join` / `warren worker start` processes for one data directory."""

    def __init__(self, root: Path, manager: Manager) -> None:
        self.root = root
        self.manager = manager
        self.data_dir = root / "node"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.runs = 0

    @property
    def log_path(self) -> Path:
        return self.root / f"agent-{self.runs}.log"

    def start(self, *argv: str) -> subprocess.Popen[bytes]:
        """Run a foreground command (join or worker start) in the background."""
        self.runs += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen(
            [sys.executable, "-m", "warren.cli.main", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.manager.env(),
            cwd=self.root,
        )
        self.processes.append(process)
        return process

    def join(self, token: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.start(
            *("cluster", "join", "--token", token, self.manager.join_addr, "--data-dir", str(self.data_dir)),
            *off_the_overlay(extra),
            *extra,
        )

    def log(self) -> str:
        """The output of the latest run."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def all_logs(self) -> str:
        """The output of every run, oldest first (shown when a test fails)."""
        runs = (self.root / f"agent-{i}.log" for i in range(1, self.runs + 1))
        return "".join(f"---- run {p.name} ----\n{p.read_text(errors='replace')}" for p in runs if p.exists())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal every live process (kill -9 by default) and reap it."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(sig)
                process.wait(timeout=20)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def leader_of(managers: list[Manager], timeout: float = 20) -> Manager:
    """The manager that says it leads (`cluster info`), polling until one does."""

    def find() -> Manager | None:
        for m in managers:
            if m.process is None or m.process.poll() is not None:
                continue
            result = m.cli("--manager", m.addr, "cluster", "info", "--format", "json", timeout=10)
            if result.returncode == 0 and json.loads(result.stdout).get("raft_state") == "leader":
                return m
        return None

    return wait_for(find, timeout=timeout, message="a leader")


def metric_samples(manager: Manager, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name` on the manager's /metrics: (labels, value) each. Only that
    metric is asked for (`?name[]=`): the whole page is 160 KB, 13 ms of the manager's GIL."""
    url = f"http://{manager.host}:{manager.metrics_port}/metrics?name[]={urllib.parse.quote(name)}"
    with urllib.request.urlopen(url, timeout=3) as response:
        text = response.read().decode()
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def commit_index(manager: Manager) -> int:
    """The manager's Raft commit index, from its /metrics."""
    samples = metric_samples(manager, "warren_raft_commit_index")
    if not samples:
        raise RuntimeError("the manager exports no warren_raft_commit_index")
    return int(samples[0][1])


def raft_peer_links(manager: Manager) -> dict[str, int]:
    """warren_raft_peer_connected from the manager's /metrics: peer Raft address -> 0/1."""
    return {labels["peer"]: int(value) for labels, value in metric_samples(manager, "warren_raft_peer_connected")}


def all_raft_connected(managers: list[Manager]) -> bool:
    """Whether every manager has a Raft connection to every other one."""
    try:
        views = [raft_peer_links(m) for m in managers]
    except OSError:
        return False
    return all(len(v) == len(managers) - 1 and all(v.values()) for v in views)


@contextlib.contextmanager
def manager_trio(
    root: Path,
    launcher: list[str] | None = None,
    hosts: list[str] | None = None,
    init_args: list[str] | None = None,
    schedule_on_manager: bool = True,
) -> Iterator[list[Manager]]:
    """Three managers (m1 creates the cluster, m2 and m3 join it), all connected; stopped at
    the end. `launcher` prefixes m1's command; `hosts` are their loopback addresses;
    `init_args` are extra `cluster init` flags (e.g. a short --heartbeat-period)."""
    hosts = hosts or ["127.0.0.1"] * 3
    (root / "m1").mkdir()
    first = Manager(
        root / "m1",
        launcher=launcher or [],
        host=hosts[0],
        start_args=list(init_args or []),
        schedule_on_manager=schedule_on_manager,
    )
    managers = [first]
    try:
        first.start()
        join_managers(first, ["m2", "m3"], into=managers, hosts=hosts[1:])
        wait_for(lambda: all_raft_connected(managers), timeout=20, message="every manager connected to every other")
        yield managers
    finally:
        for manager in managers:
            manager.stop()
