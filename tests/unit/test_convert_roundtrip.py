"""Proto <-> model conversion (warren.api.convert): what goes on the wire comes back unchanged.

Round trips model -> pb -> model where both directions exist (ServiceSpec, Task, a task report);
where only one direction exists (Node, Service, admin certificates, the mesh and endpoints) every
field the message shares by name with the model must carry the model's value, so a field added
to both but not to the conversion fails here.
"""

from __future__ import annotations

import enum
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warren import model
from warren.agent.status import Report
from warren.api import convert, specconvert
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb

# Protobuf strings are UTF-8: no lone surrogates. Report text loses NULs on purpose (validate).
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
words = st.text("abcdefxyz0123456789-_.", min_size=1, max_size=10)
string_dicts = st.dictionaries(words, texts, max_size=3)
string_tuples = st.lists(texts, max_size=3).map(tuple)
floats = st.floats(allow_nan=False, allow_infinity=False)
nonzero_floats = floats.filter(lambda x: x != 0)  # 0 on the wire means "unset": the default applies
int32s = st.integers(0, 2**31 - 1)
uint32s = st.integers(0, 2**32 - 1)
int64s = st.integers(0, 2**63 - 1)

resources = st.builds(model.Resources, nano_cpus=int64s, memory_bytes=int64s)
restart_policies = st.builds(
    model.RestartPolicy,
    condition=st.sampled_from(model.RestartCondition),
    delay=floats,
    max_attempts=int32s,
    window=floats,
)
health_checks = st.builds(
    model.HealthCheck,
    kind=st.sampled_from(["cmd", "http", "tcp"]),
    command=string_tuples,
    target=texts,
    interval=nonzero_floats,
    timeout=nonzero_floats,
    retries=st.integers(1, 2**31 - 1),
    start_period=floats,
)
ports = st.builds(
    model.PortConfig,
    target=uint32s,
    published=uint32s,
    protocol=st.sampled_from(["tcp", "udp"]),
    mode=st.sampled_from(["ingress", "host"]),
)


update_configs = st.builds(
    model.UpdateConfig,
    parallelism=int64s,
    delay=floats,
    order=st.sampled_from(model.UpdateOrder),
    failure_action=st.sampled_from(model.FailureAction),
    monitor=floats,
    max_failure_ratio=floats,
)


# Targets as the API stores them: absolute (a relative one is given its default on the way in).
file_refs = st.builds(
    model.FileRef,
    source=words,
    target=words.map(lambda w: f"/{w}"),
    uid=uint32s,
    gid=uint32s,
    mode=st.integers(0, 0o777),
)


@st.composite
def deploy_configs(draw: st.DrawFn) -> model.DeployConfig:
    strategy = draw(st.sampled_from(model.DeployStrategy))
    keep = draw(floats)
    if strategy == model.DeployStrategy.BLUE_GREEN and not keep:
        keep = model.BLUE_GREEN_KEEP  # unset on the wire is the default keep (ADR 35)
    return model.DeployConfig(
        strategy=strategy,
        canary_replicas=draw(int64s),
        canary_weight=draw(st.none() | st.integers(0, 2**32 - 1)),
        canary_auto_promote=draw(floats),
        blue_green_keep=keep,
    )


@st.composite
def service_specs(draw: st.DrawFn) -> model.ServiceSpec:
    mode = draw(st.sampled_from(model.ServiceMode))
    return model.ServiceSpec(
        name=draw(words),
        image=draw(texts),
        command=draw(string_tuples),
        args=draw(string_tuples),
        env=draw(string_dicts),
        mode=mode,
        replicas=0 if mode == model.ServiceMode.GLOBAL else draw(int64s),  # a global service has none
        constraints=draw(string_tuples),
        reservations=draw(resources),
        limits=draw(resources),
        restart=draw(restart_policies),
        health=draw(st.none() | health_checks),
        ports=tuple(draw(st.lists(ports, max_size=3))),
        labels=draw(string_dicts),
        stop_grace_period=draw(floats),
        stop_signal=draw(texts),
        stop_drain=draw(floats),
        update=draw(update_configs),
        rollback=draw(update_configs),
        force_update=draw(int64s),
        deploy=draw(deploy_configs()),
        secrets=tuple(draw(st.lists(file_refs, max_size=2))),
        configs=tuple(draw(st.lists(file_refs, max_size=2))),
    )


