"""Resolving a task's user ("name", "uid", "name:group", "uid:gid") on the host."""

from __future__ import annotations

import grp
import pwd
from collections.abc import Sequence

from warren.agent.runtime import RuntimeFailure
from warren.text import ascii_int


def resolve_user(user: str) -> tuple[int | None, int | None]:
    """(uid, gid) for "name", "uid", "name:group" or "uid:gid"; (None, None) for the agent's user."""
    if not user:
        return None, None
    name, _, group = user.partition(":")
    number, group_number = ascii_int(name), ascii_int(group)
    entry = None
    try:
        entry = pwd.getpwuid(number) if number is not None else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        if number is None:
            msg = f"unable to find user {name}: no matching entries in passwd file"
            raise RuntimeFailure(msg, permanent=True) from None
    uid = number if number is not None else entry.pw_uid  # type: ignore[union-attr]
    if not group:
        return uid, entry.pw_gid if entry else 0
    if group_number is not None:
        return uid, group_number
    try:
        return uid, grp.getgrnam(group).gr_gid
    except KeyError:
        msg = f"unable to find group {group}: no matching entries in group file"
        raise RuntimeFailure(msg, permanent=True) from None


def resolve_groups(groups: Sequence[str]) -> list[int]:
    """--group-add as gids: numbers as they are, names from the host's group file."""
    gids = []
    for group in groups:
        number = ascii_int(group)
        if number is not None:
            gids.append(number)
            continue
        try:
            gids.append(grp.getgrnam(group).gr_gid)
        except KeyError:
            msg = f"unable to find group {group}: no matching entries in group file"
            raise RuntimeFailure(msg, permanent=True) from None
    return gids
