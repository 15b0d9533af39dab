"""Attacks on the Raft port of three real managers (issue #10, ADR 20), with the Raft-port
abuser (tests/fixtures/raft_abuser.py): writes go on during the attack or resume within a
second of its end, every manager is connected to every other afterwards, and memory stays flat.

RAFT_ABUSE_SECONDS and RAFT_ABUSE_INTENSITY make these the long version (`make fuzz`)."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from tests.fixtures.raft_abuser import RaftAbuser
from tests.integration.harness import Manager, all_raft_connected, manager_trio
from tests.waiting import wait_for
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc

pytestmark = pytest.mark.integration

SECONDS = float(os.environ.get("RAFT_ABUSE_SECONDS", "6"))
INTENSITY = int(os.environ.get("RAFT_ABUSE_INTENSITY", "1"))
# The manager flooded until it runs out of descriptors: it needs about 25 of its own (gRPC, LMDB,
# its peers), fewer than it would hold for unauthenticated connections (MAX_UNAUTHENTICATED).
LOW_NOFILE = 100


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[Manager]]:
    with manager_trio(tmp_path) as managers:
        yield managers


@pytest.fixture
def trio_low_nofile(tmp_path: Path) -> Iterator[list[Manager]]:
    with manager_trio(tmp_path, ["prlimit", f"--nofile={LOW_NOFILE}:{LOW_NOFILE}"]) as managers:
        yield managers


def _rss_mib(manager: Manager) -> float:
    assert manager.process is not None
    for line in Path(f"/proc/{manager.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class WriteProbe:
    """Writes a label on one node again and again through the managers' API (the same manager
    while it answers), recording when each write was acknowledged; samples memory too."""

    managers: list[Manager]
    acks: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    peak_rss: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._node = self.managers[0].node_id

    def __enter__(self) -> WriteProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        admin = self.managers[0].data_dir / "admin"  # joined managers have no admin credentials
        channels = [m.channel(admin) for m in self.managers]
        stubs = [control_pb2_grpc.ControlStub(channel) for channel in channels]
        current, i, last_sample = 0, 0, 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() - last_sample > 0.25:
                    last_sample = time.monotonic()
                    for n, manager in enumerate(self.managers):
                        self.peak_rss[n] = max(self.peak_rss.get(n, 0.0), _rss_mib(manager))
                i += 1
                request = cpb.UpdateNodeRequest(node=self._node, labels_add={"probe": str(i)})
                try:
                    stubs[current].UpdateNode(request, timeout=2)
                    self.acks.append(time.monotonic())
                except grpc.RpcError as e:
                    self.failures.append(f"{self.managers[current].addr}: {e.code().name} {e.details()}")
                    current = (current + 1) % len(stubs)
                    time.sleep(0.02)
        finally:
            for channel in channels:
                channel.close()

    def acks_between(self, start: float, end: float) -> list[float]:
        return [t for t in self.acks if start <= t <= end]

    def largest_gap(self, start: float, end: float) -> float:
        times = [start, *self.acks_between(start, end), end]
        return max(b - a for a, b in itertools.pairwise(times))


def _attack(
    managers: list[Manager], abuser: RaftAbuser, until: Callable[[], None] | None = None
) -> tuple[WriteProbe, dict[int, float]]:
    """Run the attack (until `until` returns, if given, else its duration) under writes."""
    before = {n: _rss_mib(m) for n, m in enumerate(managers)}
    with WriteProbe(managers) as probe:
        wait_for(lambda: len(probe.acks) >= 5, timeout=20, message="writes before the attack")
        with abuser:
            if until is not None:
                until()
                abuser.stop()
            abuser.wait()
        assert not abuser.report.crashed, abuser.report.crashed
        end = abuser.ended
        # Writes resume within a second of the end (if they ever stopped).
        wait_for(lambda: probe.acks_between(end, end + 1e9), timeout=10, message="a write after the attack")
        resumed = min(probe.acks_between(end, end + 1e9)) - end
        during = probe.acks_between(abuser.started, end)
        gap = probe.largest_gap(abuser.started, end)
        print(
            f"{abuser.kind}: {abuser.report.connections} connections, {abuser.report.closed_by_peer} closed by the"
            f" manager, {len(during)} writes acknowledged in {end - abuser.started:.1f}s (largest gap {gap:.2f}s),"
            f" first after the end {resumed:.2f}s; RSS MiB before {before} peak {probe.peak_rss}"
        )
        assert gap < 1.0 or resumed < 1.0, (gap, resumed, probe.failures[-5:])
    # No manager is left cut off.
    wait_for(lambda: all_raft_connected(managers), timeout=10, message="every manager connected to every other")
    for n, peak in probe.peak_rss.items():
        assert peak - before[n] < 64, f"manager {n + 1} grew from {before[n]:.0f} to {peak:.0f} MiB"
    return probe, before


def _raft_addrs(managers: list[Manager]) -> list[str]:
    return [f"127.0.0.1:{m.raft_port}" for m in managers]


def test_giant_frames_on_every_manager_do_not_stop_writes(trio: list[Manager]) -> None:
    abuser = RaftAbuser("giant_frame", _raft_addrs(trio), SECONDS, INTENSITY)
    probe, _ = _attack(trio, abuser)
    assert abuser.report.closed_by_peer >= 1, "the managers never closed a connection announcing 2 GiB"
    assert len(probe.acks_between(abuser.started, abuser.ended)) > 0


def test_idle_unauthenticated_connections_are_closed(trio: list[Manager]) -> None:
    abuser = RaftAbuser("idle", _raft_addrs(trio)[:1], max(SECONDS, 8.0), 5 * INTENSITY)  # 500 connections
    probe, _ = _attack(trio, abuser)
    report = abuser.report
    assert report.connections == 500 * INTENSITY, report
    assert report.closed_by_peer == report.connections, report
    assert max(report.close_delays) < 3.0 + 2.0, max(report.close_delays)  # AUTH_TIMEOUT, plus polling
    assert len(probe.acks_between(abuser.started, abuser.ended)) > 0


def test_a_manager_out_of_descriptors_keeps_its_listener(trio_low_nofile: list[Manager]) -> None:
    flooded = trio_low_nofile[0]
    assert flooded.process is not None
    fd_dir = Path(f"/proc/{flooded.process.pid}/fd")
    abuser = RaftAbuser("flood", _raft_addrs(trio_low_nofile)[:1], max(SECONDS, 30.0), INTENSITY)

    def exhausted_for_a_while() -> None:
        wait_for(lambda: len(list(fd_dir.iterdir())) >= LOW_NOFILE - 2, timeout=25, message="descriptors exhausted")
        time.sleep(max(3.0, SECONDS / 2))  # the attack goes on: writes must continue meanwhile

    _attack(trio_low_nofile, abuser, until=exhausted_for_a_while)
    # It still listens...
    with socket.create_connection(("127.0.0.1", flooded.raft_port), timeout=5):
        pass
    # ...and takes a restarted peer back: one that dials it (PySyncObj: the larger address dials).
    addrs = _raft_addrs(trio_low_nofile)
    dialers = [m for m, addr in zip(trio_low_nofile, addrs, strict=True) if addr > addrs[0]]
    for other in dialers[:1]:
        other.kill()
        other.start(timeout=40)
        wait_for(lambda: all_raft_connected(trio_low_nofile), timeout=20, message="the restarted manager reconnected")
    # ...after the flood did exhaust its descriptors (else this test proves nothing).
    assert "accept() failed (EMFILE)" in flooded.log(), flooded.log()[-3000:]


def test_connections_from_a_non_manager_address_are_refused(trio: list[Manager]) -> None:
    abuser = RaftAbuser("foreign", _raft_addrs(trio), SECONDS / 2, INTENSITY, source="127.0.0.2")
    _attack(trio, abuser)
    report = abuser.report
    assert report.connections > 0, report
    # Closed at once, before the client sent a byte (but for those opened as the attack ended).
    assert report.closed_by_peer + report.still_open == report.connections, report
    assert report.still_open <= 10 * INTENSITY * len(trio), report
    assert sorted(report.close_delays)[len(report.close_delays) // 2] < 0.5, report.close_delays[:20]
    assert any("not the address of a manager" in m.log() for m in trio)


def _closed_at_once(manager: Manager, source: str) -> bool:
    """Whether `manager`'s Raft port closes a connection from `source` before it sends a byte
    (a member's address is kept until the authentication deadline, 3 s)."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect((manager.host, manager.raft_port))
        sock.settimeout(0.5)
        try:
            return sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


def test_the_address_filter_follows_membership(tmp_path: Path) -> None:
    """Managers on three loopback addresses: joining passes the filter (every pair connects),
    another address is refused, and a demoted manager's address is refused afterwards."""
    with manager_trio(tmp_path, hosts=["127.0.0.11", "127.0.0.12", "127.0.0.13"]) as managers:
        first, _, third = managers
        assert _closed_at_once(first, "127.0.0.14")
        assert not _closed_at_once(first, "127.0.0.13")
        demoted = first.cli("--manager", first.addr, "node", "demote", third.node_id)
        assert demoted.returncode == 0, demoted.stderr
        wait_for(lambda: _closed_at_once(first, "127.0.0.13"), timeout=15, message="the demoted address refused")
        assert all_raft_connected(managers[:2])
