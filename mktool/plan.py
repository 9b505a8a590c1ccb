"""`mktool plan`: plan recommendation (套餐推荐) by users × plans Cartesian product (SPEC §5).

Every candidate customer of the month is paired with every target plan other than their
own, in one set-based DuckDB query; each pair is priced at the customer's 3-month average
usage, the pairs whose total-fee change rate (总费变化率) and rental change rate (月租变化率)
fall inside the windows are kept, and a customer's kept plans are ranked.

Money is exact (docs/money.md): bills are integer counts of pico-yuan computed from the
view's exact averages, stored and shown rounded half away from zero to the fen; the rates
are the exact quotients rounded half away from zero to 6 decimals, and those are what the
windows compare and the ranking orders. Usage averages (DOUBLE minutes and MB) are rounded
to 6 decimals before pricing, so that a customer does not flip in or out of the target list
because DuckDB added three numbers in another order (5.93, 5.54 and 3.53 MB average to
4.999999999999999, which is 5 MB).

The SQL lives in the ``*_SQL`` constants below and is put together by the ``*_query``
functions, apart from execution; every query transpiles to Spark SQL with sqlglot
(tests/test_plan.py checks it). ``explain`` runs the same queries for one customer
(``msisdn=``: bound as ``$msisdn``, read from customer_view before anything else).
Parameters come from ``matrices/plan.yaml`` and can be overridden per run
(:meth:`PlanConfig.with_overrides`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mktool import dialect
from mktool.console import QUIET, Reporter
from mktool.contract import check_month
from mktool.database import Database, record_funnel, record_step, replace_month
from mktool.dialect import Query, exact_decimal
from mktool.errors import MktoolError, StateError
from mktool.freshness import require_fresh_view, view_build_id
from mktool.planconfig import PlanConfig, Window, script_sql
from mktool.project import Project
from mktool.schema import (
    CUSTOMER_PARAM,
    PLAN_FUNNEL,
    PLAN_STAGES,
    PLAN_TABLE,
    PLAN_TABLE_COLUMNS,
    VIEW_TABLE,
)

FUNNEL = PLAN_FUNNEL
#: Funnel stages, in order; each counts distinct subscribers that pass it and all before it.
STAGES = PLAN_STAGES

#: Columns of ``plan_recommendations``, in order: money DECIMAL(18,2) (the bill rounded to the
#: fen), rates DECIMAL(38,12) (the exact rate truncated to 12 decimals: rounded to 6 it is the
#: value that was compared, rounded to 4 the value the lists show, both as from the exact rate).
TABLE_COLUMNS = PLAN_TABLE_COLUMNS
#: Columns of ``--out`` (SPEC §6 plan columns): no plan_name; money to 2 decimals, rates to 4.
EXPORT_COLUMNS = tuple(c for c in TABLE_COLUMNS if c != "plan_name")

# -- SQL ------------------------------------------------------------------------------------------
# Named parameters: $month, $min_data (candidates); $total_lo, $total_hi, $rental_lo,
# $rental_hi, $top (recommendations); $box_* (the sweep: the smallest window holding every
# window of the grid). Bounds and the minimum are passed as exact decimals (Decimal).
# DuckDB dialect, written in forms sqlglot transpiles to Spark SQL (no QUALIFY, no FILTER, no
# IN-subquery in a select list, no DuckDB-only aggregates).
#
# Money is exact (docs/money.md): the customer's averages are read as integer micro-yuan, the
# plan's rental as fen and its unit prices as micro-yuan per unit, the usage averages are
# rounded half away from zero to 6 decimals (micro-MB, micro-minutes) — the SPEC §5 rule —
# so an overage (micro-units × micro-yuan) is an exact count of pico-yuan (10⁻¹²) and so is
# new_total. The rates are the exact quotients rounded half away from zero to 6 decimals:
# those are the values compared with the windows and ranked on (stored: truncated to 12
# decimals, from which both the 6 and the 4 shown round exactly). The bills are stored and
# shown rounded half away from zero to the fen. Every formula comes from mktool/dialect.py.
_MICRO = 6  # decimals of the averages, usage, unit prices and rates
_PICO = 12  # decimals of an overage or a bill: micro-units × micro-yuan

#: The named parameter of a query built for one customer (``explain``).


def candidates_sql(*, one_customer: bool = False) -> str:
    """Candidate customers of the month, with one flag per funnel stage (SPEC §5 step 1).

    ``one_customer`` reads only the customer bound to ``$msisdn`` (``explain``): the same
    rows the whole month gives that customer, from one row of customer_view.
    """
    rows = f"month = $month AND msisdn = ${CUSTOMER_PARAM}" if one_customer else "month = $month"
    return f"""
