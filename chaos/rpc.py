"""The Control API as the chaos processes in the client namespace call it: one mTLS channel per
manager, and the outcome of a failed write classified without guessing.

`classify` is pure: it decides from a status code and its details whether a call was surely not
applied (`not_sent`, `failed`), may have been (`unknown`), or was refused by a follower that named
the leader (`redirect`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Transport errors that mean the request never reached a server.
_NOT_SENT = re.compile(
    r"failed to connect|connection refused|no route to host|network is unreachable|name resolution|"
    r"dns resolution|connect failed|handshake",
    re.IGNORECASE,
)
# A manager that answered UNAVAILABLE before proposing, or whose proposal Raft surely dropped.
_DEFINITE = re.compile(
    r"no raft leader|discarded by a new leader|queue full|overloaded|still initialising|no quorum|"
    r"refused the write",
    re.IGNORECASE,
)
_LEADER = re.compile(r"the leader is at (\S+)")

# Status codes whose write surely did not apply (the manager checked and refused it).
_REFUSED = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "PERMISSION_DENIED", "OUT_OF_RANGE"}
)


def classify(code: str, details: str) -> tuple[str, str]:
    """(`not_sent` | `redirect` | `failed` | `unknown`, leader hint or "") for a failed call."""
    details = details or ""
    if code == "UNAVAILABLE":
        hint = _LEADER.search(details)
        if hint and hint.group(1) != "unknown" and "not the leader" in details:
            return "redirect", hint.group(1).rstrip(";,.)")
        if _NOT_SENT.search(details):
            return "not_sent", ""
        if _DEFINITE.search(details):
            return "failed", ""
        return "unknown", ""
    if code in _REFUSED:
        return "failed", ""
    return "unknown", ""  # DEADLINE_EXCEEDED, UNKNOWN, INTERNAL, CANCELLED...


class Conn:
    """Control stubs for a set of manager addresses, with the admin credentials of the cluster."""

    def __init__(self, creds_dir: str | os.PathLike[str], managers: list[str]) -> None:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        import grpc

        from warren import tls
        from warren.api.v1 import control_pb2, control_pb2_grpc, types_pb2

        self.grpc = grpc
        self.pb = control_pb2
        self.types = types_pb2
        self._tls = tls
        self._stubs_mod = control_pb2_grpc
        d = Path(creds_dir)
        self._creds = tls.channel_credentials(
            (d / "ca.pem").read_bytes(), (d / "cert.pem").read_bytes(), (d / "key.pem").read_bytes()
        )
        self.managers = list(managers)
        self._channels: dict[str, object] = {}
        self._stubs: dict[str, object] = {}

    def stub(self, addr: str):
        stub = self._stubs.get(addr)
        if stub is None:
            channel = self.grpc.secure_channel(addr, self._creds, options=self._tls.channel_options())
            self._channels[addr] = channel
            stub = self._stubs[addr] = self._stubs_mod.ControlStub(channel)
        return stub

    def reset(self, addr: str) -> None:
        """Drop a channel (after a partition its reconnect backoff can be long)."""
        channel = self._channels.pop(addr, None)
        self._stubs.pop(addr, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        for addr in list(self._channels):
            self.reset(addr)
