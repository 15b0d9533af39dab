"""Private registries (issue #13) with real parts: Debian's docker-registry over HTTPS with a
certificate from a test CA, once with htpasswd (basic) auth and once with bearer-token auth
against the token-server fixture (tests/fixtures/registry_auth.py).

- Our registry client, and the manager's digest lookup (ADR 34) over it, need the CA
  (`--registry-ca`) and the login: without the CA the TLS error says how to give it; without
  a login, or with a wrong one, the error says access was denied and how to log in.
- A pull into a real containerd works with both, and fails with a clear, permanent message
  without credentials (what `service ps` then shows).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.containerd import ContainerdDaemon
from tests.fixtures.images import BusyboxImage
from tests.fixtures.plugin import unavailable
from tests.fixtures.registry import LocalRegistry, missing_reason
from tests.fixtures.registry_auth import TestCA, TokenServer
from warren.agent.runtime import RuntimeFailure
from warren.manager.imagepin import LookupFailed, RegistryDigests
from warren.runtime.containerd.driver import ContainerdRuntime
from warren.runtime.containerd.reference import parse_reference
from warren.runtime.containerd.registry import Credentials, RegistryClient, RegistryError, StaticCredentials

pytestmark = pytest.mark.integration

USERS = {"alice": "s3cret-A"}
ALICE = Credentials("alice", "s3cret-A")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("registry-ca"))


@pytest.fixture(scope="module")
def basic_registry(
    ca: TestCA, busybox_image: BusyboxImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRegistry]:
    """HTTPS (test CA) with htpasswd auth, holding `app:1`."""
    unavailable(missing_reason())
    _, _, tls = ca.issue("basic-registry")
    registry = LocalRegistry(tmp_path_factory.mktemp("basic-reg"), tls=tls, ca_pem=ca.ca_pem, users=USERS)
    try:
        registry.start()
        registry.push(busybox_image.archive, "app:1")
        yield registry
    finally:
        registry.close()


@pytest.fixture(scope="module")
def token_registry(
    ca: TestCA, busybox_image: BusyboxImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalRegistry, TokenServer]]:
    """HTTPS (test CA) with bearer-token auth against the token-server fixture, holding `app:1`."""
    unavailable(missing_reason())
    _, _, tls = ca.issue("token-registry")
    token = TokenServer(ca, USERS)
    registry = LocalRegistry(tmp_path_factory.mktemp("token-reg"), tls=tls, ca_pem=ca.ca_pem, users=USERS, token=token)
    try:
        registry.start()
        registry.push(busybox_image.archive, "app:1")
        yield registry, token
    finally:
        registry.close()
        token.close()


def _client(registry: LocalRegistry, creds: Credentials | None, ca: Path | None) -> RegistryClient:
    logins = StaticCredentials({registry.host: creds} if creds else {})
    return RegistryClient(credentials=logins, ca_files={registry.host: ca} if ca else None, timeout=10)


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_client_needs_the_ca_and_the_login(
    kind: str,
    basic_registry: LocalRegistry,
    token_registry: tuple[LocalRegistry, TokenServer],
    ca: TestCA,
    tmp_path: Path,
) -> None:
    other_ca = TestCA(tmp_path / "other-ca", "another CA")
    registry = basic_registry if kind == "basic" else token_registry[0]
    ref = parse_reference(f"{registry.host}/app:1")

    media_type, body, digest = _client(registry, ALICE, ca.ca_pem).get_manifest(ref)
    assert digest.startswith("sha256:") and b"layers" in body, media_type

    with pytest.raises(RegistryError) as untrusted:
        _client(registry, ALICE, other_ca.ca_pem).get_manifest(ref)
    assert "not trusted" in untrusted.value.message and "--registry-ca" in untrusted.value.message
    with pytest.raises(RegistryError) as plain:  # loopback without a CA: plain HTTP, as before
        _client(registry, ALICE, None).get_manifest(ref)
    assert f"--registry-ca {registry.host}=FILE" in plain.value.message

    with pytest.raises(RegistryError) as anonymous:
        _client(registry, None, ca.ca_pem).get_manifest(ref)
    assert anonymous.value.permanent
    assert f"pull access denied for {ref}" in anonymous.value.message
    assert f"warren registry login {registry.host}" in anonymous.value.message

    with pytest.raises(RegistryError) as refused:
        _client(registry, Credentials("alice", "wrong"), ca.ca_pem).get_manifest(ref)
    assert refused.value.permanent and "credentials refused" in refused.value.message
    assert "wrong" not in refused.value.message
    # A token or header cached for alice's right password is not reused with a wrong one.
    client = _client(registry, ALICE, ca.ca_pem)
    client.get_manifest(ref)
    with pytest.raises(RegistryError, match="credentials refused"):
        client.with_login(registry.host, Credentials("alice", "wrong")).get_manifest(ref)

    if kind == "token":  # the token really came from the realm, for alice, for this repository
        assert ("alice", "repository:app:pull") in token_registry[1].requests


def test_manager_digest_lookup_uses_the_ca_and_the_login(
    basic_registry: LocalRegistry, ca: TestCA, busybox_image: BusyboxImage
) -> None:
    image = f"{basic_registry.host}/app:1"
    lookup = RegistryDigests(
        credentials=StaticCredentials({basic_registry.host: ALICE}), ca_files={basic_registry.host: ca.ca_pem}
    )
    _, _, digest = _client(basic_registry, ALICE, ca.ca_pem).get_manifest(parse_reference(image))
    assert lookup.digest(image) == digest
    with pytest.raises(LookupFailed, match="pull access denied"):
        RegistryDigests(ca_files={basic_registry.host: ca.ca_pem}).digest(image)


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_containerd_pull_with_and_without_login(
    kind: str,
    basic_registry: LocalRegistry,
    token_registry: tuple[LocalRegistry, TokenServer],
    ca: TestCA,
    containerd: ContainerdDaemon,
    busybox_image: BusyboxImage,
    tmp_path: Path,
) -> None:
    registry = basic_registry if kind == "basic" else token_registry[0]
    logins: dict[str, Credentials] = {}
    runtime = ContainerdRuntime(
        containerd.socket,
        tmp_path / "state",
        credentials=StaticCredentials(logins),
        registry_cas={registry.host: ca.ca_pem},
        cgroup_parent=containerd.cgroup_parent,
    )
    try:
        image = f"{registry.host}/app:1"
        with pytest.raises(RuntimeFailure) as denied:
            runtime.images.ensure(image)
        assert denied.value.permanent and "pull access denied" in denied.value.message
        logins[registry.host] = ALICE  # the store is read at each pull: a login made since counts
        info = runtime.images.ensure(image)
        assert info.diff_ids == busybox_image.diff_ids
    finally:
        runtime.close()
