"""`mktool ingest`: Parquet extracts → the DuckDB file, under the data contract (SPEC §2).

Every file is validated with set-based SQL straight over ``read_parquet`` (one aggregate scan
for all type and format checks, one grouped scan for key uniqueness) before anything is
written; then all files of one call load inside one transaction, so a refusal or a kill
leaves the database exactly as it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import duckdb

from mktool.config import is_uri
from mktool.console import QUIET, Reporter
from mktool.contract import INVISIBLE, MONTH_RE, TABLES, TIME_ZONE, WHITESPACE, Column, TableContract, table_for_file
from mktool.database import LOAD_SEQ, Database, ensure_load_seq, table_columns, table_exists
from mktool.dialect import Query, is_finite, last_character
from mktool.errors import InputError
from mktool.publish import file_sha256
from mktool.rules import load_channels
from mktool.schema import CONTACT_HISTORY_TABLE, HISTORY_BOOKKEEPING

INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
                 "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
#: Integer types wider than a DOUBLE's 53-bit mantissa: a value above 2^53 may lose its last digits.
WIDE_INTEGER_TYPES = {"BIGINT", "HUGEINT", "UBIGINT", "UHUGEINT"}
FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}
TEXT_TYPES = {"VARCHAR"}
#: BYTE_ARRAY columns without the UTF8 annotation (Hive, Impala): text once decoded as UTF-8.
BINARY_TYPES = {"BLOB"}
#: A column Parquet stores as the NULL type (every value NULL, e.g. an all-None pandas column).
NULL_TYPE = '"NULL"'
#: DuckDB reads these characters of a path as a glob pattern (`*`, `?`, `[set]`, `**`).
GLOB_CHARACTERS = "*?["
#: A binary float within this many units of the last decimal place (plus a relative 1e-12)
#: of a whole fen is that fen: 0.1 + 0.2 = 0.30000000000000004 is 0.30, 191.515 is not a fen.
DECIMAL_TOLERANCE = 1e-6


def _base_type(type_: str) -> str:
    """DECIMAL(18,2) → DECIMAL, TIMESTAMP WITH TIME ZONE stays as is."""
    return type_.split("(")[0].strip().upper()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    """A SQL string literal (values from the contract and from the validated channel names)."""
    return "'" + value.replace("'", "''") + "'"


WS = _lit(WHITESPACE)
#: INVISIBLE as an RE2 character class (\x{...} escapes: a NUL cannot be written in an SQL string).
INVISIBLE_CLASS = _lit("[" + "".join(ch if ch == "-" else f"\\x{{{ord(ch):x}}}" for ch in INVISIBLE) + "]")
#: Parquet timestamps that carry a zone (instants): read as the wall-clock time of TIME_ZONE.
ZONED_TIMESTAMP = "TIMESTAMP WITH TIME ZONE"


def _scan_path(path: Path) -> str:
    """The path as read_parquet must see it to read exactly this one file.

    DuckDB expands glob characters in a path, so ``billing_*.parquet`` would read every billing
    file while the log records this one's checksum; each glob character is wrapped in a
    one-character set (``[*]``), which matches only itself. Absolute, so that no prefix such
    as ``~`` or ``s3:`` is interpreted either.
    """
    return _literal_pattern(os.path.abspath(path))


def _literal_pattern(text: str) -> str:
    """``text`` with each glob character as a one-character set, a pattern matching only itself
    (dialect.hadoop_path spells it for Hadoop, whose glob also reads ``{ } , \\``)."""
    return "".join(f"[{ch}]" if ch in GLOB_CHARACTERS else ch for ch in text)


def _uri_path(uri: str) -> str:
    """The path part of a URI: ``hdfs://nn:8020/a/b`` → ``/a/b``, ``file:/a/b`` → ``/a/b``."""
    rest = uri.split(":", 1)[1]
    if rest.startswith("//"):
        slash = rest.find("/", 2)
        rest = rest[slash:] if slash >= 0 else "/"
    return rest



class _Listed(Protocol):
    uri: str
    is_dir: bool
    size: int


class InputFS(Protocol):
    """What ingest asks of the file system that extracts named by a URI live on (mktool.warehouse.HadoopFS)."""

    def info(self, uri: str) -> _Listed | None: ...

    def files_under(self, uri: str) -> Sequence[_Listed]: ...

    def sha256(self, uri: str) -> str: ...


@dataclass
class ColumnRead:
    """How one contract column is read from one file: which source column, and how it is stored."""

    column: Column
    source: str | None  # the file's column name (matched trimmed and case-insensitively); None = absent
    source_type: str | None
    normalise: bool = True  # trim / case-fold on load; the validation scan clears it when no value needs it

    @property
    def ref(self) -> str:
        assert self.source is not None
        return _q(self.source)

    @property
    def value(self) -> str:
        """The source value in its own type, a zoned timestamp as TIME_ZONE's wall-clock time
        (DuckDB would otherwise use the machine's zone: the same file, other dates)."""
        if (self.source_type or "").upper() == ZONED_TIMESTAMP:
            return f"timezone({_lit(TIME_ZONE)}, {self.ref})"
        return self.ref

    @property
    def text(self) -> str:
        """The source value as text (BLOB decoded as UTF-8; NULL where the bytes are not UTF-8)."""
        return f"try(decode({self.ref}))" if _base_type(self.source_type or "") in BINARY_TYPES else self.ref

    @property
    def is_text_source(self) -> bool:
        return _base_type(self.source_type or "") in TEXT_TYPES | BINARY_TYPES

    def trimmed(self) -> str:
        """The value trimmed, a blank as NULL, case-folded for a vocabulary column."""
        value = f"NULLIF(trim({self.text}, {WS}), '')"
        if self.column.case:
            value = f"{self.column.case}({value})"
        return value

    def stored(self) -> str:
        """The value as it will be stored (every refusal has been raised before this is loaded)."""
        col, src = self.column, _base_type(self.source_type or "")
        target = col.type
        if self.source is None or src == NULL_TYPE:
            return f"CAST(NULL AS {target})"
        if col.is_text:
            if not self.normalise:
                return self.ref if src in TEXT_TYPES else f"decode({self.ref})"
            return self.trimmed()
        value = self.trimmed() if self.is_text_source else self.value
        if col.scale is not None and self.is_text_source:
            value = f"CAST({value} AS DOUBLE)"  # text money is read as a number, then rounded to the fen
        if src == _base_type(target) and target == self.source_type:
            return value
        return f"CAST({value} AS {target})"


