"""Exact money (docs/money.md): the rounding helper against Python's exact decimals, its Spark
rendering, and money from the extracts to the lists with hand-computed values.

The same file passes on every engine release the project supports (it is run with DuckDB
2.0.0 and 2.0.1): nothing in it depends on how an engine rounds a DOUBLE.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
from conftest import cycle_dir, month_rows, write_table
from typer.testing import CliRunner

from mktool import dialect
from mktool.cli import app
from mktool.config import shipped_matrices_dir
from mktool.contract import TABLES
from mktool.database import replace_month
from mktool.plan import (
    CANDIDATES_SQL,
    PAIRS_SQL,
    exact_sql,
    pairs_sql,
    recommend_query,
)
from mktool.planconfig import PlanConfig
from mktool.scoremodel import base_sql, view_params

M, P1, P2 = "2026-10", "2026-09", "2026-08"
HALF_FEN = "13800000001"  # three-item sums 191.51 and 191.52: current total 191.515
SPEC = "13800000002"  # SPEC §5 worked example
REPEATING = "13800000003"  # 100.01, 100.01, 100.00: 100.006666…
NEGATIVE = "13800000004"  # -0.01 and 0.00: -0.005
N38 = "9" * 38  # the widest exact integer on both engines


def sql_value(con: duckdb.DuckDBPyConnection, expr: str) -> Any:
    return con.execute(f"SELECT {expr}").fetchone()[0]


# -- the helpers, DuckDB rendering ------------------------------------------------------------------
@pytest.mark.parametrize(("literal", "scale", "expected"), [
    ("CAST(-0.005 AS DECIMAL(18,3))", 2, "-0.01"),   # half away from zero, not to even, not towards +inf
    ("CAST(0.005 AS DECIMAL(18,3))", 2, "0.01"),
    ("CAST(-0.004999 AS DECIMAL(18,6))", 2, "0.00"),
    ("CAST(191.515 AS DECIMAL(18,3))", 2, "191.52"),  # DuckDB 2.0.1's round() on the DOUBLE gives 191.51
    ("CAST(191.515 AS DOUBLE)", 2, "191.52"),         # a DOUBLE is read at 12 decimals first: 191.515000000000
    ("CAST(0.125 AS DECIMAL(18,3))", 2, "0.13"),      # banker's rounding would give 0.12
    ("CAST(-2.5 AS DECIMAL(18,1))", 0, "-3"),
    ("CAST(1.234375 AS DECIMAL(18,6))", 4, "1.2344"),  # SPEC §5: 158 / 128
    ("CAST(1.036363636364 AS DECIMAL(38,12))", 4, "1.0364"),  # SPEC §5: 228 / 220
    ("CAST(39.9997 AS DECIMAL(38,12))", 2, "40.00"),
])
def test_round_half_away_from_zero(literal, scale, expected):
    con = duckdb.connect()
    got = sql_value(con, dialect.round_half_away(literal, scale))
    assert got == Decimal(expected) and str(got) == expected
    assert dialect.py_round_half_away(Decimal(sql_value(con, f"CAST({literal} AS VARCHAR)")),
                                      scale) == Decimal(expected)


def test_rounding_agrees_with_exact_decimals_on_random_values():
    """The class, not the examples: 2,000 random amounts (and every half-unit among them) at
    several scales, both signs, against Python's exact ROUND_HALF_UP (which is half away from zero)."""
    rng = random.Random(20261001)
    values = [Decimal(rng.randint(-10**14, 10**14)).scaleb(-rng.randint(0, 12)) for _ in range(2000)]
    values += [Decimal(k * 10 + 5).scaleb(-3) for k in range(-50, 50)]  # x.xx5: every half fen around zero
    con = duckdb.connect()
    con.execute("CREATE TABLE v (x DECIMAL(38,12))")
    con.executemany("INSERT INTO v VALUES (?)", [[v] for v in values])
    for scale in (0, 2, 4, 6):
        got = [r[0] for r in con.execute(f"SELECT {dialect.round_half_away('x', scale, precision=38)} FROM v "
                                         "ORDER BY rowid").fetchall()]
        assert got == [dialect.py_round_half_away(v, scale) for v in values], scale


@pytest.mark.parametrize(("num", "den", "expected"), [
    (7, 2, 4), (-7, 2, -4), (7, -2, -4), (-7, -2, 4), (5, 3, 2), (4, 3, 1), (-4, 3, -1), (1, 3, 0), (-1, 2, -1),
    (0, 5, 0), (10**30 + 1, 2, 5 * 10**29 + 1), (1, 0, None),
])
def test_div_half_away(num, den, expected):
    assert sql_value(duckdb.connect(), dialect.div_half_away(str(num), str(den))) == expected


def test_averages_are_exact_decimals():
    con = duckdb.connect()
    assert sql_value(con, dialect.average("30002", "3", 2)) == Decimal("100.006667")  # 300.02 / 3
    assert sql_value(con, dialect.average("38303", "2", 2)) == Decimal("191.515000")
    assert sql_value(con, dialect.average("-1", "2", 2)) == Decimal("-0.005000")
    assert sql_value(con, dialect.average("5", "0", 2)) is None
    # beyond the 64-bit fast path (negative, or above 4·10¹⁴ fen) the 128-bit formula gives the same rule
    assert sql_value(con, dialect.average("CAST(500000000000000000 AS BIGINT)", "3", 2)) == Decimal(
        "1666666666666666.666667")
    assert sql_value(con, dialect.average("-30002", "3", 2)) == Decimal("-100.006667")
    assert sql_value(con, dialect.percent("-3", "-4")) == Decimal("75.000000")
    assert sql_value(con, dialect.percent("29000", "33000")) == Decimal("87.878788")  # 100 × 290 / 330
    assert sql_value(con, dialect.percent("33000", "33000")) == Decimal("100.000000")
    assert con.execute(f"SELECT typeof({dialect.average('1', '3', 2)})").fetchone()[0] == "DECIMAL(38,6)"


