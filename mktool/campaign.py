"""`mktool evaluate [campaign] --month M`: did export month M's contacts sell, against the hold-outs (SPEC §7).

The binding definitions are docs/evaluation.md's "Campaigns" section; in short:

* **cycles of M**: the cycle ids of M's channel funnels (funnel_counts ``channel:*``) and of M's
  hold-outs. **Showing period**: the earliest cycle date through the last day of the calendar
  month of the latest ('YYYY-MM' ids of older builds are left out);
* **contacts of M**: push rows mktool wrote in a cycle of M (recorded_by 'mktool', whatever
  their outcome now is) and every contact_history row of a pop-up channel dated in the showing
  period. A pair (msisdn, policy_id) contacted is counted once: its contact date d is its
  earliest contact, its channel that contact's (ties: push first, then channel name);
* **held-out pairs**: the pairs of holdouts of month M, from their earliest cycle date;
* per pair, within [d, d + W] (W = --window): ``ordered`` (an ``order`` of the policy),
  ``cancelled_7d`` (such an order cancelled by the end of its 7th day), and the outcomes
  accepted / rejected / no_answer / opted_out (a response row of the pair on any channel);
* per group of ``--by`` and in total: the counts, the rates (exact quotients rounded half away
  from zero to 6 decimals in SQL), uplift exactly and Newcombe's hybrid score interval
  (computed here in Python from the integer counts of a few rows);
* the **balance check**: value tier, segment and arpu_3m of the treated and held-out customers;
* the **response funnel** per channel (sent → reached → accepted → ordered → kept_7d, pairs).

The pairs are built once, set-based, into a temp table (:func:`pairs_query`); the figures, the
funnels and the balance are each one aggregation over it. Each run is stored in
``campaign_evaluation`` (new run id) and replaces the month's response funnels in funnel_counts,
in one transaction.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from statistics import NormalDist
from typing import Any

import duckdb

from mktool.console import QUIET, Reporter
from mktool.contract import check_month
from mktool.database import (
    Database,
    command_line,
    dict_rows,
    ensure_funnel_cycle,
    funnel_has_cycle,
    table_columns,
    table_exists,
)
from mktool.dialect import (
    Query,
    days_after,
    decimal_units,
    div_half_away,
    exact_rate,
    int_div,
    round_half_away,
    units_decimal,
)
from mktool.errors import MktoolError, StateError
from mktool.freshness import view_build_id
from mktool.project import Project
from mktool.schema import (
    CAMPAIGN_BY,
    CAMPAIGN_EVALUATION_TABLE,
    CANCEL_DAYS,
    CONTACT_HISTORY_TABLE,
    DEFAULT_WINDOW_DAYS,
    EVALUATION_RATE_SCALE,
    FUNNEL_TABLE,
    HISTORY_BOOKKEEPING,
    HOLDOUT_KINDS,
    HOLDOUTS_TABLE,
    ORDERS_TABLE,
    PLAN_TABLE,
    POPUP,
    PUSH,
    RECOMMENDATIONS_TABLE,
    RECORDED_BY,
    RESPONSE_FUNNEL_PREFIX,
    RESPONSE_STAGES,
    SCENE_CYCLE_PREFIX,
    SCENE_EVENTS_TABLE,
    SCENE_FILES_TABLE,
    SCENE_MATRIX,
    VIEW_TABLE,
)

__all__ = ["CampaignEvaluation", "campaign_csv", "campaign_tables", "evaluate_campaign", "newcombe_interval",
           "newest_run", "queries", "responses_exist"]

#: The document's figures of a group, in order (``uplift_ci`` is [lo, hi] or null).
COUNT_FIELDS = ("contacted", "accepted", "rejected", "no_answer", "opted_out", "ordered", "held_out",
                "held_out_ordered", "cancelled_7d")
FIELDS = ("contacted", "accepted", "rejected", "no_answer", "opted_out", "success_rate", "ordered", "take_up",
          "held_out", "held_out_ordered", "take_up_control", "uplift", "uplift_ci", "cancelled_7d", "cancel_7d_rate",
          "contacts_per_customer")
#: The contact outcomes counted per pair: figure → contact_history.outcome.
OUTCOMES = {"accepted": "accepted", "rejected": "rejected", "no_answer": "no_answer", "opted_out": "unsubscribed"}
#: The outcomes that say a push contact reached the customer (any but no_answer; ``sent`` is none).
REACHED_OUTCOMES = ("accepted", "rejected", "unsubscribed")
#: The balance check's groups of customers, in the document's order.
BALANCE_GROUPS = ("treated", "held_out", "held_out_policy", "held_out_universal")
#: The value tiers the balance always lists (scores.yaml's), in this order; other labels follow by name.
VALUE_TIERS = ("high", "mid_high", "mid", "low")
NO_VALUE = "(none)"
#: Nearest-rank quantiles of arpu_3m: (name, a, b) for q = a/b, position ⌈q·n⌉ = ⌊(a·n + b − 1) / b⌋.
QUANTILES = (("p25", 1, 4), ("median", 1, 2), ("p75", 3, 4))
#: z of the 95% interval: the 0.975 quantile of the standard normal distribution.
Z95 = NormalDist().inv_cdf(0.975)
MICRO = Decimal("0.000001")
SCALE = EVALUATION_RATE_SCALE


# -- the sources, whatever shape the database has ------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """Which inputs the database has, and in which form (older builds lack columns)."""

    history: bool = False  # contact_history exists
    history_bookkeeping: bool = False  # … with cycle and recorded_by
    holdouts: bool = False
    holdout_kind: bool = False  # holdouts.kind (the universal control group's build)
    holdout_cycle_date: bool = False  # holdouts.cycle_date
    orders: bool = False
    recommendations: bool = False
    plan: bool = False  # plan_recommendations exists
    view: bool = False  # customer_view exists
    view_columns: tuple[str, ...] = ()  # of segment, value_tier, arpu_3m: those customer_view has
    funnel_cycle: bool = False  # funnel_counts.cycle
    scenes: bool = False  # scene batches were recorded (scene_files, scene_events)

    @classmethod
    def of(cls, con: duckdb.DuckDBPyConnection) -> Shape:
        def cols(table: str) -> set[str]:
            return set(table_columns(con, table)) if table_exists(con, table) else set()

        history, holdouts, view = cols(CONTACT_HISTORY_TABLE), cols(HOLDOUTS_TABLE), cols(VIEW_TABLE)
        return cls(
            history=bool(history), history_bookkeeping=set(HISTORY_BOOKKEEPING) <= history,
            holdouts=bool(holdouts), holdout_kind="kind" in holdouts, holdout_cycle_date="cycle_date" in holdouts,
            orders=table_exists(con, ORDERS_TABLE), recommendations=table_exists(con, RECOMMENDATIONS_TABLE),
            plan=table_exists(con, PLAN_TABLE),
            view=bool(view), view_columns=tuple(c for c in ("segment", "value_tier", "arpu_3m") if c in view),
            funnel_cycle=funnel_has_cycle(con),
            scenes=table_exists(con, SCENE_FILES_TABLE) and table_exists(con, SCENE_EVENTS_TABLE))


def _empty(columns: str) -> str:
    return f"SELECT {columns} WHERE false"


def _unless_recommended(shape: Shape, month: str) -> str:
    """A scene pair's condition: no matrix recommended the same pair that month (its row is the recommendation's)."""
    if not shape.recommendations:
        return ""
    return (f"\n      AND NOT EXISTS (SELECT 1 FROM {RECOMMENDATIONS_TABLE} r WHERE r.msisdn = e.msisdn "
            f"AND r.policy_id = e.policy_id AND r.month = {month})")


def source_queries(shape: Shape) -> list[Query]:
    """Temp views with fixed columns over the inputs as they are (absent table: no rows; absent column: NULL)."""
    if shape.history:
        bookkeeping = "cycle, recorded_by" if shape.history_bookkeeping else \
            "CAST(NULL AS VARCHAR) AS cycle, CAST(NULL AS VARCHAR) AS recorded_by"
        history = (f"SELECT msisdn, CAST(contact_date AS DATE) AS contact_date, channel, policy_id, outcome, "
                   f"{bookkeeping} FROM {CONTACT_HISTORY_TABLE}")
    else:
        history = _empty("CAST(NULL AS VARCHAR) AS msisdn, CAST(NULL AS DATE) AS contact_date, CAST(NULL AS VARCHAR) "
                         "AS channel, CAST(NULL AS VARCHAR) AS policy_id, CAST(NULL AS VARCHAR) AS outcome, "
                         "CAST(NULL AS VARCHAR) AS cycle, CAST(NULL AS VARCHAR) AS recorded_by")
    if shape.holdouts:
        # older builds: every hold-out is a policy hold-out, held from its cycle's date (a 'YYYY-MM' cycle: the 1st)
        derived = "CASE WHEN length(cycle) = 10 THEN CAST(cycle AS DATE) ELSE CAST(cycle || '-01' AS DATE) END"
        cycle_date = f"coalesce(CAST(cycle_date AS DATE), {derived})" if shape.holdout_cycle_date else derived
        kind = "coalesce(kind, 'policy')" if shape.holdout_kind else "'policy'"
        holdouts = (f"SELECT month, cycle, {cycle_date} AS cycle_date, channel, msisdn, policy_id, matrix, rule_id, "
                    f"{kind} AS kind FROM {HOLDOUTS_TABLE}")
    else:
        holdouts = _empty("CAST(NULL AS VARCHAR) AS month, CAST(NULL AS VARCHAR) AS cycle, CAST(NULL AS DATE) AS "
                          "cycle_date, CAST(NULL AS VARCHAR) AS channel, CAST(NULL AS VARCHAR) AS msisdn, "
                          "CAST(NULL AS VARCHAR) AS policy_id, CAST(NULL AS VARCHAR) AS matrix, CAST(NULL AS VARCHAR) "
                          "AS rule_id, CAST(NULL AS VARCHAR) AS kind")
    orders = (f"SELECT msisdn, CAST(order_time AS TIMESTAMP) AS order_time, policy_id, action FROM {ORDERS_TABLE}"
              if shape.orders else
              _empty("CAST(NULL AS VARCHAR) AS msisdn, CAST(NULL AS TIMESTAMP) AS order_time, CAST(NULL AS VARCHAR) "
                     "AS policy_id, CAST(NULL AS VARCHAR) AS action"))
    recs = (f"SELECT msisdn, month, rank, matrix, rule_id, policy_id FROM {RECOMMENDATIONS_TABLE}"
            if shape.recommendations else
            _empty("CAST(NULL AS VARCHAR) AS msisdn, CAST(NULL AS VARCHAR) AS month, CAST(NULL AS INTEGER) AS rank, "
                   "CAST(NULL AS VARCHAR) AS matrix, CAST(NULL AS VARCHAR) AS rule_id, CAST(NULL AS VARCHAR) AS "
                   "policy_id"))
    if shape.scenes:
        # a scene batch's listed pair: matrix 'scene', rule_id its scene (as its held-out twin has in holdouts), month
        # the batch's (its cycle date's); one row per pair and month (its first listing), none where a matrix
        # recommended the same pair that month
        rec_month = "strftime(f.cycle_date, '%Y-%m')"
        recs += f"""