tasks = st.builds(
    model.Task,
    id=words,
    service_id=words,
    service_name=words,
    slot=int64s,
    spec=service_specs(),
    spec_version=int64s,
    desired_state=st.sampled_from(model.TaskState),
    state=st.sampled_from(model.TaskState),
    node_id=texts,
    message=texts,
    error=texts,
    exit_code=st.none() | st.integers(-(2**31), 2**31 - 1),
    runtime_id=texts,
    health=texts,
    attempt=int64s,
    created_at=floats,
    updated_at=floats,
    started_at=floats,
    ready_at=floats,
    overlay_address=texts,
    relocates=texts,
)

nodes = st.builds(
    model.Node,
    id=words,
    hostname=words,
    role=st.sampled_from(model.NodeRole),
    availability=st.sampled_from(model.Availability),
    status=st.sampled_from(model.NodeStatus),
    status_message=texts,
    labels=string_dicts,
    resources=resources,
    addr=texts,
    raft_addr=texts,
    join_addr=texts,
    desired_role=st.none() | st.sampled_from(model.NodeRole),
    overlay_subnet=texts,
    wg_public_key=texts,
    wg_endpoint=texts,
    overlay=st.booleans(),
    wg_key_epoch=int64s,
    wg_key_desired_epoch=int64s,
    wg_key_published_at=floats,
    os=texts,
    arch=texts,
    created_at=floats,
    updated_at=floats,
    agent_cert_ca=texts,
    manager_cert_ca=texts,
    metrics_addr=texts,
    manager_metrics_addr=texts,
)


def wire_value(value: Any) -> Any:
    """A model value as the messages spell it: enums by name, None as empty, nested values as dicts."""
    if isinstance(value, model.TaskState):
        return value.label
    if isinstance(value, enum.Enum):
        return value.value
    if value is None:
        return ""
    if isinstance(value, model.Resources):
        return {"nano_cpus": value.nano_cpus, "memory_bytes": value.memory_bytes}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def shared_fields(msg: Message, obj: object, skip: frozenset[str] = frozenset()) -> tuple[dict, dict]:
    """(message, model) values of every field of `msg` that `obj` also has, as comparable values."""
    on_wire: dict[str, Any] = {}
    in_model: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        if field.name in skip or not hasattr(obj, field.name):
            continue
        value = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = dict(value)
        elif field.message_type is not None and field.message_type.name == "Resources":
            value = {"nano_cpus": value.nano_cpus, "memory_bytes": value.memory_bytes}
        elif not isinstance(value, str | bytes | bool | int | float):  # a repeated field
            value = list(value)
        on_wire[field.name] = value
        in_model[field.name] = wire_value(getattr(obj, field.name))
    return on_wire, in_model


# Big values, many fields: fewer examples than hypothesis's default keep this file quick, and no
# per-example deadline, since the machine may be busy.
wire = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- round trips -------------------------------------------------------------------------------
@wire
@given(service_specs())
def test_a_service_spec_survives_the_wire(spec: model.ServiceSpec) -> None:
    assert specconvert.spec_from_pb(specconvert.spec_to_pb(spec)) == spec


@wire
@given(service_specs())
def test_a_spec_read_from_the_wire_is_sent_as_it_came(spec: model.ServiceSpec) -> None:
    msg = specconvert.spec_to_pb(spec)
    assert specconvert.spec_to_pb(specconvert.spec_from_pb(msg)) == msg


@pytest.mark.parametrize("part", ["reservations", "limits", "update", "rollback", "deploy", "container"])
def test_a_spec_part_left_unset_converts_as_the_empty_message_does(part: str) -> None:
    """spec_from_pb shares one conversion of each part a message leaves unset (#15): it must be
    what converting that part's empty message gives, on every field."""
    unset = pb.ServiceSpec(name="web", image="busybox")
    empty = pb.ServiceSpec(name="web", image="busybox")
    getattr(empty, part).SetInParent()
    assert not unset.HasField(part) and empty.HasField(part)
    assert specconvert.spec_from_pb(unset) == specconvert.spec_from_pb(empty)


