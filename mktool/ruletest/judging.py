"""Running cases against the real matrix and plan SQL, and judging what they give.

Matrix cases of one file run together: their customers become one in-memory customer_view
and :func:`mktool.matrices.evaluate` runs on it (the full ranking only when a case looks at
it, one dry run per matrix under test); plan cases run :func:`mktool.plan.recommend_query`
and the plan funnel; scene cases run the trigger step's outcome queries
(:func:`mktool.scene.outcome_queries`), one batch per distinct watermark. Each case's
expectation is checked against the rule set first (unknown matrix, rule, policy, scene or
wave: an error naming the case), then compared with the outcome: a failure says what was
expected and what came, rank by rank (a scene case: outcome by outcome).
"""

from __future__ import annotations

import fnmatch
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from mktool.console import QUIET, Reporter
from mktool.contract import TABLES
from mktool.dialect import exact_decimal, py_round_half_away
from mktool.errors import ConfigError, MktoolError
from mktool.matrices import PREVIEW_TABLE, evaluate
from mktool.plan import CANDIDATES_SQL, STAGES, funnel_query, recommend_query
from mktool.planconfig import PlanConfig, load_plan_config
from mktool.project import Project, project_from_report, validate_all
from mktool.rules import Scene, matrix_files_by_name
from mktool.ruletest.cases import (
    ALL,
    MONEY,
    NO_OFFER,
    NO_PLAN,
    NO_TRIGGER,
    OFFER_KEYS,
    PLAN_KEYS,
    PRIORITY_KEYS,
    RATES,
    TRIGGER_KEYS,
    Case,
    CaseFile,
    current_month,
    discover,
    suggest,
)
from mktool.ruletest.customers import CustomerBuilder, MemoryDatabase, convert_value
from mktool.scene import events_query, outcome_queries, run_outcomes
from mktool.schema import FIRED, SCENE_EVENTS_COLUMNS, SCENE_OUTCOMES, SCENE_OUTCOMES_TEMP, VIEW_TABLE
from mktool.scoremodel import load_score_model
from mktool.sqlquote import quote_identifier, quote_literal
from mktool.yamlio import unknown_keys


# -- the outcome of a run --------------------------------------------------------------------------
@dataclass
class CaseResult:
    case: Case
    status: str  # pass | fail | error
    message: str = ""  # one line: what went wrong
    details: list[str] = field(default_factory=list)  # the diff, line by line
    expected: list[dict[str, Any]] = field(default_factory=list)
    actual: list[dict[str, Any]] = field(default_factory=list)
    fired: set[tuple[str, str]] = field(default_factory=set)  # (matrix, rule_id) in the actual outcome

    @property
    def ok(self) -> bool:
        return self.status == "pass"


@dataclass
class TestRun:
    matrices_dir: Path
    files: list[Path]
    results: list[CaseResult]
    rule_errors: list[str]  # validation errors of the rule files (cases then error)
    warnings: list[str]
    coverage: list[tuple[str, str, str, bool, bool]]  # (file, matrix, rule, fires, not_fires); scenes: SCENES_SCOPE
    case_files: dict[str, CaseFile] = field(default_factory=dict)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    @property
    def uncovered(self) -> list[tuple[str, str, str, bool, bool]]:
        return [c for c in self.coverage if not (c[3] and c[4])]


# -- expectations ----------------------------------------------------------------------------------
def _offer_list(raw: Any, where: str, file: str) -> list[dict[str, Any]]:
    if raw is None or raw == [] or (isinstance(raw, str) and raw.strip().lower() in NO_OFFER):
        return []
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of offers (policy ids or mappings) or `no offer`, got {raw!r}",
                          file=file)
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"policy": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{where}[{i}]: expected a policy id or a mapping with policy, rule, rank, group, "
                              f"got {item!r}", file=file)
        unknown_keys(item, OFFER_KEYS, file=Path(file), at=f"{where}[{i}]")
        if item.get("policy") is None and item.get("rule") is None:
            raise ConfigError(f"{where}[{i}]: give the policy (and/or the rule) the customer should be offered",
                              file=file)
        out.append({k: v for k, v in item.items() if v is not None})
    return out


def _offer_text(row: dict[str, Any], *, with_matrix: bool = True, with_script: bool | None = None) -> str:
    if not row:
        return "-"
    parts = [str(row.get("policy", row.get("policy_id", "?")))]
    rule = row.get("rule", row.get("rule_id"))
    extra = []
    if rule is not None:
        extra.append(f"rule {rule}")
    if row.get("group") is not None:
        extra.append(f"group {row['group']}")
    if with_matrix and row.get("matrix") is not None:
        extra.append(f"matrix {row['matrix']}")
    if with_script is None:
        with_script = "policy_id" not in row  # an expectation shows its script when it gives one
    if with_script and row.get("script") is not None:
        extra.append(f"script {row['script']}")
    return parts[0] + (f" ({', '.join(extra)})" if extra else "")


