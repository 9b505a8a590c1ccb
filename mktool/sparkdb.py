"""The DuckDB-shaped connection of ``--engine spark`` (issue 16): mktool's steps keep their SQL.

Every step builds DuckDB-dialect SQL and hands it to ``con.execute``. On Spark, ``con`` is a
:class:`SparkConnection`: it parses each statement with sqlglot (read="duckdb") and carries it
out by kind (docs/design/spark-audit.md lists every kind the fixtures' month runs):

- queries are rendered by :func:`mktool.dialect.render` and run by ``session.sql(text, args=…)``;
  ``?`` and ``$name`` become named Spark parameters (``:_p0``, ``:name``), so a statement rebuilt
  from its parts (a DELETE's kept rows) keeps its bindings whatever the order of the parts;
- persistent tables live in :class:`mktool.warehouse.Warehouse` (Parquet, partitioned by month):
  a write computes the new rows of the partitions it touches and replaces those partitions in a
  Warehouse transaction (BEGIN … COMMIT, or one of its own per statement), because Parquet has no
  DELETE/UPDATE;
- TEMP tables are materialised (Parquet under the warehouse's ``_scratch/<connection>``, or
  ``localCheckpoint``: see TEMP_STORE): computed once, read back as a fresh plan without lineage,
  registered as Spark temp views, as DuckDB's temp tables are read many times; a temp write's
  row count is a Spark job, run only if the answer is fetched;
- DESCRIBE answers in DuckDB's type spellings (a persistent table's come from its _table.json);
- ``information_schema.tables`` is a small view of the warehouse's and the session's tables;
- COPY collects the rows as Arrow on the driver and lets an in-memory DuckDB write them with
  the statement's own options, so lists are byte for byte DuckDB's;
- SET and CHECKPOINT are DuckDB storage settings with no Spark meaning: named no-ops.

Anything else raises :class:`InternalError` naming the statement kind (never a silent no-op).
Spark's own errors are raised as :class:`SparkQueryError`, a ``duckdb.Error``: mktool's callers
already turn DuckDB's errors into their messages (a matrix's failing rule, a refused extract).
"""

from __future__ import annotations

import glob
import itertools
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
from sqlglot import exp

from mktool.config import Settings, is_uri, local_path
from mktool.database import register_engine
from mktool.dialect import SPARK, hadoop_path, render
from mktool.errors import MktoolError
from mktool.spark import engine_version, open_session
from mktool.warehouse import SCRATCH as WAREHOUSE_SCRATCH
from mktool.warehouse import FileSystem, Transaction, Warehouse, duckdb_type, has_jvm, spark_type

Columns = list[tuple[str, str]]

#: Qualifiers that name the session's own catalogs in DuckDB text (``temp.t``, ``main.t``).
_LOCAL_SCHEMAS = frozenset({"temp", "main", "memory"})
_INFO_VIEW = "_mk_information_schema_tables"
_UNCACHED = "\0uncached"  # in a query's reads: rows made for this statement alone (see _query_df)
_INFO_SCHEMA = "table_catalog STRING, table_schema STRING, table_name STRING, table_type STRING"
_MONTH = "month"
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # the folder Spark writes NULL partition values to
#: DuckDB statements about its own storage and session (memory_limit, threads, temp_directory,
#: the write-ahead log): nothing to do on Spark, where the session's conf is mktool.spark's.
_NO_OPS = ("CHECKPOINT", "SET", "RESET")
#: Where TEMP tables are materialised: "parquet" (files under ``<warehouse>/_scratch/<connection>/``,
#: read back as a plain file scan) or "checkpoint" (``localCheckpoint``: blocks in the executors).
#: Either cuts the lineage, so a chain of work tables (export's _x_candidates → _x_capped → …)
#: does not drag every earlier plan into each statement (a cached view keeps its whole plan: the
#: fixtures' export ran out of Java heap in session.sql). A chain of 25 temp tables of 20,000 rows
#: on local[2] took 12.0 s as Parquet and 6.2 s as checkpoints (2026-12-02, load ~8); Parquet is the
#: default all the same: its rows stay on disk, not in the executors' (in local mode the driver's)
#: heap, and survive a lost executor. The files go when the connection closes.
TEMP_STORE = "parquet"
#: The column a COPY's rows carry through the scratch Parquet: Spark's order, for DuckDB to write them in.
_COPY_POSITION = "_mk_copy_position"
SCRATCH = WAREHOUSE_SCRATCH  # mktool.warehouse names it: a writer taking the lock removes stale scratch


class InternalError(MktoolError):
    """A statement the Spark connection cannot carry out: a gap in mktool, not in the user's input."""

    exit_code = 4  # errors.EXIT_INTERNAL: a bug or an unexpected engine failure


class SparkQueryError(duckdb.Error):
    """Spark refused or failed a statement. A ``duckdb.Error`` so that mktool's handlers, written
    for DuckDB, give the same messages (e.g. matrices pins a failing query on its rule)."""


# -- types: one map, mktool.warehouse's (duckdb_type, spark_type), for DESCRIBE, casts and DDL ------------
def schema_columns(df: Any) -> Columns:
    """A DataFrame's columns as (name, DuckDB type)."""
    return [(f.name, duckdb_type(f.dataType)) for f in df.schema.fields]


def _ddl(columns: Columns) -> str:
    return ", ".join(f"`{name}` {spark_type(type_)}" for name, type_ in columns)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- shared state --------------------------------------------------------------------------------
@dataclass
class _Temp:
    df: Any
    columns: Columns
    materialised: bool
    parts: list[str] | None = None  # its Parquet folders under the scratch (TEMP_STORE "parquet"), oldest first


@dataclass
class _State:
    """What every cursor of one connection shares: the session, the warehouse, the open transaction,
    the session's temp tables and the views registered for the persistent tables."""

    session: Any
    warehouse: Warehouse
    temps: dict[str, _Temp] = field(default_factory=dict)
    tx: Transaction | None = None
    created: set[str] = field(default_factory=set)  # created by the open transaction
    dropped: set[str] = field(default_factory=set)  # dropped by it
    views: dict[str, Any] = field(default_factory=dict)  # persistent table -> its registered DataFrame
    duck: duckdb.DuckDBPyConnection = field(default_factory=lambda: duckdb.connect(":memory:"))
    counter: itertools.count[int] = field(default_factory=itertools.count)
    function_views: list[str] = field(default_factory=list)  # views of table-function rows (glob, parquet_schema)
    parquet_views: dict[str, str] = field(default_factory=dict)  # read_parquet path -> its view
    plans: dict[tuple[str, str], tuple[Any, frozenset[str]]] = field(default_factory=dict)  # see _query_df
    scratch: str = ""  # <warehouse>/_scratch/<id>: this connection's materialised TEMP tables
    #: A Spark Connect session: a query's tables are bound when it is sent (see SparkConnection._bind_refs)
    remote: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not self.scratch:
            self.scratch = self.warehouse.new_scratch()
        self.remote = not has_jvm(self.session)


def connect(settings: Settings, *, write: bool = True, must_exist: bool = False) -> SparkConnection:
    """A connection over the session built from ``settings.spark`` and the warehouse at ``settings.warehouse``,
    holding the warehouse's run lock (a URI root's; a local folder's is mktool.database's) until it closes.
    ``must_exist``: refuse a warehouse that is not there, creating nothing."""
    session = open_session(settings.spark)
    warehouse = Warehouse(session, settings.warehouse, access="write" if write else "read",
                          wait=settings.lock_wait, must_exist=must_exist)
    return SparkConnection(_State(session, warehouse))


