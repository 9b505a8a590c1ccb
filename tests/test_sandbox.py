"""A sandbox that holds (issue 10 item 3): YAML values reach SQL only through mktool.sqlquote,
and `mktool check` binds every expression against the customer view's real column types.

The injection tests read a canary file of our own rather than /etc/hostname: if any step ran
the injected read, the canary's text would show up in the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import shutil
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import sqlglot
from conftest import edit
from sqlglot import exp
from test_check import check as check_files
from test_check import errors_of, one_error
from test_matrices import POLICIES, RETENTION
from test_view import M, build

from mktool.config import shipped_matrices_dir
from mktool.errors import ConfigError
from mktool.export import _channel_query, _target_select
from mktool.matrices import kept_rows_sql
from mktool.planconfig import script_sql
from mktool.rules import Channel
from mktool.scoremodel import load_score_model, view_params, view_sql
from mktool.sqlquote import check_id, check_label, check_name, quote_identifier, quote_literal

CANARY = "CANARY-7f3a9c"


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(CANARY, encoding="utf-8")
    return path


def injection(canary: Path) -> str:
    return f"low' || (SELECT string_agg(content, '') FROM read_text('{canary}')) || '"


def matrices_copy(tmp_path: Path) -> Path:
    target = tmp_path / "matrices"
    if not target.exists():
        shutil.copytree(shipped_matrices_dir(), target)
    return target


def db_dump(db: Path) -> list[tuple]:
    """Every table and its rows: what "the database is exactly as before" compares."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        return [(t, con.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall()) for t in tables]
    finally:
        con.close()


# -- the helper itself ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, sql",
    [
        ("high", "'high'"),
        ("高价值", "'高价值'"),
        ("it's", "'it''s'"),
        ("x' || read_text('/etc/hostname') || '", "'x'' || read_text(''/etc/hostname'') || '''"),
        ("back\\slash", "'back\\slash'"),  # DuckDB strings have no backslash escapes
        (None, "NULL"),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (-0.5, "-0.5"),
        (Decimal("191.515"), "191.515"),
        (dt.date(2026, 10, 1), "DATE '2026-10-01'"),
        (Path("/tmp/a'b.csv"), "'/tmp/a''b.csv'"),
    ],
)
def test_quote_literal_round_trips_through_duckdb(value, sql):
    assert quote_literal(value) == sql
    got = duckdb.connect().execute(f"SELECT {sql}").fetchone()[0]
    assert got == (str(value) if isinstance(value, Path) else value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, Decimal("NaN"), "a\x00b", object(), b"bytes"])
def test_quote_literal_refuses_what_has_no_safe_literal(value):
    with pytest.raises(ValueError):
        quote_literal(value)


def test_quote_identifier():
    assert quote_identifier("value_tier") == '"value_tier"'
    assert quote_identifier('a"b') == '"a""b"'
    quoted = quote_identifier('a"b')
    assert duckdb.connect().execute(f"SELECT 1 AS {quoted}").description[0][0] == 'a"b'
    for bad in ("", "a\x00", None):
        with pytest.raises(ValueError):
            quote_identifier(bad)  # type: ignore[arg-type]


def test_check_name_and_id_match_in_full():
    assert check_name("retention", file="m.yaml", at="matrix") == "retention"
    assert check_id("R6.b-1", file="m.yaml", at="rule") == "R6.b-1"
    # `^...$` let a trailing newline through; names and ids are matched in full.
    with pytest.raises(ConfigError, match=r"^m.yaml: matrix: 'retention\n' is not a valid name"):
        check_name("retention\n", file="m.yaml", at="matrix")
    with pytest.raises(ConfigError, match=r"^p.yaml: id: 'P1' OR '1'='1' is not a valid policy id"):
        check_id("P1' OR '1'='1", file="p.yaml", at="id", what="policy id")
    with pytest.raises(ConfigError, match="is not a valid name"):
        check_name("x" * 65, file=None, at="matrix")


