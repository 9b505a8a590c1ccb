"""The engine-differing pieces export needs, per dialect: the draw, string hashing, date
arithmetic, integer division, and rendering a named query (mktool/dialect.py).

Each piece: DuckDB runs its DuckDB rendering to hand-computed values; its Spark rendering is
the text expected and parses as Spark SQL; and the DuckDB rendering, put through sqlglot for
Spark (what a Spark run executes), keeps its meaning: translated back to DuckDB it gives the
same values. Where pyspark is installed the Spark renderings also run on Spark.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb
import pytest
import sqlglot

from mktool import dialect
from mktool.dialect import Query

TWO_32 = 4294967296


def duck(sql: str, params: dict[str, Any] | None = None) -> Any:
    row = duckdb.connect().execute(f"SELECT {sql}", params or {}).fetchone()
    assert row is not None
    return row[0]


def via_spark(sql: str) -> str:
    """The DuckDB rendering as Spark runs it (sqlglot), then read back into DuckDB's dialect."""
    spark = dialect.render(f"SELECT {sql} AS v", "spark")
    return sqlglot.transpile(spark, read="spark", write="duckdb")[0]


# -- the draw -------------------------------------------------------------------------------------
# md5 prefixes worked out by hand: md5('a') = 0cc175b9…, 0x0cc175b9 = 12·16⁶ + 12·16⁵ + 16⁴ + 7·16³
# + 5·16² + 11·16 + 9 = 214005177; md5('13800000001|P1|2026-11-01') = 9cb0ca40… = 2628831808
# (above 2³¹: a 32-bit INT would wrap); md5('13800000002|plan|tiebreak') = 0e8bb71f… = 244037407.
DRAWS = [
    (("'a'",), 214005177),
    (("'13800000001'", "'P1'", "'2026-11-01'"), 2628831808),
    (("'13800000002'", "'plan'", "'tiebreak'"), 244037407),
]


@pytest.mark.parametrize(("parts", "n"), DRAWS)
def test_draw_on_duckdb_is_the_md5_prefix_over_two_to_the_32(parts: tuple[str, ...], n: int) -> None:
    assert duck(dialect.draw(parts)) == n / TWO_32
    assert duck(f"typeof({dialect.draw(parts)})") == "DOUBLE"


def test_draw_keeps_the_values_of_the_hex_cast_it_replaces() -> None:
    """The committed snapshot's hold-outs and tie-breaks: the old CAST('0x' || …) gave these draws."""
    con = duckdb.connect()
    con.execute("CREATE TABLE k AS SELECT '138' || lpad(CAST(i AS VARCHAR), 8, '0') AS m, "
                "'P' || CAST(i % 7 AS VARCHAR) AS p FROM range(20000) r(i)")
    old = "(CAST(('0x' || substr(md5(m || '|' || p), 1, 8)) AS BIGINT) / 4294967296.0)"
    new = dialect.draw(("m", "p"))
    differ, low, high = con.execute(f"SELECT count_if({old} <> {new}), min({new}), max({new}) FROM k").fetchone()  # type: ignore[misc]
    assert differ == 0 and 0 <= low < 0.001 and 0.999 < high < 1


def test_draw_is_null_when_a_part_is_null() -> None:
    assert duck(dialect.draw(("CAST(NULL AS VARCHAR)", "'P1'"))) is None


def test_spark_rendering_of_the_draw() -> None:
    spark = dialect.draw(("p.msisdn", "p.policy_id"), "spark")
    assert spark == ("(CAST(CAST(conv(substr(md5(p.msisdn || '|' || p.policy_id), 1, 8), 16, 10) AS BIGINT) AS DOUBLE)"
                     " / CAST(4294967296 AS DOUBLE))")
    sqlglot.parse_one(f"SELECT {spark} AS v FROM p", read="spark")
    with pytest.raises(ValueError):
        dialect.draw(())


@pytest.mark.parametrize(("parts", "n"), DRAWS)
def test_draw_rendered_by_sqlglot_for_spark_means_the_same(parts: tuple[str, ...], n: int) -> None:
    """What a Spark run executes is sqlglot's rendering of the DuckDB text: locate over md5 digits."""
    spark = dialect.render(f"SELECT {dialect.draw(parts)} AS v", "spark")
    assert "LOCATE(" in spark and "'0x" not in spark and "AS BIGINT" in spark
    assert duck(via_spark(dialect.draw(parts))[len("SELECT "):-len(" AS v")]) == n / TWO_32


