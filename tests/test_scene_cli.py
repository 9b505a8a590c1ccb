"""`mktool scene` (--events, --watch, --once) and explain's "Events and scenes" (issue 14 §6).

explain's section is checked on crafted scene_events / scene_files rows with hand-written reasons;
the command's usage errors in-process; the real loop in a few short subprocesses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
from conftest import ENV, FIXTURES, MATRICES, M, fetch, mktool_here, write_table
from typer.testing import CliRunner

from mktool import explain
from mktool.cli import app
from mktool.database import RunLock
from mktool.rules import Scene, Wave

T = dt.datetime.fromisoformat
A, B = "13800000001", "13800000002"


def scene(id: str, position: int, when: str | None, waves: tuple[Wave, ...], *, expires: dt.timedelta,
          once_per: int = 30) -> Scene:
    return Scene(id=id, name=id, event_type="balance_low", when=when, waves=waves, policy="P",
                 channels=("sms",), expires_after=expires, once_per_days=once_per, position=position)


SCENES = SimpleNamespace(scenes=(
    scene("balance_low_prepay", 1, "payment = 'prepaid' AND churn_flag",
          (Wave("below_10", "value < 10", 1), Wave("below_5", "value < 5", 2)), expires=dt.timedelta(hours=1)),
    scene("postpaid_low", 2, "payment = 'postpaid'", (Wave("1", "TRUE", 1),), expires=dt.timedelta(minutes=30),
          once_per=7),
))

EVENT_COLUMNS = ("batch VARCHAR, seq BIGINT, msisdn VARCHAR, event_time TIMESTAMP, event_type VARCHAR, value DOUBLE, "
                 "scene_id VARCHAR, wave VARCHAR, wave_level INTEGER, outcome VARCHAR, blocked_by_time TIMESTAMP, "
                 "blocked_by_batch VARCHAR, policy_id VARCHAR, delivery VARCHAR, channel VARCHAR, blocked_at VARCHAR, "
                 "held_kind VARCHAR")


def event(batch: str, seq: int, msisdn: str, time: str, type_: str, value: float | None, scene_id: str | None,
          outcome: str, **more: object) -> tuple[object, ...]:
    row = {"wave": None, "wave_level": None, "blocked_by_time": None, "blocked_by_batch": None, "policy_id": None,
           "delivery": None, "channel": None, "blocked_at": None, "held_kind": None, **more}
    return (batch, seq, msisdn, T(time), type_, value, scene_id, row["wave"], row["wave_level"], outcome,
            row["blocked_by_time"], row["blocked_by_batch"], row["policy_id"], row["delivery"], row["channel"],
            row["blocked_at"], row["held_kind"])


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute("CREATE TABLE customer_view (msisdn VARCHAR, month VARCHAR, payment VARCHAR, churn_flag BOOLEAN)")
    c.execute("INSERT INTO customer_view VALUES (?, '2026-10', 'prepaid', true), (?, '2026-10', 'postpaid', false)",
              [A, B])
    return c


def with_events(c: duckdb.DuckDBPyConnection, rows: list[tuple[object, ...]]) -> duckdb.DuckDBPyConnection:
    c.execute(f"CREATE TABLE scene_events ({EVENT_COLUMNS})")
    c.executemany(f"INSERT INTO scene_events VALUES ({', '.join('?' * 17)})", rows)
    c.execute("CREATE TABLE scene_files (checksum VARCHAR, file VARCHAR, batch VARCHAR, first_event TIMESTAMP, "
              "last_event TIMESTAMP, processed_at TIMESTAMP)")
    c.executemany("INSERT INTO scene_files VALUES (?, ?, ?, ?, ?, ?)", [
        ("c1", "e1.parquet", "b1", T("2026-10-05 07:00"), T("2026-10-05 09:00"), T("2026-12-01 10:00")),
        ("c2", "e2.parquet", "b2", T("2026-10-05 10:00"), T("2026-10-05 12:00"), T("2026-12-01 11:00")),
        ("c3", "e3.parquet", "b3", T("2026-10-05 06:00"), T("2026-10-06 08:00"), T("2026-12-01 12:00")),
    ])
    return c


# -- explain's "Events and scenes" --------------------------------------------------------------------
def test_explain_without_scene_batches_says_so(con: duckdb.DuckDBPyConnection) -> None:
    rows, note = explain.scene_events(con, SCENES, "2026-10", A)  # type: ignore[arg-type]
    assert rows == [] and note is not None and "no scene batch was processed" in note


def test_explain_gives_each_scene_outcome_with_its_why(con: duckdb.DuckDBPyConnection) -> None:
    with_events(con, [
        event("b1", 1, A, "2026-10-05 08:00", "balance_low", 8.0, "balance_low_prepay", "fired", wave="below_10",
              wave_level=1, policy_id="P", delivery="listed", channel="sms"),
        event("b1", 1, A, "2026-10-05 08:00", "balance_low", 8.0, "postpaid_low", "not_matched"),
        event("b2", 3, A, "2026-10-05 11:00", "balance_low", 12.0, "balance_low_prepay", "not_matched"),
        event("b2", 3, A, "2026-10-05 11:00", "balance_low", 12.0, "postpaid_low", "not_matched"),
        event("b2", 4, A, "2026-10-05 11:30", "balance_low", 9.0, "balance_low_prepay", "once_per", wave="below_10",
              wave_level=1, blocked_by_time=T("2026-10-05 08:00"), blocked_by_batch="b1"),
        event("b3", 1, A, "2026-10-05 06:00", "balance_low", 3.0, "balance_low_prepay", "stale"),
        event("b3", 2, A, "2026-10-06 07:00", "data_90pct", 0.9, None, "no_scene"),
        event("b3", 3, A, "2026-10-06 06:30", "balance_low", 4.0, None, "duplicate"),
        event("b3", 4, B, "2026-10-06 07:30", "balance_low", 4.0, "postpaid_low", "fired", wave="1", wave_level=1,
              policy_id="P", delivery="blocked", blocked_at="dnd"),
    ])
    rows, note = explain.scene_events(con, SCENES, "2026-10", A)  # type: ignore[arg-type]
    assert note is None
    got = [(r["batch"], r["seq"], r["scene_id"], r["outcome"], r["why"]) for r in rows]
    assert got == [
        ("b3", 2, None, "no_scene", "no scene listens to data_90pct"),
        ("b3", 3, None, "duplicate",
         "an event with the same type and time was processed before (an earlier batch, or earlier in its own)"),
        ("b2", 4, "balance_low_prepay", "once_per",
         "blocked by the trigger of 2026-10-05 08:00:00 in batch b1 (once_per 30 days)"),
        ("b2", 3, "balance_low_prepay", "not_matched",
         "no wave's when holds: below_10: value < 10; below_5: value < 5"),
        ("b2", 3, "postpaid_low", "not_matched", "the scene's when is false: payment = 'postpaid'"),
        ("b1", 1, "balance_low_prepay", "fired", "listed on sms"),
        ("b1", 1, "postpaid_low", "not_matched", "the scene's when is false: payment = 'postpaid'"),
        # b3's watermark: the newest last_event of b1 and b2 (processed before it), 12:00; 6 h > 1h
        ("b3", 1, "balance_low_prepay", "stale", "6:00:00 older than the watermark 2026-10-05 12:00:00 "
                                                  "(expires_after 1h)"),
    ]
    assert all("msisdn" not in r for r in rows)  # the section never repeats the number
    other, _ = explain.scene_events(con, SCENES, "2026-10", B)  # type: ignore[arg-type]
    assert [(r["outcome"], r["why"]) for r in other] == [("fired", "blocked by the contact policy at dnd")]


def test_explain_fired_deliveries_and_a_scene_gone_from_the_files(con: duckdb.DuckDBPyConnection) -> None:
    with_events(con, [
        event("b1", 1, A, "2026-10-05 08:00", "balance_low", 8.0, "balance_low_prepay", "fired", wave="below_10",
              wave_level=1, policy_id="P", delivery="held_out", held_kind="universal"),
        event("b1", 2, A, "2026-10-05 08:10", "balance_low", 4.0, "balance_low_prepay", "fired", wave="below_5",
              wave_level=2, policy_id="P", delivery="merged"),
        event("b1", 3, A, "2026-10-05 08:20", "balance_low", 4.0, "old_scene", "not_matched"),
        event("b2", 1, A, "2026-10-05 10:00", "balance_low", 9.0, "postpaid_low", "not_matched"),
    ])
    # A customer_view that changed since: A is postpaid now, so postpaid_low's when holds on today's view.
    con.execute("UPDATE customer_view SET payment = 'postpaid' WHERE msisdn = ?", [A])
    rows, _ = explain.scene_events(con, SCENES, "2026-10", A)  # type: ignore[arg-type]
    assert [r["why"] for r in rows] == [
        "the scene's when and wave 1 hold on the customer view of 2026-10 now: the view or the scene changed since "
        "the batch",
        "scene old_scene is no longer in the scene files",
        "merged: a better-ranked trigger of policy P in the batch carries the offer",
        "held out (universal control group)",
    ]


def test_explain_shows_the_last_events_only(con: duckdb.DuckDBPyConnection) -> None:
    start = T("2026-10-01 00:00")
    with_events(con, [event("b1", i, A, str(start + dt.timedelta(hours=i)), "roaming_start", None, None, "no_scene")
                      for i in range(1, explain.EVENTS_SHOWN + 6)])
    rows, _ = explain.scene_events(con, SCENES, "2026-10", A)  # type: ignore[arg-type]
    assert [r["seq"] for r in rows] == list(range(explain.EVENTS_SHOWN + 5, 5, -1))


def test_duration_text() -> None:
    assert [explain.duration_text(d) for d in (dt.timedelta(minutes=30), dt.timedelta(hours=6),
                                                dt.timedelta(days=2), dt.timedelta(minutes=90))] == [
        "30m", "6h", "2d", "90m"]


# -- the command line: usage errors (exit 2) and --help -----------------------------------------------
@pytest.mark.parametrize("args, names", [
    ([], "'--events' / '--watch'"),
    (["--events", "x", "--watch", "y", "--interval", "1"], "'--events' / '--watch'"),
    (["--watch", "y"], "'--interval'"),
    (["--watch", "y", "--interval", "0"], "'--interval'"),
    (["--watch", "y", "--interval", "-0.5"], "'--interval'"),
    (["--watch", "y", "--interval", "nan"], "'--interval'"),
    (["--watch", "y", "--interval", "soon"], "'--interval'"),
    (["--events", "x", "--interval", "1"], "'--interval'"),
    (["--events", "x", "--once"], "'--once'"),
])
def test_usage_errors_exit_2_naming_the_option(args: list[str], names: str, tmp_path: Path) -> None:
    result = mktool_here("scene", *args, "--db", str(tmp_path / "none.duckdb"))
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {names}" in result.output
    assert not (tmp_path / "none.duckdb").exists()


def test_help_has_examples() -> None:
    result = mktool_here("scene", "--help")
    assert result.exit_code == 0
    for example in ("mktool scene --events fixtures/events/", "--watch /data/inbox --interval 30",
                    "--interval 60 --once --quiet", "MKTOOL_OUT"):
        assert example in result.output, example


# -- end to end on the fixtures' Quick start database ------------------------------------------------
PREPAID = ("13800000022", "13800000026")  # prepaid, churn_flag in the fixtures' October view: balance_low fires


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Quick start database (ingest the fixtures, score October), built once for the module."""
    db = tmp_path_factory.mktemp("quickstart") / "qs.duckdb"
    assert mktool_here("ingest", str(FIXTURES), "--db", str(db), "-q").exit_code == 0
    assert mktool_here("score", "--month", M, "--db", str(db), "--matrices", str(MATRICES), "-q").exit_code == 0
    rows = fetch(db, "SELECT msisdn FROM customer_view WHERE month = ? AND payment = 'prepaid' AND churn_flag "
                     "AND list_contains(?, msisdn)", [M, list(PREPAID)])
    assert sorted(r[0] for r in rows) == sorted(PREPAID)  # the scene's when holds for them
    return db


