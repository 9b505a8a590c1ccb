"""`mktool export`: per-channel target lists under the contact policy (SPEC §6).

Offers (the month's ranked recommendations and plan recommendations) become one row per
customer × policy × candidate channel, then pass, in this order, each a stage of the
channel's funnel (distinct customers):

    candidates → dnd → unsubscribed → cooldown → contact_cap → exclusion
               → dedupe → capacity → holdout → exported

Every stage is one set-based DuckDB statement over the previous stage's table. Dedupe and
capacity are one allocation: offers are placed in rounds, round r proposing each still
unplaced offer to its r-th surviving channel (rule order); a channel takes the proposals it
has room for, best first (rank, then value_score, then a hash tie-break). An offer therefore
goes to the first of its channels that still has room, and to one channel only.

Candidates leave out an offer (customer × policy) already made, or held out of a daily cycle,
earlier in the cycle month: a daily run neither repeats yesterday's offers nor moves them to
another channel. The cool-down is inclusive (30 days: a rejection 30 days before the cycle
date still blocks); caps count contacts per calendar month of the cycle date; capacity counts
offers (rows) per cycle.

Exported rows (also a list streamed with ``--out -``) are written back to ``contact_history``
(outcome ``sent``) so the next cycle's caps and cool-downs see them; re-running a cycle
replaces its own records and files. Contacts are recorded if and only if their lists were
delivered: the lists, funnel.json and manifest.json are published with the write-back as one
unit (staged, journaled, committed, renamed: mktool.publish), and a list streamed with
``--out -`` is recorded only once all of it was written. manifest.json lists every file of the
folder after the publish (a list of a channel not exported now keeps its entry; an old file no
longer part of the folder is removed in the same publish) and everything the lists were made
from: engine versions, the command line, the steps' overrides, the rules folder and its commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from mktool import __version__
from mktool.console import QUIET, Reporter
from mktool.contract import TABLES
from mktool.database import Database, command_line, record_funnel, step_settings, table_columns, table_exists
from mktool.dialect import money, round_half_away
from mktool.errors import Interrupted, MktoolError
from mktool.freshness import require_built_on_view, require_fresh_view
from mktool.output import COPY_OPTIONS, FORMATS, check_format, copy_to_file, file_sha256, stream_file
from mktool.planconfig import PlanConfig, script_sql
from mktool.project import Project
from mktool.publish import (
    Publication,
    deferred_interrupt,
    fault,
    folder_lock,
    is_committed,
    os_error_text,
    record_commit,
    recover_folder,
)
from mktool.rules import Channel, Policy
from mktool.schema import EXPORT_STAGES, MONEY_COLUMNS, RATE_COLUMNS, TARGET_COLUMNS
from mktool.sqlquote import quote_literal
from mktool.versions import engine_versions

STAGES = EXPORT_STAGES
DEFAULT_COOLDOWN_DAYS = 30
RECORDED_BY = "mktool"


# -- configuration ----------------------------------------------------------------------------
@dataclass
class ExportConfig:
    """What export needs from the project (the rules folder, validated once, and its salts)."""

    channels: dict[str, Channel]
    policies: dict[str, Policy]
    cooldown_days: int
    monthly_cap: int | None
    plan: PlanConfig
    project: Project

    @classmethod
    def of(cls, project: Project) -> ExportConfig:
        contact = project.channels.contact_policy
        return cls(
            channels=project.channels.channels,
            policies=project.policies,
            cooldown_days=contact.cooldown_days if contact.cooldown_days is not None else DEFAULT_COOLDOWN_DAYS,
            monthly_cap=contact.monthly_cap,
            plan=project.plan,
            project=project,
        )

    def salt(self, channel: Channel) -> str | None:
        """The salt of a ``mask: hash`` channel, read from the environment when the project loaded."""
        return self.project.salt(channel)

    def columns(self, channel: Channel) -> tuple[str, ...]:
        return tuple(channel.columns) if channel.columns else TARGET_COLUMNS


# -- SQL: one named statement per stage -------------------------------------------------------
def draw_sql(*parts: str) -> str:
    """A deterministic uniform draw in [0, 1) from a hash of the parts (md5: same on every engine).

    Spark: ``conv(substr(md5(x), 1, 8), 16, 10) / 4294967296``.
    """
    key = " || '|' || ".join(parts)
    return f"(CAST(('0x' || substr(md5({key}), 1, 8)) AS BIGINT) / 4294967296.0)"


OFFERS_SQL = """
-- Matrix recommendations and plan recommendations as offers with their candidate channels.
CREATE OR REPLACE TEMP TABLE _x_offers AS
WITH rec AS (
    SELECT r.msisdn, r.month, r.rank, r.matrix, r.rule_id, r.policy_id, r.policy_name, r.script,
           CAST(NULL AS VARCHAR) AS current_plan_id, CAST(NULL AS VARCHAR) AS plan_id,
           CAST(NULL AS DOUBLE) AS new_rental, CAST(NULL AS DOUBLE) AS new_voice_overage,
           CAST(NULL AS DOUBLE) AS new_data_overage, CAST(NULL AS DOUBLE) AS new_total,
           CAST(NULL AS DOUBLE) AS current_total, CAST(NULL AS DOUBLE) AS total_fee_change,
           CAST(NULL AS DOUBLE) AS rental_change, r.channels
    FROM {recommendations} r WHERE r.month = $month
),
last_rank AS (SELECT msisdn, max(rank) AS max_rank FROM rec GROUP BY msisdn),
plan AS (
    SELECT p.msisdn, p.month, CAST(coalesce(l.max_rank, 0) + p.rank AS INTEGER) AS rank,
           'plan' AS matrix, 'plan_rank_' || CAST(p.rank AS VARCHAR) AS rule_id,
           $plan_policy AS policy_id, $plan_policy_name AS policy_name,
           {plan_script} AS script,
           p.current_plan_id, p.plan_id, p.new_rental, p.new_voice_overage, p.new_data_overage, p.new_total,
           p.current_total, p.total_fee_change, p.rental_change, CAST($plan_channels AS VARCHAR[]) AS channels
    FROM {plan_recommendations} p LEFT JOIN last_rank l USING (msisdn)
    WHERE p.month = $month
)
-- cust_id is msisdn's integer twin (cheaper to partition and count): the view row's rowid.
-- offer_id (an integer key per offer) is this table's own rowid. No output depends on their
-- values; rowids cost nothing, where row_number() OVER () numbered rows on a single thread.
SELECT o.*, v.value_score, v.cust_id
FROM (SELECT * FROM rec UNION ALL SELECT * FROM plan) o
JOIN (SELECT msisdn, coalesce(value_score, 0) AS value_score, rowid AS cust_id
      FROM customer_view WHERE month = $month) v USING (msisdn)