def _offer_matches(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    pairs = {"policy": "policy_id", "rule": "rule_id", "rank": "rank", "group": "group", "matrix": "matrix",
             "script": "script"}
    for key, value in expected.items():
        got = actual.get(pairs[key])
        if key == "rank":
            if got is None or int(got) != int(value):
                return False
        elif got is None or str(got) != str(value):
            return False
    return True


def cell_width(text: str) -> int:
    """Terminal cells of ``text`` (as rich counts them): East Asian wide and fullwidth characters
    (CJK policy names and scripts) take two, combining marks and control characters none."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Cc", "Cf", "Me", "Mn"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("F", "W") else 1
    return width


def _diff_rows(expected: list[dict[str, Any]], actual: list[dict[str, Any]], *, with_matrix: bool) -> list[str]:
    """Side-by-side expected / actual, one line per rank; ``✗`` marks the lines that differ."""
    n = max(len(expected), len(actual))
    scripts = any("script" in e for e in expected)
    left = [_offer_text(expected[i], with_matrix=with_matrix) if i < len(expected) else "-" for i in range(n)]
    right = [_offer_text(actual[i], with_matrix=with_matrix, with_script=scripts) if i < len(actual) else "-"
             for i in range(n)]
    if not n:
        return []
    width = max(len("expected"), *(cell_width(s) for s in left))
    lines = [f"    rank  {'expected'.ljust(width)}  actual"]
    for i in range(n):
        same = i < len(expected) and i < len(actual) and _offer_matches(expected[i], actual[i])
        pad = " " * (width - cell_width(left[i]))
        lines.append(f"  {' ' if same else '✗'} {i + 1:>4}  {left[i]}{pad}  {right[i]}")
    return lines


def _number_matches(actual: Any, expected: Any, decimals: int) -> bool:
    """``expected`` is ``actual`` rounded half away from zero to ``decimals`` (money 2, rates 4,
    as the lists show them), or a percentage "104%" to the places written; exact decimals."""
    if actual is None:
        return expected is None
    if isinstance(expected, str) and expected.strip().endswith("%"):
        text = expected.strip()[:-1].strip()
        try:
            pct = exact_decimal(text)
        except ArithmeticError:
            return False
        if not pct.is_finite():
            return False
        places = max(0, -int(pct.as_tuple().exponent))
        return py_round_half_away(exact_decimal(actual) * 100, places) == pct
    if isinstance(expected, bool) or not isinstance(expected, (int, float)):
        return False
    return py_round_half_away(actual, decimals) == exact_decimal(expected)


def _plan_matches(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    for key, value in expected.items():
        got = actual.get(key)
        if key in MONEY:
            ok = _number_matches(got, value, 2)
        elif key in RATES:
            ok = _number_matches(got, value, 4)
        elif key == "rank":
            ok = got is not None and int(got) == int(value)
        else:
            ok = got is not None and str(got) == str(value)
        if not ok:
            return False
    return True


def _plan_text(row: dict[str, Any], keys: Sequence[str]) -> str:
    if not row:
        return "-"
    out = []
    for k in keys:
        if k not in row:
            continue
        v = row.get(k)
        if k in MONEY and isinstance(v, (float, Decimal)):
            v = f"{py_round_half_away(v, 2)}"
        elif k in RATES and isinstance(v, (float, Decimal)):
            v = f"{py_round_half_away(v, 4)} ({py_round_half_away(exact_decimal(v) * 100, 0)}%)"
        out.append(f"{k}={v}")
    return ", ".join(out)


# -- running ----------------------------------------------------------------------------------------
def _error(case: Case, message: str) -> CaseResult:
    return CaseResult(case, "error", message)


def _check_matrix_case(case: Case, rules: Any) -> tuple[Any, list[dict[str, Any]] | None, list[dict[str, Any]],
                                                        list[str]]:
    """Validate a matrix case against the rule set: (matrix or None, expect, includes, excludes)."""
    matrix = None
    if case.matrix != ALL:
        names = [m.name for m in rules.matrices]
        if case.matrix not in names:
            raise ConfigError(f'case "{case.name}": matrix: unknown matrix \'{case.matrix}\''
                              f"{suggest(str(case.matrix), names)} (matrices: {', '.join(names)}, "
                              "or `all` for the full ranking)", file=case.file)
        matrix = rules.matrix(case.matrix)
    scope_rules = [r for m in ([matrix] if matrix is not None else rules.matrices) for r in m.rules]
    rule_ids = {r.id for r in scope_rules}
    if case.rule is not None and case.rule not in rule_ids:
        raise ConfigError(f'case "{case.name}": rule: \'{case.rule}\' is not a rule of {case.scope}'
                          f"{suggest(case.rule, rule_ids)}", file=case.file)
    if matrix is not None and matrix.is_priority:
        if case.includes is not None or case.excludes is not None:
            raise ConfigError(f'case "{case.name}": the priority matrix gives one order: use expect: {{rule, order}}',
                              file=case.file)
        return matrix, [], [], []
    expect = _offer_list(case.expect, f'case "{case.name}": expect', case.file) if case.expect is not None else None
    includes = _offer_list(case.includes, f'case "{case.name}": includes', case.file) if case.includes else []
    excludes_raw = case.excludes or []
    if isinstance(excludes_raw, str):
        excludes_raw = [excludes_raw]
    if not isinstance(excludes_raw, list) or not all(isinstance(x, (str, int)) for x in excludes_raw):
        raise ConfigError(f'case "{case.name}": excludes: expected a list of rule or policy ids', file=case.file)
    excludes = [str(x) for x in excludes_raw]
    for where, items in (("expect", expect or []), ("includes", includes)):
        for i, item in enumerate(items):
            pid = item.get("policy")
            if pid is not None and pid not in rules.policies:
                raise ConfigError(f'case "{case.name}": {where}[{i}]: unknown policy \'{pid}\''
                                  f"{suggest(pid, rules.policies)}", file=case.file)
            rid = item.get("rule")
            if rid is not None and str(rid) not in rule_ids:
                raise ConfigError(f'case "{case.name}": {where}[{i}]: \'{rid}\' is not a rule of {case.scope}'
                                  f"{suggest(str(rid), rule_ids)}", file=case.file)
    for x in excludes:
        if x not in rule_ids and x not in rules.policies:
            raise ConfigError(f'case "{case.name}": excludes: \'{x}\' is neither a rule of {case.scope} nor a policy'
                              f"{suggest(x, [*rule_ids, *rules.policies])}", file=case.file)
    return matrix, expect, includes, excludes


def _judge_offers(case: Case, matrix: Any, actual: list[dict[str, Any]], expect: list[dict[str, Any]] | None,
                  includes: list[dict[str, Any]], excludes: list[str], matrix_file: str | None) -> CaseResult:
    with_matrix = matrix is None
    fired = {(r["matrix"], r["rule_id"]) for r in actual}
    problems: list[str] = []
    details: list[str] = []
    if expect is not None:
        same = len(expect) == len(actual) and all(_offer_matches(e, a) for e, a in zip(expect, actual))
        if not same:
            if not expect:
                problems.append(f"expected no offer, got {len(actual)}")
            elif not actual:
                problems.append(f"expected {len(expect)} offer{'s' if len(expect) > 1 else ''}, got no offer")
            else:
                first = next((i for i, (e, a) in enumerate(zip(expect, actual)) if not _offer_matches(e, a)),
                             min(len(expect), len(actual)))
                exp = _offer_text(expect[first], with_matrix=with_matrix) if first < len(expect) else "nothing more"
                show = first < len(expect) and "script" in expect[first]
                got = (_offer_text(actual[first], with_matrix=with_matrix, with_script=show) if first < len(actual)
                       else "nothing more")
                problems.append(f"rank {first + 1}: expected {exp}, got {got}")
            details += _diff_rows(expect, actual, with_matrix=with_matrix)
    for item in includes:
        if not any(_offer_matches(item, a) for a in actual):
            problems.append(f"expected among the offers: {_offer_text(item, with_matrix=with_matrix)}")
    for x in excludes:
        hit = [a for a in actual if x in (a.get("rule_id"), a.get("policy_id"))]
        if hit:
            problems.append(f"expected no {x}, got {_offer_text(hit[0], with_matrix=with_matrix)} "
                            f"at rank {hit[0]['rank']}")
    if (includes or excludes) and expect is None and problems:
        if actual:
            details.append("    actual:")
            details += [f"    {a['rank']:>4}  {_offer_text(a, with_matrix=with_matrix)}" for a in actual]
        else:
            details.append("    actual: no offer")
    result = CaseResult(case, "fail" if problems else "pass", "; ".join(problems), details,
                        expected=list(expect or includes), actual=actual, fired=fired)
    if problems:
        result.message = _where(case, matrix_file, actual, expect or includes) + ": " + result.message
    return result


def _where(case: Case, matrix_file: str | None, actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> str:
    """'matrix retention (matrices/retention.yaml), rule R6' for failure messages."""
    text = case.scope + (f" ({matrix_file})" if matrix_file else "")
    rules = [case.rule] if case.rule else sorted({str(e["rule"]) for e in expected if e.get("rule")})
    if not rules:
        rules = sorted({str(a["rule_id"]) for a in actual})[:3]
        if rules:
            return text + ", fired rule" + ("s " if len(rules) > 1 else " ") + ", ".join(rules)
    if rules:
        text += ", rule" + ("s " if len(rules) > 1 else " ") + ", ".join(rules)
    return text


def _judge_priority(case: Case, matrix: Any, actual: dict[str, Any] | None, matrix_file: str | None) -> CaseResult:
    raw = case.expect
    where = f'case "{case.name}": expect'
    if isinstance(raw, str) and raw.strip().lower() in NO_OFFER:
        expected: dict[str, Any] | None = None
    elif isinstance(raw, dict):
        unknown_keys(raw, PRIORITY_KEYS, file=Path(case.file), at=where)
        expected = {k: v for k, v in raw.items() if v is not None}
        if not expected:
            raise ConfigError(f"{where}: give rule and/or order", file=case.file)
        ids = {r.id for r in matrix.rules}
        if "rule" in expected and str(expected["rule"]) not in ids:
            raise ConfigError(f"{where}: rule: '{expected['rule']}' is not a rule of matrix {matrix.name}"
                              f"{suggest(str(expected['rule']), ids)}", file=case.file)
        if "order" in expected and not isinstance(expected["order"], list):
            raise ConfigError(f"{where}: order: expected a list of families, got {expected['order']!r}", file=case.file)
    else:
        raise ConfigError(f"{where}: expected a mapping {{rule: P2, order: [retention, traffic]}} or `no offer`",
                          file=case.file)

    def text(row: dict[str, Any] | None) -> str:
        if row is None:
            return "no order (outside the priority matrix's where)"
        parts = []
        if "rule" in row:
            parts.append(f"rule {row['rule']}")
        if "order" in row:
            parts.append("order [" + ", ".join(map(str, row["order"])) + "]")
        return ", ".join(parts)

    got = None if actual is None else {"rule": actual["rule_id"], "order": list(actual["order"])}
    fired = {(matrix.name, actual["rule_id"])} if actual else set()
    if expected is None:
        ok = got is None
    else:
        ok = got is not None and all(
            (str(got["rule"]) == str(v)) if k == "rule" else ([str(x) for x in got["order"]] == [str(x) for x in v])
            for k, v in expected.items())
    shown_got = None if got is None else {k: got[k] for k in (expected or got)}
    result = CaseResult(case, "pass" if ok else "fail", expected=[expected] if expected else [],
                        actual=[got] if got else [], fired=fired)
    if not ok:
        rule = case.rule or (expected or {}).get("rule") or (got or {}).get("rule")
        result.message = (f"matrix {matrix.name} ({matrix_file or matrix.file}), rule {rule}: "
                          f"expected {text(expected)}, got {text(shown_got)}")
        if got is not None and expected is not None and "rule" not in expected:
            result.message += f" (rule {got['rule']})"
    return result


def _run_matrix_file(cf: CaseFile, cases: list[Case], month: str, project: Project, builder: CustomerBuilder,
                     matrix_file: dict[str, str], warnings: list[str]) -> list[CaseResult]:
    rules = project.rules
    results: dict[int, CaseResult] = {}
    checked: dict[int, tuple[Any, Any, Any, Any]] = {}
    customers = []
    for case in cases:
        try:
            checked[case.no] = _check_matrix_case(case, rules)
            customers.append((case.msisdn, builder.check(case, {**cf.customer, **case.customer})))
        except ConfigError as exc:
            results[case.no] = _error(case, exc.render())
    runnable = [c for c in cases if c.no not in results]
    if not runnable:
        return [results[c.no] for c in cases]
    with MemoryDatabase() as db:
        con = db.c
        needs_full = any(checked[c.no][0] is None or checked[c.no][0].is_priority for c in runnable)
        try:
            builder.create(con, month, customers)
            # The full run (priority orders and the whole ranking) only when a case looks at it.
            full = evaluate(db, project, month) if needs_full else None
        except MktoolError as exc:
            for c in runnable:
                results[c.no] = _error(c, f"{c.scope}: {exc.render()}")
            return [results[c.no] for c in cases]
        except duckdb.Error as exc:
            for c in runnable:
                results[c.no] = _error(c, f"{c.scope}: DuckDB: {str(exc).splitlines()[0]}")
            return [results[c.no] for c in cases]
        if full is not None:
            warnings.extend(w for w in full.warnings if w not in warnings)
        cols = ["msisdn", "rank", "matrix", "rule_id", "policy_id", "group", "script"]

        def offers(table: str, where: str = "", params: Sequence[Any] = ()) -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {}
            sql = f'SELECT {", ".join(chr(34) + c + chr(34) for c in cols)} FROM {table} {where} ORDER BY msisdn, rank'
            for row in con.execute(sql, list(params)).fetchall():
                out.setdefault(row[0], []).append(dict(zip(cols, row)))
            return out

        ranked: dict[str, list[dict[str, Any]]] = {}
        priority: dict[str, dict[str, Any]] = {}
        if full is not None:
            ranked = offers("recommendations")
            priority = {r[0]: {"rule_id": r[1], "order": r[2]} for r in con.execute(
                "SELECT msisdn, priority_rule_id, family_order FROM customer_priority").fetchall()}
            con.execute("DROP TABLE recommendations")  # so that --only runs below do not keep its rows
            con.execute("DROP TABLE customer_priority")
        per_matrix: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for name in sorted({checked[c.no][0].name for c in runnable
                            if checked[c.no][0] is not None and not checked[c.no][0].is_priority}):
            try:
                result = evaluate(db, project, month, only=[name], dry_run=True)
                warnings.extend(w for w in result.warnings if w not in warnings)
                per_matrix[name] = offers(PREVIEW_TABLE, "WHERE matrix = ?", [name])
            except MktoolError as exc:
                for c in runnable:
                    if c.matrix == name:
                        results[c.no] = _error(c, f"{c.scope}: {exc.render()}")
        for c in runnable:
            if c.no in results:
                continue
            matrix, expect, includes, excludes = checked[c.no]
            mfile = matrix_file.get(matrix.name) if matrix is not None else None
            try:
                if matrix is not None and matrix.is_priority:
                    results[c.no] = _judge_priority(c, matrix, priority.get(c.msisdn), mfile)
                else:
                    actual = (ranked if matrix is None else per_matrix[matrix.name]).get(c.msisdn, [])
                    results[c.no] = _judge_offers(c, matrix, actual, expect, includes, excludes, mfile)
            except ConfigError as exc:
                results[c.no] = _error(c, exc.render())
    return [results[c.no] for c in cases]


# -- plan cases ------------------------------------------------------------------------------------
PLAN_COLUMNS = ("rank", "current_plan_id", "plan_id", "plan_name", *MONEY, *RATES)


def _create_plans(con: duckdb.DuckDBPyConnection, cf: CaseFile) -> None:
    contract = TABLES["plans"]
    defaults = {"product_status": 1, "is_target": True}
    cols = ", ".join(f'"{c.name}" {c.type}' for c in contract.columns)
    con.execute(f"CREATE OR REPLACE TABLE plans ({cols})")
    if cf.plans_file is not None:
        path = quote_literal(str(cf.plans_file))
        reader = "read_parquet" if cf.plans_file.suffix.lower() == ".parquet" else "read_csv_auto"
        have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}({path})").fetchall()}
        literal = {"product_status": "1", "is_target": "true"}
        select = ", ".join(
            f'CAST("{c.name}" AS {c.type})' if c.name in have
            else f"CAST({literal.get(c.name, 'NULL')} AS {c.type})" for c in contract.columns)
        con.execute(f"INSERT INTO plans SELECT {select} FROM {reader}({path})")
    rows = []
    for i, raw in enumerate(cf.plans or []):
        where = f"plans[{i}]"
        unknown_keys(raw, set(contract.column_names), file=cf.path, at=where)
        if raw.get("plan_id") is None:
            raise ConfigError(f"{where}: plan_id: missing", file=str(cf.path))
        values = {**defaults, **raw}
        rows.append([convert_value(values.get(c.name), c.type, f"{where}: {c.name}", str(cf.path))
                     for c in contract.columns])
    if rows:
        con.executemany(f"INSERT INTO plans VALUES ({', '.join('?' * len(rows[0]))})", rows)


def _plan_expect(case: Case) -> list[dict[str, Any]]:
    raw = case.expect
    where = f'case "{case.name}": expect'
    if isinstance(raw, str) and raw.strip().lower() in NO_PLAN:
        return []
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ConfigError(f"{where}: expected the plan (a mapping such as {{plan_id: ZX158, new_total: 228.00}}), "
                          "a list of plans in rank order, or `no plan`", file=case.file)
    for i, r in enumerate(raw):
        unknown_keys(r, PLAN_KEYS, file=Path(case.file), at=f"{where}[{i}]")
    if case.stage is not None and raw:
        raise ConfigError(f'case "{case.name}": stage: only with expect: no plan', file=case.file)
    return [dict(r) for r in raw]


def _run_plan_file(cf: CaseFile, cases: list[Case], month: str, matrices_dir: Path,
                   builder: CustomerBuilder, plan_config: PlanConfig | None) -> list[CaseResult]:
    results: dict[int, CaseResult] = {}
    customers = []
    configs = {}
    expects = {}
    try:  # plan.yaml as validate_all loaded it; read again only for the error text when it did not load
        base_config = plan_config or load_plan_config(matrices_dir)
    except ConfigError as exc:
        return [_error(c, exc.render()) for c in cases]
    for case in cases:
        try:
            customers.append((case.msisdn, builder.check(case, {**cf.customer, **case.customer})))
            try:
                configs[case.no] = base_config.with_overrides(**case.config)
            except MktoolError as exc:
                raise ConfigError(f'case "{case.name}": config: {exc.message}', file=case.file) from None
            expects[case.no] = _plan_expect(case)
        except ConfigError as exc:
            results[case.no] = _error(case, exc.render())
    runnable = [c for c in cases if c.no not in results]
    if not runnable:
        return [results[c.no] for c in cases]
    with MemoryDatabase() as db:
        con = db.c
        try:
            _create_plans(con, cf)
            builder.create(con, month, customers)
        except (ConfigError, duckdb.Error) as exc:
            message = exc.render() if isinstance(exc, ConfigError) else f"{cf.path}: plans: {str(exc).splitlines()[0]}"
            return [results.get(c.no) or _error(c, message) for c in cases]
        for c in runnable:
            config = configs[c.no]
            q = recommend_query(month, config, ordered=False)
            rows = con.execute(f"SELECT {', '.join(PLAN_COLUMNS)} FROM ({q.sql}) AS r WHERE msisdn = $case_msisdn "
                               "ORDER BY rank", {**q.params, "case_msisdn": c.msisdn}).fetchall()
            actual = [dict(zip(PLAN_COLUMNS, r)) for r in rows]
            fq = funnel_query(month, config)
            flags = con.execute(f"WITH {CANDIDATES_SQL} SELECT is_active, has_min_data, on_eligible_plan, is_billable "
                                "FROM staged WHERE msisdn = $case_msisdn",
                                {**fq.params, "case_msisdn": c.msisdn}).fetchone()
            stage = next((s for s, ok in zip(STAGES[1:5], flags or (False,) * 4) if not ok), None)
            if stage is None and not actual:
                stage = "in_rate_window"
            expected = expects[c.no]
            keys = list(dict.fromkeys(k for e in expected for k in e)) or ["plan_id", "new_total", *RATES]
            ok = len(expected) == len(actual) and all(_plan_matches(e, a) for e, a in zip(expected, actual))
            if ok and not expected and c.stage is not None:
                ok = stage == c.stage
            result = CaseResult(c, "pass" if ok else "fail", expected=expected, actual=actual)
            if not ok:
                settings = (f"total change {config.total_change}, rental change {config.rental_change}, "
                            f"top {config.top}, min data {config.min_data_mb:g} MB")
                if not expected:
                    want = "no plan" + (f" (stops at stage {c.stage})" if c.stage else "")
                    got = (f"{len(actual)} plan(s): {_plan_text(actual[0], keys)}" if actual
                           else f"no plan, stops at stage {stage}")
                elif not actual:
                    want, got = _plan_text(expected[0], keys), f"no plan (the customer stops at stage {stage})"
                else:
                    i = next((i for i, (e, a) in enumerate(zip(expected, actual)) if not _plan_matches(e, a)),
                             min(len(expected), len(actual)))
                    want = f"rank {i + 1}: " + (_plan_text(expected[i], keys) if i < len(expected) else "nothing more")
                    got = _plan_text(actual[i], keys) if i < len(actual) else "nothing more"
                result.message = f"plan ({matrices_dir / 'plan.yaml'}; {settings}): expected {want}, got {got}"
                n = max(len(expected), len(actual))
                result.details = [f"    rank {i + 1}: expected "
                                  f"{_plan_text(expected[i], keys) if i < len(expected) else '-'}"
                                  f"\n            actual   {_plan_text(actual[i], keys) if i < len(actual) else '-'}"
                                  for i in range(n)]
            results[c.no] = result
    return [results[c.no] for c in cases]


# -- scene cases (issue 14 §7): an event through the trigger step's own outcome queries ---------------------
_CASE_EVENTS = "_mk_case_events"  # the cases' events, one per case: the batch under test
_CASE_EARLIER = "_mk_case_earlier"  # the cases' earlier triggers, shaped like scene_events
EARLIER_BATCH = "earlier"  # the batch id of a case's earlier triggers (blocked_by_batch shows it)
TEST_BATCH = "test"  # the batch id of the cases' own batch
#: The "matrix" of a scene's coverage entry: a scene has a passing case where it fires and one
#: where an event of its type does not fire it (any other outcome of the scene).
SCENES_SCOPE = "(scenes)"
EXPECTABLE = tuple(o for o in SCENE_OUTCOMES if o != "no_scene") + ("no_scene",)


@dataclass
class _SceneCase:
    """A scene case checked against the project: its event's type, earlier rows and expectation."""

    event_type: str
    earlier: list[tuple[Any, ...]]  # rows of _CASE_EARLIER
    expect: list[dict[str, Any]]  # {scene, outcome, wave?}; [] = no trigger


def _scene_named(case: Case, sid: Any, scenes: dict[str, Scene], where: str) -> Scene:
    if sid is None:
        raise ConfigError(f'case "{case.name}": {where}: scene: missing (the case names no scene, and the file '
                          "none: give scene: <id>)", file=case.file)
    scene = scenes.get(str(sid))
    if scene is None:
        known = ", ".join(scenes) or "none: add matrices/scenes.yaml"
        raise ConfigError(f'case "{case.name}": {where}: unknown scene \'{sid}\'{suggest(str(sid), scenes)} '
                          f"(scenes: {known})", file=case.file)
    return scene


def _wave_named(case: Case, scene: Scene, wave: Any, where: str) -> int:
    """The level of ``wave`` of ``scene`` (a scene with one wave: that one when none is named)."""
    if wave is None:
        if len(scene.waves) == 1:
            return scene.waves[0].level
        raise ConfigError(f'case "{case.name}": {where}: wave: missing: scene {scene.id} has waves '
                          f"{', '.join(w.id for w in scene.waves)}", file=case.file)
    for w in scene.waves:
        if w.id == str(wave):
            return w.level
    ids = [w.id for w in scene.waves]
    raise ConfigError(f'case "{case.name}": {where}: wave: \'{wave}\' is not a wave of scene {scene.id}'
                      f"{suggest(str(wave), ids)} (waves: {', '.join(ids)})", file=case.file)


def _check_scene_case(case: Case, scenes: dict[str, Scene]) -> _SceneCase:
    """Validate a scene case against the project's scenes (unknown scene, wave or outcome: an error naming the case)."""
    scope = _scene_named(case, case.scene, scenes, "scene") if case.scene is not None else None
    event_type = case.event.get("event_type") or (scope.event_type if scope else None)
    if not event_type:
        raise ConfigError(f'case "{case.name}": event: event_type: missing (the case names no scene to take it from)',
                          file=case.file)
    earlier = []
    for i, item in enumerate(case.earlier):
        where = f"earlier[{i}]"
        scene = _scene_named(case, item["scene"] or case.scene, scenes, where)
        level = _wave_named(case, scene, item["wave"], where)
        wave = next(w.id for w in scene.waves if w.level == level)
        row = {"batch": EARLIER_BATCH, "seq": i + 1, "msisdn": case.msisdn, "event_time": item["event_time"],
               "event_type": scene.event_type, "scene_id": scene.id, "wave": wave, "wave_level": level,
               "outcome": FIRED, "policy_id": scene.policy}
        earlier.append(tuple(row.get(name) for name, _ in SCENE_EVENTS_COLUMNS))
    raw = case.expect
    where = f'case "{case.name}": expect'
    if isinstance(raw, str) and raw.strip().lower() in NO_TRIGGER:
        return _SceneCase(event_type, earlier, [])
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(r, dict) for r in raw):
        raise ConfigError(f"{where}: expected the trigger ({{scene: X, wave: W}}), a list of them, an outcome "
                          f"({{scene: X, outcome: stale}}) or `no trigger`, got {raw!r}", file=case.file)
    expect: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        at = f"expect[{i}]"
        unknown_keys(item, TRIGGER_KEYS, file=Path(case.file), at=f'case "{case.name}": {at}')
        outcome = str(item.get("outcome", FIRED))
        if outcome not in SCENE_OUTCOMES:
            raise ConfigError(f'case "{case.name}": {at}: outcome: \'{outcome}\' is not an outcome'
                              f"{suggest(outcome, SCENE_OUTCOMES)} (outcomes: {', '.join(EXPECTABLE)})",
                              file=case.file)
        sid = item.get("scene", case.scene)
        if outcome in ("duplicate", "no_scene"):  # an event's outcome before any scene: it has none
            expect.append({"scene": None, "outcome": outcome})
            continue
        scene = _scene_named(case, sid, scenes, at)
        if scope is not None and scene.id != scope.id:
            raise ConfigError(f'case "{case.name}": {at}: scene {scene.id} is outside the case\'s scope (scene '
                              f"{scope.id}): leave the case's scene out to see every scene", file=case.file)
        if scene.event_type != event_type:
            raise ConfigError(f'case "{case.name}": {at}: scene {scene.id} listens to {scene.event_type}, not to '
                              f"the case's event {event_type}", file=case.file)
        entry = {"scene": scene.id, "outcome": outcome}
        if item.get("wave") is not None:
            if outcome not in (FIRED, "once_per"):
                raise ConfigError(f'case "{case.name}": {at}: wave: only a fired or once_per event has a wave',
                                  file=case.file)
            entry["wave"] = next(w.id for w in scene.waves
                                 if w.level == _wave_named(case, scene, item["wave"], at))
        if any(e["scene"] == scene.id for e in expect):
            raise ConfigError(f'case "{case.name}": {at}: scene {scene.id} is expected twice (one event decides '
                              "once per scene)", file=case.file)
        expect.append(entry)
    return _SceneCase(event_type, earlier, expect)


