"""Reading a Compose tree (#14, ADR 48): typed reads of a mapping that fail with the key's path
and file:line, and what the mapping of one stack shares. Pure."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping

from warren import validate
from warren.container import OptionError
from warren.mounts import MountError
from warren.stack import keys
from warren.stack.merge import as_mapping
from warren.stack.spec import STACK_LABEL, Finding, StackNetwork
from warren.stack.tree import StackFileError, Where, YList, YMap, join
from warren.text import PLAIN_NUMBER_RE, parse_duration

Reader = Callable[[str], bytes]  # a file's bytes by its absolute path; raises OSError


class Section:
    """A mapping of the tree at `path`: typed reads that raise StackFileError with the line."""

    def __init__(self, node: YMap, path: str, findings: list[Finding]) -> None:
        self.node, self.path, self.findings = node, path, findings

    def where(self, key: str | None = None) -> Where:
        return self.node.at(key) if key is not None else self.node.where

    def error(self, key: str | None, message: str) -> StackFileError:
        return StackFileError(self.where(key), join(self.path, key) if key else self.path, message)

    def check_keys(self, supported: frozenset[str], known: frozenset[str]) -> None:
        for key in self.node:
            if key.startswith("x-") or key in supported:
                continue
            if key in known:
                self.unsupported(key)
            else:
                raise self.error(key, "not a key of the Compose Specification here")

    def unsupported(self, key: str, what: str = "") -> None:
        reason = keys.REASONS.get(key, "")
        message = f"{what or key} is not supported" + (f": {reason}" if reason else "")
        where = self.where(key)
        self.findings.append(Finding(join(self.path, key), where.file, where.line, message))

    def has(self, key: str) -> bool:
        return self.node.get(key) is not None

    def string(self, key: str, default: str = "") -> str:
        value = self.node.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(key, f"expected a string (got {kind_of(value)})")
        return str(value)

    def integer(self, key: str, default: int, low: int = 0, high: int = validate.MAX_REPLICAS) -> int:
        value = self.node.get(key)
        if value is None:
            return default
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
            number = int(value)
        if number is None:
            raise self.error(key, f"expected a whole number (got {shown_value(value)})")
        if not low <= number <= high:
            raise self.error(key, f"must be between {low} and {high} (got {number})")
        return number

    def number(self, key: str, default: float) -> float:
        value = self.node.get(key)
        if value is None:
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and PLAIN_NUMBER_RE.fullmatch(value.strip()):
            return float(value)
        raise self.error(key, f"expected a number (got {shown_value(value)})")

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.node.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self.error(key, f"expected true or false (got {shown_value(value)})")

    def duration(self, key: str, default: float) -> float:
        return self.parsed(key, default, parse_duration)

    def parsed(self, key: str, default: float, parse: Callable[[str], float]) -> float:
        value = self.node.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(key, f"expected a string (got {kind_of(value)})")
        try:
            return parse(str(value))
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)} (got {shown_value(value)})")
        return value

    def section(self, key: str) -> Section | None:
        value = self.node.get(key)
        if value is None:
            return None
        if not isinstance(value, YMap):
            raise self.error(key, f"expected a mapping (got {kind_of(value)})")
        return Section(value, join(self.path, key), self.findings)

    def items(self, key: str) -> list[tuple[object, Where, str]]:
        """A list's items, with where each was written and its path."""
        value = self.node.get(key)
        if value is None:
            return []
        if not isinstance(value, YList):
            raise self.error(key, f"expected a list (got {kind_of(value)})")
        return [(item, value.at(i), join(join(self.path, key), i)) for i, item in enumerate(value)]

    def strings(self, key: str, split_string: bool = False) -> tuple[str, ...]:
        """A list of strings (a string alone, where the specification allows it)."""
        value = self.node.get(key)
        if isinstance(value, str):
            return tuple(shlex.split(value)) if split_string else (value,)
        out = []
        for item, where, path in self.items(key):
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise StackFileError(where, path, f"expected a string (got {kind_of(item)})")
            out.append(str(item))
        return tuple(out)

    def command(self, key: str) -> tuple[str, ...]:
        """A command: a list as it is, a string split as a shell would (Compose's rule)."""
        value = self.node.get(key)
        if isinstance(value, str):
            try:
                return tuple(shlex.split(value))
            except ValueError as exc:
                raise self.error(key, f"cannot split the command: {exc}") from None
        return self.strings(key)

    def mapping(self, key: str) -> dict[str, str | None]:
        """A normalised list-or-dict (merge.as_mapping); scalar values as text."""
        value = as_mapping(self.node.get(key), self.where(key), join(self.path, key))
        if value is None:
            return {}
        if not isinstance(value, YMap):
            raise self.error(key, f"expected a mapping or a list of KEY=VALUE (got {kind_of(value)})")
        out: dict[str, str | None] = {}
        for name, item in value.items():
            if isinstance(item, (YMap, YList)):
                raise StackFileError(value.at(name), join(join(self.path, key), name), "expected a scalar value")
            out[name] = None if item is None else scalar_text(item)
        return out

    def labels(self, key: str) -> dict[str, str]:
        return {name: value or "" for name, value in self.mapping(key).items()}


def scalar_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def kind_of(value: object) -> str:
    if isinstance(value, YMap):
        return "a mapping"
    if isinstance(value, YList):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}" if not isinstance(value, str) else f"the string {shown_value(value)}"


def shown_value(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return repr(text[:80])


def checked(section: Section, key: str | None, check: Callable[[], object]) -> None:
    """Run one of warren's own checks; its error is reported at `key`."""
    try:
        check()
    except (validate.ValidationError, OptionError, MountError) as exc:
        raise section.error(key, str(exc)) from None


class Context:
    """One stack being mapped: its name, the caller's environment, the reader, the findings."""

    def __init__(self, tree: YMap, name: str, environ: Mapping[str, str], read: Reader) -> None:
        self.findings: list[Finding] = []
        self.top = Section(tree, "", self.findings)
        self.name, self.environ, self.read = name, environ, read
        self.label = {STACK_LABEL: name}

    def scoped(self, name: str) -> str:
        return f"{self.name}_{name}"

    def read_file(self, section: Section, key: str, path: str, what: str) -> bytes:
        try:
            return self.read(path)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise section.error(key, f"cannot read the {what} {path}: {reason}") from None


class Declared:
    """What the top level declares, by its key in the file: networks, volumes, secrets, configs, services."""

    def __init__(
        self,
        networks: dict[str, StackNetwork],
        volumes: dict[str, str],
        secrets: dict[str, str],
        configs: dict[str, str],
        services: set[str],
    ) -> None:
        self.networks, self.volumes, self.secrets, self.configs = networks, volumes, secrets, configs
        self.services = services
