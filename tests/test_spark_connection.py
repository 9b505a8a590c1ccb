"""mktool.sparkdb: each statement kind mktool sends gives DuckDB's result on Spark (issue 16).

Every case runs the same DuckDB-dialect statements on an in-memory DuckDB and on a
SparkConnection over a fresh warehouse, then compares what a query reads back, row for row.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import M, MonthRun

from mktool import sparkdb, warehouse
from mktool.config import Settings
from mktool.contract import TABLES
from mktool.database import Database
from mktool.errors import LockedError, StateError
from mktool.warehouse import Warehouse


def _key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, str(type(v)), v if not isinstance(v, list) else str(v)) for v in row)


@pytest.fixture
def pair(spark, tmp_path: Path):
    """(duckdb connection, spark connection) over empty databases."""
    duck = duckdb.connect(":memory:")
    con = sparkdb.connect_session(spark, Warehouse(spark, str(tmp_path / "wh")))
    yield duck, con
    con.close()
    duck.close()


def run_both(pair, sql: str, params: Any = None) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    duck, con = pair
    args = () if params is None else (params,)
    a = duck.execute(sql, *args).fetchall()
    b = con.execute(sql, *args).fetchall()
    return a, b


def same(pair, sql: str, params: Any = None, *, ordered: bool = False) -> list[tuple[Any, ...]]:
    a, b = run_both(pair, sql, params)
    if not ordered:
        a, b = sorted(a, key=_key), sorted(b, key=_key)
    assert b == a
    return a


def table_rows(pair, table: str) -> list[tuple[Any, ...]]:
    return same(pair, f"SELECT * FROM {table}")


SETUP = [
    "CREATE TABLE cv (msisdn VARCHAR, month VARCHAR, fee DECIMAL(18,2), n BIGINT, tags VARCHAR[], "
    "day DATE, ts TIMESTAMP, ok BOOLEAN, x DOUBLE)",
    "INSERT INTO cv VALUES ('a', '2026-09', 1.50, 1, ['p', 'q'], DATE '2026-09-01', TIMESTAMP '2026-09-01 08:00:00', "
    "true, 0.5), ('b', '2026-10', 2.25, 2, [], DATE '2026-10-02', NULL, false, NULL), "
    "('c', '2026-10', NULL, 3, NULL, NULL, TIMESTAMP '2026-10-03 23:59:59', NULL, 1e-7)",
]


def setup(pair) -> None:
    for sql in SETUP:
        run_both(pair, sql)


def test_select_with_positional_and_named_parameters(pair) -> None:
    setup(pair)
    rows = same(pair, "SELECT msisdn, fee, n * 2 AS n2 FROM cv WHERE month = ? AND n >= ? ORDER BY msisdn",
                ["2026-10", 2], ordered=True)
    assert rows == [("b", Decimal("2.25"), 4), ("c", None, 6)]
    assert same(pair, "SELECT count(*) FROM cv WHERE month = $month", {"month": "2026-09"}) == [(1,)]
    assert same(pair, "SELECT tags, day, ts FROM cv WHERE msisdn = ?", ["a"]) == [
        (["p", "q"], dt.date(2026, 9, 1), dt.datetime(2026, 9, 1, 8, 0))]


def test_describe_spells_duckdb_types(pair) -> None:
    setup(pair)
    duck, con = pair
    expected = [(r[0], r[1]) for r in duck.execute('DESCRIBE "cv"').fetchall()]
    assert [(r[0], r[1]) for r in con.execute('DESCRIBE "cv"').fetchall()] == expected
    # Expressions' result types are each engine's own (DuckDB types fee * 2 DECIMAL(18,2), Spark
    # DECIMAL(20,2)); columns and casts must be spelled alike.
    query = ("SELECT msisdn, CAST(fee AS DECIMAL(18,6)) AS fee6, n, CAST(n AS INTEGER) AS i, tags, day, ts, ok, x "
             "FROM cv")
    assert [(r[0], r[1]) for r in con.execute(f"DESCRIBE {query}").fetchall()] == \
        [(r[0], r[1]) for r in duck.execute(f"DESCRIBE {query}").fetchall()]
    assert con.description is not None and con.description[0][0] == "column_name"


def test_temp_tables_executemany_and_information_schema(pair) -> None:
    duck, con = pair
    same(pair, "CREATE OR REPLACE TEMP TABLE _w (matrix VARCHAR, rule_no INTEGER, channels VARCHAR[])")
    rows = [("m1", 1, ["sms"]), ("m1", 2, []), ("m2", 1, None)]
    duck.executemany("INSERT INTO _w VALUES (?, ?, ?)", rows)
    con.executemany("INSERT INTO _w VALUES (?, ?, ?)", rows)
    same(pair, "INSERT INTO temp._w SELECT 'm3', rule_no + 10, channels FROM _w WHERE matrix = ?", ["m1"])
    assert len(table_rows(pair, "_w")) == 5
    exists = "SELECT 1 FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?"
    assert same(pair, exists, ["_w"]) == [(1,)]
    assert same(pair, exists, ["nope"]) == []
    same(pair, "CREATE OR REPLACE TEMP TABLE _x AS SELECT matrix, count(*) AS n FROM _w GROUP BY matrix")
    assert table_rows(pair, "_x") == [("m1", 2), ("m2", 1), ("m3", 2)]
    same(pair, "DROP TABLE IF EXISTS temp._x")
    assert same(pair, exists, ["_x"]) == []


def test_temp_tables_start_a_fresh_plan_and_count_when_asked(pair) -> None:
    """A TEMP table is read back from its own files: the next statement's plan does not carry the
    query that made it (a chain of cached views grew until Spark ran out of heap)."""
    duck, con = pair
    setup(pair)
    assert same(pair, "CREATE TEMP TABLE a1 AS SELECT msisdn, n FROM cv WHERE n > 1") == [(2,)]
    assert same(pair, "CREATE TEMP TABLE a2 AS SELECT x.msisdn, x.n + y.n AS n FROM a1 x JOIN a1 y "
                      "ON x.msisdn = y.msisdn") == [(2,)]
    plan = con._s.temps["a2"].df._jdf.queryExecution().analyzed().toString()
    assert "Join" not in plan and "Filter" not in plan and "parquet" in plan.lower(), plan
    assert same(pair, "INSERT INTO a2 SELECT msisdn, n FROM a1 WHERE n = 3") == [(1,)]
    assert same(pair, "DELETE FROM a2 WHERE n = 4") == [(1,)]
    assert same(pair, "SELECT msisdn, n FROM a2") == [("c", 3), ("c", 6)]
    con.execute("CREATE TEMP TABLE a3 AS SELECT * FROM a2")  # its count is never fetched: no job for it
    scratch = con._s.scratch
    assert con.warehouse.fs.exists(scratch)
    con.close()
    assert not con.warehouse.fs.exists(scratch)  # the connection's temp files go with it


def test_create_insert_by_name_and_columns(pair) -> None:
    setup(pair)
    same(pair, "CREATE TABLE t2 AS SELECT msisdn, month, fee FROM cv WHERE month = ?", ["2026-10"])
    same(pair, "INSERT INTO t2 BY NAME SELECT 'z' AS msisdn, 1.239 AS fee, '2026-11' AS month")
    same(pair, "INSERT INTO t2 (month, msisdn) VALUES (?, ?)", ["2026-10", "y"])
    same(pair, "CREATE TABLE IF NOT EXISTS t2 (a INTEGER)")
    assert table_rows(pair, "t2") == [("b", "2026-10", Decimal("2.25")), ("c", "2026-10", None),
                                      ("y", "2026-10", None), ("z", "2026-11", Decimal("1.24"))]
    same(pair, "CREATE OR REPLACE TABLE t2 AS SELECT 1 AS one")
    assert table_rows(pair, "t2") == [(1,)]


def test_delete_where_and_using_keep_other_rows(pair) -> None:
    setup(pair)
    same(pair, "DELETE FROM cv WHERE month = ? AND n = ?", ["2026-10", 2])
    assert [r[0] for r in table_rows(pair, "cv")] == ["a", "c"]
    run_both(pair, "DROP TABLE cv")
    setup(pair)
    same(pair, "DELETE FROM cv USING (SELECT ? AS k) AS s WHERE cv.msisdn = s.k", ["a"])
    assert [r[0] for r in table_rows(pair, "cv")] == ["b", "c"]
    same(pair, "DELETE FROM cv WHERE fee IS NULL")
    assert [r[0] for r in table_rows(pair, "cv")] == ["b"]


def test_update_set_from_and_alter_add_column(pair) -> None:
    setup(pair)
    same(pair, "UPDATE cv SET n = n + 10, ok = true WHERE month = ?", ["2026-10"])
    assert [(r[0], r[3], r[7]) for r in table_rows(pair, "cv")] == [("a", 1, True), ("b", 12, True),
                                                                     ("c", 13, True)]
    same(pair, "CREATE OR REPLACE TEMP TABLE _c (matrix VARCHAR, matrix_ord INTEGER)")
    same(pair, "INSERT INTO _c VALUES ('m1', 0), ('m2', 0), ('m3', 0)")
    same(pair, "UPDATE _c SET matrix_ord = o.ord FROM (SELECT 'm2' AS matrix, 7 AS ord UNION ALL "
               "SELECT 'm3', 9) AS o WHERE _c.matrix = o.matrix")
    assert table_rows(pair, "_c") == [("m1", 0), ("m2", 7), ("m3", 9)]
    same(pair, "ALTER TABLE cv ADD COLUMN cycle VARCHAR")
    assert table_rows(pair, "cv")[0][-1] is None
    same(pair, "UPDATE cv SET cycle = 'c1'")
    assert {r[-1] for r in table_rows(pair, "cv")} == {"c1"}


def test_transactions_and_drop(pair) -> None:
    setup(pair)
    duck, con = pair
    for c in (duck, con):
        c.execute("BEGIN TRANSACTION")
        c.execute("DELETE FROM cv WHERE month = '2026-09'")
        c.execute("CREATE TABLE t3 AS SELECT 1 AS a")
        assert c.execute("SELECT count(*) FROM cv").fetchone() == (2,)
        c.execute("ROLLBACK")
    assert [r[0] for r in table_rows(pair, "cv")] == ["a", "b", "c"]
    exists = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"
    assert same(pair, exists, ["t3"]) == [(0,)]
    for c in (duck, con):
        c.execute("BEGIN TRANSACTION")
        c.execute("DROP TABLE cv")
        c.execute("COMMIT")
    assert same(pair, exists, ["cv"]) == [(0,)]
    same(pair, "DROP TABLE IF EXISTS cv")
    with pytest.raises(duckdb.Error):
        con.execute("DROP TABLE cv")


def test_copy_writes_duckdb_bytes(pair, tmp_path: Path) -> None:
    setup(pair)
    duck, con = pair
    query = "SELECT msisdn, fee, n, tags, day, ts, ok, x, 'a,b \"q\"' AS s FROM cv ORDER BY msisdn"
    for fmt, options in (("csv", "FORMAT csv, HEADER true"), ("jsonl", "FORMAT json")):
        a, b = tmp_path / f"duck.{fmt}", tmp_path / f"spark.{fmt}"
        assert duck.execute(f"COPY ({query}) TO '{a}' ({options})").fetchall() == [(3,)]
        assert con.execute(f"COPY ({query}) TO '{b}' ({options})").fetchall() == [(3,)]
        assert b.read_bytes() == a.read_bytes()


def test_copy_keeps_a_sort_across_many_partitions_and_writes_empty_results(pair, tmp_path: Path) -> None:
    """COPY's rows go through Parquet in the scratch, not the driver's heap: Spark's sort order must
    survive the partitions it was computed in, and an empty result still writes DuckDB's header."""
    duck, con = pair
    start = dt.datetime(2026, 10, 1)
    rows = [(str(13800000000 + (i * 7919) % 5000), Decimal(i % 97) / 4, start + dt.timedelta(seconds=i))
            for i in range(5000)]
    for c in (duck, con):
        c.execute("CREATE TABLE big (msisdn VARCHAR, fee DECIMAL(18,2), ts TIMESTAMP)")
        c.executemany("INSERT INTO big VALUES (?, ?, ?)", rows)
    conf = {"spark.sql.shuffle.partitions": "7", "spark.sql.adaptive.coalescePartitions.enabled": "false"}
    before = {key: con.session.conf.get(key) for key in conf}
    for key, value in conf.items():
        con.session.conf.set(key, value)
    try:
        for where, expected in (("", 5000), ("WHERE fee < 0", 0)):
            query = f"SELECT * FROM big {where} ORDER BY fee DESC, msisdn"
            a, b = tmp_path / f"duck{expected}.csv", tmp_path / f"spark{expected}.csv"
            assert duck.execute(f"COPY ({query}) TO '{a}' (FORMAT csv, HEADER true)").fetchall() == [(expected,)]
            assert con.execute(f"COPY ({query}) TO '{b}' (FORMAT csv, HEADER true)").fetchall() == [(expected,)]
            assert b.read_bytes() == a.read_bytes()
    finally:
        for key, value in before.items():
            con.session.conf.set(key, value)
    assert not list(Path(con.warehouse.root, "_scratch").glob("*/copy*")), "COPY leaves no rows in the scratch"


