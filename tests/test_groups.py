"""Policy groups (政策群) and the front-desk screen's columns (issue 12, items 4 and 5; seed 001).

policies.yaml declares groups (id, name, ordered member policies of one family); a rule's
``group:`` names one. Target lists carry the group's id, name and the other members (ids and
names, in the group's order, '|'-joined); pop-up lists also carry the customer summary and the
last three months of contacts. Every expectation below is worked out by hand from crafted rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
import yaml
from conftest import CYCLE_DATE as D
from conftest import FIXTURES, MATRICES, M
from test_export import World, c, make_world
from typer.testing import CliRunner

from mktool import dialect, export
from mktool.cli import app
from mktool.errors import ConfigError
from mktool.export import ExportConfig
from mktool.project import load_project, validate_all
from mktool.rules import Problems, read_rule_files
from mktool.schema import GROUP_COLUMNS


def grec(msisdn: str, rank: int, policy: str, channels: list[str], group: str | None) -> tuple[Any, ...]:
    """A recommendations row whose rule names ``group``."""
    return (msisdn, M, rank, "test", "test", rank, f"R{rank}", policy, f"{policy} name", group, f"say {policy}",
            channels)


def set_groups(world: World, groups: list[dict[str, Any]]) -> None:
    path = world.matrices / "policies.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["groups"] = [*doc.get("groups", []), *groups]  # beside the shipped rules' groups
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")


def set_channel(world: World, name: str, **settings: Any) -> None:
    path = world.matrices / "channels.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["channels"][name].update(settings)
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")


def rows(world: World, channel: str) -> list[dict[str, str]]:
    """One channel's list, wherever the cycle layout puts it."""
    path = next(world.out.rglob(f"{channel}.csv"))
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def by_customer(world: World, channel: str) -> dict[str, dict[str, str]]:
    return {r["msisdn"]: r for r in rows(world, channel)}


# == group columns in a list ============================================================================
def test_group_alternatives_in_the_groups_order_without_the_rows_own_policy(tmp_path):
    w = make_world(tmp_path, [
        grec(c(1), 1, "T1", ["sms"], "G1"),     # member in the middle: the others, in the group's order
        grec(c(2), 1, "T3", ["sms"], "G1"),     # the first member
        grec(c(3), 1, "OTHER", ["sms"], "G1"),  # not a member itself: every member is an alternative
        grec(c(4), 1, "T1", ["sms"], None),     # no group: all four columns empty
        grec(c(5), 1, "Y", ["sms"], "solo"),    # the group's only member: named, but no alternative
    ])
    set_groups(w, [{"id": "G1", "name": "测试政策群", "policies": ["T3", "T1", "T2"]},
                   {"id": "solo", "name": "one only", "policies": ["Y"]}])
    w.export()
    got = {m: (r["group_id"], r["group_name"], r["group_alternatives"], r["group_alternative_names"])
           for m, r in by_customer(w, "sms").items()}
    assert got == {
        c(1): ("G1", "测试政策群", "T3|T2", "test offer 3|test offer 2"),
        c(2): ("G1", "测试政策群", "T1|T2", "test offer 1|test offer 2"),
        c(3): ("G1", "测试政策群", "T3|T1|T2", "test offer 3|test offer 1|test offer 2"),
        c(4): ("", "", "", ""),
        c(5): ("solo", "one only", "", ""),
    }
    header = next(w.out.rglob("sms.csv")).read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[header.index("script") + 1:header.index("script") + 5] == [
        "group_id", "group_name", "group_alternatives", "group_alternative_names"]


def test_shipped_retention_rules_name_declared_groups_of_their_family():
    project = load_project(MATRICES)
    retention = project.rules.matrix("retention")
    for rule in retention.rules:
        assert rule.group is not None and rule.group in project.groups, rule.id
        group = project.groups[rule.group]
        assert group.family == "retention" and rule.policy in group.policies
    # seed 001: group 6 holds the 预缴100元得260元 offer among its prepay bundles, best first
    assert project.groups["6"].policies == ("PREPAY_300_600", "PREPAY_200_300", "PREPAY_100_260")


