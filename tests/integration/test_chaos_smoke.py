"""A short, bounded run of the chaos suite (chaos/README.md): 3 managers and 3 exec workers in
network namespaces, a worker kill, a follower kill and a leader kill in the middle of a rolling
update (issue #12) under the seeded workload.

Needs root (namespaces, nftables); skipped otherwise. The suite cleans up after itself; the test
also checks that none of its namespaces is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the chaos suite needs root (network namespaces)"),
]


def test_three_rounds_lose_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos"
    argv = [sys.executable, "-m", "chaos.run", "--seed", "7", "--rounds", "3"]
    argv += ["--faults", "kill_worker,kill_follower,kill_leader_mid_update", "--out", str(out)]
    # About 50 s on a quiet machine; the bound leaves room for a loaded one.
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180)
    transcript = result.stdout + result.stderr
    assert result.returncode == 0, transcript
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3, transcript
    assert summary["faults"] == {"kill_follower": 1, "kill_leader_mid_update": 1, "kill_worker": 1}
    assert summary["lost_writes"] == 0 and summary["violations"] == [], transcript
    # The leader died with the update part done, and the update then completed.
    assert " replaced at the kill " in transcript and " completed in " in transcript, transcript
    assert summary["operations"].get("ok", 0) > 0, transcript
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert summary["run_id"] not in leftovers
