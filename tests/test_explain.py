"""`mktool explain`: one customer through the very queries `matrix` and `plan` run, beside what they stored.

Two whole months on the bundled fixtures: one with the shipped rules, one with rules changed on
purpose — policy PREPAY_300_600 expired before the month (valid_to 2026-09-30), a priority
matrix whose `where` leaves low-value customers out, and plan re-run with other windows and
top 2. Explain must agree, customer by customer, with the recommendations, customer_priority and
plan_recommendations those runs stored; the outcomes of chosen customers are worked out by hand
from the rules' text and the customer's view row.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from conftest import FIXTURES, MATRICES, M, fetch
from typer.testing import CliRunner

from mktool.cli import app
from mktool.config import Settings
from mktool.database import Database
from mktool.errors import MktoolError
from mktool.explain import (
    FALSE,
    FIRED,
    IN_BOTH_WINDOWS,
    NOT_MATCHED,
    NULL,
    OUTSIDE_WHERE,
    SHADOWED,
    SKIPPED,
    Explanation,
    RuleOutcome,
    columns_label,
    conditions_query,
    display,
    explain,
    failure_label,
    outcome_label,
)
from mktool.matrices import evaluate_customer, first_hit_sql, hits_sql, stats_sql
from mktool.plan import candidates_sql, funnel_query, pairs_sql, recommend_query
from mktool.planconfig import PlanConfig
from mktool.project import load_project, load_rules
from mktool.sqlcheck import conjuncts

C0 = "13800000000"  # active, tenure 16, return_rate 91.76, arpu_3m 117.32, value mid, stickiness none


def _run(work: Path, matrices: Path) -> Path:
    db = work / "mk.duckdb"
    result = CliRunner().invoke(app, ["run", "--month", M, "--ingest", str(FIXTURES), "--date", "2026-11-01",
                                      "--out", str(work / "out"), "--db", str(db), "--matrices", str(matrices)])
    assert result.exit_code == 0, result.output
    return db


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("shipped"), MATRICES)


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Rules changed on purpose (see the module doc); plan re-run with --total-change 0.50:1.30 --top 2."""
    work = tmp_path_factory.mktemp("changed")
    matrices = work / "matrices"
    shutil.copytree(MATRICES, matrices)
    policies = (matrices / "policies.yaml").read_text(encoding="utf-8")
    old = "channels: [frontdesk, outbound], exclusive_group: prepay, holdout: 0.05}"
    assert policies.count(old) == 1
    (matrices / "policies.yaml").write_text(
        policies.replace(old, old[:-1] + ", valid_to: 2026-09-30}"), encoding="utf-8")
    priority = (matrices / "priority.yaml").read_text(encoding="utf-8")
    assert priority.count("hit: first\n") == 1
    priority = priority.replace("hit: first\n", "hit: first\nwhere: value_tier <> 'low'\n")
    (matrices / "priority.yaml").write_text(priority, encoding="utf-8")
    db = _run(work, matrices)
    result = CliRunner().invoke(app, ["plan", "--month", M, "--total-change", "0.50:1.30", "--top", "2",
                                      "--db", str(db), "--matrices", str(matrices)])
    assert result.exit_code == 0, result.output
    return db, matrices


@pytest.fixture
def open_db() -> Iterator[Any]:
    opened: list[Database] = []

    def _open(db: Path) -> Database:
        database = Database(Settings(db_path=db, memory_limit="1GB", threads=2), write=False)
        opened.append(database.__enter__())
        return opened[-1]

    yield _open
    for database in opened:
        database.__exit__(None, None, None)


def rule(ex: Explanation, matrix: str, rule_id: str) -> RuleOutcome:
    return next(r for r in ex.rules if r.matrix == matrix and r.rule_id == rule_id)


