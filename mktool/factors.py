"""`mktool factors --month M`: which columns of the customer view tell next month's churners apart,
per tenure cohort, ranked by information gain (issue 15; docs/evaluation.md says the same for analysts).

Definitions (/work/report-definitions.md §1):

* **churn label**: that of `mktool evaluate churn` (:func:`mktool.evaluate.churn_base_sql`): the
  base is M's customer_view without closed customers, a base customer churned when M+1's
  subscribers lack them or have them closed. Without M+1's subscribers the ranking is refused;
* **cohorts**: the base's ``tenure_cohort`` values in the order under_6m, 6_12m, over_12m, any
  other value alphabetically, then ``(none)`` (NULL); a cohort without base customers is not listed;
* **factors**: every view column but msisdn, month, month_end, tenure_cohort and DATE/TIMESTAMP
  columns. Numeric (integers, DECIMAL, FLOAT/DOUBLE) ones are binned per cohort: with n the
  cohort's customers with a value and r = 1 + how many of those values are below v (SQL
  ``rank()``), v's bin is ⌊(r − 1)·B / n⌋ + 1, so equal values share a bin and a bin may be
  empty (not listed); NULL is one more group ``(null)``. Categorical ones (VARCHAR, BOOLEAN)
  have a group per value, ``(null)`` last. Columns of any other type are listed as skipped;
* **information gain** (bits): H(p) = −p·log2 p − (1−p)·log2(1−p) (0·log 0 = 0), IG =
  H(churned/n_c) − Σ_g (n_g/n_c)·H(churned_g/n_g) over every group of the cohort (``(null)``
  too), from the integer counts with ``math.log2`` and one ``math.fsum``, rounded to 6 decimals;
* **ranking** per cohort: information gain descending, then factor name; ``top`` keeps the first N.

The counts and churn rates are set-based SQL: one query per batch of factors over the base (a
CTE every factor reads, which DuckDB materialises once per query; no MATERIALIZED keyword, which
Spark SQL lacks), each factor grouped by (cohort, value) first, so the rank of a
value is a running sum over the distinct values — the same r as ``rank()`` over the customers,
without sorting a million rows per column. Python only turns those few rows into entropies.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from mktool.database import Database, dict_rows
from mktool.dialect import Query, exact_rate, int_div
from mktool.errors import StateError, UsageError
from mktool.evaluate import churn_base_sql, label_params, next_month, next_month_loaded
from mktool.freshness import require_fresh_view
from mktool.project import Project
from mktool.schema import EVALUATION_RATE_SCALE, NO_GROUP, VIEW_TABLE
from mktool.sqlquote import quote_identifier

__all__ = ["FactorRanking", "factor_columns", "factors_csv", "factors_query", "factors_tables", "information_gain",
           "queries", "rank_factors"]

#: The column whose values are the cohorts.
COHORT_COLUMN = "tenure_cohort"
#: The cohorts listed first, in this order (scores.yaml's tenure_cohort); others follow alphabetically.
COHORT_ORDER = ("under_6m", "6_12m", "over_12m")
#: View columns that are keys, bookkeeping or the cohort itself, not candidate factors.
NOT_FACTORS = ("msisdn", "month", "month_end", COHORT_COLUMN)
#: The group of customers whose factor value is NULL (the cohort of a NULL tenure_cohort is NO_GROUP).
NULL_GROUP = "(null)"
MIN_BINS, MAX_BINS = 2, 100
DEFAULT_BINS = 10
DEFAULT_TOP = 10
#: Decimals of the information gain and the entropy (Python ``round`` of the float).
GAIN_DECIMALS = 6
#: Factors per query: each query materialises the base with this many columns (measured at 1M
#: customers: docs/benchmark.md).
BATCH = 16
NUMERIC, CATEGORICAL = "numeric", "categorical"

INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                           "UINTEGER", "UBIGINT", "UHUGEINT"})
FLOAT_TYPES = frozenset({"FLOAT", "REAL", "DOUBLE"})
DECIMAL_TYPE = re.compile(r"\ADECIMAL\(\d+,\s*\d+\)\Z")
CATEGORICAL_TYPES = frozenset({"VARCHAR", "BOOLEAN"})
TIME_TYPE = re.compile(r"\A(DATE|TIMESTAMP)\b")

CSV_COLUMNS = ("cohort", "rank", "factor", "kind", "information_gain", "bin", "label", "low", "high", "customers",
               "churned", "churn_rate")


# -- the candidate factors --------------------------------------------------------------------------
@dataclass(frozen=True)
class Factor:
    """A view column ranked as a factor: its kind and how the text of its values reads back."""

    name: str
    kind: str  # NUMERIC | CATEGORICAL
    value: str  # "integer" | "decimal" | "float" | "text": the JSON number (or none) of low and high


def factor_columns(described: Sequence[tuple[str, str]]) -> tuple[list[Factor], list[dict[str, str]]]:
    """(factors, skipped) of the view's (column, type) pairs in its column order; keys, the cohort and
    DATE/TIMESTAMP columns are neither."""
    factors: list[Factor] = []
    skipped: list[dict[str, str]] = []
    for name, type_ in described:
        upper = type_.upper()
        if name in NOT_FACTORS or TIME_TYPE.match(upper):
            continue
        if upper in INTEGER_TYPES:
            factors.append(Factor(name, NUMERIC, "integer"))
        elif DECIMAL_TYPE.match(upper):
            factors.append(Factor(name, NUMERIC, "decimal"))
        elif upper in FLOAT_TYPES:
            factors.append(Factor(name, NUMERIC, "float"))
        elif upper in CATEGORICAL_TYPES:
            factors.append(Factor(name, CATEGORICAL, "text"))
        else:
            skipped.append({"factor": name, "reason": f"type {type_} is neither numeric (integer, DECIMAL, FLOAT, "
                                                      "DOUBLE) nor categorical (VARCHAR, BOOLEAN)"})
    return factors, skipped


# -- SQL ----------------------------------------------------------------------------------------------
def _rate(numerator: str, denominator: str) -> str:
    return exact_rate(numerator, denominator, EVALUATION_RATE_SCALE)


def cohorts_query(month: str) -> Query:
    """Per cohort of the base: customers, churned and the exact churn rate."""
    base = churn_base_sql(f"v.{quote_identifier(COHORT_COLUMN)} AS cohort")
    sql = f"""-- factors: the cohorts of the base of {VIEW_TABLE} M against M+1's subscribers
