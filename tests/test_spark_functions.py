"""Every function a rule may call, on DuckDB and on Spark: the same values, or refused on Spark.

The rules are written in DuckDB's dialect and run on ``--engine spark`` through sqlglot and
mktool.dialect.render (issue 16: one set of semantics). This runs each allow-listed function's
example (tests/test_sqlcheck.py's EXAMPLES) and the edge cases below — Sunday, NULL, a negative
number, zero, Chinese text — over the same rows on both engines and compares the values. An
expression whose values differ must be one that ``spark_divergences`` names, so that a Spark run
refuses it (and ``mktool check`` warns); every other one must give DuckDB's values on Spark.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from test_sqlcheck import COLUMNS, EXAMPLES

from mktool.dialect import SPARK, render
from mktool.sqlcheck import DUCKDB_ONLY, check_expression, duckdb_type_of, spark_divergences

ROWS = """
CREATE TABLE customer_view AS SELECT * FROM (VALUES
  ('13800000001', 'Hangzhou', 13, 90.0, 12.5, 120.0, DATE '2020-01-15', ['sms', 'app'], [1, 2, 3], true,
   {'a': 1, 'b': 'x'}),
  ('13800000002', '杭州', 5, 50.0, NULL, 80.0, DATE '2026-05-31', ['app'], [], false, {'a': NULL, 'b': NULL}),
  ('13800000003', NULL, NULL, NULL, 150.0, NULL, NULL, NULL, NULL, NULL, NULL),
  ('13800000004', ' a.b ', 40, 100.0, -3.25, 0.0, DATE '2026-11-01', ['sms'], [5, 0], NULL, {'a': 2, 'b': 'y'}),
  ('13800000005', 'aaa', 0, 99.5, 0.0, -7.0, DATE '2024-02-29', [], [-1], true, {'a': 3, 'b': ''})
) t(msisdn, city, tenure_months, return_rate, arpu, arpu_3m, join_date, channels, l, flag, info)
"""

# Beyond one example per function: the values where the two engines' functions part (found by running
# them): Sunday (DuckDB's dayofweek 0, Spark's 1), a lambda's index (1-based in DuckDB, 0-based in
# Spark), NULL and non-positive logarithms, the first match only, positions ≤ 0, casts that round.
EDGES: dict[str, str] = {
    "dayofweek": "dayofweek(join_date) = 0", "isodow": "isodow(join_date)",
    "date_part dow": "date_part('dow', join_date)", "date_part isodow": "date_part('isodow', join_date)",
    "date_part weekday": "date_part('weekday', join_date)", "extract dow": "extract(dow FROM join_date)",
    "extract isodow": "extract(isodow FROM join_date)", "date_part week": "date_part('week', join_date)",
    "date_part doy": "date_part('doy', join_date)", "lambda index": "list_transform(l, lambda x, i: i)",
    "filter by index": "list_filter(l, lambda x, i: i > 1)",
    "nested lambda": "list_transform(l, lambda x, i: list_transform([10, 20], lambda y: y + i))",
    "isnan null": "isnan(arpu)", "not isnan": "NOT isnan(arpu)", "ln edge": "ln(arpu) > 0",
    "log10 edge": "log(10, arpu) < 1", "log2 edge": "log(2, arpu_3m)", "ln nested": "isnan(ln(arpu))",
    "regexp first": "regexp_replace(city, 'a', '_')", "regexp all": "regexp_replace(city, 'a', '_', 'g')",
    "regexp flags": "regexp_replace(city, 'A', '_', 'gi')",
    "regexp extract": "regexp_extract(city, '([a-z])([a-z])', 2)",
    "regexp flag": "regexp_matches(city, 'H', 'i')", "substring 0": "substring(city, 0, 2)",
    "substring negative": "substring(city, -2, 2)", "left negative": "left(city, -2)",
    "right negative": "right(city, -2)", "strpos unicode": "strpos(city, '州')", "length unicode": "length(city)",
    "split out of range": "split_part(city, '.', 5)", "string_split dot": "string_split(city, '.')",
    "cast decimal": "CAST(arpu AS INTEGER)", "cast half": "CAST(return_rate / 10 AS INTEGER)",
    "cast trunc": "CAST(trunc(arpu) AS INTEGER)", "cast integer": "CAST(tenure_months AS BIGINT)",
    "date minus date": "DATE '2026-10-01' - join_date",
    "date_diff day": "date_diff('day', join_date, DATE '2026-10-01')",
    "date_diff month": "date_diff('month', join_date, DATE '2026-10-01')",
    "month end": "join_date + INTERVAL 1 MONTH", "leap year": "join_date + INTERVAL 1 YEAR",
    "strftime portable": "strftime(join_date, '%Y年%m月%d日 %a')", "strftime day of year": "strftime(join_date, '%j')",
    "strftime letters": "strftime(join_date, 'M%m')", "integer division": "(tenure_months - 20) // 3",
    "modulo": "(tenure_months - 20) % 3", "division": "tenure_months / 4", "round half": "round(return_rate / 10)",
    "round decimal": "round(arpu_3m / 7, 2)", "concat null": "concat(city, NULL, 'x')", "pipe null": "city || NULL",
    "ilike unicode": "city ILIKE 'HANG%'", "in list": "city IN ('杭州', 'Hangzhou')",
    "greatest null": "greatest(arpu, NULL, 3)", "between": "arpu BETWEEN 0 AND 12.5",
}


def _same(value: Any) -> Any:
    """A value as both engines' drivers can be compared: NaN as a marker, decimals and floats as floats
    to 9 places, midnight timestamps as dates, Spark's Rows as dicts."""
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else round(value, 9)
    if isinstance(value, Decimal):
        return round(float(value), 9)
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value.date()
    if isinstance(value, list | tuple):
        return [_same(v) for v in value]
    if hasattr(value, "asDict"):
        return {k: _same(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {k: _same(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def engines(spark: Any) -> Any:
    duck = duckdb.connect()
    duck.execute(ROWS)
    rows = duck.sql("SELECT * FROM customer_view").to_arrow_table()  # as mktool.sparkdb hands Spark a table
    spark.createDataFrame(rows).createOrReplaceTempView("customer_view")
    yield duck, spark
    spark.catalog.dropTempView("customer_view")
    duck.close()


CASES = {**{f"example {k}": v for k, v in EXAMPLES.items() if k not in DUCKDB_ONLY}, **EDGES}


def test_every_rule_function_gives_duckdbs_values_on_spark_or_is_refused_there(engines: Any) -> None:
    duck, spark = engines
    differ, refused_alike, failures = [], [], []
    for name, source in CASES.items():
        checked = check_expression(source, location=name, columns=COLUMNS, kind="scalar")
        refused = spark_divergences(checked.duckdb_sql, duckdb_type_of(duck, "customer_view"))
        query = f"SELECT ({checked.duckdb_sql}) AS v FROM customer_view ORDER BY msisdn"
        expected = [_same(r[0]) for r in duck.execute(query).fetchall()]
        try:
            got: Any = [_same(r[0]) for r in spark.sql(render(query, SPARK)).collect()]
        except Exception as exc:  # noqa: BLE001 - any Spark failure is a difference
            got = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        if got != expected and not refused:
            failures.append(f"{name}: {source}\n  DuckDB {expected}\n  Spark  {got}\n  ({render(query, SPARK)})")
        elif got != expected:
            differ.append(name)
        elif refused:
            refused_alike.append(name)
    assert not failures, "different on Spark and not refused:\n" + "\n".join(failures)
    # The refusals are not idle: each of these differs on these rows (so the check is needed) ...
    assert {"regexp first", "substring 0", "left negative", "right negative", "cast decimal", "date minus date",
            "strftime day of year", "strftime letters", "date_diff month"} <= set(differ), differ
    # ... and the renderings carry these over (they differed before mktool.dialect rewrote them).
    for name in ("dayofweek", "isodow", "date_part dow", "extract isodow", "lambda index", "filter by index",
                 "nested lambda", "isnan null", "not isnan", "ln edge", "log10 edge", "ln nested"):
        assert name not in differ and name not in refused_alike, name
