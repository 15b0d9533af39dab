"""Operator input echoed back: quoted and cut short in messages, control characters made
visible in terminal output. Pure and stdlib-only (the CLI imports it at start-up)."""

from __future__ import annotations

import re

MAX_SHOWN = 80  # characters of operator input echoed in a message
# C0, DEL and C1: newlines, and the escapes a terminal obeys (ESC [ ..., and CSI, 0x9b, alone).
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(value: str, limit: int = MAX_SHOWN) -> str:
    """`value` quoted for a message, cut at `limit` characters: an error must stay short (a reply's
    message travels in gRPC metadata, which is bounded) however long the input was."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def has_control(text: str) -> bool:
    """Whether `text` holds a control character."""
    return CONTROL_RE.search(text) is not None


def ascii_int(text: str) -> int | None:
    """The value of `text` if it is ASCII digits only, else None. str.isdigit() also takes "²"
    (which int() then refuses) and int() takes other scripts' digits ("٩"). Past 19 digits the
    value is beyond any bound Warren checks (and int() refuses strings of thousands of digits
    with a plain ValueError), so it comes back as 10**19."""
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= 19 else 10**19


def escape_control(text: str) -> str:
    """`text` with each control character written as an escape (\\x1b), for a terminal."""
    return CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