view_m AS (
    SELECT
        msisdn, month, status, plan_id,
        {dialect.double_units("data_mb_3m", _MICRO)} AS data_mb_u,
        {dialect.double_units("voice_min_3m", _MICRO)} AS voice_min_u,
        {dialect.small_decimal_units("rental_3m", _MICRO)} AS rental_u,
        {dialect.small_decimal_units("current_total_3m", _MICRO)} AS current_total_u,
        {dialect.small_decimal_units("addon_3m", _MICRO)} AS addon_u
    FROM customer_view
    WHERE {rows}
),
view_d AS (
    SELECT *,
        CAST(data_mb_u AS DOUBLE) AS data_mb_d, CAST(coalesce(voice_min_u, 0) AS DOUBLE) AS voice_min_d,
        CAST(rental_u AS DOUBLE) AS rental_d, CAST(current_total_u AS DOUBLE) AS current_total_d,
        CAST(coalesce(addon_u, 0) AS DOUBLE) AS addon_d
    FROM view_m
),
eligible_plans AS (
    SELECT DISTINCT plan_id FROM plans WHERE product_status = 1
),
staged AS (
    SELECT
        v.*,
        coalesce(v.status = 'active', false)                                AS is_active,
        coalesce(v.data_mb_u >= $min_data * {10 ** _MICRO}, false)          AS has_min_data,
        e.plan_id IS NOT NULL                                               AS on_eligible_plan,
        coalesce(v.current_total_u > 0 AND v.rental_u > 0, false)           AS is_billable
    FROM view_d AS v
    LEFT JOIN eligible_plans AS e ON e.plan_id = v.plan_id
),
candidates AS (
    SELECT * FROM staged WHERE is_active AND has_min_data AND on_eligible_plan AND is_billable
)"""


CANDIDATES_SQL = candidates_sql()

#: The CTEs of candidates_sql a pairing can start from: the candidates, or every customer
#: with its stage flags (``explain`` prices the plans for a customer the funnel dropped too).
PAIRED_CUSTOMERS = ("candidates", "staged")

def pairs_sql(customers: str = "candidates") -> str:
    """Every candidate × every target plan but their own (SPEC §5 step 2), with the exact integer
    units the bill is made of and DOUBLE approximations of the two rates (``*_approx``).

    The approximations only serve to skip, before the exact arithmetic (see ROUNDED_SQL), pairs
    that are far outside a window: HUGEINT products and divisions on every pair would cost
    twice the time of the whole step. Missing voice minutes or add-on fees count as 0; a target
    plan with a missing tariff figure is never offered (greatest() would otherwise ignore the
    NULL and price it free). ``customers`` names the CTE the customers come from
    (:data:`PAIRED_CUSTOMERS`).
    """
    if customers not in PAIRED_CUSTOMERS:
        raise MktoolError(f"plan pairs start from one of {', '.join(PAIRED_CUSTOMERS)}, not {customers!r}")
    return f"""