"""

CANDIDATES_SQL = """
-- One row per offer × candidate channel, with the channel's place in the rule's order. The
-- stages carry only these narrow rows (offer_id, keys and sort keys); the texts stay in
-- _x_offers and are joined on when the lists are written.
-- An offer (customer × policy) already made earlier in the cycle month by another cycle, on
-- any channel, or held out of a daily cycle earlier in the month, is not made again: a daily
-- run neither repeats yesterday's offers nor moves them (or a control-group customer's
-- offer) to another channel.
CREATE OR REPLACE TEMP TABLE _x_candidates AS
WITH exploded AS (
    SELECT o.rowid AS offer_id, o.cust_id, o.msisdn, o.policy_id, o.rank, o.value_score,
           unnest(o.channels) AS channel, generate_subscripts(o.channels, 1) AS channel_pref
    FROM _x_offers o
)
SELECT e.*
FROM exploded e
JOIN _x_channels c ON c.channel = e.channel
LEFT JOIN _x_policies p ON p.policy_id = e.policy_id
WHERE (p.allowed IS NULL OR len(p.allowed) = 0 OR list_contains(p.allowed, e.channel))
  AND NOT EXISTS (
        SELECT 1 FROM _x_history h
        WHERE h.msisdn = e.msisdn AND h.policy_id = e.policy_id
          AND h.contact_date >= $cycle_month_start AND h.contact_date < $cycle_date)
  AND NOT EXISTS (
        SELECT 1 FROM _x_held_before h
        WHERE h.msisdn = e.msisdn AND h.policy_id = e.policy_id
          AND h.cycle_date >= $cycle_month_start AND h.cycle_date < $cycle_date)