@pytest.fixture
def site(quickstart: Path, tmp_path: Path) -> SimpleNamespace:
    """A private copy of the Quick start database, an inbox and an output folder."""
    db = tmp_path / "mk.duckdb"
    shutil.copy(quickstart, db)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    out = tmp_path / "out"
    return SimpleNamespace(db=db, inbox=inbox, out=out,
                           args=["--db", str(db), "--matrices", str(MATRICES), "--out", str(out)])


def low_balance(path: Path, *events: tuple[str, str, float], age: float = 60) -> Path:
    """An event file of balance_low events (msisdn, time, value), its mtime ``age`` seconds ago."""
    write_table(path, "events", [dict(msisdn=m, event_time=T(t), event_type="balance_low", value=v)
                                 for m, t, v in events])
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def batch_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def ledger(db: Path) -> list[tuple[str, str]]:
    """The ledger's (batch, file name) rows in processing order; none before the first batch made the table."""
    if not fetch(db, "SELECT 1 FROM information_schema.tables WHERE table_name = 'scene_files'"):
        return []
    return fetch(db, "SELECT batch, file_name FROM scene_files ORDER BY processed_at")


def delivered_folders(out: Path) -> set[str]:
    """Batch folders published under <out>/scenes/ (each with its manifest)."""
    root = out / "scenes"
    return {f.name for f in root.glob("*/*") if (f / "manifest.json").exists()} if root.exists() else set()


