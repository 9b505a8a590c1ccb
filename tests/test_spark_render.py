"""Every query of every step renders for Spark SQL, and means there what it means on DuckDB.

The steps' SQL is DuckDB-dialect text, rendered for Spark with sqlglot when executing there.
sqlglot raises (``unsupported_level=RAISE``) for what it knows it cannot translate, but passes
some DuckDB-only constructs through unchanged into SQL that fails or returns NULLs on Spark:
``rowid``, ``GENERATE_SUBSCRIPTS``, ``* EXCLUDE`` (rendered ``* EXCEPT``), ``CAST('0x…' AS
BIGINT)``, ``list_…`` functions, ``len()`` of a list (rendered ``LENGTH``), a list subscript
with a computed index (DuckDB counts from 1, Spark from 0), ``INSERT … BY NAME``. So each
query is transpiled with RAISE and then checked against that list, in its DuckDB syntax tree
and in the rendered Spark text; the negative cases show each check firing.
"""

from __future__ import annotations

import re

import duckdb
import pytest
import sqlglot
from conftest import CYCLE_DATE, FIXTURES, MATRICES, M
from sqlglot import exp

from mktool import campaign, dialect, evaluate, export, factors, ingest, plan, view
from mktool.dialect import Query
from mktool.export import ExportConfig
from mktool.matrices import generated_sql
from mktool.project import load_project
from mktool.rules import load_channels
from mktool.scoremodel import base_sql, view_sql

#: Functions of DuckDB that sqlglot passes through by name although Spark has no such function
#: (or one with another meaning): upper-case names as they appear in the Spark rendering.
NO_SPARK_TWIN = ("GENERATE_SUBSCRIPTS", "LIST_POSITION", "LIST_EXTRACT", "LIST_SLICE", "LIST_ZIP", "LIST_VALUE",
                 "LIST_TRANSFORM", "LIST_FILTER", "LIST_SORT", "LIST_DISTINCT", "LIST_AGGREGATE", "LIST_CONCAT",
                 "ARRAY_EXTRACT", "ARRAY_SLICE", "STRING_SPLIT", "REGEXP_FULL_MATCH", "EPOCH_MS",
                 "STRFTIME", "STRPTIME", "HASH", "MD5_NUMBER", "TRY_STRPTIME")

#: Patterns of the rendered Spark text (comments dropped) that mean a silent mistranslation.
SPARK_TEXT_REFUSED = (
    (re.compile(r"\browid\b", re.I), "rowid: DuckDB's physical row number has no Spark meaning; use an explicit key"),
    (re.compile(r"\*\s*EXCEPT\s*\(", re.I), "* EXCEPT (DuckDB's * EXCLUDE): not Spark SQL; list the columns"),
    (re.compile(r"'0x", re.I), "a '0x…' hex cast: NULL on Spark; use mktool.dialect.draw (md5 digits)"),
    (re.compile(r"\bLIST_\w+\s*\(", re.I), "a list_… function: not a Spark function"),
    (re.compile(r"\bBY\s+NAME\b", re.I), "INSERT … BY NAME: not Spark SQL; name the columns"),
    (re.compile(r"::"), "a :: cast left in the Spark text"),
    (re.compile(r"\bQUALIFY\b", re.I), "QUALIFY: not Spark SQL; filter a subquery"),
    (re.compile(r"\bGROUP\s+BY\s+ALL\b", re.I), "GROUP BY ALL: Spark 3.4+ only; name the columns"),
    (re.compile(r"\bAS\s+(NOT\s+)?MATERIALIZED\b", re.I), "a MATERIALIZED CTE: not Spark SQL; DuckDB materialises "
                                                          "a CTE read twice by itself"),
)


PROJECT = load_project(MATRICES)


