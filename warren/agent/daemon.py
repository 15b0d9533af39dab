"""The worker agent process: wires the runtime, the local cache, the task controllers and the
session with the managers together.

Data directory layout (what an agent needs to resume after kill -9):
    certs/      this node's CA, certificate and key (written by `warren cluster join`)
    node.json   {"node_id": ..., "managers": [...]}: who we are and where the managers are
    agent.db    LMDB cache: assignment set and per-task local state (owner-only)
    logs/       one file per task: the container's stdout and stderr (<task>.log), and when
                each line arrived (<task>.idx, ADR 14); rotated copies <task>.log.N (ADR 62)
    exec/ or containerd/   the runtime driver's own state
Stopping the agent (SIGTERM, or kill -9) leaves its containers running: the next agent
re-adopts them by label (ADR 12). Its options and their command line are in warren.agent.options.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import lmdb

from warren import datadir, gilpolicy, heap, logsetup, proctitle, tls
from warren.agent import settings as agent_settings
from warren.agent.cache import AgentCache
from warren.agent.controller import ControllerEnv
from warren.agent.execs import ExecAgent
from warren.agent.logrotation import Rotation
from warren.agent.logs import LogAgent
from warren.agent.options import AgentOptions, options_argv, parse_options
from warren.agent.overlay import Overlay
from warren.agent.promotion import ManagerRunner, Promotion
from warren.agent.runtime import PullLogin, Runtime
from warren.agent.session import ManagerList, NodeRemoved, Session
from warren.agent.status import StatusQueue
from warren.agent.taskfiles import FileVault, TaskFiles
from warren.agent.volumes import LocalVolumes
from warren.agent.worker import Worker
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.certinfo import PkiError
from warren.host import host_facts as read_host_facts
from warren.host import reachable_addr
from warren.network import keys
from warren.network.lean import lean_pyroute2

log = logging.getLogger("warren.agent")

NODE_FILE = datadir.NODE_FILE
CERTS_DIR = datadir.CERTS_DIR
RUNTIME_THREADS = 32  # prepare/start/stop/remove/probe calls in flight at once
WAIT_THREADS = 4096  # one blocked wait() per running task; threads are made on demand
REMOVE_ALL_TIMEOUT = 60.0  # a removed node's tasks: time allowed to stop them gracefully


class AgentStartupError(Exception):
    """Something the operator must fix before the agent can (keep) running; str() says what."""


def make_runtime(options: AgentOptions) -> Runtime:
    """The runtime driver named by the options, imported lazily (containerd pulls in a lot)."""
    if options.runtime == "exec":
        from warren.runtime.exec import ExecRuntime

        # Per-task metrics need each task in cgroups of its own, limited or not (ADR 60).
        return ExecRuntime(options.data_dir / "exec", account=options.metrics_addr is not None)
    if options.runtime == "containerd":
        from warren.runtime.containerd.driver import ContainerdRuntime
        from warren.runtime.containerd.reference import InvalidReference, parse_registry_ca

        try:
            cas = dict(parse_registry_ca(text) for text in options.registry_cas)
            return ContainerdRuntime(
                options.containerd_socket,
                options.data_dir / "containerd",
                options.insecure_registries,
                cgroup_parent=options.cgroup_parent,
                registry_cas=cas,
            )
        except (InvalidReference, ValueError) as exc:
            raise AgentStartupError(f"--registry-ca: {exc}") from None
    raise AgentStartupError(f"unknown runtime {options.runtime!r} (use containerd or exec)")


# -- node.json ---------------------------------------------------------------------------------
def load_node_file(data_dir: Path) -> dict[str, Any]:
    path = data_dir / NODE_FILE
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return found if isinstance(found, dict) else {}


def save_managers(data_dir: Path, managers: list[str]) -> None:
    """Update the manager list in node.json (atomically, keeping every other key)."""
    path = data_dir / NODE_FILE
    node = load_node_file(data_dir)
    node["managers"] = list(managers)
    datadir.write_json(path, node)


# -- node description --------------------------------------------------------------------------
def describe(options: AgentOptions, settings: agent_settings.AgentSettings | None = None) -> dpb.NodeDescription:
    """What this node tells the managers at each session: resources, platform, labels, and its
    WireGuard public key (made at join; read from its file, without `cryptography`). `settings`
    are those the agent started with (a settings file rewritten since does not apply to it)."""
    active = None
    with contextlib.suppress(OSError, keys.WireGuardError):
        active = keys.KeyRing(options.data_dir).active()  # the key in use (ADR 18)
    host = options.advertise_addr.rsplit(":", 1)[0] if ":" in options.advertise_addr else options.advertise_addr
    if settings is None:
        try:
            settings = agent_settings.load(options.data_dir) or agent_settings.AgentSettings()
        except agent_settings.SettingsError:
            settings = agent_settings.AgentSettings()
    host_facts = read_host_facts(options.hostname)
    return dpb.NodeDescription(
        hostname=host_facts.hostname,
        resources=pb.Resources(nano_cpus=host_facts.nano_cpus, memory_bytes=host_facts.memory_bytes),
        addr=options.advertise_addr,
        os=host_facts.os,
        arch=host_facts.arch,
        labels=options.labels,
        wg_public_key=active.public_key if active else "",
        wg_key_epoch=active.epoch if active else 0,
        wg_endpoint=f"{host}:{settings.wireguard_port}" if host else "",
        overlay=settings.wireguard != "off",
        metrics_addr=reachable_addr(options.metrics_addr, host or host_facts.hostname) if options.metrics_addr else "",
    )


# -- serving -----------------------------------------------------------------------------------
LOCK_FILE = "agent.lock"


def lock_data_dir(data_dir: Path) -> int:
    """Hold `data_dir` for this agent (an fd with an exclusive flock, released when the process
    ends, even by kill -9): two agents on one node's data would fight over its tasks."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AgentStartupError(f"cannot lock {data_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AgentStartupError(f"another agent is running on {data_dir}") from None
    return fd


