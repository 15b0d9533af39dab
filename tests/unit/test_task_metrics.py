"""Per-task metrics (ADR 60): the cgroup v1/v2 and net/dev parsers on samples of both formats,
the restart count per slot, and the collector's families on fake figures."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from warren.agent.taskmetrics import HeldTask, TaskCollector, TaskRows, slot_label
from warren.agent.taskstats import (
    NetCounters,
    TaskStats,
    parse_blkio_service_bytes,
    parse_cpu_stat,
    parse_cpuacct_usage,
    parse_io_stat,
    parse_memory_limit,
    parse_net_dev,
)
from warren.runtime.exec.cgroups import cgroup_dir, parse_mountinfo, parse_proc_cgroup

V2_CPU_STAT = """usage_usec 2534512
user_usec 1500000
system_usec 1034512
nr_periods 0
nr_throttled 0
throttled_usec 0
"""
V1_BLKIO = """8:16 Read 4096
8:16 Write 1048576
8:16 Sync 0
8:16 Async 1052672
8:16 Total 1052672
8:0 Read 512
8:0 Write 0
8:0 Total 512
Total 1053184
"""
V2_IO_STAT = """8:16 rbytes=4096 wbytes=1048576 rios=1 wios=256 dbytes=0 dios=0
8:0 rbytes=512 wbytes=0 rios=1 wios=0 dbytes=0 dios=0
"""
NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  999999    9999    0    0    0     0          0         0   999999    9999    0    0    0     0       0          0
  eth0:    1500      12    0    0    0     0          0         0      700       7    0    0    0     0       0          0
  eth1:     500       3    0    0    0     0          0         0      300       2    0    0    0     0       0          0
"""  # noqa: E501 - the file's own layout
MOUNTINFO_V1 = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
MOUNTINFO_V2 = "25 20 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_cpu_parsers_read_nanoseconds_v1_and_microseconds_v2() -> None:
    assert parse_cpuacct_usage("2534512000\n") == 2.534512
    assert parse_cpu_stat(V2_CPU_STAT) == 2.534512


def test_memory_limit_is_zero_when_unlimited_in_either_format() -> None:
    assert parse_memory_limit("9223372036854771712\n") == 0  # v1's "no limit"
    assert parse_memory_limit("max\n") == 0  # v2's
    assert parse_memory_limit("67108864\n") == 64 << 20


def test_block_io_sums_reads_and_writes_over_devices_in_both_formats() -> None:
    assert parse_blkio_service_bytes(V1_BLKIO) == (4608, 1048576)
    assert parse_io_stat(V2_IO_STAT) == (4608, 1048576)
    assert parse_blkio_service_bytes("Total 0\n") == (0, 0)  # a cgroup that did no I/O yet


def test_net_dev_sums_interfaces_but_loopback() -> None:
    assert parse_net_dev(NET_DEV) == NetCounters(rx_bytes=2000, tx_bytes=1000, rx_packets=15, tx_packets=9)


def test_a_tasks_cgroup_directory_is_found_from_proc_cgroup_in_v1_and_v2() -> None:
    v1 = parse_mountinfo(MOUNTINFO_V1, ("cpuacct", "memory", "blkio"))
    procs = parse_proc_cgroup("4:memory:/docker/abc/warren/t1\n2:cpu,cpuacct:/warren/t1\n7:blkio:/warren/t1\n0::/\n")
    assert cgroup_dir(v1["cpuacct"], procs["cpuacct"]) == Path("/sys/fs/cgroup/cpu,cpuacct/warren/t1")
    # A hierarchy mounted from a non-root cgroup (the agent inside a container) shows its root.
    assert cgroup_dir(v1["memory"], procs["memory"]) == Path("/sys/fs/cgroup/memory/warren/t1")
    v2 = parse_mountinfo(MOUNTINFO_V2, ("cpuacct", "memory", "blkio"))
    assert set(v2) == {""}
    assert cgroup_dir(v2[""], parse_proc_cgroup("0::/warren/t1\n")[""]) == Path("/sys/fs/cgroup/warren/t1")


def held(task_id: str, slot: int = 1, running: bool = True, restarts: int = 0, health: str = "") -> HeldTask:
    return HeldTask(task_id, "svc1", "web", slot, "node1234567890abc", f"rt-{task_id}", running, 1e9, restarts, health)


def test_restarts_count_new_tasks_in_a_slot_and_local_restarts() -> None:
    rows = TaskRows(clock=lambda: 0.0)
    rows.refresh([held("a")])
    assert [(r.task_id, r.restarts) for r in rows.rows] == [("a", 0)]
    rows.refresh([held("a", running=False)])  # it failed: no series
    assert rows.rows == ()
    rows.refresh([held("a", running=False), held("b")])  # its replacement
    rows.refresh([held("b")])  # the managers forgot the failed one
    assert [(r.task_id, r.restarts) for r in rows.rows] == [("b", 1)]
    rows.refresh([])  # the slot left for a moment
    rows.refresh([held("c", restarts=2)])  # a third task, restarted twice in place
    assert [(r.task_id, r.restarts) for r in rows.rows] == [("c", 4)]


def test_a_global_tasks_slot_is_its_nodes_short_id() -> None:
    assert slot_label(0, "node1234567890abc") == "node12345678"
    assert slot_label(3, "node1234567890abc") == "3"


def test_collector_reports_running_tasks_and_leaves_out_what_a_task_does_not_own() -> None:
    rows = TaskRows()
    rows.refresh([held("a", health="healthy"), held("b", slot=2), held("gone", slot=3)])
    figures = {
        11: TaskStats(cpu_seconds=1.5, memory_usage=100, memory_limit=0, network=NetCounters(10, 20, 1, 2)),
        12: TaskStats(cpu_seconds=0.5, memory_usage=50, memory_limit=64, blkio_read=1, blkio_write=2),
    }
    pids = {"rt-a": 11, "rt-b": 12, "rt-gone": 13}
    registry = CollectorRegistry()
    registry.register(TaskCollector(lambda: rows.rows, figures.get, lambda rid: pids[rid]))
    text = generate_latest(registry).decode()
    labels_a = 'node="node1234567890abc",service="web",slot="1",task="a"'
    assert f"warren_task_cpu_seconds_total{{{labels_a}}} 1.5" in text
    assert f"warren_task_network_receive_bytes_total{{{labels_a}}} 10.0" in text
    assert f"warren_task_healthy{{{labels_a}}} 1.0" in text
    assert f"warren_task_start_time_seconds{{{labels_a}}} 1e+09" in text
    assert 'warren_task_memory_limit_bytes{node="node1234567890abc",service="web",slot="2",task="b"} 64.0' in text
    # b has no namespace of its own and no health check: no such series, rather than wrong ones.
    assert 'warren_task_network_receive_bytes_total{node="node1234567890abc",service="web",slot="2"' not in text
    assert 'warren_task_healthy{node="node1234567890abc",service="web",slot="2"' not in text
    assert 'task="gone"' not in text  # its process is gone
