"""A scene batch's delivery (definitions §4-5; mktool.scenedelivery): export's contact policy over
the batch's triggers, its lists, funnel.json, manifest.json and records as one publish unit.

The worlds are crafted: a database written in tmp_path (contact_history, dnd), the batch's
``_s_outcomes`` / ``_s_triggers`` written by hand with §3's columns, and a project whose
channels, policies and scenes are set for the case. Every expectation is hand-computed from the
rows below (the draws with an independent md5, as test_export does).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import ENV, FIXTURES, MATRICES, D, M, mktool, mktool_here, slow_beyond, write_table

from mktool.config import Settings
from mktool.database import Database
from mktool.errors import Interrupted, MktoolError
from mktool.project import Project, load_project
from mktool.publish import FAULT_POINTS
from mktool.rules import Channel, ChannelConfig, ContactPolicy, Policy, Scene, Wave
from mktool.scene import Batch
from mktool.scenedelivery import SCENE_LIST_COLUMNS, SceneRun, batch_folder, deliver_batch, run_scene_files, scene_cycle
from mktool.schema import SCENE_OUTCOMES

ROOT = Path(__file__).resolve().parents[1]
DAY = dt.date(2026, 10, 20)  # the batch's cycle date
MONTH = "2026-10"
BATCH = "3fa9c2d1e0b7"
T0 = dt.datetime(2026, 10, 20, 9, 0, 0)


def c(n: int) -> str:
    return f"138{n:08d}"


def md5_draw(*parts: str) -> float:
    """export's draw, computed independently: the first 8 hex digits of md5(parts joined by '|') / 2³²."""
    return int(hashlib.md5("|".join(parts).encode()).hexdigest()[:8], 16) / 2**32


# -- the project -------------------------------------------------------------------------------
CHANNELS = {
    "sms": Channel("sms", "daily", "csv", kind="push", capacity=1, contact_cap=2),  # capacity is not a scene's
    "app": Channel("app", "daily", "jsonl", kind="push", mask="mask"),
    "inbound": Channel("inbound", "monthly", "parquet", kind="popup"),
    "outbound": Channel("outbound", "daily", "csv", kind="push", mask="hash"),  # no scene names it: no list
}
POLICIES = {
    "TOPUP": Policy("TOPUP", "预存送费", "scene", exclusive_group="g1"),
    "PACK": Policy("PACK", "流量加油包", "scene", exclusive_group="g1"),
    "DAY": Policy("DAY", "流量日包", "scene", cooldown_days=30),
    "MIN": Policy("MIN", "保底消费", "scene", channels=("inbound",)),
    "ROAM": Policy("ROAM", "漫游流量日包", "scene", holdout=0.5),
}
ONE = (Wave("1", "TRUE", 1),)


def scene(sid: str, pos: int, event_type: str, policy: str, channels: tuple[str, ...],
          waves: tuple[Wave, ...] = ONE) -> Scene:
    return Scene(id=sid, name=f"场景 {sid}", event_type=event_type, when=None, waves=waves, policy=policy,
                 channels=channels, expires_after=dt.timedelta(hours=1), once_per_days=30, script=None, position=pos)


SCENES = (
    scene("s1", 1, "balance_low", "TOPUP", ("sms",), (Wave("below_10", "value < 10", 1),
                                                    Wave("below_5", "value < 5", 2))),
    scene("s2", 2, "data_90pct", "PACK", ("sms", "app")),
    scene("s3", 3, "data_100pct", "DAY", ("sms",)),
    scene("s4", 4, "hotline_call", "MIN", ("inbound",)),
    scene("s5", 5, "roaming_start", "ROAM", ("sms",)),
)
BY_ID = {s.id: s for s in SCENES}


@pytest.fixture(scope="module")
def shipped() -> Project:
    return load_project(MATRICES)


def make_project(shipped: Project, root: Path, *, channels: dict[str, Channel] | None = None,
                 contact: ContactPolicy | None = None, scenes: tuple[Scene, ...] = SCENES,
                 salts: dict[str, str] | None = None) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    (root / "scenes.yaml").write_text("scenes: []\n", encoding="utf-8")  # the manifest lists the rule files
    config = ChannelConfig(channels if channels is not None else CHANNELS,
                           contact or ContactPolicy(cooldown_days=30, monthly_cap=3, universal_holdout=0.25))
    rules = dataclasses.replace(shipped.rules, channels=config, policies=POLICIES, groups={}, scenes=scenes)
    return dataclasses.replace(shipped, root=root, rules=rules,
                               salts={"outbound": "pepper"} if salts is None else salts)


