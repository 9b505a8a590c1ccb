"""`mktool profile --month M [--by segment]`: what each class of customers looks like (issue 15).

Seed 000 showed a manager its six customer classes side by side: ARPU, churn, contract,
convergence and handset shares, voice and data saturation. This is that table for any
VARCHAR or BOOLEAN column of M's customer_view (docs/profile.md says the same for analysts):

* **population**: every customer_view row of M, closed customers too; a NULL class is
  ``(none)``, listed after the values (in value order), and a ``total`` follows;
* **customers**, **share** = customers / all of M's customers;
* **means** over the class's non-NULL values, exact: the integer sum of the value's units (fen
  for ``arpu``, 10⁻⁶ for ``arpu_3m``, months for ``tenure_months``, 10⁻⁴ for the saturations)
  over the count, rounded half away from zero to 2 decimals (4 for the saturations) by integer
  arithmetic, never by the engine's round(); NULL when the class has no value;
* **contract_share**: ``contract_end > month_end`` (a contract running at M's end);
  **bundle_share**: ``bundle_type`` set and ``bundle_end`` NULL or after month_end;
  **bundle_ending_3m_share**: ``bundle_type`` set and month_end < bundle_end ≤ the last day of M+3;
  **handset_gen**: the share of each of contract.HANDSET_GENS and of NULL (``(none)``);
* **churn** (evaluate churn's label, reused from mktool.evaluate): churn_base = the class's
  customers not closed in M, churned = those without an M+1 subscribers row or closed there,
  churn_rate = churned / churn_base; all three NULL when M+1's subscribers are not loaded.

Shares and rates are exact quotients rounded half away from zero to 6 decimals. One set-based
query gives every class and the total (GROUPING SETS over M's view rows); when M+1 is loaded
they are joined to evaluate's own churn label (``evaluate.churn_base_sql``: the base rows with
churned), so the two commands cannot count churn differently. Python only arranges the few rows.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from mktool.contract import HANDSET_GENS, check_month, month_from_index, month_index
from mktool.database import Database, dict_rows
from mktool.dialect import Query, decimal_units, div_half_away, exact_rate, fen, integer, units_decimal
from mktool.errors import StateError, UsageError
from mktool.evaluate import churn_base_sql, label_params, next_month, next_month_loaded
from mktool.freshness import require_fresh_view
from mktool.project import Project
from mktool.schema import EVALUATION_RATE_SCALE, NO_GROUP, VIEW_TABLE
from mktool.scoremodel import last_day
from mktool.sqlquote import quote_identifier, quote_literal

__all__ = ["Profile", "profile_csv", "profile_month", "profile_query", "profile_tables", "queries"]

DEFAULT_BY = "segment"
#: The class of customers whose --by column is NULL (as in evaluate churn).
NO_CLASS = NO_GROUP
#: The handset_gen key of a NULL handset generation.
NO_HANDSET = "(none)"
#: The column types a class can be read from (BOOLEAN classes are ``true`` / ``false``).
CLASS_TYPES = ("VARCHAR", "BOOLEAN")
#: Personal data is never a class: a profile by msisdn would list every customer's number.
NEVER_BY = ("msisdn",)
#: The view columns the profile reads besides the --by column.
VIEW_COLUMNS_NEEDED = ("msisdn", "month", "status", "arpu", "arpu_3m", "tenure_months", "data_saturation",
                       "voice_saturation", "contract_end", "bundle_type", "bundle_end", "handset_gen")
#: The handset generations the table sums as "4G+5G share".
MODERN_HANDSET_GENS = ("4G", "5G")
#: Decimals of the means: money and tenure to 2 (the fen), the saturations (DECIMAL(38,4) in the view) to 4.
MEAN_SCALE = 2
SATURATION_SCALE = 4
#: Scales of the view's exact columns read as integer units.
ARPU_3M_SCALE = 6
#: The fields of a class row, in the document's order (handset_gen is an object of shares).
FIELDS = ("customers", "share", "arpu_mean", "arpu_3m_mean", "tenure_months_mean", "data_saturation_mean",
          "data_saturation_customers", "voice_saturation_mean", "voice_saturation_customers", "contract_share",
          "bundle_share", "bundle_ending_3m_share", "handset_gen", "churn_base", "churned", "churn_rate")


def _handset_key(gen: str | None) -> str:
    return NO_HANDSET if gen is None else gen


def _handset_column(gen: str | None) -> str:
    """The query's (and the csv's) column of a handset generation's share: handset_2G … handset_none."""
    return "handset_none" if gen is None else f"handset_{gen}"


