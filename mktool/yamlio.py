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

Every problem is located as ``<file>:<line> @ <key path>: <message>`` (:func:`mktool.errors.location`).
Key paths read ``rules[2].when``: mapping keys joined by dots, list items numbered from 0 (the
third rule). The loader records the line of every key and list item (:class:`YamlFile`), and
:class:`Node` is the one typed reader that the rule, channel, policy, plan and score readers
use: each value it refuses is named by file, line and key path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
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
        self.lines: dict[str, int] = {}  # key path -> 1-based line of its key or item

    # -- scanning and composing: bounded depth before PyYAML's recursion can overflow ----------
    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        """``[[[[…`` is refused at the bracket: PyYAML's scanner is quadratic in flow depth."""
        if self.flow_level >= MAX_DEPTH:
            raise self.located(self.get_mark(), "", f"brackets nested deeper than {MAX_DEPTH} levels; "
                                                    "a rule file needs only a few")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise self.located(self.peek_event().start_mark, "",
                                   f"nested deeper than {MAX_DEPTH} levels; a rule file needs only a few")
            return super().compose_node(parent, index)
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

    def _walk(self, node: Node, path: str, line: int | None = None) -> None:
        """Record key paths and lines, refuse duplicate keys (each node once: aliases are not re-walked)."""
        self.lines.setdefault(path, line if line is not None else node.start_mark.line + 1)
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
                self._walk(value_node, child, key_node.start_mark.line + 1)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, f"{path}[{i}]")

    # -- constructing: a value Python cannot build is a located error, not a traceback ----------
    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:
            reason = str(exc).split(";")[0]  # drop Python's advice on its own settings
            raise self.located(node.start_mark, self._paths.get(id(node), ""),
                               f"cannot read {short_repr(getattr(node, 'value', ''), 60)} ({reason})") from None

    def construct_yaml_timestamp(self, node: ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:
            raise self.located(node.start_mark, self._paths.get(id(node), ""),
                               f"'{node.value}' is not a date of the calendar ({exc}); write YYYY-MM-DD") from None

    def located(self, mark: Any, path: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=mark.line + 1 if mark is not None else None,
                           line_column=mark.column + 1 if mark is not None else None, key=path or None)


RuleFileLoader.add_constructor("tag:yaml.org,2002:timestamp", RuleFileLoader.construct_yaml_timestamp)


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _key_text(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return str(node.value)
    return f"<{type(node).__name__.removesuffix('Node').lower()} key>"


def _decode(raw: bytes, file: str) -> str:
    """UTF-8 text (a BOM is dropped); a GBK or binary file is named with the first bad byte's line."""
    if b"\x00" in raw:
        at = raw.index(b"\x00")
        line = raw.count(b"\n", 0, at) + 1
        raise ConfigError("a NUL byte: a binary file (or UTF-16 text), not a YAML rule file; "
                          "save it as UTF-8 text or move it out of the rules folder", file=file, line=line)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"not UTF-8 text (byte 0x{raw[exc.start]:02X}; a GBK or "
                          "other legacy encoding?); save the file as UTF-8, e.g. iconv -f GBK -t UTF-8",
                          file=file, line=line, line_column=column) from None
    return text.removeprefix("\ufeff")


def load_yaml(path: Path) -> Any:
    """Parse one YAML rule file; every refusal names the file, line (and key path)."""
    return read_yaml(path).data


def read_yaml(path: Path) -> YamlFile:
    """Parse one YAML rule file with the line of every key path; refusals name file, line, key path."""
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
            return YamlFile(file, None, {})
        loader.check_tree(node)
        return YamlFile(file, loader.construct_document(node), loader.lines)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or type(exc).__name__
        raise ConfigError(f"invalid YAML ({problem})", file=file, line=mark.line + 1 if mark else None,
                          line_column=mark.column + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:  # a control character, e.g. \x07
        line = text.count("\n", 0, exc.position) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise ConfigError(f"invalid YAML (character {char!r} is not allowed in YAML text)",
                          file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                          file=file) from None
    except RecursionError:  # pragma: no cover - the depth limits above come first
        raise ConfigError(f"nested too deeply (more than {MAX_DEPTH} levels)", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()


def unknown_keys(mapping: dict[str, Any], allowed: set[str], *, file: Path, at: str) -> None:
    """Refuse typos such as `wen:` for `when:` (the rule-test case readers' form; rule files use Located)."""
    extra = sorted(set(mapping) - allowed)
    if extra:
        hints = [f"'{key}'{suggest(str(key), sorted(allowed))}" for key in extra]
        raise ConfigError(
            f"{at or 'top level'}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(hints)}; "
            f"allowed: {', '.join(sorted(allowed))}",
            file=str(file),
        )


# -- the typed reader: every refusal located as <file>:<line> @ <key path> ----------------------------
def suggest(name: str, known: Iterator[str] | list[str] | tuple[str, ...] | set[str] | dict[str, Any]) -> str:
    """`` (did you mean 'x'?)`` for a close match among ``known``, else ''."""
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _kind(t: type) -> str:
    return {str: "text", list: "list", dict: "mapping", int: "int", float: "float", bool: "bool"}.get(t, t.__name__)


@dataclass(frozen=True)
class YamlFile:
    """One parsed rule file: its data and the 1-based line of every key path ('' is the document)."""

    file: str
    data: Any
    lines: dict[str, int] = field(default_factory=dict, repr=False)

    def line(self, path: str) -> int | None:
        """The line of ``path``, else of its nearest enclosing key that has one (a missing key: its mapping)."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""

    def error(self, path: str, message: str, *, hint: str | None = None, label: str | None = None) -> ConfigError:
        """A problem at ``path`` (``label`` names the entry for people: ``rule R6``)."""
        key = f"{path} ({label})" if path and label else (path or label)
        return ConfigError(message, file=self.file, line=self.line(path), key=key or None, hint=hint)

    def where(self, path: str, label: str | None = None) -> str:
        """The location text of ``path`` (what sqlcheck puts before its messages)."""
        return self.error(path, "", label=label).render().removesuffix(": ")

    @property
    def root(self) -> Located:
        return Located(self, "", self.data)


@dataclass(frozen=True)
class Located:
    """A value of a rule file at a key path: reads its keys as typed values, or says where and why not.

    ``label`` names the entry in messages (``rule R6``, ``policy RET_A``) beside its key path.
    """

    doc: YamlFile
    path: str
    value: Any
    label: str | None = None

    # -- navigation ----------------------------------------------------------------------------------
    def key_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else str(key)

    def child(self, key: str | int, *, label: str | None = None) -> Located:
        """The value at ``key`` (None when the key is missing) as a node; it keeps this node's label."""
        if isinstance(key, int):
            value = self.value[key] if isinstance(self.value, list) and 0 <= key < len(self.value) else None
        else:
            value = self.value.get(key) if isinstance(self.value, dict) else None
        return Located(self.doc, self.key_path(key), value, label if label is not None else self.label)

    def labelled(self, label: str | None) -> Located:
        return Located(self.doc, self.path, self.value, label)

    def items(self) -> list[Located]:
        """The items of a list value, each a node ``path[i]``."""
        return [self.child(i) for i in range(len(self.value))] if isinstance(self.value, list) else []

    def entries(self) -> list[tuple[Any, Located]]:
        """(key, node) of a mapping value, in file order."""
        return [(k, self.child(str(k))) for k in self.value] if isinstance(self.value, dict) else []

    # -- errors ---------------------------------------------------------------------------------------
    def error(self, message: str, *, hint: str | None = None) -> ConfigError:
        return self.doc.error(self.path, message, hint=hint, label=self.label)

    def where(self) -> str:
        return self.doc.where(self.path, self.label)

    def __contains__(self, key: str) -> bool:
        return isinstance(self.value, dict) and key in self.value

    # -- typed reads of a key of this mapping --------------------------------------------------------------
    def get(self, key: str, types: type | tuple[type, ...], *, required: bool = False) -> Any:
        """``value[key]`` checked against ``types`` (None when missing and not required)."""
        node = self.child(key)
        if not isinstance(self.value, dict):
            raise self.error(f"expected a mapping, got {type(self.value).__name__} {short_repr(self.value)}")
        if node.value is None:
            if required:
                raise node.error("missing required key")
            return None
        allowed = types if isinstance(types, tuple) else (types,)
        if not isinstance(node.value, allowed) or (isinstance(node.value, bool) and bool not in allowed):
            raise node.error(f"expected {' or '.join(_kind(t) for t in allowed)}, got {type(node.value).__name__} "
                             f"{short_repr(node.value)}")
        return node.value

    def text(self, key: str, *, required: bool = False) -> str | None:
        """A short text; YAML numbers (``group: 6``) are accepted and kept as their text."""
        value = self.get(key, (str, int, float), required=required)
        if value is None:
            return None
        text = str(value).strip()
        if required and not text:
            raise self.child(key).error("must not be empty")
        return text or None

    def integer(self, key: str, *, minimum: int = 0) -> int | None:
        value = self.get(key, int)
        if value is not None and value < minimum:
            raise self.child(key).error(f"must be ≥ {minimum}, got {value}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], *, required: bool = False,
               default: str | None = None) -> str | None:
        value = self.text(key, required=required)
        if value is None:
            return default
        if value not in choices:
            raise self.child(key).error(f"'{value}' is not one of {', '.join(choices)}{suggest(value, choices)}")
        return value

    def names(self, key: str) -> tuple[str, ...] | None:
        """A list of names (channels, columns, families); duplicates refused."""
        value = self.get(key, list)
        if value is None:
            return None
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.child(key).child(i).error(f"expected a list of names, found {short_repr(item)}")
            if item in out:
                raise self.child(key).child(i).error(f"'{item}' is listed twice")
            out.append(item.strip())
        return tuple(out)

    def date(self, key: str) -> dt.date | None:
        value = self.child(key).value
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return dt.date.fromisoformat(value.strip())
        raise self.child(key).error(f"expected a date YYYY-MM-DD, got {short_repr(value)}")

    def number(self) -> float:
        """This value as a number, also written as a fraction string such as "1/3" (AHP matrices)."""
        value = self.value
        if isinstance(value, bool):
            raise self.error(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(Fraction(value.strip()))
            except (ValueError, ZeroDivisionError):
                pass
        raise self.error(f"expected a number or a fraction like 1/3, got {short_repr(value)}")

    def check_keys(self, allowed: set[str]) -> None:
        """Refuse typos such as `wen:` for `when:` instead of silently ignoring them (located at the first)."""
        if not isinstance(self.value, dict):
            return
        extra = sorted((k for k in self.value if k not in allowed), key=str)
        if extra:
            hints = [f"'{key}'{suggest(str(key), sorted(allowed))}" for key in extra]
            line = self.doc.line(self.key_path(str(extra[0])))
            raise ConfigError(f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(hints)}; "
                              f"allowed: {', '.join(sorted(allowed))}", file=self.doc.file, line=line,
                              key=self.doc.error(self.path, "", label=self.label).key)
