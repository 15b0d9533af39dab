"""Health checks for running tasks, with Docker's semantics (`model.HealthCheck`).

Three layers, so that the rules can be tested without processes, sockets or clocks:

- `HealthTracker(check, started_at)` is the pure state machine. Feed it each probe result with
  the time it was taken (`observe(result, at) -> bool`, True when the status changed); read
  `status` ("starting" | "healthy" | "unhealthy") and `report()`. It never reads a clock.
- `run_probe(check, runtime, runtime_id) -> ProbeResult` runs one probe and blocks: "cmd" runs
  `check.command` with `runtime.exec` (the CLI stores --health-cmd as ["/bin/sh", "-c", CMD]),
  "http" GETs `check.target` (2xx/3xx healthy; redirects are not followed; no proxy; TLS
  certificates are not verified, as Kubernetes' HTTPS probes do), "tcp" connects to
  `check.target` ("host:port", "[::1]:port"). It never raises: every failure is a result.
- `monitor(check, probe, on_change, ...)` is the asyncio loop the agent runs per task:

      probe = health.threaded_probe(check, runtime, runtime_id)
      task = asyncio.create_task(health.monitor(check, probe, on_change))
      ...
      task.cancel()  # when the container stops

  It calls `on_change(HealthReport)` once at the start ("starting") and then on every status
  change; `on_change` may be a plain function or a coroutine function. The loop runs until it
  is cancelled. Pass `clock=time.time, started_at=status.started_at` to count the start period
  from the container's real start (e.g. after the agent re-adopted it).

Semantics, as Docker's: the first probe runs one `interval` after the start, then one
`interval` after each probe ends. Failures during `start_period` are not counted while the
status is "starting"; a success ends the start period at once. `retries` consecutive counted
failures make the task "unhealthy"; one success makes it "healthy" again. The message of an
unhealthy task names the streak and the last failure, e.g.
"health check failed 3 times: exit 127: /bin/sh: 1: nosuchcmd: not found".
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

from warren.agent.runtime import Runtime, RuntimeFailure
from warren.aio import wait_within
from warren.model import HealthCheck
from warren.text import ascii_int

HealthStatus = Literal["starting", "healthy", "unhealthy"]
STARTING: HealthStatus = "starting"
HEALTHY: HealthStatus = "healthy"
UNHEALTHY: HealthStatus = "unhealthy"

MESSAGE_LIMIT = 300  # characters of probe output kept in a message, as shown by `service ps`
PROBE_SLACK = 5.0  # monitor's own deadline beyond check.timeout, should a probe ignore its timeout


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str


@dataclass(frozen=True)
class HealthReport:
    """What the agent reports for a task: `status` goes to Task.health, `message` explains it."""

    status: HealthStatus
    message: str
    failing_streak: int = 0


# -- the state machine (pure) ------------------------------------------------------------------
class HealthTracker:
    """Docker's health rules over (result, time) events. No I/O and no clock reads."""

    def __init__(self, check: HealthCheck, started_at: float) -> None:
        self.check = check
        self.started_at = started_at
        self.status: HealthStatus = STARTING
        self.failing_streak = 0
        self.last: ProbeResult | None = None
        self._last_counted = False

    @property
    def retries(self) -> int:
        return max(1, self.check.retries)

    def in_start_period(self, at: float) -> bool:
        """Failures now would not count: still starting and within start_period of the start."""
        return self.status == STARTING and at - self.started_at < self.check.start_period

    def observe(self, result: ProbeResult, at: float) -> bool:
        """Apply one probe result taken at `at`; True if the status changed."""
        before = self.status
        self.last = result
        if result.ok:
            self.failing_streak = 0
            self.status = HEALTHY
        elif self.in_start_period(at):
            self._last_counted = False
        else:
            self._last_counted = True
            self.failing_streak += 1
            if self.failing_streak >= self.retries:
                self.status = UNHEALTHY
        return self.status != before

    @property
    def message(self) -> str:
        last = self.last
        if last is None:
            return "waiting for the first health check"
        if last.ok:
            return last.message
        if self.status == UNHEALTHY:
            times = "once" if self.failing_streak == 1 else f"{self.failing_streak} times"
            return f"health check failed {times}: {last.message}"
        if not self._last_counted:
            return f"health check failed during the start period: {last.message}"
        return f"health check failed {self.failing_streak} of {self.retries} times: {last.message}"

    def report(self) -> HealthReport:
        return HealthReport(self.status, self.message, self.failing_streak)


# -- probes (blocking I/O) ---------------------------------------------------------------------
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


