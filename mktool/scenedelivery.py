"""`mktool scene`'s delivery: a batch's triggers under export's contact policy, its lists and its records
(docs/scenes.md "contact policy, lists and records"; the binding definitions' sections 4-5).

The trigger step (mktool.scene) leaves a batch's outcomes in ``_s_outcomes`` (one row per event,
or per event × listening scene) and its fired triggers in ``_s_triggers``. This module:

1. builds export's ``_x_offers`` from the triggers: one offer per (msisdn, policy_id), the
   trigger with the best rank (the customer's other triggers of that policy are ``merged``),
   its candidate channels the scene's channels;
2. runs export's very stages over them (:func:`mktool.export.contact_policy`, the same
   statements), with the two differences a real-time message makes: no "already made this
   month" rule (a scene's waves and once_per govern its repetition) and no channels.yaml
   capacity (the cycle lists'); and export's contact_history key made a stage: a push row whose
   (msisdn, channel, policy, cycle date) already has a contact_history row is left out at dedupe.
   Caps count the month's push contacts from contact_history (the monthly and daily cycles' and
   earlier scene batches'), plus this batch's placements, exactly as export counts them; the
   universal control group and the policy hold-out (per msisdn × policy × batch month) are
   export's draws;
3. reads, per offer, where it ended: ``listed`` (the list it is on), ``held_out`` (the
   hold-out's kind) or ``blocked`` (the first stage where none of its rows survived);
4. publishes the batch folder ``<out>/scenes/<cycle_date>/<batch_id>/`` (one list per channel
   any scene names, header only when empty; funnel.json; manifest.json) with the batch's records
   as ONE unit (mktool.publish: staged, journaled, committed, renamed, the folder locked): the
   ledger row, scene_events, the ``sent`` contacts of the exported push rows (cycle
   ``scene:<batch_id>``), the hold-outs and scene_funnels are committed iff the folder is delivered.

A pop-up's rows are listed but, as in export, never recorded as contacts (only their hold-outs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

from mktool import __version__
from mktool.console import QUIET, Reporter
from mktool.database import Database, command_line
from mktool.dialect import Query
from mktool.errors import Interrupted, MktoolError
from mktool.export import (
    OFFER_COLUMNS,
    ExportConfig,
    ExportParams,
    _record_contacts,
    _target_select,
    contact_policy,
    rules_provenance,
)
from mktool.freshness import require_fresh_view
from mktool.output import COPY_OPTIONS
from mktool.project import Project
from mktool.publish import (
    Publication,
    deferred_interrupt,
    fault,
    file_sha256,
    folder_lock,
    os_error_text,
    raise_publish_failure,
    record_commit,
    recover_folder,
)
from mktool.rules import Channel
from mktool.scene import (
    SCENE_EVENTS_COLUMNS,
    Batch,
    LedgerEntry,
    ensure_scene_tables,
    event_files,
    ledger_entry,
    ledger_query,
    load_batch,
    order_files,
    view_month,
)
from mktool.schema import (
    FIRED,
    MONEY_COLUMNS,
    POPUP_STAGES,
    PUSH,
    PUSH_STAGES,
    RATE_COLUMNS,
    SCENE_CYCLE_PREFIX,
    SCENE_EVENTS_TABLE,
    SCENE_EVENTS_TEMP,
    SCENE_FUNNELS_TABLE,
    SCENE_MATRIX,
    SCENE_OUTCOMES_TEMP,
    SCENE_TRIGGERS_TEMP,
)
from mktool.sqlquote import quote_literal
from mktool.versions import engine_info, engine_versions

# -- names ------------------------------------------------------------------------------------
SCENES_FOLDER = "scenes"  # <out>/scenes/<cycle_date>/<batch_id>/
FUNNEL_FILE = "funnel.json"
MANIFEST = "manifest.json"
#: A scene list's columns, fixed (definitions §5).
SCENE_LIST_COLUMNS = ("msisdn", "month", "channel", "rank", "scene_id", "scene_name", "wave", "event_type",
                      "event_time", "event_value", "policy_id", "policy_name", "script")
#: A channel's funnel in a batch: export's stages without capacity (a pop-up's are export's).
SCENE_PUSH_STAGES = tuple(s for s in PUSH_STAGES if s != "capacity")
SCENE_CHANNEL_STAGES = {PUSH: SCENE_PUSH_STAGES, "popup": POPUP_STAGES}
#: Where an offer none of whose rows survived was blocked: the stage after the furthest one passed.
BLOCKED_AT = ("dnd", "unsubscribed", "withdrawn", "cooldown", "no_answer", "exclusion", "dedupe", "contact_cap")
EVENT_STAGES = ("received", "unique", "with_scene")  # the batch's `events` funnel (unit: events)
SCENE_STAGES = ("events", "fresh", "known_customer", "matched", "fired")  # each `scene:<id>` funnel (events)
#: scene_events.delivery of a fired row.
LISTED, HELD_OUT, MERGED, BLOCKED = "listed", "held_out", "merged", "blocked"

SCENE_FUNNELS_DDL = f"""CREATE TABLE IF NOT EXISTS {SCENE_FUNNELS_TABLE} (
    batch VARCHAR, month VARCHAR, cycle_date DATE, funnel VARCHAR, position INTEGER, stage VARCHAR, count BIGINT)"""
#: scene_events' and the ledger's columns, in order (the inserts name them).
SCENE_EVENT_COLUMNS = tuple(name for name, _ in SCENE_EVENTS_COLUMNS)


@dataclass
class BatchResult:
    """One delivered batch: where its folder is and what it holds."""

    batch_id: str
    file: Path
    folder: Path
    cycle_date: dt.date
    lists: dict[str, int]  # channel → rows listed (exported)
    outcomes: dict[str, int]  # outcome → rows of _s_outcomes
    held_out: dict[str, int] = field(default_factory=dict)  # channel → rows held out
    deliveries: dict[str, int] = field(default_factory=dict)  # delivery → fired rows
    run_id: str = ""
    events: int = 0  # the event file's rows


@dataclass
class SceneRun:
    """What one invocation did with its event files (definitions §5)."""

    batches: list[BatchResult] = field(default_factory=list)
    skipped: list[tuple[Path, LedgerEntry]] = field(default_factory=list)  # (file, its ledger entry)
    refused: list[tuple[Path, MktoolError]] = field(default_factory=list)
    stopped: bool = False  # stop() said so between batches: the files left were not looked at


def scene_cycle(batch_id: str) -> str:
    """A batch's cycle id (contact_history.cycle, holdouts.cycle, the manifest)."""
    return f"{SCENE_CYCLE_PREFIX}{batch_id}"


