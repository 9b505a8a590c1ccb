"""The one local DuckDB file: connection settings, the run lock, transactions, bookkeeping tables.

Why a lock of our own: DuckDB refuses a second writer with a low-level IO error; mktool
turns that into a clear "database is locked by another mktool run (pid N)" and can wait.
Why transactions everywhere: DuckDB's write-ahead log makes an interrupted transaction
vanish on the next open, so a killed command leaves the database as it was before it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import duckdb

from mktool.config import Settings, check_memory_limit, check_threads, is_uri, no_warehouse
from mktool.errors import InputError, LockedError, MktoolError, StateError
from mktool.publish import finish_pending

# Bookkeeping tables, created on first write. Names say what they hold.
BOOKKEEPING_DDL = (
    """CREATE TABLE IF NOT EXISTS ingest_log (
        load_id VARCHAR, table_name VARCHAR, file VARCHAR, sha256 VARCHAR,
        rows BIGINT, months VARCHAR[], loaded_at TIMESTAMP, seq BIGINT)""",
    """CREATE TABLE IF NOT EXISTS funnel_counts (
        month VARCHAR, funnel VARCHAR, stage_no INTEGER, stage VARCHAR, count BIGINT, cycle VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS rule_hits (
        month VARCHAR, matrix VARCHAR, rule_no INTEGER, rule_id VARCHAR, policy_id VARCHAR, hits BIGINT)""",
)


BOOKKEEPING_TABLES = ("ingest_log", "funnel_counts", "rule_hits")

#: Connection factories of the engines other than DuckDB, by Settings.engine. mktool.sparkdb
#: registers "spark" when imported (the CLI imports it): database must not import the Spark
#: stack itself, which would lengthen every import chain through it (tests/test_architecture.py).
_ENGINES: dict[str, Callable[..., Any]] = {}


def register_engine(name: str, connect: Callable[..., Any]) -> None:
    """Make ``Database`` open ``connect(settings, write=…, must_exist=…)`` when ``settings.engine == name``."""
    _ENGINES[name] = connect


class RunLock:
    """An advisory lock file beside the database: exclusive for writers, shared for readers."""

    def __init__(self, db_path: Path, *, exclusive: bool, wait: float) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self.exclusive = exclusive
        self.wait = wait
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fh = open(self.path, "a+")
        except OSError as exc:
            if exc.errno == errno.EROFS and not self.exclusive:
                return self  # a read-only file system: no writer can exist, a reader needs no lock
            raise
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


def _local_lock_base(root: str) -> Path | None:
    """Where a local warehouse's run lock lives (``<root>/_mktool.lock``, an advisory lock of this
    machine's kernel); None for a URI root (``hdfs://``, ``s3a://``, ``file:``), whose lock is a file
    made through Hadoop's file system (mktool.warehouse.HadoopLock)."""
    if is_uri(root):
        return None
    return Path(root) / "_mktool"


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _check_spill_folder(spill: Path) -> None:
    """Made and writable now: DuckDB would only fail when it first spills, deep into a long step."""
    spill.mkdir(parents=True, exist_ok=True)
    if not os.access(spill, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only_fs(spill) else errno.EACCES
        raise PermissionError(code, f"the spill folder is not writable: {os.strerror(code)}", str(spill))


def configure(con: duckdb.DuckDBPyConnection, settings: Settings, *, write: bool = True) -> None:
    """Bound DuckDB's memory and give it a place to spill, so big inputs slow down instead of dying.

    Every value is checked again and bound as a parameter, never spliced into the SQL text.
    A reader of a database on a read-only file system gets the default spill folder beside it
    unchecked (DuckDB makes it only if it must spill); a given --temp-dir is always checked.
    """
    spill = settings.spill_dir
    if spill.exists() and not spill.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "the spill folder is a file", str(spill))
    lenient = not write and settings.temp_dir is None and _read_only_fs(settings.db_path.parent)
    if not lenient:
        _check_spill_folder(spill)
    con.execute("SET memory_limit = ?", [check_memory_limit(settings.memory_limit)])
    con.execute("SET threads = ?", [check_threads(settings.threads)])
    con.execute("SET temp_directory = ?", [str(spill)])
    con.execute("SET enable_progress_bar = false")
    # Bulk writes flush each row group as it fills instead of buffering five: the score step's
    # 70-column view peaked ~330 MB lower at 1M subscribers, at no measurable cost in time.
    with contextlib.suppress(duckdb.Error):  # a setting of DuckDB >= 1.4
        con.execute("SET write_buffer_row_group_count = 1")


class Database:
    """A locked, configured connection to the mktool DuckDB file.

    Use as a context manager: ``with Database(settings, write=True) as db: ...``.
    """

    def __init__(self, settings: Settings, *, write: bool, must_exist: bool = False) -> None:
        self.settings = settings
        self.write = write
        self.must_exist = must_exist or not write  # a reader, or a writer of results about existing data
        self.path = settings.db_path
        self.spark = settings.engine == "spark"  # the warehouse through mktool.sparkdb, not the DuckDB file
        lock_at = self.path if not self.spark else _local_lock_base(settings.warehouse)
        self._lock = RunLock(lock_at, exclusive=write, wait=settings.lock_wait) if lock_at is not None else None
        self.con: duckdb.DuckDBPyConnection | None = None
        self._created = False  # this command made the database file …
        self._committed = False  # … and has not committed anything to it yet
        self._wrapped = False  # the connection is the caller's: no lock, no open, no close
        self._bookkeeping = False  # Spark: the bookkeeping tables are still to be made, in the first transaction

    @classmethod
    def wrap(cls, con: duckdb.DuckDBPyConnection, settings: Settings, *, write: bool = True) -> Database:
        """A Database over a connection someone else opened and will close (``mktool test``'s in-memory one).

        The steps take a :class:`Database`; this gives them one without a file, a lock or the
        settings' memory and spill configuration (the owner configured its connection).
        ``with`` on it is allowed and leaves the connection open.
        """
        db = cls(settings, write=write)
        db.con = con
        db._wrapped = True
        return db

    def __enter__(self) -> Database:
        if self._wrapped:
            return self
        if self.spark:
            return self._enter_spark()
        if self.path.is_dir():
            raise InputError("is a folder, not a DuckDB database file", file=str(self.path),
                             hint="point --db / MKTOOL_DB at a file such as mktool.duckdb")
        if self.must_exist and not self.path.exists():
            raise StateError(
                f"no database at {self.path}",
                hint="run `mktool ingest PATH...` first, or point --db / MKTOOL_DB at an existing database",
            )
        assert self._lock is not None
        self._lock.__enter__()
        try:
            self._created = self.write and not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.con = duckdb.connect(str(self.path), read_only=not self.write)
            except duckdb.Error as exc:
                raise self._unreadable(exc) from None
            configure(self.con, self.settings, write=self.write)
            if self.write:
                for ddl in BOOKKEEPING_DDL:
                    self.con.execute(ddl)
            # An export interrupted after its commit: its lists go into place before anything else
            # reads or writes (readers too, so `mktool status` finishes it); see mktool.publish.
            finish_pending(self.con, writable=self.write)
        except BaseException:
            self._abandon()  # e.g. an unwritable spill folder: leave no empty database behind
            raise
        return self

    def _abandon(self) -> None:
        """Undo a failed open, or end a command that failed: close the connection, remove what this
        command made and never committed to (the database file, the warehouse folder), release the lock."""
        if self.con is not None:
            con, self.con = self.con, None
            warehouse = getattr(con, "warehouse", None)  # Spark: its close gives back a URI root's lock
            con.close()
            if self._created and not self._committed and warehouse is not None and self._lock is None:
                warehouse.remove_created()
        if self._created and not self._committed:
            self._remove_created()
        if self._lock is not None:
            self._lock.__exit__()

    def _enter_spark(self) -> Database:
        """``--engine spark``: the warehouse's tables through a :class:`mktool.sparkdb.SparkConnection`.

        What is the DuckDB file's own does not apply: no memory/spill SET statements (the session's
        conf is mktool.spark's), no write-ahead log. The run lock of a local warehouse folder is taken
        here, before Spark starts; a URI root's (hdfs://, s3a://, file:) by the connection, through the
        session's Hadoop file system (mktool.warehouse.HadoopLock). A read-only command on a warehouse
        that is not there is refused and creates nothing. A writer's bookkeeping tables are made in its
        first transaction, not here, so that a refused command leaves the warehouse as it was.
        """
        local = _local_lock_base(self.settings.warehouse)
        absent = local is not None and not local.parent.exists()
        if self.must_exist and absent:
            raise no_warehouse(self.settings.warehouse)
        if self._lock is not None:
            self._lock.__enter__()
        try:
            connect = _ENGINES.get("spark")
            if connect is None:
                raise MktoolError("engine spark: mktool.sparkdb is not loaded (import mktool.sparkdb first)")
            # duck-typed: the connection speaks the part of DuckDB's API mktool uses
            self.con = cast(duckdb.DuckDBPyConnection, connect(self.settings, write=self.write,
                                                               must_exist=self.must_exist))
            warehouse = getattr(self.con, "warehouse", None)
            self._created = self.write and (absent if local is not None else bool(getattr(warehouse, "created", False)))
            self._created = self._created and bool(getattr(warehouse, "empty_at_open", True))
            if self.must_exist and not self.con.execute("SELECT 1 FROM information_schema.tables LIMIT 1").fetchall():
                raise StateError(f"no tables in the warehouse at {self.settings.warehouse}",
                                 hint="run `mktool --engine spark ingest PATH...` first, or point --warehouse / "
                                      "MKTOOL_WAREHOUSE at an existing warehouse")
            exists = warehouse.exists if warehouse is not None else (lambda t: table_exists(self.c, t))
            self._bookkeeping = self.write and not all(exists(t) for t in BOOKKEEPING_TABLES)
            finish_pending(self.con, writable=self.write)
        except BaseException:
            self._abandon()
            raise
        return self

    def _unreadable(self, exc: duckdb.Error) -> Exception:
        """A database file DuckDB cannot open: held by a foreign process, truncated, corrupt, not ours."""
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, duckdb.IOException) and "lock" in text.lower():
            return LockedError(
                "database is locked by another process (not an mktool run, or one from an older version)",
                file=str(self.path),
            )
        lowered = text.lower()
        if any(os_level in lowered for os_level in ("no space left", "permission denied", "read-only file system")):
            return InputError(f"cannot open the database ({text})", file=str(self.path),
                              hint="free some space, or point --db at another disk" if "space" in lowered else None)
        return InputError(f"cannot open the database ({text})", file=str(self.path),
                          hint="is it a DuckDB file written by mktool, complete and not truncated? "
                               "Restore it from a backup, or point --db at another file")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._wrapped:
            return
        if exc_type is None:
            self._created = False  # a command that succeeded keeps what it made, committed or not
        # A command refused before anything was committed leaves no half-made database or
        # warehouse behind (the folder is as it was, and the next command starts clean).
        self._abandon()

    def _remove_created(self) -> None:
        if self.spark:
            local = _local_lock_base(self.settings.warehouse)
            if local is not None:  # the lock file inside goes too: this run made the folder and holds it
                shutil.rmtree(local.parent, ignore_errors=True)
            return
        for leftover in (self.path, self.path.with_name(self.path.name + ".wal")):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.settings.spill_dir.rmdir()  # only when empty

    # -- small helpers -----------------------------------------------------------------
    @property
    def input_fs(self) -> Any:
        """The file system ingest lists and reads extracts named by a URI through (``hdfs://``,
        ``s3a://``, ``file:``): the Spark session's Hadoop file system; None on DuckDB, which reads
        local paths only."""
        return getattr(self.c, "input_fs", None) if self.spark else None

    @property
    def committed(self) -> bool:
        """Whether a transaction of this connection committed (what an interrupt message may claim)."""
        return self._committed

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
        this channel's rows, which earlier appends of other channels cannot hold). The CHECKPOINT
        after COMMIT makes the next step's reads on the same connection see the data (`mktool run`
        found no subscribers right after ingesting 1M without it), and moves the write-ahead log into the database file,
        so each finished step is durable on its own.
        """
        con = self.c
        con.execute("BEGIN TRANSACTION")
        try:
            if self._bookkeeping:  # Spark: made with the step's first commit, or not at all
                for ddl in BOOKKEEPING_DDL:
                    con.execute(ddl)
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        self._committed = True
        self._bookkeeping = False
        if self.spark:
            return  # the warehouse's commit is its publish; there is no log to fold into a file
        try:
            con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            # The step is durable in the write-ahead log; only folding it into the file failed
            # (no space left, most often). Say so instead of implying that nothing happened.
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"the step was committed to the write-ahead log {self.path.name}.wal, but DuckDB could not "
                f"write it into the database file ({text})", file=str(self.path),
                hint="free some space: the next mktool command on this database finishes the checkpoint") from None

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


def dict_rows(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """An executed query's (small) result as one dict per row, keyed by column name."""
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(
        con.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?", [name]
        ).fetchone()
    )


