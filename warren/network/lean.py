"""Load pyroute2 without its package `__init__`, for the agent.

`import pyroute2` imports every subsystem pyroute2 has (NDB, IPDB, IPVS, conntrack, nl80211,
ethtool, ...): about 9 MiB in the agent, which uses rtnetlink, network namespaces and
WireGuard's genetlink only. Registering a bare package first makes `import pyroute2.<module>`
load just what it needs (about 4 MiB), which keeps an agent on the overlay within its memory
goal (docs/benchmarks.md). Warren's own code imports pyroute2's submodules by their full names,
so it works either way.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def lean_pyroute2() -> None:
    """Call before the first import of pyroute2 in the process; does nothing once it is loaded
    (or when it is not installed: the import that needs it reports that)."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType("pyroute2")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules["pyroute2"] = package