def batch_folder(out_dir: Path, cycle_date: dt.date, batch_id: str) -> Path:
    """``<out>/scenes/<cycle_date>/<batch_id>/``: one batch's lists, funnel.json and manifest.json."""
    return Path(out_dir) / SCENES_FOLDER / cycle_date.isoformat() / batch_id


def scene_channels(project: Project) -> list[str]:
    """The channels any scene names, in channels.yaml order: each has a list in every batch folder."""
    named = {ch for scene in project.scenes for ch in scene.channels}
    return [name for name in project.channels.channels if name in named]


def ensure_delivery_tables(con: duckdb.DuckDBPyConnection) -> None:
    """The permanent tables a batch's publish writes (inside its transaction): the trigger step's ledger
    and scene_events, and scene_funnels."""
    ensure_scene_tables(con)
    con.execute(SCENE_FUNNELS_DDL)


# -- SQL --------------------------------------------------------------------------------------
def _run(con: duckdb.DuckDBPyConnection, q: Query) -> duckdb.DuckDBPyConnection:
    return con.execute(q.sql, q.params) if q.params else con.execute(q.sql)


def _offer_column(col: str) -> str:
    """One of export's offer columns as a trigger's offer has it (a scene offer has no plan or group)."""
    known = {"msisdn": "b.msisdn", "month": "CAST($month AS VARCHAR) AS month",
             "rank": "CAST(b.rank AS INTEGER) AS rank", "matrix": f"{quote_literal(SCENE_MATRIX)} AS matrix",
             "rule_id": "b.scene_id AS rule_id", "policy_id": "b.policy_id", "policy_name": "b.policy_name",
             "script": "b.script", "channels": "CAST(b.channels AS VARCHAR[]) AS channels"}
    if col in known:
        return known[col]
    kind = "DOUBLE" if col in MONEY_COLUMNS or col in RATE_COLUMNS else "VARCHAR"
    return f"CAST(NULL AS {kind}) AS {col}"


