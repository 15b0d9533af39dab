"""Importing the manager must not break the process's socket module (PySyncObj patches it)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_raft_node_keeps_socket_inet_ntop_working() -> None:
    code = (
        "import socket\n"
        "import warren.manager.raft, warren.manager.journal\n"
        "print(socket.inet_ntop(socket.AF_INET, bytes([127, 0, 0, 1])))\n"
        "print(socket.inet_ntop(socket.AF_INET6, bytes(15) + bytes([1])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["127.0.0.1", "::1"]
