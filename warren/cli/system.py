"""`warren system install|uninstall`: run this machine's manager or worker as a systemd service
(ADR 64), and `warren version`.

The units are package data (warren/systemd/, also at deploy/systemd/); install writes one with
ExecStart pointing at the warren that runs the command, plus /etc/default/warren-ROLE holding
the data directory and the flags, then tells systemd when it runs here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warren.cli.errors import CliError, Exit
from warren.cli.flags import Parser, add_format_flag

UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
SYSTEM_ROOT = Path("/")  # where units go without --root
PACKAGED_EXECUTABLE = "/usr/bin/warren"  # what the shipped units run (the Debian package's)
# A flag must survive EnvironmentFile= parsing and `$WARREN_FLAGS` word splitting unchanged.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")  # no %: a specifier in a unit


@dataclass(frozen=True)
class Role:
    name: str
    unit: str
    command: tuple[str, ...]  # the warren command the unit runs
    default_data_dir: str


ROLES = {
    "manager": Role("manager", "warren-manager.service", ("cluster", "init"), "/var/lib/warren"),
    "worker": Role("worker", "warren-worker.service", ("worker", "start"), "/var/lib/warren-worker"),
}


def register(groups: Any) -> None:
    p = groups.add_parser("version", help="show the version, the commit and the library versions")
    add_format_flag(p)
    p.set_defaults(func=cmd_version)

    group = groups.add_parser("system", help="run this machine's manager or worker as a systemd service")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")
    p = cmds.add_parser(
        "install",
        help="write the systemd unit and its flags file (/etc/default/warren-ROLE); enable it with --enable",
        description="Write warren-ROLE.service to /etc/systemd/system, running this warren, and "
        "/etc/default/warren-ROLE with the data directory and the flags given after `--` (checked now), "
        "then run `systemctl daemon-reload` (and `enable` with --enable) if systemd runs here. A manager "
        "unit runs `cluster init` (creates the cluster on its first start, resumes it after); a worker "
        "unit runs `worker start` (join once with `cluster join` first).",
    )
    p.add_argument("--role", required=True, choices=sorted(ROLES))
    p.add_argument("--data-dir", metavar="DIR", help="the node's data directory (default: the role's default)")
    p.add_argument("--root", type=Path, metavar="DIR", help="install under DIR instead of / (never runs systemctl)")
    p.add_argument(
        "--executable",
        metavar="PATH",
        help="the warren the unit runs (default: this one)",
    )
    p.add_argument("--enable", action="store_true", help="also `systemctl enable` the unit (start it yourself)")
    p.set_defaults(func=cmd_install, accepts_command=True)

    p = cmds.add_parser(
        "uninstall",
        help="disable and stop the unit, remove it and its flags file (the data directory stays)",
    )
    p.add_argument("--role", choices=sorted(ROLES), help="only this role's unit (default: both)")
    p.add_argument("--root", type=Path, metavar="DIR", help="uninstall under DIR instead of / (never runs systemctl)")
    p.set_defaults(func=cmd_uninstall)


def cmd_version(args: argparse.Namespace) -> int:
    from warren.version import version_info

    info = version_info()
    print(json.dumps(info.as_dict(), indent=2) if args.format == "json" else info.text())
    return 0


def _this_warren() -> list[str]:
    """The command that runs this warren: its console script, else this Python with `-m`."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) in ("warren", "wrn") and os.access(script, os.X_OK):
        return [os.path.abspath(script)]
    return [sys.executable, "-m", "warren.cli.main"]


def _check_words(what: str, words: list[str]) -> None:
    for word in words:
        if not _PLAIN_WORD.fullmatch(word):
            raise CliError(
                f"{what} {word!r} cannot go in a systemd unit or environment file as it is (spaces, quotes, "
                "'$', '%' or '\\'): edit the installed file by hand",
                Exit.USAGE,
            )


def _check_flags(role: Role, data_dir: str, flags: list[str]) -> None:
    """Refuse now what the service would refuse at every start: the role command's own parser."""
    for flag in flags:
        if flag in ("-h", "--help") or flag == "--data-dir" or flag.startswith("--data-dir="):
            raise CliError(f"{flag} cannot be a service flag (give --data-dir to `system install`)", Exit.USAGE)
        if flag == "--force-new-cluster":
            raise CliError(f"{flag} cannot be a service flag: it would reset the managers at every start", Exit.USAGE)
    _check_words("flag", flags)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            parsed = _role_parser(role).parse_args(["--data-dir", data_dir, *flags])
    except SystemExit:
        why = said.getvalue().strip().partition(": error: ")[2].rpartition(" (see ")[0] or said.getvalue().strip()
        raise CliError(f"bad service flags for `warren {' '.join(role.command)}`: {why}", Exit.USAGE) from None
    if parsed.data_dir != Path(data_dir):  # an abbreviation such as --data
        raise CliError("give the data directory as --data-dir to `system install`, not as a service flag", Exit.USAGE)