@dataclass
class SourceFile:
    """One extract to load. A local file has ``path``; a file named by a URI (``hdfs://``, ``s3a://``,
    ``file:``, read through the Spark session's Hadoop file system) has ``uri`` too, its ``size`` as
    listed, and as ``path`` its URI's path (for the name and the table it is for)."""

    path: Path
    table: str
    sha256: str = ""
    rows: int = 0
    months: list[str] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)  # column → DuckDB type as read
    reads: dict[str, ColumnRead] = field(default_factory=dict)  # contract column → how it is read
    uri: str = ""  # the file as its Hadoop file system names it; "" for a local file
    size: int | None = None  # bytes, as listed (a URI's); a local file's is read when needed

    @property
    def contract(self) -> TableContract:
        return TABLES[self.table]

    @property
    def local(self) -> bool:
        """On this machine's file system: a local path, or a ``file:`` URI (then ``path`` is the file)."""
        return not self.uri or self.uri.startswith("file:")

    @property
    def where(self) -> str:
        """The file as messages name it: its path (a ``file:`` URI's too, as DuckDB's refusal of the
        same file names it), else its URI."""
        return str(self.path) if self.local else self.uri

    @property
    def recorded(self) -> str:
        """The file as ingest_log records it: a local file's resolved path on both engines (``file:``
        URIs too), else its URI."""
        return str(self.path.resolve()) if self.local else self.uri

    @property
    def pattern(self) -> str:
        """A glob pattern matching only this file (``glob(?)``, ``read_parquet``)."""
        return _literal_pattern(self.uri) if self.uri else _scan_path(self.path)

    @property
    def sql_path(self) -> str:
        return self.pattern.replace("'", "''")

    @property
    def scan(self) -> str:
        # No hive partitioning: a folder named month=2026-10 must not add or override a column.
        return f"read_parquet('{self.sql_path}', hive_partitioning = false)"

    @property
    def extra_columns(self) -> list[str]:
        mapped = {r.source for r in self.reads.values()}
        return [name for name in self.schema if name not in mapped]

    def stored(self, name: str) -> str:
        """A contract column's stored value (a NULL of its type when the file lacks it)."""
        read = self.reads.get(name)
        if read is None:
            return f"CAST(NULL AS {self.contract.column(name).type})"
        return read.stored()


@dataclass
class IngestResult:
    files: list[SourceFile]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


# -- discovery ------------------------------------------------------------------------------
def _parquet_files(folder: Path) -> list[Path]:
    """Every ``*.parquet`` file under ``folder`` (suffix in any case), refusing what cannot be walked.

    A sub-folder that cannot be read, a symbolic link to a folder, or a link that leads nowhere
    (dangling, or a loop) is refused rather than skipped: skipping would load the rest and
    break "all files of one call load or none do". A symbolic link to a file is followed (the
    file it names is loaded; the log records the target's path and checksum).
    """
    found: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"cannot read folder ({exc.strerror or exc})", file=str(current),
                             hint="fix its permissions, or move it out of the folder being loaded") from None
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    try:
                        target = path.stat()  # follows the link
                    except OSError as exc:
                        raise InputError(f"symbolic link leads nowhere ({exc.strerror or exc})", file=str(path),
                                         hint="remove the link or restore its target") from None
                    if stat.S_ISDIR(target.st_mode):
                        raise InputError("folder is a symbolic link: its files would be loaded from elsewhere, "
                                         "or twice", file=str(path), hint="pass the target folder itself")
                    if stat.S_ISREG(target.st_mode) and path.suffix.lower() == ".parquet":
                        found.append(path)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif entry.is_file(follow_symlinks=False) and path.suffix.lower() == ".parquet":
                    found.append(path)
            except PermissionError as exc:
                raise InputError(f"cannot read ({exc.strerror or exc})", file=str(path)) from None
    return sorted(found)


def discover(paths: Sequence[Path | str], table: str | None = None, fs: InputFS | None = None) -> list[SourceFile]:
    """Files and folders → the Parquet files to load, each with its table. Sorted for determinism.

    A path given as a URI (``hdfs://…``, ``s3a://…``, ``file:/…``) is listed through ``fs``, the Spark
    session's Hadoop file system; DuckDB (no ``fs``) reads local paths only and refuses a URI."""
    if table is not None and table not in TABLES:
        raise InputError(f"unknown table '{table}' (known tables: {', '.join(TABLES)})")
    found: list[SourceFile] = []
    for given in paths:
        if isinstance(given, str) and is_uri(given):
            found += _discover_uri(given, table, fs)
            continue
        path = Path(given)
        if path.is_dir():
            files = _parquet_files(path)
            if not files:
                raise InputError("folder holds no .parquet files", file=str(path))
        elif path.exists():
            files = [path]
        elif path.is_symlink():
            raise InputError("symbolic link leads nowhere", file=str(path))
        else:
            raise InputError("no such file or folder", file=str(path))
        found += [SourceFile(path=f, table=_table_of(f, f, table)) for f in files]
    return found


def _table_of(path: Path | PurePosixPath, where: Path | str, table: str | None) -> str:
    name = table or table_for_file(path.stem)
    if name is None:
        raise InputError(
            "cannot tell which table this file is for",
            file=str(where),
            hint=f"name it after its table (e.g. usage_2026-10.parquet) or pass --table; "
            f"known tables: {', '.join(TABLES)}",
        )
    return name


def _discover_uri(uri: str, table: str | None, fs: InputFS | None) -> list[SourceFile]:
    """A file or folder named by a URI, listed through Hadoop: the files as :func:`discover` finds them
    in a local folder (every ``*.parquet`` below it, suffix in any case, in path order)."""
    shown = _uri_path(uri) if uri.startswith("file:") else uri
    if fs is None:
        raise InputError("a URI is read through Spark: DuckDB reads local files only", file=uri,
                         hint="pass a local path, or run with --engine spark")
    info = fs.info(uri)
    if info is None:
        raise InputError("no such file or folder", file=shown)
    if info.is_dir:
        files = [f for f in fs.files_under(uri) if f.uri.lower().endswith(".parquet")]
        if not files:
            raise InputError("folder holds no .parquet files", file=shown)
    else:
        files = [info]
    out = []
    for f in sorted(files, key=lambda f: PurePosixPath(_uri_path(f.uri))):
        path = Path(_uri_path(f.uri))
        src = SourceFile(path=path, table="", uri=f.uri, size=f.size)
        src.table = _table_of(path, src.where, table)
        out.append(src)
    return out


# -- validation -----------------------------------------------------------------------------
def _whole_units(value: str, scale: int) -> str:
    """SQL true when a finite DOUBLE is a whole number of 10^-scale units (a whole fen at scale 2)."""
    f = f"({value}) * {10 ** scale}"
    return f"abs({f} - round({f})) <= {DECIMAL_TOLERANCE} + abs({f}) * 1e-12"


