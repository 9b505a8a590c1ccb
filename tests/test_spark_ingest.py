"""Ingest's refusals and normalisation mean the same on Spark: each query of ``ingest.queries`` (DuckDB
text, as ingest builds it) runs on DuckDB over ``read_parquet`` and, rendered by ``dialect.render``, on
Spark over ``parquet.`file```, on crafted bad extracts; counts and example rows must agree, and the
DuckDB counts are the hand-counted ones.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MATRICES, M, write_table
from typer.testing import CliRunner

from mktool import dialect, ingest, sparkdb
from mktool.cli import app
from mktool.contract import TABLES
from mktool.rules import load_channels
from mktool.warehouse import Warehouse

CHANNELS = load_channels(MATRICES).names


def _same(value: Any) -> Any:
    """A value as both engines' Python rows can be compared (NaN equals NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _duckdb(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [{n: _same(v) for n, v in zip(names, row)} for row in cur.fetchall()]


def _spark(session: Any, sql: str) -> list[dict[str, Any]]:
    rows = session.sql(dialect.render(sql, "spark")).collect()
    return [{n: _same(v) for n, v in row.asDict().items()} for row in rows]


def _positional(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in rows]  # engines name an unaliased count(*) differently


def _source(con: duckdb.DuckDBPyConnection, path: Path, table: str) -> ingest.SourceFile:
    src = ingest.SourceFile(path=path, table=table)
    ingest.read_schema(con, src)
    return src


def _counts(con: duckdb.DuckDBPyConnection, src: ingest.SourceFile, months_clean: bool) -> dict[tuple[str, str], int]:
    """{(column, problem or 'flag'): DuckDB count} of the first scan, summed per problem."""
    plan = ingest.validation(src, CHANNELS, months_clean=months_clean)
    counts = con.execute(ingest.count_query(src, plan.checks, plan.flags).sql).fetchone()
    out: dict[tuple[str, str], int] = {}
    for (column, problem, _), n in zip(plan.checks, counts):
        out[(column, problem)] = out.get((column, problem), 0) + n
    for (column, _), n in zip(plan.flags, counts[len(plan.checks):]):
        out[(column, "flag")] = out.get((column, "flag"), 0) + n
    return out


def _assert_same_on_spark(session: Any, con: duckdb.DuckDBPyConnection, src: ingest.SourceFile, *,
                          months_clean: bool, skip: tuple[str, ...] = ()) -> dict[str, list[dict[str, Any]]]:
    """Every named query of ``src`` gives the same rows on both engines; returns DuckDB's rows."""
    out = {}
    queries = ingest.queries(src, CHANNELS, months_clean=months_clean)
    for name, query in queries.items():
        if name.startswith(skip):
            continue
        duck, spark = _duckdb(con, query.sql), _spark(session, query.sql)
        if name.startswith("example:"):
            assert spark == duck, name  # the same first matching row, with the same column names
        else:
            order = name in ("months",)  # no ORDER BY: compared as sets
            assert (sorted(_positional(spark), key=repr) if order else _positional(spark)) == \
                (sorted(_positional(duck), key=repr) if order else _positional(duck)), name
        out[name] = duck
    return out


