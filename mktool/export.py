"""`mktool export`: per-channel target lists under the contact policy (SPEC §6).

Offers (the month's ranked recommendations and plan recommendations) become one row per
customer × policy × candidate channel, then pass, in this order, each a stage of the
channel's funnel (distinct customers). A channel is a pop-up or a push (channels.yaml
``kind``; default: frontdesk and inbound pop-ups, every other channel push):

    push:   candidates → dnd → unsubscribed → withdrawn → cooldown → no_answer → exclusion
            → dedupe → contact_cap → capacity → holdout → exported
    pop-up: candidates → dnd → unsubscribed → withdrawn → cooldown → exclusion → holdout → exported

A pop-up (the agent's screen when the customer walks in or calls) shows every current offer
of every eligible customer, ranked: no contact cap, no dedupe, no capacity, and an offer made
earlier in the cycle month is shown again. Its rows are not written back as ``sent`` (a
showing is a contact only when the channel's ingested responses say so) and never count
toward a push channel's caps, dedupe or capacity. So one offer may be on the front-desk
pop-up and in the outbound list of the same cycle, but never in two push lists.

Every stage is one set-based DuckDB statement over the previous stage's table. Dedupe, the
contact caps and capacity are one allocation among the push channels: offers are placed in
rounds, round r proposing each still unplaced offer to its r-th surviving push channel (rule
order). A proposal first has to fit the customer's caps, counted on what is actually contacted:
the month's earlier push contacts, the offers placed in earlier rounds and the customer's
better-ranked proposals of the round (a channel's ``contact_cap``, then contact_policy's
``monthly_cap`` across push channels); then a channel takes the proposals it has room for, best
first (rank, then value_score, then a hash tie-break). An offer therefore goes to the first of
its push channels that still has room for it and for the customer, and to one push channel
only; a candidate row of an offer placed elsewhere uses no cap.

Responses are contact_history outcomes dated up to the cycle date, read on every channel:

- ``accepted`` of policy P at date a withdraws P and every policy of P's exclusive_group from
  every channel (pop-up and push) while cycle date ≤ a + withdraw_days(P), inclusive (stage
  ``withdrawn``). withdraw_days(P) is the policy's ``withdraw_days``; without it, P is
  withdrawn until its ``valid_to`` (inclusive) when it has one, else for 180 days.
- ``rejected`` cools the policy down on every channel for its cooldown_days (the policy's, else
  contact_policy's), inclusive: 30 days: a rejection 30 days before the cycle date still blocks.
- ``no_answer`` of P on push channel X at date n: X offers P again once cycle date ≥ n +
  retry_days(X) (the channel's ``retry_days``, else contact_policy's, default 7); before that
  the offer is removed on X (stage ``no_answer``). Other push channels do not take it over.
- ``unsubscribed`` on a channel makes that channel do-not-disturb for the customer.

Candidates leave out, on push channels, an offer (customer × policy) already made on a push
channel earlier in the cycle month: a daily run neither repeats yesterday's offers nor moves
them to another push channel; the one exception is X's retry: X's latest contact of the pair
is a no_answer (no later ``sent`` on X, and no later push contact of the pair on another
channel: a retry never follows a push on another channel), whose wait the no_answer stage
then checks. Caps count push contacts per calendar month of the cycle date; capacity counts
offers (rows) per cycle.

Hold-outs are two nested control groups, drawn after the allocation (a held-out offer went
through every stage a contacted one did: the control groups are the same selection). First the
universal control group (contact_policy ``universal_holdout``, 0: off): a draw of the msisdn and
``universal_salt`` alone, the same customers every month, every offer of theirs held out of every
channel, pop-ups too, in every cycle: contacted by no campaign. Then, for the other customers, a
policy's ``holdout``: a draw per customer × policy × month (the export month, not the cycle), so
a held-out pair is held out of every channel, pop-ups too, in every cycle of the month. Both are
recorded in ``holdouts`` per cycle and channel where they were placed (for a pop-up, the pop-up),
with their ``kind`` ('universal' | 'policy') and cycle date.

Every cycle — the monthly run and each daily run — is identified by its cycle date (``--date``):
that ISO date is the cycle id of its records (contact_history.cycle, holdouts.cycle, the
manifest), for monthly and daily channels alike, and names its folder
``<out>/<month>/<cycle-date>/``, which holds that cycle's lists, funnel.json and manifest.json
and nothing of another cycle's. ``<out>/<month>/latest`` and ``<out>/latest`` are relative
symlinks to the newest cycle folder (by cycle date: a re-run of an older date does not move
them back), replaced atomically once a publish is complete (mktool.publish.point_latest).

Exported push rows (also a list streamed with ``--out -``) are written back to
``contact_history`` (outcome ``sent``) so the next cycle's caps and cool-downs see them;
re-running a cycle date replaces its own records and files, and a cycle on another date never touches them. Contacts
are recorded if and only if their lists were delivered: the cycle folder's lists, funnel.json
and manifest.json are published with the write-back as one unit (staged, journaled, committed,
renamed: mktool.publish; the folder lock and the recovery are the cycle folder's), and a list
streamed with ``--out -`` is recorded only once all of it was written. funnel.json names the
month and the cycle date and holds the month's step funnels and the funnels of the channels
whose lists are in the folder (funnel_counts keeps a cycle per channel funnel). manifest.json
lists every list of the cycle folder after the publish (a re-run of the same cycle with
``--channel`` keeps the cycle's other lists with their entries; an old file no longer part of
the folder is removed in the same publish) and everything the lists were made from: engine
versions, the command line, the steps' overrides, the rules folder and its commit.

:func:`channel_verdicts` (``mktool explain``'s channel part) runs the same per-customer stages
for one customer, bound as a parameter, and takes the allocation (dedupe, capacity) from what
the cycle recorded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb

from mktool import __version__
from mktool.console import QUIET, Reporter
from mktool.contract import TABLES
from mktool.database import (
    Database,
    command_line,
    ensure_funnel_cycle,
    funnel_has_cycle,
    load_order,
    record_funnel,
    step_settings,
    table_columns,
    table_exists,
)
from mktool.dialect import (
    Query,
    days_before,
    draw,
    money,
    months_before,
    ordered_text_agg,
    round_half_away,
    sha256_hex,
)
from mktool.errors import Interrupted, MktoolError
from mktool.freshness import require_built_on_view, require_fresh_view
from mktool.output import COPY_OPTIONS, FORMATS, check_format, copy_to_file, stream_file
from mktool.planconfig import PlanConfig, script_sql
from mktool.project import Project
from mktool.publish import (
    LATEST,
    Publication,
    deferred_interrupt,
    fault,
    file_sha256,
    folder_lock,
    os_error_text,
    point_latest,
    raise_publish_failure,
    record_commit,
    recover_folder,
)
from mktool.rules import DEFAULT_UNIVERSAL_SALT, Channel, Policy, PolicyGroup, default_columns
from mktool.schema import (
    CHANNEL_STAGES,
    CONTACT_HISTORY_TABLE,
    CUSTOMER_PARAM,
    GROUP_COLUMNS,
    HISTORY_BOOKKEEPING,
    HOLDOUTS_TABLE,
    MONEY_COLUMNS,
    POLICY_HOLDOUT,
    POPUP,
    PUSH,
    RATE_COLUMNS,
    RECENT_CONTACTS_COLUMN,
    RECENT_CONTACTS_MAX,
    RECENT_CONTACTS_MONTHS,
    RECORDED_BY,
    RESPONSE_FUNNEL_PREFIX,
    SUMMARY_COLUMNS,
    TARGET_COLUMNS,
    UNIVERSAL_HOLDOUT,
)
from mktool.sqlquote import quote_literal
from mktool.versions import engine_info, engine_versions

DEFAULT_COOLDOWN_DAYS = 30
DEFAULT_RETRY_DAYS = 7  # a push channel's wait after a no_answer
DEFAULT_WITHDRAW_DAYS = 180  # an accepted policy without withdraw_days or valid_to


# -- configuration ----------------------------------------------------------------------------
@dataclass
class ExportConfig:
    """What export needs from the project (the rules folder, validated once, and its salts)."""

    channels: dict[str, Channel]
    policies: dict[str, Policy]
    groups: dict[str, PolicyGroup]
    cooldown_days: int
    monthly_cap: int | None
    plan: PlanConfig
    project: Project
    retry_days: int = DEFAULT_RETRY_DAYS
    universal_holdout: float = 0.0  # the universal control group's share of the base (0: off)
    universal_salt: str = DEFAULT_UNIVERSAL_SALT

    @classmethod
    def of(cls, project: Project) -> ExportConfig:
        contact = project.channels.contact_policy
        return cls(
            channels=project.channels.channels,
            policies=project.policies,
            groups=project.groups,
            cooldown_days=contact.cooldown_days if contact.cooldown_days is not None else DEFAULT_COOLDOWN_DAYS,
            monthly_cap=contact.monthly_cap,
            plan=project.plan,
            project=project,
            retry_days=contact.retry_days if contact.retry_days is not None else DEFAULT_RETRY_DAYS,
            universal_holdout=contact.universal_holdout,
            universal_salt=contact.universal_salt,
        )

    def channel_retry_days(self, channel: Channel) -> int | None:
        """A push channel's wait after a no_answer (its own, else contact_policy's); None for a pop-up."""
        if channel.popup:
            return None
        return channel.retry_days if channel.retry_days is not None else self.retry_days

    def salt(self, channel: Channel) -> str | None:
        """The salt of a ``mask: hash`` channel, read from the environment when the project loaded."""
        return self.project.salt(channel)

    def columns(self, channel: Channel) -> tuple[str, ...]:
        """The channel's list columns (channels.yaml ``columns:``, else its default: rules.default_columns)."""
        return default_columns(channel, self.project.rules.columns)


# -- SQL: named queries, built apart from execution -------------------------------------------
# Every statement below is built by a function returning a dialect.Query: DuckDB-dialect text
# plus exactly the parameters it binds; :func:`_run` executes one. Nothing is put into a text
# while the step runs (the allocation rounds are a bound $round, not a text replacement), so
# every query renders for Spark with sqlglot (tests/test_spark_render.py renders them all).
# Keys are explicit columns (no rowid), column lists are written out (no `* EXCLUDE`), lists
# are read with ARRAY_CONTAINS / ARRAY_POSITION (no UNNEST + GENERATE_SUBSCRIPTS), and the few
# engine-differing pieces (the draw, string hashing, date arithmetic) come from mktool.dialect.

#: An offer's columns in _x_offers (beside its offer_id, value_score and cust_id): every
#: target-list column but channel and the group's texts (only its group_id: the texts are joined
#: from the small _x_group_alternatives when a list asks for them), then the offer's candidate
#: channels in rule order.
OFFER_COLUMNS = (*(c for c in TARGET_COLUMNS if c != "channel" and (c == "group_id" or c not in GROUP_COLUMNS)),
                 "channels")
#: The group texts a list joins from _x_group_alternatives.
GROUP_TEXT_COLUMNS = tuple(c for c in GROUP_COLUMNS if c != "group_id")
#: The narrow rows every stage carries (the texts stay in _x_offers until the lists are written);
#: ``push`` is the channel's kind (false: a pop-up).
CANDIDATE_COLUMNS = ("offer_id", "cust_id", "msisdn", "policy_id", "rank", "value_score", "channel", "push",
                     "channel_pref")
#: Allocation rows: a candidate row with its place among the offer's surviving channels.
CHOICE_COLUMNS = (*CANDIDATE_COLUMNS, "choice")
#: The stage tables whose customers are counted per channel (:func:`stage_count_query`).
COUNTED_TABLES = ("_x_exclusion", "_x_proposed", "_x_capped", "_x_placed", "_x_drawn")
#: The screening stages, in order, each a cumulative pass flag of _x_screened (pass_<stage>).
SCREEN_STAGES = ("dnd", "unsubscribed", "withdrawn", "cooldown", "no_answer")