WITH base AS (
    {base})
SELECT cohort, count(*) AS customers, sum(churned) AS churned, {_rate('sum(churned)', 'count(*)')} AS churn_rate
FROM base GROUP BY cohort"""
    return Query("factors:cohorts", sql, label_params(month))


def _groups_sql(i: int, factor: Factor, bins: int) -> tuple[str, str]:
    """(CTEs, SELECT) of factor ``i``'s groups per cohort: (factor, cohort, missing, pos, low, high, customers,
    churned). ``pos`` is the bin number (numeric) or the value's place in ascending order (categorical);
    ``low``/``high`` are the value text (categorical: ``low`` only); the NULL group has missing = true."""
    counted = (f"d{i} AS (SELECT cohort, f{i} AS v, count(*) AS customers, sum(churned) AS churned "
               f"FROM base GROUP BY cohort, f{i})")
    if factor.kind == CATEGORICAL:
        select = (f"SELECT {i} AS factor, cohort, v IS NULL AS missing, "
                  f"row_number() OVER (PARTITION BY cohort ORDER BY v NULLS LAST) AS pos, "
                  f"CAST(v AS VARCHAR) AS low, CAST(NULL AS VARCHAR) AS high, customers, churned FROM d{i}")
        return counted, select
    # r − 1 = the cohort's customers with a smaller value (a running sum over the distinct values)
    ranked = (f"r{i} AS (SELECT cohort, v, customers, churned, "
              f"sum(customers) OVER (PARTITION BY cohort ORDER BY v ROWS UNBOUNDED PRECEDING) - customers AS below, "
              f"sum(customers) OVER (PARTITION BY cohort) AS valued FROM d{i} WHERE v IS NOT NULL)")
    binned = (f"b{i} AS (SELECT cohort, v, customers, churned, {int_div(f'below * {bins}', 'valued')} + 1 AS pos "
              f"FROM r{i})")
    select = (f"SELECT {i} AS factor, cohort, FALSE AS missing, pos, CAST(min(v) AS VARCHAR) AS low, "
              f"CAST(max(v) AS VARCHAR) AS high, sum(customers) AS customers, sum(churned) AS churned "
              f"FROM b{i} GROUP BY cohort, pos\n"
              f"    UNION ALL SELECT {i}, cohort, TRUE, {bins + 1}, NULL, NULL, customers, churned FROM d{i} "
              f"WHERE v IS NULL")
    return f"{counted},\n{ranked},\n{binned}", select


def factors_query(month: str, factors: Sequence[Factor], bins: int) -> Query:
    """The groups of a batch of factors (numbered 0 … in the batch) per cohort, with their churn rates."""
    if not factors:
        raise ValueError("factors_query needs at least one factor")
    columns = [f"v.{quote_identifier(COHORT_COLUMN)} AS cohort",
               *(f"v.{quote_identifier(f.name)} AS f{i}" for i, f in enumerate(factors))]
    parts = [_groups_sql(i, f, bins) for i, f in enumerate(factors)]
    ctes = ",\n".join(cte for cte, _ in parts)
    selects = "\n    UNION ALL ".join(f"({select})" for _, select in parts)
    sql = f"""-- factors: the groups per cohort of {len(factors)} factors (f0 …: a name could end the comment)
