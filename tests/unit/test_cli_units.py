"""Parsing and formatting of the values operators type: sizes, durations, CPUs, ports."""

from __future__ import annotations

import pytest

from warren.cli import units


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("512M", 512 * 1024**2),
        ("512m", 512 * 1024**2),
        ("1G", 1024**3),
        ("1024K", 1024 * 1024),
        ("1.5G", 3 * 1024**3 // 2),
        ("256MiB", 256 * 1024**2),
        ("2gb", 2 * 1024**3),
        ("100b", 100),
        ("1T", 1024**4),
        (" 64M ", 64 * 1024**2),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert units.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "12Q", "-1G", "1.5", "0.3K", "1 G B", "one", "1e3", "1G1M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        units.parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("90", 90.0),
        ("0.25", 0.25),
        ("0", 0.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("250us", 0.00025),
        ("1s500ms", 1.5),
    ],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert units.parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "s", "10x", "-5s", "1h 30m", "m10", "10s!", "1.2.3s", "five"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        units.parse_duration(text)


def test_parse_cpus() -> None:
    assert units.parse_cpus("0.5") == 500_000_000
    assert units.parse_cpus("2") == 2_000_000_000
    assert units.parse_cpus("0.001") == 1_000_000
    for bad in ("", "-1", "abc", "nan", "inf", "0.0000000001"):
        with pytest.raises(ValueError, match="CPU"):
            units.parse_cpus(bad)


def test_parse_count() -> None:
    assert units.parse_count("0") == 0
    assert units.parse_count("12") == 12
    for bad in ("", "-1", "1.5", "three", "٣"):
        with pytest.raises(ValueError, match="invalid count"):
            units.parse_count(bad)


def test_parse_seconds_must_be_positive() -> None:
    assert units.parse_seconds("2.5") == 2.5
    assert units.parse_seconds("1m") == 60.0
    with pytest.raises(ValueError, match="more than 0"):
        units.parse_seconds("0")


def test_parse_publish() -> None:
    assert units.parse_publish("8080:80") == (8080, 80, "tcp")
    assert units.parse_publish("5353:53/udp") == (5353, 53, "udp")
    assert units.parse_publish("8443:443/TCP") == (8443, 443, "tcp")
    for bad in ("80", "8080:80/sctp", "0:80", "8080:70000", "a:b", ":80"):
        with pytest.raises(ValueError, match="port"):
            units.parse_publish(bad)


def test_parse_unpublish() -> None:
    assert units.parse_unpublish("8080") == (8080, "tcp")
    assert units.parse_unpublish("53/udp") == (53, "udp")
    assert units.parse_unpublish("8080:80") == (8080, "tcp")
    with pytest.raises(ValueError):
        units.parse_unpublish("x")


def test_parse_hostport() -> None:
    assert units.parse_hostport("127.0.0.1:4242") == "127.0.0.1:4242"
    assert units.parse_hostport("[::1]:4242") == "[::1]:4242"
    assert units.parse_hostport("manager-1.example:4242") == "manager-1.example:4242"
    for bad in ("4242", "host:", ":4242", "host:0", "host:99999", "host:http", "[]:1"):
        with pytest.raises(ValueError, match="invalid address"):
            units.parse_hostport(bad)


def test_parse_key_value() -> None:
    assert units.parse_key_value("A=1") == ("A", "1")
    assert units.parse_key_value("A=") == ("A", "")
    assert units.parse_key_value("A=b=c") == ("A", "b=c")
    assert units.parse_key_value("tier", require_value=False) == ("tier", "")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        units.parse_key_value("A")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        units.parse_key_value("=1")


@pytest.mark.parametrize("seconds", [0.5, 1, 10, 90, 3600, 5400, 3661, 1.5])
def test_format_duration_round_trips(seconds: float) -> None:
    assert units.parse_duration(units.format_duration(seconds)) == pytest.approx(seconds)


def test_format_size() -> None:
    assert units.format_size(512 * 1024**2) == "512MiB"
    assert units.format_size(1536 * 1024**2) == "1.5GiB"
    assert units.format_size(100) == "100B"
    assert units.parse_size(units.format_size(64 * 1024)) == 64 * 1024


def test_cluster_info_names_the_members_a_manager_has_no_raft_link_to() -> None:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.cluster import _manager_status

    whole = pb.ManagerInfo(voter=True, raft_state="follower", connected=["a:1", "b:1"])
    assert _manager_status(whole, ["a:1", "b:1"]) == "reachable"
    cut = pb.ManagerInfo(voter=True, raft_state="follower", connected=["a:1"])
    assert _manager_status(cut, ["a:1", "b:1"]) == "reachable, no Raft link to b:1"
    assert _manager_status(pb.ManagerInfo(error="cannot connect"), ["a:1"]) == "unreachable (cannot connect)"
