"""`mktool test`: rule unit tests, run in memory against the real matrix and plan SQL.

The shipped matrices and their cases in matrices/tests must pass with full coverage; a
deliberately broken rule (changed threshold, wrong column, wrong expected policy) must fail
with a message that names the test file, the case, the rule file and the rule. Each broken
variant works on a copy of the shipped matrices folder in tmp_path.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import duckdb
import pytest
from conftest import FIXTURES, MATRICES, ROOT, M, edit

from mktool.cli import app
from mktool.contract import TABLES
from mktool.errors import ConfigError
from mktool.rules import matrix_files
from mktool.ruletest import (
    DEFAULT_CUSTOMER,
    DERIVED,
    CustomerBuilder,
    MemoryDatabase,
    default_customer_rows,
    discover,
    run_tests,
)
from mktool.scoremodel import load_score_model, view_params, view_sql


def run(runner, *args: str):
    return runner.invoke(app, ["test", *args])


R6_WHEN = "when: tenure_months > 12 and return_rate > 86 and arpu_3m >= 100 and arpu_3m < 150"


# -- the shipped rules pass their shipped cases --------------------------------------------------------
@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """One `mktool test --strict --format json` of every shipped case; the tests below read it."""
    from typer.testing import CliRunner

    junit = tmp_path_factory.mktemp("junit") / "rules.xml"
    result = CliRunner().invoke(app, ["test", "--matrices", str(MATRICES), "--strict", "--format", "json",
                                      "--junit", str(junit)])
    return result, json.loads(result.stdout), junit


def test_shipped_cases_pass_with_full_coverage(shipped) -> None:
    result, doc, junit = shipped
    assert result.exit_code == 0, result.output
    found = re.search(r"(\d+) of (\d+) rule tests passed \((\d+) files\)", result.stderr)
    assert found and found.group(1) == found.group(2) and int(found.group(1)) >= 100
    assert "every rule has a case where it fires and one where it does not" in result.stderr
    assert doc["failed"] == doc["errors"] == 0 and doc["passed"] == len(doc["cases"])
    suites = ET.fromstring(junit.read_text(encoding="utf-8"))
    assert sum(int(s.get("tests", 0)) for s in suites.findall("testsuite")) == doc["passed"]


def test_every_shipped_rule_has_a_firing_and_a_non_firing_case(shipped) -> None:
    _, doc, _ = shipped
    from mktool.project import load_rules

    rules = load_rules(MATRICES)
    assert {(c["matrix"], c["rule"]) for c in doc["coverage"]} == {(m.name, r.id) for m in rules.matrices
                                                                   for r in m.rules}
    assert all(c["fires"] and c["does_not_fire"] for c in doc["coverage"])


def test_the_seed_examples_are_among_the_cases(shipped) -> None:
    by_name = {c["case"]: c for c in shipped[1]["cases"]}
    r6 = by_name["R6 fires at the lower edge of every band (tenure 13, return rate 87, arpu_3m 100)"]
    assert r6["status"] == "pass"
    assert r6["actual"][0]["policy_id"] == "PREPAY_300_600" and r6["actual"][0]["group"] == "6"
    spec = by_name["SPEC §5 - with the rental window at 1.0-1.3, 自选组合158 at 228.00, 104% / 123%"]
    assert spec["status"] == "pass"
    row = spec["actual"][0]
    assert row["plan_id"] == "ZX158" and row["plan_name"] == "自选组合158"
    assert round(row["new_total"], 2) == 228.00 and round(row["current_total"], 2) == 220.00
    assert round(row["total_fee_change"], 4) == 1.0364 and round(row["rental_change"], 4) == 1.2344


def test_the_spec_customer_against_all_18_seed_plans(shipped) -> None:
    """With plan.yaml's windows the top plan is 自选组合188 (218 yuan, 99%); 自选组合158 is second."""
    case = next(c for c in shipped[1]["cases"] if c["case"].startswith("SPEC §5 - with plan.yaml's windows"))
    assert case["status"] == "pass"
    assert [a["plan_id"] for a in case["actual"]] == ["ZX188", "ZX158"]
    assert round(case["actual"][1]["new_total"], 2) == 228.00


