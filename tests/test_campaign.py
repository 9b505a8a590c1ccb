"""`mktool evaluate [campaign] --month M` (issue 13 items 2-balance, 3, 5, 6) on a crafted month, worked by hand.

The database is written straight into DuckDB. Export month M = 2026-10, cycles 2026-11-01 and
2026-11-02 (named by the channel funnels and the hold-outs); showing period 2026-11-01 … 2026-11-30.
Window W = 30 days. Channels from the shipped channels.yaml (frontdesk, inbound: pop-ups; outbound,
sms: push); ``kiosk`` is not in channels.yaml: push. Customers ``c(n)`` = 139000000nn.

Contacts of M (m = mktool row of a cycle of M, i = ingested row):

    pair     channel    date   row                         →  pair's d / channel
    01 P1    outbound   11-01  m, outcome now accepted        11-01 outbound (responded mktool row)
    02 P1    sms        11-02  m sent                         11-02 sms
    03 P1    outbound   11-01  m sent                         11-01 outbound
    04 P1    outbound   11-01  m sent                         11-01 outbound
    05 P1    frontdesk  11-10  i accepted (pop-up showing)    11-10 frontdesk (no push contact)
    01 P2    sms        11-02  m sent; inbound 11-02 i sent   11-02 sms (tie: push before pop-up)
    11 P2    outbound   11-01  m; sms 11-02 m; outbound 11-02 m   11-01 outbound, 3 push contacts
    12 P2    inbound    11-30  i accepted (last day shown)    11-30 inbound
    13 P3    kiosk      11-01  m sent                         11-01 kiosk (unknown channel: push)

Not contacts: 05 P2 frontdesk 12-01 (after the showing period), 11 P2 sms 2026-10-01 of cycle
2026-10-01 (another export month's), 14 P1 ingested sms 11-01 (ingested push rows are responses only).

Responses (any channel, within [d, d+30]): 02 P1 rejected (sms 11-03), 03 P1 no_answer (outbound
11-04), 04 P1 accepted (outbound 11-03), 13 P3 unsubscribed (kiosk 11-05).

Orders: 01 P1 order 11-05 10:00, cancel 11-08 (day 3: cancelled_7d); 02 P1 order 12-02 (day 30:
inside), cancel 12-11 (day 9: not a 7-day cancel); 03 P1 orders 10-31 (before d) and 12-02 (day 31):
not ordered; 04 P1 accepted, never ordered; 05 P1 order 11-10 12:00, cancel 11-17 (day 7:
cancelled_7d); 12 P2 order 12-15; held out: 06 P1 11-20, 08 P1 12-01 (day 30), 09 P1 12-02 (day 31: no).

Hold-outs of M: 06 P1 policy (outbound 11-01 and sms 11-02: earliest 11-01 outbound), 07 P1 policy
(sms and frontdesk both 11-01: frontdesk by name), 08 P1 universal outbound, 09 P1 universal (no
channel), 10 P2 universal sms 11-02. A hold-out of 2026-09 (15 P1) is another month's.

Per pair: ordered 01P1 02P1 05P1 12P2; cancelled_7d 01P1 05P1; held_out_ordered 06 08.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import MATRICES, fetch
from typer.testing import CliRunner

from mktool.campaign import _micro, evaluate_campaign, newcombe_interval, queries, showing_period
from mktool.cli import app
from mktool.config import Settings
from mktool.database import Database
from mktool.errors import StateError
from mktool.export import funnel_document
from mktool.project import load_project

M = "2026-10"
PROJECT = load_project(MATRICES)


def c(n: int) -> str:
    return f"139000000{n:02d}"


D1, D2 = "2026-11-01", "2026-11-02"
# (msisdn no, channel, date, policy, outcome, cycle, recorded_by)
HISTORY: list[tuple[int, str, str, str, str, str | None, str | None]] = [
    (1, "outbound", D1, "P1", "accepted", D1, "mktool"),
    (2, "sms", D2, "P1", "sent", D2, "mktool"),
    (3, "outbound", D1, "P1", "sent", D1, "mktool"),
    (4, "outbound", D1, "P1", "sent", D1, "mktool"),
    (5, "frontdesk", "2026-11-10", "P1", "accepted", None, None),
    (1, "sms", D2, "P2", "sent", D2, "mktool"),
    (1, "inbound", D2, "P2", "sent", None, None),
    (11, "outbound", D1, "P2", "sent", D1, "mktool"),
    (11, "sms", D2, "P2", "sent", D2, "mktool"),
    (11, "outbound", D2, "P2", "sent", D2, "mktool"),
    (12, "inbound", "2026-11-30", "P2", "accepted", None, None),
    (13, "kiosk", D1, "P3", "sent", D1, "mktool"),
    # not contacts of M
    (5, "frontdesk", "2026-12-01", "P2", "accepted", None, None),
    (11, "sms", "2026-10-01", "P2", "sent", "2026-10-01", "mktool"),
    (14, "sms", D1, "P1", "rejected", None, None),
    # responses
    (2, "sms", "2026-11-03", "P1", "rejected", None, None),
    (3, "outbound", "2026-11-04", "P1", "no_answer", None, None),
    (4, "outbound", "2026-11-03", "P1", "accepted", None, None),
    (13, "kiosk", "2026-11-05", "P3", "unsubscribed", None, None),
]
ORDERS: list[tuple[int, str, str, str]] = [
    (1, "2026-11-05 10:00:00", "P1", "order"), (1, "2026-11-08 09:00:00", "P1", "cancel"),
    (2, "2026-12-02 18:00:00", "P1", "order"), (2, "2026-12-11 08:00:00", "P1", "cancel"),
    (3, "2026-10-31 12:00:00", "P1", "order"), (3, "2026-12-02 09:00:00", "P1", "order"),
    (5, "2026-11-10 12:00:00", "P1", "order"), (5, "2026-11-17 23:00:00", "P1", "cancel"),
    (12, "2026-12-15 10:00:00", "P2", "order"),
    (6, "2026-11-20 10:00:00", "P1", "order"), (8, "2026-12-01 10:00:00", "P1", "order"),
    (9, "2026-12-02 10:00:00", "P1", "order"),
]
# (no, month, cycle, cycle_date, channel, policy, matrix, rule, kind)
HOLDOUTS: list[tuple[int, str, str, str, str | None, str, str, str, str]] = [
    (6, M, D1, D1, "outbound", "P1", "retention", "R1", "policy"),
    (6, M, D2, D2, "sms", "P1", "retention", "R1", "policy"),
    (7, M, D1, D1, "sms", "P1", "retention", "R2", "policy"),
    (7, M, D1, D1, "frontdesk", "P1", "retention", "R2", "policy"),
    (8, M, D1, D1, "outbound", "P1", "retention", "R1", "universal"),
    (9, M, D1, D1, None, "P1", "retention", "R1", "universal"),
    (10, M, D2, D2, "sms", "P2", "upsell", "U1", "universal"),
    (15, "2026-09", "2026-10-01", "2026-10-01", "sms", "P1", "retention", "R1", "policy"),
]
# (no, segment, value_tier, arpu_3m); 05 has no view row of M
VIEW: list[tuple[int, str | None, str | None, str | None]] = [
    (1, "gold", "high", "120.00"), (2, "gold", "mid_high", "80.55"), (3, "potential", "mid", "45.00"),
    (4, "tidal", "low", "20.00"), (6, "gold", "high", "110.00"), (7, "potential", "mid", "50.00"),
    (8, "tidal", "low", "25.01"), (9, "gold", "high", None), (10, "tidal", "low", "18.00"),
    (11, "potential", "mid", "60.00"), (12, "gold", "mid_high", "90.00"), (13, "tidal", "low", "15.00"),
]


def make_db(path: Path, *, orders: bool = True, view: bool = True, funnels: bool = True) -> Path:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE contact_history (msisdn VARCHAR, contact_date DATE, channel VARCHAR, policy_id VARCHAR, "
                "outcome VARCHAR, cycle VARCHAR, recorded_by VARCHAR)")
    con.executemany("INSERT INTO contact_history VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(c(n), date, ch, p, o, cy, by) for n, ch, date, p, o, cy, by in HISTORY])
    con.execute("CREATE TABLE holdouts (month VARCHAR, cycle VARCHAR, cycle_date DATE, channel VARCHAR, "
                "msisdn VARCHAR, policy_id VARCHAR, rank INTEGER, matrix VARCHAR, rule_id VARCHAR, kind VARCHAR)")
    con.executemany("INSERT INTO holdouts VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
                    [(m, cy, cd, ch, c(n), p, mx, r, k) for n, m, cy, cd, ch, p, mx, r, k in HOLDOUTS])
    if orders:
        con.execute("CREATE TABLE orders (msisdn VARCHAR, order_time TIMESTAMP, policy_id VARCHAR, action VARCHAR, "
                    "channel VARCHAR)")
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, NULL)", [(c(n), t, p, a) for n, t, p, a in ORDERS])
    con.execute("CREATE TABLE recommendations (msisdn VARCHAR, month VARCHAR, rank INTEGER, matrix VARCHAR, "
                "rule_id VARCHAR, policy_id VARCHAR)")
    con.executemany("INSERT INTO recommendations VALUES (?, ?, ?, ?, ?, ?)", [
        (c(1), M, 1, "retention", "R1", "P1"), (c(2), M, 1, "retention", "R1", "P1"),
        (c(3), M, 1, "retention", "R2", "P1"), (c(1), M, 2, "upsell", "U1", "P2"),
        (c(4), "2026-09", 1, "retention", "R9", "P1")])  # another month's: 04 P1 has none of M
    if view:
        con.execute("CREATE TABLE customer_view (msisdn VARCHAR, month VARCHAR, segment VARCHAR, value_tier VARCHAR, "
                    "arpu_3m DECIMAL(38,6))")
        con.executemany("INSERT INTO customer_view VALUES (?, ?, ?, ?, ?)",
                        [(c(n), M, s, t, a) for n, s, t, a in VIEW])
        con.execute("INSERT INTO customer_view VALUES (?, '2026-09', 'gold', 'high', 500)", [c(5)])  # not M's
    con.execute("CREATE TABLE funnel_counts (month VARCHAR, funnel VARCHAR, stage_no INTEGER, stage VARCHAR, "
                "count BIGINT, cycle VARCHAR)")
    if funnels:
        con.executemany("INSERT INTO funnel_counts VALUES (?, ?, ?, ?, ?, ?)", [
            (M, "plan", 1, "base", 20, None), (M, "channel:outbound", 1, "candidates", 9, D1),
            (M, "channel:outbound", 2, "exported", 4, D1), (M, "channel:sms", 1, "candidates", 5, D2),
            (M, "channel:sms", 2, "exported", 3, D2), ("2026-09", "channel:sms", 1, "candidates", 7, "2026-10-01")])
    con.close()
    return path


def settings(db: Path) -> Settings:
    return Settings(db_path=db, memory_limit="1GB", threads=2)


def run(db: Path, **kwargs: Any):
    with Database(settings(db), write=True) as database:
        return evaluate_campaign(database, PROJECT, M, **kwargs)


def ci(x1: int, n1: int, x2: int, n2: int) -> list[float] | None:
    return newcombe_interval(x1, n1, x2, n2)


def fig(contacted: int, accepted: int, rejected: int, no_answer: int, opted_out: int, ordered: int,
        cancelled: int, held: int, held_ordered: int, rates: tuple[float | None, ...]) -> dict[str, Any]:
    """The figures of a group; ``rates``: success_rate, take_up, take_up_control, uplift, cancel_7d_rate,
    contacts_per_customer (hand-computed); uplift_ci from the counts (checked apart against Newcombe's table)."""
    success, take_up, control, uplift, cancel, cpc = rates
    return {"contacted": contacted, "accepted": accepted, "rejected": rejected, "no_answer": no_answer,
            "opted_out": opted_out, "success_rate": success, "ordered": ordered, "take_up": take_up,
            "held_out": held, "held_out_ordered": held_ordered, "take_up_control": control, "uplift": uplift,
            "uplift_ci": ci(ordered, contacted, held_ordered, held), "cancelled_7d": cancelled,
            "cancel_7d_rate": cancel, "contacts_per_customer": cpc}


# P1: 5 contacted (01 02 03 04 05), accepted 01 04 05, rejected 02, no_answer 03; ordered 01 02 05, cancelled
# 01 05; held 06 07 08 09, ordered 06 08. uplift (3·4 − 2·5) / (5·4) = 0.1. Push contacts 4 (05 none) / 5.
P1 = fig(5, 3, 1, 1, 0, 3, 2, 4, 2, (0.6, 0.6, 0.5, 0.1, 0.666667, 0.8))
# P2: 01 11 12; accepted 12; ordered 12; held 10 (not ordered). uplift (1·1 − 0·3) / 3. Push contacts 1 + 3 + 0.
P2 = fig(3, 1, 0, 0, 0, 1, 0, 1, 0, (0.333333, 0.333333, 0.0, 0.333333, 0.0, 1.333333))
# P3: 13 only, opted out; nobody held out: control, uplift and its interval null; no order: cancel rate null.
P3 = fig(1, 0, 0, 0, 1, 0, 0, 0, 0, (0.0, 0.0, None, None, None, 1.0))
# Total: 9 pairs of 8 customers (01 twice), 9 push contacts; uplift (4·5 − 2·9) / (9·5) = 2/45.
TOTAL = fig(9, 4, 1, 1, 1, 4, 2, 5, 2, (0.444444, 0.444444, 0.4, 0.044444, 0.5, 1.125))

BALANCE = {
    # 01 02 03 04 05 11 12 13; arpu of 7 (05 has no view row): 15 20 45 60 80.55 90 120, mean 430.55 / 7 =
    # 61.507…; nearest rank: p25 ⌈7/4⌉ = 2nd, median 4th, p75 ⌈21/4⌉ = 6th.
    "treated": {"customers": 8,
                "value_tier": {"high": 0.125, "mid_high": 0.25, "mid": 0.25, "low": 0.25, "(none)": 0.125},
                "segment": {"gold": 0.375, "potential": 0.25, "tidal": 0.25, "(none)": 0.125},
                "arpu_3m": {"mean": 61.51, "p25": 20.0, "median": 60.0, "p75": 90.0}},
    # 06 07 08 09 10; arpu 18 25.01 50 110 (09 none): mean 203.01 / 4 = 50.7525 → 50.75.
    "held_out": {"customers": 5,
                 "value_tier": {"high": 0.4, "mid_high": 0.0, "mid": 0.2, "low": 0.4, "(none)": 0.0},
                 "segment": {"gold": 0.4, "potential": 0.2, "tidal": 0.4, "(none)": 0.0},
                 "arpu_3m": {"mean": 50.75, "p25": 18.0, "median": 25.01, "p75": 50.0}},
    "held_out_policy": {"customers": 2,
                        "value_tier": {"high": 0.5, "mid_high": 0.0, "mid": 0.5, "low": 0.0, "(none)": 0.0},
                        "segment": {"gold": 0.5, "potential": 0.5, "tidal": 0.0, "(none)": 0.0},
                        "arpu_3m": {"mean": 80.0, "p25": 50.0, "median": 50.0, "p75": 110.0}},
    # 08 09 10: arpu 18 25.01: mean 21.505 → 21.51 (half away from zero).
    "held_out_universal": {"customers": 3,
                           "value_tier": {"high": 0.333333, "mid_high": 0.0, "mid": 0.0, "low": 0.666667,
                                          "(none)": 0.0},
                           "segment": {"gold": 0.333333, "potential": 0.0, "tidal": 0.666667, "(none)": 0.0},
                           "arpu_3m": {"mean": 21.51, "p25": 18.0, "median": 18.0, "p75": 25.01}},
}

EXPECTED = {"month": M, "window_days": 30, "by": ["policy_id"],
            "rows": [{"policy_id": "P1", **P1}, {"policy_id": "P2", **P2}, {"policy_id": "P3", **P3}],
            "total": TOTAL, "balance": BALANCE}

# -- by channel: the pair's channel (contacted: its first contact's; held out: its earliest hold-out row's)
BY_CHANNEL = [
    # 05 P1; no hold-out: 07's two rows of 11-01 (sms, frontdesk) make it sms's (a push channel first).
    {"channel": "frontdesk", **fig(1, 1, 0, 0, 0, 1, 1, 0, 0, (1.0, 1.0, None, None, 1.0, 0.0))},
    {"channel": "inbound", **fig(1, 1, 0, 0, 0, 1, 0, 0, 0, (1.0, 1.0, None, None, 0.0, 0.0))},  # 12 P2
    {"channel": "kiosk", **fig(1, 0, 0, 0, 1, 0, 0, 0, 0, (0.0, 0.0, None, None, None, 1.0))},  # 13 P3
    # 01P1 03P1 04P1 11P2; held 06 08 (both ordered): uplift (1·2 − 2·4) / (4·2) = −0.75; push 1+1+1+3 over 4.
    {"channel": "outbound", **fig(4, 2, 0, 1, 0, 1, 1, 2, 2, (0.5, 0.25, 1.0, -0.75, 1.0, 1.5))},
    # 02P1 01P2 (01 P2's inbound showing is the same day: push first); held 07 (push before pop-up) and 10.
    {"channel": "sms", **fig(2, 0, 1, 0, 0, 1, 0, 2, 0, (0.0, 0.5, 0.0, 0.5, 0.0, 1.0))},
    # 09: a universal hold-out without a channel; nobody contacted: the contacted rates are null.
    {"channel": None, **fig(0, 0, 0, 0, 0, 0, 0, 1, 0, (None, None, 0.0, None, None, None))},
]
BY_SEGMENT = [
    # 01P1 02P1 01P2 12P2; held 06 09: uplift (3·2 − 1·4) / (4·2) = 0.25; push 3 over 01 02 12.
    {"segment": "gold", **fig(4, 2, 1, 0, 0, 3, 1, 2, 1, (0.5, 0.75, 0.5, 0.25, 0.333333, 1.0))},
    # 03P1 11P2; held 07: push (1 + 3) / 2.
    {"segment": "potential", **fig(2, 0, 0, 1, 0, 0, 0, 1, 0, (0.0, 0.0, 0.0, 0.0, None, 2.0))},
    # 04P1 13P3; held 08 (ordered) 10: uplift (0·2 − 1·2) / (2·2) = −0.5.
    {"segment": "tidal", **fig(2, 1, 0, 0, 1, 0, 0, 2, 1, (0.5, 0.0, 0.5, -0.5, None, 1.0))},
    # 05P1: no view row of M
    {"segment": None, **fig(1, 1, 0, 0, 0, 1, 1, 0, 0, (1.0, 1.0, None, None, 1.0, 0.0))},
]
# The response funnels: (sent, reached, accepted, ordered, kept_7d) over the pairs contacted on each channel.
FUNNELS = {
    "response:frontdesk": (1, 1, 1, 1, 0),  # 05 P1 shown, accepted, ordered, cancelled on day 7
    "response:inbound": (2, 2, 1, 1, 1),  # 01 P2 and 12 P2 shown (a showing reaches); 12 accepted and kept it
    "response:kiosk": (1, 1, 0, 0, 0),  # 13 unsubscribed: reached
    # 01P1 (its own row accepted) 03P1 (no_answer: not reached) 04P1 (accepted) 11P2; 01 ordered, cancelled day 3
    "response:outbound": (4, 2, 2, 1, 0),
    # 02P1 (rejected: reached; ordered, but never accepted: nested stages stop) 01P2 11P2 (11-02 on sms)
    "response:sms": (3, 1, 0, 0, 0),
}
STAGES = ("sent", "reached", "accepted", "ordered", "kept_7d")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "campaign.duckdb")


