"""An operator's exec in the exec runtime (ADR 59): a process with pipes, or a pseudo-terminal.

The caller spawns the process (the driver's chain: the task's namespaces, cgroups and user);
this module gives it its stdio and implements the runtime port's ExecProcess over it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Callable
from typing import IO, Any

from warren.agent.runtime import ExecFailure, RuntimeFailure

Spawn = Callable[..., "subprocess.Popen[bytes]"]


def set_window(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's size; the kernel sends SIGWINCH to its foreground process group."""
    if rows and cols:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class InteractiveProcess:
    """ExecProcess over a Popen: its pipes, or the master side of its terminal."""

    def __init__(self, proc: subprocess.Popen[bytes], master: int | None) -> None:
        self._proc = proc
        self._master = master
        self._lock = threading.Lock()
        self._closed = False
        if master is not None:
            self.stdin: int | None = master
            self.stdout = master
            self.stderr: int | None = None
        else:
            self.stdin = proc.stdin.fileno() if proc.stdin is not None else None
            assert proc.stdout is not None and proc.stderr is not None
            self.stdout = proc.stdout.fileno()
            self.stderr = proc.stderr.fileno()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def resize(self, rows: int, cols: int) -> None:
        with self._lock:
            if self._master is not None and not self._closed:
                set_window(self._master, rows, cols)

    def close_stdin(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._master is not None:
                with contextlib.suppress(OSError):
                    os.write(self._master, b"\x04")  # end of file, as a terminal says it
            elif self._proc.stdin is not None and not self._proc.stdin.closed:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
                self.stdin = None

    def kill(self) -> None:
        if self._proc.returncode is not None:
            return
        # Its own session and process group: everything it started, unless moved out.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):  # before its setsid(1) ran, it had no group of its own
            self._proc.kill()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return 128 - code if code < 0 else code

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            files: list[IO[bytes] | None] = [self._proc.stdin, self._proc.stdout, self._proc.stderr]
            for f in files:
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
            if self._master is not None:
                with contextlib.suppress(OSError):
                    os.close(self._master)


def start_interactive(spawn: Spawn, tty: bool, stdin: bool, rows: int, cols: int) -> InteractiveProcess:
    """Start a process with `spawn(out, stdin=, err=, terminal=)`, wired for an exec."""
    kwargs: dict[str, Any]
    master = slave = -1
    if tty:
        master, slave = os.openpty()
        set_window(master, rows, cols)
        kwargs = {"out": slave, "stdin": slave, "err": slave, "terminal": True}
    else:
        kwargs = {
            "out": subprocess.PIPE,
            "stdin": subprocess.PIPE if stdin else subprocess.DEVNULL,
            "err": subprocess.PIPE,
        }
    try:
        proc = spawn(**kwargs)
    except ExecFailure:
        _close(master)
        raise
    except RuntimeFailure as exc:
        _close(master)
        kind = "not_found" if exc.message.startswith("executable file not found") else "cannot_execute"
        raise ExecFailure(kind, exc.message) from None
    except BaseException:
        _close(master)
        raise
    finally:
        _close(slave)  # the child holds its own copy
    return InteractiveProcess(proc, master if tty else None)


def _close(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