@pytest.mark.parametrize(("x", "expected"), [
    ("(5.93 + 5.54 + 3.53) / 3", 5_000_000),  # 4.999999999999999 MB is 5.000000 (SPEC §5)
    ("4.9999994", 4_999_999), ("4.9999996", 5_000_000), ("-2.5", -2_500_000), ("737.93", 737_930_000),
])
def test_double_units_rounds_a_measured_quantity(x, expected):
    assert sql_value(duckdb.connect(), dialect.double_units(f"CAST({x} AS DOUBLE)", 6)) == expected


def test_money_is_read_exactly_from_double_or_decimal_storage():
    con = duckdb.connect()
    for stored in ("CAST(191.51 AS DOUBLE)", "CAST(191.51 AS DECIMAL(18,2))", "CAST(191.51 AS DECIMAL(18,6))"):
        assert sql_value(con, dialect.fen(stored)) == 19151
        assert sql_value(con, dialect.read_money(stored)) == Decimal("191.51")
    assert sql_value(con, dialect.decimal_units(dialect.read_unit_price("CAST(0.29 AS DOUBLE)"), 6)) == 290_000
    assert sql_value(con, dialect.money_text("CAST(228 AS DECIMAL(38,12))")) == "228.00"


def test_python_twins():
    assert dialect.py_round_half_away(-0.005, 2) == Decimal("-0.01")
    assert dialect.py_round_half_away(2.675, 2) == Decimal("2.68")  # the decimal written, not the float 2.67499…
    assert dialect.py_units("0.6", 6) == 600_000 and dialect.exact_decimal(0.6) == Decimal("0.6")
    with pytest.raises(TypeError):
        dialect.exact_decimal(True)


# -- the Spark rendering --------------------------------------------------------------------------
def renderings(d: dialect.Dialect) -> dict[str, str]:
    return {
        "read_money": dialect.read_money("total_fee", d),
        "fen": dialect.fen("total_fee", d),
        "unit_price": dialect.decimal_units(dialect.read_unit_price("data_overage_per_mb", d), 6, d),
        "double_units": dialect.double_units("data_mb_3m", 6, d),
        "div_half_away": dialect.div_half_away("a", "b", d),
        "round_half_away": dialect.round_half_away("x", 4, d),
        "money": dialect.money("x", d),
        "money_text": dialect.money_text("x", d),
        "average": dialect.average("s", "n", 2, d),
        "percent": dialect.percent("a", "b", d),
    }


@pytest.mark.parametrize("name", sorted(renderings("duckdb")))
def test_every_rendering_parses_in_its_dialect(name):
    duck, spark = renderings("duckdb")[name], renderings("spark")[name]
    sqlglot.parse_one(f"SELECT {duck} AS v FROM t", read="duckdb")
    tree = sqlglot.parse_one(f"SELECT {spark} AS v FROM t", read="spark")
    spark_sql = tree.sql(dialect="spark").upper()
    assert "HUGEINT" not in spark_sql and "INT128" not in spark_sql and "//" not in spark_sql
    assert "VARCHAR" not in spark_sql  # Spark's text type is STRING


def spark_product_scale(width: int, scale: int) -> int:
    """The scale Spark gives DECIMAL(width,0) × 10⁻ˢᶜᵃˡᵉ (a literal of at most scale + 1 digits) with
    spark.sql.decimalOperations.allowPrecisionLoss=true, its default: DecimalPrecision's product
    type DECIMAL(p1 + p2 + 1, s1 + s2), cut to 38 digits by keeping the integer digits and at least
    min(scale, 6) decimals."""
    precision = width + (scale + 1) + 1
    if precision <= 38:
        return scale
    return max(38 - (precision - scale), min(scale, 6))


def test_units_decimal_duckdb_text_is_unchanged():
    """DuckDB's text (and so its results and the snapshot) is not touched by the Spark fix."""
    assert dialect.units_decimal("u", 12) == "CAST(CAST(u AS DECIMAL(38,0)) * 0.000000000001 AS DECIMAL(38,12))"
    assert dialect.units_decimal("u", 6, precision=18) == "CAST(CAST(u AS DECIMAL(18,0)) * 0.000001 AS DECIMAL(18,6))"
    assert dialect.units_decimal("u", 2) == "CAST(CAST(u AS DECIMAL(38,0)) * 0.01 AS DECIMAL(38,2))"
    assert dialect.units_decimal("u", 0) == "CAST(u AS DECIMAL(38,0))"


