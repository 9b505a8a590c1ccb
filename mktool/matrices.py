"""`mktool matrix`: evaluate the marketing matrices (营销矩阵, SPEC §4) over customer_view.

Set-based from start to end: one query per matrix over the month's customer_view (a single
``CASE`` over the rules in order for ``hit: first``, one ``SELECT`` per rule joined with
``UNION ALL`` for ``hit: collect``), then one ranking query that puts every customer's
offers in the order of the family list the priority matrix gave them. No Python loop ever
touches a customer. The SQL is built by the ``*_sql`` functions below, apart from running it,
in portable SQL that sqlglot transpiles to Spark (:func:`spark_sql`). With ``one_customer``
the same builders read one customer, bound as ``$msisdn``: :func:`evaluate_customer` runs
the whole evaluation that way for `explain`, so explain cannot disagree with this module.

Semantics
  * A customer is in a matrix when ``where`` is true; a rule matches when ``when`` is true
    (NULL counts as false, as in SQL).
  * ``hit: first``: the first matching rule in file order; ``hit: collect``: every one.
  * The priority matrix gives each customer one order of families. Customers outside its
    ``where`` get no recommendations; a customer inside it that no rule matches is an error.
  * One row per customer × policy: a policy reached by two rules keeps the better-ranked
    row, and so does a policy group marked ``exclusive_group`` in policies.yaml (互斥).
  * rank 1..n per customer: the customer's family order (families it does not name come
    last), then matrix name, then rule order.
  * Rules whose policy is not valid in the month (valid_from / valid_to) are skipped, with a
    warning; in a first-hit matrix their customers fall through to the next rules.

Tables written (month M replaced, inside one transaction)
  recommendations(msisdn, month, rank, matrix, family, rule_no, rule_id, policy_id,
                  policy_name, "group", script, channels VARCHAR[])   -- "group": the rule's policy group id
                  (policies.yaml groups:; export joins its name and alternatives to the lists)
  customer_priority(msisdn, month, priority_rule_id, family_order VARCHAR[])
  rule_hits(month, matrix, rule_no, rule_id, policy_id, hits)   -- per rule, per matrix run
  funnel_counts: one funnel per matrix: customers → where → matched → recommended
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from mktool import dialect
from mktool.console import QUIET, Reporter
from mktool.contract import check_month
from mktool.database import Database, record_funnel, record_step, replace_month, table_exists
from mktool.errors import ConfigError, MktoolError, RuleError, StateError, engine_said
from mktool.freshness import require_built_on_view, require_fresh_view, view_build_id
from mktool.project import Project
from mktool.publish import file_sha256
from mktool.rules import Matrix, Problem, Rule, RuleSet
from mktool.schema import CUSTOMER_PARAM, CUSTOMER_PRIORITY_TABLE, RECOMMENDATIONS_TABLE, VIEW_TABLE
from mktool.sqlquote import quote_literal

__all__ = [
    "CUSTOMER_PARAM",
    "CUSTOMER_PRIORITY_TABLE",
    "MatrixResult",
    "MatrixStat",
    "PREVIEW_TABLE",
    "RECOMMENDATIONS_TABLE",
    "CustomerRun",
    "RuleStat",
    "collect_sql",
    "diagnose",
    "evaluate",
    "evaluate_customer",
    "first_hit_sql",
    "generated_sql",
    "kept_rows_sql",
    "matrix_order_sql",
    "ranking_sql",
    "spark_sql",
    "stats_sql",
]

VIEW = VIEW_TABLE
PREVIEW_TABLE = "_mk_matrix_recs"  # the month's would-be recommendations (kept after a dry run)

# Session-scoped work tables (temp: they vanish with the connection, never reach the file).
_CAT = "_mk_matrix_cat"  # offer rules: matrix, rule_no, family, rule_id, policy_id, policy_name, grp, script, channels
_POL = "_mk_matrix_pol"  # policy_id, excl_key (exclusive_group, else the policy itself)
_PCAT = "_mk_matrix_pcat"  # priority rules: rule_no, rule_id, family_order
_ORDER = "_mk_matrix_order"  # priority rule_no, family, pos
_PRIO = "_mk_matrix_prio"  # msisdn, rule_no (NULL: in the priority matrix's where but no rule matched)
_RAW = "_mk_matrix_raw"  # matrix, rule_no, msisdn: every hit of the evaluated offer matrices
_WORK_TABLES = (_CAT, _POL, _PCAT, _ORDER, _PRIO, _RAW)
LAST = 1_000_000  # family position of families a customer's order does not name


# -- results ------------------------------------------------------------------------------------
@dataclass
class RuleStat:
    """One rule's count for the month."""

    matrix: str
    family: str
    hit: str
    rule_no: int
    rule_id: str
    policy_id: str | None
    hits: int  # customers the rule gave (first: after earlier rules took theirs)
    alone: int  # customers matching the rule on its own (in the matrix's where)
    skipped: str | None = None  # why the rule was not evaluated (policy not valid this month)