def test_the_inline_seed_plans_are_the_reference_csv(tmp_path: Path) -> None:
    """matrices/tests/plan.yaml carries the 18 plans of fixtures/reference/plans_4g_seed.csv."""
    import csv

    import yaml

    inline = yaml.safe_load((MATRICES / "tests" / "plan.yaml").read_text(encoding="utf-8"))["plans"]
    with open(ROOT / "fixtures" / "reference" / "plans_4g_seed.csv", encoding="utf-8") as fh:
        reference = list(csv.DictReader(fh))
    assert len(inline) == len(reference) == 18
    for a, b in zip(inline, reference):
        for key in ("plan_id", "plan_name", "monthly_rental", "included_data_mb", "included_voice_min",
                    "data_overage_per_mb", "voice_overage_per_min"):
            assert str(a[key]) == b[key] or float(a[key]) == float(b[key]), (a, b, key)


def test_plans_file_reads_the_reference_csv(tmp_path: Path) -> None:
    tests = tmp_path / "m" / "tests"
    shutil.copytree(MATRICES, tmp_path / "m", ignore=shutil.ignore_patterns("tests"))
    tests.mkdir()
    (tests / "plan.yaml").write_text(textwrap.dedent(f"""\
        month: "2026-10"
        plans_file: {ROOT / 'fixtures' / 'reference' / 'plans_4g_seed.csv'}
        plan_cases:
          - case: the SPEC customer from the CSV catalogue
            customer: {{plan_id: ZX128, rental_3m: 128, data_overage_3m: 62, addon_3m: 30, data_mb_3m: 737.93,
                       voice_min_3m: 300}}
            config: {{top: 2}}
            expect: [{{plan_id: ZX188}}, {{plan_id: ZX158, new_total: 228.00, total_fee_change: "104%"}}]
        """), encoding="utf-8")
    report = run_tests(tmp_path / "m")
    assert [r.status for r in report.results] == ["pass"], [r.message for r in report.results]


# -- deliberately broken rules fail, naming the file, the rule and the case ---------------------------------
def test_a_changed_threshold_fails_naming_file_rule_and_case(runner, matrices: Path) -> None:
    edit(matrices / "retention.yaml", R6_WHEN, R6_WHEN.replace("return_rate > 86", "return_rate > 80"))
    result = run(runner, "--matrices", str(matrices), "retention.yaml")
    assert result.exit_code == 5, result.output
    err = result.stderr
    assert f'FAIL {matrices / "tests" / "retention.yaml"}: case "R6 does not fire at return rate 86' in err
    assert f"matrix retention ({matrices / 'retention.yaml'}), rule R6: rank 1: expected PREPAY_200_300 " \
           f"(rule R9, group 3), got PREPAY_300_600 (rule R6, group 6)" in err
    assert "customer: tenure_months=13, return_rate=86, arpu_3m=100" in err
    assert re.search(r"✗\s+1\s+PREPAY_200_300 \(rule R9, group 3\)\s+PREPAY_300_600 \(rule R6, group 6\)", err)
    assert "rule tests passed" in err and "failed" in err


def test_a_wrong_column_fails_every_case_of_its_matrix(runner, matrices: Path) -> None:
    edit(matrices / "retention.yaml", R6_WHEN, R6_WHEN.replace("arpu_3m >= 100", "arpu3m >= 100"))
    result = run(runner, "--matrices", str(matrices))
    assert result.exit_code == 5, result.output
    err = result.stderr
    assert (f"{matrices / 'retention.yaml'}:47 @ rules[5].when (rule R6): "
            "unknown column 'arpu3m' (did you mean 'arpu_3m'?)") in err
    assert f'ERROR {matrices / "tests" / "retention.yaml"}: case "R6 fires at the lower edge' in err
    assert "matrix retention: the rules do not load" in err
    assert "could not run" in err