def test_campaign_document_of_the_crafted_month(db: Path) -> None:
    result = run(db)
    assert result.document == EXPECTED
    assert list(result.document) == ["month", "window_days", "by", "rows", "total", "balance"]
    assert list(result.document["rows"][0]) == ["policy_id", "contacted", "accepted", "rejected", "no_answer",
                                                "opted_out", "success_rate", "ordered", "take_up", "held_out",
                                                "held_out_ordered", "take_up_control", "uplift", "uplift_ci",
                                                "cancelled_7d", "cancel_7d_rate", "contacts_per_customer"]
    assert result.warnings == ()


def test_uplift_interval_of_the_crafted_groups() -> None:
    """The intervals the document carries (the method is checked against Newcombe's table below): P1's 3/5 − 2/4
    and the total's 4/9 − 2/5; null where a side is empty (P3: nobody held out; no channel: nobody contacted)."""
    assert P1["uplift_ci"] == [-0.408761, 0.549678]
    assert TOTAL["uplift_ci"] == ci(4, 9, 2, 5) and TOTAL["uplift_ci"][0] < 0.044444 < TOTAL["uplift_ci"][1]
    assert P3["uplift_ci"] is None and BY_CHANNEL[-1]["uplift_ci"] is None


def test_by_channel(db: Path) -> None:
    doc = run(db, by=("channel",)).document
    assert doc["rows"] == BY_CHANNEL
    assert doc["total"] == TOTAL and doc["by"] == ["channel"]


