"""`mktool explain MSISDN`: why one customer got what they got.

Re-evaluates, for that one customer, exactly the SQL production runs — every matrix's
`where` and every rule's `when`, the plan step's candidate stages and every target plan's
bill and change rates — and puts it beside what was stored and exported. This is what a
front-desk agent or an analyst reads before trusting a recommendation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import duckdb

from mktool.database import Database, table_exists
from mktool.dialect import round_half_away
from mktool.errors import MktoolError
from mktool.freshness import require_fresh_view
from mktool.plan import CANDIDATES_SQL, PAIRS_SQL, SHOWN_COLUMNS_SQL, candidate_params, exact_sql, window_params
from mktool.project import Project


@dataclass
class RuleOutcome:
    matrix: str
    family: str
    hit: str
    rule_no: int
    rule_id: str
    policy_id: str | None
    order: list[str]
    matched: bool
    fired: bool  # matched and, for hit: first, no earlier rule matched
    when: str


@dataclass
class Explanation:
    msisdn: str
    month: str
    view: dict[str, Any]
    rules: list[RuleOutcome]
    where: dict[str, bool | None]  # matrix → passed its pre-filter
    recommendations: list[dict[str, Any]]
    plan_stages: dict[str, bool]
    plan_pairs: list[dict[str, Any]]
    contacts: list[dict[str, Any]]
    holdouts: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rows(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


# The plan step's own SQL, evaluated for one customer and every target plan (not only those
# near a window), with the window each pair falls outside of: the same exact bills and rates as
# plan_recommendations. Money as the lists show it (the fen); each rate as the lists show it
# (4 decimals, half away from zero) and as the windows compared it (``*_6``, 6 decimals).
def _plan_sql() -> str:
    pairs_for_everyone = PAIRS_SQL.replace("FROM candidates AS c", "FROM staged AS c")
    return f"""WITH {CANDIDATES_SQL}, {pairs_for_everyone}, {exact_sql("WHERE msisdn = $msisdn")},
        shown AS (SELECT plan_id, plan_name, total_fee_change_6, rental_change_6, {SHOWN_COLUMNS_SQL} FROM rated6)
        SELECT plan_id, plan_name, new_rental, new_voice_overage, new_data_overage, new_total, current_total,
               {round_half_away("total_fee_change", 4)} AS total_fee_change,
               {round_half_away("rental_change", 4)} AS rental_change,
               total_fee_change_6, rental_change_6,
               CASE WHEN total_fee_change_6 NOT BETWEEN $total_lo AND $total_hi
                         THEN 'total_fee_change outside ' || $total_window
                    WHEN rental_change_6 NOT BETWEEN $rental_lo AND $rental_hi
                         THEN 'rental_change outside ' || $rental_window
                    ELSE 'in both windows' END AS verdict
        FROM shown
        ORDER BY verdict <> 'in both windows', abs(total_fee_change_6 - 1), new_rental DESC, plan_id"""


def explain(db: Database, project: Project, month: str, msisdn: str) -> Explanation:
    con = db.c
    db.require_month("customer_view", month, "score")
    require_fresh_view(con, month)
    cur = con.execute("SELECT * FROM customer_view WHERE month = ? AND msisdn = ?", [month, msisdn])
    found = _rows(cur)
    if not found:
        raise MktoolError(f"no customer {msisdn} in customer_view for {month}",
                          hint="check the number (11 digits, as a string) and the month")
    view = found[0]

    rules = project.rules
    outcomes: list[RuleOutcome] = []
    where: dict[str, bool | None] = {}
    for matrix in rules.matrices:
        exprs = [f"({matrix.where.duckdb_sql})" if matrix.where else "true"]
        exprs += [f"coalesce(({r.when.duckdb_sql}), false)" for r in matrix.rules]
        row = con.execute(
            f"SELECT {', '.join(exprs)} FROM customer_view WHERE month = ? AND msisdn = ?", [month, msisdn]
        ).fetchone()
        assert row is not None
        passed = bool(row[0])
        where[matrix.name] = passed
        fired_one = False
        for rule, matched in zip(matrix.rules, row[1:]):
            matched = bool(matched) and passed
            fired = matched and (matrix.hit == "collect" or not fired_one)
            fired_one = fired_one or matched
            outcomes.append(RuleOutcome(matrix.name, matrix.family, matrix.hit, rule.no, rule.id, rule.policy,
                                        list(rule.order), matched, fired, rule.when.source))

    recs = (_rows(con.execute("SELECT * FROM recommendations WHERE month = ? AND msisdn = ? ORDER BY rank",
                              [month, msisdn])) if table_exists(con, "recommendations") else [])

    plan = project.plan
    stage_row = _rows(con.execute(
        "WITH " + CANDIDATES_SQL + " SELECT true AS base, is_active AS active, is_active AND has_min_data AS data_ge_min, "
          "is_active AND has_min_data AND on_eligible_plan AS eligible_plan, "
          "is_active AND has_min_data AND on_eligible_plan AND is_billable AS billable FROM staged WHERE msisdn = $msisdn",
        {**candidate_params(month, plan), "msisdn": msisdn}))
    stages = {k: bool(v) for k, v in stage_row[0].items()} if stage_row else {}
    pairs = _rows(con.execute(_plan_sql(), {
        **candidate_params(month, plan), **window_params(plan), "msisdn": msisdn,
        "total_window": f"[{plan.total_change.lo:g}, {plan.total_change.hi:g}]",
        "rental_window": f"[{plan.rental_change.lo:g}, {plan.rental_change.hi:g}]",
    }))
    if table_exists(con, "plan_recommendations"):
        ranks = dict(con.execute("SELECT plan_id, rank FROM plan_recommendations WHERE month = ? AND msisdn = ?",
                                 [month, msisdn]).fetchall())
        for p in pairs:
            p["recommended_rank"] = ranks.get(p["plan_id"])

    contacts: list[dict[str, Any]] = []
    if table_exists(con, "contact_history"):
        contacts = _rows(con.execute(
            "SELECT * FROM contact_history WHERE msisdn = ? ORDER BY contact_date DESC, channel, policy_id LIMIT 50",
            [msisdn]))
    holdouts = (_rows(con.execute("SELECT * FROM holdouts WHERE month = ? AND msisdn = ? ORDER BY cycle, channel",
                                  [month, msisdn])) if table_exists(con, "holdouts") else [])
    return Explanation(msisdn, month, view, outcomes, where, recs, stages, pairs, contacts, holdouts)
