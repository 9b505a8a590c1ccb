"""Channel kinds (pop-up / push) and responses in `mktool export` (issue 12, SPEC §6).

Crafted recommendations and contact histories with hand-computed lists: a pop-up shows every
current offer beside one push list, capacity and dedupe are shared only among push channels, an
acceptance withdraws a policy and its exclusive group everywhere for withdraw_days, a rejection
cools down everywhere, a no_answer lets only the same push channel retry after retry_days, and
the hold-out draw is the same on every channel and cycle of the month. Lists are found in both
output layouts (``<out>/<month>/`` and ``<out>/<month>/<cycle-date>/``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import duckdb
import pytest
import yaml
from conftest import CYCLE_DATE as D
from conftest import FIXTURES, MATRICES, M
from test_export import World, c, draw, funnel, hist, make_world, rec

from mktool.database import Database
from mktool.errors import ConfigError
from mktool.export import channel_verdicts
from mktool.project import load_project
from mktool.rules import load_channels
from mktool.schema import POPUP_STAGES, PUSH_STAGES


def days(n: int, day: dt.date = D) -> dt.date:
    return day - dt.timedelta(days=n)


def listed(w: World, channel: str, day: dt.date = D) -> set[tuple[str, str]]:
    """(msisdn, policy_id) of a channel's list of the cycle ``day`` (either output layout)."""
    found = sorted(w.out.rglob(f"{channel}.csv"))
    dated = [p for p in found if p.parent.name == day.isoformat()]
    path = dated[0] if dated else next(p for p in found if p.parent == w.out / M)
    return {(r["msisdn"], r["policy_id"]) for r in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))}


def add_policies(w: World, policies: list[dict[str, Any]]) -> None:
    path = w.matrices / "policies.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["policies"] += policies
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")


def sent(w: World) -> set[tuple[str, str, str]]:
    return {(m, ch, p) for m, ch, p in w.query(
        "SELECT msisdn, channel, policy_id FROM contact_history WHERE outcome = 'sent'")}


# == kinds ===========================================================================================
def test_a_popup_and_a_push_channel_hold_the_same_offer_and_only_the_push_is_a_contact(tmp_path):
    w = make_world(tmp_path, [rec(c(1), 1, "T1", ["frontdesk", "outbound"]), rec(c(2), 1, "T1", ["outbound"])])
    result = w.export()
    assert listed(w, "frontdesk") == {(c(1), "T1")}
    assert listed(w, "outbound") == {(c(1), "T1"), (c(2), "T1")}
    assert sent(w) == {(c(1), "outbound", "T1"), (c(2), "outbound", "T1")}  # the showing is no contact
    assert [s for s, _ in next(ch for ch in result.channels if ch.channel == "frontdesk").stages] == list(POPUP_STAGES)
    assert [s for s, _ in next(ch for ch in result.channels if ch.channel == "outbound").stages] == list(PUSH_STAGES)
    # The next cycle of the month: the push offer is not made again, the pop-up still shows what is current.
    nxt = D + dt.timedelta(days=1)
    w.export(date=nxt)
    assert listed(w, "outbound", nxt) == set()
    assert listed(w, "frontdesk", nxt) == {(c(1), "T1")}


def test_capacity_and_dedupe_are_shared_among_push_channels_only(tmp_path):
    # c1..c4 offer T1 on the front desk, outbound (room for 2) and sms, best value first.
    w = make_world(tmp_path, [rec(c(n), 1, "T1", ["frontdesk", "outbound", "sms"]) for n in (1, 2, 3, 4)],
                   values={c(1): 90, c(2): 80, c(3): 70, c(4): 60}, channels={"outbound": {"capacity": 2}})
    result = w.export()
    assert listed(w, "frontdesk") == {(c(n), "T1") for n in (1, 2, 3, 4)}  # the pop-up takes no capacity
    assert listed(w, "outbound") == {(c(1), "T1"), (c(2), "T1")}
    assert listed(w, "sms") == {(c(3), "T1"), (c(4), "T1")}  # never in two push lists
    assert [funnel(result, "outbound")[s] for s in ("exclusion", "dedupe", "capacity", "exported")] == [4, 4, 2, 2]
    assert [funnel(result, "sms")[s] for s in ("exclusion", "dedupe", "capacity", "exported")] == [4, 2, 2, 2]
    assert funnel(result, "frontdesk")["exported"] == 4 and "capacity" not in funnel(result, "frontdesk")