def _type_checks(read: ColumnRead, text: str | None = None) -> list[tuple[str, str]]:
    """(problem, SQL true for a bad row) of reading the column as its contract type.

    ``text`` is the trimmed text of a text source (given for a BLOB: its decoded text).
    A ``("!", "")`` entry means the type can never be read as the contract's type.
    """
    col, source = read.column, read.source_type or ""
    src, target = _base_type(source), col.type
    c = read.value
    if src == NULL_TYPE:
        return []  # every value is NULL: the NULL check decides
    if src in BINARY_TYPES:
        # BYTE_ARRAY without the UTF8 annotation is how Hive writes every string column, a
        # number or a date kept as a string too: decoded, it is checked exactly like text.
        utf8 = ("value is not valid UTF-8 text", f"{c} IS NOT NULL AND try(decode({c})) IS NULL")
        if col.is_text:
            return [utf8]
        as_text = _type_checks(ColumnRead(col, read.source, "VARCHAR", read.normalise), text=read.trimmed())
        return [utf8, *as_text]
    if col.is_text:
        if src in TEXT_TYPES:
            return []
        return [("!", "")]
    if src == ZONED_TIMESTAMP:
        src = "TIMESTAMP"  # read.value is its wall-clock time in TIME_ZONE
    if text is None and src in TEXT_TYPES:
        text = read.trimmed()
    lossy = f"value cannot be read as {target} without loss"
    not_finite = ("value is not a finite number (NaN or infinity)", "")
    if target == "DOUBLE":
        if src in TEXT_TYPES:
            d = f"TRY_CAST({text} AS DOUBLE)"
            wide = f"TRY_CAST({text} AS HUGEINT)"
            above_2_53 = (f"{is_finite(d, 'DOUBLE')} AND abs({d}) >= 9007199254740992 AND {wide} IS NOT NULL "
                          f"AND TRY_CAST({d} AS HUGEINT) IS DISTINCT FROM {wide}")
            return [(lossy, f"{text} IS NOT NULL AND ({d} IS NULL OR ({above_2_53}))"),
                    (not_finite[0], f"NOT {is_finite(d, 'DOUBLE')}")]
        if src in FLOAT_TYPES:
            return [(not_finite[0], f"NOT {is_finite(c, src)}")]
        if src in WIDE_INTEGER_TYPES:
            return [(lossy, f"abs({c}) > 9007199254740992 "
                            f"AND TRY_CAST(CAST({c} AS DOUBLE) AS HUGEINT) IS DISTINCT FROM {c}")]
        if src in INTEGER_TYPES or src == "DECIMAL":
            return []
        return [("!", "")]
    if target == "BIGINT":
        if src in INTEGER_TYPES:
            return [] if src in {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"} else \
                [(lossy, f"{c} IS NOT NULL AND TRY_CAST({c} AS BIGINT) IS NULL")]
        if src in FLOAT_TYPES:
            return [(not_finite[0], f"NOT {is_finite(c, src)}"),
                    (lossy, f"{is_finite(c, src)} AND ({c} <> round({c}) OR TRY_CAST({c} AS BIGINT) IS NULL)")]
        if src == "DECIMAL":
            return [(lossy, f"{c} IS NOT NULL AND ({c} <> round({c}) OR TRY_CAST({c} AS BIGINT) IS NULL)")]
        if src in TEXT_TYPES:
            # Straight to BIGINT (never via DOUBLE, which loses digits above 2^53); the DOUBLE and
            # DECIMAL readings only catch a fraction ('3.5' would round to 4).
            v, d, exact = (f"TRY_CAST({text} AS BIGINT)", f"TRY_CAST({text} AS DOUBLE)",
                           f"TRY_CAST({text} AS DECIMAL(38,9))")
            fraction = f"{d} <> CAST({v} AS DOUBLE) OR coalesce({exact} <> {v}, false)"
            finite = is_finite(d, "DOUBLE")
            return [(lossy, f"{text} IS NOT NULL AND ({v} IS NULL OR {d} IS NULL OR NOT {finite} OR {fraction})")]
        return [("!", "")]
    if col.scale is not None:  # DECIMAL(18, scale): money and unit prices
        scale, dec = col.scale, f"TRY_CAST({{v}} AS {target})"
        places = (f"value has more than {scale} decimal places "
                  f"({'not a whole fen' if scale == 2 else 'would be rounded'})")
        if src in INTEGER_TYPES:
            return [(lossy, f"{c} IS NOT NULL AND {dec.format(v=c)} IS NULL")]
        if src == "DECIMAL":
            return [(lossy, f"{c} IS NOT NULL AND ({dec.format(v=c)} IS NULL OR {dec.format(v=c)} <> {c})")]
        if src in FLOAT_TYPES | TEXT_TYPES:
            d = c if src in FLOAT_TYPES else f"TRY_CAST({text} AS DOUBLE)"
            finite = is_finite(d, src if src in FLOAT_TYPES else "DOUBLE")
            checks = [(lossy, f"{text} IS NOT NULL AND {d} IS NULL")] if src in TEXT_TYPES else []
            if src in {"FLOAT", "REAL"}:
                # float32 holds ~7 digits: it is a whole fen when it is the float nearest to one
                units = 10 ** scale
                whole = f"CAST(round(CAST({c} AS DOUBLE) * {units}) / {units} AS FLOAT) = {c}"
            else:
                whole = _whole_units(d, scale)
            return checks + [(not_finite[0], f"NOT {finite}"),
                             (lossy, f"{finite} AND {dec.format(v=d)} IS NULL"),
                             (places, f"{finite} AND NOT ({whole})")]
        return [("!", "")]
    if target == "DATE":
        if src.startswith("TIMESTAMP"):
            return [("value is a time, not a date: reading it as a date would drop the time",
                     f"{c} IS NOT NULL AND TRY_CAST({c} AS TIMESTAMP) <> TRY_CAST(TRY_CAST({c} AS DATE) AS TIMESTAMP)")]
        if src == "DATE":
            return [("value is not a finite date", f"NOT {is_finite(c, 'DATE')}")]
        if src in TEXT_TYPES:
            d, ts = f"TRY_CAST({text} AS DATE)", f"TRY_CAST({text} AS TIMESTAMP)"
            return [(lossy, f"{text} IS NOT NULL AND ({d} IS NULL OR NOT {is_finite(d, 'DATE')})"),
                    ("value is a time, not a date: reading it as a date would drop the time",
                     f"{ts} IS NOT NULL AND {is_finite(d, 'DATE')} AND {ts} <> TRY_CAST({d} AS TIMESTAMP)")]
        return [("!", "")]
    if target == "TIMESTAMP":
        if src.startswith("TIMESTAMP") or src == "DATE":
            return [("value is not a finite time", f"NOT {is_finite(c, src)}")]
        if src in TEXT_TYPES:
            ts = f"TRY_CAST({text} AS TIMESTAMP)"
            return [(lossy, f"{text} IS NOT NULL AND ({ts} IS NULL OR NOT {is_finite(ts, 'TIMESTAMP')})")]
        return [("!", "")]
    if target == "BOOLEAN":
        if src == "BOOLEAN":
            return []
        if src in INTEGER_TYPES:
            return [(lossy, f"{c} IS NOT NULL AND {c} NOT IN (0, 1)")]
        if src in TEXT_TYPES:
            return [(lossy, f"{text} IS NOT NULL AND TRY_CAST({text} AS BOOLEAN) IS NULL")]
        return [("!", "")]
    return [("!", "")]


def _null_condition(read: ColumnRead) -> str:
    """SQL true for a NULL value, or a text value that trims to nothing (blank = NULL).

    A value that trims to nothing starts with a WHITESPACE character, each of which is below
    '!' or non-ASCII, so a cheap comparison runs first and trim() only on what it lets through.
    """
    if not read.is_text_source:
        return f"{read.ref} IS NULL"
    t = read.text  # for BLOB: NULL where the bytes are not UTF-8, which its own check refuses
    return f"{read.ref} IS NULL OR CASE WHEN {t} < '!' OR {t} >= chr(128) THEN trim({t}, {WS}) = '' ELSE false END"


def _blank_condition(col: str, source: str) -> str:
    """SQL true for a NULL or blank text value (kept for callers that have a column name only)."""
    c = _q(col)
    if _base_type(source) in TEXT_TYPES:
        return f"{c} IS NULL OR (({c} < '!' OR {c} >= chr(128)) AND trim({c}, {WS}) = '')"
    return f"{c} IS NULL"


def _invisible_inside(read: ColumnRead) -> str:
    """SQL true for a value that still holds an INVISIBLE character once trimmed.

    The regexp over the raw value (one character class, rarely matching) runs first; only the
    few values it lets through are trimmed and tested again (edges may be trimmed away).
    """
    return (f"regexp_matches({read.text}, {INVISIBLE_CLASS}) "
            f"AND regexp_matches(coalesce({read.trimmed()}, ''), {INVISIBLE_CLASS})")


def _needs_normalising(read: ColumnRead) -> str | None:
    """SQL true for a text value that trimming or case-folding would change (None: not text)."""
    col = read.column
    if not col.is_text or _base_type(read.source_type or "") != "VARCHAR":
        return None  # BLOB is always decoded and trimmed; other sources are refused
    c = read.ref
    if col.is_vocabulary or col.pattern:
        return None  # validate() counts the values not already in the vocabulary or pattern
    # its last character is ~8x cheaper than right(c, 1) on dictionary-encoded columns
    last = last_character(c)
    edge = f"{c} < '!' OR {c} >= chr(128) OR {last} < '!' OR {last} >= chr(128)"
    flag = f"CASE WHEN {edge} THEN trim({c}, {WS}) <> {c} ELSE {c} = '' END"
    return f"{flag} OR {col.case}({c}) <> {c}" if col.case else flag


def _describe_problem(col: Column, channel_names: Sequence[str]) -> tuple[str, str]:
    """The refusal text and the SQL list of allowed values of a vocabulary column."""
    allowed = col.allowed(channel_names)
    if not allowed:  # an empty IN list would accept every value
        raise InputError(f"no vocabulary for column {col.name}: no channel names were given (channels.yaml)")
    where = " (from channels.yaml)" if col.channels else ""
    problem = (f"value is not one of {', '.join(allowed)}{where}; values are trimmed and compared "
               f"case-insensitively")
    return problem, ", ".join(_lit(v) for v in allowed)


def example_query(src: SourceFile, condition: str) -> Query:
    """The first row of the file for which ``condition`` holds: the example a refusal shows.

    Zoned times are shown as text: turning them into Python objects needs pytz on some DuckDB
    releases (2.0.0), and an example row must never turn a refusal into an internal error.
    """
    zoned = {name for name, type_ in src.schema.items() if "WITH TIME ZONE" in str(type_).upper()}
    select = "*" if not zoned else ", ".join(
        f"CAST({_q(name)} AS VARCHAR) AS {_q(name)}" if name in zoned else _q(name) for name in src.schema)
    return Query("example", f"SELECT {select} FROM {src.scan} WHERE {condition} LIMIT 1")


def _example_row(con: duckdb.DuckDBPyConnection, src: SourceFile, condition: str) -> dict[str, Any] | None:
    cur = con.execute(example_query(src, condition).sql)
    row = cur.fetchone()
    if row is None:
        return None
    names = [d[0] for d in cur.description]
    return dict(zip(names, row))


def _top_level_names(con: duckdb.DuckDBPyConnection, src: SourceFile) -> list[str]:
    """The file's column names exactly as written (DESCRIBE renames a repeated name to name_1)."""
    rows = con.execute(f"SELECT name, num_children FROM parquet_schema('{src.sql_path}')").fetchall()
    names: list[str] = []

    def skip(i: int) -> int:  # index after the subtree that starts at i
        j = i + 1
        for _ in range(int(rows[i][1] or 0)):
            j = skip(j)
        return j

    i = 1  # row 0 is the root
    while i < len(rows):
        names.append(str(rows[i][0]))
        i = skip(i)
    return names


def rows_query(src: SourceFile) -> Query:
    return Query("rows", f"SELECT count(*) FROM {src.scan}")


def read_schema(con: duckdb.DuckDBPyConnection, src: SourceFile, *, allow_empty: bool = False) -> None:
    """Fill ``src.schema`` and ``src.rows``; refuse empty or unreadable files and repeated column names.

    ``allow_empty`` accepts a file with no rows (an event file of a quiet hour is a batch too,
    mktool/scene.py); an extract with none is refused: it would wipe the months it should carry.
    """
    if (src.size if src.uri else src.path.stat().st_size) == 0:
        raise InputError("empty file (0 bytes): not a Parquet file", file=src.where, table=src.table)
    try:
        matched = [r[0] for r in con.execute("SELECT file FROM glob(?)", [src.pattern]).fetchall()]
        if len(matched) != 1:  # the escaping must leave exactly this file
            raise InputError(f"the file name reads as a pattern matching {len(matched)} files",
                             file=src.where, table=src.table, hint="rename the file without * ? [ ]")
        names = _top_level_names(con, src)
        src.schema = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src.scan}").fetchall()}
        src.rows = int(con.execute(rows_query(src).sql).fetchone()[0])  # type: ignore[index]
    except duckdb.Error as exc:
        reason = str(exc).splitlines()[0]
        reason = reason.split("Error: ", 1)[-1]
        raise InputError(f"not a readable Parquet file ({reason})", file=src.where, table=src.table) from None
    seen: dict[str, str] = {}
    for name in names:
        key = name.strip(WHITESPACE).lower()
        if key in seen:
            raise InputError(
                f"column name {seen[key]!r} appears twice (as {seen[key]!r} and {name!r}; names are compared "
                "trimmed and case-insensitively): which one is meant cannot be told",
                file=src.where, table=src.table, column=key,
                hint="drop or rename one of them in the extract")
        seen[key] = name
    if list(src.schema) != names:  # cannot happen once names are unique; never read a renamed column
        raise InputError(f"column names read back differently ({', '.join(src.schema)})", file=src.where,
                         table=src.table)
    by_key = {name.strip(WHITESPACE).lower(): name for name in names}
    src.reads = {c.name: ColumnRead(c, by_key[c.name], src.schema[by_key[c.name]])
                 for c in src.contract.columns if c.name in by_key}
    if src.rows == 0 and not allow_empty:
        raise InputError("file has no rows", file=src.where, table=src.table,
                         hint="an empty extract would wipe the months it should carry; check the export job")