def test_by_segment(db: Path) -> None:
    doc = run(db, by=("segment",)).document
    assert doc["rows"] == BY_SEGMENT and doc["total"] == TOTAL


def test_by_two_columns(db: Path) -> None:
    doc = run(db, by=("policy_id", "channel")).document
    keys = [(r["policy_id"], r["channel"], r["contacted"], r["held_out"], r["ordered"], r["held_out_ordered"])
            for r in doc["rows"]]
    assert keys == [("P1", "frontdesk", 1, 0, 1, 0), ("P1", "outbound", 3, 2, 1, 2), ("P1", "sms", 1, 1, 1, 0),
                    ("P1", None, 0, 1, 0, 0), ("P2", "inbound", 1, 0, 1, 0), ("P2", "outbound", 1, 0, 0, 0),
                    ("P2", "sms", 1, 1, 0, 0), ("P3", "kiosk", 1, 0, 0, 0)]
    outbound = doc["rows"][1]  # 01 03 04: accepted 01 04; held 06 08 both ordered: (1·2 − 2·3) / (3·2)
    assert outbound == {"policy_id": "P1", "channel": "outbound", **fig(3, 2, 0, 1, 0, 1, 1, 2, 2, (
        0.666667, 0.333333, 1.0, -0.666667, 1.0, 1.0))}
    assert doc["rows"][5]["contacts_per_customer"] == 3.0  # 11 P2: three push contacts
    assert doc["total"] == TOTAL


