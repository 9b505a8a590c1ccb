"""Cycles that are kept (issue 12 item 3): every export cycle in its own folder
``<out>/<month>/<cycle-date>/`` with its lists, funnel.json and manifest.json, the ``latest``
pointers, funnel.json and ``mktool funnel --date`` per cycle, and the README's cron recipe.

The crafted world uses push channels only (sms, outbound: daily; manager: monthly) for the
hand-computed lists: sms has room for one offer a cycle, taken by the best value_score.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from conftest import FIXTURES, MATRICES, M, cycle_dir, mktool, mktool_here, slow_beyond
from test_export import World, c, make_world, rec
from test_safety import db_state, files_state
from typer.testing import CliRunner

from mktool.cli import app

DAY1, DAY2, DAY3 = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)
LIST_SUFFIXES = (".csv", ".jsonl", ".parquet")
ALL_LISTS = ["app.csv", "frontdesk.csv", "inbound.csv", "manager.csv", "outbound.csv", "sms.csv"]
DAILY_LISTS = ["app.csv", "outbound.csv", "sms.csv"]


def crafted(tmp_path: Path) -> World:
    """c1..c3 and c5 want T1 by sms (values 90, 80, 60, 70: sms takes one a cycle, the best first),
    c3 T2 by outbound, c4 T3 by the account manager (monthly); c6 T1 by sms in 2026-09."""
    recs = [rec(c(1), 1, "T1", ["sms"]), rec(c(2), 1, "T1", ["sms"]), rec(c(5), 1, "T1", ["sms"]),
            rec(c(3), 1, "T2", ["outbound"]), rec(c(4), 1, "T3", ["manager"]),
            rec(c(6), 1, "T1", ["sms"], month="2026-09")]  # another month, for the overall pointer
    return make_world(tmp_path, recs, values={c(1): 90.0, c(2): 80.0, c(3): 60.0, c(4): 50.0, c(5): 70.0},
                      channels={"sms": {"capacity": 1}})


def pairs(path: Path) -> set[tuple[str, str]]:
    return {(r["msisdn"], r["policy_id"]) for r in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_intact(folder: Path, cycle_date: str) -> dict[str, Any]:
    """A cycle folder is complete and is what its manifest says: exactly its lists, each hash and row count
    matching the file on disk, all of this cycle, and funnel.json naming the cycle beside them (and report.html
    where `mktool run` wrote one: not a list, not in the manifest)."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    lists = sorted(p.name for p in folder.iterdir() if p.suffix in LIST_SUFFIXES)
    report = ["report.html"] if (folder / "report.html").is_file() else []
    assert sorted(p.name for p in folder.iterdir()) == sorted([*lists, "funnel.json", "manifest.json", *report])
    assert sorted(manifest["outputs"]) == lists
    assert manifest["cycle_date"] == cycle_date
    for name, entry in manifest["outputs"].items():
        data = (folder / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert entry["cycle"] == cycle_date, name
        if name.endswith(".csv"):
            assert entry["rows"] == len(data.decode("utf-8").splitlines()) - 1, name
    doc = json.loads((folder / "funnel.json").read_text(encoding="utf-8"))
    assert doc["cycle_date"] == cycle_date and doc["month"] == manifest["month"]
    channels = {f"channel:{e['channel']}" for e in manifest["outputs"].values()}
    assert {name for name in doc["funnels"] if name.startswith("channel:")} == channels
    assert manifest["funnels"] == doc["funnels"]
    return manifest


def sent(w: World) -> list[tuple[Any, ...]]:
    return w.query("SELECT cycle, channel, msisdn, policy_id FROM contact_history WHERE outcome = 'sent' "
                   "ORDER BY ALL")


def three_cycles(w: World) -> None:
    """The monthly cycle on the 1st (every channel), then two daily cycles (the daily channels)."""
    w.export(date=DAY1)
    w.export(date=DAY2, only_cycle="daily")
    w.export(date=DAY3, only_cycle="daily")


# == two daily cycles and a monthly cycle in one month ==================================================
def test_a_monthly_and_two_daily_cycles_each_keep_their_own_complete_folder(tmp_path):
    w = crafted(tmp_path)
    three_cycles(w)
    month = w.out / M
    assert sorted(p.name for p in month.iterdir()) == ["2026-11-01", "2026-11-02", "2026-11-03", "latest"]
    monthly = assert_intact(cycle_dir(w.out, M, DAY1), "2026-11-01")
    assert sorted(monthly["outputs"]) == ALL_LISTS
    for day in (DAY2, DAY3):
        assert sorted(assert_intact(cycle_dir(w.out, M, day), day.isoformat())["outputs"]) == DAILY_LISTS
    # sms takes one offer a cycle, the best value first, and never repeats an offer made earlier in the month
    assert pairs(cycle_dir(w.out, M, DAY1) / "sms.csv") == {(c(1), "T1")}
    assert pairs(cycle_dir(w.out, M, DAY2) / "sms.csv") == {(c(2), "T1")}
    assert pairs(cycle_dir(w.out, M, DAY3) / "sms.csv") == {(c(5), "T1")}
    assert pairs(cycle_dir(w.out, M, DAY1) / "outbound.csv") == {(c(3), "T2")}
    assert pairs(cycle_dir(w.out, M, DAY2) / "outbound.csv") == set()
    assert pairs(cycle_dir(w.out, M, DAY1) / "manager.csv") == {(c(4), "T3")}
    # every record's cycle id is its cycle date, the monthly channel's too
    assert sent(w) == [("2026-11-01", "manager", c(4), "T3"), ("2026-11-01", "outbound", c(3), "T2"),
                       ("2026-11-01", "sms", c(1), "T1"), ("2026-11-02", "sms", c(2), "T1"),
                       ("2026-11-03", "sms", c(5), "T1")]


def test_the_latest_pointers_name_the_newest_cycle_and_never_move_back(tmp_path):
    w = crafted(tmp_path)
    w.export(date=DAY2, only_cycle="daily")
    assert os.readlink(w.out / M / "latest") == "2026-11-02"
    assert os.readlink(w.out / "latest") == "2026-10/2026-11-02"
    w.export(date=DAY1)  # an older cycle published later: the pointers stay on the newest date
    assert os.readlink(w.out / M / "latest") == "2026-11-02" and os.readlink(w.out / "latest") == "2026-10/2026-11-02"
    w.export(date=DAY3, only_channel="sms")
    assert os.readlink(w.out / M / "latest") == "2026-11-03"
    assert (w.out / "latest" / "sms.csv").read_bytes() == (cycle_dir(w.out, M, DAY3) / "sms.csv").read_bytes()
    assert sorted(p.name for p in (w.out / M / "latest").iterdir()) == ["funnel.json", "manifest.json", "sms.csv"]
    w.export(month="2026-09", date=dt.date(2026, 10, 20))  # another month's cycle, older: only its month's pointer
    assert os.readlink(w.out / "2026-09" / "latest") == "2026-10-20"
    assert os.readlink(w.out / "latest") == "2026-10/2026-11-03"
    assert not [p for p in (w.out / M).iterdir() if p.name.startswith(".")]  # no temporary link left


def test_a_daily_rerun_replaces_only_its_own_folder_and_records(tmp_path):
    w = crafted(tmp_path)
    three_cycles(w)
    first, third = folder_bytes(cycle_dir(w.out, M, DAY1)), folder_bytes(cycle_dir(w.out, M, DAY3))
    funnels_day3 = w.query("SELECT * FROM funnel_counts WHERE cycle = '2026-11-03' ORDER BY ALL")
    con = duckdb.connect(str(w.db))
    con.execute("INSERT INTO dnd VALUES (?, 'sms')", [c(2)])  # changed input: the re-run's sms list differs
    con.close()
    result = w.export(date=DAY2, only_cycle="daily")
    assert pairs(cycle_dir(w.out, M, DAY2) / "sms.csv") == {(c(5), "T1")}  # c2 is do-not-disturb now, c5 is next
    assert_intact(cycle_dir(w.out, M, DAY2), "2026-11-02")
    assert folder_bytes(cycle_dir(w.out, M, DAY1)) == first  # other cycles' files, manifests included, untouched
    assert folder_bytes(cycle_dir(w.out, M, DAY3)) == third
    assert sent(w) == [("2026-11-01", "manager", c(4), "T3"), ("2026-11-01", "outbound", c(3), "T2"),
                       ("2026-11-01", "sms", c(1), "T1"), ("2026-11-02", "sms", c(5), "T1"),
                       ("2026-11-03", "sms", c(5), "T1")]
    assert w.query("SELECT * FROM funnel_counts WHERE cycle = '2026-11-03' ORDER BY ALL") == funnels_day3
    doc = json.loads((cycle_dir(w.out, M, DAY2) / "funnel.json").read_text(encoding="utf-8"))
    assert doc["funnels"]["channel:sms"] == [{"stage": s, "count": n} for s, n in
                                             next(ch for ch in result.channels if ch.channel == "sms").stages]
    assert os.readlink(w.out / M / "latest") == "2026-11-03"  # the re-run of an older date does not move it back


def test_a_new_cycle_of_one_channel_holds_that_list_only_and_a_rerun_keeps_the_cycle_s_others(tmp_path):
    w = crafted(tmp_path)
    w.export(date=DAY2, only_channel="sms")
    assert sorted(assert_intact(cycle_dir(w.out, M, DAY2), "2026-11-02")["outputs"]) == ["sms.csv"]
    w.export(date=DAY2, only_channel="outbound")  # the same cycle again, another channel: sms stays beside it
    manifest = assert_intact(cycle_dir(w.out, M, DAY2), "2026-11-02")
    assert sorted(manifest["outputs"]) == ["outbound.csv", "sms.csv"]
    assert pairs(cycle_dir(w.out, M, DAY2) / "sms.csv") == {(c(1), "T1")}


def test_latest_command_finds_a_channel_s_newest_list_in_whichever_cycle_has_it(tmp_path):
    w = crafted(tmp_path)
    three_cycles(w)
    w.export(month="2026-09", date=dt.date(2026, 11, 5), only_channel="sms")  # a later date, an older data month
    runner = CliRunner()

    def latest(*args: str) -> Any:
        return runner.invoke(app, ["latest", "--out", str(w.out), *args])

    manager = latest("--channel", "manager")  # monthly: only the 1st's folder has it
    assert manager.exit_code == 0, manager.output
    assert manager.stdout == f"{cycle_dir(w.out, M, DAY1) / 'manager.csv'}\n"
    assert latest("--channel", "sms").stdout == f"{cycle_dir(w.out, '2026-09', dt.date(2026, 11, 5)) / 'sms.csv'}\n"
    assert latest("--channel", "sms", "--month", M).stdout == f"{cycle_dir(w.out, M, DAY3) / 'sms.csv'}\n"
    assert latest("--channel", "outbound").stdout == f"{cycle_dir(w.out, M, DAY3) / 'outbound.csv'}\n"
    none = latest("--channel", "manager", "--month", "2026-09")
    assert none.exit_code == 1 and "no published list of channel 'manager'" in none.stderr and none.stdout == ""
    (cycle_dir(w.out, M, DAY1) / "manifest.json").unlink()  # a folder without its manifest is not published
    assert latest("--channel", "manager").exit_code == 1


# == funnel.json and `mktool funnel` per cycle ==========================================================
def test_a_daily_cycle_s_funnel_json_holds_only_its_channels_with_its_date(tmp_path):
    w = crafted(tmp_path)
    three_cycles(w)
    doc = json.loads((cycle_dir(w.out, M, DAY2) / "funnel.json").read_text(encoding="utf-8"))
    assert doc["month"] == M and doc["cycle_date"] == "2026-11-02"
    assert sorted(doc["funnels"]) == ["channel:app", "channel:outbound", "channel:sms"]
    sms = {s["stage"]: s["count"] for s in doc["funnels"]["channel:sms"]}
    # c1's T1 was made on the 1st: c2 and c5 are the candidates, capacity 1 keeps c2
    assert (sms["candidates"], sms["dedupe"], sms["capacity"], sms["exported"]) == (2, 2, 1, 1)
    outbound = {s["stage"]: s["count"] for s in doc["funnels"]["channel:outbound"]}
    assert (outbound["candidates"], outbound["exported"]) == (0, 0)  # c3's T2 went out on the 1st
    monthly = json.loads((cycle_dir(w.out, M, DAY1) / "funnel.json").read_text(encoding="utf-8"))
    assert sorted(monthly["funnels"]) == sorted(f"channel:{n.split('.')[0]}" for n in ALL_LISTS)
    assert {s["stage"]: s["count"] for s in monthly["funnels"]["channel:sms"]}["candidates"] == 3


def test_funnel_command_per_cycle_and_for_every_cycle(tmp_path):
    w = crafted(tmp_path)
    three_cycles(w)
    runner = CliRunner()
    base = ["funnel", "--month", M, "--db", str(w.db), "--matrices", str(w.matrices)]
    as_json = runner.invoke(app, [*base, "--date", "2026-11-02", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == json.loads((cycle_dir(w.out, M, DAY2) / "funnel.json").read_text("utf-8"))
    as_csv = runner.invoke(app, [*base, "--date", "2026-11-03", "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert sorted({r["funnel"] for r in rows}) == ["channel:app", "channel:outbound", "channel:sms"]
    assert [(r["stage"], r["count"]) for r in rows if r["funnel"] == "channel:sms"][0] == ("candidates", "1")
    every = runner.invoke(app, [*base, "--format", "csv"])
    assert every.exit_code == 0, every.output
    names = [r["funnel"] for r in csv.DictReader(io.StringIO(every.stdout))]
    assert list(dict.fromkeys(names)) == [
        "channel:app@2026-11-01", "channel:frontdesk@2026-11-01", "channel:inbound@2026-11-01",
        "channel:manager@2026-11-01", "channel:outbound@2026-11-01", "channel:sms@2026-11-01",
        "channel:app@2026-11-02", "channel:outbound@2026-11-02", "channel:sms@2026-11-02",
        "channel:app@2026-11-03", "channel:outbound@2026-11-03", "channel:sms@2026-11-03"]
    table = runner.invoke(app, [*base, "--date", "2026-11-02"])
    assert table.exit_code == 0 and "cycle 2026-11-02" in table.stdout and "channel:sms" in table.stdout
    assert "channel:manager" not in table.stdout
    missing = runner.invoke(app, [*base, "--date", "2026-11-09"])
    assert missing.exit_code == 1
    assert "no export cycle on 2026-11-09" in missing.stderr and "2026-11-01, 2026-11-02, 2026-11-03" in missing.stderr


# == a database from before cycles were kept ============================================================
def test_a_database_with_monthly_cycle_ids_and_an_old_funnel_table_keeps_working(tmp_path):
    w = crafted(tmp_path)
    w.export(date=DAY1)
    con = duckdb.connect(str(w.db))  # as an earlier mktool left it: monthly records under 'YYYY-MM'
    con.execute("UPDATE contact_history SET cycle = ? WHERE channel = 'manager'", [M])
    con.execute("ALTER TABLE funnel_counts DROP COLUMN cycle")
    con.close()
    runner = CliRunner()
    base = ["funnel", "--month", M, "--db", str(w.db), "--matrices", str(w.matrices), "--format", "csv"]
    old = runner.invoke(app, base)  # read-only: the table is read as it is, channel funnels without a date
    assert old.exit_code == 0, old.output
    assert "channel:sms" in {r["funnel"] for r in csv.DictReader(io.StringIO(old.stdout))}
    w.export(date=DAY2, only_cycle="daily")  # migrates funnel_counts in place
    assert "cycle" in {r[0] for r in w.query("DESCRIBE funnel_counts")}
    names = {r["funnel"] for r in csv.DictReader(io.StringIO(runner.invoke(app, base).stdout))}
    assert {"channel:sms", "channel:sms@2026-11-02"} <= names  # the old funnel keeps its bare name
    w.export(date=DAY1)  # re-running the monthly cycle: the 'YYYY-MM' record is another, earlier cycle's, kept
    assert [r for r in sent(w) if r[1] == "manager"] == [("2026-10", "manager", c(4), "T3")]  # not recorded twice
    assert pairs(cycle_dir(w.out, M, DAY1) / "manager.csv") == {(c(4), "T3")}
    assert_intact(cycle_dir(w.out, M, DAY1), "2026-11-01")


# == an interrupted publish leaves the other cycles alone ===============================================
@pytest.mark.parametrize("fault", slow_beyond(["write_manifest:kill", "before_commit:kill", "between_renames:kill",
                                               "after_commit:enospc"], {"between_renames:kill"}))
def test_an_interrupted_publish_leaves_the_other_cycle_folders_untouched(tmp_path, fault):
    w = crafted(tmp_path)
    three_cycles(w)
    others = {day: folder_bytes(cycle_dir(w.out, M, day)) for day in (DAY1, DAY2, DAY3)}
    before = db_state(w.db), files_state(w.out)
    args = ["export", "--month", M, "--cycle", "daily", "--date", "2026-11-04", "--out", str(w.out),
            "--matrices", str(w.matrices), "--db", str(w.db), "--quiet"]
    interrupted = mktool(*args, fault=fault)
    assert interrupted.returncode in (-signal.SIGKILL, 1), interrupted.stderr
    for day, files in others.items():
        assert folder_bytes(cycle_dir(w.out, M, day)) == files, day
    committed = fault.split(":")[0] in ("between_renames", "after_commit")
    if not committed:
        assert (db_state(w.db), files_state(w.out)) == before
        assert os.readlink(w.out / M / "latest") == "2026-11-03"
    assert mktool_here("status", "--db", str(w.db), "--matrices", str(w.matrices)).exit_code == 0  # finishes it
    for day, files in others.items():
        assert folder_bytes(cycle_dir(w.out, M, day)) == files, day
    if committed:
        assert_intact(cycle_dir(w.out, M, dt.date(2026, 11, 4)), "2026-11-04")
        assert os.readlink(w.out / M / "latest") == "2026-11-04"  # the recovery points at the finished cycle
    again = mktool_here(*args)
    assert again.exit_code == 0, again.output
    assert_intact(cycle_dir(w.out, M, dt.date(2026, 11, 4)), "2026-11-04")
    assert os.readlink(w.out / M / "latest") == "2026-11-04" and os.readlink(w.out / "latest") == "2026-10/2026-11-04"
    for day, files in others.items():
        assert folder_bytes(cycle_dir(w.out, M, day)) == files, day


# == the README's cron recipe, three days, as a user runs it ===========================================
def test_the_readme_cron_recipe_for_three_days_leaves_three_intact_days_of_lists(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "mktool run --month" in readme and "mktool export --month" in readme and "--cycle daily" in readme
    out, db = tmp_path / "lists", tmp_path / "mk.duckdb"
    common = ["--out", str(out), "--db", str(db), "--matrices", str(MATRICES), "--quiet"]
    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    kept: dict[str, dict[str, bytes]] = {}
    for day in days:
        if day.endswith("-01"):  # the 1st: the whole month (ingest of last month's extracts … every channel)
            done = mktool("run", "--month", M, "--ingest", str(FIXTURES), "--date", day, *common, timeout=300)
        else:  # the other days: the daily channels' slice
            done = mktool("export", "--month", M, "--cycle", "daily", "--date", day, *common)
        assert done.returncode == 0, done.stderr
        assert os.readlink(out / M / "latest") == day and os.readlink(out / "latest") == f"{M}/{day}"
        for earlier, files in kept.items():  # a later day never touches an earlier day's folder
            assert folder_bytes(cycle_dir(out, M, earlier)) == files, (day, earlier)
        kept[day] = folder_bytes(cycle_dir(out, M, day))
    assert sorted(p.name for p in (out / M).iterdir()) == [*days, "latest"]
    newest_manager = mktool("latest", "--channel", "manager", "--out", str(out))  # what outbound tooling calls
    assert newest_manager.returncode == 0 and newest_manager.stdout == f"{cycle_dir(out, M, days[0]) / 'manager.csv'}\n"
    channels = {name: cfg["cycle"] for name, cfg in _shipped_channels().items()}
    for day in days:
        manifest = assert_intact(cycle_dir(out, M, day), day)
        expected = sorted(n for n, cycle in channels.items() if day.endswith("-01") or cycle == "daily")
        assert sorted(e["channel"] for e in manifest["outputs"].values()) == expected
    con = duckdb.connect(str(db), read_only=True)
    try:  # each day's records are its own lists' (the daily channels push: every row is a contact)
        recorded = dict(con.execute("SELECT cycle, count(*) FROM contact_history WHERE outcome = 'sent' "
                                    "AND recorded_by = 'mktool' GROUP BY ALL").fetchall())
    finally:
        con.close()
    assert set(recorded) <= set(days)
    for day in days[1:]:
        outputs = json.loads((cycle_dir(out, M, day) / "manifest.json").read_text(encoding="utf-8"))["outputs"]
        assert recorded.get(day, 0) == sum(e["rows"] for e in outputs.values()), day
    assert sum(e["rows"] for e in json.loads((cycle_dir(out, M, days[1]) / "manifest.json").read_text(
        encoding="utf-8"))["outputs"].values()) > 0  # the daily slice has real rows on the fixture


def _shipped_channels() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((MATRICES / "channels.yaml").read_text(encoding="utf-8"))["channels"]
