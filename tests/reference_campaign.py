"""An independent reference of the campaign evaluation (/work/campaign-definitions.md, docs/evaluation.md).

Plain Python over rows (dataclasses in lists), written from the definitions alone — never from
mktool/campaign.py — so that tests/test_campaign_reference.py can compare the two on random
databases: two readings of one text that agree on every case are far likelier right than one.
Counts are ints, rates exact (fractions.Fraction) rounded half away from zero to 6 decimals,
money to the fen; only Newcombe's interval is in floats, as the definitions say.

Not part of the package: a helper module of the tests.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

OUTCOMES = {"accepted": "accepted", "rejected": "rejected", "no_answer": "no_answer", "unsubscribed": "opted_out"}
REACHED = ("accepted", "rejected", "unsubscribed")  # "any outcome but no_answer" (a `sent` row is none)
TIERS = ("high", "mid_high", "mid", "low")
NONE = "(none)"
BY_COLUMNS = ("policy_id", "matrix", "rule_id", "channel", "segment", "value_tier")
FIELDS = ("contacted", "accepted", "rejected", "no_answer", "opted_out", "success_rate", "ordered", "take_up",
          "held_out", "held_out_ordered", "take_up_control", "uplift", "uplift_ci", "cancelled_7d",
          "cancel_7d_rate", "contacts_per_customer")
FUNNEL_STAGES = ("sent", "reached", "accepted", "ordered", "kept_7d")
Z = 1.959963984540054  # statistics.NormalDist().inv_cdf(0.975)
SCALE = Decimal("0.000001")


# -- the rows ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Contact:
    msisdn: str
    contact_date: dt.date
    channel: str
    policy_id: str
    outcome: str
    cycle: str | None = None
    recorded_by: str | None = None


@dataclass(frozen=True)
class Holdout:
    month: str
    cycle: str
    channel: str | None
    msisdn: str
    policy_id: str
    rank: int = 1
    matrix: str | None = None
    rule_id: str | None = None
    cycle_date: dt.date | None = None  # None in an older database (no such column): derived from cycle
    kind: str | None = None  # None in an older database: 'policy'


@dataclass(frozen=True)
class Order:
    msisdn: str
    order_time: dt.datetime
    policy_id: str
    action: str
    channel: str | None = None


@dataclass(frozen=True)
class Recommendation:
    msisdn: str
    month: str
    rank: int
    matrix: str | None
    rule_id: str | None
    policy_id: str


@dataclass(frozen=True)
class ViewRow:
    msisdn: str
    month: str
    segment: str | None
    value_tier: str | None
    arpu_3m: Decimal | None


@dataclass(frozen=True)
class FunnelRow:
    month: str
    funnel: str
    stage_no: int
    stage: str
    count: int
    cycle: str | None


@dataclass
class Data:
    """The tables an evaluation reads, and the channels' kinds from channels.yaml."""

    contacts: list[Contact] = field(default_factory=list)
    holdouts: list[Holdout] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    recommendations: list[Recommendation] = field(default_factory=list)
    view: list[ViewRow] = field(default_factory=list)
    funnels: list[FunnelRow] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)  # channel → popup | push
    legacy_holdouts: bool = False  # holdouts without kind / cycle_date columns
    legacy_history: bool = False  # contact_history without cycle / recorded_by (every row then has None)
    orders_table: bool = True  # False: no orders table (nothing ordered)

    def kind(self, channel: str) -> str:
        return self.kinds.get(channel, "push")  # a channel not in channels.yaml: push


# -- exact arithmetic ------------------------------------------------------------------------------
def half_away(q: Fraction, places: int) -> Decimal:
    """q rounded half away from zero to ``places`` decimals, exactly."""
    scaled = abs(q) * 10 ** places
    units = math.floor(scaled + Fraction(1, 2))
    sign = -1 if q < 0 else 1
    return Decimal(sign * units).scaleb(-places)