def connect_session(session: Any, warehouse: Warehouse) -> SparkConnection:
    """A connection over an existing session and warehouse (tests; an embedding application)."""
    return SparkConnection(_State(session, warehouse))


class SparkConnection:
    """DuckDB's Python connection API as mktool uses it, carried out on Spark (see the module doc)."""

    def __init__(self, state: _State, *, owner: bool = True) -> None:
        self._s = state
        self._owner = owner  # the connection (not one of its cursors): its close ends the shared state
        self._rows: list[tuple[Any, ...]] = []
        self._lazy: Callable[[], list[tuple[Any, ...]]] | None = None
        self._pos = 0
        self._description: list[tuple[Any, ...]] | None = None

    #: What manifest.json names as the engine (versions.engine_info reads it: versions sits below sparkdb).
    engine_name = "spark"

    @property
    def engine_version(self) -> str:
        return engine_version(self._s.session)

    # -- the DuckDB cursor API ------------------------------------------------------------------
    @property
    def session(self) -> Any:
        return self._s.session

    @property
    def warehouse(self) -> Warehouse:
        return self._s.warehouse

    @property
    def input_fs(self) -> FileSystem:
        """The file system ingest reads extracts named by a URI through (hdfs://, s3a://, file:)."""
        return self._s.warehouse.fs

    @property
    def description(self) -> list[tuple[Any, ...]] | None:
        return self._description

    def cursor(self) -> SparkConnection:
        """Another cursor on the same state (DuckDB's cursors share the database)."""
        return SparkConnection(self._s, owner=False)

    def _force(self) -> None:
        """Compute a deferred answer (a temp write's row count) when it is first fetched."""
        if self._lazy is not None:
            lazy, self._lazy = self._lazy, None
            self._rows = lazy()

    def fetchone(self) -> tuple[Any, ...] | None:
        self._force()
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._force()
        rows, self._pos = self._rows[self._pos:], len(self._rows)
        return rows

    def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        self._force()
        rows = self._rows[self._pos:self._pos + size]
        self._pos += len(rows)
        return rows

    def close(self) -> None:
        """Roll back an open transaction and drop the session's views of this connection. A cursor's
        close only forgets its rows (as DuckDB's: ingest's key-check cursor closes while the load's
        transaction, shared with it, is still open)."""
        s = self._s
        self._result([], None)
        if not self._owner:
            return
        if s.tx is not None:
            s.tx.rollback()
            s.tx = None
        for name in [*s.temps, *s.views, *s.function_views]:
            s.session.catalog.dropTempView(name)
        s.function_views.clear()
        s.session.catalog.dropTempView(_INFO_VIEW)
        s.temps.clear()
        s.views.clear()
        s.parquet_views.clear()
        s.plans.clear()
        s.warehouse.drop_scratch(s.scratch)
        s.warehouse.release()

    def register(self, name: str, table: Any) -> SparkConnection:
        """An Arrow table (or anything createDataFrame takes) as a temp view ``name``."""
        df = self._spark_call(lambda: self._s.session.createDataFrame(table))
        self._set_temp(name, df, materialise=False)
        return self

    def unregister(self, name: str) -> SparkConnection:
        self._forget_plans(name)
        if self._s.temps.pop(name, None) is not None:
            self._s.session.catalog.dropTempView(name)
        return self

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] | None = None) -> SparkConnection:
        """Carry out one statement (DuckDB dialect) with DuckDB's parameter conventions."""
        try:
            trees = [t for t in sqlglot.parse(sql, read="duckdb") if t is not None] if not _keyword_only(sql) else []
        except sqlglot.errors.ParseError as exc:
            raise InternalError(f"statement kind {_first_keyword(sql)} is not supported on Spark (sqlglot cannot "
                                f"parse it: {str(exc).splitlines()[0]})") from None
        if len(trees) > 1:
            raise InternalError(f"several statements in one execute are not supported on Spark: {sql[:80]}")
        tree, args = _bind(trees[0], parameters) if trees else (None, {})
        self._result([], None)
        self._dispatch(sql, tree, args)
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> SparkConnection:
        """``INSERT INTO t [(cols)] VALUES (?, …)`` for many rows at once: the rows are typed by an
        in-memory DuckDB table of the target's columns (DuckDB's own coercions) and appended as one
        DataFrame. Any other statement is executed once per row."""
        rows_ = [tuple(r) for r in rows]
        tree = sqlglot.parse_one(sql, read="duckdb")
        values = tree.expression if isinstance(tree, exp.Insert) else None
        if (isinstance(tree, exp.Insert) and isinstance(values, exp.Values) and len(values.expressions) == 1
                and all(isinstance(v, exp.Placeholder) and v.this is None for v in values.expressions[0].expressions)):
            target, names = _insert_target(tree)
            self._require_exists(target)
            table_cols = self._columns(target)
            types = dict(table_cols)
            chosen = [(n, types[n]) for n in names] if names else table_cols
            if not rows_:
                return self
            df, table = self._typed_rows(chosen, rows_)
            counted = None
            if self._partitioned(target) and _MONTH in table.column_names:
                months = set(table.column(_MONTH).to_pylist())
                if None in months:
                    raise InternalError("a row with a NULL month cannot be stored in a month-partitioned "
                                        "warehouse table")
                counted = (len(rows_), sorted(months))
            elif not self._partitioned(target):
                counted = (len(rows_), [])
            self._insert(target, df, [n for n, _ in chosen], by_name=True, counted=counted)
            self._result([], None)
            return self
        for row in rows_:
            self.execute(sql, row)
        return self

    # -- dispatch -------------------------------------------------------------------------------
    def _dispatch(self, sql: str, tree: exp.Expr | None, args: dict[str, Any]) -> None:
        keyword = _first_keyword(sql)
        if tree is None:
            if keyword in _NO_OPS:
                return  # DuckDB storage/session settings: no Spark meaning (see the module doc)
            raise InternalError(f"statement kind {keyword} is not supported on Spark: {sql[:80]}")
        if isinstance(tree, exp.Transaction):
            self._begin()
        elif isinstance(tree, exp.Commit):
            self._commit()
        elif isinstance(tree, exp.Rollback):
            self._rollback()
        elif isinstance(tree, exp.Query):
            if not self._answer_locally(tree, args):
                self._result_df(self._query_df(tree, args))
        elif isinstance(tree, exp.Describe):
            self._describe(tree, args)
        elif isinstance(tree, exp.Create):
            self._create(tree, args)
        elif isinstance(tree, exp.Insert):
            target, names = _insert_target(tree)
            self._require_exists(target)
            df = self._query_df(tree.expression, args)
            self._insert(target, df, names, by_name=bool(tree.args.get("by_name")))
        elif isinstance(tree, exp.Delete):
            self._delete(tree, args)
        elif isinstance(tree, exp.Update):
            self._update(tree, args)
        elif isinstance(tree, exp.Alter):
            self._alter(tree)
        elif isinstance(tree, exp.Drop):
            self._drop(tree)
        elif isinstance(tree, exp.Copy):
            self._copy(tree, args)
        else:
            raise InternalError(f"statement kind {type(tree).__name__.upper()} is not supported on Spark: {sql[:80]}")

    # -- results --------------------------------------------------------------------------------
    def _result(self, rows: list[tuple[Any, ...]], names: Sequence[str] | None,
                types: Sequence[str] | None = None) -> None:
        self._rows, self._pos, self._lazy = rows, 0, None
        self._description = None if names is None else [
            (n, (types[i] if types else None), None, None, None, None, None) for i, n in enumerate(names)]

    def _count(self, rows: int) -> None:
        """A write's answer as DuckDB gives it: one row with the number of rows affected."""
        self._result([(int(rows),)], ["Count"], ["BIGINT"])

    def _count_later(self, rows: Callable[[], int]) -> None:
        """A write's answer counted only if fetched: most callers never read it, and a count is a
        Spark job. ``rows`` must read only materialised temp tables (their data never changes)."""
        self._result([], ["Count"], ["BIGINT"])
        self._lazy = lambda: [(int(self._spark_call(rows)),)]

    def _result_df(self, df: Any) -> None:
        table = self._arrow(df)
        columns = [c.to_pylist() for c in table.columns]
        rows = list(zip(*columns)) if columns else []
        self._result(rows, table.column_names, [t for _, t in schema_columns(df)])

    def _arrow(self, df: Any) -> pa.Table:
        """The rows on the driver as Arrow, timestamps as DuckDB's zone-less values (the session is UTC)."""
        table = self._spark_call(df.toArrow)
        fields = [pa.field(f.name, _naive(f.type)) for f in table.schema]
        return table.cast(pa.schema(fields)) if fields != list(table.schema) else table

    # -- reading --------------------------------------------------------------------------------
    def _query_df(self, query: exp.Expr, args: dict[str, Any]) -> Any:
        """A DataFrame of a DuckDB-dialect query tree, every table it names registered first.

        Spark's analysis of a long query takes seconds (the customer view's: 3–9 s), and the steps
        ask for the same query twice (``DESCRIBE q`` then ``CREATE TABLE t AS q``, replace_month):
        the analysed DataFrame is kept until a table it reads is written (see :meth:`_forget_plans`)."""
        reads: set[str] = set()
        query = self._prepare(query.copy(), args, reads)
        refs = self._bind_refs(query) if self._s.remote else {}
        text = self._render(query)
        used = {p.this for p in query.find_all(exp.Placeholder)}
        bound = {k: v for k, v in args.items() if k in used}
        if refs:  # {_mk_refN} placeholders for pyspark's SQL formatter; every other brace is text
            text = _REF_RE.sub(r"{\1}", text.replace("{", "{{").replace("}", "}}"))
        key = (text, repr(sorted(bound.items())))
        s = self._s
        if _UNCACHED not in reads and key in s.plans:
            return s.plans[key][0]
        df = self._spark_call(lambda: s.session.sql(text, args=bound or None, **refs))
        if _UNCACHED not in reads:
            s.plans[key] = (df, frozenset(reads))
        return df

    def _forget_plans(self, name: str | None = None) -> None:
        """Drop the kept DataFrames that read ``name`` (all of them for None): they read its old rows."""
        s = self._s
        if name is None:
            s.plans.clear()
            return
        for key, (_, reads) in list(s.plans.items()):  # a snapshot: a cursor on another thread may add one
            if name.lower() in reads:
                s.plans.pop(key, None)

    def _bind_refs(self, query: exp.Expr) -> dict[str, Any]:
        """On Spark Connect, the session's tables a query reads, bound to it by their DataFrames.

        A classic ``session.sql`` analyses the query at once: the DataFrame holds the plans its temp
        views had then. A Connect DataFrame holds the SQL text, analysed on the server each time it
        is used, so a view dropped or replaced since (a commit invalidates them all) would be
        missing or read other rows. Each registered table is therefore passed as a DataFrame
        (pyspark's ``{name}`` form: the server binds its plan to this query only), as a classic
        session would have bound it."""
        s = self._s
        ctes = {cte.alias_or_name for cte in query.find_all(exp.CTE)}
        refs: dict[str, Any] = {}
        keys: dict[str, str] = {}
        for table in list(query.find_all(exp.Table)):
            if not isinstance(table.this, exp.Identifier) or table.db or table.name in ctes:
                continue
            name = table.name
            frame = s.temps[name].df if name in s.temps else s.views.get(name)
            if frame is None:
                continue
            key = keys.setdefault(name, f"_mk_ref{len(keys)}")
            refs[key] = frame
            if not table.alias:  # columns qualified by the table's name still resolve
                table.set("alias", exp.TableAlias(this=exp.to_identifier(name)))
            table.set("this", exp.to_identifier(key))
        return refs

    def _render(self, tree: exp.Expr) -> str:
        try:
            return render(tree.sql(dialect="duckdb"), SPARK)
        except sqlglot.errors.SqlglotError as exc:
            raise InternalError(f"no Spark rendering for {type(tree).__name__.upper()}: {exc}") from None

    def _prepare(self, tree: exp.Expr, args: dict[str, Any], reads: set[str] | None = None) -> exp.Expr:
        """Register the tables ``tree`` reads; strip ``temp.``/``main.``; information_schema.tables → its view;
        the table functions ``glob``/``parquet_schema`` → views of their rows; ``read_parquet`` → a view
        of the file (its schema read once per connection). ``reads`` gets the names read (and
        ``_UNCACHED`` when the query reads rows made for this one statement)."""
        reads = reads if reads is not None else set()
        ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
        for table in list(tree.find_all(exp.Table)):
            if not isinstance(table.this, exp.Identifier):
                if isinstance(table.this, exp.ReadParquet):
                    self._parquet_view(table)
                elif isinstance(table.this, exp.Anonymous | exp.Func):
                    self._table_function(table, args)
                    reads.add(_UNCACHED)
                continue
            name, db = table.name, table.db
            if db.lower() == "information_schema":
                if name.lower() != "tables":
                    raise InternalError(f"information_schema.{name} is not available on Spark")
                reads.add(_UNCACHED)
                self._register_information_schema()
                table.set("this", exp.to_identifier(_INFO_VIEW))
                table.set("db", None)
                if not table.alias:
                    table.set("alias", exp.TableAlias(this=exp.to_identifier("tables")))
                continue
            if db and db.lower() in _LOCAL_SCHEMAS:
                table.set("db", None)
            elif db:
                raise InternalError(f"table {db}.{name}: only the session's tables exist on Spark")
            if name in ctes:
                continue
            reads.add(name.lower())
            self._ensure_view(name)
        return tree

    def _parquet_view(self, table: exp.Table) -> None:
        """``read_parquet('path'[, hive_partitioning = false])`` → a view of ``session.read.parquet(path)``,
        made once per path and connection. Spark reads a file's schema with a job of its own each time
        ``parquet.`path``` is analysed; ingest reads each extract a dozen times. Any other form is left
        to :func:`mktool.dialect.render` (which renders or refuses it)."""
        path, *options = table.this.expressions
        if not (isinstance(path, exp.Literal) and path.is_string) or not all(
                isinstance(o, exp.EQ) and isinstance(o.this, exp.Column) and o.this.name.lower() == "hive_partitioning"
                and isinstance(o.expression, exp.Boolean) and not o.expression.this for o in options):
            return
        s = self._s
        view = s.parquet_views.get(path.this)
        if view is None:
            view = f"_mk_parquet_{next(s.counter)}"
            df = self._spark_call(lambda: s.session.read.parquet(hadoop_path(path.this)))
            df.createOrReplaceTempView(view)
            s.function_views.append(view)
            s.parquet_views[path.this] = view
        table.set("this", exp.to_identifier(view))

    def _table_function(self, table: exp.Table, args: dict[str, Any]) -> None:
        """``glob(pattern)`` and ``parquet_schema(pattern)`` as DuckDB answers them, computed on the driver
        and put in the query as a temp view; any other table function is refused."""
        call = table.this
        name = call.name.lower() if isinstance(call, exp.Anonymous) else ""
        if name not in ("glob", "parquet_schema") or len(call.expressions) != 1:
            raise InternalError(f"table function {call.sql('duckdb')[:60]} is not supported by mktool.sparkdb")
        pattern = _string_argument(call.expressions[0], args, name)
        files = self._glob(pattern)
        if name == "glob":
            rows: list[tuple[Any, ...]] = [(f,) for f in files]
            schema = "file STRING"
        else:
            if not files:
                raise SparkQueryError(f'IO Error: No files found that match the pattern "{pattern}"')
            rows = [(f, n, c) for f in files for n, c in self._parquet_tree(f)]
            schema = "file_name STRING, name STRING, num_children BIGINT"
        view = f"_mk_{name}_{next(self._s.counter)}"
        df = self._spark_call(lambda: self._s.session.createDataFrame(rows, schema))
        df.createOrReplaceTempView(view)
        self._s.function_views.append(view)
        if not table.alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(name)))
        table.set("this", exp.to_identifier(view))

    def _glob(self, pattern: str) -> list[str]:
        """DuckDB's ``glob``: the matching files, sorted; a local pattern's matches as local paths."""
        found = self._s.warehouse.fs.glob(hadoop_path(pattern))
        if is_uri(pattern):
            return found
        return sorted(local_path(f) for f in found)

    def _parquet_tree(self, file: str) -> list[tuple[str, int | None]]:
        """(name, num_children) of each node of a Parquet file's schema, root first, depth first (the
        rows of DuckDB's ``parquet_schema`` ingest reads), from the file's footer with pyarrow: read
        from the local file system for a local path, through the session's Hadoop file system for a
        URI (hdfs://, s3a://, file:), so both give the same tree."""
        try:
            if is_uri(file):
                with self._s.warehouse.fs.open_input(file) as stream:
                    metadata = pq.read_metadata(stream)
            else:
                metadata = pq.read_metadata(file)
        except (OSError, pa.ArrowException) as exc:
            raise SparkQueryError(f"Invalid Input Error: {local_path(file)}: {exc}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("py4j"):
                text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise SparkQueryError(f"Invalid Input Error: {file}: {text}") from None
            raise
        # pyarrow prints the tree; its first group line is the root: "required group field_id=-1 NAME {"
        root = next(line for line in str(metadata.schema).splitlines() if line.rstrip().endswith("{")).split()[-2]
        arrow = metadata.schema.to_arrow_schema()
        out: list[tuple[str, int | None]] = [(root, len(arrow))]
        for f in arrow:
            out += _parquet_nodes(f.name, f.type)
        return out

    def _ensure_view(self, name: str) -> None:
        s = self._s
        if name in s.temps or name in s.views:
            return
        if not self._exists(name):
            return  # Spark reports the missing table itself (TABLE_OR_VIEW_NOT_FOUND)
        df = self._read(name)
        df.createOrReplaceTempView(name)
        s.views[name] = df

    def _invalidate(self, name: str | None = None) -> None:
        """Forget the registered views of persistent tables (all, or ``name``'s): they read old files."""
        s = self._s
        self._forget_plans(name)
        for view in [name] if name is not None else list(s.views):
            if s.views.pop(view, None) is not None and view not in s.temps:
                s.session.catalog.dropTempView(view)

    def _information_rows(self) -> list[tuple[str, str, str, str]]:
        s = self._s
        rows = [("temp", "main", name, "LOCAL TEMPORARY") for name in s.temps]
        rows += [("mktool", "main", name, "BASE TABLE") for name in self._persistent_tables() if name not in s.temps]
        return rows

    def _register_information_schema(self) -> None:
        s = self._s
        df = s.session.createDataFrame(self._information_rows(), _INFO_SCHEMA)
        df.createOrReplaceTempView(_INFO_VIEW)

    def _answer_locally(self, tree: exp.Expr, args: dict[str, Any]) -> bool:
        """A query that reads information_schema.tables alone (``table_exists``: a dozen a step) is answered
        by the in-memory DuckDB from the names sparkdb knows: the same answer without a Spark job."""
        tables = list(tree.find_all(exp.Table))
        if not tables or not all(isinstance(t.this, exp.Identifier) and t.db.lower() == "information_schema"
                                 and t.name.lower() == "tables" for t in tables):
            return False
        query = tree.copy()
        for table in list(query.find_all(exp.Table)):
            if not table.alias:
                table.set("alias", exp.TableAlias(this=exp.to_identifier("tables")))
            table.set("this", exp.to_identifier(_INFO_VIEW))
            table.set("db", None)
        names = ("table_catalog", "table_schema", "table_name", "table_type")
        rows = self._information_rows()
        info = pa.table({n: pa.array([r[i] for r in rows], pa.string()) for i, n in enumerate(names)})
        duck = self._s.duck.cursor()  # a connection of its own: ingest checks keys on a second thread
        try:
            duck.register(_INFO_VIEW, info)
            relation = duck.sql(query.sql(dialect="duckdb"), params=args or None)
            types = [str(t) for t in relation.types]
            self._result([tuple(r) for r in relation.fetchall()], relation.columns, types)
        except duckdb.Error as exc:
            raise SparkQueryError(str(exc)) from None
        finally:
            duck.close()
        return True

    def _persistent_tables(self) -> list[str]:
        s = self._s
        names = set(s.warehouse.tables())
        if s.tx is not None:
            names = (names | s.created) - s.dropped
        return sorted(names)

    def _exists(self, name: str) -> bool:
        s = self._s
        if name in s.temps:
            return True
        return s.tx.exists(name) if s.tx is not None else s.warehouse.exists(name)

    def _is_temp(self, name: str) -> bool:
        return name in self._s.temps

    def _require_exists(self, name: str) -> None:
        if not self._exists(name):
            raise SparkQueryError(f"Catalog Error: Table with name {name} does not exist!")

    def _columns(self, name: str) -> Columns:
        s = self._s
        if name in s.temps:
            return list(s.temps[name].columns)
        return s.tx.columns(name) if s.tx is not None else s.warehouse.columns(name)

    def _read(self, name: str) -> Any:
        s = self._s
        if name in s.temps:
            return s.temps[name].df
        return s.tx.read(name) if s.tx is not None else s.warehouse.read(name)

    def _partitioned(self, name: str) -> bool:
        return not self._is_temp(name) and _MONTH in [n for n, _ in self._columns(name)]

    # -- writing --------------------------------------------------------------------------------
    def _begin(self) -> None:
        s = self._s
        if s.tx is not None:
            raise SparkQueryError("TransactionContext Error: cannot start a transaction within a transaction")
        s.tx = s.warehouse.begin()
        s.created, s.dropped = set(), set()
        self._invalidate()

    def _commit(self) -> None:
        s = self._s
        if s.tx is None:
            raise SparkQueryError("TransactionContext Error: cannot commit - no transaction is active")
        tx, s.tx = s.tx, None
        self._invalidate()
        tx.commit()

    def _rollback(self) -> None:
        s = self._s
        if s.tx is None:
            raise SparkQueryError("TransactionContext Error: cannot rollback - no transaction is active")
        tx, s.tx = s.tx, None
        self._invalidate()
        tx.rollback()

    def _write(self, name: str, df: Any, columns: Columns, partitions: Sequence[str] | None) -> None:
        """Replace ``partitions`` of persistent ``name`` (None: all of it) with ``df``'s rows, inside the
        open transaction or one of its own."""
        s = self._s
        own = s.tx is None
        tx = s.warehouse.begin() if own else s.tx
        assert tx is not None
        try:
            self._spark_call(lambda: tx.put(name, _conform(df, columns), columns, partitions=partitions))
        except BaseException:
            if own:
                tx.rollback()
            raise
        self._invalidate(name)
        if own:
            tx.commit()
        else:
            s.created.add(name)
            s.dropped.discard(name)

    def _set_temp(self, name: str, df: Any, *, materialise: bool, columns: Columns | None = None,
                  parts: list[str] | None = None) -> None:
        """Register temp table ``name``: ``df`` as it is, ``df`` materialised, or the Parquet folders ``parts``."""
        s = self._s
        self._forget_plans(name)
        cols = columns if columns is not None else schema_columns(df)
        if materialise:
            if TEMP_STORE == "checkpoint":
                df = self._spark_call(lambda: _conform(df, cols).localCheckpoint(eager=True))
            else:
                parts = [self._write_scratch(_conform(df, cols))]
        if parts is not None:
            df = self._spark_call(lambda: s.session.read.schema(_ddl(cols)).parquet(*parts))
            materialise = True
        s.views.pop(name, None)
        df.createOrReplaceTempView(name)
        s.temps[name] = _Temp(df, cols, materialise, parts)

    def _write_scratch(self, df: Any) -> str:
        """``df`` computed once (one Spark job) into a new folder of this connection's scratch: read back,
        it is a fresh plan without lineage. A small result is one file (no more files than rows)."""
        path = f"{self._s.scratch}/t{next(self._s.counter)}"
        self._spark_call(lambda: df.write.mode("error").parquet(path))
        return path

    def _file_rows(self, folders: Sequence[str]) -> int:
        """The rows of the Parquet files under ``folders``, from their footers: no Spark job."""
        s = self._s
        if s.remote:  # Spark Connect: no JVM here, and the warehouse is a local folder (warehouse.LocalFS)
            return sum(pq.ParquetFile(local_path(f.uri)).metadata.num_rows for folder in folders
                       for f in s.warehouse.fs.files_under(folder) if _is_data_file(f.uri))
        jvm = s.session._jvm
        conf = s.session._jsc.hadoopConfiguration()
        hadoop, parquet = jvm.org.apache.hadoop.fs, jvm.org.apache.parquet.hadoop
        total = 0
        for folder in folders:
            path = hadoop.Path(folder)
            files = path.getFileSystem(conf).listFiles(path, True)
            while files.hasNext():
                status = files.next()
                if not _is_data_file(str(status.getPath().getName())):
                    continue
                reader = parquet.ParquetFileReader.open(parquet.util.HadoopInputFile.fromStatus(status, conf))
                try:
                    total += int(reader.getRecordCount())
                finally:
                    reader.close()
        return total

    def _replace(self, name: str, df: Any, columns: Columns, partitions: Sequence[str] | None) -> None:
        if self._is_temp(name):
            self._set_temp(name, df, materialise=True, columns=columns)
        else:
            self._write(name, df, columns, partitions)

    def _create(self, tree: exp.Create, args: dict[str, Any]) -> None:
        kind = str(tree.args.get("kind") or "").upper()
        properties = tree.args.get("properties") or exp.Properties()
        temporary = any(isinstance(p, exp.TemporaryProperty) for p in properties.expressions)
        schema = tree.this
        table = schema.this if isinstance(schema, exp.Schema) else schema
        if not isinstance(table, exp.Table):
            raise InternalError(f"CREATE {kind} of {type(table).__name__} is not supported on Spark")
        name = table.name
        if table.db and table.db.lower() not in _LOCAL_SCHEMAS:
            raise InternalError(f"CREATE {kind} {table.db}.{name}: only the session's tables exist on Spark")
        temporary = temporary or table.db.lower() == "temp"
        if kind not in ("TABLE", "VIEW"):
            raise InternalError(f"statement kind CREATE {kind} is not supported on Spark")
        if kind == "VIEW" and not temporary:
            raise InternalError("CREATE VIEW (persistent) is not supported on Spark: mktool keeps tables only")
        exists = (name in self._s.temps) if temporary else (not self._is_temp(name) and self._exists(name))
        if exists and tree.args.get("exists"):
            return
        if exists and not tree.args.get("replace"):
            raise SparkQueryError(f"Catalog Error: Table with name \"{name}\" already exists!")
        query = tree.expression
        if query is not None:
            df = self._query_df(query, args)
            columns = schema_columns(df)
        elif isinstance(schema, exp.Schema):
            columns = [(c.name, self._duck_spelling(c.args["kind"])) for c in schema.expressions
                       if isinstance(c, exp.ColumnDef)]
            df = self._s.session.createDataFrame([], _ddl(columns))
        else:
            raise InternalError(f"CREATE {kind} {name} without columns or a query")
        if kind == "VIEW":
            self._set_temp(name, df, materialise=False)
            return
        if temporary:
            self._set_temp(name, df, materialise=True, columns=columns)
            if query is not None:  # DuckDB answers a CREATE … AS with the rows it stored
                stored = self._s.temps[name]
                self._count_later(lambda: self._file_rows(stored.parts) if stored.parts is not None
                                  else stored.df.count())
            return
        self._write(name, df, columns, partitions=None)
        if query is not None:  # the rows stored, from the written files' footers (no job)
            self._count(self._file_rows(self._spark_call(self._read(name).inputFiles)))

    def _duck_spelling(self, type_: exp.Expr) -> str:
        """A column type of a DDL statement as DuckDB's DESCRIBE spells it (TEXT → VARCHAR, INT → INTEGER)."""
        described = self._s.duck.execute(f"DESCRIBE SELECT CAST(NULL AS {type_.sql('duckdb')}) AS x").fetchall()
        return str(described[0][1])

    def _typed_rows(self, columns: Columns, rows: list[tuple[Any, ...]]) -> tuple[Any, pa.Table]:
        """Python rows as a DataFrame typed as DuckDB would type them in these columns (and as Arrow)."""
        duck = self._s.duck
        scratch = f"_mk_rows_{next(self._s.counter)}"
        duck.execute(f"CREATE TEMP TABLE {scratch} ({', '.join(f'{_q(n)} {t}' for n, t in columns)})")
        try:
            duck.executemany(f"INSERT INTO {scratch} VALUES ({', '.join('?' * len(columns))})", rows)
            table = duck.sql(f"SELECT * FROM {scratch}").to_arrow_table()
        finally:
            duck.execute(f"DROP TABLE {scratch}")
        df = self._spark_call(lambda: self._s.session.createDataFrame(table, schema=_ddl(columns)))
        return _conform(df, columns), table

    def _insert(self, target: str, df: Any, names: Sequence[str] | None, *, by_name: bool,
                counted: tuple[int, list[str]] | None = None) -> None:
        """Append ``df``'s rows to ``target``: by name, by the listed columns, or by position, cast
        to the table's types (DuckDB's implicit casts); the months they fall in are rewritten.
        ``counted`` is (rows, months) when the caller has them (executemany's Python rows): no job counts them."""
        table_cols = self._columns(target)
        incoming = list(df.columns)
        if by_name or names:
            chosen = list(names) if names else incoming
            if names and len(names) != len(incoming):
                raise SparkQueryError(f"Binder Error: table {target} has {len(names)} columns listed but "
                                      f"{len(incoming)} values were supplied")
            known = {n.lower(): n for n, _ in table_cols}
            unknown = [c for c in chosen if c.lower() not in known]
            if unknown:
                raise SparkQueryError(f"Binder Error: Table \"{target}\" does not have a column with name "
                                      f"\"{unknown[0]}\"")
            source = {known[c.lower()]: incoming[i] for i, c in enumerate(chosen)}
        else:
            if len(incoming) != len(table_cols):
                raise SparkQueryError(f"Binder Error: table {target} has {len(table_cols)} columns but "
                                      f"{len(incoming)} values were supplied")
            source = {name: incoming[i] for i, (name, _) in enumerate(table_cols)}
        renamed = df.toDF(*[f"_mk_in{i}" for i in range(len(incoming))])
        position = {c: f"_mk_in{i}" for i, c in enumerate(incoming)}
        exprs = [f"CAST(`{position[source[n]]}` AS {spark_type(t)}) AS `{n}`" if n in source
                 else f"CAST(NULL AS {spark_type(t)}) AS `{n}`" for n, t in table_cols]
        new = self._spark_call(lambda: renamed.selectExpr(*exprs))
        temp = self._s.temps.get(target)
        if temp is not None and temp.parts is not None:  # one job: the new rows' files beside the old ones
            path = self._write_scratch(_conform(new, table_cols))
            self._set_temp(target, None, materialise=False, columns=table_cols, parts=[*temp.parts, path])
            self._count_later(lambda: self._file_rows([path]))
            return
        if self._is_temp(target):  # one job (the materialisation); the count only if it is fetched
            old = self._read(target)
            self._replace(target, old.unionByName(new), table_cols, None)
            merged = self._read(target)
            self._count_later(lambda: merged.count() - old.count())
            return
        if counted is not None:  # the rows and their months are known: no job to count them
            added, months = counted
            self._count(added)
            if added and months:
                old = self._read(target).where(_month_in(months))
                self._write(target, old.unionByName(new), table_cols, months)
            elif added:
                self._write(target, self._read(target).unionByName(new), table_cols, None)
            return
        # The new rows are computed once, into the scratch (one job, no shuffle to count them): their months
        # are its folders, their count its files' footers; then the months they fall in are rewritten.
        s = self._s
        path = f"{s.scratch}/t{next(s.counter)}"
        partitioned = self._partitioned(target)
        writer = _conform(new, table_cols).write.mode("error")
        self._spark_call(lambda: (writer.partitionBy(_MONTH) if partitioned else writer).parquet(path))
        try:
            added = self._file_rows([path])
            self._count(added)
            if not added:
                return
            reader = s.session.read.schema(_ddl(table_cols))
            if not partitioned:
                self._write(target, self._read(target).unionByName(reader.parquet(path)), table_cols, None)
                return
            dirs = [d for d in s.warehouse.fs.list_dirs(path) if d.startswith(f"{_MONTH}=")]
            months = sorted(urllib.parse.unquote(d.removeprefix(f"{_MONTH}=")) for d in dirs)
            if _NULL_PARTITION in months:
                raise InternalError("a row with a NULL month cannot be stored in a month-partitioned warehouse table")
            rows = reader.option("basePath", path).parquet(*[f"{path}/{d}" for d in dirs]).select(
                *[f"`{n}`" for n, _ in table_cols])
            old = self._read(target).where(_month_in(months))
            self._write(target, old.unionByName(rows), table_cols, months)
        finally:
            s.warehouse.fs.delete(path)  # the rows are in the staging now (or refused)

    def _months_of(self, df: Any) -> list[str]:
        rows = self._spark_call(lambda: df.select(_MONTH).distinct().collect())
        months = sorted(r[0] for r in rows if r[0] is not None)
        if len(months) != len(rows):
            raise InternalError("a row with a NULL month cannot be stored in a month-partitioned warehouse table")
        return months

    def _affected_months(self, target: exp.Table, sources: Sequence[exp.Expr], where: exp.Expr | None,
                         args: dict[str, Any]) -> list[str] | None:
        """The months a DELETE/UPDATE touches (a cheap DISTINCT month query), or None for the whole table."""
        name = target.name
        if not self._partitioned(name):
            return None
        ref = target.alias_or_name
        query = exp.select(exp.column(_MONTH, table=ref)).distinct().from_(_plain(target))
        for source in sources:
            query = query.join(source.copy(), join_type="CROSS")
        if where is not None:
            query = query.where(where.copy())
        return self._months_of(self._query_df(query, args).toDF(_MONTH))

    def _month_counts(self, target: exp.Table, where: exp.Expr | None,
                      args: dict[str, Any]) -> tuple[list[str], int]:
        """The months of a partitioned table's rows matching ``where`` and how many they are: one job
        (a DELETE/UPDATE without USING/FROM touches exactly these rows)."""
        ref = target.alias_or_name
        month = exp.column(_MONTH, table=ref)
        query = exp.select(month, exp.alias_(exp.func("count", exp.Star()), "n")).from_(_plain(target))
        if where is not None:
            query = query.where(where.copy())
        rows = self._spark_call(lambda: self._query_df(query.group_by(month), args).collect())
        months = sorted(r[0] for r in rows if r[0] is not None)
        return months, sum(int(r[1]) for r in rows)

    def _delete(self, tree: exp.Delete, args: dict[str, Any]) -> None:
        target = tree.this
        if not isinstance(target, exp.Table):
            raise InternalError("DELETE of something other than a table is not supported on Spark")
        name = target.name
        target = _plain(target)
        self._require_exists(name)
        where = tree.args.get("where")
        cond = where.this if where is not None else None
        using = list(tree.args.get("using") or [])
        columns = self._columns(name)
        temp = self._is_temp(name)
        deleted: int | None = None
        months: list[str] | None
        if self._partitioned(name) and not using:  # the months and the count in one job
            months, deleted = self._month_counts(target, cond, args)
        else:
            months = self._affected_months(target, using, cond, args)
        if months is not None and not months:
            self._count(0)
            return
        if cond is None:
            kept = self._read(name).limit(0)
        elif not using:
            query = exp.select("*").from_(target.copy()).where(
                exp.not_(exp.func("COALESCE", exp.paren(cond.copy()), exp.false())))
            kept = self._query_df(query, args)
        else:
            query = exp.select(exp.Column(this=exp.Star(), table=exp.to_identifier(target.alias_or_name)))
            query = query.from_(target.copy())
            for source in using:
                query = query.join(source.copy(), join_type="CROSS")
            matched = self._query_df(query.where(cond.copy()).distinct(), args)
            kept = _anti_join(self._read(name), matched, [n for n, _ in columns])
        scope = self._read(name)
        if months is not None:
            kept, scope = kept.where(_month_in(months)), scope.where(_month_in(months))
        if temp:  # both sides materialised: count only if the answer is fetched
            before = self._s.temps[name].parts
            self._replace(name, kept, columns, None)
            after = self._read(name)
            parts = self._s.temps[name].parts
            if before is not None and parts is not None:
                self._count_later(lambda: self._file_rows(before) - self._file_rows(parts))
            else:
                self._count_later(lambda: scope.count() - after.count())
            return
        if deleted is not None:
            self._count(deleted)
            self._replace(name, kept, columns, months)
            return
        kept = kept.cache()
        self._count(int(self._spark_call(scope.count)) - int(self._spark_call(kept.count)))
        self._replace(name, kept, columns, months)
        kept.unpersist()

    def _update(self, tree: exp.Update, args: dict[str, Any]) -> None:
        target = tree.this
        if not isinstance(target, exp.Table):
            raise InternalError("UPDATE of something other than a table is not supported on Spark")
        name = target.name
        target = _plain(target)
        self._require_exists(name)
        columns = self._columns(name)
        known = {n.lower(): n for n, _ in columns}
        sets: dict[str, exp.Expr] = {}
        for assignment in tree.expressions:
            column = known.get(assignment.this.name.lower())
            if column is None:
                raise SparkQueryError(f"Binder Error: Table \"{name}\" does not have a column with name "
                                      f"\"{assignment.this.name}\"")
            sets[column] = assignment.expression
        if self._partitioned(name) and _MONTH in sets:
            raise InternalError("UPDATE … SET month is not supported on Spark (it moves rows between partitions)")
        where = tree.args.get("where")
        cond = where.this if where is not None else None
        from_ = tree.args.get("from_")
        sources = [from_.this, *(j.this for j in tree.args.get("joins") or [])] if from_ is not None else []
        counted_rows: int | None = None
        months: list[str] | None
        if self._partitioned(name) and not sources:  # the months and the count in one job
            months, counted_rows = self._month_counts(target, cond, args)
        else:
            months = self._affected_months(target, sources, cond, args)
        if months is not None and not months:
            self._count(0)
            return
        ref = target.alias_or_name
        types = dict(columns)
        if not sources:
            if counted_rows is None:
                counted = exp.select(exp.func("count", exp.Star())).from_(target.copy())
                counted_rows = self._query_df(counted.where(cond.copy()) if cond is not None else counted,
                                              args).first()[0]
            self._count(int(counted_rows))
            hit = exp.func("COALESCE", exp.paren(cond.copy()), exp.false()) if cond is not None else exp.true()
            select = [exp.alias_(exp.Case(ifs=[exp.If(this=hit.copy(), true=exp.cast(sets[n].copy(), types[n]))],
                                          default=exp.column(n, table=ref)), n, quoted=True)
                      if n in sets else exp.column(n, table=ref, quoted=True) for n, _ in columns]
            query = exp.select(*select).from_(target.copy())
            if months is not None:
                query = query.where(exp.column(_MONTH, table=ref).isin(*months))
            self._replace(name, self._query_df(query, args), columns, months)
            return
        set_names = [n for n, _ in columns if n in sets]
        query = exp.select(exp.Column(this=exp.Star(), table=exp.to_identifier(ref)),
                           *(exp.alias_(exp.cast(sets[n].copy(), types[n]), f"_mk_set{i}")
                             for i, n in enumerate(set_names))).from_(target.copy())
        for source in sources:
            query = query.join(source.copy(), join_type="CROSS")
        if cond is not None:
            query = query.where(cond.copy())
        matched = self._query_df(query.distinct(), args).cache()
        self._count(int(self._spark_call(matched.count)))
        old = self._read(name)
        if months is not None:
            old = old.where(_month_in(months))
        self._replace(name, _update_join(old, matched, [n for n, _ in columns], set_names), columns, months)

    def _alter(self, tree: exp.Alter) -> None:
        table = tree.this
        name = table.name
        self._require_exists(name)
        actions = tree.args.get("actions") or []
        if (str(tree.args.get("kind") or "").upper() != "TABLE"
                or not all(isinstance(a, exp.ColumnDef) for a in actions)):
            raise InternalError("statement kind ALTER TABLE (other than ADD COLUMN) is not supported on Spark")
        columns = self._columns(name)
        df = self._read(name)
        for action in actions:
            column, type_ = action.name, self._duck_spelling(action.args["kind"])
            if column.lower() in {n.lower() for n, _ in columns}:
                raise SparkQueryError(f"Catalog Error: Column with name {column} already exists!")
            columns = [*columns, (column, type_)]
            df = df.selectExpr("*", f"CAST(NULL AS {spark_type(type_)}) AS `{column}`")
        self._replace(name, df, columns, None)

    def _drop(self, tree: exp.Drop) -> None:
        kind = str(tree.args.get("kind") or "").upper()
        if kind not in ("TABLE", "VIEW"):
            raise InternalError(f"statement kind DROP {kind} is not supported on Spark")
        s = self._s
        for table in tree.args.get("expressions") or tree.args.get("tables") or [tree.this]:
            name = table.name
            if name in s.temps:
                del s.temps[name]
                self._forget_plans(name)
                s.session.catalog.dropTempView(name)
                continue
            if table.db and table.db.lower() == "temp" or kind == "VIEW" or not self._exists(name):
                if tree.args.get("exists"):
                    continue
                raise SparkQueryError(f"Catalog Error: Table with name {name} does not exist!")
            own = s.tx is None
            tx = s.warehouse.begin() if own else s.tx
            assert tx is not None
            tx.drop(name)
            self._invalidate(name)
            if own:
                tx.commit()
            else:
                s.dropped.add(name)
                s.created.discard(name)

    def _describe(self, tree: exp.Describe, args: dict[str, Any]) -> None:
        subject = tree.this
        if isinstance(subject, exp.Table) and isinstance(subject.this, exp.Identifier):
            name = subject.name
            if not (subject.db and subject.db.lower() == "information_schema"):
                self._require_exists(name)
                columns = self._columns(name)
            else:
                columns = schema_columns(self._query_df(exp.select("*").from_(subject), args))
        elif isinstance(subject, exp.Query):
            columns = schema_columns(self._query_df(subject, args))
        else:
            raise InternalError(f"DESCRIBE of {type(subject).__name__} is not supported on Spark")
        names = ["column_name", "column_type", "null", "key", "default", "extra"]
        self._result([(n, t, "YES", None, None, None) for n, t in columns], names)

    def _copy(self, tree: exp.Copy, args: dict[str, Any]) -> None:
        """COPY (query) TO file: Spark computes the rows into this connection's scratch as Parquet, in
        parallel and with a position column that keeps Spark's row order; an in-memory DuckDB reads them
        back in that order and writes the file with the statement's own options, so a list is byte for
        byte DuckDB's. The rows never gather on the driver's JVM heap (``toArrow`` of a 200k-row list
        lost its task result under the default driver memory)."""
        if tree.args.get("kind") is not False and tree.args.get("kind") is not None:
            raise InternalError("COPY … FROM is not supported on Spark (mktool reads files with read_parquet)")
        source = tree.this
        query = source.this if isinstance(source, exp.Subquery) else exp.select("*").from_(source)
        df = self._query_df(query, args)
        folder = f"{self._s.scratch}/copy{next(self._s.counter)}"
        positioned = df.selectExpr("*", f"monotonically_increasing_id() AS {_COPY_POSITION}")
        self._spark_call(lambda: positioned.write.mode("overwrite").parquet(folder))
        with tempfile.TemporaryDirectory(prefix="mktool-copy-") as tmp:
            local = local_path(folder)
            if is_uri(local):  # a warehouse on hdfs:// or s3a://: the rows come to this machine
                local = f"{tmp}/rows"
                self._s.warehouse.fs.copy_to_local(folder, local)
            files = sorted(glob.glob(f"{glob.escape(local)}/*.parquet"))
            if not files:  # no part file at all: an empty result, as Arrow
                table = self._arrow(df)
                scratch = f"_mk_copy_{next(self._s.counter)}"
                inner: exp.Expr = exp.select("*").from_(scratch)
            else:
                table, scratch = None, ""
                inner = self._positioned_rows(files)
            statement = tree.copy()
            statement.set("this", exp.Subquery(this=inner))
            duck = self._s.duck
            if table is not None:
                duck.register(scratch, table)
            try:
                rows = duck.execute(statement.sql(dialect="duckdb")).fetchall()
            finally:
                if table is not None:
                    duck.unregister(scratch)
        self._s.warehouse.fs.delete(folder)
        self._result([tuple(r) for r in rows], ["Count"])

    def _positioned_rows(self, files: list[str]) -> exp.Expr:
        """``SELECT <columns> FROM read_parquet(files) ORDER BY position`` for the in-memory DuckDB:
        Spark's timestamps (UTC instants in Parquet) read back as the zone-less values they were."""
        listing = "[" + ", ".join(exp.Literal.string(f).sql(dialect="duckdb") for f in files) + "]"
        scan = f"read_parquet({listing})"
        described = self._s.duck.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()
        columns = []
        for name, type_, *_ in described:
            if name == _COPY_POSITION:
                continue
            quoted = exp.to_identifier(name, quoted=True).sql(dialect="duckdb")
            columns.append(f"timezone('UTC', {quoted}) AS {quoted}" if type_ == "TIMESTAMP WITH TIME ZONE"
                           else quoted)
        return sqlglot.parse_one(f"SELECT {', '.join(columns)} FROM {scan} ORDER BY {_COPY_POSITION}",
                                 read="duckdb")

    def _spark_call(self, call: Any) -> Any:
        """Run a Spark call; Spark's errors become :class:`SparkQueryError` with Spark's first line."""
        try:
            return call()
        except MktoolError:
            raise
        except duckdb.Error:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith(("pyspark", "py4j")):
                text = str(exc).strip().splitlines()
                raise SparkQueryError(f"Spark: {text[0] if text else type(exc).__name__}") from exc
            raise


# -- helpers -------------------------------------------------------------------------------------
_REF_RE = re.compile(r"`?\b(_mk_ref\d+)\b`?")


def _is_data_file(path: str) -> bool:
    """A Parquet part file Spark wrote, not ``_SUCCESS``, a ``.crc`` or a hidden file."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".parquet") and not name.startswith(("_", "."))


def _naive(type_: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(type_) and type_.tz is not None:
        return pa.timestamp(type_.unit)
    if pa.types.is_list(type_):
        return pa.list_(_naive(type_.value_type))
    return type_


def _keyword_only(sql: str) -> bool:
    return _first_keyword(sql) in _NO_OPS


def _first_keyword(sql: str) -> str:
    stripped = sql.lstrip(" \t\r\n(")
    word = ""
    for char in stripped:
        if not (char.isalpha() or char == "_"):
            break
        word += char
    return word.upper()


def _bind(tree: exp.Expr, parameters: Sequence[Any] | dict[str, Any] | None) -> tuple[exp.Expr, dict[str, Any]]:
    """``?`` → ``$_p<i>`` and ``$name`` kept, with the values by name: Spark binds ``:name``."""
    args: dict[str, Any] = {}
    positional = list(parameters) if parameters is not None and not isinstance(parameters, dict) else []
    named = dict(parameters) if isinstance(parameters, dict) else {}
    index = 0
    for placeholder in list(tree.find_all(exp.Placeholder)):
        if placeholder.this is None:
            if index >= len(positional):
                raise SparkQueryError(f"Invalid Input Error: expected at least {index + 1} parameters, "
                                      f"got {len(positional)}")
            key = f"_p{index}"
            args[key] = positional[index]
            placeholder.set("this", key)
            index += 1
        else:
            key = str(placeholder.this)
            if key not in named:
                raise SparkQueryError(f"Invalid Input Error: no value for parameter ${key}")
            args[key] = named[key]
    if index < len(positional):
        raise SparkQueryError(f"Invalid Input Error: {len(positional)} parameters given, the statement has {index}")
    return tree, args


def _string_argument(node: exp.Expr, args: dict[str, Any], function: str) -> str:
    """A table function's one text argument: a string literal or a bound parameter."""
    if isinstance(node, exp.Placeholder) and node.this in args and isinstance(args[node.this], str):
        return str(args[node.this])
    if isinstance(node, exp.Literal) and node.is_string:
        return str(node.this)
    raise InternalError(f"{function}({node.sql('duckdb')}): only a text literal or parameter is supported on Spark")


def _parquet_nodes(name: str, type_: pa.DataType) -> list[tuple[str, int | None]]:
    """The Parquet schema nodes of one Arrow field: a group per struct/list/map (lists and maps with
    Parquet's standard ``list``/``element`` and ``key_value``/``key``/``value`` levels), a leaf otherwise."""
    if pa.types.is_struct(type_):
        out: list[tuple[str, int | None]] = [(name, type_.num_fields)]
        for i in range(type_.num_fields):
            child = type_.field(i)
            out += _parquet_nodes(child.name, child.type)
        return out
    if pa.types.is_map(type_):
        return [(name, 1), ("key_value", 2), *_parquet_nodes("key", type_.key_type),
                *_parquet_nodes("value", type_.item_type)]
    if pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_):
        return [(name, 1), ("list", 1), *_parquet_nodes(type_.value_field.name, type_.value_type)]
    return [(name, None)]


