"""The manager: adapters around the pure core (store, Raft, gRPC servicers, orchestrator).

PySyncObj replaces `socket.inet_ntop` with a Windows-only shim when imported (its
`win_inet_pton` module does so on every platform), which breaks any library that formats
addresses in the same process, pyroute2 included. Every import of PySyncObj goes through this
package, so it is imported here first and the original function put back.
"""

import socket as _socket

_inet_ntop = _socket.inet_ntop
import pysyncobj  # noqa: E402, F401 - imported for its side effect, which is undone below

_socket.inet_ntop = _inet_ntop