HANDSET_KEYS: tuple[str | None, ...] = (*HANDSET_GENS, None)


# -- SQL -----------------------------------------------------------------------------------------
def _share(part: str, whole: str = "customers") -> str:
    return exact_rate(part, whole, EVALUATION_RATE_SCALE)


def _mean(sum_units: str, count: str, units_scale: int, scale: int) -> str:
    """Σ units / count as a mean rounded half away from zero to ``scale`` decimals, DECIMAL(38, scale): the
    units are 10^-units_scale each (fen: 2; arpu_3m's micro-yuan: 6); NULL when count is 0."""
    if units_scale < scale:
        raise ValueError("a mean keeps at most the decimals of its units")
    denominator = count if units_scale == scale else f"{integer(count)} * {10 ** (units_scale - scale)}"
    return units_decimal(div_half_away(sum_units, denominator), scale)


def profile_query(month: str, by: str = DEFAULT_BY, *, with_churn: bool = True) -> Query:
    """Every class of ``by`` in ``month`` and the total (``whole``), with all figures; binds $month,
    $month_end, $horizon_3m and, ``with_churn``, $next_month."""
    check_month(month)
    cls = f"v.{quote_identifier(by)}"
    gens = ", ".join(
        f"CASE WHEN v.handset_gen {'IS NULL' if gen is None else '= ' + quote_literal(gen)} THEN 1 ELSE 0 END "
        f"AS {_handset_column(gen)}" for gen in HANDSET_KEYS)
    gen_sums = ", ".join(f"sum({_handset_column(gen)}) AS {_handset_column(gen)}" for gen in HANDSET_KEYS)
    gen_shares = ", ".join(f"{_share(_handset_column(gen))} AS {_handset_column(gen)}" for gen in HANDSET_KEYS)
    modern = " + ".join(f"sum({_handset_column(gen)})" for gen in MODERN_HANDSET_GENS)
    if with_churn:  # evaluate churn's label: its base (not closed) rows, each with churned 1 or 0
        labelled = f"label AS (\n    {churn_base_sql('v.msisdn')}),\n"
        label = "CASE WHEN l.msisdn IS NULL THEN 0 ELSE 1 END AS in_base, coalesce(l.churned, 0) AS churned"
        join = "LEFT JOIN label l ON l.msisdn = v.msisdn"
        churn = f"churn_base, churned, {_share('churned', 'churn_base')} AS churn_rate"
    else:
        labelled = ""
        label = "0 AS in_base, 0 AS churned"
        join = ""
        churn = (f"CAST(NULL AS BIGINT) AS churn_base, CAST(NULL AS BIGINT) AS churned, "
                 f"CAST(NULL AS DECIMAL(38,{EVALUATION_RATE_SCALE})) AS churn_rate")
    sql = f"""-- profile: {VIEW_TABLE} M by one column, every row of M (closed too); churn of the base against M+1
WITH {labelled}m AS (
    SELECT {cls} AS cls, {fen('v.arpu')} AS arpu_fen, CAST(v.arpu_3m AS DECIMAL(38,{ARPU_3M_SCALE})) AS arpu_3m,
           CAST(v.tenure_months AS BIGINT) AS tenure_months,
           CAST(v.data_saturation AS DECIMAL(38,{SATURATION_SCALE})) AS data_saturation,
           CAST(v.voice_saturation AS DECIMAL(38,{SATURATION_SCALE})) AS voice_saturation,
           CASE WHEN v.contract_end > CAST($month_end AS DATE) THEN 1 ELSE 0 END AS contract,
           CASE WHEN v.bundle_type IS NOT NULL AND (v.bundle_end IS NULL OR v.bundle_end > CAST($month_end AS DATE))
                THEN 1 ELSE 0 END AS bundle,
           CASE WHEN v.bundle_type IS NOT NULL AND v.bundle_end > CAST($month_end AS DATE)
                     AND v.bundle_end <= CAST($horizon_3m AS DATE) THEN 1 ELSE 0 END AS bundle_ending_3m,
           {gens}, {label}
    FROM {VIEW_TABLE} v {join}
    WHERE v.month = $month),
classes AS (
    SELECT GROUPING(cls) = 1 AS whole, cls, count(*) AS customers,
           sum(arpu_fen) AS arpu_fen, count(arpu_fen) AS arpu_n,
           sum(arpu_3m) AS arpu_3m_sum, count(arpu_3m) AS arpu_3m_n,
           sum(tenure_months) AS tenure_sum, count(tenure_months) AS tenure_n,
           sum(data_saturation) AS data_saturation_sum, count(data_saturation) AS data_saturation_customers,
           sum(voice_saturation) AS voice_saturation_sum, count(voice_saturation) AS voice_saturation_customers,
           sum(contract) AS contract, sum(bundle) AS bundle, sum(bundle_ending_3m) AS bundle_ending_3m,
           {gen_sums}, {modern} AS handset_modern_customers, sum(in_base) AS churn_base, sum(churned) AS churned
    FROM m GROUP BY GROUPING SETS ((cls), ())),
counted AS (
    SELECT *, max(CASE WHEN whole THEN customers END) OVER () AS all_customers FROM classes)
SELECT whole, CAST(cls AS VARCHAR) AS label, customers, {_share('customers', 'all_customers')} AS share,
       {_mean('arpu_fen', 'arpu_n', 2, MEAN_SCALE)} AS arpu_mean,
       {_mean(decimal_units('arpu_3m_sum', ARPU_3M_SCALE), 'arpu_3m_n', ARPU_3M_SCALE, MEAN_SCALE)} AS arpu_3m_mean,
       {exact_rate('tenure_sum', 'tenure_n', MEAN_SCALE)} AS tenure_months_mean,
       {_mean(decimal_units('data_saturation_sum', SATURATION_SCALE), 'data_saturation_customers',
              SATURATION_SCALE, SATURATION_SCALE)} AS data_saturation_mean,
       data_saturation_customers,
       {_mean(decimal_units('voice_saturation_sum', SATURATION_SCALE), 'voice_saturation_customers',
              SATURATION_SCALE, SATURATION_SCALE)} AS voice_saturation_mean,
       voice_saturation_customers,
       {_share('contract')} AS contract_share, {_share('bundle')} AS bundle_share,
       {_share('bundle_ending_3m')} AS bundle_ending_3m_share,
       {gen_shares}, {churn},
       contract AS contract_customers, bundle AS bundle_customers, bundle_ending_3m AS bundle_ending_3m_customers,
       handset_modern_customers
FROM counted
ORDER BY whole, cls NULLS LAST"""
    params = {**(label_params(month) if with_churn else {"month": month}), "month_end": last_day(month),
              "horizon_3m": last_day(month_from_index(month_index(month) + 3))}
    return Query("profile", sql, params)