def agent_running(data_dir: Path) -> bool:
    """True while an agent holds `data_dir` (see lock_data_dir)."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _in_pool(pool: concurrent.futures.Executor) -> Callable[..., Any]:
    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    return call


async def serve(options: AgentOptions, stop: asyncio.Event, run_manager: ManagerRunner | None = None) -> None:
    """Run the agent until `stop` is set. Embeddable: a manager's node runs one beside it.
    `run_manager` runs this node's manager once promoted (ADR 15); without it, the agent does not
    take part in promotions. Raises AgentStartupError when it cannot start, or once the cluster
    removed this node."""
    data = options.data_dir
    lean_pyroute2()  # the overlay needs a few of pyroute2's modules, not all it would import
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        (data / "logs").mkdir(mode=0o700, exist_ok=True)
        options.credentials.load(data / CERTS_DIR)
    except tls.MissingCredentialsError as exc:
        raise AgentStartupError(f"{exc}; join the cluster first (warren cluster join)") from None
    except OSError as exc:
        raise AgentStartupError(f"cannot use data directory {data}: {exc.strerror or exc}") from None
    except PkiError as exc:
        raise AgentStartupError(f"unusable credentials in {data / CERTS_DIR}: {exc}") from None
    try:
        settings = agent_settings.load(data) or agent_settings.AgentSettings()
    except agent_settings.SettingsError as exc:
        raise AgentStartupError(str(exc)) from None
    lock = lock_data_dir(data)  # before anything in the directory is written
    try:
        await _serve(options, settings, stop, run_manager)
    finally:
        os.close(lock)


async def _serve(
    options: AgentOptions,
    settings: agent_settings.AgentSettings,
    stop: asyncio.Event,
    run_manager: ManagerRunner | None,
) -> None:
    data = options.data_dir
    node = load_node_file(data)
    managers = ManagerList([*node.get("managers", []), *options.managers])
    if options.managers and not node.get("managers"):
        save_managers(data, managers.addrs)

    try:
        cache = AgentCache(data / "agent.db")
    except lmdb.Error as exc:
        raise AgentStartupError(f"cannot open the agent cache {data / 'agent.db'}: {exc}") from None
    # Everything opened from here on is released in reverse order, whether start-up fails at
    # any step or the agent stops; containers keep running.
    async with contextlib.AsyncExitStack() as opened:
        opened.callback(log.info, "agent stopped; containers keep running")
        opened.callback(cache.close)
        calls = concurrent.futures.ThreadPoolExecutor(RUNTIME_THREADS, thread_name_prefix="warren-runtime")
        opened.callback(calls.shutdown, wait=False, cancel_futures=True)
        waits = concurrent.futures.ThreadPoolExecutor(WAIT_THREADS, thread_name_prefix="warren-wait")
        opened.callback(waits.shutdown, wait=False, cancel_futures=True)
        try:
            runtime = await asyncio.get_running_loop().run_in_executor(calls, make_runtime, options)
        except AgentStartupError:
            raise
        except Exception as exc:
            raise AgentStartupError(f"cannot start the {options.runtime} runtime: {exc}") from exc
        overlay = Overlay(data, node.get("node_id", ""), _in_pool(calls))
        opened.push_async_callback(overlay.close)
        if overlay.enabled:
            await _claim_overlay(overlay, calls)
        pull_logins: dict[str, PullLogin] = {}  # task id -> its registry login, memory only (ADR 43)
        env = ControllerEnv(
            pull_login=pull_logins.get,
            runtime=runtime,
            log_dir=data / "logs",
            call=_in_pool(calls),
            wait_call=_in_pool(waits),
            networks=overlay if overlay.enabled else None,
            volumes=LocalVolumes(data / datadir.VOLUMES_DIR),
            files=TaskFiles(data / "secrets", FileVault()),  # in memory, on a tmpfs (ADR 38)
            node_hostname=read_host_facts(options.hostname).hostname,
        )
        queue = StatusQueue()
        worker = Worker(env, cache, queue)
        opened.push_async_callback(worker.close)
        await worker.start()
        overlay.track(worker.controllers.keys)  # the ledger's other task networks are leftovers
        rotation = Rotation(options.log_max_size, options.log_max_files)
        logs = LogAgent(data / "logs", running=worker.started_task_ids, rotation=rotation)
        opened.callback(logs.close)
        _run_task(opened, logs.run_indexer(), "log-indexer")
        _run_task(opened, heap.trim_heap(), "heap-trim")  # an idle agent's memory is the node's (ADR 19)
        execs = ExecAgent(env.runtime, worker.running_container)
        opened.callback(execs.close)
        promotion = None
        if run_manager is not None:
            promotion = Promotion(data, lambda: list(managers.addrs), stop, run_manager)
            opened.push_async_callback(promotion.close)
            promotion.resume()
        session = Session(
            data / CERTS_DIR,
            managers,
            functools.partial(describe, options, settings),
            worker,
            queue,
            on_managers=functools.partial(save_managers, data),
            logs=logs,
            on_promotion=promotion.promote if promotion is not None else None,
            on_mesh=overlay.update,
            on_services=overlay.update_services,
            pending_key=overlay.pending_key,
            services_applied=lambda: overlay.services_applied,
            routing_changed=overlay.routing_changed,
            on_key_epoch=overlay.want_key_epoch,
            pull_logins=pull_logins,
            credentials=options.credentials,
            execs=execs,
        )
        if options.metrics_addr:
            from warren.agent import metrics

            _run_task(opened, metrics.serve(options.metrics_addr, worker, session, overlay, data_dir=data), "metrics")
        log.info(
            "agent %s running (%s runtime), managers: %s",
            node.get("node_id", "?"),
            options.runtime,
            ", ".join(managers.addrs) or "none known",
        )
        try:
            await session.run(stop)
        except NodeRemoved as exc:
            log.error("%s: stopping and removing every task of this node", exc)
            await worker.remove_all(timeout=REMOVE_ALL_TIMEOUT)
            if overlay.enabled:  # the node left the mesh: its interface, bridge and table go too
                try:
                    for done in await overlay.leave():
                        log.info("%s", done)
                except Exception as teardown_error:
                    log.error("removing this node's overlay networking failed: %s", teardown_error)
            raise AgentStartupError(f"{exc}; its tasks were stopped (join again to rejoin)") from None


def _run_task(opened: contextlib.AsyncExitStack, job: Coroutine[Any, Any, None], name: str) -> None:
    """Run `job` as a task, cancelled and awaited as `opened` closes."""
    task = asyncio.create_task(job, name=name)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    opened.push_async_callback(cancel)


async def _claim_overlay(overlay: Overlay, pool: concurrent.futures.Executor) -> None:
    """Refuse to run where another node's overlay is (ADR 23); any other failure is the
    converge's to report and retry, as before."""
    from warren.network.owner import OverlayInUse

    try:
        await asyncio.get_running_loop().run_in_executor(pool, overlay.claim)
    except OverlayInUse as exc:
        raise AgentStartupError(str(exc)) from None
    except Exception as exc:
        log.error("cannot claim this network namespace's overlay: %s", exc)


