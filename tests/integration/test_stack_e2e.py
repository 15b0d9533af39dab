"""A stack from ONE Compose file on three network-namespace hosts, each a Warren node on its own
real containerd (#14, ADR 48 and 49): a secret and a config from files, a named volume, a bind
mount relative to the file, a UDP port, a host-mode port, two networks isolated from each other
(ADR 47) and `depends_on: service_healthy`. Each behaviour is checked from inside the tasks (what
they print in their logs) or from the nodes. Isolation too: once web runs, the test writes web's
VIP and task address and db's VIP into the bind-mounted flags directory; `udp` (only on `back`)
and `app` (on both) fetch each and look up both names, and only `udp` fails to reach or resolve
web. Then `plan` shows no change, one changed image plans and replaces exactly one service, and
`stack rm` leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import deploy_rig as _deploy_rig
from tests.fixtures.deploy_rig import DeployRig
from tests.fixtures.images import WEB_PORT
from tests.fixtures.overlay_lab import LabHost
from tests.fixtures.plugin import unavailable
from tests.waiting import holds, wait_for

pytestmark = pytest.mark.integration

HOST_PORT, UDP_PORT, UDP_TARGET = 18281, 15454, 5353
TOKEN, CONF = "tok-7c1f", "level=debug"
APP_SCRIPT = (
    'echo "secret=$(cat /run/secrets/token)"; echo "config=$(cat /etc/app.conf)"; '
    'echo "kept=$(cat /data/kept 2>/dev/null)"; echo written > /data/kept; '
    'echo "flags=$(ls /flags | tr "\\n" ,)"; echo done; '
)
# Once the test names the targets (one "name address" a line), a task fetches each and looks up
# the stack's names (its resolv.conf is its node's embedded DNS), then prints "probed".
PROBE = (
    "until [ -f /flags/targets ]; do sleep 0.2; done; "
    # busybox 1.35's wget segfaults on -T: bound it with timeout instead (ENVIRONMENT.md).
    'while read name address; do echo "reach_$name=$( (timeout 2 wget -q -O - http://$address:8080/ 2>&1 '
    '|| echo failed) | head -n 1)"; '
    "done < /flags/targets; "
    'for name in big_web big_db; do echo "resolve_$name=$(nslookup $name 2>&1 | grep -A 1 Name: | tail -n 1)"; done; '
    "echo probed; exec sleep 3600"
)

COMPOSE = """\
name: big
services:
  db:
    image: {registry}/web:v1
    stop_grace_period: 1s
    # Healthy once the test drops the flag in the bind-mounted directory.
    healthcheck:
      test: ["CMD", "test", "-f", "/flags/ready"]
      interval: 300ms
      retries: 1
      start_period: 120s
    volumes: ["./flags:/flags:ro"]
    networks: [back]
  app:
    image: {registry}/web:v1
    command: ["sh", "-c", {app_script}]
    stop_grace_period: 1s
    depends_on:
      db: {{condition: service_healthy}}
    secrets: [token]
    configs: [{{source: conf, target: /etc/app.conf}}]
    volumes: ["data:/data", "./flags:/flags:ro"]
    networks: [front, back]
    deploy:
      placement: {{constraints: ["node.hostname=={app_host}"]}}
  web:
    image: {registry}/web:{web_tag}
    stop_grace_period: 1s
    ports: [{{target: {web_port}, published: {host_port}, mode: host}}]
    networks: [front]
    deploy:
      update_config: {{monitor: 1s}}
  udp:
    image: {registry}/web:v1
    command: ["sh", "-c", {probe_script}]
    stop_grace_period: 1s
    volumes: ["./flags:/flags:ro"]
    ports: ["{udp_port}:{udp_target}/udp"]
    networks: [back]
networks:
  front: {{}}
  back: {{}}
volumes:
  data: {{}}
secrets:
  token: {{file: ./secrets/token.txt}}
configs:
  conf: {{file: ./app.conf}}
