"""Random object ids, Docker-style: 25 lower-case base-36 characters."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_LENGTH = 25
_SPACE = len(_ALPHABET) ** _LENGTH  # about 2**129.2


def new_id() -> str:
    # One draw from the system's randomness, not one per character: a create makes an id on the
    # event loop, and 25 reads of os.urandom were a tenth of its time under load (ADR 51).
    number = secrets.randbits(130)
    while number >= _SPACE:  # uniform over the ids: redraw rather than fold the excess (bias)
        number = secrets.randbits(130)
    chars = []
    for _ in range(_LENGTH):
        number, digit = divmod(number, 36)
        chars.append(_ALPHABET[digit])
    return "".join(chars)
