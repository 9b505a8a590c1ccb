"""`mktool scene` gives DuckDB's lists and records on Spark (issue 16), after the fixtures' month through
export (tests/spark_month.py, built once).

On each engine, on a private copy of the month: two of the fixtures' daily event files as one
invocation (a hold-out, a deeper wave, conditions not met, sms lists), then a second invocation over
a folder holding those two again, a renamed copy of one (skipped by the ledger, said so) and a
crafted late file with every outcome and path the fixtures' days lack: a duplicate of an earlier
batch's key, a stale event, once_per against an earlier batch's trigger and inside the batch (the
rounds), a deeper wave firing within once_per, a trigger blocked at the sms cap, an unknown
customer and an event no scene listens to. Then ``evaluate`` counts the scene batches' contacts with
the month's. The tests compare the lists and funnel.json byte for byte, the manifests but for the
run's id, time, command line and engine, and the ledger (but for processed_at), scene_events,
scene_funnels, the scene contacts and hold-outs row for row.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import spark_month
from conftest import ROOT, M, MonthRun
from typer.testing import Result

from mktool.config import Settings
from mktool.database import Database

EVENTS = ROOT / "fixtures" / "events"
DAYS = ["events-2026-10-03.parquet", "events-2026-10-04.parquet"]  # three batches in all: Spark takes minutes each
#: The late file (processed after the four days: watermark 2026-10-04 20:04:32) and what DuckDB decides.
LATE = [
    ("13800001540", "2026-10-04 02:03:45", "balance_low", 5.0),  # duplicate of 10-04's key (another value)
    ("13800000090", "2026-10-04 10:00:00", "data_100pct", 130.0),  # stale: 10 h behind the watermark (1 h allowed)
    ("13800000761", "2026-10-09 02:00:00", "data_100pct", 101.0),  # fires
    ("13800000761", "2026-10-10 02:00:00", "data_100pct", 102.0),  # once_per within the batch (round 1's trigger)
    ("13800000761", "2026-10-16 02:00:00", "data_100pct", 103.0),  # fires in round 2: exactly 7 days after
    ("13800000243", "2026-10-06 08:00:00", "data_100pct", 150.0),  # fires, blocked: October's sms cap already used
    ("13800001792", "2026-10-05 09:00:00", "balance_low", 8.0),  # once_per: below_10 after 10-04's below_5
    ("13800000022", "2026-10-05 09:00:00", "balance_low", 8.0),  # fires below_10
    ("13800000022", "2026-10-05 12:00:00", "balance_low", 4.0),  # fires below_5: a deeper wave within once_per
    ("13800000022", "2026-10-05 13:00:00", "balance_low", 3.0),  # once_per (below_5 again)
    ("13899999999", "2026-10-05 10:00:00", "roaming_start", 5.0),  # unknown customer
    ("13800000203", "2026-10-05 11:00:00", "no_such_event", 1.0),  # no scene listens
]
#: Tables a batch writes, with the columns that are the wall clock's (never compared).
RECORDS = {"scene_files": ("processed_at",), "scene_events": (), "scene_funnels": ()}


class Runs:
    def __init__(self, site: spark_month.Site, inbox1: Path, inbox2: Path) -> None:
        self.site, self.inbox1, self.inbox2 = site, inbox1, inbox2
        self.results: dict[str, dict[str, Result]] = {}

    def settings(self, engine: str) -> Settings:
        if engine == "duckdb":
            return Settings(db_path=self.site.db())
        return Settings(db_path=self.site.root / "unused.duckdb", engine="spark", warehouse=str(self.site.warehouse()))

    def rows(self, engine: str, sql: str) -> list[tuple[Any, ...]]:
        with Database(self.settings(engine), write=False) as db:
            return sorted(db.c.execute(sql).fetchall(), key=repr)

    def table(self, engine: str, table: str, skip: tuple[str, ...] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        with Database(self.settings(engine), write=False) as db:
            columns = [c for c in db.columns(table) if c not in skip]
            return columns, sorted(db.c.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall(), key=repr)


def _late_file(path: Path) -> Path:
    table = pa.table({"msisdn": [r[0] for r in LATE],
                      "event_time": pa.array([dt.datetime.fromisoformat(r[1]) for r in LATE], pa.timestamp("us")),
                      "event_type": [r[2] for r in LATE], "value": [r[3] for r in LATE]})
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def runs(fixtures_month: MonthRun, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    month = spark_month.fixtures_month(fixtures_month, tmp_path_factory)
    root = tmp_path_factory.mktemp("spark-scene")
    site = spark_month.copy_of(month, root / "site")
    inbox1, inbox2 = root / "inbox1", root / "inbox2"
    inbox1.mkdir()
    inbox2.mkdir()
    for name in DAYS:
        shutil.copy(EVENTS / name, inbox1 / name)
        shutil.copy(EVENTS / name, inbox2 / name)
    shutil.copy(EVENTS / DAYS[0], inbox2 / "copy-of-03.parquet")
    _late_file(inbox2 / "events-late.parquet")
    out = Runs(site, inbox1, inbox2)
    for name, inbox in (("first", inbox1), ("again", inbox2)):
        out.results[name] = {e: site.mktool(e, "scene", "--events", str(inbox), "--out", str(site.out(e)))
                             for e in spark_month.ENGINES}
    out.results["evaluate"] = {e: site.mktool(e, "evaluate", "--month", M, "--by", "matrix,policy_id",
                                              "--format", "json") for e in spark_month.ENGINES}
    return out


def test_both_invocations_say_the_same(runs: Runs) -> None:
    for name in ("first", "again"):
        duck, spark = (runs.results[name][e] for e in spark_month.ENGINES)
        assert duck.exit_code == 0, duck.output
        assert (spark.exit_code, spark.output) == (duck.exit_code, duck.output), name
    first = runs.results["first"]["duckdb"].output
    assert all(f"{name} → batch" in first for name in DAYS), first
    again = runs.results["again"]["duckdb"].output
    assert "events-late.parquet → batch" in again and again.count("skipped") == 3, again
    assert "skipped copy-of-03.parquet: already processed as batch" in again
    assert "(as events-2026-10-03.parquet)" in again


def _batch_files(site: spark_month.Site, engine: str) -> dict[str, Path]:
    root = site.out(engine) / "scenes"
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


#: What two manifests of one batch may differ in: which run, when, how it was started, on which engine.
_MANIFEST_VARIES = ("run_id", "created_at", "command_line", "engine")


def _comparable_manifest(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    for key in _MANIFEST_VARIES:
        assert doc.pop(key), key
    for entry in doc["outputs"].values():
        entry.pop("run_id")
    return dict(doc)


def test_the_batch_folders_are_byte_identical_but_for_the_run(runs: Runs) -> None:
    files = {e: _batch_files(runs.site, e) for e in spark_month.ENGINES}
    assert sorted(files["spark"]) == sorted(files["duckdb"])
    assert len([n for n in files["duckdb"] if n.endswith("manifest.json")]) == 3  # two days and the late file
    for name, path in files["duckdb"].items():
        other = files["spark"][name]
        if name.endswith("manifest.json"):
            assert json.loads(other.read_text(encoding="utf-8"))["engine"]["name"] == "spark"
            assert _comparable_manifest(other) == _comparable_manifest(path), name
        else:
            assert other.read_bytes() == path.read_bytes(), name
    listed = sum(path.stat().st_size > 200 for name, path in files["duckdb"].items() if name.endswith("sms.csv"))
    assert listed >= 3, files["duckdb"]  # lists with rows, not only headers


def test_the_ledger_scene_events_and_funnels_are_the_same(runs: Runs) -> None:
    for table, skip in RECORDS.items():
        duck = runs.table("duckdb", table, skip)
        assert duck[1], table
        assert runs.table("spark", table, skip) == duck, table
    outcomes = Counter((r[0], r[1], r[2]) for r in runs.rows(
        "duckdb", "SELECT outcome, coalesce(wave, '-'), coalesce(delivery, '-') FROM scene_events"))
    for expected in (("duplicate", "-", "-"), ("stale", "-", "-"), ("unknown_customer", "-", "-"),
                     ("no_scene", "-", "-"), ("not_matched", "-", "-"), ("once_per", "1", "-"),
                     ("once_per", "below_5", "-"), ("once_per", "below_10", "-"), ("fired", "below_10", "merged"),
                     ("fired", "below_5", "listed"), ("fired", "1", "listed"), ("fired", "1", "held_out"),
                     ("fired", "1", "blocked")):
        assert outcomes[expected], (expected, outcomes)
    blocked = runs.rows("duckdb", "SELECT blocked_by_batch FROM scene_events WHERE outcome = 'once_per'")
    assert len({r[0] for r in blocked}) == 2, blocked  # by an earlier batch's trigger, and by the batch's own


def test_the_scene_contacts_and_hold_outs_are_the_same(runs: Runs) -> None:
    for table in ("contact_history", "holdouts"):
        sql = f"SELECT * FROM {table} WHERE cycle LIKE 'scene:%'"
        duck = runs.rows("duckdb", sql)
        assert duck, table
        assert runs.rows("spark", sql) == duck, table
    duck, spark = (runs.results["evaluate"][e] for e in spark_month.ENGINES)
    assert duck.exit_code == 0, duck.output
    assert spark.stdout == duck.stdout
    assert any(r["matrix"] == "scene" for r in json.loads(duck.stdout)["rows"])  # the batches count in the month