def count_query(src: SourceFile, checks: Sequence[tuple[str, str, str]], flags: Sequence[tuple[str, str]] = (),
                name: str = "counts") -> Query:
    """One scan of the file counting the rows of every check's condition, then of every flag's.

    coalesce: DuckDB 2.0.1's count_if is NULL when the condition is NULL on every row (an all-NULL
    text column's flag), Spark's is 0; both mean none.
    """
    conditions = [cond for _, _, cond in checks] + [cond for _, cond in flags]
    aggregates = [f"coalesce(count_if({cond}), 0)" for cond in conditions]
    return Query(name, f"SELECT {', '.join(aggregates)} FROM {src.scan}")


def _refuse_bad_rows(con: duckdb.DuckDBPyConnection, src: SourceFile, checks: list[tuple[str, str, str]],
                     flags: list[tuple[str, str]] = ()) -> list[int]:  # type: ignore[assignment]
    """Count every (column, problem, condition) in one scan of the file; refuse the first that matches.

    ``flags`` (column, condition) are counted in the same scan; their counts are returned.
    """
    if not checks and not flags:
        return []
    counts = con.execute(count_query(src, checks, flags).sql).fetchone()
    assert counts is not None
    for (column, problem, cond), bad in zip(checks, counts):
        if bad:
            row = _example_row(con, src, cond)
            read = src.reads.get(column)
            value = row.get(read.source if read and read.source else column) if row else None
            raise InputError(
                f"{problem} ({bad} row{'s' if bad > 1 else ''}; e.g. {value!r})",
                file=src.where, table=src.table, column=column, row=row,
            )
    return list(counts[len(checks):])


