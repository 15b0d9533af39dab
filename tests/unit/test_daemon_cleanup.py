"""A daemon that fails late in its start-up releases what it had opened (issue #11): the
manager its LMDB environment, Raft node, API, join and metrics listeners; the agent its cache,
thread pools, worker, log indexer and overlay. Both are real, in this process."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import lmdb
import pytest

from tests.fixtures.ports import free_port
from tests.waiting import wait_for
from warren.manager import daemon as manager_daemon


class InjectedFailure(Exception):
    pass


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_manager_failing_after_its_servers_started_releases_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = {name: free_port() for name in ("api", "raft", "join", "metrics")}
    environments: list[lmdb.Environment] = []
    opened = manager_daemon.open_environment

    def recorded(*args: Any, **kwargs: Any) -> lmdb.Environment:
        env = opened(*args, **kwargs)
        environments.append(env)
        return env

    def failing_orchestrator(*args: Any, **kwargs: Any) -> None:
        # By now the store, Raft, the API and join servers and /metrics are all open.
        assert not any(_bindable(port) for port in ports.values())
        raise InjectedFailure("late start-up step")

    monkeypatch.setattr(manager_daemon, "open_environment", recorded)
    monkeypatch.setattr(manager_daemon, "Orchestrator", failing_orchestrator)
    monkeypatch.setenv("WARREN_CONFIG", str(tmp_path / "client.json"))
    options = manager_daemon.ManagerOptions(
        data_dir=tmp_path / "manager",
        listen_addr=f"127.0.0.1:{ports['api']}",
        raft_addr=f"127.0.0.1:{ports['raft']}",
        join_addr=f"127.0.0.1:{ports['join']}",
        metrics_addr=f"127.0.0.1:{ports['metrics']}",
    )

    with pytest.raises(InjectedFailure):
        asyncio.run(manager_daemon.serve(options, asyncio.Event()))

    for name, port in ports.items():
        wait_for(lambda port=port: _bindable(port), timeout=10, message=f"the {name} port {port} to be released")
    assert len(environments) == 1
    with pytest.raises(lmdb.Error):  # closed
        environments[0].info()


def test_an_agent_failing_late_in_its_start_up_releases_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from warren import pki, tls
    from warren.agent import daemon as agent_daemon
    from warren.agent import settings as agent_settings
    from warren.agent.options import AgentOptions

    data = tmp_path / "agent"
    ca = pki.CertificateAuthority.create("cluster1")
    cert, key = ca.issue_keypair("node1", pki.ROLE_WORKER)
    tls.save_credentials(data / agent_daemon.CERTS_DIR, ca.cert_pem, cert, key)
    agent_settings.save(data, agent_settings.AgentSettings(runtime="exec", wireguard="off"))  # no host networking
    closed: list[str] = []
    for owner, method in (
        (agent_daemon.AgentCache, "close"),
        (agent_daemon.Worker, "close"),
        (agent_daemon.LogAgent, "close"),
        (agent_daemon.Overlay, "close"),
    ):
        original = getattr(owner, method)
        name = owner.__name__
        if asyncio.iscoroutinefunction(original):

            async def spy_async(self: Any, original: Any = original, name: str = name) -> None:
                closed.append(name)
                await original(self)

            monkeypatch.setattr(owner, method, spy_async)
        else:

            def spy(self: Any, original: Any = original, name: str = name) -> None:
                closed.append(name)
                original(self)

            monkeypatch.setattr(owner, method, spy)

    def failing_session(*args: Any, **kwargs: Any) -> None:
        raise InjectedFailure("late start-up step")  # the worker, logs and overlay are running

    monkeypatch.setattr(agent_daemon, "Session", failing_session)
    options = AgentOptions(data_dir=data, managers=["127.0.0.1:1"], runtime="exec")

    with pytest.raises(InjectedFailure):
        asyncio.run(agent_daemon.serve(options, asyncio.Event()))

    assert sorted(closed) == ["AgentCache", "LogAgent", "Overlay", "Worker"]
    assert not agent_daemon.agent_running(data)  # the data directory's lock is free
    wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith(("warren-runtime", "warren-wait"))],
        timeout=10,
        message="the agent's runtime threads to end",
    )