WITH base AS (
    {churn_base_sql(*columns)}),
{ctes},
grouped AS (
    {selects})
SELECT factor, cohort, missing, pos, low, high, customers, churned, {_rate('churned', 'customers')} AS churn_rate
FROM grouped ORDER BY factor, cohort, missing, pos"""
    return Query("factors:groups", sql, label_params(month))


def queries(month: str) -> dict[str, Query]:
    """Every query factors runs, by name, with one factor of each kind and value type
    (tests/test_spark_render.py renders each for Spark)."""
    sample = [Factor("n_integer", NUMERIC, "integer"), Factor("n_decimal", NUMERIC, "decimal"),
              Factor("n_float", NUMERIC, "float"), Factor("c_text", CATEGORICAL, "text")]
    return {"cohorts": cohorts_query(month), "groups": factors_query(month, sample, DEFAULT_BINS)}


# -- information gain ---------------------------------------------------------------------------------
def entropy(churned: int, customers: int) -> float:
    """H(churned / customers) in bits; 0 for an empty or pure group (0·log 0 = 0)."""
    if customers <= 0:
        return 0.0
    p = churned / customers
    return math.fsum(-x * math.log2(x) for x in (p, 1 - p) if x > 0)


def information_gain(churned: int, customers: int, groups: Sequence[tuple[int, int]]) -> float:
    """H(churned/customers) − Σ (n_g/customers)·H(churned_g/n_g) over the (churned_g, n_g) groups, unrounded:
    one ``math.fsum`` of all the terms, so the order of the groups cannot change the result."""
    if customers <= 0:
        return 0.0
    terms = [entropy(churned, customers)]
    terms += [-(n / customers) * entropy(c, n) for c, n in groups]
    return math.fsum(terms)


def _gain(value: float) -> float:
    return round(value, GAIN_DECIMALS) + 0.0  # + 0.0: a float error below zero rounds to -0.0, shown as 0


# -- the ranking ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """One bin of a numeric factor, or one value of a categorical one, or the (null) group, in a cohort."""

    bin: str
    label: str
    low: str | None  # the value's text as DuckDB writes it (a DECIMAL to its scale); None for none
    high: str | None
    customers: int
    churned: int
    churn_rate: Decimal | None

    @property
    def shown(self) -> str:
        """The group as a person reads it (the table, the report): a bin's bounds shortened
        (38.000000 → 38, 1711.4233333333332 → 1711.42, 0.48451 → 0.4845); the documents keep ``label``."""
        if self.low is None or self.high is None:
            return self.label
        return f"{shown_bound(self.low)} – {shown_bound(self.high)}"


def shown_bound(text: str) -> str:
    """A bin bound for display: whole numbers without decimals, 2 decimals from 1 up (half away from
    zero), 4 significant digits below 1; text that is not a finite number as it is."""
    try:
        value = Decimal(text)
    except ArithmeticError:
        return text
    if not value.is_finite():
        return text
    if value == value.to_integral_value():
        return str(int(value))
    if abs(value) >= 1:
        return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    return f"{value:.4g}"


@dataclass(frozen=True)
class RankedFactor:
    rank: int
    factor: Factor
    information_gain: float
    groups: tuple[Group, ...]

    def highest(self) -> Group | None:
        """The group with the highest churn rate (the first listed of equal ones)."""
        best: Group | None = None
        for g in self.groups:
            if g.churn_rate is not None and (best is None or best.churn_rate is None or g.churn_rate > best.churn_rate):
                best = g
        return best


@dataclass(frozen=True)
class CohortRanking:
    cohort: str
    customers: int
    churned: int
    churn_rate: Decimal | None
    entropy: float
    factors: tuple[RankedFactor, ...]


@dataclass(frozen=True)
class FactorRanking:
    month: str
    next_month: str
    bins: int
    top: int | None  # None: every factor
    cohorts: tuple[CohortRanking, ...]
    skipped: tuple[dict[str, str], ...]

    def document(self) -> dict[str, Any]:
        """The JSON document (report-definitions §1): numbers as JSON numbers, rates to 6 decimals."""
        return {
            "month": self.month, "next_month": self.next_month, "bins": self.bins, "top": self.top,
            "cohorts": [{
                "cohort": c.cohort, "customers": c.customers, "churned": c.churned, "churn_rate": _number(c.churn_rate),
                "entropy": c.entropy,
                "factors": [{
                    "rank": f.rank, "factor": f.factor.name, "kind": f.factor.kind,
                    "information_gain": f.information_gain, "groups": len(f.groups),
                    "bins": [{"bin": g.bin, "label": g.label, "low": _value(f.factor, g.low),
                              "high": _value(f.factor, g.high), "customers": g.customers, "churned": g.churned,
                              "churn_rate": _number(g.churn_rate)} for g in f.groups],
                } for f in c.factors],
            } for c in self.cohorts],
            "skipped": [dict(s) for s in self.skipped],
        }


def _number(value: Decimal | None) -> float | None:
    """A 6-decimal rate as a JSON number (≤ 15 significant digits: the float prints as the decimal)."""
    return None if value is None else float(value)


def _value(factor: Factor, text: str | None) -> int | float | None:
    """A bin's low or high as a JSON number: an integer as itself, a DECIMAL or DOUBLE as the float its
    text reads as (12.50 → 12.5, never 12.4999…); NaN and ±inf are not JSON numbers: null (the label has them)."""
    if text is None or factor.kind != NUMERIC:
        return None
    if factor.value == "integer":
        return int(text)
    number = float(Decimal(text)) if factor.value == "decimal" else float(text)
    return number if math.isfinite(number) else None


def _cohort_key(name: str | None) -> tuple[int, str]:
    if name is None:
        return (len(COHORT_ORDER) + 1, "")
    if name in COHORT_ORDER:
        return (COHORT_ORDER.index(name), "")
    return (len(COHORT_ORDER), name)


def _check_options(bins: int, top: int | None) -> int | None:
    if isinstance(bins, bool) or not isinstance(bins, int) or not MIN_BINS <= bins <= MAX_BINS:
        raise UsageError(f"bins must be a whole number from {MIN_BINS} to {MAX_BINS}, got {bins!r}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 0):
        raise UsageError(f"top must be a whole number of at least 0 (0: every factor), got {top!r}")
    return None if top == 0 else top


def _require_inputs(db: Database, project: Project, month: str) -> tuple[str, list[tuple[str, str]]]:
    """Refuse what the ranking cannot be computed from; returns (M+1, the view's (column, type) pairs)."""
    after = next_month(month)
    db.require_month(VIEW_TABLE, month, "score")
    described = [(str(r[0]), str(r[1])) for r in db.c.execute(f"DESCRIBE {quote_identifier(VIEW_TABLE)}").fetchall()]
    if COHORT_COLUMN not in {name for name, _ in described}:
        raise StateError(f"{VIEW_TABLE} has no column {COHORT_COLUMN}: the factors are ranked per tenure cohort",
                         table=VIEW_TABLE, hint=f"scores.yaml ({project.root}) must define {COHORT_COLUMN}; rebuild "
                                                f"with `mktool score --month {month}`")
    if not next_month_loaded(db, month):
        loaded = ", ".join(db.months("subscribers")) or "none"
        raise StateError(f"factors need {after}'s subscribers for the churn label: ingest them (mktool ingest "
                         f"subscribers_{after}.parquet), then run again",
                         hint=f"months of subscribers loaded: {loaded}")
    return after, described


def _rows(db: Database, query: Query) -> list[dict[str, Any]]:
    return dict_rows(db.c.execute(query.sql, query.params))


def _group(factor: Factor, row: dict[str, Any]) -> Group:
    customers, churned = int(row["customers"]), int(row["churned"])
    if row["missing"]:
        return Group(NULL_GROUP, NULL_GROUP, None, None, customers, churned, row["churn_rate"])
    if factor.kind == CATEGORICAL:
        text = str(row["low"])
        return Group(text, text, None, None, customers, churned, row["churn_rate"])
    low, high = str(row["low"]), str(row["high"])
    return Group(str(int(row["pos"])), f"{low} – {high}", low, high, customers, churned, row["churn_rate"])


def rank_factors(db: Database, project: Project, month: str, *, bins: int = DEFAULT_BINS,
                 top: int | None = DEFAULT_TOP) -> FactorRanking:
    """Rank every factor of ``month``'s customer view by information gain about churn in M+1, per cohort.
    Read-only: nothing is stored. ``top`` None or 0 keeps every factor."""
    kept = _check_options(bins, top)
    after, described = _require_inputs(db, project, month)
    require_fresh_view(db.c, month)
    cohort_rows = sorted(_rows(db, cohorts_query(month)), key=lambda r: _cohort_key(r["cohort"]))
    if not cohort_rows:
        raise StateError(f"{VIEW_TABLE} for {month} has no customer whose status is not closed: no base to rank "
                         "factors on", table=VIEW_TABLE,
                         hint=f"check the subscribers of {month} and `mktool score --month {month}`")
    factors, skipped = factor_columns(described)
    # (cohort, factor name) -> its groups in listing order (the query orders them)
    groups: dict[tuple[str | None, str], list[Group]] = {}
    for start in range(0, len(factors), BATCH):
        batch = factors[start:start + BATCH]
        for row in _rows(db, factors_query(month, batch, bins)):
            factor = batch[int(row["factor"])]
            groups.setdefault((row["cohort"], factor.name), []).append(_group(factor, row))
    cohorts = []
    for row in cohort_rows:
        customers, churned = int(row["customers"]), int(row["churned"])
        scored = []
        for factor in factors:
            listed = tuple(groups.get((row["cohort"], factor.name), ()))
            gain = _gain(information_gain(churned, customers, [(g.churned, g.customers) for g in listed]))
            scored.append((gain, factor, listed))
        scored.sort(key=lambda s: (-s[0], s[1].name))
        ranked = tuple(RankedFactor(i, factor, gain, listed)
                       for i, (gain, factor, listed) in enumerate(scored[:kept] if kept else scored, 1))
        cohorts.append(CohortRanking(NO_GROUP if row["cohort"] is None else str(row["cohort"]), customers, churned,
                                     row["churn_rate"], _gain(entropy(churned, customers)), ranked))
    return FactorRanking(month, after, bins, kept, tuple(cohorts), tuple(skipped))


# -- the ranking as tables and csv (the CLI prints these) ----------------------------------------------
def _shown(value: float | Decimal | None) -> str:
    return "" if value is None else f"{Decimal(str(value)):.6f}"


def factors_tables(ranking: FactorRanking) -> list[tuple[str, list[str], list[tuple[Any, ...]]]]:
    """(title, columns, rows) per cohort: the top factors, each with the group whose churn rate is highest."""
    columns = ["rank", "factor", "kind", "information gain", "groups", "highest churn", "its churn rate"]
    tables = []
    for c in ranking.cohorts:
        title = (f"Churn factors {ranking.month}, cohort {c.cohort}: {c.customers:,} customers, {c.churned:,} "
                 f"churned by {ranking.next_month} ({_shown(c.churn_rate)}), entropy {c.entropy:.6f} bits")
        rows = []
        for f in c.factors:
            best = f.highest()
            rows.append((f.rank, f.factor.name, f.factor.kind, f"{f.information_gain:.6f}", len(f.groups),
                         best.shown if best else "", _shown(best.churn_rate) if best else ""))
        tables.append((title, columns, rows))
    return tables


def factors_csv(ranking: FactorRanking) -> str:
    """One csv row per (cohort, factor, group); low and high as the values' text (a DECIMAL to its scale)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in ranking.cohorts:
        for f in c.factors:
            for g in f.groups:
                writer.writerow([c.cohort, f.rank, f.factor.name, f.factor.kind, f"{f.information_gain:.6f}", g.bin,
                                 g.label, g.low or "", g.high or "", g.customers, g.churned, _shown(g.churn_rate)])
    return buffer.getvalue()