"""

SCREEN_SQL = """
-- Do-not-disturb, unsubscribed and cool-down in one pass, a flag per stage (cumulative: a row
-- passes a stage only if it passed the ones before):
--   dnd           the `dnd` list for this channel or for every channel (`*`);
--   unsubscribed  an `unsubscribed` outcome on this channel makes it do-not-disturb from then on;
--   cooldown      no re-offer of a policy the customer rejected (on any channel) within its
--                 cool-down: with 30 days, a rejection 30 days before the cycle date still
--                 blocks, 31 days before does not.
CREATE OR REPLACE TEMP TABLE _x_screened AS
WITH dnd_rows AS (SELECT DISTINCT msisdn, channel FROM _x_dndlist),
unsubscribed AS (
    SELECT DISTINCT msisdn, channel FROM _x_history
    WHERE outcome = 'unsubscribed' AND contact_date <= $cycle_date
),
rejected AS (
    SELECT msisdn, policy_id, max(contact_date) AS last_rejected FROM _x_history
    WHERE outcome = 'rejected' AND contact_date <= $cycle_date GROUP BY ALL
),
flagged AS (
    SELECT c.*,
           d1.msisdn IS NULL AND d2.msisdn IS NULL AS ok_dnd,
           u.msisdn IS NULL AS ok_unsubscribed,
           r.last_rejected IS NULL
             OR r.last_rejected < $cycle_date - CAST(coalesce(p.cooldown_days, $cooldown_days) AS INTEGER) AS ok_cooldown
    FROM _x_candidates c
    LEFT JOIN dnd_rows d1 ON d1.msisdn = c.msisdn AND d1.channel = c.channel
    LEFT JOIN dnd_rows d2 ON d2.msisdn = c.msisdn AND d2.channel = '*'
    LEFT JOIN unsubscribed u ON u.msisdn = c.msisdn AND u.channel = c.channel
    LEFT JOIN rejected r ON r.msisdn = c.msisdn AND r.policy_id = c.policy_id
    LEFT JOIN _x_policies p ON p.policy_id = c.policy_id
)
SELECT * EXCLUDE (ok_dnd, ok_unsubscribed, ok_cooldown),
       ok_dnd AS pass_dnd,
       ok_dnd AND ok_unsubscribed AS pass_unsubscribed,
       ok_dnd AND ok_unsubscribed AND ok_cooldown AS pass_cooldown
FROM flagged
"""

SCREEN_COUNTS_SQL = """
-- Customers per channel at each screening stage, in one grouping: the pass flags are
-- cumulative, so a customer reached stage k on a channel iff the best of their rows there did.
WITH reached AS (
    SELECT channel, cust_id,
           max(CASE WHEN pass_cooldown THEN 3 WHEN pass_unsubscribed THEN 2 WHEN pass_dnd THEN 1 ELSE 0 END) AS stage
    FROM _x_screened GROUP BY channel, cust_id
)
SELECT channel,
       count(*)               AS candidates,
       count_if(stage >= 1)   AS dnd,
       count_if(stage >= 2)   AS unsubscribed,
       count_if(stage >= 3)   AS cooldown
FROM reached GROUP BY channel
"""

CAPS_SQL = """
-- Per-customer contact caps for the cycle month: per channel, then across channels
-- (counting distinct policies), after the contacts already made this month.
-- Both numberings run on narrow rows (the per-channel one only on channels that have a
-- contact_cap, the cross-channel one on the distinct offers) and come back as keys to drop
-- or keep: window sorts that carry every column of every row cost twice as much.
CREATE OR REPLACE TEMP TABLE _x_contact_cap AS
WITH prior AS (
    SELECT msisdn, channel, count(*) AS n FROM _x_history
    WHERE contact_date >= $cycle_month_start AND contact_date <= $cycle_date GROUP BY ALL
),
prior_total AS (SELECT msisdn, sum(n) AS n FROM prior GROUP BY msisdn),
over_cap AS (
    SELECT offer_id, channel FROM (
        SELECT c.offer_id, c.channel, ch.contact_cap,
               row_number() OVER (PARTITION BY c.cust_id, c.channel ORDER BY c.rank, c.policy_id)
               + coalesce(pr.n, 0) AS channel_count
        FROM _x_cooldown c
        JOIN _x_channels ch ON ch.channel = c.channel AND ch.contact_cap IS NOT NULL
        LEFT JOIN prior pr ON pr.msisdn = c.msisdn AND pr.channel = c.channel
    ) AS numbered_in_channel
    WHERE channel_count > contact_cap
),
within_channel AS (
    SELECT c.* FROM _x_cooldown c
    WHERE NOT EXISTS (SELECT 1 FROM over_cap x WHERE x.offer_id = c.offer_id AND x.channel = c.channel)
),
offers AS (
    SELECT offer_id, any_value(cust_id) AS cust_id, any_value(msisdn) AS msisdn, any_value(rank) AS rank,
           any_value(policy_id) AS policy_id
    FROM within_channel GROUP BY offer_id
),
numbered AS (
    SELECT o.offer_id, dense_rank() OVER (PARTITION BY o.cust_id ORDER BY o.rank, o.policy_id) + coalesce(pt.n, 0) AS total_count
    FROM offers o LEFT JOIN prior_total pt ON pt.msisdn = o.msisdn
)
SELECT w.* FROM within_channel w
WHERE CAST($monthly_cap AS BIGINT) IS NULL
   OR w.offer_id IN (SELECT offer_id FROM numbered WHERE total_count <= CAST($monthly_cap AS BIGINT))
