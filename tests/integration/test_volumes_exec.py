"""Volumes and mounts with the exec runtime on two nodes (issue #13, ADR 40): a manager with its
embedded agent in one network namespace, an agent in another (tests/fixtures/overlay_cluster.py).

A volume created on each node draws its service's task there, whichever node the spread would
pick; the data survives the task being killed and a service update; a drained node leaves its
volume's task pending with the reason; binds (read-only enforced) and a tmpfs are made in the
task's own mount namespace, invisible to the host; every new command refuses bad input with
the documented exit code. Every process goes by PID (the lab), every task namespace by the ids
the test saw.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.fixtures.overlay_cluster import OverlayCluster
from tests.fixtures.overlay_lab import LabHost, OverlayLab, remove_task_namespaces
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed (make deps)"),
]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_volumes_place_tasks_on_their_node_keep_data_and_exec_mounts_work(tmp_path: Path) -> None:
    cluster = OverlayCluster(OverlayLab(), tmp_path)
    task_ids: set[str] = set()

    def ok(*args: str) -> str:
        done = cluster.cli(*args)
        assert done.returncode == 0, f"warren {' '.join(args)}: {done.stderr}"
        return done.stdout

    def tasks(service: str) -> list[dict]:
        listed = cluster.cli("service", "ps", service, "--all", "--format", "json")
        found = json.loads(listed.stdout) if listed.returncode == 0 else []
        task_ids.update(t["id"] for t in found)
        return [t for t in found if t["desired_state"] == "running" and t["state"] not in ("failed", "complete")]

    def running_on(service: str) -> str | None:
        live = [t for t in tasks(service) if t["state"] == "running"]
        return live[0]["node_id"] if len(live) == 1 else None

    def volume_data(host: LabHost, name: str) -> Path:
        return cluster.data_dir(host) / "volumes" / name / "data"

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        cluster.start(2)
        h1, h2 = cluster.hosts
        node = {h.name: cluster.node_of(h) for h in (h1, h2)}

        # A volume on each node: each service goes to its volume's node.
        for host, name in ((h1, "vol-a"), (h2, "vol-b")):
            created = json.loads(ok("volume", "create", name, "--node", node[host.name]["id"], "--format", "json"))
            assert created["node_id"] == node[host.name]["id"]
        for service, volume in (("a", "vol-a"), ("b", "vol-b")):
            ok(
                *("service", "create", service, "--image", "none", "--no-resolve-image", "--detach"),
                *("--mount", f"type=volume,source={volume},target={mnt}", "--restart-delay", "100ms"),
                *("--stop-grace-period", "1s", "--", "sh", "-c", f"date +%s%N >> {mnt}/starts; exec sleep 3600"),
            )
        wait_for(lambda: running_on("a") == node["h1"]["id"], timeout=60, message="a on h1's node")
        wait_for(lambda: running_on("b") == node["h2"]["id"], timeout=60, message="b on h2's node")
        starts = volume_data(h2, "vol-b") / "starts"
        wait_for(lambda: len(_lines(starts)) == 1, timeout=30, message="b's first start")
        assert len(_lines(volume_data(h1, "vol-a") / "starts")) == 1
        listed = json.loads(ok("volume", "ls", "--format", "json"))
        assert [(v["name"], v["node_hostname"], v["used_by"]) for v in listed] == [
            ("vol-a", node["h1"]["hostname"], ["a"]),
            ("vol-b", node["h2"]["hostname"], ["b"]),
        ]

        # Killed: the replacement, on the same node, finds the data.
        (task,) = [t for t in tasks("b") if t["state"] == "running"]
        record = json.loads((cluster.data_dir(h2) / "exec" / task["id"] / "record.json").read_text())
        os.kill(record["pid"], signal.SIGKILL)
        wait_for(lambda: len(_lines(starts)) == 2, timeout=30, message="b restarted")
        # Updated: so does the new version's task.
        ok("service", "update", "b", "--env-add", "VERSION=2", "--detach")
        wait_for(lambda: len(_lines(starts)) == 3, timeout=30, message="b updated")
        wait_for(lambda: running_on("b") == node["h2"]["id"], timeout=30)

        # Its node drained: b waits, saying why, and comes back there once the node is active.
        ok("node", "update", "--availability", "drain", node["h2"]["id"])
        reason = f"volume vol-b is on node {node['h2']['hostname']}, which is drained"
        wait_for(
            lambda: [(t["state"], t["message"]) for t in tasks("b")] == [("pending", reason)],
            timeout=30,
            message="b pending with the reason",
        )
        ps = cluster.cli("service", "ps", "b")
        assert reason in ps.stdout, ps.stdout
        ok("node", "update", "--availability", "active", node["h2"]["id"])
        wait_for(lambda: len(_lines(starts)) == 4 and running_on("b") == node["h2"]["id"], timeout=30)

        # Binds and a tmpfs in the task's mount namespace; read-only enforced.
        shared, scratch, out = tmp_path / "shared", tmp_path / "scratch", tmp_path / "out"
        for directory in (shared, scratch, out):
            directory.mkdir()
        (shared / "hello").write_text("hello\n")
        script = (
            f"cat {shared}/hello > {out}/seen; touch {shared}/written 2> {out}/ro-error; "
            f"grep ' {scratch} ' /proc/mounts > {out}/tmpfs; echo x > {scratch}/inside; exec sleep 3600"
        )
        ok(
            *("service", "create", "c", "--image", "none", "--no-resolve-image", "--detach"),
            *("--mount", f"type=bind,source={shared},target={shared},readonly"),
            *("--mount", f"type=bind,source={out},target={out}"),
            *("--mount", f"type=tmpfs,target={scratch},tmpfs-size=2M,tmpfs-mode=700"),
            *("--", "sh", "-c", script),
        )
        wait_for(lambda: (out / "tmpfs").exists() and (out / "tmpfs").stat().st_size > 0, timeout=30)
        assert (out / "seen").read_text() == "hello\n"
        assert "Read-only file system" in (out / "ro-error").read_text()
        assert not (shared / "written").exists()
        fields = (out / "tmpfs").read_text().split()
        assert fields[:3] == ["tmpfs", str(scratch), "tmpfs"] and {"size=2048k", "mode=700"} <= set(
            fields[3].split(",")
        )
        assert list(scratch.iterdir()) == []  # the tmpfs is the task's alone

        # Bad input that only the managers can judge (parsing errors: tests/unit/test_volumes.py):
        # one line, the documented exit code. The calls change nothing, so they run side by side.
        cases = [
            (("volume", "create", "bad/name"), 2, "invalid volume name 'bad/name'"),
            (("volume", "create", "v", "--driver", "nfs"), 2, "unknown volume driver 'nfs'"),
            (("volume", "create", "v", "--opt", "size=1G"), 2, "takes no option 'size'"),
            (("volume", "create", "v", "--node", "nowhere"), 3, "node 'nowhere' not found"),
            (("volume", "create", "vol-a"), 4, "volume name vol-a is already in use"),
            (("volume", "inspect", "nope"), 3, "volume 'nope' not found"),
            (("volume", "ls", "--node", "nowhere"), 3, "node 'nowhere' not found"),
            (("volume", "rm", "nope"), 3, "volume 'nope' not found"),
            (("volume", "rm", "vol-a"), 4, "volume vol-a is in use by service a"),
            (
                ("service", "create", "d", "--image", "x", "--replicas", "2", "--mount", "source=v,target=/x"),
                2,
                "1 replica",
            ),
            (("service", "update", "a", "--mount-rm", "/nope"), 2, "the service has no mount at /nope"),
            (("service", "scale", "a=2"), 4, "runs at most 1 replica, not 2"),
        ]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda case: cluster.cli(*case[0]), cases))
        for (args, code, text), done in zip(cases, results, strict=True):
            assert (done.returncode, done.stderr.count("\n")) == (code, 1), (args, done.stderr)
            assert text in done.stderr, (args, done.stderr)

        # `volume rm` once nothing uses it: the agent of its node deletes the data.
        ok("service", "rm", "a")
        wait_for(lambda: cluster.cli("volume", "rm", "vol-a").returncode == 0, timeout=30, message="vol-a removed")
        wait_for(lambda: not volume_data(h1, "vol-a").parent.exists(), timeout=30, message="vol-a's data deleted")
        assert volume_data(h2, "vol-b").exists()
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        with contextlib.suppress(Exception):
            for service in ("a", "b", "c"):
                tasks(service)
        cluster.lab.destroy()
        remove_task_namespaces({*task_ids, *cluster.recorded_task_ids()})
