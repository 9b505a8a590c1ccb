"""Marketing matrices (SPEC §4): first / collect / where / priority order, ranks, dedupe, bookkeeping.

Every test writes a tiny matrices folder into tmp_path (the shipped scores.yaml, so that rules
see the real customer_view column list) and a customer_view table with only the columns the
rules use, straight into a DuckDB file. Expected rows are worked out by hand in the comments.
"""

from __future__ import annotations

import csv
import io
import shutil
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
from conftest import MATRICES, M, fetch

from mktool.config import Settings
from mktool.database import Database
from mktool.errors import ConfigError, RuleError, StateError
from mktool.matrices import (
    PREVIEW_TABLE,
    collect_sql,
    evaluate,
    first_hit_sql,
    generated_sql,
    kept_rows_sql,
    ranking_sql,
    spark_sql,
    stats_sql,
)
from mktool.project import load_project, load_rules

SCORES = MATRICES / "scores.yaml"
PLAN = MATRICES / "plan.yaml"

CHANNELS = """\
channels:
  frontdesk: {cycle: monthly, capacity: null, format: parquet}
  outbound: {cycle: daily, capacity: 100, format: csv}
  inbound: {cycle: monthly, capacity: null, format: csv}
  sms: {cycle: daily, capacity: null, format: csv}
  app: {cycle: daily, capacity: null, format: jsonl}
"""

POLICIES = """\
policies:
  - {id: PREPAY_BIG, name: 预存300元送600元话费, family: retention, channels: [frontdesk, outbound]}
  - {id: PREPAY_SMALL, name: 预缴100元得260元话费, family: retention}
  - {id: NEWSPAPER, name: 手机报体验, family: new_service}
  - {id: CRBT, name: 彩铃体验, family: new_service}
  - {id: CRBT_GIFT, name: 彩铃赠送, family: new_service}
  - {id: MI_20, name: 20元上网包, family: new_service, exclusive_group: mi}
  - {id: MI_10, name: 10元上网包, family: new_service, exclusive_group: mi}
  - {id: LD_AH, name: 安徽长途通, family: traffic}
  - {id: PLAN_CHANGE, name: 套餐推荐, family: plan, channels: [inbound, outbound, sms]}
"""

PRIORITY = """\
matrix: priority
family: priority
hit: first
rules:
  - {id: P1, when: churn_flag, order: [retention, new_service]}
  - {id: P2, when: value_tier = 'low', order: [new_service, retention]}
  - {id: P3, when: true, order: [retention]}
"""

RETENTION = """\
matrix: retention
family: retention
hit: first
where: status = 'active'
rules:
  - {id: R1, when: arpu_3m >= 100, policy: PREPAY_BIG, group: 6, script: 预存300元送600元话费, channels: [frontdesk, outbound]}
  - {id: R2, when: arpu_3m >= 50, policy: PREPAY_SMALL, group: 5, channels: [sms]}
  - {id: R3, when: tenure_months > 12, policy: PREPAY_SMALL, group: 5, channels: [sms]}
"""  # noqa: E501 (a rule file as users write it: one flow mapping a rule)

NEW_SERVICE = """\
matrix: new_service
family: new_service
hit: collect
where: status = 'active'
rules:
  - {id: N1, when: newspaper_potential, policy: NEWSPAPER, channels: [sms]}
  - {id: N2, when: crbt_potential, policy: CRBT, channels: [sms, app]}
  - {id: N3, when: newspaper_potential AND arpu_3m > 80, policy: NEWSPAPER, channels: [app]}
"""

ADDON = """\
matrix: addon
family: new_service
hit: collect
where: status = 'active'
rules:
  - {id: A1, when: crbt_potential, policy: CRBT_GIFT, channels: [sms]}
"""

TRAFFIC = """\
matrix: traffic
family: traffic
hit: collect
where: status = 'active'
rules:
  - {id: T1, when: traffic_group = 'ld_called', policy: LD_AH, script: 安徽长途通, channels: [sms]}
"""

FILES = {"channels.yaml": CHANNELS, "policies.yaml": POLICIES, "priority.yaml": PRIORITY,
         "retention.yaml": RETENTION, "new_service.yaml": NEW_SERVICE, "addon.yaml": ADDON, "traffic.yaml": TRAFFIC}