@dataclass
class MatrixStat:
    """One matrix's funnel for the month."""

    matrix: str
    family: str
    file: str
    customers: int  # in customer_view for the month
    passed: int  # ... and in the matrix's where
    matched: int  # ... and matched by at least one rule
    recommended: int  # ... and with a row in recommendations from this matrix (priority: any row)


@dataclass
class MatrixResult:
    month: str
    rules: list[RuleStat]
    matrices: list[MatrixStat]
    rows: int  # recommendation rows for the month
    customers: int  # customers with at least one recommendation
    uncovered: int  # customers the priority matrix's where admits but no rule matches
    dry_run: bool
    warnings: list[str] = field(default_factory=list)


# -- SQL generation (strings only; nothing runs here) ------------------------------------------------
def _month_literal(month: str) -> str:
    return quote_literal(check_month(month))


def _month_rows(month: str, one_customer: bool) -> str:
    """The customer_view rows a query reads: the month's, or one customer's of it (``$msisdn``)."""
    cond = f"month = {_month_literal(month)}"
    if one_customer:
        cond += f" AND msisdn = ${CUSTOMER_PARAM}"
    return cond


def _scope(matrix: Matrix, month: str, one_customer: bool = False) -> str:
    """The WHERE clause that puts a customer in a matrix for the month."""
    cond = _month_rows(month, one_customer)
    if matrix.where is not None:
        cond += f" AND ({matrix.where.duckdb_sql})"
    return cond


def first_hit_sql(matrix: Matrix, rules: Sequence[Rule], month: str, *, keep_unmatched: bool = False,
                  one_customer: bool = False) -> str:
    """(msisdn, rule_no) of the first matching rule per customer: one CASE, one scan.

    ``keep_unmatched`` keeps customers no rule matches, with rule_no NULL (the priority
    matrix needs them to report uncovered customers). ``one_customer`` (as for every query
    builder here) reads only the customer bound to the parameter ``$msisdn``: `explain`.
    """
    if not rules:
        return "SELECT CAST(NULL AS VARCHAR) AS msisdn, CAST(NULL AS INTEGER) AS rule_no WHERE 1 = 0"
    whens = "\n".join(f"    WHEN ({r.when.duckdb_sql}) THEN {r.no}" for r in rules)
    inner = (f"SELECT msisdn, CAST(CASE\n{whens}\n  END AS INTEGER) AS rule_no\n"
             f"FROM {VIEW}\nWHERE {_scope(matrix, month, one_customer)}")
    if keep_unmatched:
        return inner
    return f"SELECT msisdn, rule_no FROM (\n{inner}\n) AS m\nWHERE rule_no IS NOT NULL"


def collect_sql(matrix: Matrix, rules: Sequence[Rule], month: str, *, one_customer: bool = False) -> str:
    """(msisdn, rule_no) for every matching rule: one SELECT per rule, UNION ALL."""
    if not rules:
        return "SELECT CAST(NULL AS VARCHAR) AS msisdn, CAST(NULL AS INTEGER) AS rule_no WHERE 1 = 0"
    scope = _scope(matrix, month, one_customer)
    return "\nUNION ALL\n".join(
        f"SELECT msisdn, CAST({r.no} AS INTEGER) AS rule_no FROM {VIEW} WHERE {scope} AND ({r.when.duckdb_sql})"
        for r in rules
    )


def hits_sql(matrix: Matrix, rules: Sequence[Rule], month: str, *, one_customer: bool = False) -> str:
    """The matrix's hits, by its hit mode."""
    if matrix.hit == "first":
        return first_hit_sql(matrix, rules, month, one_customer=one_customer)
    return collect_sql(matrix, rules, month, one_customer=one_customer)