def test_no_ops_and_refusals(pair) -> None:
    _, con = pair
    con.execute("SET memory_limit = ?", ["1GB"]).execute("SET threads = 2").execute("CHECKPOINT")
    assert con.fetchall() == []
    with pytest.raises(sparkdb.InternalError, match="EXPORT|not supported"):
        con.execute("EXPORT DATABASE '/tmp/x'")
    with pytest.raises(sparkdb.InternalError, match="table function"):
        con.execute("SELECT * FROM range(3)")  # glob and parquet_schema are answered: tests/test_spark_ingest.py
    with pytest.raises(duckdb.Error, match="Spark"):
        con.execute("SELECT no_such_column FROM (SELECT 1 AS a)")


def test_sparkdb_uses_the_warehouses_type_map() -> None:
    """One DuckDB ⇄ Spark type map (mktool.warehouse's, tested in test_spark_warehouse.py): DESCRIBE's
    spellings, the casts and the temp tables' DDL all come from it."""
    assert sparkdb.duckdb_type is warehouse.duckdb_type and sparkdb.spark_type is warehouse.spark_type
    assert sparkdb._ddl([("h", "HUGEINT"), ("t", "VARCHAR[]"), ("ts", "TIMESTAMP")]) == \
        "`h` decimal(38,0), `t` array<string>, `ts` timestamp_ntz"