UNION ALL
SELECT msisdn, month, rank, matrix, rule_id, policy_id FROM (
    SELECT e.msisdn, {rec_month} AS month, CAST(NULL AS INTEGER) AS rank, '{SCENE_MATRIX}' AS matrix,
           e.scene_id AS rule_id, e.policy_id,
           row_number() OVER (PARTITION BY e.msisdn, {rec_month}, e.policy_id
                              ORDER BY f.cycle_date, e.event_time, e.seq, e.scene_id) AS pos
    FROM {SCENE_EVENTS_TABLE} e JOIN {SCENE_FILES_TABLE} f ON f.batch = e.batch
    WHERE e.delivery = 'listed'{_unless_recommended(shape, rec_month)}) AS s
WHERE pos = 1"""

    # a plan change's offer: each customer's best plan rank of the month (export lists it as
    # matrix 'plan', rule 'plan_rank_<rank>'; recommendations has no row for it)
    plan = (f"SELECT msisdn, month, min(rank) AS rank FROM {PLAN_TABLE} GROUP BY msisdn, month" if shape.plan else
            _empty("CAST(NULL AS VARCHAR) AS msisdn, CAST(NULL AS VARCHAR) AS month, CAST(NULL AS INTEGER) AS rank"))

    def view_col(name: str, type_: str) -> str:
        source = name if name in shape.view_columns else "NULL"
        return f"CAST({source} AS {type_}) AS {name}"

    view_cols = f"{view_col('segment', 'VARCHAR')}, {view_col('value_tier', 'VARCHAR')}, " \
                f"{view_col('arpu_3m', 'DECIMAL(38,6)')}"
    view = (f"SELECT msisdn, month, {view_cols} FROM {VIEW_TABLE}" if shape.view else
            _empty(f"CAST(NULL AS VARCHAR) AS msisdn, CAST(NULL AS VARCHAR) AS month, {view_cols}"))
    return [Query(f"campaign:source:{name}", f"CREATE OR REPLACE TEMP VIEW _c_{name} AS {sql}")
            for name, sql in (("history", history), ("holdouts", holdouts), ("orders", orders), ("recs", recs),
                              ("plan", plan), ("view", view))]


def cycles_query(shape: Shape, month: str) -> Query:
    """The cycle ids of export month M: its channel funnels' and its hold-outs' (oldest first)."""
    parts = []
    if shape.funnel_cycle:
        parts.append(f"SELECT cycle FROM {FUNNEL_TABLE} WHERE month = $month AND funnel LIKE 'channel:%' "
                     "AND cycle IS NOT NULL")
    if shape.holdouts:
        parts.append(f"SELECT cycle FROM {HOLDOUTS_TABLE} WHERE month = $month AND cycle IS NOT NULL")
    if shape.scenes:  # the scene batches of M (by cycle date), whether or not they held anything out
        parts.append(f"SELECT '{SCENE_CYCLE_PREFIX}' || batch AS cycle FROM {SCENE_FILES_TABLE} "
                     "WHERE strftime(cycle_date, '%Y-%m') = $month")
    if not parts:
        return Query("campaign:cycles", "SELECT CAST(NULL AS VARCHAR) AS cycle WHERE false")
    return Query("campaign:cycles", f"SELECT DISTINCT cycle FROM ({' UNION ALL '.join(parts)}) AS c ORDER BY cycle",
                 {"month": check_month(month)})


def month_cycles(con: duckdb.DuckDBPyConnection, shape: Shape, month: str) -> list[str]:
    """The cycle ids of export month M, oldest first (:func:`cycles_query`)."""
    return [row["cycle"] for row in _fetch(con, cycles_query(shape, month)) if row["cycle"] is not None]


def showing_period(cycles: list[str]) -> tuple[dt.date, dt.date] | None:
    """From the earliest cycle date through the last day of the latest's calendar month (ISO-date ids only)."""
    dates = []
    for cycle in cycles:
        if len(cycle) == 10:
            try:
                dates.append(dt.date.fromisoformat(cycle))
            except ValueError:
                continue
    if not dates:
        return None
    last = max(dates)
    following = dt.date(last.year + last.month // 12, last.month % 12 + 1, 1)
    return min(dates), following - dt.timedelta(days=1)


def responses_exist(db: Database, month: str) -> bool:
    """Whether anything has answered export month M's lists yet: a response (any outcome but ``sent``)
    in contact_history or an order, dated on or after M's first cycle date. `mktool run` evaluates
    the campaigns only then: a month's first cycle has nothing to measure."""
    con = db.c
    shape = Shape.of(con)
    period = showing_period(month_cycles(con, shape, month))
    if period is None:
        return False
    start = period[0]
    if shape.history and con.execute(f"SELECT 1 FROM {CONTACT_HISTORY_TABLE} WHERE outcome <> 'sent' "
                                     "AND contact_date >= ? LIMIT 1", [start]).fetchone():
        return True
    return shape.orders and con.execute(f"SELECT 1 FROM {ORDERS_TABLE} WHERE CAST(order_time AS DATE) >= ? "
                                        "LIMIT 1", [start]).fetchone() is not None


# -- SQL: the pairs, once ----------------------------------------------------------------------
def _within(date: str, start: str) -> str:
    """``date`` in [start, start + W] (W the bound $window)."""
    return f"{date} BETWEEN {start} AND {days_after(start, '$window')}"


def pairs_query(month: str, window: int, period: tuple[dt.date, dt.date] | None,
                plan_policy: str | None = None) -> Query:
    """_c_pairs: one row per pair × channel of the contacts (side 'contacted' for the pair's first channel,
    whose date is the pair's contact date, 'channel' for its other channels) and per held-out pair
    ('held_out'), with the group columns and the per-pair flags. The customer view has one row per
    customer and month, recommendations one per customer, policy and month (their steps' keys)."""
    check_month(month)
    outcome_flags = ",\n           ".join(
        f"max(CASE WHEN h.outcome = '{outcome}' THEN 1 ELSE 0 END) AS {name}" for name, outcome in OUTCOMES.items())
    reached = ", ".join(f"'{o}'" for o in REACHED_OUTCOMES)
    outcomes = ", ".join(f"'{o}'" for o in OUTCOMES.values())
    outcome_cols = ", ".join(f"coalesce(x.{name}, 0) AS {name}" for name in OUTCOMES)
    sql = f"""-- evaluate campaign: the pairs (msisdn, policy_id) of export month $month
CREATE OR REPLACE TEMP TABLE _c_pairs AS
WITH contacts AS (
    SELECT h.msisdn, h.policy_id, h.contact_date, h.channel, 1 AS push
    FROM _c_history h JOIN _c_cycles y ON y.cycle = h.cycle
    LEFT JOIN _c_channels k ON k.channel = h.channel
    WHERE h.recorded_by = '{RECORDED_BY}' AND coalesce(k.kind, '{PUSH}') = '{PUSH}'
    UNION ALL
    SELECT h.msisdn, h.policy_id, h.contact_date, h.channel, 0 AS push
    FROM _c_history h JOIN _c_channels k ON k.channel = h.channel AND k.kind = '{POPUP}'
    WHERE h.contact_date BETWEEN CAST($showing_from AS DATE) AND CAST($showing_to AS DATE)),
on_channel AS (
    SELECT msisdn, policy_id, channel, push, d,
           sum(contacts) OVER (PARTITION BY msisdn, policy_id) AS push_contacts,
           row_number() OVER (PARTITION BY msisdn, policy_id ORDER BY d NULLS LAST, push DESC, channel) AS pos
    FROM (SELECT msisdn, policy_id, channel, max(push) AS push, min(contact_date) AS d, sum(push) AS contacts
          FROM contacts GROUP BY msisdn, policy_id, channel) AS g),
held AS (
    SELECT msisdn, policy_id, channel, d, kind, matrix, rule_id FROM (
        -- the pair's first hold-out, a push channel before a pop-up (as a contacted pair's first channel):
        -- the control of a channel is what that channel would have contacted
        SELECT t.msisdn, t.policy_id, t.channel, t.cycle_date AS d, t.kind, t.matrix, t.rule_id,
               row_number() OVER (PARTITION BY t.msisdn, t.policy_id
                                  ORDER BY t.cycle_date NULLS LAST,
                                           CASE WHEN coalesce(k.kind, '{PUSH}') = '{PUSH}' THEN 0 ELSE 1 END,
                                           t.channel NULLS LAST, t.kind, t.matrix, t.rule_id) AS pos
        FROM _c_holdouts t LEFT JOIN _c_channels k ON k.channel = t.channel
        WHERE t.month = $month) AS t
    WHERE pos = 1),
scoped AS (
    -- a pair's first channel is its 'contacted' row, its other channels 'channel' rows: the figures read the
    -- former, the response funnels both (a pair's date on its first channel is its contact date)
    SELECT CASE WHEN pos = 1 THEN 'contacted' ELSE 'channel' END AS side, msisdn, policy_id, channel,
           coalesce(channel, '') AS ch, push, d, push_contacts, CAST(NULL AS VARCHAR) AS kind,
           CAST(NULL AS VARCHAR) AS matrix, CAST(NULL AS VARCHAR) AS rule_id
    FROM on_channel
    UNION ALL
    SELECT 'held_out' AS side, msisdn, policy_id, channel, coalesce(channel, '') AS ch, 0 AS push, d,
           0 AS push_contacts, kind, matrix, rule_id
    FROM held),
window_orders AS (
    SELECT s.side, s.msisdn, s.policy_id, s.ch, o.order_time
    FROM scoped s JOIN _c_orders o ON o.msisdn = s.msisdn AND o.policy_id = s.policy_id
    WHERE o.action = 'order' AND {_within('CAST(o.order_time AS DATE)', 's.d')}),
sales AS (
    SELECT w.side, w.msisdn, w.policy_id, w.ch, max(CASE WHEN k.msisdn IS NULL THEN 0 ELSE 1 END) AS cancelled_7d
    FROM window_orders w
    LEFT JOIN _c_orders k ON k.msisdn = w.msisdn AND k.policy_id = w.policy_id AND k.action = 'cancel'
         AND k.order_time >= w.order_time
         AND CAST(k.order_time AS DATE) <= {days_after('CAST(w.order_time AS DATE)', str(CANCEL_DAYS))}
    GROUP BY w.side, w.msisdn, w.policy_id, w.ch),
responses AS (
    SELECT s.side, s.msisdn, s.policy_id, s.ch,
           {outcome_flags},
           max(CASE WHEN h.channel = s.channel AND h.outcome IN ({reached}) THEN 1 ELSE 0 END) AS reached_here,
           max(CASE WHEN h.channel = s.channel AND h.outcome = 'accepted' THEN 1 ELSE 0 END) AS accepted_here
    FROM scoped s JOIN _c_history h ON h.msisdn = s.msisdn AND h.policy_id = s.policy_id
    WHERE s.side <> 'held_out' AND h.outcome IN ({outcomes}) AND {_within('h.contact_date', 's.d')}
    GROUP BY s.side, s.msisdn, s.policy_id, s.ch),
recs AS (
    SELECT msisdn, policy_id, matrix, rule_id FROM _c_recs WHERE month = $month
    UNION ALL
    -- a contacted plan change takes the matrix and rule its list row had ('plan', 'plan_rank_<best rank>'),
    -- as its held-out twin does from holdouts
    SELECT p.msisdn, CAST($plan_policy AS VARCHAR) AS policy_id, 'plan' AS matrix,
           'plan_rank_' || CAST(p.rank AS VARCHAR) AS rule_id
    FROM _c_plan p
    WHERE p.month = $month AND $plan_policy IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM _c_recs r WHERE r.month = $month AND r.msisdn = p.msisdn
                                                AND r.policy_id = $plan_policy)),
viewed AS (SELECT msisdn, segment, value_tier, arpu_3m FROM _c_view WHERE month = $month)
SELECT s.side, s.msisdn, s.policy_id, s.channel, s.push, s.d, s.push_contacts, s.kind,
       CASE WHEN s.side = 'held_out' THEN s.matrix ELSE r.matrix END AS matrix,
       CASE WHEN s.side = 'held_out' THEN s.rule_id ELSE r.rule_id END AS rule_id,
       v.segment, v.value_tier, v.arpu_3m,
       CASE WHEN o.msisdn IS NULL THEN 0 ELSE 1 END AS ordered, coalesce(o.cancelled_7d, 0) AS cancelled_7d,
       {outcome_cols},
       CASE WHEN s.push = 0 THEN 1 ELSE coalesce(x.reached_here, 0) END AS reached,
       coalesce(x.accepted_here, 0) AS accepted_here
FROM scoped s
LEFT JOIN recs r ON r.msisdn = s.msisdn AND r.policy_id = s.policy_id
LEFT JOIN viewed v ON v.msisdn = s.msisdn
LEFT JOIN sales o ON o.side = s.side AND o.msisdn = s.msisdn AND o.policy_id = s.policy_id AND o.ch = s.ch
LEFT JOIN responses x ON x.side = s.side AND x.msisdn = s.msisdn AND x.policy_id = s.policy_id AND x.ch = s.ch"""
    return Query("campaign:pairs", sql, {
        "month": month, "window": window, "plan_policy": plan_policy,
        "showing_from": period[0] if period else None, "showing_to": period[1] if period else None})


# -- SQL: the figures, the funnels and the balance over _c_pairs ----------------------------------
def _count(side: str, value: str = "1") -> str:
    return f"coalesce(sum(CASE WHEN side = '{side}' THEN {value} ELSE 0 END), 0)"


def figures_query(by: tuple[str, ...]) -> Query:
    """One row per group of ``by`` (total false, ordered by the group columns, NULL last) and the totals
    row (total true): the counts and the exact rates."""
    bad = [b for b in by if b not in CAMPAIGN_BY]
    if bad or len(set(by)) != len(by):
        raise MktoolError(f"the campaign evaluation cannot be split by {', '.join(by)}: give distinct names of "
                          f"{', '.join(CAMPAIGN_BY)}")
    cols = [f"CAST({b} AS VARCHAR) AS {b}" for b in by]
    nulls = [f"CAST(NULL AS VARCHAR) AS {b}" for b in by]
    aggregates = ",\n           ".join([
        f"{_count('contacted')} AS contacted",
        *(f"{_count('contacted', name)} AS {name}" for name in OUTCOMES),
        f"{_count('contacted', 'ordered')} AS ordered",
        f"{_count('contacted', 'cancelled_7d')} AS cancelled_7d",
        f"{_count('held_out')} AS held_out",
        f"{_count('held_out', 'ordered')} AS held_out_ordered",
        f"{_count('contacted', 'push_contacts')} AS push_contacts",
        "count(DISTINCT CASE WHEN side = 'contacted' THEN msisdn END) AS customers"])
    where = "WHERE side IN ('contacted', 'held_out')"
    group_part = (f"SELECT FALSE AS total, {', '.join(cols)},\n           {aggregates}\n    FROM _c_pairs {where} "
                  f"GROUP BY {', '.join(by)}\n    UNION ALL\n    " if by else "")
    total_part = f"SELECT TRUE AS total, {''.join(n + ', ' for n in nulls)}\n           {aggregates}\n    " \
                 f"FROM _c_pairs {where}"
    by_cols = "".join(f"{b}, " for b in by)
    order = ", ".join(["total", *(f"{b} NULLS LAST" for b in by)])
    sql = f"""-- evaluate campaign: the figures per group and in total
WITH grouped AS (
    {group_part}{total_part})
SELECT total, {by_cols}contacted, {', '.join(OUTCOMES)}, ordered, cancelled_7d, held_out, held_out_ordered,
       push_contacts, customers,
       {exact_rate('accepted', 'contacted', SCALE)} AS success_rate,
       {exact_rate('ordered', 'contacted', SCALE)} AS take_up,
       {exact_rate('held_out_ordered', 'held_out', SCALE)} AS take_up_control,
       {exact_rate('ordered * held_out - held_out_ordered * contacted', 'contacted * held_out', SCALE)} AS uplift,
       {exact_rate('cancelled_7d', 'ordered', SCALE)} AS cancel_7d_rate,
       {exact_rate('push_contacts', 'customers', SCALE)} AS contacts_per_customer
FROM grouped
ORDER BY {order}"""
    return Query(f"campaign:figures:{','.join(by)}", sql)


def funnel_query() -> Query:
    """The response funnel of each channel of the contacts: nested stages over the pairs contacted there."""
    sql = """-- evaluate campaign: the response funnels (pairs)
SELECT channel, count(*) AS sent, sum(reached) AS reached, sum(reached * accepted_here) AS accepted,
       sum(reached * accepted_here * ordered) AS ordered,
       sum(reached * accepted_here * ordered * (1 - cancelled_7d)) AS kept_7d
FROM _c_pairs WHERE side IN ('contacted', 'channel') GROUP BY channel ORDER BY channel"""
    return Query("campaign:funnel", sql)


def balance_query() -> Query:
    """Per balance group: its customers, value tiers and segments counted, and arpu_3m's mean and quantiles."""
    groups = (f"SELECT DISTINCT grp, msisdn, value_tier, segment, arpu_3m FROM (\n"
              "        SELECT CASE WHEN side = 'contacted' THEN 'treated' ELSE 'held_out' END AS grp, msisdn, "
              "value_tier, segment, arpu_3m\n"
              "        FROM _c_pairs WHERE side IN ('contacted', 'held_out')\n"
              "        UNION ALL SELECT 'held_out_' || kind AS grp, msisdn, value_tier, segment, arpu_3m\n"
              f"        FROM _c_pairs WHERE side = 'held_out' AND kind IN ({', '.join(repr(k) for k in HOLDOUT_KINDS)})"
              ") AS g")
    picks = {name: f"max(CASE WHEN pos = {int_div(f'{a} * n + {b - 1}', str(b))} THEN arpu_3m END)"
             for name, a, b in QUANTILES}
    quantiles = ",\n           ".join(f"{round_half_away(pick, 2)} AS {name}" for name, pick in picks.items())
    mean = units_decimal(div_half_away(f"sum({decimal_units('arpu_3m', 6)})", "n * 10000"), 2)
    sql = f"""-- evaluate campaign: the balance check (treated against held-out customers)
WITH members AS ({groups}),
sizes AS (SELECT grp, count(*) AS customers FROM members GROUP BY grp),
tiers AS (SELECT grp, 'value_tier' AS section, coalesce(value_tier, '{NO_VALUE}') AS name, count(*) AS n
          FROM members GROUP BY grp, coalesce(value_tier, '{NO_VALUE}')
          UNION ALL
          SELECT grp, 'segment' AS section, coalesce(segment, '{NO_VALUE}') AS name, count(*) AS n
          FROM members GROUP BY grp, coalesce(segment, '{NO_VALUE}')),
ranked AS (SELECT grp, arpu_3m, row_number() OVER (PARTITION BY grp ORDER BY arpu_3m) AS pos,
                  count(*) OVER (PARTITION BY grp) AS n
           FROM members WHERE arpu_3m IS NOT NULL),
arpu AS (SELECT grp, n, {mean} AS mean,
           {quantiles}
         FROM ranked GROUP BY grp, n)
SELECT s.grp, 'size' AS section, CAST(NULL AS VARCHAR) AS name, s.customers AS n, CAST(NULL AS DECIMAL(38,6)) AS share,
       a.mean, a.p25, a.median, a.p75
FROM sizes s LEFT JOIN arpu a ON a.grp = s.grp
UNION ALL
SELECT t.grp, t.section, t.name, t.n, {exact_rate('t.n', 's.customers', SCALE)} AS share,
       NULL AS mean, NULL AS p25, NULL AS median, NULL AS p75
FROM tiers t JOIN sizes s ON s.grp = t.grp
ORDER BY 1, 2, 3"""
    return Query("campaign:balance", sql)


STORE_DDL = (f"CREATE TABLE IF NOT EXISTS {CAMPAIGN_EVALUATION_TABLE} (month VARCHAR, run_id VARCHAR, "
             "created_at TIMESTAMP, by_columns VARCHAR, window_days INTEGER, view_build VARCHAR, contacted BIGINT, "
             "held_out BIGINT, document VARCHAR, command_line VARCHAR)")


def store_query(month: str, run_id: str, by: tuple[str, ...], window: int, view_build: str | None, contacted: int,
                held_out: int, document: str) -> Query:
    """One run's row of campaign_evaluation (a new run id: earlier runs of the month stay)."""
    sql = (f"INSERT INTO {CAMPAIGN_EVALUATION_TABLE} (month, run_id, created_at, by_columns, window_days, view_build, "
           "contacted, held_out, document, command_line) VALUES ($month, $run_id, CAST(now() AS TIMESTAMP), $by, "
           "$window, $view_build, $contacted, $held_out, $document, $command_line)")
    return Query("campaign:store", sql, {
        "month": month, "run_id": run_id, "by": ",".join(by), "window": window, "view_build": view_build,
        "contacted": contacted, "held_out": held_out, "document": document,
        "command_line": json.dumps(command_line(), ensure_ascii=False)})


def forget_funnels_query(month: str) -> Query:
    """The month's earlier response funnels (every run replaces them)."""
    return Query("campaign:forget_funnels", f"DELETE FROM {FUNNEL_TABLE} WHERE month = $month AND funnel LIKE "
                                            f"'{RESPONSE_FUNNEL_PREFIX}%'", {"month": month})


def queries(month: str) -> dict[str, Query]:
    """Every query the campaign evaluation runs, by name (tests/test_spark_render.py renders each for Spark)."""
    full = Shape(True, True, True, True, True, True, True, True, True, ("segment", "value_tier", "arpu_3m"), True,
                 scenes=True)
    found = [*source_queries(full), cycles_query(full, month),
             pairs_query(month, DEFAULT_WINDOW_DAYS, (dt.date(2026, 11, 1), dt.date(2026, 11, 30)), "PLAN_CHANGE"),
             figures_query(("policy_id",)), figures_query(("channel", "segment")), funnel_query(), balance_query(),
             store_query(month, "0" * 16, ("policy_id",), DEFAULT_WINDOW_DAYS, None, 0, 0, "{}"),
             forget_funnels_query(month)]
    return {q.name: q for q in found}


# -- Newcombe's interval (Python: a few rows, from the integer counts) ---------------------------
def _wilson(x: int, n: int) -> tuple[float, float]:
    """The Wilson score interval of x successes of n (no continuity correction)."""
    z2 = Z95 * Z95
    half = Z95 * math.sqrt(x * (n - x) / n + z2 / 4)
    return (x + z2 / 2 - half) / (n + z2), (x + z2 / 2 + half) / (n + z2)


def _micro(value: float) -> float:
    """Rounded half away from zero to 6 decimals (from the float's shortest repr); never -0.0."""
    return float(Decimal(repr(value)).quantize(MICRO, rounding=ROUND_HALF_UP)) + 0.0


def newcombe_interval(x1: int, n1: int, x2: int, n2: int) -> list[float] | None:
    """The 95% interval of p1 − p2 by Newcombe's hybrid score method (1998, method 10); None when n1 or n2 is 0."""
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = _wilson(x1, n1)
    l2, u2 = _wilson(x2, n2)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return [_micro(lo), _micro(hi)]


# -- the step ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CampaignEvaluation:
    month: str
    run_id: str
    document: dict[str, Any]
    funnels: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    orders_loaded: bool = True  # False: no orders table, so nothing could count as ordered


def _number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    """One group's (or the total's) figures in the document's order."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name == "uplift_ci":
            out[name] = newcombe_interval(int(row["ordered"]), int(row["contacted"]), int(row["held_out_ordered"]),
                                          int(row["held_out"]))
        elif name in COUNT_FIELDS:
            out[name] = int(row[name])
        else:
            out[name] = _number(row[name])
    return out


def _balance(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The balance rows as {group: {customers, value_tier, segment, arpu_3m}}; the same keys in every group."""
    tiers = {r["name"] for r in rows if r["section"] == "value_tier"} - {*VALUE_TIERS, NO_VALUE}
    tier_keys = [*VALUE_TIERS, *sorted(tiers), NO_VALUE]
    segment_keys = [*sorted({r["name"] for r in rows if r["section"] == "segment"} - {NO_VALUE}), NO_VALUE]
    doc: dict[str, Any] = {}
    for grp in BALANCE_GROUPS:
        mine = [r for r in rows if r["grp"] == grp]
        size = next((r for r in mine if r["section"] == "size"), None)
        if size is None:
            doc[grp] = {"customers": 0, "value_tier": None, "segment": None, "arpu_3m": None}
            continue
        shares = {(r["section"], r["name"]): _number(r["share"]) for r in mine if r["section"] != "size"}
        doc[grp] = {
            "customers": int(size["n"]),
            "value_tier": {k: shares.get(("value_tier", k), 0.0) for k in tier_keys},
            "segment": {k: shares.get(("segment", k), 0.0) for k in segment_keys},
            "arpu_3m": None if size["mean"] is None else {
                "mean": _number(size["mean"]), **{name: _number(size[name]) for name, _, _ in QUANTILES}},
        }
    return doc


def _fetch(con: duckdb.DuckDBPyConnection, q: Query) -> list[dict[str, Any]]:
    return dict_rows(con.execute(q.sql, q.params) if q.params else con.execute(q.sql))


def _register(con: duckdb.DuckDBPyConnection, project: Project, cycles: list[str]) -> None:
    """The channels' kinds (channels.yaml) and the cycles of M as small temp tables (values bound, never pasted)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _c_channels (channel VARCHAR, kind VARCHAR)")
    channels = project.channels.channels
    if channels:
        con.executemany("INSERT INTO _c_channels VALUES (?, ?)", [(c.name, c.kind) for c in channels.values()])
    con.execute("CREATE OR REPLACE TEMP TABLE _c_cycles (cycle VARCHAR)")
    if cycles:
        con.executemany("INSERT INTO _c_cycles VALUES (?)", [(c,) for c in cycles])


def evaluate_campaign(db: Database, project: Project, month: str, *, by: tuple[str, ...] = ("policy_id",),
                      window: int = DEFAULT_WINDOW_DAYS, reporter: Reporter = QUIET) -> CampaignEvaluation:
    """Evaluate export month ``month``'s contacts against its hold-outs, store the run and the response funnels."""
    check_month(month)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise MktoolError(f"the window must be a whole number of days, at least 1, got {window!r}")
    figures = figures_query(tuple(by))  # refuses a bad --by before any work
    con = db.c
    shape = Shape.of(con)
    cycles = month_cycles(con, shape, month)
    if not cycles:
        raise StateError(f"nothing was exported for month {month}: no export cycle of {month} is recorded "
                         f"(no channel funnel in {FUNNEL_TABLE}, no hold-out in {HOLDOUTS_TABLE})",
                         hint=f"export the month's lists first: `mktool export --month {month}`")
    warnings: list[str] = []
    if not shape.orders:
        warnings.append("orders were not loaded: every pair counts as not ordered (ingest the orders extract, "
                        "e.g. `mktool ingest orders.parquet`)")
    has_view = shape.view and con.execute(f"SELECT 1 FROM {VIEW_TABLE} WHERE month = ? LIMIT 1",
                                          [month]).fetchone() is not None
    if not has_view:
        warnings.append(f"{VIEW_TABLE} has no rows for {month}: segment and value_tier are empty and the balance "
                        f"check is left out (`mktool score --month {month}`)")
    for text in warnings:
        reporter.warn(text)
    view_build = view_build_id(con, month) if has_view else None
    _register(con, project, cycles)
    for q in source_queries(shape):
        con.execute(q.sql)
    period = showing_period(cycles)
    with reporter.step(f"evaluating the campaigns of {month}"):
        pairs = pairs_query(month, window, period, project.plan.policy)
        con.execute(pairs.sql, pairs.params)
        rows = _fetch(con, figures)
        funnel_rows = _fetch(con, funnel_query())
        balance = _balance(_fetch(con, balance_query())) if has_view else {}
    total = next(r for r in rows if r["total"])
    doc: dict[str, Any] = {
        "month": month, "window_days": window, "by": list(by),
        "rows": [{**{b: r[b] for b in by}, **_figures(r)} for r in rows if not r["total"]],
        "total": _figures(total),
        "balance": balance,
    }
    funnels = {f"{RESPONSE_FUNNEL_PREFIX}{r['channel']}": [(s, int(r[s] or 0)) for s in RESPONSE_STAGES]
               for r in funnel_rows}
    run_id = uuid.uuid4().hex[:16]
    text = json.dumps(doc, ensure_ascii=False)
    store = store_query(month, run_id, tuple(by), window, view_build, doc["total"]["contacted"],
                        doc["total"]["held_out"], text)
    forget = forget_funnels_query(month)
    with db.transaction():
        con.execute(STORE_DDL)
        con.execute(store.sql, store.params)
        ensure_funnel_cycle(con)
        con.execute(forget.sql, forget.params)
        stages = [(month, name, i, stage, count) for name, counted in funnels.items()
                  for i, (stage, count) in enumerate(counted, 1)]
        if stages:
            con.executemany(f"INSERT INTO {FUNNEL_TABLE} (month, funnel, stage_no, stage, count, cycle) "
                            "VALUES (?, ?, ?, ?, ?, NULL)", stages)
    return CampaignEvaluation(month, run_id, doc, funnels, tuple(warnings), orders_loaded=shape.orders)


def newest_run(db: Database, month: str) -> dict[str, Any] | None:
    """The month's newest stored run as {run_id, window_days}: the run whose response funnels
    funnel_counts holds (every run rewrites them); None before the first."""
    if not db.table_exists(CAMPAIGN_EVALUATION_TABLE):
        return None
    row = db.c.execute(f"SELECT run_id, window_days FROM {CAMPAIGN_EVALUATION_TABLE} WHERE month = ? "
                       "ORDER BY created_at DESC, run_id LIMIT 1", [month]).fetchone()
    return None if row is None else {"run_id": row[0], "window_days": int(row[1])}


# -- the document as tables and csv (the CLI prints these) ---------------------------------------
def _shown(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{Decimal(repr(value)):.6f}"
    return value


def _interval(ci: list[float] | None) -> str:
    return "" if ci is None else f"[{_shown(ci[0])}, {_shown(ci[1])}]"


def _money(value: float | None) -> str:
    return "" if value is None else f"{Decimal(repr(value)):.2f}"


def campaign_tables(doc: dict[str, Any]) -> list[tuple[str, list[str], list[tuple[Any, ...]]]]:
    """(title, columns, rows) for people: take-up against the hold-outs, responses, and the balance check."""
    by = doc["by"]
    lines = [(tuple(NO_VALUE if r[b] is None else r[b] for b in by), r) for r in doc["rows"]]
    lines.append((tuple("total" if i == 0 else "" for i in range(len(by))) or ("total",), doc["total"]))
    heads = list(by) or ["group"]
    take_up = [(*key, f["contacted"], f["ordered"], _shown(f["take_up"]), f["held_out"], f["held_out_ordered"],
                _shown(f["take_up_control"]), _shown(f["uplift"]), _interval(f["uplift_ci"])) for key, f in lines]
    responses = [(*key, f["contacted"], f["accepted"], f["rejected"], f["no_answer"], f["opted_out"],
                  _shown(f["success_rate"]), f["cancelled_7d"], _shown(f["cancel_7d_rate"]),
                  _shown(f["contacts_per_customer"])) for key, f in lines]
    tables: list[tuple[str, list[str], list[tuple[Any, ...]]]] = [
        (f"Campaigns {doc['month']}: take-up within {doc['window_days']} days, contacted against held out (pairs)",
         [*heads, "contacted", "ordered", "take_up", "held_out", "held_out_ordered", "take_up_control", "uplift",
          "uplift_ci"], take_up),
        ("Responses and 7-day cancellations", [*heads, "contacted", "accepted", "rejected", "no_answer", "opted_out",
                                               "success_rate", "cancelled_7d", "cancel_7d_rate",
                                               "contacts_per_customer"], responses),
    ]
    balance = doc.get("balance") or {}
    if balance:
        groups = list(balance)
        sizes = [(g, balance[g]["customers"], *(_money((balance[g]["arpu_3m"] or {}).get(k))
                                                for k in ("mean", "p25", "median", "p75"))) for g in groups]
        tables.append(("Balance check: treated against held-out customers",
                       ["group", "customers", "arpu_3m mean", "p25", "median", "p75"], sizes))
        shares = []
        for section in ("value_tier", "segment"):
            keys = next((list(balance[g][section]) for g in groups if balance[g][section] is not None), [])
            shares += [(section, k, *(_shown((balance[g][section] or {}).get(k)) for g in groups)) for k in keys]
        tables.append(("Balance check: shares of customers", ["column", "value", *groups], shares))
    return tables


def csv_columns(by: list[str]) -> list[str]:
    """month, window_days, row, the by columns, the figures (uplift_ci as uplift_ci_lo, uplift_ci_hi)."""
    fields = [c for f in FIELDS for c in (("uplift_ci_lo", "uplift_ci_hi") if f == "uplift_ci" else (f,))]
    return ["month", "window_days", "row", *by, *fields]


def campaign_csv(doc: dict[str, Any]) -> str:
    """One line per group (row = group) and a last line for the totals (row = total, by columns empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    by = doc["by"]
    writer.writerow(csv_columns(by))

    def line(kind: str, keys: list[Any], f: dict[str, Any]) -> list[Any]:
        ci = f["uplift_ci"] or [None, None]
        cells = [_shown(ci[0]), _shown(ci[1])]
        values = [c for name in FIELDS for c in (cells if name == "uplift_ci" else [_shown(f[name])])]
        return [doc["month"], doc["window_days"], kind, *("" if k is None else k for k in keys), *values]

    for r in doc["rows"]:
        writer.writerow(line("group", [r[b] for b in by], r))
    writer.writerow(line("total", [None] * len(by), doc["total"]))
    return buffer.getvalue()
