"""`mktool scene` (--events, --watch, --once) and explain's "Events and scenes" (issue 14 §6).

explain's section is checked on crafted scene_events / scene_files rows with hand-written reasons;
the command's usage errors in-process; the real loop in a few short subprocesses.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
from conftest import mktool_here

from mktool import explain
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
