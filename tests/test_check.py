"""`mktool check`: every kind of bad rule file is caught with a precise, located message.

Tests run in tmp_path with ``--matrices matrices`` so that messages read exactly as a user
sees them: ``matrices/retention.yaml:7 @ rules[1].when (rule R2): unknown column 'arpu3m' (did you mean
'arpu_3m'?)``: file, line, key path (and the rule), then the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import MATRICES, M
from test_matrices import CUSTOMERS, NEW_SERVICE, POLICIES, PRIORITY, RETENTION, make_view, view_row, write_matrices

from mktool.errors import ConfigError
from mktool.project import load_rules, validate_all
from mktool.rules import load_channels, load_policies, matrix_files


def check(cli, *args: str, files: dict[str, str | None] | None = None, db: Path | None = None):
    write_matrices(Path("matrices"), files)
    return cli("check", "--matrices", "matrices", *args, db_path=db)


def errors_of(result: Any) -> list[str]:
    return [line[len("error: "):] for line in result.stderr.splitlines() if line.startswith("error: ")]


def warnings_of(result: Any) -> list[str]:
    return [line[len("Warning: "):] for line in result.stderr.splitlines() if line.startswith("Warning: ")]


def one_error(cli, files: dict[str, str | None]) -> str:
    result = check(cli, files=files)
    assert result.exit_code == 1, result.output
    errs = errors_of(result)
    assert len(errs) == 1, errs
    return errs[0]


# -- the shipped defaults and a clean project ----------------------------------------------------------
def test_shipped_defaults_pass(cli) -> None:
    result = cli("check", "--matrices", str(MATRICES))
    assert result.exit_code == 0, result.output
    assert errors_of(result) == [] and warnings_of(result) == []
    assert "files OK: 5 matrices" in result.stderr


def test_clean_project_passes(cli, in_tmp: Path) -> None:
    result = check(cli)
    assert result.exit_code == 0, result.output
    assert "matrices: 9 files OK: 5 matrices, 11 rules, 9 policies, 5 channels" in result.stderr


# -- one error per kind of mistake ------------------------------------------------------------------------
def test_bad_yaml_syntax(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("hit: first", "hit: first\n  oops: [")
    assert one_error(cli, {"retention.yaml": bad}).startswith(
        "matrices/retention.yaml:4:7: invalid YAML (mapping values are not allowed here)")


def test_unknown_key_with_suggestion(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("{id: R2, when:", "{id: R2, wen:")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:7 @ rules[1] (rule R2): unknown key 'wen' (did you mean 'when'?); "
        "allowed: channels, description, doc, group, id, policy, script, when")


def test_unknown_matrix_key(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("hit: first", "hits: first")
    assert one_error(cli, {"retention.yaml": bad}).startswith(
        "matrices/retention.yaml:3: unknown key 'hits' (did you mean 'hit'?)")


def test_unknown_column_with_suggestion(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("arpu_3m >= 50", "arpu3m >= 50")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:7 @ rules[1].when (rule R2): unknown column 'arpu3m' (did you mean 'arpu_3m'?)")


def test_unknown_column_in_where(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("where: status = 'active'", "where: stauts = 'active'")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:4 @ where: unknown column 'stauts' (did you mean 'status'?)")


def test_semicolon_refused(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("when: arpu_3m >= 50,", 'when: "arpu_3m >= 50; DROP TABLE customer_view",')
    assert one_error(cli, {"retention.yaml": bad}).startswith(
        "matrices/retention.yaml:7 @ rules[1].when (rule R2): ';' is not allowed (line 1, column 14)")


def test_subquery_refused(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("when: arpu_3m >= 50,", 'when: "msisdn IN (SELECT msisdn FROM dnd)",')
    assert one_error(cli, {"retention.yaml": bad}).startswith(
        "matrices/retention.yaml:7 @ rules[1].when (rule R2): subqueries are not allowed")


def test_missing_policy_with_suggestion(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("policy: PREPAY_SMALL, group: 5, channels: [sms]}\n  - {id: R3",
                            "policy: PREPAY_SMAL, group: 5, channels: [sms]}\n  - {id: R3")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:7 @ rules[1].policy (rule R2): unknown policy 'PREPAY_SMAL' (did you mean "
        "'PREPAY_SMALL'?): "
        "add it to policies.yaml")


def test_policy_of_another_family(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("policy: PREPAY_SMALL, group: 5, channels: [sms]}\n  - {id: R3",
                            "policy: LD_AH, group: 5, channels: [sms]}\n  - {id: R3")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:7 @ rules[1].policy (rule R2): 'LD_AH' is a traffic policy in policies.yaml, "
        "but matrix 'retention' is family retention")


def test_duplicate_rule_id(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("{id: R3,", "{id: R1,")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:8 @ rules[2].id (rule R1): duplicate rule id (rules[0] and rules[2] are both 'R1')")


def test_unknown_channel(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("group: 5, channels: [sms]}\n  - {id: R3", "group: 5, channels: [smss]}\n  - {id: R3")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:7 @ rules[1].channels (rule R2): unknown channel 'smss' (did you mean 'sms'?); "
        "channels.yaml defines frontdesk, outbound, inbound, sms, app")


def test_channel_the_policy_does_not_allow(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("channels: [frontdesk, outbound]}", "channels: [frontdesk, sms]}")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:6 @ rules[0].channels (rule R1): policy PREPAY_BIG may not be offered on sms "
        "(its channels: frontdesk, outbound)")


def test_channels_default_to_the_policys(in_tmp: Path) -> None:
    ret = RETENTION.replace(", channels: [frontdesk, outbound]}", "}")
    rules = load_rules(write_matrices(Path("matrices"), {"retention.yaml": ret}))
    assert rules.matrix("retention").rules[0].channels == ("frontdesk", "outbound")


def test_missing_channels_without_policy_channels(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("group: 5, channels: [sms]}\n  - {id: R3", "group: 5}\n  - {id: R3")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:7 @ rules[1].channels (rule R2): missing, and policy PREPAY_SMALL names no "
        "channels either")


@pytest.mark.parametrize(("when", "message"), [
    ("arpu_3m + 1", "expected a boolean condition, got arithmetic 'arpu_3m + 1'"),
    ("'yes'", "expected a boolean condition, got a string literal ''yes''"),
    ("value_tier", "expected a boolean condition, but 'value_tier' is VARCHAR"),
    ("coalesce(arpu_3m, 0)", "expected a boolean condition, but 'coalesce(arpu_3m, 0)' is DECIMAL(38,6)"),
    # A function DuckDB does not have is now refused by the allow-list, before DuckDB binds it.
    ("lenght(city) > 2", "function 'lenght' is not allowed: it is not on the reviewed allow-list "
                         "of rule functions (ALLOWED_FUNCTIONS in mktool/sqlcheck.py); did you mean 'length'?"),
])
def test_non_boolean_when(cli, in_tmp: Path, when: str, message: str) -> None:
    bad = RETENTION.replace("when: arpu_3m >= 50,", f'when: "{when}",')
    assert one_error(cli, {"retention.yaml": bad}) == f"matrices/retention.yaml:7 @ rules[1].when (rule R2): {message}"


def test_missing_when(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("{id: R2, when: arpu_3m >= 50,", "{id: R2,")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:7 @ rules[1].when (rule R2): missing required key (use `when: true` for a catch-all)")


def test_bad_hit_mode(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("hit: first", "hit: frist")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:3 @ hit: 'frist' is not one of first, collect (did you mean 'first'?)")


def test_priority_rule_with_policy(cli, in_tmp: Path) -> None:
    bad = PRIORITY.replace("{id: P3, when: true, order: [retention]}", "{id: P3, when: true, policy: PREPAY_BIG}")
    assert one_error(cli, {"priority.yaml": bad}) == (
        "matrices/priority.yaml:7 @ rules[2].policy (rule P3): a priority-matrix rule gives an 'order' (a list "
        "of families), not a policy")


def test_offer_rule_with_order(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("{id: R3, when: tenure_months > 12,", "{id: R3, when: tenure_months > 12, order: [x],")
    assert one_error(cli, {"retention.yaml": bad}).startswith(
        "matrices/retention.yaml:8 @ rules[2].order (rule R3): 'order' belongs in the priority matrix (family: "
        "priority)")


def test_priority_collect_refused(cli, in_tmp: Path) -> None:
    bad = PRIORITY.replace("hit: first", "hit: collect")
    assert one_error(cli, {"priority.yaml": bad}) == (
        "matrices/priority.yaml:3 @ hit: the priority matrix gives each customer exactly one order: use hit: first")


def test_duplicate_matrix_name_across_files(cli, in_tmp: Path) -> None:
    assert one_error(cli, {"retention_copy.yaml": RETENTION}) == (
        "matrices/retention_copy.yaml:1 @ matrix: matrix 'retention' is already defined in matrices/retention.yaml")


def test_no_priority_matrix(cli, in_tmp: Path) -> None:
    assert one_error(cli, {"priority.yaml": None}).startswith("matrices: no priority matrix: one matrix must have "
                                                               "`family: priority`")


def test_two_priority_matrices(cli, in_tmp: Path) -> None:
    assert one_error(cli, {"priority2.yaml": PRIORITY.replace("matrix: priority", "matrix: priority2")}) == (
        "matrices/priority2.yaml:2 @ family: a second priority matrix ('priority2'; the first is 'priority' in "
        "matrices/priority.yaml): exactly one matrix may have family: priority")


def test_duplicate_policy_id(cli, in_tmp: Path) -> None:
    bad = POLICIES.replace("groups:", "  - {id: LD_AH, name: again, family: traffic}\ngroups:")
    assert one_error(cli, {"policies.yaml": bad}) == (
        "matrices/policies.yaml:11 @ policies[9].id (policy LD_AH): duplicate policy id (policies[9] repeats an "
        "earlier entry)")


def test_policy_unknown_key_and_bad_dates(cli, in_tmp: Path) -> None:
    bad = POLICIES.replace("{id: LD_AH, name: 安徽长途通, family: traffic}",
                           "{id: LD_AH, name: 安徽长途通, family: traffic, valid_form: 2026-01-01}")
    assert one_error(cli, {"policies.yaml": bad}).startswith(
        "matrices/policies.yaml:9 @ policies[7] (policy LD_AH): unknown key 'valid_form' (did you mean 'valid_from'?)")
    bad = POLICIES.replace("{id: LD_AH, name: 安徽长途通, family: traffic}",
                           "{id: LD_AH, name: 安徽长途通, family: traffic, valid_from: 2026-12-01, "
                           "valid_to: 2026-01-01}")
    assert one_error(cli, {"policies.yaml": bad}) == (
        "matrices/policies.yaml:9 @ policies[7].valid_from (policy LD_AH): valid_from 2026-12-01 is after "
        "valid_to 2026-01-01")


def test_policy_channel_not_in_channels_yaml(cli, in_tmp: Path) -> None:
    bad = POLICIES.replace("channels: [frontdesk, outbound]}", "channels: [frontdesk, outbond]}")
    result = check(cli, files={"policies.yaml": bad})
    assert result.exit_code == 1
    assert ("matrices/policies.yaml:2 @ policies[0].channels (policy PREPAY_BIG): unknown channel 'outbond' "
            "(did you mean "
            "'outbound'?); channels.yaml defines frontdesk, outbound, inbound, sms, app") in errors_of(result)


def test_channels_yaml_shape(cli, in_tmp: Path) -> None:
    bad = ("channels:\n  sms: {cycle: weekly, format: csv}\n  app: {cycle: daily, format: csv, capacity: -1}\n"
           "contact_policy: {cooldown_days: 30, monthly_cap: 4, extra: 1}\n")
    result = check(cli, files={"channels.yaml": bad})
    assert result.exit_code == 1
    errs = errors_of(result)
    assert "matrices/channels.yaml:2 @ channels.sms.cycle: 'weekly' is not one of daily, monthly" in errs
    assert "matrices/channels.yaml:3 @ channels.app.capacity: must be ≥ 1, got -1" in errs
    assert any(e.startswith("matrices/channels.yaml:4 @ contact_policy: unknown key 'extra'") for e in errs)


def test_missing_catalogues(cli, in_tmp: Path) -> None:
    result = check(cli, files={"policies.yaml": None})
    assert result.exit_code == 1
    assert errors_of(result)[0] == ("matrices/policies.yaml: missing: the policy catalogue is required "
                                    "(a top-level 'policies:' list)")


def test_typo_in_matrix_key_is_not_silently_ignored(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("matrix: retention", "matirx: retention")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:1 @ matirx: has 'rules:' but no top-level 'matrix:' key (found 'matirx': did "
        "you mean 'matrix'?)")


def test_broken_scores_yaml_is_reported(cli, in_tmp: Path) -> None:
    folder = write_matrices(Path("matrices"))
    (folder / "scores.yaml").write_text("params: {}\nvalue: [\n", encoding="utf-8")
    result = cli("check", "--matrices", "matrices")
    assert result.exit_code == 1
    assert errors_of(result)[0].startswith("matrices/scores.yaml:3:1: invalid YAML")


def test_all_problems_are_reported_together(cli, in_tmp: Path) -> None:
    ret = RETENTION.replace("arpu_3m >= 50", "arpu3m >= 50").replace("{id: R3,", "{id: R1,")
    ns = NEW_SERVICE.replace("policy: CRBT,", "policy: CRBT_X,")
    result = check(cli, files={"retention.yaml": ret, "new_service.yaml": ns})
    assert result.exit_code == 1
    assert errors_of(result) == [
        "matrices/new_service.yaml:7 @ rules[1].policy (rule N2): unknown policy 'CRBT_X' (did you mean 'CRBT'?): "
        "add it to policies.yaml",
        "matrices/retention.yaml:7 @ rules[1].when (rule R2): unknown column 'arpu3m' (did you mean 'arpu_3m'?)",
        "matrices/retention.yaml:8 @ rules[2].id (rule R1): duplicate rule id (rules[0] and rules[2] are both 'R1')",
    ]
    assert "Error: check found 3 errors and 0 warnings in matrices" in result.stderr


def test_json_format(cli, in_tmp: Path) -> None:
    bad = RETENTION.replace("arpu_3m >= 50", "arpu3m >= 50")
    result = check(cli, "--format", "json", files={"retention.yaml": bad})
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["errors"] == [
        "matrices/retention.yaml:7 @ rules[1].when (rule R2): unknown column 'arpu3m' (did you mean 'arpu_3m'?)"]
    assert doc["warnings"] == [] and "matrices/retention.yaml" in doc["files"]


# -- warnings ---------------------------------------------------------------------------------------
def test_order_naming_an_unknown_family_is_a_warning(cli, in_tmp: Path) -> None:
    prio = PRIORITY.replace("order: [retention, new_service]", "order: [retention, new_servise]")
    result = check(cli, files={"priority.yaml": prio})
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        "matrices/priority.yaml:5 @ rules[0].order (rule P1): no matrix has family 'new_servise' (did you mean "
        "'new_service'?) "
        "(families: new_service, retention, traffic)"]
    strict = cli("check", "--matrices", "matrices", "--strict")
    assert strict.exit_code == 5
    assert "Error: check found 1 warning (--strict)" in strict.stderr


def test_month_warnings_never_fires_and_shadowed(cli, in_tmp: Path) -> None:
    db = make_view(in_tmp / "db.duckdb", CUSTOMERS)
    ns = NEW_SERVICE.replace("newspaper_potential AND arpu_3m > 80", "newspaper_potential AND arpu_3m > 1000")
    result = check(cli, "--month", M, files={"new_service.yaml": ns}, db=db)
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        "matrices/new_service.yaml:8 @ rules[2] (rule N3): never fires in 2026-10 (matches none of 4 customers "
        "in the matrix's where)",
        "matrices/retention.yaml:8 @ rules[2] (rule R3): shadowed: all 2 customers it matches in 2026-10 are "
        "taken by earlier "
        "rules (R1: 2)",
    ]
    strict = cli("check", "--matrices", "matrices", "--month", M, "--strict", db_path=db)
    assert strict.exit_code == 5
    assert "Error: check found 2 warnings (--strict)" in strict.stderr


def test_month_shadowing_names_every_taker(cli, in_tmp: Path) -> None:
    ret = """\
    matrix: retention
    family: retention
    hit: first
    rules:
      - {id: R1, when: arpu_3m >= 100, policy: PREPAY_BIG, channels: [frontdesk]}
      - {id: R2, when: churn_flag, policy: PREPAY_SMALL, channels: [sms]}
      - {id: R3, when: arpu_3m >= 50, policy: PREPAY_SMALL, channels: [sms]}
    """
    db = make_view(in_tmp / "db.duckdb", [view_row("13800000001", arpu=120),
                                          view_row("13800000002", arpu=60, churn=True),
                                          view_row("13800000003", arpu=150)])
    result = check(cli, "--month", M, files={"retention.yaml": ret}, db=db)
    assert result.exit_code == 0, result.output
    assert ("matrices/retention.yaml:7 @ rules[2] (rule R3): shadowed: all 3 customers it matches in 2026-10 "
            "are taken by "
            "earlier rules (R1: 2, R2: 1)") in warnings_of(result)  # this file has no where: R3 is on line 7


def test_month_uncovered_customers_are_an_error(cli, in_tmp: Path) -> None:
    prio = PRIORITY.replace("  - {id: P3, when: true, order: [retention]}\n", "")
    db = make_view(in_tmp / "db.duckdb", CUSTOMERS)
    result = check(cli, "--month", M, files={"priority.yaml": prio}, db=db)
    assert result.exit_code == 1
    assert errors_of(result)[0].startswith(
        "matrices/priority.yaml:4 @ rules: 3 customers of 2026-10 match no priority rule")


def test_month_needs_the_view(cli, in_tmp: Path) -> None:
    db = make_view(in_tmp / "db.duckdb", CUSTOMERS)
    result = check(cli, "--month", "2026-11", db=db)
    assert result.exit_code == 1
    assert "Error: customer_view has no rows for month 2026-11" in result.stderr


# -- library entry points ---------------------------------------------------------------------------------
def test_validate_all_collects_and_load_rules_raises_the_first(in_tmp: Path) -> None:
    ret = RETENTION.replace("arpu_3m >= 50", "arpu3m >= 50").replace("{id: R3,", "{id: R1,")
    folder = write_matrices(Path("matrices"), {"retention.yaml": ret})
    report = validate_all(folder)
    assert len(report.errors) == 2 and report.rules is None
    with pytest.raises(ConfigError) as err:
        report.raise_for_errors()
    assert err.value.render() == (
        "matrices/retention.yaml:7 @ rules[1].when (rule R2): unknown column 'arpu3m' (did you mean 'arpu_3m'?)\n"
        "  hint: 1 more problem: run `mktool check` to list them all")
    with pytest.raises(ConfigError, match="unknown column 'arpu3m'"):
        load_rules(folder)


def test_catalogue_loaders(in_tmp: Path) -> None:
    folder = write_matrices(Path("matrices"))
    policies = load_policies(folder)
    assert policies["PREPAY_BIG"].channels == ("frontdesk", "outbound") and policies["MI_20"].exclusive_group == "mi"
    channels = load_channels(folder)
    assert channels.names == ["frontdesk", "outbound", "inbound", "sms", "app"]
    assert channels.channels["outbound"].capacity == 100 and channels.channels["sms"].mask == "none"
    assert channels.channels["sms"].salt_env == "MKTOOL_HASH_SALT"


def test_shipped_catalogues() -> None:
    folder = MATRICES
    channels = load_channels(folder)
    assert channels.names == ["frontdesk", "outbound", "inbound", "sms", "app", "manager"]
    assert (channels.contact_policy.cooldown_days, channels.contact_policy.monthly_cap) == (30, 4)
    policies = load_policies(folder)
    assert policies["PLAN_CHANGE"].family == "plan"
    assert policies["PLAN_CHANGE"].channels == ("inbound", "outbound", "sms")
    r6 = load_rules(folder).matrix("retention").rules[5]
    assert (r6.id, r6.policy, r6.group) == ("R6", "PREPAY_300_600", "6")
    assert r6.when.source == "tenure_months > 12 and return_rate > 86 and arpu_3m >= 100 and arpu_3m < 150"
    prio = load_rules(folder).priority
    assert prio.rules[-1].when.source == "true"


def test_matrix_files_skip_catalogues_and_tests(in_tmp: Path) -> None:
    folder = write_matrices(Path("matrices"))
    (folder / "tests").mkdir()
    (folder / "tests" / "case.yaml").write_text("matrix: not_a_matrix\n", encoding="utf-8")
    (folder / "plan.yaml").write_text("top: 1\n", encoding="utf-8")
    (folder / "extra").mkdir()
    (folder / "extra" / "more.yml").write_text(RETENTION.replace("matrix: retention", "matrix: more"), encoding="utf-8")
    names = [p.relative_to(folder).as_posix() for p in matrix_files(folder)]
    assert names == ["addon.yaml", "extra/more.yml", "new_service.yaml", "priority.yaml", "retention.yaml",
                     "traffic.yaml"]


# -- the same rules on Spark (issue 16) -------------------------------------------------------------
NOT_PORTABLE = RETENTION.replace("when: arpu_3m >= 50,", "when: CAST(arpu_3m AS INTEGER) >= 50,")


def test_a_rule_that_spark_computes_otherwise_is_a_warning_of_check(cli, in_tmp: Path) -> None:
    """DuckDB rounds arpu_3m (a DECIMAL) to the nearest integer, Spark truncates: 49.6 is a hit on one
    engine and not on the other. check says so on either engine; --strict fails."""
    result = check(cli, files={"retention.yaml": NOT_PORTABLE})
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        "matrices/retention.yaml:7 @ rules[1].when (rule R2): 'CAST(arpu_3m AS INT)' means something else on "
        "--engine spark: a fractional number cast to an integer is rounded in DuckDB and truncated in Spark: say "
        "which, CAST(trunc(x) AS INTEGER) or CAST(round(x) AS INTEGER)"]
    assert cli("check", "--matrices", "matrices", "--strict").exit_code == 5
    fixed = check(cli, files={"retention.yaml": NOT_PORTABLE.replace("CAST(arpu_3m AS", "CAST(trunc(arpu_3m) AS")})
    assert fixed.exit_code == 0 and warnings_of(fixed) == [], fixed.output


def test_a_spark_run_refuses_such_a_rule_before_any_work(cli, in_tmp: Path) -> None:
    """On --engine spark the rule is refused when the folder is loaded, before Spark starts (this test
    needs no Java) and before the warehouse is made; on DuckDB it runs."""
    write_matrices(Path("matrices"), {"retention.yaml": NOT_PORTABLE})
    result = cli("--engine", "spark", "--warehouse", str(in_tmp / "wh"), "matrix", "--month", M,
                 "--matrices", "matrices")
    assert result.exit_code == 1, result.output  # a rule file's error (the README's exit codes)
    assert errors_of(result) == [] and result.stderr.startswith(
        "Error: matrices/retention.yaml:7 @ rules[1].when (rule R2): 'CAST(arpu_3m AS INT)' means something else "
        "on --engine spark: "), result.stderr
    assert not (in_tmp / "wh").exists()
