"""`mktool explain MSISDN`: why one customer got what they got.

Runs, for that one customer, the very queries `matrix` and `plan` run for the whole month —
built by the same builders, restricted to the customer through a bound parameter: policy
validity, every matrix's `where` and every rule's `when`, first-hit and collect, the priority
order, dedupe and ranks; the plan step's candidate stages, every target plan's bill and change
rates and the plan ranking — and puts it beside what was stored and exported. What it shows is
what the whole-month run gives that customer, by construction, not a second reading of the rules.
For a rule that did not match it names the first top-level AND condition of its ``when`` (or of
the matrix's ``where``) that is false or NULL — the parts sqlcheck split off the checked
expression, evaluated for the customer in one bound-parameter query per matrix — and every rule
carries the customer's values of the columns it reads.
This is what a front-desk agent or an analyst reads before trusting a recommendation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import duckdb

from mktool.database import Database, dict_rows, step_settings, table_exists
from mktool.dialect import Query, round_half_away
from mktool.errors import MktoolError, RuleError
from mktool.freshness import require_fresh_view
from mktool.matrices import CustomerRun, evaluate_customer
from mktool.plan import (
    IN_RENTAL_WINDOW_SQL,
    IN_TOTAL_WINDOW_SQL,
    SHOWN_COLUMNS_SQL,
    candidate_params,
    candidates_sql,
    customer_params,
    exact_sql,
    funnel_query,
    pairs_sql,
    recommend_query,
    window_params,
)
from mktool.planconfig import PlanConfig
from mktool.project import Project
from mktool.rules import Matrix, Rule, RuleSet, Scene
from mktool.schema import (
    CONTACT_HISTORY_TABLE,
    CUSTOMER_PARAM,
    CUSTOMER_PRIORITY_TABLE,
    HOLDOUTS_TABLE,
    PLAN_STAGES,
    PLAN_TABLE,
    RECOMMENDATIONS_TABLE,
    SCENE_EVENTS_TABLE,
    SCENE_FILES_TABLE,
    VIEW_TABLE,
)
from mktool.sqlcheck import CheckedExpression, conjuncts

# A rule's outcome for the customer (RuleOutcome.outcome), in the order they are decided.
SKIPPED = "skipped"  # its policy is not valid in the month: `matrix` does not evaluate it
OUTSIDE_WHERE = "outside_where"  # the customer is not in the matrix's where
FIRED = "fired"  # the matrix gave the customer this rule (hit: first: the first match)
SHADOWED = "shadowed"  # matches, but an earlier rule of a hit: first matrix took the customer
NOT_MATCHED = "not_matched"  # its when is false (or NULL) for the customer
OUTCOMES = (SKIPPED, OUTSIDE_WHERE, FIRED, SHADOWED, NOT_MATCHED)

#: The plan pairs' verdict on a pair inside both windows.
IN_BOTH_WINDOWS = "in both windows"

#: A failed condition's verdict (RuleOutcome.failed_because): false, or NULL because a value it reads is missing.
FALSE, NULL = "false", "null"
#: The customer_view columns the text view always shows, whatever the rules read (msisdn masked).
KEY_VIEW_COLUMNS = ("msisdn", "month", "value_tier", "stickiness_tier", "churn_flag", "segment")


@dataclass
class RuleOutcome:
    matrix: str
    family: str
    hit: str
    rule_no: int
    rule_id: str
    policy_id: str | None
    order: list[str]
    matched: bool  # in the matrix's where and its when holds (fired or shadowed)
    fired: bool  # the matrix gave the customer this rule
    when: str
    outcome: str = NOT_MATCHED  # one of OUTCOMES
    detail: str = ""  # why: the skip reason with the validity dates, the rule that shadows it, the dedupe …
    rank: int | None = None  # the recommendation's rank this evaluation gives (None: no recommendation)
    # Why a rule did not match (not_matched: its when; outside_where: the matrix's where): the first top-level
    # AND condition that is not true for the customer, its place, and whether it was false or NULL (a value is
    # missing). None for a rule that matched or was skipped.
    failed_condition: str | None = None
    failed_because: str | None = None  # FALSE | NULL
    failed_in: str | None = None  # "when" | "where"
    failed_index: int | None = None  # 1-based place of the condition among the conditions of failed_in
    conditions: int | None = None  # how many top-level conditions failed_in has
    columns: dict[str, Any] = field(default_factory=dict)  # the customer's value of every column when / where read


@dataclass
class Explanation:
    msisdn: str
    month: str
    view: dict[str, Any]
    rules: list[RuleOutcome]
    where: dict[str, bool | None]  # matrix → the customer is in its where
    recommendations: list[dict[str, Any]]  # as stored by `matrix`
    plan_stages: dict[str, bool]
    plan_pairs: list[dict[str, Any]]  # every target plan priced; rank: this evaluation's, recommended_rank: stored
    contacts: list[dict[str, Any]]
    holdouts: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)  # where the stored rows differ from this evaluation, and why
    # "Events and scenes": the customer's last EVENTS_SHOWN events of the scene batches, newest first, one row
    # per scene_events row (an event × each scene listening to it) with ``why``; scene_note when there are none.
    scene_events: list[dict[str, Any]] = field(default_factory=list)
    scene_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def display(value: Any, places: int | None = None) -> str:
    """A value as explain's tables show it: money as 191.52, not Decimal('191.52') or 191.520000.

    Exact decimals keep every significant digit and at least two decimals (the fen); floats get
    two; ``places`` fixes the decimals instead (the rates: 4, as the lists show them).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        if places is None:
            exponent = value.normalize().as_tuple().exponent
            places = max(2, -exponent if isinstance(exponent, int) else 0)
        return f"{value:.{places}f}"
    if isinstance(value, float):
        return f"{value:.{2 if places is None else places}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(display(v, places) for v in value)
    return str(value)


