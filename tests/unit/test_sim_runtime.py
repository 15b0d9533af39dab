"""The simulated runtime of `warren sim` (ADR 50), alone and driven by the agent's own task
controller; the memory cache it runs on; the simulator's control commands."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.agent_fakes import Recorder, make_task
from tests.waiting import async_holds
from tests.waiting import async_wait_for as until
from warren.agent.assignments import KeyOrdered
from warren.agent.cache import AgentCache, MemoryCache
from warren.agent.controller import ControllerEnv, TaskController
from warren.agent.decisions import initial_state
from warren.agent.runtime import ContainerSpec, ContainerState, RuntimeFailure
from warren.model import TaskState as S
from warren.node.sim import Simulator
from warren.node.simnode import HeldCredentials, SimOptions, simulated_wg_key
from warren.nodereports import check_wireguard
from warren.runtime.sim import SIGNAL_EXIT_CODE, START_FAILURE, SimRuntime


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def sim_env(rt: SimRuntime, rec: Recorder, tmp: Path) -> ControllerEnv:
    """A controller environment as a simulated node builds it: calls on the loop, no threads."""
    return ControllerEnv(
        runtime=rt,
        log_dir=tmp,
        call=rt.call,
        wait_call=rt.wait_call,
        report=rec.reports.append,
        save=rec.saved.__setitem__,
        connected=lambda: rec.connected,
        retry_delays=(0.01,),
        wait_slice=3600.0,
    )


def test_lifecycle_prepare_start_stop_remove() -> None:
    rt = SimRuntime()

    async def scenario() -> None:
        rid = rt.prepare(ContainerSpec(task_id="t1", image="busybox", labels={"warren.task.id": "t1"}))
        assert rt.prepare(ContainerSpec(task_id="t1", image="busybox")) == rid  # idempotent
        assert rt.status(rid).state == ContainerState.CREATED
        await rt.call(rt.start, rid)
        assert rt.status(rid).state == ContainerState.RUNNING
        assert rt.running() == 1
        assert rt.wait(rid, 0) is None  # running: never blocks
        waiting = asyncio.ensure_future(rt.wait_call(rt.wait, rid, 3600.0))
        await async_holds(lambda: not waiting.done(), 0.2, message="the wait lasts while the container runs")
        status = rt.stop(rid, 10.0)
        assert status.exit_code == SIGNAL_EXIT_CODE
        done = await asyncio.wait_for(waiting, 5)
        assert done is not None and done.state == ContainerState.EXITED
        assert [c.labels for c in rt.list()] == [{"warren.task.id": "t1"}]
        rt.remove(rid)
        rt.remove(rid)  # idempotent
        assert rt.status(rid).state == ContainerState.UNKNOWN
        assert rt.list() == []

    run(scenario())


def test_a_wait_slice_ends_with_none_while_running() -> None:
    rt = SimRuntime()

    async def scenario() -> None:
        rid = rt.prepare(ContainerSpec(task_id="t1", image="busybox"))
        rt.start(rid)
        assert await rt.wait_call(rt.wait, rid, 0.01) is None

    run(scenario())


def test_start_waits_for_the_start_delay() -> None:
    rt = SimRuntime(start_delay=0.5)

    async def scenario() -> None:
        rid = rt.prepare(ContainerSpec(task_id="t1", image="busybox"))
        loop = asyncio.get_running_loop()
        began = loop.time()
        starting = asyncio.ensure_future(rt.call(rt.start, rid))
        await until(lambda: starting.done(), timeout=10, message="the start")
        assert loop.time() - began >= 0.5
        assert rt.status(rid).state == ContainerState.RUNNING

    run(scenario())


@pytest.mark.parametrize(("draw", "fails"), [(0.0, True), (0.29, True), (0.3, False), (0.99, False)])
def test_a_share_of_starts_fails_permanently(draw: float, fails: bool) -> None:
    rt = SimRuntime(fail_rate=0.3, draw=lambda: draw)
    rid = rt.prepare(ContainerSpec(task_id="t1", image="busybox"))
    if fails:
        with pytest.raises(RuntimeFailure) as caught:
            rt.start(rid)
        assert caught.value.permanent and caught.value.message == START_FAILURE
        assert rt.status(rid).state == ContainerState.CREATED
    else:
        rt.start(rid)
        assert rt.status(rid).state == ContainerState.RUNNING
    assert (rt.starts, rt.failures) == (1, int(fails))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        SimRuntime(start_delay=-1)
    with pytest.raises(ValueError, match="fraction"):
        SimRuntime(fail_rate=1.5)


def test_the_agents_controller_runs_a_task_on_it_then_shuts_it_down(tmp_path: Path) -> None:
    rt, rec = SimRuntime(start_delay=0.05), Recorder()
    task = make_task()

    async def scenario() -> None:
        ctl = TaskController(task, sim_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rec.last_state() == S.RUNNING, message="running")
        assert rt.running() == 1
        ctl.update(msgspec.structs.replace(task, desired_state=S.SHUTDOWN))
        await until(lambda: not rt.list(), message="container removed")
        await ctl.close()

    run(scenario())
    assert rec.states() == [S.ACCEPTED, S.PREPARING, S.STARTING, S.RUNNING, S.SHUTDOWN]
    assert rec.last().exit_code == SIGNAL_EXIT_CODE


def test_a_running_task_costs_two_asyncio_tasks_and_no_event(tmp_path: Path) -> None:
    """A 1,000-node simulator holds 100,000 running tasks (ADR 71): each costs its controller's
    loop and the exit wait, no waiter task per monitor turn and no Event per container; it still
    ends when stopped, and a change still wakes it."""
    rt, rec = SimRuntime(), Recorder()
    tasks = [make_task(f"t{i}") for i in range(20)]

    async def scenario() -> None:
        before = len(asyncio.all_tasks())
        controllers = [TaskController(task, sim_env(rt, rec, tmp_path)) for task in tasks]
        for ctl in controllers:
            ctl.start()
        await until(lambda: rt.running() == len(tasks), message="all running")
        await async_holds(lambda: len(asyncio.all_tasks()) - before == 2 * len(tasks), 0.2, message="two per task")
        assert not any(isinstance(c.exited, asyncio.Event) for c in rt._containers.values())
        controllers[0].update(msgspec.structs.replace(tasks[0], desired_state=S.SHUTDOWN))
        await until(lambda: rt.running() == len(tasks) - 1, message="one stopped")
        for ctl in controllers:
            await ctl.close()

    run(scenario())


def test_a_failed_start_is_reported_as_a_failed_task(tmp_path: Path) -> None:
    rt, rec = SimRuntime(fail_rate=1.0), Recorder()

    async def scenario() -> None:
        ctl = TaskController(make_task(), sim_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rec.last_state() == S.FAILED, message="failed")
        await ctl.close()

    run(scenario())
    assert S.RUNNING not in rec.states()
    assert START_FAILURE in rec.last().error


def test_memory_cache_keeps_what_the_lmdb_cache_keeps(tmp_path: Path) -> None:
    """The same calls leave both caches holding the same tasks and local states."""
    lmdb_cache, memory = AgentCache(tmp_path / "agent.db"), MemoryCache()
    a, b, c = make_task("a"), make_task("b"), make_task("c")
    try:
        for cache in (lmdb_cache, memory):
            cache.put_tasks([a, b])
            cache.put_local("a", initial_state(a))
            cache.put_local("b", initial_state(b))
            cache.replace_tasks({"c": c}, keep={"a"})  # b leaves; a is kept until forgotten
            cache.forget("a")
        assert memory.tasks() == lmdb_cache.tasks() == {"c": c}
        assert memory.local_states() == lmdb_cache.local_states() == {"b": initial_state(b)}
    finally:
        lmdb_cache.close()


def test_simulated_wireguard_keys_are_valid_and_stable() -> None:
    key = simulated_wg_key("node1", 0)
    check_wireguard(key, "127.0.0.1:20000")
    assert key == simulated_wg_key("node1", 0) != simulated_wg_key("node1", 1)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"[]\n", "expected a JSON object"),
        (b'{"kill": 0}\n', "positive count"),
        (b'{"kill": "3"}\n', "positive count"),
        (b'{"kill": true}\n', "positive count"),
        (b'{"reboot": 1}\n', "unknown command"),
        (b'{"status": true, "states": "no"}\n', "states takes true or false"),
        (b"not json\n", "Expecting value"),
    ],
)
def test_control_commands_refuse_bad_input(tmp_path: Path, line: bytes, error: str) -> None:
    sim = Simulator(SimOptions(data_dir=tmp_path, join_addr="127.0.0.1:1", token="t", nodes=1))

    async def scenario() -> dict[str, object]:
        server = await sim.serve_control(tmp_path / "sim.sock")
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "sim.sock"))
            writer.write(line)
            answer = json.loads(await reader.readline())
            writer.close()
            return dict(answer)
        finally:
            server.close()

    answer = run(scenario())
    assert error in str(answer["error"])


def test_status_counts_an_empty_simulator(tmp_path: Path) -> None:
    sim = Simulator(SimOptions(data_dir=tmp_path, join_addr="127.0.0.1:1", token="t", nodes=1))
    status = sim.status()
    assert (status["nodes"], status["live"], status["connected"], status["running"]) == (0, 0, 0, 0)
    assert int(status["rss_bytes"]) > 0  # type: ignore[call-overload]


def test_a_node_reads_its_credentials_again_only_when_a_file_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions of 1,000 simulated nodes reopen often: each node reads and checks its certs/ once,
    and again after a renewal rewrote them (ADR 71); a missing file is the usual error."""
    from warren import certinfo, pki, tls

    ca = pki.CertificateAuthority.create("testcluster")
    certs = tmp_path / "certs"
    tls.save_credentials(certs, ca.cert_pem, *ca.issue_keypair("sim-0000", pki.ROLE_WORKER))
    checks: list[str] = []
    real_check = certinfo.key_matches_files

    def counted(cert: Path, key: Path) -> bool:
        checks.append(str(cert))
        return real_check(cert, key)

    monkeypatch.setattr(certinfo, "key_matches_files", counted)
    held = HeldCredentials()
    first = held.load(certs)
    assert first == tls.load_credentials(certs) and len(checks) == 2  # ours, and the plain read's
    assert held.load(certs) is first and len(checks) == 2  # not read or checked again
    renewed = ca.issue_keypair("sim-0000", pki.ROLE_WORKER)
    tls.save_credentials(certs, ca.cert_pem, *renewed)
    assert held.load(certs).cert_pem == renewed[0] and len(checks) == 3
    (certs / tls.KEY_FILE).unlink()
    with pytest.raises(tls.MissingCredentialsError, match=tls.KEY_FILE):
        held.load(certs)