def rate(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else float(half_away(Fraction(numerator, denominator), 6))


def wilson(x: int, n: int) -> tuple[float, float]:
    """Wilson's score interval of x successes of n, the formula of the definitions as written."""
    centre = x + Z ** 2 / 2
    spread = Z * math.sqrt(x * (n - x) / n + Z ** 2 / 4)
    return (centre - spread) / (n + Z ** 2), (centre + spread) / (n + Z ** 2)


def newcombe_raw(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) of p1 − p2, unrounded floats."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1)
    l2, u2 = wilson(x2, n2)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def round6(x: float) -> float:
    return float(Decimal(repr(x)).quantize(SCALE, ROUND_HALF_UP))


def newcombe(x1: int, n1: int, x2: int, n2: int) -> list[float] | None:
    if n1 == 0 or n2 == 0:
        return None
    lo, hi = newcombe_raw(x1, n1, x2, n2)
    return [round6(lo), round6(hi)]


def fen(q: Fraction) -> float:
    return float(half_away(q, 2))


# -- the cycles, the contacts and the pairs --------------------------------------------------------
def cycles_of(data: Data, month: str) -> set[str]:
    """The cycles of export month M: channel funnels' cycles of M and M's hold-outs' cycles."""
    out = {f.cycle for f in data.funnels if f.month == month and f.funnel.startswith("channel:") and f.cycle}
    return out | {h.cycle for h in data.holdouts if h.month == month and h.cycle is not None}


def cycle_as_date(cycle: str) -> dt.date | None:
    return dt.date.fromisoformat(cycle) if len(cycle) == 10 else None


def month_end(day: dt.date) -> dt.date:
    following = dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return following - dt.timedelta(days=1)


def showing_period(data: Data, month: str) -> tuple[dt.date, dt.date] | None:
    dates = [d for c in cycles_of(data, month) if (d := cycle_as_date(c)) is not None]
    return (min(dates), month_end(max(dates))) if dates else None


def push_contacts(data: Data, month: str) -> list[Contact]:
    if data.legacy_history:  # no recorded_by: nothing is known to be mktool's
        return []
    cycles = cycles_of(data, month)
    return [c for c in data.contacts
            if c.recorded_by == "mktool" and c.cycle in cycles and data.kind(c.channel) == "push"]


def showings(data: Data, month: str) -> list[Contact]:
    period = showing_period(data, month)
    if period is None:
        return []
    return [c for c in data.contacts if data.kind(c.channel) == "popup" and period[0] <= c.contact_date <= period[1]]


Pair = tuple[str, str]


@dataclass
class PairFacts:
    """One contacted or held-out pair: its date, group columns and per-pair figures."""

    msisdn: str
    policy_id: str
    date: dt.date
    channel: str | None
    matrix: str | None
    rule_id: str | None
    kind: str | None = None  # held-out pairs: policy | universal
    ordered: bool = False
    cancelled_7d: bool = False
    outcomes: set[str] = field(default_factory=set)
    push_contacts: int = 0


def _window_orders(data: Data, pair: Pair, day: dt.date, window: int) -> list[Order]:
    end = day + dt.timedelta(days=window)
    return [o for o in data.orders if data.orders_table and (o.msisdn, o.policy_id) == pair and o.action == "order"
            and day <= o.order_time.date() <= end]


def _cancelled(data: Data, pair: Pair, orders: Iterable[Order]) -> bool:
    cancels = [k for k in data.orders if (k.msisdn, k.policy_id) == pair and k.action == "cancel"]
    return any(k.order_time >= o.order_time and k.order_time.date() <= o.order_time.date() + dt.timedelta(days=7)
               for o in orders for k in cancels)


def contacted_pairs(data: Data, month: str, window: int) -> dict[Pair, PairFacts]:
    pushes = push_contacts(data, month)
    contacts = [(c, 0) for c in pushes] + [(c, 1) for c in showings(data, month)]
    first: dict[Pair, tuple[dt.date, int, str]] = {}
    for c, popup in contacts:
        key = (c.contact_date, popup, c.channel)
        pair = (c.msisdn, c.policy_id)
        if pair not in first or key < first[pair]:
            first[pair] = key
    recs = {(r.msisdn, r.policy_id): r for r in data.recommendations if r.month == month}
    out: dict[Pair, PairFacts] = {}
    for pair, (day, _, channel) in first.items():
        rec = recs.get(pair)
        facts = PairFacts(pair[0], pair[1], day, channel, rec.matrix if rec else None, rec.rule_id if rec else None)
        orders = _window_orders(data, pair, day, window)
        facts.ordered = bool(orders)
        facts.cancelled_7d = _cancelled(data, pair, orders)
        end = day + dt.timedelta(days=window)
        facts.outcomes = {OUTCOMES[c.outcome] for c in data.contacts
                          if (c.msisdn, c.policy_id) == pair and c.outcome in OUTCOMES and day <= c.contact_date <= end}
        facts.push_contacts = sum(1 for c in pushes if (c.msisdn, c.policy_id) == pair)
        out[pair] = facts
    return out


def holdout_date(h: Holdout, legacy: bool) -> dt.date:
    if not legacy and h.cycle_date is not None:
        return h.cycle_date
    return cycle_as_date(h.cycle) or dt.date.fromisoformat(h.cycle[:7] + "-01")


def held_out_pairs(data: Data, month: str, window: int) -> dict[Pair, PairFacts]:
    first: dict[Pair, tuple[tuple[dt.date, bool, bool, str], Holdout]] = {}
    for h in data.holdouts:
        if h.month != month:
            continue
        pair = (h.msisdn, h.policy_id)
        day = holdout_date(h, data.legacy_holdouts)
        # same date: a push channel before a pop-up, then channel name ascending, no channel last
        popup = h.channel is not None and data.kind(h.channel) == "popup"
        key = (day, popup, h.channel is None, h.channel or "")
        if pair not in first or key < first[pair][0]:
            first[pair] = (key, h)
    out: dict[Pair, PairFacts] = {}
    for pair, ((day, _, _, _), h) in first.items():
        channel = h.channel
        kind = "policy" if data.legacy_holdouts or h.kind is None else h.kind
        facts = PairFacts(pair[0], pair[1], day, channel, h.matrix, h.rule_id, kind)
        facts.ordered = bool(_window_orders(data, pair, day, window))
        out[pair] = facts
    return out


# -- the document ----------------------------------------------------------------------------------
def _group_value(facts: PairFacts, column: str, view: dict[str, ViewRow]) -> str | None:
    if column in ("segment", "value_tier"):
        row = view.get(facts.msisdn)
        return None if row is None else getattr(row, column)
    value: str | None = getattr(facts, column)
    return value


def figures(contacted: Sequence[PairFacts], held: Sequence[PairFacts]) -> dict[str, Any]:
    n1, n2 = len(contacted), len(held)
    counts = {o: sum(1 for p in contacted if o in p.outcomes) for o in OUTCOMES.values()}
    x1 = sum(1 for p in contacted if p.ordered)
    x2 = sum(1 for p in held if p.ordered)
    cancelled = sum(1 for p in contacted if p.cancelled_7d)
    customers = len({p.msisdn for p in contacted})
    pushes = sum(p.push_contacts for p in contacted)
    uplift = (None if n1 == 0 or n2 == 0
              else float(half_away(Fraction(x1 * n2 - x2 * n1, n1 * n2), 6)))
    return {
        "contacted": n1, "accepted": counts["accepted"], "rejected": counts["rejected"],
        "no_answer": counts["no_answer"], "opted_out": counts["opted_out"],
        "success_rate": rate(counts["accepted"], n1),
        "ordered": x1, "take_up": rate(x1, n1), "held_out": n2, "held_out_ordered": x2,
        "take_up_control": rate(x2, n2), "uplift": uplift, "uplift_ci": newcombe(x1, n1, x2, n2),
        "cancelled_7d": cancelled, "cancel_7d_rate": rate(cancelled, x1),
        "contacts_per_customer": rate(pushes, customers),
    }


def _sort_key(values: tuple[str | None, ...]) -> tuple[tuple[int, str], ...]:
    return tuple((1, "") if v is None else (0, v) for v in values)


def nearest_rank(ascending: Sequence[Decimal], q: Fraction) -> float:
    """The value at position ⌈q·n⌉ (1-based) of the ascending values, to the fen."""
    return fen(Fraction(ascending[math.ceil(q * len(ascending)) - 1]))


def balance_group(msisdns: set[str], view: dict[str, ViewRow], segment_names: Sequence[str],
                  other_tiers: Sequence[str] = ()) -> dict[str, Any]:
    """One balance group. The definitions leave two things open; the reference takes mktool's reading
    (docs/evaluation.md): ``segment`` has the same keys in every group — the segments of all the
    balance's customers in name order, then (none) always, like value_tier's fixed keys, so that the
    groups line up side by side — and ``arpu_3m`` is null when no customer of the group has one.
    value_tier: high, mid_high, mid, low, then ``other_tiers`` (tier names beyond the four, of any
    group, in name order), then (none)."""
    n = len(msisdns)
    if n == 0:
        return {"customers": 0, "value_tier": None, "segment": None, "arpu_3m": None}
    rows = [view.get(m) for m in msisdns]
    tiers = [r.value_tier if r is not None and r.value_tier is not None else NONE for r in rows]
    tier_names = (*TIERS, *other_tiers)
    segments = [r.segment if r is not None and r.segment is not None else NONE for r in rows]
    arpus = sorted(r.arpu_3m for r in rows if r is not None and r.arpu_3m is not None)
    arpu = None if not arpus else {
        "mean": fen(sum((Fraction(a) for a in arpus), Fraction(0)) / len(arpus)),
        "p25": nearest_rank(arpus, Fraction(1, 4)), "median": nearest_rank(arpus, Fraction(1, 2)),
        "p75": nearest_rank(arpus, Fraction(3, 4))}
    return {
        "customers": n,
        "value_tier": {t: rate(tiers.count(t), n) for t in (*tier_names, NONE)},
        "segment": {s: rate(segments.count(s), n) for s in (*segment_names, NONE)},
        "arpu_3m": arpu,
    }


def evaluate(data: Data, month: str, *, window: int = 30, by: Sequence[str] = ("policy_id",)) -> dict[str, Any]:
    """The JSON document of ``mktool evaluate campaign --month month --by … --window …``."""
    contacted = contacted_pairs(data, month, window)
    held = held_out_pairs(data, month, window)
    view = {v.msisdn: v for v in data.view if v.month == month}
    groups: dict[tuple[str | None, ...], tuple[list[PairFacts], list[PairFacts]]] = {}
    for side, pairs in ((0, contacted), (1, held)):
        for facts in pairs.values():
            key = tuple(_group_value(facts, c, view) for c in by)
            groups.setdefault(key, ([], []))[side].append(facts)
    rows = [{**dict(zip(by, key)), **figures(*groups[key])} for key in sorted(groups, key=_sort_key)]
    held_list = list(held.values())
    treated = {p.msisdn for p in contacted.values()}
    held_customers = {p.msisdn for p in held_list}
    everyone = [r for m in treated | held_customers if (r := view.get(m)) is not None]
    names = sorted({r.segment for r in everyone if r.segment is not None})
    others = sorted({r.value_tier for r in everyone if r.value_tier is not None and r.value_tier not in TIERS})
    # Not in the definitions; mktool's choice (with a warning): no customer_view rows of M, no balance.
    balance = {} if not view else {
        "treated": balance_group(treated, view, names, others),
        "held_out": balance_group(held_customers, view, names, others),
        "held_out_policy": balance_group({p.msisdn for p in held_list if p.kind == "policy"}, view, names, others),
        "held_out_universal": balance_group({p.msisdn for p in held_list if p.kind == "universal"}, view, names,
                                            others),
    }
    return {"month": month, "window_days": window, "by": list(by), "rows": rows,
            "total": figures(list(contacted.values()), held_list), "balance": balance}


def response_funnels(data: Data, month: str, *, window: int = 30) -> list[tuple[str, int, str, int]]:
    """(funnel, stage_no, stage, count) of the response funnels of M: pairs per channel, nested stages."""
    contacts = push_contacts(data, month) + showings(data, month)
    first: dict[tuple[str, Pair], dt.date] = {}
    for c in contacts:
        key = (c.channel, (c.msisdn, c.policy_id))
        if key not in first or c.contact_date < first[key]:
            first[key] = c.contact_date
    counts: dict[str, list[int]] = {}
    for (channel, pair), day in first.items():
        end = day + dt.timedelta(days=window)
        on_c = [c for c in data.contacts if c.channel == channel and (c.msisdn, c.policy_id) == pair
                and day <= c.contact_date <= end]
        reached = data.kind(channel) == "popup" or any(c.outcome in REACHED for c in on_c)
        accepted = reached and any(c.outcome == "accepted" for c in on_c)
        orders = _window_orders(data, pair, day, window)
        ordered = accepted and bool(orders)
        kept = ordered and not _cancelled(data, pair, orders)
        row = counts.setdefault(channel, [0] * len(FUNNEL_STAGES))
        for i, passed in enumerate((True, reached, accepted, ordered, kept)):
            row[i] += int(passed)
    return [(f"response:{channel}", i + 1, stage, counts[channel][i])
            for channel in sorted(counts) for i, stage in enumerate(FUNNEL_STAGES)]
