"""The data directory module (ADR 29): one atomic, durable write; one JSON reader whose refusals
are one line naming the file; one layout. Real files in tmp_path; the os.fsync spy is an extra
check on top of reading the files back."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from warren import clientconfig, datadir
from warren.agent import daemon as agent_daemon
from warren.agent import join as joining
from warren.agent import settings as agent_settings
from warren.manager import settings as manager_settings
from warren.network import keys, tasknet


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync is called on, in order (the real fsync still runs)."""
    calls: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


# -- the atomic write --------------------------------------------------------------------------
def test_write_atomic_replaces_the_file_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("old")
    target.chmod(0o644)
    old_umask = os.umask(0)  # a permissive umask must not leak into the mode
    try:
        datadir.write_atomic(target, b"new bytes")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new bytes"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left


def test_write_atomic_takes_text_and_a_public_mode(tmp_path: Path) -> None:
    target = tmp_path / "resolv.conf"
    datadir.write_atomic(target, "nameserver 10.0.0.1\n", datadir.PUBLIC)
    assert target.read_text() == "nameserver 10.0.0.1\n"
    assert _mode(target) == 0o644


def test_a_crash_before_the_rename_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "node.json"
    datadir.write_json(target, {"node_id": "n1", "managers": ["a:1"]})
    before = target.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        datadir.write_json(target, {"node_id": "n1", "managers": ["b:2"] * 1000})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert json.loads(before) == {"node_id": "n1", "managers": ["a:1"]}
    assert [p.name for p in tmp_path.iterdir()] == ["node.json"]  # the temporary file is gone


def test_write_atomic_fsyncs_the_file_then_its_directory(tmp_path: Path, fsynced: list[str]) -> None:
    target = tmp_path / "raft.secret"
    datadir.write_atomic(target, b"s3cret")
    assert target.read_bytes() == b"s3cret"
    assert len(fsynced) == 2
    assert Path(fsynced[0]).parent == tmp_path and Path(fsynced[0]).name.startswith(".raft.secret.")
    assert fsynced[1] == str(tmp_path)  # after the rename: the new entry is on disk too


def test_a_write_that_need_not_survive_power_loss_skips_the_fsyncs(tmp_path: Path, fsynced: list[str]) -> None:
    target = tmp_path / "record.json"
    target.write_text("old")
    datadir.write_atomic(target, b"new", durable=False)
    assert target.read_bytes() == b"new" and _mode(target) == 0o600
    assert fsynced == []
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def _agent_settings(d: Path) -> Path:
    agent_settings.save(d, agent_settings.AgentSettings(labels={"zone": "a"}))
    return d / agent_settings.SETTINGS_FILE


def _manager_settings(d: Path) -> Path:
    manager_settings.save(d, manager_settings.ManagerSettings(state_map_size=64 << 20))
    return d / manager_settings.SETTINGS_FILE


def _client_config(d: Path) -> Path:
    ctx = clientconfig.Context("c", ["127.0.0.1:1"], d / "ca.pem", d / "cert.pem", d / "key.pem")
    return clientconfig.save_context(ctx, path=d / "config.json")


def _node_file(d: Path) -> Path:
    joining.write_node_file(d, "n1", ["127.0.0.1:1"])
    return d / datadir.NODE_FILE


def _managers_update(d: Path) -> Path:
    joining.write_node_file(d, "n1", ["127.0.0.1:1"])
    agent_daemon.save_managers(d, ["127.0.0.1:2"])
    return d / datadir.NODE_FILE


def _key_file(d: Path) -> Path:
    keys.write_key_file(d / "private.key", keys.generate_private_key())
    return d / "private.key"


