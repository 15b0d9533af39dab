"""Autolock's key handling (ADR 44): on, off, rotate, and refusing a wrong or damaged key."""

from __future__ import annotations

import msgspec
import pytest

from warren import commands, pki
from warren.manager import autolock, cakey, secretkeys
from warren.manager.autolock import UnlockKeyError
from warren.model import ClusterInfo
from warren.state import ClusterState, Put

RAFT_SECRET = "raft-secret-for-tests"


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create("cluster-under-test")


def cluster_with_secrets(ca: pki.CertificateAuthority) -> ClusterInfo:
    kek, dek = secretkeys.new_key_pair(secretkeys.root_key(RAFT_SECRET))
    return ClusterInfo(
        "c",
        0.0,
        ca.cert_pem.decode(),
        cakey.wrap(ca.key_pem, RAFT_SECRET),
        "w",
        "m",
        kek_wrapped=kek,
        dek_wrapped=dek,
    )


def applied(cluster: ClusterInfo, keys: autolock.RootedKeys) -> ClusterInfo:
    return msgspec.structs.replace(
        cluster, kek_wrapped=keys.kek_wrapped, dek_wrapped=keys.dek_wrapped, ca_key_pem=keys.ca_key_pem
    )


def test_unlock_keys_are_fresh_and_parse() -> None:
    first, second = autolock.new_unlock_key(), autolock.new_unlock_key()
    assert first != second
    assert first.startswith(autolock.UNLOCK_KEY_PREFIX)
    assert len(autolock.parse_unlock_key(first + "\n")) == 32  # a pasted newline is fine


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("SWMKEY-1-abc", "not an unlock key"),
        (autolock.UNLOCK_KEY_PREFIX + "!!!!", "not base64"),
        (autolock.UNLOCK_KEY_PREFIX + "AAAA", "wrong length"),
    ],
)
def test_malformed_unlock_keys_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(UnlockKeyError, match=reason):
        autolock.parse_unlock_key(text)


def test_lock_moves_the_ca_key_and_kek_off_the_raft_secret(ca: pki.CertificateAuthority) -> None:
    cluster = cluster_with_secrets(ca)
    dek = secretkeys.data_key(secretkeys.root_key(RAFT_SECRET), cluster.kek_wrapped, cluster.dek_wrapped)
    key = autolock.new_unlock_key()
    locked = applied(cluster, autolock.lock(cluster, RAFT_SECRET, key))

    assert autolock.is_locked(locked) and not autolock.is_locked(cluster)
    assert "PRIVATE KEY" not in locked.ca_key_pem
    # The Raft secret alone no longer opens anything.
    with pytest.raises(secretkeys.SecretKeyError):
        secretkeys.data_key(secretkeys.root_key(RAFT_SECRET), locked.kek_wrapped, locked.dek_wrapped)
    with pytest.raises(pki.PkiError):
        pki.CertificateAuthority.from_pem(locked.ca_cert_pem, cakey.unwrap(locked.ca_key_pem, RAFT_SECRET))
    # The unlock key does, and the DEK (so every sealed secret) is unchanged.
    assert secretkeys.data_key(autolock.unlock_root(key), locked.kek_wrapped, locked.dek_wrapped) == dek
    assert autolock.ca_key(locked, autolock.unlocked_kek(locked, key)) == ca.key_pem
    # A manager that held the KEK before the lock keeps signing: the CA key is under that KEK.
    held = secretkeys.open_kek(secretkeys.root_key(RAFT_SECRET), cluster.kek_wrapped)
    assert autolock.unlocked_kek(locked, key) == held
    assert autolock.ca_key(locked, held) == ca.key_pem


def test_a_wrong_unlock_key_is_refused(ca: pki.CertificateAuthority) -> None:
    cluster = cluster_with_secrets(ca)
    locked = applied(cluster, autolock.lock(cluster, RAFT_SECRET, autolock.new_unlock_key()))
    wrong = autolock.new_unlock_key()
    with pytest.raises(UnlockKeyError, match="wrong unlock key"):
        autolock.unlocked_kek(locked, wrong)
    with pytest.raises(UnlockKeyError, match="wrong unlock key"):
        autolock.unlock(locked, RAFT_SECRET, wrong)
    with pytest.raises(UnlockKeyError, match="wrong unlock key"):
        autolock.rotate(locked, wrong, autolock.new_unlock_key())