# == check refuses bad groups ==============================================================================
def folder_with(tmp_path: Path, groups: list[dict[str, Any]] | None = None,
                retention_group: Any = None) -> Path:
    folder = tmp_path / "matrices"
    shutil.copytree(MATRICES, folder)
    if groups is not None:
        path = folder / "policies.yaml"
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc["groups"] = groups
        path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    if retention_group is not None:
        path = folder / "retention.yaml"
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("    group: 6\n", f"    group: {retention_group}\n"), encoding="utf-8")
    return folder


SHIPPED_GROUPS = yaml.safe_load((MATRICES / "policies.yaml").read_text(encoding="utf-8"))["groups"]


def errors_of(folder: Path) -> list[str]:
    return [p.text for p in validate_all(folder).errors]


def test_check_refuses_a_group_naming_an_unknown_policy(tmp_path):
    groups = [*SHIPPED_GROUPS, {"id": "X", "name": "x", "policies": ["PREPAY_300_600", "PREPAY_300_700"]}]
    folder = folder_with(tmp_path, groups)
    [error] = errors_of(folder)
    assert error.startswith(f"{folder / 'policies.yaml'}:")
    assert f"@ groups[{len(SHIPPED_GROUPS)}].policies[1] (group X): unknown policy 'PREPAY_300_700'" in error
    assert "did you mean 'PREPAY_300_600'" in error
    with pytest.raises(ConfigError, match="unknown policy 'PREPAY_300_700'"):
        load_project(folder)


def test_check_refuses_a_group_mixing_families(tmp_path):
    groups = [*SHIPPED_GROUPS, {"id": "mixed", "name": "x", "policies": ["PREPAY_300_600", "CRBT_TRIAL"]}]
    [error] = errors_of(folder_with(tmp_path, groups))
    assert "policies.yaml:" in error and f"@ groups[{len(SHIPPED_GROUPS)}].policies (group mixed)" in error
    assert "PREPAY_300_600 is retention" in error and "CRBT_TRIAL is new_service" in error


def test_check_refuses_a_duplicate_group_id_as_text(tmp_path):
    groups = [*SHIPPED_GROUPS, {"id": "6", "name": "again", "policies": ["PREPAY_50_100"]}]  # "6" is 6
    [error] = errors_of(folder_with(tmp_path, groups))
    assert f"@ groups[{len(SHIPPED_GROUPS)}].id (group 6): duplicate group id" in error
    assert f"groups[5] and groups[{len(SHIPPED_GROUPS)}] are both '6'" in error


def test_check_refuses_a_rule_naming_an_undeclared_group(tmp_path):
    groups = [g for g in SHIPPED_GROUPS if str(g["id"]) != "6"] + [{"id": "6a", "name": "x",
                                                                    "policies": ["PREPAY_300_600"]}]
    folder = folder_with(tmp_path, groups)
    [error] = errors_of(folder)
    assert error.startswith(f"{folder / 'retention.yaml'}:")
    assert "@ rules[5].group (rule R6): undeclared policy group '6'" in error and "did you mean '6a'" in error


def test_check_refuses_a_rule_naming_a_group_of_another_family(tmp_path):
    groups = [*SHIPPED_GROUPS, {"id": "news", "name": "x", "policies": ["CRBT_TRIAL", "NEWSPAPER_TRIAL"]}]
    [error] = errors_of(folder_with(tmp_path, groups, retention_group="news"))
    assert "@ rules[5].group (rule R6): group 'news' holds new_service policies" in error
    assert "matrix 'retention' is family retention" in error


def test_a_group_id_written_as_a_number_matches_the_rules_text(tmp_path):
    groups = [*SHIPPED_GROUPS, {"id": 66, "name": "x", "policies": ["PREPAY_300_600"]}]
    assert errors_of(folder_with(tmp_path, groups, retention_group="'66'")) == []


# == the front-desk screen: customer summary and recent contacts ==========================================
def screen_world(tmp_path: Path, history: list[tuple[Any, ...]]) -> World:
    w = make_world(tmp_path, [grec(c(n), 1, "T1", ["frontdesk", "sms"], None) for n in (1, 2, 3)], history=history)
    con = duckdb.connect(str(w.db))
    con.execute("UPDATE customer_view SET value_tier = 'high', stickiness_tier = 'mid', churn_flag = true, "
                "bundle_end = DATE '2026-12-31' WHERE msisdn = ?", [c(1)])
    con.execute("UPDATE customer_view SET value_tier = 'low', churn_flag = false, "
                "contract_end = DATE '2027-01-15' WHERE msisdn = ?", [c(2)])
    con.close()
    return w


