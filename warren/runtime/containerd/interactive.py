"""An operator's exec in a containerd task (ADR 59): Tasks.Exec with stdio FIFOs.

The FIFOs live in a private directory under the driver's state directory. Our ends are opened
before Tasks.Exec, so that the shim's opens never wait: stdout and stderr for reading
(non-blocking), stdin read-write (a FIFO opened so never blocks, and its end is seen by the
shim once we close it). With a terminal the process spec says `terminal: true`; the shim then
copies between its pty and our FIFOs, and ResizePty sets the window. The shim closes its write
ends when the process exits, which is how the agent sees the end of the output.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2

from warren.agent.runtime import ExecFailure
from warren.runtime.containerd import api
from warren.runtime.containerd.client import code_of, details_of
from warren.runtime.containerd.oci import PROCESS_TYPE_URL, exec_process

NOT_FOUND_RE = ("executable file not found", "no such file or directory")
CANNOT_EXECUTE_RE = ("permission denied", "exec format error", "is a directory")


class ContainerdExec:
    """ExecProcess over one containerd exec process and its FIFOs."""

    def __init__(self, client: Any, cid: str, exec_id: str, fifo_dir: Path, tty: bool, stdin: bool) -> None:
        self._client = client
        self._cid = cid
        self._exec_id = exec_id
        self._dir = fifo_dir
        self._lock = threading.Lock()
        self._closed = False
        self._exit: int | None = None
        self._future: grpc.Future | None = None
        paths = {name: fifo_dir / name for name in ("stdin", "stdout", "stderr")}
        for name, path in paths.items():
            if name != "stdin" or stdin:
                os.mkfifo(path, 0o600)
        self.paths = {name: str(path) if path.exists() else "" for name, path in paths.items()}
        self.stdout = os.open(paths["stdout"], os.O_RDONLY | os.O_NONBLOCK)
        self.stderr: int | None = None
        if not tty:
            self.stderr = os.open(paths["stderr"], os.O_RDONLY | os.O_NONBLOCK)
        else:
            self.paths["stderr"] = ""  # a terminal has one output
        self.stdin: int | None = os.open(paths["stdin"], os.O_RDWR | os.O_NONBLOCK) if stdin else None

    def start(self, spec: Mapping[str, Any], argv: list[str], tty: bool, rows: int, cols: int) -> None:
        md = self._client.md()
        process = exec_process(spec, argv, terminal=tty)
        try:
            self._client.tasks.Exec(
                api.tasks_pb2.ExecProcessRequest(
                    container_id=self._cid,
                    exec_id=self._exec_id,
                    stdin=self.paths["stdin"],
                    stdout=self.paths["stdout"],
                    stderr=self.paths["stderr"],
                    terminal=tty,
                    spec=any_pb2.Any(type_url=PROCESS_TYPE_URL, value=json.dumps(process).encode()),
                ),
                metadata=md,
                timeout=30,
            )
            self._future = self._client.tasks.Wait.future(
                api.tasks_pb2.WaitRequest(container_id=self._cid, exec_id=self._exec_id), metadata=md
            )
            self._client.tasks.Start(
                api.tasks_pb2.StartRequest(container_id=self._cid, exec_id=self._exec_id), metadata=md, timeout=30
            )
        except grpc.RpcError as exc:
            raise _failure(exc) from None
        if tty:
            self.resize(rows, cols)

    def resize(self, rows: int, cols: int) -> None:
        if not rows or not cols:
            return
        with contextlib.suppress(grpc.RpcError):  # the process may have exited meanwhile
            self._client.tasks.ResizePty(
                api.tasks_pb2.ResizePtyRequest(container_id=self._cid, exec_id=self._exec_id, width=cols, height=rows),
                metadata=self._client.md(),
                timeout=10,
            )

    def close_stdin(self) -> None:
        with self._lock:
            if self.stdin is not None:
                with contextlib.suppress(OSError):
                    os.close(self.stdin)
                self.stdin = None
        with contextlib.suppress(grpc.RpcError):
            self._client.tasks.CloseIO(
                api.tasks_pb2.CloseIORequest(container_id=self._cid, exec_id=self._exec_id, stdin=True),
                metadata=self._client.md(),
                timeout=10,
            )

    def kill(self) -> None:
        if self._exit is not None:
            return
        with contextlib.suppress(grpc.RpcError):
            self._client.tasks.Kill(
                api.tasks_pb2.KillRequest(container_id=self._cid, exec_id=self._exec_id, signal=signal.SIGKILL),
                metadata=self._client.md(),
                timeout=10,
            )

    def wait(self, timeout: float | None = None) -> int | None:
        if self._exit is not None:
            return self._exit
        if self._future is None:
            return 1
        try:
            self._exit = int(self._future.result(timeout=timeout).exit_status)
        except grpc.FutureTimeoutError:
            return None
        except (grpc.RpcError, grpc.FutureCancelledError):
            self._exit = 137  # the task (and so this process) is gone
        return self._exit

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self.stdin, self.stdout, self.stderr):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.stdin = None
        if self._future is not None and not self._future.done():
            self._future.cancel()
        with contextlib.suppress(grpc.RpcError):
            self._client.tasks.DeleteProcess(
                api.tasks_pb2.DeleteProcessRequest(container_id=self._cid, exec_id=self._exec_id),
                metadata=self._client.md(),
                timeout=30,
            )
        shutil.rmtree(self._dir, ignore_errors=True)


def start_exec(
    client: Any,
    state_dir: Path,
    cid: str,
    spec: Mapping[str, Any],
    argv: list[str],
    tty: bool,
    stdin: bool,
    rows: int,
    cols: int,
) -> ContainerdExec:
    """Start `argv` in the running container `cid` (whose OCI spec is `spec`) for an operator."""
    exec_id = f"exec-{secrets.token_hex(6)}"
    fifo_dir = state_dir / "exec-io" / f"{cid}-{exec_id}"
    fifo_dir.mkdir(parents=True, mode=0o700)
    process = None
    try:
        process = ContainerdExec(client, cid, exec_id, fifo_dir, tty, stdin)
        process.start(spec, argv, tty, rows, cols)
        return process
    except BaseException:
        if process is not None:
            process.close()
        shutil.rmtree(fifo_dir, ignore_errors=True)
        raise


def _failure(exc: grpc.RpcError) -> ExecFailure:
    details = details_of(exc)
    low = details.lower()
    if code_of(exc) in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION) and "exec" not in low:
        return ExecFailure("not_running", f"the container is not running: {details}")
    if any(words in low for words in NOT_FOUND_RE):
        return ExecFailure("not_found", f"executable file not found: {details}")
    if any(words in low for words in CANNOT_EXECUTE_RE):
        return ExecFailure("cannot_execute", f"cannot execute: {details}")
    return ExecFailure("failed", f"exec failed: {details}")