def test_spark_units_keep_every_decimal_of_the_product():
    """The class: for every scale and both widths, the Spark rendering's product keeps the scale asked
    for (the old DECIMAL(38,0) × 10⁻¹² kept 6), and it reads the units as wide as that allows."""
    assert dialect.units_decimal("u", 12, "spark") == (
        "CAST(CAST(u AS DECIMAL(24,0)) * 0.000000000001 AS DECIMAL(38,12))")
    assert spark_product_scale(38, 12) == 6  # the bug, as Spark's rule computes it
    for precision in (18, 38):
        for scale in range(1, min(precision, 35) + 1):
            text = dialect.units_decimal("u", scale, "spark", precision=precision)
            width = int(text.split("AS DECIMAL(", 1)[1].split(",", 1)[0])
            assert spark_product_scale(width, scale) == scale, (precision, scale, text)
            assert width == (18 if precision <= 18 else 38 if scale <= 6 else 36 - scale), (precision, scale)
            assert text.endswith(f"AS DECIMAL({precision},{scale}))")
            sqlglot.parse_one(f"SELECT {text}", read="spark")


def test_units_decimal_refuses_what_it_cannot_render_exactly():
    with pytest.raises(ValueError, match="at most 35"):
        dialect.units_decimal("u", 36, "spark")
    for scale, precision in ((3, 2), (-1, 38), (2, 39)):
        with pytest.raises(ValueError, match="not a decimal type"):
            dialect.units_decimal("u", scale, precision=precision)
    assert dialect.units_decimal("u", 36)  # DuckDB's DECIMAL(38,0) × 10⁻³⁶ is exact: its text stays


def test_duckdb_units_text_rendered_for_spark_keeps_every_decimal():
    """The steps build units_decimal in DuckDB's dialect (the plan's 12-decimal rates): render() gives
    its product the Spark rendering's width, and leaves every other product as sqlglot renders it."""
    for precision in (18, 38):
        for scale in range(1, 13):
            duck = dialect.units_decimal("u", scale, precision=precision)
            rendered = dialect.render(f"SELECT {duck} FROM t", "spark")
            native = dialect.units_decimal("u", scale, "spark", precision=precision)
            assert rendered.replace(" ", "") == f"SELECT{native}FROMt".replace(" ", ""), (precision, scale)
    for other in ("CAST(u AS DECIMAL(38,0)) * 0.5", "CAST(u AS DECIMAL(38,2)) * 0.000000000001",
                  "u * 0.000000000001", "CAST(u AS DECIMAL(38,0)) * 0.000000000002",
                  "CAST(u AS DECIMAL(38,0)) * 1.000000000001"):
        assert dialect.render(f"SELECT {other}", "spark") == sqlglot.transpile(f"SELECT {other}", read="duckdb",
                                                                               write="spark")[0]
    assert dialect.render("SELECT 1; SELECT 2", "spark") == "SELECT 1;\nSELECT 2"


@pytest.mark.parametrize("name", sorted(renderings("duckdb")))
def test_duckdb_rendering_put_through_render_keeps_exact_integers_for_spark(name):
    """What a Spark run executes is the DuckDB text through render(): no INT128 (Spark refuses it)
    and no DIV over exact integers (Spark's DIV is a BIGINT and wraps silently past 2⁶³)."""
    spark_sql = dialect.render(f"SELECT {renderings('duckdb')[name]} AS v FROM t", "spark").upper()
    assert "INT128" not in spark_sql and "HUGEINT" not in spark_sql
    if name in ("average", "percent"):  # a 64-bit fast path (DIV of BIGINTs) beside the exact quotient
        assert " DIV " in spark_sql and " % " in spark_sql
    else:
        assert " DIV " not in spark_sql
    sqlglot.parse_one(spark_sql, read="spark")


def test_render_leaves_64_bit_integer_division_as_div():
    """int_div of BIGINTs stays Spark's DIV (exact below 2⁶³, and cheap); only HUGEINT's // changes."""
    assert " DIV " in dialect.render(f"SELECT {dialect.int_div('a', 'b')}", "spark")
    assert " DIV " in dialect.render(f"SELECT {dialect.div_half_away_64('a', 'b')}", "spark")
    exact = dialect.render(f"SELECT {dialect.div_toward_zero('a', 'b')}", "spark")
    assert " DIV " not in exact and " % " in exact and "DECIMAL(38, 0)" in exact


def test_spark_integer_division_is_exact():
    spark = dialect.div_half_away("a", "b", "spark")
    assert "DECIMAL(38,0)" in spark and " % " in spark  # (a − a mod b) / b: an exact integer in Spark's decimals
    with pytest.raises(ValueError):
        dialect.money("x", "oracle")  # type: ignore[arg-type]


