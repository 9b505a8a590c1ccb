"""`mktool factors` and `mktool profile` against an independent reference of the definitions (issue 15).

tests/reference_report.py re-implements /work/report-definitions.md §1 and §2 in plain Python
over rows. Here it is first checked itself — an entropy example and a profile worked by hand —
and then compared with mktool on random small databases, generated to hit every edge the
definitions name: ties across bin edges, NULLs in factors, cohorts and classes, tiny cohorts
and ones with none or all churned, money means on half fen, saturations on half units, bundle
and contract ends on M's last day and on the last day of M+3 (across a year and a leap day),
closed customers, NULL statuses, M+1 loaded or not, other months' rows, 2⁵³ + 1 in a BIGINT,
a HUGEINT, a quoted column name, columns of other types (skipped) and of dates (not factors).
Every field of both documents must agree.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import importlib
import importlib.util
import io
import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import pytest
import reference_report as rr
from conftest import ENV, MATRICES, slow_beyond
from reference_report import (
    HANDSET_GENS,
    Data,
    Refused,
    add_months,
    borderline_gains,
    entropy,
    factors,
    information_gain,
    information_gain_exact,
    is_half,
    last_day,
    load,
    near_half,
    profile,
)

from mktool.config import Settings
from mktool.database import Database
from mktool.errors import MktoolError
from mktool.project import Project, load_project

M = "2026-10"
D = Decimal


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


# -- (a) the reference itself ---------------------------------------------------------------------------
def test_reference_entropy_and_gain_by_hand() -> None:
    assert entropy(0, 5) == 0.0 and entropy(5, 5) == 0.0 and entropy(2, 4) == 1.0
    assert round(entropy(1, 3), 9) == 0.918295834  # −⅓·log2 ⅓ − ⅔·log2 ⅔
    assert round(information_gain(2, 4, [(3, 2), (1, 0)]), 9) == 0.311278124  # 1 − ¾ · H(⅔)
    assert information_gain(2, 4, [(4, 2)]) == 0.0  # one group: nothing gained
    assert abs(Decimal(information_gain(3, 7, [(3, 1), (4, 2)])) - information_gain_exact(3, 7, [(3, 1), (4, 2)])) \
        < Decimal("1e-15")
    assert near_half(Decimal("0.0000125")) and not near_half(Decimal("0.0000124"))
    assert is_half(Fraction(10005, 1000), 2) and not is_half(Fraction(10004, 1000), 2)


def hand_data() -> Data:
    """Two cohorts worked by hand (M = 2026-10; bins = 2).

    under_6m: x = 1, 2, 2, 3 with churn T F T F (and a closed customer, not in the base): the two
    customers with x = 2 have ranks 2 and 2 → bins 1 1 (without ties the second would start bin 2);
    y = a b a NULL. over_12m: x = NULL, 5, both churned; y = b b.
    """
    cols = [("msisdn", "VARCHAR"), ("month", "VARCHAR"), ("status", "VARCHAR"), ("x", "DECIMAL(18,2)"),
            ("y", "VARCHAR"), ("join_date", "DATE"), ("tags", "VARCHAR[]"), ("month_end", "DATE"),
            ("tenure_cohort", "VARCHAR")]
    raw = [("1", "active", D("1.00"), "a", "under_6m"), ("2", None, D("2.00"), "b", "under_6m"),
           ("3", "active", D("2.00"), "a", "under_6m"), ("4", "active", D("3.00"), None, "under_6m"),
           ("5", "closed", D("9.00"), "a", "under_6m"), ("6", "active", None, "b", "over_12m"),
           ("7", "suspended", D("5.00"), "b", "over_12m")]
    rows: list[dict[str, Any]] = [
        {"msisdn": m, "month": M, "status": s, "x": x, "y": y, "join_date": day("2020-01-01"), "tags": [],
         "month_end": day("2026-10-31"), "tenure_cohort": c} for m, s, x, y, c in raw]
    return Data(M, cols, rows, {"2": "active", "4": None, "5": "closed", "7": "closed"})


def test_reference_factors_by_hand() -> None:
    doc = factors(hand_data(), bins=2, top=10)
    assert doc["month"] == M and doc["next_month"] == "2026-11" and doc["bins"] == 2 and doc["top"] == 10
    assert doc["skipped"] == [{"factor": "tags", "reason": "VARCHAR[]"}]
    young, old = doc["cohorts"]
    assert {k: young[k] for k in ("cohort", "customers", "churned", "churn_rate", "entropy")} == {
        "cohort": "under_6m", "customers": 4, "churned": 2, "churn_rate": 0.5, "entropy": 1.0}
    y, status, x = young["factors"]  # status is a VARCHAR column too: a factor
    # y: a → 2 of 2 churned, b → 0 of 1, (null) → 0 of 1: every group pure, IG = H(½) = 1
    assert (y["rank"], y["factor"], y["kind"], y["information_gain"], y["groups"]) == (1, "y", "categorical", 1.0, 3)
    assert [(b["bin"], b["label"], b["low"], b["customers"], b["churned"], b["churn_rate"]) for b in y["bins"]] == [
        ("a", "a", None, 2, 2, 1.0), ("b", "b", None, 1, 0, 0.0), ("(null)", "(null)", None, 1, 0, 0.0)]
    # x: bin 1 = {1, 2, 2} (2 of 3 churned), bin 2 = {3}: IG = 1 − ¾·H(⅔) = 0.311278124…
    assert (x["rank"], x["factor"], x["kind"], x["information_gain"], x["groups"]) == (3, "x", "numeric", 0.311278, 2)
    # status: active → 2 of 3, (null) → 0 of 1: the same gain as x, ranked before it by name
    assert (status["rank"], status["information_gain"], [b["bin"] for b in status["bins"]]) == (
        2, 0.311278, ["active", "(null)"])
    assert x["bins"] == [
        {"bin": "1", "label": "1.00 – 2.00", "low": 1.0, "high": 2.0, "customers": 3, "churned": 2,
         "churn_rate": 0.666667},
        {"bin": "2", "label": "3.00 – 3.00", "low": 3.0, "high": 3.0, "customers": 1, "churned": 0,
         "churn_rate": 0.0}]
    # over_12m: both churned, entropy 0, every gain 0: ranked by name
    assert (old["cohort"], old["customers"], old["churned"], old["entropy"]) == ("over_12m", 2, 2, 0.0)
    assert [(f["rank"], f["factor"], f["information_gain"], f["groups"]) for f in old["factors"]] == [
        (1, "status", 0.0, 2), (2, "x", 0.0, 2), (3, "y", 0.0, 1)]
    assert [b["bin"] for b in old["factors"][1]["bins"]] == ["1", "(null)"]
    assert [f["factor"] for c in factors(hand_data(), bins=2, top=1)["cohorts"] for f in c["factors"]] == [
        "y", "status"]


def test_reference_refuses_what_factors_refuse() -> None:
    data = hand_data()
    data.next_loaded, data.next_status = False, {}
    with pytest.raises(Refused):
        factors(data)
    data = hand_data()
    data.columns = [c for c in data.columns if c[0] != "tenure_cohort"]
    with pytest.raises(Refused):
        factors(data)


def profile_data(next_loaded: bool = True) -> Data:
    """Three customers of M = 2026-11 (M+3 = 2027-02, last day 2027-02-28), two of segment A."""
    cols = [("msisdn", "VARCHAR"), ("month", "VARCHAR"), ("status", "VARCHAR"), ("segment", "VARCHAR"),
            ("arpu", "DECIMAL(18,2)"), ("arpu_3m", "DECIMAL(38,6)"), ("tenure_months", "INTEGER"),
            ("data_saturation", "DECIMAL(38,4)"), ("voice_saturation", "DECIMAL(38,4)"), ("contract_end", "DATE"),
            ("bundle_type", "VARCHAR"), ("bundle_end", "DATE"), ("handset_gen", "VARCHAR"), ("month_end", "DATE")]
    end = day("2026-11-30")
    rows: list[dict[str, Any]] = [
        dict(msisdn="1", status="active", segment="A", arpu=D("10.00"), arpu_3m=D("1.234567"), tenure_months=1,
             data_saturation=D("0.0001"), voice_saturation=None, contract_end=end, bundle_type="f", bundle_end=None,
             handset_gen="4G"),
        dict(msisdn="2", status="closed", segment="A", arpu=D("10.01"), arpu_3m=None, tenure_months=2,
             data_saturation=D("0.0002"), voice_saturation=None, contract_end=end + dt.timedelta(days=1),
             bundle_type="f", bundle_end=day("2027-02-28"), handset_gen=None),
        dict(msisdn="3", status=None, segment=None, arpu=D("-1.01"), arpu_3m=D("-0.005000"), tenure_months=None,
             data_saturation=None, voice_saturation=D("1.5000"), contract_end=None, bundle_type=None,
             bundle_end=day("2027-01-01"), handset_gen="5G"),
    ]
    for r in rows:
        r.update(month="2026-11", month_end=end)
    return Data("2026-11", cols, rows, {"1": "active"} if next_loaded else {}, next_loaded)


def test_reference_profile_by_hand() -> None:
    doc = profile(profile_data())
    assert (doc["month"], doc["by"], doc["next_month"], doc["next_month_loaded"]) == ("2026-11", "segment",
                                                                                      "2026-12", True)
    a, none = doc["rows"]
    handset = dict.fromkeys(HANDSET_GENS, 0.0)
    assert a == {"segment": "A", "customers": 2, "share": 0.666667, "arpu_mean": 10.01,  # 10.005 → 10.01
                 "arpu_3m_mean": 1.23, "tenure_months_mean": 1.5,
                 "data_saturation_mean": 0.0002, "data_saturation_customers": 2,  # 0.00015 → 0.0002
                 "voice_saturation_mean": None, "voice_saturation_customers": 0,
                 "contract_share": 0.5,  # contract_end = month_end is not running
                 "bundle_share": 1.0, "bundle_ending_3m_share": 0.5,  # no end: running; 2027-02-28: ends ≤ M+3
                 "handset_gen": {**handset, "4G": 0.5, "(none)": 0.5},
                 "churn_base": 1, "churned": 0, "churn_rate": 0.0}  # 2 is closed: not in the base
    assert none == {"segment": "(none)", "customers": 1, "share": 0.333333, "arpu_mean": -1.01,
                    "arpu_3m_mean": -0.01,  # −0.005 → −0.01, away from zero
                    "tenure_months_mean": None, "data_saturation_mean": None, "data_saturation_customers": 0,
                    "voice_saturation_mean": 1.5, "voice_saturation_customers": 1, "contract_share": 0.0,
                    "bundle_share": 0.0, "bundle_ending_3m_share": 0.0,  # a bundle_end without a bundle_type
                    "handset_gen": {**handset, "5G": 1.0, "(none)": 0.0},
                    "churn_base": 1, "churned": 1, "churn_rate": 1.0}  # NULL status: in the base, gone in M+1
    total = doc["total"]
    assert (total["customers"], total["share"], total["arpu_mean"], total["arpu_3m_mean"], total["churn_base"],
            total["churned"], total["churn_rate"]) == (3, 1.0, 6.33, 0.61, 2, 1, 0.5)  # 19.00 / 3; 1.229567 / 2
    off = profile(profile_data(next_loaded=False))
    assert not off["next_month_loaded"]
    assert [(r["churn_base"], r["churned"], r["churn_rate"]) for r in [*off["rows"], off["total"]]] == [
        (None, None, None)] * 3
    with pytest.raises(Refused):
        profile(profile_data(), by="arpu")


# -- (b) random small databases --------------------------------------------------------------------------
COHORTS = ("under_6m", "6_12m", "over_12m", None, "trial", "Z_other")
SEGMENTS = ("A_family", "B_youth", "C_business", "高端", None)
TIERS = ("high", "mid_high", "mid", "low", None)
CITIES = ("杭州", "宁波", "Hangzhou", "", None)
MONTHS = ("2026-10", "2026-12", "2027-11", "2026-11", "2027-01")  # 2026-12: M+1 in the next year; 2027-11: M+3 ends
# on 2028-02-29
BINS = (2, 3, 4, 5, 10, 10, 10, 100)
TOPS = (10, 10, 3, 1, 0)
BY = (None, "value_tier", "churn_flag", "city", "tenure_cohort", "handset_gen", "vnet", "status", "Plan Group")
ALIAS_NAMES = ("churned", "cohort", "grp", "n", "value", "bin", "customers", "rank", "v", "factor", "kind", "low")


@dataclass
class Column:
    name: str
    type: str
    value: Callable[[random.Random, dict[str, Any]], Any]
    late: int = 0  # computed from the values of columns with a smaller ``late`` (whatever its place in the table)


def pick(*values: Any) -> Callable[[random.Random, dict[str, Any]], Any]:
    return lambda rng, ctx: rng.choice(values)


def _dates_around(rng: random.Random, ctx: dict[str, Any]) -> dt.date | None:
    end, horizon = ctx["_end"], ctx["_horizon"]
    one = dt.timedelta(days=1)
    return rng.choice((None, end, end - one, end + one, horizon, horizon + one, horizon - one, end - 40 * one,
                       horizon + 400 * one))


def columns_for(rng: random.Random) -> list[Column]:
    """The crafted customer_view's columns (real names and types; some only in some databases)."""
    cols = [
        Column("msisdn", "VARCHAR", lambda rng, ctx: ctx["msisdn"]),
        Column("month", "VARCHAR", lambda rng, ctx: ctx["month"]),
        Column("city", "VARCHAR", pick(*CITIES)),
        Column("status", "VARCHAR", pick("active", "active", "active", "suspended", "closed", None)),
        Column("payment", "VARCHAR", pick("prepaid", "postpaid", None)),
        Column("handset_gen", "VARCHAR", pick(*HANDSET_GENS, "4G", None)),
        Column("vnet", "BOOLEAN", pick(True, False, None)),
        Column("bundle_type", "VARCHAR", pick("family", "converged", None, None)),
        Column("bundle_end", "DATE", _dates_around),
        Column("contract_end", "DATE", _dates_around),
        Column("join_date", "DATE", pick(day("2020-01-15"), day("2026-09-30"))),
        Column("tenure_months", "INTEGER", pick(0, 1, 2, 5, 6, 7, 11, 12, 13, 24, None)),
        Column("arpu", "DECIMAL(18,2)", pick(D("10.00"), D("10.01"), D("-0.01"), D("0.00"), D("99.99"), D("128.00"),
                                             D("0.03"), None)),
        Column("arpu_3m", "DECIMAL(38,6)", pick(D("33.333333"), D("0.005000"), D("0.004999"), D("-0.005000"),
                                                D("128.000000"), D("12.345678"), D("1000000.125000"), None)),
        Column("voice_min_3m", "DOUBLE", pick(0.1, 0.2, 0.30000000000000004, 0.3, 300.0, 1e-07, 123456.789, None)),
        Column("sms_count", "BIGINT", pick(0, 1, 2, 3, 2 ** 53 + 1, 2 ** 53, None)),
        Column("product_status", "BIGINT", pick(1)),  # the same everywhere: one bin, no gain
        Column("data_saturation", "DECIMAL(38,4)", pick(D("0.0001"), D("0.0002"), D("0.5000"), D("1.2345"),
                                                        D("0.0000"), D("2.0001"), None)),
        Column("voice_saturation", "DECIMAL(38,4)", pick(D("0.0001"), D("0.0004"), D("0.9999"), None, None)),
        Column("month_end", "DATE", lambda rng, ctx: ctx["_end"]),
        Column("value_score", "DOUBLE", lambda rng, ctx: None if rng.random() < 0.1 else rng.random() * 100),
        Column("value_tier", "VARCHAR", pick(*TIERS)),
        Column("churn_score", "INTEGER", pick(0, 15, 20, 30, 35, 50, 100, None)),
        Column("churn_flag", "BOOLEAN", lambda rng, ctx: None if ctx["churn_score"] is None
               else ctx["churn_score"] >= 30, 1),
        Column("tenure_cohort", "VARCHAR", lambda rng, ctx: ctx["_cohort"]),
        Column("segment", "VARCHAR", pick(*SEGMENTS)),
        Column("last_seen", "TIMESTAMP", pick(dt.datetime(2026, 10, 3, 12, 0), None)),
    ]
    optional = [
        Column("vas_count", "SMALLINT", pick(0, 1, 2, None)),
        Column("share_f", "FLOAT", pick(0.25, 0.5, 1.5, None)),
        Column("bytes_total", "HUGEINT", pick(10 ** 20, 10 ** 20 + 1, -5, None)),
        Column("credit", "DECIMAL(4,1)", pick(D("1.5"), D("-2.5"), D("0.0"), None)),
        Column('data "mb" 3m', "DOUBLE", pick(1.5, 2.5, None)),
        Column("ld_unit_price", "DOUBLE", pick(None)),  # NULL everywhere: only the (null) group
        Column("churn_flag_again", "BOOLEAN", lambda rng, ctx: ctx["churn_flag"], 2),  # the same gain as churn_flag
        Column("tags", "VARCHAR[]", pick(["a"], [], None)),
        Column("raw", "BLOB", pick(b"x", None)),
        Column("group_id", "VARCHAR", lambda rng, ctx: None if rng.random() < 0.3 else ctx["msisdn"][-4:]),  # unique
        Column("channel_pref", "ENUM('app', 'sms')", pick("app", "sms", None)),  # not VARCHAR: skipped
        Column("call_time", "TIME", pick(dt.time(9, 30), None)),  # not a DATE / TIMESTAMP: skipped
        Column("flags_small", "TINYINT", pick(-128, 0, 127, None)),
        Column("octets", "UBIGINT", pick(2 ** 64 - 1, 2 ** 64 - 2, 0, None)),
    ]
    chosen = [c for c in optional if rng.random() < 0.5]
    if rng.random() < 0.3:  # names an engine's own aliases might use: a factor must not be shadowed by them
        values = {"INTEGER": pick(0, 1, 1, 2, None), "VARCHAR": pick("x", "y", None),
                  "BOOLEAN": pick(True, False, None)}
        for name in ALIAS_NAMES:
            type_ = rng.choice(tuple(values))
            chosen.append(Column(name, type_, values[type_]))
    if rng.random() < 0.2:  # more factors than one batch of a query holds
        chosen += [Column(f"f_{i:02d}", ("INTEGER", "DOUBLE", "VARCHAR")[i % 3],
                          (pick(0, 1, 2, 3, None), pick(0.5, 1.25, -3.0, None), pick("a", "b", "c", None))[i % 3])
                   for i in range(70)]
    if rng.random() < 0.3:
        chosen.append(Column("Plan Group", "VARCHAR", pick("大", "small", None)))  # --by a name to be quoted
    for c in chosen:  # anywhere among the columns after month
        cols.insert(rng.randrange(2, len(cols) + 1), c)
    return cols