def stats_sql(matrix: Matrix, rules: Sequence[Rule], month: str, *, one_customer: bool = False) -> str:
    """One scan: customers of the month, those in the matrix's where, and each rule's matches alone."""
    where = f"({matrix.where.duckdb_sql})" if matrix.where is not None else "1 = 1"
    cols = [
        "count(*) AS customers",
        f"coalesce(sum(CASE WHEN {where} THEN 1 ELSE 0 END), 0) AS passed",
        *(f"coalesce(sum(CASE WHEN {where} AND ({r.when.duckdb_sql}) THEN 1 ELSE 0 END), 0) AS alone_{r.no}"
          for r in rules),
    ]
    return "SELECT\n  " + ",\n  ".join(cols) + f"\nFROM {VIEW}\nWHERE {_month_rows(month, one_customer)}"


def takers_sql(matrix: Matrix, rules: Sequence[Rule], shadowed: Rule, month: str) -> str:
    """For a first-hit rule that never wins: which earlier rules take its customers, and how many."""
    whens = "\n".join(f"    WHEN ({r.when.duckdb_sql}) THEN {r.no}" for r in rules)
    return (f"SELECT taken_by, count(*) AS customers FROM (\n"
            f"  SELECT CASE\n{whens}\n  END AS taken_by\n  FROM {VIEW}\n"
            f"  WHERE {_scope(matrix, month)} AND ({shadowed.when.duckdb_sql})\n) AS t\n"
            f"GROUP BY taken_by ORDER BY customers DESC, taken_by")


def ranking_sql(month: str) -> str:
    """Rank every customer's offers; one row per customer × policy (and × exclusive group).

    Ranks are computed on narrow rows (customer, rule, sort keys); the rules' texts and
    channels are joined on at the end, so the sorts never carry them.
    """
    m = _month_literal(month)
    return f"""WITH candidates AS (
  SELECT h.msisdn, h.matrix, h.rule_no, c.matrix_ord, c.excl_key, coalesce(f.pos, {LAST}) AS family_pos
  FROM {_RAW} AS h
  JOIN {_CAT} AS c ON c.matrix = h.matrix AND c.rule_no = h.rule_no
  JOIN {_PRIO} AS p ON p.msisdn = h.msisdn AND p.rule_no IS NOT NULL
  LEFT JOIN {_ORDER} AS f ON f.rule_no = p.rule_no AND f.family = c.family
), deduped AS (
  SELECT msisdn, matrix, rule_no, matrix_ord, family_pos,
    row_number() OVER (PARTITION BY msisdn, excl_key ORDER BY family_pos, matrix_ord, rule_no) AS keep
  FROM candidates
), ranked AS (
  SELECT msisdn, matrix, rule_no,
    row_number() OVER (PARTITION BY msisdn ORDER BY family_pos, matrix_ord, rule_no) AS rank
  FROM deduped
  WHERE keep = 1
)
SELECT r.msisdn, {m} AS month, CAST(r.rank AS INTEGER) AS rank, c.matrix, c.family, c.rule_no, c.rule_id,
  c.policy_id, c.policy_name, c.grp AS "group", c.script, c.channels
FROM ranked AS r
JOIN {_CAT} AS c ON c.matrix = r.matrix AND c.rule_no = r.rule_no"""


def matrix_order_sql() -> str:
    """Number the rule catalogue's matrices in name order: the integer sort key ranking_sql uses."""
    return (f"UPDATE {_CAT} SET matrix_ord = o.ord FROM (SELECT matrix, CAST(dense_rank() OVER "
            f"(ORDER BY matrix) AS INTEGER) AS ord FROM (SELECT DISTINCT matrix FROM {_CAT}) AS d) AS o "
            f"WHERE {_CAT}.matrix = o.matrix")