# -- crafted customers, outcomes worked out by hand ----------------------------------------------------
def test_rule_of_an_expired_policy_is_skipped_with_its_dates_not_fired(changed, open_db) -> None:
    db, matrices = changed
    # C0 matches R6 (tenure > 12, return_rate > 86, 100 <= arpu_3m < 150) and no other retention rule:
    # R7 needs arpu_3m < 100, R8 < 50, R9/R10 return_rate <= 86, R11 tenure <= 12, R1/R2 a contract
    # or bundle ending. R6's policy expired on 2026-09-30: matrix skips R6, so C0 gets no retention offer.
    assert fetch(db, "SELECT tenure_months, return_rate, arpu_3m, contract_ends_3m, bundle_ends_3m FROM customer_view "
                     "WHERE msisdn = ?", [C0]) == [(16, Decimal("91.760427"), Decimal("117.320000"), False, False)]
    ex = explain(open_db(db), load_project(matrices), M, C0)
    r6 = rule(ex, "retention", "R6")
    assert (r6.outcome, r6.fired, r6.matched, r6.rank) == (SKIPPED, False, False, None)
    assert r6.detail == "policy PREPAY_300_600 not valid in 2026-10 (… to 2026-09-30)"
    assert outcome_label(r6) == "SKIPPED: policy PREPAY_300_600 not valid in 2026-10 (… to 2026-09-30)"
    assert [r.rule_id for r in ex.rules if r.matrix == "retention" and r.fired] == []
    assert {r.outcome for r in ex.rules if r.matrix == "retention" and r.rule_id != "R6"} == {NOT_MATCHED}
    assert fetch(db, "SELECT count(*) FROM recommendations WHERE msisdn = ? AND matrix = 'retention'", [C0]) == [(0,)]
    table = CliRunner().invoke(app, ["explain", C0, "--month", M, "--db", str(db), "--matrices", str(matrices)],
                               env={"COLUMNS": "320"})
    assert table.exit_code == 0, table.output
    assert "SKIPPED: policy PREPAY_300_600 not valid in 2026-10 (… to 2026-09-30)" in table.stdout
    assert "FIRED: rank" not in table.stdout.split("Recommendations (stored)")[0].split("retention")[-1]


def test_the_same_customer_fires_that_rule_under_the_shipped_rules(shipped, open_db) -> None:
    # Priority P6 (mid value, no stickiness) gives C0 the order vnet → retention → …; vnet's where
    # (NOT vnet) leaves C0 (vnet = true) out, so R6 is C0's first offer. P7 and P_ALL also match: shadowed.
    ex = explain(open_db(shipped), load_project(MATRICES), M, C0)
    r6 = rule(ex, "retention", "R6")
    assert (r6.outcome, r6.rank, outcome_label(r6)) == (FIRED, 1, "FIRED: rank 1")
    assert [(r.rule_id, r.outcome) for r in ex.rules if r.matrix == "priority" and r.outcome != NOT_MATCHED] == [
        ("P6", FIRED), ("P7", SHADOWED), ("P_ALL", SHADOWED)]
    assert outcome_label(rule(ex, "priority", "P7")) == "matched, shadowed by P6"
    v1 = rule(ex, "vnet", "V1")
    assert (v1.outcome, outcome_label(v1)) == (OUTSIDE_WHERE, "no (where): status = 'active' AND NOT vnet")
    assert ex.where["vnet"] is False and ex.where["retention"] is True
    assert ex.notes == []


def test_an_offer_deduped_by_its_exclusive_group_says_which_rule_kept_the_group(shipped, open_db) -> None:
    # N4 (MI_PACK_20) and N5 (MI_PACK_10) are both in exclusive group mi_pack and new_service is hit: collect:
    # a customer matching both gets both hits and keeps N4's (the earlier rule in the same matrix).
    rows = fetch(shipped, "SELECT msisdn FROM customer_view WHERE status = 'active' AND mobile_internet_potential "
                          "AND data_mb_3m >= 300 ORDER BY msisdn LIMIT 3")
    assert rows
    for (msisdn,) in rows:
        ex = explain(open_db(shipped), load_project(MATRICES), M, msisdn)
        n4, n5 = rule(ex, "new_service", "N4"), rule(ex, "new_service", "N5")
        assert n4.outcome == n5.outcome == FIRED and n4.rank is not None and n5.rank is None
        assert n5.detail == f"not recommended: exclusive group mi_pack kept by new_service N4 (rank {n4.rank})"
        stored = fetch(shipped, "SELECT rule_id, rank FROM recommendations WHERE msisdn = ? AND matrix = 'new_service'",
                       [msisdn])
        assert ("N4", n4.rank) in stored and "N5" not in {r for r, _ in stored}