SCENE_OFFERS_SQL = """
-- A batch's offers: one per (msisdn, policy_id), the trigger with the best rank (a customer's
-- triggers have distinct ranks); the batch's other triggers of the pair are merged into it. Its
-- candidate channels are its scene's; export's stages read the columns export's offers have.
-- matrix 'scene', rule_id the scene id (holdouts and evaluate read them); value_score only breaks
-- capacity ties, and a batch has no capacity.
CREATE OR REPLACE TEMP TABLE _x_offers AS
WITH best AS (
    SELECT t.*, row_number() OVER (PARTITION BY t.msisdn, t.policy_id ORDER BY t.rank, t.seq, t.scene_id) AS pick
    FROM {triggers} t
)
SELECT row_number() OVER (ORDER BY b.msisdn, b.rank, b.policy_id) AS offer_id,
       {offer_columns}, CAST(0 AS DOUBLE) AS value_score, CAST(b.cust_id AS BIGINT) AS cust_id,
       b.seq, b.scene_id, s.scene_name, b.wave, b.event_type, b.event_time, b.value AS event_value
FROM best b LEFT JOIN _sd_scenes s ON s.scene_id = b.scene_id
WHERE b.pick = 1
"""


def scene_offers_query(month: str) -> Query:
    """_x_offers from _s_triggers (see SCENE_OFFERS_SQL)."""
    sql = SCENE_OFFERS_SQL.format(offer_columns=", ".join(_offer_column(c) for c in OFFER_COLUMNS),
                                  triggers=SCENE_TRIGGERS_TEMP)
    return Query("scene_offers", sql, {"month": month})


VERDICTS_SQL = """
-- Where each offer ended: the furthest stage any of its rows passed (levels: 1 dnd … 5 no_answer,
-- 6 exclusion, 7 dedupe, 8 contact_cap; a pop-up row past exclusion goes straight to the draw),
-- and the draw of the rows that reached it (listed on the channel of its best preference that is
-- not held out; else held out with the draw's kind; else blocked at the stage after the furthest).
CREATE OR REPLACE TEMP TABLE _sd_verdicts AS
WITH reached AS (
    SELECT offer_id, max(CASE WHEN pass_no_answer THEN 5 WHEN pass_cooldown THEN 4 WHEN pass_withdrawn THEN 3
                              WHEN pass_unsubscribed THEN 2 WHEN pass_dnd THEN 1 ELSE 0 END) AS level
    FROM _x_screened GROUP BY offer_id
    UNION ALL
    SELECT offer_id, max(CASE WHEN push THEN 6 ELSE 8 END) AS level FROM _x_exclusion GROUP BY offer_id
    UNION ALL
    SELECT DISTINCT offer_id, 7 AS level FROM _x_proposed
    UNION ALL
    SELECT DISTINCT offer_id, 8 AS level FROM _x_capped
),
furthest AS (SELECT offer_id, max(level) AS level FROM reached GROUP BY offer_id),
drawn AS (
    SELECT offer_id, bool_or(NOT held_out) AS listed,
           arg_min(channel, channel_pref) FILTER (WHERE NOT held_out) AS channel,
           min(held_kind) AS held_kind
    FROM _x_drawn GROUP BY offer_id
)
SELECT o.offer_id, o.msisdn, o.policy_id, o.seq, o.scene_id,
       CASE WHEN d.listed THEN '{listed}' WHEN d.offer_id IS NOT NULL THEN '{held_out}' ELSE '{blocked}' END
           AS delivery,
       CASE WHEN d.listed THEN d.channel END AS channel,
       CASE WHEN d.offer_id IS NULL THEN {blocked_at} END AS blocked_at,
       CASE WHEN d.offer_id IS NOT NULL AND NOT d.listed THEN d.held_kind END AS held_kind
FROM _x_offers o
LEFT JOIN furthest f ON f.offer_id = o.offer_id
LEFT JOIN drawn d ON d.offer_id = o.offer_id
"""