def spark_problems(sql: str) -> list[str]:
    """Why ``sql`` (DuckDB dialect) has no faithful Spark rendering; [] when it has one."""
    try:
        trees = dialect.spark_trees(sql)  # the DuckDB tree with render()'s Spark rewrites applied
        spark = [tree.sql(dialect="spark", unsupported_level=sqlglot.ErrorLevel.RAISE, comments=False)
                 for tree in trees]
    except sqlglot.errors.SqlglotError as exc:
        return [f"sqlglot cannot render it for Spark: {str(exc).splitlines()[0]}"]
    problems = []
    for tree in trees:
        for node in tree.walk():
            if isinstance(node, exp.Star) and (node.args.get("except") or node.args.get("exclude")):
                problems.append("* EXCLUDE: not Spark SQL; list the columns")
            if isinstance(node, exp.Bracket) and not all(isinstance(e, exp.Literal) for e in node.expressions):
                problems.append("a subscript with a computed or negative index: DuckDB counts from 1 (or from the "
                                "end), Spark from 0; for a text use mktool.dialect.last_character / substr")
            elif isinstance(node, (exp.Anonymous, exp.Func)) and not isinstance(node, exp.Cast):
                name = node.name.upper() if isinstance(node, exp.Anonymous) else node.sql_name().upper()
                if name in NO_SPARK_TWIN:
                    problems.append(f"{name}(): a DuckDB function with no Spark twin")
    tokens = sqlglot.tokenize(sql, read="duckdb")
    if any(t.text.lower() == "len" and n.token_type == sqlglot.TokenType.L_PAREN for t, n in zip(tokens, tokens[1:])):
        problems.append("len(): DuckDB's len of a list is rendered LENGTH (a string's length) for Spark; "
                        "use length() for text or array_length() for a list")
    text = ";\n".join(spark)
    for tree in sqlglot.parse(text, read="spark"):  # what we produced for Spark parses as Spark
        if tree is None:
            continue
        for node in tree.walk():
            if isinstance(node, exp.Anonymous) and node.name.upper() in NO_SPARK_TWIN:
                problems.append(f"{node.name.upper()}(): a DuckDB function with no Spark twin")
    problems += [why for pattern, why in SPARK_TEXT_REFUSED if pattern.search(text)]
    return sorted(set(problems))


# -- every query of every step ----------------------------------------------------------------------
def step_queries() -> dict[str, str]:
    """Every step's named queries for the shipped rules folder and month, as DuckDB text."""
    out: dict[str, str] = {}
    config = ExportConfig.of(PROJECT)
    for has_plan in (True, False):
        for name, q in export.queries(config, M, CYCLE_DATE, has_plan=has_plan).items():
            out[f"export:{name}:{'plan' if has_plan else 'no_plan'}"] = q.sql
    model = PROJECT.scores
    for has_vas in (True, False):
        out[f"score:base:{has_vas}"] = base_sql(has_vas=has_vas)
        out[f"score:view:{has_vas}"] = view_sql(model, has_vas=has_vas)
    out["score:tier_counts"] = view.TIER_COUNTS_SQL
    for name, sql in generated_sql(PROJECT.rules, M).items():
        out[f"matrix:{name}"] = sql
    for name, pq in plan.queries(M, PROJECT.plan).items():
        out[f"plan:{name}"] = pq.sql
    for name, eq in evaluate.queries(M).items():
        out[f"evaluate:{name}"] = eq.sql
    for name, cq in campaign.queries(M).items():
        out[f"evaluate:{name}"] = cq.sql
    for name, fq in factors.queries(M).items():
        out[f"factors:{name}"] = fq.sql
    channels = load_channels(MATRICES).names
    with duckdb.connect() as con:
        for src in ingest.discover([FIXTURES]):
            ingest.read_schema(con, src)
            for months_clean in (True, False):
                for name, iq in ingest.queries(src, channels, months_clean=months_clean).items():
                    out[f"ingest:{src.path.stem}:{name}:{'clean' if months_clean else 'unclean'}"] = iq.sql
    return out


QUERIES = step_queries()


def test_every_step_is_listed() -> None:
    steps = {name.split(":")[0] for name in QUERIES}
    assert steps == {"export", "score", "matrix", "plan", "evaluate", "factors", "ingest"}
    exported = {name.split(":", 1)[1].rsplit(":", 1)[0] for name in QUERIES if name.startswith("export:")}
    # every stage of the contact policy, the allocation round, the draw and the lists are among them
    assert {"offers", "candidates", "screen", "contact_cap", "exclusion", "choices", "propose", "place", "holdout",
            "record_sent", "record_holdouts", "screened", "offers:customer", "customer_stages", "cycle_recorded",
            "cycle_held_recorded", "cycle_sent", "cycle_held", "customer_responses", "prior", "customer_prior",
            "capped"} <= exported
    assert {f"list:{c}" for c in ExportConfig.of(PROJECT).channels} <= exported


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_query_renders_for_spark(name: str) -> None:
    assert spark_problems(QUERIES[name]) == []


