"""An independent reference of `mktool factors` and `mktool profile` (/work/report-definitions.md §1, §2).

Plain Python over rows, written from the definitions alone — never from mktool/factors.py or
mktool/profile.py — so that tests/test_report_reference.py can compare the two on random
databases: two readings of one text that agree on every case are far likelier right than one.
Counts are ints; rates, shares and means are exact (fractions.Fraction) rounded half away from
zero; the entropy and information gain are floats exactly as the definitions prescribe them
(math.log2, math.fsum, Python ``round`` to 6 decimals), with an exact high-precision twin
(decimal) to tell a genuine difference from one that float noise may flip at a rounding half.

The database is read whole into Python (``load``): small random test databases only.
Not part of the package: a helper module of the tests.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb

NONE = "(none)"  # the class of a NULL value (profile, cohorts)
NULL_GROUP = "(null)"  # the group of NULL values of a factor
COHORT_ORDER = ("under_6m", "6_12m", "over_12m")
EXCLUDED = ("msisdn", "month", "month_end", "tenure_cohort")
HANDSET_GENS = ("2G", "3G", "4G", "5G")  # contract.HANDSET_GENS, written out again on purpose
INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "UHUGEINT")
FLOAT_TYPES = ("FLOAT", "DOUBLE")
CATEGORICAL_TYPES = ("VARCHAR", "BOOLEAN")
DATE_TYPES = ("DATE", "TIMESTAMP")
DASH = " – "
PROFILE_FIELDS = ("customers", "share", "arpu_mean", "arpu_3m_mean", "tenure_months_mean", "data_saturation_mean",
                  "data_saturation_customers", "voice_saturation_mean", "voice_saturation_customers",
                  "contract_share", "bundle_share", "bundle_ending_3m_share", "handset_gen", "churn_base", "churned",
                  "churn_rate")


# -- what the reference reads ----------------------------------------------------------------------
@dataclass
class Data:
    """M's customer_view rows (dicts by column), the view's catalogue and M+1's subscribers."""

    month: str
    columns: list[tuple[str, str]]  # (name, DuckDB type) in catalogue order
    rows: list[dict[str, Any]]
    next_status: dict[str, str | None] = field(default_factory=dict)  # msisdn → M+1 status (row present)
    next_loaded: bool = True

    @property
    def next_month(self) -> str:
        return add_months(self.month, 1)

    def churned(self, row: dict[str, Any]) -> bool:
        """No subscribers row in M+1, or a closed one."""
        m = row["msisdn"]
        return m not in self.next_status or self.next_status[m] == "closed"


def in_base(row: dict[str, Any]) -> bool:
    return row.get("status") != "closed"  # NULL counts as not closed