@dataclass
class Crafted:
    month: str
    columns: list[Column]
    view: list[dict[str, Any]]  # every month's rows
    subscribers: list[tuple[str, str, str | None]] | None  # None: no subscribers table
    bins: int
    top: int
    by: str | None
    notes: list[str] = field(default_factory=list)


def random_data(seed: int) -> Crafted:
    rng = random.Random(seed)
    month = MONTHS[seed % len(MONTHS)]
    cols = columns_for(rng)
    n = rng.choice((1, 3, 8, 16, 16, 25, 40, 60))
    weights = [rng.choice((0, 1, 1, 3, 6)) for _ in COHORTS]
    if not any(weights):
        weights[0] = 1
    churn_p = {c: rng.choice((0.0, 1.0, 0.2, 0.5, 0.3)) for c in COHORTS}  # some cohorts: none or all churned
    nxt = add_months(month, 1)
    view, subscribers = [], []
    for i in range(n):
        for m in (month, add_months(month, -1)) if i % 4 == 0 else (month,):  # other months' rows: not read
            ctx: dict[str, Any] = {"msisdn": f"139{seed % 1000:03d}{i:05d}", "month": m, "_end": last_day(m),
                                   "_horizon": last_day(add_months(m, 3)),
                                   "_cohort": rng.choices(COHORTS, weights)[0]}
            for c in sorted(cols, key=lambda c: c.late):
                ctx[c.name] = c.value(rng, ctx)
            view.append({c.name: ctx[c.name] for c in cols})
            if m == month:
                subscribers.append((ctx["msisdn"], month, ctx["status"]))
                p = churn_p[ctx["_cohort"]] + (ctx["churn_score"] or 0) / 400
                if rng.random() < p:
                    if rng.random() < 0.5:
                        subscribers.append((ctx["msisdn"], nxt, "closed"))
                else:
                    subscribers.append((ctx["msisdn"], nxt, rng.choice(("active", "suspended", None))))
    if not any(r["status"] != "closed" for r in view if r["month"] == month):
        view[0]["status"] = None  # somebody in the base
    subscribers.append((f"139{seed % 1000:03d}99999", nxt, "active"))  # new in M+1: not in the view
    loaded = rng.random() < 0.8
    table: list[tuple[str, str, str | None]] | None = subscribers
    notes = []
    if not loaded:
        table = [s for s in subscribers if s[1] != nxt] + [(view[0]["msisdn"], add_months(month, 2), "active")]
        if rng.random() < 0.25:
            table = None
        notes.append("M+1 not loaded" + (" (no subscribers table)" if table is None else ""))
    by = BY[seed % len(BY)]
    if by is not None and by not in {c.name for c in cols}:
        by = "segment"
    return Crafted(month, cols, view, table, rng.choice(BINS), rng.choice(TOPS), by, notes)


