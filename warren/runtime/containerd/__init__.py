"""The containerd runtime driver: containerd's own v1 gRPC API over its Unix socket (ADR 5).

`registry` (image references, Registry HTTP API v2) and `oci` (OCI runtime spec) are pure
enough to use without containerd; `client`, `images` and `driver` talk to the daemon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warren.runtime.containerd.driver import ContainerdRuntime

__all__ = ["ContainerdRuntime"]


def __getattr__(name: str) -> object:
    # Lazy, so that importing the pure submodules does not load gRPC and the generated stubs.
    if name == "ContainerdRuntime":
        from warren.runtime.containerd.driver import ContainerdRuntime

        return ContainerdRuntime
    raise AttributeError(name)
