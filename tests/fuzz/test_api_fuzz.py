"""Fuzz every gRPC method a caller can reach on a real manager (issue #10, "a fuzzer that stays").

For each request: the answer is a proper status code with a short one-line message, the manager
keeps serving, a refused request changes nothing (neither what the API shows nor the Raft
applied index), accepted input leaves nothing in the state that breaks the oracle's rules, and
the manager logs no traceback.

The default suite runs a few examples per method, derandomized (reproducible). `make fuzz`
runs many more with fresh randomness: FUZZ_EXAMPLES sets the examples per method, and a failure
prints the seed to replay it with `--hypothesis-seed`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import hints as fuzz_hints
from tests.fuzz import values
from tests.fuzz.target import (
    MAX_DETAILS,
    PROPER_CODES,
    Method,
    Outcome,
    Shown,
    Target,
    all_methods,
    describe,
    first_traceback,
)
from tests.integration.harness import Manager

pytestmark = pytest.mark.integration

LONG_RUN = "FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
METHODS = all_methods()
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # each example is a few RPCs to a real process on a shared machine
    derandomize=not LONG_RUN,  # the default suite is reproducible; `make fuzz` explores
    database=None,  # examples depend on the live manager's state: replaying them elsewhere misleads
    print_blob=LONG_RUN,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    # A heartbeat period of an hour: no node goes down while the fuzzer holds its sessions, so
    # the only writes are the fuzzer's own and the scheduling they cause.
    manager = Manager(root / "manager", start_args=["--heartbeat-period", "1h"])
    manager.root.mkdir()
    fuzz_target = Target(manager, root)
    try:
        manager.start()
        fuzz_target.start()
        yield fuzz_target
    finally:
        fuzz_target.close()
        manager.stop()


@pytest.fixture(scope="module")
def hints(target: Target) -> values.Hints:
    return fuzz_hints.build(target)


def check(target: Target, method: Method, payload: bytes, shown: object) -> None:
    """Send one request and hold the manager to every rule; `shown` is what a failure prints."""
    before = target.snapshot()
    log_offset = target.log_size()
    outcome = target.call(method, payload)

    def where() -> str:
        return f"{method} with {describe(shown)}"

    assert outcome.code in PROPER_CODES, f"{where()}: {outcome.code.name}: {outcome.details[:300]!r}"
    assert "\n" not in outcome.details, f"{where()}: a message of several lines: {outcome.details[:300]!r}"
    assert len(outcome.details) <= MAX_DETAILS, f"{where()}: a message of {len(outcome.details)} characters"
    try:
        target.assert_serving()
    except grpc.RpcError as exc:
        pytest.fail(f"after {where()} ({outcome.code.name}) the manager stopped: {exc.code().name}: {exc.details()}")
    after = target.snapshot()
    if outcome.refused:
        assert after.view == before.view, f"{where()} was refused ({outcome.code.name}) but the state changed: " + (
            _diff(before.view, after.view)
        )
        if after.applied_index != before.applied_index:
            _committed_nothing(target, method, payload, where, outcome)
    new = after.violations - before.violations
    if new:
        target.repair(new)
        shown_new = sorted(str(v) for v in new)[:5]
        pytest.fail(f"{where()} was accepted ({outcome.code.name}) and left in the state: {shown_new}")
    traceback = first_traceback(target.log_since(log_offset))
    assert not traceback, f"{where()} ({outcome.code.name}): the manager logged a traceback:\n{traceback}"


class CommittedRefusal(UserWarning):
    """A refusal that committed a Raft entry changing nothing: not wrong, but each costs a round
    of replication and a log entry; shown in pytest's warnings summary."""


def _committed_nothing(
    target: Target, method: Method, payload: bytes, where: Callable[[], str], outcome: Outcome
) -> None:
    """The applied index moved across a refusal: the scheduling an earlier request caused, or a
    refusal decided when the command was applied (a committed entry that changes nothing, e.g. a
    version conflict). Neither is a defect; a refusal that changes the state is. Replay the
    request on a quiet cluster and compare everything the API shows, tasks and tokens included."""
    committed = 0
    for attempt in range(3):
        quiet = target.settled_index()
        before = target.full_view()
        again = target.call(method, payload)
        if not again.refused:
            return  # the state moved on meanwhile and the request is now accepted: nothing to judge
        after = target.full_view()
        committed += target.snapshot().applied_index != quiet
        if after == before and attempt > 0:
            if committed == attempt + 1:  # each replay committed: not the background's doing
                note = f"{method} refused ({again.code.name}: {again.details[:120]!r}) with a commit"
                warnings.warn(note, CommittedRefusal, stacklevel=1)
            return
    pytest.fail(
        f"{where()} was refused ({outcome.code.name}: {outcome.details[:200]!r}) but changed the state: "
        + _diff(before, after)
    )


def _diff(before: dict[str, object], after: dict[str, object]) -> str:
    changed = [key for key in before if before[key] != after.get(key)]
    return "; ".join(f"{key}: {describe(before[key], 300)} -> {describe(after.get(key), 300)}" for key in changed)


@pytest.mark.parametrize("method", METHODS, ids=str)
@FUZZ_SETTINGS
@given(data=st.data())
def test_typed_requests(target: Target, hints: values.Hints, method: Method, data: st.DataObject) -> None:
    """Requests of the method's own type: plausible fields with a few hostile ones."""
    shown = data.draw(values.message(method.request, hints).map(Shown), label="request")
    check(target, method, shown.request.SerializeToString(), shown.request)


@FUZZ_SETTINGS
@given(method=st.sampled_from(METHODS), payload=values.MALFORMED)
def test_malformed_request_bytes(target: Target, method: Method, payload: bytes) -> None:
    """Bytes that are no valid message of the method's type (a broken or hostile client)."""
    check(target, method, payload, payload)
