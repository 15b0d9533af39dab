"""Warren's own logs (ADR 62): the JSON formatter, context fields, bad settings, and the
daemons' --log-format/--log-level refusing bad values with one line and exit 2."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from warren import logsetup

REPO = Path(__file__).resolve().parents[2]


def _record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("warren.manager.dispatcher", logging.WARNING, __file__, 1, message, args, exc_info)


def test_a_json_line_has_time_level_component_message_and_context() -> None:
    with logsetup.context(task="t1", service="web", term=7):
        line = logsetup.JsonFormatter().format(_record("node %s: %s", "n1", "gone"))
    out = json.loads(line)
    assert out["level"] == "warning"
    assert out["logger"] == "warren.manager.dispatcher" and out["component"] == "manager.dispatcher"
    assert out["message"] == "node n1: gone"
    assert (out["task"], out["service"], out["term"]) == ("t1", "web", 7)
    assert out["time"].endswith("Z") and out["time"][10] == "T"  # RFC 3339, UTC
    assert "task" not in json.loads(logsetup.JsonFormatter().format(_record("outside")))


def test_an_exception_is_one_field_of_one_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError as exc:
        line = logsetup.JsonFormatter().format(_record("failed", exc=exc))
    assert "\n" not in line
    out = json.loads(line)
    assert "Traceback" in out["exception"] and "ValueError: bad" in out["exception"]


def test_bound_fields_reach_the_tasks_created_afterwards_only() -> None:
    async def main() -> tuple[dict[str, object], dict[str, object]]:
        async def child() -> dict[str, object]:
            return logsetup.current_fields()

        async def node() -> dict[str, object]:
            logsetup.bind(node="n2")
            return await asyncio.create_task(child())

        inside = await asyncio.create_task(node())
        return inside, logsetup.current_fields()

    # An in-process daemon of an earlier test may have set a process default: it must be unchanged.
    before = logsetup.current_fields().get("node")
    inside, outside = asyncio.run(main())
    assert inside.get("node") == "n2" and outside.get("node") == before != "n2"


@pytest.mark.parametrize(
    ("env", "what"),
    [({"WARREN_LOG_FORMAT": "xml"}, "log format"), ({"WARREN_LOG_LEVEL": "loud"}, "log level")],
)
def test_a_bad_environment_is_refused(env: dict[str, str], what: str) -> None:
    with pytest.raises(logsetup.LogConfigError, match=what):
        logsetup.from_env(env)
    assert logsetup.from_env({"WARREN_LOG_LEVEL": "WARNING"}).level == "warning"


@pytest.mark.parametrize(
    "argv",
    [
        ["cluster", "init", "--log-format", "xml"],
        ["cluster", "init", "--log-level", "loud"],
        ["worker", "start", "--log-format", "yaml"],
        ["cluster", "join", "--token", "x", "127.0.0.1:1", "--log-level", "trace"],
        ["sim", "--log-format", "xml"],
        ["worker", "start", "--log-max-size", "12Q"],
        ["worker", "start", "--log-max-files", "-1"],
    ],
)
def test_bad_flags_are_one_line_and_exit_2(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "warren.cli.main", *argv], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_daemon_command_refuses_a_bad_environment_with_one_line(tmp_path: Path) -> None:
    env = {"WARREN_LOG_LEVEL": "loud", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "warren.cli.main", "worker", "start", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "log level" in result.stderr


def test_the_agent_module_refuses_a_bad_environment_with_one_line(tmp_path: Path) -> None:
    env = {"WARREN_LOG_FORMAT": "xml", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "warren.node.worker", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: WARREN_LOG_FORMAT/WARREN_LOG_LEVEL: log format must be text or json (got 'xml')"
    ]