target_plans AS (
    SELECT
        plan_id, plan_name,
        {dialect.fen("monthly_rental")} AS rental_fen,
        {dialect.double_units("included_data_mb", _MICRO)} AS included_data_u,
        {dialect.double_units("included_voice_min", _MICRO)} AS included_voice_u,
        {dialect.small_decimal_units(dialect.read_unit_price("data_overage_per_mb"), _MICRO)} AS data_price_u,
        {dialect.small_decimal_units(dialect.read_unit_price("voice_overage_per_min"), _MICRO)} AS voice_price_u
    FROM plans
    WHERE is_target
      AND monthly_rental IS NOT NULL AND included_data_mb IS NOT NULL AND included_voice_min IS NOT NULL
      AND data_overage_per_mb IS NOT NULL AND voice_overage_per_min IS NOT NULL
),
target_d AS (
    SELECT *,
        CAST(rental_fen AS DOUBLE) AS rental_fen_d,
        CAST(included_data_u AS DOUBLE) AS included_data_d, CAST(included_voice_u AS DOUBLE) AS included_voice_d,
        CAST(data_price_u AS DOUBLE) AS data_price_d, CAST(voice_price_u AS DOUBLE) AS voice_price_d
    FROM target_plans
),
rated AS (
    SELECT
        c.msisdn, c.month, c.plan_id AS current_plan_id, t.plan_id, t.plan_name, t.rental_fen,
        coalesce(c.voice_min_u, 0) AS voice_min_u, c.data_mb_u, t.included_voice_u, t.included_data_u,
        t.voice_price_u, t.data_price_u, coalesce(c.addon_u, 0) AS addon_u, c.current_total_u, c.rental_u,
        (t.rental_fen_d * {10.0 ** (_PICO - 2)!r}
            + greatest(0.0, c.voice_min_d - t.included_voice_d) * t.voice_price_d
            + greatest(0.0, c.data_mb_d - t.included_data_d) * t.data_price_d
            + c.addon_d * {10.0 ** (_PICO - _MICRO)!r})
            / (c.current_total_d * {10.0 ** (_PICO - _MICRO)!r}) AS total_fee_change_approx,
        t.rental_fen_d * {10.0 ** (_MICRO - 2)!r} / c.rental_d AS rental_change_approx,
        greatest(c.voice_min_d, c.data_mb_d, c.current_total_d, c.rental_d, c.addon_d, t.rental_fen_d,
                 t.included_voice_d, t.included_data_d, t.voice_price_d, t.data_price_d) < {2.0 ** 53!r}
            AS approx_is_close
    FROM {customers} AS c
    CROSS JOIN target_d AS t
    WHERE t.plan_id <> c.plan_id
)"""


PAIRS_SQL = pairs_sql()


def exact_sql(where: str = "") -> str:
    """The pairs (``rated``) that pass ``where`` priced exactly, as CTE ``rated6``: the bill's
    parts as integers (pico-yuan, fen, micro-yuan), new_rental, and the two rates rounded half
    away from zero to 6 decimals (``*_6``: what the windows compare and the ranking orders).
    :data:`SHOWN_COLUMNS_SQL` turns a row into the stored bill and rates."""
    return f"""
