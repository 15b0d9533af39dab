"""Secrets and configs end to end (issue #13, ADR 38): never on a disk, on a tmpfs in the task.

One module-scoped lab of three network-namespace hosts: h1 runs the manager with its embedded
agent on a real containerd (and the registry with the test image), h2 and h3 run exec agents.
A secret whose value is a unique random marker goes to a containerd task on h1 and an exec task
on h2; h3 runs nothing that uses it. Each task prints what it sees (a hash of the secret, never
the secret: its output lands in the agent's log files), then sleeps. Then every data directory
(the managers' Raft journal, snapshots and LMDB, the agents' caches and logs), containerd's root
and state, and every log file are searched for the marker: it must be nowhere.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import deploy_rig as _deploy_rig
from tests.fixtures.deploy_rig import DeployRig
from tests.fixtures.images import build_web_images
from tests.fixtures.on_disk import files_holding
from tests.fixtures.overlay_lab import LabHost
from tests.fixtures.plugin import unavailable
from tests.fixtures.tmpfs import unmount_task_files
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SCRIPT = (
    'sha256sum "$S" | cut -d" " -f1; stat -c "mode=%a owner=%u:%g" "$S"; '
    'grep " $S " /proc/self/mounts | cut -d" " -f3 | sed "s/^/fs=/"; '
    'echo "config=$(cat "$C")"; stat -c "cmode=%a" "$C"; echo done; exec sleep 3600'
)


class SecretsRig(DeployRig):
    """The deploy rig with three hosts: h1 containerd (the manager's agent), h2 and h3 exec."""

    def start(self) -> SecretsRig:
        self.images = build_web_images(self.root / "images", ("v1",))

        def before(hosts: list[LabHost]) -> None:
            self.daemon.start()
            self.registry.start()
            self.registry.push(self.images["v1"].archive, "web:v1")

        runtime = ("--runtime", "containerd", "--containerd-socket", self.daemon.socket)
        self.cluster.start(3, init_args=(*runtime, "--cgroup-parent", self.daemon.cgroup_parent), before=before)
        return self

    def data_dirs(self) -> list[Path]:
        return [self.root / "manager", *(self.cluster.data_dir(h) for h in self.cluster.hosts[1:])]

    def unmount_leftovers(self) -> None:
        """Task tmpfs mounts the agents (killed by close()) left under their data directories."""
        for host in self.cluster.hosts:
            unmount_task_files(self.cluster.data_dir(host))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretsRig]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces, tmpfs mounts and containerd need root")
    unavailable(_deploy_rig.missing_reason())
    rig = SecretsRig(tmp_path_factory.mktemp("secrets"))
    try:
        rig.start()
        yield rig
    except BaseException:
        print(rig.logs())
        raise
    finally:
        rig.close()
        rig.unmount_leftovers()
        assert not rig.leftovers(), rig.leftovers()


def _node_id(rig: SecretsRig, host: LabHost) -> str:
    return rig.cluster.node_of(host)["id"]


def _task(rig: SecretsRig, service: str) -> dict:
    running = [t for t in rig.tasks(service) if t["state"] == "running"]
    return running[0] if running else {}


def _output(rig: SecretsRig, host: LabHost, task_id: str) -> dict[str, str]:
    """What the task printed (KEY=VALUE lines, and its hash line), once it printed `done`."""
    log = rig.cluster.data_dir(host) / "logs" / f"{task_id}.log"
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return {}
    if "done" not in lines:
        return {}
    seen = {"sha256": lines[0]}
    for line in lines[1:]:
        for word in line.split():
            key, _, value = word.partition("=")
            seen.setdefault(key, value)
    return seen