def write_db(path: Path, data: Crafted) -> Path:
    con = duckdb.connect(str(path))
    try:
        ddl = ", ".join(f'"{c.name.replace(chr(34), chr(34) * 2)}" {c.type}' for c in data.columns)
        con.execute(f"CREATE TABLE customer_view ({ddl})")
        marks = ", ".join("?" for _ in data.columns)
        con.executemany(f"INSERT INTO customer_view VALUES ({marks})",
                        [[r[c.name] for c in data.columns] for r in data.view])
        if data.subscribers is not None:
            con.execute("CREATE TABLE subscribers (msisdn VARCHAR, month VARCHAR, status VARCHAR)")
            if data.subscribers:
                con.executemany("INSERT INTO subscribers VALUES (?, ?, ?)", data.subscribers)
    finally:
        con.close()
    return path


# -- comparing mktool with the reference -----------------------------------------------------------------
def differences(want: Any, got: Any, path: str = "$", tolerate: Callable[[str], bool] | None = None) -> list[str]:
    """Every place where mktool's document differs from the reference's (keys, their order, values)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: expected an object {want!r}, got {got!r}"]
        missing, extra = [k for k in want if k not in got], [k for k in got if k not in want]
        out = [f"{path}: keys {missing} missing, {extra} not expected"] if missing or extra else [] \
            if list(want) == list(got) else [f"{path}: keys in the order {list(got)}, expected {list(want)}"]
        for key, value in want.items():
            if key in got:
                out += differences(value, got[key], f"{path}.{key}", tolerate)
        return out
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            shown = [w.get("factor", w.get("bin")) if isinstance(w, dict) else w for w in want]
            seen = [g.get("factor", g.get("bin")) if isinstance(g, dict) else g for g in got] \
                if isinstance(got, list) else got
            return [f"{path}: expected {len(want)} items {shown!r}, got {seen!r}"]
        out = []
        for i, (w, g) in enumerate(zip(want, got)):
            out += differences(w, g, f"{path}[{i}]", tolerate)
        return out
    if isinstance(want, float) and isinstance(got, float) and tolerate is not None and tolerate(path) \
            and abs(want - got) <= 1.000001e-6:
        return []  # the float gain lies within noise of a rounding half: either rounding is right
    if type(want) is not type(got) and not (isinstance(want, float) and isinstance(got, int) and want == got):
        return [f"{path}: expected {want!r} ({type(want).__name__}), got {got!r} ({type(got).__name__})"]
    if isinstance(want, float) and want == got == 0 and math.copysign(1, want) != math.copysign(1, got):
        return [f"{path}: expected {want!r}, got {got!r} (JSON shows the sign)"]
    return [] if want == got else [f"{path}: expected {want!r}, got {got!r}"]


def factors_differences(want: dict[str, Any], got: dict[str, Any], borderline: set[tuple[str, str]]) -> list[str]:
    """The documents' differences; a skipped column's reason is mktool's own words (only its presence counts)."""
    got = dict(got)
    got["skipped"] = [{**s, "reason": want_s["reason"]} if isinstance(s.get("reason"), str) and s["reason"]
                      and isinstance(want_s, dict) else s
                      for s, want_s in zip(got.get("skipped", []), [*want["skipped"], *[None] * 99])]
    names = {f"$.cohorts[{i}].factors[{j}].information_gain": (c["cohort"], f["factor"])
             for i, c in enumerate(want["cohorts"]) for j, f in enumerate(c["factors"])}
    return differences(want, got, tolerate=lambda path: names.get(path) in borderline)


