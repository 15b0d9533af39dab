"""The interpreter's switch interval for a serving process: a manager, an agent, the simulator
(ADR 84).

A thread that wants the GIL while another one computes waits a whole switch interval before the
other is asked to let go: 5 ms by CPython's default. gRPC's C threads take the GIL for every
completion they hand to Python, and for every TLS handshake a manager serves (its reloading
credentials ask a Python callback). In a busy manager, whose event loop, Raft thread and
scheduling pass compute at once, each of those waits its 5 ms, one after the other. At 1,000
nodes a new leader's handshakes then failed by thousands (#15). Measured through the API
(`bench handshakes`, three runs of 200 new mTLS connections into a process whose event loop
computes half the time and one thread all the time): at 5 ms 80 answered /s and 83 of 600
failed; at 1 ms 369 /s and none failed. Two computing threads did 1.03x the work at 1 ms."""

from __future__ import annotations

import sys

SWITCH_INTERVAL = 0.001  # seconds; CPython's default is 0.005


def settle() -> float:
    """Set the switch interval for serving; returns it."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    return sys.getswitchinterval()