def test_a_spec_message_shares_no_part_with_another() -> None:
    """spec_to_pb starts every spec's unchanged parts from messages built once (#15): changing
    one spec's message must leave the next one's alone."""
    spec = model.ServiceSpec(name="web", image="busybox")
    first = specconvert.spec_to_pb(spec)
    first.update.parallelism = 7
    first.restart.delay = 9.0
    first.reservations.nano_cpus = 5
    first.deploy.strategy = "canary"
    assert specconvert.spec_from_pb(specconvert.spec_to_pb(spec)) == spec


@wire
@given(tasks)
def test_a_task_survives_the_wire_with_its_spec(task: model.Task) -> None:
    assert convert.task_from_pb(convert.task_to_pb(task, with_spec=True)) == task


@wire
@given(tasks, service_specs())
def test_a_task_sent_by_reference_takes_the_spec_it_is_given(task: model.Task, spec: model.ServiceSpec) -> None:
    msg = convert.task_to_pb(task)
    assert not msg.HasField("spec")
    assert convert.task_from_pb(msg, spec) == model.Task(**{**_fields(task), "spec": spec})


reports = st.builds(
    Report,
    task_id=words,
    state=st.sampled_from([s for s in model.TaskState if s >= model.TaskState.ACCEPTED]),
    timestamp=floats,
    message=texts,
    error=texts,
    exit_code=st.none() | st.integers(-(2**31), 2**31 - 1),
    runtime_id=texts,
    health=texts,
)


@wire
@given(reports, floats)
def test_an_agent_report_arrives_as_the_update_it_describes(report: Report, at: float) -> None:
    update = convert.task_update_from_pb(convert.report_to_pb(report), at)
    assert (update.id, update.at, update.state, update.message, update.error) == (
        report.task_id,
        at,
        report.state,
        report.message,
        report.error,
    )
    assert update.exit_code == report.exit_code
    assert update.runtime_id == (report.runtime_id or None)  # empty: unchanged
    assert update.health == (report.health or None)


# -- one direction: every shared field carries its value -------------------------------------
@wire
@given(nodes, st.booleans())
def test_a_node_message_carries_every_field_it_shares_with_the_node(node: model.Node, leader: bool) -> None:
    msg = convert.node_to_pb(node, leader=leader)
    on_wire, in_model = shared_fields(msg, node)
    assert on_wire == in_model
    assert msg.leader == leader


@wire
@given(nodes, st.sampled_from(model.NodeRole), st.sampled_from(model.NodeStatus), texts, floats)
def test_a_node_description_becomes_the_node_it_describes(
    described: model.Node, role: model.NodeRole, status: model.NodeStatus, ca: str, at: float
) -> None:
    desc = dpb.NodeDescription(
        hostname=described.hostname,
        resources=specconvert.resources_to_pb(described.resources),
        addr=described.addr,
        os=described.os,
        arch=described.arch,
        labels=described.labels,
        wg_public_key=described.wg_public_key,
        wg_endpoint=described.wg_endpoint,
        overlay=described.overlay,
        wg_key_epoch=described.wg_key_epoch,
        metrics_addr=described.metrics_addr,
    )
    node = convert.node_from_description(desc, node_id=described.id, role=role, status=status, agent_cert_ca=ca, at=at)
    on_wire, in_model = shared_fields(desc, node)
    assert on_wire == in_model
    assert len(on_wire) == len(desc.DESCRIPTOR.fields)  # the model has a place for all of it
    assert (node.id, node.role, node.status, node.agent_cert_ca) == (described.id, role, status, ca)
    assert node.created_at == node.updated_at == at


update_statuses = st.builds(
    model.UpdateStatus,
    state=st.sampled_from(model.RolloutState),
    started_at=floats,
    from_version=int64s,
    to_version=int64s,
    completed_at=floats,
    message=texts,
)
revisions = st.builds(model.SpecRevision, version=int64s, spec=st.none() | service_specs(), at=floats, summary=texts)


