"""`mktool evaluate churn --month M`: the churn model's quality against who left by M+1 (SPEC §7).

Definitions (docs/evaluation.md says the same for analysts):

* **base**: the customers of M's customer_view whose status is not ``closed`` (a NULL status
  counts as not closed);
* **churned**: a base customer with no ``subscribers`` row in M+1, or whose M+1 status is
  ``closed``. M+1's subscribers must be loaded (any row of M+1), else the evaluation is refused:
  an unloaded month would count everybody as churned;
* **flag**: customers whose ``churn_flag`` is true (NULL is not flagged);
* **order**: churn_score descending (NULL last, as the least at risk), ties broken by msisdn
  ascending; position p = 1 … base in that order;
* **top s** (s = 5%, 10%): the first round(s × base) customers, round half away from zero in
  exact integer arithmetic (⌊(2·a·base + b) / 2b⌋ for s = a/b): 5% of 10 is 1, not 0;
* **decile** d (1 … 10) holds the positions p with ⌈10·p / base⌉ = d, i.e. d = ⌊(10·p + base − 1)
  / base⌋. Unlike NTILE (which puts the larger bands first) a decile's size follows from p
  alone: with a base of 18 the sizes are 1, 2, 2, 2, 2, 1, 2, 2, 2, 2. Every decile is reported,
  an empty one (base < 10) with 0 customers;
* **rates**: base_rate = churned / base; precision = churned among the selected / selected;
  recall = churned among the selected / churned; lift = precision / base_rate = churned
  selected · base / (selected · churned); a decile's cumulative_recall and lift are those of
  deciles 1 … d together. Each is the exact quotient of integers rounded half away from zero to
  6 decimals in SQL (DECIMAL(38,6)), NULL where a denominator is 0.

With ``--by tenure_cohort`` the same figures per cohort besides the whole base: within a cohort
the order, top shares, deciles and base rate are the cohort's own (a NULL cohort is ``(none)``).

Everything is one set-based query over the base (window functions); Python only arranges its
≤ 14 rows per group into the document. Each run is stored in ``churn_evaluation`` under a new
run id, beside the earlier runs of the month.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from mktool.console import QUIET, Reporter
from mktool.contract import check_month, month_from_index, month_index
from mktool.database import Database, command_line, table_columns, table_exists
from mktool.dialect import Query, exact_rate, int_div, integer
from mktool.errors import MktoolError, StateError
from mktool.freshness import require_fresh_view
from mktool.schema import (
    CHURN_BY,
    CHURN_DECILES,
    CHURN_EVALUATION_TABLE,
    CHURN_TOP_SHARES,
    EVALUATION_RATE_SCALE,
    NO_GROUP,
    VIEW_TABLE,
)
from mktool.sqlquote import quote_identifier

__all__ = ["ChurnEvaluation", "churn_base_sql", "churn_csv", "churn_tables", "evaluate_churn", "label_params",
           "next_month", "next_month_loaded", "queries"]

#: Sections of the figures query, in the document's order.
SECTIONS = ("base", "flag", "top", "decile")
VIEW_COLUMNS_NEEDED = ("msisdn", "month", "status", "churn_score", "churn_flag")


# -- SQL: the exact rates -----------------------------------------------------------------------
def _rate(numerator: str, denominator: str) -> str:
    """numerator / denominator (integer counts) rounded half away from zero to 6 decimals; NULL for / 0."""
    return exact_rate(numerator, denominator, EVALUATION_RATE_SCALE)


def _lift(hits: str, base: str, selected: str, churned: str) -> str:
    """(hits / selected) / (churned / base) = hits · base / (selected · churned), exactly, to 6 decimals."""
    return exact_rate(f"{integer(hits)} * {integer(base)}", f"{integer(selected)} * {integer(churned)}",
                      EVALUATION_RATE_SCALE)


def churn_base_sql(*columns: str) -> str:
    """The churn label as one SELECT (the base of M and whether each left), shared with `mktool factors`.

    Rows: M's customer_view rows ``v`` whose status is not closed (NULL is not closed), with the
    ``columns`` (SQL over ``v``) and ``churned``: 1 when M+1's subscribers lack the customer or have
    them closed, else 0. Binds ``$month`` and ``$next_month`` (:func:`label_params`).
    """
    picked = "".join(f"{column}, " for column in columns)
    return (f"SELECT {picked}CASE WHEN n.msisdn IS NULL OR n.status = 'closed' THEN 1 ELSE 0 END AS churned\n"
            f"    FROM {VIEW_TABLE} v\n"
            "    LEFT JOIN subscribers n ON n.msisdn = v.msisdn AND n.month = $next_month\n"
            "    WHERE v.month = $month AND (v.status IS NULL OR v.status <> 'closed')")


def label_params(month: str) -> dict[str, str]:
    """The parameters :func:`churn_base_sql` binds."""
    return {"month": month, "next_month": next_month(month)}


def figures_query(month: str, by: str | None = None) -> Query:
    """Every figure of the evaluation of ``month`` as rows (whole, grp, section, item, counts, rates).

    ``whole`` is true for the whole base (grp ''), false for a group of ``by``. Sections: base
    (item 0), flag (item 0), top (item i: the i-th of CHURN_TOP_SHARES), decile (item d).
    """
    check_month(month)
    if by is not None and by not in CHURN_BY:
        raise MktoolError(f"the churn evaluation cannot be split by {by!r}: not one of {', '.join(CHURN_BY)}")
    grp = f"CAST(v.{quote_identifier(by)} AS VARCHAR)" if by else "CAST(NULL AS VARCHAR)"
    scoped = "SELECT TRUE AS whole, '' AS grp, msisdn, churn_score, flagged, churned FROM base"
    if by:
        scoped += (f" UNION ALL SELECT FALSE AS whole, coalesce(grp, '{NO_GROUP}') AS grp, msisdn, churn_score, "
                   "flagged, churned FROM base")
    tops = [(i, a, b) for i, (_, a, b) in enumerate(CHURN_TOP_SHARES, 1)]
    top_marks = ", ".join(
        f"CASE WHEN pos <= {int_div(f'(2 * {a} * n + {b})', str(2 * b))} THEN 1 ELSE 0 END AS top_{i}"
        for i, a, b in tops)
    top_sums = ", ".join(f"sum(top_{i}) AS top_{i}_customers, sum(top_{i} * churned) AS top_{i}_churned"
                         for i, _, _ in tops)
    top_rows = "".join(
        f"\n    UNION ALL SELECT whole, grp, 'top' AS section, {i} AS item, top_{i}_customers, top_{i}_churned, "
        f"top_{i}_customers, top_{i}_churned FROM totals" for i, _, _ in tops)
    deciles = ", ".join(f"({d})" for d in range(1, CHURN_DECILES + 1))
    order = " ".join(f"WHEN '{s}' THEN {n}" for n, s in enumerate(SECTIONS))
    base = churn_base_sql("v.msisdn", f"{grp} AS grp", "v.churn_score",
                          "CASE WHEN v.churn_flag THEN 1 ELSE 0 END AS flagged")
    sql = f"""-- evaluate churn: the base of {VIEW_TABLE} M (not closed) against M+1's subscribers