@dataclass
class Validation:
    """What :func:`validate` counts in one file, built from its schema alone (no data read).

    ``checks`` (column, problem, SQL true for a bad row) are refused when any row matches;
    ``flags`` (column, SQL true for a value that normalising changes, or that is not already in
    its vocabulary or pattern) are counted in the same scan; ``recheck`` holds, per flagged
    vocabulary or pattern column, the full checks a second scan runs when its flag counted any.
    """

    checks: list[tuple[str, str, str]]
    flags: list[tuple[str, str]]
    recheck: dict[str, list[tuple[str, str, str]]]

    def second_checks(self, counts: Sequence[int]) -> list[tuple[str, str, str]]:
        """The second scan's checks, given the first scan's flag counts."""
        return [c for (name, _), n in zip(self.flags, counts) if n and name in self.recheck for c in self.recheck[name]]


def month_query(month: ColumnRead, src: SourceFile) -> Query:
    """The file's distinct month values as written (all exact YYYY-MM: its per-row month checks are skipped)."""
    return Query("months", f"SELECT DISTINCT {month.ref} FROM {src.scan}")


def stored_months_query(src: SourceFile) -> Query:
    """The file's months as they will be stored (trimmed), when some were not exact YYYY-MM as written."""
    return Query("stored_months", f"SELECT DISTINCT {src.stored('month')} AS m FROM {src.scan} ORDER BY m")


def validation(src: SourceFile, channel_names: Sequence[str] = (), *, months_clean: bool = False) -> Validation:
    """The checks and flags of one file (read_schema filled its schema); refuses a column whose type
    can never be read as the contract's. ``months_clean``: its distinct months are exact YYYY-MM."""
    contract = src.contract
    checks: list[tuple[str, str, str]] = []  # (column, problem, SQL condition for a bad row)
    flags: list[tuple[str, str]] = []  # (column, SQL true for a value that normalising changes)
    recheck: dict[str, list[tuple[str, str, str]]] = {}  # column → its full checks, run when its flag counted any
    for read in src.reads.values():
        col = read.column
        source = read.source_type or ""
        if col.name == "msisdn" and _base_type(source) not in TEXT_TYPES | BINARY_TYPES | {NULL_TYPE}:
            raise InputError(
                f"msisdn must be a string column, got {source}: numbers lose leading digits and formatting",
                file=src.where, table=src.table, column="msisdn",
                hint="export msisdn as VARCHAR / string in the warehouse extract",
            )
        if col.name == "month" and months_clean:
            continue  # every distinct month is already exact YYYY-MM: nothing to check per row
        null_check: tuple[str, str, str] | None = None
        if not col.nullable:
            problem = "key column is NULL or empty" if col.name in contract.key else \
                "value is missing (NULL or blank) in a column that is not nullable"
            null_check = (col.name, problem, _null_condition(read))
        type_checks = _type_checks(read)
        if any(problem == "!" for problem, _ in type_checks):
            hint = None
            if col.is_text:
                hint = ("export it as a string: a number has no single text form (58, 58.0 and 058 are one "
                        "plan to a person and three to the engine)")
            raise InputError(f"type {source} cannot be read as {col.type}", file=src.where, table=src.table,
                             column=col.name, hint=hint)
        checks += [(col.name, problem, cond) for problem, cond in type_checks]
        # Vocabulary and pattern columns: the scan counts the values that are not already in
        # their final form (one IN or regexp per row). Only a file that has some, which
        # trimming or case-folding may fix, is scanned again for the values that stay wrong.
        full: tuple[str, str] | None = None
        if col.is_vocabulary:
            problem, allowed = _describe_problem(col, channel_names)
            value = read.trimmed()
            full = (problem, f"{value} IS NOT NULL AND {value} NOT IN ({allowed})")
            raw = f"{read.ref} NOT IN ({allowed})"
        elif col.pattern:
            value = read.trimmed()
            problem = "month is not in YYYY-MM form" if col.name == "month" else \
                f"{col.name} is not an 11-digit string" if col.name == "msisdn" else \
                f"value does not match {col.pattern}"
            full = (problem, f"{value} IS NOT NULL AND NOT regexp_full_match({value}, {_lit(col.pattern)})")
            raw = f"NOT regexp_full_match({read.ref}, {_lit(col.pattern)})"
        if full is not None and _base_type(source) in TEXT_TYPES:
            # A value already in its final form is not NULL either: one condition per row
            # covers both, and the NULL check runs only in the second scan.
            flags.append((col.name, f"{read.ref} IS NULL OR {raw}" if null_check else raw))
            recheck[col.name] = [c for c in (null_check, (col.name, *full)) if c is not None]
        else:  # free text, other types, BLOB (decoded) or all-NULL: checked in full in the one scan
            checks += [c for c in (null_check, (col.name, *full) if full else None) if c is not None]
        if col.identifier and read.is_text_source:
            checks.append((col.name, "value has an invisible or control character inside (a zero-width space, BOM, "
                           "soft hyphen, tab …): it would look like an id of the rules and never equal one",
                           _invisible_inside(read)))
        flag = _needs_normalising(read)
        if flag is not None:
            flags.append((col.name, flag))
    return Validation(checks, flags, recheck)


def validate(con: duckdb.DuckDBPyConnection, src: SourceFile, channel_names: Sequence[str] = ()) -> None:
    """Check one file against its contract in one aggregate scan; raise InputError naming file,
    table, column and an example row.

    The same scan counts, per text column, the values that trimming or case-folding would
    change: a file with none loads the column as it is (normalising costs a trim per row).
    """
    contract = src.contract
    missing = [c.name for c in contract.columns if c.name not in src.reads and not c.nullable]
    if missing:
        raise InputError(
            f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            file=src.where, table=src.table,
            hint=f"columns found: {', '.join(src.schema)}",
        )
    # A file carries one or a few months: when its distinct months are all exact YYYY-MM (the
    # usual case), the per-row month checks are skipped (a regexp per row is a tenth of the scan).
    months_clean = False
    month = src.reads.get("month")
    if contract.monthly and month is not None and _base_type(month.source_type or "") in TEXT_TYPES:
        distinct = [m for (m,) in con.execute(month_query(month, src).sql).fetchall()]
        months_clean = all(isinstance(m, str) and MONTH_RE.match(m) for m in distinct)
        if months_clean:
            src.months = sorted(distinct)
            month.normalise = False
    plan = validation(src, channel_names, months_clean=months_clean)
    counts = _refuse_bad_rows(con, src, plan.checks, plan.flags)
    for (name, _), n in zip(plan.flags, counts):
        src.reads[name].normalise = bool(n)
    _refuse_bad_rows(con, src, plan.second_checks(counts))
    if contract.monthly and not months_clean:
        src.months = [m for (m,) in con.execute(stored_months_query(src).sql).fetchall()]
    assert all(MONTH_RE.match(m) for m in src.months)  # every refusal above has been raised


