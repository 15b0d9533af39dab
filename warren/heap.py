"""The C heap of a long-running process: freed pages handed back to the system (ADRs 71, 19).

grpc and protobuf free their message buffers, and start-up frees much of what imports, TLS and
the first messages allocated; glibc keeps those pages unless asked. `malloc_trim(0)` returns
them: about 1 MiB per channel in the simulator at 1,000 nodes, and 2 MiB of an idle agent on
the overlay (58 -> 56 MiB, `rotation`, #15).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import Callable
from pathlib import Path

TRIM_EVERY = 10.0  # seconds between trims: each is a walk of the free lists, well under 1 ms here
FIRST_TRIM = 1.0  # after start: what start-up freed goes back soon


def heap_trimmer() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None where there is none."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


async def trim_heap(every: float = TRIM_EVERY, first: float = FIRST_TRIM) -> None:
    """Return freed memory to the system `first` seconds from now, then every `every` seconds
    (a ctypes call: the GIL is released meanwhile)."""
    trim = heap_trimmer()
    if trim is None:
        return
    await asyncio.sleep(first)
    while True:
        trim()
        await asyncio.sleep(every)


def rss_bytes() -> int:
    """This process's resident memory, or 0 where /proc does not say."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