def test_secrets_reach_only_their_tasks_on_a_tmpfs_and_never_a_disk(lab: SecretsRig) -> None:
    h1, h2, h3 = lab.cluster.hosts
    marker = f"warren-marker-{secrets.token_hex(16)}"
    config_text = f"config-{secrets.token_hex(8)}"
    (lab.root / "app.conf").write_text(config_text)
    lab.ok("secret", "create", "db-password", "--from-literal", marker, "--label", "team=db")
    lab.ok("config", "create", "app-conf", str(lab.root / "app.conf"))

    # The containerd task: the default target, mode 0400; the config at an absolute path.
    lab.ok(
        *("service", "create", "ctd", "--image", lab.image("v1"), "--constraint", f"node.id=={_node_id(lab, h1)}"),
        *("--secret", "source=db-password,mode=0400", "--config", "source=app-conf,target=/etc/app/app.conf,mode=0440"),
        *("--env", "S=/run/secrets/db-password", "--env", "C=/etc/app/app.conf", "--timeout", "60s"),
        *("--", "sh", "-c", SCRIPT),
    )
    # The exec task: the host's filesystem, so targets under the test's own directory.
    exec_secret, exec_config = lab.root / "exec" / "run" / "pw", lab.root / "exec" / "etc" / "app.conf"
    lab.ok(
        *("service", "create", "exe", "--image", "none", "--constraint", f"node.id=={_node_id(lab, h2)}"),
        *("--secret", f"source=db-password,target={exec_secret},uid=65534,gid=65534,mode=0440"),
        *("--config", f"source=app-conf,target={exec_config}"),
        *("--env", f"S={exec_secret}", "--env", f"C={exec_config}", "--timeout", "60s"),
        *("--", "/bin/sh", "-c", SCRIPT),
    )
    ctd_task = wait_for(lambda: _task(lab, "ctd"), timeout=30, message="the containerd task running")
    exe_task = wait_for(lambda: _task(lab, "exe"), timeout=30, message="the exec task running")
    seen_ctd = wait_for(lambda: _output(lab, h1, ctd_task["id"]), timeout=30, message="the containerd task's output")
    seen_exe = wait_for(lambda: _output(lab, h2, exe_task["id"]), timeout=30, message="the exec task's output")

    digest = hashlib.sha256(marker.encode()).hexdigest()
    assert seen_ctd == {
        "sha256": digest,
        "mode": "400",
        "owner": "0:0",
        "fs": "tmpfs",
        "config": config_text,
        "cmode": "440",
        "done": "",
    }, seen_ctd
    assert seen_exe["sha256"] == digest and seen_exe["fs"] == "tmpfs", seen_exe
    assert (seen_exe["mode"], seen_exe["owner"], seen_exe["config"]) == ("440", "65534:65534", config_text)
    assert exec_secret.read_bytes() == b"", "the host sees only the empty mount point of an exec task's secret"

    # Only the nodes whose tasks use it hold it, each on the task's own tmpfs.
    for host, task in ((h1, ctd_task), (h2, exe_task)):
        assert os.path.ismount(lab.cluster.data_dir(host) / "secrets" / task["id"]), host.name
    assert not (lab.cluster.data_dir(h3) / "secrets").exists()

    # Nowhere on a disk: Raft journal, snapshots and LMDB of the manager, the agents' caches
    # and logs, containerd's root and state (bundles, its metadata store), every log file.
    roots = [*lab.data_dirs(), lab.daemon.root, lab.daemon.state, lab.root]
    assert not files_holding(marker.encode(), roots)
    assert not files_holding(marker.encode(), [lab.daemon.base])  # containerd's own log, beside its root

    # inspect shows the metadata only; a config's value is shown.
    inspected = json.loads(lab.ok("secret", "inspect", "db-password", "--format", "json"))[0]
    assert marker not in json.dumps(inspected)
    assert (inspected["size"], inspected["labels"], sorted(inspected["services"])) == (
        str(len(marker)),
        {"team": "db"},
        ["ctd", "exe"],
    )
    assert config_text in lab.ok("config", "inspect", "app-conf")


