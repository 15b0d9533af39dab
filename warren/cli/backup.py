"""`warren cluster backup FILE` and `warren cluster restore FILE` (ADR 56)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from warren.cli import manager_flags
from warren.cli.errors import CliError, Exit
from warren.text import format_size


def register(cmds: Any) -> None:
    p = cmds.add_parser(
        "backup",
        help="write a consistent snapshot of the cluster's state to FILE",
        description="Ask a manager for the replicated state at one Raft index and write it, with a "
        "checksum, to FILE (0600, written atomically). Secrets stay sealed, but unless autolock is on the "
        "file holds the key that opens them and the CA key: keep it as safe as a manager's data directory.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_backup)

    p = cmds.add_parser(
        "restore",
        help="start a new single-manager cluster from a backup (runs in the foreground)",
        description="Make --data-dir (new, empty) the data directory of the backed-up cluster's only "
        "manager, with the same cluster id, CA and state, then serve as that manager. Workers keep their "
        "certificates; they find the new manager at an address they know (restore on an old manager's "
        "address, or restart them with --join). A locked cluster's backup needs --unlock-key-file.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    manager_flags.add_manager_flags(p)
    p.set_defaults(func=cmd_restore)


def cmd_backup(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect
    from warren.manager import backup

    target: Path = args.file
    if target.is_dir():
        raise CliError(f"{target} is a directory; give a file name", Exit.USAGE)
    if not target.parent.is_dir():
        raise CliError(f"{target.parent} is not a directory", Exit.USAGE)
    chunks: list[bytes] = []
    index = 0
    with connect(args) as client:
        for chunk in client.stream("BackupCluster", pb.BackupClusterRequest()):
            chunks.append(chunk.data)
            index = chunk.raft_index
    blob = b"".join(chunks)
    try:
        taken = backup.decode(blob)  # what arrived is whole before it replaces anything
    except backup.BackupError as exc:
        raise CliError(f"the manager's backup did not arrive whole: {exc}") from None
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(blob)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise CliError(f"cannot write {target}: {exc.strerror}") from None
    print(f"Backup of cluster {taken.cluster_id} at Raft index {index} written to {target} ({format_size(len(blob))}).")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from warren.manager import backup, recovery
    from warren.manager.startup import StartupError
    from warren.node import manager as manager_node

    if args.data_dir is None:
        raise CliError("--data-dir is required: the new manager's (empty) data directory", Exit.USAGE)
    try:
        taken = backup.read_file(args.file)
    except backup.BackupError as exc:
        raise CliError(f"{args.file}: {exc}", Exit.USAGE) from None
    options = manager_flags.manager_options(args)
    try:
        identity = recovery.restore(taken, options, drained=bool(args.manager_only))
    except StartupError as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    print(
        f"Cluster {taken.cluster_id} restored from Raft index {taken.raft_index}; "
        f"this manager is node {identity.node_id}.",
        flush=True,
    )
    return manager_node.run(options, manager_flags.agent_flags(args))
