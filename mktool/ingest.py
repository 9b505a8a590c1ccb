"""`mktool ingest`: Parquet extracts → the DuckDB file, under the data contract (SPEC §2).

Every file is validated with set-based SQL straight over ``read_parquet`` (one aggregate scan
for all type and format checks, one grouped scan for key uniqueness) before anything is
written; then all files of one call load inside one transaction, so a refusal or a kill
leaves the database exactly as it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from mktool.console import QUIET, Reporter
from mktool.contract import MONTH_RE, TABLES, TableContract, table_for_file
from mktool.database import Database, table_columns, table_exists
from mktool.errors import InputError
from mktool.output import file_sha256

INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}
TEXT_TYPES = {"VARCHAR"}
#: YYYY-MM in SQL (regexp_full_match), the twin of contract.MONTH_RE: ASCII digits only.
MONTH_PATTERN = "[0-9]{4}-(0[1-9]|1[0-2])"


def _base_type(type_: str) -> str:
    """DECIMAL(18,2) → DECIMAL, TIMESTAMP WITH TIME ZONE stays as is."""
    return type_.split("(")[0].strip().upper()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class SourceFile:
    path: Path
    table: str
    sha256: str = ""
    rows: int = 0
    months: list[str] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)  # column → DuckDB type as read

    @property
    def contract(self) -> TableContract:
        return TABLES[self.table]

    @property
    def sql_path(self) -> str:
        return str(self.path).replace("'", "''")

    @property
    def scan(self) -> str:
        return f"read_parquet('{self.sql_path}')"


@dataclass
class IngestResult:
    files: list[SourceFile]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


# -- discovery ------------------------------------------------------------------------------
def discover(paths: list[Path], table: str | None = None) -> list[SourceFile]:
    """Files and folders → the Parquet files to load, each with its table. Sorted for determinism."""
    if table is not None and table not in TABLES:
        raise InputError(f"unknown table '{table}' (known tables: {', '.join(TABLES)})")
    found: list[SourceFile] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            if not files:
                raise InputError("folder holds no .parquet files", file=str(path))
        elif path.exists():
            files = [path]
        else:
            raise InputError("no such file or folder", file=str(path))
        for f in files:
            name = table or table_for_file(f.stem)
            if name is None:
                raise InputError(
                    "cannot tell which table this file is for",
                    file=str(f),
                    hint=f"name it after its table (e.g. usage_2026-10.parquet) or pass --table; "
                    f"known tables: {', '.join(TABLES)}",
                )
            found.append(SourceFile(path=f, table=name))
    return found



# -- validation -----------------------------------------------------------------------------
def _lossy_condition(col: str, source: str, target: str) -> str | None:
    """SQL that is true for a value that cannot be cast to ``target`` without loss; None if always safe.

    Raises InputError (via the caller) for type pairs that can never be cast, by returning "!".
    """
    c = _q(col)
    src = _base_type(source)
    if src == target:
        return None
    if target == "VARCHAR":
        return None  # any value has a text form
    if target == "DOUBLE":
        if src in INTEGER_TYPES | FLOAT_TYPES | {"DECIMAL"}:
            return None
        if src in TEXT_TYPES:
            return f"{c} IS NOT NULL AND TRY_CAST({c} AS DOUBLE) IS NULL"
        return "!"
    if target == "BIGINT":
        if src in INTEGER_TYPES:
            return None
        if src in FLOAT_TYPES | {"DECIMAL"} | TEXT_TYPES:
            d = f"TRY_CAST({c} AS DOUBLE)"
            return f"{c} IS NOT NULL AND ({d} IS NULL OR NOT isfinite({d}) OR {d} <> round({d}))"
        return "!"
    if target == "DATE":
        if src.startswith("TIMESTAMP"):
            return f"{c} IS NOT NULL AND CAST({c} AS TIMESTAMP) <> CAST(CAST({c} AS DATE) AS TIMESTAMP)"
        if src in TEXT_TYPES:
            return f"{c} IS NOT NULL AND TRY_CAST({c} AS DATE) IS NULL"
        return "!"
    if target == "TIMESTAMP":
        if src.startswith("TIMESTAMP") or src == "DATE":
            return None
        if src in TEXT_TYPES:
            return f"{c} IS NOT NULL AND TRY_CAST({c} AS TIMESTAMP) IS NULL"
        return "!"
    if target == "BOOLEAN":
        if src in INTEGER_TYPES:
            return f"{c} IS NOT NULL AND {c} NOT IN (0, 1)"
        if src in TEXT_TYPES:
            return f"{c} IS NOT NULL AND TRY_CAST({c} AS BOOLEAN) IS NULL"
        return "!"
    return "!"


def _blank_condition(col: str, source: str) -> str:
    """SQL true for a NULL or blank key value (what trim() empties: spaces, and Unicode spaces).

    Such a value starts with a byte below '!' or a non-ASCII character, so a cheap comparison
    runs first and trim() only on the few values it lets through (3.5x cheaper per row).
    """
    c = _q(col)
    if _base_type(source) in TEXT_TYPES:
        return f"{c} IS NULL OR (({c} < '!' OR {c} >= chr(128)) AND trim({c}) = '')"
    return f"{c} IS NULL OR trim(CAST({c} AS VARCHAR)) = ''"


def _stored_value(col: str, source: str | None, target: str) -> str:
    """The column's value as it will be stored: the lossless cast (validated beforehand)."""
    if source is None:
        return f"CAST(NULL AS {target})"
    src = _base_type(source)
    if src == target:
        return _q(col)
    if target == "BIGINT" and src not in INTEGER_TYPES:
        return f"CAST(CAST({_q(col)} AS DOUBLE) AS BIGINT)"
    return f"CAST({_q(col)} AS {target})"


