"""`warren secret ...` and `warren config ...` (ADR 38), and the `--secret`/`--config` flags of
`service create` and `service update`.

A secret's value goes to the managers once, at create, and never comes back: `inspect` shows
its metadata. A config is the same without the encryption, and `config inspect` shows its value.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warren.cli import units
from warren.cli.errors import CliError, Exit
from warren.cli.flags import add_format_flag, value_type
from warren.text import ascii_int, shown

MAX_VALUE_BYTES = 500 * 1024  # warren.validate.MAX_SECRET_BYTES, without importing the core here
_LABEL = value_type(lambda s: units.parse_key_value(s, "label", require_value=False))
_KEYS = ("source", "src", "target", "uid", "gid", "mode")


def parse_file_ref(text: str, kind: str = "secret") -> dict[str, Any]:
    """`NAME` or `source=NAME[,target=PATH][,uid=N][,gid=N][,mode=0400]` (Docker's syntax) as
    the fields of a FileRef; the manager fills the default target and checks the rest."""
    if "=" not in text:
        if not text:
            raise ValueError(f"a {kind} name is required")
        return {"source": text}
    ref: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if key not in _KEYS or not sep:
            raise ValueError(f"invalid {kind} option {shown(part)}: expected source=, target=, uid=, gid= or mode=")
        if key in ("uid", "gid"):
            number = ascii_int(value)
            if number is None:
                raise ValueError(f"invalid {kind} {key} {shown(value)}: expected a number")
            ref[key] = number
        elif key == "mode":
            if not value or any(c not in "01234567" for c in value):
                raise ValueError(f"invalid {kind} mode {shown(value)}: expected octal, e.g. 0400")
            ref["mode"] = int(value, 8)
        else:
            ref["source" if key == "src" else key] = value
    if not ref.get("source"):
        raise ValueError(f"invalid {kind} {shown(text)}: source=NAME is required")
    return ref


def _ref_parser(kind: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        return parse_file_ref(text, kind)

    parse.__name__ = kind  # argparse names the type in its errors
    return parse


def add_service_flags(p: argparse.ArgumentParser, update: bool) -> None:
    """--secret/--config on create; --secret-add/-rm and --config-add/-rm on update."""
    group = p.add_argument_group("secrets and configs (files on a tmpfs in each task)")
    for kind, default in (("secret", "/run/secrets/NAME"), ("config", "/NAME")):
        spec = value_type(_ref_parser(kind))
        syntax = "NAME|source=NAME[,target=PATH,uid=,gid=,mode=]"
        if update:
            group.add_argument(
                f"--{kind}-add", type=spec, action="append", metavar=syntax, help=f"give the tasks a {kind}"
            )
            group.add_argument(f"--{kind}-rm", action="append", metavar="NAME", help=f"take a {kind} away")
        else:
            group.add_argument(  # dest: the global --config is the client's configuration file
                f"--{kind}",
                dest=f"{kind}_refs",
                type=spec,
                action="append",
                metavar=syntax,
                help=f"give the tasks a {kind} (at {default})",
            )


def apply_service_flags(spec: Any, args: argparse.Namespace) -> None:
    """Apply the flags to a types_pb2.ServiceSpec: removals first, so that `--secret-rm old
    --secret-add new,target=same` rotates a file in one update."""
    for kind, field in (("secret", spec.secrets), ("config", spec.configs)):
        removed = set(getattr(args, f"{kind}_rm", None) or [])
        kept = [r for r in field if r.source not in removed]
        unknown = removed - {r.source for r in field}
        if unknown:
            raise CliError(f"--{kind}-rm: the service has no {kind} {', '.join(sorted(unknown))}", Exit.USAGE)
        added = (getattr(args, f"{kind}_refs", None) or []) + (getattr(args, f"{kind}_add", None) or [])
        del field[:]
        for r in kept:
            field.add().CopyFrom(r)
        for ref in added:
            field.add(**ref)


def register(groups: Any, kind: str = "secret") -> None:
    plural = f"{kind}s"
    group = groups.add_parser(
        kind, help=f"manage {plural}" + (" (encrypted, mounted on a tmpfs)" if kind == "secret" else "")
    )
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")

    p = cmds.add_parser(
        "create",
        help=f"create a {kind} from a file, stdin (-) or --from-literal",
        description=f"Create a {kind} of at most 500 KB."
        + (" Its value is encrypted by the managers and never shown again." if kind == "secret" else ""),
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", nargs="?", metavar="FILE|-", help="the value: a file, or - for stdin")
    p.add_argument("--from-literal", metavar="VALUE", help="the value, given on the command line")
    p.add_argument("--label", "-l", type=_LABEL, action="append", metavar="K=V", help=f"{kind} label")
    p.set_defaults(func=cmd_create, kind=kind)

    p = cmds.add_parser("ls", help=f"list {plural}")
    p.add_argument("-q", "--quiet", action="store_true", help="print IDs only")
    add_format_flag(p)
    p.set_defaults(func=cmd_ls, kind=kind)

    p = cmds.add_parser(
        "inspect", help=f"show {plural} in detail" + (" (never the value)" if kind == "secret" else " and values")
    )
    p.add_argument("names", nargs="+", metavar="NAME|ID")
    add_format_flag(p)
    p.set_defaults(func=cmd_inspect, kind=kind)

    p = cmds.add_parser("rm", help=f"remove {plural} (refused while a service uses one)")
    p.add_argument("names", nargs="+", metavar="NAME|ID")
    p.set_defaults(func=cmd_rm, kind=kind)


def _value(args: argparse.Namespace) -> bytes:
    """The value to create, from exactly one source; bad input is exit 2 before any call."""
    if args.file is not None and args.from_literal is not None:
        raise CliError("give either FILE (or -) or --from-literal, not both", Exit.USAGE)
    if args.from_literal is not None:
        data = args.from_literal.encode()
    elif args.file == "-":
        data = sys.stdin.buffer.read(MAX_VALUE_BYTES + 1)
    elif args.file is not None:
        path = Path(args.file)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_VALUE_BYTES + 1)
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror or exc}", Exit.USAGE) from None
    else:
        raise CliError(f"give the {args.kind}'s value: FILE, - (stdin) or --from-literal VALUE", Exit.USAGE)
    if not data:
        raise CliError(f"a {args.kind} cannot be empty", Exit.USAGE)
    if len(data) > MAX_VALUE_BYTES:
        raise CliError(f"a {args.kind} holds at most 500 KB", Exit.USAGE)
    return data


def _rpc(kind: str, verb: str) -> str:
    return f"{verb}{kind.capitalize()}" + ("s" if verb == "List" else "")


def cmd_create(args: argparse.Namespace) -> int:
    data = _value(args)
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    request_type = pb.CreateSecretRequest if args.kind == "secret" else pb.CreateConfigRequest
    with connect(args) as client:
        created = client.call(
            _rpc(args.kind, "Create"), request_type(name=args.name, data=data, labels=dict(args.label or []))
        )
    print(created.id)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    request = pb.ListSecretsRequest() if args.kind == "secret" else pb.ListConfigsRequest()
    with connect(args) as client:
        reply = client.call(_rpc(args.kind, "List"), request)
    items = list(reply.secrets if args.kind == "secret" else reply.configs)
    if args.format == "json":
        output.print_json(items)
    elif args.quiet:
        for item in items:
            print(item.id)
    else:
        output.print_table(
            ["ID", "NAME", "SIZE", "CREATED", "SERVICES"],
            [
                (
                    output.short_id(i.id),
                    i.name,
                    units.format_size(i.size),
                    output.ago(i.created_at),
                    ",".join(i.services),
                )
                for i in items
            ],
        )
    return 0


def _shown_value(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"(binary, base64) {base64.b64encode(data).decode()}"
    return text


def cmd_inspect(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    found = []
    with connect(args) as client:
        for name in args.names:
            if args.kind == "secret":
                found.append(client.call("GetSecret", pb.GetSecretRequest(secret=name)))
            else:
                found.append(client.call("GetConfig", pb.GetConfigRequest(config=name)))
    if args.format == "json":
        output.print_json(found)
        return 0
    for n, item in enumerate(found):
        if n:
            print()
        fields: list[tuple[str, Any]] = [
            ("ID", item.id),
            ("Name", item.name),
            ("Size", f"{item.size} bytes"),
            ("Labels", [f"{k}={v}" for k, v in sorted(item.labels.items())]),
            ("Created", output.timestamp(item.created_at)),
            ("Services", list(item.services)),
        ]
        if args.kind == "config":
            fields.append(("Data", _shown_value(item.data).splitlines() or [""]))
        output.print_fields(fields)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        for name in args.names:
            if args.kind == "secret":
                removed = client.call("RemoveSecret", pb.RemoveSecretRequest(secret=name))
            else:
                removed = client.call("RemoveConfig", pb.RemoveConfigRequest(config=name))
            print(removed.name)
    return 0
