"""deploy/prometheus/rules.yml (#16, ADR 61): Prometheus's own `promtool` checks the rules and runs
their unit tests (rules_test.yml), and every alert is tested both firing and not firing, carries a
severity and points at its section of the troubleshooting guide. No Warren process is started:
the rules against a real cluster are tests/integration/test_monitoring.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = DEPLOY / "rules.yml"
RULES_TEST = DEPLOY / "rules_test.yml"
SEVERITIES = {"warning", "critical"}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is missing: it comes with Debian's prometheus (make deps)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY)


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fired == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section() -> None:
    for rule in _alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule["annotations"]["runbook_url"] == f"docs/guide/troubleshooting.md#{name.lower()}"


def test_the_required_alerts_exist() -> None:
    required = {
        "WarrenNoLeader",
        "WarrenQuorumAtRisk",
        "WarrenRaftApplyLag",
        "WarrenNodeDown",
        "WarrenTaskRestartingOften",
        "WarrenServiceBelowDesired",
        "WarrenUpdatePausedOrRolledBack",
        "WarrenCertificateExpiringSoon",
        "WarrenWorkerDiskNearlyFull",
    }
    assert required <= {rule["alert"] for rule in _alerts()}
