"""Loading Compose files into a `StackSpec` (#14, ADR 48): the one entry point the CLI calls.

Reads the files (and `.env`, `env_file`, secret and config `file:`), interpolates, merges several
`-c` files in order, validates, and maps to Warren's specs with `warren.stack.compose` (pure).
This module is the loader's only file I/O.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from warren.stack import compose
from warren.stack.interpolate import interpolate, parse_env_file
from warren.stack.merge import merge, normalize
from warren.stack.spec import Finding, StackSpec
from warren.stack.tree import StackFileError as StackFileError  # re-exported: the CLI catches it here
from warren.stack.tree import Where, YMap, parse_yaml

MAX_FILE_BYTES = 4 * 1024 * 1024  # a Compose, env or secret file; a secret is at most 500 KiB anyway


def load_stack(files: Sequence[Path], name: str | None, environ: Mapping[str, str]) -> StackSpec:
    """The stack in `files` (merged in order). `name` None takes the top-level `name:` of the
    files (`warren apply -f`); `environ` is the caller's environment, for interpolation."""
    if not files:
        raise StackFileError(Where("-", 0), "", "no Compose file given (-c FILE)")
    dotenv = files[0].parent / ".env"
    variables = dict(environ)
    if dotenv.is_file():
        try:
            from_file = parse_env_file(_read_text(dotenv), environ)
        except ValueError as exc:
            raise StackFileError(Where(str(dotenv), 0), "", str(exc)) from None
        variables = {**from_file, **environ}  # the caller's environment wins, as in docker compose
    merged: YMap | None = None
    warnings: list[Finding] = []
    for file in files:
        tree = parse_yaml(_read_text(file), str(file))
        for unset in interpolate(tree, variables):
            message = f"the variable {unset.name} is not set: read as an empty string"
            warnings.append(Finding(unset.path, unset.where.file, unset.where.line, message))
        normalize(tree, os.path.abspath(file.parent))
        merged = tree if merged is None else merge(merged, tree)
    assert merged is not None
    stack_name = name or _top_name(merged)
    spec = compose.map_stack(merged, stack_name, variables, _read_bytes)
    return msgspec.structs.replace(spec, warnings=tuple(warnings)) if warnings else spec


def _top_name(tree: YMap) -> str:
    value = tree.get("name")
    if not isinstance(value, str) or not value:
        raise StackFileError(tree.where, "name", "the stack has no name: give one, or write name: at the top")
    return value


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(0, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    return data


def _read_text(path: Path) -> str:
    try:
        return _read_bytes(str(path)).decode("utf-8")
    except OSError as exc:
        raise StackFileError(Where(str(path), 0), "", f"cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StackFileError(Where(str(path), 0), "", "the file is not UTF-8 text") from None