"""

EXCLUSION_SQL = """
-- Mutually exclusive policies (same exclusive_group): keep the customer's better-ranked one.
CREATE OR REPLACE TEMP TABLE _x_exclusion AS
WITH g AS (
    SELECT c.*, p.exclusive_group FROM _x_contact_cap c LEFT JOIN _x_policies p ON p.policy_id = c.policy_id
),
best AS (
    SELECT cust_id, exclusive_group, min(rank) AS best_rank FROM g WHERE exclusive_group IS NOT NULL GROUP BY ALL
)
SELECT g.* EXCLUDE (exclusive_group) FROM g
LEFT JOIN best b ON b.cust_id = g.cust_id AND b.exclusive_group = g.exclusive_group
WHERE g.exclusive_group IS NULL OR g.rank = b.best_rank
"""

ALLOCATION_SETUP_SQL = """
-- Each offer's surviving channels numbered 1..k in rule order: round r proposes choice r.
CREATE OR REPLACE TEMP TABLE _x_choices AS
SELECT e.*, row_number() OVER (PARTITION BY e.offer_id ORDER BY e.channel_pref) AS choice
FROM _x_exclusion e;
CREATE OR REPLACE TEMP TABLE _x_proposed (offer_id BIGINT, cust_id BIGINT, channel VARCHAR);
CREATE OR REPLACE TEMP TABLE _x_placed AS SELECT * FROM _x_choices WHERE false;
"""

ALLOCATION_ROUND_SQL = """
-- Round $round: unplaced offers propose their next channel; channels take what fits, best first.
INSERT INTO _x_proposed
SELECT offer_id, cust_id, channel FROM _x_choices c
WHERE c.choice = $round AND NOT EXISTS (SELECT 1 FROM _x_placed p WHERE p.offer_id = c.offer_id);
INSERT INTO _x_placed
WITH proposals AS (
    SELECT c.* FROM _x_choices c
    WHERE c.choice = $round AND NOT EXISTS (SELECT 1 FROM _x_placed p WHERE p.offer_id = c.offer_id)
),
room AS (
    SELECT ch.channel, ch.capacity - coalesce((SELECT count(*) FROM _x_placed p WHERE p.channel = ch.channel), 0) AS room
    FROM _x_channels ch
),
-- Only channels with a capacity need the order (and the tie-break draw); the others take
-- every proposal as it comes.
limited AS (
    SELECT pr.*, r.room,
           row_number() OVER (PARTITION BY pr.channel
                              ORDER BY pr.rank, pr.value_score DESC, {tiebreak}, pr.msisdn, pr.policy_id) AS pos
    FROM proposals pr JOIN room r ON r.channel = pr.channel
    WHERE r.room IS NOT NULL
)
SELECT * EXCLUDE (room, pos) FROM limited WHERE pos <= room
UNION ALL
SELECT pr.* FROM proposals pr JOIN room r ON r.channel = pr.channel WHERE r.room IS NULL
"""

HOLDOUT_SQL = """
-- Hold-out control groups: a deterministic draw per customer × policy × cycle.
CREATE OR REPLACE TEMP TABLE _x_drawn AS
SELECT p.*, {draw} < coalesce(pol.holdout, 0) AS held_out
FROM _x_placed p
JOIN _x_cycle cy ON cy.channel = p.channel
LEFT JOIN _x_policies pol ON pol.policy_id = p.policy_id
"""


def _target_select(channel: Channel, columns: tuple[str, ...], salt: str | None) -> str:
    """The target list's columns for one channel: money 2 decimals, rates 4, msisdn masked as configured."""
    parts = []
    for col in columns:
        if col == "msisdn" and channel.mask == "mask":
            parts.append("substr(msisdn, 1, 3) || '****' || substr(msisdn, length(msisdn) - 3, 4) AS msisdn")
        elif col == "msisdn" and channel.mask == "hash":
            parts.append(f"sha256({quote_literal(salt or '')} || msisdn) AS msisdn")
        elif col in MONEY_COLUMNS:  # the fen, half away from zero (docs/money.md), never round() on a DOUBLE
            parts.append(f"{money(col)} AS {col}")
        elif col in RATE_COLUMNS:
            parts.append(f"{round_half_away(col, 4)} AS {col}")
        else:
            parts.append(col)
    return ", ".join(parts)


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