@pytest.mark.parametrize("label", ["high", "高价值", "mid high", "A+", "中-高"])
def test_labels_in_any_script_are_accepted(label):
    assert check_label(label, file="s.yaml", at="value.tiers[0].tier") == label


@pytest.mark.parametrize(
    "label, problem",
    [
        ("low'", "contains \"'\": quotes, backslashes and control characters are not allowed"),
        ('a"b', "contains '\"': quotes, backslashes and control characters are not allowed"),
        ("a\nb", "contains '\\n': quotes, backslashes and control characters are not allowed"),
        (" high", "has leading or trailing spaces"),
        ("", "must not be empty"),
        (3, "expected text, got int"),
    ],
)
def test_bad_labels_are_located(label, problem):
    with pytest.raises(ConfigError) as err:
        check_label(label, file="s.yaml", at="value.tiers[0].tier", what="value tier name")
    assert err.value.render().startswith("s.yaml: value.tiers[0].tier: ")
    assert f"is not a valid value tier name: {problem} (for example high)" in err.value.render()


# -- value tiers -----------------------------------------------------------------------------------------
def test_tier_name_injection_is_refused_by_check_and_never_runs_in_score(cli, tmp_path, canary):
    mdir = matrices_copy(tmp_path)
    edit(mdir / "scores.yaml", "{tier: low, share: 0.10}", f'{{tier: "{injection(canary)}", share: 0.10}}', count=-1)
    result = cli("check", "--matrices", str(mdir))
    assert result.exit_code == 1
    (err,) = errors_of(result)
    assert err.startswith(f"{mdir / 'scores.yaml'}:46 @ value.tiers[3].tier: 'low' || (SELECT string_agg(content")
    assert err.endswith(" is not a valid value tier name: contains \"'\": quotes, backslashes and control "
                        "characters are not allowed (for example high)")

    assert cli("ingest", str(build(tmp_path / "x"))).exit_code == 0
    before = db_dump(cli.db)
    result = cli("score", "--month", M, "--matrices", str(mdir))
    assert result.exit_code == 1
    assert "value.tiers[3].tier" in result.stderr and CANARY not in result.stderr
    assert db_dump(cli.db) == before  # no customer_view, nothing read


def test_a_tier_name_that_slipped_past_validation_is_still_only_text(cli, tmp_path, canary):
    """Defence in depth: the tier CASE quotes its labels, so even a model built around the
    loader runs no injected SQL; the label is stored as the literal text it is."""
    assert cli("ingest", str(build(tmp_path / "x"))).exit_code == 0
    model = load_score_model(shipped_matrices_dir())
    evil = injection(canary)
    model = dataclasses.replace(model, tiers=[*model.tiers[:-1], (evil, model.tiers[-1][1])])
    con = duckdb.connect(str(cli.db))
    try:
        rows = con.execute(f"SELECT value_tier FROM ({view_sql(model, has_vas=False)})", view_params(M)).fetchall()
    finally:
        con.close()
    tiers = {r[0] for r in rows}
    assert evil in tiers  # 3 customers: the last ranked falls in the last tier
    assert not any(CANARY in str(t) for t in tiers)


def test_chinese_tier_names_work_end_to_end(cli, tmp_path):
    mdir = matrices_copy(tmp_path)
    for old, new in [("tier: high,", "tier: 高,"), ("tier: mid_high,", "tier: 中高,"), ("tier: mid,", "tier: 中,"),
                     ("tier: low,", "tier: 低,")]:
        edit(mdir / "scores.yaml", old, new, count=-1)
    for path in mdir.glob("*.yaml"):  # the shipped rules compare value_tier with the English names
        text = path.read_text(encoding="utf-8")
        for old, new in [("'mid_high'", "'中高'"), ("'high'", "'高'"), ("'mid'", "'中'"), ("'low'", "'低'")]:
            text = text.replace(f"value_tier = {old}", f"value_tier = {new}").replace(
                f"value_tier IN ({old}", f"value_tier IN ({new}")
        # and the second tier of an IN list (scores.yaml's segment): the project loads only when it all checks
        path.write_text(text.replace("IN ('高', 'mid_high')", "IN ('高', '中高')"), encoding="utf-8")
    assert cli("ingest", str(build(tmp_path / "x"))).exit_code == 0
    result = cli("score", "--month", M, "--matrices", str(mdir))
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(cli.db), read_only=True)
    tiers = {r[0] for r in con.execute("SELECT value_tier FROM customer_view").fetchall()}
    con.close()
    assert tiers and tiers <= {"高", "中高", "中", "低"}