def test_contact_history_refusals_are_the_same_on_spark(spark: Any, tmp_path: Path) -> None:
    rows = [
        {"msisdn": "13800000001", "contact_date": "2026-10-03", "channel": "sms", "policy_id": "P1"},  # clean
        {"msisdn": "13800000002 ", "contact_date": "2026-10-3", "channel": "sms", "policy_id": "P1"},  # trailing space
        {"msisdn": "1380000\u200b0003", "contact_date": "2026-10-03", "channel": "sms", "policy_id": "P1"},  # U+200B
        {"msisdn": "13800000004", "contact_date": "2026-10-03", "channel": "sms\u3000", "policy_id": "P1"},  # U+3000
        {"msisdn": "13800000005", "contact_date": "2026-10-03", "channel": "sms", "policy_id": "P\x07X"},  # BEL
        {"msisdn": "13800000006", "contact_date": "2026-10-03", "channel": "sms", "policy_id": "  "},  # blank
        {"msisdn": "１３８００００００７", "contact_date": "2026-10-03", "channel": "sms", "policy_id": "P1"},  # wide
        {"msisdn": "13800000008", "contact_date": "2026-10-03", "channel": "fax", "policy_id": "P1"},  # bad channel
        {"msisdn": "13800000009", "contact_date": "2026-10-03", "channel": "sms", "policy_id": "P1", "outcome": None},
        {"msisdn": "13800000010\n", "contact_date": "2026-10-03", "channel": "SMS", "policy_id": "P1"},  # newline, case
        {"msisdn": "1380000001", "contact_date": "infinity", "channel": "sms", "policy_id": "P1"},  # 10 digits
        {"msisdn": "13800000012", "contact_date": "2026-10-32", "channel": "sms", "policy_id": "P1"},  # no such date
    ]
    path = write_table(tmp_path / "contact_history.parquet", "contact_history", rows,
                       types={"contact_date": pa.string()})
    con = duckdb.connect()
    src = _source(con, path, "contact_history")
    counts = _counts(con, src, months_clean=False)
    invisible = next(p for c, p in counts if c == "policy_id" and p.startswith("value has an invisible"))
    lossy = "value cannot be read as DATE without loss"
    # msisdn: not already 11 ASCII digits as written (flag): rows 2, 3, 7, 10, 11 → the second scan
    assert counts[("msisdn", "flag")] == 5
    assert counts[("policy_id", invisible)] == 1  # BEL (row 5)
    assert counts[("policy_id", "key column is NULL or empty")] == 1  # row 6
    assert counts[("channel", "flag")] == 3  # 'sms　', 'fax', 'SMS' (rows 4, 8, 10)
    assert counts[("outcome", "flag")] == 1  # row 9 (NULL)
    assert counts[("contact_date", lossy)] == 2  # 'infinity' (an infinite DuckDB date, NULL on Spark) and 10-32
    duck = _assert_same_on_spark(spark, con, src, months_clean=False, skip=("duplicate_", "load"))
    # the second scan, as if every flag counted: msisdn not 11 digits once trimmed (3, 7, 11), channel
    # not a channel (8), outcome NULL (9)
    plan = ingest.validation(src, CHANNELS)
    second = plan.second_checks([1] * len(plan.flags))
    recheck = dict(zip([(c, p) for c, p, _ in second], duck["recheck"][0].values()))
    assert recheck[("msisdn", "msisdn is not an 11-digit string")] == 3
    assert recheck[("channel", "key column is NULL or empty")] == 0
    assert [n for (c, p), n in recheck.items() if c == "channel" and p.startswith("value is not one of")] == [1]
    assert recheck[("outcome", "value is missing (NULL or blank) in a column that is not nullable")] == 1
    examples = {name: rows[0]["msisdn"] for name, rows in duck.items() if name.startswith("example:") and rows}
    assert "1380000\u200b0003" in examples.values() and "13800000009" in examples.values()


def test_numbers_nan_and_infinity_are_refused_alike_on_spark(spark: Any, tmp_path: Path) -> None:
    nan, inf = float("nan"), float("inf")
    billing = write_table(tmp_path / f"billing_{M}.parquet", "billing", [
        {"msisdn": "13800000001", "month": M},
        {"msisdn": "13800000002", "month": M, "total_fee": nan},
        {"msisdn": "13800000003", "month": f" {M}", "total_fee": inf},  # a month that needs trimming
        {"msisdn": "13800000004", "month": M, "total_fee": -inf, "rental_fee": 12.345},  # not a whole fen
        {"msisdn": "138000000", "month": M},  # 9 digits
    ])
    usage = write_table(tmp_path / f"usage_{M}.parquet", "usage", [
        {"msisdn": "13800000001", "month": M, "data_mb": nan, "sms_count": 3.0},
        {"msisdn": "13800000002", "month": M, "data_mb": inf, "sms_count": 3.5},  # a fraction of an SMS
        {"msisdn": "13800000003", "month": M, "data_mb": 1.5, "sms_count": nan},
    ], types={"sms_count": pa.float64()})
    con = duckdb.connect()
    src = _source(con, billing, "billing")
    counts = _counts(con, src, months_clean=False)
    not_finite = "value is not a finite number (NaN or infinity)"
    assert counts[("total_fee", not_finite)] == 3
    assert counts[("rental_fee", "value has more than 2 decimal places (not a whole fen)")] == 1
    assert counts[("msisdn", "flag")] == 1
    duck = _assert_same_on_spark(spark, con, src, months_clean=False, skip=("duplicate_", "load"))
    assert [r["m"] for r in duck["stored_months"]] == [M]  # ' 2026-10' trimmed
    assert _positional(duck["months"]) and sorted(r["month"] for r in duck["months"]) == [f" {M}", M]
    src = _source(con, usage, "usage")
    counts = _counts(con, src, months_clean=True)
    assert counts[("data_mb", not_finite)] == 2
    assert counts[("sms_count", not_finite)] == 1
    assert counts[("sms_count", "value cannot be read as BIGINT without loss")] == 1  # 3.5, not NaN
    _assert_same_on_spark(spark, con, src, months_clean=True, skip=("duplicate_", "load"))


