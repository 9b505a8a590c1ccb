"""The trigger step of a scene batch (mktool/scene.py; issue 14, definitions §2-3).

Each test crafts a few events on a small in-memory database (a hand-made customer_view, scene
objects built directly, earlier batches written into scene_events by hand) and states the
outcome of every event as computed by hand from the definitions: duplicates, no_scene, stale
(at exactly expires_after and one second more), unknown customers, not_matched, waves,
once_per (exactly N days apart, one second less, in-batch chains needing rounds, a late event
before a trigger of an earlier batch), the triggers' rank; then the files: discovery, checksums,
ordering, the ledger and the refusals, which must be exactly those of `mktool ingest`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, MATRICES, write_table
from typer.testing import CliRunner

from mktool.cli import app
from mktool.config import Settings
from mktool.database import Database
from mktool.errors import MktoolError, RuleError, StateError
from mktool.ingest import ingest
from mktool.project import Project, load_project
from mktool.rules import Policy, Scene, Wave
from mktool.scene import (
    OUTCOME_COLUMNS,
    TRIGGER_COLUMNS,
    Batch,
    EventFile,
    LedgerEntry,
    batch_id,
    ensure_scene_tables,
    event_files,
    events_query,
    file_checksum,
    is_event_file_name,
    ledger_entry,
    ledger_query,
    ledger_watermark,
    load_batch,
    order_files,
    outcome_queries,
    run_outcomes,
)
from mktool.schema import SCENE_FILES_TABLE

MONTH = "2026-10"
A, B, C, X = "13800000001", "13800000002", "13800000003", "13999999999"  # X: in no customer view
POLICIES = {"TOPUP": Policy(id="TOPUP", name="充50送10", family="scene"),
            "PACK": Policy(id="PACK", name="流量加油包", family="scene")}
BELOW = (Wave("below_10", "value < 10", 1), Wave("below_5", "value < 5", 2))


def t(day: int, hour: int = 12, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 10, day, hour, minute, second)


def scene(id_: str = "low", event_type: str = "balance_low", *, when: str | None = None,
          waves: Sequence[Wave] = (Wave("1", "TRUE", 1),), expires: dt.timedelta = dt.timedelta(hours=1),
          once_per: int = 30, position: int = 1, policy: str = "TOPUP", channels: tuple[str, ...] = ("sms",),
          script: str | None = None) -> Scene:
    return Scene(id=id_, name=id_, event_type=event_type, when=when, waves=tuple(waves), policy=policy,
                 channels=channels, expires_after=expires, once_per_days=once_per, script=script, position=position)


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    """A database with a customer view of two months: A, B, C in 2026-10 (C also in 2026-09), and
    D only in 2026-09 (so unknown in the latest month)."""
    c = duckdb.connect()
    c.execute("CREATE TABLE customer_view (msisdn VARCHAR, month VARCHAR, payment VARCHAR, churn_flag BOOLEAN)")
    c.execute("INSERT INTO customer_view VALUES (?, '2026-10', 'prepaid', true), (?, '2026-10', 'postpaid', false), "
              "(?, '2026-10', 'prepaid', NULL), (?, '2026-09', 'prepaid', true), ('13800000004', '2026-09', "
              "'prepaid', true)", [A, B, C, C])
    ensure_scene_tables(c)
    yield c
    c.close()


def earlier(con: duckdb.DuckDBPyConnection, *rows: dict[str, Any]) -> None:
    """Rows of scene_events of earlier batches (what their publish units wrote)."""
    for r in rows:
        row = {"batch": "old", "seq": 1, "value": 1.0, "event_type": "balance_low", "scene_id": None,
               "wave": None, "wave_level": None, "outcome": "fired", **r}
        con.execute(f"INSERT INTO scene_events BY NAME SELECT {', '.join(f'${k} AS {k}' for k in row)}", row)


def decide(con: duckdb.DuckDBPyConnection, scenes: Sequence[Scene], events: Sequence[tuple[Any, ...]], *,
           watermark: dt.datetime | None = None, batch: str = "new") -> dict[str, int]:
    """_s_events from (msisdn, event_time, event_type, value) tuples, then the decision."""
    con.execute("CREATE OR REPLACE TEMP TABLE src (msisdn VARCHAR, event_time TIMESTAMP, event_type VARCHAR, "
                "value DOUBLE)")
    if events:
        con.executemany("INSERT INTO src VALUES (?, ?, ?, ?)", [list(e) for e in events])
    con.execute(events_query("SELECT * FROM src").sql)
    return run_outcomes(con, outcome_queries(scenes, POLICIES, view_month=MONTH, watermark=watermark, batch=batch))


def outcomes(con: duckdb.DuckDBPyConnection, *cols: str) -> list[tuple[Any, ...]]:
    cols = cols or ("seq", "msisdn", "scene_id", "wave", "outcome")
    return con.execute(f"SELECT {', '.join(cols)} FROM _s_outcomes ORDER BY seq, scene_id NULLS FIRST").fetchall()


# -- the outcomes ----------------------------------------------------------------------------------------
def test_the_batch_order_and_the_tables_columns(con):
    """seq by (event_time, event_type, msisdn, value); _s_outcomes and _s_triggers have exactly §3's columns."""
    decide(con, [scene()], [(B, t(2), "balance_low", 1.0), (A, t(2), "balance_low", 2.0),
                            (A, t(1), "zz_other", 5.0), (A, t(2), "aa_first", 5.0)])
    assert con.execute("SELECT seq, msisdn, event_type FROM _s_events ORDER BY seq").fetchall() == [
        (1, A, "zz_other"), (2, A, "aa_first"), (3, A, "balance_low"), (4, B, "balance_low")]
    assert tuple(d[0] for d in con.execute("SELECT * FROM _s_outcomes").description) == OUTCOME_COLUMNS
    assert tuple(d[0] for d in con.execute("SELECT * FROM _s_triggers").description) == TRIGGER_COLUMNS
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE _s_triggers)").fetchall())
    assert (types["cust_id"], types["channels"], types["event_time"]) == ("BIGINT", "VARCHAR[]", "TIMESTAMP")


