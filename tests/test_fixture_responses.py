"""scripts/simulate_responses.py and the November responses and orders it wrote into fixtures/extracts.

The Quick start runs twice (module fixtures, a few seconds each): on fixtures/extracts without the two
simulated files (what the script simulates from) and with them (what a user runs). The lists must be
the same bytes, the responses must follow the lists, and the treated pairs must take up more than the
held-out ones.
"""
from __future__ import annotations

import datetime as dt
import filecmp
import importlib.util
import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import FIXTURES, MATRICES, ROOT, M, cycle_dir
from typer.testing import CliRunner

from mktool.cli import app


def _load_module():
    spec = importlib.util.spec_from_file_location("simulate_responses", ROOT / "scripts" / "simulate_responses.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sr = _load_module()

RESPONSES = "contact_history_2026-11.parquet"
ORDERS = "orders_2026-11.parquet"
CYCLE = "2026-11-01"


def _quick_start(work: Path, extracts: Path) -> tuple[Path, Path]:
    db, out = work / "mktool.duckdb", work / "out"
    result = CliRunner().invoke(app, ["run", "--month", M, "--ingest", str(extracts), "--date", CYCLE,
                                      "--out", str(out), "--db", str(db), "--matrices", str(MATRICES), "--quiet"])
    assert result.exit_code == 0, result.output
    return db, out


@pytest.fixture(scope="module")
def without(tmp_path_factory):
    """The Quick start on the fixtures without the simulated files: (work, db, out)."""
    work = tmp_path_factory.mktemp("without")
    db, out = _quick_start(work, sr.fixture_inputs(work))
    return work, db, out


@pytest.fixture(scope="module")
def with_responses(tmp_path_factory):
    """The README's Quick start on fixtures/extracts as committed: (db, out)."""
    work = tmp_path_factory.mktemp("with")
    return _quick_start(work, FIXTURES)


def _rows(path: Path, order_by: str) -> list[tuple]:
    # A connection of its own, not duckdb's process-wide default one: a COPY another test module ran
    # through duckdb.execute() leaves an unfinished result there (it did under pytest-xdist's order).
    con = duckdb.connect()
    try:
        return con.sql(f"SELECT * FROM read_parquet('{path.as_posix()}') ORDER BY {order_by}").fetchall()
    finally:
        con.close()


# -- the committed files ------------------------------------------------------------------------------------------
def test_the_committed_files_ingest_cleanly(tmp_path):
    """Both files pass the input contract (msisdn, channel and outcome vocabularies, unique keys) on their own."""
    db = tmp_path / "m.duckdb"
    result = CliRunner().invoke(app, ["ingest", str(FIXTURES / RESPONSES), str(FIXTURES / ORDERS), "--db", str(db),
                                      "--matrices", str(MATRICES)])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM contact_history").fetchone()[0] == len(
        _rows(FIXTURES / RESPONSES, "msisdn"))
    assert con.execute("SELECT count(*) FROM orders").fetchone()[0] == len(_rows(FIXTURES / ORDERS, "msisdn"))
    # every response strictly after the cycle date and inside the response days
    lo, hi = con.execute("SELECT min(contact_date), max(contact_date) FROM contact_history").fetchone()
    assert lo >= dt.date(2026, 11, 2) and hi <= dt.date(2026, 11, 25)
    con.close()


def test_the_committed_files_are_what_the_script_writes(without, tmp_path):
    """--fixtures' work (simulate after the Quick start without them) gives the committed rows: re-run it when the
    rules or the generator change the October lists (fixtures/README.md). Two runs give the same bytes."""
    _, db, out = without
    a, b = tmp_path / "a", tmp_path / "b"
    assert sr.simulate(db, out, M, a) == sr.simulate(db, out, M, b)
    for name in (RESPONSES, ORDERS):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert _rows(a / RESPONSES, "ALL") == _rows(FIXTURES / RESPONSES, "ALL")
    assert _rows(a / ORDERS, "ALL") == _rows(FIXTURES / ORDERS, "ALL")
    assert not [p for p in a.iterdir() if p.name.startswith(".")]  # the staging folder is gone


