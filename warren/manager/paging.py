"""Paged list answers (ADR 51): keyset pages, bounded by count and by bytes.

A list is sorted by a unique key; a page token holds the key of the last item a page gave, and
the next page starts after it. Nothing is kept on the server between pages, any manager can
answer the next one, and an item added or removed meanwhile neither shifts nor repeats the
others. The token is opaque to clients (base64 of JSON); one this module did not make for the
same list is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from warren.api import pages

# Items per page when the request says 0, and the most a request may ask for (more is capped).
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = pages.MAX_PAGE_SIZE
# A page stops before it passes this many bytes of items: under gRPC's 4 MiB default receive
# limit, so that any client takes a page whatever its own limit is. One larger item goes alone
# (a task's spec is at most 256 KiB, validate.MAX_SPEC_BYTES).
PAGE_BYTES = 3 << 20

Key = tuple[str | int | float, ...]
T = TypeVar("T")


class Message(Protocol):
    def ByteSize(self) -> int: ...  # protobuf's name


class Repeated(Protocol):
    """A reply's repeated message field (protobuf's container), which a page fills in place:
    building each message apart and then copying it into the reply cost as much again (#15)."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Message: ...
    def __delitem__(self, index: int) -> None: ...


class PagedRequest(Protocol):
    page_size: int
    page_token: str


class PageTokenError(ValueError):
    """The page token is not one this list gave out; str() says so in one line."""


def page_size(requested: int) -> int:
    if requested < 0:
        raise PageTokenError(f"page_size must not be negative (got {requested})")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(kind: str, key: Key) -> str:
    return base64.urlsafe_b64encode(json.dumps([kind, list(key)], separators=(",", ":")).encode()).decode()


def decode_token(kind: str, token: str, key_types: Sequence[type]) -> Key:
    """The key a token of list `kind` holds; PageTokenError if it is not such a token."""
    bad = PageTokenError(f"invalid page token for {kind}: pass the next_page_token of a previous answer")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (UnicodeError, binascii.Error, ValueError):
        raise bad from None
    if not (isinstance(decoded, list) and len(decoded) == 2 and decoded[0] == kind and isinstance(decoded[1], list)):
        raise bad
    key = decoded[1]
    if len(key) != len(key_types) or not all(
        type(value) is wanted or (wanted is float and type(value) is int)
        for value, wanted in zip(key, key_types, strict=True)
    ):
        raise bad
    return tuple(key)


def page(
    kind: str,
    items: Iterable[T],
    key: Callable[[T], Key],
    key_types: Sequence[type],
    add: Callable[[T], object],
    out: Repeated,
    requested_size: int,
    token: str,
) -> str:
    """Put into `out`, with `add` (which appends one item's message to it), the page of `items` in
    the order of `key` (unique; its parts have `key_types`) that `token` asks for; return the
    token of the next page ("" on the last). Only the page is sorted: O(n log page) for n
    items, not a sort of the whole list per page."""
    size = page_size(requested_size)
    # No (key, item) pairs kept for the whole list: 100,000 of them cost more in the garbage
    # collector's passes than the sort itself.
    if token:
        after = decode_token(kind, token, key_types)
        rest = [item for item in items if key(item) > after]
    else:
        rest = list(items)
    chosen = heapq.nsmallest(size, rest, key=key) if len(rest) > size else sorted(rest, key=key)
    given = _within_bytes(chosen, add, out)
    return encode_token(kind, key(chosen[given - 1])) if given < len(rest) else ""


def page_sorted(
    kind: str,
    ordered: Sequence[T],
    key: Callable[[T], Key],
    key_types: Sequence[type],
    add: Callable[[T], object],
    out: Repeated,
    requested_size: int,
    token: str,
) -> str:
    """`page` of a list the caller keeps sorted by `key` (an index): the page starts at a bisect,
    O(log n + page), and the token is the same as `page` would give for that list."""
    size = page_size(requested_size)
    start = bisect.bisect_right(ordered, decode_token(kind, token, key_types), key=key) if token else 0
    chosen = ordered[start : start + size]
    given = _within_bytes(chosen, add, out)
    return encode_token(kind, key(chosen[given - 1])) if start + given < len(ordered) else ""


def _within_bytes(chosen: Sequence[T], add: Callable[[T], object], out: Repeated) -> int:
    """How many of `chosen` went into `out`: up to the one that would take the page past
    PAGE_BYTES (the first always goes, whatever its size)."""
    total = 0
    for given, item in enumerate(chosen):
        add(item)
        total += out[-1].ByteSize()
        if given and total > PAGE_BYTES:
            del out[-1]
            return given
    return len(chosen)