def _register(con: duckdb.DuckDBPyConnection, config: ExportConfig) -> None:
    """Channel and policy settings as small temp tables the stage SQL joins to."""
    con.execute("CREATE OR REPLACE TEMP TABLE _x_channels (channel VARCHAR, cycle VARCHAR, capacity BIGINT, contact_cap BIGINT)")
    if config.channels:
        con.executemany("INSERT INTO _x_channels VALUES (?, ?, ?, ?)",
                        [(c.name, c.cycle, c.capacity, c.contact_cap) for c in config.channels.values()])
    con.execute("CREATE OR REPLACE TEMP TABLE _x_policies (policy_id VARCHAR, allowed VARCHAR[], exclusive_group VARCHAR, "
                "cooldown_days INTEGER, holdout DOUBLE)")
    if config.policies:
        con.executemany("INSERT INTO _x_policies VALUES (?, ?, ?, ?, ?)",
                        [(p.id, list(p.channels), p.exclusive_group, p.cooldown_days, p.holdout)
                         for p in config.policies.values()])
    if table_exists(con, "dnd"):
        con.execute("CREATE OR REPLACE TEMP VIEW _x_dndlist AS SELECT msisdn, channel FROM dnd")
    else:
        con.execute("CREATE OR REPLACE TEMP VIEW _x_dndlist AS SELECT CAST(NULL AS VARCHAR) AS msisdn, "
                    "CAST(NULL AS VARCHAR) AS channel WHERE false")


def _history_view(con: duckdb.DuckDBPyConnection, cycle_ids: list[str]) -> None:
    """Contact history as the contact policy sees it: everything except this cycle's own records.

    Read only (a dry run opens the database read-only, and nothing may change outside the
    write transaction): the bookkeeping columns are added later, inside it, when missing.
    Also the earlier daily cycles' hold-outs (``_x_held_before``), which stay held out for the month.
    """
    if not table_exists(con, "contact_history"):
        con.execute("CREATE OR REPLACE TEMP TABLE _x_history AS SELECT CAST(NULL AS VARCHAR) AS msisdn, "
                    "CAST(NULL AS DATE) AS contact_date, CAST(NULL AS VARCHAR) AS channel, "
                    "CAST(NULL AS VARCHAR) AS policy_id, CAST(NULL AS VARCHAR) AS outcome WHERE false")
    elif {"cycle", "recorded_by"} <= set(table_columns(con, "contact_history")):
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _x_history AS SELECT msisdn, contact_date, channel, policy_id, outcome "
            "FROM contact_history "
            "WHERE NOT (coalesce(recorded_by, '') = ? AND outcome = 'sent' AND list_contains(?, cycle))",
            [RECORDED_BY, cycle_ids],
        )
    else:  # only ingested history so far: nothing of ours to leave out
        con.execute("CREATE OR REPLACE TEMP TABLE _x_history AS "
                    "SELECT msisdn, contact_date, channel, policy_id, outcome FROM contact_history")
    if table_exists(con, "holdouts"):
        # Daily cycles are named by their date; a monthly cycle (YYYY-MM) re-draws the same hold-outs.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _x_held_before AS SELECT msisdn, policy_id, TRY_CAST(cycle AS DATE) AS cycle_date "
            "FROM holdouts WHERE TRY_CAST(cycle AS DATE) IS NOT NULL AND NOT list_contains(?, cycle)",
            [cycle_ids],
        )
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE _x_held_before AS SELECT CAST(NULL AS VARCHAR) AS msisdn, "
                    "CAST(NULL AS VARCHAR) AS policy_id, CAST(NULL AS DATE) AS cycle_date WHERE false")


def _ensure_history_columns(con: duckdb.DuckDBPyConnection) -> None:
    """contact_history keeps, beside the contract's columns, which cycle and tool wrote a row."""
    if not table_exists(con, "contact_history"):
        con.execute("CREATE TABLE contact_history (msisdn VARCHAR, contact_date DATE, channel VARCHAR, policy_id VARCHAR, "
                    "outcome VARCHAR)")
    cols = {r[0] for r in con.execute("DESCRIBE contact_history").fetchall()}
    for name in ("cycle", "recorded_by"):
        if name not in cols:
            con.execute(f"ALTER TABLE contact_history ADD COLUMN {name} VARCHAR")