def outcome_label(rule: RuleOutcome) -> str:
    """The Rules table's outcome cell: FIRED / matched, shadowed / no / no (where) / SKIPPED, with why."""
    label = {FIRED: "FIRED", SHADOWED: "matched, shadowed", NOT_MATCHED: "no", OUTSIDE_WHERE: "no (where)",
             SKIPPED: "SKIPPED"}[rule.outcome]
    if not rule.detail:
        return label
    return f"{label} {rule.detail}" if rule.outcome == SHADOWED else f"{label}: {rule.detail}"


def failure_label(rule: RuleOutcome) -> str:
    """The Rules table's "first failed condition" cell: ``when 2/3: return_rate > 86 is false``."""
    if rule.failed_condition is None:
        return ""
    verdict = "NULL (a value it reads is missing)" if rule.failed_because == NULL else "false"
    return f"{rule.failed_in} {rule.failed_index}/{rule.conditions}: {rule.failed_condition} is {verdict}"


def columns_label(rule: RuleOutcome) -> str:
    """The customer's values of the columns a rule reads: ``arpu_3m=117.32, tenure_months=16``; NULL as NULL."""
    return ", ".join(f"{k}={'NULL' if v is None else display(v)}" for k, v in rule.columns.items())


def masked(msisdn: str) -> str:
    """138****0042: the number as a ``mask: mask`` list shows it (export's masking), for the table view."""
    return f"{msisdn[:3]}****{msisdn[-4:]}" if len(msisdn) >= 8 else "****"


def view_columns(ex: Explanation) -> list[str]:
    """The view columns the text view shows: the key ones, then every column a rule or where reads (view order)."""
    read = {c for r in ex.rules for c in r.columns}
    return [c for c in ex.view if c in KEY_VIEW_COLUMNS] + [c for c in ex.view
                                                           if c in read and c not in KEY_VIEW_COLUMNS]


