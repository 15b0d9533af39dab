"""Text shown to operators: input quoted and cut short in messages, control characters made
visible in terminal output, sizes in binary units; and the quantities operators write (sizes,
durations, CPU counts), which the CLI flags and the Compose loader (#14) read alike.
Pure and stdlib-only (the CLI imports it at start-up)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal

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


# -- quantities, as Docker writes them ------------------------------------------------------------
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r" *([0-9]+(?:\.[0-9]+)?|\.[0-9]+) *([a-z]*) *", re.IGNORECASE)

_DURATION_UNITS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(ns|us|µs|ms|s|m|h|d)")
PLAIN_NUMBER_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")

NANO = 1_000_000_000
MAX_INT64 = 2**63 - 1  # sizes and nano-CPUs travel as int64
MAX_DURATION = 366 * 24 * 3600  # a year, as the manager's own bound: longer is a typo


def parse_size(text: str) -> int:
    """Bytes from "512M", "1G", "1.5GiB", "1024K" or plain "1048576" (units are binary, as Docker's)."""
    match = _SIZE_RE.fullmatch(text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {shown(text)}: use a number of bytes or a unit such as 512M, 1G, 1024K")
    value = Decimal(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value != value.to_integral_value():
        raise ValueError(f"invalid size {shown(text)}: not a whole number of bytes")
    if value > MAX_INT64:
        raise ValueError(f"invalid size {shown(text)}: at most {MAX_INT64} bytes (8 EiB)")
    return int(value)


def parse_duration(text: str) -> float:
    """Seconds from "10s", "500ms", "1m", "1h30m", "1.5s" or plain seconds "90"."""
    s = text.strip(" ").lower()
    pos, total = 0, Decimal(0)
    if PLAIN_NUMBER_RE.fullmatch(s):
        pos, total = len(s), Decimal(s)
    for part in _DURATION_PART_RE.finditer(s) if not pos else ():
        if part.start() != pos:
            break
        total += Decimal(part.group(1)) * _DURATION_UNITS[part.group(2)]
        pos = part.end()
    if not s or pos != len(s):
        raise ValueError(f"invalid duration {shown(text)}: use e.g. 10s, 500ms, 1m, 1h30m or plain seconds")
    if total > MAX_DURATION:
        raise ValueError(f"invalid duration {shown(text)}: at most a year (8784h)")
    return float(total)


def parse_cpus(text: str) -> int:
    """Nano-CPUs from a number of cores: "0.5" -> 500_000_000, "2" -> 2_000_000_000."""
    if not PLAIN_NUMBER_RE.fullmatch(text.strip(" ")):  # no exponent, sign, NaN or Infinity
        raise ValueError(f"invalid CPU count {shown(text)}: use a number of cores such as 0.5 or 2")
    nano = Decimal(text.strip(" ")) * NANO
    if nano != nano.to_integral_value():
        raise ValueError(f"invalid CPU count {shown(text)}: at most 9 decimal places")
    if nano > MAX_INT64:
        raise ValueError(f"invalid CPU count {shown(text)}: at most {MAX_INT64 // NANO} cores")
    return int(nano)


def port_texts(ports: Iterable[tuple[int, str]]) -> str:
    """ "8080/tcp, 9090/udp": host ports as users write them, sorted."""
    return ", ".join(f"{port}/{protocol}" for port, protocol in sorted(ports))
