"""Loading Compose files into a `StackSpec` (#14): the one entry point the CLI calls.

Reads the files (and `.env`, `env_file`, secret and config `file:`), interpolates, merges several
`-c` files in order, validates, and maps to Warren's specs with `warren.stack.compose` (pure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from warren.stack.spec import StackSpec


class StackFileError(ValueError):
    """A stack that cannot be loaded; str() is one line naming the file, line and key path,
    e.g. `compose.yaml:12: services.web.ports[0]: invalid port "80:x"`."""


def load_stack(files: Sequence[Path], name: str | None, environ: Mapping[str, str]) -> StackSpec:
    """The stack in `files` (merged in order). `name` None takes the top-level `name:` of the
    files (`warren apply -f`); `environ` is the caller's environment, for interpolation."""
    raise NotImplementedError("the Compose loader is being written (#14)")
