"""`warren image import`: load an OCI archive into this node's containerd, for hosts that cannot
reach a registry (air-gapped). It talks to containerd directly, not to a manager: run it on
each node that should have the image, then create services that name it.

The import is the containerd driver's own (`ContainerdRuntime.import_archive`, i.e.
`ImageService.import_archive`), in the namespace the agent runs tasks in, so the agent finds the
image as already present and never pulls it.
"""

from __future__ import annotations

import argparse
import os
import tarfile
from pathlib import Path
from typing import Any

from warren.cli.errors import CliError, Exit

DEFAULT_NAMESPACE = "warren"  # warren.runtime.containerd.client.NAMESPACE, without importing grpc


def register(groups: Any) -> None:
    from warren.agent.settings import DEFAULT_CONTAINERD_SOCKET

    group = groups.add_parser("image", help="manage images on this node")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")
    p = cmds.add_parser(
        "import",
        help="load an OCI archive into this node's containerd (no registry needed)",
        description="Import the images of an OCI archive (an OCI image layout in a tar, as `skopeo copy "
        "... oci-archive:FILE` writes) into this node's containerd, unpacked and ready to run. "
        "Prints the name of each image imported.",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the OCI archive (.tar, optionally compressed)")
    p.add_argument(
        "--name",
        metavar="REF",
        help="name the image REF (e.g. registry.example/app:1.0); needed when the archive names it by tag only",
    )
    p.add_argument(
        "--containerd-socket",
        metavar="PATH",
        default=DEFAULT_CONTAINERD_SOCKET,
        help=f"containerd's socket (default: {DEFAULT_CONTAINERD_SOCKET})",
    )
    p.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        metavar="NS",
        help=f"containerd namespace (default: {DEFAULT_NAMESPACE}, where the agent runs tasks)",
    )
    p.set_defaults(func=cmd_import)


def check_archive(path: Path) -> None:
    """Fail with exit 2 unless `path` is a readable tar: what the import cannot start without."""
    if not path.exists():
        raise CliError(f"{path}: no such file", Exit.USAGE)
    if not path.is_file():
        raise CliError(f"{path} is not a file (expected an OCI archive)", Exit.USAGE)
    try:
        readable = tarfile.is_tarfile(path)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", Exit.USAGE) from None
    if not readable:
        raise CliError(f"{path} is not an OCI archive (not a tar file)", Exit.USAGE)


def cmd_import(args: argparse.Namespace) -> int:
    if not os.environ.get("WARREN_DEBUG"):
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # we report an unreachable containerd ourselves
    path: Path = args.file
    check_archive(path)
    if args.name:
        from warren.runtime.containerd.reference import InvalidReference, parse_reference

        try:
            parse_reference(args.name)
        except InvalidReference as exc:
            raise CliError(f"--name: {exc}", Exit.USAGE) from None

    from warren.agent.runtime import RuntimeFailure
    from warren.runtime.containerd.client import Client
    from warren.runtime.containerd.images import ImageService
    from warren.runtime.containerd.registry import RegistryClient

    socket = args.containerd_socket
    if not os.path.exists(socket):
        raise CliError(
            f"no containerd socket at {socket}: is containerd running? (--containerd-socket)", Exit.UNAVAILABLE
        )
    client = Client(socket, args.namespace)
    try:
        try:
            client.version()
        except RuntimeFailure as exc:
            raise CliError(f"{exc.message}; is containerd running? (--containerd-socket)", Exit.UNAVAILABLE) from None
        images = ImageService(client, RegistryClient())
        try:
            names = images.import_archive(path, args.name or "")
        except RuntimeFailure as exc:
            raise _import_error(exc, client, args.name) from None
    finally:
        client.close()
    for name in names:
        print(name)
    return 0


def _import_error(exc: Any, client: Any, name: str | None) -> CliError:
    """Bad archive content is bad input (2); containerd going away mid-import is 5; else 1."""
    from warren.agent.runtime import RuntimeFailure

    message = exc.message
    if exc.permanent:
        if "pass a full name" in message and not name:
            message += " with --name REF"
        return CliError(message, Exit.USAGE)
    try:
        client.version()
    except RuntimeFailure as down:
        return CliError(down.message, Exit.UNAVAILABLE)
    return CliError(message, Exit.FAILURE)