_PROJECT: list[Project] = []


def project() -> Project:
    if not _PROJECT:
        _PROJECT.append(load_project(MATRICES))
    return _PROJECT[0]


Outcome = dict[str, Any] | MktoolError


def library_documents(db: Path, month: str, bins: int, top: int, by: str | None) -> tuple[Outcome | None,
                                                                                          Outcome | None]:
    """mktool's factors and profile documents of ``db`` in this process (the error each raised; None: no module)."""
    have = [importlib.util.find_spec(f"mktool.{m}") is not None for m in ("factors", "profile")]
    out: list[Outcome | None] = []
    with Database(Settings(db_path=db, memory_limit="1GB", threads=2), write=False) as database:
        calls: list[Callable[[], Any]] = [
            lambda: importlib.import_module("mktool.factors").rank_factors(database, project(), month, bins=bins,
                                                                           top=top),
            lambda: importlib.import_module("mktool.profile").profile_month(database, project(), month,
                                                                            **({"by": by} if by else {}))]
        for available, call in zip(have, calls):
            if not available:
                out.append(None)
                continue
            try:
                out.append(json.loads(json.dumps(call().document())))
            except MktoolError as exc:
                out.append(exc)
    return out[0], out[1]


def cli_document(command: str, db: Path, month: str, options: list[str]) -> dict[str, Any] | int:
    """The json document of ``mktool <command>`` (or its exit code when it refused)."""
    args = [sys.executable, "-m", "mktool", command, "--month", month, "--format", "json", "--db", str(db),
            "--matrices", str(MATRICES), *options]
    proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def cli_csv(command: str, db: Path, month: str, options: list[str]) -> str:
    args = [sys.executable, "-m", "mktool", command, "--month", month, "--format", "csv", "--db", str(db),
            "--matrices", str(MATRICES), *options]
    proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(args[2:])} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def _cell_differs(cell: str, value: Any) -> bool:
    """A csv cell against a document value: empty for None, numbers by value (0.5 = 0.500000), text as is."""
    if value is None:
        return cell != ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return cell != str(value)
    try:
        return Decimal(cell) != Decimal(repr(value) if isinstance(value, float) else str(value))
    except ArithmeticError:
        return True


