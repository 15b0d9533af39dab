"""The agent process's small helpers: node.json, the node description, runtime choice."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from warren.agent.daemon import (
    AgentStartupError,
    describe,
    load_node_file,
    make_runtime,
    save_managers,
)
from warren.agent.options import AgentOptions, options_argv
from warren.host import sanitise_hostname
from warren.validate import NAME_RE


def test_save_managers_keeps_the_node_id_and_is_owner_only(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text(json.dumps({"node_id": "n1", "managers": ["a:1"]}))
    save_managers(tmp_path, ["a:1", "b:2"])
    assert load_node_file(tmp_path) == {"node_id": "n1", "managers": ["a:1", "b:2"]}
    assert stat.S_IMODE(os.stat(tmp_path / "node.json").st_mode) == 0o600


def test_unreadable_node_file_is_ignored(tmp_path: Path) -> None:
    assert load_node_file(tmp_path) == {}
    (tmp_path / "node.json").write_text("{not json")
    assert load_node_file(tmp_path) == {}


@pytest.mark.parametrize("name", ["vm", "host.example.com", "bad host!", "_x", "ü" * 70, ""])
def test_hostname_is_always_acceptable_to_the_dispatcher(name: str) -> None:
    assert NAME_RE.match(sanitise_hostname(name))


def test_description_reports_resources_platform_and_labels(tmp_path: Path) -> None:
    desc = describe(AgentOptions(tmp_path, [], hostname="w1", labels={"zone": "b"}, advertise_addr="10.0.0.5:0"))
    assert desc.hostname == "w1" and dict(desc.labels) == {"zone": "b"} and desc.addr == "10.0.0.5:0"
    assert desc.resources.nano_cpus == (os.cpu_count() or 1) * 1_000_000_000
    assert desc.resources.memory_bytes > 0 and desc.os and desc.arch
    assert (desc.wg_public_key, desc.wg_endpoint) == ("", "10.0.0.5:51820")  # no key made yet


def test_description_publishes_the_public_key_and_never_the_private_one(tmp_path: Path) -> None:
    from warren.network import keys

    public = keys.ensure_node_keys(tmp_path)
    desc = describe(AgentOptions(tmp_path, [], hostname="w1"))
    assert desc.wg_public_key == public and desc.wg_endpoint == ""
    private = keys.read_key_file(tmp_path / keys.KEYS_DIR / keys.PRIVATE_KEY_FILE)
    assert private not in desc.SerializeToString().decode("latin-1")
    assert (tmp_path / keys.KEYS_DIR / keys.PRIVATE_KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_runtime_choice(tmp_path: Path) -> None:
    assert make_runtime(AgentOptions(tmp_path, [], runtime="exec")).name == "exec"
    assert (tmp_path / "exec").is_dir()
    with pytest.raises(AgentStartupError):
        make_runtime(AgentOptions(tmp_path, [], runtime="docker"))


def test_cgroup_parent_setting_flag_and_re_execution(tmp_path: Path) -> None:
    from warren.agent import daemon, settings
    from warren.cli import main, worker

    assert settings.AgentSettings().cgroup_parent == "/warren"
    chosen = settings.resolve(tmp_path, cgroup_parent="/warren-test/a_b.c-1")
    settings.save(tmp_path, chosen)
    assert settings.resolve(tmp_path, cgroup_parent=None).cgroup_parent == "/warren-test/a_b.c-1"
    for bad in ("warren", "/", "/a/../b", "/a//b", "/a/", "/a b", "/./a", ""):
        with pytest.raises(settings.SettingsError, match="invalid cgroup parent"):
            settings.resolve(tmp_path, cgroup_parent=bad)
    args = main.parse_args(["worker", "start", "--data-dir", str(tmp_path), "--cgroup-parent", "/x/y"])
    assert worker._given(args)["cgroup_parent"] == "/x/y"
    assert worker._given(main.parse_args(["worker", "start"]))["cgroup_parent"] is None
    options = AgentOptions(tmp_path, [], cgroup_parent="/x/y")
    assert options_argv(options)[-2:] == ["--cgroup-parent", "/x/y"]
    with pytest.raises(SystemExit):
        daemon.main(["--data-dir", str(tmp_path), "--cgroup-parent", "../x"])


def test_one_agent_per_data_directory(tmp_path: Path) -> None:
    from warren.agent.daemon import agent_running, lock_data_dir

    assert not agent_running(tmp_path)
    lock = lock_data_dir(tmp_path)
    try:
        assert agent_running(tmp_path)
        with pytest.raises(AgentStartupError, match="another agent is running"):
            lock_data_dir(tmp_path)
    finally:
        os.close(lock)
    assert not agent_running(tmp_path)
