"""Random object ids, Docker-style: 25 lower-case base-36 characters."""

from __future__ import annotations

import os
import threading

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_LENGTH = 25
# A random byte below 252 (7 * 36) names a character uniformly, by its value modulo 36; bytes at
# or past it are dropped. bytes.translate maps and drops a whole draw in C: an id drawn one
# base-36 digit at a time with divmod was 2.5 % of the leader's loop under writes (#15).
_KEPT_BELOW = 252
_TO_CHARACTER = bytes(ord(_ALPHABET[b % 36]) if b < _KEPT_BELOW else 0 for b in range(256))
_DROPPED = bytes(range(_KEPT_BELOW, 256))
_DRAW_BYTES = _LENGTH + 2  # 27 bytes keep 25 or more 99 % of the time
# The system's randomness is read this much at a time. Each read is a system call that releases
# the GIL, and taking it back waited behind the manager's other threads: with one read per id,
# the leader's pass spent 5 % of its samples there while placing 10,000 tasks (#15).
_READ_BYTES = 4096


class _Entropy(threading.local):
    """Unused bytes of the last read, per thread (no lock on the path of every id)."""

    def __init__(self) -> None:
        self.pool = b""
        self.offset = 0


_entropy = _Entropy()


def _forget_entropy() -> None:
    # A forked child must not hand out its parent's next ids.
    _entropy.pool, _entropy.offset = b"", 0


os.register_at_fork(after_in_child=_forget_entropy)


def _take(count: int) -> bytes:
    entropy = _entropy
    if entropy.offset + count > len(entropy.pool):
        entropy.pool, entropy.offset = os.urandom(_READ_BYTES), 0
    start = entropy.offset
    entropy.offset = start + count
    return entropy.pool[start : start + count]


def new_id() -> str:
    kept = _take(_DRAW_BYTES).translate(_TO_CHARACTER, _DROPPED)
    while len(kept) < _LENGTH:
        kept += _take(_LENGTH - len(kept)).translate(_TO_CHARACTER, _DROPPED)
    return kept[:_LENGTH].decode()
