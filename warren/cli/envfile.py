"""`--env-file`: Docker's format, read by the CLI (the file is the operator's, not the node's).

One `KEY=VALUE` a line, taken as it is (no quotes, no expansion); `KEY` alone takes the value the
variable has in the caller's environment and is skipped when it has none; blank lines and lines
starting with `#` are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from warren.text import shown


def parse_env_file(text: str, name: str, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The variables of an env file's `text` (named `name` in errors). Pure."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not key or any(c.isspace() for c in key):
            raise ValueError(f"{name}, line {number}: invalid variable name {shown(key)} (expected KEY=VALUE)")
        if sep:
            out.append((key, value))
        elif key in environ:
            out.append((key, environ[key]))
    return out


def load_env_file(path: str) -> list[tuple[str, str]]:
    """The variables of the env file at `path`; a ValueError with one line that says why not."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read((1 << 20) + 1)
    except OSError as exc:
        raise ValueError(f"cannot read env file {shown(path)}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"env file {shown(path)} is not UTF-8 text") from None
    if len(text) > 1 << 20:
        raise ValueError(f"env file {shown(path)} is larger than 1 MiB")
    return parse_env_file(text, path, os.environ)