def kept_rows_sql(month: str, kept_matrices: Sequence[str]) -> tuple[str, str]:
    """For ``--only``: the stored rows of the matrices not re-evaluated, as (rule catalogue, hits) queries."""
    m = _month_literal(month)
    names = ", ".join(quote_literal(name) for name in kept_matrices)
    scope = f"FROM {RECOMMENDATIONS_TABLE} WHERE month = {m} AND matrix IN ({names})"
    catalogue = (f"SELECT r.matrix, r.rule_no, any_value(r.family), any_value(r.rule_id), any_value(r.policy_id), "
                 f"any_value(r.policy_name), any_value(r.\"group\"), any_value(r.script), any_value(r.channels), "
                 f"any_value(coalesce(x.excl_key, 'policy:' || r.policy_id)), 0\n"
                 f"FROM (SELECT * {scope}) AS r LEFT JOIN {_POL} AS x ON x.policy_id = r.policy_id\n"
                 f"GROUP BY r.matrix, r.rule_no")
    hits = f"SELECT matrix, rule_no, msisdn {scope}"
    return catalogue, hits


def priority_rows_sql(month: str) -> str:
    """customer_priority rows: each customer's priority rule and family order."""
    return (f"SELECT p.msisdn, {_month_literal(month)} AS month, c.rule_id AS priority_rule_id, c.family_order\n"
            f"FROM {_PRIO} AS p JOIN {_PCAT} AS c ON c.rule_no = p.rule_no")


def spark_sql(sql: str) -> str:
    """The same query in Spark SQL (raises if sqlglot cannot translate a construct)."""
    return dialect.render(sql, dialect.SPARK, pretty=True)


def generated_sql(rules: RuleSet, month: str, *, only: Iterable[str] | None = None,
                  dialect: str = "duckdb") -> dict[str, str]:
    """Every query `matrix` would run for ``month``, by name (for --show-sql and the tests)."""
    out: dict[str, str] = {}
    for m in _selected(rules, only):
        active, _ = _active_rules(m, rules, month)
        if m.is_priority:
            out[m.name] = first_hit_sql(m, active, month, keep_unmatched=True)
        else:
            out[m.name] = hits_sql(m, active, month)
        out[f"{m.name}:stats"] = stats_sql(m, active, month)
    out["ranking"] = ranking_sql(month)
    out["customer_priority"] = priority_rows_sql(month)
    if dialect == "spark":
        return {k: spark_sql(v) for k, v in out.items()}
    if dialect != "duckdb":
        raise MktoolError(f"unknown SQL dialect '{dialect}' (duckdb or spark)")
    return out


# -- evaluation ---------------------------------------------------------------------------------
def _selected(rules: RuleSet, only: Iterable[str] | None) -> list[Matrix]:
    """The priority matrix (always: ranks depend on it) and the chosen offer matrices."""
    ordered = [rules.priority, *rules.offers]
    if not only:
        return ordered
    names = [n.strip() for n in only if n.strip()]
    chosen = {rules.matrix(n).name for n in names}  # refuses unknown names with a suggestion
    return [m for m in ordered if m.is_priority or m.name in chosen]


def _active_rules(matrix: Matrix, rules: RuleSet, month: str) -> tuple[list[Rule], dict[int, str]]:
    """The rules to evaluate this month, and why the others are skipped (by rule_no)."""
    active: list[Rule] = []
    skipped: dict[int, str] = {}
    for r in matrix.rules:
        policy = rules.policies.get(r.policy) if r.policy else None
        if policy is not None and not policy.valid_in(month):
            skipped[r.no] = f"policy {policy.id} not valid in {month} ({policy.validity})"
        else:
            active.append(r)
    return active, skipped


@dataclass
class _Run:
    """What one evaluation computed in the session's work tables."""

    month: str
    selected: list[Matrix]
    active: dict[str, list[Rule]]
    skipped: dict[str, dict[int, str]]
    stats: dict[str, tuple[int, int, dict[int, int]]]  # matrix -> (customers, passed, alone by rule_no)
    hits: dict[tuple[str, int], int]
    uncovered: int
    warnings: list[str]