# -- the database and the batch ----------------------------------------------------------------
# (n, contact_date, channel, policy, outcome, cycle, recorded_by)
HISTORY: list[tuple[int, dt.date, str, str, str, str | None, str | None]] = [
    (4, dt.date(2026, 10, 1), "sms", "OTHER", "unsubscribed", None, None),
    (5, dt.date(2026, 10, 5), "sms", "TOPUP", "accepted", None, None),
    (6, dt.date(2026, 10, 5), "sms", "PACK", "accepted", None, None),  # withdraws its group g1: TOPUP
    (7, dt.date(2026, 9, 21), "sms", "DAY", "rejected", None, None),  # 29 days before: cooling down (30)
    # the monthly cycle used c8's monthly_cap (3 push contacts this month)
    (8, dt.date(2026, 10, 1), "outbound", "M1", "sent", "2026-10-01", "mktool"),
    (8, dt.date(2026, 10, 1), "outbound", "M2", "sent", "2026-10-01", "mktool"),
    (8, dt.date(2026, 10, 2), "outbound", "M3", "sent", "2026-10-02", "mktool"),
    # a daily cycle and an earlier batch used c9's sms contact_cap (2)
    (9, dt.date(2026, 10, 15), "sms", "M1", "sent", "2026-10-15", "mktool"),
    (9, dt.date(2026, 10, 19), "sms", "ROAM", "sent", "scene:0123456789ab", "mktool"),
    # the same key (msisdn, channel, policy, cycle date) already has a contact
    (14, DAY, "sms", "TOPUP", "sent", "scene:0123456789ab", "mktool"),
    (15, DAY, "sms", "PACK", "sent", "scene:0123456789ab", "mktool"),
    # last month's contacts count toward no cap of this month
    (1, dt.date(2026, 9, 30), "sms", "M1", "sent", "2026-09-30", "mktool"),
    (1, dt.date(2026, 9, 30), "sms", "M2", "sent", "2026-09-30", "mktool"),
]
DND = [(c(2), "sms"), (c(3), "*")]

# Fired triggers: (seq, n, scene, wave, minute, rank). The other outcomes below.
TRIGGERS: list[tuple[int, int, str, str, int, int]] = [
    (1, 1, "s1", "below_10", 1, 1),
    (2, 2, "s1", "below_10", 2, 1),
    (3, 3, "s1", "below_10", 3, 1),
    (4, 4, "s1", "below_10", 4, 1),
    (5, 5, "s1", "below_10", 5, 1),
    (6, 6, "s1", "below_10", 6, 1),
    (7, 7, "s3", "1", 7, 1),
    (8, 8, "s1", "below_10", 8, 1),
    (9, 9, "s1", "below_10", 9, 1),
    (10, 10, "s1", "below_10", 10, 2),  # c10: two triggers of TOPUP, the deeper wave ranks first
    (11, 10, "s1", "below_5", 11, 1),
    (12, 11, "s1", "below_10", 12, 1),  # c11: TOPUP and PACK of one exclusive group
    (13, 11, "s2", "1", 13, 2),
    (14, 12, "s1", "below_10", 14, 1),  # c12: three sms offers, contact_cap 2
    (15, 12, "s3", "1", 15, 2),
    (16, 12, "s5", "1", 16, 3),
    (17, 13, "s4", "1", 17, 1),  # pop-up
    (18, 14, "s1", "below_10", 18, 1),  # key already in contact_history
    (19, 15, "s2", "1", 19, 1),  # sms key taken: goes to app
    (20, 16, "s5", "1", 20, 1),
    (21, 17, "s1", "below_10", 21, 1),  # universal control group
    (22, 23, "s5", "1", 22, 1),  # ROAM's policy hold-out
]
# (seq, n, scene, outcome, minute): what did not fire (scene None: duplicate, no_scene)
OTHERS: list[tuple[int, int, str | None, str, int]] = [
    (23, 1, None, "duplicate", 23),
    (24, 2, None, "no_scene", 24),
    (25, 1, "s1", "stale", 25),
    (26, 2, "s3", "unknown_customer", 26),
    (27, 3, "s3", "not_matched", 27),
    (28, 1, "s1", "once_per", 28),
]


def write_batch(con: duckdb.DuckDBPyConnection, triggers: list[tuple[int, int, str, str, int, int]] = TRIGGERS,
                others: list[tuple[int, int, str | None, str, int]] = OTHERS,
                scenes: dict[str, Scene] = BY_ID) -> None:
    """_s_outcomes and _s_triggers with §3's columns, as the trigger step leaves them."""
    con.execute("""CREATE OR REPLACE TEMP TABLE _s_outcomes (seq BIGINT, msisdn VARCHAR, event_time TIMESTAMP,
        event_type VARCHAR, value DOUBLE, scene_id VARCHAR, wave VARCHAR, wave_level INTEGER, outcome VARCHAR,
        blocked_by_time TIMESTAMP, blocked_by_batch VARCHAR)""")
    con.execute("""CREATE OR REPLACE TEMP TABLE _s_triggers (seq BIGINT, msisdn VARCHAR, cust_id BIGINT,
        scene_id VARCHAR, position INTEGER, wave VARCHAR, wave_level INTEGER, policy_id VARCHAR, policy_name VARCHAR,
        script VARCHAR, channels VARCHAR[], event_time TIMESTAMP, event_type VARCHAR, value DOUBLE, rank INTEGER)""")
    for seq, n, sid, wave, minute, rank in triggers:
        s = scenes[sid]
        level = next(w.level for w in s.waves if w.id == wave)
        t = T0 + dt.timedelta(minutes=minute)
        value = 4.5 if wave == "below_5" else 8.0
        con.execute("INSERT INTO _s_outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'fired', NULL, NULL)",
                    [seq, c(n), t, s.event_type, value, sid, wave, level])
        con.execute("INSERT INTO _s_triggers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [seq, c(n), int(c(n)), sid, s.position, wave, level, s.policy, POLICIES[s.policy].name,
                     s.script or POLICIES[s.policy].name, list(s.channels), t, s.event_type, value, rank])
    for seq, n, sid, outcome, minute in others:
        t = T0 + dt.timedelta(minutes=minute)
        blocked = (T0, "0123456789ab") if outcome == "once_per" else (None, None)
        con.execute("INSERT INTO _s_outcomes VALUES (?, ?, ?, ?, 8.0, ?, NULL, NULL, ?, ?, ?)",
                    [seq, c(n), t, scenes[sid].event_type if sid else "balance_low", sid, outcome, *blocked])