def test_a_valid_but_wrong_column_fails_by_outcome(matrices: Path) -> None:
    """arpu (this month) instead of arpu_3m: the rule still loads, but the cases catch it."""
    edit(matrices / "retention.yaml", R6_WHEN, R6_WHEN.replace("arpu_3m >= 100 and arpu_3m < 150",
                                                               "arpu >= 100 and arpu < 150"))
    report = run_tests(matrices, pattern="retention.yaml")
    failed = {r.case.name for r in report.failed}
    # The cases leave arpu at the default customer's 128: R6 now fires on it whatever arpu_3m is.
    assert "R6 fires at the lower edge of every band (tenure 13, return rate 87, arpu_3m 100)" not in failed
    assert {"R6 does not fire just under arpu_3m 100 (R7)", "R7 fires at arpu_3m 50", "R8 fires at arpu_3m 0"} <= failed
    assert all(r.status == "fail" and "rule" in r.message for r in report.failed)


def test_a_wrong_expected_policy_fails(runner, matrices: Path) -> None:
    edit(matrices / "tests" / "retention.yaml",
         "expect: [{policy: PREPAY_300_600, rule: R6, group: 6, script: 预存300元送600元话费}]",
         "expect: [{policy: PREPAY_100_260, rule: R6, group: 6}]")
    result = run(runner, "--matrices", str(matrices), "-q", "retention.yaml")
    assert result.exit_code == 5
    assert 'case "R6 fires at the lower edge of every band' in result.stderr
    assert "rule R6: rank 1: expected PREPAY_100_260 (rule R6, group 6), got PREPAY_300_600 (rule R6, group 6)" \
        in result.stderr
    assert "Rule tests" not in result.stderr  # --quiet: no table, only the failures


def test_an_unknown_expected_policy_is_an_error_with_a_suggestion(matrices: Path) -> None:
    edit(matrices / "tests" / "vnet.yaml", "expect: [{policy: VNET_JOIN, rule: V2}]",
         "expect: [{policy: VNET_JION, rule: V2}]")
    report = run_tests(matrices, pattern="vnet.yaml")
    bad = [r for r in report.results if r.status == "error"]
    assert len(bad) == 1 and "unknown policy 'VNET_JION' (did you mean 'VNET_JOIN'?)" in bad[0].message
    assert bad[0].message.startswith(str(matrices / "tests" / "vnet.yaml"))


def test_a_priority_change_fails_the_priority_and_ranking_cases(matrices: Path) -> None:
    edit(matrices / "priority.yaml", "order: [traffic, new_service]", "order: [new_service, traffic]")
    report = run_tests(matrices, pattern="P8")
    failed = {(Path(r.case.file).name, r.case.name) for r in report.failed}
    assert ("priority.yaml", "P8 fires for low value") in failed
    ranking = "P8 (low value) - traffic first, new services, and retention, which P8 does not name, last"
    assert ("ranking.yaml", ranking) in failed
    msg = next(r.message for r in report.failed if r.case.name == "P8 fires for low value")
    assert "matrix priority" in msg and "rule P8" in msg and "order [traffic, new_service]" in msg


def test_a_changed_plan_window_fails_the_plan_cases(matrices: Path) -> None:
    edit(matrices / "plan.yaml", 'rental_change: "1.00:2.00"', 'rental_change: "1.00:1.40"')
    report = run_tests(matrices, pattern="plan.yaml")
    msgs = [r.message for r in report.failed]
    assert any("plan (" in m and "plan.yaml; total change 0.6:1.5, rental change 1.0:1.4" in m
               and "expected rank 1: plan_id=ZX188, new_total=218.00, got plan_id=ZX158, new_total=228.00" in m
               for m in msgs), msgs