def test_events_the_same_file_twice_and_a_renamed_copy(site: SimpleNamespace, tmp_path: Path) -> None:
    e1 = low_balance(site.inbox / "e1.parquet", (PREPAID[0], "2026-10-05 10:00", 8.0),
                     (PREPAID[1], "2026-10-05 10:05", 4.0))
    first = mktool_here("scene", "--events", str(site.inbox), *site.args)
    assert first.exit_code == 0, first.output
    b1 = batch_of(e1)
    assert f"e1.parquet → batch {b1} (2026-10-05): 2 events, 2 fired; listed " in first.output
    assert "sms 2" in first.output
    assert delivered_folders(site.out) == {b1}
    again = mktool_here("scene", "--events", str(site.inbox), *site.args)
    assert again.exit_code == 0
    assert f"skipped e1.parquet: already processed as batch {b1} on 2026-10-05" in again.output
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(e1, other / "renamed.parquet")
    copy = mktool_here("scene", "--events", str(other / "renamed.parquet"), *site.args)
    assert copy.exit_code == 0
    assert f"skipped renamed.parquet: already processed as batch {b1} on 2026-10-05 (as e1.parquet)" in copy.output
    assert ledger(site.db) == [(b1, "e1.parquet")]


def test_events_a_refused_file_exits_1_after_the_others(site: SimpleNamespace) -> None:
    (site.inbox / "a-broken.parquet").write_bytes(b"not parquet at all")
    good = low_balance(site.inbox / "b-good.parquet", (PREPAID[0], "2026-10-06 09:00", 9.0))
    result = mktool_here("scene", "--events", str(site.inbox), *site.args)
    assert result.exit_code == 1, result.output
    assert "a-broken.parquet: table events: not a readable Parquet file" in result.output
    assert "1 event file refused (a-broken.parquet); 1 batch delivered" in result.output
    assert ledger(site.db) == [(batch_of(good), "b-good.parquet")]