def test_a_popup_does_not_count_toward_push_caps(tmp_path):
    w = make_world(tmp_path, [
        rec(c(1), 1, "T1", ["frontdesk", "sms"]), rec(c(1), 2, "T2", ["frontdesk", "sms"]),
        rec(c(2), 1, "T1", ["sms"]),
    ], history=[
        hist(c(2), dt.date(2026, 11, 1), "frontdesk", "OTHER", "sent"),  # an ingested showing: not a push contact
    ], contact_policy={"cooldown_days": 30, "monthly_cap": 1}, channels={"sms": {"contact_cap": 1}})
    w.export(date=dt.date(2026, 11, 2))
    day = dt.date(2026, 11, 2)
    assert listed(w, "frontdesk", day) == {(c(1), "T1"), (c(1), "T2")}  # no cap on the pop-up
    assert listed(w, "sms", day) == {(c(1), "T1"), (c(2), "T1")}  # c1's T2 is over the cap of 1


def test_kind_defaults_by_name_and_a_popup_refuses_capacity_contact_cap_and_retry_days(tmp_path):
    w = make_world(tmp_path, [rec(c(1), 1, "T1", ["sms"])])
    channels = load_channels(w.matrices).channels
    assert {n: ch.kind for n, ch in channels.items()} == {
        "frontdesk": "popup", "outbound": "push", "inbound": "popup", "sms": "push", "app": "push", "manager": "push"}
    shipped = load_channels(MATRICES).channels
    assert {n for n, ch in shipped.items() if ch.kind == "popup"} == {"frontdesk", "inbound"}
    for name, extra in (("frontdesk", {"capacity": 5}), ("sms", {"kind": "popup", "contact_cap": 1}),
                        ("inbound", {"retry_days": 3})):
        folder = tmp_path / f"m_{name}"
        w2 = make_world(folder, [rec(c(1), 1, "T1", ["sms"])], channels={name: extra})
        with pytest.raises(ConfigError) as err:
            load_project(w2.matrices)
        key = next(k for k in extra if k != "kind")
        assert f"channels.{name}.{key}" in str(err.value) and "pop-up" in str(err.value)
        assert "channels.yaml:" in str(err.value)
    # a front desk made a push channel explicitly may have a capacity
    w3 = make_world(tmp_path / "m_push", [rec(c(1), 1, "T1", ["sms"])],
                    channels={"frontdesk": {"kind": "push", "capacity": 5}})
    assert load_project(w3.matrices).channels.channels["frontdesk"].capacity == 5


# == responses =======================================================================================
WITHDRAW_POLICIES = [
    {"id": "W10", "name": "withdrawn 10 days", "family": "test", "exclusive_group": "wg", "withdraw_days": 10},
    {"id": "WM", "name": "in W10's group", "family": "test", "exclusive_group": "wg"},
    {"id": "VT", "name": "valid to the cycle date", "family": "test", "valid_to": D.isoformat()},
    {"id": "VE", "name": "valid to the day before", "family": "test", "valid_to": days(1).isoformat()},
    {"id": "N180", "name": "default 180 days", "family": "test"},
]