def queries(month: str) -> dict[str, Query]:
    """Every query profile runs, by name (with and without M+1's subscribers)."""
    return {"profile": profile_query(month), "profile:no_next_month": profile_query(month, with_churn=False)}


# -- the step ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """The profile of one month by one column: each class's figures (SQL's exact Decimals) and the total."""

    month: str
    by: str
    next_month: str
    next_month_loaded: bool
    #: (class label, figures) per class in order; the label of a NULL class is NO_CLASS.
    classes: tuple[tuple[str, dict[str, Any]], ...]
    total: dict[str, Any]

    @property
    def class_key(self) -> str:
        """The key a row's class is under in the document: the --by column, or ``class`` when that
        column is itself a figure's name (``--by handset_gen``: the mix keeps its key)."""
        return "class" if self.by in FIELDS else self.by

    @property
    def churn_note(self) -> str | None:
        """Why the churn fields are empty (None when M+1 is loaded): what to load."""
        if self.next_month_loaded:
            return None
        return (f"{self.next_month}'s subscribers are not loaded, so the churn fields are empty: ingest them "
                f"(mktool ingest subscribers_{self.next_month}.parquet), then run again")

    def document(self) -> dict[str, Any]:
        """The JSON document: means and shares as numbers, NULL as null."""
        return {"month": self.month, "by": self.by, "next_month": self.next_month,
                "next_month_loaded": self.next_month_loaded,
                "rows": [{self.class_key: label, **_figures_document(f)} for label, f in self.classes],
                "total": _figures_document(self.total)}


