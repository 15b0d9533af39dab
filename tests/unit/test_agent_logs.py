"""The agent's log files: tail-N, the arrival-time index, line reading (partial lines, long
lines, since, follow, replaced files), and serving subscriptions against a scripted stub."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from tests.waiting import async_holds, async_wait_for
from warren.agent import logfiles
from warren.agent.logfiles import RECORD, IndexCursor, TaskLogReader, TimeIndex, tail_offset
from warren.agent.logs import LogAgent, check_subscription
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.validate import MAX_LOG_LINE


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _tail(path: Path, n: int, block: int = logfiles.TAIL_BLOCK) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return path.read_bytes()[tail_offset(fd, size, n, block) :]
    finally:
        os.close(fd)


# -- tail -N --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "n", "expected"),
    [
        (b"", 3, b""),
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc\n", 3, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 10, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 0, b""),
        (b"a\nb\nc\n", -1, b"a\nb\nc\n"),
        (b"a\nb\npartial", 1, b"partial"),  # a last line without newline counts as a line
        (b"a\nb\npartial", 2, b"b\npartial"),
        (b"\n\n\n", 2, b"\n\n"),
        (b"only", 1, b"only"),
    ],
)
def test_tail_offset(tmp_path: Path, content: bytes, n: int, expected: bytes) -> None:
    path = tmp_path / "t.log"
    path.write_bytes(content)
    assert _tail(path, n) == expected


def test_tail_offset_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    lines = [f"line number {i}\n".encode() for i in range(50)]
    path.write_bytes(b"".join(lines))
    for n in (1, 2, 13, 49, 50, 51):
        assert _tail(path, n, block=7) == b"".join(lines[-n:])


# -- the arrival-time index -------------------------------------------------------------------------
def test_index_stamps_growth_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t.idx"
    index = TimeIndex(path)
    index.observe(0, 10.0)  # nothing to stamp
    index.observe(5, 11.0)
    index.observe(5, 12.0)  # no growth, no record
    index.observe(9, 13.0)
    assert index.count == 2
    assert [IndexCursor(index, off).time_of(off) for off in (0, 4, 5, 8, 9)] == [11.0, 11.0, 13.0, 13.0, None]
    index.close()
    with path.open("ab") as f:
        f.write(b"torn")  # a record cut by kill -9
    again = TimeIndex(path)
    assert (again.count, again.covered, again.last_time) == (2, 9, 13.0)
    assert path.stat().st_size == 2 * RECORD.size
    again.observe(12, 5.0)  # the clock went back: times never do
    assert again.last_time == 13.0
    again.observe(3, 20.0)  # the log was truncated: the old times describe other bytes
    assert (again.count, again.covered) == (1, 3)
    assert IndexCursor(again, 0).time_of(0) == 20.0
    again.close()
    again.observe(100, 30.0)  # closed by a sweep: a no-op, never a write to a reused fd number
    assert IndexCursor(again, 0).time_of(0) is None
    assert path.stat().st_size == RECORD.size


def test_cursor_reads_forward_across_blocks(tmp_path: Path) -> None:
    index = TimeIndex(tmp_path / "t.idx")
    for i in range(1, 21):
        index.observe(i * 10, 100.0 + i)
    cursor = IndexCursor(index, 55, block=4)
    assert [cursor.time_of(off) for off in (55, 59, 60, 120, 199, 200)] == [106.0, 106.0, 107.0, 113.0, 120.0, None]
    index.observe(210, 500.0)  # appended after the cursor read its block
    assert cursor.time_of(205) == 500.0
    index.close()


# -- reading lines ---------------------------------------------------------------------------------
def _reader(tmp_path: Path, clock: Clock, tail: int = -1, since: float = 0.0, follow: bool = False) -> TaskLogReader:
    index = TimeIndex(tmp_path / "t.idx")
    return TaskLogReader(tmp_path / "t.log", lambda: index, tail, since, follow, clock)


def _read_all(reader: TaskLogReader, max_lines: int = 1000) -> list[bytes]:
    lines, offset = reader.read(max_lines, 1 << 20)
    reader.commit(offset)
    return [line.data for line in lines]


def test_history_read_stops_at_the_size_seen_first(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "t.log"
    path.write_bytes(b"one\ntwo\nthree\nunfinished")
    reader = _reader(tmp_path, clock, tail=3)
    with path.open("ab") as f:
        f.write(b" later\nfour\n")
    lines, offset = reader.read(1, 1 << 20)
    assert [line.data for line in lines] == [b"two"]
    assert reader.read(1, 1 << 20)[0] == lines  # nothing moves before commit
    reader.commit(offset)
    assert _read_all(reader) == [b"three", b"unfinished"]  # the partial last line, then stop
    assert reader.finished
    assert _read_all(reader) == []


def test_lines_carry_the_time_they_were_first_seen(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    path = tmp_path / "t.log"
    path.write_bytes(b"early\n")
    index = TimeIndex(tmp_path / "t.idx")
    index.observe(path.stat().st_size, 1000.0)  # the indexer saw it at 1000
    clock.now = 1005.0
    with path.open("ab") as f:
        f.write(b"late\n")  # first seen by the reader, at 1005
    reader = TaskLogReader(path, lambda: index, -1, 0.0, False, clock)
    clock.now = 2000.0
    lines, _ = reader.read(10, 1 << 20)
    assert [(line.data, line.timestamp) for line in lines] == [(b"early", 1000.0), (b"late", 1005.0)]
    # --since leaves out older lines; the same times come back on every read.
    since = TaskLogReader(path, lambda: index, -1, 1001.0, False, clock)
    assert [(line.data, line.timestamp) for line in since.read(10, 1 << 20)[0]] == [(b"late", 1005.0)]


def test_follow_waits_for_newlines_and_flushes_a_stalled_partial_line(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "t.log"
    path.write_bytes(b"old\n")
    reader = _reader(tmp_path, clock, tail=0, follow=True)
    assert _read_all(reader) == []  # tail 0: only new lines
    with path.open("ab") as f:
        f.write(b"new\nhalf")
    assert _read_all(reader) == [b"new"]
    clock.now += 0.5
    assert _read_all(reader) == []  # "half" may still be growing
    clock.now += logfiles.PARTIAL_FLUSH
    assert _read_all(reader) == [b"half"]  # it stopped growing: send it
    with path.open("ab") as f:
        f.write(b" more\n")
    assert _read_all(reader) == [b" more"]
    assert not reader.finished


def test_long_lines_come_in_pieces(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    long = b"x" * (MAX_LOG_LINE * 2 + 10)
    path.write_bytes(long + b"\nshort\n")
    reader = _reader(tmp_path, Clock())
    pieces = _read_all(reader)
    assert [len(p) for p in pieces] == [MAX_LOG_LINE, MAX_LOG_LINE, 10, 5]
    assert b"".join(pieces[:3]) == long


def test_follow_picks_up_a_file_that_appears_or_is_replaced(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "t.log"
    reader = _reader(tmp_path, clock, tail=5, follow=True)
    assert reader.gone and _read_all(reader) == []
    path.write_bytes(b"first\n")
    assert _read_all(reader) == [b"first"]
    path.unlink()
    assert _read_all(reader) == [] and reader.gone
    path.write_bytes(b"again, a longer first line\n")  # a new file: from its beginning
    assert _read_all(reader) == [b"again, a longer first line"]


def test_a_missing_file_is_finished_without_follow(tmp_path: Path) -> None:
    reader = _reader(tmp_path, Clock())
    assert reader.finished and _read_all(reader) == []


def test_subscription_checks_refuse_paths() -> None:
    ok = dpb.LogSubscription(id="s1", task_ids=["abc", "t-1.x"], tail=-1)
    assert check_subscription(ok) is None
    assert "bad task id" in (check_subscription(dpb.LogSubscription(id="s1", task_ids=["../etc/passwd"])) or "")
    assert "bad task id" in (check_subscription(dpb.LogSubscription(id="s1", task_ids=["a/b"])) or "")
    assert check_subscription(dpb.LogSubscription(id="", task_ids=["a"])) is not None
    assert check_subscription(dpb.LogSubscription(id="s", task_ids=["a"], tail=-2)) is not None


# -- the agent: stamping and serving ------------------------------------------------------------------
def test_stamp_and_sweep(tmp_path: Path) -> None:
    clock = Clock(100.0)
    running = ["a"]
    agent = LogAgent(tmp_path, running=lambda: running, clock=clock)
    (tmp_path / "a.log").write_bytes(b"x\n")
    (tmp_path / "stale.idx").write_bytes(b"")  # its log is gone
    agent.stamp()
    clock.now = 101.0
    with (tmp_path / "a.log").open("ab") as f:
        f.write(b"y\n")
    agent.stamp()
    agent.stamp()  # no growth: no record
    assert (tmp_path / "a.idx").stat().st_size == 2 * RECORD.size
    agent.sweep()
    assert not (tmp_path / "stale.idx").exists() and (tmp_path / "a.idx").exists()
    (tmp_path / "a.log").unlink()  # the task was removed
    running.clear()
    agent.sweep()
    assert not (tmp_path / "a.idx").exists()
    agent.close()


class FakeCall:
    """A server stream: subscriptions from a queue until None."""

    def __init__(self, outbox: asyncio.Queue[dpb.LogSubscription | None]) -> None:
        self.outbox = outbox
        self.cancelled = False

    def __aiter__(self) -> FakeCall:
        return self

    async def __anext__(self) -> dpb.LogSubscription:
        msg = await self.outbox.get()
        if msg is None:
            raise StopAsyncIteration
        return msg

    def cancel(self) -> None:
        self.cancelled = True


class FakeStub:
    """Records PublishLogs calls; pushes subscriptions from a queue on LogSubscriptions."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[dpb.LogSubscription | None] = asyncio.Queue()
        self.published: list[dpb.PublishLogsRequest] = []
        self.stop = False
        self.fail: grpc.StatusCode | None = None

    def LogSubscriptions(self, request: dpb.LogSubscriptionsRequest) -> FakeCall:
        return FakeCall(self.outbox)

    async def PublishLogs(self, request: dpb.PublishLogsRequest, timeout: float = 0) -> dpb.PublishLogsResponse:
        if self.fail is not None:
            raise grpc.aio.AioRpcError(self.fail, grpc.aio.Metadata(), grpc.aio.Metadata(), "refused")
        self.published.append(request)
        return dpb.PublishLogsResponse(stop=self.stop)

    def lines(self, task_id: str | None = None) -> list[bytes]:
        return [m.data for r in self.published for m in r.messages if task_id is None or m.task_id == task_id]