def check_keys(con: duckdb.DuckDBPyConnection, table: str, files: list[SourceFile]) -> None:
    """Refuse duplicate keys among the rows these files would load into ``table``.

    The check reads the files, not the table: a reload replaces exactly the months (snapshot:
    the table) the files carry, so the loaded rows are unique iff the files' rows are. Upsert
    tables are checked file by file: across the files of one call the later file wins.
    It never reads the table inside the load transaction, because DuckDB 2.0.0 may return no
    rows for a filtered or grouped read of a table created and filled in that transaction
    (a check after the insert passed silently at scale).
    Keys are compared as stored (trimmed, case-folded, cast): '13800000007' and '13800000007 '
    are one key. NULL or blank keys were refused by validate().
    One grouped scan of the keys themselves finds the smallest duplicate key (then the files are
    checked one by one to name the culprit). Why not a hash pass first (sort one 64-bit hash per
    row, compare neighbours): it saved ~30% on DuckDB, but a window over the whole input runs in
    one task on Spark, whose hash() is a 32-bit murmur3 that collides all the time at 60M rows.
    """
    contract = TABLES[table]
    if not contract.key:
        return
    if contract.reload == "upsert" and len(files) > 1:
        for src in files:  # across files the later one wins (see _upsert); within one, refuse
            check_keys(con, table, [src])
        return
    dup = con.execute(duplicate_key_query(files).sql).fetchone()
    if dup is None:
        return
    for src in files:
        problem = duplicate_in_file(con, src)
        if problem is not None:
            raise problem
    names = ", ".join(f.where for f in files)
    raise InputError(
        f"duplicate key ({', '.join(contract.key)}) = ({', '.join(map(str, dup[:-1]))}) "
        f"appears in more than one of the files loaded together: {names}",
        table=table, column=", ".join(contract.key),
    )


def duplicate_key_query(files: Sequence[SourceFile]) -> Query:
    """The smallest key (as stored) that the rows of ``files`` (one table's) hold more than once,
    with its count; no row when the keys are unique."""
    contract = files[0].contract
    key = ", ".join(_q(k) for k in contract.key)
    union = " UNION ALL ".join(
        f"SELECT {', '.join(f'{src.stored(k)} AS {_q(k)}' for k in contract.key)} FROM {src.scan}" for src in files
    )
    positions = ", ".join(str(i) for i in range(1, len(contract.key) + 1))
    return Query("duplicate_key", f"SELECT {key}, count(*) AS n FROM ({union}) AS loaded GROUP BY {key} "
                                  f"HAVING count(*) > 1 ORDER BY {positions} LIMIT 1")


def _check_all_keys(cursor: duckdb.DuckDBPyConnection, by_table: dict[str, list[SourceFile]],
                    stop: threading.Event) -> None:
    """check_keys for every table, on a cursor of its own (it runs beside the load); ``stop``
    ends it between tables (a running query is ended with cursor.interrupt())."""
    try:
        for table_name, group in by_table.items():
            if stop.is_set():
                return
            check_keys(cursor, table_name, group)
    finally:
        cursor.close()


def duplicate_in_file_query(src: SourceFile) -> Query:
    """The smallest key (as stored) that one file holds more than once, with its count."""
    key = ", ".join(f"{src.stored(k)} AS {_q(k)}" for k in src.contract.key)
    positions = ", ".join(str(i) for i in range(1, len(src.contract.key) + 1))
    return Query("duplicate_in_file", f"SELECT {key}, count(*) AS n FROM {src.scan} GROUP BY {positions} "
                                      f"HAVING count(*) > 1 ORDER BY {positions} LIMIT 1")


def duplicate_in_file(con: duckdb.DuckDBPyConnection, src: SourceFile) -> InputError | None:
    """The first duplicate key inside one file, as the error to raise (None when its keys are unique)."""
    contract = src.contract
    # Keys as they will be stored (trimmed, after the lossless cast): '2026-10-3' and
    # '2026-10-03' are one contact_date, 'sms' and ' SMS' one channel.
    stored = {k: src.stored(k) for k in contract.key}
    dup = con.execute(duplicate_in_file_query(src).sql).fetchone()
    if dup is None:
        return None
    where = " AND ".join(f"{expr} = ?" for expr in stored.values())
    cur = con.execute(f"SELECT * FROM {src.scan} WHERE {where} LIMIT 1", list(dup[:-1]))
    row = dict(zip([d[0] for d in cur.description], cur.fetchone() or ()))
    return InputError(
        f"duplicate key ({', '.join(contract.key)}) = ({', '.join(map(str, dup[:-1]))}) appears {dup[-1]} times",
        file=src.where, table=src.table, column=", ".join(contract.key), row=row,
    )


def queries(src: SourceFile, channel_names: Sequence[str] = (), *, months_clean: bool = False) -> dict[str, Query]:
    """The statements ingest runs over one file's rows, named, in DuckDB's dialect (read_schema has
    filled ``src``'s schema): the row count, the distinct months, the refusal and normalisation
    scans (the second as if every flag had counted), one example-row query per check, the stored
    months, the key checks and the load's SELECT. ``months_clean`` as validate finds it.

    Not here, because they read no rows or carry a parameter: the file listing (``glob(?)``),
    ``parquet_schema('path')``, ``DESCRIBE SELECT * FROM read_parquet(…)`` and the duplicate's
    example row (``WHERE key = ?``); the connection answers those (mktool.sparkdb on Spark).
    """
    contract = src.contract
    plan = validation(src, channel_names, months_clean=months_clean)
    out = {"rows": rows_query(src)}
    month = src.reads.get("month")
    if contract.monthly and month is not None and _base_type(month.source_type or "") in TEXT_TYPES:
        out["months"] = month_query(month, src)
    if plan.checks or plan.flags:
        out["counts"] = count_query(src, plan.checks, plan.flags)
    second = plan.second_checks([1] * len(plan.flags))
    if second:
        out["recheck"] = count_query(src, second, name="recheck")
    for i, (column, _, condition) in enumerate([*plan.checks, *second]):
        out[f"example:{column}:{i}"] = example_query(src, condition)
    if contract.monthly and not months_clean:
        out["stored_months"] = stored_months_query(src)
    if contract.key:
        out["duplicate_key"] = duplicate_key_query([src])
        out["duplicate_in_file"] = duplicate_in_file_query(src)
    out["load"] = Query("load", _select_for(src))
    return {name: Query(name, q.sql, q.params) for name, q in out.items()}


# -- loading --------------------------------------------------------------------------------
def _select_for(src: SourceFile) -> str:
    """The typed SELECT that loads one file: contract columns cast losslessly, extra columns kept."""
    parts = [f"{src.stored(c.name)} AS {_q(c.name)}" for c in src.contract.columns]
    parts += [_q(name) for name in src.extra_columns]
    return f"SELECT {', '.join(parts)} FROM {src.scan}"


def _ensure_table(con: duckdb.DuckDBPyConnection, src: SourceFile) -> None:
    """Create the contract table, or add this file's extra columns to it."""
    contract = src.contract
    if not table_exists(con, src.table):
        con.execute(f"CREATE TABLE {_q(src.table)} AS {_select_for(src)} LIMIT 0")
        return
    types = {r[0]: r[1] for r in con.execute(f"DESCRIBE {_q(src.table)}").fetchall()}
    for col in contract.columns:  # a table made under an older contract (money as DOUBLE) follows it
        if col.name in types and types[col.name] != col.type:
            con.execute(f"ALTER TABLE {_q(src.table)} ALTER COLUMN {_q(col.name)} SET DATA TYPE {col.type}")
    have = {name.lower() for name in types}
    for name in src.extra_columns:
        if name.lower() not in have:
            con.execute(f"ALTER TABLE {_q(src.table)} ADD COLUMN {_q(name)} {src.schema[name]}")


