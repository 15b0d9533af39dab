"""Task start latency with a secret, a config and a volume mounted, against the same task without (#13).

One private containerd, one cached busybox image; the task runs `true`. The plain run is the
driver's prepare + start + wait + remove (as `task_start`); the mounted run adds what the agent
does for a task with a secret and a config (ADR 38): mount the task's tmpfs and write both files
(`TaskFiles.prepare`), two read-only bind mounts in the OCI spec, and the unmount after removal
(`TaskFiles.release`); and for a volume (ADR 40), its directory made by the local driver on first
use (a new volume each run) and bind-mounted read-write. The two alternate, RUNS each after
warm-up, and the medians are compared.
Goal: at most 1.2x.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import figure, latency_summary

RUNS = 15
WARMUP = 2
IMAGE = "warren.bench/busybox:latest"
GOAL = 1.2


def run() -> dict[str, object]:
    from tests.fixtures.containerd import ContainerdDaemon, missing_reason
    from tests.fixtures.images import build_busybox_image
    from warren.agent.runtime import ContainerSpec
    from warren.agent.taskfiles import FileVault, TaskFiles
    from warren.agent.volumes import LocalVolumes, resolve_mounts
    from warren.model import FileRef, Mount, MountType, ServiceSpec, Task
    from warren.runtime.containerd.driver import ContainerdRuntime

    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    tmp = Path(tempfile.mkdtemp(prefix="warren-bench-secrets-"))
    daemon = ContainerdDaemon()
    vault = FileVault()
    vault.hold([("secret", "db", secrets.token_bytes(32)), ("config", "app", b"key = value\n" * 100)])
    files = TaskFiles(tmp / "secrets", vault)
    volumes = LocalVolumes(tmp / "volumes")
    refs = {
        "secrets": (FileRef("db", "/run/secrets/db", mode=0o400),),
        "configs": (FileRef("app", "/etc/app/app.conf"),),
    }
    try:
        image = build_busybox_image(tmp / "image")
        daemon.start()
        runtime = ContainerdRuntime(daemon.socket, tmp / "state", cgroup_parent=daemon.cgroup_parent)
        runtime.import_archive(image.archive, IMAGE)

        tmpfs_work: list[float] = []  # the agent's part: mount + write, then unmount

        def once(mounted: bool) -> float:
            cid = f"bench{secrets.token_hex(6)}"
            spec = ServiceSpec(name="bench", image=IMAGE, command=("true",), **(refs if mounted else {}))  # type: ignore[arg-type]
            task = Task(cid, "svc", "bench", 1, spec, 1)
            start = time.perf_counter()
            mounted_files = files.prepare(task) if mounted else ()
            prepared = time.perf_counter()
            volume = (Mount(MountType.VOLUME, "/data", source=f"data{cid}"),) if mounted else ()
            container = ContainerSpec(
                task_id=cid,
                image=IMAGE,
                command=("true",),
                log_path=str(tmp / "logs" / f"{cid}.log"),
                files=mounted_files,
                mounts=resolve_mounts(volume, volumes),
            )
            runtime.prepare(container)
            runtime.start(cid)
            status = runtime.wait(cid, timeout=60)
            runtime.remove(cid)
            if mounted:
                removed = time.perf_counter()
                files.release(cid)
                tmpfs_work.append(prepared - start + time.perf_counter() - removed)
            elapsed = time.perf_counter() - start
            if status is None or status.exit_code != 0:
                raise RuntimeError(f"the run ended with {status}")
            return elapsed

        for _ in range(WARMUP):
            once(False)
            once(True)
        tmpfs_work.clear()
        plain: list[float] = []
        mounted: list[float] = []
        for _ in range(RUNS):
            plain.append(once(False))
            mounted.append(once(True))
        runtime.close()
    finally:
        files.sweep()
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    plain_ms = statistics.median(plain) * 1000
    mounted_ms = statistics.median(mounted) * 1000
    ratio = mounted_ms / plain_ms
    return {
        "name": "secrets_start",
        "note": "containerd driver prepare+start+wait+remove of `true`, with the agent's tmpfs work for one secret "
        "and one config and a new local volume, against the same task without them; alternating runs on one "
        "private containerd (in-process, no manager)",
        "runs": RUNS,
        "plain": latency_summary(plain),
        "with_secret_config_and_volume": latency_summary(mounted),
        "tmpfs_work": latency_summary(tmpfs_work),
        "ratio": round(ratio, 3),
        "figures": [
            figure(f"Task start without secrets, median of {RUNS}", round(plain_ms, 1), "ms"),
            figure(f"Task start with a secret, a config and a volume, median of {RUNS}", round(mounted_ms, 1), "ms"),
            figure(
                "Of which the tmpfs mount, writes and unmount (median)",
                round(statistics.median(tmpfs_work) * 1000, 1),
                "ms",
            ),
            figure("With / without (medians)", round(ratio, 3), "x", GOAL, "<="),
        ],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