def _create_work_tables(con: duckdb.DuckDBPyConnection, rules: RuleSet, selected: list[Matrix],
                        active: dict[str, list[Rule]]) -> None:
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_CAT} (matrix VARCHAR, rule_no INTEGER, family VARCHAR, "
                "rule_id VARCHAR, policy_id VARCHAR, policy_name VARCHAR, grp VARCHAR, script VARCHAR, "
                "channels VARCHAR[], excl_key VARCHAR, matrix_ord INTEGER)")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_POL} (policy_id VARCHAR, excl_key VARCHAR)")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_PCAT} (rule_no INTEGER, rule_id VARCHAR, family_order VARCHAR[])")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_ORDER} (rule_no INTEGER, family VARCHAR, pos INTEGER)")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_PRIO} (msisdn VARCHAR, rule_no INTEGER)")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_RAW} (matrix VARCHAR, rule_no INTEGER, msisdn VARCHAR)")
    pol = {p.id: f"group:{p.exclusive_group}" if p.exclusive_group else f"policy:{p.id}"
           for p in rules.policies.values()}
    cat = [(m.name, r.no, m.family, r.id, r.policy, rules.policies[r.policy].name if r.policy else None,
            r.group, r.script, list(r.channels), pol.get(r.policy or "", f"policy:{r.policy}"), 0)
           for m in selected if not m.is_priority for r in active[m.name]]
    if cat:
        con.executemany(f"INSERT INTO {_CAT} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", cat)
    if pol:
        con.executemany(f"INSERT INTO {_POL} VALUES (?, ?)", list(pol.items()))
    prio = rules.priority
    con.executemany(f"INSERT INTO {_PCAT} VALUES (?, ?, ?)", [(r.no, r.id, list(r.order)) for r in prio.rules])
    order = [(r.no, fam, pos) for r in prio.rules for pos, fam in enumerate(r.order, 1)]
    if order:
        con.executemany(f"INSERT INTO {_ORDER} VALUES (?, ?, ?)", order)


def _drop_work_tables(con: duckdb.DuckDBPyConnection, *, keep_preview: bool) -> None:
    for t in _WORK_TABLES + (() if keep_preview else (PREVIEW_TABLE,)):
        con.execute(f"DROP TABLE IF EXISTS temp.{t}")


def _execute(con: duckdb.DuckDBPyConnection, sql: str, matrix: Matrix, rules: Sequence[Rule], month: str,
             params: dict[str, Any] | None = None) -> Any:
    """Run one matrix query; a DuckDB error is pinned on the rule that causes it."""
    try:
        return con.execute(sql, params) if params else con.execute(sql)
    except duckdb.Error as exc:
        culprit = _find_failing_rule(con, matrix, rules, month)
        where = (culprit.at("when") if culprit else matrix.at("where") if matrix.where is not None
                 else matrix.at("matrix"))
        raise RuleError(f"{where}: {engine_said(_first_line(exc))}") from None