# -- string hashing, dates, integer division ---------------------------------------------------------
def test_sha256_hex_per_dialect() -> None:
    # sha256('pepper13800000001'), from hashlib
    want = "1fc6d8e8eb2da7c8e5e86d3090802654375f984142989275b0007f1f1127b5c8"
    assert duck(dialect.sha256_hex("'pepper' || '13800000001'")) == want
    assert dialect.sha256_hex("x", "spark") == "sha2(x, 256)"
    sqlglot.parse_one("SELECT sha2(x, 256) FROM t", read="spark")
    assert "SHA2('pepper' || '13800000001', 256)" in dialect.render(
        f"SELECT {dialect.sha256_hex(chr(39) + 'pepper' + chr(39) + ' || ' + chr(39) + '13800000001' + chr(39))}",
        "spark")


@pytest.mark.parametrize(("date", "days", "want"), [
    ("DATE '2026-11-01'", "30", dt.date(2026, 10, 2)),  # the 30-day cool-down's first blocking day
    ("DATE '2026-03-01'", "1", dt.date(2026, 2, 28)),
    ("DATE '2024-03-01'", "1", dt.date(2024, 2, 29)),
    ("DATE '2026-11-01'", "0", dt.date(2026, 11, 1)),
])
def test_days_before_per_dialect(date: str, days: str, want: dt.date) -> None:
    assert duck(dialect.days_before(date, days)) == want
    assert duck(f"typeof({dialect.days_before(date, days)})") == "DATE"
    assert duck(via_spark(dialect.days_before(date, days))[len("SELECT "):-len(" AS v")]) == want
    spark = dialect.days_before(date, days, "spark")
    assert spark == f"date_sub(CAST({date} AS DATE), CAST({days} AS INT))"
    sqlglot.parse_one(f"SELECT {spark}", read="spark")


def test_days_before_binds_a_date_parameter() -> None:
    assert duck(dialect.days_before("$d", "$n"), {"d": dt.date(2026, 11, 1), "n": 31}) == dt.date(2026, 10, 1)


@pytest.mark.parametrize(("a", "b", "want"), [("7", "2", 3), ("6", "3", 2), ("0", "5", 0),
                                               ("4000000000", "3", 1333333333)])
def test_int_div_per_dialect(a: str, b: str, want: int) -> None:
    assert duck(dialect.int_div(a, b)) == want
    assert dialect.int_div(a, b, "spark") == f"(({a}) div ({b}))"
    sqlglot.parse_one(f"SELECT {dialect.int_div(a, b, 'spark')}", read="spark")
    assert " DIV " in dialect.render(f"SELECT {dialect.int_div(a, b)}", "spark")


def test_int_div_binds_its_operands_whole() -> None:
    """⌊(10·3 + 4 − 1) / 4⌋ = 8: unwrapped, the text read 10 * 3 + 4 - 1 // 4 = 34."""
    assert duck(dialect.int_div("10 * 3 + 4 - 1", "4")) == 8
    assert duck(dialect.int_div("7", "1 + 1")) == 3


# -- a named query ------------------------------------------------------------------------------
def test_query_renders_per_dialect() -> None:
    q = Query("pick", "SELECT a FROM t WHERE c = $round", {"round": 2})
    assert q.render() == q.sql and q.render("duckdb") == q.sql
    assert q.render("spark") == "SELECT a FROM t WHERE c = :round"
    with pytest.raises(ValueError):
        q.render("oracle")  # type: ignore[arg-type]


def test_spark_renderings_run_on_spark(spark: Any) -> None:
    """Runs where pyspark (and Java) are installed; the DuckDB values are checked above."""
    session = spark
    for parts, n in DRAWS:
        native = session.sql(f"SELECT {dialect.draw(parts, 'spark')}").collect()[0][0]
        rendered = session.sql(dialect.render(f"SELECT {dialect.draw(parts)}", "spark")).collect()[0][0]
        assert native == rendered == n / TWO_32
    assert session.sql(f"SELECT {dialect.days_before(chr(39) + '2026-11-01' + chr(39), '30', 'spark')}").collect(
        )[0][0] == dt.date(2026, 10, 2)