def test_a_duplicate_within_the_file_is_the_later_in_batch_order_whatever_its_value(con):
    counts = decide(con, [scene()], [(A, t(1), "balance_low", 7.0), (A, t(1), "balance_low", 3.0),
                                     (A, t(1), "other", 3.0), (B, t(1), "balance_low", 3.0)])
    # order: A balance_low 3.0 (value breaks the tie), A balance_low 7.0, B balance_low, A other
    assert outcomes(con, "seq", "msisdn", "value", "scene_id", "outcome") == [
        (1, A, 3.0, "low", "fired"), (2, A, 7.0, None, "duplicate"), (3, B, 3.0, "low", "fired"),
        (4, A, 3.0, None, "no_scene")]
    assert counts == {"duplicate": 1, "no_scene": 1, "stale": 0, "unknown_customer": 0, "not_matched": 0,
                      "once_per": 0, "fired": 2}


def test_a_key_processed_in_an_earlier_batch_is_a_duplicate_even_with_another_value(con):
    earlier(con, {"msisdn": A, "event_time": t(3), "value": 99.0, "outcome": "not_matched", "scene_id": "low"},
            {"msisdn": B, "event_time": t(3), "event_type": "other", "outcome": "no_scene"})
    decide(con, [scene(once_per=1)], [(A, t(3), "balance_low", 1.0), (A, t(3, 13), "balance_low", 1.0),
                                      (B, t(3), "balance_low", 1.0), (B, t(3), "other", 1.0)])
    assert outcomes(con) == [(1, A, None, None, "duplicate"), (2, B, "low", "1", "fired"),
                             (3, B, None, None, "duplicate"), (4, A, "low", "1", "fired")]


def test_no_scene_listens_no_scene_at_all(con):
    counts = decide(con, [], [(A, t(1), "balance_low", 1.0), (A, t(1), "balance_low", 2.0)])
    assert outcomes(con) == [(1, A, None, None, "no_scene"), (2, A, None, None, "duplicate")]
    assert counts["no_scene"] == 1 and counts["duplicate"] == 1
    assert con.execute("SELECT count(*) FROM _s_triggers").fetchone() == (0,)


def test_stale_is_strictly_older_than_expires_after_against_the_watermark(con):
    wm = t(10, 12)
    decide(con, [scene(expires=dt.timedelta(minutes=30))], [
        (A, t(10, 11, 30), "balance_low", 1.0),  # exactly 30 minutes before the watermark: fresh
        (B, t(10, 11, 29, 59), "balance_low", 1.0),  # one second more: stale
        (C, t(1), "balance_low", 1.0)], watermark=wm)  # old, and C's churn_flag is NULL: stale comes first
    assert outcomes(con, "msisdn", "outcome") == [(C, "stale"), (B, "stale"), (A, "fired")]


def test_without_a_watermark_nothing_is_stale_and_a_files_own_events_are_not_stale_against_each_other(con):
    decide(con, [scene(expires=dt.timedelta(minutes=1))], [(A, t(1), "balance_low", 1.0),
                                                            (B, t(31), "balance_low", 1.0)])
    assert outcomes(con, "msisdn", "outcome") == [(A, "fired"), (B, "fired")]
    # a watermark before the events (a late clock): negative age, fresh
    decide(con, [scene(expires=dt.timedelta(minutes=1))], [(A, t(5), "balance_low", 1.0)], watermark=t(1))
    assert outcomes(con, "msisdn", "outcome") == [(A, "fired")]


def test_unknown_customer_is_one_not_in_the_latest_view_month(con):
    decide(con, [scene()], [(X, t(1), "balance_low", 1.0), ("13800000004", t(1), "balance_low", 1.0),
                            (C, t(1), "balance_low", 1.0)])
    assert outcomes(con, "msisdn", "outcome") == [(C, "fired"), ("13800000004", "unknown_customer"),
                                                  (X, "unknown_customer")]


def test_not_matched_when_the_scene_when_or_every_wave_is_false_or_null(con):
    prepaid = scene(when="payment = 'prepaid' AND churn_flag", waves=BELOW)
    decide(con, [prepaid], [(A, t(1), "balance_low", 12.0),  # when true, no wave
                            (B, t(1), "balance_low", 3.0),  # postpaid: when false
                            (C, t(1), "balance_low", 3.0),  # churn_flag NULL: NULL counts as false
                            (A, t(2), "balance_low", None),  # value NULL: no wave is true
                            (A, t(3), "balance_low", 9.0)])  # wave below_10
    assert outcomes(con, "msisdn", "value", "wave", "wave_level", "outcome") == [
        (A, 12.0, None, None, "not_matched"), (B, 3.0, None, None, "not_matched"),
        (C, 3.0, None, None, "not_matched"), (A, None, None, None, "not_matched"), (A, 9.0, "below_10", 1, "fired")]


def test_the_scene_condition_sees_the_view_and_the_events_columns_unqualified(con):
    s = scene(when="event_type = 'balance_low' AND month = '2026-10' AND msisdn = '13800000002' "
                   "AND event_time >= TIMESTAMP '2026-10-02 00:00:00'", waves=(Wave("w", "value BETWEEN 1 AND 2", 1),))
    decide(con, [s], [(B, t(1), "balance_low", 1.0), (B, t(2), "balance_low", 3.0), (B, t(3), "balance_low", 2.0),
                      (A, t(3), "balance_low", 2.0)])
    assert outcomes(con, "msisdn", "event_time", "outcome") == [
        (B, t(1), "not_matched"), (B, t(2), "not_matched"), (A, t(3), "not_matched"), (B, t(3), "fired")]