def test_watch_once_exit_codes(site: SimpleNamespace) -> None:
    once = ["scene", "--watch", str(site.inbox), "--interval", "30", "--once", *site.args]
    young = low_balance(site.inbox / "young.parquet", (PREPAID[0], "2026-10-07 09:00", 9.0), age=1)
    result = mktool_here(*once)
    assert result.exit_code == 0 and ledger(site.db) == []  # younger than one interval: left for the next run
    os.utime(young, (time.time() - 60, time.time() - 60))
    with RunLock(site.db, exclusive=True, wait=0):  # the monthly run holds the database
        locked = mktool_here(*once)
    assert locked.exit_code == 3 and "database is locked" in locked.output and ledger(site.db) == []
    (site.inbox / "broken.parquet").write_bytes(b"PAR1 nonsense")
    os.utime(site.inbox / "broken.parquet", (time.time() - 60, time.time() - 60))
    refused = mktool_here(*once)
    assert refused.exit_code == 1 and "broken.parquet" in refused.output
    assert ledger(site.db) == [(batch_of(young), "young.parquet")]
    assert mktool_here(*once).exit_code == 1  # --once has no memory: the broken file is refused again


def test_explain_shows_the_scene_events_of_a_batch(site: SimpleNamespace) -> None:
    low_balance(site.inbox / "e1.parquet", (PREPAID[0], "2026-10-05 10:00", 8.0))
    low_balance(site.inbox / "e2.parquet", (PREPAID[0], "2026-10-05 10:30", 9.0))  # wave 1 again: once_per
    assert mktool_here("scene", "--events", str(site.inbox), *site.args).exit_code == 0
    shown = mktool_here("explain", PREPAID[0], "--month", M, "--format", "json", "--db", str(site.db),
                        "--matrices", str(MATRICES))
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    b1 = batch_of(site.inbox / "e1.parquet")
    assert [(r["event_time"], r["outcome"], r["why"]) for r in doc["scene_events"]] == [
        ("2026-10-05 10:30:00", "once_per",
         f"blocked by the trigger of 2026-10-05 10:00:00 in batch {b1} (once_per 30 days)"),
        ("2026-10-05 10:00:00", "fired", "listed on sms")]
    table = CliRunner().invoke(app, ["explain", PREPAID[0], "--month", M, "--db", str(site.db), "--matrices",
                                     str(MATRICES)], env={"COLUMNS": "250"})
    section = table.stdout[table.stdout.index("Events and scenes"):]
    assert f"in batch {b1} (once_per 30 days)" in section and "listed on sms" in section
    assert PREPAID[0] not in section