def _insert_target(tree: exp.Insert) -> tuple[str, list[str] | None]:
    target = tree.this
    names = None
    if isinstance(target, exp.Schema):
        names = [c.name for c in target.expressions]
        target = target.this
    if not isinstance(target, exp.Table):
        raise InternalError("INSERT into something other than a table is not supported on Spark")
    return target.name, names


def _plain(table: exp.Table) -> exp.Table:
    """A table reference without its ``temp.``/``main.`` qualifier (the session's names are flat)."""
    plain = table.copy()
    if plain.db and plain.db.lower() in _LOCAL_SCHEMAS:
        plain.set("db", None)
    return plain


def _month_in(months: Sequence[str]) -> str:
    return f"`{_MONTH}` IN ({', '.join(exp.Literal.string(m).sql('spark') for m in months)})"


def _conform(df: Any, columns: Columns) -> Any:
    """``df`` with exactly ``columns`` (names, order, Spark types of the DuckDB types)."""
    if list(df.columns) == [n for n, _ in columns] and schema_columns(df) == columns:
        return df
    return df.selectExpr(*(f"CAST(`{n}` AS {spark_type(t)}) AS `{n}`" for n, t in columns))


def _null_safe_on(left: Any, right: Any, names: Sequence[str], prefix: str) -> Any:
    cond = None
    for i, n in enumerate(names):
        part = left[n].eqNullSafe(right[f"{prefix}{i}"])
        cond = part if cond is None else cond & part
    return cond