def load(path: Path, month: str) -> Data:
    """The whole of a small database's customer_view of ``month`` and the subscribers of M+1."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        columns = [(r[0], r[1]) for r in con.execute("DESCRIBE customer_view").fetchall()]
        cur = con.execute("SELECT * FROM customer_view WHERE month = ?", [month])
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        nxt = add_months(month, 1)
        status: dict[str, str | None] = {}
        if "subscribers" in tables:
            status = dict(con.execute("SELECT msisdn, status FROM subscribers WHERE month = ?", [nxt]).fetchall())
    finally:
        con.close()
    return Data(month, columns, rows, status, bool(status))


# -- calendar ----------------------------------------------------------------------------------------
def add_months(month: str, n: int) -> str:
    i = int(month[:4]) * 12 + int(month[5:7]) - 1 + n
    return f"{i // 12:04d}-{i % 12 + 1:02d}"


def last_day(month: str) -> dt.date:
    return dt.date.fromisoformat(add_months(month, 1) + "-01") - dt.timedelta(days=1)


# -- exact arithmetic --------------------------------------------------------------------------------
def half_away(q: Fraction, places: int) -> Decimal:
    """q rounded half away from zero to ``places`` decimals, exactly."""
    units = math.floor(abs(q) * 10 ** places + Fraction(1, 2))
    return Decimal(-units if q < 0 else units).scaleb(-places)


def is_half(q: Fraction, places: int) -> bool:
    """Whether q lies exactly half-way between two steps of 10⁻ᵖˡᵃᶜᵉˢ (a rounding the tests must hit)."""
    return (q * 10 ** places * 2).denominator == 1 and (q * 10 ** places).denominator == 2


def rate(numerator: int, denominator: int, places: int = 6) -> float | None:
    return None if denominator == 0 else float(half_away(Fraction(numerator, denominator), places))


def mean(values: Sequence[Any], places: int) -> float | None:
    """The exact mean of ints / Decimals, half away from zero to ``places`` decimals; None without values."""
    if not values:
        return None
    return float(half_away(sum((Fraction(v) for v in values), Fraction(0)) / len(values), places))


def entropy(churned: int, n: int) -> float:
    """H(p) in bits for p = churned / n, 0·log 0 = 0, in floats as the definitions write it."""
    if churned in (0, n):
        return 0.0
    p = churned / n
    q = (n - churned) / n
    return -p * math.log2(p) - q * math.log2(q)


def information_gain(churned: int, n: int, groups: Sequence[tuple[int, int]]) -> float:
    """H(churned / n) − Σ (n_g / n) · H(churned_g / n_g) with math.fsum; groups are (customers, churned)."""
    return math.fsum([entropy(churned, n), *(-(g / n) * entropy(c, g) for g, c in groups)])


def _log2_exact(x: Fraction) -> Decimal:
    return (Decimal(x.numerator).ln() - Decimal(x.denominator).ln()) / Decimal(2).ln()


def _entropy_exact(churned: int, n: int) -> Decimal:
    if churned in (0, n):
        return Decimal(0)
    p, q = Fraction(churned, n), Fraction(n - churned, n)
    return -(Decimal(p.numerator) / p.denominator) * _log2_exact(p) - (Decimal(q.numerator) / q.denominator) \
        * _log2_exact(q)


def information_gain_exact(churned: int, n: int, groups: Sequence[tuple[int, int]]) -> Decimal:
    """The same at 60 significant digits (to see whether the float lies near a rounding half)."""
    with localcontext() as ctx:
        ctx.prec = 60
        total = _entropy_exact(churned, n)
        for g, c in groups:
            total -= Decimal(g) / n * _entropy_exact(c, g)
        return +total


def near_half(value: Decimal, places: int = 6, slack: Decimal = Decimal("1e-12")) -> bool:
    """Whether ``value`` is within float noise of a half step of 10⁻ᵖˡᵃᶜᵉˢ (float rounding may go either way)."""
    scaled = abs(value) * 10 ** places
    return abs(scaled - int(scaled) - Decimal("0.5")) < slack * 10 ** places


def round6(x: float) -> float:
    return round(x, 6) + 0.0  # + 0.0: no -0.0


# -- the factors document ---------------------------------------------------------------------------
def base_type(type_: str) -> str:
    return re.sub(r"\(.*\)$", "", type_)


def kind_of(type_: str) -> str | None:
    """numeric | categorical | excluded (dates) | None (skipped)."""
    t = base_type(type_)
    if t in INTEGER_TYPES or t == "DECIMAL" or t in FLOAT_TYPES:
        return "numeric"
    if t in CATEGORICAL_TYPES:
        return "categorical"
    if t in DATE_TYPES:
        return "excluded"
    return None


def cohort_key(name: str | None) -> tuple[int, int, str]:
    if name is None:
        return (3, 0, "")
    if name in COHORT_ORDER:
        return (0, COHORT_ORDER.index(name), "")
    return (1, 0, name)


def number_text(value: Any) -> str:
    """A bin edge in a label: ints as they are, a DECIMAL to its scale, a float as Python prints it."""
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def json_number(value: Any) -> int | float:
    return value if isinstance(value, int) else float(value)


def category_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Group:
    bin: str
    label: str
    low: Any
    high: Any
    customers: int = 0
    churned: int = 0

    def document(self) -> dict[str, Any]:
        return {"bin": self.bin, "label": self.label, "low": self.low, "high": self.high, "customers": self.customers,
                "churned": self.churned, "churn_rate": rate(self.churned, self.customers)}


def bin_number(r: int, n: int, bins: int) -> int:
    """The bin of rank r (1 + how many of the n values are smaller): ⌊(r − 1) · B / n⌋ + 1."""
    return (r - 1) * bins // n + 1


def numeric_groups(rows: Sequence[tuple[Any, bool]], bins: int) -> list[Group]:
    """(value, churned) rows of one cohort → the listed bins (ties together) and the (null) group last."""
    values = sorted(v for v, _ in rows if v is not None)
    n = len(values)
    below: dict[Any, int] = {}
    for i, v in enumerate(values):
        below.setdefault(v, i)  # how many values are strictly less than v
    members: dict[int, list[tuple[Any, bool]]] = {}
    for v, churned in rows:
        if v is not None:
            members.setdefault(bin_number(below[v] + 1, n, bins), []).append((v, churned))
    out = []
    for number in sorted(members):
        inside = members[number]
        low, high = min(v for v, _ in inside), max(v for v, _ in inside)
        out.append(Group(str(number), number_text(low) + DASH + number_text(high), json_number(low),
                         json_number(high), len(inside), sum(c for _, c in inside)))
    nulls = [c for v, c in rows if v is None]
    if nulls:
        out.append(Group(NULL_GROUP, NULL_GROUP, None, None, len(nulls), sum(nulls)))
    return out


def categorical_groups(rows: Sequence[tuple[Any, bool]]) -> list[Group]:
    by_value: dict[Any, list[bool]] = {}
    for v, churned in rows:
        by_value.setdefault(v, []).append(churned)
    out = []
    for v in sorted(x for x in by_value if x is not None):  # False < True; strings by code point
        text = category_text(v)
        out.append(Group(text, text, None, None, len(by_value[v]), sum(by_value[v])))
    if None in by_value:
        out.append(Group(NULL_GROUP, NULL_GROUP, None, None, len(by_value[None]), sum(by_value[None])))
    return out


@dataclass
class FactorFigures:
    """One factor of one cohort before ranking (the exact gain kept to judge float noise)."""

    factor: str
    kind: str
    gain: float
    gain_exact: Decimal
    groups: list[Group]


def factor_rows(data: Data) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """(factor, kind) in catalogue order, and the skipped columns."""
    factors, skipped = [], []
    for name, type_ in data.columns:
        if name in EXCLUDED:
            continue
        kind = kind_of(type_)
        if kind is None:
            skipped.append({"factor": name, "reason": type_})
        elif kind != "excluded":
            factors.append((name, kind))
    return factors, skipped


class Refused(Exception):
    """What mktool must refuse (exit 1) for these data."""


def cohort_figures(data: Data, bins: int) -> list[tuple[str, int, int, list[FactorFigures]]]:
    """(cohort, customers, churned, every factor's figures unranked) per listed cohort."""
    if not data.next_loaded:
        raise Refused(f"factors need {data.next_month}'s subscribers")
    if "tenure_cohort" not in {c for c, _ in data.columns}:
        raise Refused("no tenure_cohort column")
    factors, _ = factor_rows(data)
    base = [r for r in data.rows if in_base(r)]
    names = sorted({r["tenure_cohort"] for r in base}, key=cohort_key)
    out = []
    for name in names:
        members = [r for r in base if r["tenure_cohort"] == name]
        flags = [data.churned(r) for r in members]
        n, churned = len(members), sum(flags)
        figures = []
        for factor, kind in factors:
            pairs = [(r[factor], c) for r, c in zip(members, flags)]
            groups = numeric_groups(pairs, bins) if kind == "numeric" else categorical_groups(pairs)
            counts = [(g.customers, g.churned) for g in groups]
            figures.append(FactorFigures(factor, kind, information_gain(churned, n, counts),
                                         information_gain_exact(churned, n, counts), groups))
        out.append((NONE if name is None else name, n, churned, figures))
    return out


def factors(data: Data, *, bins: int = 10, top: int | None = 10) -> dict[str, Any]:
    """The JSON document of ``mktool factors --month M --bins B --top N``."""
    cohorts = []
    for name, n, churned, figures in cohort_figures(data, bins):
        ranked = sorted(figures, key=lambda f: (-round6(f.gain), f.factor))
        kept = ranked if not top else ranked[:top]
        cohorts.append({
            "cohort": name, "customers": n, "churned": churned, "churn_rate": rate(churned, n),
            "entropy": round6(entropy(churned, n)),
            "factors": [{"rank": i, "factor": f.factor, "kind": f.kind, "information_gain": round6(f.gain),
                         "groups": len(f.groups), "bins": [g.document() for g in f.groups]}
                        for i, f in enumerate(kept, 1)]})
    # "top": null for all (--top 0 or None) — the definitions are silent; mktool's reading, taken here
    return {"month": data.month, "next_month": data.next_month, "bins": bins, "top": top or None, "cohorts": cohorts,
            "skipped": factor_rows(data)[1]}


def borderline_gains(data: Data, bins: int) -> set[tuple[str, str]]:
    """(cohort, factor) whose exact gain lies within float noise of a 6-decimal half (either rounding is right)."""
    return {(name, f.factor) for name, _, _, figures in cohort_figures(data, bins) for f in figures
            if near_half(f.gain_exact)}


# -- the profile document -----------------------------------------------------------------------------
def class_text(value: Any) -> str:
    if value is None:
        return NONE
    return category_text(value)


def class_key(value: Any) -> tuple[int, Any]:
    return (1, "") if value is None else (0, value)


def contract_running(r: dict[str, Any]) -> bool:
    """A contract still running at M's end."""
    return r["contract_end"] is not None and r["contract_end"] > r["month_end"]


def bundle_running(r: dict[str, Any]) -> bool:
    return r["bundle_type"] is not None and (r["bundle_end"] is None or r["bundle_end"] > r["month_end"])


def bundle_ending(r: dict[str, Any], horizon: dt.date) -> bool:
    """A running bundle ending within the next 3 months (by ``horizon``, the last day of M+3)."""
    return r["bundle_type"] is not None and r["bundle_end"] is not None and r["month_end"] < r["bundle_end"] <= horizon


def profile_figures(data: Data, rows: Sequence[dict[str, Any]], everyone: int,
                    tally: Callable[[str, Fraction, int], None] | None = None) -> dict[str, Any]:
    """The figures of one class (or the total) over ``rows`` (closed customers included)."""
    n = len(rows)
    horizon = last_day(add_months(data.month, 3))

    def mean_of(column: str, places: int) -> float | None:
        values = [r[column] for r in rows if r[column] is not None]
        if tally is not None and values:
            tally(column, sum((Fraction(v) for v in values), Fraction(0)) / len(values), places)
        return mean(values, places)

    def share(test: Callable[[dict[str, Any]], bool]) -> float | None:
        return rate(sum(1 for r in rows if test(r)), n)

    base = [r for r in rows if in_base(r)]
    churned = sum(1 for r in base if data.churned(r))
    return {
        "customers": n,
        "share": rate(n, everyone),
        "arpu_mean": mean_of("arpu", 2),
        "arpu_3m_mean": mean_of("arpu_3m", 2),
        "tenure_months_mean": mean_of("tenure_months", 2),
        "data_saturation_mean": mean_of("data_saturation", 4),
        "data_saturation_customers": sum(1 for r in rows if r["data_saturation"] is not None),
        "voice_saturation_mean": mean_of("voice_saturation", 4),
        "voice_saturation_customers": sum(1 for r in rows if r["voice_saturation"] is not None),
        "contract_share": share(contract_running),
        "bundle_share": share(bundle_running),
        "bundle_ending_3m_share": share(lambda r: bundle_ending(r, horizon)),
        "handset_gen": {NONE if g is None else g: rate(sum(1 for r in rows if r["handset_gen"] == g), n)
                        for g in (*HANDSET_GENS, None)},
        "churn_base": len(base) if data.next_loaded else None,
        "churned": churned if data.next_loaded else None,
        "churn_rate": rate(churned, len(base)) if data.next_loaded else None,
    }


def profile(data: Data, by: str = "segment",
            tally: Callable[[str, Fraction, int], None] | None = None) -> dict[str, Any]:
    """The JSON document of ``mktool profile --month M --by by``."""
    types = dict(data.columns)
    if by not in types or base_type(types[by]) not in CATEGORICAL_TYPES:
        raise Refused(f"--by {by}: not a VARCHAR or BOOLEAN column")
    classes: dict[Any, list[dict[str, Any]]] = {}
    for r in data.rows:
        classes.setdefault(r[by], []).append(r)
    everyone = len(data.rows)
    # A --by column named like a field (handset_gen) would lose its class to the field: the definitions are
    # silent; mktool's reading, taken here, names the class "class" then.
    key = "class" if by in PROFILE_FIELDS else by
    rows = [{key: class_text(value), **profile_figures(data, classes[value], everyone, tally)}
            for value in sorted(classes, key=class_key)]
    return {"month": data.month, "by": by, "next_month": data.next_month, "next_month_loaded": data.next_loaded,
            "rows": rows, "total": profile_figures(data, data.rows, everyone, tally)}