# -- the case customer ------------------------------------------------------------------------------------
def test_derived_columns_match_the_real_customer_view() -> None:
    """DERIVED's formulas, applied to the real view's inputs, give the real view's values (fixture data)."""
    model = load_score_model(MATRICES)
    con = duckdb.connect()
    for t in TABLES.values():
        files = sorted(FIXTURES.glob(f"{t.name}*.parquet"))
        cols = ", ".join(f'"{c.name}" {c.type}' for c in t.columns)
        con.execute(f'CREATE TABLE "{t.name}" ({cols})')
        for f in files:
            con.execute(f'INSERT INTO "{t.name}" BY NAME SELECT {", ".join(c.name for c in t.columns)} '
                        f"FROM read_parquet('{f}')")
    con.execute(f"CREATE TABLE v AS {view_sql(model, has_vas=True)}", view_params(M))
    p = view_params(M)
    for col, formula in DERIVED.items():
        expr = formula.format(month_index=p["month_index"], month_end=p["month_end"], horizon_3m=p["horizon_3m"])
        # current_total_3m is the exact average of the three-item sums rounded to 6 decimals once;
        # the sum of the four 6-decimal averages is within 4 × 0.0000005 of it
        tolerance = 2e-6 if col == "current_total_3m" else 1e-9
        bad = con.execute(f"SELECT count(*) FROM v WHERE ({expr}) IS DISTINCT FROM {col} "
                          f"AND NOT (abs(CAST(({expr}) AS DOUBLE) - CAST({col} AS DOUBLE)) <= {tolerance})"
                          if col not in ("month_end", "contract_ends_3m", "bundle_ends_3m")
                          else f"SELECT count(*) FROM v WHERE ({expr}) IS DISTINCT FROM {col}").fetchone()[0]
        assert bad == 0, f"{col}: {bad} rows differ from the view"
    assert con.execute("SELECT count(*) FROM v").fetchone()[0] == 2000


def test_the_default_customer_and_score_derivation() -> None:
    rows = {r[0]: r for r in default_customer_rows(MATRICES, M)}
    assert set(rows) == set(load_score_model(MATRICES).output_columns)
    assert rows["tenure_months"][2] == "24" and rows["join_date"][2] == "2024-10-01"
    assert rows["current_total_3m"][2] == "128.000000" and rows["current_total_3m"][3] == "derived"  # exact, 6 decimals
    assert rows["in_net_share"][2] == "0.5"
    assert rows["stickiness_tier"][2:] == ("none", "scores.yaml")
    assert rows["segment"][2] == "potential" and rows["value_tier"][2] == "mid"
    assert rows["msisdn"][3] == "assigned"
    assert set(DEFAULT_CUSTOMER) | set(DERIVED) | {"msisdn", "month", "join_date"} >= \
        {c for c in load_score_model(MATRICES).output_columns if rows[c][3] != "scores.yaml"}


def test_given_scores_override_and_feed_later_scores() -> None:
    model = load_score_model(MATRICES)
    builder = CustomerBuilder(model)
    with MemoryDatabase() as db:
        builder.create(db.c, M, [
            ("13900000001", {"churn_flag": True, "value_tier": "high"}),  # given: segment follows it
            ("13900000002", {"arpu": 10.0, "arpu_prev": 100.0, "contract_ends_3m": True}),  # 20 + 15: derived flag
            ("13900000003", {"join_date": __import__("datetime").date(2026, 4, 15)}),  # tenure from join_date
        ])
        got = db.c.execute("SELECT msisdn, churn_score, churn_flag, segment, tenure_months, tenure_cohort "
                           "FROM customer_view ORDER BY msisdn").fetchall()
    assert got[0][2] is True and got[0][3] == "high_end_volatile"
    assert got[1][1] == 35 and got[1][2] is True and got[1][3] == "low_end_volatile"
    assert got[2][4] == 6 and got[2][5] == "6_12m"