near AS (
    SELECT msisdn, month, current_plan_id, plan_id, plan_name, rental_fen, addon_u, current_total_u, rental_u,
        total_fee_change_approx, rental_change_approx, approx_is_close,
        {dialect.integer("greatest(0, voice_min_u - included_voice_u)")} * voice_price_u AS voice_overage_p,
        {dialect.integer("greatest(0, data_mb_u - included_data_u)")} * data_price_u AS data_overage_p
    FROM rated
    {where}
),
priced AS (
    SELECT *,
        {dialect.integer("rental_fen")} * {10 ** (_PICO - 2)} + voice_overage_p + data_overage_p
            + {dialect.integer("addon_u")} * {10 ** (_PICO - _MICRO)} AS new_total_p
    FROM near
),
rated6 AS (
    SELECT *,
        {dialect.units_decimal("rental_fen", 2, precision=18)} AS new_rental,
        {dialect.units_decimal(_rate6("total_fee_change_approx", "new_total_p", "current_total_u"), _MICRO,
                               precision=18)}
            AS total_fee_change_6,
        {dialect.units_decimal(_rate6("rental_change_approx",
                                      f"{dialect.integer('rental_fen')} * {10 ** (2 * _MICRO - 2)}", "rental_u"),
                               _MICRO, precision=18)}
            AS rental_change_6
    FROM priced
)"""


def _rate6(approx: str, numerator: str, denominator: str) -> str:
    """numerator / denominator in 10⁻⁶ units, rounded half away from zero — taken from the DOUBLE
    approximation where that cannot be wrong, from the exact 128-bit division elsewhere.

    The approximation is built from exact integers below 2⁵³ (``approx_is_close``) by additions
    of non-negative terms, products and one division: within 10 ulps (2.2·10⁻¹⁵, relative) of
    the exact rate. Below 1000 that is less than 2.2·10⁻⁶ of a 10⁻⁶ unit, so when the scaled
    approximation is more than 10⁻³ of a unit from a half unit both round the same way. The
    other 0.2 % of the pairs, and every pair whose approximation is not close, take the exact
    division (tests/test_money.py checks the two paths agree)."""
    scaled = f"({approx} * 1e6)"
    fast = (f"approx_is_close AND {approx} >= 0 AND {approx} < 1000 "
            f"AND abs({scaled} - floor({scaled}) - 0.5) > 0.001")
    return (f"(CASE WHEN {fast} THEN CAST(floor({scaled} + 0.5) AS BIGINT) "
            f"ELSE CAST({dialect.div_half_away(numerator, denominator)} AS BIGINT) END)")


_SMALL = 4_000_000_000_000_000_000  # below this a count fits the 64-bit formulas (2n + d < 2⁶³)


def _fen(units: str, scale: int) -> str:
    """A count of 10⁻ˢᶜᵃˡᵉ yuan rounded half away from zero to the fen (64-bit when it fits)."""
    fast = dialect.div_half_away_64(units, str(10 ** (scale - 2)))
    exact = f"CAST({dialect.round_units(units, scale, 2)} AS BIGINT)"
    return dialect.units_decimal(f"(CASE WHEN {units} BETWEEN 0 AND {_SMALL} THEN {fast} ELSE {exact} END)", 2,
                                 precision=18)


def _rate12(numerator: str, denominator: str, shift: int) -> str:
    """⌊numerator · 10ˢʰⁱᶠᵗ / denominator⌋ (a rate truncated to 12 decimals), 64-bit when it fits."""
    fast = dialect.scaled_quotient_64(numerator, denominator, shift)
    fits = (f"{numerator} BETWEEN 0 AND {_SMALL} AND {denominator} BETWEEN 1 AND {9 * 10 ** (18 - shift)} "
            f"AND CAST({numerator} AS DOUBLE) < CAST({denominator} AS DOUBLE) * {8e18 / 10 ** shift!r}")
    exact = dialect.div_toward_zero(f"{dialect.integer(numerator)} * {10 ** shift}", denominator)
    return dialect.units_decimal(f"(CASE WHEN {fits} THEN {dialect.integer(fast)} ELSE {exact} END)",
                                 dialect.RATE_SCALE)


#: A priced pair (a row of ``rated6``) as stored: the bills rounded half away from zero to the
#: fen; each rate as the exact quotient truncated to 12 decimals, from which rounding half away
#: from zero to the 6 decimals compared or the 4 shown gives the exact quotient's rounding (see
#: dialect.div_toward_zero). Computed after the ranking, for the rows kept only: the divisions
#: are the expensive part of the step.
SHOWN_COLUMNS_SQL = f"""
    new_rental,
    {_fen("voice_overage_p", _PICO)} AS new_voice_overage,
    {_fen("data_overage_p", _PICO)} AS new_data_overage,
    {_fen("new_total_p", _PICO)} AS new_total,
    {_fen("current_total_u", _MICRO)} AS current_total,
    {_rate12("new_total_p", "current_total_u", dialect.RATE_SCALE - _MICRO)} AS total_fee_change,
    {_rate12(f"{dialect.integer('rental_fen')} * {10 ** (_PICO - 2)}", "rental_u", dialect.RATE_SCALE + _MICRO - _PICO)}
        AS rental_change"""


#: The exact columns for the pairs that can be inside [$lo, $hi] of both windows. The exact
#: division is the expensive part of the whole query, so pairs whose DOUBLE rates are out by
#: more than 0.000001 are dropped before it: an exact shortcut (the approximations are within
#: 10⁻¹⁴ of the exact rates, and rounding to 6 decimals moves a value by at most 0.0000005);
#: the exact rates still decide. The {total_lo} … {rental_hi} placeholders are filled with the
#: names of the parameters that bound the windows.
ROUNDED_SQL = exact_sql(
    "WHERE total_fee_change_approx BETWEEN ${total_lo} - 0.000001 AND ${total_hi} + 0.000001\n"
    "      AND rental_change_approx BETWEEN ${rental_lo} - 0.000001 AND ${rental_hi} + 0.000001")

#: A priced pair (a row of ``rated6``) inside the total-fee-change window, and inside the
#: rental-change window: exact decimals, rounded to 6 decimals, against the bounds as written.
IN_TOTAL_WINDOW_SQL = "total_fee_change_6 BETWEEN $total_lo AND $total_hi"
IN_RENTAL_WINDOW_SQL = "rental_change_6 BETWEEN $rental_lo AND $rental_hi"

#: Pairs inside both windows, ranked per customer (SPEC §5 steps 3-5); all exact decimals.
RANKED_SQL = f"""
kept AS (
    SELECT * FROM rated6
    WHERE {IN_TOTAL_WINDOW_SQL}
      AND {IN_RENTAL_WINDOW_SQL}
),
ranked AS (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY msisdn
            ORDER BY abs(total_fee_change_6 - 1), new_rental DESC, plan_id
        ) AS plan_rank
    FROM kept
)"""

#: The rows of ``plan_recommendations`` for the month.
RECOMMEND_SELECT_SQL = f"""
SELECT
    msisdn, month, CAST(plan_rank AS INTEGER) AS rank, current_plan_id, plan_id, plan_name,{SHOWN_COLUMNS_SQL}
