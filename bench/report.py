"""The stored results as one Markdown table, for `docs/benchmarks.md`: `python3 -m bench.run --report`.

Each row names the commit and the load it was measured at, and a result measured at another
commit than most of the others, or with uncommitted changes, is marked, so that a figure from an
older run cannot pass for a current one (the issue #15 hygiene rule).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def format_value(value: object, unit: str) -> str:
    """A figure's value for people: thousands separated, two decimals below 100, one above."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{value} {unit}".strip()
    if float(value).is_integer() or value >= 1000:
        return f"{value:,.0f} {unit}".strip()
    return f"{value:.2f} {unit}".strip() if value < 100 else f"{value:.1f} {unit}".strip()


def load(results: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """The results file of each name that has one."""
    found = {}
    for name in names:
        path = results / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def markdown(stored: dict[str, dict[str, Any]]) -> str:
    """A table of every figure, with the commit, the date and the load of its run."""
    commits = Counter(str(r.get("machine", {}).get("git_commit", ""))[:7] for r in stored.values())
    usual = commits.most_common(1)[0][0] if commits else ""
    lines = [
        f"Most results are from commit `{usual}`; a row from another commit or a changed tree says so.",
        "",
        "| Benchmark | Figure | Measured | Goal | Status | Commit, date (UTC), load |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in stored.items():
        machine = result.get("machine", {})
        commit = str(machine.get("git_commit", ""))[:7] or "?"
        when = str(machine.get("date", ""))[:16].replace("T", " ")
        load_avg = machine.get("loadavg_at_start", [None])[0]
        origin = f"`{commit}`{' (changed tree)' if machine.get('git_dirty') else ''}, {when}, {load_avg}"
        if commit != usual:
            origin = f"**other commit** {origin}"
        for figure in result.get("figures", []):
            unit = str(figure["unit"])
            goal = "" if figure.get("goal") is None else f"{figure['op']} {format_value(figure['goal'], unit)}"
            status = "" if figure.get("met") is None else ("met" if figure["met"] else "**NOT MET**")
            measured = format_value(figure["value"], unit)
            lines.append(f"| {name} | {figure['name']} | {measured} | {goal} | {status} | {origin} |")
    return "\n".join(lines)