def _trigger_text(row: dict[str, Any]) -> str:
    if not row:
        return "-"
    outcome = row.get("outcome", FIRED)
    head = f"{row['scene']}" if row.get("scene") else "(no scene)"
    text = f"{head} {outcome}" + (f" wave {row['wave']}" if row.get("wave") else "")
    if row.get("blocked_by_time") is not None:
        text += f" (blocked by the trigger of {row['blocked_by_time']}, batch {row.get('blocked_by_batch')})"
    return text


def _judge_scene(case: Case, checked: _SceneCase, actual: list[dict[str, Any]]) -> CaseResult:
    """Each expectation names its scene's outcome (and wave); no other scene in scope may fire."""
    problems: list[str] = []
    for e in checked.expect:
        got = next((a for a in actual if a["scene"] == e["scene"]), None)
        if got is None or got["outcome"] != e["outcome"] or ("wave" in e and got["wave"] != e["wave"]):
            problems.append(f"expected {_trigger_text(e)}, got {_trigger_text(got) if got else 'no outcome'}")
    named = {e["scene"] for e in checked.expect}
    for a in actual:
        if a["outcome"] == FIRED and a["scene"] not in named:
            problems.append(f"expected no trigger of {a['scene']}, got {_trigger_text(a)}")
    result = CaseResult(case, "fail" if problems else "pass", expected=checked.expect, actual=actual)
    if problems:
        event = case.event
        result.message = (f"{case.scope}, event {checked.event_type} value {event.get('value')} at "
                          f"{event['event_time']}" + (f", watermark {case.watermark}" if case.watermark else "")
                          + f": {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        result.details = ["    expected: " + ("; ".join(_trigger_text(e) for e in checked.expect) or "no trigger"),
                          "    actual:   " + ("; ".join(_trigger_text(a) for a in actual) or "no outcome")]
    return result


