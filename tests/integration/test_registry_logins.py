"""Registry logins end to end (issue #13, ADR 43): the one-node containerd rig
(tests/fixtures/deploy_rig.py) with a second, private registry in its namespace: HTTPS with a
certificate from a test CA and htpasswd auth (Debian's docker-registry), given to the node with
`cluster init --registry-ca HOST=FILE`.

- Without a login, the manager cannot pin the image (it says why) and the task fails its pull
  with a clear message that `service ps` shows.
- After `warren registry login HOST -u USER --password-stdin`, the next task pulls and runs, and
  `service update --force` pins the image to its digest: the manager's lookup used the login
  and the CA too. `registry ls` shows the host and the user, never the password.
- The password is on no disk of the node: not in the manager's state or Raft journal (LMDB), not
  in the agent's cache, not in any log.
- Bad input at every new command: one line, exit 2 (3 for a logout of an unknown registry).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import deploy_rig as _deploy_rig
from tests.fixtures.deploy_rig import DeployRig
from tests.fixtures.images import WEB_PORT
from tests.fixtures.on_disk import files_holding
from tests.fixtures.plugin import unavailable
from tests.fixtures.registry import LocalRegistry
from tests.fixtures.registry_auth import TestCA
from tests.integration.harness import wait_for

pytestmark = pytest.mark.integration

USER = "alice"
PASSWORD = "pw-MARKER-7c1e5a90d2"  # grepped for on the node's disks


class PrivateRig:
    def __init__(self, root: Path) -> None:
        self.ca = TestCA(root / "ca")
        _, _, tls = self.ca.issue("private-registry")
        self.rig = DeployRig(root / "rig", before_node=self._start_private)
        self.private = LocalRegistry(
            root / "private", netns=self.rig.netns, tls=tls, ca_pem=self.ca.ca_pem, users={USER: PASSWORD}
        )
        self.rig._init_args = ("--registry-ca", f"{self.private.host}={self.ca.ca_pem}")

    def _start_private(self) -> None:
        self.private.start()
        for tag in ("v1", "v2"):  # v1 for the cluster's login, v2 (never pulled before) for a service's own
            self.private.push(self.rig.images[tag].archive, f"web:{tag}")

    @property
    def image(self) -> str:
        return f"{self.private.host}/web:v1"

    def cli(self, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        """`warren ARGS` in the rig's namespace, with `stdin` and extra environment variables."""
        argv = ["nsenter", f"--net=/run/netns/{self.rig.netns}", sys.executable, "-m", "warren.cli.main", *args]
        environ = {**self.rig.cluster.env, **env}
        return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=60, input=stdin)

    def close(self) -> None:
        try:
            self.rig.close()
        finally:
            self.private.close()


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRig]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and containerd need root")
    unavailable(_deploy_rig.missing_reason())
    rig = PrivateRig(tmp_path_factory.mktemp("private-rig"))
    try:
        rig.rig.start()
        yield rig
    finally:
        rig.close()


@pytest.fixture(autouse=True)
def _clean_slate(private: PrivateRig) -> Iterator[None]:
    """Each test starts with no service and no login, whatever the one before left behind."""
    yield
    for service in private.rig.services():
        private.cli("service", "rm", service)
    private.cli("registry", "logout", private.private.host)


def _task_errors(rig: DeployRig, service: str) -> list[str]:
    return [f"{t['state']}: {t.get('error') or t.get('message')}" for t in rig.tasks(service, history=True)]