def h(msisdn: str, day: str, channel: str, policy: str, outcome: str) -> tuple[Any, ...]:
    return (msisdn, dt.date.fromisoformat(day), channel, policy, outcome)


def test_recent_contacts_three_months_newest_first_then_channel_then_policy(tmp_path):
    assert D == dt.date(2026, 11, 1)  # the window is [2026-08-01, 2026-11-01)
    w = screen_world(tmp_path, [
        h(c(1), "2026-08-01", "outbound", "T2", "rejected"),  # the window's first day: in
        h(c(1), "2026-07-31", "sms", "T3", "sent"),           # the day before: out
        h(c(1), "2026-11-01", "sms", "T3", "sent"),           # the cycle date itself: out
        h(c(1), "2026-10-15", "sms", "OTHER", "no_answer"),
        h(c(1), "2026-10-15", "app", "OTHER", "sent"),        # same day: app before sms
        h(c(1), "2026-10-15", "sms", "H", "rejected"),        # same day and channel: H before OTHER
        h(c(3), "2026-07-01", "sms", "T2", "sent"),           # only an old contact: none shown
    ])
    w.export()
    got = {m: r["recent_contacts"] for m, r in by_customer(w, "frontdesk").items()}
    assert got == {
        c(1): "2026-10-15 app OTHER sent; 2026-10-15 sms H rejected; 2026-10-15 sms OTHER no_answer; "
              "2026-08-01 outbound T2 rejected",
        c(2): "",
        c(3): "",
    }


def test_recent_contacts_show_ten_then_the_count_left_out(tmp_path):
    history = [h(c(1), f"2026-10-{day:02d}", "sms", "OTHER", "sent") for day in range(1, 13)]  # 12 contacts
    history += [h(c(2), f"2026-09-{day:02d}", "sms", "OTHER", "sent") for day in range(1, 11)]  # exactly 10
    w = screen_world(tmp_path, history)
    w.export()
    got = by_customer(w, "frontdesk")
    entries = got[c(1)]["recent_contacts"].split("; ")
    assert entries == [f"2026-10-{day:02d} sms OTHER sent" for day in range(12, 2, -1)] + ["…+2"]
    assert got[c(2)]["recent_contacts"].split("; ") == [f"2026-09-{day:02d} sms OTHER sent"
                                                        for day in range(10, 0, -1)]


def test_popup_list_carries_the_customer_summary_and_a_push_list_does_not(tmp_path):
    w = screen_world(tmp_path, [])
    w.export()
    front = by_customer(w, "frontdesk")
    summary = ("value_tier", "stickiness_tier", "churn_flag", "bundle_end", "contract_end")
    assert {m: tuple(r[k] for k in summary) for m, r in front.items()} == {
        c(1): ("high", "mid", "true", "2026-12-31", ""),
        c(2): ("low", "", "false", "", "2027-01-15"),
        c(3): ("", "", "", "", ""),
    }
    header = next(w.out.rglob("frontdesk.csv")).read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[-6:] == [*summary, "recent_contacts"]
    config = ExportConfig.of(load_project(w.matrices))
    assert not set(summary) & set(config.columns(config.channels["sms"]))  # a push list by default: no screen
    assert config.columns(config.channels["inbound"])[-6:] == (*summary, "recent_contacts")


def test_a_channel_chooses_screen_columns_and_a_popup_may_leave_them_out(tmp_path):
    w = screen_world(tmp_path, [h(c(1), "2026-10-20", "outbound", "T2", "rejected")])
    # sms (a push channel) asks for screen columns, frontdesk (a pop-up) for none of them
    set_channel(w, "sms", columns=["msisdn", "recent_contacts", "value_tier", "group_alternatives", "policy_id"])
    set_channel(w, "frontdesk", columns=["msisdn", "policy_id"])
    con = duckdb.connect(str(w.db))
    con.execute("UPDATE recommendations SET channels = ['sms'] WHERE msisdn = ?", [c(1)])
    con.close()
    w.export()
    sms = next(w.out.rglob("sms.csv")).read_text(encoding="utf-8").splitlines()
    assert sms[0] == "msisdn,recent_contacts,value_tier,group_alternatives,policy_id"
    assert f"{c(1)},2026-10-20 outbound T2 rejected,high,,T1" in sms
    front = next(w.out.rglob("frontdesk.csv")).read_text(encoding="utf-8").splitlines()
    assert front[0] == "msisdn,policy_id" and sorted(front[1:]) == [f"{c(2)},T1", f"{c(3)},T1"]


