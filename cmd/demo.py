#!/usr/bin/env python3
"""Warren's main job on one machine: `make demo` / `make demo-stop`.

Starts a private containerd, a one-manager cluster whose embedded agent runs containers
through it (the default, as `docker swarm init` does), imports a busybox image built from
Debian's busybox-static (there is no outside registry here), and runs an HTTP service on the
overlay (its own network namespace and address, a VIP, a name) with its port published on the
node, so that it answers on 127.0.0.1:8080. Everything lives under .demo/ and is stopped by PID;
the node's overlay networking (WireGuard interface, bridge, nftables table) by
`warren worker teardown`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.containerd import ContainerdDaemon  # noqa: E402
from tests.fixtures.images import build_busybox_image  # noqa: E402

DEMO = Path(os.environ.get("WARREN_DEMO_DIR", REPO / ".demo"))
API = os.environ.get("WARREN_DEMO_API", "127.0.0.1:4242")
METRICS = os.environ.get("WARREN_DEMO_METRICS", "127.0.0.1:9323")
HTTP_PORT = 8080
IMAGE = "demo.local/busybox:latest"
WEB = (
    'mkdir -p /tmp/www && echo "Hello from Warren, task $(hostname)" > /tmp/www/index.html'
    f" && exec httpd -f -p {HTTP_PORT} -h /tmp/www"
)


class _Pid:
    """Enough of Popen for ContainerdDaemon.stop() on a daemon an earlier `demo` started."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
            return None
        except ProcessLookupError:
            return 0

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)
        return 0


def warren(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print(f"\n+ warren {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "warren.cli.main", *args], cwd=REPO, text=True)
    if check and result.returncode != 0:
        sys.exit(f"demo: `warren {' '.join(args)}` failed (exit {result.returncode}); see {DEMO}/manager.log")
    return result


def _alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start() -> None:
    DEMO.mkdir(parents=True, exist_ok=True)
    (DEMO / "containerd").mkdir(exist_ok=True)
    containerd = ContainerdDaemon(DEMO / "containerd")
    if _alive(DEMO / "containerd.pid") is None:
        containerd.start()
        assert containerd.process is not None
        (DEMO / "containerd.pid").write_text(str(containerd.process.pid))
        print(f"started containerd on {containerd.socket}")
    if _alive(DEMO / "manager.pid") is None:
        log = open(DEMO / "manager.log", "ab")  # noqa: SIM115 - handed to the manager process
        manager = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warren.cli.main",
                "cluster",
                "init",
                "--data-dir",
                str(DEMO / "data"),
                "--listen-addr",
                API,
                "--metrics-addr",
                METRICS,
                "--containerd-socket",
                containerd.socket,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            start_new_session=True,
        )
        (DEMO / "manager.pid").write_text(str(manager.pid))
        deadline = time.monotonic() + 30
        while (
            subprocess.run(
                [sys.executable, "-m", "warren.cli.main", "cluster", "info"], cwd=REPO, capture_output=True
            ).returncode
            != 0
        ):
            if manager.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"demo: the manager did not start; its log:\n{(DEMO / 'manager.log').read_text()}")
            time.sleep(0.2)
        print((DEMO / "manager.log").read_text().split("\nManager ")[0])

    image = build_busybox_image(DEMO / "image")
    warren("image", "import", str(image.archive), "--name", IMAGE, "--containerd-socket", containerd.socket)
    warren("node", "ls")
    if warren("service", "inspect", "web", "--format", "json", check=False).returncode != 0:
        warren(
            # The image was imported, not pushed: there is no registry to pin its digest from (ADR 34).
            "service", "create", "web", "--image", IMAGE, "--no-resolve-image",
            "--publish", f"{HTTP_PORT}:{HTTP_PORT}", "--", "sh", "-c", WEB,
        )  # fmt: skip
    warren("service", "ls")
    warren("service", "ps", "web")
    print(f"\n+ curl http://127.0.0.1:{HTTP_PORT}/")
    deadline = time.monotonic() + 30
    while True:  # the task starts, then the node's load balancer learns its address
        try:
            print(urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/", timeout=10).read().decode().strip())
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                sys.exit(f"demo: http://127.0.0.1:{HTTP_PORT}/ does not answer ({exc}); see {DEMO}/manager.log")
            time.sleep(0.5)
    print(
        f"\nThe cluster keeps running in the background (state in {DEMO}, manager log {DEMO}/manager.log)."
        "\nTry: warren service logs web · warren service ps web · warren node ls · warren service rm web"
        f"\nMetrics: http://{METRICS}/metrics · stop everything with: make demo-stop"
    )


def stop() -> None:
    manager = _alive(DEMO / "manager.pid")
    if manager is not None:
        # Remove the service first: a stopped agent leaves its containers running, by design.
        listed = subprocess.run(
            [sys.executable, "-m", "warren.cli.main", "service", "ps", "web", "--all", "--format", "json"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        task_ids = [t["id"] for t in json.loads(listed.stdout)] if listed.returncode == 0 else []
        subprocess.run([sys.executable, "-m", "warren.cli.main", "service", "rm", "web"], cwd=REPO, capture_output=True)
        deadline = time.monotonic() + 20  # until the agent removed the tasks and their namespaces
        while time.monotonic() < deadline and any(Path(f"/run/netns/wt-{t}").exists() for t in task_ids):
            time.sleep(0.2)
        time.sleep(1)
        os.kill(manager, signal.SIGTERM)
        _Pid(manager).wait(timeout=15)
        print(f"stopped the manager (pid {manager}); its state stays in {DEMO}/data")
        # The agent leaves its overlay networking up across restarts, by design: take it down.
        warren("worker", "teardown", "--data-dir", str(DEMO / "data" / "agent"), check=False)
    containerd_pid = _alive(DEMO / "containerd.pid")
    if containerd_pid is not None:
        containerd = ContainerdDaemon(DEMO / "containerd")
        containerd.process = _Pid(containerd_pid)  # type: ignore[assignment]
        containerd.stop()
        print(f"stopped containerd (pid {containerd_pid}) and removed its containers")
    for pidfile in ("manager.pid", "containerd.pid"):
        (DEMO / pidfile).unlink(missing_ok=True)


if __name__ == "__main__":
    stop() if sys.argv[1:] == ["stop"] else start()
