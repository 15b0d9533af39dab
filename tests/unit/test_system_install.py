"""`warren system install|uninstall` into a temporary root (ADR 64): the units it writes pass
`systemd-analyze verify`, the flags file holds what was given, and bad flags are refused before
anything is written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from warren.cli import main, system
from warren.cli.system import ROLES, UNIT_DIR

REPO = Path(__file__).resolve().parents[2]


def _install(root: Path, role: str, *argv: str) -> int:
    return main.main(["system", "install", "--role", role, "--root", str(root), *argv])


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_the_shipped_units_are_the_package_data() -> None:
    # deploy/systemd is where operators look; warren/systemd is what the wheel and the .deb carry.
    assert (REPO / "deploy" / "systemd").resolve() == UNIT_DIR
    assert sorted(p.name for p in UNIT_DIR.glob("*.service")) == sorted(r.unit for r in ROLES.values())


@pytest.mark.parametrize("role", sorted(ROLES))
def test_install_writes_a_unit_systemd_accepts_and_the_flags_file(
    tmp_path: Path, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--runtime", "exec", "--wireguard", "off"]
    assert _install(tmp_path, role, "--data-dir", "/srv/w", "--executable", sys.executable, "--", *flags) == 0
    assert "systemctl not run" in capsys.readouterr().out
    name = ROLES[role].unit.removesuffix(".service")
    unit = tmp_path / "etc/systemd/system" / ROLES[role].unit
    assert _files(tmp_path) == [Path("etc/default") / name, Path("etc/systemd/system") / ROLES[role].unit]
    command = " ".join(ROLES[role].command)
    assert f"ExecStart={sys.executable} {command} --data-dir ${{WARREN_DATA_DIR}} $WARREN_FLAGS\n" in unit.read_text()
    env = (tmp_path / "etc/default" / name).read_text()
    assert "WARREN_DATA_DIR=/srv/w\n" in env and f'WARREN_FLAGS="{" ".join(flags)}"\n' in env
    assert "KillMode=process\n" in unit.read_text()  # tasks outlive an agent restart
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


def test_without_executable_the_unit_runs_this_warren(tmp_path: Path) -> None:
    assert _install(tmp_path, "worker") == 0
    unit = (tmp_path / "etc/systemd/system/warren-worker.service").read_text()
    # pytest runs no console script, so: this Python with -m (a console script names itself).
    assert f"ExecStart={sys.executable} -m warren.cli.main worker start --data-dir" in unit
    assert "WARREN_DATA_DIR=/var/lib/warren-worker\n" in (tmp_path / "etc/default/warren-worker").read_text()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--bogus"], "bad service flags for `warren cluster init`: unrecognized arguments: --bogus"),
        (["--runtime", "podman"], "argument --runtime: invalid choice"),
        (["--label", "a b"], "'a b' cannot go in a systemd unit"),
        (["--listen-addr", "$HOST:1"], "cannot go in a systemd unit"),
        (["--cgroup-parent", "/a%n"], "cannot go in a systemd unit"),
        (["--data-dir", "/x"], "give --data-dir to `system install`"),
        (["--data", "/x"], "give the data directory as --data-dir"),
        (["--force-new-cluster"], "--force-new-cluster cannot be a service flag"),
        (["--help"], "--help cannot be a service flag"),
    ],
)
def test_bad_flags_are_refused_and_nothing_is_written(
    tmp_path: Path, flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    role = "worker" if "--label" in flags else "manager"
    assert _install(tmp_path, role, "--", *flags) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert _files(tmp_path) == []


def test_a_missing_executable_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _install(tmp_path, "manager", "--executable", str(tmp_path / "nope")) == 2
    assert "is not an executable file" in capsys.readouterr().err
    assert _files(tmp_path) == []


def test_uninstall_removes_the_units_and_flags_files_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _install(tmp_path, "manager") == 0
    assert _install(tmp_path, "worker") == 0
    kept = tmp_path / "etc/default/other"
    kept.write_text("x")
    assert main.main(["system", "uninstall", "--role", "worker", "--root", str(tmp_path)]) == 0
    assert _files(tmp_path) == [
        Path("etc/default/other"),
        Path("etc/default/warren-manager"),
        Path("etc/systemd/system/warren-manager.service"),
    ]
    assert main.main(["system", "uninstall", "--root", str(tmp_path)]) == 0
    assert _files(tmp_path) == [Path("etc/default/other")]
    capsys.readouterr()
    assert main.main(["system", "uninstall", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "nothing to remove\n"


@pytest.fixture
def live_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """No --root, on a machine where systemd runs: the files go to SYSTEM_ROOT (here a temporary
    directory) and the systemctl calls are recorded instead of run."""
    calls: list[list[str]] = []
    monkeypatch.setattr(system, "SYSTEM_ROOT", tmp_path)
    monkeypatch.setattr(system, "systemd_running", lambda: True)
    monkeypatch.setattr(system, "_systemctl", lambda *argv: calls.append(list(argv)))
    return calls


def test_with_systemd_running_install_reloads_and_enables_and_uninstall_stops_first(
    live_root: list[list[str]], tmp_path: Path
) -> None:
    assert main.main(["system", "install", "--role", "worker"]) == 0
    assert main.main(["system", "install", "--role", "manager", "--enable"]) == 0
    assert live_root == [["daemon-reload"], ["daemon-reload"], ["enable", "warren-manager.service"]]
    assert (tmp_path / "etc/systemd/system/warren-manager.service").exists()
    live_root.clear()
    assert main.main(["system", "uninstall", "--role", "manager"]) == 0
    assert live_root == [["disable", "--now", "warren-manager.service"], ["daemon-reload"]]
    assert not (tmp_path / "etc/systemd/system/warren-manager.service").exists()


def test_without_systemd_the_files_are_written_and_it_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(system, "SYSTEM_ROOT", tmp_path)
    monkeypatch.setattr(system, "systemd_running", lambda: False)
    assert main.main(["system", "install", "--role", "worker"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "systemd is not running here: files written, run `systemctl daemon-reload` once it does"
    assert (tmp_path / "etc/systemd/system/warren-worker.service").exists()


def test_a_failing_systemctl_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(system, "SYSTEM_ROOT", tmp_path)
    monkeypatch.setattr(system, "systemd_running", lambda: True)
    monkeypatch.setenv("PATH", str(tmp_path))  # no systemctl at all
    assert main.main(["system", "install", "--role", "worker", "--executable", sys.executable]) == 1
    err = capsys.readouterr().err
    assert err.startswith("warren: systemctl daemon-reload failed: ") and err.count("\n") == 1
