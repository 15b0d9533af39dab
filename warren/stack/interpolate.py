"""Variables in Compose files (#14, ADR 48): `.env` and `env_file` contents, and interpolation. Pure.

The forms of the Compose Specification: `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty),
`${VAR-default}` (unset), `${VAR:?message}` and `${VAR?message}` (an error), `${VAR:+other}`
and `${VAR+other}` (the other value if set), and `$$` for a literal `$`. A default may hold
variables itself (`${A:-${B}}`). Values are interpolated, keys are not (as in Compose).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from warren.stack.tree import StackFileError, Where, YList, YMap, join

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_LINE_RE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*(?:=(.*))?")


class InterpolationError(ValueError):
    """A variable that a `?` form requires is not set, or a `$` that starts no variable."""


class UnsetVariable(NamedTuple):
    """A variable used with no default and not set: Compose reads it as empty, with a warning."""

    name: str
    path: str
    where: Where


def parse_env_file(text: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`KEY=VALUE` lines, as Compose's env files: `#` comments and blank lines skipped, an
    optional `export `, values in single quotes kept as written, in double quotes with
    `\\n`-style escapes, unquoted ones up to a ` #` comment. A bare `KEY` takes the caller's
    value, if `environ` has one. Raises ValueError naming the line number of a bad line."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE_RE.fullmatch(line)
        if not match:
            raise ValueError(f"line {number}: expected KEY=VALUE")
        key, raw = match.group(1), match.group(2)
        if raw is None:
            if environ is not None and key in environ:
                values[key] = environ[key]
            continue
        values[key] = _env_value(raw.strip(), number)
    return values


def _env_value(raw: str, number: int) -> str:
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = raw.find(quote, 1)
        while quote == '"' and end > 0 and raw[end - 1] == "\\":
            end = raw.find(quote, end + 1)
        if end < 0:
            raise ValueError(f"line {number}: the quote {quote} is not closed")
        inner = raw[1:end]
        if quote == '"':
            inner = inner.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"').replace("\\\\", "\\")
        return inner
    comment = raw.find(" #")
    return raw[:comment].rstrip() if comment >= 0 else raw


def substitute(text: str, variables: Mapping[str, str], unset: list[str] | None = None) -> str:
    """`text` with its variables replaced. Raises InterpolationError."""
    out: list[str] = []
    pos = 0
    while True:
        dollar = text.find("$", pos)
        if dollar < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:dollar])
        nxt = text[dollar + 1 : dollar + 2]
        if nxt == "$":
            out.append("$")
            pos = dollar + 2
        elif nxt == "{":
            end = _closing_brace(text, dollar + 2)
            out.append(_braced(text[dollar + 2 : end], variables, unset))
            pos = end + 1
        else:
            match = _NAME_RE.match(text, dollar + 1)
            if not match:
                raise InterpolationError("a $ that starts no variable: write $$ for a literal $")
            out.append(_value(match.group(), variables, unset))
            pos = match.end()


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    pos = start
    while pos < len(text):
        if text.startswith("${", pos):
            depth, pos = depth + 1, pos + 2
            continue
        if text[pos] == "}":
            depth -= 1
            if depth == 0:
                return pos
        pos += 1
    raise InterpolationError(f"{text[start - 2 :]!r}: the ${{ is not closed")


def _value(name: str, variables: Mapping[str, str], unset: list[str] | None) -> str:
    if name not in variables:
        if unset is not None and name not in unset:
            unset.append(name)
        return ""
    return variables[name]


def _braced(inner: str, variables: Mapping[str, str], unset: list[str] | None) -> str:
    match = _NAME_RE.match(inner)
    if not match:
        raise InterpolationError(f"invalid variable ${{{inner}}}: a name of letters, digits and '_'")
    name, rest = match.group(), inner[match.end() :]
    if not rest:
        return _value(name, variables, unset)
    colon = rest.startswith(":")
    op, word = (rest[1:2], rest[2:]) if colon else (rest[:1], rest[1:])
    value = variables.get(name)
    present = value is not None and (value != "" or not colon)
    if op == "-":
        return value if present and value is not None else substitute(word, variables, unset)
    if op == "?":
        if not present:
            why = substitute(word, variables, unset) or ("is not set or empty" if colon else "is not set")
            raise InterpolationError(f"required variable {name} is missing: {why}")
        return value or ""
    if op == "+":
        return substitute(word, variables, unset) if present else ""
    raise InterpolationError(f"invalid variable ${{{inner}}}: use ${{VAR}}, ${{VAR:-default}} or ${{VAR:?error}}")


def interpolate(tree: YMap, variables: Mapping[str, str]) -> list[UnsetVariable]:
    """Replace the variables in every string value of `tree`, in place; the variables used but
    not set. Raises StackFileError naming the key path and line of the value."""
    unset: list[UnsetVariable] = []
    _walk(tree, "", variables, unset)
    return unset


def _walk(node: YMap | YList, path: str, variables: Mapping[str, str], unset: list[UnsetVariable]) -> None:
    entries: list[tuple[str | int, object, Where]]
    if isinstance(node, YMap):
        entries = [(key, value, node.at(key)) for key, value in node.items()]
    else:
        entries = [(index, value, node.at(index)) for index, value in enumerate(node)]
    for key, value, where in entries:
        child = join(path, key)
        if isinstance(value, (YMap, YList)):
            _walk(value, child, variables, unset)
        elif isinstance(value, str) and "$" in value:
            names: list[str] = []
            try:
                new = substitute(value, variables, names)
            except InterpolationError as exc:
                raise StackFileError(where, child, str(exc)) from None
            unset.extend(UnsetVariable(name, child, where) for name in names)
            node[key] = new  # type: ignore[index]  # a str key for a YMap, an int for a YList