@wire
@given(
    service_specs(),
    words,
    int64s,
    st.none() | service_specs(),
    floats,
    floats,
    texts,
    int32s,
    int32s,
    st.none() | update_statuses,
    st.lists(revisions, max_size=3),
)
def test_a_service_message_carries_its_spec_and_fields(
    spec: model.ServiceSpec,
    service_id: str,
    version: int,
    previous: model.ServiceSpec | None,
    created: float,
    updated: float,
    vip: str,
    desired: int,
    running: int,
    status: model.UpdateStatus | None,
    history: list[model.SpecRevision],
) -> None:
    service = model.Service(service_id, spec, version, previous, created, updated, vip, status, tuple(history))
    msg = convert.service_to_pb(service, desired, running)
    skip = frozenset({"spec", "previous_spec", "update_status", "history"})
    on_wire, in_model = shared_fields(msg, service, skip=skip)
    assert on_wire == in_model
    if status is None:
        assert not msg.HasField("update_status")
    else:
        shown_status = msg.update_status
        assert (shown_status.state, shown_status.message, shown_status.to_version, shown_status.from_version) == (
            status.state.value,
            status.message,
            status.to_version,
            status.from_version,
        )
        assert (shown_status.started_at, shown_status.completed_at) == (status.started_at, status.completed_at)
    assert [(r.version, specconvert.spec_from_pb(r.spec), r.at, r.summary) for r in msg.history] == [
        (r.version, r.spec or spec, r.at, r.summary)
        for r in history  # None: the current spec
    ]
    assert not convert.service_to_pb(service, with_previous=False).history
    assert specconvert.spec_from_pb(msg.spec) == spec
    # The spec before: the newest kept one, else the field written before histories.
    before = next((r.spec for r in reversed(history) if r.spec is not None), previous)
    assert (specconvert.spec_from_pb(msg.previous_spec) if msg.HasField("previous_spec") else None) == before
    assert (msg.desired_tasks, msg.running_tasks) == (desired, running)
    assert not convert.service_to_pb(service, with_previous=False).HasField("previous_spec")


@wire
@given(words, words, floats, floats, texts, floats, st.sampled_from(["current", "previous", "old"]))
def test_an_admin_certificate_message_carries_its_fields(
    cert_id: str, name: str, created: float, not_after: float, ca: str, revoked_at: float, label: str
) -> None:
    cert = model.AdminCert(cert_id, name, created, not_after, ca, revoked_at)
    msg = convert.admin_cert_to_pb(cert, label)
    on_wire, in_model = shared_fields(msg, cert, skip=frozenset({"ca"}))
    assert on_wire == in_model
    assert (msg.ca, msg.revoked) == (label, bool(revoked_at))


@wire
@given(nodes)
def test_a_mesh_node_carries_the_nodes_overlay_identity(node: model.Node) -> None:
    msg = convert.mesh_node_to_pb(node)
    assert (msg.node_id, msg.public_key, msg.endpoint, msg.subnet) == (
        node.id,
        node.wg_public_key,
        node.wg_endpoint,
        node.overlay_subnet,
    )


@wire
@given(service_specs(), words, texts, st.lists(texts, max_size=4))
def test_an_endpoint_carries_the_vip_sorted_backends_and_published_ports(
    spec: model.ServiceSpec, service_id: str, vip: str, backends: list[str]
) -> None:
    msg = convert.endpoint_to_pb(model.Service(service_id, spec, vip=vip), backends, backends[:1], 20)
    assert (msg.name, msg.vip, list(msg.backends)) == (spec.name, vip, sorted(backends))
    assert (list(msg.canary), msg.canary_weight) == (backends[:1], 20)  # a canary's share (ADR 35)
    # Host-mode ports travel too, marked (ADR 46); an ingress port's mode stays empty (unchanged bytes).
    published = [
        (p.protocol, p.published, p.target, "host" if p.mode == "host" else "") for p in spec.ports if p.published
    ]
    assert [(p.protocol, p.published, p.target, p.mode) for p in msg.ports] == published


def _fields(task: model.Task) -> dict[str, Any]:
    return {name: getattr(task, name) for name in task.__struct_fields__}


def test_the_messages_compared_here_are_the_generated_ones() -> None:
    """shared_fields reads descriptors: a message with no shared field would make a check empty."""
    node_fields = {f.name for f in pb.Node.DESCRIPTOR.fields}
    assert {"id", "hostname", "overlay_subnet", "wg_key_epoch"} <= node_fields
    assert {f.name for f in cpb.AdminCertificate.DESCRIPTOR.fields} >= {"id", "name", "not_after"}
