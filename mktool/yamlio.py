"""Reading the analysts' YAML files with errors that point at the file, line and dotted key.

Rule files are edited by hand, copied between machines and sometimes saved by the wrong
editor, so the reader refuses (with the file, line and key path) what PyYAML's plain
``safe_load`` would accept silently or answer with a traceback:

- a mapping with the same key twice (two ``when:`` in one rule): YAML keeps the last one,
  so a rule would quietly lose its first condition;
- a file that is not UTF-8 text (a GBK export, a binary dropped in the folder);
- nesting deeper than ``MAX_DEPTH`` levels (PyYAML recurses per level: 10,000 levels are a
  ``RecursionError``) and alias "bombs" whose expansion exceeds ``MAX_NODES`` nodes (a few
  hundred bytes that grow to gigabytes as soon as anything walks or prints the value);
- an impossible date such as ``valid_to: 2026-13-01``, and any other scalar Python cannot
  build (an integer of 5,000 digits).

Key paths read ``rules[2].when``: mapping keys joined by dots, list items numbered from 1.
"""

from __future__ import annotations

import difflib
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mktool.errors import ConfigError, short_repr

MAX_DEPTH = 100  # levels of nesting, aliases expanded; the shipped files use fewer than 10
MAX_NODES = 100_000  # values after alias expansion; the shipped files hold a few thousand
MAX_BYTES = 10 * 2**20  # a rule file is a few kilobytes; anything this big is not one
MERGE_TAG = "tag:yaml.org,2002:merge"


class RuleFileLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the limits and checks above; one instance per file."""

    def __init__(self, text: str, *, file: str) -> None:
        super().__init__(text)
        self.file = file
        self._depth = 0
        self._paths: dict[int, str] = {}  # id(node) -> its key path, for constructor errors

    # -- scanning and composing: bounded depth before PyYAML's recursion can overflow ----------
    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        """``[[[[…`` is refused at the bracket: PyYAML's scanner is quadratic in flow depth."""
        if self.flow_level >= MAX_DEPTH:
            raise self.located(self.get_mark(), "", f"brackets nested deeper than {MAX_DEPTH} levels; "
                                                    "a rule file needs only a few")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise self.located(self.peek_event().start_mark, "",
                                   f"nested deeper than {MAX_DEPTH} levels; a rule file needs only a few")
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    # -- the composed tree: size, depth and cycles with aliases expanded, duplicate keys ----------
    def check_tree(self, root: Node) -> None:
        """Measure the tree as a consumer would see it, then check each mapping once."""
        size: dict[int, int] = {}
        depth: dict[int, int] = {}
        entered: set[int] = set()
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:  # iterative post-order over the node graph (aliases share nodes)
            node, children_done = stack.pop()
            key = id(node)
            children = _children(node)
            if not children_done:
                if key in size:
                    continue
                entered.add(key)
                stack.append((node, True))
                for child in children:
                    if id(child) in entered and id(child) not in size:
                        raise self.located(child.start_mark, "", "an alias refers to the value that contains it "
                                                                 "(a value that never ends)")
                    if id(child) not in size:
                        stack.append((child, False))
                continue
            if key in size:
                continue
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_NODES:
                raise self.located(node.start_mark, "", f"aliases expand this value to more than {MAX_NODES:,} "
                                                        "values (an alias bomb?); write the values out instead")
            if depth[key] > MAX_DEPTH:
                raise self.located(node.start_mark, "", f"aliases nest this value deeper than {MAX_DEPTH} levels")
        self._walk(root, "")

    def _walk(self, node: Node, path: str) -> None:
        """Record key paths and refuse duplicate keys (each node once: aliases are not re-walked)."""
        if id(node) in self._paths:
            return
        self._paths[id(node)] = path
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}  # keyed by the keys' Python values: what the dict would merge
            for key_node, value_node in node.value:
                if key_node.tag == MERGE_TAG:
                    self._walk(value_node, path)
                    continue
                name = _key_text(key_node)
                child = f"{path}.{name}" if path else name
                if isinstance(key_node, ScalarNode):
                    # `yes:` and `true:`, or `1:` and `1.0:`, are one key once built.
                    ident = self.construct_object(key_node)
                    if ident in seen:
                        first = seen[ident].start_mark.line + 1
                        raise self.located(key_node.start_mark, child,
                                           f"duplicate key '{name}' (first at line {first}, again at line "
                                           f"{key_node.start_mark.line + 1}); YAML would silently keep only the "
                                           "last one: merge them or remove one")
                    seen[ident] = key_node
                self._walk(value_node, child)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value, 1):
                self._walk(item, f"{path}[{i}]")

    # -- constructing: a value Python cannot build is a located error, not a traceback ----------
    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:
            reason = str(exc).split(";")[0]  # drop Python's advice on its own settings
            raise self.located(node.start_mark, self._paths.get(id(node), ""),
                               f"cannot read {short_repr(getattr(node, 'value', ''), 60)} ({reason})") from None

    def construct_yaml_timestamp(self, node: ScalarNode) -> Any:  # type: ignore[override]
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:
            raise self.located(node.start_mark, self._paths.get(id(node), ""),
                               f"'{node.value}' is not a date of the calendar ({exc}); write YYYY-MM-DD") from None

    def located(self, mark: Any, path: str, message: str) -> ConfigError:
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return ConfigError(f"{where}{path + ': ' if path else ''}{message}", file=self.file)


RuleFileLoader.add_constructor("tag:yaml.org,2002:timestamp", RuleFileLoader.construct_yaml_timestamp)


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _key_text(node: Node) -> str:
    return str(node.value) if isinstance(node, ScalarNode) else f"<{type(node).__name__.removesuffix('Node').lower()} key>"


def _decode(raw: bytes, file: str) -> str:
    """UTF-8 text (a BOM is dropped); a GBK or binary file is named with the first bad byte's line."""
    if b"\x00" in raw:
        at = raw.index(b"\x00")
        line = raw.count(b"\n", 0, at) + 1
        raise ConfigError(f"line {line}: a NUL byte: a binary file (or UTF-16 text), not a YAML rule file; "
                          "save it as UTF-8 text or move it out of the rules folder", file=file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"line {line}, column {column}: not UTF-8 text (byte 0x{raw[exc.start]:02X}; a GBK or "
                          "other legacy encoding?); save the file as UTF-8, e.g. iconv -f GBK -t UTF-8",
                          file=file) from None
    return text.removeprefix("\ufeff")


def load_yaml(path: Path) -> Any:
    """Parse one YAML rule file; every refusal names the file, line and column (and key path)."""
    file = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=file) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"larger than {MAX_BYTES // 2**20} MB: not a rule file", file=file)
    text = _decode(raw, file)
    loader: RuleFileLoader | None = None
    try:
        loader = RuleFileLoader(text, file=file)  # checks every character first
        node = loader.get_single_node()
        if node is None:
            return None
        loader.check_tree(node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or type(exc).__name__
        raise ConfigError(f"{where}invalid YAML ({problem})", file=file) from None
    except yaml.reader.ReaderError as exc:  # a control character, e.g. \x07
        line = text.count("\n", 0, exc.position) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise ConfigError(f"line {line}: invalid YAML (character {char!r} is not allowed in YAML text)",
                          file=file) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                          file=file) from None
    except RecursionError:  # pragma: no cover - the depth limits above come first
        raise ConfigError(f"nested too deeply (more than {MAX_DEPTH} levels)", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()


def field(mapping: Any, key: str, types: type | tuple[type, ...], *, file: Path, at: str,
          required: bool = True, default: Any = None) -> Any:
    """``mapping[key]`` checked against ``types``; errors read "<file>: <at>.<key>: …"."""
    where = f"{at}.{key}" if at else key
    if not isinstance(mapping, dict):
        raise ConfigError(f"{at or 'top level'}: expected a mapping, got {type(mapping).__name__}", file=str(file))
    if key not in mapping or mapping[key] is None:
        if required:
            raise ConfigError(f"{where}: missing required key", file=str(file))
        return default
    value = mapping[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        names = " or ".join(t.__name__ for t in _as_tuple(types))
        raise ConfigError(f"{where}: expected {names}, got {type(value).__name__} {short_repr(value)}", file=str(file))
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def unknown_keys(mapping: dict[str, Any], allowed: set[str], *, file: Path, at: str) -> None:
    """Refuse typos such as `wen:` for `when:` instead of silently ignoring them."""
    extra = sorted(set(mapping) - allowed)
    if extra:
        hints = []
        for key in extra:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(
            f"{at or 'top level'}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(hints)}; "
            f"allowed: {', '.join(sorted(allowed))}",
            file=str(file),
        )


def number(value: Any, *, file: Path, at: str) -> float:
    """A number, also written as a fraction string such as "1/3" (AHP comparison matrices)."""
    if isinstance(value, bool):
        raise ConfigError(f"{at}: expected a number, got {value!r}", file=str(file))
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{at}: expected a number or a fraction like 1/3, got {short_repr(value)}", file=str(file))