def _find_failing_rule(con: duckdb.DuckDBPyConnection, matrix: Matrix, rules: Sequence[Rule],
                       month: str) -> Rule | None:
    for r in rules:
        try:
            con.execute(
                f"SELECT count(*) FROM {VIEW} WHERE {_scope(matrix, month)} AND ({r.when.duckdb_sql})").fetchall()
        except duckdb.Error:
            return r
    return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _compute(db: Database, month: str, rules: RuleSet, only: Iterable[str] | None, reporter: Reporter,
             msisdn: str | None = None) -> _Run:
    """Evaluate the selected matrices into the work tables; nothing persistent is touched.

    With ``msisdn``, every query reads that one customer only (bound as a parameter), so the
    work tables hold exactly that customer's rows of a whole-month run: `explain`.
    """
    one = msisdn is not None
    params = {CUSTOMER_PARAM: msisdn} if one else None
    _month_literal(month)
    db.require_month(VIEW, month, "score")
    con = db.c
    view_build = require_fresh_view(con, month)
    if only and view_build is not None and table_exists(con, RECOMMENDATIONS_TABLE):
        try:  # the other matrices' stored rows are kept: they must come from this same view
            require_built_on_view(con, "matrix", RECOMMENDATIONS_TABLE, month, view_build)
        except StateError as exc:
            raise StateError(f"{exc.message}: evaluating only some matrices would keep the other matrices' rows "
                             "from it",
                             hint=f"re-run all matrices: `mktool matrix --month {month}`") from None
    used = {c for m in rules.matrices for r in m.rules for c in r.when.columns}
    used |= {c for m in rules.matrices if m.where is not None for c in m.where.columns}
    missing = sorted(used - {c.lower() for c in db.columns(VIEW)})
    if missing:
        raise ConfigError(f"customer_view for {month} lacks column{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)} that the rules use",
                          hint=f"re-run `mktool score --month {month}` with the current scores.yaml")
    selected = _selected(rules, only)
    active: dict[str, list[Rule]] = {}
    skipped: dict[str, dict[int, str]] = {}
    warnings: list[str] = []
    for m in selected:
        active[m.name], skipped[m.name] = _active_rules(m, rules, month)
        for no, why in skipped[m.name].items():
            rule = next(r for r in m.rules if r.no == no)
            warnings.append(f"{rule.at('policy')}: skipped: {why}")
    _create_work_tables(con, rules, selected, active)

    stats: dict[str, tuple[int, int, dict[int, int]]] = {}
    hits: dict[tuple[str, int], int] = {}
    with reporter.progress("evaluating matrices", len(selected)) as progress:
        for m in selected:
            rs = active[m.name]
            row = _execute(con, stats_sql(m, rs, month, one_customer=one), m, rs, month, params).fetchone()
            stats[m.name] = (int(row[0]), int(row[1]), {r.no: int(v) for r, v in zip(rs, row[2:])})
            if m.is_priority:
                hits_q = first_hit_sql(m, rs, month, keep_unmatched=True, one_customer=one)
                _execute(con, f"INSERT INTO {_PRIO} {hits_q}", m, rs, month, params)
                counted = con.execute(
                    f"SELECT rule_no, count(*) FROM {_PRIO} WHERE rule_no IS NOT NULL GROUP BY rule_no").fetchall()
            else:
                _execute(con, f"INSERT INTO {_RAW} SELECT {quote_literal(m.name)} AS matrix, rule_no, msisdn "
                              f"FROM ({hits_sql(m, rs, month, one_customer=one)}) AS h", m, rs, month, params)
                counted = con.execute(f"SELECT rule_no, count(*) FROM {_RAW} WHERE matrix = ? GROUP BY rule_no",
                                      [m.name]).fetchall()
            got = {int(no): int(n) for no, n in counted}
            for r in rs:
                hits[(m.name, r.no)] = got.get(r.no, 0)
            progress.advance(m.name)
    uncovered = int(con.execute(f"SELECT count(*) FROM {_PRIO} WHERE rule_no IS NULL").fetchone()[0])  # type: ignore[index]
    return _Run(month, selected, active, skipped, stats, hits, uncovered, warnings)


def _uncovered_error(con: duckdb.DuckDBPyConnection, rules: RuleSet, run: _Run) -> RuleError:
    prio = rules.priority
    cols = sorted({c for r in prio.rules for c in r.when.columns})
    example = None
    if cols:
        select = ", ".join(["v.msisdn", *(f"v.{c}" for c in cols)])
        cur = con.execute(f"SELECT {select} FROM {VIEW} AS v JOIN {_PRIO} AS p ON p.msisdn = v.msisdn "
                          f"WHERE v.month = ? AND p.rule_no IS NULL ORDER BY v.msisdn LIMIT 1", [run.month])
        names = [d[0] for d in cur.description]
        found = cur.fetchone()
        example = dict(zip(names, found)) if found else None
    n = run.uncovered
    return RuleError(
        f"{prio.at('rules')}: {n:,} customer{'s' if n != 1 else ''} of {run.month} "
        f"{'match' if n != 1 else 'matches'} no priority rule, so their offers cannot be ordered",
        row=example,
        hint="end the priority matrix with a catch-all rule (`when: true`) or widen a rule",
    )


def _rule_stats(rules: RuleSet, run: _Run) -> list[RuleStat]:
    out = []
    for m in run.selected:
        alone = run.stats[m.name][2]
        for r in m.rules:
            out.append(RuleStat(
                matrix=m.name, family=m.family, hit=m.hit, rule_no=r.no, rule_id=r.id, policy_id=r.policy,
                hits=run.hits.get((m.name, r.no), 0), alone=alone.get(r.no, 0),
                skipped=run.skipped[m.name].get(r.no),
            ))
    return out


def rules_used(rules: RuleSet) -> dict[str, Any]:
    """The rules folder and the sha256 of each of its YAML files, as this matrix run read them.

    export's manifest.json names the rules folder as it is at export time; when the matrices were
    evaluated from another folder, or the files changed since, this record is what the lists'
    recommendations were really computed from.
    """
    folder = Path(rules.matrices_dir).resolve()
    return {"folder": str(folder),
            "files": {str(p.relative_to(folder)): file_sha256(p)
                      for p in sorted(folder.rglob("*.yaml")) if p.is_file()}}


