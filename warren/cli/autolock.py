"""`warren cluster unlock-key` and `warren cluster unlock`, and `cluster update --autolock` (ADR 44).

The unlock key is printed once, when it is made (autolock turned on, or rotated): no manager
keeps it, so `unlock-key` without `--rotate` cannot show it again. `unlock` reads it from a
prompt or stdin (`--key-stdin`), never from the command line (which `ps` shows).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

MAX_KEY_INPUT = 256  # an unlock key is 52 characters: anything much longer is not one


def register(cmds: Any) -> None:
    p = cmds.add_parser(
        "unlock-key",
        help="say whether autolock is on; --rotate prints a new unlock key",
        description="The unlock key is shown only when it is made; it cannot be shown again. "
        "--rotate makes a new one (the old one stops working) and prints it.",
    )
    p.add_argument("--rotate", action="store_true", help="replace the unlock key and print the new one")
    p.add_argument("-q", "--quiet", action="store_true", help="print the new key only")
    p.set_defaults(func=cmd_unlock_key)

    p = cmds.add_parser(
        "unlock",
        help="give a locked manager the unlock key, so that it serves again",
        description="A manager restarted while autolock is on waits for the key on a unix socket in its "
        "data directory: run this on its machine with --data-dir. Without --data-dir, the key goes to "
        "the manager of the current context (one that runs but does not hold the cluster's keys).",
    )
    p.add_argument("--key-stdin", action="store_true", help="read the unlock key from stdin")
    p.add_argument("--data-dir", type=Path, help="the locked manager's data directory (its unlock socket)")
    p.set_defaults(func=cmd_unlock)


def add_unlock_key_file_flag(p: Any) -> None:
    p.add_argument(
        "--unlock-key-file",
        type=_unlock_key_file,
        dest="unlock_key",
        metavar="FILE",
        help="the unlock key, for a manager that starts while autolock is on (ADR 44)",
    )


def _unlock_key_file(path: str) -> str:
    from warren.manager.autolock import UnlockKeyError, parse_unlock_key

    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            key = file.read(MAX_KEY_INPUT + 1).strip()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None
    try:
        parse_unlock_key(key)
    except UnlockKeyError as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc}") from None
    return key


def _print_key(key: str, what: str) -> None:
    print(f"{what}. The unlock key is:\n\n    {key}\n")
    print("Keep it safe: a manager that restarts needs it (`warren cluster unlock`), and it cannot be shown again.")


def apply_autolock(client: Any, enable: bool) -> None:
    """`cluster update --autolock true|false`: prints the new unlock key once when enabling."""
    from warren.api.v1 import control_pb2 as pb

    answer = client.call("UpdateAutolock", pb.UpdateAutolockRequest(enable=enable))
    if enable and answer.unlock_key:
        _print_key(answer.unlock_key, "Autolock is on")
    else:
        print(f"Autolock: {'on (already: the unlock key is unchanged)' if enable else 'off'}")


def cmd_unlock_key(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        answer = client.call("GetUnlockKey", pb.GetUnlockKeyRequest(rotate=args.rotate))
    if args.rotate:
        if args.quiet:
            print(answer.unlock_key)
        else:
            _print_key(answer.unlock_key, "The unlock key was rotated; the previous one no longer unlocks")
    elif answer.autolock:
        print("Autolock is on. The unlock key was shown when it was made and cannot be shown again;")
        print("`warren cluster unlock-key --rotate` makes and prints a new one.")
    else:
        print("Autolock is off: there is no unlock key (`warren cluster update --autolock true`).")
    return 0


def _read_key(args: argparse.Namespace) -> str:
    from warren.cli.errors import CliError, Exit

    if args.key_stdin:
        key = sys.stdin.read(MAX_KEY_INPUT + 1).strip()
    elif sys.stdin.isatty():
        key = getpass.getpass("Unlock key: ").strip()
    else:
        raise CliError("no unlock key: pass it on stdin with --key-stdin", Exit.USAGE)
    if len(key) > MAX_KEY_INPUT:
        raise CliError("not an unlock key (too long)", Exit.USAGE)
    from warren.manager.autolock import UnlockKeyError, parse_unlock_key

    try:
        parse_unlock_key(key)
    except UnlockKeyError as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    return key


def cmd_unlock(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    key = _read_key(args)
    if args.data_dir is not None:
        _unlock_local(args.data_dir, key)
    else:
        with connect(args) as client:
            client.call("UnlockCluster", pb.UnlockClusterRequest(unlock_key=key))
    print("Unlocked.")
    return 0


def _unlock_local(data_dir: Path, key: str) -> None:
    from warren.api.v1 import control_pb2 as pb

    _local_call(data_dir, "UnlockCluster", pb.UnlockClusterRequest(unlock_key=key))


def locked_info(data_dir: Path) -> Any:
    """`cluster info --data-dir`: what a locked manager's socket says about it."""
    from warren.api.v1 import control_pb2 as pb

    return _local_call(data_dir, "GetClusterInfo", pb.GetClusterInfoRequest())


def _local_call(data_dir: Path, method: str, request: Any) -> Any:
    """Over the locked manager's unix socket (ADR 44): no TLS, the socket's mode is the guard."""
    import grpc

    from warren.api.v1 import control_pb2_grpc
    from warren.cli.errors import CliError, Exit
    from warren.manager.lockedstart import socket_path

    path = socket_path(data_dir)
    if not path.is_socket():
        raise CliError(
            f"no locked manager in {data_dir} (no {path}): it is not running, or not locked", Exit.UNAVAILABLE
        )
    try:
        with grpc.insecure_channel(f"unix:{path}") as channel:
            return getattr(control_pb2_grpc.ControlStub(channel), method)(request, timeout=30)
    except grpc.RpcError as exc:
        code = exc.code()
        details = (exc.details() or code.name).strip()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise CliError(details, Exit.USAGE) from None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CliError(f"cannot reach the locked manager at {path}: {details}", Exit.UNAVAILABLE) from None
        raise CliError(details, Exit.FAILURE) from None
