"""Container options (#13, ADR 42) without a node: checks, Docker's flag syntax, the CLI, the
conversion, the hostname template, the image's health check and the spec size bound. The OCI
spec the options build: test_container_oci.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env, make_task
from tests.waiting import async_holds
from tests.waiting import async_wait_for as until
from warren import container, model, validate
from warren.agent.controller import TaskController
from warren.agent.decisions import container_spec, health_check, task_hostname
from warren.agent.runtime import IMAGE_HEALTH_LABEL, ContainerSpec
from warren.api import specconvert
from warren.api.v1 import types_pb2 as pb
from warren.cli import main, service_spec
from warren.cli.container_flags import container_summary
from warren.cli.envfile import load_env_file, parse_env_file
from warren.model import TaskState

Options = model.ContainerOptions


def spec_with(**options: object) -> model.ServiceSpec:
    return model.ServiceSpec(name="web", image="busybox", container=Options(**options))  # type: ignore[arg-type]


def refused(match: str, **options: object) -> None:
    with pytest.raises(validate.ValidationError, match=match):
        validate.check_spec(spec_with(**options))


# -- checks -------------------------------------------------------------------------------------
def test_a_spec_without_options_passes_the_options_checks() -> None:
    """check_spec skips the options' checks for a spec that sets none (#15): the defaults must
    pass them, and a spec that sets bad ones is still refused."""
    container.check_options(model.ContainerOptions())
    validate.check_labels("container label", model.ContainerOptions().labels)
    bad = model.ServiceSpec(name="web", image="busybox", container=model.ContainerOptions(cap_add=("NOPE",)))
    with pytest.raises(validate.ValidationError, match="NOPE"):
        validate.check_spec(bad)


def test_capability_names_are_normalised_and_unknown_ones_refused() -> None:
    assert container.capability("net_admin") == "CAP_NET_ADMIN"
    assert container.capability("CAP_SYS_TIME") == "CAP_SYS_TIME"
    assert container.capability("all") == "ALL"
    refused("unknown capability 'NET_FLY'", cap_add=("NET_FLY",))
    refused("unknown capability", cap_drop=("CAP_",))


def test_capabilities_follow_dockers_rules() -> None:
    default = list(container.DEFAULT_CAPABILITIES)
    assert container.capabilities(Options()) == default
    with_admin = container.capabilities(Options(cap_add=("NET_ADMIN",), cap_drop=("NET_RAW",)))
    assert "CAP_NET_ADMIN" in with_admin and "CAP_NET_RAW" not in with_admin
    assert container.capabilities(Options(cap_drop=("ALL",), cap_add=("CHOWN",))) == ["CAP_CHOWN"]
    everything = container.capabilities(Options(cap_add=("ALL",), cap_drop=("SYS_ADMIN",)))
    assert len(everything) == len(container.ALL_CAPABILITIES) - 1 and "CAP_SYS_ADMIN" not in everything
    assert container.capabilities(Options(privileged=True, cap_drop=("ALL",))) == list(container.ALL_CAPABILITIES)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("vm.swappiness", "not allowed"),  # the node's, not the container's
        ("kernel.hostname", "not allowed"),
        ("net", "invalid sysctl name"),
        ("net..x", "invalid sysctl name"),
        ("Net.ipv4.ip_forward", "invalid sysctl name"),
        ("net.ipv4 .x", "invalid sysctl name"),
    ],
)
def test_bad_sysctls_are_refused(name: str, why: str) -> None:
    refused(why, sysctls={name: "1"})


def test_good_sysctls_pass() -> None:
    for name in (
        "net.ipv4.ip_unprivileged_port_start",
        "kernel.shmmax",
        "fs.mqueue.msg_max",
        "net.ipv4.conf/eth0/rp_filter",
    ):
        validate.check_spec(spec_with(sysctls={name: "1"}))
    refused("needs a value", sysctls={"kernel.shmmax": ""})
    refused("needs a value", sysctls={"kernel.shmmax": "1\n2"})


def test_devices_parse_as_docker_does() -> None:
    assert container.parse_device("/dev/fuse") == model.DeviceMapping("/dev/fuse", "", "rwm")
    assert container.parse_device("/dev/fuse:r") == model.DeviceMapping("/dev/fuse", "", "r")
    assert container.parse_device("/dev/sda:/dev/xvda") == model.DeviceMapping("/dev/sda", "/dev/xvda", "rwm")
    assert container.parse_device("/dev/sda:/dev/xvda:rw") == model.DeviceMapping("/dev/sda", "/dev/xvda", "rw")
    for bad in ("dev/fuse", "/dev/fuse:/x:rwx", "/dev/a:/b:r:w", "", "/dev/../etc/passwd", "/dev/fuse:rr"):
        with pytest.raises(container.OptionError):
            container.parse_device(bad)
    refused("permissions", devices=(model.DeviceMapping("/dev/null", "", "x"),))


def test_ulimits_parse_and_check() -> None:
    assert container.parse_ulimit("nofile=1024:2048") == model.Ulimit("nofile", 1024, 2048)
    assert container.parse_ulimit("core=0") == model.Ulimit("core", 0, 0)
    for bad, why in (
        ("nofiles=1", "unknown ulimit"),
        ("nofile=2:1", "exceeds the hard limit"),
        ("nofile", "NAME=SOFT"),
        ("nofile=a", "NAME=SOFT"),
        ("nofile=-1", "NAME=SOFT"),
    ):
        with pytest.raises(container.OptionError, match=why):
            container.parse_ulimit(bad)
    refused("given twice", ulimits=(model.Ulimit("nofile", 1, 1), model.Ulimit("nofile", 2, 2)))


def test_users_groups_dns_workdir_and_labels_are_checked() -> None:
    validate.check_spec(
        spec_with(
            user="app:staff",
            workdir="/srv",
            group_add=("10", "audio"),
            dns=("10.0.0.2", "::1"),
            dns_search=("example.org",),
            dns_options=("ndots:2", "rotate"),
            labels={"com.example": "x"},
        )
    )
    refused("invalid user", user="a b")
    refused("ids are at most", user="1:4294967295")
    refused("invalid user", user="1:")
    refused("absolute path", workdir="srv")
    refused("--group-add", group_add=("a b",))
    refused("--dns", dns=("dns.example.org",))
    refused("--dns-search", dns_search=("bad domain",))
    refused("--dns-option", dns_options=("ndots 2",))
    refused("reserved", labels={"warren.task.id": "x"})


def test_hostname_templates() -> None:
    validate.check_spec(spec_with(hostname="{{.Service.Name}}-{{.Task.Slot}}"))
    refused("unknown placeholder", hostname="{{.Service.Labels}}")
    refused("invalid hostname", hostname="a_b")
    template = "{{.Service.Name}}-{{ .Task.Slot }}"
    task = model.Task(
        id="t123", service_id="s1", service_name="web", slot=3, spec=spec_with(hostname=template), spec_version=1,
        node_id="n9",
    )  # fmt: skip
    assert task_hostname(task, "host1") == "web-3"
    glob = msgspec.structs.replace(task, slot=0, spec=spec_with(hostname="{{.Node.Hostname}}.{{.Task.Name}}"))
    assert task_hostname(glob, "host1") == "host1.web.n9.t123"
    long = msgspec.structs.replace(task, spec=spec_with(hostname="x" * 70))
    assert len(task_hostname(long, "")) == 63
    # The agent's ContainerSpec carries every option through.
    spec = container_spec(task, Path("/logs"))
    assert (spec.hostname, spec.options) == ("web-3", task.spec.container)


def test_container_spec_maps_user_workdir_read_only_and_labels() -> None:
    options = Options(user="7:8", workdir="/w", read_only=True, labels={"a": "b"})
    task = model.Task(id="t1", service_id="s", service_name="web", slot=1, spec=spec_with(), spec_version=1)
    task = msgspec.structs.replace(task, spec=msgspec.structs.replace(task.spec, container=options))
    spec = container_spec(task, Path("/logs"))
    assert (spec.user, spec.cwd, spec.read_only_rootfs) == ("7:8", "/w", True)
    assert spec.labels["a"] == "b" and spec.labels["warren.task.id"] == "t1"


def test_options_count_in_the_spec_size() -> None:
    big = spec_with(sysctls={f"net.core.x{i}": "v" * 1000 for i in range(255)})
    with pytest.raises(validate.ValidationError, match="too large"):
        validate.check_spec(big)


def test_conversion_round_trips() -> None:
    spec = spec_with(
        user="1:2", workdir="/w", hostname="{{.Task.Slot}}", read_only=True, init=True, privileged=True,
        cap_add=("CAP_NET_ADMIN",), cap_drop=("ALL",), devices=(model.DeviceMapping("/dev/fuse", "/dev/f", "r"),),
        sysctls={"net.core.somaxconn": "1024"}, ulimits=(model.Ulimit("nofile", 10, 20),), labels={"a": "b"},
        dns=("1.1.1.1",), dns_search=("x.org",), dns_options=("ndots:1",), group_add=("10",), no_healthcheck=True,
    )  # fmt: skip
    assert specconvert.spec_from_pb(specconvert.spec_to_pb(spec)) == spec
    assert not specconvert.spec_to_pb(spec_with()).HasField("container")  # nothing set: nothing sent


# -- the CLI --------------------------------------------------------------------------------------
def create(*argv: str) -> pb.ServiceSpec:
    return service_spec.build_spec(main.parse_args(["service", "create", "web", "--image", "busybox", *argv]))


def update(spec: pb.ServiceSpec, *argv: str) -> pb.ServiceSpec:
    new = pb.ServiceSpec()
    new.CopyFrom(spec)
    service_spec.apply_update(new, main.parse_args(["service", "update", "web", *argv]))
    return new


def test_create_flags_fill_the_options() -> None:
    spec = create(
        "--user", "1000:1000", "--workdir", "/srv", "--hostname", "{{.Service.Name}}-{{.Task.Slot}}",
        "--read-only", "--init", "--cap-add", "net_admin", "--cap-drop", "ALL", "--device", "/dev/fuse",
        "--sysctl", "net.core.somaxconn=1024", "--ulimit", "nofile=1024:2048", "--container-label", "a=b",
        "--dns", "10.0.0.2", "--dns-search", "svc.local", "--dns-option", "ndots:2", "--group-add", "10",
        "--no-healthcheck", "--entrypoint", "/bin/sh -c", "--", "echo hi",
    )  # fmt: skip
    options = specconvert.spec_from_pb(spec).container
    assert options == Options(
        user="1000:1000", workdir="/srv", hostname="{{.Service.Name}}-{{.Task.Slot}}", read_only=True, init=True,
        cap_add=("CAP_NET_ADMIN",), cap_drop=("ALL",), devices=(model.DeviceMapping("/dev/fuse", "", "rwm"),),
        sysctls={"net.core.somaxconn": "1024"}, ulimits=(model.Ulimit("nofile", 1024, 2048),), labels={"a": "b"},
        dns=("10.0.0.2",), dns_search=("svc.local",), dns_options=("ndots:2",), group_add=("10",), no_healthcheck=True,
    )  # fmt: skip
    assert (list(spec.command), list(spec.args)) == (["/bin/sh", "-c"], ["echo hi"])
    assert not create().HasField("container")


def test_update_adds_and_removes() -> None:
    spec = create("--cap-add", "NET_ADMIN", "--sysctl", "kernel.shmmax=1", "--dns", "10.0.0.2", "--read-only")
    spec = update(
        spec, "--cap-drop", "NET_ADMIN", "--cap-add", "SYS_TIME", "--sysctl-rm", "kernel.shmmax", "--sysctl-add",
        "kernel.msgmax=5", "--dns-add", "10.0.0.3", "--dns-rm", "10.0.0.2", "--read-only=false", "--ulimit-add",
        "nofile=5", "--device-add", "/dev/fuse", "--container-label-add", "k=v", "--group-add", "10",
    )  # fmt: skip
    options = specconvert.spec_from_pb(spec).container
    assert options.cap_add == ("CAP_SYS_TIME",) and options.cap_drop == ("CAP_NET_ADMIN",)
    assert options.sysctls == {"kernel.msgmax": "5"} and options.dns == ("10.0.0.3",) and not options.read_only
    spec = update(
        spec, "--ulimit-rm", "nofile", "--device-rm", "/dev/fuse", "--container-label-rm", "k", "--group-rm", "10"
    )
    options = specconvert.spec_from_pb(spec).container
    assert (options.ulimits, options.devices, options.labels, options.group_add) == ((), (), {}, ())
    # '' gives the image's user, workdir and hostname back.
    cleared = update(
        create("--user", "7", "--workdir", "/w", "--hostname", "h"), "--user", "", "--workdir", "", "--hostname", ""
    )
    assert not cleared.HasField("container")
    # --entrypoint '' gives the image's back; words after `--` replace only the CMD.
    with_entry = create("--entrypoint", "/x")
    assert list(update(with_entry, "--", "a", "b").command) == ["/x"]
    assert list(update(with_entry, "--entrypoint", "").command) == []


def test_no_healthcheck_on_update_disables_the_images_too() -> None:
    spec = update(create("--health-cmd", "true"), "--no-healthcheck")
    assert not spec.HasField("health") and spec.container.no_healthcheck
    assert not update(spec, "--health-cmd", "true").container.no_healthcheck


@pytest.mark.parametrize(
    "argv",
    [
        ("--cap-add", "NET_FLY"),
        ("--sysctl", "vm.swappiness=1"),
        ("--sysctl", "nonsense"),
        ("--ulimit", "nofile=2:1"),
        ("--device", "dev/fuse"),
        ("--hostname", "{{.Nope}}"),
        ("--workdir", "relative"),
        ("--user", "a b"),
        ("--read-only", "maybe"),
        ("--entrypoint", "'unclosed"),
        ("--env-file", "/nonexistent/env"),
    ],
)
def test_bad_values_are_usage_errors(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        create(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_env_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "# comment\n\nA=1\n  B=two words\nFROM_ENV\nUNSET_HERE\nC==x\n"
    assert parse_env_file(text, "f", {"FROM_ENV": "e"}) == [
        ("A", "1"),
        ("B", "two words"),
        ("FROM_ENV", "e"),
        ("C", "=x"),
    ]
    with pytest.raises(ValueError, match="line 1: invalid variable name"):
        parse_env_file("A B=1\n", "f", {})
    first, second = tmp_path / "one.env", tmp_path / "two.env"
    first.write_text("A=1\nB=1\n")
    second.write_text("B=2\nC=2\n")
    assert load_env_file(str(first)) == [("A", "1"), ("B", "1")]
    spec = create("--env-file", str(first), "--env-file", str(second), "-e", "C=flag")
    assert dict(spec.env) == {"A": "1", "B": "2", "C": "flag"}
    (tmp_path / "bin.env").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_env_file(str(tmp_path / "bin.env"))


# -- the image's own health check -----------------------------------------------------------------
IMAGE_CHECK = json.dumps(
    {"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 50_000_000, "Timeout": 2_000_000_000, "Retries": 2}
)


def test_image_health_check_reads_dockers_json() -> None:
    check = container.image_health_check(IMAGE_CHECK)
    assert check == model.HealthCheck(
        kind="cmd", command=("/bin/sh", "-c", "wget -q localhost"), interval=0.05, timeout=2.0, retries=2
    )
    exec_form = container.image_health_check(json.dumps({"Test": ["CMD", "/probe", "-v"]}))
    assert exec_form is not None and exec_form.command == ("/probe", "-v") and exec_form.interval == 30.0
    for none in ('{"Test": ["NONE"]}', '{"Test": []}', "", "[", '{"Test": "x"}', '{"Test": ["CMD"]}', "7"):
        assert container.image_health_check(none) is None, none
    negative = container.image_health_check(json.dumps({"Test": ["CMD", "x"], "Interval": -5, "Retries": 0}))
    assert negative is not None and (negative.interval, negative.retries) == (30.0, 3)


def test_the_service_check_or_no_healthcheck_wins_over_the_images() -> None:
    labels = {IMAGE_HEALTH_LABEL: IMAGE_CHECK}
    plain = model.Task(id="t", service_id="s", service_name="web", slot=1, spec=spec_with(), spec_version=1)
    assert health_check(plain, labels) == container.image_health_check(IMAGE_CHECK)
    assert health_check(plain, {}) is None
    own = model.HealthCheck(kind="tcp", target="127.0.0.1:80")
    with_own = msgspec.structs.replace(plain, spec=msgspec.structs.replace(plain.spec, health=own))
    assert health_check(with_own, labels) == own
    assert health_check(msgspec.structs.replace(plain, spec=spec_with(no_healthcheck=True)), labels) is None


class ImageHealthRuntime(FakeRuntime):
    """A runtime whose image has a Healthcheck: its driver labels the container with it."""

    def prepare(self, spec: ContainerSpec) -> str:
        return super().prepare(msgspec.structs.replace(spec, labels={**spec.labels, IMAGE_HEALTH_LABEL: IMAGE_CHECK}))


@pytest.mark.parametrize("no_healthcheck", [False, True])
def test_the_agent_runs_the_images_health_check(tmp_path: Path, no_healthcheck: bool) -> None:
    rt, rec = ImageHealthRuntime(), Recorder()
    rt.exec_result = (1, "not yet")
    task = make_task(container=Options(no_healthcheck=no_healthcheck))

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path))
        ctl.start()
        if no_healthcheck:
            await until(lambda: rec.last_state() == TaskState.RUNNING, message="running without a check")
            # For longer than two of the image check's intervals (50 ms): it never runs.
            await async_holds(lambda: rt.steps("exec") == [], 0.2, message="no health check")
        else:
            await until(lambda: len(rt.steps("exec")) >= 1, message="the image's check runs")
            assert rec.last_state() == TaskState.STARTING and rec.last().health == "starting"
            rt.exec_result = (0, "fine")
            await until(lambda: rec.last_state() == TaskState.RUNNING, message="running once healthy")
            assert rec.last().health == "healthy"
        await ctl.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_inspect_summary_lists_what_is_set() -> None:
    spec = create("--user", "7", "--read-only", "--cap-add", "NET_ADMIN", "--sysctl", "net.ipv4.ip_forward=1")
    assert container_summary(spec.container) == [
        "--user 7",
        "--read-only",
        "--cap-add CAP_NET_ADMIN",
        "--sysctl net.ipv4.ip_forward=1",
    ]


def test_history_names_the_options_that_changed() -> None:
    from warren.revisions import summary

    before = spec_with(cap_add=("CAP_NET_ADMIN",))
    after = spec_with(cap_add=("CAP_SYS_TIME",), read_only=True)
    assert summary(before, after) == "container read_only, cap_add changed"  # in the order of the fields


_text = st.text(max_size=40)
_options = st.builds(
    Options,
    user=_text,
    hostname=_text,
    read_only=st.booleans(),
    init=st.booleans(),
    privileged=st.booleans(),
    cap_add=st.lists(_text, max_size=4).map(tuple),
    devices=st.lists(st.builds(model.DeviceMapping, _text, _text, _text), max_size=4).map(tuple),
    sysctls=st.dictionaries(_text, _text, max_size=4),
    ulimits=st.lists(
        st.builds(model.Ulimit, _text, st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)), max_size=6
    ).map(tuple),
    labels=st.dictionaries(_text, _text, max_size=4),
    dns=st.lists(_text, max_size=3).map(tuple),
    group_add=st.lists(_text, max_size=3).map(tuple),
    no_healthcheck=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(_options)
def test_spec_size_still_bounds_both_encodings_with_options(options: model.ContainerOptions) -> None:
    spec = model.ServiceSpec(
        name="a", image="x", replicas=2**40, health=model.HealthCheck(), stop_signal="SIGRTMIN", container=options
    )
    assert validate.spec_size(spec) >= specconvert.spec_to_pb(spec).ByteSize()
    assert validate.spec_size(spec) >= len(msgspec.msgpack.encode(spec))


def test_spec_size_counts_the_ulimits_numbers_and_the_options_field_names() -> None:
    most = tuple(model.Ulimit("x", 2**63 - 1, 2**63 - 1) for _ in range(container.MAX_LIST))
    spec = model.ServiceSpec(name="a", image="x", container=Options(ulimits=most, read_only=True, init=True))
    assert validate.spec_size(spec) >= len(msgspec.msgpack.encode(spec))
    assert validate.spec_size(spec) >= specconvert.spec_to_pb(spec).ByteSize()