WRITERS: dict[str, Callable[[Path], Path]] = {
    "agent settings": _agent_settings,
    "manager settings": _manager_settings,
    "client config": _client_config,
    "node.json": _node_file,
    "node.json managers": _managers_update,
    "wireguard key": _key_file,
}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_every_private_file_is_written_owner_only_and_durably(
    tmp_path: Path, fsynced: list[str], writer: Callable[[Path], Path]
) -> None:
    written = writer(tmp_path)
    assert written.read_bytes()  # a real, complete file
    assert _mode(written) == 0o600
    assert fsynced[-1] == str(tmp_path)  # the rename itself was made durable
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_the_key_ring_writes_its_public_files_durably(tmp_path: Path, fsynced: list[str]) -> None:
    ring = keys.KeyRing(tmp_path)
    public = ring.ensure()
    ring.create(1)
    ring.activate(1)
    assert ring.active_epoch() == 1 and public
    assert _mode(ring.directory / keys.ACTIVE_FILE) == 0o644
    assert fsynced[-1] == str(ring.directory)


# -- reading JSON ------------------------------------------------------------------------------
def test_read_json_if_exists_is_none_for_a_missing_file(tmp_path: Path) -> None:
    assert datadir.read_json_if_exists(tmp_path / "absent.json") is None
    with pytest.raises(datadir.DataFileError, match=r"absent\.json is missing$"):
        datadir.read_json(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"node_id": ', "is not valid JSON"),
        (b"\xff\xfe not utf-8", "is not valid JSON"),
        (b'["a", "list"]', "is not a JSON object"),
        (b"", "is not valid JSON"),
    ],
)
def test_read_json_refuses_a_corrupt_file_in_one_line_naming_it(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "node.json"
    path.write_bytes(content)
    with pytest.raises(datadir.DataFileError) as refused:
        datadir.read_json(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and says in message
    assert "\n" not in message


def test_read_json_refuses_an_unreadable_file_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "node.json").mkdir()  # a directory where the file should be
    with pytest.raises(datadir.DataFileError, match=r"node\.json is unreadable: Is a directory$"):
        datadir.read_json(tmp_path / "node.json")


# -- the one settings loader -------------------------------------------------------------------
SETTINGS = {
    "agent": (agent_settings.load, agent_settings.SETTINGS_FILE, agent_settings.SettingsError),
    "manager": (manager_settings.load, manager_settings.SETTINGS_FILE, manager_settings.SettingsError),
}


@pytest.mark.parametrize("kind", SETTINGS.keys())
def test_settings_missing_means_none_saved(tmp_path: Path, kind: str) -> None:
    load, _, _ = SETTINGS[kind]
    assert load(tmp_path) is None


@pytest.mark.parametrize("kind", SETTINGS.keys())
@pytest.mark.parametrize("content", ["{truncated", "[1, 2]", '{"runtime": "rkt", "state_map_size": "big"}'])
def test_settings_loaders_refuse_a_corrupt_file_in_one_line(tmp_path: Path, kind: str, content: str) -> None:
    load, name, error = SETTINGS[kind]
    (tmp_path / name).write_text(content)
    with pytest.raises(error) as refused:
        load(tmp_path)
    message = str(refused.value)
    assert message.startswith(str(tmp_path / name)) and "\n" not in message


def test_saved_settings_load_back(tmp_path: Path) -> None:
    _agent_settings(tmp_path)
    _manager_settings(tmp_path)
    assert agent_settings.load(tmp_path) == agent_settings.AgentSettings(labels={"zone": "a"})
    assert manager_settings.load(tmp_path) == manager_settings.ManagerSettings(state_map_size=64 << 20)


def test_a_corrupt_client_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{")
    with pytest.raises(clientconfig.ConfigError, match="is not valid JSON") as refused:
        clientconfig.load_context(path=path)
    assert "\n" not in str(refused.value)


# -- layout ------------------------------------------------------------------------------------
def test_the_layout_names_the_paths_the_modules_use(tmp_path: Path) -> None:
    agent = datadir.AgentDir(tmp_path)
    assert tasknet.ledger_dir(tmp_path) == agent.task_ledger == tmp_path / "network" / "tasks"
    assert keys.KeyRing(tmp_path).directory == agent.wireguard
    assert agent.settings_file.name == agent_settings.SETTINGS_FILE
    assert agent.node_file.name == agent_daemon.NODE_FILE == joining.NODE_FILE
    manager = datadir.ManagerDir(tmp_path)
    assert manager.settings_file.name == manager_settings.SETTINGS_FILE
    assert manager.agent.root == tmp_path / "agent"