def _rows(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    return dict_rows(cur)


# -- matrices --------------------------------------------------------------------------------------
def _rule(rules: RuleSet, matrix: str, no: int) -> Rule:
    return next(r for r in rules.matrix(matrix).rules if r.no == no)


def _not_ranked(rules: RuleSet, run: CustomerRun, matrix: Matrix, rule: Rule) -> str:
    """Why a rule the matrix gave the customer has no recommendation row."""
    prio = rules.priority
    if not run.in_scope.get(prio.name):
        return "not recommended: outside the priority matrix's where"
    if not run.hits.get(prio.name):
        return "not recommended: no priority rule matches (matrix refuses the month)"
    key = run.dedupe_keys.get((matrix.name, rule.no), "")
    kind, _, name = key.partition(":")
    for m_name, no, rank in run.ranked:
        if run.dedupe_keys.get((m_name, no)) == key:
            winner = _rule(rules, m_name, no)
            what = f"exclusive group {name}" if kind == "group" else f"policy {name}"
            return f"not recommended: {what} kept by {m_name} {winner.id} (rank {rank})"
    return "not recommended"  # pragma: no cover - a hit is ranked or deduped


def _rule_outcomes(rules: RuleSet, run: CustomerRun) -> list[RuleOutcome]:
    ranks = {(m, no): rank for m, no, rank in run.ranked}
    out: list[RuleOutcome] = []
    for m in rules.matrices:
        hits = run.hits.get(m.name, [])
        first_hit = next((r for r in m.rules if r.no in hits), None) if m.hit == "first" else None
        for r in m.rules:
            rank = ranks.get((m.name, r.no))
            if r.no in run.skipped.get(m.name, {}):
                outcome, detail = SKIPPED, run.skipped[m.name][r.no]
            elif not run.in_scope.get(m.name):
                outcome = OUTSIDE_WHERE
                detail = m.where.source if m.where is not None else ""
            elif r.no in hits:
                outcome = FIRED
                if m.is_priority:
                    detail = ""
                elif rank is not None:
                    detail = f"rank {rank}"
                else:
                    detail = _not_ranked(rules, run, m, r)
            elif r.no in run.matches.get(m.name, set()):
                outcome = SHADOWED
                detail = f"by {first_hit.id}" if first_hit is not None else ""
            else:
                outcome, detail = NOT_MATCHED, ""
            out.append(RuleOutcome(
                m.name, m.family, m.hit, r.no, r.id, r.policy, list(r.order), matched=outcome in (FIRED, SHADOWED),
                fired=outcome == FIRED, when=r.when.source, outcome=outcome, detail=detail, rank=rank))
    return out


def _first_failure_sql(parts: tuple[CheckedExpression, ...]) -> str:
    """The place of the first condition not true: -i when it is NULL, i when false, 0 when all hold.

    A CASE in order, so a condition is evaluated only when those before it held (as AND reads).
    """
    whens = " ".join(f"WHEN ({p.duckdb_sql}) IS NULL THEN {-i} WHEN NOT ({p.duckdb_sql}) THEN {i}"
                     for i, p in enumerate(parts, 1))
    return f"CASE {whens} ELSE 0 END"


def conditions_query(matrix: Matrix, where: tuple[CheckedExpression, ...] | None,
                     whens: dict[int, tuple[CheckedExpression, ...]], month: str, msisdn: str) -> Query:
    """One query per matrix: for the customer, the first failing condition of its where and of each rule's when."""
    cols = ([f"{_first_failure_sql(where)} AS where_failed"] if where else []) + [
        f"{_first_failure_sql(parts)} AS rule_{no}" for no, parts in whens.items()]
    sql = (f"SELECT {', '.join(cols)} FROM {VIEW_TABLE} "
           f"WHERE month = $month AND msisdn = ${CUSTOMER_PARAM}")
    return Query(f"explain:conditions:{matrix.name}", sql, {"month": month, CUSTOMER_PARAM: msisdn})


def _read_columns(view: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The customer's value of each named column (lower-cased, as sqlcheck gives them), in the view's order."""
    return {k: v for k, v in view.items() if k.lower() in names}


def _explain_failures(con: duckdb.DuckDBPyConnection, rules: RuleSet, outcomes: list[RuleOutcome], month: str,
                      msisdn: str, view: dict[str, Any]) -> None:
    """Fill in, for every rule not matched, the first failing condition; and every rule's column values."""
    by_rule = {(o.matrix, o.rule_no): o for o in outcomes}
    for m in rules.matrices:
        where_reads = set(m.where.columns) if m.where is not None else set()
        mine = [by_rule[(m.name, r.no)] for r in m.rules]
        for r, o in zip(m.rules, mine):
            o.columns = _read_columns(view, set(r.when.columns) | where_reads)
        outside = m.where is not None and any(o.outcome == OUTSIDE_WHERE for o in mine)
        where = conjuncts(m.where, location=m.at("where")) if outside and m.where is not None else None
        whens = {r.no: conjuncts(r.when, location=r.at("when"))
                 for r, o in zip(m.rules, mine) if o.outcome == NOT_MATCHED}
        if where is None and not whens:
            continue
        q = conditions_query(m, where, whens, month, msisdn)
        try:
            row = con.execute(q.sql, q.params).fetchone()
        except duckdb.Error as exc:
            raise RuleError(f"{m.at('matrix')}: DuckDB, evaluating the conditions of its rules for one customer: "
                            f"{str(exc).strip().splitlines()[0]}") from None
        if row is None:  # pragma: no cover - explain found the customer in the view
            continue
        values = list(row)
        where_failed = int(values.pop(0)) if where is not None else 0
        failed = {no: int(v) for no, v in zip(whens, values)}
        for r, o in zip(m.rules, mine):
            if o.outcome == OUTSIDE_WHERE and where is not None and where_failed:
                _set_failure(o, "where", where, where_failed)
            elif o.outcome == NOT_MATCHED and failed.get(r.no):
                _set_failure(o, "when", whens[r.no], failed[r.no])


def _set_failure(o: RuleOutcome, part: str, parts: tuple[CheckedExpression, ...], code: int) -> None:
    o.failed_in, o.failed_index, o.conditions = part, abs(code), len(parts)
    o.failed_condition = parts[abs(code) - 1].source
    o.failed_because = NULL if code < 0 else FALSE


def _matrix_notes(con: duckdb.DuckDBPyConnection, rules: RuleSet, run: CustomerRun, month: str,
                  stored: list[dict[str, Any]], steps: dict[str, Any]) -> list[str]:
    """Where the stored recommendations are not what the rules give now."""
    if "matrix" not in steps:
        return [f"matrix has not stored recommendations for {month}: the ranks shown are what it would give"]
    given = [(m, _rule(rules, m, no).id, rank) for m, no, rank in run.ranked]
    kept = [(r["matrix"], r["rule_id"], r["rank"]) for r in stored]
    notes = []
    if given != kept:
        notes.append(f"the stored recommendations differ from what the rules in {rules.matrices_dir} give now "
                     f"(stored {kept}, now {given}): the rules changed since matrix ran for {month}")
    if table_exists(con, CUSTOMER_PRIORITY_TABLE):
        row = con.execute(f"SELECT priority_rule_id FROM {CUSTOMER_PRIORITY_TABLE} WHERE month = ? AND msisdn = ?",
                          [month, run.msisdn]).fetchone()
        prio = rules.priority
        now = [_rule(rules, prio.name, no).id for no in run.hits.get(prio.name, [])]
        if row is not None and [row[0]] != now:
            notes.append(f"the stored priority rule {row[0]} differs from what the rules give now "
                         f"({', '.join(now) or 'none'})")
    return notes


# -- plan --------------------------------------------------------------------------------------------
def _plan_config(config: PlanConfig, steps: dict[str, Any]) -> tuple[PlanConfig, list[str]]:
    """plan.yaml with the overrides the stored plan run was given (so the verdicts are the ones it made)."""
    given = (steps.get("plan") or {}).get("overrides") or {}
    if not given:
        return config, []
    # Recorded as the options were named (--total-change, --min-data) or as the settings are (min_data_mb).
    values = {str(k).lstrip("-").replace("-", "_").removesuffix("_mb"): v for k, v in given.items()}
    config = config.with_overrides(
        total_change=values.get("total_change"), rental_change=values.get("rental_change"),
        top=int(values["top"]) if "top" in values else None,
        min_data_mb=float(values["min_data"]) if "min_data" in values else None)
    shown = ", ".join(f"{k} {v}" for k, v in given.items())
    return config, [f"plan is evaluated with the overrides its stored run was given: {shown}"]


def pairs_query(month: str, config: PlanConfig, msisdn: str) -> Query:
    """Every target plan priced for one customer, with the window each pair falls outside of.

    The plan step's own builders: its candidates (with their stage flags: a customer the
    funnel dropped is priced too), its pairs, its exact bills and rates, its windows. Money as
    the lists show it (the fen); each rate as the lists show it (4 decimals, half away from
    zero) and as the windows compared it (``*_6``, 6 decimals).
    """
    w_total = f"[{config.total_change.lo:g}, {config.total_change.hi:g}]"
    w_rental = f"[{config.rental_change.lo:g}, {config.rental_change.hi:g}]"
    sql = f"""WITH {candidates_sql(one_customer=True)}, {pairs_sql("staged")}, {exact_sql()},
        shown AS (SELECT plan_id, plan_name, total_fee_change_6, rental_change_6, {SHOWN_COLUMNS_SQL} FROM rated6)
        SELECT plan_id, plan_name, new_rental, new_voice_overage, new_data_overage, new_total, current_total,
               {round_half_away("total_fee_change", 4)} AS total_fee_change,
               {round_half_away("rental_change", 4)} AS rental_change,
               total_fee_change_6, rental_change_6,
               CASE WHEN total_fee_change_6 IS NULL OR rental_change_6 IS NULL
                         THEN 'not priced: a usage or bill figure is missing'
                    WHEN NOT ({IN_TOTAL_WINDOW_SQL}) THEN 'total_fee_change outside ' || $total_window
                    WHEN NOT ({IN_RENTAL_WINDOW_SQL}) THEN 'rental_change outside ' || $rental_window
                    ELSE '{IN_BOTH_WINDOWS}' END AS verdict
        FROM shown
        ORDER BY verdict <> '{IN_BOTH_WINDOWS}', abs(total_fee_change_6 - 1), new_rental DESC, plan_id"""
    return Query("explain:pairs", sql, {**candidate_params(month, config), **window_params(config),
                                        **customer_params(msisdn),
                       "total_window": w_total, "rental_window": w_rental})


def _plan(con: duckdb.DuckDBPyConnection, month: str, config: PlanConfig,
          msisdn: str) -> tuple[dict[str, bool], list[dict[str, Any]], list[str]]:
    """The customer's plan funnel stages, every pair, and where the stored rows differ."""
    fq = funnel_query(month, config, msisdn=msisdn)
    counts = con.execute(fq.sql, fq.params).fetchone()
    stages = {s: bool(n) for s, n in zip(PLAN_STAGES, counts or ())}
    pq = pairs_query(month, config, msisdn)
    pairs = _rows(con.execute(pq.sql, pq.params))
    rq = recommend_query(month, config, msisdn=msisdn)
    ranks = {row[0]: int(row[1]) for row in con.execute(f"SELECT plan_id, rank FROM ({rq.sql}) AS r",
                                                          rq.params).fetchall()}
    stored: dict[str, int] | None = None
    if table_exists(con, PLAN_TABLE):
        stored = {p: int(r) for p, r in con.execute(
            f"SELECT plan_id, rank FROM {PLAN_TABLE} WHERE month = ? AND msisdn = ?", [month, msisdn]).fetchall()}
    for p in pairs:
        p["rank"] = ranks.get(p["plan_id"])
        p["recommended_rank"] = (stored or {}).get(p["plan_id"])
    notes = []
    if stored is not None and stored != ranks:
        notes.append(f"the stored plan recommendations {sorted(stored.items(), key=lambda x: x[1])} differ from "
                     f"what plan gives now {sorted(ranks.items(), key=lambda x: x[1])}: plan.yaml or the plans "
                     f"changed since plan ran for {month}")
    return stages, pairs, notes


# -- events and scenes (issue 14) ---------------------------------------------------------------------
#: How many of the customer's latest events explain shows (every scene row of each).
EVENTS_SHOWN = 20
#: scene_events' columns explain reads (definitions §4).
SCENE_EVENT_COLUMNS = ("batch", "seq", "event_time", "event_type", "value", "scene_id", "wave", "wave_level",
                       "outcome", "blocked_by_time", "blocked_by_batch", "policy_id", "delivery", "channel",
                       "blocked_at", "held_kind")


def duration_text(value: dt.timedelta) -> str:
    """expires_after as the scene files write it: 30m, 6h, 2d (the largest whole unit)."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return str(value)


def _recent_events_sql() -> str:
    """The customer's last EVENTS_SHOWN events (batch, seq), newest first: every scene row of each is kept."""
    return (f"SELECT batch, seq, max(event_time) AS event_time FROM {SCENE_EVENTS_TABLE} WHERE msisdn = $msisdn "
            f"GROUP BY batch, seq ORDER BY event_time DESC, seq DESC LIMIT {EVENTS_SHOWN}")


def _watermarks(con: duckdb.DuckDBPyConnection, batches: set[str]) -> dict[str, Any]:
    """Each batch's watermark: the newest last_event of the ledger's batches processed before it."""
    if not batches or not table_exists(con, SCENE_FILES_TABLE):
        return {}
    rows = con.execute(
        f"SELECT f.batch, (SELECT max(e.last_event) FROM {SCENE_FILES_TABLE} AS e "
        f"WHERE e.processed_at < f.processed_at) FROM {SCENE_FILES_TABLE} AS f WHERE list_contains($batches, f.batch)",
        {"batches": sorted(batches)}).fetchall()
    return {b: w for b, w in rows}


def _not_matched_reasons(con: duckdb.DuckDBPyConnection, scene: Scene, month: str,
                         msisdn: str) -> dict[tuple[str, int], str]:
    """Why each of the customer's not_matched events of ``scene`` (among the recent ones) did not match:
    its ``when`` and each wave's ``when`` evaluated again, on the relation the trigger step builds (the
    customer view's columns and the event's value, event_time and event_type, unqualified; NULL is false)."""
    waves = ", ".join(f"coalesce(({w.when}), false) AS wave_{w.level}" for w in scene.waves)
    sql = (f"SELECT __batch, __seq, coalesce(({scene.when or 'TRUE'}), false) AS scene_ok, {waves} FROM ("
           f"SELECT v.*, s.value, s.event_time, s.event_type, s.batch AS __batch, s.seq AS __seq "
           f"FROM {SCENE_EVENTS_TABLE} AS s JOIN ({_recent_events_sql()}) AS r ON r.batch = s.batch AND r.seq = s.seq "
           f"JOIN {VIEW_TABLE} AS v ON v.msisdn = s.msisdn AND v.month = $month "
           f"WHERE s.msisdn = $msisdn AND s.scene_id = $scene AND s.outcome = 'not_matched') AS relation")
    try:
        rows = con.execute(sql, {"msisdn": msisdn, "month": month, "scene": scene.id}).fetchall()
    except duckdb.Error as exc:
        raise RuleError(f"{scene.at('when')}: DuckDB, evaluating the scene for one customer: "
                        f"{str(exc).strip().splitlines()[0]}") from None
    out = {}
    for batch, seq, scene_ok, *wave_ok in rows:
        if not scene_ok:
            out[(batch, seq)] = f"the scene's when is false: {scene.when}"
        elif not any(wave_ok):
            out[(batch, seq)] = "no wave's when holds: " + "; ".join(f"{w.id}: {w.when}" for w in scene.waves)
        else:
            held = next(w.id for w, ok in zip(reversed(scene.waves), reversed(wave_ok)) if ok)
            out[(batch, seq)] = (f"the scene's when and wave {held} hold on the customer view of {month} now: "
                                 "the view or the scene changed since the batch")
    return out


def scene_why(row: dict[str, Any], scene: Scene | None, watermark: Any, not_matched: str | None) -> str:
    """The "why" of one scene_events row, in the words of definitions §3–4."""
    outcome = row["outcome"]
    if outcome == "duplicate":
        return "an event with the same type and time was processed before (an earlier batch, or earlier in its own)"
    if outcome == "no_scene":
        return f"no scene listens to {row['event_type']}"
    if scene is None:
        return f"scene {row['scene_id']} is no longer in the scene files"
    if outcome == "stale":
        limit = duration_text(scene.expires_after)
        if watermark is None:
            return f"older than the batch's watermark by more than expires_after {limit}"
        return f"{watermark - row['event_time']} older than the watermark {watermark} (expires_after {limit})"
    if outcome == "unknown_customer":
        return "not in the customer view the batch read"
    if outcome == "not_matched":
        return not_matched or f"no customer_view row to evaluate {scene.id}'s conditions on"
    if outcome == "once_per":
        return (f"blocked by the trigger of {row['blocked_by_time']} in batch {row['blocked_by_batch']} "
                f"(once_per {scene.once_per_days} days)")
    if outcome == "fired":
        delivery = row.get("delivery")
        if delivery == "listed":
            return f"listed on {row['channel']}"
        if delivery == "held_out":
            return f"held out ({row.get('held_kind') or 'policy'} control group)"
        if delivery == "merged":
            return f"merged: a better-ranked trigger of policy {row['policy_id']} in the batch carries the offer"
        if delivery == "blocked":
            return f"blocked by the contact policy at {row['blocked_at']}"
        return "fired"
    return outcome


def scene_events(con: duckdb.DuckDBPyConnection, project: Project, month: str,
                 msisdn: str) -> tuple[list[dict[str, Any]], str | None]:
    """The customer's last events of the scene batches with each scene's outcome and why, or a note why none."""
    if not table_exists(con, SCENE_EVENTS_TABLE):
        return [], "no scene batch was processed (`mktool scene --events PATH` has not run on this database)"
    columns = ", ".join(f"s.{c}" for c in SCENE_EVENT_COLUMNS)
    rows = _rows(con.execute(
        f"SELECT {columns} FROM {SCENE_EVENTS_TABLE} AS s JOIN ({_recent_events_sql()}) AS r "
        "ON r.batch = s.batch AND r.seq = s.seq WHERE s.msisdn = $msisdn", {"msisdn": msisdn}))
    if not rows:
        n = con.execute(f"SELECT count(DISTINCT batch) FROM {SCENE_EVENTS_TABLE}").fetchone()
        return [], f"no event of this customer in the {n[0] if n else 0} scene batch(es) processed"
    scenes = {s.id: s for s in project.scenes}
    marks = _watermarks(con, {r["batch"] for r in rows if r["outcome"] == "stale"})
    reasons: dict[tuple[str, str, int], str] = {}
    for scene_id in sorted({r["scene_id"] for r in rows if r["outcome"] == "not_matched" and r["scene_id"] in scenes}):
        for (batch, seq), text in _not_matched_reasons(con, scenes[scene_id], month, msisdn).items():
            reasons[(scene_id, batch, seq)] = text
    # Newest first; an event's scene rows in the scenes' order (a scene no longer in the files last).
    rows.sort(key=lambda r: scenes[r["scene_id"]].position if r["scene_id"] in scenes else 1 << 30)
    rows.sort(key=lambda r: (r["event_time"], r["seq"]), reverse=True)
    out = []
    for r in rows:
        scene = scenes.get(r["scene_id"]) if r["scene_id"] else None
        out.append({**r, "why": scene_why(r, scene, marks.get(r["batch"]),
                                          reasons.get((r["scene_id"], r["batch"], r["seq"])))})
    return out, None


# -- the step ---------------------------------------------------------------------------------------
def explain(db: Database, project: Project, month: str, msisdn: str) -> Explanation:
    """One customer through matrix and plan, beside what was stored, contacted and held out."""
    con = db.c
    db.require_month(VIEW_TABLE, month, "score")
    require_fresh_view(con, month)
    found = _rows(con.execute(f"SELECT * FROM {VIEW_TABLE} WHERE month = ? AND msisdn = ?", [month, msisdn]))
    if not found:
        raise MktoolError(f"no customer {msisdn} in customer_view for {month}",
                          hint="check the number (11 digits, as a string) and the month")
    view = found[0]
    steps = step_settings(con, month)

    rules = project.rules
    run = evaluate_customer(db, project, month, msisdn)
    outcomes = _rule_outcomes(rules, run)
    _explain_failures(con, rules, outcomes, month, msisdn, view)
    where: dict[str, bool | None] = {m.name: run.in_scope.get(m.name) for m in rules.matrices}
    recs = (_rows(con.execute(f"SELECT * FROM {RECOMMENDATIONS_TABLE} WHERE month = ? AND msisdn = ? ORDER BY rank",
                              [month, msisdn])) if table_exists(con, RECOMMENDATIONS_TABLE) else [])
    notes = _matrix_notes(con, rules, run, month, recs, steps)

    config, config_notes = _plan_config(project.plan, steps)
    stages, pairs, plan_notes = _plan(con, month, config, msisdn)
    notes += config_notes + plan_notes

    contacts: list[dict[str, Any]] = []
    if table_exists(con, CONTACT_HISTORY_TABLE):
        contacts = _rows(con.execute(
            f"SELECT * FROM {CONTACT_HISTORY_TABLE} WHERE msisdn = ? "
            "ORDER BY contact_date DESC, channel, policy_id LIMIT 50", [msisdn]))
    holdouts = (_rows(con.execute(f"SELECT * FROM {HOLDOUTS_TABLE} WHERE month = ? AND msisdn = ? "
                                  "ORDER BY cycle, channel", [month, msisdn]))
                if table_exists(con, HOLDOUTS_TABLE) else [])
    events, scene_note = scene_events(con, project, month, msisdn)
    return Explanation(msisdn, month, view, outcomes, where, recs, stages, pairs, contacts, holdouts, notes,
                       scene_events=events, scene_note=scene_note)