def test_the_lists_are_the_same_with_and_without_the_responses(without, with_responses):
    """Responses dated after 2026-11-01 and November orders cannot change the lists of 2026-11-01."""
    _, _, out_without = without
    _, out_with = with_responses
    a, b = cycle_dir(out_without), cycle_dir(out_with)
    # the manifest names its inputs; report.html shows the responses' evaluation: neither is a list
    names = sorted(p.name for p in a.iterdir() if p.name not in ("manifest.json", "report.html"))
    assert "funnel.json" in names and len(names) == 7
    assert names == sorted(p.name for p in b.iterdir() if p.name not in ("manifest.json", "report.html"))
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert (mismatch, errors) == ([], [])


# -- the responses follow the lists ---------------------------------------------------------------------------------
def test_every_response_and_order_belongs_to_a_listed_or_held_out_pair(without):
    """No orphan: a push response answers a contact export recorded on that channel; a pop-up row is an offer of
    that channel's list; every simulated order is of a contacted or held-out pair."""
    _, db, out = without
    con = duckdb.connect(str(db), read_only=True)
    folder = cycle_dir(out).as_posix()
    con.execute(f"""CREATE TEMP TABLE lists AS
        SELECT 'frontdesk' AS channel, msisdn, policy_id FROM read_csv('{folder}/frontdesk.csv', all_varchar = true)
        UNION ALL
        SELECT 'inbound', msisdn, policy_id FROM read_csv('{folder}/inbound.csv', all_varchar = true)""")
    con.execute(f"CREATE TEMP TABLE r AS SELECT * FROM read_parquet('{(FIXTURES / RESPONSES).as_posix()}')")
    con.execute(f"CREATE TEMP TABLE o AS SELECT * FROM read_parquet('{(FIXTURES / ORDERS).as_posix()}')")
    orphans = con.execute("""
        SELECT count(*) FROM r WHERE NOT EXISTS (
            SELECT 1 FROM contact_history h WHERE h.recorded_by = 'mktool' AND h.cycle = '2026-11-01'
              AND h.msisdn = r.msisdn AND h.policy_id = r.policy_id AND h.channel = r.channel
              AND r.contact_date > h.contact_date)
          AND NOT EXISTS (SELECT 1 FROM lists l WHERE l.channel = r.channel AND l.msisdn = r.msisdn
                          AND l.policy_id = r.policy_id)""").fetchone()[0]
    assert orphans == 0
    assert con.execute("SELECT count(*) FROM r WHERE channel IN ('frontdesk', 'inbound')").fetchone()[0] > 0
    orphan_orders = con.execute("""
        SELECT count(*) FROM o
        WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.msisdn = o.msisdn AND r.policy_id = o.policy_id)
          AND NOT EXISTS (SELECT 1 FROM contact_history h WHERE h.recorded_by = 'mktool' AND h.msisdn = o.msisdn
                          AND h.policy_id = o.policy_id)
          AND NOT EXISTS (SELECT 1 FROM holdouts x WHERE x.month = '2026-10' AND x.msisdn = o.msisdn
                          AND x.policy_id = o.policy_id)""").fetchone()[0]
    assert orphan_orders == 0
    # a pair ordering in the extracts' own orders.parquet in November does not order twice
    assert con.execute("""SELECT count(*) FROM o JOIN orders x USING (msisdn, policy_id)
                          WHERE o.action = 'order' AND x.action = 'order'
                            AND x.order_time >= TIMESTAMP '2026-11-01'""").fetchone()[0] == 0
    con.close()


