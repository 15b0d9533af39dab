"""A real Prometheus server (Debian's `prometheus`) for a benchmark: it scrapes the given /metrics
targets every `scrape_interval` (SCRAPE_INTERVAL unless given) from a generated config in its own
temp dir, on its own loopback port (tests/fixtures/ports.py), and is stopped by PID.
`query` reads figures back through its HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.fixtures.ports import free_port

SCRAPE_INTERVAL = "1s"


class PrometheusServer:
    def __init__(
        self, targets: dict[str, str], config: dict[str, Any] | None = None, scrape_interval: str = SCRAPE_INTERVAL
    ) -> None:
        """`targets`: instance name (e.g. "m1") -> host:port of its /metrics; or a whole
        `config` instead (deploy/prometheus/prometheus.yml's, in a test)."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (Debian: apt-get install -y prometheus)")
        self.root = Path(tempfile.mkdtemp(prefix="warren-bench-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        static = [{"targets": [addr], "labels": {"instance": name}} for name, addr in targets.items()]
        config = config or {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval},
            "scrape_configs": [{"job_name": "warren", "static_configs": static}],
        }
        (self.root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log_path = self.root / "prometheus.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start:\n{self.log()[-2000:]}")
            time.sleep(0.5)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: [{"metric": {...labels}, "value": float}, ...]."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = self._get(f"/api/v1/query?{urllib.parse.urlencode(params)}", f"query {expr!r}")
        return [{"metric": r["metric"], "value": float(r["value"][1])} for r in body["data"]["result"]]

    def label_values(self, label: str, match: str) -> list[str]:
        """The values of `label` on the series `match` selects (what Grafana's label_values reads)."""
        query = urllib.parse.urlencode({"match[]": match})
        return list(self._get(f"/api/v1/label/{label}/values?{query}", f"label_values({match}, {label})")["data"])

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule, with its health, last error and active alerts (/api/v1/rules)."""
        groups = self._get("/api/v1/rules", "rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def _get(self, path: str, what: str) -> dict[str, Any]:
        """A GET of the HTTP API; an error (a query that does not parse: HTTP 400) raises with
        Prometheus's own message."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {what} failed: {body.get('error', body)}")
        return dict(body)

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        """The value of a query with one result, or None if it has none (or NaN: no samples)."""
        results = self.query(expr, at)
        if not results or results[0]["value"] != results[0]["value"]:
            return None
        return results[0]["value"]

    def by_instance(self, expr: str, at: float | None = None) -> dict[str, float]:
        return {r["metric"].get("instance", "?"): r["value"] for r in self.query(expr, at)}

    def targets_up(self) -> int:
        return sum(1 for r in self.query("up") if r["value"] == 1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