def test_export_queries_bind_parameters_not_text() -> None:
    """The allocation round is a bound parameter: every round runs the same text."""
    params = export.ExportParams.of(ExportConfig.of(PROJECT), M, CYCLE_DATE, has_plan=True)
    first, second = export.round_queries(params, 1), export.round_queries(params, 2)
    assert [q.sql for q in first] == [q.sql for q in second]
    assert [q.params for q in second] == [{"round": 2}, {"round": 2, "monthly_cap": params.monthly_cap}, {"round": 2}]
    assert all("$round" in q.sql for q in first)


def test_spark_rendering_of_the_draw_reads_md5_digits() -> None:
    """The holdout and tie-break draws render to Spark's locate over md5 digits, not a '0x' cast."""
    params = export.ExportParams.of(ExportConfig.of(PROJECT), M, CYCLE_DATE, has_plan=True)
    holdout = export.holdout_query(params).render("spark")
    assert "MD5(" in holdout and "LOCATE(" in holdout and "'0x" not in holdout
    code = "\n".join(line for line in export.holdout_query(params).sql.splitlines() if not line.startswith("--"))
    assert "$month" in code and "cycle" not in code  # drawn per customer × policy × month, not per cycle
    one = export.customer_stages_query(params, "13800000042")
    assert one.params == {"msisdn": "13800000042", "month": M} and "$msisdn" in one.sql
    assert "MD5(" in one.render("spark")  # explain evaluates the very draw of the holdout stage
    place = export.round_queries(params, 1)[-1].render("spark")
    assert "MD5(" in place and ":round" in place


def test_hashed_list_renders_sha2_for_spark() -> None:
    config = ExportConfig.of(PROJECT)
    channel = next(iter(config.channels.values()))
    hashed = export.list_query(type(channel)(**{**vars(channel), "mask": "hash"}), ("msisdn", "rank"), "s'alt")
    spark = Query("list", hashed.sql).render("spark")
    assert "SHA2('s\\'alt' || msisdn, 256) AS msisdn" in spark  # Spark escapes a quote with a backslash


# -- the check itself fails on what it must refuse --------------------------------------------------
BAD_QUERIES = {
    "rowid": "SELECT rowid AS offer_id FROM t",
    "generate_subscripts": "SELECT unnest(l) AS c, generate_subscripts(l, 1) AS i FROM t",
    "exclude": "SELECT * EXCLUDE (a) FROM t",
    "qualified_exclude": "SELECT t.* EXCLUDE (a) FROM t",
    "hex_cast": "SELECT CAST(('0x' || substr(md5(a), 1, 8)) AS BIGINT) AS n FROM t",
    "list_position": "SELECT list_position(l, 'sms') AS p FROM t",
    "list_len": "SELECT a FROM t WHERE len(l) = 0",
    "computed_subscript": "SELECT l[i] AS c FROM t",
    "insert_by_name": "INSERT INTO h BY NAME SELECT 1 AS a",
    "group_by_all": "SELECT a, count(*) AS n FROM t GROUP BY ALL",
    "len_of_a_column": "SELECT len(a) AS n FROM t",
    "materialized_cte": "WITH b AS MATERIALIZED (SELECT 1 AS a) SELECT a FROM b UNION ALL SELECT a FROM b",
    "last_character_subscript": "SELECT count_if(a[-1] < '!') AS n FROM t",
    "isfinite_of_unknown_type": "SELECT count_if(NOT isfinite(a)) AS n FROM t",
    "read_parquet_parameter": "SELECT count(*) AS n FROM read_parquet(?, hive_partitioning = false)",
    "read_parquet_hive": "SELECT count(*) AS n FROM read_parquet('/x/y.parquet', hive_partitioning = true)",
    "hash": "SELECT hash(a, b) AS h FROM t",
    "union_by_name": "SELECT a FROM t UNION ALL BY NAME SELECT a FROM u",
    "rowid_order": "SELECT a FROM ingest_log ORDER BY loaded_at, rowid",
}


@pytest.mark.parametrize("name", sorted(BAD_QUERIES))
def test_check_refuses_a_duckdb_only_construct(name: str) -> None:
    assert spark_problems(BAD_QUERIES[name]), f"{name} passed the Spark check"


