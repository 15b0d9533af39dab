"""Random object ids, Docker-style: 25 lower-case base-36 characters."""

from __future__ import annotations

import os
import threading

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_LENGTH = 25
_SPACE = len(_ALPHABET) ** _LENGTH  # about 2**129.2
_DRAW_BYTES = 17  # 136 bits a draw
# Draws at or past the largest multiple of the space are redrawn, so that `draw % _SPACE` is
# uniform over the ids; that is one draw in about 140.
_ACCEPT_BELOW = (1 << (8 * _DRAW_BYTES)) // _SPACE * _SPACE
# The system's randomness is read this many draws at a time. Each read is a system call that
# releases the GIL, and taking it back waited behind the manager's other threads: with one read
# per id, the leader's pass spent 5 % of its samples there while placing 10,000 tasks (#15).
_DRAWS_PER_READ = 64


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


def _draw() -> int:
    entropy = _entropy
    if entropy.offset + _DRAW_BYTES > len(entropy.pool):
        entropy.pool, entropy.offset = os.urandom(_DRAW_BYTES * _DRAWS_PER_READ), 0
    start = entropy.offset
    entropy.offset = start + _DRAW_BYTES
    return int.from_bytes(entropy.pool[start : start + _DRAW_BYTES], "big")


def new_id() -> str:
    number = _draw()
    while number >= _ACCEPT_BELOW:
        number = _draw()
    number %= _SPACE
    chars = []
    for _ in range(_LENGTH):
        number, digit = divmod(number, 36)
        chars.append(_ALPHABET[digit])
    return "".join(chars)
