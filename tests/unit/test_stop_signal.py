"""The service's stop signal: validation, CLI flag, wire conversion, old state, the controller."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tests.unit.agent_fakes import make_task
from tests.unit.test_cli_parse import create_spec, updated
from warren.agent.controller import container_spec, stop_signal
from warren.api import specconvert
from warren.model import ServiceSpec
from warren.validate import ValidationError, check_spec, signal_number


@pytest.mark.parametrize(
    ("text", "number"),
    [("SIGTERM", 15), ("TERM", 15), ("sigquit", 3), (" quit ", 3), ("SIGKILL", 9), ("1", 1), ("64", 64),
     ("40", 40), ("SIGUSR1", 10), ("SIGRTMIN", 34)],
)  # fmt: skip
def test_signal_names_and_numbers_are_accepted(text: str, number: int) -> None:
    assert signal_number(text) == number
    check_spec(ServiceSpec(name="a", image="x", stop_signal=text))


@pytest.mark.parametrize("text", ["SIGNOPE", "0", "65", "-9", "9.0", "SIG", "   ", "SIGTERM;rm", "15x"])
def test_other_signals_are_refused_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValidationError, match=r"invalid stop signal .*SIGTERM, TERM or SIGQUIT.*1 to 64"):
        signal_number(text)
    with pytest.raises(ValidationError, match="invalid stop signal"):
        check_spec(ServiceSpec(name="a", image="x", stop_signal=text))


def test_empty_means_sigterm() -> None:
    check_spec(ServiceSpec(name="a", image="x"))
    assert stop_signal(make_task()) == "SIGTERM"
    assert stop_signal(make_task(stop_signal="SIGQUIT")) == "SIGQUIT"
    assert container_spec(make_task(stop_signal="2"), Path("/l")).stop_signal == "2"


def test_the_spec_round_trips_through_the_wire() -> None:
    spec = ServiceSpec(name="a", image="x", stop_signal="SIGQUIT")
    msg = specconvert.spec_to_pb(spec)
    assert msg.stop_signal == "SIGQUIT"
    assert specconvert.spec_from_pb(msg) == spec
    assert specconvert.spec_from_pb(specconvert.spec_to_pb(ServiceSpec(name="a", image="x"))).stop_signal == ""


def test_state_written_before_the_field_existed_still_decodes() -> None:
    old = msgspec.msgpack.encode({"name": "a", "image": "x", "stop_grace_period": 3.0})
    spec = msgspec.msgpack.decode(old, type=ServiceSpec)
    assert (spec.stop_signal, spec.stop_grace_period) == ("", 3.0)


def test_cli_flag_is_spelled_like_docker_and_can_be_updated() -> None:
    assert create_spec("web", "--image", "x").stop_signal == ""
    assert create_spec("web", "--image", "x", "--stop-signal", "quit").stop_signal == "SIGQUIT"
    assert create_spec("web", "--image", "x", "--stop-signal", "9").stop_signal == "9"
    spec = create_spec("web", "--image", "x", "--stop-signal", "SIGINT")
    assert updated(spec, "--stop-signal", "TERM").stop_signal == "SIGTERM"
    assert updated(spec, "--replicas", "2").stop_signal == "SIGINT"