def _cast_expr(col: str, source: str | None, target: str) -> str:
    """The select item that loads a column: its stored value under its own name."""
    value = _stored_value(col, source, target)
    return value if value == _q(col) else f"{value} AS {_q(col)}"


def _example_row(con: duckdb.DuckDBPyConnection, src: SourceFile, condition: str) -> dict[str, Any] | None:
    cur = con.execute(f"SELECT * FROM {src.scan} WHERE {condition} LIMIT 1")
    row = cur.fetchone()
    if row is None:
        return None
    names = [d[0] for d in cur.description]
    return dict(zip(names, row))


def read_schema(con: duckdb.DuckDBPyConnection, src: SourceFile) -> None:
    """Fill ``src.schema`` and ``src.rows``; refuse empty or unreadable files."""
    if src.path.stat().st_size == 0:
        raise InputError("empty file (0 bytes): not a Parquet file", file=str(src.path), table=src.table)
    try:
        src.schema = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src.scan}").fetchall()}
        src.rows = int(con.execute(f"SELECT count(*) FROM {src.scan}").fetchone()[0])  # type: ignore[index]
    except duckdb.Error as exc:
        reason = str(exc).splitlines()[0]
        reason = reason.split("Error: ", 1)[-1]
        raise InputError(f"not a readable Parquet file ({reason})", file=str(src.path), table=src.table) from None
    if src.rows == 0:
        raise InputError("file has no rows", file=str(src.path), table=src.table,
                         hint="an empty extract would wipe the months it should carry; check the export job")


def _refuse_bad_rows(con: duckdb.DuckDBPyConnection, src: SourceFile, checks: list[tuple[str, str, str]]) -> None:
    """Count every (column, problem, condition) in one scan of the file; refuse the first that matches."""
    if not checks:
        return
    aggregates = ", ".join(f"count_if({cond})" for _, _, cond in checks)
    counts = con.execute(f"SELECT {aggregates} FROM {src.scan}").fetchone()
    assert counts is not None
    for (column, problem, cond), bad in zip(checks, counts):
        if bad:
            row = _example_row(con, src, cond)
            value = row.get(column) if row else None
            raise InputError(
                f"{problem} ({bad} row{'s' if bad > 1 else ''}; e.g. {value!r})",
                file=str(src.path), table=src.table, column=column, row=row,
            )