REEXEC_ENV = "WARREN_AGENT_REEXEC"  # set in the re-executed agent: never re-execute twice


def _shed_join_libraries(options: AgentOptions, entry: str) -> None:
    """Re-execute as a fresh agent process (same pid, stdio and environment) when this one has
    loaded `cryptography`, as `cluster join` and `worker start` do to read and make credentials:
    the long-running agent needs none of it (certinfo), and it costs ~9 MiB of the agent's 60 MB
    budget. Returns only if the process was not re-executed."""
    if "cryptography" not in sys.modules or os.environ.get(REEXEC_ENV):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[REEXEC_ENV] = "1"
    argv = [sys.executable, "-m", entry, *options_argv(options)]
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:  # keep running in this process, only bigger
        del os.environ[REEXEC_ENV]
        print(f"warning: cannot re-execute the agent ({exc}); running it in this process", file=sys.stderr)


def run(options: AgentOptions, run_manager: ManagerRunner | None = None, entry: str = __name__) -> int:
    """The foreground agent process: serve until SIGTERM/SIGINT; returns the exit code. `entry`
    is the module (`python -m`) that starts this process again with `options_argv`."""
    _shed_join_libraries(options, entry)
    if refused := logsetup.configure_or_refuse():
        return refused
    node_id = str(load_node_file(options.data_dir).get("node_id", ""))
    logsetup.set_default(node=node_id)
    proctitle.set_title(proctitle.agent_title(node_id))
    gilpolicy.settle()  # ADR 84

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(options, stop, run_manager)

    try:
        asyncio.run(main())
    except AgentStartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m warren.agent.daemon`: the agent alone, without the CLI and without promotion
    (tests, debugging). A node's agent runs from warren.node.worker."""
    return run(parse_options(argv))


if __name__ == "__main__":
    sys.exit(main())