def test_customer_values_are_checked_per_column() -> None:
    builder = CustomerBuilder(load_score_model(MATRICES))
    from mktool.ruletest import Case

    case = Case(file="t.yaml", no=1, name="x", kind="matrix", customer={})
    with pytest.raises(ConfigError, match=r"t.yaml: case \"x\": customer: arpu3m: unknown customer_view column "
                                          r"\(did you mean 'arpu_3m'\?\)"):
        builder.check(case, {"arpu3m": 1})
    with pytest.raises(ConfigError, match=r"customer: tenure_months: expected a whole number, got 'long'"):
        builder.check(case, {"tenure_months": "long"})
    with pytest.raises(ConfigError, match=r"customer: vnet: expected true or false"):
        builder.check(case, {"vnet": "yes"})
    with pytest.raises(ConfigError, match=r"customer: msisdn: is set by mktool test"):
        builder.check(case, {"msisdn": "13800000000"})
    assert builder.check(case, {"bundle_end": "2026-12-31", "group_id": 7}) == {
        "bundle_end": __import__("datetime").date(2026, 12, 31), "group_id": "7"}


# -- test files ---------------------------------------------------------------------------------------------
def write_tests(folder: Path, name: str, text: str) -> Path:
    path = folder / "tests" / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_includes_excludes_and_rank(matrices: Path) -> None:
    shutil.rmtree(matrices / "tests")
    (matrices / "tests").mkdir()
    write_tests(matrices, "x.yaml", """\
        month: "2026-10"
        matrix: new_service
        customer: {handset_gen: 4G, sms_count: 40, contacts: 35, voice_min_3m: 200, data_mb_3m: 400}
        cases:
          - case: includes at a rank
            includes: [{policy: CRBT_TRIAL, rank: 2}]
          - case: excludes a rule and a policy
            excludes: [N5, MI_PACK_10]
          - case: wrong rank
            includes: [{policy: CRBT_TRIAL, rank: 1}]
          - case: excluded but present
            rule: N1
            excludes: [NEWSPAPER_TRIAL]
        """)
    report = run_tests(matrices)
    status = {r.case.name: r for r in report.results}
    assert status["includes at a rank"].ok and status["excludes a rule and a policy"].ok
    assert status["wrong rank"].status == "fail"
    assert "expected among the offers: CRBT_TRIAL" in status["wrong rank"].message
    assert ("expected no NEWSPAPER_TRIAL, got NEWSPAPER_TRIAL (rule N1) at rank 1"
            in status["excluded but present"].message)
    assert any("actual:" in d for d in status["wrong rank"].details)


def test_malformed_test_files_name_the_file_and_case(runner, matrices: Path) -> None:
    write_tests(matrices, "bad.yaml", """\
        cases:
          - case: nothing to check
            matrix: retention
            customer: {tenure_months: 13}
        """)
    result = run(runner, "--matrices", str(matrices))
    assert result.exit_code == 1
    assert f'{matrices / "tests" / "bad.yaml"}: case "nothing to check": nothing to check' in result.stderr


def test_unknown_matrix_and_rule_are_errors(matrices: Path) -> None:
    write_tests(matrices, "typo.yaml", """\
        month: "2026-10"
        cases:
          - case: matrix typo
            matrix: retension
            expect: no offer
          - case: rule typo
            matrix: retention
            rule: R66
            expect: no offer
        """)
    report = run_tests(matrices, pattern="typo")
    msgs = [r.message for r in report.results]
    assert report.results[0].status == "error" and "unknown matrix 'retension' (did you mean 'retention'?)" in msgs[0]
    assert "'R66' is not a rule of matrix retention" in msgs[1]


def test_pattern_selects_cases_and_an_unmatched_pattern_is_an_error(runner) -> None:
    report = run_tests(MATRICES, pattern="R6*")
    assert report.results and all(r.case.rule == "R6" or r.case.name.startswith("R6") for r in report.results)
    assert report.coverage == []  # coverage only for a full run
    result = run(runner, "--matrices", str(MATRICES), "no-such-case-anywhere")
    assert result.exit_code == 1 and "no test case matches 'no-such-case-anywhere'" in result.stderr