def table_columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    return [r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()]


#: ingest_log's load order: each logged file's position among all files ever loaded (1, 2, …).
#: Why a column: ``loaded_at`` has one-second resolution, and DuckDB's rowid has no Spark meaning.
LOAD_SEQ = "seq"


def ensure_load_seq(con: duckdb.DuckDBPyConnection) -> None:
    """Give an ingest_log written before it had ``seq`` the column, numbered in the order the rows
    were appended (DuckDB's rowid); a no-op once it has one. Call inside the writer's transaction.

    DuckDB-only code: only a DuckDB database can predate the column (a Spark warehouse's
    ingest_log is created with it), and rowid exists only there.
    """
    if not table_exists(con, "ingest_log") or LOAD_SEQ in table_columns(con, "ingest_log"):
        return
    con.execute(f"ALTER TABLE ingest_log ADD COLUMN {LOAD_SEQ} BIGINT")
    con.execute(f"UPDATE ingest_log SET {LOAD_SEQ} = o.n FROM (SELECT rowid AS r, row_number() OVER (ORDER BY rowid) "
                f"AS n FROM ingest_log) AS o WHERE ingest_log.rowid = o.r")


def load_order(con: duckdb.DuckDBPyConnection) -> str:
    """The column ingest_log's rows are ordered by as loaded: ``seq``; in a DuckDB database from
    before it that nothing has written to since (a reader), rowid, the order ``seq`` is given in
    on its next load (:func:`ensure_load_seq`)."""
    return LOAD_SEQ if LOAD_SEQ in table_columns(con, "ingest_log") else "rowid"


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
        new_select, old_select = _union_by_name(old_described, new_described)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _mk_new AS {select_sql}", args)
        con.execute(
            f'CREATE OR REPLACE TABLE "{table}" AS '
            f'SELECT {new_select} FROM _mk_new UNION ALL SELECT {old_select} FROM "{table}" WHERE month <> ?',
            [month],
        )
        con.execute("DROP TABLE _mk_new")
    return _month_rows(con, table, month)


