"""Compose to a StackSpec (#14, ADR 48): every key Warren maps, the stack's top-level objects,
its default network, and the keys beside deploy."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren.model import (
    FailureAction,
    FileRef,
    HealthCheck,
    Mount,
    MountType,
    NetworkAttachment,
    PortConfig,
    Resources,
    RestartCondition,
    RestartPolicy,
    ServiceMode,
    Ulimit,
    UpdateOrder,
)
from warren.stack.load import load_stack
from warren.stack.spec import STACK_LABEL, Dependency, DependencyCondition, StackSpec

FULL = """
name: shop
services:
  web:
    image: busybox:1.36
    entrypoint: /bin/sh -c
    command: ["httpd -f -p 80"]
    environment:
      MODE: prod
      FROM_CALLER:
    env_file: [web.env]
    ports:
      - "8080:80"
      - "5353:53/udp"
      - "9000-9001:9000-9001"
      - target: 443
        published: 8443
        protocol: tcp
        mode: host
    deploy:
      mode: replicated
      replicas: 3
      labels: {tier: front}
      placement:
        constraints: [node.role==worker, node.labels.zone==a]
      resources:
        limits: {cpus: "0.5", memory: 128M}
        reservations: {cpus: "0.25", memory: 64M}
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 4, window: 1m}
      update_config: {parallelism: 2, delay: 10s, order: stop-first, failure_action: rollback, monitor: 30s,
                      max_failure_ratio: 0.25}
      rollback_config: {parallelism: 0, failure_action: continue}
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O- localhost"]
      interval: 5s
      timeout: 2s
      retries: 4
      start_period: 10s
    secrets:
      - api-key
      - {source: tls, target: server.pem, uid: "1000", gid: "1000", mode: 0400}
    configs:
      - nginx
      - {source: app, target: /etc/app.conf}
    volumes:
      - ./html:/www:ro
      - type: bind
        source: ./logs
        target: /logs
      - type: tmpfs
        target: /cache
        tmpfs: {size: 64M, mode: 01777}
    tmpfs: /run/lock:size=1m,mode=1770
    networks:
      front:
        aliases: [www, shop-web]
      back:
    depends_on:
      db: {condition: service_healthy}
      cache:
        condition: service_started
        required: false
      migrate: {condition: service_completed_successfully}
    hostname: "{{.Service.Name}}-{{.Task.Slot}}"
    user: "1000:1000"
    working_dir: /www
    read_only: true
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    sysctls: [net.core.somaxconn=1024]
    ulimits:
      nproc: 65535
      nofile: {soft: 1024, hard: 2048}
    init: true
    stop_grace_period: 1m30s
    stop_signal: SIGQUIT
    labels: [com.example.team=shop]
    dns: 10.0.0.2
    x-anything: ignored
  db:
    image: busybox
    volumes: [data:/var/lib/db]
    networks: [back]
    restart: unless-stopped
  cache:
    image: busybox
    restart: "no"
    deploy: {mode: global}
  migrate:
    image: busybox
    restart: on-failure:2
    scale: 2
networks:
  front:
    attachable: true
    labels: {a: b}
  back:
    internal: true
    ipam: {config: [{subnet: 10.9.0.0/24}]}
  outside:
    external: true
    name: corp-net
volumes:
  data:
    labels: [backup=daily]
  old:
    external: true
secrets:
  api-key:
    file: ./api-key.txt
  tls:
    environment: TLS_PEM
configs:
  nginx:
    content: "worker_processes 1;"
  app:
    external: true
    name: app-v2
x-defaults: &defaults
  image: ignored