def test_offers_of_a_customer_outside_the_priority_where_fire_but_are_not_recommended(changed, open_db) -> None:
    db, matrices = changed
    # T7: traffic_group = 'silent' AND tenure_months >= 6 (traffic's where: active). Low value: outside
    # the changed priority matrix's where, so the customer gets no recommendations at all.
    rows = fetch(db, "SELECT msisdn FROM customer_view WHERE status = 'active' AND value_tier = 'low' "
                     "AND traffic_group = 'silent' AND tenure_months >= 6 ORDER BY msisdn LIMIT 2")
    assert rows
    for (msisdn,) in rows:
        ex = explain(open_db(db), load_project(matrices), M, msisdn)
        t7 = rule(ex, "traffic", "T7")
        assert (t7.outcome, t7.rank) == (FIRED, None)
        assert t7.detail == "not recommended: outside the priority matrix's where"
        assert {(r.outcome, r.detail) for r in ex.rules if r.matrix == "priority"} == {
            (OUTSIDE_WHERE, "value_tier <> 'low'")}
        assert ex.recommendations == [] and [r for r in ex.rules if r.rank is not None] == []


def test_explain_says_when_the_stored_rows_are_not_what_the_rules_give_now(shipped, changed, open_db) -> None:
    _, matrices = changed
    ex = explain(open_db(shipped), load_project(matrices), M, C0)  # stored by the shipped rules, read with the changed
    assert rule(ex, "retention", "R6").outcome == SKIPPED
    assert ex.recommendations[0]["rule_id"] == "R6"
    assert any("the stored recommendations differ from what the rules" in n for n in ex.notes), ex.notes


# -- agreement with the real runs, customer by customer ---------------------------------------------------
def _sample(db: Path) -> list[str]:
    """20 customers: collect matrices with several offers, traffic, vnet, a dedupe, none at all, plan changes."""
    picks = [
        "SELECT msisdn FROM recommendations WHERE matrix = 'new_service' GROUP BY msisdn HAVING count(*) >= 2",
        "SELECT DISTINCT msisdn FROM recommendations WHERE matrix = 'traffic'",
        "SELECT DISTINCT msisdn FROM recommendations WHERE matrix = 'vnet'",
        "SELECT msisdn FROM customer_view WHERE msisdn NOT IN (SELECT msisdn FROM recommendations)",
        "SELECT msisdn FROM customer_view WHERE status = 'active' AND mobile_internet_potential AND data_mb_3m >= 300",
        "SELECT DISTINCT msisdn FROM plan_recommendations WHERE rank = 2",
        "SELECT DISTINCT msisdn FROM plan_recommendations",
    ]
    chosen: list[str] = []
    for sql in picks:
        got = [m for (m,) in fetch(db, f"SELECT msisdn FROM ({sql}) AS s ORDER BY msisdn LIMIT 6") if m not in chosen]
        chosen += got[:3]
    for (m,) in fetch(db, "SELECT msisdn FROM customer_view ORDER BY msisdn LIMIT 40"):
        if len(chosen) >= 20:
            break
        if m not in chosen:
            chosen.append(m)
    return chosen


@pytest.fixture(scope="module")
def sampled(shipped: Path, changed: tuple[Path, Path]) -> list[tuple[Path, str, Explanation]]:
    """(database, msisdn, explanation) for the 20 sampled customers of each run."""
    out = []
    for db, matrices in ((shipped, MATRICES), changed):
        sample = _sample(db)
        assert len(sample) == 20
        project = load_project(matrices)
        with Database(Settings(db_path=db, memory_limit="1GB", threads=2), write=False) as database:
            out += [(db, m, explain(database, project, M, m)) for m in sample]
    return out