def test_bad_input_and_conflicts_are_refused_with_one_line(lab: SecretsRig) -> None:
    lab.ok("secret", "create", "in-use", "--from-literal", "x")
    lab.ok("service", "create", "user", "--image", "none", "--secret", "in-use", "--replicas", "0", "--", "true")
    big = lab.root / "big"
    big.write_bytes(b"x" * (500 * 1024 + 1))
    cases = [
        (("secret", "create", "in-use", "--from-literal", "y"), 4, "already in use"),
        (("secret", "rm", "in-use"), 4, "in use by service user"),
        (("config", "create", "c", str(big)), 2, "at most 500 KB"),
        (("secret", "create", "s"), 2, "give the secret's value"),
        (("secret", "create", "s", "-", "--from-literal", "v"), 2, "not both"),
        (("secret", "create", "bad/name", "--from-literal", "v"), 2, "invalid secret name"),
        (("secret", "create", "s", str(lab.root / "missing")), 2, "cannot read"),
        (("secret", "inspect", "nope"), 3, "not found"),
        (("config", "rm", "nope"), 3, "not found"),
        (("service", "create", "x", "--image", "none", "--secret", "nope", "--", "true"), 3, "secret 'nope' not found"),
        (("service", "create", "x", "--image", "none", "--secret", "source=in-use,target=/a/../b"), 2, "target"),
        (("service", "create", "x", "--image", "none", "--secret", "source=in-use,mode=999"), 2, "octal"),
        (("service", "update", "user", "--secret-rm", "other"), 2, "has no secret other"),
    ]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # refusals only: they change nothing
        answers = list(pool.map(lambda case: lab.cli(*case[0]), cases))
    for (argv, code, text), done in zip(cases, answers, strict=True):
        assert done.returncode == code, (argv, done.returncode, done.stderr)
        assert text in done.stderr and len(done.stderr.strip().splitlines()) == 1, (argv, done.stderr)
    # Rotation: a new secret at the same target, as one new version; the old one is then free.
    lab.ok("secret", "create", "in-use-2", "--from-literal", "z")
    lab.ok("service", "update", "user", "--secret-rm", "in-use", "--secret-add", "source=in-use-2,target=in-use")
    spec = json.loads(lab.ok("service", "inspect", "user", "--format", "json"))["spec"]
    assert [(s["source"], s["target"]) for s in spec["secrets"]] == [("in-use-2", "/run/secrets/in-use")]
    lab.ok("secret", "rm", "in-use")
    assert "in-use-2" in lab.ok("secret", "ls") and "in-use\n" not in lab.ok("secret", "ls", "-q")


def test_an_agent_restarted_while_cut_off_cannot_restart_a_task_needing_a_secret(lab: SecretsRig) -> None:
    """ADR 38's trade-off: the restarted agent holds no values, so the task's local restart
    fails and says why; once connected, the managers' replacement gets the secret and runs."""
    h1, h2, _ = lab.cluster.hosts
    value = f"cut-{secrets.token_hex(8)}"
    lab.ok("secret", "create", "cut-pw", "--from-literal", value)
    target = lab.root / "cut" / "pw"
    script = 'sha256sum "$S" | cut -d" " -f1; echo done; exec sleep 3600'
    lab.ok(
        *("service", "create", "cut", "--image", "none", "--constraint", f"node.id=={_node_id(lab, h2)}"),
        *("--secret", f"source=cut-pw,target={target}", "--env", f"S={target}", "--restart-delay", "1s"),
        *("--timeout", "60s", "--", "/bin/sh", "-c", script),
    )
    first = wait_for(lambda: _task(lab, "cut"), timeout=30, message="the task running")
    data = lab.cluster.data_dir(h2)
    table = f"wsec{secrets.token_hex(3)}"
    rule = f"add rule inet {table} out ip daddr {h1.ip} tcp dport 4242 drop"
    in_h2 = ["nsenter", f"--net=/run/netns/{h2.netns}"]
    block = f"add table inet {table}\nadd chain inet {table} out {{ type filter hook output priority 0; }}\n{rule}\n"
    try:
        subprocess.run([*in_h2, "nft", "-f", "-"], input=block, text=True, check=True)
        # The agent restarts while cut off: a graceful stop, then `worker start` (its containers run on).
        agent = lab.cluster.agents["h2"]
        agent.terminate()
        agent.wait(timeout=30)
        log = lab.root / "agent-h2-restarted.log"
        lab.cluster.agents["h2"] = lab.cluster.spawn(h2, log.name, "worker", "start", "--data-dir", str(data))
        wait_for(lambda: "cached task(s);" in log.read_text(errors="replace"), timeout=30, message="resumed")
        # The task's process dies: the agent, cut off, restarts it itself (ADR 12), and cannot.
        record = json.loads((data / "exec" / first["id"] / "record.json").read_text())
        os.kill(record["pid"], 9)
        wait_for(lambda: "local restart failed" in log.read_text(errors="replace"), timeout=30, message="restart")
        assert "local restart failed: waiting for secret cut-pw: this node does not hold it" in log.read_text()
    finally:
        subprocess.run([*in_h2, "nft", "delete", "table", "inet", table], check=False)

    # Once connected: the failure is reported (or, if the managers saw the node down first, the
    # task was orphaned), and the replacement gets the secret with its spec and runs.
    def replaced() -> dict:
        tasks = {t["id"]: t for t in lab.tasks("cut", history=True)}
        old = tasks.get(first["id"], {})
        running = [t for t in tasks.values() if t["state"] == "running" and t["id"] != first["id"]]
        return running[0] if old.get("state") in ("failed", "orphaned") and running else {}

    replacement = wait_for(replaced, timeout=60, message="a replacement running")
    failed = next(t for t in lab.tasks("cut", history=True) if t["id"] == first["id"])
    assert failed["state"] == "orphaned" or "waiting for secret cut-pw" in failed["error"], failed
    seen = wait_for(lambda: _output(lab, h2, replacement["id"]), timeout=30, message="the replacement's output")
    assert seen["sha256"] == hashlib.sha256(value.encode()).hexdigest()