def _run_scene_file(cf: CaseFile, cases: list[Case], month: str, project: Project,
                    builder: CustomerBuilder) -> list[CaseResult]:
    """The file's scene cases as batches of the trigger step (one per distinct watermark) on an in-memory
    database: the case customers as customer_view, their earlier triggers as scene_events, and
    mktool.scene's own outcome queries deciding every event."""
    results: dict[int, CaseResult] = {}
    scenes = {s.id: s for s in project.scenes}
    customers: list[tuple[str, dict[str, Any]]] = []
    checked: dict[int, _SceneCase] = {}
    for case in cases:
        try:
            given = builder.check(case, {**cf.customer, **case.customer})
            checked[case.no] = _check_scene_case(case, scenes)
            customers.append((case.msisdn, given))
        except ConfigError as exc:
            results[case.no] = _error(case, exc.render())
    runnable = [c for c in cases if c.no not in results]
    if not runnable:
        return [results[c.no] for c in cases]
    with MemoryDatabase() as db:
        con = db.c
        builder.create(con, month, customers, table=VIEW_TABLE)
        cols = ", ".join(f"{quote_identifier(name)} {type_}" for name, type_ in SCENE_EVENTS_COLUMNS)
        con.execute(f"CREATE TEMP TABLE {_CASE_EARLIER} ({cols})")
        earlier = [row for c in runnable for row in checked[c.no].earlier]
        if earlier:
            con.executemany(f"INSERT INTO {_CASE_EARLIER} VALUES ({', '.join('?' * len(SCENE_EVENTS_COLUMNS))})",
                            earlier)
        batches: dict[Any, list[Case]] = {}
        for c in runnable:
            batches.setdefault(c.watermark, []).append(c)
        for watermark, batch in batches.items():
            con.execute(f"CREATE OR REPLACE TEMP TABLE {_CASE_EVENTS} (msisdn VARCHAR, event_time TIMESTAMP, "
                        "event_type VARCHAR, value DOUBLE)")
            con.executemany(f"INSERT INTO {_CASE_EVENTS} VALUES (?, ?, ?, ?)",
                            [(c.msisdn, c.event["event_time"], checked[c.no].event_type, c.event.get("value"))
                             for c in batch])
            con.execute(events_query(f"SELECT msisdn, event_time, event_type, value FROM {_CASE_EVENTS}").sql)
            run_outcomes(con, outcome_queries(project.scenes, project.policies, view_month=month, watermark=watermark,
                                              batch=TEST_BATCH, earlier=_CASE_EARLIER, view=VIEW_TABLE))
            rows = con.execute(f"SELECT msisdn, scene_id, wave, outcome, blocked_by_time, blocked_by_batch "
                               f"FROM {SCENE_OUTCOMES_TEMP} ORDER BY seq").fetchall()
            for c in batch:
                actual = [{"scene": sid, "wave": wave, "outcome": outcome, "blocked_by_time": blocked_time,
                           "blocked_by_batch": blocked_batch}
                          for msisdn, sid, wave, outcome, blocked_time, blocked_batch in rows
                          if msisdn == c.msisdn and (c.scene is None or sid in (c.scene, None))]
                results[c.no] = _judge_scene(c, checked[c.no], actual)
    return [results[c.no] for c in cases]