def test_acceptance_withdraws_the_policy_and_its_group_everywhere_until_withdraw_days(tmp_path):
    everywhere = ["frontdesk", "outbound", "sms"]
    w = make_world(tmp_path, [
        rec(c(1), 1, "X2", everywhere), rec(c(1), 2, "Y", everywhere),
        rec(c(2), 1, "WM", everywhere), rec(c(3), 1, "WM", everywhere),
        rec(c(4), 1, "VT", everywhere), rec(c(5), 1, "VE", everywhere),
        rec(c(6), 1, "N180", everywhere), rec(c(7), 1, "N180", everywhere), rec(c(8), 1, "T1", everywhere),
    ], history=[
        hist(c(1), days(3), "sms", "X1", "accepted"),       # X1 bought by sms: its group member X2 goes everywhere
        hist(c(2), days(10), "frontdesk", "W10", "accepted"),  # day withdraw_days (10): still withdrawn
        hist(c(3), days(11), "frontdesk", "W10", "accepted"),  # the day after: offered again
        hist(c(4), days(100), "outbound", "VT", "accepted"),   # no withdraw_days: until valid_to = cycle date
        hist(c(5), days(100), "outbound", "VE", "accepted"),   # valid_to the day before: over
        hist(c(6), days(180), "app", "N180", "accepted"),      # no valid_to: 180 days, inclusive
        hist(c(7), days(181), "app", "N180", "accepted"),
        hist(c(8), D + dt.timedelta(days=1), "sms", "T1", "accepted"),  # after the cycle date: not read
    ])
    add_policies(w, WITHDRAW_POLICIES)
    result = w.export()
    kept = {(c(1), "Y"), (c(3), "WM"), (c(5), "VE"), (c(7), "N180"), (c(8), "T1")}
    assert listed(w, "frontdesk") == kept
    # Push: one channel per offer, the first in the rule's order (frontdesk is a pop-up, so outbound).
    assert listed(w, "outbound") == kept and listed(w, "sms") == set()
    for channel in ("frontdesk", "outbound", "sms"):
        f = funnel(result, channel)
        assert (f["unsubscribed"], f["withdrawn"]) == (8, 5), channel  # c2, c4, c6 withdrawn; c1 keeps Y


def test_rejection_cools_down_on_every_channel_and_unsubscribed_only_its_own(tmp_path):
    w = make_world(tmp_path, [rec(c(1), 1, "T1", ["frontdesk", "outbound"]), rec(c(2), 1, "T1", ["frontdesk", "sms"])],
                   history=[hist(c(1), days(5), "outbound", "T1", "rejected"),
                            hist(c(2), days(5), "frontdesk", "OTHER", "unsubscribed")])
    result = w.export()
    assert listed(w, "frontdesk") == set()  # c1 cooled down here too; c2 opted out of the front desk
    assert listed(w, "outbound") == set()
    assert listed(w, "sms") == {(c(2), "T1")}
    assert [funnel(result, "frontdesk")[s] for s in ("candidates", "unsubscribed", "withdrawn", "cooldown")] == [
        2, 1, 1, 0]


def test_no_answer_retries_on_the_same_push_channel_after_retry_days_only(tmp_path):
    everywhere = ["outbound", "sms", "frontdesk"]
    w = make_world(tmp_path, [rec(c(n), 1, "T1", everywhere) for n in (1, 2, 3, 4, 5)], history=[
        hist(c(1), dt.date(2026, 11, 5), "outbound", "T1", "sent"),
        hist(c(1), dt.date(2026, 11, 6), "outbound", "T1", "no_answer"),   # outbound retries from 11-09 (3 days)
        hist(c(2), dt.date(2026, 11, 7), "outbound", "T1", "sent"),
        hist(c(2), dt.date(2026, 11, 7), "outbound", "T1", "no_answer"),   # from 11-10
        hist(c(3), dt.date(2026, 11, 5), "sms", "T1", "sent"),
        hist(c(3), dt.date(2026, 11, 5), "sms", "T1", "no_answer"),        # sms: the default 7 days, from 11-12
        hist(c(4), dt.date(2026, 11, 3), "outbound", "T1", "sent"),
        hist(c(4), dt.date(2026, 11, 4), "outbound", "T1", "no_answer"),
        hist(c(4), dt.date(2026, 11, 6), "outbound", "T1", "sent"),        # retried since: not answered yet
        hist(c(5), dt.date(2026, 10, 20), "sms", "T1", "no_answer"),       # sms's wait is over, but outbound
        hist(c(5), dt.date(2026, 11, 5), "outbound", "T1", "sent"),        # pushed it since: no retry anywhere
    ], channels={"outbound": {"retry_days": 3}}, contact_policy={"cooldown_days": 30, "retry_days": 7})
    day = dt.date(2026, 11, 9)
    result = w.export(date=day)
    assert listed(w, "outbound", day) == {(c(1), "T1")}  # the retry day itself: n + retry_days
    assert listed(w, "sms", day) == set()  # another push channel never takes the retry over
    assert listed(w, "frontdesk", day) == {(c(n), "T1") for n in (1, 2, 3, 4, 5)}  # a pop-up shows what is current
    assert [funnel(result, "outbound")[s] for s in ("candidates", "cooldown", "no_answer", "exported")] == [2, 2, 1, 1]
    assert [funnel(result, "sms")[s] for s in ("candidates", "cooldown", "no_answer")] == [1, 1, 0]
    later = dt.date(2026, 11, 12)
    w.export(date=later)
    # c1 was retried on 11-09 (a later `sent`): no more; c2's and c3's waits are over, each on its own channel.
    assert listed(w, "outbound", later) == {(c(2), "T1")}
    assert listed(w, "sms", later) == {(c(3), "T1")}