def _cols(columns: tuple[str, ...], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{c}" for c in columns)


@dataclass(frozen=True)
class ExportParams:
    """What export's queries bind or are shaped by, from the rules folder and the command line."""

    month: str
    cycle_date: dt.date
    cooldown_days: int
    monthly_cap: int | None
    withdraw_days: int  # an accepted policy without withdraw_days or valid_to
    plan_policy: str
    plan_policy_name: str
    plan_channels: tuple[str, ...]
    plan_script: str  # an SQL expression (mktool.plan.script_sql of a checked template)
    has_plan: bool  # plan_recommendations has rows for the month
    universal_holdout: float = 0.0  # contact_policy's universal control group (0: off)
    universal_salt: str = DEFAULT_UNIVERSAL_SALT
    # The scene batches' differences (mktool.scenedelivery, docs/scenes.md): a trigger is a
    # real-time message, so neither the "already made this month" rule (a scene's waves and
    # once_per govern its repetition) nor channels.yaml capacity (the cycle lists') applies, and
    # a push row whose key (msisdn, channel, policy, cycle date) has a contact_history row is
    # left out at dedupe (contacts stay one row per key; export lists it and records nothing).
    made_rule: bool = True
    capacity: bool = True
    recorded_key_dedupe: bool = False

    @classmethod
    def of(cls, config: ExportConfig, month: str, cycle_date: dt.date, *, has_plan: bool) -> ExportParams:
        policy = config.policies.get(config.plan.policy)
        return cls(month=month, cycle_date=cycle_date, cooldown_days=config.cooldown_days,
                   monthly_cap=config.monthly_cap, withdraw_days=DEFAULT_WITHDRAW_DAYS, plan_policy=config.plan.policy,
                   plan_policy_name=policy.name if policy else config.plan.policy,
                   plan_channels=tuple(config.plan.channels), plan_script=script_sql(config.plan.script),
                   has_plan=has_plan, universal_holdout=config.universal_holdout,
                   universal_salt=config.universal_salt)

    @property
    def cycle_month_start(self) -> dt.date:
        return self.cycle_date.replace(day=1)


_NO_PLAN_ROWS = (
    "(SELECT CAST(NULL AS VARCHAR) AS msisdn, CAST(NULL AS VARCHAR) AS month, 0 AS rank, "
    "CAST(NULL AS VARCHAR) AS current_plan_id, CAST(NULL AS VARCHAR) AS plan_id, CAST(NULL AS VARCHAR) AS plan_name, "
    "0.0 AS new_rental, 0.0 AS new_voice_overage, 0.0 AS new_data_overage, 0.0 AS new_total, 0.0 AS current_total, "
    "0.0 AS total_fee_change, 0.0 AS rental_change WHERE false)")

OFFERS_SQL = """
-- Matrix recommendations and plan recommendations as offers with their candidate channels.
CREATE OR REPLACE TEMP TABLE _x_offers AS
WITH rec AS (
    SELECT r.msisdn, r.month, r.rank, r.matrix, r.rule_id, r.policy_id, r.policy_name, r.script,
           r."group" AS group_id, CAST(NULL AS VARCHAR) AS current_plan_id, CAST(NULL AS VARCHAR) AS plan_id,
           CAST(NULL AS DOUBLE) AS new_rental, CAST(NULL AS DOUBLE) AS new_voice_overage,
           CAST(NULL AS DOUBLE) AS new_data_overage, CAST(NULL AS DOUBLE) AS new_total,
           CAST(NULL AS DOUBLE) AS current_total, CAST(NULL AS DOUBLE) AS total_fee_change,
           CAST(NULL AS DOUBLE) AS rental_change, r.channels
    FROM recommendations r WHERE r.month = $month{customer}
),
last_rank AS (SELECT msisdn, max(rank) AS max_rank FROM rec GROUP BY msisdn),
plan AS (
    SELECT p.msisdn, p.month, CAST(coalesce(l.max_rank, 0) + p.rank AS INTEGER) AS rank,
           'plan' AS matrix, 'plan_rank_' || CAST(p.rank AS VARCHAR) AS rule_id,
           $plan_policy AS policy_id, $plan_policy_name AS policy_name,
           {plan_script} AS script, CAST(NULL AS VARCHAR) AS group_id,
           p.current_plan_id, p.plan_id, p.new_rental, p.new_voice_overage, p.new_data_overage, p.new_total,
           p.current_total, p.total_fee_change, p.rental_change, CAST($plan_channels AS VARCHAR[]) AS channels
    FROM {plan_rows} p LEFT JOIN last_rank l ON l.msisdn = p.msisdn
    WHERE p.month = $month{plan_customer}
),
offers AS (SELECT * FROM rec UNION ALL SELECT * FROM plan)
-- offer_id, the offer's integer key, numbers the offers in a deterministic order (a customer's
-- offers have distinct ranks). cust_id is msisdn's integer twin (cheaper to partition and count
-- by): msisdn is 11 ASCII digits (the data contract), so the cast is exact and one-to-one.
SELECT row_number() OVER (ORDER BY o.msisdn, o.rank, o.matrix, o.rule_id, o.policy_id) AS offer_id,
       {offer_columns}, v.value_score, v.cust_id
FROM offers o
JOIN (SELECT msisdn, coalesce(value_score, 0) AS value_score, CAST(msisdn AS BIGINT) AS cust_id
      FROM customer_view WHERE month = $month) v ON v.msisdn = o.msisdn
"""


def offers_query(p: ExportParams, msisdn: str | None = None) -> Query:
    """_x_offers: the month's recommendations and plan recommendations, with their keys.

    With ``msisdn`` (explain) only that customer's offers, the number bound as a parameter: a
    customer's offers and ranks depend on their own rows only.
    """
    one = msisdn is not None
    sql = OFFERS_SQL.format(plan_rows="plan_recommendations" if p.has_plan else _NO_PLAN_ROWS,
                            plan_script=p.plan_script, offer_columns=_cols(OFFER_COLUMNS, "o"),
                            customer=f" AND r.msisdn = ${CUSTOMER_PARAM}" if one else "",
                            plan_customer=f" AND p.msisdn = ${CUSTOMER_PARAM}" if one else "")
    params: dict[str, Any] = {"month": p.month, "plan_policy": p.plan_policy, "plan_policy_name": p.plan_policy_name,
                              "plan_channels": list(p.plan_channels)}
    if one:
        params[CUSTOMER_PARAM] = msisdn
    return Query("offers:customer" if one else "offers", sql, params)


CANDIDATES_SQL = """
-- One row per offer × candidate channel, with the channel's kind (push) and its place in the
-- rule's order (its position in the offer's list: a rule names a channel once). The stages
-- carry only these narrow rows (offer_id, keys and sort keys); the texts stay in _x_offers and
-- are joined on when the lists are written. A policy with allowed channels (policies.yaml)
-- keeps only those.
-- On a push channel, an offer (customer × policy) already made on a push channel earlier in
-- the cycle month is not made again: a daily run neither repeats yesterday's offers nor moves
-- them to another push channel. Except a retry: push channel X whose latest contact of the
-- pair is a no_answer (no later `sent` on X, and no later push contact of the pair on another
-- channel) may offer it again; the no_answer stage checks X's retry_days. A pop-up shows what
-- is current, whatever was made before.
CREATE OR REPLACE TEMP TABLE _x_candidates AS
WITH restricted AS (SELECT DISTINCT policy_id FROM _x_policy_channels),
made AS (
    SELECT DISTINCT msisdn, policy_id FROM _x_history
    WHERE push AND contact_date >= $cycle_month_start AND contact_date < $cycle_date
),
per_channel AS (
    SELECT h.msisdn, h.policy_id, h.channel,
           max(CASE WHEN h.outcome = 'no_answer' THEN h.contact_date END) AS last_no_answer,
           max(CASE WHEN h.outcome = 'sent' THEN h.contact_date END) AS last_sent,
           max(h.contact_date) AS last_contact
    FROM _x_history h JOIN made m ON m.msisdn = h.msisdn AND m.policy_id = h.policy_id
    WHERE h.push AND h.contact_date <= $cycle_date
    GROUP BY h.msisdn, h.policy_id, h.channel
),
retry AS (
    SELECT x.msisdn, x.policy_id, x.channel FROM per_channel x
    WHERE x.last_no_answer IS NOT NULL AND (x.last_sent IS NULL OR x.last_sent <= x.last_no_answer)
      AND NOT EXISTS (SELECT 1 FROM per_channel y
                      WHERE y.msisdn = x.msisdn AND y.policy_id = x.policy_id AND y.channel <> x.channel
                        AND y.last_contact > x.last_no_answer)
)
SELECT o.offer_id, o.cust_id, o.msisdn, o.policy_id, o.rank, o.value_score, c.channel, c.kind = 'push' AS push,
       array_position(o.channels, c.channel) AS channel_pref
FROM _x_offers o
JOIN _x_channels c ON array_contains(o.channels, c.channel)
LEFT JOIN restricted r ON r.policy_id = o.policy_id
LEFT JOIN _x_policy_channels a ON a.policy_id = o.policy_id AND a.channel = c.channel{made_joins}
WHERE (r.policy_id IS NULL OR a.policy_id IS NOT NULL){made_where}
"""
_MADE_JOINS = """
LEFT JOIN made m ON m.msisdn = o.msisdn AND m.policy_id = o.policy_id
LEFT JOIN retry t ON t.msisdn = o.msisdn AND t.policy_id = o.policy_id AND t.channel = c.channel"""
_MADE_WHERE = """
  AND (c.kind = 'popup' OR m.msisdn IS NULL OR t.msisdn IS NOT NULL)"""


def candidates_query(p: ExportParams) -> Query:
    """_x_candidates; without ``made_rule`` (scene batches) the month's earlier push offers are not
    looked at (the CTEs no join reads are never computed; DuckDB still wants their parameters)."""
    sql = CANDIDATES_SQL.format(made_joins=_MADE_JOINS if p.made_rule else "",
                                made_where=_MADE_WHERE if p.made_rule else "")
    return Query("candidates", sql, {"cycle_month_start": p.cycle_month_start, "cycle_date": p.cycle_date})


SCREEN_SQL = """
-- Do-not-disturb, unsubscribed, withdrawn, cool-down and no_answer in one pass, a flag per
-- stage (cumulative: a row passes a stage only if it passed the ones before). Responses are
-- contact_history outcomes up to the cycle date, on any channel unless said otherwise:
--   dnd           the `dnd` list for this channel or for every channel (`*`);
--   unsubscribed  an `unsubscribed` outcome on this channel makes it do-not-disturb from then on;
--   withdrawn     an `accepted` policy P, and every policy of P's exclusive_group, is withdrawn
--                 from every channel while cycle date <= acceptance + P's withdraw_days
--                 (inclusive); without withdraw_days until P's valid_to (inclusive), else
--                 $withdraw_days days;
--   cooldown      no re-offer of a policy the customer rejected within its cool-down: with 30
--                 days, a rejection 30 days before the cycle date still blocks, 31 days not;
--   no_answer     push only: after a `no_answer` of the policy on push channel X at date n, no
--                 push channel offers it before n + X's retry_days (X's wait); then X may retry
--                 (the candidates' "already made" rule keeps the other push channels off it
--                 within the month).
CREATE OR REPLACE TEMP TABLE _x_screened AS
WITH dnd_rows AS (SELECT DISTINCT msisdn, channel FROM _x_dndlist),
unsubscribed AS (
    SELECT DISTINCT msisdn, channel FROM _x_history
    WHERE outcome = 'unsubscribed' AND contact_date <= $cycle_date
),
accepted AS (
    SELECT h.msisdn, h.policy_id, ap.exclusive_group FROM _x_history h
    LEFT JOIN _x_policies ap ON ap.policy_id = h.policy_id
    WHERE h.outcome = 'accepted' AND h.contact_date <= $cycle_date
      AND CASE WHEN ap.withdraw_days IS NOT NULL THEN h.contact_date >= {withdraw_start}
               WHEN ap.valid_to IS NOT NULL THEN CAST($cycle_date AS DATE) <= ap.valid_to
               ELSE h.contact_date >= {default_withdraw_start} END
),
withdrawn_policy AS (SELECT DISTINCT msisdn, policy_id FROM accepted),
withdrawn_group AS (SELECT DISTINCT msisdn, exclusive_group FROM accepted WHERE exclusive_group IS NOT NULL),
rejected AS (
    SELECT msisdn, policy_id, max(contact_date) AS last_rejected FROM _x_history
    WHERE outcome = 'rejected' AND contact_date <= $cycle_date GROUP BY msisdn, policy_id
),
no_answer_wait AS (
    SELECT DISTINCT n.msisdn, n.policy_id FROM _x_history n
    JOIN _x_channels nch ON nch.channel = n.channel
    WHERE n.outcome = 'no_answer' AND n.push AND n.contact_date <= $cycle_date AND n.contact_date > {retry_start}
),
flagged AS (
    SELECT {candidate_columns},
           d1.msisdn IS NULL AND d2.msisdn IS NULL AS ok_dnd,
           u.msisdn IS NULL AS ok_unsubscribed,
           wp.msisdn IS NULL AND wg.msisdn IS NULL AS ok_withdrawn,
           r.last_rejected IS NULL OR r.last_rejected < {cooldown_start} AS ok_cooldown,
           NOT c.push OR w.msisdn IS NULL AS ok_no_answer
    FROM _x_candidates c
    LEFT JOIN dnd_rows d1 ON d1.msisdn = c.msisdn AND d1.channel = c.channel
    LEFT JOIN dnd_rows d2 ON d2.msisdn = c.msisdn AND d2.channel = '*'
    LEFT JOIN unsubscribed u ON u.msisdn = c.msisdn AND u.channel = c.channel
    LEFT JOIN _x_policies p ON p.policy_id = c.policy_id
    LEFT JOIN withdrawn_policy wp ON wp.msisdn = c.msisdn AND wp.policy_id = c.policy_id
    LEFT JOIN withdrawn_group wg ON wg.msisdn = c.msisdn AND wg.exclusive_group = p.exclusive_group
    LEFT JOIN rejected r ON r.msisdn = c.msisdn AND r.policy_id = c.policy_id
    LEFT JOIN no_answer_wait w ON w.msisdn = c.msisdn AND w.policy_id = c.policy_id
)
SELECT {columns},
       ok_dnd AS pass_dnd,
       ok_dnd AND ok_unsubscribed AS pass_unsubscribed,
       ok_dnd AND ok_unsubscribed AND ok_withdrawn AS pass_withdrawn,
       ok_dnd AND ok_unsubscribed AND ok_withdrawn AND ok_cooldown AS pass_cooldown,
       ok_dnd AND ok_unsubscribed AND ok_withdrawn AND ok_cooldown AND ok_no_answer AS pass_no_answer
FROM flagged
"""


def screen_query(p: ExportParams) -> Query:
    sql = SCREEN_SQL.format(candidate_columns=_cols(CANDIDATE_COLUMNS, "c"), columns=_cols(CANDIDATE_COLUMNS),
                            cooldown_start=days_before("$cycle_date", "coalesce(p.cooldown_days, $cooldown_days)"),
                            withdraw_start=days_before("$cycle_date", "ap.withdraw_days"),
                            default_withdraw_start=days_before("$cycle_date", "$withdraw_days"),
                            retry_start=days_before("$cycle_date", "nch.retry_days"))
    return Query("screen", sql, {"cycle_date": p.cycle_date, "cooldown_days": p.cooldown_days,
                                 "withdraw_days": p.withdraw_days})


SCREEN_COUNTS_SQL = """
-- Customers per channel at each screening stage, in one grouping: the pass flags are
-- cumulative, so a customer reached stage k on a channel iff the best of their rows there did.
-- (A pop-up has no no_answer stage: its flag is its cool-down's, and its funnel leaves it out.)
WITH reached AS (
    SELECT channel, cust_id,
           max(CASE WHEN pass_no_answer THEN 5 WHEN pass_cooldown THEN 4 WHEN pass_withdrawn THEN 3
                    WHEN pass_unsubscribed THEN 2 WHEN pass_dnd THEN 1 ELSE 0 END) AS stage
    FROM _x_screened GROUP BY channel, cust_id
)
SELECT channel,
       count(*)               AS candidates,
       count_if(stage >= 1)   AS dnd,
       count_if(stage >= 2)   AS unsubscribed,
       count_if(stage >= 3)   AS withdrawn,
       count_if(stage >= 4)   AS cooldown,
       count_if(stage >= 5)   AS no_answer
FROM reached GROUP BY channel
"""


def screen_counts_query() -> Query:
    return Query("screen_counts", SCREEN_COUNTS_SQL)


def screened_query() -> Query:
    """_x_no_answer: the rows that passed the screening (every stage to no_answer), without its flags."""
    return Query("screened", f"CREATE OR REPLACE TEMP TABLE _x_no_answer AS SELECT {_cols(CANDIDATE_COLUMNS)} "
                             "FROM _x_screened WHERE pass_no_answer")


PRIOR_SQL = """
-- The push contacts already made this cycle month, per customer and channel: what the contact
-- caps count before this cycle's placements (a pop-up showing is no contact).
CREATE OR REPLACE TEMP TABLE _x_prior AS
SELECT msisdn, channel, count(*) AS n FROM _x_history
WHERE push AND contact_date >= $cycle_month_start AND contact_date <= $cycle_date
GROUP BY msisdn, channel
"""


def prior_query(p: ExportParams) -> Query:
    """_x_prior: this month's earlier push contacts per customer and channel (the caps' start)."""
    return Query("prior", PRIOR_SQL, {"cycle_month_start": p.cycle_month_start, "cycle_date": p.cycle_date})


CAP_SQL = """
-- Round $round: the proposals within the customer's contact caps, counted on what is actually
-- contacted: the month's earlier push contacts, the offers placed in earlier rounds and, within
-- the round, the customer's better-ranked proposals. Per channel (contact_cap), then across push
-- channels (monthly_cap). An offer a cap stops here proposes its next channel in the next round,
-- and a candidate row that is never proposed (its offer went to another channel) uses no cap.
INSERT INTO _x_capped
WITH proposals AS (
    SELECT {choice_columns} FROM _x_choices c
    WHERE c.choice = $round AND NOT EXISTS (SELECT 1 FROM _x_placed p WHERE p.offer_id = c.offer_id)
),
placed_channel AS (SELECT cust_id, channel, count(*) AS n FROM _x_placed GROUP BY cust_id, channel),
placed_total AS (SELECT cust_id, count(*) AS n FROM _x_placed GROUP BY cust_id),
prior_total AS (SELECT msisdn, sum(n) AS n FROM _x_prior GROUP BY msisdn),
per_channel AS (
    SELECT {proposal_columns}, ch.contact_cap,
           row_number() OVER (PARTITION BY pr.cust_id, pr.channel ORDER BY pr.rank, pr.policy_id)
           + coalesce(pc.n, 0) + coalesce(pp.n, 0) AS channel_count
    FROM proposals pr
    JOIN _x_channels ch ON ch.channel = pr.channel
    LEFT JOIN placed_channel pc ON pc.cust_id = pr.cust_id AND pc.channel = pr.channel
    LEFT JOIN _x_prior pp ON pp.msisdn = pr.msisdn AND pp.channel = pr.channel
),
within_channel AS (
    SELECT {columns} FROM per_channel WHERE contact_cap IS NULL OR channel_count <= contact_cap
),
numbered AS (
    SELECT {within_columns},
           row_number() OVER (PARTITION BY w.cust_id ORDER BY w.rank, w.policy_id)
           + coalesce(pt.n, 0) + coalesce(ppt.n, 0) AS total_count
    FROM within_channel w
    LEFT JOIN placed_total pt ON pt.cust_id = w.cust_id
    LEFT JOIN prior_total ppt ON ppt.msisdn = w.msisdn
)
SELECT {columns} FROM numbered
WHERE CAST($monthly_cap AS BIGINT) IS NULL OR total_count <= CAST($monthly_cap AS BIGINT)
"""


def cap_query(p: ExportParams, round_no: int) -> Query:
    sql = CAP_SQL.format(choice_columns=_cols(CHOICE_COLUMNS, "c"), proposal_columns=_cols(CHOICE_COLUMNS, "pr"),
                         columns=_cols(CHOICE_COLUMNS), within_columns=_cols(CHOICE_COLUMNS, "w"))
    return Query("contact_cap", sql, {"round": round_no, "monthly_cap": p.monthly_cap})


EXCLUSION_SQL = """
-- Mutually exclusive policies (same exclusive_group): keep the customer's better-ranked one.
CREATE OR REPLACE TEMP TABLE _x_exclusion AS
WITH g AS (
    SELECT {candidate_columns}, p.exclusive_group
    FROM _x_no_answer c LEFT JOIN _x_policies p ON p.policy_id = c.policy_id
),
best AS (
    SELECT cust_id, exclusive_group, min(rank) AS best_rank FROM g
    WHERE exclusive_group IS NOT NULL GROUP BY cust_id, exclusive_group
)
SELECT {columns} FROM g
LEFT JOIN best b ON b.cust_id = g.cust_id AND b.exclusive_group = g.exclusive_group
WHERE g.exclusive_group IS NULL OR g.rank = b.best_rank
"""


def exclusion_query() -> Query:
    return Query("exclusion", EXCLUSION_SQL.format(candidate_columns=_cols(CANDIDATE_COLUMNS, "c"),
                                                   columns=_cols(CANDIDATE_COLUMNS, "g")))


CHOICES_SQL = """
-- Each offer's surviving push channels numbered 1..k in rule order: round r proposes choice r.
-- Pop-ups take no part: they use no capacity and an offer may be on a pop-up and one push list.
CREATE OR REPLACE TEMP TABLE _x_choices AS
SELECT {columns}, row_number() OVER (PARTITION BY e.offer_id ORDER BY e.channel_pref) AS choice
FROM _x_exclusion e WHERE e.push{recorded_key}
"""
#: With ``recorded_key_dedupe`` (scene batches): a channel whose key (msisdn, channel, policy, cycle
#: date) already has a contact_history row is no choice of the offer (it never reaches dedupe there).
_RECORDED_KEY = """
  AND NOT EXISTS (SELECT 1 FROM _x_history h WHERE h.msisdn = e.msisdn AND h.channel = e.channel
                  AND h.policy_id = e.policy_id AND h.contact_date = CAST($cycle_date AS DATE))"""


def allocation_setup_queries(p: ExportParams | None = None) -> list[Query]:
    """The allocation's tables: the numbered choices, and the (empty) proposals and placements."""
    keyed = p is not None and p.recorded_key_dedupe
    choices = CHOICES_SQL.format(columns=_cols(CANDIDATE_COLUMNS, "e"), recorded_key=_RECORDED_KEY if keyed else "")
    return [
        Query("choices", choices, {"cycle_date": p.cycle_date} if keyed and p is not None else {}),
        Query("proposed", "CREATE OR REPLACE TEMP TABLE _x_proposed (offer_id BIGINT, cust_id BIGINT, "
                          "channel VARCHAR)"),
        Query("capped", f"CREATE OR REPLACE TEMP TABLE _x_capped AS SELECT {_cols(CHOICE_COLUMNS)} FROM _x_choices "
                        "WHERE false"),
        Query("placed", f"CREATE OR REPLACE TEMP TABLE _x_placed AS SELECT {_cols(CHOICE_COLUMNS)} FROM _x_choices "
                        "WHERE false"),
    ]


def rounds_query() -> Query:
    """How many allocation rounds: the most surviving channels of one offer."""
    return Query("rounds", "SELECT coalesce(max(choice), 0) FROM _x_choices")


PROPOSE_SQL = """
-- Round $round: unplaced offers propose their next channel (counted as the dedupe stage).
INSERT INTO _x_proposed
SELECT offer_id, cust_id, channel FROM _x_choices c
WHERE c.choice = $round AND NOT EXISTS (SELECT 1 FROM _x_placed p WHERE p.offer_id = c.offer_id)
"""

PLACE_SQL = """
-- Round $round: channels take the proposals within the caps that fit, best first.
INSERT INTO _x_placed
WITH proposals AS (
    SELECT {choice_columns} FROM _x_capped c WHERE c.choice = $round
),
room AS (
    SELECT ch.channel,
           ch.capacity - coalesce((SELECT count(*) FROM _x_placed p WHERE p.channel = ch.channel), 0) AS room
    FROM _x_channels ch
),
-- Only channels with a capacity need the order (and the tie-break draw); the others take
-- every proposal as it comes.
limited AS (
    SELECT {proposal_columns}, r.room,
           row_number() OVER (PARTITION BY pr.channel
                              ORDER BY pr.rank, pr.value_score DESC, {tiebreak}, pr.msisdn, pr.policy_id) AS pos
    FROM proposals pr JOIN room r ON r.channel = pr.channel
    WHERE r.room IS NOT NULL
)
SELECT {columns} FROM limited WHERE pos <= room
UNION ALL
SELECT {proposal_columns} FROM proposals pr JOIN room r ON r.channel = pr.channel WHERE r.room IS NULL
"""


def round_queries(p: ExportParams, round_no: int) -> list[Query]:
    """One allocation round: the same three statements every round, with the round bound as $round."""
    place = PLACE_SQL.format(choice_columns=_cols(CHOICE_COLUMNS, "c"), proposal_columns=_cols(CHOICE_COLUMNS, "pr"),
                             columns=_cols(CHOICE_COLUMNS),
                             tiebreak=draw(("pr.msisdn", "pr.policy_id", "'tiebreak'")))
    return [Query("propose", PROPOSE_SQL, {"round": round_no}), cap_query(p, round_no),
            Query("place", place, {"round": round_no})]


UNIVERSAL_SQL = """
-- The universal control group among the customers with offers: the draw of the msisdn and the
-- salt alone (no month: the same customers month after month) below universal_holdout. One draw
-- per customer, not per offer × channel row: the hold-out stage joins this small table by cust_id.
CREATE OR REPLACE TEMP TABLE _x_universal AS
SELECT c.cust_id FROM (SELECT DISTINCT cust_id, msisdn FROM _x_offers) c
WHERE {drawn} < {share}
"""


def universal_query(p: ExportParams) -> Query | None:
    """_x_universal: the customers of _x_offers in the universal control group; None when the group
    is off (universal_holdout 0: no draw at all). The salt and the share reach SQL as literals of
    sqlquote.quote_literal."""
    if p.universal_holdout <= 0:
        return None
    return Query("universal", UNIVERSAL_SQL.format(drawn=draw(("c.msisdn", quote_literal(p.universal_salt))),
                                                   share=quote_literal(p.universal_holdout)))


HOLDOUT_SQL = """
-- Hold-out control groups: the push rows placed and every pop-up row, each held out by a
-- deterministic draw, nested so a customer is in at most one group (held_kind):
--   universal  the customer is in the universal control group (_x_universal): every offer of
--              theirs on every channel, pop-ups too, in every cycle, is held out (contacted by
--              no campaign);
--   policy     else the pair's per customer × policy × month draw (the export month, not the
--              cycle) is below the policy's holdout: held out of every channel, pop-ups too, in
--              every cycle of the month.
CREATE OR REPLACE TEMP TABLE _x_drawn AS
WITH shown AS (
    SELECT {choice_columns} FROM _x_placed
    UNION ALL
    SELECT {candidate_columns}, 0 AS choice FROM _x_exclusion WHERE NOT push
),
drawn AS (
    SELECT {columns}, {held_kind} AS held_kind
    FROM shown p
    LEFT JOIN _x_policies pol ON pol.policy_id = p.policy_id{universal_join}
)
SELECT {drawn_columns}, held_kind, held_kind IS NOT NULL AS held_out FROM drawn
"""


def universal_join(alias: str, p: ExportParams) -> str:
    """The join of the universal control group (``u``) to the rows ``alias``; none when it is off."""
    return f"\n    LEFT JOIN _x_universal u ON u.cust_id = {alias}.cust_id" if p.universal_holdout > 0 else ""


def held_kind_sql(alias: str, p: ExportParams) -> str:
    """Which hold-out keeps the pair (``alias``.msisdn, ``alias``.policy_id) back this month
    (``pol``: its _x_policies row, ``u``: its _x_universal row): 'universal', else 'policy', else
    NULL. Nested: a universal customer is never in a policy hold-out. The policy draw is computed
    only for a policy with a hold-out. Explain evaluates the very same expression."""
    policy = (f"pol.holdout > 0 AND {draw((f'{alias}.msisdn', f'{alias}.policy_id', '$month'))} < pol.holdout")
    first = f"WHEN u.cust_id IS NOT NULL THEN {quote_literal(UNIVERSAL_HOLDOUT)} " if p.universal_holdout > 0 else ""
    return f"CASE {first}WHEN {policy} THEN {quote_literal(POLICY_HOLDOUT)} END"


def holdout_query(p: ExportParams) -> Query:
    sql = HOLDOUT_SQL.format(choice_columns=_cols(CHOICE_COLUMNS), candidate_columns=_cols(CANDIDATE_COLUMNS),
                             columns=_cols(CHOICE_COLUMNS, "p"), drawn_columns=_cols(CHOICE_COLUMNS),
                             held_kind=held_kind_sql("p", p), universal_join=universal_join("p", p))
    return Query("holdout", sql, {"month": p.month})


def stage_count_query(table: str, *, exported_only: bool = False) -> Query:
    """Distinct customers per channel in one stage's table (the exported ones only: not held out)."""
    if table not in COUNTED_TABLES:
        raise ValueError(f"not a stage table: {table}")
    where = " WHERE NOT held_out" if exported_only else ""
    return Query(f"count:{table}", f"SELECT channel, count(DISTINCT cust_id) FROM {table}{where} GROUP BY channel")


def history_query(kind: str, cycle_date: dt.date) -> Query:
    """_x_history: contact history as the contact policy sees it (see :func:`_history_view`),
    each row with ``push``: false when its channel is a pop-up of channels.yaml.

    ``kind``: ``none`` (no contact_history yet), ``ours`` (with the cycle and recorded_by
    columns: this cycle's own records are left out), ``ingested`` (only ingested history).
    """
    if kind == "none":
        sql = ("CREATE OR REPLACE TEMP TABLE _x_history AS SELECT CAST(NULL AS VARCHAR) AS msisdn, "
               "CAST(NULL AS DATE) AS contact_date, CAST(NULL AS VARCHAR) AS channel, "
               "CAST(NULL AS VARCHAR) AS policy_id, CAST(NULL AS VARCHAR) AS outcome, CAST(NULL AS BOOLEAN) AS push "
               "WHERE false")
        return Query("history", sql)
    if kind not in ("ours", "ingested"):
        raise ValueError(f"unknown history kind {kind!r}")
    sql = ("CREATE OR REPLACE TEMP TABLE _x_history AS SELECT h.msisdn, h.contact_date, h.channel, h.policy_id, "
           "h.outcome, coalesce(ch.kind, 'push') = 'push' AS push FROM contact_history h "
           "LEFT JOIN _x_channels ch ON ch.channel = h.channel")
    if kind == "ingested":
        return Query("history", sql)
    # This run's own records: of the cycles it writes, and of the other channels' cycles made on
    # this cycle date (the same joint allocation, e.g. the monthly lists when only outbound is
    # re-run); a daily run still sees the monthly channels' contacts of earlier days.
    sql += (" WHERE NOT (coalesce(h.recorded_by, '') = $recorded_by AND h.outcome = 'sent' "
            "AND (h.cycle IN (SELECT cycle FROM _x_cycle WHERE replaced) "
            "OR (h.cycle IN (SELECT cycle FROM _x_cycle) AND h.contact_date = CAST($cycle_date AS DATE))))")
    return Query("history", sql, {"recorded_by": RECORDED_BY, "cycle_date": cycle_date})


def _target_select(channel: Channel, columns: tuple[str, ...], salt: str | None) -> str:
    """The target list's columns for one channel: money 2 decimals, rates 4, msisdn masked as configured."""
    parts = []
    for col in columns:
        if col == "msisdn" and channel.mask == "mask":
            parts.append("substr(msisdn, 1, 3) || '****' || substr(msisdn, length(msisdn) - 3, 4) AS msisdn")
        elif col == "msisdn" and channel.mask == "hash":
            salted = f"{quote_literal(salt or '')} || msisdn"
            parts.append(f"{sha256_hex(salted)} AS msisdn")
        elif col in MONEY_COLUMNS:  # the fen, half away from zero (docs/money.md), never round() on a DOUBLE
            parts.append(f"{money(col)} AS {col}")
        elif col in RATE_COLUMNS:
            parts.append(f"{round_half_away(col, 4)} AS {col}")
        else:
            parts.append(col)
    return ", ".join(parts)


def held_out_query(channel: str) -> Query:
    """How many of one channel's placed rows the draw held out (the manifest's ``held_out``)."""
    return Query("held_out", "SELECT count(*) FROM _x_drawn WHERE channel = $channel AND held_out",
                 {"channel": channel})


GROUP_ALTERNATIVES_SQL = """
-- Per policy group and policy: the group's name and its other policies (ids and names joined
-- with '|', in the group's order) — what a list row whose rule names the group shows beside its
-- main policy. Every group × catalogue policy: a few hundred rows, joined to the lists by key.
CREATE OR REPLACE TEMP TABLE _x_group_alternatives AS
SELECT g.group_id, p.policy_id, g.group_name,
       nullif({ids}, '') AS group_alternatives,
       nullif({names}, '') AS group_alternative_names
FROM _x_groups g
CROSS JOIN _x_policies p
LEFT JOIN _x_group_members m ON m.group_id = g.group_id AND m.policy_id <> p.policy_id
GROUP BY g.group_id, g.group_name, p.policy_id
"""


def group_alternatives_query() -> Query:
    """_x_group_alternatives: each group's alternatives to each policy (see GROUP_ALTERNATIVES_SQL)."""
    bar = quote_literal("|")
    return Query("group_alternatives", GROUP_ALTERNATIVES_SQL.format(
        ids=ordered_text_agg("m.policy_id", "m.pos", bar), names=ordered_text_agg("m.policy_name", "m.pos", bar)))


def list_window_query(cycle_date: dt.date) -> Query:
    """_x_list_window: the cycle date and the first day of the recent contacts a list shows
    (RECENT_CONTACTS_MONTHS calendar months before it)."""
    start = months_before("$cycle_date", RECENT_CONTACTS_MONTHS)
    return Query("list_window", "CREATE OR REPLACE TEMP TABLE _x_list_window AS SELECT CAST($cycle_date AS DATE) "
                                f"AS cycle_date, {start} AS contacts_from", {"cycle_date": cycle_date})


RECENT_CONTACTS_SQL = """(
    -- The listed customers' contacts in [cycle date − {months} months, cycle date), every channel,
    -- newest first: 'YYYY-MM-DD channel policy outcome' entries joined with '; ', at most {most}
    -- (then '…+N', N the entries left out).
    SELECT e.msisdn,
           {entries} || CASE WHEN max(e.entries) > {most}
                             THEN '; …+' || CAST(max(e.entries) - {most} AS VARCHAR) ELSE '' END AS recent_contacts
    FROM (
        SELECT h.msisdn,
               CAST(h.contact_date AS VARCHAR) || ' ' || h.channel || ' ' || h.policy_id || ' ' || h.outcome AS entry,
               row_number() OVER (PARTITION BY h.msisdn
                                  ORDER BY h.contact_date DESC, h.channel, h.policy_id, h.outcome) AS pos,
               count(*) OVER (PARTITION BY h.msisdn) AS entries
        FROM _x_history h
        JOIN _x_list_window w ON h.contact_date >= w.contacts_from AND h.contact_date < w.cycle_date
        WHERE h.msisdn IN (SELECT msisdn FROM _x_drawn WHERE channel = {channel} AND NOT held_out)
    ) AS e
    WHERE e.pos <= {most}
    GROUP BY e.msisdn
)"""


def list_query(channel: Channel, columns: tuple[str, ...], salt: str | None) -> Query:
    """One channel's target list: its exported rows (not held out) with their offers' texts, in list order.

    The group texts, the customer summary (customer_view) and the recent contacts are joined only
    when the channel's columns ask for them: a list without them reads neither.
    """
    name = quote_literal(channel.name)
    offer = ["d.channel" if c == "channel" else f"o.{c}" for c in TARGET_COLUMNS if c not in GROUP_TEXT_COLUMNS]
    joins = ""
    if any(c in GROUP_TEXT_COLUMNS for c in columns):
        offer += [f"g.{c}" for c in GROUP_TEXT_COLUMNS]
        joins += " LEFT JOIN _x_group_alternatives g ON g.group_id = o.group_id AND g.policy_id = o.policy_id"
    summary = [c for c in SUMMARY_COLUMNS if c in columns]
    if summary:
        offer += [f"v.{c}" for c in summary]
        joins += (" LEFT JOIN (SELECT msisdn, month, " + ", ".join(summary) + " FROM customer_view) v "
                  "ON v.msisdn = o.msisdn AND v.month = o.month")
    if RECENT_CONTACTS_COLUMN in columns:
        offer.append(f"rc.{RECENT_CONTACTS_COLUMN}")
        recent = RECENT_CONTACTS_SQL.format(months=RECENT_CONTACTS_MONTHS, most=RECENT_CONTACTS_MAX, channel=name,
                                            entries=ordered_text_agg("e.entry", "e.pos", quote_literal("; ")))
        joins += f" LEFT JOIN {recent} AS rc ON rc.msisdn = o.msisdn"
    rows = (f"SELECT {', '.join(offer)} FROM _x_drawn d JOIN _x_offers o ON o.offer_id = d.offer_id{joins} "
            f"WHERE d.channel = {name} AND NOT d.held_out")
    return Query(f"list:{channel.name}", f"SELECT {_target_select(channel, columns, salt)} FROM ({rows}) AS r "
                                         "ORDER BY msisdn, rank, policy_id")


def record_contact_queries(channel: str, cycle: str, cycle_date: dt.date, month: str) -> list[Query]:
    """Write back one channel's exported rows as `sent` contacts (replacing the cycle's earlier
    records) and its hold-outs (replacing the cycle's earlier ones). A pop-up's rows are not
    contacts: only its hold-outs are recorded (and its records of an earlier build forgotten)."""
    keys = {"recorded_by": RECORDED_BY, "cycle": cycle, "channel": channel}
    return [
        Query("forget_sent", "DELETE FROM contact_history WHERE recorded_by = $recorded_by AND cycle = $cycle "
                             "AND channel = $channel AND outcome = 'sent'", keys),
        Query("record_sent", """INSERT INTO contact_history (msisdn, contact_date, channel, policy_id, outcome, cycle,
                                                      recorded_by)
               SELECT d.msisdn, CAST($cycle_date AS DATE) AS contact_date, d.channel, d.policy_id, 'sent' AS outcome,
                      $cycle AS cycle, $recorded_by AS recorded_by
               FROM _x_drawn d
               WHERE d.channel = $channel AND d.push AND NOT d.held_out
                 AND NOT EXISTS (SELECT 1 FROM contact_history h WHERE h.msisdn = d.msisdn AND h.channel = d.channel
                                 AND h.policy_id = d.policy_id AND h.contact_date = CAST($cycle_date AS DATE))""",
              {**keys, "cycle_date": cycle_date}),
        Query("forget_holdouts", "DELETE FROM holdouts WHERE cycle = $cycle AND channel = $channel",
              {"cycle": cycle, "channel": channel}),
        Query("record_holdouts", """INSERT INTO holdouts (month, cycle, cycle_date, channel, msisdn, policy_id, rank,
                                                 matrix, rule_id, kind)
               SELECT $month, $cycle, CAST($cycle_date AS DATE), d.channel, d.msisdn, d.policy_id, o.rank, o.matrix,
                      o.rule_id, d.held_kind
               FROM _x_drawn d JOIN _x_offers o ON o.offer_id = d.offer_id
               WHERE d.channel = $channel AND d.held_out""",
              {"month": month, "cycle": cycle, "cycle_date": cycle_date, "channel": channel}),
    ]


#: holdouts: every held-out customer × policy per cycle and channel where it applies; ``kind`` is
#: 'policy' (the policy's hold-out) or 'universal' (the universal control group). A table of an
#: older build gains cycle_date and kind at its end (:func:`ensure_holdouts_columns`).
HOLDOUTS_DDL = """CREATE TABLE IF NOT EXISTS holdouts (month VARCHAR, cycle VARCHAR, cycle_date DATE, channel VARCHAR,
                   msisdn VARCHAR, policy_id VARCHAR, rank INTEGER, matrix VARCHAR, rule_id VARCHAR, kind VARCHAR)"""

#: An old row's cycle date: its cycle id as a date ('YYYY-MM-DD'), or the 1st of a 'YYYY-MM' cycle.
_OLD_CYCLE_DATE = ("CASE WHEN length(cycle) = 10 THEN TRY_CAST(cycle AS DATE) "
                   "WHEN length(cycle) = 7 THEN TRY_CAST(cycle || '-01' AS DATE) END")


def ensure_holdouts_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Bring a holdouts table of an older build (no cycle_date, no kind) to today's columns, in
    place, inside the caller's write transaction: its rows were all policy hold-outs, and their
    cycle date follows from their cycle id. (The columns are added at the end: evaluate selects by name.)"""
    if not table_exists(con, HOLDOUTS_TABLE):
        return
    cols = set(table_columns(con, HOLDOUTS_TABLE))
    if "cycle_date" not in cols:
        con.execute(f"ALTER TABLE {HOLDOUTS_TABLE} ADD COLUMN cycle_date DATE")
        con.execute(f"UPDATE {HOLDOUTS_TABLE} SET cycle_date = {_OLD_CYCLE_DATE}")
    if "kind" not in cols:
        con.execute(f"ALTER TABLE {HOLDOUTS_TABLE} ADD COLUMN kind VARCHAR")
        con.execute(f"UPDATE {HOLDOUTS_TABLE} SET kind = {quote_literal(POLICY_HOLDOUT)}")


# -- explain: one customer's offers through the channel stages ---------------------------------
CUSTOMER_STAGES_SQL = """
-- One customer's offers × candidate channels (the stage tables hold that customer only) and
-- the per-customer stage that removed each (NULL: it passed exclusion), with the month's draw
-- (held_kind: universal / policy / NULL, as the hold-out stage computes it).
WITH offered AS (
    SELECT o.offer_id, o.cust_id, o.msisdn, o.policy_id, o.rank, c.channel, c.kind,
           array_position(o.channels, c.channel) AS channel_pref
    FROM _x_offers o JOIN _x_channels c ON array_contains(o.channels, c.channel)
    WHERE o.msisdn = ${customer}
)
SELECT f.policy_id, f.rank, f.channel, f.kind, f.channel_pref,
       CASE WHEN s.offer_id IS NULL THEN 'candidates'
            WHEN NOT s.pass_dnd THEN 'dnd'
            WHEN NOT s.pass_unsubscribed THEN 'unsubscribed'
            WHEN NOT s.pass_withdrawn THEN 'withdrawn'
            WHEN NOT s.pass_cooldown THEN 'cooldown'
            WHEN NOT s.pass_no_answer THEN 'no_answer'
            WHEN e.offer_id IS NULL THEN 'exclusion'
       END AS removed_at,
       {held_kind} AS held_kind
FROM offered f
LEFT JOIN _x_screened s ON s.offer_id = f.offer_id AND s.channel = f.channel
LEFT JOIN _x_exclusion e ON e.offer_id = f.offer_id AND e.channel = f.channel
LEFT JOIN _x_policies pol ON pol.policy_id = f.policy_id{universal_join}
ORDER BY f.rank, f.channel_pref
"""


def customer_stages_query(p: ExportParams, msisdn: str) -> Query:
    """The per-customer stages of one customer's offer × channel rows (see :func:`channel_verdicts`)."""
    sql = CUSTOMER_STAGES_SQL.format(customer=CUSTOMER_PARAM, held_kind=held_kind_sql("f", p),
                                     universal_join=universal_join("f", p))
    return Query("customer_stages", sql, {CUSTOMER_PARAM: msisdn, "month": p.month})


def cycle_records_queries(msisdn: str, *, holdout_kinds: bool = True) -> list[Query]:
    """What this cycle recorded: the cycles (of _x_cycle) with any record, and the customer's
    `sent` rows and hold-outs (with their kind) in them (the allocation's outcome, which depends on
    other customers). ``holdout_kinds``: the holdouts table has its kind column (an older build's
    has none: all its rows are policy hold-outs; explain reads, it never migrates)."""
    mine = {CUSTOMER_PARAM: msisdn, "recorded_by": RECORDED_BY}
    kind = "coalesce(h.kind, 'policy')" if holdout_kinds else quote_literal(POLICY_HOLDOUT)
    return [
        Query("cycle_recorded", f"""SELECT DISTINCT cy.channel FROM _x_cycle cy
               WHERE EXISTS (SELECT 1 FROM {CONTACT_HISTORY_TABLE} h WHERE h.cycle = cy.cycle
                             AND h.recorded_by = $recorded_by AND h.outcome = 'sent')""",
              {"recorded_by": RECORDED_BY}),
        Query("cycle_held_recorded", f"""SELECT DISTINCT cy.channel FROM _x_cycle cy
               WHERE EXISTS (SELECT 1 FROM {HOLDOUTS_TABLE} h WHERE h.cycle = cy.cycle)"""),
        Query("cycle_sent", f"""SELECT h.channel, h.policy_id FROM {CONTACT_HISTORY_TABLE} h
               JOIN _x_cycle cy ON cy.channel = h.channel AND cy.cycle = h.cycle
               WHERE h.msisdn = ${CUSTOMER_PARAM} AND h.recorded_by = $recorded_by AND h.outcome = 'sent'""", mine),
        Query("cycle_held", f"""SELECT h.channel, h.policy_id, {kind} AS kind FROM {HOLDOUTS_TABLE} h
               JOIN _x_cycle cy ON cy.channel = h.channel AND cy.cycle = h.cycle
               WHERE h.msisdn = ${CUSTOMER_PARAM}""", {CUSTOMER_PARAM: msisdn}),
    ]


def customer_prior_query(msisdn: str) -> Query:
    """The customer's push contacts earlier in the cycle month per channel (from _x_prior)."""
    return Query("customer_prior", f"SELECT channel, n FROM _x_prior WHERE msisdn = ${CUSTOMER_PARAM}",
                 {CUSTOMER_PARAM: msisdn})


def customer_responses_query(msisdn: str, cycle_date: dt.date) -> Query:
    """The customer's responses the screening read (for explain's texts: which acceptance, when)."""
    return Query("customer_responses", f"""SELECT contact_date, channel, policy_id, outcome FROM _x_history
               WHERE msisdn = ${CUSTOMER_PARAM} AND outcome IN ('accepted', 'rejected', 'no_answer', 'unsubscribed')
                 AND contact_date <= $cycle_date
               ORDER BY contact_date DESC, channel, policy_id""", {CUSTOMER_PARAM: msisdn, "cycle_date": cycle_date})


@dataclass(frozen=True)
class ChannelVerdict:
    """One offer × candidate channel of a customer: the contact-policy stage that removed it, or
    ``exported`` / ``holdout``; ``not_exported`` when the cycle was not exported yet and the
    offer passes every per-customer stage of a push channel."""

    policy_id: str
    rank: int
    channel: str
    kind: str
    stage: str
    detail: str


NOT_EXPORTED = "not_exported"
#: explain's text of a held-out offer, by the hold-out's kind (holdouts.kind, _x_drawn.held_kind).
HOLDOUT_TEXT = {
    POLICY_HOLDOUT: "held out this month (control group): on no channel",
    UNIVERSAL_HOLDOUT: "universal control group: never contacted by any campaign",
}
STAGE_TEXT = {
    "dnd": "on the do-not-disturb list (this channel or every channel)",
    "unsubscribed": "the customer unsubscribed from this channel",
    "withdrawn": "withdrawn everywhere: the customer accepted this policy or one of its exclusive group",
    "cooldown": "cooling down everywhere: the customer rejected this policy",
    "no_answer": "no answer on this channel: it retries after its retry_days",
    "contact_cap": "the customer's push contacts this month reached a contact cap",
    "exclusion": "a better-ranked policy of the same exclusive group stays",
}


def channel_verdicts(con: duckdb.DuckDBPyConnection, project: Project, month: str, cycle_date: dt.date,
                     msisdn: str) -> list[ChannelVerdict]:
    """Why each of one customer's offers is, or is not, on each candidate channel in a cycle.

    The per-customer stages (candidates … exclusion) run export's own queries with the customer
    bound as a parameter; the allocation (dedupe, capacity) depends on every other customer, so
    it is read from what the cycle recorded (its `sent` rows and hold-outs, with their kind). A
    pop-up has no allocation: the draws decide holdout (universal control group, else the policy's
    hold-out) or exported.
    """
    if not table_exists(con, "recommendations"):  # `matrix` has not run: no offers to place yet
        return []
    config = ExportConfig.of(project)
    has_plan = table_exists(con, "plan_recommendations") and bool(
        con.execute("SELECT 1 FROM plan_recommendations WHERE month = ? AND msisdn = ? LIMIT 1",
                    [month, msisdn]).fetchone())
    p = ExportParams.of(config, month, cycle_date, has_plan=has_plan)
    _register(con, config, cycle_ids(config, month, cycle_date))
    _history_view(con, p.cycle_date)
    for q in (offers_query(p, msisdn), candidates_query(p), screen_query(p), screened_query(), exclusion_query(),
              prior_query(p), universal_query(p)):
        if q is not None:
            _run(con, q)
    rows = _run(con, customer_stages_query(p, msisdn)).fetchall()
    responses = _run(con, customer_responses_query(msisdn, cycle_date)).fetchall()
    recorded: set[str] = set()
    sent: set[tuple[str, str]] = set()
    held: dict[tuple[str, str], str] = {}  # (channel, policy) → the hold-out's kind
    has_holdouts = table_exists(con, HOLDOUTS_TABLE)
    recorded_q, held_recorded_q, sent_q, held_q = cycle_records_queries(
        msisdn, holdout_kinds=has_holdouts and "kind" in table_columns(con, HOLDOUTS_TABLE))
    if table_exists(con, CONTACT_HISTORY_TABLE) and set(HISTORY_BOOKKEEPING) <= set(
            table_columns(con, CONTACT_HISTORY_TABLE)):
        recorded |= {r[0] for r in _run(con, recorded_q).fetchall()}
        sent = {(r[0], r[1]) for r in _run(con, sent_q).fetchall()}
    if has_holdouts:
        recorded |= {r[0] for r in _run(con, held_recorded_q).fetchall()}
        held = {(r[0], r[1]): str(r[2]) for r in _run(con, held_q).fetchall()}
    contacts = {str(r[0]): int(r[1]) for r in _run(con, customer_prior_query(msisdn)).fetchall()}
    for table in ("_x_offers", "_x_candidates", "_x_screened", "_x_no_answer", "_x_exclusion", "_x_prior",
                  "_x_universal"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    surviving: dict[str, list[str]] = {}  # policy → its push channels that pass every per-customer stage, in order
    for policy_id, _, channel, kind, _, removed_at, _ in rows:
        if removed_at is None and kind == PUSH:
            surviving.setdefault(policy_id, []).append(channel)
    verdicts = []
    for policy_id, rank, channel, kind, _, removed_at, held_kind in rows:
        if removed_at is not None:
            stage, detail = removed_at, _removed_detail(config, policy_id, channel, removed_at, responses)
        elif kind == POPUP:
            stage, detail = (("holdout", HOLDOUT_TEXT[held_kind]) if held_kind is not None
                             else ("exported", "on the pop-up list"))
        else:
            stage, detail = _allocation_verdict(policy_id, channel, surviving[policy_id], recorded, sent, held,
                                                _caps_reached(config, contacts, sent | set(held)))
            if stage == NOT_EXPORTED and held_kind == UNIVERSAL_HOLDOUT:
                detail += f"; {HOLDOUT_TEXT[UNIVERSAL_HOLDOUT]}: held out wherever it is placed"
        verdicts.append(ChannelVerdict(policy_id, int(rank), channel, kind, stage, detail))
    return verdicts


def _removed_detail(config: ExportConfig, policy_id: str, channel: str, stage: str,
                    responses: list[tuple[Any, ...]]) -> str:
    """Why a per-customer stage removed the offer, naming the response it read (latest first)."""
    policy = config.policies.get(policy_id)
    group = policy.exclusive_group if policy else None

    def latest(outcome: str, *, same_channel: bool = False, in_group: bool = False) -> tuple[Any, ...] | None:
        for row in responses:
            day, ch, pid, out = row
            other = config.policies.get(pid)
            if out != outcome or (same_channel and ch != channel):
                continue
            if pid == policy_id or (in_group and group is not None and other is not None
                                    and other.exclusive_group == group):
                return row
        return None

    found = None
    if stage == "withdrawn":
        found = latest("accepted", in_group=True)
    elif stage == "cooldown":
        found = latest("rejected")
    elif stage == "no_answer":
        found = latest("no_answer", same_channel=True)
    elif stage == "unsubscribed":
        found = next((r for r in responses if r[3] == "unsubscribed" and r[1] == channel), None)
    if found is not None:
        day, ch, pid, out = found
        return f"{STAGE_TEXT[stage]} ({out} {pid} on {ch}, {day})"
    if stage != "candidates":
        return STAGE_TEXT[stage]
    if policy is not None and policy.channels and channel not in policy.channels:
        return f"policy {policy_id} may be offered only on {', '.join(policy.channels)}"
    return "already offered on a push channel earlier in the cycle month"


def _caps_reached(config: ExportConfig, prior: dict[str, int], placed: set[tuple[str, str]]) -> dict[str, str]:
    """The push channels on which the customer's contact caps were reached once the cycle was
    placed (the month's earlier push contacts ``prior`` per channel, plus the cycle's placements),
    each with the cap: the channel's contact_cap, or the monthly_cap across push channels."""
    placed_on: dict[str, int] = {}
    for channel, _ in placed:
        placed_on[channel] = placed_on.get(channel, 0) + 1
    total = sum(prior.values()) + len(placed)
    reached = {}
    for name, ch in config.channels.items():
        if ch.kind != PUSH:
            continue
        if ch.contact_cap is not None and prior.get(name, 0) + placed_on.get(name, 0) >= ch.contact_cap:
            reached[name] = f"contact_cap {ch.contact_cap} of this channel"
        elif config.monthly_cap is not None and total >= config.monthly_cap:
            reached[name] = f"monthly_cap {config.monthly_cap} across push channels"
    return reached


def _allocation_verdict(policy_id: str, channel: str, channels: list[str], recorded: set[str],
                        sent: set[tuple[str, str]], held: dict[tuple[str, str], str],
                        caps: dict[str, str]) -> tuple[str, str]:
    """A push offer past every per-customer stage: where the cycle's allocation placed it.

    The allocation proposes the offer to its surviving push channels in rule order; the one
    that took it (a `sent` or hold-out record of the cycle) is ``exported`` / ``holdout``; a
    channel before it was at the customer's contact cap (``contact_cap``, reached with the
    month's contacts and the cycle's placements: ``caps``) or full (``capacity``); the ones
    after it lost it to dedupe.
    """
    if not any(ch in recorded for ch in channels):
        return NOT_EXPORTED, "not exported yet: passes every per-customer stage"
    placed = next((ch for ch in channels if (ch, policy_id) in sent or (ch, policy_id) in held), None)
    if placed is not None and channel == placed:
        if (channel, policy_id) in held:
            return "holdout", HOLDOUT_TEXT[held[(channel, policy_id)]]
        return "exported", "on this push list"
    if placed is not None and channels.index(channel) > channels.index(placed):
        return "dedupe", f"placed on push channel {placed}"
    where = f"; placed on push channel {placed}" if placed is not None else ""
    if channel in caps:
        return "contact_cap", f"{STAGE_TEXT['contact_cap']} ({caps[channel]}){where}"
    if placed is None:
        return "capacity", "no room on any of its push channels in this cycle"
    return "capacity", f"this channel was full; placed on push channel {placed}"


def queries(config: ExportConfig, month: str, cycle_date: dt.date, *, has_plan: bool = True,
            salt: str = "salt") -> dict[str, Query]:
    """Every query export runs for this rules folder, month and cycle date, by name (for rendering
    and review: tests/test_spark_render.py renders each for Spark). ``salt`` stands for a
    ``mask: hash`` channel's secret, which is never read here."""
    p = ExportParams.of(config, month, cycle_date, has_plan=has_plan)
    found: list[Query] = [history_query("none", cycle_date), history_query("ours", cycle_date),
                          history_query("ingested", cycle_date),
                          group_alternatives_query(), list_window_query(cycle_date),
                          offers_query(p), offers_query(p, "13800000000"), candidates_query(p), screen_query(p),
                          screen_counts_query(), screened_query(), exclusion_query(), prior_query(p),
                          *allocation_setup_queries(), rounds_query(), *round_queries(p, 1),
                          *(q for q in (universal_query(p),) if q is not None), holdout_query(p),
                          customer_stages_query(p, "13800000000"), *cycle_records_queries("13800000000"),
                          customer_responses_query("13800000000", cycle_date), customer_prior_query("13800000000"),
                          *(stage_count_query(t) for t in COUNTED_TABLES),
                          stage_count_query("_x_drawn", exported_only=True)]
    scene = replace(p, made_rule=False, capacity=False, recorded_key_dedupe=True)  # a scene batch's variants
    found += [candidates_query(scene), allocation_setup_queries(scene)[0]]
    if config.channels:
        found.append(held_out_query(next(iter(config.channels))))
    for channel in config.channels.values():
        found.append(list_query(channel, config.columns(channel), salt if channel.mask == "hash" else None))
    if config.channels:
        first = next(iter(config.channels.values()))
        found += [Query("holdouts_table", HOLDOUTS_DDL),
                  *record_contact_queries(first.name, cycle_id(first, month, cycle_date), cycle_date, month)]
    by_name: dict[str, Query] = {}
    for q in found:
        name = q.name if q.name not in by_name else f"{q.name}:{len(by_name)}"
        by_name[name] = q
    return by_name


def _run(con: duckdb.DuckDBPyConnection, q: Query) -> duckdb.DuckDBPyConnection:
    """Execute one named query on DuckDB (its text is DuckDB's dialect: no rendering needed)."""
    return con.execute(q.sql, q.params) if q.params else con.execute(q.sql)


# -- the step ---------------------------------------------------------------------------------
@dataclass
class ChannelResult:
    channel: str
    stages: list[tuple[str, int]]
    rows: int = 0
    held_out: int = 0
    path: Path | None = None


@dataclass
class ExportResult:
    month: str
    cycle_date: dt.date
    channels: list[ChannelResult]
    out_dir: Path | None
    run_id: str = ""
    folder: Path | None = None  # the cycle folder the lists were published in (None: dry run, stdout)


def _register(con: duckdb.DuckDBPyConnection, config: ExportConfig, cycles: dict[str, str],
              replaced: set[str] | None = None, *, capacity: bool = True) -> None:
    """Channel, policy and cycle settings as small temp tables the stage SQL joins to.

    A policy's allowed channels are rows of _x_policy_channels (none: every channel), not a
    list column: the stages then need no list functions beyond reading an offer's own channels.
    Without ``capacity`` (scene batches) every channel is unlimited.
    """
    con.execute("CREATE OR REPLACE TEMP TABLE _x_channels (channel VARCHAR, kind VARCHAR, cycle VARCHAR, "
                "capacity BIGINT, contact_cap BIGINT, retry_days INTEGER)")
    if config.channels:
        con.executemany("INSERT INTO _x_channels VALUES (?, ?, ?, ?, ?, ?)",
                        [(c.name, c.kind, c.cycle, c.capacity if capacity else None, c.contact_cap,
                          config.channel_retry_days(c))
                         for c in config.channels.values()])
    con.execute("CREATE OR REPLACE TEMP TABLE _x_policies (policy_id VARCHAR, exclusive_group VARCHAR, "
                "cooldown_days INTEGER, withdraw_days INTEGER, valid_to DATE, holdout DOUBLE)")
    con.execute("CREATE OR REPLACE TEMP TABLE _x_policy_channels (policy_id VARCHAR, channel VARCHAR)")
    if config.policies:
        con.executemany("INSERT INTO _x_policies VALUES (?, ?, ?, ?, ?, ?)",
                        [(p.id, p.exclusive_group, p.cooldown_days, p.withdraw_days, p.valid_to, p.holdout)
                         for p in config.policies.values()])
        allowed = [(p.id, channel) for p in config.policies.values() for channel in dict.fromkeys(p.channels)]
        if allowed:
            con.executemany("INSERT INTO _x_policy_channels VALUES (?, ?)", allowed)
    # replaced: the channel's list is written by this run, so its cycle's earlier records are
    # replaced, not history (a daily run sees the monthly channels' records as history).
    con.execute("CREATE OR REPLACE TEMP TABLE _x_cycle (channel VARCHAR, cycle VARCHAR, replaced BOOLEAN)")
    if cycles:
        con.executemany("INSERT INTO _x_cycle VALUES (?, ?, ?)",
                        [(name, cycle, replaced is None or name in replaced) for name, cycle in cycles.items()])
    if table_exists(con, "dnd"):
        con.execute("CREATE OR REPLACE TEMP VIEW _x_dndlist AS SELECT msisdn, channel FROM dnd")
    else:
        con.execute("CREATE OR REPLACE TEMP VIEW _x_dndlist AS SELECT CAST(NULL AS VARCHAR) AS msisdn, "
                    "CAST(NULL AS VARCHAR) AS channel WHERE false")


def _register_list_tables(con: duckdb.DuckDBPyConnection, config: ExportConfig, cycle_date: dt.date) -> None:
    """What only the lists read (not explain's stages): the policy groups' members
    (_x_group_members, with their place in the group), from which _x_group_alternatives is built
    once, and the recent-contacts window of the cycle (_x_list_window)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _x_groups (group_id VARCHAR, group_name VARCHAR)")
    con.execute("CREATE OR REPLACE TEMP TABLE _x_group_members (group_id VARCHAR, pos INTEGER, policy_id VARCHAR, "
                "policy_name VARCHAR)")
    if config.groups:
        con.executemany("INSERT INTO _x_groups VALUES (?, ?)", [(g.id, g.name) for g in config.groups.values()])
        con.executemany("INSERT INTO _x_group_members VALUES (?, ?, ?, ?)",
                        [(g.id, pos, pid, config.policies[pid].name if pid in config.policies else pid)
                         for g in config.groups.values() for pos, pid in enumerate(g.policies, 1)])
    _run(con, group_alternatives_query())
    _run(con, list_window_query(cycle_date))


def _history_view(con: duckdb.DuckDBPyConnection, cycle_date: dt.date) -> None:
    """Contact history as the contact policy sees it: everything except this cycle's own records
    (the cycles of the channels of _x_cycle this run writes).

    Read only (a dry run opens the database read-only, and nothing may change outside the
    write transaction): the bookkeeping columns are added later, inside it, when missing.
    (Earlier cycles' hold-outs need no reading: the month's draw holds the same pairs out again.)
    """
    if not table_exists(con, "contact_history"):
        kind = "none"
    elif set(HISTORY_BOOKKEEPING) <= set(table_columns(con, CONTACT_HISTORY_TABLE)):
        kind = "ours"
    else:  # only ingested history so far: nothing of ours to leave out
        kind = "ingested"
    _run(con, history_query(kind, cycle_date))


def _ensure_history_columns(con: duckdb.DuckDBPyConnection) -> None:
    """contact_history keeps, beside the contract's columns, which cycle and tool wrote a row."""
    if not table_exists(con, "contact_history"):
        con.execute("CREATE TABLE contact_history (msisdn VARCHAR, contact_date DATE, channel VARCHAR, "
                    "policy_id VARCHAR, outcome VARCHAR)")
    cols = set(table_columns(con, CONTACT_HISTORY_TABLE))
    for name in HISTORY_BOOKKEEPING:
        if name not in cols:
            con.execute(f"ALTER TABLE contact_history ADD COLUMN {name} VARCHAR")


def cycle_id(channel: Channel, month: str, cycle_date: dt.date) -> str:
    """The id of a cycle's records (contact_history.cycle, holdouts.cycle, the manifest): its ISO date.

    The same for every channel, daily or monthly: a cycle is the export on one date, and its
    folder ``<out>/<month>/<cycle-date>/`` is named by it. (Databases from before cycles were
    kept carry 'YYYY-MM' for monthly records: another, earlier cycle, never replaced by a new one.)
    """
    return cycle_date.isoformat()


def cycle_ids(config: ExportConfig, month: str, cycle_date: dt.date) -> dict[str, str]:
    """Every configured channel's cycle id for this cycle (run_export and explain alike)."""
    return {name: cycle_id(ch, month, cycle_date) for name, ch in config.channels.items()}


def cycle_folder(out_dir: Path, month: str, cycle_date: dt.date) -> Path:
    """Where one cycle's lists, funnel.json and manifest.json live: ``<out>/<month>/<cycle-date>/``."""
    return Path(out_dir) / month / cycle_date.isoformat()


def run_export(
    db: Database,
    project: Project,
    month: str,
    *,
    out_dir: Path | None,
    cycle_date: dt.date,
    only_channel: str | None = None,
    only_cycle: str | None = None,
    fmt: str | None = None,
    dry_run: bool = False,
    stdout: bool = False,
    reporter: Reporter = QUIET,
) -> ExportResult:
    """Run the contact policy for one cycle and write (or, dry, only count) the target lists."""
    config = ExportConfig.of(project)
    matrices_dir = project.root
    if only_cycle is not None and only_cycle not in ("daily", "monthly"):
        raise MktoolError(f"cycle must be daily or monthly, got '{only_cycle}'")
    if only_channel is not None and only_channel not in config.channels:
        raise MktoolError(f"unknown channel '{only_channel}' (channels.yaml has: {', '.join(config.channels)})")
    if fmt is not None:
        check_format(fmt)
    if not dry_run:  # a missing hash salt is refused before any work, not after the lists are computed
        for name, ch in config.channels.items():
            if only_channel in (None, name) and only_cycle in (None, ch.cycle):
                config.salt(ch)
    con = db.c
    db.require_month("customer_view", month, "score")
    db.require_month("recommendations", month, "matrix")
    view_build = require_fresh_view(con, month)  # never lists from a view older than its inputs
    require_built_on_view(con, "matrix", "recommendations", month, view_build)
    has_plan = table_exists(con, "plan_recommendations") and bool(
        con.execute("SELECT 1 FROM plan_recommendations WHERE month = ? LIMIT 1", [month]).fetchone())
    if has_plan:
        require_built_on_view(con, "plan", "plan_recommendations", month, view_build)
    if not has_plan:
        reporter.warn(f"no plan recommendations for {month}: run `mktool plan --month {month}` to include plan changes")
    cycles = cycle_ids(config, month, cycle_date)
    written = {name for name, ch in config.channels.items()
               if only_channel in (None, name) and only_cycle in (None, ch.cycle)}
    with reporter.step(f"contact policy for {month} (cycle {cycle_date})"):
        counts = contact_policy(con, config, ExportParams.of(config, month, cycle_date, has_plan=has_plan), cycles,
                                 written)

    results: list[ChannelResult] = []
    for name, channel in config.channels.items():
        stages = [(stage, counts.get((name, stage), 0)) for stage in CHANNEL_STAGES[channel.kind]]
        results.append(ChannelResult(name, stages))
    result = ExportResult(month, cycle_date, results, out_dir, run_id=uuid.uuid4().hex[:12])
    if dry_run:
        return result
    selected = [r for r in results if only_channel in (None, r.channel)
                and only_cycle in (None, config.channels[r.channel].cycle)]
    if not selected:
        raise MktoolError(f"channel {only_channel} is not a {only_cycle} channel (see channels.yaml)")
    if stdout:
        assert only_channel is not None
        _write_stdout(db, selected[0], config, month, cycle_date, cycles, fmt)
    else:
        assert out_dir is not None
        options = {"channel": only_channel, "cycle": only_cycle, "format": fmt, "date": cycle_date.isoformat(),
                   "out": str(out_dir.resolve())}
        _write_all(db, result, selected, config, month, cycle_date, cycles, fmt, matrices_dir, reporter, options)
    return result


def contact_policy(con: duckdb.DuckDBPyConnection, config: ExportConfig, p: ExportParams,
                   cycles: dict[str, str], written: set[str], *, offers: Query | None = None,
                   keep: bool = False) -> dict[tuple[str, str], int]:
    """Run the stages candidates … exported into the temp tables; distinct customers per (channel, stage)
    (a pop-up's allocation stages are never counted: its funnel has none).

    Each filtering stage is built from the previous one's table, counted, and the previous one
    dropped. The allocation re-executes the same two round statements with the round bound.
    ``offers`` builds _x_offers instead of the month's recommendations (a scene batch's triggers,
    mktool.scenedelivery); ``keep`` keeps the stage tables (_x_screened, _x_exclusion, _x_choices,
    _x_proposed, _x_capped, _x_placed) for the caller to read which stage removed each offer.
    """
    _register(con, config, cycles, written, capacity=p.capacity)
    _register_list_tables(con, config, p.cycle_date)
    _history_view(con, p.cycle_date)
    _run(con, offers if offers is not None else offers_query(p))
    counts: dict[tuple[str, str], int] = {}
    _run(con, candidates_query(p))
    _run(con, screen_query(p))
    con.execute("DROP TABLE _x_candidates")
    for channel, *stage_counts in _run(con, screen_counts_query()).fetchall():
        for stage, n in zip(("candidates", *SCREEN_STAGES), stage_counts):
            counts[(channel, stage)] = int(n)
    _run(con, screened_query())
    if not keep:
        con.execute("DROP TABLE _x_screened")
    _run(con, exclusion_query())
    counts.update(_count_stage(con, "exclusion", stage_count_query("_x_exclusion")))
    con.execute("DROP TABLE _x_no_answer")
    _run(con, prior_query(p))
    for query in allocation_setup_queries(p):
        _run(con, query)
    rounds = _run(con, rounds_query()).fetchone()[0]  # type: ignore[index]
    for round_no in range(1, int(rounds) + 1):
        for query in round_queries(p, round_no):
            _run(con, query)
    counts.update(_count_stage(con, "dedupe", stage_count_query("_x_proposed")))
    counts.update(_count_stage(con, "contact_cap", stage_count_query("_x_capped")))
    counts.update(_count_stage(con, "capacity", stage_count_query("_x_placed")))
    for table in ("_x_prior",) if keep else ("_x_choices", "_x_proposed", "_x_capped", "_x_prior"):
        con.execute(f"DROP TABLE {table}")
    universal = universal_query(p)
    if universal is not None:
        _run(con, universal)
    _run(con, holdout_query(p))
    con.execute("DROP TABLE IF EXISTS _x_universal")
    if not keep:
        con.execute("DROP TABLE _x_placed")
        con.execute("DROP TABLE _x_exclusion")
    exported = stage_count_query("_x_drawn", exported_only=True)
    after_holdout = _count_stage(con, "holdout", exported)  # what the holdout leaves is what is exported
    counts.update(after_holdout)
    counts.update({(channel, "exported"): n for (channel, _), n in after_holdout.items()})
    return counts


def _count_stage(con: duckdb.DuckDBPyConnection, stage: str, query: Query) -> dict[tuple[str, str], int]:
    """Distinct customers per channel in one stage's table (:func:`stage_count_query`)."""
    return {(channel, stage): int(n) for channel, n in _run(con, query).fetchall()}


def _channel_query(channel: Channel, columns: tuple[str, ...], salt: str | None) -> str:
    return list_query(channel, columns, salt).sql


def _write_stdout(db: Database, ch: ChannelResult, config: ExportConfig, month: str, cycle_date: dt.date,
                  cycles: dict[str, str], fmt: str | None) -> None:
    """One list to standard output: complete in a temporary file, streamed whole, then recorded as sent.

    A list piped to a gateway is contacts made like any other, so its rows are written back to
    contact_history (and its funnel recorded) too, but only once every byte has been written and
    flushed: a consumer that stops reading (``| head``, a gateway that dies) makes the write fail
    with a broken pipe, and then nothing is recorded and the command exits 1.
    """
    con = db.c
    channel = config.channels[ch.channel]
    ext = fmt or channel.format
    with tempfile.TemporaryDirectory(prefix="mktool-out-") as tmpdir:
        path = Path(tmpdir) / f"{ch.channel}.{ext}"
        ch.rows = copy_to_file(con, _channel_query(channel, config.columns(channel), config.salt(channel)), path, ext)
        ch.held_out = _held_out(con, ch.channel)
        try:
            stream_file(path)
        except MktoolError as exc:
            raise MktoolError(f"{exc.message}; nothing was recorded as sent (contact_history and the funnel are as "
                              "before)", hint="re-run the export when the consumer is ready") from None
        with db.transaction():
            record_funnel(con, month, f"channel:{ch.channel}", ch.stages, cycles[ch.channel])
            _record_contacts(con, [ch.channel], cycles, cycle_date, month)


def _held_out(con: duckdb.DuckDBPyConnection, channel: str) -> int:
    return int(_run(con, held_out_query(channel)).fetchone()[0])  # type: ignore[index]


@dataclass
class FolderChanges:
    """How one publish changes its cycle folder beyond the lists it writes (see :func:`_folder_changes`)."""

    carried: dict[str, dict[str, Any]]  # lists of channels not exported now: kept, with their manifest entries
    stale: list[str]  # files that are no longer part of the folder: removed in the same publish
    forgotten: list[tuple[str, str]]  # (channel, cycle) whose records go with their removed list


def _folder_changes(con: duckdb.DuckDBPyConnection, folder: Path, selected: list[ChannelResult], config: ExportConfig,
                    fmt: str | None, cycles: dict[str, str]) -> FolderChanges:
    """The cycle folder after this publish holds exactly what its new manifest.json names.

    Only this cycle's folder (``<out>/<month>/<cycle-date>/``) is looked at: a re-run of the same
    cycle date with ``--channel X`` keeps that cycle's other lists; other cycles are other folders.
    A list of a channel exported now replaces the old one (and its old file in another format
    goes); a list of a configured channel not exported now (``--channel``, ``--cycle``) stays as
    it was, with its entry from the previous manifest; a list of a channel that is no longer
    configured goes, and when it belonged to a cycle this run re-runs, its contact records go
    with it (re-running a cycle replaces its own files and records).
    """
    try:
        old_manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # first publish here, or an unreadable manifest: only the files tell
        old_manifest = {}
    previous = old_manifest.get("outputs") if isinstance(old_manifest, dict) else None
    previous = previous if isinstance(previous, dict) else {}
    old_run = old_manifest.get("run_id") if isinstance(old_manifest, dict) else None
    exported = {ch.channel: f"{ch.channel}.{fmt or config.channels[ch.channel].format}" for ch in selected}
    new_names = set(exported.values())
    carried: dict[str, dict[str, Any]] = {}
    stale: set[str] = set()
    forgotten: set[tuple[str, str]] = set()
    this_run_cycles = set(cycles.values())
    for name, entry in previous.items():
        if not isinstance(entry, dict) or name in new_names or not (folder / name).is_file():
            continue
        channel = str(entry.get("channel") or name.split(".")[0])
        if channel in config.channels and channel not in exported:
            carried[name] = {**entry, "run_id": entry.get("run_id", old_run)}
        else:
            stale.add(name)
            if channel not in config.channels and entry.get("cycle") in this_run_cycles:
                forgotten.add((channel, str(entry["cycle"])))
    # Lists no manifest names (a folder written before manifests listed every file).
    for channel in config.channels:
        for ext in FORMATS:
            name = f"{channel}.{ext}"
            if name in new_names or name in carried or name in stale or not (folder / name).is_file():
                continue
            if channel in exported:
                stale.add(name)
            else:
                carried[name] = {"channel": channel, "rows": _count_rows(con, folder / name),
                                 "sha256": file_sha256(folder / name)}
    return FolderChanges(carried, sorted(stale), sorted(forgotten))


def _count_rows(con: duckdb.DuckDBPyConnection, path: Path) -> int | None:
    """Rows of a list no manifest describes (None when DuckDB cannot read it as its format)."""
    reader = {".csv": "read_csv(?, header = true, all_varchar = true)",
              ".jsonl": "read_json(?, format = 'newline_delimited')", ".parquet": "read_parquet(?)"}[path.suffix]
    try:
        return int(con.execute(f"SELECT count(*) FROM {reader}", [str(path)]).fetchone()[0])  # type: ignore[index]
    except duckdb.Error:
        return None


def _forget_contacts(con: duckdb.DuckDBPyConnection, forgotten: list[tuple[str, str]], month: str) -> None:
    """The records of a list this publish removes for good (its channel left channels.yaml)."""
    if not forgotten:
        return
    _ensure_history_columns(con)
    ensure_funnel_cycle(con)
    for channel, cycle in forgotten:
        con.execute("DELETE FROM contact_history WHERE recorded_by = ? AND cycle = ? AND channel = ? "
                    "AND outcome = 'sent'", [RECORDED_BY, cycle, channel])
        if table_exists(con, "holdouts"):
            con.execute("DELETE FROM holdouts WHERE cycle = ? AND channel = ?", [cycle, channel])
        con.execute("DELETE FROM funnel_counts WHERE month = ? AND funnel = ? AND cycle = ?",
                    [month, f"channel:{channel}", cycle])


MANIFEST = "manifest.json"
FUNNEL_FILE = "funnel.json"


def _write_all(db: Database, result: ExportResult, selected: list[ChannelResult], config: ExportConfig, month: str,
               cycle_date: dt.date, cycles: dict[str, str], fmt: str | None, matrices_dir: Path,
               reporter: Reporter, options: dict[str, Any]) -> None:
    """Publish the cycle's lists, funnel.json and manifest.json with their contacts as one unit (mktool.publish).

    The unit is the cycle folder ``<out>/<month>/<cycle-date>/``: staged and fsynced under hidden
    names, journaled, committed with the write-back, then renamed into place; an interruption
    anywhere is finished or undone by the next command. The lock and the recovery are the cycle
    folder's: another cycle's folder is never read or written. Then the ``latest`` pointers move
    to the newest cycle (:func:`mktool.publish.point_latest`).
    """
    assert result.out_dir is not None
    final_dir = cycle_folder(result.out_dir, month, cycle_date)
    made = [p for p in (final_dir.parent, final_dir) if not p.exists()]  # folders this publish creates
    with contextlib.ExitStack() as folder_held:
        try:
            final_dir.mkdir(parents=True, exist_ok=True)
            folder_held.enter_context(folder_lock(final_dir))
        except OSError as exc:
            raise MktoolError(f"cannot write the lists: {os_error_text(exc)}", file=str(final_dir)) from None
        try:
            _publish(db, result, selected, config, month, cycle_date, cycles, fmt, matrices_dir, options, final_dir)
        except BaseException:
            for folder in reversed(made):  # undone before its commit: no empty cycle folder left behind
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty (a committed publish's staged files keep it)
            raise
    result.folder = final_dir
    try:
        point_latest(final_dir)
    except OSError as exc:
        raise MktoolError(f"the lists of run {result.run_id} are published in {final_dir}, but the latest pointer "
                          f"could not be updated: {os_error_text(exc)}", file=str(final_dir.parent / LATEST),
                          hint="fix the folder (a file or folder named latest, permissions); the next export "
                               "points it at the newest cycle") from None


def _publish(db: Database, result: ExportResult, selected: list[ChannelResult], config: ExportConfig, month: str,
             cycle_date: dt.date, cycles: dict[str, str], fmt: str | None, matrices_dir: Path,
             options: dict[str, Any], final_dir: Path) -> None:
    """The publish itself, with the folder lock held (see :func:`_write_all`)."""
    con = db.c
    try:
        recover_folder(con, final_dir, db.path)
        pub = Publication(final_dir, db.path, result.run_id, {ch.channel: cycles[ch.channel] for ch in selected})
    except OSError as exc:
        raise MktoolError(f"cannot write the lists: {os_error_text(exc)}", file=str(final_dir)) from None
    names = [ch.channel for ch in selected]
    published = (f"Interrupted after the export had committed: the contacts of run {result.run_id} are recorded and "
                 f"its lists are in place in {final_dir}.")
    try:
        with contextlib.ExitStack() as critical:
            for ch in selected:
                channel = config.channels[ch.channel]
                name = f"{ch.channel}.{fmt or channel.format}"
                rows_sql = _channel_query(channel, config.columns(channel), config.salt(channel))
                ch.rows = int(con.execute(f"COPY ({rows_sql}) TO {quote_literal(str(pub.path(name)))} "
                                          f"({COPY_OPTIONS[fmt or channel.format]})").fetchone()[0])  # type: ignore[index]
                ch.held_out = _held_out(con, ch.channel)
                ch.path = final_dir / name
                pub.add(name)
                fault("write_list")
            changes = _folder_changes(con, final_dir, selected, config, fmt, cycles)
            pub.remove = changes.stale
            with db.transaction():
                for ch in selected:  # only the lists written now: funnel.json must match the files beside it
                    record_funnel(con, month, f"channel:{ch.channel}", ch.stages, cycles[ch.channel])
                _record_contacts(con, names, cycles, cycle_date, month)
                _forget_contacts(con, changes.forgotten, month)
                # this cycle's channels: the lists written now and the ones of the same cycle kept beside them
                folder_channels = {*names, *(str(e["channel"]) for e in changes.carried.values() if e.get("channel"))}
                funnel_doc = funnel_document(con, month, cycle_date, channels=folder_channels)
                pub.write_text(FUNNEL_FILE, json.dumps(funnel_doc, ensure_ascii=False, indent=2) + "\n")
                fault("write_funnel")
                manifest = _manifest(con, result, selected, pub, matrices_dir, funnel_doc, changes.carried, cycles,
                                     options)
                pub.write_text(MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=2, default=str) + "\n")
                fault("write_manifest")
                critical.enter_context(deferred_interrupt(published))  # from here the publish finishes
                record_commit(con, pub.prepare())
                fault("before_commit")
            pub.complete(con)
    except Interrupted:
        raise
    except BaseException as exc:
        raise_publish_failure(
            con, pub, result.run_id, exc, final_dir,
            unwritten=lambda detail: (f"cannot write the lists: {detail}; nothing was recorded (contacts, funnels) "
                                      "and no list changed"),
            interrupted=(f"Interrupted after the export had committed the contacts of run {result.run_id}; its lists "
                         f"are put in place in {final_dir} by the next mktool command on this database "
                         "(e.g. `mktool status`)."),
            unplaced=lambda error: _unfinished_error(result.run_id, final_dir, error))


def _unfinished_error(run_id: str, folder: Path, exc: BaseException) -> MktoolError:
    detail = os_error_text(exc)
    return MktoolError(f"the contacts of run {run_id} were committed but its lists could not all be put in place "
                       f"({detail})", file=str(folder),
                       hint="fix the folder (space, permissions), then run any mktool command on this database "
                            "(e.g. `mktool status`): it puts them in place")


def _record_contacts(con: duckdb.DuckDBPyConnection, channels: list[str], cycles: dict[str, str], cycle_date: dt.date,
                     month: str) -> None:
    """Write back this cycle's exported rows as `sent` contacts, replacing the cycle's earlier records."""
    _ensure_history_columns(con)
    written = [record_contact_queries(name, cycles[name], cycle_date, month) for name in channels]
    for forget_sent, record_sent, _, _ in written:
        _run(con, forget_sent)
        _run(con, record_sent)
    ensure_holdouts_columns(con)
    _run(con, Query("holdouts_table", HOLDOUTS_DDL))
    for _, _, forget_holdouts, record_holdouts in written:
        _run(con, forget_holdouts)
        _run(con, record_holdouts)


def funnel_document(con: duckdb.DuckDBPyConnection, month: str, cycle_date: dt.date | None = None, *,
                    channels: Collection[str] | None = None) -> dict[str, Any]:
    """The funnels of a month: plan first, then the matrices, then the channels, then (without a
    date) the response funnels ``mktool evaluate`` recorded (``response:<channel>``: pairs, not customers).

    With ``cycle_date``: funnel.json of that cycle, ``{"month": M, "cycle_date": D, "funnels":
    {name: [{"stage", "count"}, ...]}}``, the month's step funnels and the channel funnels of that
    cycle only (of ``channels`` only, when given: the lists in the cycle's folder); never the
    response funnels (they are the month's, evaluated after its cycles). Without: the
    step funnels and every cycle's channel funnels, each named ``channel:<name>@<cycle-date>``
    (``cycle_date`` null), and the response funnels; a channel funnel recorded before cycles had
    their own keeps its bare name.
    """
    has_cycle = funnel_has_cycle(con)
    cycle_col = "cycle" if has_cycle else "CAST(NULL AS VARCHAR)"
    params: list[Any] = [month]
    where = "month = ?"
    if cycle_date is not None:
        where += (f" AND funnel NOT LIKE '{RESPONSE_FUNNEL_PREFIX}%'"
                  f" AND (funnel NOT LIKE 'channel:%' OR {cycle_col} = ?)")
        params.append(cycle_date.isoformat())
    rows = con.execute(
        f"""SELECT funnel, stage, count, {cycle_col} AS cycle FROM funnel_counts WHERE {where}
            ORDER BY CASE WHEN funnel = 'plan' THEN 0 WHEN funnel LIKE 'channel:%' THEN 2
                          WHEN funnel LIKE '{RESPONSE_FUNNEL_PREFIX}%' THEN 3 ELSE 1 END,
                     cycle NULLS FIRST, funnel, stage_no""",
        params,
    ).fetchall()
    funnels: dict[str, list[dict[str, Any]]] = {}
    for funnel, stage, count, cycle in rows:
        is_channel = funnel.startswith("channel:")
        if is_channel and channels is not None and funnel[len("channel:"):] not in channels:
            continue
        name = f"{funnel}@{cycle}" if is_channel and cycle and cycle_date is None else funnel
        funnels.setdefault(name, []).append({"stage": stage, "count": int(count)})
    return {"month": month, "cycle_date": cycle_date.isoformat() if cycle_date else None, "funnels": funnels}


def funnel_cycles(con: duckdb.DuckDBPyConnection, month: str) -> list[str]:
    """The cycle dates of the month whose channel funnels are recorded, oldest first."""
    if not funnel_has_cycle(con):
        return []
    return [r[0] for r in con.execute("SELECT DISTINCT cycle FROM funnel_counts WHERE month = ? AND cycle IS NOT NULL "
                                      "AND funnel LIKE 'channel:%' ORDER BY cycle", [month]).fetchall()]


def _live_loads(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """The loads the database's rows still come from: (table, file, sha256, rows, months).

    A later load replaces earlier ones by the table's reload rule (SPEC §2): for a monthly
    table the latest load of each month, for a snapshot table (plans, dnd) its latest load;
    upserted tables (contact_history, events) keep every load's rows, so every load is listed.
    A file loaded again is listed once, as last loaded.
    """
    rows = con.execute("SELECT load_id, table_name, file, sha256, rows, months FROM ingest_log "
                       f"ORDER BY loaded_at, {load_order(con)}").fetchall()
    latest_load: dict[tuple[str, str | None], str] = {}  # (table, month or None) → the load that last replaced it
    for load_id, table, _, _, _, months in rows:
        reload = TABLES[table].reload if table in TABLES else "upsert"
        if reload == "month":
            for m in months or []:
                latest_load[(table, m)] = load_id
        elif reload == "snapshot":
            latest_load[(table, None)] = load_id
    last_of_file = {row[2]: row for row in rows}  # a file loaded again: its last load
    live = []
    for load_id, table, file, sha, n, months in last_of_file.values():
        reload = TABLES[table].reload if table in TABLES else "upsert"
        if reload == "month":
            keep = any(latest_load.get((table, m)) == load_id for m in months or [])
        elif reload == "snapshot":
            keep = latest_load.get((table, None)) == load_id
        else:
            keep = True
        if keep:
            live.append((table, file, sha, n, months))
    return sorted(live, key=lambda r: (r[0], r[1]))


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30,
                              check=False, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None
    return done.stdout if done.returncode == 0 else None


def rules_provenance(matrices_dir: Path) -> dict[str, Any]:
    """The rules folder, and when it is in a git repository its commit and whether it has uncommitted changes.

    ``dirty`` looks at the rules folder only (untracked rule files count): the lists were made
    from the files as they are on disk, which the commit alone describes only when clean.
    """
    folder = Path(matrices_dir).resolve()
    doc: dict[str, Any] = {"folder": str(folder), "git": None}
    root = _git(folder, "rev-parse", "--show-toplevel")
    if root is None:
        return doc
    commit = _git(folder, "rev-parse", "--verify", "--quiet", "HEAD")
    status = _git(folder, "status", "--porcelain", "--untracked-files=all", "--", ".")
    doc["git"] = {"repository": root.strip(), "commit": commit.strip() if commit else None,
                  "dirty": None if status is None else bool(status.strip())}
    return doc


def _rules_doc(matrices_dir: Path, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The rules folder of this export, and whether the matrix step read the same files.

    export itself reads channels.yaml, policies.yaml and plan.yaml now; the recommendations were
    computed by ``matrix`` earlier, maybe from another folder or from files edited since. Then
    ``matrix_step_same_rules`` is false and ``steps.matrix.settings.rules`` names what it read.
    """
    doc = rules_provenance(matrices_dir)
    used = steps.get("matrix", {}).get("settings", {}).get("rules")
    if isinstance(used, dict):
        folder = Path(matrices_dir).resolve()
        now = {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*.yaml")) if p.is_file()}
        doc["matrix_step_same_rules"] = used.get("folder") == str(folder) and used.get("files") == now
    return doc


def _manifest(con: duckdb.DuckDBPyConnection, result: ExportResult, selected: list[ChannelResult], pub: Publication,
              matrices_dir: Path, funnel_doc: dict[str, Any], carried: dict[str, dict[str, Any]],
              cycles: dict[str, str], options: dict[str, Any]) -> dict[str, Any]:
    """What the folder holds and everything it was made from (SPEC §6, issue 10 "provenance that is true")."""
    loads = _live_loads(con)
    rule_files = sorted(p for p in matrices_dir.rglob("*.yaml") if p.is_file())
    steps = step_settings(con, result.month)
    outputs = {
        ch.path.name: {"channel": ch.channel, "cycle": cycles[ch.channel], "run_id": result.run_id, "rows": ch.rows,
                       "held_out": ch.held_out, "sha256": pub.files[ch.path.name]}
        for ch in selected if ch.path is not None
    }
    outputs.update(carried)
    return {
        "run_id": result.run_id,
        "month": result.month,
        "cycle_date": result.cycle_date.isoformat(),
        "mktool_version": __version__,
        "created_at": dt.datetime.now().replace(microsecond=0).isoformat(),
        "engine": engine_info(con),
        "engines": engine_versions(),
        "command_line": command_line(),
        "export": options,
        "overrides": {step: info["overrides"] for step, info in steps.items() if info["overrides"]},
        "steps": steps,
        "rules": _rules_doc(matrices_dir, steps),
        "loads": [{"table": t, "file": f, "sha256": s, "rows": r, "months": m} for t, f, s, r, m in loads],
        "rule_files": {str(p.relative_to(matrices_dir)): file_sha256(p) for p in rule_files},
        "outputs": dict(sorted(outputs.items())),
        "funnels": funnel_doc["funnels"],
    }
