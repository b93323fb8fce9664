"""Field path -> line number, for YAML (from the composed node tree) and TOML (by a simple scan).

Both return a dict from a path tuple (str keys, int list indexes) to a 1-based line; ``line_of``
falls back to the longest known prefix, so an error inside a value still points near it.
YAML also reports duplicate keys, which ``yaml.safe_load`` would silently collapse.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

PathLines = dict[tuple[Any, ...], int]


MAX_INT_DIGITS = 30  # no policy number needs more; Python refuses to convert > 4300 digits anyway


class NumberTooLong(yaml.constructor.ConstructorError):
    """A YAML integer with more than MAX_INT_DIGITS digits (reported with its line)."""


class PolicyYAMLLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's when installed: a policy file parses in milliseconds), reading
    ``1e308`` as a number as YAML 1.2 does (YAML 1.1 needs a dot: ``1.0e308``), and refusing
    integers too long to be a setting before Python converts them."""


PolicyYAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _construct_int(loader: Any, node: yaml.ScalarNode) -> int:
    digits = sum(c.isdigit() for c in node.value)
    if digits > MAX_INT_DIGITS:
        raise NumberTooLong(None, None, f"an integer of {digits} digits is out of range", node.start_mark)
    return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)


PolicyYAMLLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_yaml(text: str) -> tuple[Any, PathLines, list[tuple[tuple[Any, ...], int]]]:
    """Parse once: (data, path -> line, duplicated keys)."""
    root = yaml.compose(text, Loader=PolicyYAMLLoader)
    if root is None:
        return None, {}, []
    loader = PolicyYAMLLoader("")
    try:
        data = loader.construct_document(root)
    finally:
        loader.dispose()
    lines, duplicates = yaml_lines(text, root)
    return data, lines, duplicates


def yaml_lines(text: str, root: yaml.Node | None = None) -> tuple[PathLines, list[tuple[tuple[Any, ...], int]]]:
    """(path -> line, [(path, line) of each duplicated key])."""
    lines: PathLines = {}
    duplicates: list[tuple[tuple[Any, ...], int]] = []
    if root is None:
        root = yaml.compose(text, Loader=PolicyYAMLLoader)
    seen: set[int] = set()  # aliases can make the node graph cyclic

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                sub = (*path, key.value)
                if key.value in keys:
                    duplicates.append((sub, key.start_mark.line + 1))
                keys.add(key.value)
                lines.setdefault(sub, key.start_mark.line + 1)
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault((*path, i), item.start_mark.line + 1)
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return lines, duplicates


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+))*)\s*="""
)


def _key_parts(key: str) -> tuple[str, ...]:
    return tuple(
        p.strip().strip("\"'") for p in re.split(r"\.(?=(?:[^\"']*[\"'][^\"']*[\"'])*[^\"']*$)", key)
    )


def toml_lines(text: str) -> PathLines:
    lines: PathLines = {}
    header: tuple[Any, ...] = ()
    array_counts: dict[tuple[str, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        match = _HEADER.match(raw)
        if match:
            parts = _key_parts(match.group(2))
            if match.group(1) == "[[":  # array of tables: the Nth header is index N
                index = array_counts.get(parts, 0)
                array_counts[parts] = index + 1
                header = (*parts, index)
            else:
                header = parts
            lines.setdefault(header, number)
            continue
        _scan_pairs(raw, header, number, lines)
    return lines


def _scan_pairs(line: str, header: tuple[Any, ...], number: int, lines: PathLines) -> None:
    """Record ``key =`` on this line, following inline tables ``{ a = 1, b = { c = 2 } }``."""
    stack: list[tuple[Any, ...]] = [header]
    position, pending = 0, header
    while position < len(line):
        char = line[position]
        if char == "#":
            return
        if char in "\"'":  # skip a quoted string that is a value, not a key
            key = _KEY.match(line, position)
            if key is None:
                end = line.find(char, position + 1)
                position = len(line) if end < 0 else end + 1
                continue
        if char == "{":
            stack.append(pending)
            position += 1
            continue
        if char == "}":
            if len(stack) > 1:
                stack.pop()
            position += 1
            continue
        key = _KEY.match(line, position) if (position == 0 or line[position - 1] in " \t{,") else None
        if key is not None:
            pending = (*stack[-1], *_key_parts(key.group(1)))
            lines.setdefault(pending, number)
            position = key.end()
            continue
        position += 1


def line_of(lines: PathLines, path: tuple[Any, ...]) -> int | None:
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