def test_check_refuses_an_unknown_list_column_with_a_suggestion(tmp_path):
    folder = tmp_path / "matrices"
    shutil.copytree(MATRICES, folder)
    path = folder / "channels.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["channels"]["frontdesk"]["columns"] = ["msisdn", "recent_contact"]
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    [error] = errors_of(folder)
    assert "@ channels.frontdesk.columns[1]: unknown target-list column 'recent_contact'" in error
    assert "did you mean 'recent_contacts'" in error


def test_check_refuses_a_summary_column_the_view_does_not_have(tmp_path):
    folder = tmp_path / "matrices"
    shutil.copytree(MATRICES, folder)
    path = folder / "channels.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["channels"]["inbound"]["columns"] = ["msisdn", "churn_flag"]
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    view_columns = [col for col in load_project(MATRICES).rules.columns if col != "churn_flag"]
    problems = Problems()
    read_rule_files(folder, problems, columns=view_columns, files=[])
    found = [p.text for p in problems.errors if "channels.yaml" in p.text]
    assert len(found) == 1 and "@ channels.inbound.columns[1]: customer_view has no column 'churn_flag'" in found[0]


# == Spark renderings of the new queries ===================================================================
def test_new_queries_render_the_ordered_join_as_sorted_structs_for_spark():
    found = export.queries(ExportConfig.of(load_project(MATRICES)), M, D)
    front = found["list:frontdesk"].render("spark")
    assert "ARRAY_JOIN(TRANSFORM(ARRAY_SORT(COLLECT_LIST(STRUCT(e.pos AS k, e.entry AS v))), e -> e.v), '; ')" in front
    assert "LISTAGG" not in front and "LIST_" not in front
    alternatives = found["group_alternatives"].render("spark")
    assert "ARRAY_SORT(COLLECT_LIST(STRUCT(m.pos AS k, m.policy_id AS v)))" in alternatives
    window = found["list_window"]
    assert window.params == {"cycle_date": D} and "INTERVAL '3' MONTH" in window.render("spark")
    # the push lists of the shipped channels read neither customer_view nor the contact history
    assert "customer_view" not in found["list:outbound"].sql and "_x_history" not in found["list:outbound"].sql


@pytest.mark.parametrize(("date", "want"), [("DATE '2026-11-01'", dt.date(2026, 8, 1)),
                                            ("DATE '2026-05-31'", dt.date(2026, 2, 28)),
                                            ("DATE '2024-05-31'", dt.date(2024, 2, 29))])
def test_months_before_per_dialect(date: str, want: dt.date) -> None:
    con = duckdb.connect()
    assert con.execute(f"SELECT {dialect.months_before(date, 3)}").fetchone() == (want,)
    assert con.execute(f"SELECT typeof({dialect.months_before(date, 3)})").fetchone() == ("DATE",)
    spark = dialect.render(f"SELECT {dialect.months_before(date, 3)}", "spark")
    import_back = sqlglot.transpile(spark, read="spark", write="duckdb")[0]
    assert con.execute(import_back).fetchone() == (want,)
    assert dialect.months_before(date, 3, "spark") == f"add_months(CAST({date} AS DATE), -3)"