"""


@pytest.fixture
def shop(tmp_path: Path) -> StackSpec:
    (tmp_path / "compose.yaml").write_text(FULL)
    (tmp_path / "web.env").write_text("MODE=dev\nFROM_FILE=1\n")
    (tmp_path / "api-key.txt").write_bytes(b"k3y")
    return load_stack([tmp_path / "compose.yaml"], None, {"FROM_CALLER": "yes", "TLS_PEM": "pem"})


def test_every_supported_key_is_mapped(shop: StackSpec, tmp_path: Path) -> None:
    assert shop.name == "shop" and shop.unsupported == () and shop.warnings == ()
    services = {s.spec.name: s for s in shop.services}
    web = services["shop_web"].spec
    assert (web.image, web.command, web.args) == ("busybox:1.36", ("/bin/sh", "-c"), ("httpd -f -p 80",))
    assert web.env == {"MODE": "prod", "FROM_FILE": "1", "FROM_CALLER": "yes"}  # environment wins over env_file
    assert web.ports == (
        PortConfig(target=80, published=8080),
        PortConfig(target=53, published=5353, protocol="udp"),
        PortConfig(target=9000, published=9000),
        PortConfig(target=9001, published=9001),
        PortConfig(target=443, published=8443, mode="host"),
    )
    assert (web.mode, web.replicas) == (ServiceMode.REPLICATED, 3)
    assert web.labels == {"tier": "front", STACK_LABEL: "shop"}
    assert web.constraints == ("node.role==worker", "node.labels.zone==a")
    assert web.limits == Resources(500_000_000, 128 << 20) and web.reservations == Resources(250_000_000, 64 << 20)
    assert web.restart == RestartPolicy(RestartCondition.ON_FAILURE, delay=2, max_attempts=4, window=60)
    assert (web.update.parallelism, web.update.delay, web.update.order) == (2, 10, UpdateOrder.STOP_FIRST)
    assert (web.update.failure_action, web.update.monitor, web.update.max_failure_ratio) == (
        FailureAction.ROLLBACK,
        30,
        0.25,
    )
    assert (web.rollback.parallelism, web.rollback.failure_action) == (0, FailureAction.CONTINUE)
    assert web.health == HealthCheck(
        command=("/bin/sh", "-c", "wget -q -O- localhost"), interval=5, timeout=2, retries=4, start_period=10
    )
    assert web.secrets == (
        FileRef(source="shop_api-key", target="/run/secrets/api-key"),
        FileRef(source="shop_tls", target="/run/secrets/server.pem", uid=1000, gid=1000, mode=0o400),
    )
    assert web.configs == (
        FileRef(source="shop_nginx", target="/nginx"),
        FileRef(source="app-v2", target="/etc/app.conf"),
    )
    assert web.mounts == (
        Mount(MountType.BIND, "/www", str(tmp_path / "html"), readonly=True),
        Mount(MountType.BIND, "/logs", str(tmp_path / "logs")),
        Mount(MountType.TMPFS, "/cache", tmpfs_size=64 << 20, tmpfs_mode=0o1777),
        Mount(MountType.TMPFS, "/run/lock", tmpfs_size=1 << 20, tmpfs_mode=0o1770),
    )
    assert web.networks == (
        NetworkAttachment("shop_front", ("web", "www", "shop-web")),
        NetworkAttachment("shop_back", ("web",)),
    )
    assert services["shop_web"].depends_on == (
        Dependency("shop_db", DependencyCondition.HEALTHY),
        Dependency("shop_cache", DependencyCondition.STARTED, required=False),
        Dependency("shop_migrate", DependencyCondition.COMPLETED),
    )
    c = web.container
    assert (c.hostname, c.user, c.workdir, c.read_only, c.init) == (
        "{{.Service.Name}}-{{.Task.Slot}}",
        "1000:1000",
        "/www",
        True,
        True,
    )
    assert (c.cap_add, c.cap_drop, c.sysctls) == (("NET_ADMIN",), ("ALL",), {"net.core.somaxconn": "1024"})
    assert c.ulimits == (Ulimit("nproc", 65535, 65535), Ulimit("nofile", 1024, 2048))
    assert (c.labels, c.dns) == ({"com.example.team": "shop"}, ("10.0.0.2",))
    assert (web.stop_grace_period, web.stop_signal) == (90, "SIGQUIT")

    db = services["shop_db"].spec
    assert (db.mode, db.replicas, db.restart.condition) == (ServiceMode.REPLICATED, 1, RestartCondition.ANY)
    assert db.mounts == (Mount(MountType.VOLUME, "/var/lib/db", "shop_data"),)
    assert db.networks == (NetworkAttachment("shop_back", ("db",)),)
    cache = services["shop_cache"].spec
    assert (cache.mode, cache.restart.condition) == (ServiceMode.GLOBAL, RestartCondition.NONE)
    assert services["shop_cache"].spec.networks == (NetworkAttachment("shop_default", ("cache",)),)
    migrate = services["shop_migrate"].spec
    assert (migrate.replicas, migrate.restart) == (2, RestartPolicy(RestartCondition.ON_FAILURE, max_attempts=2))


def test_top_level_objects_are_scoped_to_the_stack_and_external_ones_keep_their_names(shop: StackSpec) -> None:
    nets = {n.name: n for n in shop.networks}
    assert set(nets) == {"shop_front", "shop_back", "shop_default", "corp-net"}
    assert nets["shop_front"].attachable and nets["shop_front"].labels == {"a": "b", STACK_LABEL: "shop"}
    assert nets["shop_back"].internal and nets["shop_back"].subnet == "10.9.0.0/24"
    assert nets["corp-net"].external
    vols = {v.name: v for v in shop.volumes}
    assert vols["shop_data"].labels == {"backup": "daily", STACK_LABEL: "shop"} and vols["old"].external
    assert [(s.name, s.data) for s in shop.secrets] == [("shop_api-key", b"k3y"), ("shop_tls", b"pem")]
    assert [(c.name, c.data, c.external) for c in shop.configs] == [
        ("shop_nginx", b"worker_processes 1;", False),
        ("app-v2", None, True),
    ]


def test_a_stack_with_no_networks_gets_its_default_network(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("services:\n  a: {image: busybox}\n  b: {image: busybox}\n")
    stack = load_stack([tmp_path / "c.yaml"], "lone", {})
    assert [n.name for n in stack.networks] == ["lone_default"]
    assert [s.spec.networks for s in stack.services] == [
        (NetworkAttachment("lone_default", ("a",)),),
        (NetworkAttachment("lone_default", ("b",)),),
    ]


def test_the_keys_beside_deploy_and_the_other_container_options(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "services:\n"
        "  web:\n"
        "    image: busybox\n"
        "    cpus: 1.5\n"
        "    mem_limit: 1g\n"
        "    mem_reservation: 256m\n"
        "    privileged: true\n"
        "    devices: [/dev/fuse]\n"
        "    dns_search: [corp.example]\n"
        "    dns_opt: [ndots:2]\n"
        "    group_add: [audio, '44']\n"
        "    healthcheck: {disable: true}\n"
        "    restart: always\n"
        "    deploy: {restart_policy: {condition: none}}\n"
        "  job:\n"
        "    image: busybox\n"
        "    healthcheck: {test: curl -f localhost}\n"
        "  quiet:\n"
        "    image: busybox\n"
        "    healthcheck: {test: [NONE]}\n"
        "volumes:\n"
        "  old: {external: {name: legacy-volume}}\n"
    )
    stack = load_stack([tmp_path / "c.yaml"], "s", {})
    web, job, quiet = (s.spec for s in stack.services)
    assert (web.limits, web.reservations) == (Resources(1_500_000_000, 1 << 30), Resources(0, 256 << 20))
    c = web.container
    assert (c.privileged, [d.path_on_host for d in c.devices]) == (True, ["/dev/fuse"])
    assert (c.dns_search, c.dns_options, c.group_add) == (("corp.example",), ("ndots:2",), ("audio", "44"))
    assert (web.health, c.no_healthcheck) == (None, True)
    assert web.restart.condition == RestartCondition.NONE  # deploy.restart_policy wins over restart
    assert job.health is not None and job.health.command == ("/bin/sh", "-c", "curl -f localhost")
    assert (quiet.health, quiet.container.no_healthcheck) == (None, True)
    assert [(v.name, v.external) for v in stack.volumes] == [("legacy-volume", True)]