def evaluate(db: Database, project: Project, month: str, *, only: Iterable[str] | None = None,
             dry_run: bool = False, reporter: Reporter = QUIET) -> MatrixResult:
    """Evaluate the matrices for ``month`` and store recommendations (unless ``dry_run``).

    ``only`` re-evaluates just the named matrices (the priority matrix always runs): their
    rows are replaced, and the stored rows of the other matrices are kept and re-ranked. A
    dry run writes nothing; the would-be rows stay in the session's temp table
    :data:`PREVIEW_TABLE` until the connection closes.
    """
    rules = project.rules
    con = db.c
    try:
        run = _compute(db, month, rules, only, reporter)
        for w in run.warnings:
            reporter.warn(w)
        if run.uncovered:
            raise _uncovered_error(con, rules, run)
        evaluated = {m.name for m in run.selected}
        matched = dict(con.execute(f"SELECT matrix, count(DISTINCT msisdn) FROM {_RAW} GROUP BY matrix").fetchall())
        kept = []
        if only and table_exists(con, RECOMMENDATIONS_TABLE):
            kept = [m.name for m in rules.offers if m.name not in evaluated]
        if kept:
            catalogue, kept_hits = kept_rows_sql(month, kept)
            con.execute(f"INSERT INTO {_CAT} {catalogue}")
            con.execute(f"INSERT INTO {_RAW} {kept_hits}")
        con.execute(matrix_order_sql())
        con.execute(f"CREATE OR REPLACE TEMP TABLE {PREVIEW_TABLE} AS {ranking_sql(month)}")
        rows, customers = con.execute(f"SELECT count(*), count(DISTINCT msisdn) FROM {PREVIEW_TABLE}").fetchone()  # type: ignore[misc]
        recommended = dict(con.execute(
            f"SELECT matrix, count(DISTINCT msisdn) FROM {PREVIEW_TABLE} GROUP BY matrix").fetchall())
        matched_prio = int(con.execute(f"SELECT count(*) FROM {_PRIO} WHERE rule_no IS NOT NULL").fetchone()[0])  # type: ignore[index]
        mstats = []
        for m in run.selected:
            customers_m, passed, _ = run.stats[m.name]
            mstats.append(MatrixStat(
                matrix=m.name, family=m.family, file=m.file, customers=customers_m, passed=passed,
                matched=matched_prio if m.is_priority else int(matched.get(m.name, 0)),
                recommended=int(customers) if m.is_priority else int(recommended.get(m.name, 0)),
            ))
        stats = _rule_stats(rules, run)
        if not dry_run:
            with reporter.step(f"writing recommendations for {month}"), db.transaction():
                replace_month(con, RECOMMENDATIONS_TABLE, month, f"SELECT * FROM {PREVIEW_TABLE}")
                replace_month(con, CUSTOMER_PRIORITY_TABLE, month, priority_rows_sql(month))
                record_step(con, month, "matrix", inputs=view_build_id(con, month) or "",
                            settings={"rules": rules_used(rules)})
                names = sorted(evaluated)
                con.execute(f"DELETE FROM rule_hits WHERE month = ? AND matrix IN ({', '.join('?' * len(names))})",
                            [month, *names])
                hit_rows = [(month, s.matrix, s.rule_no, s.rule_id, s.policy_id, s.hits)
                            for s in stats if s.skipped is None]
                if hit_rows:
                    con.executemany("INSERT INTO rule_hits VALUES (?, ?, ?, ?, ?, ?)", hit_rows)
                for ms in mstats:
                    record_funnel(con, month, ms.matrix, [("customers", ms.customers), ("where", ms.passed),
                                                          ("matched", ms.matched), ("recommended", ms.recommended)])
        return MatrixResult(month=month, rules=stats, matrices=mstats, rows=int(rows), customers=int(customers),
                            uncovered=run.uncovered, dry_run=dry_run, warnings=run.warnings)
    finally:
        _drop_work_tables(con, keep_preview=dry_run)


