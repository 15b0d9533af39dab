"""The pure parts of `--watch`, `node ps` and shell completion (ADR 63): the redraw loop with a
fake event feed and a fake clock, the task table, the filters, and the completers' wiring. The
CLI against real processes is in tests/integration/test_cli_watch.py."""

from __future__ import annotations

import argparse
import io
import itertools
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from warren.cli import completion, task_table, watch
from warren.cli.errors import CliError, Exit
from warren.cli.main import build_parser, main, parse_args
from warren.cli.node import parse_task_filter


class FakeFeed:
    """A feed whose events the test fires; `live` as the test sets it."""

    def __init__(self, live: bool = True) -> None:
        self.changed = threading.Event()
        self.live = live
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "MIN_GAP", 0.0)
    monkeypatch.setattr(watch, "POLL", 0.05)


def _drawer(tables: list[str], feed: FakeFeed) -> Any:
    """Prints tables[i] at the i-th draw; after the last, stops the watch as Ctrl-C would."""
    calls = {"n": 0}

    def draw() -> None:
        n = calls["n"]
        calls["n"] += 1
        if n >= len(tables):
            raise KeyboardInterrupt
        print(tables[n], end="")
        feed.changed.set()  # an event after each draw: the next one comes at once

    return draw


def test_a_pipe_gets_each_changed_table_after_a_separator_and_ctrl_c_exits_0() -> None:
    feed, out = FakeFeed(), Pipe()
    code = watch.watch(argparse.Namespace(), _drawer(["A\n", "A\n", "B\n"], feed), [], out=out, feed=feed)
    assert code == 0 and feed.closed
    frames = out.getvalue().split("--- ")[1:]
    assert [f.split("\n", 1)[1] for f in frames] == ["A\n", "B\n"]  # the unchanged table is not repeated
    assert "\x1b" not in out.getvalue()


def test_a_terminal_is_cleared_and_redrawn_every_time() -> None:
    feed, out = FakeFeed(), Terminal()
    watch.watch(argparse.Namespace(), _drawer(["A\n", "A\n"], feed), [], out=out, feed=feed)
    assert out.getvalue().count(watch.CLEAR) == 2


def test_without_events_the_table_is_polled_and_says_so() -> None:
    feed, out = FakeFeed(live=False), Pipe()
    tables = ["A\n", "B\n", "C\n"]
    calls = {"n": 0}

    def draw() -> None:  # fires no event: only the poll can bring the next draw
        if calls["n"] == len(tables):
            raise KeyboardInterrupt
        print(tables[calls["n"]], end="")
        calls["n"] += 1

    watch.watch(argparse.Namespace(), draw, [], out=out, feed=feed)
    assert calls["n"] == 3
    assert out.getvalue().count("(events unavailable: polling)") == 3


def test_with_events_live_a_pipe_waits_for_one() -> None:
    feed, out = FakeFeed(), Pipe()
    draws: list[float] = []

    def draw() -> None:
        draws.append(time.monotonic())
        if len(draws) == 2:
            raise KeyboardInterrupt
        print("A")

    timer = threading.Timer(0.5, feed.changed.set)
    timer.start()
    watch.watch(argparse.Namespace(), draw, [], out=out, feed=feed)
    assert draws[1] - draws[0] >= 0.45  # several POLL periods went by without a redraw


def test_bursts_are_coalesced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "MIN_GAP", 0.3)
    feed, out = FakeFeed(), Pipe()
    draws: list[float] = []

    def draw() -> None:
        draws.append(time.monotonic())
        if len(draws) == 3:
            raise KeyboardInterrupt
        print(len(draws))
        feed.changed.set()

    watch.watch(argparse.Namespace(), draw, [], out=out, feed=feed)
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(draws))


def test_a_lost_manager_is_retried_then_given_up_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    now = {"t": 0.0}
    feed, out = FakeFeed(), Pipe()
    calls = {"n": 0}

    def draw() -> None:
        calls["n"] += 1
        now["t"] += 10.0
        if calls["n"] == 1:
            print("A")
            feed.changed.set()
            return
        raise CliError("cannot reach a manager at 127.0.0.1:1: connection refused", Exit.UNAVAILABLE)

    with pytest.raises(CliError) as raised:
        watch.watch(argparse.Namespace(), draw, [], out=out, feed=feed, clock=lambda: now["t"])
    assert raised.value.code == Exit.UNAVAILABLE
    assert "gave up watching after 30s" in raised.value.message
    assert calls["n"] == 5  # failing at 20, 30, 40 s: retried, then given up at 50 s (30 s after)
    assert feed.closed


def test_a_manager_back_in_time_resumes_the_watch() -> None:
    feed, out = FakeFeed(), Pipe()
    results: list[Any] = ["A\n", CliError("down", Exit.UNAVAILABLE), "B\n", KeyboardInterrupt()]

    def draw() -> None:
        result = results.pop(0)
        feed.changed.set()  # an event after each listing
        if isinstance(result, BaseException):
            raise result
        print(result, end="")

    assert watch.watch(argparse.Namespace(), draw, [], out=out, feed=feed) == 0
    assert out.getvalue().count("--- ") == 2 and out.getvalue().endswith("B\n")