def test_rates_are_the_documented_ones(without):
    """The shares fixtures/README.md states, within a few points (2,000 customers)."""
    _, db, out = without
    con = duckdb.connect(str(db), read_only=True)
    con.execute(f"CREATE TEMP TABLE r AS SELECT * FROM read_parquet('{(FIXTURES / RESPONSES).as_posix()}')")
    con.execute(f"CREATE TEMP TABLE o AS SELECT * FROM read_parquet('{(FIXTURES / ORDERS).as_posix()}')")
    calls, no_answer, accepted, unsub = con.execute("""
        SELECT count(*), count(*) FILTER (WHERE r.outcome = 'no_answer'),
               count(*) FILTER (WHERE r.outcome = 'accepted'), count(*) FILTER (WHERE r.outcome = 'unsubscribed')
        FROM contact_history h LEFT JOIN r USING (msisdn, channel, policy_id)
        WHERE h.recorded_by = 'mktool' AND h.channel = 'outbound'""").fetchone()
    assert 0.25 < no_answer / calls < 0.35
    assert 0.15 <= accepted / (calls - no_answer) <= 0.20
    assert 0.01 <= unsub / (calls - no_answer) <= 0.03
    sms, answered = con.execute("""SELECT count(*), count(r.outcome) FROM contact_history h
        LEFT JOIN r USING (msisdn, channel, policy_id)
        WHERE h.recorded_by = 'mktool' AND h.channel = 'sms'""").fetchone()
    assert answered / sms < 0.10
    came, listed = con.execute(f"""SELECT (SELECT count(DISTINCT msisdn) FROM r WHERE channel = 'frontdesk'),
        (SELECT count(DISTINCT msisdn) FROM read_csv('{cycle_dir(out).as_posix()}/frontdesk.csv',
                                                    all_varchar = true))""").fetchone()
    assert 0.12 < came / listed < 0.18
    # accepted pairs: ~70% order within 0-10 days of their first acceptance
    acc, ordered = con.execute("""
        WITH a AS (SELECT msisdn, policy_id, min(contact_date) AS d FROM r WHERE outcome = 'accepted' GROUP BY ALL)
        SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM o WHERE o.msisdn = a.msisdn
            AND o.policy_id = a.policy_id AND o.action = 'order'
            AND CAST(o.order_time AS DATE) BETWEEN a.d AND a.d + 10)) FROM a""").fetchone()
    assert 0.60 < ordered / acc < 0.80
    orders, cancels = con.execute("SELECT count(*) FILTER (WHERE action = 'order'), "
                                  "count(*) FILTER (WHERE action = 'cancel') FROM o").fetchone()
    assert 0.05 < cancels / orders < 0.13
    con.close()


def _cancel_days(con: duckdb.DuckDBPyConnection) -> list[int]:
    return [r[0] for r in con.execute("""
        SELECT CAST(k.order_time AS DATE) - CAST(max(x.order_time) AS DATE) FROM o k
        JOIN o x ON x.msisdn = k.msisdn AND x.policy_id = k.policy_id AND x.action = 'order'
                AND x.order_time <= k.order_time
        WHERE k.action = 'cancel' GROUP BY k.msisdn, k.policy_id, k.order_time ORDER BY 1""").fetchall()]


def test_the_crafted_cases_are_there():
    """An acceptance never ordered, a cancellation on day 3 (inside 7 days) and one on day 9 (outside)."""
    con = duckdb.connect()
    con.execute(f"CREATE TEMP TABLE r AS SELECT * FROM read_parquet('{(FIXTURES / RESPONSES).as_posix()}')")
    con.execute(f"CREATE TEMP TABLE o AS SELECT * FROM read_parquet('{(FIXTURES / ORDERS).as_posix()}')")
    days = _cancel_days(con)
    assert 3 in days and 9 in days
    assert min(days) >= 1 and 7 not in days and max(days) <= 20
    assert con.execute("""SELECT count(*) FROM r WHERE outcome = 'accepted' AND channel = 'outbound'
        AND NOT EXISTS (SELECT 1 FROM o WHERE o.msisdn = r.msisdn AND o.policy_id = r.policy_id)""").fetchone()[0] > 0
    con.close()


