"""A Compose file as a tree that remembers where each value was written (#14, ADR 48). Pure.

PyYAML's safe loader composes the nodes (anchors, aliases and `<<` merge keys included); each
mapping becomes a `YMap` and each sequence a `YList` that keep the file and line of each entry,
so that every later error, after interpolation and merging, still names the line it is about.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import yaml

from warren.text import escape_control

MAX_NODES = 200_000  # values in one file, aliases expanded: a "billion laughs" stops here


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans, as Compose reads them (Go's yaml.v3): `restart: no` and
    `DEBUG: on` are strings, only true and false are booleans."""


_BOOL = "tag:yaml.org,2002:bool"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class Where(NamedTuple):
    file: str
    line: int  # 1-based


class StackFileError(ValueError):
    """A stack that cannot be loaded; str() is one line naming the file, line and key path,
    e.g. `compose.yaml:12: services.web.ports[0]: invalid port "80:x"`."""

    def __init__(self, where: Where, path: str, message: str) -> None:
        self.where, self.path, self.message = where, path, message
        prefix = f"{where.file}:{where.line}: " if where.line else f"{where.file}: "
        # one line whatever the file holds: a key may be "a\nb", a value may carry escapes
        super().__init__(escape_control(f"{prefix}{path}: {message}" if path else f"{prefix}{message}"))


class YMap(dict[str, object]):
    """A mapping, and where each of its keys was written."""

    def __init__(self, where: Where) -> None:
        super().__init__()
        self.where = where
        self.key_where: dict[str, Where] = {}

    def put(self, key: str, value: object, where: Where) -> None:
        self[key] = value
        self.key_where[key] = where

    def at(self, key: str) -> Where:
        return self.key_where.get(key, self.where)


class YList(list[object]):
    """A sequence, and where each of its items was written."""

    def __init__(self, where: Where) -> None:
        super().__init__()
        self.where = where
        self.item_where: list[Where] = []

    def add(self, value: object, where: Where) -> None:
        self.append(value)
        self.item_where.append(where)

    def at(self, index: int) -> Where:
        return self.item_where[index] if 0 <= index < len(self.item_where) else self.where


def join(path: str, key: str | int) -> str:
    """`services.web` + `ports` -> `services.web.ports`; + 0 -> `services.web.ports[0]`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def parse_yaml(text: str, file: str) -> YMap:
    """The document in `text` (an empty one is an empty mapping). A syntax error, a duplicate
    key, a second document or a top level that is not a mapping raise StackFileError."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, found before parsing
        line = text.count("\n", 0, exc.position) + 1
        raise StackFileError(
            Where(file, line), "", f"invalid YAML: {exc.reason} (character #x{exc.character:04x})"
        ) from None
    try:
        node = loader.get_single_node()
        tree = _Converter(loader, file).convert(node, "") if node is not None else YMap(Where(file, 1))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise StackFileError(Where(file, mark.line + 1 if mark else 0), "", f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise StackFileError(Where(file, 0), "", f"invalid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:  # thousands of nested [ or {, or an alias inside its own anchor
        raise StackFileError(
            Where(file, 0), "", "invalid YAML: nested too deeply, or an alias refers to itself"
        ) from None
    finally:
        loader.dispose()
    if not isinstance(tree, YMap):
        raise StackFileError(Where(file, 1), "", "a Compose file is a mapping (services:, networks:...) at the top")
    return tree


class _Converter:
    def __init__(self, loader: _Loader, file: str) -> None:
        self.loader, self.file, self.count = loader, file, 0

    def where(self, node: yaml.Node) -> Where:
        return Where(self.file, node.start_mark.line + 1)

    def key(self, node: yaml.Node, path: str) -> str:
        key = self.loader.construct_object(node, deep=True)
        if not isinstance(key, (str, int, float)) or isinstance(key, bool):
            raise StackFileError(self.where(node), path, f"a key must be a string (got {key!r})")
        return str(key)

    def convert(self, node: yaml.Node, path: str) -> object:
        self.count += 1
        if self.count > MAX_NODES:
            raise StackFileError(self.where(node), path, f"the file holds more than {MAX_NODES} values")
        if isinstance(node, yaml.CollectionNode) and node.tag not in (_MAP, _SEQ):
            # Compose's !reset and !override, or a language tag: honoured nowhere here, so refused
            raise StackFileError(self.where(node), path, f"the YAML tag {node.tag} is not supported")
        if isinstance(node, yaml.MappingNode):
            explicit = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
            self.loader.flatten_mapping(node)  # `<<: *anchor` merge keys, as the safe loader does
            merged_count = len(node.value) - explicit  # flatten_mapping puts the merged entries first
            mapping = YMap(self.where(node))
            merged: dict[str, tuple[yaml.Node, yaml.Node]] = {}
            for index, (key_node, value_node) in enumerate(node.value):
                name = self.key(key_node, path)
                if index < merged_count:
                    merged[name] = (key_node, value_node)  # the later wins: PyYAML orders them so
                    continue
                if name in mapping:
                    raise StackFileError(self.where(key_node), join(path, name), "the key is given twice")
                mapping.put(name, self.convert(value_node, join(path, name)), self.where(key_node))
            for name, (key_node, value_node) in merged.items():
                if name not in mapping:  # an explicit key overrides a merged one
                    mapping.put(name, self.convert(value_node, join(path, name)), self.where(key_node))
            return mapping
        if isinstance(node, yaml.SequenceNode):
            sequence = YList(self.where(node))
            for index, item in enumerate(node.value):
                sequence.add(self.convert(item, join(path, index)), self.where(item))
            return sequence
        value = self.loader.construct_object(node, deep=True)
        if value is not None and not isinstance(value, (str, int, float, bool)):
            # timestamps and binary: Compose has no such values; keep what was written
            value = node.value if isinstance(node.value, str) else str(value)
        return value