VIEW_COLUMNS = ("msisdn VARCHAR, month VARCHAR, status VARCHAR, value_tier VARCHAR, churn_flag BOOLEAN, "
                "arpu_3m DOUBLE, tenure_months INTEGER, newspaper_potential BOOLEAN, crbt_potential BOOLEAN, "
                "traffic_group VARCHAR")


def view_row(msisdn: str, *, status: str = "active", tier: str = "mid", churn: bool | None = False,
             arpu: float = 30.0, tenure: int = 6, newspaper: bool = False, crbt: bool = False,
             traffic: str = "local", month: str = M) -> tuple[Any, ...]:
    return (msisdn, month, status, tier, churn, arpu, tenure, newspaper, crbt, traffic)


# The five customers of the worked example (priority rule, then offers by hand):
#   C1 churn → P1 [retention, new_service]: R1 PREPAY_BIG; addon A1; new_service N1, N2 (N3 repeats
#      NEWSPAPER: dropped); traffic T1 unnamed → last.  ranks 1..5
#   C2 low value → P2 [new_service, retention]: N1 NEWSPAPER, then R2 PREPAY_SMALL
#   C3 suspended → P3, but outside every offer matrix's where: no rows
#   C4 nothing matches (arpu 30, tenure 6): P3, no rows
#   C5 churn NULL (not true) → P3 [retention]: R1 (arpu exactly 100), T1 last
CUSTOMERS = [
    view_row("13800000001", churn=True, arpu=120, tenure=24, newspaper=True, crbt=True, traffic="ld_called"),
    view_row("13800000002", tier="low", arpu=60, tenure=5, newspaper=True),
    view_row("13800000003", status="suspended", tier="high", arpu=200, tenure=40, newspaper=True),
    view_row("13800000004"),
    view_row("13800000005", churn=None, arpu=100, tenure=13, traffic="ld_called"),
]

EXPECTED = [
    # msisdn, rank, matrix, family, rule_no, rule_id, policy_id, group, channels
    ("13800000001", 1, "retention", "retention", 1, "R1", "PREPAY_BIG", "6", ["frontdesk", "outbound"]),
    ("13800000001", 2, "addon", "new_service", 1, "A1", "CRBT_GIFT", None, ["sms"]),
    ("13800000001", 3, "new_service", "new_service", 1, "N1", "NEWSPAPER", None, ["sms"]),
    ("13800000001", 4, "new_service", "new_service", 2, "N2", "CRBT", None, ["sms", "app"]),
    ("13800000001", 5, "traffic", "traffic", 1, "T1", "LD_AH", None, ["sms"]),
    ("13800000002", 1, "new_service", "new_service", 1, "N1", "NEWSPAPER", None, ["sms"]),
    ("13800000002", 2, "retention", "retention", 2, "R2", "PREPAY_SMALL", "5", ["sms"]),
    ("13800000005", 1, "retention", "retention", 1, "R1", "PREPAY_BIG", "6", ["frontdesk", "outbound"]),
    ("13800000005", 2, "traffic", "traffic", 1, "T1", "LD_AH", None, ["sms"]),
]


