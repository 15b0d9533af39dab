"""`warren --version` and `warren version` (ADR 64): the commit the build recorded, else the
checkout's, else "unknown", and never a failure."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from warren import version
from warren.cli import main


def _git(repo: Path, *argv: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout holding a package directory `pkg`, with one commit."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return repo


def test_the_recorded_commit_wins_over_git(checkout: Path) -> None:
    (checkout / "pkg" / "BUILD_COMMIT").write_text("0123abcd\n")
    assert version.commit(checkout / "pkg") == ("0123abcd", "build")


def test_a_checkout_gives_its_head_and_says_when_tracked_files_differ(checkout: Path) -> None:
    head = _git(checkout, "rev-parse", "HEAD")
    assert version.commit(checkout / "pkg") == (head, "git")
    (checkout / "pkg" / "mod.py").write_text("x = 2\n")
    assert version.commit(checkout / "pkg") == (f"{head}-dirty", "git")


def test_a_package_deeper_inside_another_repository_is_unknown(checkout: Path) -> None:
    # An installed package under a pyenv tree (itself a git repository) must not report pyenv's commit.
    deep = checkout / "lib" / "site-packages" / "pkg"
    deep.mkdir(parents=True)
    assert version.commit(deep) == ("unknown", "unknown")


def test_no_git_on_path_is_unknown_not_an_error(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert version.commit(checkout / "pkg") == ("unknown", "unknown")


def test_unreadable_metadata_is_unknown() -> None:
    assert version.package_version("no-such-distribution-here") == "unknown"


def test_version_flag_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["--version"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("warren ") and "\ncommit: " in text and "\npython: " in text
    for library in version.LIBRARIES:
        assert f"  {library} " in text
    assert main.main(["version", "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"version", "commit", "commit_source", "python", "python_executable", "libraries"}
    assert list(info["libraries"]) == list(version.LIBRARIES)


def test_version_wins_over_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["--timeout", "3", "--version", "node", "ls"]) == 0
    assert capsys.readouterr().out.startswith("warren ")