"""


class StackRig(DeployRig):
    def compose(self, web_tag: str) -> Path:
        """The stack's directory (the compose file and the files it names), written once per tag."""
        directory = self.root / "stack"
        (directory / "secrets").mkdir(parents=True, exist_ok=True)
        (directory / "flags").mkdir(exist_ok=True)
        (directory / "secrets" / "token.txt").write_text(TOKEN)
        (directory / "app.conf").write_text(CONF)
        text = COMPOSE.format(
            registry=self.registry.host,
            web_tag=web_tag,
            app_script=json.dumps((APP_SCRIPT + PROBE).replace("$", "$$")),  # Compose interpolation
            probe_script=json.dumps(PROBE.replace("$", "$$")),
            app_host=self.cluster.node_of(self.cluster.hosts[1])["hostname"],
            web_port=WEB_PORT,
            host_port=HOST_PORT,
            udp_port=UDP_PORT,
            udp_target=UDP_TARGET,
        )
        (directory / "compose.yaml").write_text(text)
        return directory / "compose.yaml"

    def host_of(self, node_id: str) -> LabHost:
        return next(h for h in self.cluster.hosts if self.cluster.node_of(h)["id"] == node_id)

    def live(self, service: str) -> list[dict]:
        return [t for t in self.tasks(service) if t["desired_state"] == "running"]

    def running_ids(self) -> dict[str, set[str]]:
        """Short service name -> ids of its tasks running."""
        return {
            s: {t["id"] for t in self.live(f"big_{s}") if t["state"] == "running"} for s in ("db", "app", "web", "udp")
        }

    def output(self, task: dict, end: str = "done") -> dict[str, str]:
        """What `task` printed as name=value lines, once it printed the line `end`."""
        log = self.cluster.data_dir(self.host_of(task["node_id"])) / "logs" / f"{task['id']}.log"
        try:
            lines = log.read_text().splitlines()
        except OSError:
            return {}
        return dict(line.split("=", 1) for line in lines if "=" in line) if end in lines else {}

    def get(self, host: LabHost, port: int) -> str:
        """GET / on `host`'s port, from `host` itself; "" when nothing answers."""
        code = "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=3).read().decode(),end='')"
        done = host.run([sys.executable, "-c", code, f"http://{host.ip}:{port}/"], timeout=10)
        return done.stdout if done.returncode == 0 else ""

    def resolves(self, host: LabHost, gateway: str, name: str) -> bool:
        """Whether the embedded DNS of `host` (on its bridge address `gateway`) gives `name` to
        the node itself (which sees every network, ADR 47)."""
        done = host.run(["busybox", "nslookup", name, gateway], timeout=10)
        return done.returncode == 0 and "Name:" in done.stdout

    def ruleset(self, host: LabHost) -> str:
        return host.run(["nft", "list", "ruleset"], timeout=10).stdout


def stack_cli(rig: StackRig, *args: str) -> subprocess.CompletedProcess[str]:
    return rig.cli("stack", *args)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackRig]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and containerd need root")
    unavailable(_deploy_rig.missing_reason())
    rig = StackRig(tmp_path_factory.mktemp("stack-e2e"), hosts=3)
    try:
        rig.start()
        yield rig
    except BaseException:
        print(rig.logs())
        raise
    finally:
        rig.close()
        assert not rig.leftovers(), rig.leftovers()