def test_json_and_junit_reports(runner, matrices: Path, tmp_path: Path) -> None:
    edit(matrices / "traffic.yaml", "policy: LD_PACK_HA", "policy: LD_PACK_JX")
    junit = tmp_path / "reports" / "rules.xml"
    result = run(runner, "--matrices", str(matrices), "--format", "json", "--junit", str(junit), "traffic")
    assert result.exit_code == 5
    import json

    doc = json.loads(result.stdout)
    assert doc["failed"] == 1 and doc["passed"] == len(doc["cases"]) - 1
    bad = next(c for c in doc["cases"] if c["status"] == "fail")
    assert bad["case"] == "T2 fires for Henan" and bad["actual"][0]["policy_id"] == "LD_PACK_JX"
    suites = ET.fromstring(junit.read_text(encoding="utf-8"))
    suite = next(s for s in suites.findall("testsuite") if s.get("name", "").endswith("traffic.yaml"))
    assert suite.get("failures") == "1" and suite.get("errors") == "0"
    failure = suite.find("testcase/failure")
    assert failure is not None and "rule T2" in failure.get("message", "")


def test_defaults_prints_the_default_customer(runner) -> None:
    result = run(runner, "--matrices", str(MATRICES), "--defaults", "--month", M)
    assert result.exit_code == 0
    assert "stickiness_tier" in result.stdout and "scores.yaml" in result.stdout and "2024-10-01" in result.stdout


def test_no_tests_is_a_warning(runner, tmp_path: Path) -> None:
    shutil.copytree(MATRICES, tmp_path / "m", ignore=shutil.ignore_patterns("tests"))
    result = run(runner, "--matrices", str(tmp_path / "m"))
    assert result.exit_code == 0 and "no rule tests in" in result.stderr


def test_test_files_are_not_matrices_and_matrix_tests_sections_are_read(tmp_path: Path) -> None:
    """rules.matrix_files skips tests/; a matrix file's own `tests:` list is discovered (scope: that matrix)."""
    assert not any("tests" in p.relative_to(MATRICES).parts for p in matrix_files(MATRICES))
    folder = tmp_path / "m"
    shutil.copytree(MATRICES, folder, ignore=shutil.ignore_patterns("tests"))
    with open(folder / "vnet.yaml", "a", encoding="utf-8") as fh:
        fh.write("\ntests:\n  - case: in-file case\n    customer: {contacts: 20, contacts_in_net: 14}\n"
                 "    expect: [VNET_JOIN]\n")
    files, problems = discover(folder)
    assert problems == []
    assert [(c.name, c.matrix) for f in files for c in f.cases] == [("in-file case", "vnet")]


