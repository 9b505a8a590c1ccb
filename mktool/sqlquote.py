"""The one place where a value from a YAML file (or the command line) becomes SQL text.

Generated SQL embeds few outside values, but each one is a way in: a value tier named
``low' || (SELECT ... FROM read_text('/etc/hostname')) || '`` pasted between quotes runs the
read when ``mktool score`` builds the view. So every embedding goes through this module:

* names that become **identifiers** or are compared as **keys** (score columns, matrix,
  family and channel names, rule and policy ids) are validated when the file is loaded —
  :func:`check_name`, :func:`check_id` — and the error names the file, the key and the value;
* text shown or compared as a **label** (value-tier names) is validated by
  :func:`check_label`: any script (``高价值``), no quotes, no control characters;
* every **literal** (tier names, params, salts, file paths, settings such as
  ``memory_limit``) is written by :func:`quote_literal`, never pasted between quotes by hand;
* an identifier is written by :func:`quote_identifier`.

Bound parameters (``?`` / ``$name``) remain the first choice wherever DuckDB accepts them;
this module is for the places it does not (a CASE branch built per tier, ``SET``, ``COPY ... TO``,
``ATTACH``, a table function's file argument).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from mktool.errors import ConfigError

__all__ = [
    "ID_RE",
    "NAME_RE",
    "check_id",
    "check_label",
    "check_name",
    "is_id",
    "is_name",
    "quote_identifier",
    "quote_literal",
]

NAME_RE = re.compile(r"[a-z][a-z0-9_]*")  # matrix, family, channel and score-column names
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # rule and policy ids
MAX_NAME_LENGTH = 64
# Characters a label may not hold: quotes (a label is compared in rules as 'high', and a quote
# in it is either a mistake or an attack) and control characters (invisible in reports).
# Invisible format characters too (zero-width space, BOM, soft hyphen, direction marks): a
# tier named 'high\u200b' prints as high and never equals the 'high' a rule compares it to.
_LABEL_FORBIDDEN = re.compile(r"['\"`\\\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
                              r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]")


def quote_literal(value: Any) -> str:
    """``value`` as a DuckDB literal: strings quoted with ``'`` doubled, finite numbers, dates.

    Raises ``ValueError`` for what has no safe literal form (NaN or infinity, a NUL character,
    an unknown type): callers validate their input first, this is the last line of defence.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no SQL literal: use a finite number")
        return repr(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value!r} has no SQL literal: use a finite number")
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP {_quote_text(value.isoformat(sep=' '))}"
    if isinstance(value, dt.date):
        return f"DATE {_quote_text(value.isoformat())}"
    if isinstance(value, PurePath):
        return _quote_text(str(value))
    if isinstance(value, str):
        return _quote_text(value)
    raise ValueError(f"no SQL literal for a {type(value).__name__}: {value!r}")


def _quote_text(text: str) -> str:
    if "\x00" in text:
        raise ValueError("a NUL character cannot be written in an SQL string")
    return "'" + text.replace("'", "''") + "'"


def quote_identifier(name: str) -> str:
    """``name`` as a double-quoted DuckDB identifier (``"`` doubled)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"not an SQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 80 else text[:79] + "…"


def _where(at: str) -> str:
    return f"{at}: " if at else ""


def is_name(value: Any) -> bool:
    """Whether ``value`` is a lower-case name (see :func:`check_name`)."""
    return isinstance(value, str) and len(value) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(value) is not None


def is_id(value: Any) -> bool:
    """Whether ``value`` is a rule or policy id (see :func:`check_id`)."""
    return isinstance(value, str) and len(value) <= MAX_NAME_LENGTH and ID_RE.fullmatch(value) is not None


def check_name(value: Any, *, file: str | PurePath | None, at: str, what: str = "name",
               example: str = "retention") -> str:
    """A lower-case name (letters, digits, ``_``; starts with a letter): usable as an SQL
    identifier unquoted, and as a file name. Raises a located ``ConfigError``."""
    if not is_name(value):
        raise ConfigError(
            f"{_where(at)}{_shown(value)} is not a valid {what}: use lower-case letters, digits and '_', "
            f"starting with a letter, at most {MAX_NAME_LENGTH} characters (for example {example})",
            file=str(file) if file is not None else None,
        )
    return value


def check_id(value: Any, *, file: str | PurePath | None, at: str, what: str = "id", example: str = "R6") -> str:
    """A rule or policy id: letters, digits, ``_``, ``.``, ``-`` (starts with a letter or digit)."""
    if not is_id(value):
        raise ConfigError(
            f"{_where(at)}{_shown(value)} is not a valid {what}: use letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit, at most {MAX_NAME_LENGTH} characters (for example {example})",
            file=str(file) if file is not None else None,
        )
    return value


def check_label(value: Any, *, file: str | PurePath | None, at: str, what: str = "label",
                example: str = "high") -> str:
    """A label shown in reports and compared in rules (a value tier): text in any script,
    without quotes, backslashes or control characters, not blank, no surrounding spaces."""
    problem = None
    if not isinstance(value, str):
        problem = f"expected text, got {type(value).__name__}"
    elif not value.strip():
        problem = "must not be empty"
    elif value != value.strip():
        problem = "has leading or trailing spaces"
    elif _LABEL_FORBIDDEN.search(value):
        bad = _LABEL_FORBIDDEN.search(value).group()  # type: ignore[union-attr]
        problem = f"contains {bad!r}: quotes, backslashes and control characters are not allowed"
    elif len(value) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} characters"
    if problem:
        raise ConfigError(f"{_where(at)}{_shown(value)} is not a valid {what}: {problem} (for example {example})",
                          file=str(file) if file is not None else None)
    return value