FROM ranked
WHERE plan_rank <= $top"""

#: Funnel stages base … billable (in_rate_window comes from the recommendations): each
#: subscriber's furthest stage once (one GROUP BY instead of five DISTINCT counts).
FUNNEL_SELECT_SQL = """,
reached AS (
    SELECT
        msisdn,
        max(CASE WHEN NOT is_active THEN 1
                 WHEN NOT has_min_data THEN 2
                 WHEN NOT on_eligible_plan THEN 3
                 WHEN NOT is_billable THEN 4
                 ELSE 5 END) AS stage_reached
    FROM staged
    WHERE msisdn IS NOT NULL
    GROUP BY msisdn
)
SELECT
    count(*)                                                AS base,
    coalesce(sum(CASE WHEN stage_reached >= 2 THEN 1 ELSE 0 END), 0) AS active,
    coalesce(sum(CASE WHEN stage_reached >= 3 THEN 1 ELSE 0 END), 0) AS data_ge_min,
    coalesce(sum(CASE WHEN stage_reached >= 4 THEN 1 ELSE 0 END), 0) AS eligible_plan,
    coalesce(sum(CASE WHEN stage_reached >= 5 THEN 1 ELSE 0 END), 0) AS billable
FROM reached"""

#: Targeted customers per (total window × rental window) cell, pairs computed once. Each
#: customer's pairs are folded into one flag per cell (one GROUP BY msisdn), the flags are
#: summed, and the sums are laid out as rows along a VALUES grid of the cells. (Joining the
#: pairs to the grid and counting DISTINCT msisdn per cell gives the same numbers but
#: multiplies the pairs by the cells they fall in: several times slower on millions.)
#: Filled in by :func:`sweep_query`: {flags}, {sums}, {cells}, {pick}.
SWEEP_SQL = """
cell_flags AS (
    SELECT msisdn,
        {flags}
    FROM rated6
    GROUP BY msisdn
),
cell_counts AS (
    SELECT
        {sums}
    FROM cell_flags
),
cells AS (
    SELECT * FROM (VALUES {cells}) AS g(cell_no, total_no, rental_no, total_lo, total_hi, rental_lo, rental_hi)
)
SELECT cells.total_no, cells.rental_no, CASE cells.cell_no {pick} END AS customers
FROM cells CROSS JOIN cell_counts
ORDER BY cells.total_no, cells.rental_no"""

#: ``--out``: the stored rows as SPEC §6 lists them (no plan_name), money to 2 decimals and
#: rates to 4 (rounded half away from zero) so that csv shows 228.00 and 1.0364; positional
#: parameter: the month.
EXPORT_SQL = f"""
SELECT
    msisdn, month, rank, current_plan_id, plan_id,
    {dialect.money("new_rental")}        AS new_rental,
    {dialect.money("new_voice_overage")} AS new_voice_overage,
    {dialect.money("new_data_overage")}  AS new_data_overage,
    {dialect.money("new_total")}         AS new_total,
    {dialect.money("current_total")}     AS current_total,
    {dialect.round_half_away("total_fee_change", 4)} AS total_fee_change,
    {dialect.round_half_away("rental_change", 4)}    AS rental_change
FROM {PLAN_TABLE}
WHERE month = ?
ORDER BY msisdn, rank"""


def candidate_params(month: str, config: PlanConfig) -> dict[str, Any]:
    """The candidates' parameters: the month and the minimum data as the exact decimal written."""
    return {"month": month, "min_data": exact_decimal(config.min_data_mb)}


