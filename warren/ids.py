"""Random object ids, Docker-style: 25 lower-case base-36 characters."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(25))