# -- the loop as a real process ------------------------------------------------------------------------
class Watching:
    """``mktool scene --watch`` in a subprocess, its stderr read line by line as it comes."""

    def __init__(self, site: SimpleNamespace, interval: str = "0.2", fault: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mktool", "scene", "--watch", str(site.inbox), "--interval", interval, *site.args],
            env={**ENV, **({"MKTOOL_FAULT": fault} if fault else {})}, stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def expect(self, text: str, timeout: float = 60) -> str:
        """The first line with ``text``, seen already or coming within ``timeout`` seconds."""
        for line in self.seen:
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {self.seen}")

    def stop(self, sig: int | None) -> tuple[int, str]:
        """Send ``sig`` (None: none, the process ends by itself) and wait for the exit code and all of stderr."""
        if sig is not None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        time.sleep(0.1)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code, "".join(self.seen)


def test_watch_survives_a_lock_and_a_malformed_file_takes_a_renamed_tmp_and_stops_on_sigterm(
        site: SimpleNamespace) -> None:
    w = Watching(site)
    try:
        w.expect("watching")
        with RunLock(site.db, exclusive=True, wait=0):  # the monthly run holds the database
            (site.inbox / "a-broken.parquet").write_bytes(b"not parquet")
            os.utime(site.inbox / "a-broken.parquet", (time.time() - 60, time.time() - 60))
            good = low_balance(site.inbox / "b-good.parquet", (PREPAID[0], "2026-10-05 10:00", 8.0))
            w.expect("database busy")
        w.expect("database free again")
        w.expect("a-broken.parquet: table events: not a readable Parquet file")
        w.expect(f"b-good.parquet → batch {batch_of(good)}")
        tmp = low_balance(site.inbox / "c-late.parquet.tmp", (PREPAID[1], "2026-10-05 11:00", 4.0), age=0)
        time.sleep(0.6)  # polls see the .tmp and leave it alone
        late = tmp.rename(site.inbox / "c-late.parquet")
        w.expect(f"c-late.parquet → batch {batch_of(late)}")
        copy = site.inbox / "d-copy.parquet"
        shutil.copy(good, copy)  # a renamed copy of a processed file: the ledger skips it, and says so
        os.utime(copy, (time.time() - 60, time.time() - 60))
        w.expect(f"skipped d-copy.parquet: already processed as batch {batch_of(good)} on 2026-10-05 "
                 "(as b-good.parquet)")
        time.sleep(0.6)  # more polls: neither the broken file, the copy nor the delivered ones come back
        code, err = w.stop(signal.SIGTERM)
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
    assert code == 0, err
    assert "SIGTERM: stopped watching" in err
    assert err.count("a-broken.parquet: table events") == 1 and err.count("b-good.parquet → batch") == 1
    assert err.count("skipped d-copy.parquet") == 1
    assert "Traceback" not in err
    assert [f for _, f in ledger(site.db)] == ["b-good.parquet", "c-late.parquet"]


def test_sigterm_during_batches_leaves_each_batch_whole(site: SimpleNamespace) -> None:
    files = [low_balance(site.inbox / f"e{i}.parquet", (PREPAID[i % 2], f"2026-10-0{i + 1} 10:00", 8.0 - i))
             for i in range(4)]
    w = Watching(site)
    try:
        w.expect("→ batch")  # the first batch is delivered; the next one is running or about to
        code, err = w.stop(signal.SIGTERM)
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
    assert code == 0, err
    recorded = {b for b, _ in ledger(site.db)}
    assert 1 <= len(recorded) <= len(files)
    assert recorded == delivered_folders(site.out)  # every batch recorded has its folder, and no other
    assert recorded <= {batch_of(f) for f in files}
    assert not list(site.out.glob("scenes/*/.*"))  # no staging left beside the batch folders


def test_ctrl_c_exits_130(site: SimpleNamespace) -> None:
    w = Watching(site)
    try:
        w.expect("watching")
        code, err = w.stop(signal.SIGINT)
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
    assert code == 130, err
    assert "the watch loop stopped" in err and "Traceback" not in err


def test_ctrl_c_inside_a_batch_leaves_nothing_of_it_and_exits_130(site: SimpleNamespace) -> None:
    low_balance(site.inbox / "e1.parquet", (PREPAID[0], "2026-10-05 10:00", 8.0))
    contacts = fetch(site.db, "SELECT count(*) FROM contact_history")
    w = Watching(site, fault="write_manifest:sigint")  # a real SIGINT while the batch writes its folder
    try:
        code, err = w.stop(None)
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
    assert code == 130, err
    assert "the watch loop stopped" in err and "Traceback" not in err
    assert ledger(site.db) == [] and delivered_folders(site.out) == set()
    assert fetch(site.db, "SELECT count(*) FROM contact_history") == contacts
    assert not list(site.out.glob("scenes/*/*"))  # not even an empty batch folder


def test_an_error_about_no_file_ends_the_loop(tmp_path: Path) -> None:
    """No scored customer view: every file would fail alike, so the loop ends (exit 1; systemd restarts it)."""
    db = tmp_path / "empty.duckdb"
    assert mktool_here("ingest", str(FIXTURES / "plans.parquet"), "--db", str(db), "-q").exit_code == 0
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    low_balance(inbox / "e1.parquet", (PREPAID[0], "2026-10-05 10:00", 8.0))
    result = mktool_here("scene", "--watch", str(inbox), "--interval", "0.2", "--db", str(db),
                         "--matrices", str(MATRICES), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert "mktool score" in result.output
    assert ledger(db) == []