WITH base AS (
    {base}),
scoped AS ({scoped}),
ranked AS (
    SELECT whole, grp, flagged, churned,
           row_number() OVER (PARTITION BY whole, grp ORDER BY churn_score DESC NULLS LAST, msisdn) AS pos,
           count(*) OVER (PARTITION BY whole, grp) AS n
    FROM scoped),
placed AS (
    SELECT whole, grp, flagged, churned, {int_div('(10 * pos + n - 1)', 'n')} AS decile, {top_marks}
    FROM ranked),
totals AS (
    SELECT whole, grp, count(*) AS base, sum(churned) AS churned, sum(flagged) AS flagged,
           sum(flagged * churned) AS flagged_churned, {top_sums}
    FROM placed GROUP BY whole, grp),
decile_counts AS (
    SELECT whole, grp, decile, count(*) AS customers, sum(churned) AS churned
    FROM placed GROUP BY whole, grp, decile),
grid AS (
    SELECT t.whole, t.grp, d.decile, coalesce(c.customers, 0) AS customers, coalesce(c.churned, 0) AS churned
    FROM totals t CROSS JOIN (VALUES {deciles}) AS d(decile)
    LEFT JOIN decile_counts c ON c.whole = t.whole AND c.grp = t.grp AND c.decile = d.decile),