def test_treated_pairs_take_up_more_than_held_out_ones(with_responses):
    """The uplift the evaluation is to find, by plain SQL (the campaign definitions, window 30 days)."""
    db, _ = with_responses
    con = duckdb.connect(str(db), read_only=True)
    (t_n, t_k), (h_n, h_k) = con.execute("""
        WITH contacts AS (
            SELECT msisdn, policy_id, contact_date FROM contact_history
            WHERE recorded_by = 'mktool' AND cycle = '2026-11-01' AND channel NOT IN ('frontdesk', 'inbound')
            UNION ALL
            SELECT msisdn, policy_id, contact_date FROM contact_history
            WHERE channel IN ('frontdesk', 'inbound') AND contact_date BETWEEN DATE '2026-11-01' AND DATE '2026-11-30'
        ), pairs AS (
            SELECT 1 AS g, msisdn, policy_id, min(contact_date) AS d FROM contacts GROUP BY ALL
            UNION ALL
            SELECT 2, msisdn, policy_id, min(CAST(cycle AS DATE)) FROM holdouts WHERE month = '2026-10' GROUP BY ALL
        )
        SELECT count(*), count(*) FILTER (WHERE EXISTS (
            SELECT 1 FROM orders o WHERE o.msisdn = p.msisdn AND o.policy_id = p.policy_id AND o.action = 'order'
              AND CAST(o.order_time AS DATE) BETWEEN p.d AND p.d + 30))
        FROM pairs p GROUP BY g ORDER BY g""").fetchall()
    con.close()
    assert t_n > 3000 and h_n > 0
    assert t_k / t_n > 0.07
    assert t_k / t_n > h_k / h_n


# -- crafted databases: the rules of the simulation, with the draws forced to 0 or 1 -------------------------------
def _crafted(tmp_path: Path, *, holdout_kinds: bool) -> tuple[Path, Path]:
    """A database as export leaves it (the tables the script reads) and a cycle folder with a pop-up list."""
    db = tmp_path / "c.duckdb"
    con = duckdb.connect(str(db))
    con.execute("""CREATE TABLE contact_history (msisdn VARCHAR, contact_date DATE, channel VARCHAR,
                   policy_id VARCHAR, outcome VARCHAR, cycle VARCHAR, recorded_by VARCHAR)""")
    con.execute("""INSERT INTO contact_history VALUES
        ('13900000001', '2026-11-01', 'outbound', 'POL_A', 'sent', '2026-11-01', 'mktool'),
        ('13900000009', '2026-11-01', 'outbound', 'POL_A', 'sent', '2026-11-01', 'mktool'),
        ('13900000010', '2026-11-01', 'outbound', 'POL_G', 'sent', '2026-11-01', 'mktool'),
        ('13900000002', '2026-11-01', 'sms', 'POL_B', 'sent', '2026-11-01', 'mktool'),
        ('13900000011', '2026-11-01', 'sms', 'POL_B', 'sent', '2026-11-01', 'mktool'),
        -- ingested (not export's), another month's cycle, an earlier month's contact: no response
        ('13900000003', '2026-11-01', 'outbound', 'POL_C', 'sent', NULL, NULL),
        ('13900000004', '2026-12-01', 'outbound', 'POL_D', 'sent', '2026-12-01', 'mktool'),
        ('13900000001', '2026-10-01', 'outbound', 'POL_H', 'sent', '2026-10-01', 'mktool')""")
    if holdout_kinds:
        con.execute("""CREATE TABLE holdouts (month VARCHAR, cycle VARCHAR, cycle_date DATE, channel VARCHAR,
                       msisdn VARCHAR, policy_id VARCHAR, rank INTEGER, matrix VARCHAR, rule_id VARCHAR,
                       kind VARCHAR)""")
        con.execute("""INSERT INTO holdouts VALUES
            ('2026-10', '2026-11-01', '2026-11-01', 'outbound', '13900000005', 'POL_A', 1, 'm', 'R1', 'policy'),
            ('2026-10', '2026-11-01', '2026-11-01', 'frontdesk', '13900000005', 'POL_A', 1, 'm', 'R1', 'policy'),
            ('2026-10', '2026-11-01', '2026-11-01', NULL, '13900000006', 'POL_A', 1, 'm', 'R1', 'universal'),
            ('2026-09', '2026-10-01', '2026-10-01', NULL, '13900000012', 'POL_A', 1, 'm', 'R1', 'universal')""")
    else:
        con.execute("""CREATE TABLE holdouts (month VARCHAR, cycle VARCHAR, channel VARCHAR, msisdn VARCHAR,
                       policy_id VARCHAR, rank INTEGER, matrix VARCHAR, rule_id VARCHAR)""")
        con.execute("""INSERT INTO holdouts VALUES
            ('2026-10', '2026-11-01', 'outbound', '13900000005', 'POL_A', 1, 'm', 'R1'),
            ('2026-10', '2026-11-01', 'frontdesk', '13900000005', 'POL_A', 1, 'm', 'R1'),
            ('2026-10', '2026-11-01', 'outbound', '13900000006', 'POL_A', 1, 'm', 'R1'),
            ('2026-09', '2026-10-01', 'outbound', '13900000012', 'POL_A', 1, 'm', 'R1')""")
    con.execute("CREATE TABLE funnel_counts (month VARCHAR, funnel VARCHAR, stage_no INTEGER, stage VARCHAR, "
                "count BIGINT, cycle VARCHAR)")
    con.execute("INSERT INTO funnel_counts VALUES ('2026-10', 'channel:outbound', 1, 'candidates', 5, '2026-11-01'), "
                "('2026-10', 'priority', 1, 'customers', 5, NULL)")
    con.execute("CREATE TABLE subscribers (msisdn VARCHAR, month VARCHAR, status VARCHAR)")
    everyone = [f"139000000{n:02d}" for n in range(1, 13)]
    con.executemany("INSERT INTO subscribers VALUES (?, '2026-10', 'active')", [[m] for m in everyone])
    # 13900000008 left in November; 13900000006 is still listed, closed
    con.executemany("INSERT INTO subscribers VALUES (?, '2026-11', ?)",
                    [[m, "closed" if m == "13900000006" else "active"] for m in everyone if m != "13900000008"])
    con.execute("CREATE TABLE orders (msisdn VARCHAR, order_time TIMESTAMP, policy_id VARCHAR, action VARCHAR, "
                "channel VARCHAR)")
    con.execute("INSERT INTO orders VALUES ('13900000011', '2026-11-03 10:00:00', 'POL_B', 'order', NULL)")
    con.close()
    lists = tmp_path / "out"
    folder = lists / "2026-10" / "2026-11-01"
    folder.mkdir(parents=True)
    (folder / "frontdesk.csv").write_text("msisdn,month,channel,rank,policy_id\n"
                                          "13900000007,2026-10,frontdesk,1,POL_E\n"
                                          "13900000007,2026-10,frontdesk,2,POL_F\n"
                                          "13900000008,2026-10,frontdesk,1,POL_E\n", encoding="utf-8")
    return db, lists