def _load_table(con: duckdb.DuckDBPyConnection, table: str, files: list[SourceFile]) -> None:
    """Replace what these files carry (months, whole table, or keys) and insert them."""
    contract = TABLES[table]
    t = _q(table)
    for src in files:
        _ensure_table(con, src)
    if contract.reload == "snapshot":
        con.execute(f"DELETE FROM {t}")
    elif contract.reload == "month":
        months = sorted({m for f in files for m in f.months})
        con.execute(f"DELETE FROM {t} WHERE month IN (SELECT unnest(?))", [months])
    if contract.reload == "upsert":
        _upsert(con, table, files)
        return
    for src in files:
        try:
            con.execute(f"INSERT INTO {t} BY NAME {_select_for(src)}")
        except duckdb.Error as exc:
            raise InputError(f"could not load: {str(exc).splitlines()[0]}", file=src.where, table=table) from None


#: contact_history's bookkeeping columns (export adds them): which cycle and tool wrote a row.
#: No extract is expected to carry them, so an upsert keeps the replaced row's values.


def _upsert(con: duckdb.DuckDBPyConnection, table: str, files: list[SourceFile]) -> None:
    """Replace rows by key. Among the files of one call, a key's row from the later file (in
    name order) wins: a folder of sent contacts plus their responses loads as the responses.

    One DELETE and one INSERT over the union of the files, so the DELETE reads only what was
    committed before (never rows appended earlier in this transaction: see Database.transaction).

    contact_history keeps the replaced row's bookkeeping (:data:`mktool.schema.HISTORY_BOOKKEEPING`): a response
    to a contact mktool recorded as `sent` updates its outcome and stays that cycle's contact
    (the campaign evaluation counts it); the rest of the row comes from the file, and a file that
    carries a bookkeeping column itself wins where its value is not NULL.
    """
    contract = TABLES[table]
    t = _q(table)
    key = ", ".join(_q(k) for k in contract.key)
    columns = _loaded_columns(files)
    if len(files) == 1:
        latest = _select_for(files[0])
    else:
        # Plain SQL both engines run (DuckDB, Spark): the files' columns aligned by name (what UNION ALL
        # BY NAME did), the latest file's row per key by a ranked subquery (what QUALIFY did).
        files = sorted(files, key=lambda f: (f.path.name, f.where))
        file_no, rank = _helper_name(files, "_mk_file_no"), _helper_name(files, "_mk_rank")
        union = " UNION ALL ".join(
            f"SELECT {', '.join(_aligned(src, f'f{i}', columns))}, {i} AS {file_no} FROM ({_select_for(src)}) AS f{i}"
            for i, src in enumerate(files))
        names = ", ".join(_q(n) for n, _ in columns)
        ranked = f"row_number() OVER (PARTITION BY {key} ORDER BY {file_no} DESC) AS {rank}"
        latest = f"SELECT {names} FROM (SELECT {names}, {ranked} FROM ({union}) AS loaded) AS ranked WHERE {rank} = 1"
    match = " AND ".join(f"{t}.{_q(k)} = s.{_q(k)}" for k in contract.key)
    kept = _kept_bookkeeping(con, table)
    try:
        if kept:
            _save_bookkeeping(con, table, latest, match, kept)
        con.execute(f"DELETE FROM {t} USING ({latest}) AS s WHERE {match}")
        if kept:
            con.execute(f"INSERT INTO {t} BY NAME {_with_bookkeeping(table, files, latest, kept, columns)}")
            con.execute(f"DROP TABLE {KEPT_TABLE}")
        else:
            con.execute(f"INSERT INTO {t} BY NAME {latest}")
    except duckdb.Error as exc:
        names = ", ".join(f.where for f in files)
        raise InputError(f"could not load: {str(exc).splitlines()[0]}", file=names, table=table) from None


def _loaded_columns(files: Sequence[SourceFile]) -> list[tuple[str, str]]:
    """(name, type) of the rows an upsert loads: the contract's columns, then every file's extra
    columns in order of first appearance (a name matched case-insensitively, spelled as first seen)."""
    contract = files[0].contract
    out = [(c.name, c.type) for c in contract.columns]
    seen = {n.lower() for n, _ in out}
    for src in files:
        for name in src.extra_columns:
            if name.lower() not in seen:
                seen.add(name.lower())
                out.append((name, src.schema[name]))
    return out


def _aligned(src: SourceFile, alias: str, columns: Sequence[tuple[str, str]]) -> list[str]:
    """``src``'s loaded columns in ``columns``' order, a NULL of the column's type where it lacks one."""
    have = {name.lower(): name for name in [*(c.name for c in src.contract.columns), *src.extra_columns]}
    return [f"{alias}.{_q(have[n.lower()])} AS {_q(n)}" if n.lower() in have else f"CAST(NULL AS {t}) AS {_q(n)}"
            for n, t in columns]


def _helper_name(files: Sequence[SourceFile], name: str) -> str:
    """A helper column's name that no file carries."""
    while any(name.lower() in {c.lower() for c in f.schema} for f in files):
        name += "_"
    return name


#: The replaced rows' bookkeeping, saved between the upsert's DELETE and INSERT.
KEPT_TABLE = "_mk_upsert_kept"


