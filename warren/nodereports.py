"""Checks of what a node's agent tells the managers: its description and WireGuard key when a
session opens, the account of its last failed session, and its tasks' status reports. Pure.

Split from warren.validate, whose rules it uses: what a worker says is input too, whatever
certificate it holds.
"""

from __future__ import annotations

import re

from warren.text import shown
from warren.validate import MAX_KEY, PRINTABLE_RE, ValidationError, check_hostport, check_labels, check_name

_WG_KEY_RE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")  # base64 of exactly 32 bytes


def check_node_description(hostname: str, labels: dict[str, str], nano_cpus: int, memory_bytes: int) -> None:
    """What a worker says about itself is input too."""
    check_name("node", hostname)
    check_labels("node label", labels)
    if nano_cpus < 0 or memory_bytes < 0:
        raise ValidationError("node resources cannot be negative")


def check_wireguard(public_key: str, endpoint: str) -> None:
    """A node's WireGuard public key (base64, 32 bytes) and endpoint (HOST:PORT); both optional."""
    if public_key and not _WG_KEY_RE.fullmatch(public_key):
        raise ValidationError("the WireGuard public key must be 32 bytes in base64, as `wg pubkey` prints it")
    if endpoint:
        check_hostport("the WireGuard endpoint", endpoint)


# Task status reports from agents (UpdateTaskStatus). Free text is cleaned to fit (report_text),
# by the agent and again by the dispatcher; fixed-form fields are refused when they break form.
# 1000 reports x 2 texts x 4 KiB = 8 MiB: a full batch always fits the request limit (16 MiB).
MAX_STATUS_BATCH = 1000
MAX_REPORT_TEXT = 4096  # UTF-8 bytes of a report's message, and of its error
MAX_FAILURE_TEXT = 512  # characters of an agent's account of why its last session failed
MAX_TOKEN = 256  # a runtime id; a node's addr, os and arch
TASK_HEALTH = ("", "starting", "healthy", "unhealthy")


def report_text(text: str) -> str:
    """`text` as a task report carries it: no NUL (a probe's output may hold one), at most
    MAX_REPORT_TEXT bytes of UTF-8, never cut inside a character."""
    data = text.replace("\x00", "").encode("utf-8", "replace")
    return data[:MAX_REPORT_TEXT].decode("utf-8", "ignore")


def check_token(what: str, value: str, limit: int = MAX_TOKEN) -> None:
    """A short single-token field an agent reports (a runtime id, a node's addr, os or arch):
    bounded, no whitespace or control characters. Empty is allowed."""
    if len(value) > limit or (value and not PRINTABLE_RE.fullmatch(value)):
        raise ValidationError(f"{what} must be at most {limit} characters without spaces or control characters")


def check_task_report(task_id: str, runtime_id: str, health: str) -> None:
    """The fixed-form fields of an agent's report about one task (its free text is cleaned with
    report_text instead): a task id, a runtime id, a known health value."""
    if not task_id or len(task_id) > MAX_KEY or not PRINTABLE_RE.fullmatch(task_id):
        raise ValidationError(f"invalid task id {shown(task_id)}")
    check_token("a runtime id", runtime_id)
    if health not in TASK_HEALTH:
        raise ValidationError(f"invalid task health {shown(health)}: one of starting, healthy or unhealthy")