def verdicts_query() -> Query:
    levels = " ".join(f"WHEN {n} THEN {quote_literal(stage)}" for n, stage in enumerate(BLOCKED_AT))
    blocked_at = f"CASE coalesce(f.level, -1) WHEN -1 THEN 'candidates' {levels} END"
    return Query("scene_verdicts", VERDICTS_SQL.format(listed=LISTED, held_out=HELD_OUT, blocked=BLOCKED,
                                                       blocked_at=blocked_at))


EVENTS_SQL = """
-- The batch's scene_events rows: every outcome, a fired one with its policy and delivery (the
-- offer's own trigger: its verdict; another trigger of the same pair: merged). A scene row that
-- did not fire carries its scene's policy; an event no scene heard (duplicate, no_scene) none.
CREATE OR REPLACE TEMP TABLE _sd_events AS
SELECT CAST($batch AS VARCHAR) AS batch, o.seq, o.msisdn, o.event_time, o.event_type, o.value, o.scene_id, o.wave,
       o.wave_level, o.outcome, o.blocked_by_time, o.blocked_by_batch,
       coalesce(t.policy_id, s.policy_id) AS policy_id,
       CASE WHEN t.seq IS NULL THEN NULL WHEN v.seq = o.seq AND v.scene_id = o.scene_id THEN v.delivery
            ELSE '{merged}' END AS delivery,
       CASE WHEN v.seq = o.seq AND v.scene_id = o.scene_id THEN v.channel END AS channel,
       CASE WHEN v.seq = o.seq AND v.scene_id = o.scene_id THEN v.blocked_at END AS blocked_at,
       CASE WHEN v.seq = o.seq AND v.scene_id = o.scene_id THEN v.held_kind END AS held_kind
FROM {outcomes} o
LEFT JOIN {triggers} t ON t.seq = o.seq AND t.scene_id = o.scene_id AND o.outcome = '{fired}'
LEFT JOIN _sd_scenes s ON s.scene_id = o.scene_id
LEFT JOIN _sd_verdicts v ON v.msisdn = t.msisdn AND v.policy_id = t.policy_id
"""


def events_query(batch_id: str) -> Query:
    sql = EVENTS_SQL.format(merged=MERGED, fired=FIRED, outcomes=SCENE_OUTCOMES_TEMP, triggers=SCENE_TRIGGERS_TEMP)
    return Query("scene_events", sql, {"batch": batch_id})


EVENT_FUNNEL_SQL = """
SELECT count(DISTINCT seq),
       count(DISTINCT seq) FILTER (WHERE outcome <> 'duplicate'),
       count(DISTINCT seq) FILTER (WHERE outcome NOT IN ('duplicate', 'no_scene'))
FROM {outcomes}
"""

SCENE_FUNNEL_SQL = """
-- Per scene, its events through the outcomes, cumulative: each stage keeps the rows past it.
SELECT scene_id, count(*),
       count_if(outcome <> 'stale'),
       count_if(outcome NOT IN ('stale', 'unknown_customer')),
       count_if(outcome NOT IN ('stale', 'unknown_customer', 'not_matched')),
       count_if(outcome = '{fired}')
FROM {outcomes} WHERE scene_id IS NOT NULL GROUP BY scene_id
"""


def list_query(channel: Channel, salt: str | None) -> Query:
    """One channel's scene list: its rows not held out, the fixed columns, msisdn masked as the channel says,
    ordered by msisdn (the number, not its mask), rank, policy_id."""
    name = quote_literal(channel.name)
    rows = ("SELECT o.msisdn, o.month, d.channel, o.rank, o.scene_id, o.scene_name, o.wave, o.event_type, "
            "strftime(o.event_time, '%Y-%m-%d %H:%M:%S') AS event_time, o.event_value, o.policy_id, o.policy_name, "
            "o.script FROM _x_drawn d JOIN _x_offers o ON o.offer_id = d.offer_id "
            f"WHERE d.channel = {name} AND NOT d.held_out")
    return Query(f"scene_list:{channel.name}",
                 f"SELECT {_target_select(channel, SCENE_LIST_COLUMNS, salt)} FROM ({rows}) AS r "
                 "ORDER BY r.msisdn, r.rank, r.policy_id")