def test_status_reports_how_late_the_event_loop_woke(tmp_path: Path) -> None:
    """A simulator whose loop is starved shows it (`loop_lag_max_s`), and the figure is the
    worst since the last status."""

    async def scenario() -> tuple[float, float]:
        sim = Simulator(SimOptions(data_dir=tmp_path, join_addr="127.0.0.1:1", token="t", nodes=1))
        watching = asyncio.create_task(sim.watch_loop(tick=0.01))
        try:
            await asyncio.sleep(0.05)
            time.sleep(0.3)  # the loop blocked, as by 1,000 nodes' work at once
            await until(lambda: sim.loop_lag > 0.2, message="the lag recorded")
            return sim.status()["loop_lag_max_s"], sim.status()["loop_lag_max_s"]
        finally:
            watching.cancel()

    starved, after = asyncio.run(scenario())
    assert starved >= 0.2
    assert after < 0.2  # reset by the status that reported it


def test_the_heap_trimmer_gives_freed_memory_back() -> None:
    """Buffers freed below a live allocation stay in the process until trimmed: the simulator's
    1,000 channels left ~1 MiB each so (ADR 71). In a fresh process, for a clean heap."""
    script = """
from warren.heap import heap_trimmer, rss_bytes
trim = heap_trimmer()
blocks = [bytes(64 * 1024) for _ in range(3000)]  # ~190 MiB from the C heap, below mmap's threshold
keep = bytes(64 * 1024)  # above them: the heap cannot shrink from its top
del blocks
freed = rss_bytes()
trim()
print(freed - rss_bytes())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert int(result.stdout) > 100 * 2**20, result.stdout


TOKEN = "WRNTKN-1-" + "ab" * 32 + "-" + "s" * 40  # well formed; never used to join


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nodes", "3", "127.0.0.1:9"], "--token is required"),
        (["--nodes", "0", "--token", TOKEN, "127.0.0.1:9"], "--nodes must be from 1"),
        (["--nodes", "3", "--token", "bad", "127.0.0.1:9"], "join token is malformed"),
        (["--nodes", "3", "--token", TOKEN], "join address"),
        (["--nodes", "3", "--token", TOKEN, "--label", "bad label=x", "127.0.0.1:9"], "label"),
        (["--nodes", "3", "--token", TOKEN, "--fail-rate", "2", "127.0.0.1:9"], "at most 1"),
        (["--nodes", "3", "--token", TOKEN, "--start-delay", "soon", "127.0.0.1:9"], "invalid duration"),
        (["--kill", "0"], "at least 1"),
        (["--kill", "1", "--status"], "not both"),
    ],
)
def test_cli_refuses_bad_input_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    from warren.cli.main import main

    try:
        code = main(["sim", "--data-dir", str(tmp_path), *argv])
    except SystemExit as exited:  # argparse's own errors exit; the handler's return
        code = int(exited.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_kill_without_a_running_simulator_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from warren.cli.main import main

    assert main(["sim", "--kill", "2", "--data-dir", str(tmp_path)]) == 5
    assert "no simulator answers" in capsys.readouterr().err


def test_a_join_that_times_out_is_tried_again_but_a_refused_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load a join times out ("unreachable"): one slow join must not end the simulator."""
    from warren.agent import join as agent_join
    from warren.node import simnode

    failures = [agent_join.JoinError("unreachable", "timed out"), agent_join.JoinError("busy", "busy")]
    calls: list[str] = []

    def fake_join(token: str, addr: str, data_dir: Path, name: str) -> agent_join.JoinResult:
        calls.append(name)
        if failures:
            raise failures.pop(0)
        return agent_join.JoinResult(node_id="n1", role="worker", managers=[addr], data_dir=data_dir)

    monkeypatch.setattr(agent_join, "join", fake_join)
    monkeypatch.setattr(simnode.time, "sleep", lambda seconds: None)
    options = SimOptions(data_dir=tmp_path, join_addr="127.0.0.1:9", token="t", nodes=1)
    assert simnode.join_one(options, 3) == (tmp_path / "nodes" / "sim-0003", "n1")
    assert calls == ["sim-0003"] * 3

    failures[:] = [agent_join.JoinError("denied", "the token was rotated")]
    calls.clear()
    with pytest.raises(agent_join.JoinError, match="rotated"):
        simnode.join_one(options, 4)
    assert calls == ["sim-0004"]