def test_ordered_text_agg_per_dialect() -> None:
    rows_sql = "(VALUES (1, 2, 'b'), (1, 1, 'a'), (1, 3, NULL), (1, 10, 'c'), (2, 1, 'z')) AS t(g, k, x)"
    duck = f"SELECT g, {dialect.ordered_text_agg('x', 'k', chr(39) + '|' + chr(39))} FROM {rows_sql} GROUP BY g " \
           "ORDER BY g"
    con = duckdb.connect()
    assert con.execute(duck).fetchall() == [(1, "a|b|c"), (2, "z")]  # 10 after 2: sorted as numbers, NULL left out
    spark = dialect.render(duck, "spark")
    assert "ARRAY_JOIN(TRANSFORM(ARRAY_SORT(COLLECT_LIST(STRUCT(k AS k, x AS v))), e -> e.v), '|')" in spark
    assert dialect.ordered_text_agg("x", "k", "'|'", "spark") == \
        "array_join(transform(array_sort(collect_list(struct(k AS k, x AS v))), e -> e.v), '|')"


# == the shipped rules on the fixtures, against an independent computation =================================
@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("groups_run")
    db = work / "mk.duckdb"
    result = CliRunner().invoke(app, ["run", "--month", M, "--ingest", str(FIXTURES), "--date", D.isoformat(),
                                      "--out", str(work / "out"), "--db", str(db), "--matrices", str(MATRICES)])
    assert result.exit_code == 0, result.output
    return work / "out", db


def list_rows(out: Path, channel: str) -> list[dict[str, str]]:
    path = next(out.rglob(f"{channel}.csv"))
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_fixture_lists_carry_the_rules_groups(fixture_run):
    out, _ = fixture_run
    project = load_project(MATRICES)
    rules = {(m.name, r.id): r for m in project.rules.offers for r in m.rules}
    seen = 0
    config = ExportConfig.of(project)
    for name, channel in config.channels.items():
        if channel.format != "csv" or not {"matrix", "rule_id", "policy_id", *GROUP_COLUMNS} <= set(
                config.columns(channel)):
            continue  # a channel that lists only some columns (sms), or not as csv (app)
        for row in list_rows(out, name):
            rule = rules.get((row["matrix"], row["rule_id"]))
            group = project.groups.get(rule.group) if rule is not None and rule.group else None
            if group is None:
                assert (row["group_id"], row["group_name"], row["group_alternatives"]) == ("", "", "")
                continue
            others = [pid for pid in group.policies if pid != row["policy_id"]]
            assert (row["group_id"], row["group_name"]) == (group.id, group.name)
            assert row["group_alternatives"] == "|".join(others)
            assert row["group_alternative_names"] == "|".join(project.policies[pid].name for pid in others)
            seen += 1
    assert seen > 0  # the retention rules' rows carry their groups


def test_fixture_frontdesk_screen_matches_the_view_and_the_history(fixture_run):
    out, db = fixture_run
    front = list_rows(out, "frontdesk")
    assert front
    con = duckdb.connect(str(db), read_only=True)
    try:
        view = {r[0]: r[1:] for r in con.execute(
            "SELECT msisdn, value_tier, stickiness_tier, churn_flag, bundle_end, contract_end FROM customer_view "
            "WHERE month = ?", [M]).fetchall()}
        history = con.execute("SELECT msisdn, contact_date, channel, policy_id, outcome FROM contact_history "
                              "WHERE contact_date >= DATE '2026-08-01' AND contact_date < DATE '2026-11-01'").fetchall()
    finally:
        con.close()
    contacts: dict[str, list[tuple[Any, ...]]] = {}
    for msisdn, day, channel, policy, outcome in history:
        contacts.setdefault(msisdn, []).append((-day.toordinal(), channel, policy, outcome, day))
    shown = 0
    for row in front:
        value_tier, stickiness, churn, bundle_end, contract_end = view[row["msisdn"]]
        assert (row["value_tier"], row["stickiness_tier"], row["churn_flag"]) == (
            value_tier or "", stickiness or "", "" if churn is None else str(churn).lower())
        assert (row["bundle_end"], row["contract_end"]) == (bundle_end.isoformat() if bundle_end else "",
                                                            contract_end.isoformat() if contract_end else "")
        entries = [f"{e[4].isoformat()} {e[1]} {e[2]} {e[3]}" for e in sorted(contacts.get(row["msisdn"], []))]
        want = "; ".join(entries[:10] + ([f"…+{len(entries) - 10}"] if len(entries) > 10 else []))
        assert row["recent_contacts"] == want, row["msisdn"]
        shown += bool(want)
    assert shown > 0
