"""output.per_name: the loop every `rm a b c` shares."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from warren.cli import output
from warren.cli.errors import CliError, Exit


def _remove_unless(missing: set[str], in_use: set[str]) -> tuple[list[str], Callable[[str], None]]:
    """An action failing like the manager would, recording what it was asked to do."""
    asked: list[str] = []

    def action(name: str) -> None:
        asked.append(name)
        if name in missing:
            raise CliError(f"{name} not found", Exit.NOT_FOUND)
        if name in in_use:
            raise CliError(f"{name} is in use", Exit.CONFLICT)

    return asked, action


def test_failures_are_reported_and_the_rest_still_run(capsys: pytest.CaptureFixture[str]) -> None:
    asked, action = _remove_unless(missing={"b"}, in_use={"d"})
    code = output.per_name(["a", "b", "c", "d", "e"], action)
    out, err = capsys.readouterr()
    assert asked == ["a", "b", "c", "d", "e"]
    assert out.split() == ["a", "c", "e"]
    assert err.splitlines() == ["warren: b not found", "warren: d is in use"]
    assert code == Exit.CONFLICT  # the last failure's


def test_all_done_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    _, action = _remove_unless(missing=set(), in_use=set())
    assert output.per_name(["a", "b"], action) == 0
    assert capsys.readouterr().out.split() == ["a", "b"]


@pytest.mark.parametrize("code", [Exit.UNAVAILABLE, Exit.CREDENTIALS])
def test_no_manager_stops_at_once(code: Exit, capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[str] = []

    def action(name: str) -> None:
        asked.append(name)
        raise CliError("no manager reachable", code)

    with pytest.raises(CliError) as raised:
        output.per_name(["a", "b"], action)
    assert raised.value.code == code
    assert asked == ["a"]
    assert capsys.readouterr().out == ""