def test_by_matrix_and_rule(db: Path) -> None:
    """Contacted pairs take their recommendation of M (04 P1's is of 2026-09: none), held-out pairs their row's."""
    doc = run(db, by=("matrix", "rule_id")).document
    assert [(r["matrix"], r["rule_id"], r["contacted"], r["held_out"]) for r in doc["rows"]] == [
        ("retention", "R1", 2, 3, ), ("retention", "R2", 1, 1), ("upsell", "U1", 1, 1), (None, None, 5, 0)]


def test_window_bounds_move_with_window(db: Path) -> None:
    """--window 29: 02 P1's order on day 30 and 08's on day 30 drop out; 12 P2's on day 15 stays."""
    doc = run(db, window=29).document
    assert doc["window_days"] == 29
    t = doc["total"]
    assert (t["ordered"], t["held_out_ordered"], t["cancelled_7d"]) == (3, 1, 2)


# -- Newcombe's hybrid score interval (method 10) against the published worked examples -----------
@pytest.mark.parametrize(("x1", "n1", "x2", "n2", "lo", "hi"), [
    (56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090), (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926), (0, 10, 0, 20, -0.1611, 0.2775), (0, 10, 0, 10, -0.2775, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0000), (10, 10, 0, 10, 0.6075, 1.0000)])
