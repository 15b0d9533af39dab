"""`warren registry login/logout/ls` (ADR 43), and the caller's own login for
`service create/update --with-registry-auth`.

A password is read from stdin (`--password-stdin`) or typed at a prompt; never from the command
line, where `ps` and shell history would keep it. It is sent once to the managers, which seal it;
no command prints it back.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from warren.cli.errors import CliError, Exit
from warren.cli.flags import add_format_flag
from warren.text import shown

MAX_PASSWORD_INPUT = 16 * 1024


def register(groups: Any) -> None:
    group = groups.add_parser("registry", help="manage the cluster's registry logins")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")

    p = cmds.add_parser(
        "login",
        help="store a login for a registry: every node pulls from it with it",
        description="Store credentials for a registry in the cluster. Agents pull with them, and "
        "managers use them to pin images to digests. The password is read from stdin with "
        "--password-stdin, else asked for at a prompt.",
    )
    p.add_argument("host", metavar="HOST[:PORT]", help="the registry (docker.io for Docker Hub)")
    p.add_argument("-u", "--username", metavar="USER", help="the user (asked for if not given)")
    p.add_argument("--password-stdin", action="store_true", help="read the password (or token) from stdin")
    p.set_defaults(func=cmd_login)

    p = cmds.add_parser("logout", help="remove the cluster's login for a registry")
    p.add_argument("host", metavar="HOST[:PORT]")
    p.set_defaults(func=cmd_logout)

    p = cmds.add_parser("ls", help="list the registry logins (hosts and users, never passwords)")
    add_format_flag(p)
    p.set_defaults(func=cmd_ls)


def _host(text: str) -> str:
    from warren.runtime.containerd.reference import InvalidReference, check_registry_host

    try:
        return check_registry_host(text)
    except InvalidReference as exc:
        raise CliError(str(exc), Exit.USAGE) from None


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        text = sys.stdin.read(MAX_PASSWORD_INPUT + 2)
        password = text[:-1] if text.endswith("\n") else text
        password = password[:-1] if password.endswith("\r") else password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise CliError("no password: pass it on stdin with --password-stdin", Exit.USAGE)
    if not password:
        raise CliError("the password is empty", Exit.USAGE)
    if len(password) > MAX_PASSWORD_INPUT:
        raise CliError(f"the password is too long (at most {MAX_PASSWORD_INPUT} characters)", Exit.USAGE)
    return password


def cmd_login(args: argparse.Namespace) -> int:
    host = _host(args.host)
    username = args.username
    if username is None:
        if args.password_stdin or not sys.stdin.isatty():
            raise CliError("a username is required with --password-stdin: give it with -u USER", Exit.USAGE)
        username = input("Username: ").strip()
    if not username or ":" in username or any(not c.isprintable() for c in username):
        raise CliError(f"invalid username {shown(username)}: it must be non-empty, without ':'", Exit.USAGE)
    password = _read_password(args)
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        auth = pb.RegistryAuth(host=host, username=username, password=password)
        info = client.call("RegistryLogin", pb.RegistryLoginRequest(auth=auth))
    print(f"login for {info.host} stored (user {info.username})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    host = _host(args.host)
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        client.call("RegistryLogout", pb.RegistryLogoutRequest(host=host))
    print(host)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        logins = list(client.call("ListRegistryLogins", pb.ListRegistryLoginsRequest()).logins)
    if args.format == "json":
        output.print_json(logins)
    else:
        output.print_table(
            ["REGISTRY", "USERNAME", "SERVICE", "UPDATED"],
            [(i.host, i.username, i.service or "(cluster)", output.ago(i.updated_at)) for i in logins],
        )
    return 0


# -- --with-registry-auth ----------------------------------------------------------------------
def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def caller_login(image: str) -> tuple[str, str, str]:
    """(registry, user, password) the caller's Docker client config holds for `image`'s registry:
    what `--with-registry-auth` sends, as `docker service create --with-registry-auth` does.
    Exit 2 with the reason when there is none."""
    from warren.runtime.containerd.reference import DOCKER_HUB, InvalidReference, parse_reference

    try:
        host = parse_reference(image).registry
    except InvalidReference as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    path = docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(f"--with-registry-auth: no login for {host}: {path} does not exist", Exit.USAGE) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"--with-registry-auth: cannot read {path}: {exc}", Exit.USAGE) from None
    auths = config.get("auths") if isinstance(config, dict) else None
    auths = auths if isinstance(auths, dict) else {}
    names = [host] + (["https://index.docker.io/v1/", "index.docker.io"] if host == DOCKER_HUB else [])
    entry = next((auths[n] for n in names if isinstance(auths.get(n), dict)), None)
    if entry is None or not entry.get("auth"):
        helper = "credsStore" in config or host in (config.get("credHelpers") or {})
        why = "it is kept by a credential helper, which warren does not read" if helper else "it has none"
        raise CliError(f"--with-registry-auth: no login for {host} in {path} ({why})", Exit.USAGE)
    try:
        user, sep, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        sep = ""
    if not sep or not user or not password:
        raise CliError(f"--with-registry-auth: the login for {host} in {path} is malformed", Exit.USAGE)
    return host, user, password