@pytest.fixture
def forced(monkeypatch):
    """Every draw decided: outbound always accepts, sms always opts out, pop-up customers all come and accept,
    every pair orders, nothing is cancelled but the crafted cases, responses within 10 days."""
    monkeypatch.setattr(sr, "PUSH_RESPONSES", {"outbound": (1000, 0, 0, 0), "sms": (0, 0, 0, 1000)})
    monkeypatch.setattr(sr, "POPUP_APPEAR", 1.0)
    monkeypatch.setattr(sr, "POPUP_ACCEPT", {"frontdesk": 1.0})
    for name in ("ORDER_ACCEPTED", "ORDER_CONTACTED", "ORDER_HELD_OUT", "POPUP_ON_THE_SPOT"):
        monkeypatch.setattr(sr, name, 1.0)
    monkeypatch.setattr(sr, "CANCEL", 0.0)
    monkeypatch.setattr(sr, "RESPONSE_DAYS", 10)


@pytest.mark.parametrize("holdout_kinds", [True, False], ids=["kind-cycle_date", "older-holdouts"])
def test_crafted_database_responses_and_orders(tmp_path, forced, holdout_kinds):
    db, lists = _crafted(tmp_path, holdout_kinds=holdout_kinds)
    assert sr.simulate(db, lists, "2026-10", tmp_path / "x") == {RESPONSES: 7, ORDERS: 8}
    con = duckdb.connect()
    con.execute(f"CREATE TEMP TABLE r AS SELECT * FROM read_parquet('{(tmp_path / 'x' / RESPONSES).as_posix()}')")
    con.execute(f"CREATE TEMP TABLE o AS SELECT * FROM read_parquet('{(tmp_path / 'x' / ORDERS).as_posix()}')")
    # export's push contacts of the month's cycle only; the pop-up customer who came sees every offer of the
    # list; 13900000008 left in November and does not come
    assert con.execute("SELECT msisdn, channel, policy_id, outcome FROM r ORDER BY ALL").fetchall() == [
        ("13900000001", "outbound", "POL_A", "accepted"),
        ("13900000002", "sms", "POL_B", "unsubscribed"),
        ("13900000007", "frontdesk", "POL_E", "accepted"),
        ("13900000007", "frontdesk", "POL_F", "accepted"),
        ("13900000009", "outbound", "POL_A", "accepted"),
        ("13900000010", "outbound", "POL_G", "accepted"),
        ("13900000011", "sms", "POL_B", "unsubscribed"),
    ]
    lo, hi = con.execute("SELECT min(contact_date), max(contact_date) FROM r").fetchone()
    assert lo >= dt.date(2026, 11, 2) and hi <= dt.date(2026, 11, 11)
    assert con.execute("SELECT count(DISTINCT contact_date) FROM r WHERE msisdn = '13900000007'").fetchone()[0] == 1
    # orders: the frontdesk acceptances on the spot; the sms opt-out (contacted, not accepted) orders anyway
    # (forced); 13900000011 ordered already (orders.parquet); held-out 13900000005 orders from its held date;
    # 13900000006 closed in November and 13900000012 was held out in September: no order
    ordered = con.execute("SELECT msisdn, policy_id FROM o WHERE action = 'order' ORDER BY ALL").fetchall()
    outbound = [("13900000001", "POL_A"), ("13900000009", "POL_A"), ("13900000010", "POL_G")]
    assert [p for p in ordered if p not in outbound] == [
        ("13900000002", "POL_B"), ("13900000005", "POL_A"), ("13900000007", "POL_E"), ("13900000007", "POL_F")]
    # the three outbound acceptances are the crafted cases: one never ordered, two cancelled on day 3 and day 9
    assert len([p for p in ordered if p in outbound]) == 2
    assert _cancel_days(con) == [3, 9]
    spot = con.execute("""SELECT count(*) FROM o JOIN r USING (msisdn, policy_id)
                          WHERE o.action = 'order' AND CAST(o.order_time AS DATE) = r.contact_date
                            AND r.outcome = 'accepted'""").fetchone()[0]
    assert spot == 4  # pop-up on the spot (2) and the crafted pairs ordered the day they accepted (2)
    held = con.execute("SELECT CAST(order_time AS DATE) FROM o WHERE msisdn = '13900000005'").fetchone()[0]
    assert dt.date(2026, 11, 2) <= held <= dt.date(2026, 11, 11)
    con.close()


