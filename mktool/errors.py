"""One family of errors, each carrying where the problem is.

The CLI turns any ``MktoolError`` into ``Error: <message>`` on stderr and the error's
``exit_code``; anything else is a bug and exits with ``EXIT_INTERNAL`` (traceback only with
``--verbose``). Messages start with the location (file, table, rule, column) so that a user
can go straight to the offending line.
"""

from __future__ import annotations

import reprlib
from typing import Any

EXIT_OK = 0
EXIT_BAD_INPUT = 1  # bad data, bad rule file, missing prerequisite step
EXIT_USAGE = 2  # bad command-line usage (Click's own code)
EXIT_LOCKED = 3  # another mktool run holds the database
EXIT_INTERNAL = 4  # a bug or an unexpected engine failure
EXIT_CHECK_FAILED = 5  # `mktool test` / `snapshot --check` found differences
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, what shells report)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 300, 300, 100


def short_repr(value: Any, width: int = 300) -> str:
    """``repr`` for a message, bounded while it is built: a YAML alias bomb or a 10 MB string
    must not grow to gigabytes (or take minutes) just to be cut to one line."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int beyond Python's 4,300-digit repr limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= width else text[: width - 1] + "…"


def _shorten(value: Any, width: int = 300) -> str:
    if isinstance(value, str):
        return value if len(value) <= width else value[: width - 1] + "…"
    return short_repr(value, width)


def engine_said(first_line: str) -> str:
    """An engine's error line as mktool quotes it: ``DuckDB: …``, or as it is when the Spark engine
    already named itself (mktool.sparkdb raises its errors as ``Spark: …``)."""
    return first_line if first_line.startswith("Spark: ") else f"DuckDB: {first_line}"


class MktoolError(Exception):
    """Base class of every error a user can fix without reading the code."""

    exit_code = EXIT_BAD_INPUT

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        table: str | None = None,
        column: str | None = None,
        row: dict[str, Any] | None = None,
        hint: str | None = None,
        line: int | None = None,
        key: str | None = None,
        line_column: int | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line  # in ``file``: "<file>:<line> @ <key>: <message>" (see location())
        self.key = key  # the dotted key path in the YAML file, e.g. channels.sms.mask
        self.line_column = line_column  # 1-based column in that line, when the YAML parser knows it
        self.table = table
        self.column = column
        self.row = row
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = []
        if self.file:
            where.append(location(self.file, self.line, self.key, self.line_column))
        if self.table:
            where.append(f"table {self.table}")
        if self.column:
            where.append(f"column {self.column}")
        text = (": ".join(where) + ": " if where else "") + self.message
        if self.row is not None:
            shown = ", ".join(f"{k}={_shorten(v, 60)}" for k, v in self.row.items())
            text += f"\n  example row: {_shorten(shown)}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


def location(file: str, line: int | None = None, key: str | None = None, line_column: int | None = None) -> str:
    """Where a problem of a rule file is, one format everywhere: ``<file>:<line>[:<column>] @ <key path>``.

    ``matrices/channels.yaml:14 @ channels.sms.mask``; the line (1-based) or the key path may be
    unknown (a missing file has neither; a syntax error has a line and a column, and no key).
    """
    at = f":{line}{f':{line_column}' if line_column else ''}" if line else ""
    return f"{file}{at}{f' @ {key}' if key else ''}"


class InputError(MktoolError):
    """An input extract breaks the data contract (SPEC §2)."""


class ConfigError(MktoolError):
    """A YAML rule/model/config file is malformed or inconsistent."""


class RuleError(ConfigError):
    """A rule's SQL expression is invalid (parse error, unknown column, forbidden construct)."""


class UsageError(MktoolError):
    """A setting or option value is malformed (the library's second line behind the CLI's parsers)."""

    exit_code = EXIT_USAGE


class StateError(MktoolError):
    """A prerequisite step has not run (e.g. `matrix` before `score`)."""


class LockedError(MktoolError):
    """Another mktool process holds the database."""

    exit_code = EXIT_LOCKED


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what had already been committed when it came (the CLI prints ``note``, exit 130)."""

    def __init__(self, note: str) -> None:
        self.note = note
        super().__init__(note)


class CheckFailed(MktoolError):
    """A check found differences (rule tests, snapshot regressions, strict warnings)."""

    exit_code = EXIT_CHECK_FAILED