gains AS (
    SELECT whole, grp, decile, customers, churned,
           sum(customers) OVER (PARTITION BY whole, grp ORDER BY decile ROWS UNBOUNDED PRECEDING) AS cum_customers,
           sum(churned) OVER (PARTITION BY whole, grp ORDER BY decile ROWS UNBOUNDED PRECEDING) AS cum_churned
    FROM grid),
figures AS (
    SELECT whole, grp, 'base' AS section, 0 AS item, base AS customers, churned, base AS sel_customers,
           churned AS sel_churned FROM totals
    UNION ALL SELECT whole, grp, 'flag' AS section, 0 AS item, flagged, flagged_churned, flagged, flagged_churned
    FROM totals{top_rows}
    UNION ALL SELECT whole, grp, 'decile' AS section, decile AS item, customers, churned, cum_customers, cum_churned
    FROM gains)
SELECT f.whole, f.grp, f.section, f.item, f.customers, f.churned, f.sel_churned AS cumulative_churned,
       t.base, t.churned AS base_churned,
       {_rate('t.churned', 't.base')} AS base_rate,
       {_rate('f.churned', 'f.customers')} AS "precision",
       {_rate('f.sel_churned', 't.churned')} AS recall,
       {_lift('f.sel_churned', 't.base', 'f.sel_customers', 't.churned')} AS lift
FROM figures f JOIN totals t ON t.whole = f.whole AND t.grp = f.grp
ORDER BY f.whole DESC, f.grp, CASE f.section {order} END, f.item"""
    return Query("evaluate:churn", sql, label_params(month))


def store_query(month: str, run_id: str, by: str | None, view_build: str | None, base: int, churned: int,
                base_rate: Decimal | None, document: str) -> Query:
    """One run's row of churn_evaluation (a new run id: earlier runs of the month stay)."""
    sql = (f"INSERT INTO {CHURN_EVALUATION_TABLE} (month, run_id, created_at, by_column, view_build, base, churned, "
           "base_rate, document, command_line) VALUES ($month, $run_id, CAST(now() AS TIMESTAMP), $by, $view_build, "
           "$base, $churned, $base_rate, $document, $command_line)")
    return Query("evaluate:churn_store", sql, {
        "month": month, "run_id": run_id, "by": by, "view_build": view_build, "base": base, "churned": churned,
        "base_rate": base_rate, "document": document, "command_line": json.dumps(command_line(), ensure_ascii=False)})


STORE_DDL = (f"CREATE TABLE IF NOT EXISTS {CHURN_EVALUATION_TABLE} (month VARCHAR, run_id VARCHAR, "
             "created_at TIMESTAMP, by_column VARCHAR, view_build VARCHAR, base BIGINT, churned BIGINT, "
             f"base_rate DECIMAL(38,{EVALUATION_RATE_SCALE}), document VARCHAR, command_line VARCHAR)")


def queries(month: str) -> dict[str, Query]:
    """Every query evaluate runs, by name (tests/test_spark_render.py renders each for Spark)."""
    return {
        "churn": figures_query(month),
        **{f"churn:by:{by}": figures_query(month, by) for by in CHURN_BY},
        "churn_store": store_query(month, "0" * 16, None, None, 0, 0, None, "{}"),
    }


def next_month(month: str) -> str:
    return month_from_index(month_index(check_month(month)) + 1)


# -- the step ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChurnEvaluation:
    month: str
    run_id: str
    document: dict[str, Any]