def _number(value: Decimal | None) -> float | None:
    """An exact decimal (≤ 15 significant digits) as a JSON number: the float prints as the decimal."""
    return None if value is None else float(value)


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def _figures_document(f: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name == "handset_gen":
            out[name] = {_handset_key(g): _number(f[_handset_column(g)]) for g in HANDSET_KEYS}
        elif name.endswith(("_customers", "churned", "churn_base")) or name == "customers":
            out[name] = _count(f[name])
        else:
            out[name] = _number(f[name])
    return out


def _class_columns(db: Database) -> dict[str, str]:
    """customer_view's columns and their types, as the catalogue has them."""
    return {r[0]: str(r[1]) for r in db.c.execute(f"DESCRIBE {VIEW_TABLE}").fetchall()}


def _allowed(columns: dict[str, str], project: Project) -> list[str]:
    """The columns a profile can be split by: the score model's classes first (segment, value_tier …)."""
    ok = [c for c, t in columns.items() if t in CLASS_TYPES and c not in NEVER_BY and c != "month"]
    scored = ["value_tier", *(c.name for c in project.scores.columns)]
    return sorted(ok, key=lambda c: (columns[c] != "VARCHAR", c not in scored,
                                     scored.index(c) if c in scored else 0, c))


def _check_by(db: Database, project: Project, month: str, by: str, columns: dict[str, str]) -> None:
    """Refuse a --by column the profile cannot split by (a usage error), or one the view should have."""
    allowed = _allowed(columns, project)
    shown = ", ".join(allowed[:8]) + (f" … ({len(allowed)} in all)" if len(allowed) > 8 else "")
    if by in NEVER_BY:
        raise UsageError(f"{by} is personal data, not a class to profile by; choose one of {shown}")
    if by not in columns:
        if by in project.scores.output_columns:
            raise StateError(f"{VIEW_TABLE} for {month} has no column {by}, which scores.yaml defines: the view "
                             "was built before it", table=VIEW_TABLE,
                             hint=f"rebuild it with `mktool score --month {month}`")
        raise UsageError(f"{VIEW_TABLE} has no column {by!r} to profile by; choose one of {shown}")
    if columns[by] not in CLASS_TYPES:
        raise UsageError(f"{by} is a {columns[by]} column: the profile's classes come from a VARCHAR or BOOLEAN "
                         f"column; choose one of {shown}")


def profile_month(db: Database, project: Project, month: str, *, by: str = DEFAULT_BY) -> Profile:
    """The profile of ``month``'s customer view by ``by`` (read-only: nothing is stored)."""
    check_month(month)
    db.require_month(VIEW_TABLE, month, "score")
    columns = _class_columns(db)
    _check_by(db, project, month, by, columns)
    missing = [c for c in VIEW_COLUMNS_NEEDED if c not in columns]
    if missing:
        raise StateError(f"{VIEW_TABLE} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)} that "
                         "the profile reads", table=VIEW_TABLE,
                         hint=f"rebuild it with `mktool score --month {month}`")
    require_fresh_view(db.c, month)
    loaded = next_month_loaded(db, month)
    query = profile_query(month, by, with_churn=loaded)
    rows = dict_rows(db.c.execute(query.sql, query.params))
    classes = tuple((NO_CLASS if r["label"] is None else str(r["label"]), r) for r in rows if not r["whole"])
    total = next(r for r in rows if r["whole"])
    return Profile(month, by, next_month(month), loaded, classes, total)


# -- csv and tables (the CLI prints these) -----------------------------------------------------------
#: The document's fields, the handset mix spread over one column per generation (handset_2G … handset_none).
CSV_COLUMNS = ("month", "by", "class", *(c for n in FIELDS for c in (
    [_handset_column(g) for g in HANDSET_KEYS] if n == "handset_gen" else [n])))


def _cell(value: Any) -> Any:
    """A figure as csv text: a Decimal at its scale (193.70, 0.500000), empty for NULL."""
    return "" if value is None else str(value)


def profile_csv(profile: Profile) -> str:
    """One csv row per class (by = the column) and a last row for the total (class ``total``, by empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    lines = [(profile.by, label, f) for label, f in profile.classes] + [("", "total", profile.total)]
    for by, label, f in lines:
        cells = {"month": profile.month, "by": by, "class": label,
                 **{c: _cell(f[c]) for c in CSV_COLUMNS[3:]}}
        writer.writerow([cells[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def _percent(part: Any, whole: Any, places: int = 1) -> str:
    """part / whole (integer counts) as a percentage rounded half away from zero to ``places`` decimals,
    from the counts themselves (not from the 6-decimal share: no double rounding); empty for / 0."""
    if part is None or whole is None or int(whole) == 0:
        return ""
    units = math.floor(Fraction(100 * 10 ** places * int(part), int(whole)) + Fraction(1, 2))  # counts are ≥ 0
    return f"{Decimal(units).scaleb(-places)}%"


def _ratio_percent(value: Decimal | None) -> str:
    """A mean ratio (a saturation, 4 decimals) as a percentage, exactly: 0.9000 → 90.00%."""
    return "" if value is None else f"{(value * 100).quantize(Decimal(1).scaleb(2 - SATURATION_SCALE))}%"


def _plain(value: Decimal | None) -> str:
    return "" if value is None else str(value)


#: Short headers, so the table fits 140 columns; the title says what "ends ≤3m" and "churn" are.
TABLE_COLUMNS = ("class", "customers", "share", "ARPU", "ARPU 3m", "tenure", "data sat", "voice sat", "contract",
                 "bundle", "ends ≤3m", "4G+5G", "churn")
TABLE_NUMERIC = TABLE_COLUMNS[1:]


def _table_row(label: str, f: dict[str, Any], all_customers: int) -> tuple[str, ...]:
    n = f["customers"]
    return (label, str(int(n)), _percent(n, all_customers), _plain(f["arpu_mean"]), _plain(f["arpu_3m_mean"]),
            _plain(f["tenure_months_mean"]), _ratio_percent(f["data_saturation_mean"]),
            _ratio_percent(f["voice_saturation_mean"]), _percent(f["contract_customers"], n),
            _percent(f["bundle_customers"], n), _percent(f["bundle_ending_3m_customers"], n),
            _percent(f["handset_modern_customers"], n), _percent(f["churned"], f["churn_base"], 2))


def profile_tables(profile: Profile) -> list[tuple[str, Sequence[str], list[tuple[str, ...]]]]:
    """(title, columns, rows) of the one table people read: a row per class, then the total."""
    churn = (f"churn = left by {profile.next_month}" if profile.next_month_loaded
             else f"churn: {profile.next_month}'s subscribers are not loaded")
    title = f"Profile of {profile.month} by {profile.by} ({churn}; ends ≤3m = a bundle ending within 3 months)"
    everyone = int(profile.total["customers"])
    rows = [_table_row(label, f, everyone) for label, f in profile.classes] + [
        _table_row("total", profile.total, everyone)]
    return [(title, TABLE_COLUMNS, rows)]