FACTORS_CSV = ["cohort", "rank", "factor", "kind", "information_gain", "bin", "label", "low", "high", "customers",
               "churned", "churn_rate"]


def factors_csv_differences(want: dict[str, Any], text: str) -> list[str]:
    """The csv of the definitions, one row per (cohort, factor, group), against the reference's document."""
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or lines[0] != FACTORS_CSV:
        return [f"csv header {lines[:1]} != {FACTORS_CSV}"]
    expected = [[c["cohort"], f["rank"], f["factor"], f["kind"], f["information_gain"], b["bin"], b["label"],
                 b["low"], b["high"], b["customers"], b["churned"], b["churn_rate"]]
                for c in want["cohorts"] for f in c["factors"] for b in f["bins"]]
    if len(lines) - 1 != len(expected):
        return [f"csv has {len(lines) - 1} rows, expected {len(expected)}"]
    return [f"csv row {i}: {name} = {cell!r}, expected {value!r}"
            for i, (line, row) in enumerate(zip(lines[1:], expected), 1)
            for name, cell, value in zip(FACTORS_CSV, line, row) if _cell_differs(cell, value)]


def profile_csv_differences(want: dict[str, Any], text: str) -> list[str]:
    """Every field of every class and the total (handset shares as handset_2G … handset_none) in the csv."""
    lines = list(csv.reader(io.StringIO(text)))
    fields = [f for f in rr.PROFILE_FIELDS if f != "handset_gen"] + [f"handset_{g}" for g in HANDSET_GENS] + [
        "handset_none"]
    header = lines[0] if lines else []
    missing = [f for f in fields if f not in header]
    if missing:
        return [f"csv header {header} lacks {missing}"]
    key = next(k for k in want["rows"][0]) if want["rows"] else None
    expected = [(r[key] if key else None, r) for r in want["rows"]] + [("total", want["total"])]
    if len(lines) - 1 != len(expected):
        return [f"csv has {len(lines) - 1} rows, expected {len(expected)}"]
    out = []
    for line, (name, row) in zip(lines[1:], expected):
        cells = dict(zip(header, line))
        values = {**row, **{f"handset_{g}": row["handset_gen"][g] for g in HANDSET_GENS},
                  "handset_none": row["handset_gen"]["(none)"]}
        if "class" in cells and cells["class"] != name:
            out.append(f"csv row {line}: class {cells['class']!r}, expected {name!r}")
        out += [f"csv row {name}: {f} = {cells[f]!r}, expected {values[f]!r}" for f in fields
                if _cell_differs(cells[f], values[f])]
    return out