def test_a_no_answers_wait_holds_the_offer_on_every_push_channel_across_the_month_boundary(tmp_path):
    # Found by an independent check: a no_answer on outbound three days before the cycle (in the
    # previous month, so "already made this month" does not reach it) put the offer on sms.
    w = make_world(tmp_path, [rec(c(n), 1, "T1", ["outbound", "sms", "frontdesk"]) for n in (1, 2, 3)], history=[
        hist(c(1), days(3), "outbound", "T1", "no_answer"),   # 10-29: outbound's 7-day wait runs to 11-05
        hist(c(2), days(7), "outbound", "T1", "no_answer"),   # 10-25: the wait is over on the cycle date
        hist(c(3), D, "sms", "T1", "no_answer"),              # on the cycle date itself (a re-run after responses)
    ], contact_policy={"cooldown_days": 30, "retry_days": 7})
    result = w.export()
    assert listed(w, "outbound") == {(c(2), "T1")}
    assert listed(w, "sms") == set()  # neither c1's nor c3's offer moves to another push channel while it waits
    assert listed(w, "frontdesk") == {(c(n), "T1") for n in (1, 2, 3)}  # the pop-up has no wait
    assert [funnel(result, "sms")[s] for s in ("candidates", "cooldown", "no_answer")] == [3, 3, 1]


def test_contact_caps_count_what_is_contacted_not_candidate_rows(tmp_path):
    # Found by an independent check: the caps were charged before the allocation, so c1's T1,
    # which goes to outbound, used up sms's cap of 1 and T2 (sms only) was dropped.
    w = make_world(tmp_path, [
        rec(c(1), 1, "T1", ["outbound", "sms"]), rec(c(1), 2, "T2", ["sms"]),
        rec(c(2), 1, "T1", ["sms", "outbound"]), rec(c(2), 2, "T2", ["sms", "outbound"]),  # sms full for c2
        rec(c(3), 1, "T1", ["sms"]), rec(c(3), 2, "T2", ["outbound"]), rec(c(3), 3, "T3", ["app"]),
    ], history=[
        hist(c(2), dt.date(2026, 11, 1), "sms", "OLD", "sent"),  # an sms contact already this month
    ], contact_policy={"cooldown_days": 30, "monthly_cap": 2}, channels={"sms": {"contact_cap": 1}})
    day = dt.date(2026, 11, 2)
    result = w.export(date=day)
    assert listed(w, "outbound", day) == {(c(1), "T1"), (c(2), "T1"), (c(3), "T2")}
    # c1: T2 takes sms's one contact; c2: its sms cap was reached by the 11-01 contact, T1 moves on to
    # outbound, T2 would be its 3rd contact of the month (monthly_cap 2); c3: T3 is its 3rd.
    assert listed(w, "sms", day) == {(c(1), "T2"), (c(3), "T1")}
    assert listed(w, "app", day) == set()
    assert [funnel(result, "sms")[s] for s in ("exclusion", "dedupe", "contact_cap", "capacity")] == [3, 3, 2, 2]
    assert [funnel(result, "app")[s] for s in ("exclusion", "dedupe", "contact_cap", "exported")] == [1, 1, 0, 0]