class _SlowToDie:
    """A node whose tasks take a while to wind down once it is killed (a busy simulator)."""

    def __init__(self, name: str, log: list[str], index: int = 1) -> None:
        self.hostname = self.node_id = name
        self.index = index
        self.killed = False
        self.log = log

    def vanish(self) -> None:
        self.killed = True
        self.log.append(f"gone {self.hostname}")

    async def kill(self) -> None:
        if not self.killed:
            self.vanish()
        await asyncio.sleep(0.01)
        self.log.append(f"wound down {self.hostname}")


def test_killed_nodes_all_vanish_before_any_winds_down(tmp_path: Path) -> None:
    """Nodes killed together die at the same instant (#15 S3): none heartbeats on while another
    winds down, so the managers see them die together."""
    sim = Simulator(SimOptions(data_dir=tmp_path, join_addr="127.0.0.1:1", token="t", nodes=4))
    log: list[str] = []
    sim.nodes = [_SlowToDie(f"sim-{i}", log, index=i) for i in range(4)]  # type: ignore[misc]
    killed = run(sim.kill(3))
    assert len(killed) == 3 and len(sim.live()) == 1
    assert [entry.split()[0] for entry in log] == ["gone"] * 3 + ["wound"] * 3
    assert sim.live()[0].index == 0  # the tracking node goes last (ADR 81)
    assert [node.index for node in run(sim.kill(5))] == [0]


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["prepare", "start", "stop", "remove"]), st.integers(0, 4)), max_size=40))
def test_the_running_count_is_kept_as_containers_change(ops: list[tuple[str, int]]) -> None:
    """#15: `running()` is kept, not counted at each status; it always equals a count."""
    rt = SimRuntime(fail_rate=0.3, draw=random.Random(7).random)
    for op, k in ops:
        rid = f"sim-t{k}"
        try:
            if op == "prepare":
                rt.prepare(ContainerSpec(task_id=f"t{k}", image="busybox"))
            elif op == "start":
                rt.start(rid)
            elif op == "stop":
                rt.stop(rid, 0.0)
            else:
                rt.remove(rid)
        except RuntimeFailure:
            pass  # no such container, or a simulated failed start
        assert rt.running() == sum(1 for c in rt.list() if c.state == ContainerState.RUNNING)


