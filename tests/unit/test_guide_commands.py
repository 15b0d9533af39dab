"""Every `warren` command line in the operator's guide parses with the real command-line parser,
so that a renamed flag or command cannot leave the guide behind (docs/guide/README.md). The
blocks marked `sh tested` are also run, by tests/integration/test_guide.py."""

from __future__ import annotations

import contextlib
import io

import pytest

from tests.fixtures import guide
from warren.cli.main import parse_args

SHELL_BLOCKS = [block for page in guide.pages() for block in guide.blocks(page) if block.is_shell]


def test_the_guide_lists_its_pages_and_has_shell_blocks() -> None:
    assert guide.pages()[:2] == ["getting-started.md", "concepts.md"]
    assert all((guide.GUIDE / page).is_file() for page in guide.pages())
    assert sum(block.tested for block in SHELL_BLOCKS) >= 10
    assert sum(block.background for block in SHELL_BLOCKS) == 1


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=lambda block: block.where)
def test_every_warren_command_in_the_guide_parses(block: guide.Block) -> None:
    for argv in guide.warren_commands(block):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            try:
                parse_args(argv)
            except SystemExit as exc:
                command = " ".join(argv)
                pytest.fail(f"{block.where}: `warren {command}` does not parse ({exc.code}): {stderr.getvalue()}")


def test_a_wrong_flag_is_caught() -> None:
    """The check itself can fail: a block with a flag that does not exist."""
    bad = guide.Block("x.md", 1, ("sh",), "warren service create web --imagee busybox\n")
    [argv] = guide.warren_commands(bad)
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        parse_args(argv)


def test_commands_are_cut_at_pipes_lists_and_comments() -> None:
    block = guide.Block(
        "x.md",
        1,
        ("sh",),
        "echo x | warren secret create s - # a comment\nwarren a \\\n  b && warren c; true\nwarren d $(warren e -q)\n",
    )
    assert guide.warren_commands(block) == [
        ["secret", "create", "s", "-"],
        ["a", "b"],
        ["c"],
        ["d", "WORD"],
        ["e", "-q"],
    ]


def test_expected_output_lines_match_in_order_with_wildcards() -> None:
    output = "ID  NAME\nabc  ticker.1  vm   running 2s ago\nxyz ticker.2 vm running\n"
    assert guide.unmatched_output(["ID NAME", "… ticker.1 … running …", "… ticker.2 …"], output) is None
    assert guide.unmatched_output(["… ticker.2 …", "… ticker.1 …"], output) == "… ticker.1 …"
    assert guide.unmatched_output(["… ticker.3 …"], output) == "… ticker.3 …"