def test_a_daily_cycle_sees_the_monthly_channels_contacts_of_the_month(tmp_path):
    # Day 1 (every channel): outbound's one seat goes to c2 (higher value), c1's offer to the manager.
    w = make_world(tmp_path, [rec(c(1), 1, "T1", ["outbound", "manager"]), rec(c(2), 1, "T1", ["outbound", "manager"])],
                   values={c(1): 10, c(2): 90}, channels={"outbound": {"capacity": 1}})
    w.export()
    assert listed(w, "outbound") == {(c(2), "T1")} and listed(w, "manager") == {(c(1), "T1")}
    # Day 2, daily channels only: the manager's contact is history, not a record this run replaces,
    # so c1's offer is not moved to outbound's free seat.
    nxt = D + dt.timedelta(days=1)
    result = w.export(date=nxt, only_cycle="daily")
    assert listed(w, "outbound", nxt) == set() and funnel(result, "outbound")["candidates"] == 0


# == hold-outs =======================================================================================
def test_the_holdout_draw_is_the_same_on_every_channel_and_cycle_of_the_month(tmp_path):
    customers = [c(n) for n in range(1, 41)]
    w = make_world(tmp_path, [rec(m, 1, "H", ["frontdesk", "sms"]) for m in customers])
    held = {m for m in customers if draw(m, "H", M) < 0.5}
    assert 10 < len(held) < 30
    w.export()
    shown = {(m, "H") for m in customers if m not in held}
    assert listed(w, "frontdesk") == shown and listed(w, "sms") == shown
    assert set(w.query("SELECT channel, msisdn FROM holdouts")) == {(ch, m) for ch in ("frontdesk", "sms")
                                                                    for m in held}
    nxt = D + dt.timedelta(days=3)
    w.export(date=nxt)  # another cycle of the month: the same pairs are out of every channel again
    assert listed(w, "frontdesk", nxt) == shown and listed(w, "sms", nxt) == set()
    assert {m for (m,) in w.query("SELECT msisdn FROM holdouts WHERE cycle = ?", [nxt.isoformat()])} == held


# == explain: why not on this channel ================================================================
def verdicts(w: World, msisdn: str, day: dt.date = D) -> dict[tuple[str, str], tuple[str, str]]:
    with Database(w.settings(), write=False) as db:
        found = channel_verdicts(db.c, load_project(w.matrices), M, day, msisdn)
    return {(v.policy_id, v.channel): (v.stage, v.detail) for v in found}


def test_explain_names_the_stage_of_each_offer_on_each_channel(tmp_path):
    w = make_world(tmp_path, [
        rec(c(1), 1, "T1", ["frontdesk", "outbound"]),
        rec(c(2), 1, "X2", ["frontdesk", "outbound", "sms"]), rec(c(2), 2, "Y", ["outbound", "sms"]),
        rec(c(3), 1, "T1", ["outbound", "sms"]), rec(c(4), 1, "T1", ["outbound", "sms"]),
        rec(c(5), 1, "SMS_APP", ["frontdesk", "sms"]),
    ], values={c(3): 90, c(4): 10}, dnd=[(c(1), "*")], history=[hist(c(2), days(3), "sms", "X1", "accepted")],
        channels={"outbound": {"capacity": 1}})
    before = verdicts(w, c(3))  # not exported yet: the allocation is not known
    assert before[("T1", "outbound")][0] == "not_exported" and "passes every per-customer stage" in before[
        ("T1", "outbound")][1]
    w.export()
    one = verdicts(w, c(1))
    assert {k: v[0] for k, v in one.items()} == {("T1", "frontdesk"): "dnd", ("T1", "outbound"): "dnd"}
    assert "do-not-disturb" in one[("T1", "outbound")][1]
    two = verdicts(w, c(2))
    assert {k: v[0] for k, v in two.items()} == {
        ("X2", "frontdesk"): "withdrawn", ("X2", "outbound"): "withdrawn", ("X2", "sms"): "withdrawn",
        ("Y", "outbound"): "capacity", ("Y", "sms"): "exported"}  # rank 2: outbound's one seat went to a rank 1
    assert two[("Y", "outbound")][1] == "this channel was full; placed on push channel sms"
    # c3 (rank 1, higher value) took outbound's one seat; c4 found it full and went to sms.
    three = verdicts(w, c(3))
    assert {k: v[0] for k, v in three.items()} == {("T1", "outbound"): "exported", ("T1", "sms"): "dedupe"}
    assert three[("T1", "sms")][1] == "placed on push channel outbound"
    four = verdicts(w, c(4))
    assert {k: v[0] for k, v in four.items()} == {("T1", "outbound"): "capacity", ("T1", "sms"): "exported"}
    five = verdicts(w, c(5))
    assert five[("SMS_APP", "frontdesk")][0] == "candidates" and "app, sms" in five[("SMS_APP", "frontdesk")][1]
    assert five[("SMS_APP", "sms")][0] == "exported"


