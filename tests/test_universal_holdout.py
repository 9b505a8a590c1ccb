"""The universal control group (issue 13 item 2, export side), holdouts.kind / cycle_date, and
ingest keeping contact_history's bookkeeping columns (cycle, recorded_by) of a responded contact.

The worlds are test_export's: a database written straight in tmp_path and a matrices folder
whose channels.yaml is written for the case. Expected groups are hand-computed: the draw is
md5(msisdn|salt) (the first 8 hex digits / 2³²), computed here independently, and the members
of the 0.25 group of c1..c40 under the default salt are written out literally.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from conftest import CYCLE_DATE as D
from conftest import FIXTURES, MATRICES, M, write_table
from test_check import check, errors_of
from test_export import World, c, draw, funnel, make_world, rec
from typer.testing import CliRunner

from mktool.cli import app
from mktool.database import Database
from mktool.errors import ConfigError
from mktool.export import ExportConfig, ExportParams, channel_verdicts, holdout_query, run_export, universal_query
from mktool.ingest import ingest
from mktool.project import load_project
from mktool.rules import load_channels

CUSTOMERS = [c(n) for n in range(1, 41)]
SALT = "mktool-universal"  # the default salt
# draw(m, SALT) < 0.25 for exactly these five of c1..c40 (hand-computed with md5)
UNIVERSAL_25 = {c(17), c(18), c(21), c(31), c(38)}
UNIVERSAL_TEXT = "universal control group: never contacted by any campaign"
POLICY_TEXT = "held out this month (control group): on no channel"
NEXT_MONTH = "2026-11"


def universal(share: float, salt: str = SALT, customers: list[str] = CUSTOMERS) -> set[str]:
    """The universal group, computed independently: md5(msisdn|salt) below the share (no month)."""
    return {m for m in customers if draw(m, salt) < share}


def policy(share: float = 0.25, salt: str | None = None) -> dict[str, Any]:
    cp: dict[str, Any] = {"cooldown_days": 30, "universal_holdout": share}
    if salt is not None:
        cp["universal_salt"] = salt
    return cp


def set_contact_policy(w: World, cp: dict[str, Any]) -> None:
    path = w.matrices / "channels.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["contact_policy"] = cp
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def listed(w: World, channel: str, day: dt.date = D, month: str = M) -> set[tuple[str, str]]:
    w.folders[month] = w.out / month / day.isoformat()
    return w.offers(channel, month)


def test_the_hand_computed_group_is_the_independent_draw() -> None:
    assert universal(0.25) == UNIVERSAL_25
    assert universal(0.0) == set()


# == the draw: msisdn and salt alone ====================================================================
def test_the_universal_group_is_the_same_customers_every_month_and_a_new_salt_draws_a_new_one(tmp_path):
    recs = ([rec(m, 1, "T1", ["sms", "frontdesk"]) for m in CUSTOMERS]
            + [rec(m, 1, "T2", ["sms", "frontdesk"], month=NEXT_MONTH) for m in CUSTOMERS])
    w = make_world(tmp_path, recs, contact_policy=policy(0.25))
    everyone = set(CUSTOMERS)
    w.export()
    for channel in ("sms", "frontdesk"):
        assert {m for m, _ in listed(w, channel)} == everyone - UNIVERSAL_25
    assert set(w.query("SELECT msisdn, kind FROM holdouts WHERE channel = 'sms'")) == {
        (m, "universal") for m in UNIVERSAL_25}

    nxt = dt.date(2026, 12, 1)  # the next month's export, another policy: the same customers held out
    w.export(month=NEXT_MONTH, date=nxt)
    assert {m for m, _ in listed(w, "sms", nxt, NEXT_MONTH)} == everyone - UNIVERSAL_25
    assert {m for (m,) in w.query("SELECT msisdn FROM holdouts WHERE month = ? AND channel = 'sms'",
                                  [NEXT_MONTH])} == UNIVERSAL_25

    # The operator refreshes the group (a new salt): a different draw, recomputed here independently.
    set_contact_policy(w, policy(0.25, salt="salt-2027"))
    refreshed = universal(0.25, "salt-2027")
    assert refreshed != UNIVERSAL_25 and len(refreshed) == 12 and len(refreshed & UNIVERSAL_25) == 1
    w.export(month=NEXT_MONTH, date=nxt)  # the same cycle again: its hold-outs are replaced
    assert {m for m, _ in listed(w, "sms", nxt, NEXT_MONTH)} == everyone - refreshed
    assert {m for (m,) in w.query("SELECT msisdn FROM holdouts WHERE month = ? AND channel = 'sms'",
                                  [NEXT_MONTH])} == refreshed


def test_the_universal_draw_reads_no_month_and_quotes_its_salt(tmp_path):
    w = make_world(tmp_path, [rec(c(1), 1, "T1", ["sms"])], contact_policy=policy(0.02, salt="it's 2027"))
    p = ExportParams.of(ExportConfig.of(load_project(w.matrices)), M, D, has_plan=False)
    universal = universal_query(p)
    assert universal is not None  # one draw per customer with offers, joined to the rows by cust_id
    assert "c.msisdn || '|' || 'it''s 2027'" in universal.sql  # through quote_literal: the quote doubled
    assert "$month" not in universal.sql and not universal.params and universal.sql.rstrip().endswith("< 0.02")
    assert "_x_universal u ON u.cust_id = p.cust_id" in holdout_query(p).sql
    w.export()  # and it runs: c1's draw with that salt decides
    held = draw(c(1), "it's 2027") < 0.02
    assert w.query("SELECT count(*) FROM holdouts") == [(1 if held else 0,)]


# == nesting with the policy hold-outs ===================================================================
def test_a_customer_is_in_at_most_one_control_group_and_the_kinds_are_recorded_with_the_cycle_date(tmp_path):
    # H holds out half its pairs (draw(msisdn, H, month) < 0.5); the universal group comes first.
    w = make_world(tmp_path, [rec(m, 1, "H", ["sms"]) for m in CUSTOMERS], contact_policy=policy(0.25))
    policy_drawn = {m for m in CUSTOMERS if draw(m, "H", M) < 0.5}
    assert len(policy_drawn) == 18 and len(policy_drawn & UNIVERSAL_25) == 2  # two would be in both
    policy_held = policy_drawn - UNIVERSAL_25
    result = w.export()
    assert {m for m, _ in listed(w, "sms")} == set(CUSTOMERS) - UNIVERSAL_25 - policy_held
    rows = w.query("SELECT month, cycle, cycle_date, channel, msisdn, policy_id, kind FROM holdouts ORDER BY msisdn")
    assert rows == sorted([(M, D.isoformat(), D, "sms", m, "H", "universal") for m in UNIVERSAL_25]
                          + [(M, D.isoformat(), D, "sms", m, "H", "policy") for m in policy_held],
                          key=lambda r: r[4])
    # both groups are the funnel's holdout stage: 40 placed, 5 + 16 held out, 19 exported
    assert [funnel(result, "sms")[s] for s in ("capacity", "holdout", "exported")] == [40, 19, 19]
    assert result.channels[[ch.channel for ch in result.channels].index("sms")].held_out == 21
    assert w.query("SELECT count(*) FROM contact_history WHERE msisdn IN (SELECT msisdn FROM holdouts)") == [(0,)]


# == no list of any channel, in every cycle; recorded once per pair × cycle × channel ====================
def test_universal_customers_are_on_no_list_of_any_channel_in_every_cycle_and_recorded_once(tmp_path):
    channels = ["frontdesk", "inbound", "sms", "outbound"]
    w = make_world(tmp_path, [rec(m, 1, "T1", channels) for m in CUSTOMERS]
                   + [rec(m, 2, "T2", ["manager", "app", "inbound"]) for m in CUSTOMERS], contact_policy=policy(0.25))
    nxt = D + dt.timedelta(days=1)
    for day in (D, D, nxt):  # a cycle, its re-run, and the next day's cycle of the month
        w.export(date=day)
        for channel in ("frontdesk", "inbound", "sms", "outbound", "manager", "app"):
            assert not {m for m, _ in listed(w, channel, day)} & UNIVERSAL_25, (day, channel)
    # Per universal customer and cycle: T1 on both pop-ups and on sms (its first push channel), T2 on
    # inbound and on manager (its first push channel) — five records, none twice.
    expected = {(m, day.isoformat(), ch, pid) for m in UNIVERSAL_25 for day in (D, nxt)
                for ch, pid in (("frontdesk", "T1"), ("inbound", "T1"), ("sms", "T1"), ("inbound", "T2"),
                                ("manager", "T2"))}
    rows = w.query("SELECT msisdn, cycle, channel, policy_id FROM holdouts WHERE kind = 'universal'")
    assert len(rows) == len(expected) == 50 and set(rows) == expected
    assert w.query("SELECT count(*) FROM holdouts WHERE kind <> 'universal'") == [(0,)]
    never = w.query("SELECT count(*) FROM contact_history WHERE msisdn IN (SELECT unnest(?))", [sorted(UNIVERSAL_25)])
    assert never == [(0,)]


@pytest.mark.parametrize("cp", [policy(0), {"cooldown_days": 30}], ids=["zero", "absent"])
def test_zero_or_absent_turns_the_universal_group_off(tmp_path, cp):
    w = make_world(tmp_path, [rec(m, 1, "T1", ["sms", "frontdesk"]) for m in CUSTOMERS], contact_policy=cp)
    p = ExportParams.of(ExportConfig.of(load_project(w.matrices)), M, D, has_plan=False)
    assert universal_query(p) is None and "JOIN _x_universal" not in holdout_query(p).sql  # no draw at all
    w.export()
    assert {m for m, _ in listed(w, "sms")} == set(CUSTOMERS)
    assert {m for m, _ in listed(w, "frontdesk")} == set(CUSTOMERS)
    assert w.query("SELECT count(*) FROM holdouts") == [(0,)]


# == check ==============================================================================================
CHANNELS_YAML = "channels:\n  sms: {{cycle: daily, format: csv}}\ncontact_policy:\n  cooldown_days: 30\n{line}\n"


@pytest.mark.parametrize("line, message", [
    ("  universal_holdout: 0.7", "matrices/channels.yaml:5 @ contact_policy.universal_holdout: a share of the "
                                 "customer base, 0 ≤ universal_holdout ≤ 0.5, got 0.7"),
    ("  universal_holdout: -0.1", "matrices/channels.yaml:5 @ contact_policy.universal_holdout: a share of the "
                                  "customer base, 0 ≤ universal_holdout ≤ 0.5, got -0.1"),
    ("  universal_holdout: abc", "matrices/channels.yaml:5 @ contact_policy.universal_holdout: expected a number "
                                 "(a share of the customer base such as 0.02), got str 'abc'"),
    ("  universal_holdout: true", "matrices/channels.yaml:5 @ contact_policy.universal_holdout: expected a number "
                                  "(a share of the customer base such as 0.02), got bool True"),
    ("  universal_salt: ''", "matrices/channels.yaml:5 @ contact_policy.universal_salt: must not be empty"),
])
def test_check_refuses_a_bad_universal_holdout_with_a_located_message(cli, in_tmp: Path, line, message) -> None:
    result = check(cli, files={"channels.yaml": CHANNELS_YAML.format(line=line)})
    assert result.exit_code == 1
    assert any(e.startswith(message) for e in errors_of(result)), errors_of(result)


@pytest.mark.parametrize("value, share", [("0", 0.0), ("0.5", 0.5), ("0.02", 0.02), ("1", None)])
def test_the_share_s_bounds_are_inclusive(tmp_path, value, share) -> None:
    (tmp_path / "channels.yaml").write_text(CHANNELS_YAML.format(line=f"  universal_holdout: {value}"),
                                            encoding="utf-8")
    if share is None:
        with pytest.raises(ConfigError, match=r"channels.yaml:5 @ contact_policy.universal_holdout: .* got 1"):
            load_channels(tmp_path)
        return
    cp = load_channels(tmp_path).contact_policy
    assert cp.universal_holdout == share and cp.universal_salt == SALT


def test_the_shipped_channels_yaml_keeps_two_percent_back() -> None:
    cp = load_channels(MATRICES).contact_policy
    assert cp.universal_holdout == 0.02 and cp.universal_salt == SALT


# == explain ============================================================================================
def verdicts(w: World, msisdn: str, day: dt.date = D) -> dict[tuple[str, str], tuple[str, str]]:
    with Database(w.settings(), write=False) as db:
        found = channel_verdicts(db.c, load_project(w.matrices), M, day, msisdn)
    return {(v.policy_id, v.channel): (v.stage, v.detail) for v in found}


def test_explain_names_the_universal_control_group_apart_from_the_policy_hold_out(tmp_path):
    w = make_world(tmp_path, [rec(m, 1, "H", ["frontdesk", "sms"]) for m in CUSTOMERS], contact_policy=policy(0.25))
    uni = c(17)  # universal (its H draw is irrelevant: nested)
    pol = next(m for m in CUSTOMERS if m not in UNIVERSAL_25 and draw(m, "H", M) < 0.5)
    free = next(m for m in CUSTOMERS if m not in UNIVERSAL_25 and draw(m, "H", M) >= 0.5)
    before = verdicts(w, uni)  # not exported yet: the pop-up's draw is known, the push allocation not
    assert before[("H", "frontdesk")] == ("holdout", UNIVERSAL_TEXT)
    assert before[("H", "sms")][0] == "not_exported" and before[("H", "sms")][1].endswith(
        f"; {UNIVERSAL_TEXT}: held out wherever it is placed")
    w.export()
    assert verdicts(w, uni) == {("H", "frontdesk"): ("holdout", UNIVERSAL_TEXT),
                                ("H", "sms"): ("holdout", UNIVERSAL_TEXT)}
    assert verdicts(w, pol) == {("H", "frontdesk"): ("holdout", POLICY_TEXT), ("H", "sms"): ("holdout", POLICY_TEXT)}
    assert verdicts(w, free) == {("H", "frontdesk"): ("exported", "on the pop-up list"),
                                 ("H", "sms"): ("exported", "on this push list")}


# == the holdouts table of an older build ================================================================
OLD_HOLDOUTS = ("CREATE TABLE holdouts (month VARCHAR, cycle VARCHAR, channel VARCHAR, msisdn VARCHAR, "
                "policy_id VARCHAR, rank INTEGER, matrix VARCHAR, rule_id VARCHAR)")


def test_an_old_holdouts_table_is_migrated_in_place_by_the_export(tmp_path):
    w = make_world(tmp_path, [rec(m, 1, "H", ["sms"]) for m in CUSTOMERS], contact_policy=policy(0.25))
    con = duckdb.connect(str(w.db))
    con.execute(OLD_HOLDOUTS)
    con.executemany("INSERT INTO holdouts VALUES (?, ?, ?, ?, 'H', 1, 'test', 'R1')", [
        ("2026-09", "2026-09", "manager", c(1)),         # a monthly cycle of a build before cycle dates
        ("2026-10", "2026-10-20", "outbound", c(2)),     # a daily cycle: its id is its date
        ("2026-10", D.isoformat(), "sms", c(3)),         # this cycle's own: replaced by the export
    ])
    con.close()
    w.export()
    columns = [r[0] for r in w.query("DESCRIBE holdouts")]
    assert columns == ["month", "cycle", "channel", "msisdn", "policy_id", "rank", "matrix", "rule_id",
                       "cycle_date", "kind"]  # the new columns at the end (evaluate reads them by name)
    assert w.query("SELECT msisdn, cycle_date, kind FROM holdouts WHERE channel <> 'sms' ORDER BY msisdn") == [
        (c(1), dt.date(2026, 9, 1), "policy"), (c(2), dt.date(2026, 10, 20), "policy")]
    held = w.query("SELECT msisdn, cycle_date, kind FROM holdouts WHERE channel = 'sms'")
    policy_held = {m for m in CUSTOMERS if draw(m, "H", M) < 0.5} - UNIVERSAL_25
    assert set(held) == ({(m, D, "universal") for m in UNIVERSAL_25} | {(m, D, "policy") for m in policy_held})
    assert c(3) not in UNIVERSAL_25 | policy_held  # its old row of this cycle is gone


def test_a_new_holdouts_table_has_the_documented_columns(tmp_path):
    w = make_world(tmp_path, [rec(c(17), 1, "T1", ["sms"])], contact_policy=policy(0.25))
    w.export()
    assert [r[0] for r in w.query("DESCRIBE holdouts")] == [
        "month", "cycle", "cycle_date", "channel", "msisdn", "policy_id", "rank", "matrix", "rule_id", "kind"]
    assert w.query("SELECT month, cycle, cycle_date, channel, msisdn, policy_id, rank, matrix, rule_id, kind "
                   "FROM holdouts") == [(M, D.isoformat(), D, "sms", c(17), "T1", 1, "test", "R1", "universal")]


def test_a_dry_run_does_not_migrate_an_old_holdouts_table(tmp_path):
    w = make_world(tmp_path, [rec(m, 1, "H", ["sms"]) for m in CUSTOMERS], contact_policy=policy(0.25))
    con = duckdb.connect(str(w.db))
    con.execute(OLD_HOLDOUTS)
    con.close()
    w.export(dry_run=True)
    assert len(w.query("DESCRIBE holdouts")) == 8


# == ingest keeps contact_history's bookkeeping ==========================================================
def ingest_responses(w: World, rows: list[dict[str, Any]], name: str = "contact_history.parquet",
                     *, extra: list[list[dict[str, Any]]] = ()) -> None:
    """Ingest ``rows`` (and every list of ``extra``, as later files of the same call)."""
    folder = w.root / f"responses-{len(list(w.root.glob('responses-*')))}"
    paths = [write_table(folder / name, "contact_history", rows)]
    paths += [write_table(folder / f"contact_history_{k}.parquet", "contact_history", more)
              for k, more in enumerate(extra, 1)]
    with Database(w.settings(), write=True) as db:
        ingest(db, paths, table="contact_history", channel_names=["sms", "frontdesk", "outbound", "inbound", "app",
                                                                  "manager"])


def response(msisdn: str, outcome: str, *, day: dt.date = D, channel: str = "sms", policy_id: str = "T1"):
    return {"msisdn": msisdn, "contact_date": day, "channel": channel, "policy_id": policy_id, "outcome": outcome}


def history(w: World) -> list[tuple[Any, ...]]:
    return w.query("SELECT msisdn, contact_date, channel, policy_id, outcome, cycle, recorded_by "
                   "FROM contact_history ORDER BY msisdn, contact_date, channel, policy_id")


def test_a_response_to_a_sent_contact_keeps_its_cycle_and_recorded_by_and_a_new_key_has_none(tmp_path):
    w = make_world(tmp_path, [rec(c(n), 1, "T1", ["sms"]) for n in (1, 2, 3)])
    w.export()
    assert history(w) == [(c(n), D, "sms", "T1", "sent", D.isoformat(), "mktool") for n in (1, 2, 3)]
    ingest_responses(w, [response(c(1), "accepted"), response(c(2), "rejected"),
                         response(c(4), "accepted"),                                  # a new key: no bookkeeping
                         response(c(3), "no_answer", day=D + dt.timedelta(days=1))])  # another date: a new key
    assert history(w) == [
        (c(1), D, "sms", "T1", "accepted", D.isoformat(), "mktool"),
        (c(2), D, "sms", "T1", "rejected", D.isoformat(), "mktool"),
        (c(3), D, "sms", "T1", "sent", D.isoformat(), "mktool"),
        (c(3), D + dt.timedelta(days=1), "sms", "T1", "no_answer", None, None),
        (c(4), D, "sms", "T1", "accepted", None, None),
    ]
    # A later response of the same key (a file of a later load) keeps it again.
    ingest_responses(w, [response(c(1), "unsubscribed")])
    assert history(w)[0] == (c(1), D, "sms", "T1", "unsubscribed", D.isoformat(), "mktool")


def test_the_later_file_of_one_load_wins_and_the_bookkeeping_is_kept(tmp_path):
    w = make_world(tmp_path, [rec(c(1), 1, "T1", ["sms"])])
    w.export()
    ingest_responses(w, [response(c(1), "no_answer")], name="contact_history_0.parquet",
                     extra=[[response(c(1), "accepted")]])
    assert history(w) == [(c(1), D, "sms", "T1", "accepted", D.isoformat(), "mktool")]


def test_a_file_carrying_its_own_bookkeeping_wins_where_it_has_a_value(tmp_path):
    w = make_world(tmp_path, [rec(c(n), 1, "T1", ["sms"]) for n in (1, 2)])
    w.export()
    ingest_responses(w, [{**response(c(1), "accepted"), "cycle": "2026-11-05", "recorded_by": None},
                         {**response(c(2), "accepted"), "cycle": None, "recorded_by": None}])
    assert history(w) == [(c(1), D, "sms", "T1", "accepted", "2026-11-05", "mktool"),
                          (c(2), D, "sms", "T1", "accepted", D.isoformat(), "mktool")]


def test_an_upsert_into_a_table_without_bookkeeping_columns_is_as_before(tmp_path):
    w = make_world(tmp_path, [rec(c(1), 1, "T1", ["sms"])])  # contact_history without cycle / recorded_by
    ingest_responses(w, [response(c(1), "rejected")])
    ingest_responses(w, [response(c(1), "accepted")])
    assert w.query("SELECT msisdn, outcome FROM contact_history") == [(c(1), "accepted")]
    assert [r[0] for r in w.query("DESCRIBE contact_history")] == [
        "msisdn", "contact_date", "channel", "policy_id", "outcome"]


def test_re_exporting_a_cycle_after_a_response_neither_duplicates_nor_loses_it(tmp_path):
    w = make_world(tmp_path, [rec(c(n), 1, "T1", ["sms"]) for n in (1, 2, 3)])
    first = w.export()
    assert funnel(first, "sms")["exported"] == 3
    ingest_responses(w, [response(c(1), "accepted"), response(c(2), "no_answer")])
    again = w.export()  # the same cycle: its own `sent` rows are replaced; the responses are history
    # c1's acceptance withdraws T1 (stage withdrawn), c2's no_answer waits for the retry; c3 is sent again.
    assert listed(w, "sms") == {(c(3), "T1")}
    assert [funnel(again, "sms")[s] for s in ("candidates", "withdrawn", "no_answer", "exported")] == [3, 2, 1, 1]
    assert history(w) == [
        (c(1), D, "sms", "T1", "accepted", D.isoformat(), "mktool"),
        (c(2), D, "sms", "T1", "no_answer", D.isoformat(), "mktool"),
        (c(3), D, "sms", "T1", "sent", D.isoformat(), "mktool"),
    ]
    w.export()  # and once more: nothing changes
    assert len(history(w)) == 3


def test_run_export_reads_the_universal_share_from_the_project(tmp_path):
    w = make_world(tmp_path, [rec(m, 1, "T1", ["sms"]) for m in CUSTOMERS], contact_policy=policy(0.25))
    with Database(w.settings(), write=True) as db:
        result = run_export(db, load_project(w.matrices), M, out_dir=w.out, cycle_date=D, dry_run=True)
    assert [funnel(result, "sms")[s] for s in ("capacity", "holdout")] == [40, 35]


# == end to end on the fixtures with the shipped rules (universal_holdout: 0.02) =========================
FIXTURE_UNIVERSAL = {  # draw(msisdn, SALT) < 0.02 among the fixtures' 2000 customers, hand-computed with md5
    "13800000069", "13800000178", "13800000272", "13800000332", "13800000368", "13800000468", "13800000482",
    "13800000956", "13800000991", "13800001048", "13800001059", "13800001220", "13800001233", "13800001242",
    "13800001257", "13800001287", "13800001326", "13800001469", "13800001598", "13800001631", "13800001675",
    "13800001728", "13800001751", "13800001813", "13800001878", "13800001885", "13800001891"}


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("universal-fixtures")
    result = CliRunner().invoke(app, ["run", "--month", M, "--ingest", str(FIXTURES), "--date", D.isoformat(),
                                      "--out", str(work / "out"), "--db", str(work / "mk.duckdb"),
                                      "--matrices", str(MATRICES)])
    assert result.exit_code == 0, result.output
    return work


def test_the_fixtures_universal_customers_are_on_no_list_and_explain_says_why(fixture_run: Path) -> None:
    db = fixture_run / "mk.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    try:
        ms = [m for (m,) in con.execute("SELECT msisdn FROM customer_view WHERE month = ?", [M]).fetchall()]
        assert universal(0.02, customers=ms) == FIXTURE_UNIVERSAL
        offered = {m for (m,) in con.execute("SELECT DISTINCT msisdn FROM recommendations WHERE month = ?",
                                             [M]).fetchall()} & FIXTURE_UNIVERSAL
        recorded = {m for (m,) in con.execute("SELECT DISTINCT msisdn FROM holdouts WHERE kind = 'universal'")
                    .fetchall()}
        assert offered and recorded <= offered and len(recorded) >= len(offered) // 2
        assert con.execute("SELECT count(*) FROM contact_history WHERE recorded_by = 'mktool' AND msisdn IN "
                           "(SELECT unnest(?))", [sorted(FIXTURE_UNIVERSAL)]).fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM holdouts WHERE kind = 'policy' AND msisdn IN (SELECT unnest(?))",
                           [sorted(FIXTURE_UNIVERSAL)]).fetchone() == (0,)
        assert con.execute("SELECT DISTINCT cycle_date FROM holdouts").fetchall() == [(D,)]
    finally:
        con.close()
    for path in (fixture_run / "out" / M / D.isoformat()).iterdir():
        if path.suffix in (".csv", ".jsonl"):
            text = path.read_text(encoding="utf-8")
            assert not any(m in text for m in FIXTURE_UNIVERSAL), path.name
    someone = sorted(recorded)[0]
    result = CliRunner().invoke(app, ["explain", someone, "--month", M, "--date", D.isoformat(), "--db", str(db),
                                      "--matrices", str(MATRICES), "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["holdouts"] and {h["kind"] for h in doc["holdouts"]} == {"universal"}
    held = [s for s in doc["channel_stages"] if s["stage"] == "holdout"]
    assert held and {s["detail"] for s in held} == {UNIVERSAL_TEXT}
    assert {s["stage"] for s in doc["channel_stages"]} <= {"holdout", "capacity", "dedupe", "contact_cap", "dnd",
                                                           "unsubscribed", "withdrawn", "cooldown", "no_answer",
                                                           "exclusion", "candidates"}
    table = CliRunner().invoke(app, ["explain", someone, "--month", M, "--date", D.isoformat(), "--db", str(db),
                                     "--matrices", str(MATRICES)], env={"COLUMNS": "400"})
    assert table.exit_code == 0 and "universal control group: never contacted by any campaign" in table.stdout
    assert "kind" in table.stdout and "universal" in table.stdout
