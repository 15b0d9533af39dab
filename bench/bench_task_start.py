"""Task start latency of the containerd driver against raw `ctr run --rm`, on one containerd.

Both sides run the same cached busybox image (imported from an OCI archive, so no registry is
involved) with `true` as the command and the host network: `ctr --address A -n warren run
--rm --net-host IMAGE ID true` wall time (a separate process each time, as an operator would
run it) against the driver's prepare + start + wait + remove, in-process over one gRPC channel.
The two alternate, 10 runs each after warm-up, and the medians are compared.

This measures the driver only. The full service-create-to-running figure needs the worker
agent and the manager, and is measured with them.
"""

from __future__ import annotations

import itertools
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec

from bench.common import figure, latency_summary

RUNS = 10
WARMUP = 2
IMAGE = "warren.bench/busybox:latest"


def run() -> dict[str, object]:
    from tests.fixtures.containerd import ContainerdDaemon, missing_reason
    from tests.fixtures.images import build_busybox_image
    from warren.agent.runtime import ContainerSpec
    from warren.agent.volumes import LocalVolumes, resolve_mounts
    from warren.model import Mount, MountType
    from warren.runtime.containerd.driver import ContainerdRuntime

    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    tmp = Path(tempfile.mkdtemp(prefix="warren-bench-start-"))
    daemon = ContainerdDaemon()
    try:
        image = build_busybox_image(tmp / "image")
        daemon.start()
        runtime = ContainerdRuntime(daemon.socket, tmp / "state", cgroup_parent=daemon.cgroup_parent)
        runtime.import_archive(image.archive, IMAGE)

        def ctr_once() -> float:
            cid = f"ctr{secrets.token_hex(6)}"
            cgroup = f"{daemon.cgroup_parent}/{cid}"  # the fixture's teardown sweeps this parent
            argv = daemon.ctr("run", "--rm", "--net-host", "--cgroup", cgroup, IMAGE, cid, "true")
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, timeout=60)
            return time.perf_counter() - start

        volumes = LocalVolumes(tmp / "volumes")
        # What a task with a volume, a read-only bind and a tmpfs costs more (ADR 40): the agent
        # resolves the volume to its directory (made on first use), the runtime mounts all three.
        with_mounts = (
            Mount(MountType.VOLUME, "/data", "bench-data"),
            Mount(MountType.BIND, "/etc/bench", str(tmp), readonly=True),
            Mount(MountType.TMPFS, "/scratch", tmpfs_size=1 << 20),
        )

        def driver_once(mounts: tuple[Mount, ...] = ()) -> tuple[float, dict[str, float]]:
            cid = f"drv{secrets.token_hex(6)}"
            spec = ContainerSpec(task_id=cid, image=IMAGE, command=("true",), log_path=str(tmp / "logs" / f"{cid}.log"))
            marks = [time.perf_counter()]
            if mounts:
                spec = msgspec.structs.replace(spec, mounts=resolve_mounts(mounts, volumes))
            runtime.prepare(spec)
            marks.append(time.perf_counter())
            runtime.start(cid)
            marks.append(time.perf_counter())
            status = runtime.wait(cid, timeout=60)
            marks.append(time.perf_counter())
            runtime.remove(cid)
            marks.append(time.perf_counter())
            if status is None or status.exit_code != 0:
                raise RuntimeError(f"driver run of `true` ended with {status}")
            phases = dict(
                zip(("prepare", "start", "wait", "remove"), (b - a for a, b in itertools.pairwise(marks)), strict=True)
            )
            return marks[-1] - marks[0], phases

        for _ in range(WARMUP):
            ctr_once()
            driver_once()
            driver_once(with_mounts)
        ctr_times: list[float] = []
        driver_times: list[float] = []
        mounted_times: list[float] = []
        phases: dict[str, list[float]] = {"prepare": [], "start": [], "wait": [], "remove": []}
        for _ in range(RUNS):
            ctr_times.append(ctr_once())
            total, split = driver_once()
            driver_times.append(total)
            for key, value in split.items():
                phases[key].append(value)
            mounted_times.append(driver_once(with_mounts)[0])
        runtime.close()
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    ctr_ms = statistics.median(ctr_times) * 1000
    driver_ms = statistics.median(driver_times) * 1000
    ratio = driver_ms / ctr_ms
    mounted_ms = statistics.median(mounted_times) * 1000
    return {
        "name": "task_start",
        "note": (
            "Measures the containerd driver only (prepare+start+wait+remove of a cached image) against raw "
            "`ctr run --rm --net-host` on the same private containerd; service-create-to-running needs the agent."
        ),
        "runs": RUNS,
        "ctr_run_rm_median_ms": round(ctr_ms, 3),
        "driver_median_ms": round(driver_ms, 3),
        "ctr_run_rm": latency_summary(ctr_times),  # nearest-rank percentiles, as elsewhere in bench/
        "driver_total": latency_summary(driver_times),
        "driver_phase_median_ms": {k: round(statistics.median(v) * 1000, 3) for k, v in phases.items()},
        "driver_to_ctr_ratio": round(ratio, 3),
        "driver_with_mounts": latency_summary(mounted_times),
        "mounts_to_plain_ratio": round(mounted_ms / driver_ms, 3),
        "figures": [
            figure(f"ctr run --rm, median of {RUNS}", round(ctr_ms, 1), "ms"),
            figure(f"Driver prepare+start+wait+remove, median of {RUNS}", round(driver_ms, 1), "ms"),
            figure("Driver / ctr run --rm (medians)", round(ratio, 2), "x"),
            figure(
                "With a volume, a read-only bind and a tmpfs / without (medians)", round(mounted_ms / driver_ms, 2), "x"
            ),
        ],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
