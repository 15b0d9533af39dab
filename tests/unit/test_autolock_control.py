"""Autolock's control methods (ADR 44) on an in-memory state, and the CLI's bad input."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from tests.unit.test_cli_parse import run_cli
from warren import pki
from warren.api.v1 import control_pb2 as cpb
from warren.manager import autolock, cakey
from warren.manager.controlapi import ControlService
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.secretkeys import KeyRing
from warren.manager.server import ApiError
from warren.model import ClusterInfo
from warren.state import Put

T = TypeVar("T")
RAFT_SECRET = "raft-secret-for-tests"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create("cluster-under-test")


def _control(ca: pki.CertificateAuthority) -> tuple[ControlService, InMemoryState]:
    store = InMemoryState()
    cluster = ClusterInfo("c", 0.0, ca.cert_pem.decode(), cakey.wrap(ca.key_pem, RAFT_SECRET), "w", "m")
    store.put(Put("cluster", cluster))
    return ControlService(store, InMemoryRaft(store), raft_secret=RAFT_SECRET), store


def _cluster(store: InMemoryState) -> ClusterInfo:
    cluster = store.snapshot()[1].cluster
    assert cluster is not None
    return cluster


def _refused(call: Coroutine[Any, Any, object], code: grpc.StatusCode, needle: str) -> None:
    with pytest.raises(ApiError) as caught:
        run(call)
    assert caught.value.code == code and needle in caught.value.message


def test_enable_prints_a_key_that_unlocks_and_secrets_still_open(ca: pki.CertificateAuthority) -> None:
    control, store = _control(ca)
    secret = run(control.CreateSecret(cpb.CreateSecretRequest(name="db", data=b"pw"), None))
    answer = run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=True), None))

    cluster = _cluster(store)
    assert answer.autolock and answer.unlock_key.startswith(autolock.UNLOCK_KEY_PREFIX)
    assert autolock.is_locked(cluster) and run(control.GetClusterInfo(cpb.GetClusterInfoRequest(), None)).autolock
    assert autolock.ca_key(cluster, autolock.unlocked_kek(cluster, answer.unlock_key)) == ca.key_pem
    restarted = KeyRing(RAFT_SECRET)  # a manager that starts with the key: secrets still open
    restarted.hold_kek(autolock.unlocked_kek(cluster, answer.unlock_key))
    sealed = store.snapshot()[1].secrets[secret.id].sealed
    assert restarted.open(cluster, secret.id, sealed) == b"pw"
    # enabling again makes no new key and changes nothing
    again = run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=True), None))
    assert again.autolock and not again.unlock_key and _cluster(store) == cluster
    # the running manager holds the KEK: it still signs with the locked CA key
    run(control.RotateCA(cpb.RotateCARequest(), None))
    assert _cluster(store).ca_previous_cert_pem and autolock.is_locked(_cluster(store))


def test_the_key_is_shown_only_when_made_and_a_rotation_retires_the_old_one(ca: pki.CertificateAuthority) -> None:
    control, store = _control(ca)
    assert not run(control.GetUnlockKey(cpb.GetUnlockKeyRequest(), None)).autolock
    _refused(
        control.GetUnlockKey(cpb.GetUnlockKeyRequest(rotate=True), None), grpc.StatusCode.FAILED_PRECONDITION, "off"
    )
    old = run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=True), None)).unlock_key
    shown = run(control.GetUnlockKey(cpb.GetUnlockKeyRequest(), None))
    assert shown.autolock and not shown.unlock_key

    new = run(control.GetUnlockKey(cpb.GetUnlockKeyRequest(rotate=True), None)).unlock_key
    cluster = _cluster(store)
    assert new != old and autolock.ca_key(cluster, autolock.unlocked_kek(cluster, new)) == ca.key_pem
    with pytest.raises(autolock.UnlockKeyError, match="wrong unlock key"):
        autolock.unlocked_kek(cluster, old)
    run(control.UnlockCluster(cpb.UnlockClusterRequest(unlock_key=new), None))


def test_unlock_refuses_bad_and_wrong_keys_and_changes_nothing(ca: pki.CertificateAuthority) -> None:
    control, store = _control(ca)
    _refused(
        control.UnlockCluster(cpb.UnlockClusterRequest(unlock_key=autolock.new_unlock_key()), None),
        grpc.StatusCode.FAILED_PRECONDITION,
        "nothing to unlock",
    )
    run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=True), None))
    before = _cluster(store)
    for bad, needle in [("", "empty"), ("hunter2", "not an unlock key"), ("WRNKEY-1-abc", "wrong length")]:
        _refused(
            control.UnlockCluster(cpb.UnlockClusterRequest(unlock_key=bad), None),
            grpc.StatusCode.INVALID_ARGUMENT,
            needle,
        )
    wrong = autolock.new_unlock_key()
    _refused(
        control.UnlockCluster(cpb.UnlockClusterRequest(unlock_key=wrong), None),
        grpc.StatusCode.INVALID_ARGUMENT,
        "wrong unlock key",
    )
    assert _cluster(store) == before


def test_disable_goes_back_under_the_raft_secret_without_the_key(ca: pki.CertificateAuthority) -> None:
    control, store = _control(ca)
    secret = run(control.CreateSecret(cpb.CreateSecretRequest(name="db", data=b"pw"), None))
    run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=True), None))
    answer = run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=False), None))

    cluster = _cluster(store)
    assert not answer.autolock and not autolock.is_locked(cluster)
    assert cakey.unwrap(cluster.ca_key_pem, RAFT_SECRET) == ca.key_pem
    fresh = KeyRing(RAFT_SECRET)  # the Raft secret alone opens everything again
    assert fresh.open(cluster, secret.id, store.snapshot()[1].secrets[secret.id].sealed) == b"pw"


@pytest.mark.parametrize(
    ("argv", "stdin", "needle"),
    [
        (["cluster", "unlock", "--key-stdin"], "hunter2\n", "not an unlock key"),
        (["cluster", "unlock", "--key-stdin"], "\n", "the unlock key is empty"),
        (["cluster", "unlock", "--key-stdin"], "WRNKEY-1-@@@@\n", "damaged"),
        (["cluster", "unlock"], "", "no unlock key: pass it on stdin with --key-stdin"),
        (["cluster", "update", "--autolock", "yes"], "", "expected true or false"),
        (["cluster", "update", "--autolock", "maybe"], "", "expected true or false"),
        (["cluster", "unlock", "--key-stdin", "--data-dir", "/nonexistent"], "\n", "the unlock key is empty"),
        (["cluster", "unlock", "--key-stdin", "--data-dir", "/nonexistent"], "WRNKEY-1-abc\n", "truncated"),
        (["cluster", "init", "--unlock-key-file", "/nonexistent/key"], "", "cannot read /nonexistent/key"),
        (["cluster", "init", "--unlock-key-file", "/etc/hostname"], "", "not an unlock key"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv: list[str], stdin: str, needle: str) -> None:
    if stdin:
        done = subprocess.run(
            [sys.executable, "-m", "warren.cli.main", *argv], input=stdin, capture_output=True, text=True, timeout=60
        )
    else:
        done = run_cli(*argv)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("command", [["unlock", "--key-stdin"], ["info"]])
def test_a_data_dir_with_no_locked_manager_says_so_in_one_line(tmp_path: Path, command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "warren.cli.main", "cluster", *command, "--data-dir", str(tmp_path)],
        input=autolock.new_unlock_key(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 5 and "no locked manager in" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_manager_that_starts_while_locked_says_so_until_unlocked(ca: pki.CertificateAuthority) -> None:
    control, store = _control(ca)
    key = run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=True), None)).unlock_key
    assert not run(control.GetClusterInfo(cpb.GetClusterInfoRequest(), None)).locked
    restarted = ControlService(store, InMemoryRaft(store), raft_secret=RAFT_SECRET)  # holds no KEK
    info = run(restarted.GetClusterInfo(cpb.GetClusterInfoRequest(), None))
    assert info.autolock and info.locked
    _refused(
        restarted.GetUnlockKey(cpb.GetUnlockKeyRequest(rotate=True), None), grpc.StatusCode.FAILED_PRECONDITION, "hold"
    )
    run(restarted.UnlockCluster(cpb.UnlockClusterRequest(unlock_key=key), None))
    assert not run(restarted.GetClusterInfo(cpb.GetClusterInfoRequest(), None)).locked
    assert run(restarted.GetUnlockKey(cpb.GetUnlockKeyRequest(rotate=True), None)).unlock_key