def _kept_bookkeeping(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The bookkeeping columns an upsert of ``table`` keeps: contact_history's that the table has."""
    if table != CONTACT_HISTORY_TABLE or not table_exists(con, table):
        return []
    have = {c.lower() for c in table_columns(con, table)}
    return [c for c in HISTORY_BOOKKEEPING if c in have]


def _save_bookkeeping(con: duckdb.DuckDBPyConnection, table: str, latest: str, match: str, kept: list[str]) -> None:
    """The bookkeeping of the rows the upsert replaces, one row per key (a mktool row first,
    should the table hold a key twice)."""
    contract = TABLES[table]
    t = _q(table)
    keys = ", ".join(f"{t}.{_q(k)}" for k in contract.key)
    cols = ", ".join(f"{t}.{_q(c)}" for c in kept)
    some = " OR ".join(f"{t}.{_q(c)} IS NOT NULL" for c in kept)
    order = ", ".join(f"{t}.{_q(c)} IS NULL, {t}.{_q(c)} DESC" for c in reversed(kept))
    names = ", ".join(_q(c) for c in [*contract.key, *kept])
    con.execute(f"CREATE OR REPLACE TEMP TABLE {KEPT_TABLE} AS SELECT {names} FROM (SELECT {keys}, {cols}, "
                f"row_number() OVER (PARTITION BY {keys} ORDER BY {order}) AS _mk_rank FROM {t} "
                f"JOIN ({latest}) AS s ON {match} WHERE {some}) AS ranked WHERE _mk_rank = 1")


def _with_bookkeeping(table: str, files: list[SourceFile], latest: str, kept: list[str],
                      columns: Sequence[tuple[str, str]]) -> str:
    """The loaded rows (``columns``) with the replaced rows' bookkeeping (the file's own value first,
    when it has the column)."""
    contract = TABLES[table]
    carried = {name.lower() for f in files for name in f.extra_columns}
    own = [c for c in kept if c in carried]
    rows = ", ".join(f"s.{_q(n)}" for n, _ in columns if n.lower() not in {c.lower() for c in own})
    values = [f"coalesce(s.{_q(c)}, k.{_q(c)}) AS {_q(c)}" if c in own else f"k.{_q(c)} AS {_q(c)}" for c in kept]
    match = " AND ".join(f"k.{_q(k)} = s.{_q(k)}" for k in contract.key)
    return f"SELECT {rows}, {', '.join(values)} FROM ({latest}) AS s LEFT JOIN {KEPT_TABLE} k ON {match}"


def ingest(db: Database, paths: Sequence[Path | str], *, table: str | None = None, reporter: Reporter = QUIET,
           channel_names: Sequence[str] | None = None) -> IngestResult:
    """Validate every file, then load them all in one transaction (all or nothing).

    ``channel_names`` are the vocabulary of the channel columns (contact_history, dnd); by
    default the channels of the rules folder's channels.yaml, read only when such a file is loaded.
    """
    fs = db.input_fs
    files = discover(paths, table, fs)
    try:
        return _ingest_files(db, files, fs, reporter=reporter, channel_names=channel_names)
    except duckdb.Error as exc:
        if not isinstance(exc, (duckdb.InterruptException, duckdb.IOException, duckdb.OutOfMemoryException)):
            _name_damaged_file(files, db.settings.threads, db.settings.memory_limit)
        raise


def _name_damaged_file(files: list[SourceFile], threads: int, memory_limit: str) -> None:
    """Name the damaged Parquet file behind a DuckDB failure that does not name one.

    A corrupt page header fails deep in a scan over several files ("don't know what type")
    with no file in the message, which would read as a bug (exit 4). Only on that failure
    path, each extract is read in full, alone; the first one DuckDB cannot read is bad input
    (exit 1) and named. When every file reads, the caller re-raises the original error.
    On Spark too the probe is DuckDB's (a Spark failure is a ``duckdb.Error`` as well), for the
    files on this machine (local paths, ``file:`` URIs); an hdfs:// or s3a:// file keeps Spark's message.
    """
    with contextlib.closing(duckdb.connect()) as probe:
        probe.execute("SET threads = ?", [threads])
        probe.execute("SET memory_limit = ?", [memory_limit])
        for src in files:
            if not src.local:
                continue  # DuckDB cannot read hdfs:// or s3a://: Spark's own message stands
            try:
                # the path as stored, globs literal
                scan = src.scan if not src.uri else \
                    f"read_parquet('{_scan_path(src.path).replace(chr(39), chr(39) * 2)}', hive_partitioning = false)"
                probe.execute(f"SELECT max(hash(COLUMNS(*))) FROM {scan}").fetchall()
            except duckdb.Error as unreadable:
                reason = str(unreadable).splitlines()[0] if str(unreadable) else type(unreadable).__name__
                raise InputError(f"damaged Parquet file: DuckDB cannot read it in full ({reason})",
                                 file=src.where, hint="export the extract again") from None


def _checksum(src: SourceFile, fs: InputFS | None) -> str:
    """A file's sha256: read here for a local path, in the JVM for a URI (the same digest)."""
    if src.uri:
        assert fs is not None, "a URI file without a file system to read it"
        return fs.sha256(src.uri)
    return file_sha256(src.path)


def _ingest_files(db: Database, files: list[SourceFile], fs: InputFS | None, *, reporter: Reporter,
                  channel_names: Sequence[str] | None) -> IngestResult:
    con = db.c
    if channel_names is None and any(c.channels for f in files for c in f.contract.columns):
        channel_names = load_channels(db.settings.matrices_dir).names
    by_table: dict[str, list[SourceFile]] = {}
    for src in files:
        by_table.setdefault(src.table, []).append(src)
    # Three things overlap, because no one of them keeps both cores busy: the checksums
    # (hashlib releases the GIL), the key checks (on their own cursor: they read only the
    # files) and the load. The load transaction commits only after every key check passed;
    # a refusal rolls it back, so the database is exactly as it was.
    hashing = ThreadPoolExecutor(max_workers=1)
    checking = ThreadPoolExecutor(max_workers=1)
    stop = threading.Event()
    try:
        checksums = [hashing.submit(_checksum, src, fs) for src in files]
        with reporter.progress("validating", len(files)) as bar:
            for src in files:
                read_schema(con, src)
                validate(con, src, channel_names or ())
                bar.advance(src.path.name)
        cursor = con.cursor()
        keys = checking.submit(_check_all_keys, cursor, by_table, stop)
        try:
            load_id = uuid.uuid4().hex[:12]
            now = dt.datetime.now().replace(microsecond=0)
            with reporter.step(f"loading {len(files)} file(s)"), db.transaction():
                for table_name, group in by_table.items():
                    if keys.done():
                        keys.result()  # a refusal stops the load early
                    _load_table(con, table_name, group)
                keys.result()
                for src, sha in zip(files, checksums):
                    src.sha256 = sha.result()
                ensure_load_seq(con)
                (last,) = con.execute(f"SELECT coalesce(max({LOAD_SEQ}), 0) FROM ingest_log").fetchone()  # type: ignore[misc]
                con.executemany(
                    "INSERT INTO ingest_log (load_id, table_name, file, sha256, rows, months, loaded_at, "
                    f"{LOAD_SEQ}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(load_id, f.table, f.recorded, f.sha256, f.rows, f.months, now, int(last) + i)
                     for i, f in enumerate(files, 1)],
                )
        except BaseException:
            # A failed load or Ctrl-C must not wait for the key scan to finish on its own.
            stop.set()
            with contextlib.suppress(Exception):
                cursor.interrupt()
            raise
        finally:
            with contextlib.suppress(BaseException):
                keys.result()  # _check_all_keys closes the cursor before the database closes
    finally:
        stop.set()
        hashing.shutdown(wait=True, cancel_futures=True)  # checksums not yet started are dropped
        checking.shutdown(wait=True, cancel_futures=True)
    return IngestResult(files)


def status(db: Database) -> list[dict[str, Any]]:
    """What is loaded: rows per table and month, with the last file that loaded it."""
    con = db.c
    out: list[dict[str, Any]] = []
    for name, contract in TABLES.items():
        if not table_exists(con, name):
            out.append({"table": name, "month": None, "rows": 0, "file": None, "sha256": None,
                        "loaded_at": None, "required": contract.required})
            continue
        month_expr = "month" if contract.monthly else "NULL"
        rows = con.execute(
            f"""WITH counts AS (SELECT {month_expr} AS month, count(*) AS rows FROM {_q(name)} GROUP BY ALL),
                all_loads AS (SELECT unnest(CASE WHEN array_length(months) = 0 THEN [NULL] ELSE months END) AS month,
                                     file, sha256, loaded_at
                              FROM ingest_log WHERE table_name = ?),
                loads AS (SELECT * FROM all_loads
                          QUALIFY row_number() OVER (PARTITION BY month ORDER BY loaded_at DESC, file DESC) = 1)
                SELECT c.month, c.rows, l.file, l.sha256, l.loaded_at FROM counts c
                LEFT JOIN loads l ON l.month IS NOT DISTINCT FROM c.month ORDER BY c.month""",
            [name],
        ).fetchall()
        for month, n, file, sha, at in rows:
            out.append({"table": name, "month": month, "rows": n, "file": file, "sha256": sha,
                        "loaded_at": at, "required": contract.required})
    return out
