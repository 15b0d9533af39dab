"""Text shown to operators: input quoted and cut short in messages, control characters made
visible in terminal output, sizes in binary units. Pure and stdlib-only (the CLI imports it at start-up)."""

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
    significant = text.lstrip("0")  # "0080" is 80: leading zeros do not make a number large
    return int(significant or "0") if len(significant) <= 19 else 10**19


def format_size(n: int) -> str:
    """Bytes as a short binary size: 536870912 -> "512MiB"."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.3g}{unit}"
    return f"{n}B"


def escape_control(text: str) -> str:
    """`text` with each control character written as an escape (\\x1b), for a terminal."""
    return CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