# -- the run ---------------------------------------------------------------------------------------
def _selected(case: Case, pattern: str | None) -> bool:
    if not pattern:
        return True
    p = pattern.lower()
    fields = [case.file, Path(case.file).name, Path(case.file).stem, case.name, case.matrix or "", case.rule or "",
              case.kind, case.scene or ""]
    if any(ch in p for ch in "*?["):
        return any(fnmatch.fnmatch(f.lower(), p) for f in fields)
    return any(p in f.lower() for f in fields)


def run_tests(matrices_dir: Path, *, pattern: str | None = None, month: str | None = None,
              reporter: Reporter = QUIET) -> TestRun:
    """Run every selected case of the folder's test files; never raises for a failing case."""
    matrices_dir = Path(matrices_dir)
    files, problems = discover(matrices_dir)
    if problems:
        more = len(problems) - 1
        raise ConfigError(problems[0], hint=f"{more} more problem{'s' if more > 1 else ''} in the test files: "
                                            + "; ".join(problems[1:3]) if more else None)
    selected = [(cf, [c for c in cf.cases if _selected(c, pattern)]) for cf in files]
    selected = [(cf, cases) for cf, cases in selected if cases]
    report = validate_all(matrices_dir)
    rule_errors = [p.text for p in report.errors]
    rules = report.rules
    warnings = [p.text for p in report.warnings]
    matrix_file = ({m.name: m.file for m in rules.matrices} if rules is not None
                   else matrix_files_by_name(matrices_dir))
    builder = None
    model_error = None
    try:  # the model validate_all loaded; read again only for the error text when it did not load
        builder = CustomerBuilder(report.scores or load_score_model(matrices_dir))
    except ConfigError as exc:
        model_error = exc.render()
    project = project_from_report(report) if rules is not None else None  # rules: set only without errors
    results: list[CaseResult] = []
    for cf, cases in selected:
        m = cf.month or month or current_month()  # a file that pins its month keeps it
        matrix_cases = [c for c in cases if c.kind == "matrix"]
        plan_cases = [c for c in cases if c.kind == "plan"]
        scene_cases = [c for c in cases if c.kind == "scene"]
        with reporter.step(f"testing {cf.path.name}"):
            if matrix_cases:
                if builder is None:
                    results += [_error(c, f"{c.scope}: cannot build the customer: {model_error}") for c in matrix_cases]
                elif project is None:
                    results += [_error(c, _rule_error_for(c, rule_errors, matrix_file)) for c in matrix_cases]
                else:
                    results += _run_matrix_file(cf, matrix_cases, m, project, builder, matrix_file, warnings)
            if plan_cases:
                if builder is None:
                    results += [_error(c, f"plan: cannot build the customer: {model_error}") for c in plan_cases]
                else:
                    results += _run_plan_file(cf, plan_cases, m, matrices_dir, builder, report.plan)
            if scene_cases:
                if builder is None:
                    results += [_error(c, f"{c.scope}: cannot build the customer: {model_error}") for c in scene_cases]
                elif project is None:
                    results += [_error(c, _scene_rule_error(c, rule_errors)) for c in scene_cases]
                else:
                    results += _run_scene_file(cf, scene_cases, m, project, builder)
    coverage = _coverage(rules, results) if rules is not None and not pattern else []
    return TestRun(matrices_dir, [cf.path for cf, _ in selected], results, rule_errors, warnings, coverage,
                   {str(cf.path): cf for cf, _ in selected})