@pytest.mark.parametrize("sql", [
    "SELECT array_position(l, 'sms') AS p FROM t WHERE array_contains(l, 'sms')",
    "SELECT CAST(a AS BIGINT) AS n, a::VARCHAR AS s, l[1] AS first FROM t",
    "SELECT length(a) AS n, sha256(a) AS h FROM t GROUP BY a",
    "SELECT a FROM t QUALIFY row_number() OVER (PARTITION BY a ORDER BY b) = 1",  # sqlglot writes a subquery
    "SELECT a FROM t -- len(l) in a comment is no call\nWHERE a = 'len(x)'",
    "SELECT count(*) AS n FROM read_parquet('/x/month=2026-10/y.parquet', hive_partitioning = false) AS f",
    "SELECT count_if(NOT regexp_full_match(a, '[0-9]{11}')) AS n, count_if(NOT isfinite(CAST(d AS DOUBLE))) AS m "
    "FROM t",
])
def test_check_accepts_constructs_with_a_spark_twin(sql: str) -> None:
    assert spark_problems(sql) == []


def test_churn_evaluation_renders_integer_division_and_bound_months_for_spark() -> None:
    """The decile and top-share positions are integer divisions (Spark's DIV, not a fractional /) and
    the months are bound parameters, so every month runs the same text."""
    query = evaluate.figures_query(M, "tenure_cohort")
    spark = query.render("spark")
    assert " DIV " in spark.upper() and ":month" in spark and ":next_month" in spark
    assert evaluate.figures_query("2027-01").sql == evaluate.figures_query(M).sql


# -- rule functions whose Spark spelling means something else (tests/test_spark_functions.py runs them) --
@pytest.mark.parametrize(("duckdb_sql", "spark_sql"), [
    # Spark's DAYOFWEEK is 1 (Sunday) … 7; DuckDB's dayofweek 0 (Sunday) … 6, isodow 1 (Monday) … 7.
    ("SELECT dayofweek(d) = 0 FROM t", "SELECT (DAYOFWEEK(d) - 1) = 0 FROM t"),
    ("SELECT isodow(d) FROM t", "SELECT (((DAYOFWEEK(d) + 5) % 7) + 1) FROM t"),
    ("SELECT date_part('dow', d), date_part('ISODOW', d) FROM t",
     "SELECT (DAYOFWEEK(d) - 1), (((DAYOFWEEK(d) + 5) % 7) + 1) FROM t"),
    ("SELECT extract(dow FROM d), date_part('year', d) FROM t",
     "SELECT (DAYOFWEEK(d) - 1), DATE_PART('year', d) FROM t"),
    # A lambda's index is 1-based in DuckDB, 0-based in Spark; also inside a nested lambda.
    ("SELECT list_transform(l, lambda x, i: x * i) FROM t", "SELECT TRANSFORM(l, (x, i) -> x * (i + 1)) FROM t"),
    ("SELECT list_filter(l, lambda x, i: i > 1) FROM t", "SELECT FILTER(l, (x, i) -> (i + 1) > 1) FROM t"),
    ("SELECT list_transform(l, lambda x, i: list_transform(m, lambda y: y + i)) FROM t",
     "SELECT TRANSFORM(l, (x, i) -> TRANSFORM(m, y -> y + (i + 1))) FROM t"),
    ("SELECT list_transform(l, lambda x: x + 1) FROM t", "SELECT TRANSFORM(l, x -> x + 1) FROM t"),
    # isnan(NULL) is NULL in DuckDB, false in Spark; ln / log of a value ≤ 0 NaN or −infinity, not NULL.
    ("SELECT isnan(a) FROM t", "SELECT CASE WHEN a IS NULL THEN NULL ELSE ISNAN(a) END FROM t"),
    ("SELECT ln(a) FROM t", "SELECT CASE WHEN a < 0 THEN CAST('NaN' AS DOUBLE) WHEN a = 0 THEN "
                            "CAST('-Infinity' AS DOUBLE) ELSE LN(a) END FROM t"),
    ("SELECT log(10, a) FROM t", "SELECT CASE WHEN a < 0 THEN CAST('NaN' AS DOUBLE) WHEN a = 0 THEN "
                                 "CAST('-Infinity' AS DOUBLE) ELSE LOG(10, a) END FROM t"),
    ("SELECT log(0.5, a) FROM t", "SELECT LOG(0.5, a) FROM t"),  # +infinity at 0: left to spark_divergences' note
])
def test_rule_functions_render_with_duckdbs_meaning(duckdb_sql: str, spark_sql: str) -> None:
    assert dialect.render(duckdb_sql, dialect.SPARK) == spark_sql


def test_a_lambda_that_binds_its_index_name_twice_has_no_rendering() -> None:
    with pytest.raises(sqlglot.errors.UnsupportedError, match="binds 'i' twice"):
        dialect.render("SELECT list_transform(l, lambda x, i: list_transform(m, lambda i: i)) FROM t", dialect.SPARK)