SPARK_VECTORS = [
    (dialect.div_half_away("7", "2"), dialect.div_half_away("7", "2", "spark"), 4),
    (dialect.div_half_away("-7", "2"), dialect.div_half_away("-7", "2", "spark"), -4),
    (dialect.div_half_away("-1", "3"), dialect.div_half_away("-1", "3", "spark"), 0),
    (dialect.money("CAST(191.515 AS DECIMAL(18,3))"), dialect.money("CAST(191.515 AS DECIMAL(18,3))", "spark"),
     Decimal("191.52")),
    (dialect.money("CAST(-0.005 AS DECIMAL(18,3))"), dialect.money("CAST(-0.005 AS DECIMAL(18,3))", "spark"),
     Decimal("-0.01")),
    (dialect.average("30002", "3", 2), dialect.average("30002", "3", 2, "spark"), Decimal("100.006667")),
    (dialect.average("-30002", "3", 2), dialect.average("-30002", "3", 2, "spark"), Decimal("-100.006667")),
    (dialect.percent("29000", "33000"), dialect.percent("29000", "33000", "spark"), Decimal("87.878788")),
    (dialect.double_units("CAST(4.9999996 AS DOUBLE)", 6),
     dialect.double_units("CAST(4.9999996 AS DOUBLE)", 6, "spark"), 5_000_000),
    (dialect.money_text("CAST(228 AS DECIMAL(38,12))"), dialect.money_text("CAST(228 AS DECIMAL(38,12))", "spark"),
     "228.00"),
    *[(f("duckdb"), f("spark"), want) for f, want in [
        # 12 decimals (the plan's rates): DECIMAL(38,0) × 10⁻¹² kept 6 on Spark (0.758860000000)
        (lambda d: dialect.units_decimal("758860381861", 12, d), Decimal("0.758860381861")),
        (lambda d: dialect.units_decimal("-758860381861", 12, d), Decimal("-0.758860381861")),
        (lambda d: dialect.units_decimal(dialect.div_toward_zero("1000000000000", "3", d), 12, d),
         Decimal("0.333333333333")),
        (lambda d: dialect.units_decimal("999999999999999999999999", 12, d),  # the top of Spark's exact range
         Decimal("999999999999.999999999999")),
        (lambda d: dialect.units_decimal("758860381861", 12, d, precision=18), Decimal("0.758860381861")),
        (lambda d: dialect.exact_rate("2", "3", 12, d), Decimal("0.666666666667")),
        (lambda d: dialect.exact_rate("-2", "3", 12, d), Decimal("-0.666666666667")),
        (lambda d: dialect.round_half_away("CAST(0.758860381861 AS DECIMAL(38,12))", 12, d, precision=38),
         Decimal("0.758860381861")),
        (lambda d: dialect.round_half_away("CAST(0.0000000000005 AS DECIMAL(38,13))", 12, d, precision=38),
         Decimal("0.000000000001")),
        (lambda d: dialect.quantity_ratio("CAST(1 AS DOUBLE)", "CAST(3 AS DOUBLE)", 12, d),
         Decimal("0.333333333333")),
        (lambda d: dialect.quantity_ratio("CAST(0.5 AS DOUBLE)", "CAST(3 AS DOUBLE)", 12, d),
         Decimal("0.166666666667")),
        # 38-digit counts at 0, 2, 4 and 6 decimals: every digit kept
        (lambda d: dialect.units_decimal(N38, 0, d), Decimal(N38)),
        (lambda d: dialect.units_decimal(N38, 2, d), Decimal(N38[:-2] + "." + N38[-2:])),
        (lambda d: dialect.units_decimal(f"-{N38}", 2, d), Decimal("-" + N38[:-2] + "." + N38[-2:])),
        (lambda d: dialect.units_decimal(N38, 4, d), Decimal(N38[:-4] + "." + N38[-4:])),
        (lambda d: dialect.units_decimal(f"-{N38}", 6, d), Decimal("-" + N38[:-6] + "." + N38[-6:])),
        # 38-digit operands of the exact division; a 32-digit quotient (Spark's exact range)
        (lambda d: dialect.div_half_away("10000000000000000000000000000000000000", "1000000", d), 10 ** 31),
        (lambda d: dialect.div_half_away("99999999999999999999999999999999", "1", d), 10 ** 32 - 1),
        (lambda d: dialect.div_half_away("-5", "2", d), -3),
        (lambda d: dialect.div_half_away("5", "-2", d), -3),
        # half-way cases at 2, 4 and 6 decimals, both signs
        (lambda d: dialect.exact_rate("1", "8", 2, d), Decimal("0.13")),
        (lambda d: dialect.exact_rate("-1", "8", 2, d), Decimal("-0.13")),
        (lambda d: dialect.exact_rate("1", "2000000", 6, d), Decimal("0.000001")),
        (lambda d: dialect.exact_rate("-1", "2000000", 6, d), Decimal("-0.000001")),
        (lambda d: dialect.round_half_away("CAST(-1.23445 AS DECIMAL(38,12))", 4, d), Decimal("-1.2345")),
        (lambda d: dialect.round_half_away("CAST(0.0000005 AS DECIMAL(38,12))", 6, d), Decimal("0.000001")),
        (lambda d: dialect.round_half_away("CAST(-0.0000005 AS DECIMAL(38,12))", 6, d), Decimal("-0.000001")),
        (lambda d: dialect.quantity_ratio("CAST(450.45 AS DOUBLE)", "CAST(1000 AS DOUBLE)", 4, d),
         Decimal("0.4505")),
        # the 128-bit paths of the averages and percentages
        (lambda d: dialect.average("CAST(500000000000000000 AS BIGINT)", "3", 2, d),
         Decimal("1666666666666666.666667")),
        (lambda d: dialect.average("12345678901234567890123456789", "7", 2, d),  # 7 × …938.27 = …567.89
         Decimal("17636684144620811271604938.270000")),
        (lambda d: dialect.percent("2", "3", d), Decimal("66.666667")),
    ]],
]


def test_duckdb_rendering_gives_the_vectors_results():
    con = duckdb.connect()
    assert [sql_value(con, duck) for duck, _, _ in SPARK_VECTORS] == [want for _, _, want in SPARK_VECTORS]


def test_spark_rendering_gives_the_same_results_on_spark(spark):
    session = spark
    got = [session.sql(f"SELECT {spark}").collect()[0][0] for _, spark, _ in SPARK_VECTORS]
    assert got == [want for _, _, want in SPARK_VECTORS]


