"""The init that `--init` runs (ADR 42): Debian's static tini, found on the node, for both runtimes.
Static, because it is bind-mounted into images that may have no libc at all."""

from __future__ import annotations

import os
import shutil

TINI = "/usr/bin/tini-static"  # Debian's tini package


def init_binary() -> str:
    """The node's init for --init ("" if it is not installed: the task then fails, saying so)."""
    return TINI if os.access(TINI, os.X_OK) else shutil.which("tini-static") or ""
