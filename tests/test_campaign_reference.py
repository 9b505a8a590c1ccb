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

import datetime as dt
import json
import random
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from conftest import ENV, MATRICES
from reference_campaign import (
    FIELDS,
    Contact,
    Data,
    FunnelRow,
    Holdout,
    Order,
    Recommendation,
    ViewRow,
    contacted_pairs,
    cycles_of,
    evaluate,
    held_out_pairs,
    newcombe,
    newcombe_raw,
    response_funnels,
    showing_period,
)

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
        recommendations=[Recommendation(a, M, 1, "retention", "r1", "P1"), Recommendation(b, M, 1, "retention", "r2", "P1"),
                         Recommendation(dd, M, 1, "traffic", "t1", "P2"), Recommendation(a, "2026-09", 1, "x", "x", "P1")],
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
                    "segment": {"X": 0.666667, "Y": 0.333333},
                    "arpu_3m": {"mean": 75.26, "p25": 50.5, "median": 50.5, "p75": 100.01}},  # 75.255 → 75.26
        "held_out": {"customers": 3, "value_tier": dict(zip(tiers, (0.0, 0.0, 0.333333, 0.333333, 0.333333))),
                     "segment": {"Y": 0.666667, "(none)": 0.333333},
                     "arpu_3m": {"mean": 65.25, "p25": 50.5, "median": 50.5, "p75": 80.0}},
        "held_out_policy": {"customers": 2, "value_tier": dict(zip(tiers, (0.0, 0.0, 0.0, 0.5, 0.5))),
                            "segment": {"Y": 0.5, "(none)": 0.5},
                            "arpu_3m": {"mean": 50.5, "p25": 50.5, "median": 50.5, "p75": 50.5}},
        "held_out_universal": {"customers": 1, "value_tier": dict(zip(tiers, (0.0, 0.0, 1.0, 0.0, 0.0))),
                               "segment": {"Y": 1.0}, "arpu_3m": {"mean": 80.0, "p25": 80.0, "median": 80.0,
                                                                  "p75": 80.0}},
    }
    # a window of 31 days takes in d's unsubscription (11-01 + 31)
    assert evaluate(crafted(), M, window=31)["total"]["opted_out"] == 1


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
