"""`mktool scene --events fixtures/events/` on the Quick start database (issue 14 §9).

The Quick start (`mktool run --month 2026-10 --ingest fixtures/extracts --date 2026-11-01`) is
built once for the module; then the shipped daily event files go through `mktool scene`, and the
lists' rows per channel, the fired triggers per scene and the outcomes are recomputed independently:
the files read with pyarrow, the default scenes read from matrices/scenes.yaml with plain YAML
(their conditions evaluated over the view's rows), decided by tests/reference_scene.py.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
import reference_scene as ref
import yaml
from conftest import MATRICES, ROOT
from typer.testing import CliRunner

from mktool.cli import app

EVENTS = ROOT / "fixtures" / "events"


class Quickstart:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "mktool.duckdb"
        self.out = root / "out"
        self.runner = CliRunner()

    def mktool(self, *args: str) -> Any:
        return self.runner.invoke(app, [*args, "--db", str(self.db)])


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Quickstart, Any, ref.Run, ref.Reference]:
    qs = Quickstart(tmp_path_factory.mktemp("quickstart"))
    result = qs.mktool("run", "--month", "2026-10", "--ingest", str(ROOT / "fixtures" / "extracts"),
                       "--date", "2026-11-01", "--out", str(qs.out), "--quiet")
    assert result.exit_code == 0, result.output
    # the reference's inputs, read before the scene batches add their own records
    con = duckdb.connect(str(qs.db), read_only=True)
    try:
        view, schema = ref.view_of(con)
        history, dnd = ref.history_of(con), ref.dnd_of(con)
    finally:
        con.close()
    scenes = []  # definitions §1: scenes.yaml first, then scenes/*.yaml by file name, each in list order
    for path in [MATRICES / "scenes.yaml", *sorted((MATRICES / "scenes").glob("*.yaml"))]:
        if path.exists():
            scenes += yaml.safe_load(path.read_text(encoding="utf-8")).get("scenes") or []
    reference = ref.Reference([ref.scene_of(s, n) for n, s in enumerate(scenes, start=1)], view,
                              ref.settings_from(MATRICES), dnd=dnd, history=history, sql=ref.SqlConditions(schema))
    want = reference.run([EVENTS])
    scene = qs.mktool("scene", "--events", str(EVENTS), "--out", str(qs.out))
    return qs, scene, want, reference


def _fetch(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_every_daily_file_is_one_batch_in_day_order(quickstart: tuple[Quickstart, Any, ref.Run, ref.Reference]) -> None:
    qs, scene, want, _ = quickstart
    assert scene.exit_code == 0, scene.output
    files = sorted(p.name for p in EVENTS.glob("events-*.parquet"))
    assert [b.file for b in want.batches] == files  # the days' order is the events' order
    ledger = _fetch(qs.db, "SELECT checksum, batch, rows FROM scene_files")
    assert sorted(r[1] for r in ledger) == sorted(b.batch_id for b in want.batches)
    assert sum(r[2] for r in ledger) == sum(pq.read_metadata(EVENTS / f).num_rows for f in files) == 137
    again = qs.mktool("scene", "--events", str(EVENTS), "--out", str(qs.out))
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") >= len(files) and "already processed as batch" in again.output
    assert _fetch(qs.db, "SELECT count(*) FROM scene_files")[0][0] == len(files)


def test_outcomes_and_fired_triggers_per_scene_match_the_recomputation(
        quickstart: tuple[Quickstart, Any, ref.Run, ref.Reference]) -> None:
    qs, _, want, _ = quickstart
    rows = [o for b in want.batches for o in b.outcomes]
    got = Counter((r[0], r[1]) for r in _fetch(qs.db, "SELECT coalesce(scene_id, '-'), outcome FROM scene_events"))
    expected = Counter((o.scene_id or "-", o.outcome) for o in rows)
    assert got == expected
    # the fixture's shape: the two planted duplicates, no stale event (each day is fresh against the day
    # before), and every default scene's event type present
    assert expected[("-", "duplicate")] == 2
    assert not any(o.outcome == "stale" for o in rows)
    fired = Counter(o.scene_id for o in rows if o.outcome == "fired")
    assert {"balance_low_prepay", "data_90pct_pack", "data_100pct_daypack", "roaming_start_data"} <= set(fired)
    assert sum(fired.values()) > 40, fired


def test_lists_per_channel_match_the_recomputation(quickstart: tuple[Quickstart, Any, ref.Run, ref.Reference]) -> None:
    qs, _, want, _ = quickstart
    for b in want.batches:
        folder = qs.out / "scenes" / b.cycle_date.isoformat() / b.batch_id
        assert (folder / "funnel.json").exists() and (folder / "manifest.json").exists(), folder
        for channel, expected in b.lists.items():
            found = sorted(folder.glob(f"{channel}.*"))
            assert len(found) == 1, (folder, channel)
            got = _rows(found[0])
            assert [(r["msisdn"], r["scene_id"], r["policy_id"], str(r["wave"])) for r in got] == \
                [(r.msisdn, r.scene_id, r.policy_id, r.wave) for r in expected], (b.file, channel)
    per_channel = Counter(r.channel for b in want.batches for rows in b.lists.values() for r in rows)
    listed = Counter(r[0] for r in _fetch(qs.db, "SELECT channel FROM scene_events WHERE delivery = 'listed'"))
    assert listed == per_channel and per_channel["sms"] > 20, per_channel
    sent = Counter(r[0] for r in _fetch(qs.db, "SELECT channel FROM contact_history WHERE cycle LIKE 'scene:%'"))
    assert sent == Counter({c: n for c, n in per_channel.items() if c != "inbound"})  # a pop-up is no contact


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    con = duckdb.connect()
    try:
        reader = "read_csv" if path.suffix == ".csv" else "read_parquet"
        extra = ", all_varchar = true" if path.suffix == ".csv" else ""
        cur = con.execute(f"SELECT * FROM {reader}('{path.as_posix()}'{extra})")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def test_the_hotline_calls_meet_the_minimum_spend_whitelist(
        quickstart: tuple[Quickstart, Any, ref.Run, ref.Reference]) -> None:
    """The 20 hotline calls are decided by hotline_min_spend: fired for whitelisted callers, not_matched
    for the others, never stale (08:00-20:00 calls in their day's file)."""
    qs, _, want, _ = quickstart
    calls = [o for b in want.batches for o in b.outcomes if o.event_type == "hotline_call"]
    assert len(calls) == 20 and all(o.scene_id == "hotline_min_spend" for o in calls)
    assert {o.outcome for o in calls} <= {"fired", "not_matched", "unknown_customer"}
    got = Counter(r[0] for r in _fetch(qs.db, "SELECT outcome FROM scene_events WHERE event_type = 'hotline_call'"))
    assert got == Counter(o.outcome for o in calls)
    assert all(dt.time(8) <= o.event_time.time() < dt.time(20) for o in calls)