def test_a_deeper_wave_first_blocks_the_shallower_one_within_once_per(con):
    s = scene(waves=BELOW)
    decide(con, [s], [(A, t(1), "balance_low", 4.0), (A, t(2), "balance_low", 8.0),  # wave 2, then wave 1: blocked
                      (B, t(1), "balance_low", 8.0), (B, t(2), "balance_low", 4.0),  # wave 1, then wave 2: fires
                      (B, t(3), "balance_low", 3.0), (B, t(4), "balance_low", 9.0)])  # both blocked by wave 2
    assert outcomes(con, "msisdn", "event_time", "wave", "wave_level", "outcome", "blocked_by_time",
                    "blocked_by_batch") == [
        (A, t(1), "below_5", 2, "fired", None, None), (B, t(1), "below_10", 1, "fired", None, None),
        (A, t(2), "below_10", 1, "once_per", t(1), "new"), (B, t(2), "below_5", 2, "fired", None, None),
        (B, t(3), "below_5", 2, "once_per", t(2), "new"), (B, t(4), "below_10", 1, "once_per", t(2), "new")]


def test_once_per_exactly_n_days_apart_fires_and_one_second_less_is_blocked(con):
    s = scene(once_per=7, expires=dt.timedelta(days=60))
    decide(con, [s], [(A, t(1, 9), "balance_low", 1.0), (A, t(8, 9), "balance_low", 1.0),
                      (B, t(1, 9), "balance_low", 1.0), (B, t(8, 8, 59, 59), "balance_low", 1.0)])
    assert outcomes(con, "msisdn", "event_time", "outcome", "blocked_by_time") == [
        (A, t(1, 9), "fired", None), (B, t(1, 9), "fired", None), (B, t(8, 8, 59, 59), "once_per", t(1, 9)),
        (A, t(8, 9), "fired", None)]


def fired_times(con: duckdb.DuckDBPyConnection, msisdn: str) -> list[dt.datetime]:
    return [r[0] for r in con.execute("SELECT event_time FROM _s_triggers WHERE msisdn = ? ORDER BY 1",
                                      [msisdn]).fetchall()]