# -- the batch --------------------------------------------------------------------------------
def _register_scenes(con: duckdb.DuckDBPyConnection, project: Project) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE _sd_scenes (scene_id VARCHAR, scene_name VARCHAR, policy_id VARCHAR)")
    if project.scenes:
        con.executemany("INSERT INTO _sd_scenes VALUES (?, ?, ?)",
                        [(s.id, s.name, s.policy) for s in project.scenes])


def _funnels(con: duckdb.DuckDBPyConnection, project: Project, config: ExportConfig, channels: list[str],
             counts: dict[tuple[str, str], int]) -> dict[str, list[tuple[str, int]]]:
    """The batch's funnels in order: events, one per scene (position order), one per listed channel."""
    funnels: dict[str, list[tuple[str, int]]] = {}
    row = con.execute(EVENT_FUNNEL_SQL.format(outcomes=SCENE_OUTCOMES_TEMP)).fetchone()
    funnels["events"] = list(zip(EVENT_STAGES, (int(n) for n in (row or (0, 0, 0)))))
    per_scene = {r[0]: [int(n) for n in r[1:]] for r in con.execute(
        SCENE_FUNNEL_SQL.format(outcomes=SCENE_OUTCOMES_TEMP, fired=FIRED)).fetchall()}
    for scene in sorted(project.scenes, key=lambda s: s.position):
        funnels[f"scene:{scene.id}"] = list(zip(SCENE_STAGES, per_scene.get(scene.id, [0] * len(SCENE_STAGES))))
    for name in channels:
        stages = SCENE_CHANNEL_STAGES[config.channels[name].kind]
        funnels[f"channel:{name}"] = [(stage, counts.get((name, stage), 0)) for stage in stages]
    return funnels


def _funnel_doc(batch: Batch, funnels: dict[str, list[tuple[str, int]]]) -> dict[str, Any]:
    return {"batch": batch.batch_id, "file": Path(batch.file).name, "cycle_date": batch.cycle_date.isoformat(),
            "month": batch.month,
            "funnels": {name: [{"stage": s, "count": n} for s, n in stages] for name, stages in funnels.items()}}


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat() if value else None


