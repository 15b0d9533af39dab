"""Tables, JSON and human times for command output. json_format loads on first use."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from warren.cli.errors import CliError, Exit
from warren.text import escape_control, has_control


def short_id(value: str, n: int = 12) -> str:
    return value[:n]


def ago(ts: float, now: float | None = None) -> str:
    """ "5 seconds ago", "about a minute ago"... for a Unix timestamp; "" for 0 (never)."""
    if not ts:
        return ""
    delta = (time.time() if now is None else now) - ts
    if delta < 1:
        return "just now"
    return f"{human_span(delta)} ago"


def human_span(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return _plural(s, "second")
    if s < 120:
        return "about a minute"
    if s < 3600:
        return _plural(s // 60, "minute")
    if s < 7200:
        return "about an hour"
    if s < 2 * 86400:
        return _plural(s // 3600, "hour")
    if s < 14 * 86400:
        return _plural(s // 86400, "day")
    if s < 60 * 86400:
        return _plural(s // (7 * 86400), "week")
    if s < 730 * 86400:
        return _plural(s // (30 * 86400), "month")
    return _plural(s // (365 * 86400), "year")


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def timestamp(ts: float) -> str:
    """Local time and age: "2025-01-02 10:00:00 (5 minutes ago)"."""
    if not ts:
        return "-"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))} ({ago(ts)})"


def message_dict(message: Any) -> dict[str, Any]:
    """A protobuf message as JSON-ready dict, with proto field names and every field present."""
    from warren.cli import flatjson  # loads json_format

    return flatjson.message_dict(message)


def print_json(value: Any) -> None:
    """Print a message, a list of messages, or plain data as indented JSON on stdout."""
    if isinstance(value, list | tuple):
        data: Any = [message_dict(v) if hasattr(v, "DESCRIPTOR") else v for v in value]
    elif hasattr(value, "DESCRIPTOR"):
        data = message_dict(value)
    else:
        data = value
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A docker-style table: no borders, upper-case headers, two spaces between columns. Control
    characters in cells are shown escaped: a stored value must not drive the terminal.

    Plain padding rather than a table library: rich took ~100 ms to lay out 300 rows, a third
    of the CLI's start-up budget, for output that is plain text anyway."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    if has_control("".join("".join(row) for row in cells)):  # one scan; a cell at a time only if needed
        cells = [[escape_control(c) for c in row] for row in cells]
    widths = [max(map(len, column)) for column in zip(*cells, strict=True)]
    template = "  ".join(f"%-{width}s" for width in widths)  # one format per row, not a ljust per cell
    sys.stdout.write("".join((template % tuple(row)).rstrip() + "\n" for row in cells))


def print_fields(fields: Iterable[tuple[str, Any]]) -> None:
    """Aligned "Key:  value" lines; values may be lists (one per line) and empty ones are skipped.
    Control characters are shown escaped, as in print_table."""
    items = [(k, v) for k, v in fields if v not in (None, "", [], {})]
    width = max((len(k) for k, _ in items), default=0) + 2
    lines = []
    for key, value in items:
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            label = f"{key}:" if i == 0 else ""
            lines.append(f"{label:<{width}}{escape_control(str(v))}")
    sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))


def per_name(names: Iterable[str], action: Callable[[str], object]) -> int:
    """Run `action` on each name and print the name it succeeded for. A failure is one stderr line
    and the others still run (like `docker rm a b`); the exit code is the last failure's. No
    manager or no credentials stops at once: every other name would fail the same way."""
    code = 0
    for name in names:
        try:
            action(name)
        except CliError as exc:
            if exc.code in (Exit.UNAVAILABLE, Exit.CREDENTIALS):
                raise
            sys.stderr.write(f"warren: {exc.message}\n")
            code = exc.code
            continue
        print(name)
    return code
