"""`warren task exec` and `warren service exec`: run a command in a running task (ADR 59).

The command's stdin, stdout and stderr stream through the leader to the task's agent. With
`-t` the local terminal is put in raw mode and its size is sent at start and on SIGWINCH. The
exit code is the command's own; see docs/cli.md for the others.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from warren.cli.errors import CliError, Exit
from warren.text import shown

STDIN_CHUNK = 32 * 1024  # the manager takes at most 64 KiB per request
TASK_ENDED = 137  # the task stopped running during the exec (the command was killed)


def register(groups: Any) -> None:
    group = groups.add_parser("task", help="work with tasks")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")
    add_exec_parser(cmds, "task")


def add_exec_parser(cmds: Any, kind: str) -> None:
    target = "TASK" if kind == "task" else "SERVICE[.SLOT]"
    p = cmds.add_parser(
        "exec",
        help="run a command in a running task",
        usage=f"warren {kind} exec [-i] [-t] {target} -- COMMAND [ARG...]",
        description=(
            "Run COMMAND in the task's container (for the exec runtime: in its namespaces). "
            "The exit code is the command's own; 126: it cannot be executed, 127: not found, "
            "3: no such task, 4: the task is not running, 137: the task stopped during the exec."
        ),
    )
    p.add_argument("-i", "--interactive", action="store_true", help="send stdin to the command")
    p.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
    if kind == "task":
        p.add_argument("target", metavar="TASK", help="task ID or unique ID prefix")
    else:
        p.add_argument("target", metavar="SERVICE[.SLOT]", help="service name or ID; slot: its lowest running one")
    p.set_defaults(func=cmd_exec, accepts_command=True, exec_kind=kind)


def parse_service_slot(text: str) -> tuple[str, int]:
    """SERVICE or SERVICE.SLOT (a positive number after the last dot)."""
    name, dot, slot = text.rpartition(".")
    if dot and slot.isdigit() and name:
        if int(slot) < 1:
            raise CliError(f"invalid slot in {shown(text)}: slots start at 1", Exit.USAGE)
        return name, int(slot)
    return text, 0


def cmd_exec(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    if not args.command:
        raise CliError(f"a command is required: warren {args.exec_kind} exec TARGET -- COMMAND [ARG...]", Exit.USAGE)
    start = pb.ExecStart(command=args.command, tty=args.tty, stdin=args.interactive)
    if args.exec_kind == "task":
        start.task = args.target
    else:
        start.service, start.slot = parse_service_slot(args.target)
    terminal = args.tty and os.isatty(sys.stdout.fileno())
    if terminal:
        start.rows, start.cols = _window()
    with connect(args) as client:
        return _Session(client, start, args.interactive, terminal, args.tty and os.isatty(0)).run()


def _window() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return 0, 0
    return size.lines, size.columns


class _Session:
    def __init__(self, client: Any, start: Any, interactive: bool, terminal: bool, raw: bool) -> None:
        from warren.api.v1 import control_pb2 as pb

        self._pb = pb
        self._client = client
        self._start = start
        self._interactive = interactive
        self._terminal = terminal
        self._raw = raw
        self._inputs: queue.Queue[Any] = queue.Queue(64)
        self._connected = threading.Event()
        self._done = threading.Event()

    def _requests(self) -> Iterator[Any]:
        yield self._pb.ExecRequest(start=self._start)
        # Nothing else until the exec started: a refused attempt must not eat stdin.
        while not self._connected.wait(0.2):
            if self._done.is_set():
                return
        while True:
            item = self._inputs.get()
            if item is None:
                return
            yield item

    def _read_stdin(self) -> None:
        while not self._done.is_set():
            try:
                data = os.read(0, STDIN_CHUNK)
            except OSError:
                data = b""
            if not data:
                self._put(self._pb.ExecRequest(stdin_eof=True))
                return
            self._put(self._pb.ExecRequest(stdin=data))

    def _put(self, item: Any) -> None:
        while not self._done.is_set():
            try:
                self._inputs.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _on_resize(self, _signum: int, _frame: object) -> None:
        rows, cols = _window()
        if rows and cols:
            with contextlib.suppress(queue.Full):  # the next resize carries the size again
                self._inputs.put_nowait(self._pb.ExecRequest(rows=rows, cols=cols))

    def run(self) -> int:
        saved = None
        if self._terminal:
            signal.signal(signal.SIGWINCH, self._on_resize)
        try:
            out, err = sys.stdout.buffer, sys.stderr.buffer
            for reply in self._client.bidi("Exec", self._requests):
                if not self._connected.is_set():
                    self._connected.set()
                    if self._raw:
                        saved = _make_raw()
                    if self._interactive:
                        threading.Thread(target=self._read_stdin, name="exec-stdin", daemon=True).start()
                if reply.stdout:
                    out.write(reply.stdout)
                    out.flush()
                if reply.stderr:
                    err.write(reply.stderr)
                    err.flush()
                if reply.exited:
                    if saved is not None:
                        _restore(saved)
                        saved = None
                    if reply.error:
                        sys.stderr.write(f"warren: {reply.error}\n")
                    return int(reply.exit_code)
            raise CliError("the exec ended without the command's exit code", Exit.UNAVAILABLE)
        finally:
            self._done.set()
            with contextlib.suppress(queue.Full):
                self._inputs.put_nowait(None)
            if saved is not None:
                _restore(saved)
            if self._terminal:
                signal.signal(signal.SIGWINCH, signal.SIG_DFL)


def _make_raw() -> Any:
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0, termios.TCSANOW)  # keep what was typed before the exec started
    return saved


def _restore(saved: Any) -> None:
    import termios

    termios.tcsetattr(0, termios.TCSADRAIN, saved)