def test_no_cycle_of_the_month_is_refused(tmp_path):
    db, lists = _crafted(tmp_path, holdout_kinds=True)
    with pytest.raises(sr.SimulationError, match="no export cycle of month 2026-08"):
        sr.simulate(db, lists, "2026-08", tmp_path / "x")
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())


def test_a_masked_pop_up_list_is_refused(tmp_path):
    db, lists = _crafted(tmp_path, holdout_kinds=True)
    path = lists / "2026-10" / "2026-11-01" / "frontdesk.csv"
    path.write_text("msisdn,policy_id\n139****0007,POL_E\n", encoding="utf-8")
    with pytest.raises(sr.SimulationError, match="frontdesk.csv: msisdn is not an 11-digit number"):
        sr.simulate(db, lists, "2026-10", tmp_path / "x")
    assert not list((tmp_path / "x").iterdir())  # nothing written, the staging folder removed


def test_fixture_inputs_leave_out_the_simulated_files(tmp_path):
    copied = sorted(p.name for p in sr.fixture_inputs(tmp_path).iterdir())
    assert RESPONSES not in copied and ORDERS not in copied
    assert "contact_history.parquet" in copied and "orders.parquet" in copied
    assert len(copied) == len(list(FIXTURES.glob("*.parquet"))) - 2
    shutil.rmtree(tmp_path / "extracts")
