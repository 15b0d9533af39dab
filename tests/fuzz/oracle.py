"""What accepted input may leave in the state, whatever path it took: the fuzzer's own rules,
written apart from warren/validate.py so that a validator's bug cannot hide itself.

Each rule mirrors a documented limit or a defect of issue #10: identifiers are whole-string
matches (a regex `$` lets "web\n" through), labels are bounded and free of control characters on
nodes as on services, the stop signal is ASCII, and a spec stays far below the 4 MiB gRPC message
that carries it to a worker (the 1 MiB command bound).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from warren.api.v1 import types_pb2 as pb

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_LABELS = 256
MAX_KEY = 128
MAX_VALUE = 4096
MAX_SPEC_BYTES = 1 << 20
MAX_ARGV_WORDS = 256
MAX_ARGV_BYTES = 64 * 1024
MAX_REPORTED_FIELD = 256  # what an agent says of its node: addr, os, arch


def _control(text: str, spaces: bool = False) -> bool:
    """A control character (NUL, ESC, newline, DEL, C1), a line or paragraph separator, or
    unless `spaces`, any whitespace."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or (not spaces and c.isspace()) for c in text)


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else f"{text[:limit]}...")


def _labels(owner: str, labels: dict[str, str]) -> Iterator[str]:
    if len(labels) > MAX_LABELS:
        yield f"{owner} has {len(labels)} labels (more than {MAX_LABELS})"
    for key, value in labels.items():
        if not key or "=" in key or len(key) > MAX_KEY or _control(key):
            yield f"{owner} has label key {_short(key)}"
        if len(value) > MAX_VALUE or "\x00" in value or "\x1b" in value:
            yield f"{owner} has label {_short(key)} with value {_short(value)} ({len(value)} characters)"


def _argv(owner: str, words: Iterable[str]) -> Iterator[str]:
    words = list(words)
    if len(words) > MAX_ARGV_WORDS or sum(len(w) for w in words) > MAX_ARGV_BYTES or any("\x00" in w for w in words):
        yield f"{owner} has a command of {len(words)} words that is too long or contains NUL"


def _spec(spec: pb.ServiceSpec) -> Iterator[str]:
    owner = f"service {_short(spec.name)}"
    if not NAME.fullmatch(spec.name):
        yield f"{owner} has an invalid name"
    if _control(spec.image) or len(spec.image) > 512:
        yield f"{owner} has image {_short(spec.image)}"
    yield from _labels(owner, dict(spec.labels))
    yield from _argv(owner, [*spec.command, *spec.args])
    for key in spec.env:
        if not key or "=" in key or _control(key) or len(key) > MAX_KEY:
            yield f"{owner} has environment variable name {_short(key)}"
    for constraint in spec.constraints:
        if _control(constraint, spaces=True):
            yield f"{owner} has constraint {_short(constraint)}"
    if spec.stop_signal and not spec.stop_signal.isascii():
        yield f"{owner} has stop signal {_short(spec.stop_signal)}"
    if spec.HasField("health"):
        yield from _argv(f"{owner}'s health check", spec.health.command)
        if _control(spec.health.target, spaces=True) or len(spec.health.target) > MAX_VALUE:
            yield f"{owner} has health check target {_short(spec.health.target)}"
    size = spec.ByteSize()
    if size > MAX_SPEC_BYTES:
        yield f"{owner} has a spec of {size} bytes (more than {MAX_SPEC_BYTES})"


@dataclass(frozen=True)
class Violation:
    kind: str  # node | service: what to repair
    id: str
    text: str

    def __str__(self) -> str:
        return self.text


def _node(node: pb.Node) -> Iterator[str]:
    owner = f"node {node.id}"
    if not NAME.fullmatch(node.hostname):
        yield f"{owner} has hostname {_short(node.hostname)}"
    yield from _labels(owner, dict(node.labels))
    for what, value in (("addr", node.addr), ("os", node.os), ("arch", node.arch)):
        if len(value) > MAX_REPORTED_FIELD or _control(value):
            yield f"{owner} has {what} {_short(value)} ({len(value)} characters)"


def violations(nodes: Iterable[pb.Node], services: Iterable[pb.Service]) -> Iterator[Violation]:
    """Every rule the stored state breaks."""
    for node in nodes:
        yield from (Violation("node", node.id, text) for text in _node(node))
    for service in services:
        yield from (Violation("service", service.id, text) for text in _spec(service.spec))