def validate(con: duckdb.DuckDBPyConnection, src: SourceFile) -> None:
    """Check one file against its contract; raise InputError naming file, column and an example row."""
    contract = src.contract
    missing = [c.name for c in contract.columns if c.name not in src.schema and not c.nullable]
    if missing:
        raise InputError(
            f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            file=str(src.path), table=src.table,
            hint=f"columns found: {', '.join(src.schema)}",
        )
    checks: list[tuple[str, str, str]] = []  # (column, problem, SQL condition for a bad row)
    for col in contract.columns:
        if col.name not in src.schema:
            continue
        source = src.schema[col.name]
        if col.name == "msisdn" and _base_type(source) not in TEXT_TYPES:
            raise InputError(
                f"msisdn must be a string column, got {source}: numbers lose leading digits and formatting",
                file=str(src.path), table=src.table, column="msisdn",
                hint="export msisdn as VARCHAR / string in the warehouse extract",
            )
        lossy = _lossy_condition(col.name, source, col.type)
        if lossy == "!":
            raise InputError(
                f"type {source} cannot be read as {col.type}",
                file=str(src.path), table=src.table, column=col.name,
            )
        if lossy:
            checks.append((col.name, f"value cannot be read as {col.type} without loss", lossy))
        # NULL or blank keys: checked by check_keys in the same scan as uniqueness.
    if contract.monthly:
        # A file carries one or a few months: check the distinct values, not every row, with
        # the same SQL (trim, regexp) that names the rows when one is bad.
        distinct = con.execute(
            f"SELECT m, m IS NULL OR trim(m) = '', regexp_full_match(m, '{MONTH_PATTERN}') "
            f"FROM (SELECT DISTINCT CAST(month AS VARCHAR) AS m FROM {src.scan}) AS months ORDER BY m"
        ).fetchall()
        src.months = [m for m, _, _ in distinct]
        if any(blank for _, blank, _ in distinct):
            checks.append(("month", "key column is NULL or empty", _blank_condition("month", src.schema["month"])))
        if any(not blank and not ok for _, blank, ok in distinct):
            checks.append(("month", "month is not in YYYY-MM form",
                           "month IS NOT NULL AND trim(CAST(month AS VARCHAR)) <> '' AND "
                           f"NOT regexp_full_match(CAST(month AS VARCHAR), '{MONTH_PATTERN}')"))
    _refuse_bad_rows(con, src, checks)
    assert all(MONTH_RE.match(m) for m in src.months)  # every refusal above has been raised


def check_keys(con: duckdb.DuckDBPyConnection, table: str, files: list[SourceFile]) -> None:
    """Refuse duplicate keys among the rows these files would load into ``table``.

    The check reads the files, not the table: a reload replaces exactly the months (snapshot:
    the table) the files carry, so the loaded rows are unique iff the files' rows are. Upsert
    tables are checked file by file: across the files of one call the later file wins.
    It never reads the table inside the load transaction, because DuckDB 2.0.0 may return no
    rows for a filtered or grouped read of a table created and filled in that transaction
    (a check after the insert passed silently at scale).
    The same scan refuses NULL or blank keys (reading the key columns once instead of twice).
    The fast pass sorts one 64-bit hash per row and looks for equal neighbours (about 3× cheaper
    than grouping the string keys); distinct hashes prove distinct keys. Only when two hashes
    are equal does the exact grouped check run, which names the key (a hash collision without
    a duplicate passes), and then the files are checked one by one to name the culprit.
    """
    contract = TABLES[table]
    if not contract.key:
        return
    if contract.reload == "upsert" and len(files) > 1:
        for src in files:  # across files the later one wins (see _upsert); within one, refuse
            check_keys(con, table, [src])
        return
    key = ", ".join(_q(k) for k in contract.key)
    union = " UNION ALL ".join(
        f"SELECT {', '.join(_cast_expr(k, src.schema.get(k), contract.column(k).type) for k in contract.key)} FROM {src.scan}"
        for src in files
    )
    blank = " OR ".join(f"({_blank_condition(k, contract.column(k).type)})" for k in contract.key)
    equal_hashes, blanks = con.execute(
        f"SELECT count_if(h = prev), count_if(blank) FROM (SELECT h, blank, lag(h) OVER (ORDER BY h) AS prev "
        f"FROM (SELECT hash({key}) AS h, {blank} AS blank FROM ({union}) AS loaded) AS hashed) AS pairs"
    ).fetchone()  # type: ignore[misc]
    if blanks:
        for src in files:
            _refuse_bad_rows(con, src, [(k, "key column is NULL or empty", _blank_condition(k, src.schema.get(k, "VARCHAR")))
                                        for k in contract.key if k in src.schema])
    if not equal_hashes:
        return
    dup = con.execute(
        f"SELECT {key}, count(*) FROM ({union}) AS loaded GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL LIMIT 1"
    ).fetchone()
    if dup is None:
        return
    for src in files:
        problem = duplicate_in_file(con, src)
        if problem is not None:
            raise problem
    names = ", ".join(str(f.path) for f in files)
    raise InputError(
        f"duplicate key ({', '.join(contract.key)}) = ({', '.join(map(str, dup[:-1]))}) "
        f"appears in more than one of the files loaded together: {names}",
        table=table, column=", ".join(contract.key),
    )


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


