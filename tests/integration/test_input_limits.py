"""Input limits against a real manager (issue #10, items 3 and 6): node labels validated like
service labels, no command too big to propose, errors that echo input cut short, malformed
protobuf answered INVALID_ARGUMENT, and join throttling that never locks out a right token."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.integration.harness import Manager
from warren import pki
from warren.api.v1 import ca_pb2 as capb
from warren.api.v1 import ca_pb2_grpc
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as tpb

pytestmark = pytest.mark.integration

QUICK = 10.0  # seconds: refusing is a check, not a write; a frozen apply took ~40 s


@pytest.fixture
def manager(shared_manager: Manager) -> Manager:
    """Every test here leaves the manager's state as it found it: one manager for the file."""
    return shared_manager


def _labels(manager: Manager) -> dict[str, str]:
    return dict(manager.control().GetNode(cpb.GetNodeRequest(node=manager.node_id), timeout=10).labels)


@pytest.mark.parametrize(
    "request_fields",
    [
        pytest.param({"labels_add": {f"k{i}": "v" for i in range(100_000)}}, id="100000 labels"),
        pytest.param({"labels_add": {"k" * (1 << 20): "v"}}, id="1 MiB key"),
        pytest.param({"labels_add": {"k": "a\x00b" + "v" * (3 << 20)}}, id="3 MiB value with NUL"),
        pytest.param({"labels_add": {"k": "\x1b[2J\x1b]0;owned\x07"}}, id="terminal escapes"),
        pytest.param({"labels_add": {"key\n": "v"}}, id="key with a newline"),
        pytest.param({"labels_rm": [f"k{i}" for i in range(100_000)]}, id="100000 unknown labels to remove"),
    ],
)
def test_node_label_updates_are_validated_quickly_and_change_nothing(
    manager: Manager, request_fields: dict[str, object]
) -> None:
    control = manager.control()
    assert control.UpdateNode(
        cpb.UpdateNodeRequest(node=manager.node_id, labels_add={"zone": "eu"}), timeout=10
    ).labels == {"zone": "eu"}
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        control.UpdateNode(cpb.UpdateNodeRequest(node=manager.node_id, **request_fields), timeout=60)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert len(err.value.details()) < 400
    assert elapsed < QUICK, f"refused after {elapsed:.1f}s"
    assert _labels(manager) == {"zone": "eu"}
    # Writes go on as before: the next update commits at once.
    started = time.monotonic()
    assert manager.cli("node", "update", "--label-rm", "zone", manager.node_id).returncode == 0
    assert time.monotonic() - started < QUICK and _labels(manager) == {}


def test_a_command_too_big_to_propose_is_refused_and_stores_nothing(manager: Manager) -> None:
    """A spec that passes the per-field checks (256 env entries of up to 64 KiB each) can still
    encode to more than MAX_COMMAND_BYTES: the Raft adapter refuses it before proposing."""
    spec = tpb.ServiceSpec(name="big", image="busybox", replicas=0, env={f"E{i}": "x" * 60_000 for i in range(40)})
    with pytest.raises(grpc.RpcError) as err:
        manager.control().CreateService(cpb.CreateServiceRequest(spec=spec), timeout=30)
    # RESOURCE_EXHAUSTED from the Raft adapter; INVALID_ARGUMENT once a whole-spec size check
    # refuses it even earlier. Either way nothing is stored.
    assert err.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
    assert "too large" in err.value.details() or "large" in err.value.details()
    assert list(manager.control().ListServices(cpb.ListServicesRequest(), timeout=10).services) == []
    created = manager.cli("service", "create", "small", "--image", "busybox", "--replicas", "0", "-d")
    assert created.returncode == 0, created.stderr
    assert manager.cli("service", "rm", "small").returncode == 0  # as it was, for the next test


@pytest.mark.parametrize(
    "argv",
    [
        ["service", "inspect"],
        ["service", "rm"],
        ["service", "ps"],
        ["node", "inspect"],
    ],
)
def test_a_100kb_name_is_not_found_with_a_short_message(manager: Manager, argv: list[str]) -> None:
    result = manager.cli(*argv, "x" * 100_000)
    assert result.returncode == 3, result.stderr[:300]
    assert result.stderr.count("\n") == 1 and len(result.stderr) < 300, result.stderr[:300]
    assert "not found" in result.stderr and "100000 characters" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["service", "create", "web\n", "--image", "busybox"],
        ["service", "create", "web", "--image", "busybox\n"],
        ["service", "create", "web", "--image", "busybox", "--label", "key\n=v"],
        ["service", "create", "web", "--image", "busybox", "--constraint", "node.labels.k\n==v"],
        ["service", "create", "web", "--image", "busybox", "--env", "A\nB=1"],
        ["service", "create", "web", "--image", "busybox", "--health-tcp", "db:5432", "--health-retries", "99999"],
        ["node", "update", "--label-add", "k=\x1b[31mred"],
    ],
    ids=["name", "image", "label key", "constraint", "env name", "health retries", "node label escape"],
)
def test_the_manager_refuses_what_used_to_slip_through(manager: Manager, argv: list[str]) -> None:
    if argv[0] == "node":
        argv = [*argv, manager.node_id]
    result = manager.cli(*argv, "-d") if argv[1] == "create" else manager.cli(*argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert manager.cli_json("service", "ls") == []
    assert _labels(manager) == {}


def _raw(channel: grpc.Channel, method: str, payload: bytes) -> grpc.RpcError:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        call(payload, timeout=10)
    return err.value


def test_a_malformed_protobuf_is_invalid_argument_without_a_traceback(manager: Manager) -> None:
    garbage = b"\xff\xff\xff\xff"
    with manager.channel() as channel:
        for method in ("/warren.api.v1.Control/GetService", "/warren.api.v1.Control/UpdateNode"):
            err = _raw(channel, method, garbage)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.code(), err.details())
            assert "malformed request" in err.details()
        # The stream methods too.
        err = _raw(channel, "/warren.api.v1.Control/ServiceLogs", garbage)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    with grpc.insecure_channel(manager.join_addr) as channel:
        err = _raw(channel, "/warren.api.v1.NodeCA/Join", garbage)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert manager.cli("service", "ls").returncode == 0  # still serving
    assert "Traceback" not in manager.log()


def test_a_right_token_joins_from_an_address_that_failed_too_often(manager: Manager) -> None:
    """Ten bad joins from 127.0.0.1 used to lock out every join from it (everyone behind a
    NAT). Now only the bad client is throttled."""
    secret = pki.parse_join_token(manager.join_token("worker")).secret
    key = pki.generate_key()
    csr = pki.make_csr(key).decode()
    with grpc.insecure_channel(manager.join_addr) as channel:
        join = ca_pb2_grpc.NodeCAStub(channel).Join
        codes = []
        for _ in range(15):
            with pytest.raises(grpc.RpcError) as err:
                join(capb.JoinRequest(csr_pem=csr, hostname="bad", proof="0" * 64), timeout=10)
            codes.append(err.value.code())
        assert codes[0] == grpc.StatusCode.PERMISSION_DENIED
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes  # the bad client is throttled
        response = join(capb.JoinRequest(csr_pem=csr, hostname="good", proof=pki.join_proof(secret, csr)), timeout=10)
        assert response.role == "worker" and response.node_id
        assert pki.identity_of(response.cert_pem.encode()).node_id == response.node_id
        with pytest.raises(grpc.RpcError) as err:  # and stays throttled
            join(capb.JoinRequest(csr_pem=csr, hostname="bad", proof="0" * 64), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
