"""The few engine-sensitive SQL pieces, for DuckDB and for Spark SQL: exact money, the
deterministic draw, string hashing, date arithmetic, integer division, and :class:`Query` (a
named DuckDB-dialect statement with its parameters, rendered per engine when executed).

The steps write DuckDB-dialect text and sqlglot renders it for Spark; a piece lives here when
sqlglot's rendering of the obvious DuckDB text would mean something else on Spark (a '0x' cast
is NULL there, INT wraps, a DATE − INTERVAL is a TIMESTAMP). Each has a Spark rendering of its
own and a DuckDB rendering whose sqlglot translation keeps its meaning (tests/test_dialect.py).

Money first: an engine's own rounding is not a contract. DuckDB 2.0.1 rounds
``round(191.515::DOUBLE, 2)`` to 191.51 where 2.0.0 gave 191.52, DuckDB's DECIMAL / DECIMAL
returns a DOUBLE, its DECIMAL(18,x) × DECIMAL(18,y) stays 18 digits wide and overflows, and a
DECIMAL → BIGINT cast rounds in DuckDB but truncates in Spark. So money is carried as
**integer counts of a fixed unit** (fen = 10⁻² yuan, micro = 10⁻⁶, pico = 10⁻¹²) and every
division and every rounding is written out here as integer arithmetic, rounding half away
from zero (四舍五入). Sums and products of integers are exact on every engine; the only
division is :func:`div_half_away`. Every function returns SQL text; ``dialect="spark"``
gives a Spark SQL rendering with the same results (docs/money.md says where each is used).

Exact integers are HUGEINT in DuckDB and DECIMAL(38,0) in Spark (Spark's BIGINT wraps
silently on overflow). Range: a quotient must stay below 10³² units (Spark's exact decimal
quotient keeps 32 integer digits), i.e. 10²⁶ yuan counted in micro-yuan, 10²⁰ in pico-yuan.
Spark keeps only 6 decimals of a DECIMAL product wider than 38 digits, so a count of more
than 10⁻⁶ units is read into 36 − scale digits before it is scaled (:func:`spark_units_width`:
below 10²⁴ units at 12 decimals). Beyond a range both engines refuse (an overflow error under
Spark's default ANSI mode), never round; the ranges measured are in docs/money.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

Dialect = Literal["duckdb", "spark"]
DUCKDB: Dialect = "duckdb"
SPARK: Dialect = "spark"

#: Agreed storage types (the contract's money columns and unit prices).
MONEY_TYPE = "DECIMAL(18,2)"
UNIT_PRICE_TYPE = "DECIMAL(18,6)"
#: The customer view's averages and rates: exact to 6 decimals (the SPEC §5 comparison precision),
#: 38 digits wide so that a rule multiplying two of them cannot overflow.
AVERAGE_SCALE = 6
AVERAGE_TYPE = f"DECIMAL(38,{AVERAGE_SCALE})"
#: Rates (total_fee_change, rental_change) as stored: the exact quotient truncated to 12 decimals,
#: so that rounding it to the 6 decimals compared or the 4 shown gives the exact quotient's rounding.
RATE_SCALE = 12
RATE_TYPE = f"DECIMAL(38,{RATE_SCALE})"
#: The most decimals :func:`round_half_away` reads from an expression of unknown scale.
SOURCE_SCALE = 12


def _check(dialect: str) -> None:
    if dialect not in (DUCKDB, SPARK):
        raise ValueError(f"unknown SQL dialect {dialect!r} (duckdb or spark)")


def integer_type(dialect: Dialect = DUCKDB) -> str:
    """The exact integer type: HUGEINT (DuckDB) or DECIMAL(38,0) (Spark)."""
    _check(dialect)
    return "HUGEINT" if dialect == DUCKDB else "DECIMAL(38,0)"


def text_type(dialect: Dialect = DUCKDB) -> str:
    _check(dialect)
    return "VARCHAR" if dialect == DUCKDB else "STRING"


def integer(expr: str, dialect: Dialect = DUCKDB) -> str:
    """``expr`` (an integer-valued expression) as an exact integer."""
    return f"CAST({expr} AS {integer_type(dialect)})"


def read_money(column: str, dialect: Dialect = DUCKDB) -> str:
    """A stored money amount as DECIMAL(18,2), whether it is stored as DECIMAL or (still) DOUBLE.

    A DOUBLE holding a whole fen (191.51 is 191.50999…) casts to exactly that fen on both
    engines: they round to the nearest, and the nearest is never in doubt for such values.
    """
    _check(dialect)
    return f"CAST({column} AS {MONEY_TYPE})"


def read_unit_price(column: str, dialect: Dialect = DUCKDB) -> str:
    """A stored unit price (yuan per MB or per minute) as DECIMAL(18,6)."""
    _check(dialect)
    return f"CAST({column} AS {UNIT_PRICE_TYPE})"


def fen(column: str, dialect: Dialect = DUCKDB) -> str:
    """A stored money amount as a BIGINT count of fen (exact: the amount has 2 decimals).

    BIGINT is enough: DECIMAL(18,2) holds at most 10¹⁸ fen, three of them sum below 2⁶³.
    """
    return f"CAST({read_money(column, dialect)} * 100 AS BIGINT)"


def decimal_units(expr: str, scale: int, dialect: Dialect = DUCKDB) -> str:
    """The exact integer count of 10⁻ˢᶜᵃˡᵉ units in a DECIMAL with at most ``scale`` decimals."""
    _check(dialect)
    return integer(f"CAST({expr} AS DECIMAL(38,{scale})) * {10 ** scale}", dialect)


def small_decimal_units(expr: str, scale: int, dialect: Dialect = DUCKDB) -> str:
    """:func:`decimal_units` as a BIGINT, for values that fit DECIMAL(17, scale) (an average or a
    unit price below 10¹¹ yuan: larger values are refused by the cast, never wrapped).

    Why not decimal_units: 128-bit arithmetic costs DuckDB ten times more (0.3 s per million
    rows and three columns). Every operand here is 64-bit: x = whole part + fraction, both at
    the same scale (a subtraction of two scales would widen to 128 bits), the whole part cast
    to an integer and the fraction (|f| < 1) scaled — exact whether the engine's cast to
    DECIMAL(17,0) rounds (DuckDB) or truncates.
    """
    _check(dialect)
    x = f"CAST({expr} AS DECIMAL(17,{scale}))"
    whole = f"CAST(CAST({x} AS DECIMAL(17,0)) AS DECIMAL(17,{scale}))"
    return f"(CAST({whole} AS BIGINT) * {10 ** scale} + CAST(({x} - {whole}) * {10 ** scale} AS BIGINT))"


def double_units(expr: str, scale: int, dialect: Dialect = DUCKDB) -> str:
    """A measured quantity (DOUBLE minutes or MB) rounded half away from zero to ``scale``
    decimals, as a BIGINT count of 10⁻ˢᶜᵃˡᵉ units (beyond 9·10¹⁸ units the cast refuses it).

    Written as IEEE double operations (|x|·10ˢ + 0.5, floor) that every engine performs
    bit-identically, not as the engine's round(): a 3-month average of 5.93, 5.54 and 3.53 MB
    (4.999999999999999) is 5.000000 MB on DuckDB 2.0.0, 2.0.1 and Spark alike.
    """
    _check(dialect)
    x = f"CAST({expr} AS DOUBLE)"
    magnitude = f"CAST(floor(abs({x}) * CAST({10 ** scale} AS DOUBLE) + CAST(0.5 AS DOUBLE)) AS BIGINT)"
    return f"(CASE WHEN {x} < 0 THEN -{magnitude} ELSE {magnitude} END)"


#: Decimals :func:`quantity_ratio` reads each quantity to (micro-minutes, micro-MB: as the plan step prices them).
QUANTITY_SCALE = 6


def quantity_ratio(numerator: str, denominator: str, scale: int, dialect: Dialect = DUCKDB) -> str:
    """numerator / denominator of two measured quantities (DOUBLE minutes or MB: use ÷ allowance),
    rounded half away from zero to ``scale`` decimals, DECIMAL(38, scale). NULL when either is
    NULL or the denominator, read to 6 decimals, is not positive (no allowance to measure against).

    Each quantity is read to 6 decimals the way :func:`double_units` reads it (the plan step's
    reading: an average of 5.93, 5.54 and 3.53 MB is 5 MB), and the quotient of those exact
    values is rounded by integer arithmetic, never by the engine's round(): 450.45 ÷ 1000 is
    0.4505, 0.5 ÷ 3 is 0.1667, on every engine. 64-bit for a numerator in [0, 10^(12−scale)) and
    a denominator below 10¹² (every real use and allowance); otherwise (a negative or an
    astronomical quantity) the IEEE quotient of the two, read to 12 decimals by
    :func:`round_half_away`, and NULL from 10²⁰ on (no DECIMAL a rule compares with is that large).
    """
    _check(dialect)
    if not 0 <= scale <= 12:  # the numerator's units · 10^scale must stay below 10¹⁸
        raise ValueError(f"quantity_ratio keeps 0 to 12 decimals, not {scale}")
    n, d = f"CAST({numerator} AS DOUBLE)", f"CAST({denominator} AS DOUBLE)"
    unit = f"CAST({10 ** QUANTITY_SCALE} AS DOUBLE)"
    no_denominator = f"floor({d} * {unit} + CAST(0.5 AS DOUBLE)) < 1"  # double_units(d) = 0, without its cast
    n_units, d_units = double_units(n, QUANTITY_SCALE, dialect), double_units(d, QUANTITY_SCALE, dialect)
    fast = units_decimal(div_half_away_64(f"{n_units} * {10 ** scale}", f"nullif({d_units}, 0)", dialect), scale,
                         dialect, precision=18)
    ratio_type = f"DECIMAL(38,{scale})"
    slow = round_half_away(f"({n} / {d})", scale, dialect, precision=38)
    return (f"(CASE WHEN {n} IS NULL OR {d} IS NULL OR {no_denominator} THEN CAST(NULL AS {ratio_type})"
            f" WHEN {n} >= 0 AND {n} < {float(10 ** (12 - scale))!r} AND {d} < {1e12!r}"
            f" THEN CAST({fast} AS {ratio_type})"
            f" WHEN abs({n} / {d}) < {1e20!r} THEN {slow} END)")


def int_div(numerator: str, denominator: str, dialect: Dialect = DUCKDB) -> str:
    """⌊numerator / denominator⌋ of two non-negative 64-bit integers: DuckDB's ``//``, Spark's ``div``.

    Why not ``/``: both engines' ``/`` of two integers is a fractional division (a DOUBLE in
    DuckDB, a DOUBLE or DECIMAL in Spark). Only for non-negative operands: the engines round a
    negative quotient differently.
    """
    _check(dialect)  # the operands are wrapped: int_div("10 * p + n - 1", "n") must not read "... - 1 // n"
    return f"(({numerator}) {'//' if dialect == DUCKDB else 'div'} ({denominator}))"


def _quotient(top: str, bottom: str, dialect: Dialect) -> str:
    """⌊top / bottom⌋ of two non-negative exact integers."""
    if dialect == DUCKDB:
        return f"({top} // {bottom})"
    # (a − a mod b) / b is an exact integer: Spark's decimal division keeps it exactly
    return f"CAST(({top} - {top} % {bottom}) / {bottom} AS DECIMAL(38,0))"


def _signed(quotient: str, n: str, d: str) -> str:
    return f"(CASE WHEN ({n} < 0) <> ({d} < 0) THEN -{quotient} ELSE {quotient} END)"


def div_half_away(numerator: str, denominator: str, dialect: Dialect = DUCKDB) -> str:
    """numerator / denominator (exact integers) rounded half away from zero to an integer.

    ⌊(2|n| + |d|) / 2|d|⌋ with the sign of n·d: integer division of non-negative numbers only,
    so DuckDB's ``//`` (truncating) and Spark's exact decimal quotient agree. NULL when the
    denominator is 0 or NULL.
    """
    _check(dialect)
    n, d = integer(numerator, dialect), integer(f"nullif({denominator}, 0)", dialect)
    return _signed(_quotient(f"(2 * abs({n}) + abs({d}))", f"(2 * abs({d}))", dialect), n, d)


def div_toward_zero(numerator: str, denominator: str, dialect: Dialect = DUCKDB) -> str:
    """numerator / denominator (exact integers) truncated toward zero; NULL when the denominator is 0.

    Why truncation has a use: a quotient truncated to 12 decimals still rounds half away from
    zero to 6 or 4 decimals exactly as the exact quotient does (a half point of a coarser
    scale is a whole number of 10⁻¹² units, and truncation never crosses one), where a value
    already rounded to 6 decimals does not (1.16194962… → 1.161950 → 1.1620, not 1.1619).
    """
    _check(dialect)
    n, d = integer(numerator, dialect), integer(f"nullif({denominator}, 0)", dialect)
    return _signed(_quotient(f"abs({n})", f"abs({d})", dialect), n, d)


def div_half_away_64(numerator: str, denominator: str, dialect: Dialect = DUCKDB) -> str:
    """:func:`div_half_away` in 64-bit integers, for 0 ≤ numerator < 4·10¹⁸ and 0 < denominator
    < 4·10¹⁸ (the caller guards the range): ⌊(2n + d) / 2d⌋, ten times cheaper than 128 bits."""
    _check(dialect)
    n, d = f"CAST({numerator} AS BIGINT)", f"CAST({denominator} AS BIGINT)"
    return int_div(f"(2 * {n} + {d})", f"(2 * {d})", dialect)


def scaled_quotient_64(numerator: str, denominator: str, shift: int, dialect: Dialect = DUCKDB) -> str:
    """⌊numerator · 10ˢʰⁱᶠᵗ / denominator⌋ in 64-bit integers by long division, for
    0 ≤ numerator < 9·10¹⁸ and 0 < denominator · 10ˢʰⁱᶠᵗ < 9·10¹⁸ with a quotient below 9·10¹⁸
    (the caller guards the range); the same value as :func:`div_toward_zero` of the product."""
    _check(dialect)
    n, d = f"CAST({numerator} AS BIGINT)", f"CAST({denominator} AS BIGINT)"
    return f"({int_div(n, d, dialect)} * {10 ** shift} + {int_div(f'(({n} % {d}) * {10 ** shift})', d, dialect)})"


#: Spark keeps at least this many decimals of a DECIMAL product wider than 38 digits (its
#: ``MINIMUM_ADJUSTED_SCALE``, with the default ``spark.sql.decimalOperations.allowPrecisionLoss=true``).
SPARK_KEPT_SCALE = 6


def spark_units_width(scale: int, precision: int = 38) -> int:
    """The digits of the integer units :func:`units_decimal`'s Spark rendering multiplies by 10⁻ˢᶜᵃˡᵉ.

    Spark types DECIMAL(w,0) × DECIMAL(s+1,s) as DECIMAL(w+s+2, s); beyond 38 digits it cuts the
    scale to max(38 − integer digits, 6), so DECIMAL(38,0) × 10⁻¹² kept 6 decimals (0.758860381861
    became 0.758860000000). Up to 6 decimals the cut keeps them all, so the units stay 38 digits
    wide; beyond, they are cast to 36 − s digits (DECIMAL(24,0) for 12 decimals), a product of
    exactly 38 digits that no setting cuts: exact for |units| < 10³⁶⁻ˢ, and a larger count is
    refused by the cast (an error under Spark's default ANSI mode), never rounded.
    """
    if not 0 <= scale <= precision <= 38:
        raise ValueError(f"DECIMAL({precision},{scale}) is not a decimal type (0 ≤ scale ≤ precision ≤ 38)")
    width = 18 if precision <= 18 else 38
    if scale > SPARK_KEPT_SCALE and width + scale + 2 > 38:
        width = 36 - scale
        if width < 1:
            raise ValueError(f"Spark has no exact product for {scale} decimals (at most 35)")
    return width


def units_decimal(units: str, scale: int, dialect: Dialect = DUCKDB, *, precision: int = 38) -> str:
    """An integer count of 10⁻ˢᶜᵃˡᵉ units as DECIMAL(precision, scale), exactly (no division).

    With precision ≤ 18 the arithmetic stays 64-bit (the units must then fit DECIMAL(18,0)).
    On Spark the units are read into :func:`spark_units_width` digits (exact for |units| < 10²⁴
    at 12 decimals, the rates' scale; up to 6 decimals for every count the result type holds).
    """
    _check(dialect)
    if not 0 <= scale <= precision <= 38:
        raise ValueError(f"DECIMAL({precision},{scale}) is not a decimal type (0 ≤ scale ≤ precision ≤ 38)")
    if scale == 0:
        return f"CAST({units} AS DECIMAL({precision},0))"
    step = f"0.{'0' * (scale - 1)}1"
    if dialect == DUCKDB:
        width = 18 if precision <= 18 else 38
    else:
        width = spark_units_width(scale, precision)
    return f"CAST(CAST({units} AS DECIMAL({width},0)) * {step} AS DECIMAL({precision},{scale}))"


def exact_rate(numerator: str, denominator: str, scale: int, dialect: Dialect = DUCKDB) -> str:
    """numerator / denominator (integer-valued expressions, either sign) rounded half away from zero to
    ``scale`` decimals, as DECIMAL(38, scale); NULL when the denominator is 0 (the evaluations' rates)."""
    units = div_half_away(f"{integer(numerator, dialect)} * {10 ** scale}", denominator, dialect)
    return units_decimal(units, scale, dialect)


def round_units(units: str, from_scale: int, to_scale: int, dialect: Dialect = DUCKDB) -> str:
    """An integer count of 10⁻ᶠʳᵒᵐ units rounded half away from zero to 10⁻ᵗᵒ units."""
    if to_scale > from_scale:
        raise ValueError("round_units only drops decimals")
    if to_scale == from_scale:
        return integer(units, dialect)
    return div_half_away(units, str(10 ** (from_scale - to_scale)), dialect)


def round_half_away(expr: str, scale: int, dialect: Dialect = DUCKDB, *, precision: int = 18) -> str:
    """THE rounding helper: ``expr`` rounded half away from zero to ``scale`` decimals, as
    DECIMAL(precision, scale). -0.005 → -0.01, 191.515 → 191.52, on every engine.

    ``expr`` may be any number: a DECIMAL with up to 12 decimals is read exactly; a DOUBLE
    that holds such a decimal (a stored value passed through a DOUBLE column) is first cast to
    its nearest 12-decimal value.
    """
    units = decimal_units(expr, SOURCE_SCALE, dialect)
    return units_decimal(round_units(units, SOURCE_SCALE, scale, dialect), scale, dialect, precision=precision)


def money(expr: str, dialect: Dialect = DUCKDB) -> str:
    """An amount as shown and compared: rounded half away from zero to the fen, DECIMAL(18,2)."""
    return round_half_away(expr, 2, dialect)


def money_text(expr: str, dialect: Dialect = DUCKDB) -> str:
    """An amount as text with exactly two decimals (``228.00``), for phrases and lists."""
    return f"CAST({money(expr, dialect)} AS {text_type(dialect)})"


def _exact6(units: str, factor: int, count: str, fits: str, dialect: Dialect) -> str:
    """units · factor / count rounded half away from zero, as DECIMAL(38,6): 64-bit where
    ``fits`` (every realistic value: 128-bit arithmetic costs ten times more), 128-bit
    otherwise; NULL when count is 0."""
    fast = units_decimal(div_half_away_64(f"CAST({units} AS BIGINT) * {factor}", count, dialect), AVERAGE_SCALE,
                         dialect, precision=18)
    exact = units_decimal(div_half_away(f"{integer(units, dialect)} * {factor}", count, dialect), AVERAGE_SCALE,
                          dialect)
    return f"(CASE WHEN {fits} THEN CAST({fast} AS {AVERAGE_TYPE}) ELSE {exact} END)"


def average(sum_units: str, count: str, from_scale: int, dialect: Dialect = DUCKDB) -> str:
    """sum / count of a window (an integer sum of 10⁻ᶠʳᵒᵐ units) as an exact 6-decimal
    average, DECIMAL(38,6); NULL when count is 0."""
    factor = 10 ** (AVERAGE_SCALE - from_scale)
    fits = f"{sum_units} BETWEEN 0 AND {4 * 10 ** 18 // factor} AND {count} BETWEEN 1 AND 1000"
    return _exact6(sum_units, factor, count, fits, dialect)


def percent(part_units: str, whole_units: str, dialect: Dialect = DUCKDB) -> str:
    """100 × part / whole (integer sums in one unit) as an exact 6-decimal percentage,
    DECIMAL(38,6); NULL when whole is 0. No discount gives exactly 100.000000."""
    factor = 100 * 10 ** AVERAGE_SCALE
    fits = f"{part_units} BETWEEN 0 AND {4 * 10 ** 18 // factor} AND {whole_units} BETWEEN 1 AND {4 * 10 ** 18}"
    return _exact6(part_units, factor, whole_units, fits, dialect)


# -- hashing, draws and dates: the same value on every engine -----------------------------------
#: The draw reads this many leading hex digits of the md5 (32 bits: exact in a DOUBLE, and in BIGINT).
DRAW_HEX_DIGITS = 8
_HEX_DIGITS = "0123456789abcdef"


def hash_key(parts: Sequence[str]) -> str:
    """The text a draw hashes: the parts joined by ``|`` (NULL when a part is NULL, on every engine)."""
    if not parts:
        raise ValueError("a draw needs at least one part")
    return " || '|' || ".join(parts)


def draw(parts: Sequence[str], dialect: Dialect = DUCKDB) -> str:
    """A deterministic uniform draw in [0, 1): n / 2³², n the first 8 hex digits of md5(parts joined by '|').

    Why md5 and these forms: md5 is the one hash both engines compute the same (lowercase hex
    of the UTF-8 bytes), and n < 2³² is exact in a DOUBLE, so n / 2³² (a power of two) is the
    same DOUBLE everywhere. DuckDB's ``CAST('0x…' AS BIGINT)`` has no Spark meaning (NULL
    there), so DuckDB reads the hex digits one by one with ``strpos`` (sqlglot renders it as
    Spark's ``locate``, giving the same integer); Spark's own rendering is ``conv(…, 16, 10)``.
    Both are cast to BIGINT before any product (Spark's INT wraps silently past 2³¹).
    """
    _check(dialect)
    digest = f"md5({hash_key(parts)})"
    if dialect == DUCKDB:
        terms = [f"CAST(strpos('{_HEX_DIGITS}', substr({digest}, {i + 1}, 1)) - 1 AS BIGINT) "
                 f"* {16 ** (DRAW_HEX_DIGITS - 1 - i)}" for i in range(DRAW_HEX_DIGITS)]
        integer_value = "(" + " + ".join(terms) + ")"
    else:
        integer_value = f"CAST(conv(substr({digest}, 1, {DRAW_HEX_DIGITS}), 16, 10) AS BIGINT)"
    return f"(CAST({integer_value} AS DOUBLE) / CAST({16 ** DRAW_HEX_DIGITS} AS DOUBLE))"


def sha256_hex(expr: str, dialect: Dialect = DUCKDB) -> str:
    """The SHA-256 of a text as 64 lowercase hex digits: DuckDB's ``sha256``, Spark's ``sha2(…, 256)``."""
    _check(dialect)
    return f"sha256({expr})" if dialect == DUCKDB else f"sha2({expr}, 256)"


def days_before(date: str, days: str, dialect: Dialect = DUCKDB) -> str:
    """The DATE ``days`` days before ``date``: DuckDB's DATE − INTEGER, Spark's ``date_sub``.

    Why a helper: DuckDB's ``date - interval`` is a TIMESTAMP, and Spark's arithmetic on dates
    depends on its ANSI mode; DATE − INTEGER is a DATE in DuckDB, and Spark resolves the same
    text (what sqlglot renders) to ``date_sub``.
    """
    _check(dialect)
    if dialect == DUCKDB:
        return f"(CAST({date} AS DATE) - CAST({days} AS INTEGER))"
    return f"date_sub(CAST({date} AS DATE), CAST({days} AS INT))"


def days_after(date: str, days: str, dialect: Dialect = DUCKDB) -> str:
    """The DATE ``days`` days after ``date``: DuckDB's DATE + INTEGER, Spark's ``date_add`` (as :func:`days_before`)."""
    _check(dialect)
    if dialect == DUCKDB:
        return f"(CAST({date} AS DATE) + CAST({days} AS INTEGER))"
    return f"date_add(CAST({date} AS DATE), CAST({days} AS INT))"


def microseconds_between(start: str, end: str, dialect: Dialect = DUCKDB) -> str:
    """``end − start`` in whole microseconds (BIGINT), exact for two TIMESTAMPs: DuckDB's
    ``date_diff('microsecond', …)``, which sqlglot renders as Spark's ``DATEDIFF(MICROSECOND, …)``
    (timestampdiff). Why a helper: DuckDB's ``epoch_us`` has no Spark rendering, and subtracting
    timestamps gives an INTERVAL on one engine and a day-time interval type on the other."""
    _check(dialect)
    if dialect == DUCKDB:
        return f"date_diff('microsecond', {start}, {end})"
    return f"timestampdiff(MICROSECOND, {start}, {end})"


def months_before(date: str, months: int, dialect: Dialect = DUCKDB) -> str:
    """The DATE ``months`` calendar months before ``date``, clamped to the month's last day
    (2026-05-31 → 2026-02-28): DuckDB's DATE − INTERVAL cast back to DATE, Spark's ``add_months``.

    Why the cast: DuckDB's DATE − INTERVAL is a TIMESTAMP; sqlglot renders the same text for
    Spark as DATE − INTERVAL 'n' MONTH, which Spark computes as add_months (the same clamp).
    """
    _check(dialect)
    if not isinstance(months, int) or isinstance(months, bool) or months < 0:
        raise ValueError(f"months must be a non-negative integer, got {months!r}")
    if dialect == DUCKDB:
        return f"CAST(CAST({date} AS DATE) - INTERVAL {months} MONTH AS DATE)"
    return f"add_months(CAST({date} AS DATE), -{months})"


def ordered_text_agg(value: str, order_key: str, separator: str, dialect: Dialect = DUCKDB) -> str:
    """An aggregate: the group's ``value`` texts joined by ``separator`` (an SQL text literal) in
    ascending ``order_key`` order (a key unique within the group, e.g. a row_number); NULL values
    are left out, and a group of none gives NULL on DuckDB, '' on Spark (callers keep at least one row).

    Why not DuckDB's ``string_agg(value, sep ORDER BY key)``: sqlglot renders it as LISTAGG …
    WITHIN GROUP, which only Spark 4 has, and ``list(value ORDER BY key)`` as COLLECT_LIST, which
    drops the order. A sorted list of (key, value) structs means the same on both engines: DuckDB's
    list_sort / list_transform, rendered by sqlglot as Spark's ARRAY_SORT / TRANSFORM (the Spark
    rendering below), and array_to_string as ARRAY_JOIN.
    """
    _check(dialect)
    if dialect == DUCKDB:
        return (f"array_to_string(list_transform(list_sort(list(struct_pack(k := {order_key}, v := {value}))), "
                f"lambda e: e.v), {separator})")
    return f"array_join(transform(array_sort(collect_list(struct({order_key} AS k, {value} AS v))), e -> e.v), " \
           f"{separator})"


# -- queries as data: DuckDB text, rendered for an engine when executed ------------------------
@dataclass(frozen=True)
class Query:
    """One named statement in DuckDB's dialect and exactly the named parameters it binds
    (``$name``; DuckDB refuses unused ones). Built apart from execution, rendered per engine."""

    name: str
    sql: str
    params: dict[str, Any] = field(default_factory=dict)

    def render(self, dialect: Dialect = DUCKDB) -> str:
        return render(self.sql, dialect)


def _unit_step_scale(node: exp.Expr) -> int | None:
    """s when ``node`` is the literal 10⁻ˢ as :func:`units_decimal` writes it (0.0…01), else None."""
    if not isinstance(node, exp.Literal) or node.is_string:
        return None
    text = str(node.this)
    if not text.startswith("0.") or text[2:] != "0" * (len(text) - 3) + "1":
        return None
    return len(text) - 2


def _spark_exact_units(node: exp.Expression) -> exp.Expression:
    """:func:`units_decimal`'s DuckDB text, CAST(u AS DECIMAL(38,0)) × 10⁻ˢ, with the units read as
    :func:`spark_units_width` digits: as written, Spark keeps 6 of the 12 decimals of the product."""
    if not isinstance(node, exp.Mul) or not isinstance(node.left, exp.Cast):
        return node
    scale = _unit_step_scale(node.right)
    to = node.left.to
    if scale is None or not to.is_type(exp.DataType.Type.DECIMAL):
        return node
    params = [p.this.this if isinstance(p.this, exp.Literal) else None for p in to.expressions]
    if params != [38, 0] and params != ["38", "0"]:
        return node
    width = spark_units_width(scale)
    if width == 38:
        return node
    cast = node.left.copy()
    cast.set("to", exp.DataType.build(f"DECIMAL({width},0)"))
    return exp.Mul(this=cast, expression=node.right.copy())


def _has_exact_integer(node: exp.Expr) -> bool:
    return any(t.is_type(exp.DataType.Type.INT128) for t in node.find_all(exp.DataType))


def _spark_exact_integers(tree: exp.Expr) -> exp.Expr:
    """The exact integers of the DuckDB text as Spark's: HUGEINT (sqlglot's INT128, which Spark
    refuses) as DECIMAL(38,0), and ``a // b`` over HUGEINT as :func:`_quotient`'s exact
    ``(a − a % b) / b``: sqlglot renders it DIV, which Spark computes as a BIGINT and wraps silently
    past 2⁶³ even in ANSI mode (10²² DIV 3 = −5527344008095509163). Only for the non-negative
    operands the helpers divide (both engines then truncate alike)."""
    for node in reversed(list(tree.find_all(exp.IntDiv, bfs=False))):  # the innermost first
        if not _has_exact_integer(node):
            continue
        top, bottom = exp.paren(node.this.copy()), exp.paren(node.expression.copy())
        exact = exp.Div(this=exp.paren(exp.Sub(this=top, expression=exp.Mod(this=top.copy(), expression=bottom))),
                        expression=bottom.copy())
        node.replace(exp.Cast(this=exact, to=exp.DataType.build("DECIMAL(38,0)")))
    for data_type in list(tree.find_all(exp.DataType)):
        if data_type.is_type(exp.DataType.Type.INT128):
            data_type.replace(exp.DataType.build("DECIMAL(38,0)"))
    return tree


# -- ingest's pieces: finiteness, full regexp matches, last characters, Parquet scans ------------
#: DuckDB types whose values may be NaN or ±infinity (Spark's too: isnan / Infinity).
_FLOATING = (exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT)
#: DuckDB types with ±infinity values (DuckDB's 'infinity' dates); Spark's dates and times are always finite.
_TEMPORAL = (exp.DataType.Type.DATE, exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPNTZ,
             exp.DataType.Type.TIMESTAMP_S, exp.DataType.Type.TIMESTAMP_MS, exp.DataType.Type.TIMESTAMP_NS,
             exp.DataType.Type.DATETIME)


def _finite_kind(duckdb_type: str) -> str:
    """'float' or 'temporal' for a type :func:`is_finite` reads; ValueError for any other."""
    data_type = exp.DataType.build(duckdb_type, dialect="duckdb")
    if data_type.is_type(*_FLOATING):
        return "float"
    if data_type.is_type(*_TEMPORAL):
        return "temporal"
    raise ValueError(f"is_finite reads a DOUBLE, FLOAT, DATE or TIMESTAMP, not {duckdb_type}")


def is_finite(expr: str, duckdb_type: str, dialect: Dialect = DUCKDB) -> str:
    """SQL true when ``expr`` (of DuckDB type ``duckdb_type``) is neither NaN nor ±infinity; NULL for NULL.

    Why type-aware: Spark has no isfinite(); a DOUBLE is finite when it is not NaN and its
    absolute value is not Infinity, and Spark's dates and times have no infinite values (its
    isnan refuses them), so there it is TRUE. The DuckDB text casts ``expr`` to its own type
    (a no-op) so that :func:`render` reads the type from the tree and gives the Spark form.
    """
    _check(dialect)
    kind = _finite_kind(duckdb_type)
    if dialect == DUCKDB:
        return f"isfinite(CAST({expr} AS {duckdb_type}))"
    if kind == "temporal":
        return "TRUE"
    return f"(NOT isnan({expr}) AND abs({expr}) <> CAST('Infinity' AS DOUBLE))"


def last_character(expr: str, dialect: Dialect = DUCKDB) -> str:
    """The last character of a text ('' for ''): ``substr(expr, -1, 1)`` on both engines.

    Why not DuckDB's ``expr[-1]``: sqlglot renders a subscript as an array index shifted to
    0-based (``expr[-2]``), which Spark refuses on a string; substr counts characters from the
    end on both, and costs DuckDB what the subscript does (right() is ~8x slower).
    """
    _check(dialect)
    return f"substr({expr}, -1, 1)"


def full_match_pattern(pattern: str) -> str:
    """A regular expression that RLIKE (Java's find: a match anywhere) matches only as a whole.

    ``\\z``, not ``$``: Java's ``$`` also matches before a final line terminator, so
    '13800000000\\n' would match an 11-digit pattern that DuckDB's regexp_full_match refuses.
    """
    return f"^(?:{pattern})\\z"


def _spark_ingest_pieces(node: exp.Expr) -> exp.Expr:
    """DuckDB-only constructs of ingest's SQL as Spark's: see :func:`is_finite`,
    :func:`full_match_pattern` and ``read_parquet('path', hive_partitioning = false)`` → ``parquet.`path```."""
    if isinstance(node, exp.Anonymous) and node.name.lower() == "isfinite":
        [arg] = node.expressions
        if not isinstance(arg, (exp.Cast, exp.TryCast)):
            raise sqlglot.errors.UnsupportedError(
                "isfinite() of an expression of unknown type: write it with mktool.dialect.is_finite")
        inner = arg.this
        if _finite_kind(arg.to.sql("duckdb")) == "temporal":
            return exp.true()
        return exp.paren(exp.and_(exp.not_(exp.Anonymous(this="isnan", expressions=[inner.copy()])),
                                  exp.NEQ(this=exp.Abs(this=inner.copy()),
                                          expression=exp.cast(exp.Literal.string("Infinity"), "DOUBLE"))))
    if isinstance(node, exp.RegexpFullMatch):
        pattern = node.expression
        if isinstance(pattern, exp.Literal) and pattern.is_string:
            regex: exp.Expr = exp.Literal.string(full_match_pattern(pattern.this))
        else:
            regex = exp.Concat(expressions=[exp.Literal.string("^(?:"), pattern.copy(), exp.Literal.string(")\\z")])
        return exp.RegexpLike(this=node.this.copy(), expression=regex)
    if isinstance(node, exp.Table) and isinstance(node.this, exp.ReadParquet):
        return _spark_parquet_scan(node)
    return node


# -- rule expressions: what sqlglot writes for Spark with another meaning ------------------------------
#: DuckDB's date_part specifiers of the weekday: 0 (Sunday) to 6, and ISO's 1 (Monday) to 7.
_WEEKDAY_PARTS = frozenset({"dow", "dayofweek", "weekday"})
_ISO_WEEKDAY_PARTS = frozenset({"isodow"})


def _spark_weekday(day: exp.Expr, *, iso: bool) -> exp.Expr:
    """DuckDB's weekday of ``day`` from Spark's DAYOFWEEK, which is 1 (Sunday) to 7."""
    spark_day = exp.DayOfWeek(this=day.copy())
    if not iso:
        return exp.paren(exp.Sub(this=spark_day, expression=exp.Literal.number(1)))
    shifted = exp.Mod(this=exp.paren(exp.Add(this=spark_day, expression=exp.Literal.number(5))),
                      expression=exp.Literal.number(7))
    return exp.paren(exp.Add(this=exp.paren(shifted), expression=exp.Literal.number(1)))


def _weekday_part(node: exp.Expr) -> tuple[exp.Expr, bool] | None:
    """(the date, ISO?) when ``node`` is a weekday of DuckDB's: dayofweek, isodow, date_part or extract."""
    if isinstance(node, exp.DayOfWeekIso):
        return node.this, True
    if isinstance(node, exp.DayOfWeek):
        return node.this, False
    if isinstance(node, exp.Extract) and isinstance(node.this, exp.Var):
        part = node.this.name.lower()
    elif (isinstance(node, exp.Anonymous) and node.name.lower() == "date_part" and len(node.expressions) == 2
          and isinstance(node.expressions[0], exp.Literal) and node.expressions[0].is_string):
        part = node.expressions[0].this.lower()
    else:
        return None
    date = node.expression if isinstance(node, exp.Extract) else node.expressions[1]
    if part in _WEEKDAY_PARTS or part in _ISO_WEEKDAY_PARTS:
        return date, part in _ISO_WEEKDAY_PARTS
    return None


def _one_based_index(lam: exp.Lambda) -> exp.Lambda:
    """``lambda x, i: …`` with DuckDB's 1-based ``i`` read from Spark's 0-based index (``i + 1``)."""
    params = lam.expressions
    if len(params) != 2:
        return lam
    index = params[1].name

    def shift(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Identifier | exp.Column) and node.name == index and not node.args.get("table") \
                and not isinstance(node.parent, exp.Column | exp.Lambda):
            return exp.paren(exp.Add(this=node.copy(), expression=exp.Literal.number(1)))
        return node

    body = lam.this.copy()
    nested = [inner for inner in body.find_all(exp.Lambda) if any(p.name == index for p in inner.expressions)]
    if nested:  # the name is bound again inside: leave it to a reader, not a guess
        raise sqlglot.errors.UnsupportedError(f"a lambda that binds {index!r} twice")
    return exp.Lambda(this=body.transform(shift), expressions=[p.copy() for p in params])


def _not_positive_log(value: exp.Expr, log: exp.Expr) -> exp.Expr:
    """DuckDB's ln / log of a value ≤ 0 (NaN below 0, −infinity at 0); Spark's is NULL."""
    return exp.Case(ifs=[
        exp.If(this=exp.LT(this=value.copy(), expression=exp.Literal.number(0)),
               true=exp.cast(exp.Literal.string("NaN"), "DOUBLE")),
        exp.If(this=exp.EQ(this=value.copy(), expression=exp.Literal.number(0)),
               true=exp.cast(exp.Literal.string("-Infinity"), "DOUBLE")),
    ], default=log)


def _spark_rule_function(node: exp.Expr) -> exp.Expr:
    """One node of :func:`_spark_rule_functions` as Spark's equivalent, or the node itself."""
    weekday = _weekday_part(node)
    if weekday is not None:
        return _spark_weekday(weekday[0], iso=weekday[1])
    if isinstance(node, exp.Transform | exp.ArrayFilter) and isinstance(node.expression, exp.Lambda):
        return node.__class__(this=node.this.copy(), expression=_one_based_index(node.expression))
    if isinstance(node, exp.IsNan):
        return exp.Case(ifs=[exp.If(this=exp.Is(this=node.this.copy(), expression=exp.null()), true=exp.null())],
                        default=node.copy())
    if isinstance(node, exp.Ln):
        return _not_positive_log(node.this, node.copy())
    if isinstance(node, exp.Log) and node.args.get("expression") is not None:
        base = node.this
        if isinstance(base, exp.Literal) and not base.is_string and float(str(base.this)) > 1:
            return _not_positive_log(node.expression, node.copy())
    return node


def _spark_rule_functions(tree: exp.Expr) -> exp.Expr:
    """The functions a rule may call whose Spark spelling means something else, as Spark's
    equivalent: the weekday (Spark's DAYOFWEEK is 1 for Sunday, DuckDB's 0; ISO's 1 is Monday on
    both), a lambda's index (1-based in DuckDB, 0-based in Spark), ``isnan`` of NULL (NULL in
    DuckDB, false in Spark), ``ln`` and ``log`` (with a base above 1) of a value ≤ 0 (NaN or
    −infinity in DuckDB, NULL in Spark). The innermost first, so that one nests in another. What
    cannot be carried over is refused on Spark by :func:`mktool.sqlcheck.spark_divergences`."""
    for node in reversed(list(tree.walk(bfs=False))):
        new = _spark_rule_function(node)
        if new is not node:
            if node is tree:
                return new
            node.replace(new)
    return tree


def _spark_parquet_scan(node: exp.Table) -> exp.Table:
    """``read_parquet('path'[, hive_partitioning = false])`` as Spark's ``parquet.`path```: the one
    file (or glob) read with the types it was written with. A ``?`` path has no Spark text (the
    connection reads it), nor has any other option (hive_partitioning = true, union_by_name …)."""
    path, *options = node.this.expressions
    if not (isinstance(path, exp.Literal) and path.is_string):
        raise sqlglot.errors.UnsupportedError(
            f"read_parquet({path.sql('duckdb')}): only a literal path renders for Spark (parquet.`path`)")
    for option in options:
        if not (isinstance(option, exp.EQ) and isinstance(option.this, exp.Column)
                and option.this.name.lower() == "hive_partitioning" and isinstance(option.expression, exp.Boolean)
                and not option.expression.this):
            raise sqlglot.errors.UnsupportedError(
                f"read_parquet option {option.sql('duckdb')}: only hive_partitioning = false renders for Spark")
    table = exp.Table(this=exp.to_identifier(hadoop_path(path.this), quoted=True), db=exp.to_identifier("parquet"))
    if node.args.get("alias") is not None:
        table.set("alias", node.args["alias"].copy())
    return table


#: What Hadoop's glob (FileSystem.globStatus, Spark's file reader) reads specially beyond DuckDB's ``* ? [``.
_HADOOP_ONLY = "\\{},"
_GLOB = "*?[]"


def hadoop_path(pattern: str) -> str:
    """A DuckDB path or glob pattern (``read_parquet``'s, ``glob``'s) as Hadoop reads it, matching the
    same files: Spark globs every path it reads, with ``{a,b}`` alternatives and ``\\`` escapes that
    DuckDB reads as plain characters. Those are escaped with ``\\``; a one-character set ``[c]`` (how
    mktool.ingest writes a literal ``*``, ``?`` or ``[``) becomes ``\\c``, since a Hadoop set cannot
    hold ``[``. An absolute local path becomes a ``file:`` URI: DuckDB reads this machine's files,
    where a cluster's Spark would resolve ``/a/b`` on its default file system (HDFS)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "[" and i + 2 < len(pattern) and pattern[i + 2] == "]" and pattern[i + 1] not in "!^":
            literal = pattern[i + 1]
            out.append("\\" + literal if literal in _GLOB + _HADOOP_ONLY else literal)
            i += 3
            continue
        out.append("\\" + ch if ch in _HADOOP_ONLY else ch)
        i += 1
    text = "".join(out)
    return "file:" + text if text.startswith("/") else text


def spark_trees(sql: str) -> list[exp.Expr]:
    """DuckDB-dialect SQL parsed, with every Spark rewrite of :func:`render` applied (not yet generated)."""
    return [_spark_exact_integers(_spark_rule_functions(tree.transform(_spark_exact_units)
                                                        .transform(_spark_ingest_pieces)))
            for tree in sqlglot.parse(sql, read="duckdb") if tree is not None]


def render(sql: str, dialect: Dialect = DUCKDB, *, pretty: bool = False) -> str:
    """DuckDB-dialect SQL as ``dialect`` runs it; raises when sqlglot has no rendering for a construct.

    For Spark, the helpers' DuckDB text keeps its exact meaning (the steps build their SQL in
    DuckDB's dialect): :func:`units_decimal`'s product gets the Spark rendering's width, HUGEINT
    becomes DECIMAL(38,0) and its ``//`` the exact quotient (:func:`_spark_exact_integers`);
    ingest's isfinite, regexp_full_match and read_parquet scans their Spark twins
    (:func:`_spark_ingest_pieces`)."""
    _check(dialect)
    if dialect == DUCKDB:
        return sql
    return ";\n".join(tree.sql(dialect="spark", unsupported_level=ErrorLevel.RAISE, pretty=pretty)
                       for tree in spark_trees(sql))


# -- the same rules in Python (parameters, tests, messages) ------------------------------------
def exact_decimal(value: Decimal | float | str) -> Decimal:
    """A parameter as the decimal that was written: a float is read as its shortest repr
    (0.6 → Decimal('0.6'), not 0.59999999999999997779…), so a bound compares exactly."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    return Decimal(repr(value) if isinstance(value, float) else str(value))


def py_round_half_away(value: Decimal | float | str, scale: int) -> Decimal:
    """Python's twin of :func:`round_half_away` (a float is read as its shortest repr, 0.6 → 0.6)."""
    return exact_decimal(value).quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)  # HALF_UP is away from zero


def py_units(value: Decimal | float | str, scale: int) -> int:
    """``value`` rounded half away from zero to ``scale`` decimals, as an integer count of units."""
    return int(py_round_half_away(value, scale).scaleb(scale))
