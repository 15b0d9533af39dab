"""Hypothesis strategies for API requests, built from the protobuf descriptors.

Every field of every request message gets a value: usually a plausible one (so that a request
gets past the first check and reaches the deeper code), and in a few fields a hostile one:
boundary and out-of-range numbers, NaN and infinities, control characters, unicode digits,
oversized strings and huge repeated fields. Shrinking drops the hostile fields one by one, so a
failing example ends up naming the one field that matters.

Plausible values come from `Hints`: per field name, what a careful operator would send (a
service that exists, the live session id, a valid spec). Fields without a hint get small
ordinary values of their type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

T = FieldDescriptor

INT_RANGES = {
    T.TYPE_INT32: (-(2**31), 2**31 - 1),
    T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    T.TYPE_INT64: (-(2**63), 2**63 - 1),
    T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    T.TYPE_UINT32: (0, 2**32 - 1),
    T.TYPE_FIXED32: (0, 2**32 - 1),
    T.TYPE_UINT64: (0, 2**64 - 1),
    T.TYPE_FIXED64: (0, 2**64 - 1),
}

# Characters that validators get wrong: line ends (a regex `$` matches before a final "\n"),
# NUL, terminal escapes, bidi overrides, unicode line separators, non-ASCII digits (`int()` and
# `str.isdigit()` accept them), full-width letters and a combining mark.
NASTY_CHARS = "\n\r\t\x00\x1b\x7f\x85\u2028\u202e\ufeff\u00b2\u0669\U0001d7d7\uff11\uff41\u0301 =/:"
NASTY_STRINGS = (
    "",
    " ",
    "\n",
    "\x1b[31mred\x1b[0m",
    "warren.reserved",
    "a=b",
    "²",
    "٩",
    "\uff11\uff15",  # full-width "15"
    "-1",
    "99999999999999999999999",
    "nan",
    "inf",
    "1e400",
    "../../etc/passwd",
    "%s%n",
    "${HOME}",
    "node.labels.k\n==v",
    "node.hostname==",
    "SIGKILL\n",
)
HUGE_LENGTHS = (64, 65, 129, 4097, 65_537, 1 << 20, 3 << 20, 5 << 20)
HUGE_COUNTS = (257, 10_000, 100_000)
MAX_REPEATED_BYTES = 6 << 20  # bounded; under the managers' 16 MiB message limit (ADR 21), so the checks see them


def _many(value: Any, count: int) -> list[Any]:
    """`count` copies of `value`, fewer if they would add up to more than MAX_REPEATED_BYTES."""
    size = value.ByteSize() if isinstance(value, Message) else len(value) if isinstance(value, str | bytes) else 8
    return [value] * max(1, min(count, MAX_REPEATED_BYTES // (size + 2)))


def boundary_ints(kind: int) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[kind]
    edges = sorted({low, low + 1, -1 if low < 0 else 0, 0, 1, 2, 63, 64, 65, 65_535, 65_536, high - 1, high})
    return st.one_of(st.sampled_from([e for e in edges if low <= e <= high]), st.integers(low, high))


DOUBLES = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, -1.0, 5e-324, 1.7976931348623157e308, 1e30]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def repeat(alphabet: st.SearchStrategy[str], lengths: tuple[int, ...] = HUGE_LENGTHS) -> st.SearchStrategy[str]:
    """A long string made cheaply: one character repeated (hypothesis draws text slowly)."""
    return st.builds(lambda c, n: c * n, alphabet, st.sampled_from(lengths))


def hostile_text(plausible: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[str]:
    parts: list[st.SearchStrategy[str]] = [
        st.sampled_from(NASTY_STRINGS),
        st.text(alphabet=st.sampled_from(NASTY_CHARS), max_size=8),
        st.text(max_size=40),
        repeat(st.sampled_from("a\n\x00\u00e9")),
    ]
    if plausible is not None:  # a valid value with a nasty character before or after it
        parts.insert(0, st.builds(_beside, plausible, st.sampled_from(NASTY_CHARS), st.booleans()))
    return st.one_of(parts)


def _beside(value: str, char: str, front: bool) -> str:
    return char + value if front else value + char


def ordinary_text() -> st.SearchStrategy[str]:
    return st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


class Hints:
    """Plausible values by field name ("Message.field" wins over "field"), and fields whose
    hostile values must be filtered (a value that would really be accepted and harm the test
    cluster, e.g. a reachable-looking Raft address for AddManager). Not a dataclass: a failing
    example prints its arguments, and this repr keeps them short."""

    def __init__(
        self,
        plausible: dict[str, st.SearchStrategy[Any]],
        hostile_filters: dict[str, Callable[[Any], bool]] | None = None,
    ) -> None:
        self.plausible = plausible
        self.hostile_filters = hostile_filters or {}

    def __repr__(self) -> str:
        return f"Hints({len(self.plausible)} fields)"

    def lookup(self, table: Mapping[str, Any], descriptor: FieldDescriptor) -> Any:
        return table.get(f"{descriptor.containing_type.name}.{descriptor.name}", table.get(descriptor.name))


def _scalar(fd: FieldDescriptor, hostile: bool, plausible: st.SearchStrategy[Any] | None) -> st.SearchStrategy[Any]:
    if hostile:
        return _hostile_scalar(fd, plausible)
    if plausible is not None:
        return plausible
    if fd.type == T.TYPE_STRING:
        return ordinary_text()
    if fd.type == T.TYPE_BYTES:
        return st.binary(max_size=16)
    if fd.type == T.TYPE_BOOL:
        return st.booleans()
    if fd.type in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
        return st.floats(0, 100)
    if fd.type in INT_RANGES:
        return st.integers(0, 3)
    if fd.type == T.TYPE_ENUM:
        return st.sampled_from([v.number for v in fd.enum_type.values])
    raise TypeError(f"no strategy for field {fd.full_name} of type {fd.type}")


def _hostile_scalar(fd: FieldDescriptor, plausible: st.SearchStrategy[Any] | None) -> st.SearchStrategy[Any]:
    if fd.type == T.TYPE_STRING:
        return hostile_text(plausible)
    if fd.type == T.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), repeat(st.sampled_from("\x00\xff")).map(lambda s: s.encode("latin-1")))
    if fd.type == T.TYPE_BOOL:
        return st.booleans()
    if fd.type == T.TYPE_DOUBLE:
        return DOUBLES
    if fd.type == T.TYPE_FLOAT:
        return DOUBLES.filter(lambda x: not math.isfinite(x) or abs(x) < 3e38)
    if fd.type in INT_RANGES:
        return boundary_ints(fd.type)
    if fd.type == T.TYPE_ENUM:
        return st.integers(-(2**31), 2**31 - 1)  # proto3 enums are open: any int32 arrives
    raise TypeError(f"no strategy for field {fd.full_name} of type {fd.type}")


def _repeated(fd: FieldDescriptor, hostile: bool, element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    if not hostile:
        return st.lists(element, max_size=3)
    return st.one_of(st.lists(element, max_size=6), st.builds(_many, element, st.sampled_from(HUGE_COUNTS)))


def _mapping(fd: FieldDescriptor, hostile: bool, hints: Hints) -> st.SearchStrategy[dict[Any, Any]]:
    key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
    plausible_keys = hints.lookup(hints.plausible, fd)
    plain = st.dictionaries(_scalar(key_fd, False, plausible_keys), _scalar(value_fd, False, None), max_size=3)
    if not hostile:
        return plain
    return st.one_of(
        st.dictionaries(_scalar(key_fd, True, plausible_keys), _scalar(value_fd, True, None), max_size=4),
        st.builds(
            lambda n, v: {f"k{i}": v for i in range(len(_many(v, n)))},
            st.sampled_from(HUGE_COUNTS),
            st.sampled_from(["", "v", "x" * 4096]),
        ),
    )


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == T.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def _field(fd: FieldDescriptor, hostile: bool, hints: Hints, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(fd):
        return _mapping(fd, hostile, hints)
    plausible = hints.lookup(hints.plausible, fd)
    if fd.type == T.TYPE_MESSAGE:
        element = plausible if plausible is not None and not hostile else message(fd.message_type, hints, depth + 1)
    else:
        element = _scalar(fd, hostile, plausible)
        keep = hints.lookup(hints.hostile_filters, fd)
        if hostile and keep is not None:
            element = element.filter(keep)
    if fd.is_repeated:
        return _repeated(fd, hostile, element)
    return element


def message(descriptor: Descriptor, hints: Hints, depth: int = 0) -> st.SearchStrategy[Message]:
    """A request of type `descriptor`: plausible fields, and up to two hostile ones."""
    cls = _message_class(descriptor)
    names = [f.name for f in descriptor.fields]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        hostile = draw(st.sets(st.sampled_from(names), max_size=2)) if names and depth < 3 else set()
        result = cls()
        for fd in descriptor.fields:
            if fd.name not in hostile and fd.has_presence and not fd.is_repeated and not draw(st.booleans()):
                continue  # leave unset
            value = draw(_field(fd, fd.name in hostile, hints, depth))
            _assign(result, fd, value)
        return result

    return build()


def _assign(msg: Message, fd: FieldDescriptor, value: Any) -> None:
    target = getattr(msg, fd.name)
    if _is_map(fd):
        target.update(value)
    elif fd.is_repeated:
        target.extend(value)
    elif fd.type == T.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, fd.name, value)


def _message_class(descriptor: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


# Raw request bytes: what a broken or hostile client sends instead of a message.
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _nested(depth: int) -> bytes:
    """`depth` messages each in field 12 of the one around it (recursion limits)."""
    inner = b""
    for _ in range(depth):
        inner = b"\x62" + _varint(len(inner)) + inner
    return inner


MALFORMED = st.one_of(
    st.binary(max_size=64),
    st.just(b"\xff" * 16),  # varints that never end
    st.just(b"\x0a\xff\xff\xff\xff\x0f"),  # field 1, length 2^32-1, no data
    st.just(b"\x0a\x02\xff\xfe"),  # field 1 as a 2-byte string that is not UTF-8
    st.just(b"\x0f"),  # wire type 7 does not exist
    st.just(b"\x0b\x0c"),  # a group start/end (deprecated wire types)
    st.builds(lambda n: b"\x0a" + _varint(n) + b"x", st.sampled_from([2, 1 << 20, 2**31, 2**63])),  # truncated
    st.builds(lambda n: b"\x08" + b"\x80" * n + b"\x01", st.sampled_from([9, 10, 11, 100])),  # over-long varint
    st.builds(_nested, st.sampled_from([50, 101, 1000])),  # deep nesting
)
