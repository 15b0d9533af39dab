"""The Compose loader's parts (#14, ADR 48): YAML with lines, interpolation, .env, merging."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.stack.interpolate import InterpolationError, interpolate, parse_env_file, substitute
from warren.stack.load import StackFileError, load_stack
from warren.stack.merge import merge, normalize
from warren.stack.tree import parse_yaml

VARS = {"A": "a", "EMPTY": ""}


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- YAML ------------------------------------------------------------------------------------
def test_every_key_and_item_keeps_its_line() -> None:
    tree = parse_yaml("services:\n  web:\n    image: x\n    ports:\n      - 80\n      - 81\n", "c.yaml")
    web = tree["services"]["web"]  # type: ignore[index]
    assert web.at("image").line == 3 and web["ports"].at(1).line == 6


def test_yaml_1_2_booleans_and_octal_modes_as_compose_reads_them() -> None:
    tree = parse_yaml("a: no\nb: on\nc: true\nd: 0440\n", "c.yaml")
    assert tree == {"a": "no", "b": "on", "c": True, "d": 0o440}


def test_merge_keys_and_explicit_overrides() -> None:
    tree = parse_yaml("x-base: &b\n  image: one\n  user: u\ns:\n  <<: *b\n  image: two\n", "c.yaml")
    assert tree["s"] == {"image": "two", "user": "u"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "services:\n  web:\n    image: busybox: latest\n",
            "c.yaml:3: invalid YAML: mapping values are not allowed here",
        ),
        ("services:\n  web:\n    image: a\n    image: b\n", "c.yaml:4: services.web.image: the key is given twice"),
        ("- 1\n", "c.yaml:1: a Compose file is a mapping (services:, networks:...) at the top"),
        ("a: *nope\n", "c.yaml:1: invalid YAML: found undefined alias 'nope'"),
    ],
)
def test_yaml_errors_are_one_line_with_file_and_line(text: str, message: str) -> None:
    with pytest.raises(StackFileError) as caught:
        parse_yaml(text, "c.yaml")
    assert str(caught.value) == message


def test_alias_bombs_stop() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    with pytest.raises(StackFileError, match="more than 200000 values"):
        parse_yaml("\n".join(lines), "c.yaml")


# -- interpolation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$A", "a"),
        ("${A}-x", "a-x"),
        ("$$A", "$A"),
        ("${B:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${B-dflt}", "dflt"),
        ("${B:-${A}x}", "ax"),
        ("${A:+set}", "set"),
        ("${B:+set}", ""),
        ("${A:?needed}", "a"),
        ("${EMPTY?needed}", ""),
        ("plain", "plain"),
    ],
)
def test_interpolation_forms(text: str, expected: str) -> None:
    assert substitute(text, VARS) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${B:?set B first}", "required variable B is missing: set B first"),
        ("${EMPTY:?}", "required variable EMPTY is missing: is not set or empty"),
        ("${B?}", "required variable B is missing: is not set"),
        ("cost: 5$", "a $ that starts no variable: write $$ for a literal $"),
        ("${A", "'${A': the ${ is not closed"),
        ("${A/x}", "invalid variable ${A/x}: use ${VAR}, ${VAR:-default} or ${VAR:?error}"),
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError) as caught:
        substitute(text, VARS)
    assert str(caught.value) == message


def test_an_undefined_required_variable_names_the_key_and_line() -> None:
    tree = parse_yaml("services:\n  web:\n    image: app:${TAG:?give a TAG}\n", "c.yaml")
    with pytest.raises(StackFileError) as caught:
        interpolate(tree, {})
    assert str(caught.value) == "c.yaml:3: services.web.image: required variable TAG is missing: give a TAG"


def test_unset_variables_are_reported_with_where_they_were_used() -> None:
    tree = parse_yaml("services:\n  web:\n    image: app:$TAG\n", "c.yaml")
    [unset] = interpolate(tree, {})
    assert (unset.name, unset.path, unset.where.line) == ("TAG", "services.web.image", 3)
    assert tree["services"]["web"]["image"] == "app:"  # type: ignore[index]


def test_env_file_syntax() -> None:
    text = "# comment\n\nexport A=1\nB=\"x\\ny\"\nC='$raw # kept'\nD=v # comment\nHOME\nUNSET\n"
    assert parse_env_file(text, {"HOME": "/root"}) == {
        "A": "1",
        "B": "x\ny",
        "C": "$raw # kept",
        "D": "v",
        "HOME": "/root",
    }
    with pytest.raises(ValueError, match="line 1: expected KEY=VALUE"):
        parse_env_file("not a line\n")


def test_dotenv_beside_the_first_file_and_the_callers_environment_wins(tmp_path: Path) -> None:
    write(tmp_path, ".env", "TAG=from-dotenv\nREG=dotenv.example\n")
    compose = write(tmp_path, "compose.yaml", "services:\n  web:\n    image: ${REG}/app:${TAG}\n")
    stack = load_stack([compose], "s", {"TAG": "from-env"})
    assert stack.services[0].spec.image == "dotenv.example/app:from-env"


# -- merging ---------------------------------------------------------------------------------
def merged(*texts: str) -> dict[str, object]:
    trees = []
    for index, text in enumerate(texts):
        tree = parse_yaml(text, f"f{index}.yaml")
        normalize(tree, "/d")
        trees.append(tree)
    result = trees[0]
    for tree in trees[1:]:
        result = merge(result, tree)
    return result["services"]["web"]  # type: ignore[index, no-any-return]


def test_mappings_merge_and_the_later_value_wins() -> None:
    web = merged(
        "services:\n  web:\n    image: a\n    environment: [X=1, Y=2]\n    deploy: {replicas: 2, mode: replicated}\n",
        "services:\n  web:\n    image: b\n    environment: {Y: 3}\n    deploy: {replicas: 4}\n",
    )
    assert web["image"] == "b"
    assert web["environment"] == {"X": "1", "Y": 3}  # made text by the mapper
    assert web["deploy"] == {"replicas": 4, "mode": "replicated"}


def test_command_entrypoint_and_health_test_are_replaced_not_appended() -> None:
    web = merged(
        "services:\n  web:\n    command: [a, b]\n    entrypoint: [e]\n    healthcheck: {test: [CMD, x], retries: 2}\n",
        "services:\n  web:\n    command: [c]\n    entrypoint: [f]\n    healthcheck: {test: [CMD, y]}\n",
    )
    assert web["command"] == ["c"] and web["entrypoint"] == ["f"]
    assert web["healthcheck"] == {"test": ["CMD", "y"], "retries": 2}


def test_other_sequences_are_appended() -> None:
    web = merged("services:\n  web:\n    dns: [1.1.1.1]\n", "services:\n  web:\n    dns: [8.8.8.8]\n")
    assert web["dns"] == ["1.1.1.1", "8.8.8.8"]


def test_ports_volumes_secrets_and_configs_merge_by_their_unique_key() -> None:
    web = merged(
        "services:\n  web:\n    ports: ['8080:80', '53:53/udp']\n    volumes: ['a:/data', './x:/x']\n"
        "    secrets: [s1, {source: s2, target: /etc/s2}]\n    configs: [c1]\n",
        "services:\n  web:\n    ports: ['8080:80', '9090:90']\n    volumes: ['b:/data']\n"
        "    secrets: [{source: s3, target: /run/secrets/s1}, s4]\n    configs: [{source: c2, target: /c1}]\n",
    )
    assert web["ports"] == ["53:53/udp", "8080:80", "9090:90"]
    assert web["volumes"] == ["/d/x:/x", "b:/data"]
    assert [s if isinstance(s, str) else s["source"] for s in web["secrets"]] == ["s2", "s3", "s4"]  # type: ignore[index]
    assert [c if isinstance(c, str) else c["source"] for c in web["configs"]] == ["c2"]  # type: ignore[index]


def test_networks_and_depends_on_lists_merge_with_maps() -> None:
    web = merged(
        "services:\n  web:\n    networks: [front]\n    depends_on: [db]\n",
        "services:\n  web:\n    networks: {back: {aliases: [w]}}\n"
        "    depends_on: {cache: {condition: service_healthy}}\n",
    )
    assert web["networks"] == {"front": None, "back": {"aliases": ["w"]}}
    assert web["depends_on"] == {"db": {"condition": "service_started"}, "cache": {"condition": "service_healthy"}}


def test_merged_errors_name_the_file_that_wrote_the_value(tmp_path: Path) -> None:
    base = write(tmp_path, "compose.yaml", "services:\n  web:\n    image: busybox\n")
    override = write(tmp_path, "prod/override.yaml", "\nservices:\n  web:\n    deploy: {replicas: many}\n")
    with pytest.raises(StackFileError) as caught:
        load_stack([base, override], "s", {})
    assert str(caught.value) == f"{override}:4: services.web.deploy.replicas: expected a whole number (got 'many')"


# -- relative paths ----------------------------------------------------------------------------
def test_relative_paths_resolve_from_the_file_that_names_them(tmp_path: Path) -> None:
    base = write(tmp_path, "compose.yaml", "services:\n  web:\n    image: busybox\n    volumes: ['./html:/www']\n")
    write(tmp_path, "prod/web.env", "FROM_PROD=1\n")
    write(tmp_path, "prod/secret.txt", "s3cret")
    override = write(
        tmp_path,
        "prod/override.yaml",
        "services:\n  web:\n    env_file: web.env\n    secrets: [pw]\n    volumes: ['../logs:/logs', 'data:/www']\n"
        "secrets:\n  pw:\n    file: ./secret.txt\nvolumes:\n  data:\n",
    )
    stack = load_stack([base, override], "s", {})
    spec = stack.services[0].spec
    assert spec.env == {"FROM_PROD": "1"}
    assert [(m.type.value, m.source, m.target) for m in spec.mounts] == [
        ("bind", str(tmp_path / "logs"), "/logs"),
        ("volume", "s_data", "/www"),  # replaced the bind at /www: the same target
    ]
    assert stack.secrets[0].data == b"s3cret"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("a: " + "[" * 1000 + "]" * 1000, "c.yaml: invalid YAML: nested too deeply, or an alias refers "
                     "to itself", id="deep"),
        ("a: &x [*x]\n", "c.yaml: invalid YAML: nested too deeply, or an alias refers to itself"),
        ("a:\n  b: !reset []\n", "c.yaml:2: a.b: the YAML tag !reset is not supported"),
        ("a: !!python/object:os.system {}\n", "c.yaml:1: a: the YAML tag "
         "tag:yaml.org,2002:python/object:os.system is not supported"),
        ("a: ok\nb: \x01\n", "c.yaml:2: invalid YAML: special characters are not allowed (character #x0001)"),
        ("a: !!python/object:os.system x\n", "c.yaml:1: invalid YAML: could not determine a constructor for the tag "
         "'tag:yaml.org,2002:python/object:os.system'"),
    ],
)  # fmt: skip
def test_hostile_yaml_is_one_line_too(text: str, message: str) -> None:
    with pytest.raises(StackFileError) as caught:
        parse_yaml(text, "c.yaml")
    assert str(caught.value) == message


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#$ \n\t\x01"))))
def test_any_text_loads_or_fails_with_one_line(text: str) -> None:
    try:
        parse_yaml(text, "c.yaml")
    except StackFileError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_doubled_dollars_are_literal(text: str) -> None:
    assert substitute(text.replace("$", "$$"), {}) == text


def test_control_characters_in_a_key_are_escaped_in_the_message(tmp_path: Path) -> None:
    compose = write(tmp_path, "c.yaml", 'services:\n  "we\\nb\\x1b[31m": {image: busybox}\n')
    with pytest.raises(StackFileError) as caught:
        load_stack([compose], "s", {})
    assert (
        str(caught.value)
        == f"{compose}:2: services.we\\x0ab\\x1b[31m: a service name is letters, digits, '.', '_' or '-'"
    )
