"""Quick checks of scripts/generate_fixtures.py (the synthetic extract generator)."""
from __future__ import annotations

import datetime as dt
import importlib.util
from collections import Counter

import duckdb
import pytest
import yaml
from conftest import ROOT

MONTHS = ["2026-08", "2026-09", "2026-10"]
N = 300


def _load_module():
    spec = importlib.util.spec_from_file_location(
        "generate_fixtures", ROOT / "scripts" / "generate_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gf = _load_module()

EXPECTED_TYPES = {
    "subscribers": {
        "msisdn": "VARCHAR", "month": "VARCHAR", "city": "VARCHAR", "plan_id": "VARCHAR",
        "join_date": "DATE", "status": "VARCHAR", "payment": "VARCHAR",
        "handset_gen": "VARCHAR", "contract_end": "DATE", "bundle_type": "VARCHAR",
        "bundle_end": "DATE", "vnet": "BOOLEAN", "group_id": "VARCHAR", "balance": "DOUBLE"},
    "usage": {
        "msisdn": "VARCHAR", "month": "VARCHAR", "voice_out_min": "DOUBLE",
        "voice_local_min": "DOUBLE", "voice_ld_out_min": "DOUBLE",
        "voice_ld_in_min": "DOUBLE", "voice_roam_min": "DOUBLE",
        "ld_top_province": "VARCHAR", "sms_count": "BIGINT", "data_mb": "DOUBLE",
        "contacts": "BIGINT", "contacts_in_net": "BIGINT"},
    "billing": {
        "msisdn": "VARCHAR", "month": "VARCHAR", "total_fee": "DOUBLE",
        "rental_fee": "DOUBLE", "voice_overage_fee": "DOUBLE", "data_overage_fee": "DOUBLE",
        "addon_fee": "DOUBLE", "ld_fee": "DOUBLE", "discount_fee": "DOUBLE"},
    "plans": {
        "plan_id": "VARCHAR", "plan_name": "VARCHAR", "monthly_rental": "DOUBLE",
        "included_data_mb": "DOUBLE", "included_voice_min": "DOUBLE",
        "data_overage_per_mb": "DOUBLE", "voice_overage_per_min": "DOUBLE",
        "product_status": "INTEGER", "is_target": "BOOLEAN", "family": "VARCHAR"},
    "vas": {"msisdn": "VARCHAR", "month": "VARCHAR", "service": "VARCHAR",
            "active": "BOOLEAN", "uses": "BIGINT"},
    "contact_history": {"msisdn": "VARCHAR", "contact_date": "DATE", "channel": "VARCHAR",
                        "policy_id": "VARCHAR", "outcome": "VARCHAR"},
    "dnd": {"msisdn": "VARCHAR", "channel": "VARCHAR"},
    "events": {"msisdn": "VARCHAR", "event_time": "TIMESTAMP", "event_type": "VARCHAR",
               "value": "DOUBLE"},
    "orders": {"msisdn": "VARCHAR", "order_time": "TIMESTAMP", "policy_id": "VARCHAR",
               "action": "VARCHAR", "channel": "VARCHAR"},
}
KEYS = {
    "subscribers": "msisdn, month", "usage": "msisdn, month", "billing": "msisdn, month",
    "plans": "plan_id", "vas": "msisdn, month, service", "dnd": "msisdn, channel",
    "contact_history": "msisdn, contact_date, channel, policy_id",
    "orders": "msisdn, order_time, policy_id, action",
}
MONTHLY = {"subscribers", "usage", "billing", "vas"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("extracts")
    rows = gf.generate(out, N, MONTHS, seed=7)
    return out, rows


@pytest.fixture(scope="module")
def con(generated):
    out, _ = generated
    c = duckdb.connect()
    for table in EXPECTED_TYPES:
        pattern = f"{table}_*.parquet" if table in MONTHLY else f"{table}.parquet"
        c.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{(out / pattern).as_posix()}')")
    yield c
    c.close()


def test_files_written_and_counted(generated):
    out, rows = generated
    expected = {f"{t}_{m}.parquet" for t in MONTHLY for m in MONTHS}
    expected |= {f"{t}.parquet" for t in EXPECTED_TYPES if t not in MONTHLY}
    assert set(rows) == expected
    assert {p.name for p in out.iterdir()} == expected      # no staging left behind
    assert rows[f"subscribers_{MONTHS[-1]}.parquet"] == N
    assert all(n > 0 for n in rows.values())


def test_deterministic_bytes(generated, tmp_path):
    out, rows = generated
    rows2 = gf.generate(tmp_path, N, MONTHS, seed=7)
    assert rows2 == rows
    for name in rows:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_seed_changes_data(generated, tmp_path):
    out, _ = generated
    gf.generate(tmp_path, N, MONTHS, seed=8)
    name = f"usage_{MONTHS[-1]}.parquet"
    assert (tmp_path / name).read_bytes() != (out / name).read_bytes()


@pytest.mark.parametrize("table", sorted(EXPECTED_TYPES))
def test_types_per_contract(con, table):
    got = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {table}").fetchall()}
    assert got == EXPECTED_TYPES[table]


@pytest.mark.parametrize("table", sorted(KEYS))
def test_keys_unique(con, table):
    dupes = con.execute(
        f"SELECT count(*) FROM (SELECT {KEYS[table]} FROM {table} GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()[0]
    assert dupes == 0


def test_files_sorted_by_msisdn(generated):
    out, _ = generated
    for name in (f"subscribers_{MONTHS[0]}.parquet", "contact_history.parquet", "events.parquet", "orders.parquet"):
        ms = [r[0] for r in duckdb.execute(
            f"SELECT msisdn FROM read_parquet('{(out / name).as_posix()}')").fetchall()]
        assert ms == sorted(ms), name


def test_msisdn_are_11_digit_strings(con):
    for table in EXPECTED_TYPES:
        if table == "plans":
            continue
        bad = con.execute(
            f"SELECT count(*) FROM {table} WHERE NOT regexp_full_match(msisdn, '[0-9]{{11}}')"
        ).fetchone()[0]
        assert bad == 0, table


def test_billing_consistent_with_plan(con):
    bad = con.execute("""
        SELECT count(*) FROM billing b
        JOIN subscribers s USING (msisdn, month) JOIN plans p USING (plan_id)
        WHERE b.rental_fee <> p.monthly_rental
    """).fetchone()[0]
    assert bad == 0
    bad = con.execute("""
        SELECT count(*) FROM billing
        WHERE abs(total_fee - (rental_fee + voice_overage_fee + data_overage_fee
                               + addon_fee + ld_fee)) > 0.005
           OR discount_fee < 0 OR discount_fee > 0.2 * total_fee + 0.005
           OR addon_fee NOT IN (0, 10, 20, 30)
    """).fetchone()[0]
    assert bad == 0
    # data overage follows the plan's allowance and price
    bad = con.execute("""
        SELECT count(*) FROM billing b JOIN usage u USING (msisdn, month)
        JOIN subscribers s USING (msisdn, month) JOIN plans p USING (plan_id)
        WHERE abs(b.data_overage_fee - greatest(0, u.data_mb - p.included_data_mb)
                  * p.data_overage_per_mb) > 0.01
    """).fetchone()[0]
    assert bad == 0


def test_contract_values(con):
    assert con.execute("""
        SELECT count(*) FROM subscribers
        WHERE status NOT IN ('active', 'suspended', 'closed')
           OR payment NOT IN ('prepaid', 'postpaid')
           OR (handset_gen IS NOT NULL AND handset_gen NOT IN ('2G', '3G', '4G', '5G'))
           OR NOT regexp_full_match(month, '[0-9]{4}-[0-9]{2}')
    """).fetchone()[0] == 0
    assert con.execute(
        "SELECT count(*) FROM usage WHERE contacts_in_net > contacts OR data_mb < 0"
    ).fetchone()[0] == 0
    assert con.execute("""
        SELECT count(*) FROM contact_history
        WHERE outcome NOT IN ('sent', 'accepted', 'rejected', 'no_answer', 'unsubscribed')
    """).fetchone()[0] == 0
    targets = con.execute("SELECT count(*) FROM plans WHERE is_target").fetchone()[0]
    assert targets == 18


def test_realism_patterns(con):
    last = MONTHS[-1]
    only_last = con.execute(
        "SELECT count(*) FROM (SELECT msisdn FROM subscribers GROUP BY 1 HAVING count(*) = 1)"
    ).fetchone()[0]
    assert only_last > 0
    missing_usage = con.execute(
        "SELECT count(*) FROM subscribers s ANTI JOIN usage u USING (msisdn, month)"
    ).fetchone()[0]
    assert missing_usage > 0
    assert con.execute(f"""
        SELECT count(*) FROM subscribers
        WHERE month = '{last}' AND payment = 'prepaid' AND balance < 10
    """).fetchone()[0] > 0
    assert con.execute(f"""
        SELECT count(*) FROM subscribers s JOIN plans p USING (plan_id)
        WHERE s.month = '{last}' AND p.product_status <> 1
    """).fetchone()[0] > 0


def test_plan_window_share(con):
    """SPEC section 5 funnel: >= 10% of active customers have a target plan in the window."""
    last = MONTHS[-1]
    active, in_window = con.execute(f"""
        WITH cv AS (
            SELECT s.msisdn, s.status, s.plan_id, u.voice_min_3m, u.data_mb_3m,
                   b.rental_3m, b.addon_3m, b.current_total_3m
            FROM subscribers s
            LEFT JOIN (SELECT msisdn, avg(voice_out_min) voice_min_3m, avg(data_mb) data_mb_3m
                       FROM usage GROUP BY 1) u USING (msisdn)
            LEFT JOIN (SELECT msisdn, avg(rental_fee) rental_3m, avg(addon_fee) addon_3m,
                              avg(rental_fee + voice_overage_fee + data_overage_fee + addon_fee)
                                  current_total_3m
                       FROM billing GROUP BY 1) b USING (msisdn)
            WHERE s.month = '{last}'
        ), cand AS (
            SELECT * FROM cv
            WHERE status = 'active' AND round(data_mb_3m, 6) >= 5
              AND plan_id IN (SELECT plan_id FROM plans WHERE product_status = 1)
              AND current_total_3m > 0 AND rental_3m > 0
        ), pairs AS (
            SELECT c.msisdn,
                   (p.monthly_rental
                    + greatest(0, c.voice_min_3m - p.included_voice_min) * p.voice_overage_per_min
                    + greatest(0, c.data_mb_3m - p.included_data_mb) * p.data_overage_per_mb
                    + c.addon_3m) / c.current_total_3m AS tfc,
                   p.monthly_rental / c.rental_3m AS rc
            FROM cand c JOIN plans p ON p.is_target AND p.plan_id <> c.plan_id
        )
        SELECT (SELECT count(*) FROM cv WHERE status = 'active'),
               (SELECT count(DISTINCT msisdn) FROM pairs
                WHERE round(tfc, 6) BETWEEN 0.6 AND 1.5 AND round(rc, 6) BETWEEN 1.0 AND 2.0)
    """).fetchone()
    assert in_window >= 0.10 * active


def test_cli(tmp_path, capsys):
    assert gf.main(["--subscribers", "20", "--months", "2026-10,2026-09",
                    "--out", str(tmp_path)]) == 0
    assert (tmp_path / "subscribers_2026-09.parquet").exists()
    assert "subscribers_2026-10.parquet" in capsys.readouterr().out
    assert gf.main(["--subscribers", "20", "--months", "2026-13",
                    "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_contact_history_policies_on_their_catalogue_channels(con):
    """A past offer only on a channel its policies.yaml entry allows; LD / roaming packs only to who needs them."""
    catalogue = {p["id"]: set(p.get("channels", []))
                 for p in yaml.safe_load((ROOT / "matrices" / "policies.yaml").read_text(encoding="utf-8"))["policies"]}
    for policy, channels in gf.POLICY_CHANNELS.items():
        assert set(channels) <= catalogue[policy], policy
    pairs = con.execute("SELECT DISTINCT policy_id, channel FROM contact_history").fetchall()
    assert pairs and all(ch in gf.POLICY_CHANNELS[pol] for pol, ch in pairs), pairs
    assert con.execute("""
        SELECT count(*) FROM contact_history h
        WHERE h.policy_id = 'LD_PACK_AH'
          AND NOT EXISTS (SELECT 1 FROM usage u WHERE u.msisdn = h.msisdn AND u.ld_top_province = '安徽')
    """).fetchone()[0] == 0
    assert con.execute("""
        SELECT count(*) FROM contact_history h
        WHERE h.policy_id = 'ROAM_PACK'
          AND NOT EXISTS (SELECT 1 FROM usage u WHERE u.msisdn = h.msisdn AND u.voice_roam_min > 0)
    """).fetchone()[0] == 0


def test_contact_history_outcomes_fit_the_channel(con):
    """no_answer only where someone calls; every channel's outcomes are among its OUTCOME_SHARES."""
    rows = con.execute("SELECT channel, outcome FROM contact_history GROUP BY ALL").fetchall()
    assert {ch for ch, o in rows if o == "no_answer"} <= {"outbound", "manager"}
    for ch, outcome in rows:
        assert gf.OUTCOME_SHARES[ch][gf.OUTCOMES.index(outcome)] > 0, (ch, outcome)
    assert all(sum(shares) == 1000 for shares in gf.OUTCOME_SHARES.values())


def test_committed_fixture_exercises_every_response():
    """fixtures/extracts: accepted, rejected, no_answer and unsubscribed each on 2+ channels in the 3 months
    before the 2026-11-01 run, so withdrawal, cool-down, retry and opt-out all meet real data."""
    path = (ROOT / "fixtures" / "extracts" / "contact_history.parquet").as_posix()
    rows = duckdb.connect().execute(f"""
        SELECT outcome, count(DISTINCT channel), count(*) FROM read_parquet('{path}')
        WHERE contact_date >= DATE '2026-08-01' AND contact_date < DATE '2026-11-01' GROUP BY 1
    """).fetchall()
    by_outcome = {o: (channels, n) for o, channels, n in rows}
    for outcome in ("accepted", "rejected", "no_answer", "unsubscribed"):
        channels, n = by_outcome[outcome]
        assert channels >= 2 and n >= 20, (outcome, channels, n)


# -- orders and the churn label month (issue 13) -------------------------------------------------------------
LABEL_N = 2000  # enough customers for the churn shares to be stable


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """The fixture's shape: three months plus the next month's subscribers (the churn label)."""
    out = tmp_path_factory.mktemp("labelled")
    rows = gf.generate(out, LABEL_N, MONTHS, seed=7, label_month=True)
    c = duckdb.connect()
    for table, pattern in (("subscribers", "subscribers_*.parquet"), ("orders", "orders.parquet"),
                           ("contact_history", "contact_history.parquet"), ("usage", "usage_*.parquet")):
        c.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{(out / pattern).as_posix()}')")
    yield out, rows, c
    c.close()


def test_label_month_writes_only_the_next_months_subscribers(generated, labelled):
    _, plain = generated
    out, rows, _ = labelled
    assert set(rows) - set(plain) == {"subscribers_2026-11.parquet"}
    assert not (out / "usage_2026-11.parquet").exists() and not (out / "billing_2026-11.parquet").exists()
    assert "subscribers_2026-11.parquet" not in plain


def test_label_month_is_deterministic_and_leaves_the_other_files_alone(labelled, tmp_path):
    """Same bytes twice; and the label month changes no other file (the committed fixture's lists stay)."""
    out, rows, _ = labelled
    plain = gf.generate(tmp_path / "plain", LABEL_N, MONTHS, seed=7)
    again = gf.generate(tmp_path / "again", LABEL_N, MONTHS, seed=7, label_month=True)
    assert again == rows
    for name in rows:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    for name in plain:
        assert (tmp_path / "plain" / name).read_bytes() == (out / name).read_bytes(), name


def test_next_month_subscribers_are_last_months_customers_less_the_churned(labelled):
    _, _, c = labelled
    gone_closed, new, kept_closed, bad_status = c.execute("""
        WITH o AS (SELECT * FROM subscribers WHERE month = '2026-10'),
             n AS (SELECT * FROM subscribers WHERE month = '2026-11')
        SELECT (SELECT count(*) FROM o SEMI JOIN n USING (msisdn) WHERE o.status = 'closed'),
               (SELECT count(*) FROM n ANTI JOIN o USING (msisdn)),
               (SELECT count(*) FROM n WHERE status = 'closed'),
               (SELECT count(*) FROM n WHERE status NOT IN ('active', 'suspended', 'closed'))
    """).fetchone()
    assert gone_closed == 0 and new == 0 and bad_status == 0   # last month's closed are gone; nobody joins
    assert kept_closed > 0                                       # some churners are still listed, closed
    base, churned = c.execute("""
        SELECT count(*), count(*) FILTER (WHERE n.msisdn IS NULL OR n.status = 'closed')
        FROM subscribers o LEFT JOIN (SELECT * FROM subscribers WHERE month = '2026-11') n USING (msisdn)
        WHERE o.month = '2026-10' AND o.status <> 'closed'
    """).fetchone()
    assert 0.02 <= churned / base <= 0.09, (churned, base)      # a few percent a month


def test_churn_follows_the_signals_the_churn_score_reads(labelled):
    """Customers whose usage fell 40%+ or who are suspended leave far more often than the rest."""
    _, _, c = labelled
    rows = dict(c.execute("""
        WITH o AS (SELECT s.msisdn, s.status, u.voice_out_min AS v, p.voice_out_min AS v_prev
                   FROM subscribers s
                   LEFT JOIN usage u ON u.msisdn = s.msisdn AND u.month = s.month
                   LEFT JOIN usage p ON p.msisdn = s.msisdn AND p.month = '2026-09'
                   WHERE s.month = '2026-10' AND s.status <> 'closed'),
             l AS (SELECT o.*, (n.msisdn IS NULL OR n.status = 'closed') AS churned
                   FROM o LEFT JOIN (SELECT * FROM subscribers WHERE month = '2026-11') n USING (msisdn))
        SELECT status = 'suspended' OR coalesce(v < 0.6 * v_prev, false) AS signal, avg(churned::INTEGER)
        FROM l GROUP BY 1
    """).fetchall())
    assert rows[True] > 3 * rows[False], rows


def test_orders_follow_the_contacts(labelled):
    """Accepted contacts mostly order within days; some never do; some orders have no contact at all."""
    _, _, c = labelled
    accepted, ordered_7d = c.execute("""
        SELECT count(*), count(*) FILTER (WHERE EXISTS (
            SELECT 1 FROM orders o WHERE o.msisdn = h.msisdn AND o.policy_id = h.policy_id AND o.action = 'order'
              AND o.order_time >= h.contact_date AND o.order_time < h.contact_date + 8))
        FROM contact_history h WHERE h.outcome = 'accepted' AND h.contact_date >= DATE '2026-10-01'
    """).fetchone()
    assert accepted > 0 and 0.6 * accepted <= ordered_7d < accepted, (accepted, ordered_7d)
    uncontacted = c.execute("""
        SELECT count(*) FROM orders o WHERE action = 'order' AND NOT EXISTS (
            SELECT 1 FROM contact_history h WHERE h.msisdn = o.msisdn AND h.policy_id = o.policy_id)
    """).fetchone()[0]
    assert uncontacted > 0
    lo, hi, bad_channel, bad_action = c.execute(f"""
        SELECT min(order_time), max(order_time),
               count(*) FILTER (WHERE channel IS NOT NULL AND channel NOT IN {tuple(gf.CHANNELS)}),
               count(*) FILTER (WHERE action NOT IN ('order', 'cancel'))
        FROM orders
    """).fetchone()
    assert lo >= dt.datetime(2026, 10, 1) and hi < dt.datetime(2026, 12, 1)
    assert bad_channel == 0 and bad_action == 0
    catalogue = {p["id"] for p in yaml.safe_load((ROOT / "matrices" / "policies.yaml").read_text(
        encoding="utf-8"))["policies"]}
    assert {r[0] for r in c.execute("SELECT DISTINCT policy_id FROM orders").fetchall()} <= catalogue


def test_cancellations_follow_an_order_within_7_days_and_after(labelled):
    _, _, c = labelled
    orphan, within, after = c.execute("""
        WITH x AS (SELECT x.*, (SELECT max(o.order_time) FROM orders o
                                 WHERE o.msisdn = x.msisdn AND o.policy_id = x.policy_id AND o.action = 'order'
                                   AND o.order_time < x.order_time) AS ordered
                   FROM orders x WHERE x.action = 'cancel')
        SELECT count(*) FILTER (WHERE ordered IS NULL),
               count(*) FILTER (WHERE order_time < ordered + INTERVAL 7 DAY),
               count(*) FILTER (WHERE order_time >= ordered + INTERVAL 7 DAY)
        FROM x
    """).fetchone()
    assert orphan == 0 and within > 0 and after > 0, (orphan, within, after)


def test_committed_fixture_churn_label_against_the_churn_flag(cli):
    """fixtures/extracts: the Nov subscribers make `evaluate churn` meaningful on the Quick start's month:
    churn-flagged customers of 2026-10 leave more often than the others, and the base rate is a few percent."""
    assert cli("ingest", str(ROOT / "fixtures" / "extracts")).exit_code == 0
    result = cli("score", "--month", "2026-10")
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(cli.db), read_only=True)
    try:
        rates = dict(con.execute("""
            SELECT v.churn_flag, avg((n.msisdn IS NULL OR n.status = 'closed')::INTEGER)
            FROM customer_view v
            LEFT JOIN (SELECT * FROM subscribers WHERE month = '2026-11') n USING (msisdn)
            WHERE v.month = '2026-10' AND v.status <> 'closed' GROUP BY 1
        """).fetchall())
        overall = con.execute("""
            SELECT avg((n.msisdn IS NULL OR n.status = 'closed')::INTEGER)
            FROM customer_view v
            LEFT JOIN (SELECT * FROM subscribers WHERE month = '2026-11') n USING (msisdn)
            WHERE v.month = '2026-10' AND v.status <> 'closed'
        """).fetchone()[0]
    finally:
        con.close()
    assert rates[True] > 3 * rates[False], rates
    assert 0.02 <= overall <= 0.09, overall


# -- the daily event files of `mktool scene` (issue 14, fixtures/events/) -------------------------------------


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    out = tmp_path_factory.mktemp("daily")
    rows = gf.generate(out / "extracts", N, MONTHS, seed=7, events_dir=out / "events")
    return out, rows


def _read_daily(folder):
    return duckdb.connect().execute(f"""
        SELECT regexp_extract(filename, '[^/]+$') AS file, msisdn, event_time, event_type, value
        FROM read_parquet('{(folder / "*.parquet").as_posix()}', filename = true)
    """).fetchall()


def test_daily_events_are_deterministic_files_of_days_with_events(daily, tmp_path):
    out, rows = daily
    names = sorted(p.name for p in (out / "events").iterdir())
    assert names == sorted(n for n in rows if n.startswith("events-")) and len(names) >= 2
    assert {p.name for p in (out / "extracts").iterdir()} == {n for n in rows if not n.startswith("events-")}
    assert all(rows[n] > 0 for n in names)
    gf.generate(tmp_path / "extracts", N, MONTHS, seed=7, events_dir=tmp_path / "events")
    for name in names:
        assert (tmp_path / "events" / name).read_bytes() == (out / "events" / name).read_bytes(), name
    # a later generation with fewer days removes the daily files it no longer writes
    (tmp_path / "events" / "events-2026-09-30.parquet").write_bytes(b"stale")
    gf.generate(tmp_path / "extracts2", N, MONTHS, seed=7, events_dir=tmp_path / "events")
    assert sorted(p.name for p in (tmp_path / "events").iterdir()) == names


def test_daily_events_hold_the_months_events_plus_hotline_calls_and_two_duplicates(daily):
    out, _ = daily
    got = _read_daily(out / "events")
    base = duckdb.connect().execute(
        f"SELECT msisdn, event_time, event_type, value FROM '{(out / 'extracts' / 'events.parquet').as_posix()}'"
    ).fetchall()
    rows = [r[1:] for r in got]
    # every event of events.parquet, once per key, and nothing of ingest's file changed
    keys = Counter((m, t, e) for m, t, e, _ in rows)
    assert all(keys[(m, t, e)] >= 1 for m, t, e, _ in base)
    hotline = [r for r in rows if r[2] == "hotline_call"]
    assert 1 <= len(hotline) <= 0.03 * N and not any(r[2] == "hotline_call" for r in base)
    assert all(8 <= r[1].hour < 20 for r in hotline)
    assert len(rows) == len(base) + len(hotline) + 2
    dupes = [k for k, n in keys.items() if n > 1]
    assert len(dupes) == 2 and all(keys[k] == 2 for k in dupes)
    files_of = {k: sorted(f for f, m, t, e, _ in got if (m, t, e) == k) for k in dupes}
    within = [k for k in dupes if len(set(files_of[k])) == 1]
    across = [k for k in dupes if len(set(files_of[k])) == 2]
    assert len(within) == 1 and len(across) == 1
    values = sorted(v for f, m, t, e, v in got if (m, t, e) == within[0])
    assert values[1] == values[0] + 1  # same key, another value: still the same event
    # every event is in its day's file, except the across-file copy, in the next event day's file
    days = sorted({f for f, *_ in got})
    for f, m, t, e, _ in got:
        if (m, t, e) == across[0] and f != f"events-{t.date().isoformat()}.parquet":
            assert days.index(f) == days.index(f"events-{t.date().isoformat()}.parquet") + 1
            # the copy is the last event of its own day, so the files' order by event time is kept
            assert t == max(tt for ff, _, tt, *_ in got if ff == f"events-{t.date().isoformat()}.parquet")
        else:
            assert f == f"events-{t.date().isoformat()}.parquet", (f, t)


def test_committed_daily_events_are_the_generators(tmp_path):
    """fixtures/events holds what the generator writes for the committed fixture (2,000, seed 7)."""
    gf.generate(tmp_path / "extracts", 2000, MONTHS, seed=7, label_month=True, events_dir=tmp_path / "events")
    committed = ROOT / "fixtures" / "events"
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in (tmp_path / "events").iterdir())
    assert sorted(_read_daily(committed)) == sorted(_read_daily(tmp_path / "events"))