def test_a_secret_in_a_tmpfs_mount_with_container_options_on_both_runtimes(lab: SecretsRig) -> None:
    """The merged features together (ADR 38, 40, 42): the secret's file is bound inside the
    task's own tmpfs mount, beside --hostname (and --read-only on containerd)."""
    h1, h2, _ = lab.cluster.hosts
    value = f"combo-{secrets.token_hex(8)}"
    lab.ok("secret", "create", "combo-pw", "--from-literal", value)
    script = (
        'sha256sum "$S" | cut -d" " -f1; grep " $D " /proc/self/mounts | cut -d" " -f3 | sed "s/^/dfs=/"; '
        'echo "host=$(hostname)"; {probe}echo done; exec sleep 3600'
    )
    root_probe = "if touch /probe 2>/dev/null; then echo root=rw; else echo root=ro; fi; "
    lab.ok(
        *("service", "create", "combo-ctd", "--image", lab.image("v1")),
        *("--constraint", f"node.id=={_node_id(lab, h1)}"),
        *("--mount", "type=tmpfs,target=/run/secrets", "--secret", "combo-pw", "--read-only"),
        *("--hostname", "{{.Service.Name}}-{{.Task.Slot}}", "--env", "S=/run/secrets/combo-pw"),
        *("--env", "D=/run/secrets", "--timeout", "60s", "--", "sh", "-c", script.format(probe=root_probe)),
    )
    scratch = lab.root / "combo" / "scratch"  # exec tasks share the host's tree: the target must exist
    scratch.mkdir(parents=True)
    lab.ok(
        *("service", "create", "combo-exe", "--image", "none", "--constraint", f"node.id=={_node_id(lab, h2)}"),
        *("--mount", f"type=tmpfs,target={scratch}", "--secret", f"source=combo-pw,target={scratch}/pw"),
        *("--hostname", "combo-exec", "--env", f"S={scratch}/pw", "--env", f"D={scratch}", "--timeout", "60s"),
        *("--", "/bin/sh", "-c", script.format(probe="")),
    )
    digest = hashlib.sha256(value.encode()).hexdigest()
    for service, host, expected in (
        ("combo-ctd", h1, {"host": "combo-ctd-1", "root": "ro"}),
        ("combo-exe", h2, {"host": "combo-exec"}),
    ):
        seen = _first_output(lab, service, host)
        assert seen == {"sha256": digest, "dfs": "tmpfs", "done": "", **expected}, (service, seen)
    assert not list(scratch.iterdir()), "the exec task's tmpfs and file stayed in its own mount namespace"


def _first_output(rig: SecretsRig, service: str, host: LabHost) -> dict[str, str]:
    task = wait_for(lambda: _task(rig, service), timeout=30, message=f"{service} running")
    return wait_for(lambda: _output(rig, host, task["id"]), timeout=30, message=f"{service}'s output")