def test_serving_history_then_done(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_bytes(b"a1\na2\na3\n")
    (tmp_path / "b.log").write_bytes(b"b1\n")

    async def scenario() -> None:
        agent = LogAgent(tmp_path, poll=0.01)
        stub = FakeStub()
        job = asyncio.create_task(agent.serve(stub, "sess"))
        await stub.outbox.put(dpb.LogSubscription(id="s1", task_ids=["a", "b", "gone"], tail=2))
        await async_wait_for(lambda: any(r.done for r in stub.published))
        assert sorted(stub.lines()) == [b"a2", b"a3", b"b1"]
        assert stub.lines("a") == [b"a2", b"a3"]
        assert all(r.session_id == "sess" and r.subscription_id == "s1" for r in stub.published)
        assert stub.published[-1].done and sum(r.done for r in stub.published) == 1
        await async_wait_for(lambda: "s1" not in agent._subs)
        job.cancel()
        agent.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_following_resumes_after_a_lost_stream_without_repeating(tmp_path: Path) -> None:
    log_file = tmp_path / "a.log"
    log_file.write_bytes(b"old1\nold2\n")

    async def scenario() -> None:
        agent = LogAgent(tmp_path, poll=0.01)
        stub = FakeStub()
        job = asyncio.create_task(agent.serve(stub, "sess"))
        sub = dpb.LogSubscription(id="s1", task_ids=["a"], follow=True, tail=1)
        await stub.outbox.put(sub)
        await async_wait_for(lambda: stub.lines() == [b"old2"])
        assert not stub.published[0].messages or stub.published[0].messages[0].data == b"old2"
        with log_file.open("ab") as f:
            f.write(b"new1\n")
        await async_wait_for(lambda: stub.lines() == [b"old2", b"new1"])
        await stub.outbox.put(None)  # the stream ends; the subscription is kept for a while
        await async_wait_for(lambda: agent._subs["s1"].job is None)
        with log_file.open("ab") as f:
            f.write(b"new2\n")
        await stub.outbox.put(sub)  # re-sent on the next stream: resume, not tail again
        await async_wait_for(lambda: stub.lines()[-1:] == [b"new2"])
        assert stub.lines() == [b"old2", b"new1", b"new2"]
        # More tasks for the same subscription: all their lines (they are new tasks).
        (tmp_path / "b.log").write_bytes(b"b1\nb2\n")
        await stub.outbox.put(dpb.LogSubscription(id="s1", task_ids=["a", "b"], follow=True, tail=1))
        await async_wait_for(lambda: stub.lines("b") == [b"b1", b"b2"])
        await stub.outbox.put(dpb.LogSubscription(id="s1", close=True))
        await async_wait_for(lambda: "s1" not in agent._subs)
        job.cancel()
        agent.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_stop_reply_or_a_refusal_ends_the_subscription(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_bytes(b"x\n")

    async def scenario() -> None:
        agent = LogAgent(tmp_path, poll=0.01)
        stub = FakeStub()
        stub.stop = True
        job = asyncio.create_task(agent.serve(stub, "sess"))
        await stub.outbox.put(dpb.LogSubscription(id="s1", task_ids=["a"], follow=True, tail=-1))
        await async_wait_for(lambda: stub.published and "s1" not in agent._subs)
        stub.stop, stub.fail = False, grpc.StatusCode.PERMISSION_DENIED
        await stub.outbox.put(dpb.LogSubscription(id="s2", task_ids=["a"], follow=True, tail=-1))
        await async_wait_for(lambda: "s2" not in agent._subs)
        await stub.outbox.put(dpb.LogSubscription(id="s3", task_ids=["../../x"], follow=True))
        await async_wait_for(stub.outbox.empty, message="the agent to take the subscription")
        await async_holds(lambda: "s3" not in agent._subs, 0.2, message="the bad subscription refused")
        job.cancel()
        agent.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))