# -- params ----------------------------------------------------------------------------------------------
def test_a_text_param_is_a_literal_not_sql(tmp_path, canary):
    mdir = matrices_copy(tmp_path)
    edit(mdir / "scores.yaml", "  low_balance: 10 ", f'  tag: "{injection(canary)}"\n  low_balance: 10 ', count=-1)
    text = (mdir / "scores.yaml").read_text(encoding="utf-8")
    (mdir / "scores.yaml").write_text(text + "  - name: tagged\n    expr: ${tag}\n", encoding="utf-8")
    model = load_score_model(mdir)
    tagged = next(c for c in model.columns if c.name == "tagged")
    tree = sqlglot.parse_one(tagged.sql, read="duckdb")
    assert isinstance(tree, exp.Literal) and tree.is_string and tree.this == injection(canary)
    # The same through an override (`--param tag=...`).
    model = load_score_model(mdir, {"tag": "it's"})
    assert next(c for c in model.columns if c.name == "tagged").sql == "'it''s'"


def test_a_param_that_is_not_finite_is_a_located_error(tmp_path):
    mdir = matrices_copy(tmp_path)
    edit(mdir / "scores.yaml", "  low_balance: 10 ", "  low_balance: .nan ", count=-1)
    with pytest.raises(ConfigError) as err:
        load_score_model(mdir)
    assert "parameter ${low_balance}: nan has no SQL literal: use a finite number" in err.value.render()
    assert err.value.render().startswith(str(mdir / "scores.yaml"))


# -- names and ids from the rule files --------------------------------------------------------------------
def test_channel_name_injection_is_refused(cli, in_tmp):
    from test_matrices import CHANNELS

    bad = CHANNELS.replace("  sms:", "  \"sms' OR '1'='1\":", 1)
    errs = errors_of(check_files(cli, files={"channels.yaml": bad}))
    assert "matrices/channels.yaml:5 @ channels.sms' OR '1'='1: channel names are lower-case names such as " \
           "frontdesk, outbound, inbound, sms, app, manager" in errs


def test_a_salt_in_export_sql_is_quoted():
    channel = Channel(name="sms", cycle="daily", format="csv", salt_env="S", mask="hash")
    salt = "salt' || getenv('HOME') || '"
    tree = sqlglot.parse_one(f"SELECT {_target_select(channel, ('msisdn',), salt)}", read="duckdb")
    assert salt in [lit.this for lit in tree.find_all(exp.Literal)]
    assert not [f for f in tree.find_all(exp.Anonymous) if f.name.lower() == "getenv"]


def test_channel_query_compares_the_channel_as_one_literal():
    evil = "sms' OR '1'='1"
    channel = Channel(name=evil, cycle="daily", format="csv", salt_env="S")
    tree = sqlglot.parse_one(_channel_query(channel, ("msisdn",), None), read="duckdb")
    eqs = [e for e in tree.find_all(exp.EQ) if e.this.sql() == "d.channel"]
    assert len(eqs) == 1 and isinstance(eqs[0].expression, exp.Literal) and eqs[0].expression.this == evil
    assert not list(tree.find_all(exp.Or))