def test_the_cli_runs_without_a_database(runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["test", "--matrices", str(MATRICES), "vnet", "--db", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []  # no database, lock or spill folder


# -- rendering: every message escaped once -----------------------------------------------------------
def test_a_warning_and_a_failure_quoting_brackets_print_as_written(runner, matrices: Path) -> None:
    """`[arpu]` in a rule file reaches `check`'s warning and `test`'s warning, table and failure verbatim.

    rich markup would swallow an unescaped ``[arpu]``; one escape too many shows ``\\[arpu]``.
    """
    edit(matrices / "priority.yaml", "order: [retention, vnet, new_service, traffic]",
         'order: [retention, vnet, new_service, traffic, "[arpu]"]')
    tests = matrices / "tests" / "priority.yaml"
    edit(tests, "case: P1 fires for a high-value customer with a churn signal",
         "case: P1 [arpu] fires for a high-value customer with a churn signal")
    edit(tests, "expect: {rule: P1, order: [retention, vnet, new_service, traffic]}",
         'expect: {rule: P1, order: [retention, vnet, new_service, traffic, "[arpu]"]}')  # passes
    edit(tests, "expect: {rule: P5, order: [retention, traffic, new_service]}",
         'expect: {rule: P5, order: [retention, "[arpu]"]}')  # fails: P5's order has no [arpu]
    warning = (f"Warning: {matrices / 'priority.yaml'}:20 @ rules[0].order (rule P1): no matrix has family '[arpu]' "
               "(families: new_service, retention, traffic, vnet)")

    checked = runner.invoke(app, ["check", "--matrices", str(matrices)])
    assert checked.exit_code == 0, checked.output
    assert warning in checked.stderr
    assert "\\[" not in checked.stderr

    result = run(runner, "--matrices", str(matrices), "priority.yaml")
    assert result.exit_code == 5, result.output
    err = result.stderr
    assert warning in err
    assert "P1 [arpu] fires for a high-value customer" in err  # the table's case column
    assert (f"matrix priority ({matrices / 'priority.yaml'}), rule P1: expected rule P5, order [retention, [arpu]], "
            "got rule P5, order [retention, traffic, new_service]") in err
    assert "\\[" not in err


def test_failure_diffs_align_by_terminal_cells() -> None:
    """The expected/actual columns of a failure diff line up with CJK scripts (two cells a character)."""
    from rich.cells import cell_len

    from mktool.ruletest.judging import cell_width

    for text in ("PREPAY_300_600 (rule R6, group 6)", "自选组合128", "ＡＢ", "e\u0301te\u0301", "한국어", "ｶﾀｶﾅ",
                 "\x07", "😀 ok", ""):
        assert cell_width(text) == cell_len(text), text


# -- the package: layered by role, one in-memory Database ---------------------------------------------
def test_ruletest_modules_import_in_one_direction_at_the_top_and_never_rich() -> None:
    """cases <- customers <- judging <- reports; no import inside a function; terminal rendering is mktool.render."""
    import ast

    order = ["cases", "customers", "judging", "reports"]
    package = ROOT / "mktool" / "ruletest"
    assert sorted(p.stem for p in package.glob("*.py")) == sorted(["__init__", *order])
    for i, name in enumerate(order):
        tree = ast.parse((package / f"{name}.py").read_text(encoding="utf-8"))
        top = set(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                # pyarrow (with numpy, 80 ms at every CLI start) is imported where the test customers are built
                assert node in top or modules == ["pyarrow"], f"{name}.py:{node.lineno}: import inside a function"
                for module in modules:
                    assert not module.startswith("rich"), f"{name}.py imports {module}"
                    if module.startswith("mktool.ruletest"):
                        assert module.split(".")[2] in order[:i], f"{name}.py imports {module}"


def test_the_memory_database_is_a_wrapped_connection(tmp_path: Path) -> None:
    """MemoryDatabase hands the steps a real Database (Database.wrap) whose `with` leaves the connection open."""
    from mktool.config import Settings
    from mktool.database import Database

    with MemoryDatabase() as db:
        assert type(db) is Database and db.settings.threads == 2 and str(db.path) == ":memory:"
        assert db.table_exists("rule_hits") and db.table_exists("funnel_counts")
        with db as again:  # a step's own `with` neither locks nor closes
            assert again is db
        with db.transaction() as con:
            con.execute("CREATE TABLE t AS SELECT 1 AS x")
        assert db.c.execute("SELECT x FROM t").fetchall() == [(1,)]
        con = db.c
    with pytest.raises(duckdb.ConnectionException):
        con.execute("SELECT 1")  # closed with the MemoryDatabase

    path = tmp_path / "own.duckdb"
    own = duckdb.connect(str(path))
    try:
        wrapped = Database.wrap(own, Settings(db_path=path, matrices_dir=MATRICES), write=True)
        with wrapped:
            assert wrapped.c is own
        assert own.execute("SELECT 42").fetchone() == (42,)  # still the caller's, still open
        assert not path.with_name(path.name + ".lock").exists()  # no run lock taken
    finally:
        own.close()


def test_the_report_title_shows_a_matrices_folder_with_brackets(runner, tmp_path: Path) -> None:
    """The table's title names the folder as written: `m[red]` was read as a colour tag and shown as `m`."""
    folder = tmp_path / "m[red]"
    shutil.copytree(MATRICES, folder)
    result = run(runner, "--matrices", str(folder), "vnet")
    assert result.exit_code == 0, result.output
    assert f"Rule tests ({folder})" in result.stderr
