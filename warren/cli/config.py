"""`warren config ...`: configs, the unencrypted kin of secrets (ADR 38); see warren.cli.secret."""

from __future__ import annotations

from typing import Any

from warren.cli import secret


def register(groups: Any) -> None:
    secret.register(groups, kind="config")