def _rule_error_for(case: Case, errors: list[str], matrix_file: dict[str, str]) -> str:
    """The validation error that stops this case: its matrix's first error, else the folder's first."""
    mine = matrix_file.get(case.matrix or "")
    chosen = (next((e for e in errors if mine and e.startswith(mine)), None)
              or (errors[0] if errors else "rules do not load"))
    return f"{case.scope}: the rules do not load: {chosen}"


def _scene_rule_error(case: Case, errors: list[str]) -> str:
    """The validation error that stops a scene case: the first in a scene file, else the folder's first."""
    chosen = (next((e for e in errors if "scenes" in e.split(":", 1)[0]), None)
              or (errors[0] if errors else "rules do not load"))
    return f"{case.scope}: the rules do not load: {chosen}"


def _coverage(rules: Any, results: list[CaseResult]) -> list[tuple[str, str, str, bool, bool]]:
    """Per rule: does a passing case see it fire, and does a passing case about it see it not fire?"""
    fires: set[tuple[str, str]] = set()
    not_fires: set[tuple[str, str]] = set()
    for r in results:
        if not r.ok or r.case.kind != "matrix":
            continue
        fires |= r.fired
        scope = [m for m in rules.matrices if r.case.matrix in (ALL, m.name)]
        named = set(map(str, r.case.excludes or [])) if isinstance(r.case.excludes, list) else (
            {str(r.case.excludes)} if r.case.excludes else set())
        if r.case.rule:
            named.add(r.case.rule)
        for m in scope:
            for rule in m.rules:
                if (m.name, rule.id) in r.fired:
                    continue
                if rule.id in named or (rule.policy is not None and rule.policy in named):
                    not_fires.add((m.name, rule.id))
    out = [(m.file, m.name, rule.id, (m.name, rule.id) in fires, (m.name, rule.id) in not_fires)
           for m in rules.matrices for rule in m.rules]
    scene_fires = {a["scene"] for r in results if r.ok and r.case.kind == "scene" for a in r.actual
                   if a["outcome"] == FIRED}
    scene_not = {a["scene"] for r in results if r.ok and r.case.kind == "scene" for a in r.actual
                 if a["scene"] is not None and a["outcome"] != FIRED}
    return out + [(s.file, SCENES_SCOPE, s.id, s.id in scene_fires, s.id in scene_not) for s in rules.scenes]
