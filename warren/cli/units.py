"""Parse the values operators type on the command line: sizes, durations, CPU counts, addresses.

Every parser raises ValueError with a one-line message fit to show as is; the parser in
warren.cli.main turns it into a usage error (exit 2). Stdlib only: this runs before any command.
Numbers are ASCII digits only (`\\d` and int() also take other scripts' digits), patterns are
used with fullmatch (`$` also matches before a trailing newline), and every value is bounded,
so that none reaches protobuf out of its field's range.
"""

from __future__ import annotations

import re
from decimal import Decimal

from warren.text import CONTROL_RE as _CONTROL_RE
from warren.text import ascii_int
from warren.text import format_size as format_size  # re-exported: the CLI's sizes
from warren.text import shown as _shown

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
_PLAIN_NUMBER_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")

NANO = 1_000_000_000
MAX_INT64 = 2**63 - 1  # sizes and nano-CPUs travel as int64
MAX_COUNT = 2**31 - 1  # counts travel as int32 at the narrowest (retries, max attempts)
MAX_DURATION = 366 * 24 * 3600  # a year, as the manager's own bound: longer is a typo


def parse_size(text: str) -> int:
    """Bytes from "512M", "1G", "1.5GiB", "1024K" or plain "1048576" (units are binary, as Docker's)."""
    match = _SIZE_RE.fullmatch(text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {_shown(text)}: use a number of bytes or a unit such as 512M, 1G, 1024K")
    value = Decimal(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value != value.to_integral_value():
        raise ValueError(f"invalid size {_shown(text)}: not a whole number of bytes")
    if value > MAX_INT64:
        raise ValueError(f"invalid size {_shown(text)}: at most {MAX_INT64} bytes (8 EiB)")
    return int(value)


def parse_duration(text: str) -> float:
    """Seconds from "10s", "500ms", "1m", "1h30m", "1.5s" or plain seconds "90"."""
    s = text.strip(" ").lower()
    pos, total = 0, Decimal(0)
    if _PLAIN_NUMBER_RE.fullmatch(s):
        pos, total = len(s), Decimal(s)
    for part in _DURATION_PART_RE.finditer(s) if not pos else ():
        if part.start() != pos:
            break
        total += Decimal(part.group(1)) * _DURATION_UNITS[part.group(2)]
        pos = part.end()
    if not s or pos != len(s):
        raise ValueError(f"invalid duration {_shown(text)}: use e.g. 10s, 500ms, 1m, 1h30m or plain seconds")
    if total > MAX_DURATION:
        raise ValueError(f"invalid duration {_shown(text)}: at most a year (8784h)")
    return float(total)


def parse_cpus(text: str) -> int:
    """Nano-CPUs from a number of cores: "0.5" -> 500_000_000, "2" -> 2_000_000_000."""
    if not _PLAIN_NUMBER_RE.fullmatch(text.strip(" ")):  # no exponent, sign, NaN or Infinity
        raise ValueError(f"invalid CPU count {_shown(text)}: use a number of cores such as 0.5 or 2")
    nano = Decimal(text.strip(" ")) * NANO
    if nano != nano.to_integral_value():
        raise ValueError(f"invalid CPU count {_shown(text)}: at most 9 decimal places")
    if nano > MAX_INT64:
        raise ValueError(f"invalid CPU count {_shown(text)}: at most {MAX_INT64 // NANO} cores")
    return int(nano)


def parse_count(text: str) -> int:
    """A non-negative integer, e.g. a replica count."""
    value = ascii_int(text.strip(" "))
    if value is None:
        raise ValueError(f"invalid count {_shown(text)}: expected a whole number >= 0")
    if value > MAX_COUNT:
        raise ValueError(f"invalid count {_shown(text)}: at most {MAX_COUNT}")
    return value


def parse_ratio(text: str) -> float:
    """A fraction from 0 to 1, e.g. a failure ratio: "0.2"."""
    if not _PLAIN_NUMBER_RE.fullmatch(text.strip(" ")):  # no exponent, sign, NaN or Infinity
        raise ValueError(f"invalid ratio {_shown(text)}: expected a number from 0 to 1, such as 0.2")
    value = float(text.strip(" "))
    if value > 1:
        raise ValueError(f"invalid ratio {_shown(text)}: at most 1")
    return value


def parse_seconds(text: str) -> float:
    """A positive number of seconds (an RPC deadline); durations such as 30s are accepted too."""
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"invalid duration {_shown(text)}: must be more than 0 seconds")
    return value


def parse_key_value(text: str, what: str = "value", require_value: bool = True) -> tuple[str, str]:
    """("K", "V") from "K=V"; "K" alone gives ("K", "") unless a value is required."""
    key, sep, value = text.partition("=")
    key = key.strip(" ")  # spaces only: a newline or tab is the manager's to refuse, not to hide
    if not key or (require_value and not sep):
        raise ValueError(f"invalid {what} {_shown(text)}: expected KEY=VALUE")
    return key, value


def parse_hostport(text: str) -> str:
    """Validate "HOST:PORT" ("[::1]:4242" for IPv6) and return it unchanged."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = ascii_int(port)
    if not sep or not host or number is None or not 0 < number < 65536 or _CONTROL_RE.search(host):
        raise ValueError(f"invalid address {_shown(text)}: expected HOST:PORT, e.g. 127.0.0.1:4242")
    return text


def parse_port(text: str) -> int:
    number = ascii_int(text)
    if number is None or not 0 < number < 65536:
        raise ValueError(f"invalid port {_shown(text)}: expected 1-65535")
    return number


def parse_publish(text: str) -> tuple[int, int, str]:
    """(published, target, protocol) from "8080:80", "8080:80/udp"."""
    ports, _, protocol = text.partition("/")
    protocol = protocol.lower() or "tcp"
    published, sep, target = ports.partition(":")
    if not sep or protocol not in ("tcp", "udp"):
        raise ValueError(f"invalid port mapping {_shown(text)}: expected PUBLISHED:TARGET[/tcp|udp], e.g. 8080:80")
    try:
        return parse_port(published), parse_port(target), protocol
    except ValueError as exc:
        raise ValueError(f"invalid port mapping {_shown(text)}: {exc}") from None


_PUBLISH_KEYS = ("mode", "published", "target", "protocol")


def parse_publish_option(text: str) -> tuple[int, int, str, str]:
    """(published, target, protocol, mode) from the short syntax ("8080:80/udp", ingress) or
    Docker's long one ("mode=host,published=8080,target=80,protocol=udp"; published 0 when
    omitted, which the manager refuses in host mode, ADR 46)."""
    if "=" not in text:
        return (*parse_publish(text), "ingress")
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in _PUBLISH_KEYS or key in fields:
            raise ValueError(
                f"invalid port {_shown(text)}: expected mode=ingress|host,published=N,target=N[,protocol=tcp|udp]"
            )
        fields[key] = value.strip()
    mode, protocol = fields.get("mode", "ingress").lower(), fields.get("protocol", "tcp").lower()
    if mode not in ("ingress", "host"):
        raise ValueError(f"invalid port {_shown(text)}: mode must be ingress or host")
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"invalid port {_shown(text)}: protocol must be tcp or udp")
    if "target" not in fields:
        raise ValueError(f"invalid port {_shown(text)}: target=N is required")
    try:
        published = parse_port(fields["published"]) if "published" in fields else 0
        return published, parse_port(fields["target"]), protocol, mode
    except ValueError as exc:
        raise ValueError(f"invalid port {_shown(text)}: {exc}") from None


def parse_unpublish(text: str) -> tuple[int, str]:
    """(published, protocol) from "8080", "8080/udp" or a whole "8080:80/udp" mapping."""
    ports, _, protocol = text.partition("/")
    protocol = protocol.lower() or "tcp"
    published = ports.partition(":")[0]
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"invalid published port {_shown(text)}: expected PUBLISHED[/tcp|udp], e.g. 8080")
    try:
        return parse_port(published), protocol
    except ValueError as exc:
        raise ValueError(f"invalid published port {_shown(text)}: {exc}") from None


def format_duration(seconds: float) -> str:
    """Seconds in the form parse_duration reads back: 90 -> "1m30s", 0.5 -> "500ms"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole = int(seconds)
    frac = seconds - whole
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if secs or frac or not out:
        out += f"{secs + frac:g}s"
    return out


def format_cpus(nano_cpus: int) -> str:
    return f"{nano_cpus / NANO:g}"