# -- the fixtures' month: score and matrix on Spark give DuckDB's tables --------------------------
def _sorted_rows(con: Any, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = con.execute(f"SELECT * FROM {table}")
    names = [d[0] for d in cur.description]
    return names, sorted(cur.fetchall(), key=_key)


#: What two manifests of the same lists may differ in: when and by which engine they were made, the
#: run's random id (also in each output's entry), the output folder and when each step was recorded.
_MANIFEST_VARIES = ("run_id", "created_at", "engine")


def _comparable_manifest(folder: Path) -> dict[str, Any]:
    doc = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    for key in _MANIFEST_VARIES:
        assert doc.pop(key), key
    doc["export"].pop("out")
    for entry in doc["outputs"].values():
        entry.pop("run_id")
    for step in doc["steps"].values():  # when score/matrix/plan ran: each engine ran them in turn
        step.pop("recorded_at")
    return dict(doc)


def test_fixtures_ingest_on_spark_gives_duckdbs_tables(fixtures_month: MonthRun) -> None:
    """`mktool --engine spark ingest fixtures/extracts`: DuckDB's tables in the warehouse, row for row
    (as they were right after the ingest: export appends to contact_history)."""
    duck, on_spark = fixtures_month.ingested["duckdb"], fixtures_month.ingested["spark"]
    print(f"Spark ingest of the fixtures: {fixtures_month.seconds['spark ingest']:.0f} s")
    assert {"billing", "contact_history", "events", "orders", "subscribers", "ingest_log"} <= set(duck)
    assert sorted(on_spark) == sorted(duck)
    for table in sorted(duck):
        (columns, rows), (got_columns, got) = duck[table], on_spark[table]
        assert got_columns == columns, table
        if table == "ingest_log":  # a new id and clock per run
            keep = [i for i, (n, _) in enumerate(columns) if n not in ("load_id", "loaded_at")]
            rows, got = ([tuple(r[i] for i in keep) for r in x] for x in (rows, got))
            rows, got = sorted(rows, key=repr), sorted(got, key=repr)
            load_id = [n for n, _ in columns].index("load_id")
            assert len({r[load_id] for r in on_spark[table][1]}) == 1  # one load of the folder
        assert len(got) == len(rows), table
        assert rows or table not in TABLES, table  # the steps' output tables are made empty on open
        for a, b in zip(got, rows):
            assert a == b, (table, a, b)


def test_fixtures_month_score_matrix_plan_and_export_on_spark(fixtures_month: MonthRun) -> None:
    """score → matrix → plan → export on Spark after the Spark ingest: DuckDB's lists byte for byte,
    its manifest but for ids, times and engine, and its tables row for row."""
    folders = fixtures_month.folders
    duck_files = sorted(p.name for p in folders["duckdb"].iterdir())
    assert sorted(p.name for p in folders["spark"].iterdir()) == duck_files
    lists = [name for name in duck_files if name != "manifest.json"]
    assert "funnel.json" in lists and len(lists) >= 3, duck_files  # funnel.json and at least two channels' lists
    for name in lists:
        assert (folders["spark"] / name).read_bytes() == (folders["duckdb"] / name).read_bytes(), name
    spark_manifest = json.loads((folders["spark"] / "manifest.json").read_text(encoding="utf-8"))
    assert spark_manifest["engine"]["name"] == "spark"
    assert _comparable_manifest(folders["spark"]) == _comparable_manifest(folders["duckdb"])
    with Database(fixtures_month.duckdb, write=False) as d, Database(fixtures_month.spark, write=False) as s:
        assert s.c.execute("SELECT count(*) FROM customer_view WHERE month = ?", [M]).fetchone() == (2000,)
        for table in ("customer_view", "recommendations", "customer_priority", "rule_hits", "funnel_counts",
                      "plan_recommendations", "contact_history", "holdouts"):
            assert s.columns(table) == d.columns(table), table
            names, expected = _sorted_rows(d.c, table)
            got_names, got = _sorted_rows(s.c, table)
            assert got_names == names
            assert len(got) == len(expected), table
            for a, b in zip(got, expected):
                assert a == b, (table, dict(zip(names, a)), dict(zip(names, b)))


def test_database_on_spark_locks_in_the_warehouse_and_needs_no_duckdb_file(spark, tmp_path: Path) -> None:
    root = tmp_path / "wh"
    settings = Settings(db_path=tmp_path / "never.duckdb", engine="spark", warehouse=str(root), lock_wait=0)
    with pytest.raises(StateError, match="no warehouse at"):
        with Database(settings, write=False):
            pass
    assert not root.exists()  # a reader refused creates nothing (tests/test_spark_inputs.py)
    with Database(settings, write=True) as db:
        assert (root / "_mktool.lock").exists()
        with pytest.raises(LockedError), Database(settings, write=True):
            pass
        with db.transaction() as con:  # no CHECKPOINT, no .wal: the warehouse commit is the publish
            con.execute("CREATE TABLE t AS SELECT 'x' AS a")
        assert db.table_exists("ingest_log") and db.table_exists("t")
        assert db.columns("funnel_counts") == ["month", "funnel", "stage_no", "stage", "count", "cycle"]
    assert not (tmp_path / "never.duckdb").exists()
    with Database(settings, write=False) as db:
        assert db.c.execute("SELECT a FROM t").fetchall() == [("x",)]