def test_explain_command_shows_the_channel_stage_of_a_dnd_and_of_an_accepted_customer(tmp_path, cli):
    out = tmp_path / "out"
    done = cli("run", "--month", M, "--ingest", str(FIXTURES), "--date", D.isoformat(), "--out", str(out),
               "--matrices", str(MATRICES))
    assert done.exit_code == 0, done.output
    project = load_project(MATRICES)
    con = duckdb.connect(str(cli.db), read_only=True)
    try:
        offered = con.execute("SELECT msisdn, policy_id FROM recommendations WHERE month = ?", [M]).fetchall()
        dnd_all = {m for (m,) in con.execute("SELECT msisdn FROM dnd WHERE channel = '*'").fetchall()}
        accepted = con.execute("SELECT msisdn, policy_id, contact_date FROM contact_history "
                               "WHERE outcome = 'accepted' AND contact_date BETWEEN ? AND ?",
                               [days(30), D]).fetchall()
    finally:
        con.close()
    dnd_customer = sorted(m for m, _ in offered if m in dnd_all)[0]
    # a customer who accepted P in the last 30 days (within every withdraw default: the shipped policies
    # have no withdraw_days) and is recommended P or a policy of P's exclusive group
    def group(pid: str) -> str | None:
        return project.policies[pid].exclusive_group if pid in project.policies else None

    def still_valid(pid: str) -> bool:
        valid_to = project.policies[pid].valid_to if pid in project.policies else None
        return valid_to is None or valid_to >= D

    withdrawn = sorted((m, q) for m, p, _ in accepted if still_valid(p) for m2, q in offered
                       if m2 == m and (q == p or (group(p) is not None and group(q) == group(p))))
    assert withdrawn, "the fixtures have a recent acceptance of an offered policy"
    for msisdn, expect in ((dnd_customer, None), (withdrawn[0][0], withdrawn[0][1])):
        shown = cli("explain", msisdn, "--month", M, "--date", D.isoformat(), "--format", "json",
                    "--matrices", str(MATRICES))
        assert shown.exit_code == 0, shown.output
        doc = json.loads(shown.stdout)
        assert doc["cycle_date"] == D.isoformat()
        stages = {(v["policy_id"], v["channel"]): v["stage"] for v in doc["channel_stages"]}
        assert stages
        if expect is None:
            assert set(stages.values()) <= {"dnd", "candidates"} and "dnd" in stages.values()
        else:
            mine = {k: v for k, v in stages.items() if k[0] == expect}
            assert mine and set(mine.values()) <= {"withdrawn", "dnd", "unsubscribed", "candidates"}
            assert "withdrawn" in mine.values()
    table = cli("explain", dnd_customer, "--month", M, "--date", D.isoformat(), "--matrices", str(MATRICES))
    assert table.exit_code == 0 and "Channels (cycle" in table.stdout and "dnd" in table.stdout
