"""The suite's Hypothesis profile (tests/conftest.py): a property test must not fail on a busy
machine because one example took longer than a wall-clock deadline (reported twice for
test_input_validation.py::test_a_control_character_anywhere_is_refused at load average 30)."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SLOWER_THAN_THE_DEFAULT_DEADLINE = 0.25  # seconds; Hypothesis's default deadline is 200 ms


def test_the_default_profile_has_no_deadline_and_tolerates_slow_generation() -> None:
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check


def test_an_example_as_slow_as_on_a_loaded_machine_passes_under_its_own_settings() -> None:
    """Settings a test gives itself (the number of examples) inherit the profile's deadline."""

    @settings(max_examples=1, database=None)
    @given(st.integers())
    def slow_property(value: int) -> None:
        time.sleep(SLOWER_THAN_THE_DEFAULT_DEADLINE)  # stands in for a starved CPU, not a wait
        assert isinstance(value, int)

    slow_property()