def cycle_id(channel: Channel, month: str, cycle_date: dt.date) -> str:
    return cycle_date.isoformat() if channel.cycle == "daily" else month


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
        raise MktoolError(f"--cycle must be daily or monthly, got '{only_cycle}'")
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
    policy = config.policies.get(config.plan.policy)
    plan = {
        "plan_policy": config.plan.policy,
        "plan_policy_name": policy.name if policy else config.plan.policy,
        "plan_channels": list(config.plan.channels),
    }
    cycles = {name: cycle_id(ch, month, cycle_date) for name, ch in config.channels.items()}
    params: dict[str, Any] = {
        "month": month, "cycle_date": cycle_date, "cycle_month_start": cycle_date.replace(day=1),
        "cooldown_days": config.cooldown_days, "monthly_cap": config.monthly_cap, **plan,
    }
    plan_table = "plan_recommendations" if has_plan else (
        "(SELECT CAST(NULL AS VARCHAR) AS msisdn, CAST(NULL AS VARCHAR) AS month, 0 AS rank, "
        "CAST(NULL AS VARCHAR) AS current_plan_id, CAST(NULL AS VARCHAR) AS plan_id, CAST(NULL AS VARCHAR) AS plan_name, "
        "0.0 AS new_rental, 0.0 AS new_voice_overage, 0.0 AS new_data_overage, 0.0 AS new_total, 0.0 AS current_total, "
        "0.0 AS total_fee_change, 0.0 AS rental_change WHERE false)")

    def run(sql: str, keys: tuple[str, ...]) -> None:
        con.execute(sql, {k: params[k] for k in keys})

    with reporter.step(f"contact policy for {month} (cycle {cycle_date})"):
        _register(con, config)
        _history_view(con, sorted(set(cycles.values())))
        run(OFFERS_SQL.format(recommendations="recommendations", plan_recommendations=plan_table,
                              plan_script=script_sql(config.plan.script)),
            ("month", "plan_policy", "plan_policy_name", "plan_channels"))
        counts: dict[tuple[str, str], int] = {}
        run(CANDIDATES_SQL, ("cycle_month_start", "cycle_date"))
        run(SCREEN_SQL, ("cycle_date", "cooldown_days"))
        con.execute("DROP TABLE _x_candidates")
        for channel, *stage_counts in con.execute(SCREEN_COUNTS_SQL).fetchall():
            for stage, n in zip(("candidates", "dnd", "unsubscribed", "cooldown"), stage_counts):
                counts[(channel, stage)] = int(n)
        con.execute("CREATE OR REPLACE TEMP TABLE _x_cooldown AS SELECT * EXCLUDE (pass_dnd, pass_unsubscribed, "
                    "pass_cooldown) FROM _x_screened WHERE pass_cooldown")
        con.execute("DROP TABLE _x_screened")
        # Each later filtering stage: build it from the previous one, count it, drop the previous one.
        previous = "_x_cooldown"
        for stage, table, sql, keys in (
            ("contact_cap", "_x_contact_cap", CAPS_SQL, ("cycle_month_start", "cycle_date", "monthly_cap")),
            ("exclusion", "_x_exclusion", EXCLUSION_SQL, ()),
        ):
            run(sql, keys)
            counts.update(_count_stage(con, stage, table))
            con.execute(f"DROP TABLE {previous}")
            previous = table
        con.execute(ALLOCATION_SETUP_SQL)
        con.execute("DROP TABLE _x_exclusion")
        rounds = con.execute("SELECT coalesce(max(choice), 0) FROM _x_choices").fetchone()[0]  # type: ignore[index]
        round_sql = ALLOCATION_ROUND_SQL.replace("{tiebreak}", draw_sql("pr.msisdn", "pr.policy_id", "'tiebreak'"))
        for r in range(1, int(rounds) + 1):
            con.execute(round_sql.replace("$round", str(r)))
        counts.update(_count_stage(con, "dedupe", "_x_proposed"))
        counts.update(_count_stage(con, "capacity", "_x_placed"))
        con.execute("DROP TABLE _x_choices")
        con.execute("DROP TABLE _x_proposed")
        con.execute("CREATE OR REPLACE TEMP TABLE _x_cycle (channel VARCHAR, cycle VARCHAR)")
        con.executemany("INSERT INTO _x_cycle VALUES (?, ?)", list(cycles.items()))
        con.execute(HOLDOUT_SQL.format(draw=draw_sql("p.msisdn", "p.policy_id", "cy.cycle")))
        con.execute("DROP TABLE _x_placed")
        counts.update(_count_stage(con, "holdout", "_x_drawn", "NOT held_out"))
        counts.update(_count_stage(con, "exported", "_x_drawn", "NOT held_out"))

    results: list[ChannelResult] = []
    for name in config.channels:
        stages = [(stage, counts.get((name, stage), 0)) for stage in STAGES]
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