def window_params(config: PlanConfig) -> dict[str, Any]:
    """The windows' bounds as the exact decimals written (0.6 is 0.6, not 0.59999…)."""
    return {"total_lo": exact_decimal(config.total_change.lo), "total_hi": exact_decimal(config.total_change.hi),
            "rental_lo": exact_decimal(config.rental_change.lo), "rental_hi": exact_decimal(config.rental_change.hi)}


def customer_params(msisdn: str | None) -> dict[str, Any]:
    """The one customer a query is built for (``msisdn``), bound as a parameter; none for the month."""
    return {} if msisdn is None else {CUSTOMER_PARAM: msisdn}


def funnel_query(month: str, config: PlanConfig, *, msisdn: str | None = None) -> Query:
    """Counts of the stages base … billable (for ``msisdn`` only: 1 for each stage the customer reaches)."""
    return Query("plan:funnel", f"WITH {candidates_sql(one_customer=msisdn is not None)}{FUNNEL_SELECT_SQL}",
                 {**candidate_params(month, config), **customer_params(msisdn)})


def recommend_query(month: str, config: PlanConfig, *, ordered: bool = True, msisdn: str | None = None) -> Query:
    """The month's plan_recommendations rows (TABLE_COLUMNS), ordered by msisdn, rank (``msisdn``: its rows)."""
    rounded = ROUNDED_SQL.format(total_lo="total_lo", total_hi="total_hi", rental_lo="rental_lo",
                                 rental_hi="rental_hi")
    candidates = candidates_sql(one_customer=msisdn is not None)
    sql = f"WITH {candidates},{PAIRS_SQL},{rounded},{RANKED_SQL}{RECOMMEND_SELECT_SQL}"
    if ordered:
        sql += "\nORDER BY msisdn, rank"
    return Query("plan:recommend", sql, {**candidate_params(month, config), **window_params(config),
                                         "top": int(config.top),
                       **customer_params(msisdn)})


def _num(x: float) -> str:
    """A window bound as an exact decimal literal (0.6, 1.5, 10)."""
    return f"{exact_decimal(x):f}"


def sweep_query(month: str, config: PlanConfig, total_windows: Sequence[Window],
                rental_windows: Sequence[Window]) -> Query:
    """Targeted customers for every total × rental window (rows: total_no, rental_no, customers).

    The window bounds are validated floats written into the SQL as literals (the grid is
    part of the query's shape); the month and minimum data stay parameters.
    """
    if not total_windows or not rental_windows:
        raise MktoolError("the sweep needs at least one total-change and one rental-change window")
    cells = [(k, i, j, t, r) for k, (i, j, t, r) in enumerate(
        (i, j, t, r) for i, t in enumerate(total_windows) for j, r in enumerate(rental_windows))]
    flags = ",\n        ".join(
        f"max(CASE WHEN total_fee_change_6 BETWEEN {_num(t.lo)} AND {_num(t.hi)} "
        f"AND rental_change_6 BETWEEN {_num(r.lo)} AND {_num(r.hi)} THEN 1 ELSE 0 END) AS cell_{k}"
        for k, _, _, t, r in cells)
    sums = ",\n        ".join(f"coalesce(sum(cell_{k}), 0) AS cell_{k}" for k, *_ in cells)
    values = ", ".join(f"({k}, {i}, {j}, {_num(t.lo)}, {_num(t.hi)}, {_num(r.lo)}, {_num(r.hi)})"
                       for k, i, j, t, r in cells)
    pick = " ".join(f"WHEN {k} THEN cell_counts.cell_{k}" for k, *_ in cells)
    grid = SWEEP_SQL.format(flags=flags, sums=sums, cells=values, pick=pick)
    params = {
        **candidate_params(month, config),
        "box_total_lo": exact_decimal(min(w.lo for w in total_windows)),
        "box_total_hi": exact_decimal(max(w.hi for w in total_windows)),
        "box_rental_lo": exact_decimal(min(w.lo for w in rental_windows)),
        "box_rental_hi": exact_decimal(max(w.hi for w in rental_windows)),
    }
    rounded = ROUNDED_SQL.format(total_lo="box_total_lo", total_hi="box_total_hi", rental_lo="box_rental_lo",
                                 rental_hi="box_rental_hi")
    return Query("plan:sweep", f"WITH {CANDIDATES_SQL},{PAIRS_SQL},{rounded},{grid}", params)