def test_one_compose_file_deployed_checked_updated_and_removed(rig: StackRig) -> None:
    compose = str(rig.compose("v1"))
    hosts = rig.cluster.hosts
    deployed = stack_cli(rig, "deploy", "--detach", "-c", compose, "big")
    assert deployed.returncode == 0, deployed.stderr

    # depends_on: app waits, pending with its reason, while db runs unhealthy.
    wait_for(lambda: [t["state"] for t in rig.live("big_db")] == ["starting"], timeout=90, message="db started")
    held = "waiting for dependencies: 0/1 tasks of big_db healthy"
    wait_for(lambda: [t["message"] for t in rig.live("big_app")] == [held], timeout=30, message="app held")
    holds(lambda: all(t["state"] == "pending" for t in rig.live("big_app")), seconds=2, message="app pending")
    (rig.root / "stack" / "flags" / "ready").touch()
    wait_for(lambda: rig.running_ids()["app"], timeout=60, message="app running once db is healthy")
    (app,) = rig.live("big_app")
    seen = wait_for(lambda: rig.output(app), timeout=30, message="app's output")
    assert seen == {"secret": TOKEN, "config": CONF, "kept": "", "flags": "ready,"}

    # The host-mode port answers on the node that runs web, and only there.
    wait_for(lambda: rig.running_ids()["web"], timeout=60, message="web running")
    (web,) = rig.live("big_web")
    web_host = rig.host_of(web["node_id"])
    wait_for(lambda: rig.get(web_host, HOST_PORT) == "warren web v1\n", timeout=30, message="the host port")
    assert all(rig.get(h, HOST_PORT) == "" for h in hosts if h is not web_host)
    # The UDP ingress port is in every node's rules (busybox has no UDP server to answer it).
    wait_for(lambda: rig.running_ids()["udp"], timeout=60, message="udp running")
    wait_for(lambda: all(f"udp dport {UDP_PORT}" in rig.ruleset(h) for h in hosts), timeout=30, message="the UDP port")

    # Isolation, from inside the tasks: udp (back) reaches and names db (back) but not web (front),
    # by VIP or task address; app (both) reaches and names both.
    vips = {s: json.loads(rig.ok("service", "inspect", f"big_{s}", "--format", "json"))["vip"] for s in ("db", "web")}
    assert all(vips.values()), vips
    targets = rig.root / "stack" / "flags" / "targets"
    targets.with_suffix(".new").write_text(
        f"web_vip {vips['web']}\nweb_task {web['overlay_address']}\ndb_vip {vips['db']}\n"
    )
    targets.with_suffix(".new").rename(targets)  # the tasks never read half a file
    (udp,) = rig.live("big_udp")
    page = "warren web v1"
    probed = {
        "app": wait_for(lambda: rig.output(app, end="probed"), timeout=60, message="app's probes"),
        "udp": wait_for(lambda: rig.output(udp, end="probed"), timeout=60, message="udp's probes"),
    }
    assert {k: v for k, v in probed["app"].items() if k.startswith("reach_")} == dict.fromkeys(
        ("reach_web_vip", "reach_web_task", "reach_db_vip"), page
    ), probed
    assert probed["udp"]["reach_db_vip"] == page, probed
    assert page not in probed["udp"]["reach_web_vip"] + probed["udp"]["reach_web_task"], probed
    assert probed["app"]["resolve_big_web"] == f"Address: {vips['web']}", probed
    assert probed["app"]["resolve_big_db"] == probed["udp"]["resolve_big_db"] == f"Address: {vips['db']}", probed
    assert probed["udp"]["resolve_big_web"] == "", probed

    # The same file: no change. One changed image: exactly one update, only its tasks replaced.
    before = rig.running_ids()
    same = stack_cli(rig, "plan", "-c", compose, "big")
    assert same.returncode == 0 and same.stdout == "No changes: stack big is as the files say.\n", same.stdout
    changed = str(rig.compose("v2"))
    plan = stack_cli(rig, "plan", "-c", changed, "big")
    assert plan.returncode == 10, plan.stderr
    assert [line for line in plan.stdout.splitlines() if line[:1] in "+~-"] == ["~ service big_web"]
    assert f"    image {rig.registry.host}/web:v1" in plan.stdout and "will replace 1 task" in plan.stdout
    assert stack_cli(rig, "deploy", "-c", changed, "big").returncode == 0

    def web_replaced() -> bool:
        now = rig.running_ids()
        return len(now["web"]) == 1 and not now["web"] & before["web"]

    wait_for(web_replaced, timeout=90, message="web's task replaced")
    after = rig.running_ids()
    assert {k: v for k, v in after.items() if k != "web"} == {k: v for k, v in before.items() if k != "web"}
    (web,) = rig.live("big_web")
    wait_for(lambda: rig.get(rig.host_of(web["node_id"]), HOST_PORT) == "warren web v2\n", timeout=30)

    # Its names resolve (the node asks its own DNS), and its VIPs are in the rules, until stack rm.
    gateway = str(ipaddress.ip_interface(f"{app['overlay_address']}/24").network.network_address + 1)
    app_host = rig.host_of(app["node_id"])
    names = ("big_db", "big_web", "big_app")
    wait_for(lambda: all(rig.resolves(app_host, gateway, n) for n in names), timeout=30, message="names resolve")
    assert all(v in rig.ruleset(app_host) for v in vips.values()), vips

    volumes = json.loads(rig.ok("volume", "ls", "--format", "json"))
    assert [v["name"] for v in volumes] == ["big_data"], volumes

    # stack rm: nothing left, in the state, in containerd, in nftables, in the DNS.
    removed = stack_cli(rig, "rm", "big")
    assert removed.returncode == 0, removed.stderr
    for kind in ("service", "secret", "config", "network"):
        listed = json.loads(rig.ok(kind, "ls", "--format", "json"))
        assert not [o for o in listed if "big" in json.dumps(o)], (kind, listed)
    wait_for(lambda: not rig.container_ids(), timeout=60, message="no container left in any containerd")
    stack_cli(rig, "rm", "big")  # the volume, once no task holds it
    wait_for(lambda: json.loads(rig.ok("volume", "ls", "--format", "json")) == [], timeout=30, message="volume gone")
    stack_words = (str(UDP_PORT), str(HOST_PORT), *vips.values())
    wait_for(
        lambda: not any(any(word in rig.ruleset(h) for word in stack_words) for h in hosts),
        timeout=30,
        message="no nftables rule for the stack's ports and VIPs",
    )
    assert not any(rig.resolves(app_host, gateway, n) for n in names)
