"""Tables, JSON and human times for command output. rich and json_format load on first use."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any


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
    from google.protobuf import json_format

    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(value: Any) -> None:
    """Print a message, a list of messages, or plain data as indented JSON on stdout."""
    if isinstance(value, list | tuple):
        data: Any = [message_dict(v) if hasattr(v, "DESCRIPTOR") else v for v in value]
    elif hasattr(value, "DESCRIPTOR"):
        data = message_dict(value)
    else:
        data = value
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _console(file: Any = None) -> Any:
    from rich.console import Console

    out = file or sys.stdout
    # Not a terminal: no colour, and no wrapping at 80 columns, so pipes and greps see whole rows.
    width = None if out.isatty() else 100_000
    return Console(file=out, highlight=False, soft_wrap=False, width=width)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A docker-style table: no borders, upper-case headers, two spaces between columns."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), show_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))  # Text: no markup parsing of values
    console = _console()
    with console.capture() as captured:
        console.print(table)
    # rich pads every cell to its column's width; drop the padding that ends each line.
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_fields(fields: Iterable[tuple[str, Any]]) -> None:
    """Aligned "Key:  value" lines; values may be lists (one per line) and empty ones are skipped."""
    items = [(k, v) for k, v in fields if v not in (None, "", [], {})]
    width = max((len(k) for k, _ in items), default=0) + 2
    lines = []
    for key, value in items:
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            label = f"{key}:" if i == 0 else ""
            lines.append(f"{label:<{width}}{v}")
    sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))