# (Surrounding whitespace is trimmed by the loader, so a newline is tested inside the id.)
@pytest.mark.parametrize("bad_id", ["P1' OR '1'='1", "PREPAY_BIG\nX", "P 1"])
def test_policy_id_injection_is_refused(cli, in_tmp, bad_id):
    bad = POLICIES.replace("id: PREPAY_BIG", f"id: {json.dumps(bad_id)}", 1)
    result = check_files(cli, files={"policies.yaml": bad})
    assert result.exit_code == 1
    assert (f"error: matrices/policies.yaml:2 @ policies[0].id (policy {bad_id}): use letters, digits, '_', '.' or '-'"
            in result.stderr)


def test_plan_policy_must_be_a_policy_id(tmp_path):
    from mktool.planconfig import load_plan_config

    mdir = matrices_copy(tmp_path)
    edit(mdir / "plan.yaml", "policy: PLAN_CHANGE", "policy: \"PLAN'||getenv('HOME')||'\"", count=-1)
    with pytest.raises(ConfigError, match="policy: expected a policy id such as PLAN_CHANGE"):
        load_plan_config(mdir)


@pytest.mark.parametrize("name", ["retention'; DROP TABLE customer_view; --", "Retention", "retention\nx"])
def test_matrix_name_injection_is_refused(cli, in_tmp, name):
    bad = RETENTION.replace("matrix: retention", f"matrix: {json.dumps(name)}", 1)
    result = check_files(cli, files={"retention.yaml": bad})
    assert result.exit_code == 1
    assert (f"error: matrices/retention.yaml:1 @ matrix: '{name}' must be a lower-case name (letters, digits, _)"
            in result.stderr)


def test_kept_matrix_names_are_quoted():
    _catalogue, hits = kept_rows_sql("2026-10", ["a'b", "retention"])
    tree = sqlglot.parse_one(hits, read="duckdb")
    (in_list,) = list(tree.find_all(exp.In))
    assert [e.this for e in in_list.expressions] == ["a'b", "retention"]


def test_script_text_with_quotes_and_chinese_is_a_literal():
    template = "推荐您改用{plan_name}，月租{new_rental}元 (it's ' || getenv('HOME') || ')"
    sql = script_sql(template)
    got = duckdb.connect().execute(
        f"SELECT {sql} FROM (SELECT '畅享128' AS plan_name, 'X' AS plan_id, 128.0 AS new_rental) AS t").fetchone()[0]
    assert got == "推荐您改用畅享128，月租128.00元 (it's ' || getenv('HOME') || ')"


# -- (c) check binds every expression against the view's real column types ------------------------------------
@pytest.mark.parametrize(
    "when, message",
    [
        # a text literal that is not a number, compared with a BIGINT column
        ("contacts >= 'x'", "'x' is used as a BIGINT here but is not a valid BIGINT "
                            "(DuckDB: Conversion Error: Could not convert string 'x' to INT64)"),
        ("contacts IN (1, 'two')", "'two' is used as a BIGINT here but is not a valid BIGINT "
                                   "(DuckDB: Conversion Error: Could not convert string 'two' to INT64)"),
        # ... also in a branch that the row of NULLs never takes
        ("CASE WHEN vnet THEN contacts >= 'x' ELSE false END",
         "'x' is used as a BIGINT here but is not a valid BIGINT "
         "(DuckDB: Conversion Error: Could not convert string 'x' to INT64)"),
        # a malformed date literal compared with a DATE column
        ("join_date > '2026-13-01'", "'2026-13-01' is used as a DATE here but is not a valid DATE "
                                     "(DuckDB: Conversion Error: date field value out of range: \"2026-13-01\")"),
        ("join_date > DATE '2026-02-30'", "'2026-02-30' is used as a DATE here but is not a valid DATE "
                                          "(DuckDB: Conversion Error: date field value out of range: \"2026-02-30\")"),
        # string vs number the other way round, and a function on the wrong type: DuckDB's binder
        ("city > 5", "DuckDB: Binder Error: Cannot compare values of type VARCHAR and type INTEGER_LITERAL - "
                     "an explicit cast is required"),
        ("upper(contacts) = 'X'", "DuckDB: Binder Error: No function matches the given name and argument types "
                                  "'upper(BIGINT)'. You might need to add explicit type casts."),
        # constant arguments that only fail when evaluated
        ("date_trunc('mnth', join_date) = DATE '2026-01-01'",
         "DuckDB: Conversion Error: extract specifier \"MNTH\" not recognized"),  # sqlglot upper-cases the unit
        ("regexp_matches(city, '(')", "DuckDB: Invalid Input Error: missing ): ("),
        # not a condition
        ("contacts", "expected a boolean condition, but 'contacts' is BIGINT"),
        ("contacts + 1", "expected a boolean condition, got arithmetic 'contacts + 1'"),
    ],
)
def test_type_errors_in_a_rule_are_check_errors(cli, in_tmp, when, message):
    bad = RETENTION.replace("when: arpu_3m >= 50,", f"when: {json.dumps(when)},")
    assert one_error(cli, {"retention.yaml": bad}) == f"matrices/retention.yaml:7 @ rules[1].when (rule R2): {message}"