def deliver_batch(db: Database, project: Project, batch: Batch, *, out_dir: Path,
                  reporter: Reporter = QUIET) -> BatchResult:
    """Put one loaded batch (its ``_s_outcomes`` and ``_s_triggers``) through the contact policy and
    publish its folder with its records as one unit (see the module docstring)."""
    config = ExportConfig.of(project)
    channels = scene_channels(project)
    salts = {name: config.salt(config.channels[name]) for name in channels}  # a missing hash salt: before any work
    con = db.c
    cycle = scene_cycle(batch.batch_id)
    cycles = {name: cycle for name in config.channels}
    p = replace(ExportParams.of(config, batch.month, batch.cycle_date, has_plan=False),
                made_rule=False, capacity=False, recorded_key_dedupe=True)
    with reporter.step(f"contact policy for batch {batch.batch_id} (cycle date {batch.cycle_date})"):
        _register_scenes(con, project)
        counts = contact_policy(con, config, p, cycles, set(config.channels), offers=scene_offers_query(batch.month),
                                keep=True)
        _run(con, verdicts_query())
        _run(con, events_query(batch.batch_id))
        funnels = _funnels(con, project, config, channels, counts)
        for table in ("_x_screened", "_x_exclusion", "_x_choices", "_x_proposed", "_x_capped", "_x_placed"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    outcomes = dict(batch.counts)
    deliveries = {str(k): int(n) for k, n in con.execute(
        "SELECT delivery, count(*) FROM _sd_events WHERE delivery IS NOT NULL GROUP BY delivery "
        "ORDER BY delivery").fetchall()}
    held = {str(k): int(n) for k, n in con.execute(
        "SELECT channel, count(*) FROM _x_drawn WHERE held_out GROUP BY channel").fetchall()}
    result = BatchResult(batch.batch_id, Path(batch.file), batch_folder(out_dir, batch.cycle_date, batch.batch_id),
                         batch.cycle_date, {}, outcomes, {name: held.get(name, 0) for name in channels}, deliveries,
                         run_id=uuid.uuid4().hex[:12], events=batch.rows)
    _write(db, project, config, batch, result, channels, salts, funnels)
    for table in ("_x_drawn", "_x_offers", "_sd_verdicts", "_sd_events"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return result


def _write(db: Database, project: Project, config: ExportConfig, batch: Batch, result: BatchResult,
           channels: list[str], salts: dict[str, str | None], funnels: dict[str, list[tuple[str, int]]]) -> None:
    """The folder and the records, one publish unit; the folder lock held (as export's cycle folder)."""
    folder = result.folder
    made = [f for f in (folder, *folder.parents) if not f.exists()]  # what this publish creates, innermost first
    with contextlib.ExitStack() as held:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            held.enter_context(folder_lock(folder))
        except OSError as exc:
            raise MktoolError(f"cannot write the scene lists: {os_error_text(exc)}", file=str(folder)) from None
        try:
            _publish(db, project, config, batch, result, channels, salts, funnels)
        except BaseException:
            for f in made:  # undone before its commit: no empty folder left behind
                with contextlib.suppress(OSError):
                    f.rmdir()
            raise


def _publish(db: Database, project: Project, config: ExportConfig, batch: Batch, result: BatchResult,
             channels: list[str], salts: dict[str, str | None], funnels: dict[str, list[tuple[str, int]]]) -> None:
    con = db.c
    folder = result.folder
    cycle = scene_cycle(batch.batch_id)
    try:
        recover_folder(con, folder, db.path)
        pub = Publication(folder, db.path, result.run_id, {name: cycle for name in channels})
    except OSError as exc:
        raise MktoolError(f"cannot write the scene lists: {os_error_text(exc)}", file=str(folder)) from None
    published = (f"Interrupted after batch {batch.batch_id} had committed: its contacts are recorded and its lists "
                 f"are in place in {folder}.")
    try:
        with contextlib.ExitStack() as critical:
            outputs: dict[str, dict[str, Any]] = {}
            for name in channels:
                channel = config.channels[name]
                file_name = f"{name}.{channel.format}"
                sql = list_query(channel, salts[name]).sql
                rows = int(con.execute(f"COPY ({sql}) TO {quote_literal(str(pub.path(file_name)))} "
                                       f"({COPY_OPTIONS[channel.format]})").fetchone()[0])  # type: ignore[index]
                pub.add(file_name)
                result.lists[name] = rows
                outputs[file_name] = {"channel": name, "cycle": cycle, "run_id": result.run_id, "rows": rows,
                                      "held_out": result.held_out.get(name, 0), "sha256": pub.files[file_name]}
                fault("write_list")
            with db.transaction():
                ensure_delivery_tables(con)
                _record_contacts(con, channels, {name: cycle for name in channels}, batch.cycle_date, batch.month)
                _record_batch(con, batch, funnels)
                funnel_doc = _funnel_doc(batch, funnels)
                pub.write_text(FUNNEL_FILE, json.dumps(funnel_doc, ensure_ascii=False, indent=2) + "\n")
                fault("write_funnel")
                manifest = _manifest(project, batch, result, funnel_doc, outputs, engine_info(con))
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
            con, pub, result.run_id, exc, folder,
            unwritten=lambda detail: (f"cannot write the scene lists of batch {batch.batch_id}: {detail}; nothing "
                                      "was recorded (ledger, contacts, scene events) and no list changed"),
            interrupted=(f"Interrupted after batch {batch.batch_id} had committed its contacts; its lists are put in "
                         f"place in {folder} by the next mktool command on this database (e.g. `mktool status`)."),
            unplaced=lambda error: MktoolError(
                f"the records of batch {batch.batch_id} were committed but its lists could not all be put in place "
                f"({os_error_text(error)})", file=str(folder),
                hint="fix the folder (space, permissions), then run any mktool command on this database "
                     "(e.g. `mktool status`): it puts them in place"))


def _record_batch(con: duckdb.DuckDBPyConnection, batch: Batch, funnels: dict[str, list[tuple[str, int]]]) -> None:
    """Inside the publish's transaction: the batch's scene_events, scene_funnels and its ledger row."""
    cols = ", ".join(SCENE_EVENT_COLUMNS)
    con.execute(f"INSERT INTO {SCENE_EVENTS_TABLE} ({cols}) SELECT {cols} FROM _sd_events")
    rows = [(batch.batch_id, batch.month, batch.cycle_date, funnel, pos, stage, count)
            for funnel, stages in funnels.items() for pos, (stage, count) in enumerate(stages, 1)]
    if rows:
        con.executemany(f"INSERT INTO {SCENE_FUNNELS_TABLE} (batch, month, cycle_date, funnel, position, stage, count) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    q = ledger_query(batch, dt.datetime.now().replace(microsecond=0))  # wall clock: the ledger only
    con.execute(q.sql, q.params)


def _manifest(project: Project, batch: Batch, result: BatchResult, funnel_doc: dict[str, Any],
              outputs: dict[str, dict[str, Any]], engine: dict[str, str]) -> dict[str, Any]:
    """What the batch folder holds and everything it was made from (export's manifest, plus the event file);
    ``engine`` is versions.engine_info of the connection the lists came from."""
    root = Path(project.root)
    rule_files = sorted(p for p in root.rglob("*.yaml") if p.is_file())
    return {
        "run_id": result.run_id,
        "batch": batch.batch_id,
        "cycle": scene_cycle(batch.batch_id),
        "cycle_date": batch.cycle_date.isoformat(),
        "month": batch.month,
        "view_month": batch.view_month,
        "watermark": _iso(batch.watermark),
        "event_file": {"name": Path(batch.file).name, "path": str(batch.file), "sha256": batch.checksum,
                       "rows": batch.rows, "first_event": _iso(batch.first_event),
                       "last_event": _iso(batch.last_event)},
        "mktool_version": __version__,
        "created_at": dt.datetime.now().replace(microsecond=0).isoformat(),
        "engine": engine,
        "engines": engine_versions(),
        "command_line": command_line(),
        "rules": rules_provenance(root),
        "rule_files": {str(p.relative_to(root)): file_sha256(p) for p in rule_files},
        "outputs": dict(sorted(outputs.items())),
        "funnels": funnel_doc["funnels"],
    }



# -- an invocation ------------------------------------------------------------------------------
def run_scene_files(db: Database, project: Project, paths: Iterable[Path], *, out_dir: Path,
                    reporter: Reporter = QUIET, stop: Callable[[], bool] = lambda: False) -> SceneRun:
    """Process the event files of ``paths`` not processed before, one committed batch at a time.

    Files are taken in order of their events (mktool.scene.order_files); a file whose checksum
    is in the ledger is skipped (also a copy of a file this call processed a moment ago: the
    ledger is read again before each batch); a file that cannot be read or breaks the events
    contract is refused and the others are still processed. ``stop()`` is asked before each
    batch: a stop between batches leaves the files after it for the next invocation. A missing
    or stale customer view, a missing hash salt or a failed publish stops the invocation (an
    error for every file alike; the batches before it stay committed).
    """
    config = ExportConfig.of(project)
    for name in scene_channels(project):
        config.salt(config.channels[name])
    con = db.c
    run = SceneRun()
    found: list[Path] = []
    for path in paths:
        try:
            found += event_files(Path(path))
        except MktoolError as exc:
            run.refused.append((Path(path), exc))
    files = order_files(con, found)
    if any(f.is_new for f in files):
        require_fresh_view(con, view_month(con))  # once, before any batch: it is no one file's fault
    for f in files:
        if f.error is not None:
            run.refused.append((f.path, f.error))
            continue
        entry = f.entry or ledger_entry(con, f.checksum)
        if entry is not None:
            run.skipped.append((f.path, entry))
            continue
        if stop():
            run.stopped = True
            break
        try:
            batch = load_batch(con, project, f)
        except MktoolError as exc:
            run.refused.append((f.path, exc))
            _drop_batch_tables(con)
            continue
        try:
            run.batches.append(deliver_batch(db, project, batch, out_dir=out_dir, reporter=reporter))
        finally:
            _drop_batch_tables(con)
    return run


def _drop_batch_tables(con: duckdb.DuckDBPyConnection) -> None:
    for table in (SCENE_EVENTS_TEMP, SCENE_OUTCOMES_TEMP, SCENE_TRIGGERS_TEMP):
        con.execute(f"DROP TABLE IF EXISTS {table}")