#: How often the crafted databases hit the edges they are made for (printed with -s; checked over the sweep).
HITS: Counter[str] = Counter()


def tally(column: str, exact: Fraction, places: int) -> None:
    if is_half(exact, places):
        HITS[f"half-way mean of {column}"] += 1


def check_database(db: Path, crafted: Crafted, label: str, *, cli: bool) -> list[str]:
    """mktool's documents of one crafted database against the reference's; every difference, readably."""
    data = load(db, crafted.month)
    got_factors, got_profile = library_documents(db, crafted.month, crafted.bins, crafted.top, crafted.by)
    problems = [] if got_factors is None else check_factors(db, crafted, data, got_factors, label, cli=cli)
    return problems + ([] if got_profile is None else check_profile(db, crafted, data, got_profile, label, cli=cli))


def check_factors(db: Path, crafted: Crafted, data: Data, got: Outcome, label: str, *, cli: bool) -> list[str]:
    problems: list[str] = []
    at = f"{label} factors --bins {crafted.bins} --top {crafted.top}"
    try:
        want: dict[str, Any] | None = factors(data, bins=crafted.bins, top=crafted.top)
    except Refused as exc:
        want = None
        if not (isinstance(got, MktoolError) and got.exit_code == 1):
            problems.append(f"{at}: the reference refuses ({exc}), mktool gave {got!r}")
        elif not data.next_loaded and f"subscribers_{data.next_month}.parquet" not in str(got):
            problems.append(f"{at}: the refusal does not say which file to ingest: {got}")
    if want is not None:
        borderline = borderline_gains(data, crafted.bins)
        if isinstance(got, MktoolError):
            problems.append(f"{at}: mktool refused: {got}")
        else:
            problems += [f"{at}: {p}" for p in factors_differences(want, got, borderline)]
        for c in want["cohorts"]:
            HITS["cohort"] += 1
            HITS["cohort, none churned" if c["churned"] == 0 else
                 "cohort, all churned" if c["churned"] == c["customers"] else "cohort, some churned"] += 1
            HITS["cohort of 1 or 2"] += c["customers"] <= 2
            for f in c["factors"]:
                HITS[f"{f['kind']} factor"] += 1
                HITS["factor with a (null) group"] += bool(f["bins"]) and f["bins"][-1]["bin"] == "(null)"
                HITS["numeric factor with a tie pulled across a bin edge"] += f["kind"] == "numeric" and \
                    _tie_across_edge(f["bins"], c, crafted.bins)
        HITS["borderline gain"] += len(borderline)
    if cli:
        options = ["--bins", str(crafted.bins), "--top", str(crafted.top)]
        shown = cli_document("factors", db, crafted.month, options)
        if want is None:
            if shown != 1:
                problems.append(f"{label} `mktool factors` should exit 1, got {shown!r}")
        elif isinstance(shown, int):
            problems.append(f"{label} `mktool factors {' '.join(options)}` exited {shown}")
        else:
            problems += [f"{at} (cli): {p}"
                         for p in factors_differences(want, shown, borderline_gains(data, crafted.bins))]
            problems += [f"{at} (cli): {p}" for p in factors_csv_differences(want, cli_csv("factors", db, crafted.month,
                                                                                           options))]
    return problems