def _matrix_agrees(db: Path, msisdn: str, ex: Explanation) -> None:
    stored = fetch(db, "SELECT rank, matrix, rule_id, policy_id FROM recommendations WHERE month = ? AND msisdn = ? "
                       "ORDER BY rank", [M, msisdn])
    given = sorted((r.rank, r.matrix, r.rule_id, r.policy_id) for r in ex.rules if r.rank is not None)
    assert given == stored, msisdn
    assert [(r["rank"], r["matrix"], r["rule_id"], r["policy_id"]) for r in ex.recommendations] == stored
    priority = fetch(db, "SELECT priority_rule_id FROM customer_priority WHERE month = ? AND msisdn = ?", [M, msisdn])
    assert [(r.rule_id,) for r in ex.rules if r.matrix == "priority" and r.fired] == priority, msisdn
    for matrix in {r.matrix for r in ex.rules if r.hit == "first"}:
        assert sum(r.fired for r in ex.rules if r.matrix == matrix) <= 1
    for r in ex.rules:
        assert r.fired == (r.outcome == FIRED) and r.matched == (r.outcome in (FIRED, SHADOWED))
        if r.fired and r.rank is None and r.matrix != "priority":
            assert r.detail.startswith("not recommended"), (msisdn, r)
    assert ex.notes == [n for n in ex.notes if n.startswith("plan is evaluated with the overrides")], ex.notes


def _round4(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)  # half away from zero, as the lists show rates


def _plan_agrees(db: Path, msisdn: str, ex: Explanation) -> None:
    stored = [(*r[:7], _round4(r[7]), _round4(r[8])) for r in fetch(
        db, "SELECT plan_id, rank, new_rental, new_voice_overage, new_data_overage, new_total, current_total, "
            "total_fee_change, rental_change FROM plan_recommendations WHERE month = ? AND msisdn = ? ORDER BY rank",
        [M, msisdn])]
    given = sorted(((p["plan_id"], p["rank"], p["new_rental"], p["new_voice_overage"], p["new_data_overage"],
                     p["new_total"], p["current_total"], p["total_fee_change"], p["rental_change"])
                    for p in ex.plan_pairs if p["rank"] is not None), key=lambda t: t[1])
    assert given == stored, msisdn
    assert all(p["verdict"] == IN_BOTH_WINDOWS for p in ex.plan_pairs if p["rank"] is not None)
    assert all(p["recommended_rank"] == p["rank"] for p in ex.plan_pairs), msisdn
    if stored:
        assert all(ex.plan_stages.values()), msisdn
        assert ex.plan_pairs[0]["rank"] == 1
    status = fetch(db, "SELECT status FROM customer_view WHERE month = ? AND msisdn = ?", [M, msisdn])[0][0]
    assert ex.plan_stages["base"] and ex.plan_stages["active"] == (status == "active"), msisdn


def test_explain_agrees_with_the_matrix_run_for_a_sample_of_customers(sampled) -> None:
    for db, msisdn, ex in sampled:
        _matrix_agrees(db, msisdn, ex)
    # The sample covers what it is meant to: collect matrices, several offers, the priority matrix, dedupe, none.
    outcomes = {(r.matrix, r.outcome) for _, _, ex in sampled for r in ex.rules}
    assert {("new_service", FIRED), ("traffic", FIRED), ("vnet", FIRED), ("priority", FIRED), ("priority", SHADOWED),
            ("retention", SHADOWED), ("retention", SKIPPED), ("priority", OUTSIDE_WHERE)} <= outcomes
    assert any(len(ex.recommendations) >= 3 for _, _, ex in sampled)
    assert any(not ex.recommendations for _, _, ex in sampled)
    assert any(r.detail.startswith("not recommended: exclusive group") for _, _, ex in sampled for r in ex.rules)


def test_explain_agrees_with_plan_recommendations_for_a_sample_of_customers(sampled, changed, open_db) -> None:
    for db, msisdn, ex in sampled:
        _plan_agrees(db, msisdn, ex)
    # The changed run's plan ran with --total-change 0.50:1.30 --top 2: explain evaluates with those.
    db, matrices = changed
    two = fetch(db, "SELECT msisdn FROM plan_recommendations WHERE rank = 2 ORDER BY msisdn LIMIT 1")
    assert two
    ex = explain(open_db(db), load_project(matrices), M, two[0][0])
    assert sorted(p["rank"] for p in ex.plan_pairs if p["rank"] is not None) == [1, 2]
    assert any(n.startswith("plan is evaluated with the overrides its stored run was given") and "0.5:1.3" in n
               for n in ex.notes), ex.notes
    assert any(p["verdict"] == "total_fee_change outside [0.5, 1.3]" for p in ex.plan_pairs), ex.plan_pairs