def duplicate_in_file(con: duckdb.DuckDBPyConnection, src: SourceFile) -> InputError | None:
    """The first duplicate key inside one file, as the error to raise (None when its keys are unique)."""
    contract = src.contract
    # Keys as they will be stored (after the lossless cast): '2026-10-3' and '2026-10-03' are
    # one contact_date.
    stored = {k: _stored_value(k, src.schema.get(k), contract.column(k).type) for k in contract.key}
    key = ", ".join(f"{expr} AS {_q(k)}" for k, expr in stored.items())
    dup = con.execute(
        f"SELECT {key}, count(*) AS n FROM {src.scan} GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL LIMIT 1"
    ).fetchone()
    if dup is None:
        return None
    where = " AND ".join(f"{expr} = ?" for expr in stored.values())
    cur = con.execute(f"SELECT * FROM {src.scan} WHERE {where} LIMIT 1", list(dup[:-1]))
    row = dict(zip([d[0] for d in cur.description], cur.fetchone() or ()))
    return InputError(
        f"duplicate key ({', '.join(contract.key)}) = ({', '.join(map(str, dup[:-1]))}) appears {dup[-1]} times",
        file=str(src.path), table=src.table, column=", ".join(contract.key), row=row,
    )


# -- loading --------------------------------------------------------------------------------
def _select_for(src: SourceFile) -> str:
    """The typed SELECT that loads one file: contract columns cast losslessly, extra columns kept."""
    contract = src.contract
    parts = [_cast_expr(c.name, src.schema.get(c.name), c.type) for c in contract.columns]
    parts += [_q(name) for name in src.schema if name not in contract.column_names]
    return f"SELECT {', '.join(parts)} FROM {src.scan}"


def _ensure_table(con: duckdb.DuckDBPyConnection, src: SourceFile) -> None:
    """Create the contract table, or add this file's extra columns to it."""
    contract = src.contract
    if not table_exists(con, src.table):
        con.execute(f"CREATE TABLE {_q(src.table)} AS {_select_for(src)} LIMIT 0")
        return
    have = set(table_columns(con, src.table))
    for name, type_ in src.schema.items():
        if name not in have and name not in contract.column_names:
            con.execute(f"ALTER TABLE {_q(src.table)} ADD COLUMN {_q(name)} {type_}")


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
            raise InputError(f"could not load: {str(exc).splitlines()[0]}", file=str(src.path), table=table) from None


def _upsert(con: duckdb.DuckDBPyConnection, table: str, files: list[SourceFile]) -> None:
    """Replace rows by key. Among the files of one call, a key's row from the later file (in
    name order) wins: a folder of sent contacts plus their responses loads as the responses.

    One DELETE and one INSERT over the union of the files, so the DELETE reads only what was
    committed before (never rows appended earlier in this transaction: see Database.transaction).
    """
    contract = TABLES[table]
    t = _q(table)
    key = ", ".join(_q(k) for k in contract.key)
    if len(files) == 1:
        latest = _select_for(files[0])
    else:
        files = sorted(files, key=lambda f: (f.path.name, str(f.path)))
        file_no = "_mk_file_no"  # a helper column no extract carries
        while any(file_no in f.schema for f in files):
            file_no += "_"
        union = " UNION ALL BY NAME ".join(
            f"SELECT *, {i} AS {file_no} FROM ({_select_for(src)}) AS f{i}" for i, src in enumerate(files))
        latest = (f"SELECT * EXCLUDE ({file_no}) FROM ({union}) AS loaded "
                  f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {file_no} DESC) = 1")
    match = " AND ".join(f"{t}.{_q(k)} = s.{_q(k)}" for k in contract.key)
    try:
        con.execute(f"DELETE FROM {t} USING ({latest}) AS s WHERE {match}")
        con.execute(f"INSERT INTO {t} BY NAME {latest}")
    except duckdb.Error as exc:
        names = ", ".join(str(f.path) for f in files)
        raise InputError(f"could not load: {str(exc).splitlines()[0]}", file=names, table=table) from None


def ingest(db: Database, paths: list[Path], *, table: str | None = None, reporter: Reporter = QUIET) -> IngestResult:
    """Validate every file, then load them all in one transaction (all or nothing)."""
    files = discover(paths, table)
    con = db.c
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
        checksums = [hashing.submit(file_sha256, src.path) for src in files]
        with reporter.progress("validating", len(files)) as bar:
            for src in files:
                read_schema(con, src)
                validate(con, src)
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
                con.executemany(
                    "INSERT INTO ingest_log VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(load_id, f.table, str(f.path.resolve()), f.sha256, f.rows, f.months, now) for f in files],
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
                all_loads AS (SELECT unnest(CASE WHEN len(months) = 0 THEN [NULL] ELSE months END) AS month,
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