def test_duplicate_keys_and_the_load_are_the_same_on_spark(spark: Any, tmp_path: Path) -> None:
    """On a valid extract the key checks name the same duplicate, and the load's SELECT (trimmed,
    case-folded, cast) gives the same rows."""
    path = write_table(tmp_path / "contact_history.parquet", "contact_history", [
        {"msisdn": "13800000002", "contact_date": "2026-10-03", "channel": "sms", "policy_id": "P1"},
        {"msisdn": " 13800000001", "contact_date": "2026-10-3", "channel": "SMS ", "policy_id": "P1"},
        {"msisdn": "13800000001", "contact_date": "2026-10-03", "channel": "sms", "policy_id": "P1",
         "outcome": "Accepted"},
    ], types={"contact_date": pa.string()})
    con = duckdb.connect()
    src = _source(con, path, "contact_history")
    duck = _assert_same_on_spark(spark, con, src, months_clean=False)
    key = ("13800000001", dt.date(2026, 10, 3), "sms", "P1")
    assert _positional(duck["duplicate_key"]) == [(*key, 2)]
    assert _positional(duck["duplicate_in_file"]) == [(*key, 2)]
    assert sorted(_positional(duck["load"])) == [
        (*key, "accepted"), (*key, "sent"), ("13800000002", dt.date(2026, 10, 3), "sms", "P1", "sent")]


FINITE_CASES = ("CAST('NaN' AS DOUBLE)", "CAST('Infinity' AS DOUBLE)", "CAST('-Infinity' AS DOUBLE)",
                "CAST(1.5 AS DOUBLE)", "CAST(NULL AS DOUBLE)")


def test_ingest_pieces_mean_the_same_on_duckdb_and_spark(spark: Any, tmp_path: Path) -> None:
    """is_finite, full regexp matches, last_character and a read_parquet scan: DuckDB's text on DuckDB,
    the same text rendered for Spark on Spark, and the Spark forms the helpers write, give one answer."""
    con = duckdb.connect()
    finite = ", ".join(dialect.is_finite(v, "DOUBLE") for v in FINITE_CASES)
    want = (False, False, False, True, None)
    assert con.execute(f"SELECT {finite}").fetchone() == want
    assert tuple(spark.sql(dialect.render(f"SELECT {finite}", "spark")).collect()[0]) == want
    spark_forms = ", ".join(dialect.is_finite(v, "DOUBLE", "spark") for v in FINITE_CASES)
    assert tuple(spark.sql(f"SELECT {spark_forms}").collect()[0]) == want
    a_time = "TIMESTAMP '2026-10-03 08:00:00'"
    dates = f"{dialect.is_finite('CAST(? AS DATE)', 'DATE')}, {dialect.is_finite(a_time, 'TIMESTAMP')}"
    assert con.execute(f"SELECT {dates}", ["infinity"]).fetchone() == (False, True)  # DuckDB has infinite dates
    assert dialect.render(f"SELECT {dates}", "spark") == "SELECT TRUE, TRUE"  # Spark's never are
    texts = ["'13800000001'", "'13800000001' || chr(10)", "' 13800000001'", "'1380000000１'", "''", "'a中'"]
    sql = "SELECT " + ", ".join(f"regexp_full_match({t}, '[0-9]{{11}}'), {dialect.last_character(t)}" for t in texts)
    duck = con.execute(sql).fetchone()
    assert duck == (True, "1", False, "\n", False, "1", False, "１", False, "", False, "中")
    assert tuple(spark.sql(dialect.render(sql, "spark")).collect()[0]) == duck  # Java's $ matches before a \n
    folder = tmp_path / "month=2026-09"  # a hive-style folder name must not add a column
    path = write_table(folder / "plans.parquet", "plans", [{"plan_id": "ZX128"}])
    scan = f"SELECT * FROM read_parquet('{path}', hive_partitioning = false) AS f"
    duck_rows = _duckdb(duckdb.connect(), scan)
    assert "month" not in duck_rows[0] and _spark(spark, scan) == duck_rows