def test_duckdb_units_text_rendered_for_spark_gives_the_same_results_on_spark(spark):
    """What a Spark run of the plan step executes: units_decimal's DuckDB text through render()."""
    vectors = [(dialect.units_decimal("758860381861", 12), Decimal("0.758860381861")),
               (dialect.units_decimal("-333333333333", 12), Decimal("-0.333333333333")),
               (dialect.units_decimal("999999999999999999999999", 12), Decimal("999999999999.999999999999")),
               (dialect.units_decimal("CAST(758860381861 AS BIGINT)", 12, precision=18), Decimal("0.758860381861")),
               (dialect.units_decimal(f"-{N38}", 6), Decimal("-" + N38[:-6] + "." + N38[-6:]))]
    con = duckdb.connect()
    assert [sql_value(con, duck) for duck, _ in vectors] == [want for _, want in vectors]
    session = spark
    got = [session.sql(dialect.render(f"SELECT {duck}", "spark")).collect()[0][0] for duck, _ in vectors]
    assert got == [want for _, want in vectors]


def test_duckdb_rendering_through_render_gives_the_same_results_on_spark(spark):
    """Every vector's DuckDB text, rendered by render() as a Spark run of a step renders it, gives the
    expected value on Spark too (10³¹ and 10³²−1 quotients: DIV would have wrapped them)."""
    session = spark
    got = [session.sql(dialect.render(f"SELECT {duck}", "spark")).collect()[0][0] for duck, _, _ in SPARK_VECTORS]
    assert got == [want for _, _, want in SPARK_VECTORS]


def test_spark_refuses_a_count_beyond_its_exact_range(spark):
    """10²⁴ pico units (10¹² at 12 decimals) do not fit the DECIMAL(24,0) Spark reads them into: an
    error (Spark's default ANSI mode), never a rounded value."""
    session = spark
    assert session.conf.get("spark.sql.ansi.enabled") == "true"
    with pytest.raises(Exception, match="NUMERIC_VALUE_OUT_OF_RANGE"):
        session.sql(f"SELECT {dialect.units_decimal('1' + '0' * 24, 12, 'spark')}").collect()


# -- from the extracts to the lists ---------------------------------------------------------------
def three_item(rental: float, data_overage: float, addon: float, total: float | None = None,
               discount: float = 0.0) -> dict[str, Any]:
    fees = {"rental_fee": rental, "voice_overage_fee": 0.0, "data_overage_fee": data_overage, "addon_fee": addon}
    return {**fees, "total_fee": total if total is not None else rental + data_overage + addon,
            "discount_fee": discount, "ld_fee": 0.0}


def extracts(folder: Path) -> Path:
    subs = [{"msisdn": m, "month": M, "plan_id": "ZX128", "join_date": dt.date(2026, 3, 1)}
            for m in (HALF_FEN, SPEC, REPEATING, NEGATIVE)]
    billing = [
        # 191.51 in M-1 and 191.52 in M (no M-2 row): current_total_3m = 191.515 → 191.52 in the lists
        {"msisdn": HALF_FEN, "month": P1, **three_item(128.0, 33.51, 30.0)},
        {"msisdn": HALF_FEN, "month": M, **three_item(128.0, 33.52, 30.0)},
        # SPEC §5: rental 128, data overage 62, add-on 30 every month: current total 220
        *({"msisdn": SPEC, "month": m, **three_item(128.0, 62.0, 30.0)} for m in (P2, P1, M)),
        # 100.01, 100.01, 100.00: every average is 100.006666… → 100.006667 in the view, 100.01 shown
        {"msisdn": REPEATING, "month": P2, **three_item(80.0, 10.01, 10.0)},
        {"msisdn": REPEATING, "month": P1, **three_item(80.0, 10.01, 10.0)},
        {"msisdn": REPEATING, "month": M, **three_item(80.0, 10.0, 10.0)},
        # a refund month: -0.01 and 0.00 average to -0.005, shown as -0.01 (half away from zero)
        {"msisdn": NEGATIVE, "month": P1, **three_item(0.0, -0.01, 0.0)},
        {"msisdn": NEGATIVE, "month": M, **three_item(0.0, 0.0, 0.0)},
    ]
    usage = [
        *month_rows(HALF_FEN, [P1, M], data_mb=500.0, voice_out_min=300.0),
        *month_rows(SPEC, [P2, P1, M], data_mb=737.93, voice_out_min=300.0),
        *month_rows(REPEATING, [P2, P1, M], data_mb=100.0, voice_out_min=100.0),
        *month_rows(NEGATIVE, [P1, M], data_mb=100.0, voice_out_min=100.0),
    ]
    plans = [
        {"plan_id": "ZX128", "plan_name": "自选组合128", "monthly_rental": 128.0, "included_data_mb": 600.0,
         "included_voice_min": 650.0},
        {"plan_id": "ZX158", "plan_name": "自选组合158", "monthly_rental": 158.0, "included_data_mb": 600.0,
         "included_voice_min": 900.0, "data_overage_per_mb": 0.29},
        {"plan_id": "ZX98", "plan_name": "自选组合98", "monthly_rental": 98.0, "included_data_mb": 600.0,
         "included_voice_min": 650.0},
    ]
    write_table(folder / "subscribers.parquet", "subscribers", subs)
    write_table(folder / "billing.parquet", "billing", billing)
    write_table(folder / "usage.parquet", "usage", usage)
    write_table(folder / "plans.parquet", "plans", plans)
    return folder


