"""Parse the values operators type on the command line: sizes, durations, CPU counts, addresses.

Every parser raises ValueError with a one-line message fit to show as is; the parser in
warren.cli.main turns it into a usage error (exit 2). Stdlib only: this runs before any command.
Numbers are ASCII digits only (`\\d` and int() also take other scripts' digits), patterns are
used with fullmatch (`$` also matches before a trailing newline), and every value is bounded,
so that none reaches protobuf out of its field's range.
"""

from __future__ import annotations

from warren.text import CONTROL_RE as _CONTROL_RE
from warren.text import MAX_DURATION as MAX_DURATION
from warren.text import MAX_INT64 as MAX_INT64
from warren.text import NANO as NANO
from warren.text import PLAIN_NUMBER_RE as _PLAIN_NUMBER_RE
from warren.text import ascii_int
from warren.text import format_size as format_size  # re-exported: the CLI's sizes
from warren.text import parse_cpus as parse_cpus  # re-exported: the Compose loader reads them too
from warren.text import parse_duration as parse_duration
from warren.text import parse_size as parse_size
from warren.text import shown as _shown

MAX_COUNT = 2**31 - 1  # counts travel as int32 at the narrowest (retries, max attempts)


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