def test_newcombe_interval_matches_newcombe_1998_table_ii(x1: int, n1: int, x2: int, n2: int, lo: float,
                                                          hi: float) -> None:
    got = newcombe_interval(x1, n1, x2, n2)
    assert got is not None
    # to 4 decimals: within half a unit of the table's last digit (6 → 7: 0.806250 is 0.8062496… rounded)
    assert abs(got[0] - lo) <= 0.00005 + 1e-12 and abs(got[1] - hi) <= 0.00005 + 1e-12
    assert all(len(repr(v).split(".")[1]) <= 6 for v in got)


def test_newcombe_interval_null_cases() -> None:
    assert newcombe_interval(0, 0, 1, 5) is None and newcombe_interval(1, 5, 0, 0) is None
    assert newcombe_interval(0, 0, 0, 0) is None
    same = newcombe_interval(5, 10, 5, 10)
    assert same is not None and same[0] == -same[1]  # symmetric around a difference of 0
    zero = newcombe_interval(0, 1, 0, 1)
    assert zero is not None and zero[0] < 0 < zero[1]
    assert math.copysign(1.0, _micro(-1e-9)) > 0 and _micro(0.0000005) == 0.000001  # no -0.0; half away from zero


# -- storage and the response funnels --------------------------------------------------------------
def test_runs_are_stored_with_the_response_funnels(db: Path) -> None:
    first = run(db)
    second = run(db, by=("channel", "segment"), window=20)
    rows = fetch(db, "SELECT month, run_id, by_columns, window_days, contacted, held_out, document, created_at, "
                     "command_line FROM campaign_evaluation ORDER BY created_at, by_columns")
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        (M, first.run_id, "policy_id", 30, 9, 5), (M, second.run_id, "channel,segment", 20, 9, 5)]
    assert json.loads(rows[0][6]) == EXPECTED and json.loads(rows[1][6])["by"] == ["channel", "segment"]
    assert all(r[7] is not None and json.loads(r[8]) for r in rows)
    funnels = fetch(db, "SELECT funnel, stage_no, stage, count, cycle FROM funnel_counts WHERE funnel LIKE "
                        "'response:%' ORDER BY funnel, stage_no")
    # the second run (window 20) replaced the first's funnels: 12 P2's order on day 15 still counts, and
    # 05 P1's on day 0; nothing else changes the funnels' ordered stage (02 P1 was never accepted)
    assert len(funnels) == 5 * 5 and {r[4] for r in funnels} == {None}
    assert [(r[1], r[2]) for r in funnels[:5]] == list(enumerate(STAGES, 1))
    assert {r[0]: r[3] for r in funnels if r[2] == "ordered"} == {f: v[3] for f, v in FUNNELS.items()}