def test_a_dropped_customer_is_dropped_at_the_stage_the_funnel_drops_it(shipped, open_db) -> None:
    # Not active → dropped at active; active with under 5 MB a month → dropped at data_ge_min.
    inactive = fetch(shipped, "SELECT msisdn FROM customer_view WHERE status <> 'active' ORDER BY msisdn LIMIT 1")[0][0]
    light = fetch(shipped, "SELECT msisdn FROM customer_view WHERE status = 'active' AND data_mb_3m < 5 "
                           "ORDER BY msisdn LIMIT 1")[0][0]
    database = open_db(shipped)
    assert explain(database, load_project(MATRICES), M, inactive).plan_stages == {
        "base": True, "active": False, "data_ge_min": False, "eligible_plan": False, "billable": False}
    assert explain(database, load_project(MATRICES), M, light).plan_stages == {
        "base": True, "active": True, "data_ge_min": False, "eligible_plan": False, "billable": False}


# -- the first failing condition and the values each rule reads (a crafted customer) -----------------------
PROBE = """\
matrix: probe
family: probe
hit: collect
where: status = 'active'
rules:
  - id: X1
    when: tenure_months > 12 AND return_rate > 86 AND arpu_3m >= 100
    policy: PROBE_A
  - id: X2
    when: tenure_months > 12 AND (ld_top_province = '山东' AND arpu_3m > 0)
    policy: PROBE_A
  - id: X3
    when: return_rate > 86 OR arpu_3m >= 1000
    policy: PROBE_A
  - id: X4
    when: tenure_months > 12
    policy: PROBE_A
"""
PROBE_SCOPE = """\
matrix: probe_scope
family: probe
hit: first
where: status = 'active' AND tenure_months < 12 AND arpu_3m > 0
rules:
  - id: Y1
    when: "true"
    policy: PROBE_A
"""


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The fixtures scored with two probe matrices; C0's view row set by hand: tenure 20, return rate 50,
    arpu_3m 120, ld_top_province NULL (a missing value)."""
    work = tmp_path_factory.mktemp("crafted")
    matrices = work / "matrices"
    shutil.copytree(MATRICES, matrices)
    (matrices / "probe.yaml").write_text(PROBE, encoding="utf-8")
    (matrices / "probe_scope.yaml").write_text(PROBE_SCOPE, encoding="utf-8")
    policies = yaml.safe_load((matrices / "policies.yaml").read_text(encoding="utf-8"))
    policies["policies"].append({"id": "PROBE_A", "name": "probe", "family": "probe", "channels": ["sms"]})
    (matrices / "policies.yaml").write_text(yaml.safe_dump(policies, allow_unicode=True), encoding="utf-8")
    db = work / "mk.duckdb"
    for args in (["ingest", str(FIXTURES)], ["score", "--month", M]):
        result = CliRunner().invoke(app, [*args, "--db", str(db), "--matrices", str(matrices)])
        assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db))
    con.execute("UPDATE customer_view SET status = 'active', tenure_months = 20, return_rate = 50, arpu_3m = 120, "
                "ld_top_province = NULL WHERE month = ? AND msisdn = ?", [M, C0])
    con.close()
    return db, matrices


def test_a_rule_not_matched_names_its_first_failing_condition_and_the_values_it_read(crafted, open_db) -> None:
    db, matrices = crafted
    ex = explain(open_db(db), load_project(matrices), M, C0)
    x1 = rule(ex, "probe", "X1")  # tenure 20 > 12 holds; return rate 50 > 86 does not: the 2nd of 3
    assert (x1.outcome, x1.failed_in, x1.failed_index, x1.conditions, x1.failed_condition, x1.failed_because) == (
        NOT_MATCHED, "when", 2, 3, "return_rate > 86", FALSE)
    assert x1.columns == {"status": "active", "tenure_months": 20, "arpu_3m": Decimal("120"),
                          "return_rate": Decimal("50")} and list(x1.columns) == [
        c for c in ex.view if c in ("status", "tenure_months", "arpu_3m", "return_rate")]  # the view's order
    assert failure_label(x1) == "when 2/3: return_rate > 86 is false"
    assert "return_rate=50.00" in columns_label(x1) and "tenure_months=20" in columns_label(x1)
    # A nested AND is flattened; ld_top_province is NULL: the condition is NULL, not false.
    x2 = rule(ex, "probe", "X2")
    assert (x2.failed_index, x2.conditions, x2.failed_condition, x2.failed_because) == (
        2, 3, "ld_top_province = '山东'", NULL)
    assert x2.columns["ld_top_province"] is None and "ld_top_province=NULL" in columns_label(x2)
    assert failure_label(x2) == "when 2/3: ld_top_province = '山东' is NULL (a value it reads is missing)"
    # An OR at the top is one condition.
    x3 = rule(ex, "probe", "X3")
    assert (x3.failed_index, x3.conditions, x3.failed_condition, x3.failed_because) == (
        1, 1, "return_rate > 86 OR arpu_3m >= 1000", FALSE)
    x4 = rule(ex, "probe", "X4")  # matched: nothing failed, the values are still shown
    assert (x4.outcome, x4.failed_condition, x4.failed_because, x4.columns) == (
        FIRED, None, None, {"status": "active", "tenure_months": 20})


def test_outside_where_names_the_wheres_failing_condition(crafted, open_db) -> None:
    db, matrices = crafted
    ex = explain(open_db(db), load_project(matrices), M, C0)
    y1 = rule(ex, "probe_scope", "Y1")  # status active holds, tenure 20 < 12 does not: the where's 2nd of 3
    assert (y1.outcome, y1.failed_in, y1.failed_index, y1.conditions, y1.failed_condition, y1.failed_because) == (
        OUTSIDE_WHERE, "where", 2, 3, "tenure_months < 12", FALSE)
    assert y1.columns == {"status": "active", "tenure_months": 20, "arpu_3m": Decimal("120")}


def test_explain_json_and_the_table_view_show_the_failures_and_the_columns_read(crafted) -> None:
    db, matrices = crafted
    base = ["explain", C0, "--month", M, "--db", str(db), "--matrices", str(matrices)]
    doc = json.loads(CliRunner().invoke(app, [*base, "--format", "json"]).stdout)
    x2 = next(r for r in doc["rules"] if r["rule_id"] == "X2")
    assert (x2["failed_condition"], x2["failed_because"], x2["failed_in"], x2["failed_index"]) == (
        "ld_top_province = '山东'", "null", "when", 2)
    assert x2["columns"]["ld_top_province"] is None and x2["columns"]["tenure_months"] == 20
    assert doc["view"]["msisdn"] == C0 and len(doc["view"]) > 60  # json: every column, as before

    table = CliRunner().invoke(app, base, env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    view = table.stdout.split("Rules")[0].split("Customer view")[1]
    shown = {line.split("│")[1].strip() for line in view.splitlines() if line.startswith("│")}
    rules = load_project(matrices).rules
    read = {c for m in rules.matrices for r in m.rules for c in r.when.columns}
    read |= {c for m in rules.matrices if m.where is not None for c in m.where.columns}
    assert shown == read | {"msisdn", "month", "value_tier", "stickiness_tier", "churn_flag", "segment"}
    assert "ld_top_province" in shown and "138****0000" in view and C0 not in view  # the number masked
    assert "when 2/3: return_rate > 86 is false" in table.stdout
    assert "where 2/3: tenure_months < 12 is false" in table.stdout


# -- the filter is a bound parameter ------------------------------------------------------------------------
HOSTILE = "13800000000' OR '1' = '1"


def test_the_one_customer_builders_bind_the_msisdn_as_a_parameter(shipped, open_db) -> None:
    rules = load_rules(MATRICES)
    for m in rules.matrices:
        for sql in (hits_sql(m, m.rules, M, one_customer=True), stats_sql(m, m.rules, M, one_customer=True),
                    first_hit_sql(m, m.rules, M, keep_unmatched=True, one_customer=True)):
            assert "msisdn = $msisdn" in sql
        assert "$msisdn" not in hits_sql(m, m.rules, M) + stats_sql(m, m.rules, M)
    assert "msisdn = $msisdn" in candidates_sql(one_customer=True) and "$msisdn" not in candidates_sql()
    retention = rules.matrix("retention")
    q = conditions_query(retention, conjuncts(retention.where, location="where"),  # type: ignore[arg-type]
                         {r.no: conjuncts(r.when, location="when") for r in retention.rules}, M, HOSTILE)
    assert "msisdn = $msisdn" in q.sql and HOSTILE not in q.sql and q.params == {"month": M, "msisdn": HOSTILE}
    config = PlanConfig()
    for q in (recommend_query(M, config, msisdn=HOSTILE), funnel_query(M, config, msisdn=HOSTILE)):
        assert HOSTILE not in q.sql and q.params["msisdn"] == HOSTILE
    assert "msisdn" not in recommend_query(M, config).params
    database = open_db(shipped)
    q = recommend_query(M, config, msisdn=HOSTILE)
    assert database.c.execute(q.sql, q.params).fetchall() == []  # harmless: no customer has that number
    run = evaluate_customer(database, load_project(MATRICES), M, HOSTILE)
    assert run.ranked == [] and not any(run.hits.values()) and not any(run.in_scope.values())
    with pytest.raises(MktoolError, match="no customer"):
        explain(database, load_project(MATRICES), M, HOSTILE)
    with pytest.raises(MktoolError, match="plan pairs start from one of candidates, staged"):
        pairs_sql("candidates AS c; DROP TABLE plans; --")


# -- how values are shown -----------------------------------------------------------------------------------
def test_money_is_shown_as_digits_not_as_a_python_repr(shipped) -> None:
    assert display(Decimal("191.52")) == "191.52"
    assert display(Decimal("117.320000")) == "117.32"
    assert display(Decimal("58.000000")) == "58.00"
    assert display(Decimal("91.760427")) == "91.760427"
    assert display(Decimal("1.000000000000"), 4) == "1.0000"
    assert display(90.46666666666665) == "90.47"
    assert display(None) == "" and display(True) == "True" and display([Decimal("1.50"), "x"]) == "1.50, x"
    table = CliRunner().invoke(app, ["explain", C0, "--month", M, "--db", str(shipped), "--matrices", str(MATRICES)],
                               env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    assert "Decimal(" not in table.stdout
    # The view section shows the columns the rules read (arpu_3m, return_rate), as the lists show money.
    assert re.search(r"│ arpu_3m +│ 117\.32 ", table.stdout)
    assert re.search(r"│ return_rate +│ 91\.760427 ", table.stdout)
    assert "arpu_3m=117.32" in table.stdout


def test_before_matrix_and_plan_have_run_explain_shows_what_they_would_give(tmp_path: Path, open_db) -> None:
    db = tmp_path / "mk.duckdb"
    for args in (["ingest", str(FIXTURES)], ["score", "--month", M]):
        result = CliRunner().invoke(app, [*args, "--db", str(db), "--matrices", str(MATRICES)])
        assert result.exit_code == 0, result.output
    ex = explain(open_db(db), load_project(MATRICES), M, C0)
    assert (rule(ex, "retention", "R6").outcome, rule(ex, "retention", "R6").rank) == (FIRED, 1)
    assert ex.recommendations == []
    assert ex.notes == [f"matrix has not stored recommendations for {M}: the ranks shown are what it would give"]
    # C0's best plan under the shipped windows (0.6:1.5, 1.0:2.0) is FX88: 89.03 / 117.32 = 0.7589, 88 / 58 = 1.5172.
    best = ex.plan_pairs[0]
    assert (best["plan_id"], best["rank"], best["recommended_rank"], best["verdict"]) == ("FX88", 1, None,
                                                                                       IN_BOTH_WINDOWS)
    assert (best["new_total"], best["total_fee_change"], best["rental_change"]) == (
        Decimal("89.03"), Decimal("0.7589"), Decimal("1.5172"))