def _role_parser(role: Role) -> Parser:
    """The flags the role's command takes, from the same functions that add them to it."""
    from warren.cli import manager_flags, worker

    parser = Parser(prog=f"warren {' '.join(role.command)}")
    if role.name == "manager":
        manager_flags.add_manager_flags(parser)
    else:
        worker.add_agent_flags(parser)
    return parser


def render_unit(role: Role, executable: list[str]) -> str:
    """The shipped unit with ExecStart running `executable` instead of /usr/bin/warren."""
    try:
        text = (UNIT_DIR / role.unit).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {UNIT_DIR / role.unit}: {exc.strerror} (the installation is damaged)") from None
    marker = f"ExecStart={PACKAGED_EXECUTABLE} "
    if marker not in text:
        raise CliError(f"{UNIT_DIR / role.unit} has no '{marker}' line: the installation is damaged")
    return text.replace(marker, f"ExecStart={' '.join(executable)} ", 1)


def environment_file(role: Role, data_dir: str, flags: list[str]) -> str:
    return (
        f"# Flags of {role.unit} (`warren {' '.join(role.command)}`), written by `warren system install`.\n"
        "# Edit, then `systemctl restart` the unit. WARREN_FLAGS is split on spaces: no quoting.\n"
        f"WARREN_DATA_DIR={data_dir}\n"
        f'WARREN_FLAGS="{" ".join(flags)}"\n'
    )


def _paths(root: Path, role: Role) -> tuple[Path, Path]:
    return root / "etc/systemd/system" / role.unit, root / "etc/default" / role.unit.removesuffix(".service")


def systemd_running() -> bool:
    """sd_booted(): systemd is PID 1 here (a container or chroot often has none)."""
    return Path("/run/systemd/system").is_dir()


def _systemctl(*argv: str) -> None:
    try:
        done = subprocess.run(["systemctl", *argv], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CliError(f"systemctl {' '.join(argv)} failed: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise CliError(f"systemctl {' '.join(argv)} failed: {detail[-1] if detail else done.returncode}")


def cmd_install(args: argparse.Namespace) -> int:
    from warren import datadir

    role = ROLES[args.role]
    flags = list(args.command or [])
    data_dir = str(Path(args.data_dir).absolute()) if args.data_dir else role.default_data_dir
    executable = [args.executable] if args.executable else _this_warren()
    _check_words("path", [data_dir, *executable])
    if not os.access(executable[0], os.X_OK):
        raise CliError(f"{executable[0]} is not an executable file", Exit.USAGE)
    _check_flags(role, data_dir, flags)
    root = args.root or SYSTEM_ROOT
    unit_path, env_path = _paths(root, role)
    unit_text, env_text = render_unit(role, executable), environment_file(role, data_dir, flags)
    try:
        for path, text in ((unit_path, unit_text), (env_path, env_text)):
            path.parent.mkdir(parents=True, exist_ok=True)
            datadir.write_atomic(path, text, mode=datadir.PUBLIC)
            print(f"wrote {path}")
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename}: {exc.strerror}") from None
    if args.root is not None:
        print(f"installed under {root}: systemctl not run")
    elif not systemd_running():
        print("systemd is not running here: files written, run `systemctl daemon-reload` once it does")
    else:
        _systemctl("daemon-reload")
        if args.enable:
            _systemctl("enable", role.unit)
            print(f"enabled {role.unit}; start it with `systemctl start {role.unit}`")
        else:
            print(f"start it with `systemctl enable --now {role.unit}`")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    roles = [ROLES[args.role]] if args.role else list(ROLES.values())
    root = args.root or SYSTEM_ROOT
    live = args.root is None and systemd_running()
    removed = []
    for role in roles:
        unit_path, env_path = _paths(root, role)
        if live and unit_path.exists():
            _systemctl("disable", "--now", role.unit)  # KillMode=process: its tasks keep running
        for path in (unit_path, env_path):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CliError(f"cannot remove {path}: {exc.strerror}") from None
            removed.append(path)
            print(f"removed {path}")
    if live and removed:
        _systemctl("daemon-reload")
    if not removed:
        print("nothing to remove")
    return 0