def test_response_funnels_of_the_crafted_month(db: Path) -> None:
    result = run(db)
    assert {name: tuple(n for _, n in stages) for name, stages in result.funnels.items()} == FUNNELS
    stored = fetch(db, "SELECT funnel, list(count ORDER BY stage_no) FROM funnel_counts WHERE month = ? AND funnel "
                       "LIKE 'response:%' GROUP BY funnel ORDER BY funnel", [M])
    assert {f: tuple(counts) for f, counts in stored} == FUNNELS


def test_funnel_document_puts_response_funnels_last_and_never_in_a_cycle(db: Path) -> None:
    run(db)
    con = duckdb.connect(str(db), read_only=True)
    try:
        whole = funnel_document(con, M)
        cycle = funnel_document(con, M, dt.date(2026, 11, 1))
    finally:
        con.close()
    names = list(whole["funnels"])
    assert names == ["plan", "channel:outbound@2026-11-01", "channel:sms@2026-11-02", *FUNNELS]
    assert [s["count"] for s in whole["funnels"]["response:outbound"]] == list(FUNNELS["response:outbound"])
    assert list(cycle["funnels"]) == ["plan", "channel:outbound"]


def test_cli_funnel_shows_response_funnels_as_pairs(cli, db: Path) -> None:
    assert cli("evaluate", "--month", M, "--quiet", db_path=db).exit_code == 0
    shown = cli("funnel", "--month", M, db_path=db)
    assert shown.exit_code == 0, shown.output
    assert "response:outbound" in shown.stdout and "pairs" in shown.stdout
    dated = cli("funnel", "--month", M, "--date", "2026-11-01", "--format", "json", db_path=db)
    assert dated.exit_code == 0 and "response:" not in dated.stdout


# -- refusals ----------------------------------------------------------------------------------------
def test_a_month_without_cycles_is_refused(db: Path) -> None:
    with Database(settings(db), write=True) as database, pytest.raises(StateError) as err:
        evaluate_campaign(database, PROJECT, "2026-08")
    text = err.value.render()
    assert "2026-08" in text and "mktool export --month 2026-08" in text
    assert not fetch(db, "SELECT 1 FROM information_schema.tables WHERE table_name = 'campaign_evaluation'")


def test_cli_month_without_cycles_exits_1(cli, db: Path) -> None:
    result = cli("evaluate", "campaign", "--month", "2026-08", db_path=db)
    assert result.exit_code == 1 and "Error:" in result.output and "mktool export --month 2026-08" in result.output
    assert "Traceback" not in result.output


def test_without_orders_everything_counts_as_not_ordered_with_a_warning(tmp_path: Path) -> None:
    db = make_db(tmp_path / "no_orders.duckdb", orders=False)
    result = run(db)
    t = result.document["total"]
    assert (t["ordered"], t["held_out_ordered"], t["cancelled_7d"], t["take_up"], t["cancel_7d_rate"]) == (
        0, 0, 0, 0.0, None)
    assert (t["accepted"], t["contacted"], t["held_out"]) == (4, 9, 5)
    assert any("orders were not loaded" in w and "mktool ingest orders.parquet" in w for w in result.warnings)