def _union_by_name(old: Sequence[tuple[str, str]], new: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """The two select lists of the rebuilt table: the new rows' columns in their order, then the
    old table's other columns; a column a side lacks is NULL there, and an old numeric column is
    cast to its new numeric type. What DuckDB's ``UNION ALL BY NAME`` gives (names matched
    case-insensitively), written out: Spark cannot parse BY NAME."""
    new_types = dict(new)
    old_values = {
        name.lower(): f'CAST("{name}" AS {new_types[name]})'
        if name in new_types and new_types[name] != type_ and _numeric(type_) and _numeric(new_types[name])
        else f'"{name}"'
        for name, type_ in old}
    new_keys = {name.lower() for name, _ in new}
    old_only = [name for name, _ in old if name.lower() not in new_keys]
    new_select = [f'"{name}"' for name, _ in new] + [f'NULL AS "{name}"' for name in old_only]
    old_select = [f'{old_values.get(name.lower(), "NULL")} AS "{name}"' for name, _ in new]
    old_select += [f'{old_values[name.lower()]} AS "{name}"' for name in old_only]
    return ", ".join(new_select), ", ".join(old_select)


def _month_rows(con: duckdb.DuckDBPyConnection, table: str, month: str) -> int:
    return int(con.execute(f'SELECT count(*) FROM "{table}" WHERE month = ?', [month]).fetchone()[0])  # type: ignore[index]


STEP_LOG_DDL = """CREATE TABLE IF NOT EXISTS step_log (
    month VARCHAR, step VARCHAR, build_id VARCHAR, inputs VARCHAR, settings VARCHAR, overrides VARCHAR,
    command_line VARCHAR, recorded_at TIMESTAMP)"""


def command_line() -> list[str]:
    """This process's command line as the user typed it (``mktool …``), for provenance."""
    program = "mktool" if sys.argv[:1] and sys.argv[0].endswith(("__main__.py", "mktool")) else sys.argv[0]
    return [program, *sys.argv[1:]]


def record_step(con: duckdb.DuckDBPyConnection, month: str, step: str, *, inputs: str = "",
                settings: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> str:
    """Record one derived step's run for ``month`` (inside the step's transaction); returns its build id.

    ``inputs`` is what it was computed from (see mktool.freshness: the view's files, or the
    view's build id), so no later step runs on a stale table; ``settings`` and ``overrides``
    are what it ran with, so export's manifest.json can name every override that shaped the
    lists (--param, plan windows, top k).
    """
    con.execute(STEP_LOG_DDL)
    build_id = uuid.uuid4().hex[:16]
    con.execute("DELETE FROM step_log WHERE month = ? AND step = ?", [month, step])
    con.execute("INSERT INTO step_log VALUES (?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                [month, step, build_id, inputs, json.dumps(settings or {}, ensure_ascii=False, default=str),
                 json.dumps(overrides or {}, ensure_ascii=False, default=str),
                 json.dumps(command_line(), ensure_ascii=False)])
    return build_id


def step_settings(con: duckdb.DuckDBPyConnection, month: str) -> dict[str, dict[str, Any]]:
    """The recorded settings of each step of ``month``: {step: {settings, overrides, command_line, recorded_at}}."""
    if not table_exists(con, "step_log"):
        return {}
    rows = con.execute("SELECT step, settings, overrides, command_line, recorded_at FROM step_log WHERE month = ? "
                       "ORDER BY step", [month]).fetchall()
    return {step: {"settings": json.loads(settings), "overrides": json.loads(overrides),
                   "command_line": json.loads(argv), "recorded_at": at.isoformat() if at else None}
            for step, settings, overrides, argv, at in rows}


_NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL")


def _numeric(type_: str) -> bool:
    return type_.upper().startswith(_NUMERIC_TYPES)


def record_funnel(con: duckdb.DuckDBPyConnection, month: str, funnel: str, stages: Sequence[tuple[str, int]],
                  cycle: str | None = None) -> None:
    """Store one funnel's ordered stage counts for ``month`` (replacing the previous ones).

    ``cycle`` is the cycle date of a channel funnel (each export cycle has its own); the step
    funnels (plan, each matrix) are the month's and have none (NULL). Call inside the write
    transaction: a funnel_counts table from before cycles gains its column there.
    """
    ensure_funnel_cycle(con)
    con.execute("DELETE FROM funnel_counts WHERE month = ? AND funnel = ? AND cycle IS NOT DISTINCT FROM ?",
                [month, funnel, cycle])
    if stages:
        con.executemany(
            "INSERT INTO funnel_counts (month, funnel, stage_no, stage, count, cycle) VALUES (?, ?, ?, ?, ?, ?)",
            [(month, funnel, i, stage, int(count), cycle) for i, (stage, count) in enumerate(stages, 1)],
        )


def ensure_funnel_cycle(con: duckdb.DuckDBPyConnection) -> None:
    """A funnel_counts table written before cycles had their own funnels gains the (NULL) cycle column."""
    if not table_exists(con, "funnel_counts"):
        con.execute(BOOKKEEPING_DDL[1])
    elif "cycle" not in table_columns(con, "funnel_counts"):
        con.execute("ALTER TABLE funnel_counts ADD COLUMN cycle VARCHAR")


def funnel_has_cycle(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether funnel_counts records cycles (a database from before them, opened read-only, does not)."""
    return table_exists(con, "funnel_counts") and "cycle" in table_columns(con, "funnel_counts")
