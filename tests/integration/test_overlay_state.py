"""The overlay's state (issue #5, ADR 17): every node gets a subnet of the cluster's overlay
range and publishes its WireGuard public key; the private key stays on the node; a full range
refuses new nodes with a clear error and changes nothing."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from tests.integration.harness import Joiner, Manager
from tests.waiting import wait_for
from warren.network import keys

pytestmark = pytest.mark.integration


def test_nodes_get_overlay_subnets_and_publish_only_their_public_key(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    manager = Manager(
        tmp_path / "m",
        start_args=["--overlay-range", "10.60.0.0/23", "--vip-range", "10.61.0.0/24", "--heartbeat-period", "1s"],
    )
    workers: list[Joiner] = []
    try:
        manager.start()
        token = manager.join_token("worker")
        for name in ("w1", "w2"):
            (tmp_path / name).mkdir()
            worker = Joiner(tmp_path / name, manager)
            workers.append(worker)
            worker.join(token, "--runtime", "exec", "--advertise-addr", "127.0.0.1")
            if name == "w1":
                wait_for(lambda: len(manager.cli_json("node", "ls")) == 2, timeout=30, message="w1 to register")

        # The /23 holds two /24s: the manager's and w1's. w2 is refused, with the reason.
        wait_for(lambda: "holds 2 nodes (a /24 each)" in workers[1].log(), timeout=30, message="w2 to be refused")
        assert "RESOURCE_EXHAUSTED" in workers[1].log()
        nodes = manager.cli_json("node", "ls")
        assert len(nodes) == 2

        w1_id = json.loads((workers[0].data_dir / "node.json").read_text())["node_id"]
        w1 = manager.cli_json("node", "inspect", w1_id)
        me = manager.cli_json("node", "inspect", manager.node_id)
        subnets = {ipaddress.ip_network(w1["overlay_subnet"]), ipaddress.ip_network(me["overlay_subnet"])}
        assert subnets == {ipaddress.ip_network("10.60.0.0/24"), ipaddress.ip_network("10.60.1.0/24")}

        key_dir = workers[0].data_dir / keys.KEYS_DIR
        public = (key_dir / keys.PUBLIC_KEY_FILE).read_text().strip()
        assert w1["wg_public_key"] == public
        assert keys.public_key_of(keys.read_key_file(key_dir / keys.PRIVATE_KEY_FILE)) == public
        assert w1["wg_endpoint"] == "127.0.0.1:51820"
        assert (key_dir / keys.PRIVATE_KEY_FILE).stat().st_mode & 0o777 == 0o600
        private = keys.read_key_file(key_dir / keys.PRIVATE_KEY_FILE).encode()
        for path in (manager.data_dir / "db").iterdir():  # the managers' state never holds it
            assert private not in path.read_bytes()
    finally:
        for worker in workers:
            worker.stop_all()
        manager.stop()


def test_an_overlapping_address_plan_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    manager = Manager(tmp_path / "m", start_args=["--overlay-range", "10.60.0.0/16", "--vip-range", "10.60.8.0/24"])
    try:
        manager.start(timeout=10)
    except RuntimeError as exc:
        assert "overlaps the overlay range" in str(exc)
    else:
        raise AssertionError("the manager started with an overlapping address plan")
    finally:
        manager.stop()
    assert not (manager.data_dir / "manager.json").exists()