# -- the table functions ingest asks the connection for -------------------------------------------
def test_glob_and_parquet_schema_answer_as_duckdb_does(spark: Any, tmp_path: Path) -> None:
    """glob(?) lists files (not folders) sorted, a ``[*]`` matching only a star; parquet_schema gives
    the Parquet tree (a list's list/element levels, a map's key_value) with DuckDB's num_children."""
    table = pa.table({"a": [1], "s": pa.array([{"x": 1, "y": [2]}]), "m": pa.array([[("k", 1)]],
                      pa.map_(pa.string(), pa.int64())), "l": [["z"]]})
    pq.write_table(table, tmp_path / "star_*.parquet")
    pq.write_table(table, tmp_path / "star_1.parquet")
    (tmp_path / "star_dir.parquet").mkdir()
    duck = duckdb.connect()
    con = sparkdb.connect_session(spark, Warehouse(spark, str(tmp_path / "wh")))
    try:
        for pattern in (f"{tmp_path}/star_*", f"{tmp_path}/star_[*].parquet", f"{tmp_path}/none*"):
            sql = "SELECT file FROM glob(?)"
            assert con.execute(sql, [pattern]).fetchall() == duck.execute(sql, [pattern]).fetchall(), pattern
        assert con.execute("SELECT file FROM glob(?)", [f"{tmp_path}/star_*"]).fetchall() == [
            (f"{tmp_path}/star_*.parquet",), (f"{tmp_path}/star_1.parquet",)]  # not the folder
        sql = f"SELECT name, num_children FROM parquet_schema('{tmp_path}/star_[*].parquet')"
        want = [("schema", 4), ("a", None), ("s", 2), ("x", None), ("y", 1), ("list", 1), ("element", None),
                ("m", 1), ("key_value", 2), ("key", None), ("value", None), ("l", 1), ("list", 1), ("element", None)]
        assert duck.execute(sql).fetchall() == want
        assert con.execute(sql).fetchall() == want
        with pytest.raises(sparkdb.InternalError, match="table function"):
            con.execute("SELECT * FROM range(3)")
    finally:
        con.close()


def test_one_bad_extract_is_refused_alike_on_both_engines(spark: Any, tmp_path: Path) -> None:
    """The same message (file, column, example row) and exit 1; the warehouse gets no table."""
    write_table(tmp_path / "in" / f"usage_{M}.parquet", "usage", [
        {"msisdn": "13800000001", "month": M, "sms_count": 3.0},
        {"msisdn": "13800000002", "month": M, "sms_count": 3.5},  # a fraction of an SMS
    ], types={"sms_count": pa.float64()})
    folder = str(tmp_path / "in")
    duck = CliRunner().invoke(app, ["ingest", folder, "--db", str(tmp_path / "mk.duckdb")])
    root = tmp_path / "wh"
    on_spark = CliRunner().invoke(app, ["--engine", "spark", "--warehouse", str(root), "ingest", folder])
    assert duck.exit_code == on_spark.exit_code == 1, (duck.output, on_spark.output)
    assert "sms_count" in duck.output and "13800000002" in duck.output and f"usage_{M}.parquet" in duck.output
    assert on_spark.output == duck.output
    assert not (tmp_path / "mk.duckdb").exists()  # DuckDB refused before making its file
    # the warehouse keeps the empty tables Database makes on open (ingest_log, the outputs'), no extract's
    assert not set(Warehouse(spark, str(root)).tables()) & set(TABLES)