def test_a_month_long_file_with_once_per_7_fires_every_seventh_day(con):
    """A daily event Oct 1..31 needs five rounds: fires Oct 1, 8, 15, 22, 29; each other day is blocked by
    the latest trigger before it."""
    s = scene(once_per=7, expires=dt.timedelta(days=60))
    counts = decide(con, [s], [(A, t(d, 10), "balance_low", 1.0) for d in range(1, 32)]
                    + [(B, t(d, 11), "balance_low", 1.0) for d in range(1, 32, 3)])  # B: every 3rd day
    fired_a = fired_times(con, A)
    assert fired_a == [t(1, 10), t(8, 10), t(15, 10), t(22, 10), t(29, 10)]
    blocked = dict(con.execute(f"SELECT event_time, blocked_by_time FROM _s_outcomes WHERE msisdn = '{A}' "
                               "AND outcome = 'once_per'").fetchall())
    assert blocked == {t(d, 10): t(1 + 7 * ((d - 1) // 7), 10) for d in range(1, 32) if (d - 1) % 7}
    # B on days 1, 4, 7, ..., 31: fires 1, 10 (9 days), 19, 28; 4 and 7 blocked by 1, 13 and 16 by 10, ...
    fired_b = fired_times(con, B)
    assert fired_b == [t(1, 11), t(10, 11), t(19, 11), t(28, 11)]
    assert counts["fired"] == 9 and counts["once_per"] == 31 + 11 - 9


def test_a_late_event_before_an_earlier_batch_trigger_is_blocked_by_it(con):
    earlier(con, {"msisdn": A, "event_time": t(20), "scene_id": "low", "wave": "below_10", "wave_level": 1,
                  "batch": "3fa9c2d1e0b7"},
            {"msisdn": B, "event_time": t(20), "scene_id": "low", "wave": "below_10", "wave_level": 1},
            {"msisdn": C, "event_time": t(20), "scene_id": "other_scene", "wave": "1", "wave_level": 1},
            {"msisdn": C, "event_time": t(20, 13), "scene_id": "low", "wave_level": 1, "outcome": "once_per"})
    s = scene(waves=BELOW, expires=dt.timedelta(days=60))
    decide(con, [s], [(A, t(5), "balance_low", 8.0),  # 15 days before A's trigger of batch 3fa9…: blocked
                      (B, t(5), "balance_low", 4.0),  # a deeper wave than B's earlier trigger: fires
                      (C, t(5), "balance_low", 8.0)],  # C's earlier rows: another scene, and not a trigger
           watermark=t(20))
    assert outcomes(con, "msisdn", "outcome", "blocked_by_time", "blocked_by_batch") == [
        (A, "once_per", t(20), "3fa9c2d1e0b7"), (B, "fired", None, None), (C, "fired", None, None)]


def test_the_ledgers_blocker_is_its_latest_trigger_and_30_days_apart_is_free(con):
    earlier(con, {"msisdn": A, "event_time": t(1), "scene_id": "low", "wave_level": 2, "batch": "b1"},
            {"msisdn": A, "event_time": t(3), "scene_id": "low", "wave_level": 1, "batch": "b2"},
            {"msisdn": B, "event_time": dt.datetime(2026, 9, 1, 12), "scene_id": "low", "wave_level": 2})
    decide(con, [scene(waves=BELOW, expires=dt.timedelta(days=60))],
           [(A, t(4), "balance_low", 9.0), (A, t(5), "balance_low", 4.0), (B, t(1), "balance_low", 4.0)])
    assert outcomes(con, "msisdn", "event_time", "outcome", "blocked_by_batch") == [
        (B, t(1), "fired", None),  # exactly 30 days after B's trigger of Sept 1
        (A, t(4), "once_per", "b2"),  # both earlier triggers block: the latest
        (A, t(5), "once_per", "b1")]  # wave 2: only the wave-2 trigger of Oct 1 blocks


def test_every_listening_scene_decides_on_its_own_and_triggers_rank_per_customer(con):
    pack = scene("pack", "balance_low", position=1, policy="PACK", channels=("sms", "app"), once_per=1)
    low = scene("low", "balance_low", position=2, waves=BELOW, script="余额不足", once_per=1)
    postpaid = scene("post", "balance_low", position=3, when="payment = 'postpaid'")
    decide(con, [low, postpaid, pack], [(A, t(1), "balance_low", 8.0), (A, t(2), "balance_low", 3.0),
                                        (A, t(3), "balance_low", 9.0), (B, t(1), "balance_low", 3.0)])
    # seq: A Oct 1, B Oct 1 (same time, msisdn order), A Oct 2, A Oct 3. B is postpaid: "post" fires for B only.
    # A's low: wave 1, then wave 2 (deeper: fires), then wave 1 on Oct 3, exactly once_per (1 day) after the
    # wave-2 trigger: fires; pack fires daily (exactly 1 day apart).
    assert outcomes(con, "seq", "scene_id", "wave", "outcome") == [
        (1, "low", "below_10", "fired"), (1, "pack", "1", "fired"), (1, "post", None, "not_matched"),
        (2, "low", "below_5", "fired"), (2, "pack", "1", "fired"), (2, "post", "1", "fired"),
        (3, "low", "below_5", "fired"), (3, "pack", "1", "fired"), (3, "post", None, "not_matched"),
        (4, "low", "below_10", "fired"), (4, "pack", "1", "fired"), (4, "post", None, "not_matched")]
    # rank per customer: position (pack 1, low 2, post 3), the deeper wave first, then time
    assert con.execute("SELECT msisdn, rank, scene_id, wave, policy_id, policy_name, script, channels, "
                       "cust_id, seq FROM _s_triggers ORDER BY msisdn, rank").fetchall() == [
        (A, 1, "pack", "1", "PACK", "流量加油包", "流量加油包", ["sms", "app"], int(A), 1),
        (A, 2, "pack", "1", "PACK", "流量加油包", "流量加油包", ["sms", "app"], int(A), 3),
        (A, 3, "pack", "1", "PACK", "流量加油包", "流量加油包", ["sms", "app"], int(A), 4),
        (A, 4, "low", "below_5", "TOPUP", "充50送10", "余额不足", ["sms"], int(A), 3),
        (A, 5, "low", "below_10", "TOPUP", "充50送10", "余额不足", ["sms"], int(A), 1),
        (A, 6, "low", "below_10", "TOPUP", "充50送10", "余额不足", ["sms"], int(A), 4),
        (B, 1, "pack", "1", "PACK", "流量加油包", "流量加油包", ["sms", "app"], int(B), 2),
        (B, 2, "low", "below_5", "TOPUP", "充50送10", "余额不足", ["sms"], int(B), 2),
        (B, 3, "post", "1", "TOPUP", "充50送10", "充50送10", ["sms"], int(B), 2)]
    assert con.execute("SELECT event_time FROM _s_triggers WHERE msisdn = ? AND scene_id = 'pack' ORDER BY rank",
                       [A]).fetchall() == [(t(1),), (t(2),), (t(3),)]


def test_an_earlier_trigger_of_another_customer_or_a_refused_delivery_still_counts_as_issued(con):
    """once_per counts every fired row of scene_events, whatever its delivery (a dnd customer's trigger)."""
    earlier(con, {"msisdn": A, "event_time": t(1), "scene_id": "low", "wave_level": 1, "delivery": "blocked",
                  "blocked_at": "dnd"},
            {"msisdn": B, "event_time": t(1), "scene_id": "low", "wave_level": 1, "delivery": "held_out"})
    decide(con, [scene(expires=dt.timedelta(days=60))], [(A, t(2), "balance_low", 1.0), (B, t(2), "balance_low", 1.0),
                                                         (C, t(2), "balance_low", 1.0)])
    assert outcomes(con, "msisdn", "outcome") == [(A, "once_per"), (B, "once_per"), (C, "fired")]


def test_a_condition_failing_in_duckdb_is_named_by_its_scene_file_location(con):
    waves = (Wave("ok", "value < 10", 1), Wave("bad", "CAST(event_type AS INTEGER) > 1", 2))
    s = dataclasses.replace(scene(waves=waves, when="payment = 'prepaid'"), file="scenes.yaml", path="scenes[0]")
    with pytest.raises(RuleError) as err:
        decide(con, [s], [(A, t(1), "balance_low", 1.0)])
    assert str(err.value).startswith("scenes.yaml @ scenes[0].waves[1].when (scene low): DuckDB: Conversion Error")
    decide(con, [s], [(B, t(1), "other", 1.0)])  # no event of its type: nothing is evaluated, nothing fails
    assert outcomes(con, "outcome") == [("no_scene",)]


# -- files, the ledger, loading -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(MATRICES)


def with_scenes(project: Project, *scenes: Scene) -> Project:
    return dataclasses.replace(project, rules=dataclasses.replace(project.rules, scenes=tuple(scenes)))


def events_file(path: Path, rows: list[dict[str, Any]], **kwargs: Any) -> Path:
    return write_table(path, "events", rows, **kwargs)


def ev(msisdn: str, when: dt.datetime, event_type: str = "balance_low", value: float = 1.0) -> dict[str, Any]:
    return {"msisdn": msisdn, "event_time": when, "event_type": event_type, "value": value}


def test_event_files_of_a_folder_skip_hidden_temporary_and_other_files(tmp_path):
    for name in ("b.parquet", "a.PARQUET", ".hidden.parquet", "c.parquet.tmp", "d.parquet.part", "e.parquet.partial",
                 "notes.txt", "f.tmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.parquet").write_bytes(b"x")
    (tmp_path / "dir.parquet").mkdir()
    os.symlink(tmp_path / "b.parquet", tmp_path / "link.parquet")
    assert [p.name for p in event_files(tmp_path)] == ["a.PARQUET", "b.parquet", "link.parquet"]
    assert event_files(tmp_path / "c.parquet.tmp") == [tmp_path / "c.parquet.tmp"]  # named explicitly: taken
    assert not is_event_file_name(".x.parquet") and not is_event_file_name("x.part")
    with pytest.raises(MktoolError, match="no such file or folder"):
        event_files(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert event_files(empty) == []


def test_the_scene_tables_have_the_definitions_columns_and_the_ledger_one_row_per_checksum(con):
    ensure_scene_tables(con)  # again: nothing changes
    columns = {t: [r[0] for r in con.execute(f"DESCRIBE {t}").fetchall()] for t in ("scene_files", "scene_events")}
    assert columns == {
        "scene_files": ["checksum", "file_name", "path", "size", "rows", "first_event", "last_event", "batch",
                        "cycle_date", "processed_at"],
        "scene_events": ["batch", "seq", "msisdn", "event_time", "event_type", "value", "scene_id", "wave",
                         "wave_level", "outcome", "blocked_by_time", "blocked_by_batch", "policy_id", "delivery",
                         "channel", "blocked_at", "held_kind"]}
    con.execute(f"INSERT INTO {SCENE_FILES_TABLE} (checksum, batch) VALUES ('ab', 'ab')")
    with pytest.raises(duckdb.ConstraintException):
        con.execute(f"INSERT INTO {SCENE_FILES_TABLE} (checksum, batch) VALUES ('ab', 'ab')")


def test_a_renamed_copy_has_the_same_checksum_and_the_ledger_knows_it(tmp_path, con):
    first = events_file(tmp_path / "events-y.parquet", [ev(A, t(5))])
    copy = tmp_path / "events-x.parquet"
    shutil.copy(first, copy)
    checksum = file_checksum(first)
    assert checksum == file_checksum(copy) and len(checksum) == 64 and batch_id(checksum) == checksum[:12]
    assert ledger_entry(con, checksum) is None
    con.execute(f"INSERT INTO {SCENE_FILES_TABLE} VALUES (?, 'events-y.parquet', ?, 10, 1, ?, ?, ?, DATE '2026-10-05', "
                "TIMESTAMP '2026-12-01 10:00:00')", [checksum, str(first), t(5), t(5), checksum[:12]])
    entry = ledger_entry(con, file_checksum(copy))
    assert entry is not None and entry.batch == checksum[:12] and entry.rows == 1
    assert entry.skipped(copy.name) == (f"skipped events-x.parquet: already processed as batch {checksum[:12]} on "
                                        "2026-10-05 (as events-y.parquet)")
    assert entry.skipped(first.name).endswith("on 2026-10-05")
    files = order_files(con, [copy])
    assert files[0].entry == entry and not files[0].is_new and files[0].source is None
    assert ledger_watermark(con) == t(5)


def test_the_ledger_row_of_a_batch_is_what_ledger_entry_reads_back(tmp_path, con, project):
    path = events_file(tmp_path / "events-7.parquet", [ev(A, t(7, 9)), ev(B, t(7, 10))])
    batch = load_batch(con, with_scenes(project, scene()), order_files(con, [path])[0])
    at = dt.datetime(2026, 12, 1, 23, 59, 59)
    q = ledger_query(batch, at)
    con.execute(q.sql, q.params)
    checksum = file_checksum(path)
    assert ledger_entry(con, checksum) == LedgerEntry(
        checksum=checksum, file_name="events-7.parquet", path=str(path), size=path.stat().st_size, rows=2,
        first_event=t(7, 9), last_event=t(7, 10), batch=checksum[:12], cycle_date=dt.date(2026, 10, 7),
        processed_at=at)
    assert ledger_watermark(con) == t(7, 10)
    again = order_files(con, [path])[0]
    assert again.entry is not None and not again.is_new and (again.rows, again.last_event) == (2, t(7, 10))


def test_a_copy_within_one_call_is_marked_as_a_copy_of_the_first_in_processing_order(tmp_path, con):
    original = events_file(tmp_path / "b.parquet", [ev(A, t(5))])
    shutil.copy(original, tmp_path / "a.parquet")
    events_file(tmp_path / "c.parquet", [ev(A, t(6))])
    files = order_files(con, event_files(tmp_path))
    assert [(f.path.name, f.is_new, f.copy_of) for f in files] == [
        ("a.parquet", True, None), ("b.parquet", False, tmp_path / "a.parquet"), ("c.parquet", True, None)]
    assert files[0].checksum == files[1].checksum != files[2].checksum


def test_new_files_are_ordered_by_first_then_last_event_then_name(tmp_path, con):
    a = events_file(tmp_path / "a.parquet", [ev(A, t(3)), ev(B, t(4))])
    b = events_file(tmp_path / "b.parquet", [ev(A, t(1)), ev(B, t(5))])
    c = events_file(tmp_path / "c.parquet", [ev(A, t(2, 23)), ev(B, t(1))])
    d = events_file(tmp_path / "d.parquet", [ev(A, t(1)), ev(B, t(5))] + [ev(C, t(2))])
    e = events_file(tmp_path / "0-empty.parquet", [ev(A, t(1))])
    pq.write_table(pq.read_table(e).slice(0, 0), e)
    files = order_files(con, [a, b, c, d, e])
    assert [f.path.name for f in files] == ["c.parquet", "b.parquet", "d.parquet", "a.parquet", "0-empty.parquet"]
    assert [(f.rows, f.first_event, f.last_event) for f in files] == [
        (2, t(1), t(2, 23)), (2, t(1), t(5)), (3, t(1), t(5)), (2, t(3), t(4)), (0, None, None)]
    assert all(f.is_new and f.batch_id == f.checksum[:12] for f in files)


def ingest_refusal(tmp_path: Path, path: Path) -> str:
    """What `mktool ingest --table events` says about the file."""
    settings = Settings(db_path=tmp_path / "ingest.duckdb", matrices_dir=MATRICES, memory_limit="1GB", threads=2)
    with Database(settings, write=True) as db, pytest.raises(MktoolError) as err:
        ingest(db, [path], table="events")
    return str(err.value)


@pytest.mark.parametrize(("rows", "kwargs", "expected"), [
    ([ev(A, t(1)), ev("1380000000", t(2))], {}, ["column msisdn", "msisdn is not an 11-digit string",
                                                 "example row: msisdn=1380000000"]),
    ([ev(A, t(1))], {"drop": ("event_type",)}, ["missing required column event_type"]),
    ([ev(A, t(1)), {**ev(B, t(2)), "value": None}], {}, ["column value", "value is missing (NULL or blank)",
                                                         f"msisdn={B}"]),
    ([ev(A, t(1)), ev(B, t(2), "balance\u200blow")], {}, ["column event_type", "invisible or control character"]),
    ([{**ev(A, t(1)), "event_time": "2026-10-01 10:00"}, {**ev(B, t(2)), "event_time": "2026-10-32 10:00"}],
     {"types": {"event_time": pa.string()}},
     ["column event_time", "cannot be read as TIMESTAMP", "2026-10-32"]),
])
def test_a_file_breaking_the_events_contract_is_refused_exactly_as_ingest_refuses_it(tmp_path, con, rows, kwargs,
                                                                                      expected):
    bad = events_file(tmp_path / "events-bad.parquet", rows, **kwargs)
    good = events_file(tmp_path / "events-good.parquet", [ev(A, t(1))])
    files = order_files(con, [bad, good])
    refused = next(f for f in files if f.error is not None)
    assert refused.path == bad and [f.path for f in files if f.is_new] == [good]
    message = str(refused.error)
    assert message.startswith(str(bad)) and all(part in message for part in expected), message
    assert message == ingest_refusal(tmp_path, bad)
    with pytest.raises(MktoolError) as err:
        load_batch(con, with_scenes(load_project(MATRICES)), refused)
    assert str(err.value) == message


def test_an_unreadable_file_is_refused_naming_it(tmp_path, con):
    garbage = tmp_path / "events-1.parquet"
    garbage.write_bytes(b"PAR1 not really")
    zero = tmp_path / "events-2.parquet"
    zero.write_bytes(b"")
    files = order_files(con, [garbage, zero])
    assert [f.path for f in files] == [garbage, zero]
    for f in files:
        assert f.error is not None and str(f.error).startswith(str(f.path)) and str(f.error) == ingest_refusal(
            tmp_path, f.path)
    assert "not a readable Parquet file" in str(files[0].error) and "empty file (0 bytes)" in str(files[1].error)


def test_a_damaged_file_or_a_dangling_link_is_refused_by_name_and_the_others_go_on(tmp_path, con):
    rows = [ev(f"138{i:08d}", t(1) + dt.timedelta(minutes=i), value=float(i)) for i in range(5000)]
    damaged = events_file(tmp_path / "events-1.parquet", rows)
    data = bytearray(damaged.read_bytes())
    data[200:400] = bytes(b ^ 0xFF for b in data[200:400])  # a data page, not the footer: the schema still reads
    damaged.write_bytes(bytes(data))
    os.symlink(tmp_path / "gone.parquet", tmp_path / "events-2.parquet")
    good = events_file(tmp_path / "events-3.parquet", [ev(A, t(2))])
    files = order_files(con, event_files(tmp_path))
    assert [(f.path.name, f.is_new) for f in files] == [("events-3.parquet", True), ("events-1.parquet", False),
                                                        ("events-2.parquet", False)]
    assert files[0].path == good
    assert str(files[1].error).startswith(f"{damaged}: table events: damaged Parquet file: DuckDB cannot read it")
    assert str(files[2].error).startswith(f"{tmp_path / 'events-2.parquet'}: cannot read (No such file")


def test_event_type_and_msisdn_are_normalised_exactly_as_ingest_stores_them(tmp_path, con, project):
    rows = [{**ev(" 13800000001\u3000", t(1, 10), " balance_low\t"), "value": "4"},
            {**ev(B, t(1, 11), "Balance_Low"), "value": " 2.0"}, {**ev(C, t(1, 12)), "value": "3.5"}]
    path = events_file(tmp_path / "events-1.parquet", rows, types={"value": pa.string()})
    settings = Settings(db_path=tmp_path / "ingest.duckdb", matrices_dir=MATRICES, memory_limit="1GB", threads=2)
    with Database(settings, write=True) as db:
        ingest(db, [path], table="events")
        ingested = db.c.execute("SELECT msisdn, event_time, event_type, value FROM events "
                                "ORDER BY event_time").fetchall()
    files = order_files(con, [path])
    load_batch(con, with_scenes(project, scene(expires=dt.timedelta(days=99))), files[0])
    loaded = con.execute("SELECT msisdn, event_time, event_type, value FROM _s_events ORDER BY seq").fetchall()
    # the contract lower-cases event_type (a scene's is a lower-case identifier): Balance_Low is no other event
    assert loaded == ingested == [(A, t(1, 10), "balance_low", 4.0), (B, t(1, 11), "balance_low", 2.0),
                                  (C, t(1, 12), "balance_low", 3.5)]
    assert outcomes(con, "msisdn", "outcome") == [(A, "fired"), (B, "fired"), (C, "fired")]


def test_load_batch_decides_against_the_ledger_and_leaves_the_events_table_alone(tmp_path, con, project):
    con.execute("CREATE TABLE events (msisdn VARCHAR, event_time TIMESTAMP, event_type VARCHAR, value DOUBLE)")
    con.execute("INSERT INTO events VALUES (?, ?, 'balance_low', 1.0)", [A, t(1)])
    prepaid = scene(when="payment = 'prepaid' AND churn_flag", waves=BELOW, expires=dt.timedelta(hours=1))
    proj = with_scenes(project, prepaid)
    con.execute(f"INSERT INTO {SCENE_FILES_TABLE} VALUES ('c0ffee', 'events-0.parquet', 'x', 1, 1, ?, ?, 'c0ffee', "
                "DATE '2026-10-10', TIMESTAMP '2026-12-01 10:00:00')", [t(9), t(10, 12)])
    earlier(con, {"msisdn": A, "event_time": t(10, 11, 30), "scene_id": "low", "wave": "below_10", "wave_level": 1,
                  "batch": "c0ffee"})
    path = events_file(tmp_path / "events-1.parquet", [
        ev(A, t(10, 11, 30), value=4.0),  # the same key as the earlier batch: duplicate
        ev(A, t(10, 11, 45), value=3.0),  # a deeper wave 15 minutes after the earlier wave-1 trigger: fires
        ev(A, t(10, 11, 50), value=8.0),  # wave 1 within once_per of both: blocked by the latest (this batch's)
        ev(B, t(10, 10, 59, 59), value=1.0),  # 1 h 1 s before the watermark: stale
        ev(X, t(10, 13), value=1.0),  # after the watermark, unknown
        ev(C, t(10, 13), "roaming_start", 1.0)])
    files = order_files(con, [path])
    batch = load_batch(con, proj, files[0])
    assert isinstance(batch, Batch) and isinstance(files[0], EventFile)
    assert (batch.batch_id, batch.rows, batch.first_event, batch.last_event, batch.watermark) == (
        files[0].checksum[:12], 6, t(10, 10, 59, 59), t(10, 13), t(10, 12))
    assert (batch.cycle_date, batch.month, batch.view_month, batch.fired) == (dt.date(2026, 10, 10), MONTH, MONTH, 1)
    assert dict(batch.counts) == {"duplicate": 1, "no_scene": 1, "stale": 1, "unknown_customer": 1, "not_matched": 0,
                                  "once_per": 1, "fired": 1}
    assert outcomes(con, "msisdn", "event_time", "outcome", "blocked_by_time", "blocked_by_batch") == [
        (B, t(10, 10, 59, 59), "stale", None, None), (A, t(10, 11, 30), "duplicate", None, None),
        (A, t(10, 11, 45), "fired", None, None), (A, t(10, 11, 50), "once_per", t(10, 11, 45), batch.batch_id),
        (X, t(10, 13), "unknown_customer", None, None), (C, t(10, 13), "no_scene", None, None)]
    assert con.execute("SELECT * FROM events").fetchall() == [(A, t(1), "balance_low", 1.0)]
    assert con.execute("SELECT count(*) FROM scene_events").fetchone() == (1,)  # nothing recorded here


def test_an_empty_file_is_a_batch_dated_by_the_watermark(tmp_path, con, project):
    path = events_file(tmp_path / "events-0.parquet", [ev(A, t(1))])
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    batch = load_batch(con, with_scenes(project, scene()), order_files(con, [path])[0])
    assert (batch.rows, batch.first_event, batch.cycle_date) == (0, None, dt.date.today())
    con.execute(f"INSERT INTO {SCENE_FILES_TABLE} (checksum, batch, last_event) VALUES ('x', 'x', ?)", [t(7, 23)])
    batch = load_batch(con, with_scenes(project, scene()), order_files(con, [path])[0])
    assert (batch.cycle_date, batch.month, batch.fired, sum(batch.counts.values())) == (dt.date(2026, 10, 7), MONTH,
                                                                                      0, 0)


def test_a_batch_needs_a_scored_view(tmp_path, project):
    path = events_file(tmp_path / "events-1.parquet", [ev(A, t(1))])
    bare = duckdb.connect()
    with pytest.raises(StateError, match="run `mktool score`"):
        load_batch(bare, with_scenes(project, scene()), order_files(bare, [path])[0])
    bare.execute("CREATE TABLE customer_view (msisdn VARCHAR, month VARCHAR)")
    with pytest.raises(StateError, match="run `mktool score`"):
        load_batch(bare, with_scenes(project, scene()), order_files(bare, [path])[0])


# -- on the fixtures' Quick start database (ingest + score, built once) ------------------------------------
@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("quick") / "mktool.duckdb"
    for args in (["ingest", str(FIXTURES)], ["score", "--month", MONTH]):
        result = CliRunner().invoke(app, [*args, "--db", str(db), "--quiet"])
        assert result.exit_code == 0, result.output
    return db


def sequential(events: list[tuple[Any, ...]], customers: dict[str, tuple[str, bool | None]],
               once_per: dt.timedelta) -> list[tuple[str, dt.datetime, str, str | None]]:
    """An event-by-event reading of §3 for one scene (when: prepaid and churn_flag; waves below_10, below_5;
    nothing stale, no earlier batch): (msisdn, event_time, outcome, wave)."""
    fired: list[tuple[str, dt.datetime, int]] = []
    out = []
    for msisdn, when, value in sorted(events, key=lambda e: (e[1], e[0], e[2])):
        if msisdn not in customers:
            out.append((msisdn, when, "unknown_customer", None))
            continue
        payment, churn = customers[msisdn]
        level = 2 if value < 5 else 1 if value < 10 else 0
        if not (payment == "prepaid" and churn) or not level:
            out.append((msisdn, when, "not_matched", None))
            continue
        wave = "below_5" if level == 2 else "below_10"
        if any(m == msisdn and lv >= level and abs(when - w) < once_per for m, w, lv in fired):
            out.append((msisdn, when, "once_per", wave))
            continue
        fired.append((msisdn, when, level))
        out.append((msisdn, when, "fired", wave))
    return out


def test_a_batch_of_the_fixtures_events_on_the_quick_start_database(quick_start, tmp_path, project):
    db = tmp_path / "mktool.duckdb"
    shutil.copy(quick_start, db)
    con = duckdb.connect(str(db))
    events_before = con.execute("SELECT count(*) FROM events").fetchone()
    low = scene(when="payment = 'prepaid' AND churn_flag", waves=BELOW, expires=dt.timedelta(days=60), once_per=7)
    files = order_files(con, [FIXTURES / "events.parquet"])
    batch = load_batch(con, with_scenes(project, low), files[0])
    events = con.execute("SELECT msisdn, event_time, value FROM events WHERE event_type = 'balance_low'").fetchall()
    customers = {m: (p, c) for m, p, c in con.execute(
        "SELECT msisdn, payment, churn_flag FROM customer_view WHERE month = ?", [MONTH]).fetchall()}
    expected = sequential(events, customers, dt.timedelta(days=7))
    got = con.execute("SELECT msisdn, event_time, outcome, wave FROM _s_outcomes WHERE scene_id = 'low' "
                      "ORDER BY seq").fetchall()
    assert got == expected and len(got) == 35
    assert {"fired", "not_matched"} <= {o for _, _, o, _ in got}
    assert batch.counts["no_scene"] == batch.rows - 35 - batch.counts["duplicate"]
    assert (batch.view_month, batch.cycle_date) == (MONTH, batch.last_event.date() if batch.last_event else None)
    assert con.execute("SELECT count(*) FROM events").fetchone() == events_before
    con.close()


def test_a_batch_is_refused_on_a_view_older_than_a_load_it_reads(quick_start, tmp_path, project):
    db = tmp_path / "mktool.duckdb"
    shutil.copy(quick_start, db)
    changed = tmp_path / "usage_2026-10.parquet"
    table = pq.read_table(FIXTURES / "usage_2026-10.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("sms_count"), "sms_count",
                                    pa.array([v + 1 for v in table.column("sms_count").to_pylist()],
                                             table.schema.field("sms_count").type)), changed)
    result = CliRunner().invoke(app, ["ingest", str(changed), "--db", str(db), "--quiet"])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db))
    with pytest.raises(StateError, match="customer_view for 2026-10 is stale"):
        load_batch(con, with_scenes(project, scene()), order_files(con, [FIXTURES / "events.parquet"])[0])
    con.close()


def record(con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
    """What the delivery step's publish unit records of a batch (its ledger row and scene_events)."""
    q = ledger_query(batch, dt.datetime(2026, 12, 1))
    con.execute(q.sql, q.params)
    con.execute("INSERT INTO scene_events BY NAME SELECT ? AS batch, * FROM _s_outcomes", [batch.batch_id])


def test_a_late_file_is_judged_at_the_watermark_of_the_batches_before_it(tmp_path, con, project):
    low = scene(waves=BELOW, expires=dt.timedelta(hours=1), once_per=30)
    proj = with_scenes(project, low)
    first = events_file(tmp_path / "events-10.parquet", [ev(A, t(10, 9), value=8.0), ev(B, t(10, 12), value=8.0)])
    late = events_file(tmp_path / "events-09.parquet", [
        ev(A, t(10, 11, 0, 1), value=3.0),  # 59 min 59 s before the watermark, a deeper wave: fires
        ev(A, t(10, 11, 30), value=9.0),  # wave 1: blocked by both A's triggers, named by the latest (this batch's)
        ev(B, t(10, 10, 59, 59), value=4.0),  # 1 h 1 s before the watermark: stale
        ev(B, t(10, 12), value=8.0),  # the same key as in the first batch: duplicate
        ev(C, t(10, 11, 59), value=1.0)])  # C's churn_flag is NULL, but no when: fires
    b1 = load_batch(con, proj, order_files(con, [first])[0])
    assert (b1.watermark, b1.fired) == (None, 2)
    record(con, b1)
    b2 = load_batch(con, proj, order_files(con, [late])[0])
    assert (b2.watermark, b2.cycle_date, b2.first_event) == (t(10, 12), dt.date(2026, 10, 10), t(10, 10, 59, 59))
    assert outcomes(con, "msisdn", "event_time", "wave", "outcome", "blocked_by_batch") == [
        (B, t(10, 10, 59, 59), None, "stale", None), (A, t(10, 11, 0, 1), "below_5", "fired", None),
        (A, t(10, 11, 30), "below_10", "once_per", b2.batch_id), (C, t(10, 11, 59), "below_5", "fired", None),
        (B, t(10, 12), None, "duplicate", None)]
    record(con, b2)
    assert ledger_watermark(con) == t(10, 12)
    assert order_files(con, [first, late])[0].entry is not None


def test_load_batch_reads_every_earlier_row_that_can_matter_at_the_edges_of_its_reach(tmp_path, con, project):
    """scene_events is read from first_event − once_per to last_event + once_per (the longest once_per of
    the scenes): a trigger just inside either edge still blocks, a duplicate at the last event is still one."""
    first, last = t(20, 8), t(25, 8)
    upper = last + dt.timedelta(days=29)
    earlier(con, {"msisdn": A, "event_time": first - dt.timedelta(days=30) + dt.timedelta(seconds=1),
                  "scene_id": "pack", "wave_level": 1},
            {"msisdn": B, "event_time": first - dt.timedelta(days=30), "scene_id": "pack", "wave_level": 1},
            {"msisdn": C, "event_time": last, "outcome": "no_scene"},
            {"msisdn": C, "event_time": upper, "scene_id": "pack", "wave_level": 1})
    pack = scene("pack", policy="PACK", once_per=30, expires=dt.timedelta(days=60), position=2)
    proj = with_scenes(project, scene(expires=dt.timedelta(days=60), once_per=7), pack)
    path = events_file(tmp_path / "events-1.parquet", [ev(A, first), ev(B, first), ev(C, t(25, 7)), ev(C, last)])
    load_batch(con, proj, order_files(con, [path])[0])
    assert outcomes(con, "msisdn", "event_time", "scene_id", "outcome", "blocked_by_time") == [
        (A, first, "low", "fired", None), (A, first, "pack", "once_per", first - dt.timedelta(days=30, seconds=-1)),
        (B, first, "low", "fired", None), (B, first, "pack", "fired", None),  # exactly 30 days
        (C, t(25, 7), "low", "fired", None), (C, t(25, 7), "pack", "once_per", upper),  # 29 days 1 hour
        (C, last, None, "duplicate", None)]