def check_profile(db: Path, crafted: Crafted, data: Data, got: Outcome, label: str, *, cli: bool) -> list[str]:
    at = f"{label} profile --by {crafted.by or '(default)'}"
    want = profile(data, crafted.by or "segment", tally)
    HITS["profile, M+1 loaded" if data.next_loaded else "profile, M+1 not loaded"] += 1
    if isinstance(got, MktoolError):
        problems = [f"{at}: mktool refused: {got}"]
    else:
        problems = [f"{at}: {p}" for p in differences(want, got)]
    if cli:
        shown = cli_document("profile", db, crafted.month, ["--by", crafted.by] if crafted.by else [])
        options = ["--by", crafted.by] if crafted.by else []
        problems += [f"{at}: `mktool profile` exited {shown}"] if isinstance(shown, int) else [
            f"{at} (cli): {p}" for p in differences(want, shown)]
        problems += [f"{at} (cli): {p}" for p in profile_csv_differences(want, cli_csv("profile", db, crafted.month,
                                                                                       options))]
    return problems


def _tie_across_edge(bins: list[dict[str, Any]], cohort: dict[str, Any], b: int) -> bool:
    """Whether a bin holds more customers than the ⌈n / B⌉ an edge would allow without ties kept together."""
    n = sum(x["customers"] for x in bins if x["bin"] != "(null)")
    return n >= b and any(x["customers"] > -(-n // b) for x in bins if x["bin"] != "(null)")


def _note_half(into: list[str], column: str, exact: Fraction, places: int) -> None:
    if is_half(exact, places):
        into.append(column)


def modules_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("mktool.factors", "mktool.profile"))


@pytest.fixture(scope="module")
def report_modules() -> None:
    if not modules_available():
        pytest.skip("mktool.factors / mktool.profile are not there yet: nothing to compare the reference with")


#: Random databases compared in CI (the first few in the default run, the rest `slow`); MKTOOL_REFERENCE_SEEDS=300
#: for a thorough sweep.
DEFAULT_SEEDS = 20
SEEDS = int(os.environ.get("MKTOOL_REFERENCE_SEEDS", str(DEFAULT_SEEDS)))


@pytest.mark.parametrize("seed", slow_beyond(range(SEEDS), 8))
def test_random_databases_agree_with_the_reference(seed: int, tmp_path: Path, report_modules: None) -> None:
    crafted = random_data(seed)
    db = write_db(tmp_path / "mktool.duckdb", crafted)
    label = f"seed {seed} (month {crafted.month}{', ' + ', '.join(crafted.notes) if crafted.notes else ''})"
    # the first database (every 10th in a sweep) also through the command line: json and csv of both commands
    problems = check_database(db, crafted, label, cli=seed % 10 == 0 if SEEDS > DEFAULT_SEEDS else seed == 0)
    assert not problems, "\n".join(problems[:20])


def test_refusals_agree_with_the_reference(tmp_path: Path, report_modules: None) -> None:
    """No tenure_cohort column: factors refuse (exit 1); --by a number or no such column: profile refuses (exit 2)."""
    crafted = random_data(1)
    crafted.columns = [c for c in crafted.columns if c.name != "tenure_cohort"]
    db = write_db(tmp_path / "mktool.duckdb", crafted)
    data = load(db, crafted.month)
    with pytest.raises(Refused):
        factors(data)
    for by in ("arpu", "tenure_months", "no_such_column"):
        with pytest.raises(Refused):
            profile(data, by)
    with Database(Settings(db_path=db, memory_limit="1GB", threads=2), write=False) as database:
        if importlib.util.find_spec("mktool.factors") is not None:
            with pytest.raises(MktoolError) as refused:
                importlib.import_module("mktool.factors").rank_factors(database, project(), crafted.month)
            assert refused.value.exit_code == 1 and "tenure_cohort" in str(refused.value)
        if importlib.util.find_spec("mktool.profile") is not None:
            for by in ("arpu", "tenure_months", "no_such_column"):
                with pytest.raises(MktoolError) as refused:
                    importlib.import_module("mktool.profile").profile_month(database, project(), crafted.month, by=by)
                assert refused.value.exit_code == 2 and by in str(refused.value), by


def documents(crafted: Crafted, data: Data) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    try:
        want_f: dict[str, Any] | None = rr.factors(data, bins=crafted.bins, top=crafted.top)
    except Refused:
        want_f = None
    return want_f, rr.profile(data, crafted.by or "segment")


def as_data(crafted: Crafted) -> Data:
    """What :func:`reference_report.load` reads from the crafted database, without writing one."""
    nxt = add_months(crafted.month, 1)
    status = {m: st for m, month, st in crafted.subscribers or [] if month == nxt}
    return Data(crafted.month, [(c.name, c.type) for c in crafted.columns],
                [dict(r) for r in crafted.view if r["month"] == crafted.month], status, bool(status))


def test_as_data_reads_what_load_reads(tmp_path: Path) -> None:
    for seed in (0, 5, 7):  # 5: M+1 not loaded
        crafted = random_data(seed)
        assert as_data(crafted) == load(write_db(tmp_path / f"{seed}.duckdb", crafted), crafted.month)


@pytest.fixture(scope="module")
def sample() -> list[tuple[Crafted, Data, tuple[Any, Any]]]:
    """The first 30 crafted databases as the reference reads them, with its documents."""
    out = []
    for seed in range(30):
        crafted = random_data(seed)
        data = as_data(crafted)
        out.append((crafted, data, documents(crafted, data)))
    return out


def test_the_generator_hits_the_edges(sample: list[tuple[Crafted, Data, tuple[Any, Any]]]) -> None:
    """Over the first 30 crafted databases every edge the definitions name occurs (else the sweep proves little)."""
    seen: Counter[str] = Counter()
    for crafted, data, _ in sample:
        seen["M+1 not loaded"] += not data.next_loaded
        if not data.next_loaded:
            continue
        doc = factors(data, bins=crafted.bins, top=0)
        for c in doc["cohorts"]:
            seen[c["cohort"]] += 1
            seen["none churned"] += c["churned"] == 0
            seen["all churned"] += c["churned"] == c["customers"] and c["customers"] > 0
            seen["tiny cohort"] += c["customers"] <= 2
            seen["tie across an edge"] += any(f["kind"] == "numeric" and _tie_across_edge(f["bins"], c, crafted.bins)
                                              for f in c["factors"])
        halves: list[str] = []
        profile(data, crafted.by or "segment", functools.partial(_note_half, halves))
        seen.update({f"half {k}" for k in halves})
        seen["bundle ends on M+3's last day"] += any(r["bundle_end"] == last_day(add_months(crafted.month, 3))
                                                     and r["bundle_type"] for r in data.rows)
        seen["bundle ends on month_end"] += any(r["bundle_end"] == r["month_end"] and r["bundle_type"]
                                                for r in data.rows)
        seen["closed"] += any(r["status"] == "closed" for r in data.rows)
    wanted = ["M+1 not loaded", "under_6m", "6_12m", "over_12m", "(none)", "trial", "none churned", "all churned",
              "tiny cohort", "tie across an edge", "half arpu", "half tenure_months", "half data_saturation",
              "bundle ends on M+3's last day", "bundle ends on month_end", "closed"]
    assert [w for w in wanted if not seen[w]] == [], dict(seen)


# -- (c) the comparison catches planted mistakes ------------------------------------------------------------
def _split_ties(rows: Any, bins: int) -> list[rr.Group]:
    """Bins by position (row_number) instead of rank: equal values split across an edge."""
    values = sorted(v for v, _ in rows if v is not None)
    n = len(values)
    taken: Counter[Any] = Counter()
    members: dict[int, list[tuple[Any, bool]]] = {}
    for v, churned in sorted(((v, c) for v, c in rows if v is not None), key=lambda p: p[0]):
        position = values.index(v) + taken[v]
        taken[v] += 1
        members.setdefault(position * bins // n + 1, []).append((v, churned))
    out = []
    for k, g in sorted(members.items()):
        low, high = min(v for v, _ in g), max(v for v, _ in g)
        out.append(rr.Group(str(k), rr.number_text(low) + rr.DASH + rr.number_text(high), rr.json_number(low),
                            rr.json_number(high), len(g), sum(c for _, c in g)))
    nulls = [c for v, c in rows if v is None]
    return out + ([rr.Group("(null)", "(null)", None, None, len(nulls), sum(nulls))] if nulls else [])


def _with(name: str, wrap: Callable[[Any], Any]) -> Callable[[pytest.MonkeyPatch], None]:
    def plant(mp: pytest.MonkeyPatch) -> None:
        mp.setattr(rr, name, wrap(getattr(rr, name)))
    return plant


def _half_even(q: Fraction, places: int) -> Decimal:
    return Decimal(q.numerator / Decimal(q.denominator)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN)


MUTANTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "equal values split across a bin edge": _with("numeric_groups", lambda _: _split_ties),
    "bins as ⌈r·B/n⌉": _with("bin_number", lambda _: lambda r, n, b: -(-r * b // n)),
    "closed customers in the base": _with("in_base", lambda _: lambda r: True),
    "a NULL status counted as closed": _with("in_base", lambda _: lambda r: r.get("status") not in ("closed", None)),
    "closed in M+1 not churned": lambda mp: mp.setattr(rr.Data, "churned",
                                                       lambda self, r: r["msisdn"] not in self.next_status),
    "means rounded half to even": _with("half_away", lambda _: _half_even),
    "entropy in nats": _with("entropy", lambda f: lambda c, n: f(c, n) * math.log(2)),
    "cohorts in name order": _with("cohort_key", lambda _: lambda c: (c is None, c or "")),
    "the (null) group first": _with("categorical_groups", lambda f: lambda rows: sorted(
        f(rows), key=lambda g: g.bin != "(null)")),
    "NULL values in no group": _with("numeric_groups", lambda f: lambda rows, b: [
        g for g in f(rows, b) if g.bin != "(null)"]),
    "a bundle ending on month_end still running": _with("bundle_running", lambda _: lambda r: r[
        "bundle_type"] is not None and (r["bundle_end"] is None or r["bundle_end"] >= r["month_end"])),
    "bundles ending by M+2's last day": _with("bundle_ending", lambda f: lambda r, h: f(
        r, h.replace(day=1) - dt.timedelta(days=1))),
    "a contract ending on month_end still running": _with("contract_running", lambda _: lambda r: r[
        "contract_end"] is not None and r["contract_end"] >= r["month_end"]),
    "the profile without closed customers": _with("profile_figures", lambda f: lambda data, rows, everyone, tally=None:
                                                  f(data, [r for r in rows if rr.in_base(r)], everyone, tally)),
}


@pytest.mark.parametrize("mutant", MUTANTS)
def test_the_comparison_catches_a_planted_mistake(mutant: str, sample: list[tuple[Crafted, Data, tuple[Any, Any]]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference with one mistake planted differs from the reference on one of the crafted databases."""
    MUTANTS[mutant](monkeypatch)
    for crafted, data, (want_f, want_p) in sample:
        got_f, got_p = documents(crafted, data)
        found = differences(want_p, got_p)
        if want_f is not None and got_f is not None:
            found += factors_differences(want_f, got_f, set())
        if found or (want_f is None) != (got_f is None):
            return
    pytest.fail(f"no crafted database tells the mistake {mutant!r} apart")