def write_matrices(folder: Path, files: dict[str, str | None] | None = None) -> Path:
    """FILES with ``files`` laid over (None removes a file), plus the shipped scores.yaml and plan.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SCORES, folder / "scores.yaml")
    if PLAN.exists():
        shutil.copy(PLAN, folder / "plan.yaml")
    for name, text in {**FILES, **(files or {})}.items():
        if text is not None:
            (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def make_view(db_path: Path, rows: list[tuple[Any, ...]], columns: str = VIEW_COLUMNS) -> Path:
    con = duckdb.connect(str(db_path))
    con.execute(f"CREATE TABLE customer_view ({columns})")
    marks = ", ".join("?" * len(rows[0]))
    con.executemany(f"INSERT INTO customer_view VALUES ({marks})", rows)
    con.close()
    return db_path


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    """(matrices folder, database) of the worked example."""
    return write_matrices(tmp_path / "matrices"), make_view(tmp_path / "db.duckdb", CUSTOMERS)


def settings(db: Path) -> Settings:
    return Settings(db_path=db, memory_limit="1GB", threads=2)


def run_matrix(matrices: Path, db: Path, **kwargs: Any):
    proj = load_project(matrices)
    with Database(settings(db), write=not kwargs.get("dry_run", False)) as database:
        return evaluate(database, proj, M, **kwargs)


REC_SQL = ("SELECT msisdn, rank, matrix, family, rule_no, rule_id, policy_id, \"group\", channels "
           "FROM recommendations WHERE month = ? ORDER BY msisdn, rank")


# -- semantics ----------------------------------------------------------------------------------------
def test_worked_example_first_collect_where_priority_and_ranks(project: tuple[Path, Path]) -> None:
    matrices, db = project
    result = run_matrix(matrices, db)
    assert fetch(db, REC_SQL, [M]) == EXPECTED
    assert result.rows == 9 and result.customers == 3 and result.uncovered == 0
    names = fetch(db, "SELECT msisdn, policy_name, script FROM recommendations WHERE rule_id = 'R1' ORDER BY msisdn")
    assert names == [("13800000001", "预存300元送600元话费", "预存300元送600元话费"),
                     ("13800000005", "预存300元送600元话费", "预存300元送600元话费")]


def test_customer_priority_holds_every_customer_and_their_order(project: tuple[Path, Path]) -> None:
    matrices, db = project
    run_matrix(matrices, db)
    assert fetch(db, "SELECT msisdn, month, priority_rule_id, family_order FROM customer_priority ORDER BY msisdn") == [
        ("13800000001", M, "P1", ["retention", "new_service"]),
        ("13800000002", M, "P2", ["new_service", "retention"]),
        ("13800000003", M, "P3", ["retention"]),
        ("13800000004", M, "P3", ["retention"]),
        ("13800000005", M, "P3", ["retention"]),
    ]


def test_rule_hits_and_funnels(project: tuple[Path, Path]) -> None:
    matrices, db = project
    result = run_matrix(matrices, db)
    hits = fetch(db, "SELECT matrix, rule_no, rule_id, policy_id, hits FROM rule_hits WHERE month = ? "
                     "ORDER BY matrix, rule_no", [M])
    assert hits == [
        ("addon", 1, "A1", "CRBT_GIFT", 1),
        ("new_service", 1, "N1", "NEWSPAPER", 2),  # C1, C2 (C3 is outside the where)
        ("new_service", 2, "N2", "CRBT", 1),
        ("new_service", 3, "N3", "NEWSPAPER", 1),  # a hit, even though its row lost the dedupe
        ("priority", 1, "P1", None, 1),
        ("priority", 2, "P2", None, 1),
        ("priority", 3, "P3", None, 3),
        ("retention", 1, "R1", "PREPAY_BIG", 2),  # C1, C5
        ("retention", 2, "R2", "PREPAY_SMALL", 1),  # C2 (C1 matches too but R1 took it)
        ("retention", 3, "R3", "PREPAY_SMALL", 0),  # C1 and C5 match alone, both taken by R1
        ("traffic", 1, "T1", "LD_AH", 2),
    ]
    r3 = next(s for s in result.rules if s.rule_id == "R3")
    assert (r3.alone, r3.hits) == (2, 0)
    funnels = fetch(db, "SELECT funnel, stage, count FROM funnel_counts WHERE month = ? ORDER BY funnel, stage_no", [M])
    assert [f for f in funnels if f[0] in ("retention", "new_service", "priority")] == [
        ("new_service", "customers", 5), ("new_service", "where", 4), ("new_service", "matched", 2),
        ("new_service", "recommended", 2),
        ("priority", "customers", 5), ("priority", "where", 5), ("priority", "matched", 5),
        ("priority", "recommended", 3),
        ("retention", "customers", 5), ("retention", "where", 4), ("retention", "matched", 3),
        ("retention", "recommended", 3),
    ]


def test_same_policy_from_two_rules_keeps_the_better_ranked_row(project: tuple[Path, Path]) -> None:
    matrices, db = project
    run_matrix(matrices, db)
    rows = fetch(db, "SELECT rule_id, rank FROM recommendations WHERE msisdn = '13800000001' "
                     "AND policy_id = 'NEWSPAPER'")
    assert rows == [("N1", 3)]  # N3 gives NEWSPAPER too (arpu 120 > 80): dropped, and ranks stay 1..n


def test_exclusive_group_keeps_one_policy_of_the_group(tmp_path: Path) -> None:
    mi = """\
    matrix: new_service
    family: new_service
    hit: collect
    rules:
      - {id: N1, when: arpu_3m >= 100, policy: MI_20, channels: [sms]}
      - {id: N2, when: arpu_3m >= 10, policy: MI_10, channels: [sms]}
      - {id: N3, when: newspaper_potential, policy: NEWSPAPER, channels: [sms]}
    """
    matrices = write_matrices(tmp_path / "m", {"new_service.yaml": mi, "addon.yaml": None, "traffic.yaml": None,
                                               "retention.yaml": None})
    db = make_view(tmp_path / "db.duckdb", [view_row("13800000001", arpu=150, newspaper=True),
                                             view_row("13800000002", arpu=50)])
    run_matrix(matrices, db)
    assert fetch(db, "SELECT msisdn, rank, rule_id, policy_id FROM recommendations ORDER BY msisdn, rank") == [
        ("13800000001", 1, "N1", "MI_20"),  # N2's MI_10 is in the same exclusive group: dropped
        ("13800000001", 2, "N3", "NEWSPAPER"),
        ("13800000002", 1, "N2", "MI_10"),
    ]


def test_where_filters_and_null_condition_counts_as_false(tmp_path: Path) -> None:
    ret = """\
    matrix: retention
    family: retention
    hit: first
    where: status = 'active' AND tenure_months >= 12
    rules:
      - {id: R1, when: churn_flag, policy: PREPAY_BIG, channels: [frontdesk]}
      - {id: R2, when: NOT churn_flag, policy: PREPAY_SMALL, channels: [sms]}
    """
    matrices = write_matrices(tmp_path / "m", {"retention.yaml": ret, "new_service.yaml": None, "addon.yaml": None,
                                               "traffic.yaml": None})
    db = make_view(tmp_path / "db.duckdb", [
        view_row("13800000001", churn=True, tenure=12),
        view_row("13800000002", churn=False, tenure=20),
        view_row("13800000003", churn=None, tenure=20),  # neither rule: NULL is not true
        view_row("13800000004", churn=True, tenure=11),  # outside the where
    ])
    run_matrix(matrices, db)
    assert fetch(db, "SELECT msisdn, rule_id FROM recommendations ORDER BY msisdn") == [
        ("13800000001", "R1"), ("13800000002", "R2")]
    assert fetch(db, "SELECT stage, count FROM funnel_counts WHERE funnel = 'retention' ORDER BY stage_no") == [
        ("customers", 4), ("where", 3), ("matched", 2), ("recommended", 2)]


def test_priority_where_excludes_customers_without_error(tmp_path: Path) -> None:
    prio = """\
    matrix: priority
    family: priority
    where: status = 'active'
    rules:
      - {id: P1, when: true, order: [retention]}
    """
    matrices = write_matrices(tmp_path / "m", {"priority.yaml": prio, "new_service.yaml": None, "addon.yaml": None,
                                               "traffic.yaml": None})
    ret = load_rules(matrices)
    assert ret.priority.name == "priority"
    db = make_view(tmp_path / "db.duckdb", [view_row("13800000001", arpu=120),
                                             view_row("13800000002", arpu=120, status="closed")])
    run_matrix(matrices, db)
    assert fetch(db, "SELECT msisdn FROM customer_priority") == [("13800000001",)]
    assert fetch(db, "SELECT msisdn, rule_id FROM recommendations") == [("13800000001", "R1")]


def test_uncovered_customer_is_an_error_with_a_count(tmp_path: Path) -> None:
    prio = """\
    matrix: priority
    family: priority
    rules:
      - {id: P1, when: churn_flag, order: [retention]}
      - {id: P2, when: value_tier = 'low', order: [new_service]}
    """
    matrices = write_matrices(tmp_path / "m", {"priority.yaml": prio})
    db = make_view(tmp_path / "db.duckdb", CUSTOMERS)  # C3, C4, C5 match neither rule
    with pytest.raises(RuleError) as err:
        run_matrix(matrices, db)
    text = err.value.render()
    assert text.startswith(f"{matrices / 'priority.yaml'}:3 @ rules: 3 customers of 2026-10 match no priority rule")
    assert "example row: msisdn=13800000003, churn_flag=False, value_tier=high" in text
    assert "catch-all rule (`when: true`)" in text
    assert fetch(db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'recommendations'") == [(0,)]


def test_uncovered_single_customer_message(tmp_path: Path) -> None:
    prio = "matrix: priority\nfamily: priority\nrules:\n  - {id: P1, when: churn_flag, order: [retention]}\n"
    matrices = write_matrices(tmp_path / "m", {"priority.yaml": prio})
    db = make_view(tmp_path / "db.duckdb", [view_row("13800000001", churn=True), view_row("13800000002")])
    with pytest.raises(RuleError, match="1 customer of 2026-10 matches no priority rule"):
        run_matrix(matrices, db)


def test_policy_outside_its_validity_is_skipped_and_first_hit_falls_through(tmp_path: Path) -> None:
    policies = POLICIES.replace(
        "{id: PREPAY_BIG, name: 预存300元送600元话费, family: retention, channels: [frontdesk, outbound]}",
        "{id: PREPAY_BIG, name: 预存300元送600元话费, family: retention, channels: [frontdesk, outbound], "
        "valid_from: 2026-01-01, valid_to: 2026-09-30}")
    matrices = write_matrices(tmp_path / "m", {"policies.yaml": policies})
    db = make_view(tmp_path / "db.duckdb", CUSTOMERS)
    result = run_matrix(matrices, db)
    # R1 is skipped: C1 (arpu 120) and C5 (arpu 100) fall through to R2 PREPAY_SMALL.
    assert fetch(db, "SELECT msisdn, rule_id FROM recommendations WHERE matrix = 'retention' ORDER BY msisdn") == [
        ("13800000001", "R2"), ("13800000002", "R2"), ("13800000005", "R2")]
    assert result.warnings == [f"{matrices / 'retention.yaml'}:6 @ rules[0].policy (rule R1): "
                               "skipped: policy PREPAY_BIG not valid in "
                               "2026-10 (2026-01-01 to 2026-09-30)"]
    assert fetch(db, "SELECT rule_id FROM rule_hits WHERE matrix = 'retention' ORDER BY rule_no") == [("R2",), ("R3",)]


def test_policy_valid_part_of_the_month_is_kept(tmp_path: Path) -> None:
    policies = POLICIES.replace("{id: PREPAY_SMALL, name: 预缴100元得260元话费, family: retention}",
                                "{id: PREPAY_SMALL, name: 预缴100元得260元话费, family: retention, "
                                "valid_to: 2026-10-01}")
    matrices = write_matrices(tmp_path / "m", {"policies.yaml": policies})
    rules = load_rules(matrices)
    assert rules.policies["PREPAY_SMALL"].valid_in("2026-10")
    assert not rules.policies["PREPAY_SMALL"].valid_in("2026-11")


def test_dry_run_writes_nothing(project: tuple[Path, Path]) -> None:
    matrices, db = project
    result = run_matrix(matrices, db, dry_run=True)
    assert result.dry_run and result.rows == 9
    tables = {r[0] for r in fetch(db, "SELECT table_name FROM information_schema.tables")}
    assert tables == {"customer_view"}


def test_dry_run_keeps_the_preview_in_the_session(project: tuple[Path, Path]) -> None:
    matrices, db = project
    proj = load_project(matrices)
    with Database(settings(db), write=False) as database:
        evaluate(database, proj, M, dry_run=True)
        rows = database.c.execute(f"SELECT msisdn, rank, matrix, family, rule_no, rule_id, policy_id, \"group\", "
                                  f"channels FROM {PREVIEW_TABLE} ORDER BY msisdn, rank").fetchall()
    assert rows == EXPECTED


def test_rerun_replaces_the_month_and_keeps_other_months(project: tuple[Path, Path]) -> None:
    matrices, db = project
    con = duckdb.connect(str(db))
    con.executemany("INSERT INTO customer_view VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [view_row("13800000009", arpu=150, month="2026-09")])
    con.close()
    proj = load_project(matrices)
    with Database(settings(db), write=True) as database:
        evaluate(database, proj, "2026-09")
        evaluate(database, proj, M)
        evaluate(database, proj, M)
    assert fetch(db, "SELECT month, count(*) FROM recommendations GROUP BY month ORDER BY month") == [
        ("2026-09", 1), (M, 9)]
    assert fetch(db, "SELECT count(*) FROM rule_hits WHERE month = ?", [M]) == [(11,)]


def test_only_reevaluates_named_matrices_and_reranks_the_rest(project: tuple[Path, Path]) -> None:
    matrices, db = project
    run_matrix(matrices, db)
    # Retention now gives C2 nothing and C4 PREPAY_SMALL; new_service and the others keep their stored rows.
    (matrices / "retention.yaml").write_text(textwrap.dedent("""\
        matrix: retention
        family: retention
        hit: first
        where: status = 'active'
        rules:
          - {id: R1, when: arpu_3m >= 100, policy: PREPAY_BIG, group: 6, channels: [frontdesk]}
          - {id: R9, when: arpu_3m < 50, policy: PREPAY_SMALL, group: 5, channels: [sms]}
        """), encoding="utf-8")
    (matrices / "new_service.yaml").write_text(NEW_SERVICE.replace("newspaper_potential, policy", "false, policy"),
                                               encoding="utf-8")
    result = run_matrix(matrices, db, only=["retention"])
    assert [m.matrix for m in result.matrices] == ["priority", "retention"]
    assert fetch(db, "SELECT msisdn, rank, matrix, rule_id FROM recommendations WHERE month = ? ORDER BY msisdn, rank",
                 [M]) == [
        ("13800000001", 1, "retention", "R1"), ("13800000001", 2, "addon", "A1"),
        ("13800000001", 3, "new_service", "N1"),  # kept: new_service was not re-evaluated
        ("13800000001", 4, "new_service", "N2"), ("13800000001", 5, "traffic", "T1"),
        ("13800000002", 1, "new_service", "N1"),
        ("13800000004", 1, "retention", "R9"),
        ("13800000005", 1, "retention", "R1"), ("13800000005", 2, "traffic", "T1"),
    ]
    assert fetch(db, "SELECT rule_id, hits FROM rule_hits WHERE matrix = 'retention' ORDER BY rule_no") == [
        ("R1", 2), ("R9", 1)]
    assert fetch(db, "SELECT count(*) FROM rule_hits WHERE matrix = 'new_service'") == [(3,)]


def test_only_refuses_an_unknown_matrix(project: tuple[Path, Path]) -> None:
    matrices, db = project
    with pytest.raises(ConfigError, match="unknown matrix 'retenion' \\(did you mean 'retention'\\?\\)"):
        run_matrix(matrices, db, only=["retenion"])


def test_needs_customer_view_for_the_month(project: tuple[Path, Path]) -> None:
    matrices, db = project
    proj = load_project(matrices)
    with Database(settings(db), write=True) as database, pytest.raises(StateError) as err:
        evaluate(database, proj, "2026-11")
    assert "customer_view has no rows for month 2026-11 (months present: 2026-10)" in err.value.render()
    assert "run `mktool score --month 2026-11` first" in err.value.render()


def test_view_missing_a_rule_column_is_refused_before_running(tmp_path: Path) -> None:
    matrices = write_matrices(tmp_path / "m")
    db = make_view(tmp_path / "db.duckdb", [row[:-1] for row in CUSTOMERS],
                   VIEW_COLUMNS.replace(", traffic_group VARCHAR", ""))
    with pytest.raises(ConfigError, match="customer_view for 2026-10 lacks column traffic_group that the rules use"):
        run_matrix(matrices, db)


def test_runtime_sql_error_names_the_rule(tmp_path: Path) -> None:
    ns = """\
    matrix: new_service
    family: new_service
    hit: collect
    rules:
      - {id: N1, when: newspaper_potential, policy: NEWSPAPER, channels: [sms]}
      - {id: N2, when: "CAST(traffic_group AS INTEGER) > 1", policy: CRBT, channels: [sms]}
    """
    matrices = write_matrices(tmp_path / "m", {"new_service.yaml": ns})
    db = make_view(tmp_path / "db.duckdb", CUSTOMERS)
    with pytest.raises(RuleError) as err:
        run_matrix(matrices, db)
    assert err.value.render().startswith(f"{matrices / 'new_service.yaml'}:6 @ rules[1].when (rule N2): "
                                         "DuckDB: Conversion Error")


# -- generated SQL ----------------------------------------------------------------------------------
def test_generated_sql_is_portable_to_spark(project: tuple[Path, Path]) -> None:
    matrices, _ = project
    rules = load_rules(matrices)
    duck = generated_sql(rules, M)
    spark = generated_sql(rules, M, dialect="spark")
    assert set(duck) == set(spark) == {
        "priority", "priority:stats", "retention", "retention:stats", "new_service", "new_service:stats",
        "addon", "addon:stats", "traffic", "traffic:stats", "ranking", "customer_priority"}
    assert "UNION ALL" in duck["new_service"] and duck["retention"].count("CASE") == 1
    for sql in spark.values():
        sqlglot.parse_one(sql, read="spark")  # what we produced for Spark parses as Spark
    assert "ARRAY" not in spark["ranking"] or "ARRAY(" in spark["ranking"]


def test_shipped_matrices_transpile_to_spark() -> None:
    rules = load_rules(MATRICES)
    for name, sql in generated_sql(rules, M, dialect="spark").items():
        assert sql.strip(), name
    ranking = spark_sql(ranking_sql(M))
    assert ranking.count("ROW_NUMBER() OVER") == 2 and "`group`" in ranking
    for sql in kept_rows_sql(M, ["traffic", "o'dd"]):
        assert "'o''dd'" in sql and spark_sql(sql)


def test_sql_builders_shapes(project: tuple[Path, Path]) -> None:
    rules = load_rules(project[0])
    ret = rules.matrix("retention")
    first = first_hit_sql(ret, ret.rules, M)
    assert "WHEN (arpu_3m >= 100) THEN 1" in first and "WHERE rule_no IS NOT NULL" in first
    assert "month = '2026-10' AND (status = 'active')" in first
    ns = rules.matrix("new_service")
    assert collect_sql(ns, ns.rules, M).count("SELECT msisdn") == 3
    assert "alone_3" in stats_sql(ns, ns.rules, M)
    assert first_hit_sql(ret, [], M).endswith("WHERE 1 = 0")
    with pytest.raises(Exception, match="is not YYYY-MM"):
        first_hit_sql(ret, ret.rules, "2026-10'; DROP TABLE x; --")


# -- the command --------------------------------------------------------------------------------------
def test_matrix_command_writes_and_prints_hits(cli, project: tuple[Path, Path]) -> None:
    matrices, db = project
    result = cli("matrix", "--month", M, "--matrices", str(matrices), db_path=db)
    assert result.exit_code == 0, result.output
    assert "Rule hits 2026-10" in result.stderr and "Matrix funnels 2026-10" in result.stderr
    assert "recommendations 2026-10 has 9 rows for 3 customers" in result.stderr
    assert fetch(db, REC_SQL, [M]) == EXPECTED


def test_matrix_command_out_csv_to_stdout(cli, project: tuple[Path, Path]) -> None:
    matrices, db = project
    result = cli("matrix", "--month", M, "--matrices", str(matrices), "--out", "-", "-q", db_path=db)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["msisdn", "month", "rank", "matrix", "family", "rule_no", "rule_id", "policy_id",
                       "policy_name", "group", "script", "channels"]
    assert [(r[0], r[2], r[6]) for r in rows[1:]] == [(e[0], str(e[1]), e[5]) for e in EXPECTED]


def test_matrix_command_dry_run(cli, project: tuple[Path, Path]) -> None:
    matrices, db = project
    result = cli("matrix", "--month", M, "--matrices", str(matrices), "--dry-run", db_path=db)
    assert result.exit_code == 0, result.output
    assert "Rule hits 2026-10 (dry run)" in result.stderr
    assert "would have 9 rows for 3 customers (dry run, nothing written)" in result.stderr
    assert {r[0] for r in fetch(db, "SELECT table_name FROM information_schema.tables")} == {"customer_view"}
    refused = cli("matrix", "--month", M, "--matrices", str(matrices), "--dry-run", "--out", "x.csv", db_path=db)
    assert refused.exit_code == 2 and "--dry-run writes nothing" in refused.stderr  # a usage error


def test_matrix_command_uncovered_exit_1(cli, tmp_path: Path) -> None:
    prio = "matrix: priority\nfamily: priority\nrules:\n  - {id: P1, when: churn_flag, order: [retention]}\n"
    matrices = write_matrices(tmp_path / "m", {"priority.yaml": prio})
    db = make_view(tmp_path / "db.duckdb", CUSTOMERS)
    result = cli("matrix", "--month", M, "--matrices", str(matrices), db_path=db)
    assert result.exit_code == 1
    assert ("Error: " + str(matrices / "priority.yaml") + ":3 @ rules: 4 customers of 2026-10 match no priority rule"
            in result.stderr)


def test_matrix_command_refuses_bad_rules_before_touching_the_db(cli, tmp_path: Path) -> None:
    bad = RETENTION.replace("arpu_3m >= 50", "arpu3m >= 50")
    matrices = write_matrices(tmp_path / "m", {"retention.yaml": bad})
    db = make_view(tmp_path / "db.duckdb", CUSTOMERS)
    result = cli("matrix", "--month", M, "--matrices", str(matrices), db_path=db)
    assert result.exit_code == 1
    assert (f"Error: {matrices / 'retention.yaml'}:7 @ rules[1].when (rule R2): unknown column 'arpu3m' "
            "(did you mean 'arpu_3m'?)") in result.stderr


def test_matrix_command_show_sql(cli, project: tuple[Path, Path]) -> None:
    matrices, db = project
    result = cli("matrix", "--month", M, "--matrices", str(matrices), "--show-sql", "spark", "--only", "traffic",
                 db_path=db)
    assert result.exit_code == 0, result.output
    assert "-- priority\n" in result.stdout and "-- traffic\n" in result.stdout
    assert "-- retention\n" not in result.stdout
    assert "`group`" in result.stdout  # Spark quoting of the reserved word


def test_shipped_defaults_end_to_end(cli, tmp_path: Path) -> None:
    """ingest → score → matrix on a few rows with the shipped rule files: R6 and the Anhui pack fire."""
    from conftest import month_rows, write_table

    months = ["2026-08", "2026-09", M]
    ext = tmp_path / "ext"
    subs = (month_rows("13900000001", months, join_date="2020-01-15", status="active")
            + month_rows("13900000002", months, join_date="2021-03-01", status="active"))
    write_table(ext / "subscribers.parquet", "subscribers",
                [{**r, "join_date": __import__("datetime").date(2020, 1, 15)} for r in subs])
    write_table(ext / "usage.parquet", "usage",
                month_rows("13900000001", months, voice_local_min=20.0, voice_ld_out_min=10.0, voice_ld_in_min=200.0,
                           voice_roam_min=0.0, ld_top_province="安徽")
                + month_rows("13900000002", months))
    write_table(ext / "billing.parquet", "billing",
                month_rows("13900000001", months, total_fee=120.0) + month_rows("13900000002", months, total_fee=120.0))
    write_table(ext / "plans.parquet", "plans", [{"plan_id": "ZX128"}])
    assert cli("ingest", str(ext)).exit_code == 0
    assert cli("score", "--month", M).exit_code == 0
    result = cli("matrix", "--month", M, "--matrices", str(MATRICES))
    assert result.exit_code == 0, result.output
    db = cli.db
    got = fetch(db, "SELECT msisdn, matrix, rule_id, policy_id, \"group\" FROM recommendations "
                    "WHERE rule_id IN ('R6', 'T1') ORDER BY msisdn, rule_id")
    assert ("13900000001", "retention", "R6", "PREPAY_300_600", "6") in got
    assert ("13900000001", "traffic", "T1", "LD_PACK_AH", None) in got