def test_cli_warns_about_missing_orders_on_stderr(cli, tmp_path: Path) -> None:
    db = make_db(tmp_path / "no_orders.duckdb", orders=False)
    result = cli("evaluate", "--month", M, "--format", "json", db_path=db)
    assert result.exit_code == 0, result.output
    assert "orders were not loaded" in result.stderr and "orders were not loaded" not in result.stdout
    assert json.loads(result.stdout)["total"]["ordered"] == 0


def test_without_the_view_of_the_month_groups_are_null_and_the_balance_empty(tmp_path: Path) -> None:
    db = make_db(tmp_path / "no_view.duckdb", view=False)
    result = run(db, by=("segment",))
    assert result.document["balance"] == {}
    assert [r["segment"] for r in result.document["rows"]] == [None]
    assert result.document["rows"][0]["contacted"] == 9 and result.document["total"] == TOTAL
    assert any("customer_view has no rows for 2026-10" in w for w in result.warnings)


def test_holdouts_of_an_older_build_are_policy_holdouts_from_their_cycle(tmp_path: Path) -> None:
    """No kind / cycle_date columns: kind 'policy'; a 'YYYY-MM' cycle is held from the 1st of that month,
    and its id takes no part in the showing period (cycle 2026-11-05 alone sets it: 11-05 … 11-30)."""
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE contact_history (msisdn VARCHAR, contact_date DATE, channel VARCHAR, policy_id VARCHAR, "
                "outcome VARCHAR, cycle VARCHAR, recorded_by VARCHAR)")
    con.executemany("INSERT INTO contact_history VALUES (?, ?, ?, 'P1', ?, ?, ?)", [
        (c(1), "2026-11-01", "outbound", "sent", "2026-11", "mktool"),  # an older build's monthly cycle id
        (c(2), "2026-11-04", "frontdesk", "accepted", None, None),  # before 11-05: not shown in the period
        (c(3), "2026-11-05", "frontdesk", "sent", None, None)])
    con.execute("CREATE TABLE holdouts (month VARCHAR, cycle VARCHAR, channel VARCHAR, msisdn VARCHAR, "
                "policy_id VARCHAR, rank INTEGER, matrix VARCHAR, rule_id VARCHAR)")
    con.executemany("INSERT INTO holdouts VALUES (?, ?, 'outbound', ?, 'P1', 1, 'retention', 'R1')", [
        (M, "2026-11", c(4)), (M, "2026-11-05", c(5))])
    con.execute("CREATE TABLE orders (msisdn VARCHAR, order_time TIMESTAMP, policy_id VARCHAR, action VARCHAR)")
    # 04 held from 11-01: 12-01 is day 30 (in); 05 held from 11-05: 11-04 is before (out)
    con.executemany("INSERT INTO orders VALUES (?, ?, 'P1', 'order')", [(c(4), "2026-12-01 09:00:00"),
                                                                       (c(5), "2026-11-04 09:00:00")])
    con.close()
    result = run(db)
    t = result.document["total"]
    assert (t["contacted"], t["held_out"], t["held_out_ordered"]) == (2, 2, 1)
    assert result.document["balance"] == {}
    assert showing_period(["2026-11", "2026-11-05"]) == (dt.date(2026, 11, 5), dt.date(2026, 11, 30))


def test_showing_period_runs_to_the_end_of_the_latest_cycles_month() -> None:
    assert showing_period(["2026-11-01", "2026-12-03"]) == (dt.date(2026, 11, 1), dt.date(2026, 12, 31))
    assert showing_period(["2026-12-31"]) == (dt.date(2026, 12, 31), dt.date(2026, 12, 31))
    assert showing_period(["2026-11"]) is None


# -- the command line -----------------------------------------------------------------------------
def test_cli_json_is_the_document(cli, db: Path) -> None:
    result = cli("evaluate", "--month", M, "--format", "json", "--quiet", db_path=db)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == EXPECTED
    by = cli("evaluate", "campaign", "--month", M, "--by", "channel", "--format", "json", "--quiet", db_path=db)
    assert json.loads(by.stdout)["rows"] == BY_CHANNEL


def test_cli_csv_lines_and_total(cli, db: Path) -> None:
    result = cli("evaluate", "--month", M, "--by", "segment,channel", "--format", "csv", "--quiet", db_path=db)
    assert result.exit_code == 0, result.output
    lines = list(csv.reader(io.StringIO(result.stdout)))
    assert lines[0] == ["month", "window_days", "row", "segment", "channel", "contacted", "accepted", "rejected",
                        "no_answer", "opted_out", "success_rate", "ordered", "take_up", "held_out",
                        "held_out_ordered", "take_up_control", "uplift", "uplift_ci_lo", "uplift_ci_hi",
                        "cancelled_7d", "cancel_7d_rate", "contacts_per_customer"]
    rows = [dict(zip(lines[0], line)) for line in lines[1:]]
    assert [r["row"] for r in rows] == ["group"] * (len(rows) - 1) + ["total"]
    total = rows[-1]
    lo, hi = TOTAL["uplift_ci"]  # type: ignore[misc]
    assert total == {"month": M, "window_days": "30", "row": "total", "segment": "", "channel": "",
                     "contacted": "9", "accepted": "4", "rejected": "1", "no_answer": "1", "opted_out": "1",
                     "success_rate": "0.444444", "ordered": "4", "take_up": "0.444444", "held_out": "5",
                     "held_out_ordered": "2", "take_up_control": "0.400000", "uplift": "0.044444",
                     "uplift_ci_lo": f"{lo:.6f}", "uplift_ci_hi": f"{hi:.6f}", "cancelled_7d": "2",
                     "cancel_7d_rate": "0.500000", "contacts_per_customer": "1.125000"}
    no_view = next(r for r in rows if r["segment"] == "")  # 05 P1's group: no view row
    assert (no_view["channel"], no_view["take_up_control"], no_view["uplift_ci_lo"]) == ("frontdesk", "", "")