def on_task_address(check: HealthCheck, address: str) -> HealthCheck:
    """An HTTP or TCP check aimed at the task's loopback, aimed instead at `address`: a task
    with its own network namespace (the overlay, ADR 17) is not on the agent's loopback."""
    if check.kind == "http":
        parts = urllib.parse.urlsplit(check.target)
        if parts.hostname in _LOOPBACK:
            netloc = f"{address}:{parts.port}" if parts.port else address
            return msgspec.structs.replace(check, target=urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
    elif check.kind == "tcp":
        host, sep, port = check.target.rpartition(":")
        if sep and host.strip("[]") in _LOOPBACK:
            return msgspec.structs.replace(check, target=f"{address}:{port}")
    return check


def run_probe(check: HealthCheck, runtime: Runtime, runtime_id: str) -> ProbeResult:
    """One probe of `check` against the container; never raises, a failure is a result."""
    try:
        if check.kind == "cmd":
            return _probe_cmd(check, runtime, runtime_id)
        if check.kind == "http":
            return _probe_http(check.target, check.timeout)
        if check.kind == "tcp":
            return _probe_tcp(check.target, check.timeout)
        return ProbeResult(False, f"unknown health check kind {check.kind!r}")
    except RuntimeFailure as exc:
        return ProbeResult(False, exc.message)
    except Exception as exc:  # a probe's bug must read as a failed check, not kill the monitor
        return ProbeResult(False, f"{check.kind} probe error: {exc!r}")


def _probe_cmd(check: HealthCheck, runtime: Runtime, runtime_id: str) -> ProbeResult:
    if not check.command:
        return ProbeResult(False, "the health check has no command")
    code, output = runtime.exec(runtime_id, list(check.command), check.timeout)
    text = _summary(output)
    return ProbeResult(code == 0, f"exit {code}: {text}" if text else f"exit {code}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is the endpoint's answer: following it would probe some other endpoint."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _probe_http(url: str, timeout: float) -> ProbeResult:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),  # the agent's proxy settings must not apply to its tasks
        _NoRedirect(),
        urllib.request.HTTPSHandler(context=_insecure_tls()),
    )
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "warren-health/1"})
    try:
        with opener.open(request, timeout=timeout) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
        exc.close()
    except urllib.error.URLError as exc:
        return ProbeResult(False, f"GET {url}: {_reason(exc.reason, timeout)}")
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(False, f"GET {url}: {_reason(exc, timeout)}")
    ok = 200 <= code < 400
    return ProbeResult(ok, f"HTTP {code}" if ok else f"GET {url}: HTTP {code}")


def _probe_tcp(target: str, timeout: float) -> ProbeResult:
    host, sep, port = target.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or ascii_int(port) is None:
        return ProbeResult(False, f"invalid tcp health check target {target!r}: expected HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return ProbeResult(True, f"connected to {target}")
    except OSError as exc:
        return ProbeResult(False, f"connect {target}: {_reason(exc, timeout)}")


def _reason(exc: object, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _summary(output: str) -> str:
    """Probe output on one line, trimmed to MESSAGE_LIMIT characters (the end is kept: errors
    come last)."""
    text = " | ".join(line.strip() for line in output.strip().splitlines() if line.strip())
    return text if len(text) <= MESSAGE_LIMIT else "..." + text[-(MESSAGE_LIMIT - 3) :]


# -- the monitor loop (asyncio) ----------------------------------------------------------------
Probe = Callable[[], Awaitable[ProbeResult]]
OnChange = Callable[[HealthReport], object]


def threaded_probe(check: HealthCheck, runtime: Runtime, runtime_id: str) -> Probe:
    """`run_probe` off the event loop, in the default executor: runtime calls block."""

    def probe() -> Awaitable[ProbeResult]:
        return asyncio.to_thread(run_probe, check, runtime, runtime_id)

    return probe


async def monitor(
    check: HealthCheck,
    probe: Probe,
    on_change: OnChange,
    *,
    started_at: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """Probe every `check.interval` and report status changes, until cancelled."""
    tracker = HealthTracker(check, clock() if started_at is None else started_at)
    await _notify(on_change, tracker.report())
    while True:
        await sleep(check.interval)
        try:
            result = await wait_within(probe(), check.timeout + PROBE_SLACK)
        except TimeoutError:
            result = ProbeResult(False, f"timed out after {check.timeout:g}s")
        except Exception as exc:  # a failing probe is a failed check; only cancellation stops us
            result = ProbeResult(False, f"{check.kind} probe error: {exc!r}")
        if tracker.observe(result, clock()):
            await _notify(on_change, tracker.report())


async def _notify(on_change: OnChange, report: HealthReport) -> None:
    outcome = on_change(report)
    if inspect.isawaitable(outcome):
        await outcome