def _count_stage(con: duckdb.DuckDBPyConnection, stage: str, table: str, where: str = "true") -> dict[tuple[str, str], int]:
    """Distinct customers per channel in one stage's table."""
    rows = con.execute(f"SELECT channel, count(DISTINCT cust_id) FROM {table} WHERE {where} GROUP BY channel").fetchall()
    return {(channel, stage): int(n) for channel, n in rows}


def _channel_query(channel: Channel, columns: tuple[str, ...], salt: str | None) -> str:
    rows = (f"SELECT o.* EXCLUDE (channels), d.channel FROM _x_drawn d JOIN _x_offers o ON o.rowid = d.offer_id "
            f"WHERE d.channel = {quote_literal(channel.name)} AND NOT d.held_out")
    return f"SELECT {_target_select(channel, columns, salt)} FROM ({rows}) ORDER BY msisdn, rank, policy_id"


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
            record_funnel(con, month, f"channel:{ch.channel}", ch.stages)
            _record_contacts(con, [ch.channel], cycles, cycle_date, month)


def _held_out(con: duckdb.DuckDBPyConnection, channel: str) -> int:
    return int(con.execute("SELECT count(*) FROM _x_drawn WHERE channel = ? AND held_out", [channel]).fetchone()[0])  # type: ignore[index]


@dataclass
class FolderChanges:
    """How one publish changes ``<out>/<month>`` beyond the lists it writes (see :func:`_folder_changes`)."""

    carried: dict[str, dict[str, Any]]  # lists of channels not exported now: kept, with their manifest entries
    stale: list[str]  # files that are no longer part of the folder: removed in the same publish
    forgotten: list[tuple[str, str]]  # (channel, cycle) whose records go with their removed list


