"""How Warren's daemons log (ADR 62): text or JSON lines on stderr, at one level, with context.

Every daemon entry point (`cluster init/join/restore`, `worker start`, `sim`, and the
`python -m` agent and node modules) calls `configure()` once. The format and level come from
--log-format/--log-level, which the CLI also puts in the environment (WARREN_LOG_FORMAT,
WARREN_LOG_LEVEL) so that a re-executed agent (warren.agent.daemon._shed_join_libraries)
keeps them.

Context is one mechanism, a contextvar: `bind(task=..., service=...)` in a coroutine tags every
line logged from it and from the tasks it creates afterwards; `context(...)` tags one block;
`set_default(node=...)` tags every line of the process, threads included (PySyncObj's thread
has no asyncio context). The JSON formatter writes the fields; the text format is unchanged.

In JSON mode every line the process writes must parse, so print() output on stdout and stderr
becomes a JSON record too (logger "warren.console"), and uncaught exceptions are logged as one
record with the traceback in one field.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
FORMAT_ENV = "WARREN_LOG_FORMAT"
LEVEL_ENV = "WARREN_LOG_LEVEL"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_LOGGER = "warren.console"  # print() output, in JSON mode

_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "warren_log_fields", default=MappingProxyType({})
)
_defaults: dict[str, Any] = {}


class LogConfigError(ValueError):
    """A bad --log-format/--log-level (or their environment variables); str() says what."""


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "info"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise LogConfigError(f"log format must be text or json (got {self.format!r})")
        if self.level not in LEVELS:
            raise LogConfigError(f"log level must be one of {', '.join(LEVELS)} (got {self.level!r})")


def from_env(environ: Mapping[str, str] | None = None) -> LogConfig:
    """The configuration the environment gives (defaults: text, info); raises LogConfigError."""
    env = os.environ if environ is None else environ
    try:
        return LogConfig(env.get(FORMAT_ENV) or "text", (env.get(LEVEL_ENV) or "info").lower())
    except LogConfigError as exc:
        raise LogConfigError(f"{FORMAT_ENV}/{LEVEL_ENV}: {exc}") from None


def export(log_format: str | None, level: str | None) -> None:
    """Put flags given on a command line into the environment, where configure() and any
    process this one starts or becomes read them."""
    if log_format is not None:
        os.environ[FORMAT_ENV] = log_format
    if level is not None:
        os.environ[LEVEL_ENV] = level


def add_flags(parser: Any, configure_early: bool = True) -> None:
    """--log-format and --log-level, for an argparse parser of a daemon. `configure_early`: the
    CLI configures logging before the command runs, so that its own first lines are logs too."""
    parser.add_argument("--log-format", choices=FORMATS, help="text (the default) or json: one JSON object a line")
    parser.add_argument("--log-level", choices=LEVELS, help="the least severe level logged (default: info)")
    parser.set_defaults(configure_logs=configure_early)


# -- context ---------------------------------------------------------------------------------------
def bind(**fields: Any) -> None:
    """Tag what the current context logs from now on, and the tasks it creates afterwards."""
    _fields.set({**_fields.get(), **fields})


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Tag what is logged inside the block."""
    token = _fields.set({**_fields.get(), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def set_default(**fields: Any) -> None:
    """Tag every line of this process, from any thread (bound fields take precedence)."""
    _defaults.update(fields)


def current_fields() -> dict[str, Any]:
    return {**_defaults, **_fields.get()}


# -- formatting ------------------------------------------------------------------------------------
def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, component, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        out: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": name,
            "component": name.removeprefix("warren.") if name.startswith("warren.") else name,
            "message": record.getMessage(),
        }
        for key, value in current_fields().items():
            if value not in (None, ""):
                out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _LineLogger(io.TextIOBase):
    """A text stream that logs each complete line it is given (print() output in JSON mode)."""

    def __init__(self, level: int, original: TextIO) -> None:
        self._level = level
        self._original = original
        self._pending = ""
        self._lock = threading.Lock()
        self._logger = logging.getLogger(CONSOLE_LOGGER)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                self._logger.log(self._level, "%s", line)
        return len(text)

    def flush(self) -> None:
        self._original.flush()

    def fileno(self) -> int:
        return self._original.fileno()

    def isatty(self) -> bool:
        return False


_configured: LogConfig | None = None


def configure(config: LogConfig | None = None) -> LogConfig:
    """Set up the root logger once (later calls return the first configuration); raises
    LogConfigError for a bad environment. `config` defaults to from_env()."""
    global _configured
    if _configured is not None:
        return _configured
    config = config or from_env()
    stream = sys.__stderr__ or sys.stderr
    handler = logging.StreamHandler(stream)
    level = getattr(logging, config.level.upper())
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # grpc's C core writes plain lines to fd 2
        sys.stdout = _LineLogger(logging.INFO, sys.stdout)
        sys.stderr = _LineLogger(logging.ERROR, stream)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)  # a daemon's root has no other (a test runner's stays)
    root.setLevel(level)
    # PySyncObj logs every connection attempt at INFO: only its warnings, unless debugging.
    logging.getLogger("pysyncobj").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    _configured = config
    return config


def configured() -> LogConfig | None:
    return _configured


def configure_or_refuse(config: LogConfig | None = None) -> int:
    """configure() for a daemon's own process: 0, or 2 after one line on stderr saying what is
    wrong with the environment's settings (bad input)."""
    try:
        configure(config)
    except LogConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    logging.getLogger("warren").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("warren").critical("uncaught exception in thread %s", name, exc_info=exc_info)
