"""The agent's node-level gauges for the alerts (#16): free space where the agent keeps its data
(task files, logs, the exec runtime's and containerd's roots), and when this node's certificate
expires. Read when Prometheus scrapes (a statvfs and a small file), so they are never stale and
no loop keeps them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from warren.certinfo import PkiError, validity


class NodeCollector(Collector):
    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            fs = os.statvfs(self._data_dir)
        except OSError:
            fs = None
        if fs is not None:
            # f_bavail: what an unprivileged writer may still use, as `df` shows it
            yield GaugeMetricFamily(
                "warren_agent_data_dir_free_bytes",
                "Free bytes on the filesystem holding the agent's data directory",
                value=fs.f_bavail * fs.f_frsize,
            )
            yield GaugeMetricFamily(
                "warren_agent_data_dir_size_bytes",
                "Size of the filesystem holding the agent's data directory",
                value=fs.f_blocks * fs.f_frsize,
            )
        g = GaugeMetricFamily(
            "warren_certificate_not_after_seconds",
            "Unix time at which the certificate expires: this node's own",
            labels=["kind"],
        )
        # Not joined yet, or a file being replaced: no sample rather than a wrong one.
        with contextlib.suppress(OSError, PkiError):
            g.add_metric(["node"], validity((self._data_dir / "certs" / "cert.pem").read_bytes())[1].timestamp())
        yield g