def test_a_private_registry_needs_the_login_and_the_password_stays_off_disk(private: PrivateRig) -> None:
    rig = private.rig
    created = private.cli(
        *("service", "create", "priv", "--image", private.image, "--restart-delay", "1s"),
        *("--stop-grace-period", "2s", "--detach"),
    )
    assert created.returncode == 0, created.stderr
    # (the reason is "pull access denied", or, on a machine too loaded to answer in 5 s, a timeout)
    assert "could not be pinned" in created.stderr, created.stderr

    denied = f"pull access denied for {private.image}: registry {private.private.host} wants credentials"
    wait_for(
        lambda: any(denied in e for e in _task_errors(rig, "priv")),
        timeout=60,
        interval=0.5,
        message=f"a task of priv failing with {denied!r}: {_task_errors(rig, 'priv')}\n{rig.logs()}",
    )
    ps = private.cli("service", "ps", "priv", "--all")
    assert denied in ps.stdout and f"warren registry login {private.private.host}" in ps.stdout, ps.stdout

    login = private.cli(
        "registry", "login", private.private.host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert login.returncode == 0, login.stderr
    assert PASSWORD not in login.stdout + login.stderr
    listed = private.cli("registry", "ls", "--format", "json")
    assert [(i["host"], i["username"]) for i in json.loads(listed.stdout)] == [(private.private.host, USER)]
    assert PASSWORD not in listed.stdout and PASSWORD not in private.cli("registry", "ls").stdout

    wait_for(
        lambda: any(t["state"] == "running" for t in rig.tasks("priv")),
        timeout=90,
        interval=0.5,
        message=f"a task of priv running after the login: {_task_errors(rig, 'priv')}\n{rig.logs()}",
    )
    running = next(t for t in rig.tasks("priv") if t["state"] == "running")
    assert rig.fetch(f"http://{running['overlay_address']}:{WEB_PORT}/") is not None

    # The manager's digest lookup now gets through the CA and the login: --force pins the image.
    inspected = _pinned(private, "priv")
    assert inspected["spec"]["image"].startswith(private.image + "@sha256:"), inspected["spec"]["image"]
    assert PASSWORD not in json.dumps(inspected)

    # On no disk of the node: the manager's LMDB (state and Raft journal), the agent's cache,
    # the logs, containerd's root. The registry's own htpasswd holds a bcrypt hash only.
    marker = PASSWORD.encode()
    assert files_holding(marker, [rig.root, private.private.base, rig.daemon.base]) == set()

    assert private.cli("registry", "logout", private.private.host).returncode == 0
    assert json.loads(private.cli("registry", "ls", "--format", "json").stdout) == []
    assert private.cli("service", "rm", "priv").returncode == 0


def test_with_registry_auth_gives_one_service_the_callers_docker_login(private: PrivateRig, tmp_path: Path) -> None:
    """No cluster login: the service created with the caller's Docker login pulls, and its login
    goes with it."""
    rig = private.rig
    assert json.loads(private.cli("registry", "ls", "--format", "json").stdout) == []
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {private.private.host: {"auth": encoded}}}))
    image = f"{private.private.host}/web:v2"
    created = private.cli(
        *("service", "create", "own", "--image", image, "--with-registry-auth"),
        *("--stop-grace-period", "2s", "--detach"),
        DOCKER_CONFIG=str(tmp_path),
    )
    assert created.returncode == 0 and "pull access denied" not in created.stderr, created.stderr
    _pinned(private, "own", "--with-registry-auth", DOCKER_CONFIG=str(tmp_path))
    listed = json.loads(private.cli("registry", "ls", "--format", "json").stdout)
    assert [(i["host"], i["username"], i["service"]) for i in listed] == [(private.private.host, USER, "own")]
    wait_for(
        lambda: any(t["state"] == "running" for t in rig.tasks("own")),
        timeout=90,
        interval=0.5,
        message=f"a task of own running with its own login: {_task_errors(rig, 'own')}\n{rig.logs()}",
    )
    assert private.cli("service", "rm", "own").returncode == 0
    assert json.loads(private.cli("registry", "ls", "--format", "json").stdout) == []


def _pinned(private: PrivateRig, service: str, *flags: str, **env: str) -> dict:
    """`service inspect` once the service's image is pinned, forcing a new lookup while it is not.
    A lookup refused by the registry fails at once; one that timed out (a loaded machine: the
    manager gives the registry 5 s, ADR 34) is tried again, a few times."""
    why = ""
    for _ in range(4):
        inspected = json.loads(private.cli("service", "inspect", service, "--format", "json").stdout)
        if "@sha256:" in inspected["spec"]["image"]:
            return dict(inspected)
        forced = private.cli("service", "update", service, "--force", "--detach", *flags, **env)
        assert forced.returncode == 0, forced.stderr
        assert "pull access denied" not in forced.stderr and "not trusted" not in forced.stderr, forced.stderr
        why = forced.stderr
    raise AssertionError(f"{service}: its image was never pinned: {why}")


def test_bad_input_at_every_registry_command(private: PrivateRig) -> None:
    host = private.private.host
    cases = [
        (("registry", "login", "bad host", "-u", USER, "--password-stdin"), PASSWORD, 2, "invalid registry"),
        (("registry", "login", host, "--password-stdin"), PASSWORD, 2, "a username is required"),
        (("registry", "login", host, "-u", "a:b", "--password-stdin"), PASSWORD, 2, "invalid username"),
        (("registry", "login", host, "-u", USER, "--password-stdin"), "", 2, "the password is empty"),
        (("registry", "login", host, "-u", USER), "", 2, "--password-stdin"),
        (("registry", "logout", "bad/host"), "", 2, "invalid registry"),
        (("registry", "logout", "never.example:5000"), "", 3, "not logged in"),
        (("service", "create", "x", "--image", "App:1"), "", 2, "invalid image reference"),
    ]
    for args, stdin, code, message in cases:
        done = private.cli(*args, stdin=stdin)
        assert (done.returncode, done.stderr.count("\n")) == (code, 1), (args, done.returncode, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    no_config = str(private.rig.root / "no-docker-config")
    done = private.cli(
        "service", "create", "y", "--image", private.image, "--with-registry-auth", DOCKER_CONFIG=no_config
    )
    assert done.returncode == 2 and "--with-registry-auth: no login" in done.stderr, done.stderr
    assert json.loads(private.cli("registry", "ls", "--format", "json").stdout) == []
