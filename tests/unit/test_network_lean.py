"""The agent loads only the pyroute2 modules it uses (warren.network.lean), and they work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from warren.network.lean import lean_pyroute2
lean_pyroute2()
from warren.network import links, wireguard
assert links.link_index("lo") == 1
assert "pyroute2.netlink.rtnl.iprsocket" in sys.modules
unused = ("pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.ipvs", "pyroute2.conntrack")
print(sorted(m for m in unused if m in sys.modules))
"""


def test_links_work_without_pyroute2s_package_imports() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"  # none of the subsystems the agent never uses
