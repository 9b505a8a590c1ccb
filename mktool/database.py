"""The one local DuckDB file: connection settings, the run lock, transactions, bookkeeping tables.

Why a lock of our own: DuckDB refuses a second writer with a low-level IO error; mktool
turns that into a clear "database is locked by another mktool run (pid N)" and can wait.
Why transactions everywhere: DuckDB's write-ahead log makes an interrupted transaction
vanish on the next open, so a killed command leaves the database as it was before it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb

from mktool.config import Settings
from mktool.errors import LockedError, StateError

# Bookkeeping tables, created on first write. Names say what they hold.
BOOKKEEPING_DDL = (
    """CREATE TABLE IF NOT EXISTS ingest_log (
        load_id VARCHAR, table_name VARCHAR, file VARCHAR, sha256 VARCHAR,
        rows BIGINT, months VARCHAR[], loaded_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS funnel_counts (
        month VARCHAR, funnel VARCHAR, stage_no INTEGER, stage VARCHAR, count BIGINT)""",
    """CREATE TABLE IF NOT EXISTS rule_hits (
        month VARCHAR, matrix VARCHAR, rule_no INTEGER, rule_id VARCHAR, policy_id VARCHAR, hits BIGINT)""",
)


class RunLock:
    """An advisory lock file beside the database: exclusive for writers, shared for readers."""

    def __init__(self, db_path: Path, *, exclusive: bool, wait: float) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self.exclusive = exclusive
        self.wait = wait
        self._fh: Any = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        mode = (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fh, mode)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    fh.close()
                    raise LockedError(
                        f"database is locked by another mktool run (pid {holder})",
                        file=str(self.path.with_suffix("")),
                        hint="wait for it to finish, or pass --wait SECONDS (env MKTOOL_LOCK_WAIT) to queue behind it",
                    ) from None
                time.sleep(0.2)
        # The file names the holder for the "locked by … (pid N)" message: a writer replaces it,
        # a reader writes its pid when no other reader did; whoever it names clears it on release,
        # so that a waiting run never names a process that has finished.
        fh.seek(0)
        if self.exclusive or not fh.read().strip():
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            if self._fh.read().strip() == str(os.getpid()):
                self._fh.seek(0)
                self._fh.truncate()
                self._fh.flush()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def configure(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Bound DuckDB's memory and give it a place to spill, so big inputs slow down instead of dying."""
    settings.spill_dir.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET memory_limit = '{settings.memory_limit}'")
    con.execute(f"SET threads = {int(settings.threads)}")
    con.execute("SET temp_directory = ?", [str(settings.spill_dir)])
    con.execute("SET enable_progress_bar = false")
    # Bulk writes flush each row group as it fills instead of buffering five: the score step's
    # 70-column view peaked ~330 MB lower at 1M subscribers, at no measurable cost in time.
    with contextlib.suppress(duckdb.Error):  # a setting of DuckDB >= 1.4
        con.execute("SET write_buffer_row_group_count = 1")


class Database:
    """A locked, configured connection to the mktool DuckDB file.

    Use as a context manager: ``with Database(settings, write=True) as db: ...``.
    """

    def __init__(self, settings: Settings, *, write: bool) -> None:
        self.settings = settings
        self.write = write
        self.path = settings.db_path
        self._lock = RunLock(self.path, exclusive=write, wait=settings.lock_wait)
        self.con: duckdb.DuckDBPyConnection | None = None
        self._created = False  # this command made the database file …
        self._committed = False  # … and has not committed anything to it yet

    def __enter__(self) -> "Database":
        if not self.write and not self.path.exists():
            raise StateError(
                f"no database at {self.path}",
                hint="run `mktool ingest PATH...` first, or point --db / MKTOOL_DB at an existing database",
            )
        self._lock.__enter__()
        try:
            self._created = self.write and not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.con = duckdb.connect(str(self.path), read_only=not self.write)
            configure(self.con, self.settings)
            if self.write:
                for ddl in BOOKKEEPING_DDL:
                    self.con.execute(ddl)
        except duckdb.IOException as exc:
            self._lock.__exit__()
            if "lock" in str(exc).lower():
                raise LockedError(
                    "database is locked by another process (not an mktool run, or one from an older version)",
                    file=str(self.path),
                ) from None
            raise
        except BaseException:
            self._lock.__exit__()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None
        if exc_type is not None and self._created and not self._committed:
            # A command refused before anything was committed: leave no half-made database
            # behind (the folder is as it was, and the next command starts clean).
            for leftover in (self.path, self.path.with_name(self.path.name + ".wal")):
                leftover.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.settings.spill_dir.rmdir()  # only when empty
        self._lock.__exit__()

    # -- small helpers -----------------------------------------------------------------
    @property
    def c(self) -> duckdb.DuckDBPyConnection:
        assert self.con is not None, "Database used outside its `with` block"
        return self.con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All or nothing: on any error the database is exactly as before.

        Beware a DuckDB 2.0.0 bug: a table (or temp table) created in a transaction and then
        filled by more than one append (or > 1 row group) may return no rows to filtered and
        grouped reads until the transaction ends and a checkpoint runs. Inside a transaction,
        mktool therefore reads only what was committed before it or written by one statement
        (a CREATE TABLE AS): checks read the input files (ingest), each upsert is one DELETE +
        one INSERT, and staging runs outside it (export; the write-back's NOT EXISTS looks for
        this channel's rows, which earlier appends of other channels cannot hold). The CHECKPOINT after COMMIT makes the next step's
        reads on the same connection see the data (`mktool run` found no subscribers right
        after ingesting 1M without it), and moves the write-ahead log into the database file,
        so each finished step is durable on its own.
        """
        con = self.c
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        self._committed = True
        con.execute("CHECKPOINT")

    def table_exists(self, name: str) -> bool:
        return table_exists(self.c, name)

    def columns(self, name: str) -> list[str]:
        return table_columns(self.c, name)

    def months(self, table: str) -> list[str]:
        if not self.table_exists(table):
            return []
        return [r[0] for r in self.c.execute(f'SELECT DISTINCT month FROM "{table}" ORDER BY 1').fetchall()]

    def require_month(self, table: str, month: str, step: str) -> None:
        """Refuse clearly when a prerequisite step has not produced ``table`` for ``month``."""
        if not self.table_exists(table) or not self.c.execute(
            f'SELECT 1 FROM "{table}" WHERE month = ? LIMIT 1', [month]
        ).fetchone():
            have = ", ".join(self.months(table)) or "none"
            raise StateError(
                f"{table} has no rows for month {month} (months present: {have})",
                hint=f"run `mktool {step} --month {month}` first",
            )


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(
        con.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?", [name]
        ).fetchone()
    )


def table_columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    return [r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()]


def replace_month(con: duckdb.DuckDBPyConnection, table: str, month: str, select_sql: str,
                  params: Sequence[Any] | dict[str, Any] = ()) -> int:
    """Replace ``table``'s rows for ``month`` with the rows of ``select_sql``; returns rows written.

    Other months stay. When the new rows' columns differ from the table's (a rule file added a
    score) or their types do (money became DECIMAL), the table is rebuilt by column name so
    that older months keep their values; an older month's numeric column is cast to the new
    type (a union would otherwise widen DECIMAL money back to DOUBLE). Call inside a transaction.
    """
    args: Any = dict(params) if isinstance(params, dict) else list(params)
    new_described = [(r[0], r[1]) for r in con.execute(f"DESCRIBE {select_sql}", args).fetchall()]
    if not table_exists(con, table):
        con.execute(f'CREATE TABLE "{table}" AS {select_sql}', args)
        return _month_rows(con, table, month)
    old_described = [(r[0], r[1]) for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
    if old_described == new_described:
        con.execute(f'DELETE FROM "{table}" WHERE month = ?', [month])
        con.execute(f'INSERT INTO "{table}" {select_sql}', args)
    else:
        new_types = dict(new_described)
        old_select = ", ".join(
            f'CAST("{name}" AS {new_types[name]}) AS "{name}"'
            if name in new_types and new_types[name] != type_ and _numeric(type_) and _numeric(new_types[name])
            else f'"{name}"'
            for name, type_ in old_described)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _mk_new AS {select_sql}", args)
        con.execute(
            f'CREATE OR REPLACE TABLE "{table}" AS '
            f'SELECT * FROM _mk_new UNION ALL BY NAME SELECT {old_select} FROM "{table}" WHERE month <> ?',
            [month],
        )
        con.execute("DROP TABLE _mk_new")
    return _month_rows(con, table, month)


def _month_rows(con: duckdb.DuckDBPyConnection, table: str, month: str) -> int:
    return int(con.execute(f'SELECT count(*) FROM "{table}" WHERE month = ?', [month]).fetchone()[0])  # type: ignore[index]


_NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL")


def _numeric(type_: str) -> bool:
    return type_.upper().startswith(_NUMERIC_TYPES)


def record_funnel(con: duckdb.DuckDBPyConnection, month: str, funnel: str, stages: Sequence[tuple[str, int]]) -> None:
    """Store one funnel's ordered stage counts for ``month`` (replacing the previous ones)."""
    con.execute("DELETE FROM funnel_counts WHERE month = ? AND funnel = ?", [month, funnel])
    if stages:
        con.executemany(
            "INSERT INTO funnel_counts VALUES (?, ?, ?, ?, ?)",
            [(month, funnel, i, stage, int(count)) for i, (stage, count) in enumerate(stages, 1)],
        )
