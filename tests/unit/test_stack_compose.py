"""Compose to a StackSpec (#14, ADR 48): every key Warren maps, what it refuses, and real files."""

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
from warren.stack.load import StackFileError, load_stack
from warren.stack.spec import STACK_LABEL, Dependency, DependencyCondition, StackSpec

SAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "compose"

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


# -- unsupported keys and bad input ----------------------------------------------------------
def test_unsupported_keys_are_findings_with_path_file_and_line(tmp_path: Path) -> None:
    text = (
        "version: '3.8'\n"
        "services:\n"
        "  web:\n"
        "    image: busybox\n"
        "    build: .\n"
        "    logging: {driver: syslog}\n"
        "    x-note: fine\n"
        "    deploy:\n"
        "      endpoint_mode: dnsrr\n"
        "      placement:\n"
        "        max_replicas_per_node: 1\n"
        "        preferences: [{spread: node.labels.zone}]\n"
        "      resources: {limits: {pids: 100}}\n"
    )
    (tmp_path / "c.yaml").write_text(text)
    stack = load_stack([tmp_path / "c.yaml"], "s", {})
    file = str(tmp_path / "c.yaml")
    assert [(f.path, f.file, f.line) for f in stack.unsupported] == [
        ("services.web.build", file, 5),
        ("services.web.logging", file, 6),
        ("services.web.deploy.endpoint_mode", file, 9),
        ("services.web.deploy.resources.limits.pids", file, 13),
        ("services.web.deploy.placement.max_replicas_per_node", file, 11),
        ("services.web.deploy.placement.preferences[0].spread", file, 12),
    ]
    assert stack.unsupported[0].message == "build is not supported: Warren runs images: build and push the image first"
    assert stack.unsupported[5].message == (
        "the placement preference spread=node.labels.zone is not supported: "
        "Warren spreads tasks over nodes, not over the values of a node label"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a schema violation, with its path
        (
            "services:\n  web:\n    image: busybox\n    ports: 80\n",
            "c.yaml:4: services.web.ports: expected a list (got int 80)",
        ),
        (
            "services:\n  web:\n    image: busybox\n    imagee: x\n",
            "c.yaml:4: services.web.imagee: not a key of the Compose Specification here",
        ),
        (
            "services:\n  web:\n    image: busybox\n    ports: ['80:x']\n",
            "c.yaml:4: services.web.ports[0]: invalid port '80:x': use [[IP:]PUBLISHED:]TARGET[/udp]",
        ),
        (
            "services:\n  web:\n    image: busybox\n    deploy: {restart_policy: {condition: sometimes}}\n",
            "c.yaml:4: services.web.deploy.restart_policy.condition: must be one of none, on-failure, any "
            "(got 'sometimes')",
        ),
        (
            "services:\n  web:\n    image: busybox\n    stop_grace_period: soon\n",
            "c.yaml:4: services.web.stop_grace_period: invalid duration 'soon': use e.g. 10s, 500ms, 1m, 1h30m "
            "or plain seconds",
        ),
        # Warren's own checks, at the key's line
        (
            "services:\n  web:\n    image: busybox\n    cap_add: [NOT_A_CAP]\n",
            "c.yaml:4: services.web.cap_add[0]: unknown capability 'NOT_A_CAP': use a Linux capability such as "
            "NET_ADMIN, or ALL",
        ),
        (
            "services:\n  web:\n    image: busybox\n    deploy:\n      placement:\n"
            "        constraints: [node.size>3]\n",
            "c.yaml:6: services.web.deploy.placement.constraints[0]: invalid constraint 'node.size>3': no operator; "
            "expected FIELD==VALUE or FIELD!=VALUE, with FIELD one of node.id, node.hostname, node.role, "
            "node.platform.os, node.platform.arch, node.labels.KEY",
        ),
        # references that do not exist
        (
            "services:\n  web:\n    image: busybox\n    secrets: [nope]\n",
            "c.yaml:4: services.web.secrets[0]: secret 'nope' is not declared in the top-level secrets",
        ),
        (
            "services:\n  web:\n    image: busybox\n    networks: [nope]\n",
            "c.yaml:4: services.web.networks.nope: network nope is not declared in the top-level networks",
        ),
        (
            "services:\n  web:\n    image: busybox\n    depends_on: [nope]\n",
            "c.yaml:4: services.web.depends_on.nope: service nope is not in the stack",
        ),
        (
            "services:\n  web:\n    build: .\n",
            "c.yaml:3: services.web: an image is required (Warren runs images; it does not build them)",
        ),
        ("networks: {}\n", "c.yaml:1: a stack needs at least one service"),
        (
            "services:\n  a: {image: busybox, depends_on: [b]}\n  b: {image: busybox, depends_on: [c]}\n"
            "  c:\n    image: busybox\n    depends_on: [b]\n",
            "c.yaml:3: services.b.depends_on: the dependencies loop: b -> c -> b",
        ),
        (
            "services:\n  a:\n    image: busybox\n    depends_on: [a]\n",
            "c.yaml:4: services.a.depends_on: the dependencies loop: a -> a",
        ),
        (
            "services:\n  web:\n    image: busybox\n    ports: ['1-300:1-300']\n",
            "c.yaml:4: services.web.ports[0]: the range of '1-300:1-300' is over 256 ports",
        ),
        (
            "services:\n  web: {image: busybox}\nnetworks:\n  n:\n    ipam:\n"
            "      config:\n        - subnet: 10.0.0/33\n",
            "c.yaml:7: networks.n.ipam.config[0].subnet: invalid subnet '10.0.0/33': a CIDR such as 10.10.0.0/24",
        ),
        (
            "services:\n  a:\n    image: busybox\n    ports: ['53:53/udp']\n  b:\n    image: busybox\n"
            "    ports: ['53:53/tcp', '53:5353/udp']\n",
            "c.yaml:7: services.b.ports: port 53/udp is already published by service a",
        ),
    ],
)
def test_bad_input_is_one_line_naming_file_line_and_path(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(StackFileError) as caught:
        load_stack([tmp_path / "c.yaml"], "s", {})
    assert str(caught.value) == f"{tmp_path}/{message}"


def test_a_missing_env_file_or_secret_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("services:\n  web:\n    image: busybox\n    env_file: ./missing.env\n")
    with pytest.raises(StackFileError) as caught:
        load_stack([tmp_path / "c.yaml"], "s", {})
    assert str(caught.value) == (
        f"{tmp_path}/c.yaml:4: services.web.env_file[0]: cannot read the env file {tmp_path}/missing.env: "
        "No such file or directory"
    )
    (tmp_path / "c.yaml").write_text("services:\n  web: {image: busybox}\nsecrets:\n  pw:\n    file: pw.txt\n")
    with pytest.raises(StackFileError) as caught:
        load_stack([tmp_path / "c.yaml"], "s", {})
    assert str(caught.value) == (
        f"{tmp_path}/c.yaml:5: secrets.pw.file: cannot read the secret file {tmp_path}/pw.txt: "
        "No such file or directory"
    )


def test_unset_variables_are_warnings_not_findings(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("services:\n  web:\n    image: busybox\n    user: ${APP_UID}\n")
    stack = load_stack([tmp_path / "c.yaml"], "s", {})
    assert stack.unsupported == () and stack.services[0].spec.container.user == ""
    [warning] = stack.warnings
    assert (warning.path, warning.line, warning.message) == (
        "services.web.user",
        4,
        "the variable APP_UID is not set: read as an empty string",
    )


def test_an_optional_env_file_may_be_missing(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "services:\n  web:\n    image: busybox\n    env_file: [{path: ./none.env, required: false}]\n"
    )
    assert load_stack([tmp_path / "c.yaml"], "s", {}).services[0].spec.env == {}


def test_warren_rules_are_checked_at_load_with_the_services_line(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "services:\n  web:\n    image: busybox\n    deploy: {replicas: 2}\n    volumes: [data:/d]\nvolumes:\n  data:\n"
    )
    with pytest.raises(StackFileError, match=r"c.yaml:3: services.web: service s_web mounts volume s_data"):
        load_stack([tmp_path / "c.yaml"], "s", {})


def test_the_stack_name_comes_from_the_caller_or_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("services:\n  web: {image: busybox}\n")
    with pytest.raises(StackFileError) as caught:
        load_stack([tmp_path / "c.yaml"], None, {})
    assert str(caught.value).endswith("c.yaml:1: name: the stack has no name: give one, or write name: at the top")
    with pytest.raises(StackFileError, match="invalid stack name 'Bad Name'"):
        load_stack([tmp_path / "c.yaml"], "Bad Name", {})


def test_a_missing_compose_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(StackFileError) as caught:
        load_stack([tmp_path / "none.yaml"], "s", {})
    assert str(caught.value) == f"{tmp_path}/none.yaml: cannot read the file: No such file or directory"


# -- real Compose files ------------------------------------------------------------------------
def findings(stack: StackSpec) -> list[str]:
    return [f"{f.path}@{f.line}" for f in stack.unsupported]


def test_the_voting_app_stack_file_maps_whole() -> None:
    stack = load_stack([SAMPLES / "voting-stack" / "docker-stack.yml"], "vote", {})
    assert findings(stack) == []
    services = {s.spec.name: s for s in stack.services}
    assert set(services) == {f"vote_{n}" for n in ("redis", "db", "vote", "result", "worker", "visualizer")}
    assert services["vote_vote"].spec.replicas == 2
    assert services["vote_worker"].spec.restart == RestartPolicy(RestartCondition.ON_FAILURE, 10, 3, 120)
    assert services["vote_visualizer"].spec.stop_grace_period == 90
    assert sorted(n.name for n in stack.networks) == ["vote_backend", "vote_default", "vote_frontend"]


def test_the_voting_app_compose_file_names_what_is_not_supported() -> None:
    stack = load_stack([SAMPLES / "voting-compose" / "compose.yaml"], "vote", {})
    assert findings(stack) == [
        "services.vote.build@4",
        "services.result.build@27",
        "services.result.ports[1].host_ip@38",
        "services.worker.build@44",
        "services.seed.build@83",
        "services.seed.profiles@86",
    ]
    services = {s.spec.name: s for s in stack.services}
    assert services["vote_worker"].depends_on == (
        Dependency("vote_redis", DependencyCondition.HEALTHY),
        Dependency("vote_db", DependencyCondition.HEALTHY),
    )
    redis = services["vote_redis"].spec
    assert redis.health is not None and redis.health.command == ("/bin/sh", "-c", "/healthchecks/redis.sh")
    assert redis.mounts[0].source == str(SAMPLES / "voting-compose" / "healthchecks")


def test_the_three_tier_sample_maps_its_secret_and_escaped_health_check() -> None:
    stack = load_stack([SAMPLES / "nginx-flask-mysql" / "compose.yaml"], "app", {})
    assert findings(stack) == ["services.backend.build@3", "services.db.expose@36"]
    assert [(s.name, s.data) for s in stack.secrets] == [("app_db-password", b"db-78n9n")]
    db = next(s.spec for s in stack.services if s.spec.name == "app_db")
    assert db.health is not None
    assert db.health.command == ("/bin/sh", "-c", 'test -n "$(cat /run/secrets/db-password)"')
    assert db.args == ("--default-authentication-plugin=mysql_native_password",)


def test_a_port_without_its_published_number_is_a_finding(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("services:\n  web:\n    image: busybox\n    ports: ['80', {target: 81}]\n")
    stack = load_stack([tmp_path / "c.yaml"], "s", {})
    assert [(f.path, f.line, f.message) for f in stack.unsupported] == [
        (
            "services.web.ports[0].published",
            4,
            "port 80 without a published port (Docker would pick one) is not supported",
        ),
        (
            "services.web.ports[1].published",
            4,
            "port 81 without a published port (Docker would pick one) is not supported",
        ),
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
