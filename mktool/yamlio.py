"""Reading the analysts' YAML files with errors that point at the file and the dotted key."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from mktool.errors import ConfigError


def load_yaml(path: Path) -> Any:
    """Parse one YAML file; a syntax error names the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}invalid YAML ({problem})", file=str(path)) from None


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
        raise ConfigError(f"{where}: expected {names}, got {type(value).__name__} {value!r}", file=str(file))
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def unknown_keys(mapping: dict[str, Any], allowed: set[str], *, file: Path, at: str) -> None:
    """Refuse typos such as `wen:` for `when:` instead of silently ignoring them."""
    extra = sorted(set(mapping) - allowed)
    if extra:
        import difflib

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
    raise ConfigError(f"{at}: expected a number or a fraction like 1/3, got {value!r}", file=str(file))
