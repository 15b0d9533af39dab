"""The Debian package (`make deb`, ADR 64): built once for the module, installed on this machine
with dpkg, run from /usr/bin/warren (its own venv under /opt/warren, no PYTHONPATH: the checkout's
code must not be what runs), then purged.

It installs into the real root, because dpkg does: /opt/warren, /usr/bin/warren and wrn, and
/lib/systemd/system/warren-*.service exist while this module runs. The rest of the suite is not
affected: it runs `python -m warren.cli.main` with the checkout on PYTHONPATH, and the `warren`
on PATH is the development install's (pyenv's shims come before /usr/bin). A Warren package
installed on this machine before the module runs is replaced, then purged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import REPO, Manager
from tests.integration.test_join import _marked
from tests.waiting import wait_for
from warren.version import LIBRARIES, git_commit

pytestmark = pytest.mark.integration

WARREN = Path("/usr/bin/warren")
PREFIX = Path("/opt/warren")
UNITS = [Path("/lib/systemd/system/warren-manager.service"), Path("/lib/systemd/system/warren-worker.service")]
LOCK = Path("/tmp/warren-deb-test.lock")  # two runs of this module on one machine take turns


def _run(
    *argv: str | Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env)


def _package_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WARREN_DEBUG")}
    env["GRPC_VERBOSITY"] = "NONE"
    return env


def _installed() -> bool:
    return "install ok installed" in _run("dpkg-query", "-W", "-f=${Status}", "warren").stdout


@dataclass(frozen=True)
class Built:
    package: Path
    commit: str  # the checkout's as the build started


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    if os.geteuid() != 0:
        pytest.skip("installing a Debian package needs root")
    work = tmp_path_factory.mktemp("deb")
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            commit = git_commit(REPO) or "unknown"
            env = {**os.environ, "DEB_OUT": str(work / "out"), "DEB_BUILD": str(work / "build")}
            built = _run(REPO / "cmd" / "build-deb.sh", timeout=300, env=env)
            assert built.returncode == 0, built.stderr[-4000:]
            package = Path(built.stdout.strip().splitlines()[-1])
            installed = _run("dpkg", "-i", package)
            if installed.returncode != 0:  # a missing dependency: apt-get brings it, or says why not
                fixed = _run("apt-get", "-o", "DPkg::Lock::Timeout=120", "-f", "install", "-y", timeout=300)
                assert fixed.returncode == 0, installed.stderr + fixed.stderr
            assert _installed()
            yield Built(package, commit)
        finally:
            if _installed():
                _run("dpkg", "--purge", "warren")


def test_the_package_installs_warren_and_units_that_systemd_accepts(deb: Built) -> None:
    assert os.readlink(WARREN) == str(PREFIX / "bin" / "warren")
    assert (PREFIX / "bin" / "warren").read_text().startswith(f"#!{PREFIX}/bin/python3\n")
    control = _run("dpkg-deb", "--field", deb.package, "Depends").stdout
    for dependency in ("python3 (>= 3.11)", "containerd", "runc", "nftables", "wireguard-go"):
        assert dependency in control
    # systemd need not run here: verify loads the units offline, and checks ExecStart's program.
    verified = _run("systemd-analyze", "verify", *UNITS)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


def test_the_installed_warren_installs_its_units_running_itself(deb: Built, tmp_path: Path) -> None:
    # The units are package data in the venv, and ExecStart names the console script that ran.
    done = _run(WARREN, "system", "install", "--role", "manager", "--root", tmp_path, env=_package_env())
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "etc/systemd/system/warren-manager.service"
    assert unit.read_text() == UNITS[0].read_text()
    assert "ExecStart=/usr/bin/warren cluster init --data-dir ${WARREN_DATA_DIR} $WARREN_FLAGS\n" in unit.read_text()


def test_the_installed_version_names_the_commit_it_was_built_from(deb: Built) -> None:
    shown = _run(WARREN, "--version", env=_package_env())
    assert shown.returncode == 0, shown.stderr
    assert f"commit: {deb.commit} (build)" in shown.stdout
    assert f"({PREFIX}/bin/python3)" in shown.stdout
    info = json.loads(_run(WARREN, "version", "--format", "json", env=_package_env()).stdout)
    assert info["commit_source"] == "build" and info["version"] != "unknown"
    assert sorted(info["libraries"]) == sorted(LIBRARIES) and "unknown" not in info["libraries"].values()


class PackagedManager(Manager):
    """A manager run by the package's /usr/bin/warren, with no PYTHONPATH pointing at the checkout."""

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("PYTHONPATH")
        return env


def test_a_one_node_cluster_from_the_package_runs_a_plain_process_service(deb: Built, tmp_path: Path) -> None:
    manager = PackagedManager(
        tmp_path,
        program=[str(WARREN)],
        agent_args=["--runtime", "exec"],
        start_args=["--heartbeat-period", "500ms"],
    )
    marker = f"warren-deb-{uuid.uuid4().hex}"
    try:
        manager.start()
        assert manager.process is not None
        # The package's venv runs it: its libraries are what the process mapped (its argv is
        # its title now, `warren: manager ...`, ADR 62).
        maps = Path(f"/proc/{manager.process.pid}/maps").read_text()
        assert f"{PREFIX}/lib/python3" in maps and f"{REPO}/" not in maps
        title = Path(f"/proc/{manager.process.pid}/cmdline").read_bytes()
        assert title.startswith(b"warren: manager "), title
        created = manager.cli("service", "create", "deb", "--image", "exec", "--", "sh", "-c", "sleep 600", marker)
        assert created.returncode == 0, created.stderr
        wait_for(lambda: _marked(marker.encode()), timeout=30, message="the service's process")
        removed = manager.cli("service", "rm", "deb")
        assert removed.returncode == 0, removed.stderr
        wait_for(lambda: not _marked(marker.encode()), timeout=30, message="the service's process to stop")
        manager.process.terminate()  # a clean stop, however loaded the machine (stop() kills after 10 s)
        assert manager.process.wait(timeout=90) == 0, manager.log()[-3000:]
    finally:
        manager.stop()
        for pid in _marked(marker.encode()):
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_purge_removes_every_file_of_the_package(deb: Built) -> None:
    listed = [Path(line) for line in _run("dpkg", "-L", "warren").stdout.splitlines() if line.startswith("/")]
    owned = [path for path in listed if path.is_relative_to(PREFIX) or path in (WARREN, *UNITS)]
    assert len(owned) > 100  # the venv's files were listed
    purged = _run("dpkg", "--purge", "warren")
    assert purged.returncode == 0, purged.stderr
    assert not _installed()
    assert not PREFIX.exists() and not WARREN.is_symlink() and not any(unit.exists() for unit in UNITS)