@dataclass
class CustomerRun:
    """One customer through exactly the queries `matrix` runs for the month (what `explain` shows)."""

    msisdn: str
    month: str
    skipped: dict[str, dict[int, str]]  # matrix -> rule_no -> why the rule is not evaluated this month
    in_scope: dict[str, bool]  # matrix -> the customer is in its where
    matches: dict[str, set[int]]  # matrix -> rule_nos whose when holds on its own (inside the where)
    hits: dict[str, list[int]]  # matrix -> rule_nos the matrix gives the customer (first: at most one)
    dedupe_keys: dict[tuple[str, int], str]  # offer rule -> its exclusive key (group:G, else policy:P)
    ranked: list[tuple[str, int, int]]  # (matrix, rule_no, rank): the recommendations, in rank order


def evaluate_customer(db: Database, project: Project, month: str, msisdn: str) -> CustomerRun:
    """Run every matrix and the ranking for one customer; nothing is written.

    The same evaluation as :func:`evaluate` (policy validity, where, hit mode, priority order,
    dedupe, ranks), every query restricted to ``msisdn`` through a bound parameter, so its
    rows are that customer's rows of the whole-month run.
    """
    con = db.c
    rules = project.rules
    try:
        run = _compute(db, month, rules, None, QUIET, msisdn=msisdn)
        con.execute(matrix_order_sql())
        hits: dict[str, list[int]] = {m.name: [] for m in run.selected}
        for name, no in con.execute(f"SELECT matrix, rule_no FROM {_RAW} ORDER BY matrix, rule_no").fetchall():
            hits[name].append(int(no))
        hits[rules.priority.name] = [int(no) for (no,) in con.execute(
            f"SELECT rule_no FROM {_PRIO} WHERE rule_no IS NOT NULL").fetchall()]
        keys = {(m, int(no)): key
                for m, no, key in con.execute(f"SELECT matrix, rule_no, excl_key FROM {_CAT}").fetchall()}
        ranked = [(m, int(no), int(rank)) for m, no, rank in con.execute(
            f"SELECT matrix, rule_no, rank FROM ({ranking_sql(month)}) AS r ORDER BY rank").fetchall()]
    finally:
        _drop_work_tables(con, keep_preview=True)
    return CustomerRun(
        msisdn=msisdn, month=month, skipped=run.skipped,
        in_scope={m.name: run.stats[m.name][1] > 0 for m in run.selected},
        matches={m.name: {no for no, n in run.stats[m.name][2].items() if n} for m in run.selected},
        hits=hits, dedupe_keys=keys, ranked=ranked)


def diagnose(db: Database, project: Project, month: str, *, reporter: Reporter = QUIET) -> list[Problem]:
    """`check --month`: rules that never fire, first-hit rules shadowed by earlier ones, uncovered customers.

    Evaluates every matrix on the month's customer_view without writing anything.
    """
    rules = project.rules
    con = db.c
    problems: list[Problem] = []
    try:
        run = _compute(db, month, rules, None, reporter)
        problems += [Problem("warning", w) for w in run.warnings]
        if run.uncovered:
            problems.append(Problem("error", _uncovered_error(con, rules, run).render()))
        for m in run.selected:
            customers, passed, alone = run.stats[m.name]
            rs = run.active[m.name]
            by_no = {r.no: r for r in m.rules}
            for r in rs:
                hits = run.hits[(m.name, r.no)]
                if hits:
                    continue
                if alone.get(r.no, 0) == 0:
                    scope = (f"{passed:,} customers in the matrix's where" if m.where is not None
                             else f"{customers:,} customers")
                    problems.append(Problem("warning", f"{r.at()}: never fires in {month} "
                                                       f"(matches none of {scope})"))
                    continue
                earlier = [x for x in rs if x.no < r.no]
                if not earlier:  # pragma: no cover - the first rule's hits are its matches
                    continue
                takers = con.execute(takers_sql(m, earlier, r, month)).fetchall()
                shown = ", ".join(f"{by_no[int(no)].id}: {int(n):,}" for no, n in takers if no is not None)
                problems.append(Problem("warning", f"{r.at()}: shadowed: all {alone[r.no]:,} customers "
                                                   f"it matches in {month} are taken by earlier rules ({shown})"))
    finally:
        _drop_work_tables(con, keep_preview=False)
    return problems
