"""warren.text: numbers read from operator input, sizes shown to operators."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from warren.text import ascii_int, format_size


@given(st.integers(min_value=0, max_value=10**19 - 1), st.integers(min_value=0, max_value=40))
def test_ascii_int_reads_any_number_whatever_its_leading_zeros(value: int, zeros: int) -> None:
    assert ascii_int("0" * zeros + str(value)) == value


def test_ascii_int_refuses_what_int_would_take_from_other_scripts() -> None:
    assert ascii_int("²") is None
    assert ascii_int("٩") is None
    assert ascii_int("") is None
    assert ascii_int("-1") is None
    assert ascii_int("1" * 5000) == 10**19  # beyond every bound Warren checks, never a ValueError


def test_format_size_is_what_the_cli_has_always_printed() -> None:
    assert format_size(8 << 30) == "8GiB"
    assert format_size(1536) == "1.5KiB"
    assert format_size(12) == "12B"