# -- the step -------------------------------------------------------------------------------------
@dataclass
class PlanResult:
    month: str
    config: PlanConfig
    stages: list[tuple[str, int]]  # STAGES, in order, with distinct-subscriber counts
    rows: int  # recommendation rows written (or, with dry_run, that would be written)
    customers: int  # distinct customers with at least one recommendation (= in_rate_window)
    dry_run: bool


@dataclass(frozen=True)
class SweepCell:
    total_change: Window
    rental_change: Window
    customers: int


def _check_inputs(db: Database, month: str) -> None:
    check_month(month)
    db.require_month(VIEW_TABLE, month, "score")
    if not db.table_exists("plans"):
        raise StateError("table plans is not loaded", hint="run `mktool ingest plans.parquet` first")
    require_fresh_view(db.c, month)


def _stages(counts: Any, customers: int) -> list[tuple[str, int]]:
    return list(zip(STAGES, [*(int(c) for c in counts), int(customers)]))


def plan(db: Database, project: Project, month: str, *, config: PlanConfig | None = None,
         reporter: Reporter = QUIET, dry_run: bool = False) -> PlanResult:
    """Build ``plan_recommendations`` and the ``plan`` funnel for ``month`` (replacing that month's).

    With ``dry_run`` everything is computed and counted but nothing is written, so it also
    works on a read-only connection. ``config`` (default: the project's plan.yaml) carries
    the command-line overrides.
    """
    config = project.plan if config is None else config
    _check_inputs(db, month)
    funnel_q = funnel_query(month, config)
    rec_q = recommend_query(month, config)
    con = db.c
    if dry_run:
        inner = recommend_query(month, config, ordered=False)
        with reporter.step(f"planning {month} (dry run)"):
            counts = con.execute(funnel_q.sql, funnel_q.params).fetchone()
            rows, customers = con.execute(  # type: ignore[misc]
                f"SELECT count(*), count(DISTINCT msisdn) FROM ({inner.sql}) AS r", inner.params).fetchone()
            stages = _stages(counts, customers)
    else:
        with reporter.step(f"planning {month}"), db.transaction():
            counts = con.execute(funnel_q.sql, funnel_q.params).fetchone()
            rows = replace_month(con, PLAN_TABLE, month, rec_q.sql, rec_q.params)
            customers = con.execute(f"SELECT count(DISTINCT msisdn) FROM {PLAN_TABLE} WHERE month = ?",
                                    [month]).fetchone()[0]  # type: ignore[index]
            stages = _stages(counts, customers)
            record_funnel(con, month, FUNNEL, stages)
            record_step(con, month, "plan", inputs=view_build_id(con, month) or "", settings=config.settings(),
                        overrides=dict(config.overrides))
    return PlanResult(month, config, stages, int(rows), int(customers), dry_run)


def sweep(db: Database, project: Project, month: str, total_windows: Sequence[Window] | None = None,
          rental_windows: Sequence[Window] | None = None, *, config: PlanConfig | None = None) -> list[SweepCell]:
    """How many customers each total × rental window pair would target (nothing is written).

    Windows default to plan.yaml's ``sweep`` grid; duplicates are dropped, order is kept.
    """
    config = project.plan if config is None else config
    _check_inputs(db, month)
    totals = list(dict.fromkeys(total_windows or config.sweep_total))
    rentals = list(dict.fromkeys(rental_windows or config.sweep_rental))
    q = sweep_query(month, config, totals, rentals)
    return [SweepCell(totals[i], rentals[j], int(n)) for i, j, n in db.c.execute(q.sql, q.params).fetchall()]


def queries(month: str, config: PlanConfig) -> dict[str, Query]:
    """Every query plan runs (and ``--out`` writes) for this month and configuration, by name:
    for rendering and review (tests/test_spark_render.py renders each for Spark)."""
    return {
        "funnel": funnel_query(month, config),
        "recommend": recommend_query(month, config),
        "recommend_unordered": recommend_query(month, config, ordered=False),
        "sweep": sweep_query(month, config, config.sweep_total, config.sweep_rental),
        "export": Query("plan:export", EXPORT_SQL),
        "script": Query("plan:script", f"SELECT {script_sql(config.script)} AS script FROM {PLAN_TABLE}"),
    }
