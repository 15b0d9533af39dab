"""`warren events` (ADR 45): TIME as Docker takes it, its output lines, and a one-line usage
error (exit 2) for bad input to every flag, before any manager is called."""

from __future__ import annotations

import json

import pytest

from warren.api.v1 import control_pb2 as cpb
from warren.cli.errors import Exit
from warren.cli.events import format_json, format_text, parse_time
from warren.cli.main import main

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1735812000", 1735812000.0),  # a Unix time, as Docker
        ("1735812000.25", 1735812000.25),
        ("2025-01-02T10:00:00Z", 1735812000.0),
        ("2025-01-02T11:00:00+01:00", 1735812000.0),
        ("10m", NOW - 600),  # a duration: that long ago
        ("1h30m", NOW - 5400),
    ],
)
def test_times_as_docker_takes_them(text: str, expected: float) -> None:
    assert parse_time(text, "--since", now=NOW) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday"], "invalid --since 'yesterday'"),
        (["--until", "10 parsecs"], "invalid --until"),
        (["--since", "10m", "--until", "20m"], "--until is before --since"),
        (["--after", "12"], "invalid event id '12'"),
        (["--after", "3.0", "--since", "10m"], "not both"),
        (["--filter", "type"], "use KEY=VALUE"),
        (["--filter", "colour=red"], "unknown event filter 'colour'"),
        (["--filter", "type=container"], "unknown event type 'container'"),
        (["--filter", "event=explode"], "unknown event 'explode'"),
        (["--filter", "service="], "needs a value"),
        (["--format", "yaml"], "invalid choice: 'yaml'"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        code = main(["--manager", "127.0.0.1:1", "events", *argv])
        raise SystemExit(code)
    assert exited.value.code == Exit.USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def _event() -> cpb.Event:
    return cpb.Event(
        id="42.1",
        time=1735812000.5,
        type="task",
        action="failed",
        actor_id="t1",
        actor_name="web.1",
        attributes={"service": "web", "exit_code": "3", "error": "boom\x1b[31m"},
    )


def test_a_text_line_as_docker_prints_it() -> None:
    line = format_text(_event())
    assert line == (
        "2025-01-02T10:00:00.500000Z task failed t1 (name=web.1, error=boom\\x1b[31m, exit_code=3, service=web)\n"
    )  # control characters escaped: an event never drives the terminal


def test_a_json_line_for_scripts() -> None:
    record = json.loads(format_json(_event()))
    assert record == {
        "id": "42.1",
        "time": 1735812000.5,
        "type": "task",
        "action": "failed",
        "actor": {"id": "t1", "name": "web.1"},
        "attributes": {"error": "boom\x1b[31m", "exit_code": "3", "service": "web"},
    }