def test_a_status_without_states_reads_no_task(tmp_path: Path) -> None:
    """The scale bench polls the simulator every 2 s: without `states` a status reads no task."""
    from types import SimpleNamespace

    def every_task() -> dict[str, int]:
        raise AssertionError("every task read")

    sim = Simulator(SimOptions(data_dir=tmp_path, join_addr="127.0.0.1:1", token="t", nodes=1))
    runtime = SimRuntime()
    runtime.prepare(ContainerSpec(task_id="t1", image="busybox"))
    runtime.start("sim-t1")
    worker = SimpleNamespace(controllers={"t1": None, "t2": None}, counts_by_state=every_task)
    session = SimpleNamespace(assignments=SimpleNamespace(endpoints_index=5))
    node = SimpleNamespace(
        killed=False, connected=True, hostname="sim-0000", worker=worker, runtime=runtime, session=session
    )
    sim.nodes.append(node)  # type: ignore[arg-type]
    status = sim.status(states=False)
    assert "tasks" not in status and (status["task_count"], status["running"], status["starts"]) == (2, 1, 1)
    assert status["endpoints_untracked"] == 1  # its index's set is not among the tracker's
    sim.endpoints.record(5, KeyOrdered())
    assert sim.status(states=False)["endpoints_untracked"] == 0
    with pytest.raises(AssertionError, match="every task read"):
        sim.status()