def test_a_type_error_in_where_is_a_check_error(cli, in_tmp):
    bad = RETENTION.replace("where: status = 'active'", "where: tenure_months > '1 year'")
    assert one_error(cli, {"retention.yaml": bad}) == (
        "matrices/retention.yaml:4 @ where: '1 year' is used as a INTEGER here but is not a valid INTEGER "
        "(DuckDB: Conversion Error: Could not convert string '1 year' to INT32)")


@pytest.mark.parametrize(
    "when", ["join_date > '2020-01-31'", "contacts >= '10'", "city IN ('杭州', '高')", "vnet IS NOT TRUE",
             "date_diff('month', join_date, DATE '2026-10-01') > 12"],
)
def test_valid_literals_pass(cli, in_tmp, when):
    result = check_files(cli, files={"retention.yaml": RETENTION.replace("when: arpu_3m >= 50,",
                                                                          f"when: {json.dumps(when)},")})
    assert result.exit_code == 0, result.output


def test_a_type_error_in_a_score_expression_is_located(cli, in_tmp):
    from test_matrices import write_matrices

    mdir = write_matrices(Path("matrices"))
    edit(mdir / "scores.yaml", "CASE WHEN status = 'suspended' THEN 20",
         "CASE WHEN status = 'suspended' AND contacts > 'many' THEN 20", count=-1)
    result = cli("check", "--matrices", "matrices")
    assert result.exit_code == 1
    (err,) = errors_of(result)
    assert err.startswith("matrices/scores.yaml:72 @ columns[3].expr (churn_score): 'many' is used as a BIGINT here")


def test_a_score_expression_that_does_not_bind_is_named(cli, in_tmp):
    from test_matrices import write_matrices

    mdir = write_matrices(Path("matrices"))
    edit(mdir / "scores.yaml", "CASE WHEN status = 'suspended' THEN 20", "CASE WHEN upper(contacts) = 'X' THEN 20",
         count=-1)
    result = cli("check", "--matrices", "matrices")
    assert result.exit_code == 1
    (err,) = errors_of(result)
    assert err.startswith("matrices/scores.yaml:72 @ columns[3].expr (churn_score): DuckDB: Binder Error:")
    assert err.endswith(": DuckDB: Binder Error: No function matches the given name and argument "
                        "types 'upper(BIGINT)'. You might need to add explicit type casts.")


def test_an_indicator_that_does_not_bind_is_located(cli, in_tmp):
    from test_matrices import write_matrices

    mdir = write_matrices(Path("matrices"))
    edit(mdir / "scores.yaml", "{name: contacts, expr: contacts}", "{name: contacts, expr: upper(contacts)}", count=-1)
    result = cli("check", "--matrices", "matrices")
    assert result.exit_code == 1
    assert errors_of(result) == [
        "matrices/scores.yaml:36 @ value.criteria[2].indicators[0].expr: DuckDB: Binder Error: No function matches the "
        "given name and argument types 'upper(BIGINT)'. You might need to add explicit type casts."]