def uncapped_matrices(tmp_path: Path) -> Path:
    """The shipped rules without contact caps, so that no cap stands between a plan offer and its list."""
    target = tmp_path / "matrices"
    shutil.copytree(shipped_matrices_dir(), target)
    channels = target / "channels.yaml"
    text = channels.read_text(encoding="utf-8")
    assert "    contact_cap: 1\n" in text and "  monthly_cap: 4\n" in text
    channels.write_text(text.replace("    contact_cap: 1\n", "").replace("  monthly_cap: 4\n", "  monthly_cap: null\n"),
                        encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def month_lists(tmp_path_factory):
    """ingest → score → matrix → plan → export of the four customers; (view rows, inbound plan rows).

    Plan recommendations go to the inbound pop-up first (plan.yaml, seed 003), with every standard column.
    Built once for the module: the tests only read what it returns."""
    tmp_path = tmp_path_factory.mktemp("money-month")
    db, runner = tmp_path / "test.duckdb", CliRunner()

    def cli(*args: str):
        return runner.invoke(app, [*args, "--db", str(db)])

    assert cli("ingest", str(extracts(tmp_path / "x"))).exit_code == 0
    out, rules = tmp_path / "out", str(uncapped_matrices(tmp_path))
    for step in (("score", "--month", M), ("matrix", "--month", M), ("plan", "--month", M),
                 ("export", "--month", M, "--date", "2026-11-01", "--out", str(out))):
        result = cli(*step, "--matrices", rules)
        assert result.exit_code == 0, (step, result.output)
    con = duckdb.connect(str(db), read_only=True)
    cur = con.execute("SELECT * FROM customer_view")
    names = [d[0] for d in cur.description]
    view = {r[0]: dict(zip(names, r)) for r in cur.fetchall()}
    con.close()
    with (cycle_dir(out, M, "2026-11-01") / "inbound.csv").open(encoding="utf-8", newline="") as f:
        plan_rows = {r["msisdn"]: r for r in csv.DictReader(f) if r["matrix"] == "plan"}
    return view, plan_rows


def test_half_fen_average_is_191_52_in_the_lists(month_lists):
    """The issue's example: 191.51 and 191.52 average to 191.515; the list shows 191.52 on every
    DuckDB release (2.0.1's round(191.515::DOUBLE, 2) is 191.51)."""
    view, plan_rows = month_lists
    assert view[HALF_FEN]["current_total_3m"] == Decimal("191.515000")
    assert view[HALF_FEN]["arpu_3m"] == Decimal("191.515000") and view[HALF_FEN]["rental_3m"] == Decimal("128.000000")
    row = plan_rows[HALF_FEN]
    assert row["plan_id"] == "ZX158" and row["current_total"] == "191.52"
    # 158 + 0 + 0 + 30 = 188.00; 188 / 191.515 = 0.98164634… → 0.9816; 158 / 128 = 1.234375 → 1.2344
    assert (row["new_total"], row["total_fee_change"], row["rental_change"]) == ("188.00", "0.9816", "1.2344")


def test_spec_worked_example_in_the_lists(month_lists):
    view, plan_rows = month_lists
    assert (view[SPEC]["current_total_3m"] == Decimal("220.000000")
            and view[SPEC]["return_rate"] == Decimal("100.000000"))
    row = plan_rows[SPEC]
    # 737.93 − 600 = 137.93 MB × 0.29 = 39.9997 → 40.00; new total 227.9997 → 228.00;
    # 227.9997 / 220 = 1.0363623 → 1.0364; 158 / 128 = 1.234375 → 1.2344
    assert (row["plan_id"], row["new_rental"], row["new_voice_overage"], row["new_data_overage"], row["new_total"],
            row["current_total"], row["total_fee_change"], row["rental_change"]) == (
        "ZX158", "158.00", "0.00", "40.00", "228.00", "220.00", "1.0364", "1.2344")


def test_repeating_average(month_lists):
    view, plan_rows = month_lists
    r = view[REPEATING]
    assert (r["arpu_3m"], r["current_total_3m"], r["data_overage_3m"]) == (
        Decimal("100.006667"), Decimal("100.006667"), Decimal("10.006667"))  # 300.02 / 3, 30.02 / 3
    row = plan_rows[REPEATING]
    # ZX98: 98 + 10 = 108.00 over 100.006667 = 1.07992800… → 1.0799; 98 / 80 = 1.225
    assert (row["plan_id"], row["current_total"], row["new_total"], row["total_fee_change"], row["rental_change"]) == (
        "ZX98", "100.01", "108.00", "1.0799", "1.2250")


def test_negative_half_fen_rounds_away_from_zero(month_lists):
    view, plan_rows = month_lists
    n = view[NEGATIVE]
    assert n["current_total_3m"] == Decimal("-0.005000") and n["data_overage_3m"] == Decimal("-0.005000")
    assert n["arpu_3m"] == Decimal("-0.005000")
    con = duckdb.connect()
    assert sql_value(con, dialect.money(f"CAST('{n['current_total_3m']}' AS DECIMAL(38,6))")) == Decimal("-0.01")
    assert NEGATIVE not in plan_rows  # not billable (current total ≤ 0)


def test_return_rate_is_exactly_100_without_discounts(month_lists):
    view, _ = month_lists
    assert {m: view[m]["return_rate"] for m in (HALF_FEN, SPEC, REPEATING)} == {
        HALF_FEN: Decimal(100), SPEC: Decimal(100), REPEATING: Decimal(100)}
    assert all(str(view[m]["return_rate"]) == "100.000000" for m in (HALF_FEN, SPEC, REPEATING))


# -- storage types ------------------------------------------------------------------------------------
MONEY_STORAGE = {"billing": ("total_fee", "rental_fee", "voice_overage_fee", "data_overage_fee", "addon_fee", "ld_fee",
                             "discount_fee"),
                 "subscribers": ("balance",), "plans": ("monthly_rental",)}
PRICE_STORAGE = ("data_overage_per_mb", "voice_overage_per_min")


def load(con: duckdb.DuckDBPyConnection, folder: Path, *, decimal: bool) -> None:
    """The contract's tables from ``folder``, money stored as DOUBLE (an older database) or as the contract's
    DECIMALs."""
    for t in ("subscribers", "usage", "billing", "plans"):
        cols = []
        for c in TABLES[t].columns:
            type_ = c.type
            if c.name in MONEY_STORAGE.get(t, ()):  # the contract stores DECIMAL; older databases DOUBLE
                type_ = dialect.MONEY_TYPE if decimal else "DOUBLE"
            elif t == "plans" and c.name in PRICE_STORAGE:
                type_ = dialect.UNIT_PRICE_TYPE if decimal else "DOUBLE"
            cols.append(f'"{c.name}" {type_}')
        con.execute(f'CREATE TABLE "{t}" ({", ".join(cols)})')
        con.execute(f"INSERT INTO \"{t}\" BY NAME SELECT {', '.join(c.name for c in TABLES[t].columns)} "
                    f"FROM read_parquet('{folder / (t + '.parquet')}')")


def test_double_and_decimal_storage_give_the_same_view_and_plans(tmp_path):
    folder = extracts(tmp_path / "x")
    results = []
    for decimal in (False, True):
        con = duckdb.connect()
        load(con, folder, decimal=decimal)
        assert con.execute("SELECT typeof(total_fee) FROM billing LIMIT 1").fetchone()[0] == (
            "DECIMAL(18,2)" if decimal else "DOUBLE")
        con.execute(f"CREATE TABLE customer_view AS {base_sql(has_vas=False)}", view_params(M))
        view = con.execute("SELECT * FROM customer_view ORDER BY msisdn").fetchall()
        q = recommend_query(M, PlanConfig())
        results.append((view, con.execute(q.sql, q.params).fetchall()))
    assert results[0] == results[1]
    assert [r[4] for r in results[0][1]] == ["ZX158", "ZX158", "ZX98"]


def test_an_older_double_month_is_converted_when_a_month_is_rebuilt():
    """A database scored before money was exact: rebuilding one month must not leave the table
    DOUBLE (an INSERT into the old columns, or a union, would silently widen DECIMAL to DOUBLE)."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT '2026-09' AS month, CAST(191.515 AS DOUBLE) AS arpu_3m, 1 AS n")
    new = "SELECT '2026-10' AS month, CAST(191.515 AS DECIMAL(38,6)) AS arpu_3m, 2 AS n"
    assert replace_month(con, "t", "2026-10", new) == 1
    assert con.execute("SELECT typeof(arpu_3m) FROM t LIMIT 1").fetchone()[0] == "DECIMAL(38,6)"
    assert con.execute("SELECT month, arpu_3m FROM t ORDER BY month").fetchall() == [
        ("2026-09", Decimal("191.515000")), ("2026-10", Decimal("191.515000"))]
    assert replace_month(con, "t", "2026-10", new) == 1  # same types now: the fast path
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 2


# -- the plan step's two ways to a 6-decimal rate ---------------------------------------------------
def plan_tables(con: duckdb.DuckDBPyConnection, customers: list[tuple[Any, ...]], plans: list[tuple[Any, ...]]) -> None:
    con.execute(f"""CREATE TABLE customer_view (msisdn VARCHAR, month VARCHAR, status VARCHAR, plan_id VARCHAR,
        data_mb_3m DOUBLE, voice_min_3m DOUBLE, rental_3m {dialect.AVERAGE_TYPE}, \
current_total_3m {dialect.AVERAGE_TYPE},
        addon_3m {dialect.AVERAGE_TYPE})""")
    con.execute(f"""CREATE TABLE plans (plan_id VARCHAR, plan_name VARCHAR, monthly_rental {dialect.MONEY_TYPE},
        included_data_mb DOUBLE, included_voice_min DOUBLE, data_overage_per_mb {dialect.UNIT_PRICE_TYPE},
        voice_overage_per_min {dialect.UNIT_PRICE_TYPE}, product_status BIGINT, is_target BOOLEAN)""")
    con.executemany("INSERT INTO customer_view VALUES (?, ?, 'active', 'CUR', ?, ?, ?, ?, ?)", customers)
    con.executemany("INSERT INTO plans VALUES (?, ?, ?, ?, ?, ?, ?, 1, true)", plans)


def test_fast_and_exact_6_decimal_rates_agree():
    """Every pair's compared rates equal the exact 128-bit quotient rounded half away from zero,
    whether taken from the DOUBLE approximation or from the exact division — on random bills and
    on rates that sit exactly on a half unit (1.5000005) or next to one."""
    rng = random.Random(7)
    def d6(lo: int, hi: int) -> Decimal:
        return Decimal(rng.randint(lo * 10**6, hi * 10**6)).scaleb(-6)
    customers = [(f"1390000{i:04d}", M, rng.randint(0, 3000 * 10**6) / 10**6, rng.randint(0, 2000 * 10**3) / 10**3,
                  d6(1, 300), d6(1, 500), d6(0, 50)) for i in range(3000)]
    # on and next to a half unit: bill 2, plan 2.00 + (data − 10 MB) × 0.000001:
    # 1 MB over → 2.000001 / 2 = 1.0000005 exactly; 1.000001 over → 1.0000005000005; 0.999999 →
    # 1.0000004999995; 5 MB over → 1.0000025, whose DOUBLE is just below it and would round down
    customers += [("13911110001", M, 11.0, 0.0, Decimal(2), Decimal(2), Decimal(0)),
                  ("13911110002", M, 11.000001, 0.0, Decimal(2), Decimal(2), Decimal(0)),
                  ("13911110003", M, 10.999999, 0.0, Decimal(2), Decimal(2), Decimal(0)),
                  ("13911110004", M, 15.0, 0.0, Decimal(2), Decimal(2), Decimal(0))]
    plans = [(f"P{j}", f"P{j}", Decimal(rng.randint(500, 60000)).scaleb(-2), float(rng.randint(0, 3000)),
              float(rng.randint(0, 2000)), d6(0, 1), d6(0, 1)) for j in range(12)]
    plans += [("HALF", "HALF", Decimal("2.00"), 10.0, 0.0, Decimal("0.000001"), Decimal(0)),
              ("CUR", "CUR", Decimal("2.00"), 0.0, 0.0, Decimal(0), Decimal(0))]
    con = duckdb.connect()
    plan_tables(con, customers, plans)
    exact_total = dialect.units_decimal(dialect.div_half_away("new_total_p", "current_total_u"), 6, precision=18)
    exact_rental = dialect.units_decimal(dialect.div_half_away(f"{dialect.integer('rental_fen')} * 10000000000",
                                                               "rental_u"), 6, precision=18)
    pairs_for_everyone = pairs_sql("staged")
    rows = con.execute(
        f"WITH {CANDIDATES_SQL}, {pairs_for_everyone}, {exact_sql('WHERE current_total_u > 0 AND rental_u > 0')} "
        f"SELECT count(*), count(*) FILTER (WHERE total_fee_change_6 <> {exact_total}), "
        f"count(*) FILTER (WHERE rental_change_6 <> {exact_rental}), "
        f"count(*) FILTER (WHERE abs(total_fee_change_approx * 1e6 - floor(total_fee_change_approx * 1e6) - 0.5) "
        f"<= 0.001) "
        "FROM rated6", {"month": M, "min_data": Decimal(0)}).fetchone()
    total, wrong_total, wrong_rental, exact_path = rows
    assert total > 30_000 and wrong_total == 0 and wrong_rental == 0
    assert exact_path >= 4  # the half-unit pairs (and a few random ones) took the exact division
    on_the_half = exact_sql("WHERE plan_id = 'HALF' AND msisdn LIKE '1391111%'")
    half = con.execute(
        f"WITH {CANDIDATES_SQL}, {PAIRS_SQL}, {on_the_half} "
        "SELECT msisdn, total_fee_change_6, rental_change_6 FROM rated6 ORDER BY msisdn",
        {"month": M, "min_data": Decimal(0)}).fetchall()
    # half away from zero: 1.0000005 → 1.000001, 1.0000005000005 → 1.000001, 1.0000004999995 → 1.000000,
    # 1.0000025 → 1.000003
    assert half == [("13911110001", Decimal("1.000001"), Decimal(1)), ("13911110002", Decimal("1.000001"), Decimal(1)),
                    ("13911110003", Decimal(1), Decimal(1)), ("13911110004", Decimal("1.000003"), Decimal(1))]


@pytest.mark.parametrize("old_columns", [
    "'2026-09' AS month, 1.5 AS gone, CAST(7 AS INTEGER) AS N, 'x' AS label",  # a dropped column, N as n
    "'x' AS label, '2026-09' AS month",  # another order, n missing
])
def test_a_month_rebuilt_with_other_columns_keeps_older_months_by_name(old_columns: str) -> None:
    """The rebuild's explicit column lists give what DuckDB's UNION ALL BY NAME gives: the new columns
    first in their order, then the old table's other ones, NULL where a side lacks a column."""
    new = "SELECT '2026-10' AS month, CAST(2 AS BIGINT) AS n, 'new' AS score, 'y' AS label"
    results = []
    for explicit in (True, False):
        con = duckdb.connect()
        con.execute(f"CREATE TABLE t AS SELECT {old_columns}")
        if explicit:
            assert replace_month(con, "t", "2026-10", new) == 1
        else:
            con.execute(f"CREATE TABLE u AS {new} UNION ALL BY NAME SELECT * FROM t WHERE month <> '2026-10'")
            con.execute("DROP TABLE t")
            con.execute("ALTER TABLE u RENAME TO t")
        results.append((con.execute("DESCRIBE t").fetchall(), con.execute("SELECT * FROM t ORDER BY month").fetchall()))
    assert results[0] == results[1]
    names = [r[0] for r in results[0][0]]
    if "gone" in old_columns:
        assert names == ["month", "n", "score", "label", "gone"]
        assert results[0][1] == [("2026-09", 7, None, "x", Decimal("1.5")), ("2026-10", 2, "new", "y", None)]
    else:
        assert names == ["month", "n", "score", "label"]
        assert results[0][1] == [("2026-09", None, None, "x"), ("2026-10", 2, "new", "y")]