def test_the_simulator_thaws_when_fewer_nodes_hold_a_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ADR 77: a lost session's objects were frozen while it lived; fewer connected nodes than
    before thaws them, once the count has held still (not while nodes reconnect), and more or as
    many does not."""
    from warren import gcpolicy

    class Node:
        connected = True

    thaws: list[int] = []
    monkeypatch.setattr(gcpolicy, "thaw", lambda: thaws.append(1))
    sim = Simulator(SimOptions(data_dir=tmp_path, join_addr="127.0.0.1:1", token="t", nodes=3))
    nodes = [Node(), Node(), Node()]
    sim.nodes = nodes  # type: ignore[assignment]

    async def scenario() -> None:
        looking = asyncio.create_task(sim.thaw_loop(every=0.01, settle=0.1))
        try:
            await async_holds(lambda: thaws == [], 0.05, message="no thaw while all hold a session")
            nodes[1].connected = False
            await until(lambda: thaws == [1], timeout=5, message="a thaw")
            nodes[1].connected = True  # reconnected: more than at the last look
            sim.nodes.append(Node())  # type: ignore[arg-type]
            await async_holds(lambda: thaws == [1], 0.2, message="no thaw as sessions come back")
            # Lost while others come and go (a leader change): no thaw until the count holds still.
            nodes[0].connected = False
            flapping = True

            async def flap() -> None:
                while flapping:
                    nodes[2].connected = not nodes[2].connected
                    await asyncio.sleep(0.02)

            flapper = asyncio.create_task(flap())
            await async_holds(lambda: thaws == [1], 0.3, message="no thaw while sessions come and go")
            flapping = False
            await flapper
            await until(lambda: thaws == [1, 1], timeout=5, message="a thaw once the count holds still")
        finally:
            looking.cancel()

    asyncio.run(scenario())