def _anti_join(old: Any, matched: Any, names: Sequence[str]) -> Any:
    """The rows of ``old`` equal (NULL-safe, every column) to no row of ``matched``: DELETE … USING's kept rows."""
    right = matched.toDF(*[f"_mk_m{i}" for i in range(len(names))])
    return old.join(right, _null_safe_on(old, right, names, "_mk_m"), "left_anti")


def _update_join(old: Any, matched: Any, names: Sequence[str], set_names: Sequence[str]) -> Any:
    """UPDATE … FROM: each row of ``old`` with its new values where ``matched`` (old row + new values) has it."""
    from pyspark.sql import functions as F  # noqa: N812, PLC0415 - optional extra

    width = len(names)
    right = matched.toDF(*[f"_mk_m{i}" for i in range(width)], *[f"_mk_set{i}" for i in range(len(set_names))])
    right = right.withColumn("_mk_hit", F.lit(True))
    joined = old.join(right, _null_safe_on(old, right, names, "_mk_m"), "left")
    position = {n: i for i, n in enumerate(set_names)}
    return joined.select(*(
        F.when(F.col("_mk_hit"), F.col(f"_mk_set{position[n]}")).otherwise(old[n]).alias(n) if n in position
        else old[n].alias(n) for n in names))


register_engine("spark", connect)
