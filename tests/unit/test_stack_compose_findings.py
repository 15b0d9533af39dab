"""Compose to a StackSpec (#14, ADR 48), what it refuses: unsupported keys as findings with
file and line, bad input as one line, missing files, unset variables as warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren.stack.load import StackFileError, load_stack


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
