"""The WireGuard adapter's pure parts: keys, the UAPI lines a diff becomes, parsing `get=1`,
pyroute2 peer dicts, and backend choice."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from warren.network import wireguard as wg
from warren.network.plan import AddPeer, PeerConfig, RemovePeer, SetInterface, UpdatePeer

PEER = PeerConfig(base64.b64encode(b"\x01" * 32).decode(), "10.0.0.2:51820", ("10.200.2.0/24",), 25)
PEER_HEX = "01" * 32


def test_keys_roundtrip_and_match_cryptography(tmp_path: Path):
    path = tmp_path / "k" / "wg.key"
    public = wg.ensure_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wg.ensure_key_file(path) == public  # made once
    private = wg.read_key_file(path)
    assert wg.public_key_of(private) == public
    assert wg.hex_to_b64(wg.b64_to_hex(public)) == public
    assert len(wg.b64_to_hex(public)) == 64


def test_rfc7748_public_key():
    """RFC 7748 section 6.1: Alice's private key and the public key it gives."""
    private = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    public = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert wg.public_key_of(base64.b64encode(private).decode()) == base64.b64encode(public).decode()


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_bad_keys(bad):
    with pytest.raises(wg.WireGuardError):
        wg.b64_to_hex(bad)


def test_uapi_lines_for_each_operation():
    lines = wg.uapi_set_lines(
        [
            SetInterface("/k", 51820),
            AddPeer(PEER),
            UpdatePeer(PEER, endpoint_changed=True, allowed_ips_changed=False, keepalive_changed=False),
            RemovePeer(PEER.public_key),
        ],
        read_key=lambda ref: base64.b64encode(b"\x02" * 32).decode() if ref == "/k" else "",
    )
    assert lines == [
        "private_key=" + "02" * 32,
        "listen_port=51820",
        f"public_key={PEER_HEX}",
        "endpoint=10.0.0.2:51820",
        "persistent_keepalive_interval=25",
        "replace_allowed_ips=true",
        "allowed_ip=10.200.2.0/24",
        f"public_key={PEER_HEX}",
        "update_only=true",
        "endpoint=10.0.0.2:51820",
        f"public_key={PEER_HEX}",
        "remove=true",
    ]


def test_parse_get_reply():
    private = wg.generate_private_key()
    text = "\n".join(
        [
            f"private_key={wg.b64_to_hex(private)}",
            "listen_port=51820",
            f"public_key={PEER_HEX}",
            "preshared_key=" + "0" * 64,
            "protocol_version=1",
            "endpoint=10.0.0.2:51820",
            "last_handshake_time_sec=1700000000",
            "last_handshake_time_nsec=500000000",
            "tx_bytes=10",
            "rx_bytes=20",
            "persistent_keepalive_interval=25",
            "allowed_ip=10.200.2.0/24",
            "allowed_ip=10.200.9.0/24",
        ]
    )
    status = wg.parse_uapi_get(text, "wg0")
    assert status.public_key == wg.public_key_of(private)
    assert status.listen_port == 51820
    (peer,) = status.peers
    assert peer.last_handshake == 1700000000.5
    assert (peer.rx_bytes, peer.tx_bytes) == (20, 10)
    assert peer.config() == PeerConfig(PEER.public_key, "10.0.0.2:51820", ("10.200.2.0/24", "10.200.9.0/24"), 25)
    assert wg.parse_uapi_get("listen_port=0", "wg0").public_key is None


def test_kernel_peer_dicts():
    assert wg.kernel_peer(RemovePeer(PEER.public_key)) == {"public_key": PEER.public_key, "remove": True}
    assert wg.kernel_peer(AddPeer(PEER)) == {
        "public_key": PEER.public_key,
        "endpoint_addr": "10.0.0.2",
        "endpoint_port": 51820,
        "persistent_keepalive": 25,
        "replace_allowed_ips": True,
        "allowed_ips": ["10.200.2.0/24"],
    }
    update = UpdatePeer(PEER, endpoint_changed=False, allowed_ips_changed=True, keepalive_changed=False)
    assert wg.kernel_peer(update) == {
        "public_key": PEER.public_key,
        "update_only": True,
        "replace_allowed_ips": True,
        "allowed_ips": ["10.200.2.0/24"],
    }


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(wg, "kernel_available", lambda: False)
    assert wg.choose_backend("auto") == "userspace"
    assert wg.choose_backend("userspace") == "userspace"
    with pytest.raises(wg.WireGuardError, match="no module"):
        wg.choose_backend("kernel")
    with pytest.raises(wg.WireGuardError, match="must be one of"):
        wg.choose_backend("fast")
    monkeypatch.setattr(wg, "kernel_available", lambda: True)
    assert wg.choose_backend("auto") == "kernel"
    assert wg.choose_backend("auto", netns="ns1") == "userspace"
    assert isinstance(wg.make_device("wg0", "userspace"), wg.UserspaceDevice)
    with pytest.raises(wg.WireGuardError, match="1 to 15"):
        wg.UserspaceDevice("a-very-long-interface-name")


def test_a_key_change_alone_does_not_touch_the_listen_port():
    key = base64.b64encode(b"\x02" * 32).decode()
    assert wg.uapi_set_lines([SetInterface("/k", None)], read_key=lambda ref: key) == ["private_key=" + "02" * 32]


def test_kernel_device_sends_each_operation_to_genetlink(monkeypatch, tmp_path: Path):
    """The kernel backend cannot run here (no module): its calls are checked on a recorder."""
    import contextlib

    key_file = tmp_path / "wg.key"
    wg.write_key_file(key_file, wg.generate_private_key())
    calls: list[tuple[str, dict]] = []

    class Recorder:
        def set(self, ifname: str, **kwargs: object) -> None:
            calls.append((ifname, kwargs))

    device = wg.KernelDevice("wg-test")
    monkeypatch.setattr(device, "_wg", lambda: contextlib.nullcontext(Recorder()))
    ops = [
        SetInterface(str(key_file), None),
        SetInterface(str(key_file), 5000),
        AddPeer(PEER),
        RemovePeer(PEER.public_key),
    ]
    assert device.apply(ops) == 4
    private = wg.read_key_file(key_file)
    assert calls == [
        ("wg-test", {"private_key": private}),
        ("wg-test", {"private_key": private, "listen_port": 5000}),
        ("wg-test", {"peer": wg.kernel_peer(AddPeer(PEER))}),
        ("wg-test", {"peer": {"public_key": PEER.public_key, "remove": True}}),
    ]
