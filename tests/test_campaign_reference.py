"""`mktool evaluate campaign` against an independent reference of the definitions (issue 13, hidden-data check).

tests/reference_campaign.py re-implements /work/campaign-definitions.md (as docs/evaluation.md
records it) in plain Python over rows. Here it is first checked itself — Newcombe's published
worked examples and a crafted month computed by hand — and then compared with mktool on ~50
random small databases, generated to hit every edge the definitions name: mktool push rows
whose outcome a response later replaced (cycle and recorded_by kept), ingested pop-up rows on
and around the showing period's ends, responses and orders on days d − 1, d, d + W, d + W + 1,
cancels on days 0 (before and after the order), 7 and 8, both kinds of hold-out and an older
holdouts table without them, a pair both held out and shown, customers without a view row,
NULL matrices, 'YYYY-MM' cycles of an older build and funnel rows that are not channel funnels.
Every field of the document and every response funnel row must agree.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib
import importlib.util
import io
import json
import os
import random
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import yaml
from conftest import ENV, MATRICES, slow_beyond
from reference_campaign import (
    FIELDS,
    Contact,
    Data,
    FunnelRow,
    Holdout,
    Order,
    Recommendation,
    ViewRow,
    balance_group,
    contacted_pairs,
    cycles_of,
    evaluate,
    held_out_pairs,
    newcombe,
    newcombe_raw,
    response_funnels,
    showing_period,
)

from mktool.config import Settings
from mktool.database import Database
from mktool.project import Project, load_project

M = "2026-10"
DAY = dt.timedelta(days=1)


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def shipped_kinds(matrices: Path = MATRICES) -> dict[str, str]:
    """The channels' kinds of a rules folder's channels.yaml (no kind: frontdesk and inbound are pop-ups)."""
    channels = yaml.safe_load((matrices / "channels.yaml").read_text(encoding="utf-8"))["channels"]
    return {name: (spec or {}).get("kind") or ("popup" if name in ("frontdesk", "inbound") else "push")
            for name, spec in channels.items()}


KINDS = {"frontdesk": "popup", "inbound": "popup", "sms": "push", "outbound": "push", "app": "push",
         "manager": "push"}


# -- (a) the reference itself ------------------------------------------------------------------------
@pytest.mark.parametrize(("counts", "expected"), [
    ((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)), ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)), ((0, 10, 0, 20), (-0.1611, 0.2775)), ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)), ((10, 10, 0, 10), (0.6075, 1.0000)),
])
def test_reference_newcombe_matches_the_published_examples(counts: tuple[int, int, int, int],
                                                           expected: tuple[float, float]) -> None:
    lo, hi = newcombe_raw(*counts)
    assert (round(lo, 4), round(hi, 4)) == expected
    ci = newcombe(*counts)
    assert ci is not None and abs(ci[0] - lo) <= 5e-7 and abs(ci[1] - hi) <= 5e-7


def test_reference_newcombe_is_null_for_an_empty_group() -> None:
    assert newcombe(0, 0, 1, 3) is None and newcombe(1, 3, 0, 0) is None


def crafted() -> Data:
    """The month worked by hand in the tests below (M = 2026-10; cycles 2026-11-01 and 2026-11-02).

    Customers a b c d e; policies P1 P2. 2026-11-01 is an sms cycle (funnel_counts), 2026-11-02
    is known only from the hold-outs: showing period 2026-11-01 … 2026-11-30.
    """
    a, b, c, dd, e = (f"1390000000{i}" for i in range(1, 6))
    mk = {"recorded_by": "mktool"}
    return Data(
        kinds=KINDS,
        funnels=[FunnelRow(M, "channel:sms", 1, "candidates", 9, "2026-11-01"),
                 FunnelRow(M, "plan", 1, "base", 9, None),
                 FunnelRow(M, "matrix:x", 1, "base", 9, "2026-12-15"),  # not a channel funnel: no cycle of M
                 FunnelRow("2026-09", "channel:sms", 1, "candidates", 9, "2026-10-01")],
        contacts=[
            Contact(a, d("2026-11-01"), "sms", "P1", "accepted", "2026-11-01", **mk),  # a response replaced `sent`
            Contact(a, d("2026-11-02"), "outbound", "P1", "sent", "2026-11-02", **mk),
            Contact(b, d("2026-11-05"), "frontdesk", "P1", "rejected"),  # a showing
            Contact(b, d("2026-10-31"), "frontdesk", "P1", "accepted"),  # before the period; before d
            Contact(c, d("2026-11-01"), "sms", "P2", "sent", "2026-10-01", **mk),  # a cycle of September's export
            Contact(c, d("2026-12-01"), "frontdesk", "P2", "accepted"),  # after the period
            Contact(dd, d("2026-11-01"), "sms", "P2", "sent", "2026-11-01", **mk),
            Contact(dd, d("2026-11-02"), "app", "P2", "sent", "2026-11-02", **mk),
            Contact(dd, d("2026-12-01"), "outbound", "P2", "no_answer"),  # d + 30
            Contact(dd, d("2026-12-02"), "sms", "P2", "unsubscribed"),  # d + 31
        ],
        holdouts=[
            Holdout(M, "2026-11-01", "sms", e, "P1", matrix="retention", rule_id="r1", cycle_date=d("2026-11-01"),
                    kind="policy"),
            Holdout(M, "2026-11-02", "sms", e, "P1", matrix="retention", rule_id="r1", cycle_date=d("2026-11-02"),
                    kind="policy"),
            Holdout(M, "2026-11-02", "outbound", c, "P1", matrix="m2", rule_id="r9", cycle_date=d("2026-11-02"),
                    kind="universal"),
            Holdout(M, "2026-11-01", "frontdesk", b, "P1", matrix="retention", rule_id="r2",
                    cycle_date=d("2026-11-01"), kind="policy"),  # held out and shown
            Holdout("2026-09", "2026-10-01", "sms", a, "P2", cycle_date=d("2026-10-01"), kind="policy"),
        ],
        orders=[
            Order(a, t("2026-11-20 10:00:00"), "P1", "order"),
            Order(a, t("2026-11-27 23:59:59"), "P1", "cancel"),  # day 7
            Order(b, t("2026-12-05 00:00:00"), "P1", "order"),  # d + 30 of the showing; after the hold-out's window
            Order(dd, t("2026-10-31 12:00:00"), "P2", "order"),  # before d
            Order(e, t("2026-11-01 09:00:00"), "P1", "order"),
            Order(c, t("2026-12-03 08:00:00"), "P1", "order"),  # held 2026-11-02: day 31
        ],
        recommendations=[Recommendation(a, M, 1, "retention", "r1", "P1"),
                         Recommendation(b, M, 1, "retention", "r2", "P1"),
                         Recommendation(dd, M, 1, "traffic", "t1", "P2"),
                         Recommendation(a, "2026-09", 1, "x", "x", "P1")],
        view=[ViewRow(a, M, "X", "high", Decimal("100.01")), ViewRow(b, M, "Y", "low", Decimal("50.50")),
              ViewRow(dd, M, "X", None, None), ViewRow(c, M, "Y", "mid", Decimal("80.00")),
              ViewRow(e, "2026-09", "Z", "high", Decimal("1.00"))],
    )


def test_reference_contacts_and_pairs_of_the_crafted_month() -> None:
    data = crafted()
    assert cycles_of(data, M) == {"2026-11-01", "2026-11-02"}
    assert showing_period(data, M) == (d("2026-11-01"), d("2026-11-30"))
    pairs = contacted_pairs(data, M, 30)
    assert {(p[0][-1], p[1]): (f.date.isoformat(), f.channel, f.matrix) for p, f in pairs.items()} == {
        ("1", "P1"): ("2026-11-01", "sms", "retention"), ("2", "P1"): ("2026-11-05", "frontdesk", "retention"),
        ("4", "P2"): ("2026-11-01", "sms", "traffic")}
    held = held_out_pairs(data, M, 30)
    assert {(p[0][-1], p[1]): (f.date.isoformat(), f.channel, f.kind, f.ordered) for p, f in held.items()} == {
        ("5", "P1"): ("2026-11-01", "sms", "policy", True), ("3", "P1"): ("2026-11-02", "outbound", "universal", False),
        ("2", "P1"): ("2026-11-01", "frontdesk", "policy", False)}


def test_reference_document_of_the_crafted_month() -> None:
    doc = evaluate(crafted(), M)
    assert doc["by"] == ["policy_id"] and doc["window_days"] == 30 and doc["month"] == M
    p1, p2 = doc["rows"]
    # P1: contacted a (sms 11-01, accepted, ordered 11-20, cancelled on day 7) and b (shown 11-05, rejected,
    # ordered on d + 30); held out e (ordered), c (day 31), b (held 11-01: its order is day 34).
    assert p1 == {"policy_id": "P1", "contacted": 2, "accepted": 1, "rejected": 1, "no_answer": 0, "opted_out": 0,
                  "success_rate": 0.5, "ordered": 2, "take_up": 1.0, "held_out": 3, "held_out_ordered": 1,
                  "take_up_control": 0.333333, "uplift": 0.666667, "uplift_ci": newcombe(2, 2, 1, 3),
                  "cancelled_7d": 1, "cancel_7d_rate": 0.5, "contacts_per_customer": 1.0}
    # P2: d (sms 11-01 and app 11-02: 2 push contacts; no_answer on d + 30, unsubscribed on d + 31)
    assert p2 == {"policy_id": "P2", "contacted": 1, "accepted": 0, "rejected": 0, "no_answer": 1, "opted_out": 0,
                  "success_rate": 0.0, "ordered": 0, "take_up": 0.0, "held_out": 0, "held_out_ordered": 0,
                  "take_up_control": None, "uplift": None, "uplift_ci": None, "cancelled_7d": 0,
                  "cancel_7d_rate": None, "contacts_per_customer": 2.0}
    assert doc["total"] == {"contacted": 3, "accepted": 1, "rejected": 1, "no_answer": 1, "opted_out": 0,
                            "success_rate": 0.333333, "ordered": 2, "take_up": 0.666667, "held_out": 3,
                            "held_out_ordered": 1, "take_up_control": 0.333333, "uplift": 0.333333,
                            "uplift_ci": newcombe(2, 3, 1, 3), "cancelled_7d": 1, "cancel_7d_rate": 0.5,
                            "contacts_per_customer": 1.333333}  # 4 push contacts, customers a b d
    tiers = ("high", "mid_high", "mid", "low", "(none)")
    assert doc["balance"] == {
        "treated": {"customers": 3, "value_tier": dict(zip(tiers, (0.333333, 0.0, 0.0, 0.333333, 0.333333))),
                    "segment": {"X": 0.666667, "Y": 0.333333, "(none)": 0.0},
                    "arpu_3m": {"mean": 75.26, "p25": 50.5, "median": 50.5, "p75": 100.01}},  # 75.255 → 75.26
        "held_out": {"customers": 3, "value_tier": dict(zip(tiers, (0.0, 0.0, 0.333333, 0.333333, 0.333333))),
                     "segment": {"X": 0.0, "Y": 0.666667, "(none)": 0.333333},
                     "arpu_3m": {"mean": 65.25, "p25": 50.5, "median": 50.5, "p75": 80.0}},
        "held_out_policy": {"customers": 2, "value_tier": dict(zip(tiers, (0.0, 0.0, 0.0, 0.5, 0.5))),
                            "segment": {"X": 0.0, "Y": 0.5, "(none)": 0.5},
                            "arpu_3m": {"mean": 50.5, "p25": 50.5, "median": 50.5, "p75": 50.5}},
        "held_out_universal": {"customers": 1, "value_tier": dict(zip(tiers, (0.0, 0.0, 1.0, 0.0, 0.0))),
                               "segment": {"X": 0.0, "Y": 1.0, "(none)": 0.0},
                               "arpu_3m": {"mean": 80.0, "p25": 80.0, "median": 80.0, "p75": 80.0}},
    }
    # a window of 31 days takes in d's unsubscription (11-01 + 31)
    assert evaluate(crafted(), M, window=31)["total"]["opted_out"] == 1


def test_reference_balance_without_arpu_and_nearest_ranks() -> None:
    view = {m: ViewRow(m, M, None, None, a) for m, a in [("1", None), ("2", Decimal("10.00")), ("3", Decimal("1.10")),
                                                           ("4", Decimal("3.30")), ("5", Decimal("2.20"))]}
    assert balance_group({"1"}, view, ["S"]) == {
        "customers": 1, "value_tier": {"high": 0.0, "mid_high": 0.0, "mid": 0.0, "low": 0.0, "(none)": 1.0},
        "segment": {"S": 0.0, "(none)": 1.0}, "arpu_3m": None}
    # 4 values 1.10 2.20 3.30 10.00: positions ⌈1⌉ ⌈2⌉ ⌈3⌉; the mean 16.60 / 4 = 4.15
    assert balance_group({"1", "2", "3", "4", "5"}, view, [])["arpu_3m"] == {
        "mean": 4.15, "p25": 1.1, "median": 2.2, "p75": 3.3}
    # 3 values 1.10 2.20 10.00: positions ⌈0.75⌉ = 1, ⌈1.5⌉ = 2, ⌈2.25⌉ = 3; mean 13.30 / 3 = 4.4333… → 4.43
    assert balance_group({"2", "3", "5"}, view, [])["arpu_3m"] == {"mean": 4.43, "p25": 1.1, "median": 2.2,
                                                                   "p75": 10.0}


def test_reference_has_no_balance_without_a_view_of_the_month() -> None:
    data = crafted()
    data.view = [v for v in data.view if v.month != M]
    assert evaluate(data, M)["balance"] == {}


def test_reference_groups_by_channel_and_null_last() -> None:
    doc = evaluate(crafted(), M, by=("channel", "value_tier"))
    keys = [(r["channel"], r["value_tier"], r["contacted"], r["held_out"]) for r in doc["rows"]]
    # frontdesk: b (low) contacted and held out; outbound: c held (mid); sms: a (high), d (NULL tier), e (no view row)
    assert keys == [("frontdesk", "low", 1, 1), ("outbound", "mid", 0, 1), ("sms", "high", 1, 0),
                    ("sms", None, 1, 1)]
    assert list(doc["rows"][0]) == ["channel", "value_tier", *FIELDS]


def test_reference_response_funnels_of_the_crafted_month() -> None:
    assert response_funnels(crafted(), M) == [
        *stages("app", 1, 0, 0, 0, 0),  # d's app contact: only `sent`
        *stages("frontdesk", 1, 1, 0, 0, 0),  # a showing is reached; b rejected
        *stages("outbound", 1, 0, 0, 0, 0),
        *stages("sms", 2, 1, 1, 1, 0),  # a accepted and ordered, cancelled on day 7; d: unsubscribed on d + 31
    ]
    assert response_funnels(crafted(), M, window=31)[-5:] == stages("sms", 2, 2, 1, 1, 0)


def stages(channel: str, *counts: int) -> list[tuple[str, int, str, int]]:
    names = ("sent", "reached", "accepted", "ordered", "kept_7d")
    return [(f"response:{channel}", i, s, n) for i, (s, n) in enumerate(zip(names, counts), 1)]


# -- (b) random small databases ------------------------------------------------------------------------
POLICIES = ("REBUNDLE_HIGH", "REBUNDLE_BASIC", "PREPAY_300_600", "PREPAY_50_100", "NEW_BIND_12M")
PUSH_CHANNELS = ("sms", "outbound", "app", "manager")
POPUP_CHANNELS = ("frontdesk", "inbound")
UNKNOWN_CHANNEL = "wechat"  # not in channels.yaml: a push channel
RESPONSES = ("accepted", "rejected", "no_answer", "unsubscribed")
SEGMENTS = ("A_family", "B_youth", "C_business")
TIER_VALUES = ("high", "mid_high", "mid", "low")
TIMES = (dt.time(0, 0, 0), dt.time(9, 30, 0), dt.time(23, 59, 59))


def month_start(month: str) -> dt.date:
    return dt.date.fromisoformat(month + "-01")


def add_months(day: dt.date, n: int) -> dt.date:
    i = day.year * 12 + day.month - 1 + n
    return dt.date(i // 12, i % 12 + 1, 1)


def month_of(day: dt.date) -> str:
    return day.isoformat()[:7]


class History:
    """contact_history as the database keeps it: one row per (msisdn, contact_date, channel, policy_id).

    A response with the key of a mktool row replaces its outcome and keeps its cycle and
    recorded_by (the upsert of the universal helper's ingest); another row is added.
    """

    def __init__(self, bookkeeping: bool = True) -> None:
        self.rows: dict[tuple[str, dt.date, str, str], Contact] = {}
        self.bookkeeping = bookkeeping  # False: an older build's table, without cycle and recorded_by

    def add(self, c: Contact) -> None:
        key = (c.msisdn, c.contact_date, c.channel, c.policy_id)
        if not self.bookkeeping:
            c = Contact(*key, c.outcome)
        old = self.rows.get(key)
        if old is not None and c.recorded_by is None:
            self.rows[key] = Contact(*key, c.outcome, old.cycle, old.recorded_by)
        elif old is None:
            self.rows[key] = c


def random_data(seed: int) -> tuple[Data, str, list[int]]:
    """A random small month of exports, showings, responses, hold-outs and orders (see the module doc)."""
    rng = random.Random(seed)
    month = rng.choice(["2026-10", "2026-10", "2026-11", "2026-12"])  # December: its cycles lie in January
    first = add_months(month_start(month), 1)
    before = month_of(month_start(month) - DAY)  # the month before M
    last = add_months(first, 1) - DAY
    windows = [30, rng.choice([1, 7, 14, rng.randint(2, 40)])]
    customers = sorted({f"139{rng.randrange(10 ** 8):08d}" for _ in range(rng.randint(5, 30))})
    policies = rng.sample(POLICIES, rng.randint(2, 4))
    dates = sorted({first + rng.choice([0, 0, 1, 3]) * DAY} | {first + rng.randint(0, 27) * DAY
                                                                for _ in range(rng.randint(0, 2))})
    cycles = [x.isoformat() for x in dates]
    if rng.random() < 0.2:
        cycles.append(month_of(first))  # an older build's monthly cycle id
        if rng.random() < 0.25:
            cycles = cycles[-1:]  # only that: no showing period, no showings
    in_funnels = [c for c in cycles if c == cycles[0] or rng.random() < 0.6]
    legacy = rng.random() < 0.25
    data = Data(kinds=dict(KINDS), legacy_holdouts=legacy, legacy_history=rng.random() < 0.08,
                orders_table=rng.random() > 0.05)
    other_tier = rng.random() < 0.3  # a tier name beyond the four of the shipped scores.yaml
    funnels = [FunnelRow(month, f"channel:{rng.choice(PUSH_CHANNELS)}", 1, "candidates", 5, c) for c in in_funnels]
    funnels += [FunnelRow(month, "plan", 1, "base", 5, None),
                FunnelRow(month, "matrix:retention", 1, "base", 5, (last + 20 * DAY).isoformat()),
                FunnelRow(before, "channel:sms", 1, "candidates", 5, (first - 10 * DAY).isoformat()),
                FunnelRow(month, "response:sms", 1, "sent", 999, None),  # an earlier run's response funnel
                FunnelRow(before, "response:app", 1, "sent", 7, None)]  # the month before's: kept
    data.funnels = funnels

    def cycle_day(c: str) -> dt.date:
        return dt.date.fromisoformat(c) if len(c) == 10 else first + rng.randint(0, 5) * DAY

    holdout_cycles = [c for c in cycles if c not in in_funnels] + rng.sample(cycles, rng.randint(0, len(cycles)))
    universal = {m for m in customers if rng.random() < 0.12}
    history = History(not data.legacy_history)
    holdouts: list[Holdout] = []
    recs: list[Recommendation] = []
    period_start, period_end = dates[0], add_months(dates[-1], 1) - DAY
    popup_days = [period_start - DAY, period_start, period_start + rng.randint(0, 20) * DAY, period_end,
                  period_end + DAY]

    def holdout(m: str, p: str, cycle: str, matrix: str | None, rule: str | None) -> None:
        kind: str | None = "universal" if m in universal else "policy"
        channel = None if rng.random() < 0.05 else rng.choice(PUSH_CHANNELS + POPUP_CHANNELS)
        day: dt.date | None = cycle_day(cycle)
        if rng.random() < 0.05:
            day = None  # NULL cycle_date: dated by the cycle
        if rng.random() < 0.05 and kind == "policy":
            kind = None  # NULL kind: a policy hold-out
        if any((h.msisdn, h.policy_id, h.cycle, h.channel) == (m, p, cycle, channel) for h in holdouts):
            return
        holdouts.append(Holdout(month, cycle, channel, m, p, rng.randint(1, 3), matrix, rule,
                                None if legacy else day, None if legacy else kind))

    for m in customers:
        for p in policies:
            if rng.random() < 0.3:
                continue
            matrix = rng.choice(["retention", "traffic", None])
            rule = None if matrix is None or rng.random() < 0.1 else f"{matrix[0]}{rng.randint(1, 3)}"
            if rng.random() < 0.8:
                recs.append(Recommendation(m, month, rng.randint(1, 3), matrix, rule, p))
            role = "held" if m in universal else rng.choice(["push", "push", "push", "held", "popup"])
            if role == "held":
                for c in rng.sample(holdout_cycles or cycles, rng.randint(1, min(2, len(holdout_cycles or cycles)))):
                    if c not in holdout_cycles:
                        holdout_cycles.append(c)
                    holdout(m, p, c, matrix, rule)
                    if rng.random() < 0.15:  # held out on a second channel in the same cycle: name order decides
                        holdout(m, p, c, matrix, rule)
            if role == "push":
                for c in rng.sample(cycles, rng.randint(1, min(2, len(cycles)))):
                    channel = UNKNOWN_CHANNEL if rng.random() < 0.05 else rng.choice(PUSH_CHANNELS)
                    outcome = "sent" if rng.random() < 0.6 else rng.choice(RESPONSES)
                    history.add(Contact(m, cycle_day(c), channel, p, outcome, c, "mktool"))
                    if rng.random() < 0.1:  # listed on two push channels the same day: name order decides
                        history.add(Contact(m, cycle_day(c), rng.choice(PUSH_CHANNELS), p, "sent", c, "mktool"))
            if role == "popup" or (role == "held" and rng.random() < 0.3) or rng.random() < 0.15:
                for _ in range(rng.randint(1, 2)):
                    history.add(Contact(m, rng.choice(popup_days), rng.choice(POPUP_CHANNELS), p,
                                        rng.choice(("sent", *RESPONSES)), None, None))
            if rng.random() < 0.1:  # a mktool row of another month's cycle: not a contact of M
                history.add(Contact(m, first - 5 * DAY, rng.choice(PUSH_CHANNELS), p, "sent",
                                    (first - 5 * DAY).isoformat(), "mktool"))
            if rng.random() < 0.05:  # a mktool row on a pop-up channel: a showing when in the period
                history.add(Contact(m, rng.choice(popup_days), rng.choice(POPUP_CHANNELS), p, "sent",
                                    rng.choice(cycles), "mktool"))
    if customers:  # another month's hold-outs and recommendations do not count
        holdouts.append(Holdout(before, (first - 40 * DAY).isoformat(), "sms", customers[0],
                                policies[0], 1, "retention", "r9", None if legacy else first - 40 * DAY,
                                None if legacy else "policy"))
        recs.append(Recommendation(customers[-1], before, 1, "other", "o1", policies[-1]))
    data.holdouts = holdouts
    data.recommendations = recs
    data.contacts = list(history.rows.values())

    # responses and orders around each pair's date d (the reference's d: responses on push channels
    # with recorded_by NULL and orders do not move it)
    offsets = sorted({0, -1, 1, rng.randint(2, 25)} | {o for w in windows for o in (w - 1, w, w + 1)})
    contacted = contacted_pairs(data, month, 30)
    held = held_out_pairs(data, month, 30)
    for (m, p), facts in contacted.items():
        for _ in range(rng.randint(0, 3)):
            channel = facts.channel if facts.channel and rng.random() < 0.5 else rng.choice(PUSH_CHANNELS)
            history.add(Contact(m, facts.date + rng.choice(offsets) * DAY, channel, p, rng.choice(RESPONSES)))
    data.contacts = list(history.rows.values())
    orders: dict[tuple[str, dt.datetime, str, str], Order] = {}

    def order(m: str, p: str, at: dt.datetime, action: str) -> None:
        orders.setdefault((m, at, p, action), Order(m, at, p, action, rng.choice([None, "sms", "frontdesk"])))

    for (m, p), facts in [*contacted.items(), *held.items()]:
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            at = dt.datetime.combine(facts.date + rng.choice(offsets) * DAY, rng.choice(TIMES))
            order(m, p, at, "order")
            if rng.random() < 0.6:
                days, time = rng.choice([(0, at.time()), (0, dt.time(0, 0, 0)), (0, dt.time(23, 59, 59)),
                                         (7, dt.time(23, 59, 59)),
                                         (8, dt.time(0, 0, 0)), (3, dt.time(12, 0, 0)), (-1, dt.time(12, 0, 0))])
                order(m, p, dt.datetime.combine(at.date() + days * DAY, time), "cancel")
    if customers:
        order(customers[0], policies[-1], dt.datetime.combine(first, TIMES[1]), "order")
    data.orders = list(orders.values()) if data.orders_table else []
    view = []
    for m in customers:
        if rng.random() < 0.85:
            arpu = None if rng.random() < 0.1 else Decimal(rng.randint(0, 40000)) / 100
            tier = rng.choice((*TIER_VALUES, None, *(["vip"] if other_tier else [])))
            view.append(ViewRow(m, month, rng.choice((*SEGMENTS, None)), tier, arpu))
        elif rng.random() < 0.5:
            view.append(ViewRow(m, before, "Z_other", "high", Decimal("1.00")))
    data.view = view
    return data, month, windows


def _insert(con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Insert rows in one statement from an Arrow table (executemany takes ~0.5 s per database)."""
    if not rows:
        return
    batch = pa.Table.from_pylist([dict(zip(columns, r)) for r in rows])
    con.register("_batch", batch)
    try:
        names = ", ".join(columns)
        con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _batch")
    finally:
        con.unregister("_batch")


def write_db(path: Path, data: Data) -> Path:
    """The tables mktool would have (export's contact_history and holdouts, funnel_counts, orders, the view)."""
    con = duckdb.connect(str(path))
    try:
        history: tuple[str, ...] = ("msisdn", "contact_date", "channel", "policy_id", "outcome", "cycle",
                                    "recorded_by")
        history = history[:5] if data.legacy_history else history  # an older build: no bookkeeping columns
        con.execute("CREATE TABLE contact_history (msisdn VARCHAR, contact_date DATE, channel VARCHAR, "
                    "policy_id VARCHAR NOT NULL, outcome VARCHAR"
                    + ("" if data.legacy_history else ", cycle VARCHAR, recorded_by VARCHAR") + ")")
        _insert(con, "contact_history", history,
                [(c.msisdn, c.contact_date, c.channel, c.policy_id, c.outcome, c.cycle, c.recorded_by)[:len(history)]
                 for c in data.contacts])
        if data.legacy_holdouts:  # an older build's holdouts: no kind, no cycle_date
            con.execute("CREATE TABLE holdouts (month VARCHAR, cycle VARCHAR, channel VARCHAR, msisdn VARCHAR, "
                        "policy_id VARCHAR, rank INTEGER, matrix VARCHAR, rule_id VARCHAR)")
            _insert(con, "holdouts", ("month", "cycle", "channel", "msisdn", "policy_id", "rank", "matrix", "rule_id"),
                    [(h.month, h.cycle, h.channel, h.msisdn, h.policy_id, h.rank, h.matrix, h.rule_id)
                     for h in data.holdouts])
        else:
            con.execute("CREATE TABLE holdouts (month VARCHAR, cycle VARCHAR, cycle_date DATE, channel VARCHAR, "
                        "msisdn VARCHAR, policy_id VARCHAR, rank INTEGER, matrix VARCHAR, rule_id VARCHAR, "
                        "kind VARCHAR)")
            _insert(con, "holdouts", ("month", "cycle", "cycle_date", "channel", "msisdn", "policy_id", "rank",
                                      "matrix", "rule_id", "kind"),
                    [(h.month, h.cycle, h.cycle_date, h.channel, h.msisdn, h.policy_id, h.rank, h.matrix, h.rule_id,
                      h.kind) for h in data.holdouts])
        con.execute("CREATE TABLE funnel_counts (month VARCHAR, funnel VARCHAR, stage_no INTEGER, stage VARCHAR, "
                    "count BIGINT, cycle VARCHAR)")
        _insert(con, "funnel_counts", ("month", "funnel", "stage_no", "stage", "count", "cycle"),
                [(f.month, f.funnel, f.stage_no, f.stage, f.count, f.cycle) for f in data.funnels])
        if data.orders_table:
            con.execute("CREATE TABLE orders (msisdn VARCHAR, order_time TIMESTAMP, policy_id VARCHAR, "
                        "action VARCHAR, channel VARCHAR)")
        _insert(con, "orders", ("msisdn", "order_time", "policy_id", "action", "channel"),
                [(o.msisdn, o.order_time, o.policy_id, o.action, o.channel) for o in data.orders])
        con.execute("CREATE TABLE recommendations (msisdn VARCHAR, month VARCHAR, rank INTEGER, matrix VARCHAR, "
                    "rule_id VARCHAR, policy_id VARCHAR, policy_name VARCHAR)")
        _insert(con, "recommendations", ("msisdn", "month", "rank", "matrix", "rule_id", "policy_id", "policy_name"),
                [(r.msisdn, r.month, r.rank, r.matrix, r.rule_id, r.policy_id, r.policy_id)
                 for r in data.recommendations])
        con.execute("CREATE TABLE customer_view (msisdn VARCHAR, month VARCHAR, status VARCHAR, segment VARCHAR, "
                    "value_tier VARCHAR, arpu_3m DECIMAL(18,2))")
        _insert(con, "customer_view", ("msisdn", "month", "status", "segment", "value_tier", "arpu_3m"),
                [(v.msisdn, v.month, "active", v.segment, v.value_tier, v.arpu_3m) for v in data.view])
    finally:
        con.close()
    return path


# -- comparing mktool with the reference -----------------------------------------------------------------
def _borderline_ci(figures: dict[str, Any], i: int) -> bool:
    """Whether the interval's unrounded bound lies within float noise of a rounding half (6 decimals)."""
    try:
        raw = newcombe_raw(figures["ordered"], figures["contacted"], figures["held_out_ordered"], figures["held_out"])
    except (KeyError, TypeError, ZeroDivisionError):
        return False
    scaled = abs(raw[i]) * 10 ** 6
    return abs(scaled - int(scaled) - 0.5) < 1e-6


def differences(want: Any, got: Any, path: str = "$", owner: dict[str, Any] | None = None) -> list[str]:
    """Every place where mktool's document differs from the reference's (keys, their order, values)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: expected an object {want!r}, got {got!r}"]
        out = [] if list(want) == list(got) else [f"{path}: keys {list(want)} != mktool's {list(got)}"]
        for key, value in want.items():
            if key in got:
                out += differences(value, got[key], f"{path}.{key}", want)
        return out
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: expected {want!r}, got {got!r}"]
        out = []
        for i, (w, g) in enumerate(zip(want, got)):
            if path.endswith(".uplift_ci") and owner is not None and isinstance(g, float) and isinstance(w, float) \
                    and abs(w - g) <= 1.000001e-6 and _borderline_ci(owner, i):
                continue  # the floats of another (equally exact) order of operations round the other way
            out += differences(w, g, f"{path}[{i}]", owner)
        return out
    if type(want) is not type(got) and not (isinstance(want, float) and isinstance(got, int) and want == got):
        return [f"{path}: expected {want!r} ({type(want).__name__}), got {got!r} ({type(got).__name__})"]
    return [] if want == got else [f"{path}: expected {want!r}, got {got!r}"]


def campaign_kind_available() -> bool:
    proc = subprocess.run([sys.executable, "-m", "mktool", "evaluate", "--help"], env=ENV, capture_output=True,
                          text=True, timeout=120)
    return "campaign" in proc.stdout


def run_cli(db: Path, month: str, by: tuple[str, ...] | None, window: int | None, fmt: str = "json",
            matrices: Path = MATRICES) -> str:
    args = [sys.executable, "-m", "mktool", "evaluate", "--month", month, "--format", fmt, "--db", str(db),
            "--matrices", str(matrices)]
    args += ["--by", ",".join(by)] if by else []
    args += ["--window", str(window)] if window is not None else []
    proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(args[2:])} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def run_json(db: Path, month: str, by: tuple[str, ...] | None, window: int | None,
             matrices: Path = MATRICES) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(run_cli(db, month, by, window, matrices=matrices))
    return document


def csv_differences(want: dict[str, Any], text: str) -> list[str]:
    """The csv against the reference document: month, window_days, row, the by columns, the fields (ci in two)."""
    by = want["by"]
    fields = [f for f in FIELDS if f != "uplift_ci"]
    header = ["month", "window_days", "row", *by, *fields[:fields.index("uplift") + 1], "uplift_ci_lo", "uplift_ci_hi",
              *fields[fields.index("uplift") + 1:]]
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or lines[0] != header:
        return [f"csv header {lines[:1]} != {header}"]
    expected = [("group", r) for r in want["rows"]] + [("total", want["total"])]
    if len(lines) - 1 != len(expected):
        return [f"csv has {len(lines) - 1} lines, expected {len(expected)}"]
    out = []
    for line, (kind, row) in zip(lines[1:], expected):
        ci = row["uplift_ci"] or [None, None]
        values = {"month": want["month"], "window_days": want["window_days"], "row": kind,
                  **{c: row.get(c) for c in by}, **row, "uplift_ci_lo": ci[0], "uplift_ci_hi": ci[1]}
        for name, cell in zip(header, line):
            value = values[name]
            same = cell == "" if value is None else (
                Decimal(cell) == Decimal(str(value)) if isinstance(value, int | float) else cell == str(value))
            if not same and not (name.startswith("uplift_ci") and abs(float(cell) - float(value)) <= 1.000001e-6
                                 and _borderline_ci(row, 0 if name.endswith("lo") else 1)):
                out.append(f"csv {kind} line {line}: {name} = {cell!r}, expected {value!r}")
    return out


def stored(db: Path, month: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(the month's response funnel rows, its stored runs) as the database holds them after a run."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        funnels = con.execute("SELECT funnel, stage_no, stage, count, cycle FROM funnel_counts WHERE month = ? AND "
                              "funnel LIKE 'response:%' ORDER BY funnel, stage_no", [month]).fetchall()
        funnels += con.execute("SELECT * FROM funnel_counts WHERE month <> ? ORDER BY ALL", [month]).fetchall()
        runs = con.execute("SELECT contacted, held_out, window_days, document FROM campaign_evaluation "
                           "WHERE month = ? ORDER BY created_at", [month]).fetchall()
    finally:
        con.close()
    return funnels, runs


BY_SETS: list[tuple[str, ...]] = [("channel",), ("matrix", "rule_id"), ("segment", "value_tier"),
                                  ("policy_id", "channel", "segment"), ("value_tier",), ("rule_id", "policy_id")]


def run_library(db: Path, month: str, by: tuple[str, ...] | None, window: int | None,
                matrices: Path = MATRICES) -> dict[str, Any]:
    """The same through mktool.campaign.evaluate_campaign in this process (no interpreter start per run)."""
    campaign = importlib.import_module("mktool.campaign")
    with Database(Settings(db_path=db, memory_limit="1GB", threads=2), write=True) as database:
        result = campaign.evaluate_campaign(database, rules(matrices), month, by=by or ("policy_id",),
                                            window=window or 30)
    document: dict[str, Any] = json.loads(json.dumps(result.document))
    return document


_RULES: dict[Path, Project] = {}


def rules(matrices: Path = MATRICES) -> Project:
    """A rules folder, loaded once (channels.yaml gives the channels' kinds)."""
    if matrices not in _RULES:
        _RULES[matrices] = load_project(matrices)
    return _RULES[matrices]


@pytest.fixture(scope="module")
def app_popup_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped rules with channel app made a pop-up: the kinds must come from channels.yaml, not names."""
    folder = tmp_path_factory.mktemp("rules") / "matrices"
    shutil.copytree(MATRICES, folder)
    path = folder / "channels.yaml"
    text = path.read_text(encoding="utf-8")
    old = "  app:              # app push / in-app banner\n    kind: push\n    cycle: daily\n    capacity: null\n"
    assert old in text, "channels.yaml's app entry changed: adapt this fixture"
    path.write_text(text.replace(old, "  app:\n    kind: popup\n    cycle: daily\n"), encoding="utf-8")
    assert shipped_kinds(folder) == {**KINDS, "app": "popup"}
    return folder


@pytest.fixture(scope="module")
def campaign_cli() -> None:
    if not campaign_kind_available():
        pytest.skip("`mktool evaluate --help` shows no campaign kind yet: nothing to compare the reference with")
    assert shipped_kinds() == KINDS, "the reference's channel kinds are those of the shipped channels.yaml"


def check_database(db: Path, data: Data, month: str, runs: list[tuple[tuple[str, ...] | None, int | None]],
                   label: str, *, cli: bool = True, matrices: Path = MATRICES) -> list[str]:
    """Run mktool's campaign evaluation for each (by, window) of ``runs``; every difference from the reference."""
    problems: list[str] = []
    for n, (by, window) in enumerate(runs, 1):
        got = (run_json if cli else run_library)(db, month, by, window, matrices)
        want = evaluate(data, month, window=window or 30, by=by or ("policy_id",))
        at = f"{label} --by {','.join(by) if by else '(default)'} --window {window or '(default)'}"
        problems += [f"{at}: {p}" for p in differences(want, got)]
        funnels, stored_runs = stored(db, month)
        want_funnels: list[tuple[Any, ...]] = [(*row, None) for row in response_funnels(data, month,
                                                                                     window=window or 30)]
        want_funnels += sorted((f.month, f.funnel, f.stage_no, f.stage, f.count, f.cycle) for f in data.funnels
                               if f.month != month)  # other months' funnels untouched
        if funnels != want_funnels:
            problems.append(f"{at}: response funnels {funnels} != reference {want_funnels}")
        if len(stored_runs) != n:
            problems.append(f"{at}: campaign_evaluation holds {len(stored_runs)} runs of {month}, expected {n}")
        elif (stored_runs[-1][0], stored_runs[-1][1], stored_runs[-1][2]) != (
                want["total"]["contacted"], want["total"]["held_out"], window or 30) \
                or json.loads(stored_runs[-1][3]) != got:
            problems.append(f"{at}: the stored run {stored_runs[-1][:3]} does not hold the printed document")
    if cli and runs:  # the last run's figures once more as csv
        by, window = runs[-1]
        want = evaluate(data, month, window=window or 30, by=by or ("policy_id",))
        problems += csv_differences(want, run_cli(db, month, by, window, "csv", matrices))
    return problems


#: Random databases compared in CI (the first few in the default run, the rest `slow`); MKTOOL_REFERENCE_SEEDS=300
#: for a thorough sweep.
SEEDS = int(os.environ.get("MKTOOL_REFERENCE_SEEDS", "30"))


@pytest.mark.parametrize("seed", slow_beyond(range(SEEDS), 10))
def test_random_databases_agree_with_the_reference(seed: int, tmp_path: Path, campaign_cli: None,
                                                   app_popup_rules: Path) -> None:
    data, month, windows = random_data(seed)
    matrices = app_popup_rules if seed % 5 == 2 else MATRICES  # every 5th: app is a pop-up there
    data.kinds = shipped_kinds(matrices)
    db = write_db(tmp_path / "mktool.duckdb", data)
    runs: list[tuple[tuple[str, ...] | None, int | None]] = [(None, None), (BY_SETS[seed % len(BY_SETS)], windows[1])]
    # every 10th database through the command line (defaults, --by, --window, json and csv), the rest in-process
    cli = seed % 10 == 0 or importlib.util.find_spec("mktool.campaign") is None
    if cli:
        runs.append((BY_SETS[(seed + 3) % len(BY_SETS)], 30))
    problems = check_database(db, data, month, runs, f"seed {seed} (month {month})", cli=cli, matrices=matrices)
    assert not problems, "\n".join(problems[:20])


def test_half_way_rates_round_away_from_zero(tmp_path: Path, campaign_cli: None) -> None:
    """128 contacted and 128 held-out pairs: every rate is an exact half at the 7th decimal (k/128).

    1 accepted of 128 → 0.0078125 → 0.007813; 1 held-out order of 128 → 0.007813; uplift
    (0·128 − 1·128) / (128·128) = −0.0078125 → −0.007813 (half away from zero, not −0.007812);
    129 push contacts of 128 customers → 1.0078125 → 1.007813.
    """
    people = [f"1390000{i:04d}" for i in range(256)]
    mk = {"cycle": "2026-11-01", "recorded_by": "mktool"}
    data = Data(
        kinds=dict(KINDS), funnels=[FunnelRow(M, "channel:sms", 1, "candidates", 128, "2026-11-01")],
        contacts=[Contact(m, d("2026-11-01"), "sms", "P1", "accepted" if i == 0 else "sent", **mk)
                  for i, m in enumerate(people[:128])]
        + [Contact(people[0], d("2026-11-01"), "outbound", "P1", "sent", **mk)],
        holdouts=[Holdout(M, "2026-11-01", "sms", m, "P1", cycle_date=d("2026-11-01"), kind="policy")
                  for m in people[128:]],
        orders=[Order(people[200], t("2026-11-03 10:00:00"), "P1", "order")],
        view=[ViewRow(m, M, "S", "mid", Decimal(i)) for i, m in enumerate(people[::3])])
    want = evaluate(data, M)
    assert {k: want["total"][k] for k in ("success_rate", "take_up_control", "uplift", "contacts_per_customer")} == {
        "success_rate": 0.007813, "take_up_control": 0.007813, "uplift": -0.007813, "contacts_per_customer": 1.007813}
    db = write_db(tmp_path / "mktool.duckdb", data)
    assert differences(want, run_json(db, M, None, None)) == []