def _folder_changes(con: duckdb.DuckDBPyConnection, folder: Path, selected: list[ChannelResult], config: ExportConfig,
                    fmt: str | None, cycles: dict[str, str]) -> FolderChanges:
    """The folder after this publish holds exactly what its new manifest.json names.

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
    reader = {".csv": "read_csv(?, header = true, all_varchar = true)", ".jsonl": "read_json(?, format = 'newline_delimited')",
              ".parquet": "read_parquet(?)"}[path.suffix]
    try:
        return int(con.execute(f"SELECT count(*) FROM {reader}", [str(path)]).fetchone()[0])  # type: ignore[index]
    except duckdb.Error:
        return None


def _forget_contacts(con: duckdb.DuckDBPyConnection, forgotten: list[tuple[str, str]], month: str) -> None:
    """The records of a list this publish removes for good (its channel left channels.yaml)."""
    if not forgotten:
        return
    _ensure_history_columns(con)
    for channel, cycle in forgotten:
        con.execute("DELETE FROM contact_history WHERE recorded_by = ? AND cycle = ? AND channel = ? AND outcome = 'sent'",
                    [RECORDED_BY, cycle, channel])
        if table_exists(con, "holdouts"):
            con.execute("DELETE FROM holdouts WHERE cycle = ? AND channel = ?", [cycle, channel])
        con.execute("DELETE FROM funnel_counts WHERE month = ? AND funnel = ?", [month, f"channel:{channel}"])


MANIFEST = "manifest.json"
FUNNEL_FILE = "funnel.json"


def _write_all(db: Database, result: ExportResult, selected: list[ChannelResult], config: ExportConfig, month: str,
               cycle_date: dt.date, cycles: dict[str, str], fmt: str | None, matrices_dir: Path,
               reporter: Reporter, options: dict[str, Any]) -> None:
    """Publish the lists, funnel.json and manifest.json with their contacts as one unit (mktool.publish).

    Staged and fsynced under hidden names, journaled, committed with the write-back, then
    renamed into place; an interruption anywhere is finished or undone by the next command.
    """
    assert result.out_dir is not None
    final_dir = result.out_dir / month
    with contextlib.ExitStack() as folder_held:
        try:
            final_dir.mkdir(parents=True, exist_ok=True)
            folder_held.enter_context(folder_lock(final_dir))
        except OSError as exc:
            raise MktoolError(f"cannot write the lists: {os_error_text(exc)}", file=str(final_dir)) from None
        _publish(db, result, selected, config, month, cycle_date, cycles, fmt, matrices_dir, options, final_dir)


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
                ch.rows = int(con.execute(f"COPY ({_channel_query(channel, config.columns(channel), config.salt(channel))}) TO "
                                          f"{quote_literal(str(pub.path(name)))} "
                                          f"({COPY_OPTIONS[fmt or channel.format]})").fetchone()[0])  # type: ignore[index]
                ch.held_out = _held_out(con, ch.channel)
                ch.path = final_dir / name
                pub.add(name)
                fault("write_list")
            changes = _folder_changes(con, final_dir, selected, config, fmt, cycles)
            pub.remove = changes.stale
            with db.transaction():
                for ch in selected:  # only the lists written now: funnel.json must match the files beside it
                    record_funnel(con, month, f"channel:{ch.channel}", ch.stages)
                _record_contacts(con, names, cycles, cycle_date, month)
                _forget_contacts(con, changes.forgotten, month)
                funnel_doc = funnel_document(con, month)
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
        try:
            committed: bool | None = is_committed(con, result.run_id)
        except duckdb.Error:
            committed = None  # the connection is gone: the next command decides from the journal
        if committed is False:
            pub.abandon()
            if isinstance(exc, (OSError, duckdb.IOException)):  # a full disk while DuckDB writes a list, too
                detail = os_error_text(exc)
                raise MktoolError(f"cannot write the lists: {detail}; nothing was recorded (contacts, funnels) and "
                                  "no list changed", file=str(final_dir)) from None
            raise
        if committed is None:
            raise
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"Interrupted after the export had committed the contacts of run {result.run_id}; "
                              f"its lists are put in place in {final_dir} by the next mktool command on this "
                              "database (e.g. `mktool status`).") from None
        if isinstance(exc, (OSError, duckdb.Error)):  # a rename, or the CHECKPOINT after the COMMIT
            raise _unfinished_error(result.run_id, final_dir, exc) from None
        raise


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
    for name in channels:
        con.execute("DELETE FROM contact_history WHERE recorded_by = ? AND cycle = ? AND channel = ? AND outcome = 'sent'",
                    [RECORDED_BY, cycles[name], name])
        con.execute(
            """INSERT INTO contact_history BY NAME
               SELECT d.msisdn, CAST(? AS DATE) AS contact_date, d.channel, d.policy_id, 'sent' AS outcome,
                      ? AS cycle, ? AS recorded_by
               FROM _x_drawn d
               WHERE d.channel = ? AND NOT d.held_out
                 AND NOT EXISTS (SELECT 1 FROM contact_history h WHERE h.msisdn = d.msisdn AND h.channel = d.channel
                                 AND h.policy_id = d.policy_id AND h.contact_date = CAST(? AS DATE))""",
            [cycle_date, cycles[name], RECORDED_BY, name, cycle_date],
        )
    con.execute("""CREATE TABLE IF NOT EXISTS holdouts (month VARCHAR, cycle VARCHAR, channel VARCHAR, msisdn VARCHAR,
                   policy_id VARCHAR, rank INTEGER, matrix VARCHAR, rule_id VARCHAR)""")
    for name in channels:
        con.execute("DELETE FROM holdouts WHERE cycle = ? AND channel = ?", [cycles[name], name])
        con.execute("""INSERT INTO holdouts SELECT ?, ?, d.channel, d.msisdn, d.policy_id, o.rank, o.matrix, o.rule_id
                       FROM _x_drawn d JOIN _x_offers o ON o.rowid = d.offer_id
                       WHERE d.channel = ? AND d.held_out""", [month, cycles[name], name])


def funnel_document(con: duckdb.DuckDBPyConnection, month: str) -> dict[str, Any]:
    """``{"month": M, "funnels": {name: [{"stage", "count"}, ...]}}``: plan first, then matrices, then channels."""
    rows = con.execute(
        """SELECT funnel, stage, count FROM funnel_counts WHERE month = ?
           ORDER BY CASE WHEN funnel = 'plan' THEN 0 WHEN funnel LIKE 'channel:%' THEN 2 ELSE 1 END, funnel, stage_no""",
        [month],
    ).fetchall()
    funnels: dict[str, list[dict[str, Any]]] = {}
    for funnel, stage, count in rows:
        funnels.setdefault(funnel, []).append({"stage": stage, "count": int(count)})
    return {"month": month, "funnels": funnels}


def _live_loads(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """The loads the database's rows still come from: (table, file, sha256, rows, months).

    A later load replaces earlier ones by the table's reload rule (SPEC §2): for a monthly
    table the latest load of each month, for a snapshot table (plans, dnd) its latest load;
    upserted tables (contact_history, events) keep every load's rows, so every load is listed.
    A file loaded again is listed once, as last loaded.
    """
    rows = con.execute("SELECT load_id, table_name, file, sha256, rows, months FROM ingest_log "
                       "ORDER BY loaded_at, rowid").fetchall()
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
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30, check=False,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
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