def test_the_first_listing_failing_fails_at_once() -> None:
    feed = FakeFeed()

    def draw() -> None:
        raise CliError("cannot reach a manager", Exit.UNAVAILABLE)

    with pytest.raises(CliError):
        watch.watch(argparse.Namespace(), draw, [], out=Pipe(), feed=feed)


def test_watch_refuses_json() -> None:
    with pytest.raises(CliError) as raised:
        watch.check_watch_args(argparse.Namespace(watch=True, format="json"))
    assert raised.value.code == Exit.USAGE


@pytest.mark.parametrize(
    "argv",
    [
        ["service", "ps", "web", "--watch"],
        ["service", "ls", "-w"],
        ["node", "ls", "--watch"],
        ["node", "ps", "n1", "n2", "-w"],
        ["stack", "ps", "s", "--watch"],
    ],
)
def test_the_list_commands_take_watch(argv: list[str]) -> None:
    assert parse_args(argv).watch is True


def test_node_ps_filters() -> None:
    assert parse_task_filter("desired-state=running") == ("desired-state", "running")
    for bad in ("desired-state=walking", "state=running", "running"):
        with pytest.raises(ValueError):
            parse_task_filter(bad)


def test_node_ps_needs_a_node_and_a_known_filter(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["node", "ps"], ["node", "ps", "n1", "--filter", "desired-state=nope"]):
        with pytest.raises(SystemExit) as raised:
            parse_args(argv)
        assert raised.value.code == Exit.USAGE
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _task(**fields: Any) -> Any:
    base = dict(
        id="t" * 25,
        service_name="web",
        slot=1,
        node_id="n" * 25,
        desired_state="running",
        state="running",
        created_at=0.0,
        updated_at=0.0,
        error="",
        message="",
        image="busybox:1@sha256:" + "a" * 64,
    )
    return SimpleNamespace(**(base | fields))


def test_node_ps_table(capsys: pytest.CaptureFixture[str]) -> None:
    old = _task(id="old" + "x" * 22, desired_state="shutdown", state="failed", error="e" * 100, created_at=1.0)
    new = _task(created_at=2.0)
    tasks = sorted([old, new], key=task_table.service_order)
    task_table.print_node_tasks(tasks, {"n" * 25: "host1"}, no_trunc=False)
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["ID", "NAME", "IMAGE", "NODE", "DESIRED", "CURRENT", "ERROR/MESSAGE"]
    assert first.split()[:5] == ["t" * 12, "web.1", "busybox:1", "host1", "running"]
    assert "\\_ web.1" in second and "e" * 57 + "..." in second and "e" * 58 not in second
    task_table.print_node_tasks(tasks, {}, no_trunc=True)
    full = capsys.readouterr().out
    assert "t" * 25 in full and "@sha256:" in full and "e" * 100 in full and "n" * 25 in full


# -- completion ---------------------------------------------------------------------------------
def _completer(argv: list[str]) -> Any:
    parser = build_parser()
    completion.attach_name_completers(parser)
    node: argparse.ArgumentParser = parser
    for word in argv:
        node = completion._subcommands(node)[word]
    return {a.dest: getattr(a, "completer", None) for a in node._actions if not a.option_strings}


def test_name_positionals_complete_from_the_cluster_and_new_names_do_not() -> None:
    assert _completer(["service", "inspect"])["name"].kind == "service"
    assert _completer(["service", "scale"])["targets"].kind == "service"
    assert _completer(["node", "ps"])["nodes"].kind == "node"
    assert _completer(["secret", "rm"])["names"].kind == "secret"
    assert _completer(["config", "inspect"])["names"].kind == "config"
    assert _completer(["network", "inspect"])["network"].kind == "network"
    assert _completer(["volume", "rm"])["volumes"].kind == "volume"
    assert _completer(["stack", "ps"])["name"].kind == "stack"
    assert _completer(["service", "create"]).get("name") is None
    assert _completer(["secret", "create"]).get("name") is None


def test_names_come_within_the_budget_or_not_at_all() -> None:
    assert completion.within(1.0, lambda: ["web", "db"]) == ["web", "db"]
    started = time.monotonic()
    assert completion.within(0.2, lambda: time.sleep(5) or ["late"]) == []
    assert time.monotonic() - started < 1.0

    def refused() -> list[str]:
        raise CliError("cannot reach a manager", Exit.UNAVAILABLE)

    assert completion.within(1.0, refused) == []


def test_the_completer_filters_by_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(completion, "cluster_names", lambda kind, parsed, timeout: ["web", "worker", "db"])
    assert completion.NameCompleter("service")("w") == ["web", "worker"]


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_completion_prints_the_script(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "_ARGCOMPLETE" in script and "warren" in script and "wrn" in script


def test_completion_refuses_an_unknown_shell(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["completion", "csh"])
    assert raised.value.code == Exit.USAGE


def test_help_does_not_import_argcomplete_or_grpc() -> None:
    """Completion costs nothing at start: `warren --help` loads neither."""
    code = (
        "import sys; from warren.cli.main import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('argcomplete', 'grpc') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