def _number(value: Decimal | None) -> float | None:
    """A 6-decimal rate as a JSON number (≤ 15 significant digits: the float prints as the decimal)."""
    return None if value is None else float(value)


def _group_document(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows of one group (base, flag, top…, decile…) as {base, churned, base_rate, flag, top, gains}."""
    by_section: dict[str, list[dict[str, Any]]] = {s: [] for s in SECTIONS}
    for r in rows:
        by_section[r["section"]].append(r)
    head, flag = by_section["base"][0], by_section["flag"][0]
    return {
        "base": int(head["base"]), "churned": int(head["base_churned"]), "base_rate": _number(head["base_rate"]),
        "flag": {"flagged": int(flag["customers"]), "churned": int(flag["churned"]),
                 "precision": _number(flag["precision"]), "recall": _number(flag["recall"]),
                 "lift": _number(flag["lift"])},
        "top": [{"share": float(CHURN_TOP_SHARES[int(r["item"]) - 1][0]), "customers": int(r["customers"]),
                 "churned": int(r["churned"]), "precision": _number(r["precision"]),
                 "recall": _number(r["recall"]), "lift": _number(r["lift"])} for r in by_section["top"]],
        "gains": [{"decile": int(r["item"]), "customers": int(r["customers"]), "churned": int(r["churned"]),
                   "cumulative_churned": int(r["cumulative_churned"]), "cumulative_recall": _number(r["recall"]),
                   "lift": _number(r["lift"])} for r in by_section["decile"]],
    }


def next_month_loaded(db: Database, month: str) -> bool:
    """Whether M+1's subscribers are loaded, so that the churn model of M can be judged (`mktool run`
    evaluates it only then; `mktool evaluate churn` refuses without them)."""
    return table_exists(db.c, "subscribers") and db.c.execute(
        "SELECT 1 FROM subscribers WHERE month = ? LIMIT 1", [next_month(month)]).fetchone() is not None


def _require_inputs(db: Database, month: str, by: str | None) -> str:
    """Refuse clearly what the evaluation cannot be computed from; returns M+1."""
    con, after = db.c, next_month(month)
    db.require_month(VIEW_TABLE, month, "score")
    have = set(table_columns(con, VIEW_TABLE))
    missing = [c for c in (*VIEW_COLUMNS_NEEDED, *([by] if by else [])) if c not in have]
    if missing:
        raise StateError(f"{VIEW_TABLE} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)} that "
                         "the churn evaluation reads", table=VIEW_TABLE,
                         hint="scores.yaml must define them (churn_score, churn_flag, tenure_cohort); "
                              f"rebuild with `mktool score --month {month}`")
    if not next_month_loaded(db, month):
        loaded = db.months("subscribers")
        raise StateError(
            f"the churn evaluation of {month} needs month {after}'s subscribers (who left by {after}), and "
            f"subscribers has no rows for {after} (months loaded: {', '.join(loaded) or 'none'})",
            table="subscribers", hint=f"ingest subscribers_{after}.parquet first, e.g. `mktool ingest "
                                      f"subscribers_{after}.parquet`")
    return after


def evaluate_churn(db: Database, month: str, *, by: str | None = None,
                   reporter: Reporter = QUIET) -> ChurnEvaluation:
    """Evaluate churn_score and churn_flag of ``month`` against ``month``+1 and store the run."""
    check_month(month)
    _require_inputs(db, month, by)
    con = db.c
    view_build = require_fresh_view(con, month)
    query = figures_query(month, by)
    with reporter.step(f"evaluating churn {month}"):
        cur = con.execute(query.sql, query.params)
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    whole = [r for r in rows if r["whole"]]
    if not whole:
        raise StateError(f"{VIEW_TABLE} for {month} has no customer whose status is not closed: no base to evaluate",
                         table=VIEW_TABLE, hint=f"check the subscribers of {month} and `mktool score --month {month}`")
    doc: dict[str, Any] = {"month": month, **_group_document(whole)}
    if by:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if not r["whole"]:
                groups.setdefault(r["grp"], []).append(r)
        doc["by"] = {name: _group_document(group) for name, group in groups.items()}
    run_id = uuid.uuid4().hex[:16]
    text = json.dumps(doc, ensure_ascii=False, sort_keys=False)
    with db.transaction():
        con.execute(STORE_DDL)
        store = store_query(month, run_id, by, view_build, doc["base"], doc["churned"],
                            None if doc["base_rate"] is None else Decimal(str(doc["base_rate"])), text)
        con.execute(store.sql, store.params)
    return ChurnEvaluation(month, run_id, doc)


# -- the document as tables and csv (the CLI prints these) ---------------------------------------
def _groups(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("all", doc), *doc.get("by", {}).items()]


def _shown(value: float | None) -> str:
    return "" if value is None else f"{Decimal(str(value)):.6f}"


def churn_tables(doc: dict[str, Any]) -> list[tuple[str, list[str], list[tuple[Any, ...]]]]:
    """(title, columns, rows) of the three tables people read: base, flag and top shares, gains."""
    month = doc["month"]
    summary = [(name, g["base"], g["churned"], _shown(g["base_rate"])) for name, g in _groups(doc)]
    selections = []
    for name, g in _groups(doc):
        f = g["flag"]
        selections.append((name, "churn_flag", f["flagged"], f["churned"], _shown(f["precision"]),
                           _shown(f["recall"]), _shown(f["lift"])))
        selections += [(name, f"top {(Decimal(str(t['share'])) * 100).normalize():f}%", t["customers"], t["churned"],
                        _shown(t["precision"]), _shown(t["recall"]), _shown(t["lift"])) for t in g["top"]]
    gains = [(name, d["decile"], d["customers"], d["churned"], d["cumulative_churned"], _shown(d["cumulative_recall"]),
              _shown(d["lift"])) for name, g in _groups(doc) for d in g["gains"]]
    return [
        (f"Churn model {month} against {next_month(month)}", ["group", "base", "churned", "base_rate"], summary),
        ("Flag and top shares of churn_score", ["group", "selection", "customers", "churned", "precision", "recall",
                                                "lift"], selections),
        ("Cumulative gains by decile", ["group", "decile", "customers", "churned", "cumulative_churned",
                                        "cumulative_recall", "lift"], gains),
    ]


CSV_COLUMNS = ("month", "by", "group", "section", "share", "decile", "customers", "churned", "cumulative_churned",
               "base_rate", "precision", "recall", "cumulative_recall", "lift")


def _csv_row(month: str, key: tuple[str, str], section: str, **values: Any) -> list[Any]:
    cells = {"month": month, "by": key[0], "group": key[1], "section": section, **values}
    return ["" if cells.get(c) is None else (_shown(cells[c]) if isinstance(cells[c], float) else cells[c])
            for c in CSV_COLUMNS]


def churn_csv(doc: dict[str, Any], by: str | None = None) -> str:
    """The document as one csv row per figure line (section base, flag, top, decile); empty = not applicable."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for name, g in _groups(doc):
        key = ("", "") if g is doc else (by or "", name)
        row = functools.partial(_csv_row, doc["month"], key)
        writer.writerow(row("base", customers=g["base"], churned=g["churned"], base_rate=g["base_rate"]))
        f = g["flag"]
        writer.writerow(row("flag", customers=f["flagged"], churned=f["churned"], precision=f["precision"],
                            recall=f["recall"], lift=f["lift"]))
        for t in g["top"]:
            writer.writerow(row("top", share=str(Decimal(str(t["share"]))), customers=t["customers"],
                                churned=t["churned"], precision=t["precision"], recall=t["recall"], lift=t["lift"]))
        for d in g["gains"]:
            writer.writerow(row("decile", decile=d["decile"], customers=d["customers"], churned=d["churned"],
                                cumulative_churned=d["cumulative_churned"], cumulative_recall=d["cumulative_recall"],
                                lift=d["lift"]))
    return buffer.getvalue()
