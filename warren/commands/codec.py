"""The versioned msgpack codec of commands and results: tagged, never pickle."""

from __future__ import annotations

from typing import Any

import msgspec

from warren.commands.types import ApplyPlan, Batch, Command, Result

CODEC_VERSION = 1

# The largest encoded command the Raft adapter proposes. Every manager applies each entry on the
# one thread that applies the log, and ships it to every follower: a bigger one stalls all writes.
MAX_COMMAND_BYTES = 1 << 20


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    version: int
    command: Command | Batch


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)
_result_decoder = msgspec.msgpack.Decoder(Result)
_results_decoder = msgspec.msgpack.Decoder(list[Result])


class CodecError(ValueError):
    """The bytes are not a command this version understands."""


def encode(command: Command | Batch) -> bytes:
    return _encoder.encode(Envelope(CODEC_VERSION, command))


def oversize_message(command: Command | Batch, size: int | None = None) -> str | None:
    """Why `command` is too big to propose, or None if it is not (MAX_COMMAND_BYTES encoded).
    `size` is its encoded size, when the caller has it already."""
    size = len(encode(command)) if size is None else size
    if size <= MAX_COMMAND_BYTES:
        return None
    return (
        f"the {type(command).__name__} request is too large: {size} bytes encoded, "
        f"at most {MAX_COMMAND_BYTES} (fewer or shorter labels, env entries or arguments)"
    )


def split_plan(plan: ApplyPlan, max_bytes: int = MAX_COMMAND_BYTES) -> list[ApplyPlan]:
    """`plan` as consecutive plans that each encode to at most `max_bytes` (one if it does): a
    pass over a big service must not become a command too large to propose. Stops (updates
    and deletions) go before starts, so that a start finds the slot its predecessor freed; a
    start that still finds it taken is skipped at apply time and redone by the next pass. The
    rollouts' status changes go last, after the task changes they were decided from."""
    if len(encode(plan)) <= max_bytes:
        return [plan]
    budget = max_bytes - len(encode(ApplyPlan()))
    parts: list[ApplyPlan] = []
    order = ("volumes", "node_status", "deleted", "updated", "created", "rollouts")
    fields: dict[str, list[Any]] = {name: [] for name in order}
    used = 0

    def flush() -> None:
        nonlocal used
        if any(fields.values()):
            parts.append(ApplyPlan(**{name: tuple(items) for name, items in fields.items()}))
            for items in fields.values():
                items.clear()
        used = 0

    for name in order:
        for item in getattr(plan, name):
            size = len(_encoder.encode(item)) + 8  # the item plus its array header share
            if used + size > budget:
                flush()
            fields[name].append(item)
            used += size
    flush()
    return parts


def decode(blob: bytes) -> Command | Batch:
    try:
        envelope = _decoder.decode(blob)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CodecError(f"undecodable command: {exc}") from exc
    if envelope.version > CODEC_VERSION:
        raise CodecError(f"command codec version {envelope.version} is newer than {CODEC_VERSION}")
    return envelope.command


def encode_result(result: Result | list[Result]) -> bytes:
    return _encoder.encode(result)


def decode_results(blob: bytes) -> list[Result]:
    """The results of a Batch, in its order."""
    return _results_decoder.decode(blob)


def decode_result(blob: bytes) -> Result:
    return _result_decoder.decode(blob)