def make_db(path: Path, history: list[tuple[Any, ...]] = HISTORY, dnd: list[tuple[str, str]] = DND) -> Path:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE contact_history (msisdn VARCHAR, contact_date DATE, channel VARCHAR, policy_id VARCHAR, "
                "outcome VARCHAR, cycle VARCHAR, recorded_by VARCHAR)")
    if history:
        con.executemany("INSERT INTO contact_history VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(c(n), *rest) for n, *rest in history])
    con.execute("CREATE TABLE dnd (msisdn VARCHAR, channel VARCHAR)")
    if dnd:
        con.executemany("INSERT INTO dnd VALUES (?, ?)", dnd)
    con.close()
    return path


def make_batch(tmp: Path, rows: int = 28, batch_id: str = BATCH,
               triggers: list[tuple[int, int, str, str, int, int]] = TRIGGERS,
               others: list[tuple[int, int, str | None, str, int]] = OTHERS) -> Batch:
    events = tmp / "events-2026-10-20.parquet"
    events.write_bytes(b"PAR1 stand-in for the event file")
    counts = {outcome: 0 for outcome in SCENE_OUTCOMES}
    counts["fired"] = len(triggers)
    for *_, outcome, _ in others:
        counts[outcome] += 1
    return Batch(file=events, checksum=batch_id + "0" * 52, batch_id=batch_id, size=events.stat().st_size, rows=rows,
                 first_event=T0 + dt.timedelta(minutes=1), last_event=T0 + dt.timedelta(minutes=28),
                 cycle_date=DAY, month=MONTH, view_month="2026-09", watermark=T0 - dt.timedelta(hours=2),
                 counts=counts)


def settings(db: Path) -> Settings:
    return Settings(db_path=db, memory_limit="1GB", threads=2)


def deliver(db: Path, project: Project, batch: Batch, out: Path, **kw: Any) -> Any:
    with Database(settings(db), write=True) as database:
        write_batch(database.c, **kw)
        return deliver_batch(database, project, batch, out_dir=out)


def query(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def read_list(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    con = duckdb.connect()
    try:
        cur = con.execute("SELECT * FROM read_parquet(?)", [str(path)])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


@pytest.fixture
def world(tmp_path: Path, shipped: Project) -> dict[str, Any]:
    db = make_db(tmp_path / "mk.duckdb")
    project = make_project(shipped, tmp_path / "rules")
    batch = make_batch(tmp_path)
    out = tmp_path / "out"
    result = deliver(db, project, batch, out)
    return {"db": db, "project": project, "batch": batch, "out": out, "result": result,
            "folder": batch_folder(out, DAY, BATCH), "tmp": tmp_path}


# == the contact policy over the triggers =========================================================
#: Per fired trigger (seq): (delivery, channel, blocked_at, held_kind), hand-derived from the rows above.
EXPECTED_DELIVERY = {
    1: ("listed", "sms", None, None),
    2: ("blocked", None, "dnd", None),  # dnd on sms
    3: ("blocked", None, "dnd", None),  # dnd on every channel ('*')
    4: ("blocked", None, "unsubscribed", None),
    5: ("blocked", None, "withdrawn", None),  # accepted TOPUP
    6: ("blocked", None, "withdrawn", None),  # accepted PACK, TOPUP's exclusive group
    7: ("blocked", None, "cooldown", None),  # rejected DAY 29 days before, cool-down 30
    8: ("blocked", None, "contact_cap", None),  # the monthly cycle's 3 contacts: monthly_cap 3
    9: ("blocked", None, "contact_cap", None),  # a daily cycle's and an earlier batch's sms contacts: contact_cap 2
    10: ("merged", None, None, None),  # c10's other TOPUP trigger
    11: ("listed", "sms", None, None),
    12: ("listed", "sms", None, None),
    13: ("blocked", None, "exclusion", None),  # PACK loses to the better-ranked TOPUP of group g1
    14: ("listed", "sms", None, None),
    15: ("listed", "sms", None, None),
    16: ("blocked", None, "contact_cap", None),  # c12's third sms contact of the batch
    17: ("listed", "inbound", None, None),
    18: ("blocked", None, "dedupe", None),  # (c14, sms, TOPUP, DAY) already has a contact
    19: ("listed", "app", None, None),  # (c15, sms, PACK, DAY) taken: its next channel
    20: ("listed", "sms", None, None),
    21: ("held_out", None, None, "universal"),
    22: ("held_out", None, None, "policy"),
}


def test_the_hand_computed_draws() -> None:
    """c17 alone of the batch's customers is in the universal group (0.25); of the ROAM pairs c23's is held out."""
    customers = {n for _, n, *_ in TRIGGERS}
    assert {n for n in customers if md5_draw(c(n), "mktool-universal") < 0.25} == {17}
    assert md5_draw(c(23), "ROAM", MONTH) < 0.5 <= md5_draw(c(16), "ROAM", MONTH)
    assert md5_draw(c(12), "ROAM", MONTH) < 0.5  # c12's ROAM would be held out, but the cap stops it first


def test_each_trigger_ends_where_the_contact_policy_puts_it(world) -> None:
    rows = query(world["db"], "SELECT seq, delivery, channel, blocked_at, held_kind FROM scene_events "
                              "WHERE outcome = 'fired' ORDER BY seq")
    assert {r[0]: r[1:] for r in rows} == EXPECTED_DELIVERY
    others = query(world["db"], "SELECT seq, scene_id, outcome, policy_id, delivery, blocked_by_batch "
                                "FROM scene_events WHERE outcome <> 'fired' ORDER BY seq")
    assert others == [(23, None, "duplicate", None, None, None), (24, None, "no_scene", None, None, None),
                      (25, "s1", "stale", "TOPUP", None, None), (26, "s3", "unknown_customer", "DAY", None, None),
                      (27, "s3", "not_matched", "DAY", None, None), (28, "s1", "once_per", "TOPUP", None,
                                                                        "0123456789ab")]
    assert query(world["db"], "SELECT DISTINCT batch FROM scene_events") == [(BATCH,)]
    result = world["result"]
    assert result.lists == {"sms": 6, "app": 1, "inbound": 1}
    assert result.deliveries == {"listed": 8, "blocked": 11, "merged": 1, "held_out": 2}


def test_lists_hold_the_listed_offers_in_order_with_their_format_and_mask(world) -> None:
    folder = world["folder"]
    assert sorted(p.name for p in folder.iterdir()) == ["app.jsonl", "funnel.json", "inbound.parquet",
                                                        "manifest.json", "sms.csv"]
    sms = read_list(folder / "sms.csv")
    assert list(sms[0]) == ["msisdn", "month", "channel", "rank", "scene_id", "scene_name", "wave", "event_type",
                            "event_time", "event_value", "policy_id", "policy_name", "script"]
    assert [(r["msisdn"], r["rank"], r["policy_id"], r["wave"]) for r in sms] == [
        (c(1), "1", "TOPUP", "below_10"), (c(10), "1", "TOPUP", "below_5"), (c(11), "1", "TOPUP", "below_10"),
        (c(12), "1", "TOPUP", "below_10"), (c(12), "2", "DAY", "1"), (c(16), "1", "ROAM", "1")]
    assert sms[1] == {"msisdn": c(10), "month": MONTH, "channel": "sms", "rank": "1", "scene_id": "s1",
                      "scene_name": "场景 s1", "wave": "below_5", "event_type": "balance_low",
                      "event_time": "2026-10-20 09:11:00", "event_value": "4.5", "policy_id": "TOPUP",
                      "policy_name": "预存送费", "script": "预存送费"}
    app = read_list(folder / "app.jsonl")  # mask: mask
    assert [(r["msisdn"], r["policy_id"], r["channel"]) for r in app] == [("138****0015", "PACK", "app")]
    inbound = read_list(folder / "inbound.parquet")
    assert [(r["msisdn"], r["policy_id"], r["event_time"]) for r in inbound] == [
        (c(13), "MIN", "2026-10-20 09:17:00")]


def test_contacts_are_the_exported_push_rows_and_holdouts_are_recorded(world) -> None:
    cycle = scene_cycle(BATCH)
    sent = query(world["db"], "SELECT msisdn, channel, policy_id, contact_date, outcome, recorded_by FROM "
                              "contact_history WHERE cycle = ? ORDER BY msisdn, policy_id", [cycle])
    assert sent == [(c(n), ch, pol, DAY, "sent", "mktool") for n, ch, pol in
                    [(1, "sms", "TOPUP"), (10, "sms", "TOPUP"), (11, "sms", "TOPUP"), (12, "sms", "DAY"),
                     (12, "sms", "TOPUP"), (15, "app", "PACK"), (16, "sms", "ROAM")]]
    # the pop-up's row is listed, not a contact
    assert query(world["db"], "SELECT count(*) FROM contact_history WHERE msisdn = ?", [c(13)]) == [(0,)]
    held = query(world["db"], "SELECT month, cycle, cycle_date, channel, msisdn, policy_id, rank, matrix, rule_id, "
                              "kind FROM holdouts ORDER BY msisdn")
    assert held == [(MONTH, cycle, DAY, "sms", c(17), "TOPUP", 1, "scene", "s1", "universal"),
                    (MONTH, cycle, DAY, "sms", c(23), "ROAM", 1, "scene", "s5", "policy")]
    ledger = query(world["db"], "SELECT checksum, file_name, path, size, rows, first_event, last_event, batch, "
                                "cycle_date FROM scene_files")
    assert ledger == [(BATCH + "0" * 52, "events-2026-10-20.parquet", str(world["batch"].file), 32, 28,
                       T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=28), BATCH, DAY)]


SMS_FUNNEL = [("candidates", 17), ("dnd", 15), ("unsubscribed", 14), ("withdrawn", 12), ("cooldown", 11),
              ("no_answer", 11), ("exclusion", 11), ("dedupe", 9), ("contact_cap", 7), ("holdout", 5),
              ("exported", 5)]


def test_funnels_count_events_scenes_and_channel_stages(world) -> None:
    doc = json.loads((world["folder"] / "funnel.json").read_text(encoding="utf-8"))
    assert (doc["batch"], doc["file"], doc["cycle_date"], doc["month"]) == (
        BATCH, "events-2026-10-20.parquet", "2026-10-20", MONTH)
    funnels = {name: [(s["stage"], s["count"]) for s in stages] for name, stages in doc["funnels"].items()}
    assert list(funnels) == ["events", "scene:s1", "scene:s2", "scene:s3", "scene:s4", "scene:s5", "channel:sms",
                             "channel:app", "channel:inbound"]
    assert funnels["events"] == [("received", 28), ("unique", 27), ("with_scene", 26)]
    # s1: 14 fired + stale + once_per; s3: 3 fired + unknown + not_matched
    assert funnels["scene:s1"] == [("events", 16), ("fresh", 15), ("known_customer", 15), ("matched", 15),
                                   ("fired", 14)]
    assert funnels["scene:s3"] == [("events", 4), ("fresh", 4), ("known_customer", 3), ("matched", 2),
                                   ("fired", 2)]
    assert funnels["channel:sms"] == SMS_FUNNEL
    assert funnels["channel:app"] == [("candidates", 2), ("dnd", 2), ("unsubscribed", 2), ("withdrawn", 2),
                                      ("cooldown", 2), ("no_answer", 2), ("exclusion", 1), ("dedupe", 1),
                                      ("contact_cap", 1), ("holdout", 1), ("exported", 1)]
    assert funnels["channel:inbound"] == [(s, 1) for s in ("candidates", "dnd", "unsubscribed", "withdrawn",
                                                           "cooldown", "exclusion", "holdout", "exported")]
    stored = query(world["db"], "SELECT position, stage, count FROM scene_funnels WHERE batch = ? AND "
                                "funnel = 'channel:sms' ORDER BY position", [BATCH])
    assert stored == [(i, s, n) for i, (s, n) in enumerate(SMS_FUNNEL, 1)]


def test_manifest_names_the_lists_the_event_file_and_the_rules(world) -> None:
    folder = world["folder"]
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["batch"] == BATCH and manifest["cycle"] == f"scene:{BATCH}"
    assert manifest["event_file"] == {"name": "events-2026-10-20.parquet", "path": str(world["batch"].file),
                                      "sha256": BATCH + "0" * 52, "rows": 28, "first_event": "2026-10-20 09:01:00",
                                      "last_event": "2026-10-20 09:28:00"}
    assert (manifest["watermark"], manifest["view_month"]) == ("2026-10-20 07:00:00", "2026-09")
    for name, entry in manifest["outputs"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]
        assert len(read_list(folder / name)) == entry["rows"]
    assert manifest["outputs"]["sms.csv"]["held_out"] == 2
    assert "scenes.yaml" in manifest["rule_files"] and "duckdb" in manifest["engines"]
    assert manifest["engine"] == {"name": "duckdb", "version": manifest["engines"]["duckdb"]}
    funnel = json.loads((folder / "funnel.json").read_text(encoding="utf-8"))
    assert manifest["funnels"] == funnel["funnels"]


# == a real batch on the fixtures' Quick start database (run_scene_files) ==========================
SCENE_POLICIES = {
    "SC_TOPUP": Policy("SC_TOPUP", "预存送费 充50送10", "scene", holdout=0.5),
    "SC_MIN": Policy("SC_MIN", "保底消费", "scene", channels=("inbound",)),
}
QUICK_SCENES = (
    dataclasses.replace(SCENES[0], id="low", policy="SC_TOPUP", position=1),
    dataclasses.replace(SCENES[3], id="hot", policy="SC_MIN", position=2),
)
# Customers of the view (no dnd, no October contact); draws of md5 below (hand-checked in a test):
LISTED_A, LISTED_B, HELD, UNIVERSAL, CALLER = "13800000022", "13800000033", "13800000004", "13800000069", "13800000041"
LISTED_C = "13800000097"
FILE_A = [  # balance_low of four customers on 2026-10-30 (wave below_10)
    {"msisdn": m, "event_time": dt.datetime(2026, 10, 30, 10, i), "event_type": "balance_low", "value": 8.0}
    for i, m in enumerate((LISTED_A, LISTED_B, HELD, UNIVERSAL))]
FILE_B = [  # the next day: LISTED_A's balance falls below 5 (wave below_5), LISTED_C's below 10, CALLER calls
    {"msisdn": LISTED_A, "event_time": dt.datetime(2026, 10, 31, 8, 0), "event_type": "balance_low", "value": 4.0},
    {"msisdn": LISTED_C, "event_time": dt.datetime(2026, 10, 31, 8, 30), "event_type": "balance_low", "value": 8.0},
    {"msisdn": CALLER, "event_time": dt.datetime(2026, 10, 31, 9, 0), "event_type": "hotline_call", "value": 1.0},
]


def quick_project(shipped: Project) -> Project:
    rules = dataclasses.replace(shipped.rules, policies={**shipped.policies, **SCENE_POLICIES}, scenes=QUICK_SCENES)
    return dataclasses.replace(shipped, rules=rules)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """The fixtures through `mktool run` (cycle 2026-11-01): a scored view, contacts, lists."""
    root = tmp_path_factory.mktemp("scene_quick")
    done = mktool("run", "--month", M, "--ingest", str(FIXTURES), "--date", D, "--out", str(root / "out"),
                  "--matrices", str(MATRICES), "--db", str(root / "mk.duckdb"), "--quiet", "--no-report")
    assert done.returncode == 0, done.stderr
    return root


def quick_world(quick: Path, to: Path) -> tuple[Path, Path, Path]:
    """A copy of the Quick start database and lists, and a folder of event files A and B."""
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(quick / "mk.duckdb", to / "mk.duckdb")
    shutil.copytree(quick / "out", to / "out", symlinks=True)
    events = to / "events"
    write_table(events / "events-2026-10-30.parquet", "events", FILE_A)
    write_table(events / "events-2026-10-31.parquet", "events", FILE_B)
    return to / "mk.duckdb", to / "out", events


def run_files(db: Path, project: Project, paths: list[Path], out: Path, **kw: Any) -> SceneRun:
    with Database(settings(db), write=True) as database:
        return run_scene_files(database, project, paths, out_dir=out, **kw)


def test_the_quick_start_customers_draws() -> None:
    assert md5_draw(HELD, "SC_TOPUP", MONTH) < 0.5 <= min(md5_draw(m, "SC_TOPUP", MONTH)
                                                          for m in (LISTED_A, LISTED_B, LISTED_C))
    assert md5_draw(UNIVERSAL, "mktool-universal") < 0.02  # the shipped universal_holdout
    assert all(md5_draw(m, "mktool-universal") >= 0.02 for m in (LISTED_A, LISTED_B, LISTED_C, HELD, CALLER))


def test_new_files_in_event_order_skipped_copies_refused_files_and_the_others_processed(quick, tmp_path,
                                                                                          shipped) -> None:
    db, out, events = quick_world(quick, tmp_path)
    project = quick_project(shipped)
    shutil.copy(events / "events-2026-10-31.parquet", events / "late-copy.parquet")  # same bytes, another name
    (events / "broken.parquet").write_bytes(b"not parquet at all")
    (events / ".hidden.parquet").write_bytes(b"ignored")
    run = run_files(db, project, [events], out)
    assert [b.file.name for b in run.batches] == ["events-2026-10-30.parquet", "events-2026-10-31.parquet"]
    assert [(p.name, e.file_name) for p, e in run.skipped] == [("late-copy.parquet", "events-2026-10-31.parquet")]
    assert [p.name for p, _ in run.refused] == ["broken.parquet"] and "broken.parquet" in str(run.refused[0][1])
    a, b = run.batches
    assert (a.lists, a.held_out) == ({"sms": 2, "inbound": 0}, {"sms": 2, "inbound": 0})
    # LISTED_A's wave below_5 fires, but batch A's sms contact used the shipped sms contact_cap (1)
    assert (b.lists, b.cycle_date, b.outcomes["fired"], b.events) == ({"sms": 1, "inbound": 1},
                                                                     dt.date(2026, 10, 31), 3, 3)
    assert a.folder == out / "scenes" / "2026-10-30" / a.batch_id and (a.folder / "manifest.json").is_file()
    assert query(db, "SELECT wave, delivery, blocked_at FROM scene_events WHERE batch = ? AND msisdn = ?",
                 [b.batch_id, LISTED_A]) == [("below_5", "blocked", "contact_cap")]
    sms_a = read_list(a.folder / "sms.csv")  # the scene list's fixed columns, not the channel's `columns:`
    assert [(r["msisdn"], r["wave"], r["event_value"], r["event_time"]) for r in sms_a] == [
        (LISTED_A, "below_10", "8.0", "2026-10-30 10:00:00"), (LISTED_B, "below_10", "8.0", "2026-10-30 10:01:00")]
    inbound_b = read_list(b.folder / "inbound.csv")
    assert [(r["msisdn"], r["policy_id"], r["scene_id"]) for r in inbound_b] == [(CALLER, "SC_MIN", "hot")]
    assert read_list(a.folder / "inbound.csv") == [] and (a.folder / "inbound.csv").read_text().startswith("msisdn,")
    sent = query(db, "SELECT msisdn, contact_date, channel, policy_id, cycle FROM contact_history "
                     "WHERE cycle LIKE 'scene:%' ORDER BY contact_date, msisdn")
    assert sent == [(LISTED_A, dt.date(2026, 10, 30), "sms", "SC_TOPUP", f"scene:{a.batch_id}"),
                    (LISTED_B, dt.date(2026, 10, 30), "sms", "SC_TOPUP", f"scene:{a.batch_id}"),
                    (LISTED_C, dt.date(2026, 10, 31), "sms", "SC_TOPUP", f"scene:{b.batch_id}")]
    assert query(db, "SELECT msisdn, kind, cycle FROM holdouts WHERE cycle LIKE 'scene:%' ORDER BY msisdn") == [
        (HELD, "policy", f"scene:{a.batch_id}"), (UNIVERSAL, "universal", f"scene:{a.batch_id}")]
    assert query(db, "SELECT batch, file_name FROM scene_files ORDER BY first_event") == [
        (a.batch_id, "events-2026-10-30.parquet"), (b.batch_id, "events-2026-10-31.parquet")]
    again = run_files(db, project, [events], out)  # everything is in the ledger now
    assert again.batches == [] and len(again.skipped) == 3 and [p.name for p, _ in again.refused] == ["broken.parquet"]


def test_stop_is_asked_between_batches_and_the_rest_waits_for_the_next_invocation(quick, tmp_path, shipped) -> None:
    db, out, events = quick_world(quick, tmp_path)
    project = quick_project(shipped)
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1  # a SIGTERM during the first batch

    first = run_files(db, project, [events], out, stop=stop)
    assert [b.file.name for b in first.batches] == ["events-2026-10-30.parquet"] and first.stopped
    assert query(db, "SELECT count(*) FROM scene_files") == [(1,)]
    rest = run_files(db, project, [events], out)
    assert [b.file.name for b in rest.batches] == ["events-2026-10-31.parquet"]
    assert [p.name for p, _ in rest.skipped] == ["events-2026-10-30.parquet"]


# == one publish unit: interrupted anywhere, finished or undone; a re-run converges ================
def state(db: Path) -> dict[str, Any]:
    """Every table's rows (hashed), but the ledger's wall clock (processed_at) and the event file's path (each
    world is in its own folder), and publish_log's run ids."""
    con = duckdb.connect(str(db))
    try:
        out = {}
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                                    "AND table_name <> 'publish_log' ORDER BY 1").fetchall():
            cols = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall() if r[0] not in ("processed_at", "path")]
            row = ", ".join(f'"{c}"' for c in cols)
            out[table] = con.execute(f"SELECT count(*), md5(coalesce(string_agg(CAST(({row}) AS VARCHAR), chr(10) "
                                     f"ORDER BY CAST(({row}) AS VARCHAR)), '')) FROM \"{table}\"").fetchone()
        return out
    finally:
        con.close()


