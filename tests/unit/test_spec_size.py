"""The bound on a whole service spec (ADR 21): what it counts, and that it bounds both encodings
a spec travels in (protobuf to agents and clients, msgpack in Raft and the state)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.api import specconvert
from warren.model import HealthCheck, PortConfig, ServiceSpec
from warren.validate import MAX_SPEC_BYTES, ValidationError, check_spec, spec_size

KIB = 1024


def at_size(total: int, **fields: object) -> ServiceSpec:
    """A spec whose spec_size is exactly `total`, padded with environment variables of at most
    64 KiB each (the limit of one variable)."""
    env = {f"PAD{i}": "" for i in range(total // (64 * KIB) + 1)}
    spec = ServiceSpec(name="big", image="busybox", env=env, **fields)  # type: ignore[arg-type]
    left = total - spec_size(spec)
    for key in env:
        env[key] = "p" * min(left, 64 * KIB)
        left -= len(env[key])
    assert left == 0
    return msgspec.structs.replace(spec, env=env)


def test_the_spec_from_issue_10_is_refused() -> None:
    spec = ServiceSpec(name="big", image="busybox", replicas=2, env={f"V{i}": "x" * (64 * KIB) for i in range(60)})
    with pytest.raises(ValidationError, match=r"the service spec is too large: \d+ bytes, at most 262144 \(256 KiB\)"):
        check_spec(spec)


def test_a_spec_at_the_bound_is_accepted_and_one_byte_more_is_not() -> None:
    spec = at_size(MAX_SPEC_BYTES)
    assert spec_size(spec) == MAX_SPEC_BYTES
    check_spec(spec)
    with pytest.raises(ValidationError, match="too large"):
        check_spec(at_size(MAX_SPEC_BYTES + 1))


def test_the_health_check_and_ports_count() -> None:
    plain = ServiceSpec(name="a", image="x")
    checked = msgspec.structs.replace(plain, health=HealthCheck(kind="cmd", command=("sh", "-c", "y" * 300 * KIB)))
    assert spec_size(checked) > spec_size(plain) + 300 * KIB
    with pytest.raises(ValidationError, match="too large"):
        check_spec(checked)
    with_ports = msgspec.structs.replace(plain, ports=(PortConfig(target=80, protocol="t" * 300 * KIB),))
    with pytest.raises(ValidationError, match="too large"):
        check_spec(with_ports)


_text = st.text(max_size=300)
_specs = st.builds(
    ServiceSpec,
    name=_text,
    image=_text,
    command=st.lists(_text, max_size=5).map(tuple),
    args=st.lists(_text, max_size=5).map(tuple),
    env=st.dictionaries(_text, st.one_of(_text, st.integers(0, 300_000).map(lambda n: "\u00e9" * n)), max_size=5),
    constraints=st.lists(_text, max_size=3).map(tuple),
    labels=st.dictionaries(_text, _text, max_size=5),
    ports=st.lists(
        st.builds(PortConfig, target=st.integers(0, 65535), published=st.integers(0, 65535)), max_size=4
    ).map(tuple),
    health=st.one_of(st.none(), st.builds(HealthCheck, kind=_text, command=st.lists(_text, max_size=4).map(tuple))),
    stop_signal=_text,
    replicas=st.integers(0, 2**40),
    stop_grace_period=st.floats(allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(_specs)
def test_spec_size_is_at_least_either_encoding(spec: ServiceSpec) -> None:
    assert spec_size(spec) >= specconvert.spec_to_pb(spec).ByteSize()
    assert spec_size(spec) >= len(msgspec.msgpack.encode(spec))
