"""The type checker's configuration keeps up with the pure core (ADR 32).

The import contract in pyproject.toml names the pure modules; mypy's strict override must cover
each of them, or a module added to the core would be checked only with the baseline."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# The per-module flags of `mypy --strict` (the global-only ones are in [tool.mypy]).
STRICT_FLAGS = {
    "disallow_any_generics",
    "disallow_subclassing_any",
    "disallow_untyped_calls",
    "disallow_untyped_defs",
    "disallow_incomplete_defs",
    "disallow_untyped_decorators",
    "warn_return_any",
    "no_implicit_reexport",
}


def _config() -> dict[str, Any]:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def _matches(pattern: str, module: str) -> bool:
    """mypy's override patterns: `a.b` is that module; `a.b.*` is it and its submodules."""
    if pattern.endswith(".*"):
        base = pattern[:-2]
        return module == base or module.startswith(base + ".")
    return module == pattern


def _pure_modules(config: dict[str, Any]) -> list[str]:
    """The source modules of the contract that forbids I/O libraries to the core."""
    contracts = config["tool"]["importlinter"]["contracts"]
    pure = [c for c in contracts if c.get("type") == "forbidden" and "asyncio" in c.get("forbidden_modules", ())]
    assert pure, "no import contract forbids asyncio: which modules are the pure core?"
    return [m for c in pure for m in c["source_modules"]]


def _strict_patterns(config: dict[str, Any]) -> list[str]:
    overrides = config["tool"]["mypy"].get("overrides", [])
    strict = [o for o in overrides if all(o.get(flag) is True for flag in STRICT_FLAGS)]
    assert len(strict) == 1, f"expected one override with every strict flag, found {len(strict)}"
    modules = strict[0]["module"]
    return [modules] if isinstance(modules, str) else list(modules)


def test_every_pure_module_is_checked_strictly() -> None:
    config = _config()
    patterns = _strict_patterns(config)
    loose = [m for m in _pure_modules(config) if not any(_matches(p, m) for p in patterns)]
    assert not loose, f"pure modules missing from mypy's strict override in pyproject.toml: {loose}"


def test_the_baseline_covers_the_package_and_keeps_ignores_honest() -> None:
    mypy = _config()["tool"]["mypy"]
    assert "warren" in mypy["files"]
    assert mypy["check_untyped_defs"] is True
    assert mypy["warn_unused_ignores"] is True
    # Only generated code may be skipped, never a package of ours.
    generated = {"warren.api.v1.*", "containerd.*"}
    for override in mypy.get("overrides", []):
        if override.get("ignore_errors"):
            modules = override["module"]
            assert set([modules] if isinstance(modules, str) else modules) <= generated, override


def test_override_patterns_match_as_mypy_does() -> None:
    assert _matches("warren.commands.*", "warren.commands")
    assert _matches("warren.commands.*", "warren.commands.handlers")
    assert not _matches("warren.commands.*", "warren.commandsx")
    assert not _matches("warren.text", "warren.text.sub")