def test_rotate_puts_the_same_keys_under_the_new_unlock_key(ca: pki.CertificateAuthority) -> None:
    cluster = cluster_with_secrets(ca)
    old, new = autolock.new_unlock_key(), autolock.new_unlock_key()
    locked = applied(cluster, autolock.lock(cluster, RAFT_SECRET, old))
    dek = secretkeys.data_key(autolock.unlock_root(old), locked.kek_wrapped, locked.dek_wrapped)
    rotated = applied(locked, autolock.rotate(locked, old, new))

    assert rotated.ca_key_pem == locked.ca_key_pem and rotated.dek_wrapped == locked.dek_wrapped
    assert autolock.ca_key(rotated, autolock.unlocked_kek(rotated, new)) == ca.key_pem
    assert secretkeys.data_key(autolock.unlock_root(new), rotated.kek_wrapped, rotated.dek_wrapped) == dek
    with pytest.raises(UnlockKeyError, match="wrong unlock key"):
        autolock.unlocked_kek(rotated, old)


def test_turning_autolock_off_goes_back_to_the_raft_secret(ca: pki.CertificateAuthority) -> None:
    cluster = cluster_with_secrets(ca)
    key = autolock.new_unlock_key()
    locked = applied(cluster, autolock.lock(cluster, RAFT_SECRET, key))
    unlocked = applied(locked, autolock.unlock(locked, RAFT_SECRET, key))

    assert not autolock.is_locked(unlocked)
    assert cakey.is_wrapped(unlocked.ca_key_pem)
    assert cakey.unwrap(unlocked.ca_key_pem, RAFT_SECRET) == ca.key_pem
    root = secretkeys.root_key(RAFT_SECRET)
    assert secretkeys.data_key(root, unlocked.kek_wrapped, unlocked.dek_wrapped) == secretkeys.data_key(
        root, cluster.kek_wrapped, cluster.dek_wrapped
    )
    with pytest.raises(UnlockKeyError, match="already off"):
        autolock.unlock(unlocked, RAFT_SECRET, key)
    with pytest.raises(UnlockKeyError, match="already on"):
        autolock.lock(locked, RAFT_SECRET, key)


def test_locking_a_cluster_without_secrets_yet_makes_its_key_pair(ca: pki.CertificateAuthority) -> None:
    cluster = msgspec.structs.replace(cluster_with_secrets(ca), kek_wrapped="", dek_wrapped="")
    key = autolock.new_unlock_key()
    locked = applied(cluster, autolock.lock(cluster, RAFT_SECRET, key))
    assert locked.kek_wrapped and locked.dek_wrapped
    assert autolock.ca_key(locked, autolock.unlocked_kek(locked, key)) == ca.key_pem
    assert len(secretkeys.data_key(autolock.unlock_root(key), locked.kek_wrapped, locked.dek_wrapped)) == 32