def files(folder: Path) -> dict[str, str]:
    """sha256 of every file under a final (not hidden) name, manifest.json aside (its run id and time)."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def one_file_world(quick: Path, to: Path) -> tuple[Path, Path, Path]:
    db, out, events = quick_world(quick, to)
    (events / "events-2026-10-31.parquet").unlink()
    return db, out, events


@pytest.fixture(scope="module")
def reference(quick, tmp_path_factory, shipped) -> dict[str, Any]:
    """Batch A nobody interrupts: (state, files) before and after."""
    db, out, events = one_file_world(quick, tmp_path_factory.mktemp("scene_reference"))
    before = (state(db), files(out))
    run = run_files(db, quick_project(shipped), [events], out)
    assert len(run.batches) == 1
    return {"before": before, "after": (state(db), files(out)), "folder": run.batches[0].folder.relative_to(out)}


KILL_SCRIPT = """
import sys
from pathlib import Path
import test_scene_delivery as t
from mktool.project import load_project
t.run_files(Path(sys.argv[1]), t.quick_project(load_project(t.MATRICES)), [Path(sys.argv[3])], Path(sys.argv[2]))
"""
COMMITTED_AT = FAULT_POINTS.index("after_commit")
FAULTS = [(p, k) for p in FAULT_POINTS for k in ("interrupt", "enospc")] + [
    (p, "kill") for p in ("write_list", "journal", "before_commit", "after_commit", "between_renames")]


#: The default run's cases: killed before the commit, interrupted after it (CI runs the whole sweep, `slow`).
FAST_FAULTS = {("before_commit", "kill"), ("after_commit", "interrupt")}


@pytest.mark.parametrize(("point", "kind"), slow_beyond(FAULTS, FAST_FAULTS))
def test_an_interrupted_batch_leaves_all_or_nothing_and_a_rerun_converges(quick, reference, shipped, tmp_path,
                                                                           monkeypatch, point, kind) -> None:
    db, out, events = one_file_world(quick, tmp_path)
    project = quick_project(shipped)
    committed = FAULT_POINTS.index(point) >= COMMITTED_AT
    if kind == "kill":
        env = {**ENV, "MKTOOL_FAULT": f"{point}:kill",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), ENV.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(db), str(out), str(events)], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == -signal.SIGKILL, done.stderr
    else:
        monkeypatch.setenv("MKTOOL_FAULT", f"{point}:{kind}")
        expected: Any = (Interrupted if committed else KeyboardInterrupt) if kind == "interrupt" else MktoolError
        with pytest.raises(expected) as err:
            run_files(db, project, [events], out)
        monkeypatch.delenv("MKTOOL_FAULT")
        if kind == "enospc":
            assert ("were committed" in str(err.value)) == committed
            assert ("nothing was recorded" in str(err.value)) == (not committed)
    with Database(settings(db), write=False):  # the next command, a reader, finishes a committed publish
        pass
    if committed:
        assert (state(db), files(out)) == reference["after"]
    else:
        assert (state(db), files(out)) == reference["before"]
        if kind != "kill":  # undone on the spot, no empty folder left behind either (a kill leaves hidden names)
            assert not (out / "scenes").exists()
    again = run_files(db, project, [events], out)
    assert len(again.batches) == (0 if committed else 1) and len(again.skipped) == (1 if committed else 0)
    assert (state(db), files(out)) == reference["after"]
    folder = out / reference["folder"]  # nothing hidden left behind: no staging folder, no journal
    assert sorted(p.name for p in folder.iterdir()) == ["funnel.json", "inbound.csv", "manifest.json", "sms.csv"]


def test_a_rerun_into_another_folder_gives_the_same_bytes(quick, reference, shipped, tmp_path) -> None:
    """Same database, same files: byte-identical lists and funnel.json, the same records (the ledger's clock aside)."""
    db, out, events = one_file_world(quick, tmp_path / "a")
    other = tmp_path / "b"
    shutil.copytree(tmp_path / "a", other, symlinks=True)
    run_files(db, quick_project(shipped), [events], out)
    run_files(other / "mk.duckdb", quick_project(shipped), [other / "events"], other / "out")
    assert files(out) == files(other / "out") == reference["after"][1]
    assert state(db) == state(other / "mk.duckdb")
    first, second = (json.loads((o / reference["folder"] / "manifest.json").read_text(encoding="utf-8"))
                     for o in (out, other / "out"))
    assert first["outputs"] == {**second["outputs"], **{k: {**v, "run_id": first["run_id"]}
                                                         for k, v in second["outputs"].items()}}


# == the month's commands on a database holding scene batches =====================================
def test_evaluate_report_funnel_and_latest_work_beside_scene_batches(quick, tmp_path, shipped) -> None:
    db, out, events = quick_world(quick, tmp_path)
    funnel_before = mktool_here("funnel", "--month", M, "--db", str(db))
    assert funnel_before.exit_code == 0, funnel_before.output
    run = run_files(db, quick_project(shipped), [events], out)
    assert len(run.batches) == 2
    a, b = run.batches
    assert query(db, "SELECT count(*) FROM holdouts WHERE cycle = ?", [scene_cycle(b.batch_id)]) == [(0,)]
    # the monthly funnels (funnel_counts) are as they were: a batch's funnels are scene_funnels'
    funnel_after = mktool_here("funnel", "--month", M, "--db", str(db))
    assert funnel_after.exit_code == 0 and funnel_after.output == funnel_before.output
    # the newest monthly list is still the cycle's: the scenes folder holds no cycle folders
    latest = mktool_here("latest", "--channel", "sms", "--out", str(out), "--db", str(db))
    assert latest.exit_code == 0 and latest.output.strip() == str(out / M / D / "sms.csv")
    # evaluate: every batch of the month is a cycle of it, the one that held nothing out too (b): its contact
    # counts beside its month's hold-outs, under the scene's matrix and rule like its held-out twins
    done = mktool_here("evaluate", "--month", M, "--by", "policy_id,matrix,rule_id", "--format", "json",
                       "--db", str(db))
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    scene_rows = [r for r in doc["rows"] if r["policy_id"] == "SC_TOPUP"]
    assert [(r["matrix"], r["rule_id"], r["contacted"], r["held_out"]) for r in scene_rows] == [("scene", "low", 3, 2)]
    why = mktool_here("explain", LISTED_A, "--month", M, "--matrices", str(MATRICES), "--db", str(db))
    assert why.exit_code == 0 and f"scene:{a.batch_id}" in why.output
    page = mktool_here("report", "--month", M, "--out", str(tmp_path / "report.html"), "--lists", str(out),
                       "--matrices", str(MATRICES), "--db", str(db))
    assert page.exit_code == 0, page.output
    assert (tmp_path / "report.html").stat().st_size > 0


# == edges: an empty batch, hashed numbers, a missing salt ===========================================
def test_an_empty_batch_publishes_header_only_lists_and_its_ledger_row(tmp_path, shipped) -> None:
    db = make_db(tmp_path / "mk.duckdb")
    batch = dataclasses.replace(make_batch(tmp_path, rows=0, triggers=[], others=[]), first_event=None,
                                last_event=None)
    result = deliver(db, make_project(shipped, tmp_path / "rules"), batch, tmp_path / "out", triggers=[], others=[])
    folder = batch_folder(tmp_path / "out", DAY, BATCH)
    assert result.lists == {"sms": 0, "app": 0, "inbound": 0}
    assert (folder / "sms.csv").read_text(encoding="utf-8") == ",".join(SCENE_LIST_COLUMNS) + "\n"
    assert (folder / "app.jsonl").read_bytes() == b"" and read_list(folder / "inbound.parquet") == []
    funnel = json.loads((folder / "funnel.json").read_text(encoding="utf-8"))["funnels"]
    assert funnel["events"] == [{"stage": s, "count": 0} for s in ("received", "unique", "with_scene")]
    assert all(stage["count"] == 0 for stages in funnel.values() for stage in stages)
    assert query(db, "SELECT batch, rows, first_event FROM scene_files") == [(BATCH, 0, None)]
    assert query(db, "SELECT count(*) FROM scene_events") == [(0,)]
    assert query(db, "SELECT count(*) FROM contact_history WHERE cycle = ?", [scene_cycle(BATCH)]) == [(0,)]


def test_a_hashed_channel_lists_the_salted_sha256_in_the_numbers_order(tmp_path, shipped) -> None:
    channels = {**CHANNELS, "sms": dataclasses.replace(CHANNELS["sms"], mask="hash")}
    project = make_project(shipped, tmp_path / "rules", channels=channels, salts={"outbound": "pepper", "sms": "salt"})
    deliver(make_db(tmp_path / "mk.duckdb"), project, make_batch(tmp_path), tmp_path / "out")
    sms = read_list(batch_folder(tmp_path / "out", DAY, BATCH) / "sms.csv")

    def sha(n: int) -> str:
        return hashlib.sha256(("salt" + c(n)).encode()).hexdigest()

    assert [(r["msisdn"], r["policy_id"]) for r in sms] == [
        (sha(1), "TOPUP"), (sha(10), "TOPUP"), (sha(11), "TOPUP"), (sha(12), "TOPUP"), (sha(12), "DAY"),
        (sha(16), "ROAM")]


def test_a_missing_salt_is_refused_before_any_work(tmp_path, shipped) -> None:
    channels = {**CHANNELS, "app": dataclasses.replace(CHANNELS["app"], mask="hash", salt_env="APP_SALT")}
    db = make_db(tmp_path / "mk.duckdb")
    with Database(settings(db), write=True):  # a database mktool opened before (its bookkeeping tables)
        pass
    before = state(db)
    with pytest.raises(MktoolError, match="APP_SALT"):
        deliver(db, make_project(shipped, tmp_path / "rules", channels=channels, salts={}), make_batch(tmp_path),
                tmp_path / "out")
    assert state(db) == before and not (tmp_path / "out").exists()