def test_cli_table_shows_rows_total_and_balance(cli, db: Path) -> None:
    result = cli("evaluate", "--month", M, db_path=db)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Campaigns 2026-10" in out and "Balance check" in out and "total" in out
    assert "held_out_universal" in out and "61.51" in out and "0.444444" in out
    assert "stored as run" in result.stderr


def test_cli_out_file_is_written_whole(cli, db: Path, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "campaign.json"
    result = cli("evaluate", "--month", M, "--format", "json", "--out", str(target), db_path=db)
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text(encoding="utf-8")) == EXPECTED
    assert not list(target.parent.glob(".*partial")) and result.stdout == ""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    refused = cli("evaluate", "--month", M, "--out", str(folder), db_path=db)
    assert refused.exit_code != 0 and list(folder.iterdir()) == []


def test_cli_usage_errors(cli, db: Path) -> None:
    for args in (["--by", "segmnt"], ["--by", "policy_id,policy_id"], ["--by", "tenure_cohort"], ["--by", ""],
                 ["--window", "0"], ["--window", "x"], ["--format", "parquet"]):
        result = cli("evaluate", "--month", M, *args, db_path=db)
        assert result.exit_code == 2, (args, result.output)
    bad = cli("evaluate", "--month", M, "--by", "segmnt", db_path=db)
    assert "policy_id, matrix, rule_id, channel, segment, value_tier" in bad.output
    assert cli("evaluate", "churn", "--month", M, "--window", "10", db_path=db).exit_code == 2
    assert cli("evaluate", "churn", "--month", M, "--by", "segment", db_path=db).exit_code == 2
    assert not fetch(db, "SELECT 1 FROM information_schema.tables WHERE table_name = 'campaign_evaluation'")


def test_cli_help_shows_both_kinds(runner: CliRunner) -> None:
    text = runner.invoke(app, ["evaluate", "--help"]).stdout
    assert "mktool evaluate --month 2026-10" in text and "mktool evaluate churn --month 2026-10" in text


def test_queries_bind_their_values() -> None:
    qs = queries(M)
    assert {"campaign:pairs", "campaign:balance", "campaign:funnel", "campaign:store"} <= set(qs)
    pairs = qs["campaign:pairs"]
    assert pairs.params["month"] == M and pairs.params["window"] == 30
    assert M not in pairs.sql.split("\n", 1)[1]


def test_history_without_bookkeeping_columns_counts_showings_only(tmp_path: Path) -> None:
    """contact_history as ingested by an older build (no cycle, recorded_by): no push contact is mktool's,
    the pop-up rows in the showing period still count; the cycle comes from the hold-outs alone, and
    there is no funnel_counts table at all."""
    db = tmp_path / "ingested.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE contact_history (msisdn VARCHAR, contact_date DATE, channel VARCHAR, policy_id VARCHAR, "
                "outcome VARCHAR)")
    con.executemany("INSERT INTO contact_history VALUES (?, ?, ?, 'P1', ?)", [
        (c(1), "2026-11-03", "outbound", "accepted"),  # push, not mktool's: a response only
        (c(2), "2026-11-03", "inbound", "sent"), (c(2), "2026-11-04", "outbound", "accepted")])
    con.execute("CREATE TABLE holdouts (month VARCHAR, cycle VARCHAR, channel VARCHAR, msisdn VARCHAR, "
                "policy_id VARCHAR, rank INTEGER, matrix VARCHAR, rule_id VARCHAR)")
    con.execute("INSERT INTO holdouts VALUES (?, '2026-11-01', 'outbound', ?, 'P1', 1, 'retention', 'R1')", [M, c(3)])
    con.close()
    result = run(db)
    t = result.document["total"]
    assert (t["contacted"], t["accepted"], t["held_out"], t["contacts_per_customer"]) == (1, 1, 1, 0.0)
    assert result.funnels == {"response:inbound": [("sent", 1), ("reached", 1), ("accepted", 0), ("ordered", 0),
                                                   ("kept_7d", 0)]}
    assert fetch(db, "SELECT count(*) FROM funnel_counts WHERE funnel = 'response:inbound'") == [(5,)]