def test_nothing_to_unlock_while_autolock_is_off(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(UnlockKeyError, match="autolock is off"):
        autolock.unlocked_kek(cluster_with_secrets(ca), autolock.new_unlock_key())


def test_local_files_are_sealed_by_the_kek_and_survive_a_rotation(ca: pki.CertificateAuthority) -> None:
    cluster = cluster_with_secrets(ca)
    old, new = autolock.new_unlock_key(), autolock.new_unlock_key()
    locked = applied(cluster, autolock.lock(cluster, RAFT_SECRET, old))
    sealed = autolock.seal_local(autolock.unlocked_kek(locked, old), "raft.secret", RAFT_SECRET.encode())
    assert autolock.is_sealed_local(sealed) and RAFT_SECRET not in sealed

    rotated = applied(locked, autolock.rotate(locked, old, new))
    kek = autolock.unlocked_kek(rotated, new)
    assert autolock.open_local(kek, "raft.secret", sealed + "\n") == RAFT_SECRET.encode()
    with pytest.raises(UnlockKeyError, match="wrong unlock key"):
        autolock.unlocked_kek(rotated, old)
    with pytest.raises(UnlockKeyError, match="wrong unlock key"):
        autolock.open_local(kek, "tls.key", sealed)  # one sealed file cannot stand in for another
    with pytest.raises(UnlockKeyError, match="wrong unlock key"):
        autolock.open_local(autolock.unlock_root(old), "raft.secret", sealed)
    with pytest.raises(UnlockKeyError, match="damaged"):
        autolock.open_local(kek, "raft.secret", sealed[:30])
    with pytest.raises(UnlockKeyError, match="not locked"):
        autolock.open_local(kek, "raft.secret", RAFT_SECRET)


# -- the command that moves the keys -------------------------------------------------------------
def _state(cluster: ClusterInfo) -> ClusterState:
    state = ClusterState()
    state.apply([Put("cluster", cluster)])
    return state


def _command(cluster: ClusterInfo, keys: autolock.RootedKeys) -> commands.SetRootedKeys:
    return commands.SetRootedKeys(cluster.ca_key_pem, keys.kek_wrapped, keys.dek_wrapped, keys.ca_key_pem)


def test_the_command_locks_and_unlocks_the_replicated_keys(ca: pki.CertificateAuthority) -> None:
    cluster = cluster_with_secrets(ca)
    state, key = _state(cluster), autolock.new_unlock_key()
    result, changes = commands.apply(state, _command(cluster, autolock.lock(cluster, RAFT_SECRET, key)))
    assert result.ok
    state.apply(changes)
    assert state.cluster is not None and autolock.is_locked(state.cluster)
    assert state.cluster.dek_wrapped == cluster.dek_wrapped

    locked = state.cluster
    result, changes = commands.apply(state, _command(locked, autolock.unlock(locked, RAFT_SECRET, key)))
    assert result.ok
    state.apply(changes)
    assert not autolock.is_locked(state.cluster)
    assert cakey.unwrap(state.cluster.ca_key_pem, RAFT_SECRET) == ca.key_pem


def test_the_command_refuses_keys_computed_from_a_stale_cluster(ca: pki.CertificateAuthority) -> None:
    cluster = cluster_with_secrets(ca)
    stale = autolock.lock(cluster, RAFT_SECRET, autolock.new_unlock_key())
    rotated_ca = msgspec.structs.replace(cluster, ca_key_pem=cakey.wrap(ca.key_pem, RAFT_SECRET))  # a CA change
    state = _state(rotated_ca)
    result, changes = commands.apply(state, _command(cluster, stale))
    assert result.code == "failed_precondition" and "changed meanwhile" in result.message and not changes

    fresh_pair = msgspec.structs.replace(cluster, kek_wrapped="", dek_wrapped="")
    keys = autolock.lock(fresh_pair, RAFT_SECRET, autolock.new_unlock_key())  # makes its own pair
    result, changes = commands.apply(_state(cluster), _command(cluster, keys))  # but one was committed
    assert result.code == "failed_precondition" and not changes


@pytest.mark.parametrize("missing", ["kek_wrapped", "dek_wrapped", "ca_key_pem"])
def test_the_command_refuses_an_empty_key(ca: pki.CertificateAuthority, missing: str) -> None:
    cluster = cluster_with_secrets(ca)
    command = msgspec.structs.replace(
        _command(cluster, autolock.lock(cluster, RAFT_SECRET, autolock.new_unlock_key())), **{missing: ""}
    )
    result, changes = commands.apply(_state(cluster), command)
    assert result.code == "invalid_argument" and not changes
    result, _ = commands.apply(ClusterState(), command)
    assert result.code == "failed_precondition"


# -- a manager's key ring through a lock ----------------------------------------------------------
def test_a_ring_that_held_the_kek_keeps_opening_secrets_after_the_lock(ca: pki.CertificateAuthority) -> None:
    cluster = cluster_with_secrets(ca)
    ring = secretkeys.KeyRing(RAFT_SECRET)
    sealed = ring.seal(cluster, "secret-id", b"value")
    key = autolock.new_unlock_key()
    locked = applied(cluster, autolock.lock(cluster, RAFT_SECRET, key))

    assert ring.open(locked, "secret-id", sealed) == b"value"
    restarted = secretkeys.KeyRing(RAFT_SECRET)  # the Raft secret alone no longer opens it
    with pytest.raises(secretkeys.SecretKeyError):
        restarted.open(locked, "secret-id", sealed)
    restarted.hold_kek(autolock.unlocked_kek(locked, key))  # `warren cluster unlock`
    assert restarted.open(locked, "secret-id", sealed) == b"value"
