"""The versioned msgpack codec of commands and results: tagged, never pickle."""

from __future__ import annotations

from typing import Any

import msgspec

from warren.commands.types import ApplyPlan, Batch, Command, Result

CODEC_VERSION = 1

# The largest encoded command the Raft adapter proposes. Every manager applies each entry on the
# one thread that applies the log, and ships it to every follower: a bigger one stalls all writes.
MAX_COMMAND_BYTES = 1 << 20
# The most task changes (and other items) in one part of a plan. Applying a part is one step of
# that thread, which also keeps the leader's heartbeats (#15): a thousand starts apply in about
# 25 ms in the store (more with the watchers). With 256, a pass became four times as many
# entries, each awaited in turn: in one S1 run each, all ran 5.3 s after the last create, not 1.3.
MAX_PLAN_ITEMS = 1024


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


def split_plan(plan: ApplyPlan, max_bytes: int = MAX_COMMAND_BYTES, max_items: int = MAX_PLAN_ITEMS) -> list[ApplyPlan]:
    """`plan` as consecutive plans that each encode to at most `max_bytes` and hold at most
    `max_items` items (one if it does): a pass over a big service must not become a command
    too large to propose, nor one that holds the Raft thread for long. Stops (updates
    and deletions) go before starts, so that a start finds the slot its predecessor freed; a
    start that still finds it taken is skipped at apply time and redone by the next pass. The
    rollouts' status changes go last, after the task changes they were decided from."""
    items = sum(len(getattr(plan, name)) for name in _PLAN_PARTS)
    if items <= max_items and len(encode(plan)) <= max_bytes:
        return [plan]
    budget = max_bytes - len(encode(ApplyPlan()))
    parts: list[ApplyPlan] = []
    fields: dict[str, list[Any]] = {name: [] for name in _PLAN_PARTS}
    used = count = 0

    def flush() -> None:
        nonlocal used, count
        if any(fields.values()):
            parts.append(ApplyPlan(**{name: tuple(items) for name, items in fields.items()}))
            for items in fields.values():
                items.clear()
        used = count = 0

    for name in _PLAN_PARTS:
        for item in getattr(plan, name):
            size = len(_encoder.encode(item)) + 8  # the item plus its array header share
            if used + size > budget or count >= max_items:
                flush()
            fields[name].append(item)
            used += size
            count += 1
    flush()
    return parts


# An ApplyPlan's parts, in the order split_plan sends them.
_PLAN_PARTS = ("volumes", "node_status", "deleted", "updated", "created", "rollouts")


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
