"""`mktool test`: rule unit tests written by analysts next to their rules.

A test file (``matrices/tests/*.yaml``) lists cases. A case is a partial customer — only the
customer_view columns that matter — and the outcome the rules must give it. Every case runs
in an in-memory DuckDB, without extracts or the user's database, through exactly the code the
month-end run uses: the case customers become a ``customer_view`` table and
:func:`mktool.matrices.evaluate` (matrix cases) or :func:`mktool.plan.recommend_query` (plan
cases) run on it.

How a case customer is completed (see :data:`DEFAULT_CUSTOMER` and docs/analyst-workflow.md):

1. base and feature columns the case gives are used as given; the others take the default
   customer's value (file-level ``customer:`` defaults override the built-in ones);
2. a few base columns are computed from their parts unless given, with the same formulas as
   sql/customer_view_base.sql (:data:`DERIVED`): tenure_months from join_date (or join_date
   from tenure_months), current_total_3m, in_net_share, voice_total_min, ld_unit_price,
   month_end, contract_ends_3m, bundle_ends_3m;
3. value_score / value_tier (percentile ranks over the whole month, meaningless for one
   customer) are given or default to 50 / ``mid``;
4. every score column of scores.yaml (has_bundle, stickiness_*, churn_*, *_potential,
   traffic_group, tenure_cohort, segment, ...) is computed by scores.yaml's own SQL from the
   columns above, unless the case gives it; a given score feeds the scores after it.

Case files (keys; everything but ``cases`` / ``plan_cases`` is optional)::

    month: 2026-10                # evaluation month [default: --month, else the current month]
    matrix: retention             # default scope of the cases below
    customer: {status: active}    # defaults shared by the file's cases
    cases:                        # matrix cases
      - case: R6 fires for a loyal customer at 100 <= arpu_3m < 150
        rule: R6                  # the rule under test (reports, coverage)
        matrix: retention         # a matrix, `all` (the full ranked recommendation) or the priority matrix
        customer: {tenure_months: 13, return_rate: 87, arpu_3m: 100}
        expect: [{policy: PREPAY_300_600, rule: R6, group: 6}]   # exact, in rank order; or: no offer
        includes: [...]           # offers that must be among the customer's (optional)
        excludes: [R7, PREPAY_100_260]   # rule or policy ids that must not appear (optional)
    plans: [...]                  # the plan catalogue for plan cases (or plans_file: CSV/Parquet)
    plan_cases:
      - case: SPEC §5 worked example
        customer: {plan_id: ZX128, rental_3m: 128, data_overage_3m: 62, addon_3m: 30, ...}
        config: {rental_change: "1.0:1.3"}   # plan.yaml overrides (total_change, rental_change, top, min_data_mb)
        expect: {plan_id: ZX158, new_total: 228.00, total_fee_change: 1.0364, rental_change: "123%"}
        # or expect: no plan, with stage: data_ge_min (the funnel stage the customer fails)

A matrix file may one day carry its own ``tests:`` list (same case keys, scope: that matrix);
:func:`discover` reads it, but mktool.rules does not accept the key yet.
"""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from mktool.console import QUIET, Reporter
from mktool.contract import MONTH_RE, TABLES, month_from_index, month_index
from mktool.database import BOOKKEEPING_DDL, Database
from mktool.dialect import exact_decimal, py_round_half_away
from mktool.errors import ConfigError, MktoolError
from mktool.matrices import PREVIEW_TABLE, evaluate
from mktool.plan import CANDIDATES_SQL, STAGES, funnel_query, recommend_query
from mktool.planconfig import load_plan_config
from mktool.project import Project, project_from_report
from mktool.rules import matrix_files, matrix_files_by_name, validate_all
from mktool.schema import MONEY_COLUMNS, PLAN_STAGES, RATE_COLUMNS
from mktool.scoremodel import ScoreModel, load_score_model, view_params, view_sql
from mktool.sqlquote import quote_literal
from mktool.yamlio import load_yaml, unknown_keys

__all__ = [
    "DEFAULT_CUSTOMER",
    "DERIVED",
    "Case",
    "CaseFile",
    "CaseResult",
    "CustomerBuilder",
    "MemoryDatabase",
    "TestRun",
    "build_customer_view",
    "coverage_problems",
    "default_customer_rows",
    "discover",
    "junit_xml",
    "read_case_file",
    "render_report",
    "result_document",
    "run_tests",
    "view_column_types",
]

ALL = "all"  # matrix scope: the full ranked recommendation of every matrix
NO_OFFER = ("no offer", "no offers", "none", "nothing")
NO_PLAN = ("no plan", "none", "nothing")
FILE_KEYS = {"month", "matrix", "customer", "cases", "plans", "plans_file", "plan_cases", "doc", "description"}
CASE_KEYS = {"case", "rule", "matrix", "customer", "expect", "includes", "excludes", "doc", "description"}
PLAN_CASE_KEYS = {"case", "customer", "config", "expect", "stage", "doc", "description"}
OFFER_KEYS = {"policy", "rule", "rank", "group", "matrix", "script"}
PRIORITY_KEYS = {"rule", "order"}
PLAN_CONFIG_KEYS = {"total_change", "rental_change", "top", "min_data_mb"}
MONEY, RATES = MONEY_COLUMNS, RATE_COLUMNS  # money to 2 decimals, rates to 4 (as in the lists)
PLAN_KEYS = {"rank", "plan_id", "plan_name", "current_plan_id", *MONEY, *RATES}
CASE_STAGES = PLAN_STAGES[1:]  # a plan case names the stage a customer stops at; "base" has everyone

#: The default customer: an active postpaid 4G customer of two years on 自选组合128, paying
#: 128 yuan a month with no overage or add-on, 300 minutes and 600 MB a month, 20 contacts
#: (10 on our network), no bundle, contract, group or virtual network, no value-added service.
#: With the shipped scores.yaml that is stickiness none, no churn signal, no new-service
#: potential, traffic group local, segment potential. Columns of :data:`DERIVED` are computed.
DEFAULT_CUSTOMER: dict[str, Any] = {
    "city": "杭州", "plan_id": "ZX128", "status": "active", "payment": "postpaid", "handset_gen": "4G",
    "vnet": False, "group_id": None, "balance": 0.0, "bundle_type": None, "bundle_end": None, "contract_end": None,
    "tenure_months": 24,
    "arpu": 128.0, "arpu_3m": 128.0, "rental_3m": 128.0, "voice_overage_3m": 0.0, "data_overage_3m": 0.0,
    "addon_3m": 0.0, "return_rate": 100.0, "voice_min_3m": 300.0, "data_mb_3m": 600.0, "months_in_window": 3,
    "billing_months": 3, "arpu_prev": 128.0, "ld_fee": 0.0,
    "voice_out_min": 300.0, "voice_local_min": 300.0, "voice_ld_out_min": 0.0, "voice_ld_in_min": 0.0,
    "voice_roam_min": 0.0, "ld_top_province": None, "sms_count": 10, "data_mb": 600.0, "contacts": 20,
    "contacts_in_net": 10, "voice_min_prev": 300.0, "data_mb_prev": 600.0, "contacts_prev": 20,
    "plan_name": "自选组合128", "plan_rental": 128.0, "product_status": 1,
    "vas_active": 0, "has_newspaper": False, "has_crbt": False, "has_ring_change": False, "has_mobile_internet": False,
    "value_score": 50.0, "value_tier": "mid",
}

#: Base columns computed from their parts unless a case gives them: the formulas of
#: sql/customer_view_base.sql (tests/test_ruletest.py checks them against the real view).
#: ``{month_index}``, ``{month_end}``, ``{horizon_3m}`` are the month's :func:`view_params`.
DERIVED: dict[str, str] = {
    "tenure_months": "CAST({month_index} - (year(join_date) * 12 + month(join_date)) AS INTEGER)",
    "current_total_3m": "rental_3m + voice_overage_3m + data_overage_3m + addon_3m",
    "in_net_share": "contacts_in_net / nullif(contacts, 0)",
    "voice_total_min": "voice_local_min + voice_ld_out_min + voice_ld_in_min + voice_roam_min",
    "ld_unit_price": "ld_fee / nullif(voice_ld_out_min, 0)",
    "month_end": "CAST('{month_end}' AS DATE)",
    "contract_ends_3m": "contract_end IS NOT NULL AND contract_end <= CAST('{horizon_3m}' AS DATE)",
    "bundle_ends_3m": "bundle_end IS NOT NULL AND bundle_end <= CAST('{horizon_3m}' AS DATE)",
}
ASSIGNED = ("msisdn", "month")  # set by the runner, never by a case


# -- an in-memory database with the Database interface ---------------------------------------------
class MemoryDatabase(Database):
    """A private in-memory DuckDB that the library steps accept as a :class:`Database`.

    No file, no lock, no settings: nothing outlives the object, nothing touches the user's
    database. Use as a context manager or call :meth:`close`.
    """

    def __init__(self) -> None:
        self.settings = None  # type: ignore[assignment]
        self.write = True
        self.path = Path(":memory:")
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET threads = 2")
        for ddl in BOOKKEEPING_DDL:
            self.con.execute(ddl)

    def __enter__(self) -> MemoryDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


# -- the model of a test file ----------------------------------------------------------------------
@dataclass
class Case:
    file: str
    no: int  # 1-based position among the file's cases (matrix cases first, then plan cases)
    name: str
    kind: str  # matrix | plan
    customer: dict[str, Any]  # the case's own columns (file defaults merged in by the runner)
    matrix: str | None = None  # matrix name, ALL, or None (plan)
    rule: str | None = None
    expect: Any = None  # raw expectation (validated when run against the rule set)
    includes: Any = None
    excludes: Any = None
    config: dict[str, Any] = field(default_factory=dict)  # plan overrides
    stage: str | None = None  # plan: the stage a `no plan` customer fails

    @property
    def msisdn(self) -> str:
        return f"139{self.no:08d}"

    @property
    def label(self) -> str:
        return f'{self.file}: case "{self.name}"'

    @property
    def scope(self) -> str:
        if self.kind == "plan":
            return "plan"
        return "all matrices" if self.matrix == ALL else f"matrix {self.matrix}"


@dataclass
class CaseFile:
    path: Path
    month: str | None
    customer: dict[str, Any]
    cases: list[Case]
    plans: list[dict[str, Any]] | None = None
    plans_file: Path | None = None


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
    coverage: list[tuple[str, str, str, bool, bool]]  # (file, matrix, rule, fires, not_fires)
    case_files: dict[str, CaseFile] = field(default_factory=dict)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    @property
    def uncovered(self) -> list[tuple[str, str, str, bool, bool]]:
        return [c for c in self.coverage if not (c[3] and c[4])]


# -- reading test files ----------------------------------------------------------------------------
def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _mapping(value: Any, where: str, file: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of column: value, got {value!r}", file=file)
    return {str(k): v for k, v in value.items()}


def _read_cases(raw: Any, *, file: str, default_matrix: str | None, start: int, where: str) -> list[Case]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of cases, got {type(raw).__name__}", file=file)
    cases = []
    for i, rc in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(rc, dict):
            raise ConfigError(f"{at}: expected a mapping with case, customer, expect, got {rc!r}", file=file)
        name = rc.get("case")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{at}: case: give every case a name (case: what it checks)", file=file)
        at = f'case "{name}"'
        unknown_keys(rc, CASE_KEYS, file=Path(file), at=at)
        if all(rc.get(k) is None for k in ("expect", "includes", "excludes")):
            raise ConfigError(f"{at}: nothing to check: give expect (the offers in rank order, or `no offer`), "
                              "includes or excludes", file=file)
        matrix = rc.get("matrix", default_matrix)
        cases.append(Case(
            file=file, no=start + len(cases) + 1, name=name.strip(), kind="matrix",
            customer=_mapping(rc.get("customer"), f"{at}: customer", file),
            matrix=str(matrix) if matrix is not None else ALL,
            rule=str(rc["rule"]) if rc.get("rule") is not None else None,
            expect=rc.get("expect"), includes=rc.get("includes"), excludes=rc.get("excludes"),
        ))
    return cases


def _read_plan_cases(raw: Any, *, file: str, start: int) -> list[Case]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"plan_cases: expected a list of cases, got {type(raw).__name__}", file=file)
    cases = []
    for i, rc in enumerate(raw):
        if not isinstance(rc, dict) or not isinstance(rc.get("case"), str) or not rc["case"].strip():
            raise ConfigError(f"plan_cases[{i}]: expected a mapping with a case name, customer and expect", file=file)
        at = f'case "{rc["case"]}"'
        unknown_keys(rc, PLAN_CASE_KEYS, file=Path(file), at=at)
        if rc.get("expect") is None:
            raise ConfigError(f"{at}: expect: missing: the recommended plan(s), or `no plan`", file=file)
        config = _mapping(rc.get("config"), f"{at}: config", file)
        unknown_keys(config, PLAN_CONFIG_KEYS, file=Path(file), at=f"{at}: config")
        stage = rc.get("stage")
        if stage is not None and stage not in CASE_STAGES:
            raise ConfigError(f"{at}: stage: '{stage}' is not a plan funnel stage{_suggest(stage, CASE_STAGES)}; "
                              f"stages: {', '.join(CASE_STAGES)}", file=file)
        cases.append(Case(file=file, no=start + len(cases) + 1, name=rc["case"].strip(), kind="plan",
                          customer=_mapping(rc.get("customer"), f"{at}: customer", file),
                          expect=rc["expect"], config=config, stage=stage))
    return cases


def read_case_file(path: Path) -> CaseFile:
    """One test file (``matrices/tests/*.yaml``); every problem names the file and the case."""
    file = str(path)
    doc = load_yaml(path)
    if doc is None:
        return CaseFile(path, None, {}, [])
    if not isinstance(doc, dict):
        raise ConfigError("expected a mapping with cases: (and/or plan_cases:)", file=file)
    unknown_keys(doc, FILE_KEYS, file=path, at="")
    month = doc.get("month")
    if month is not None:
        month = str(month)
        if not MONTH_RE.match(month):
            raise ConfigError(f"month: expected YYYY-MM (quote it: \"2026-10\"), got {doc['month']!r}", file=file)
    default_matrix = doc.get("matrix")
    cases = _read_cases(doc.get("cases"), file=file, default_matrix=str(default_matrix) if default_matrix else None,
                        start=0, where="cases")
    cases += _read_plan_cases(doc.get("plan_cases"), file=file, start=len(cases))
    plans = doc.get("plans")
    if plans is not None and (not isinstance(plans, list) or not all(isinstance(p, dict) for p in plans)):
        raise ConfigError("plans: expected a list of plans (mappings with plan_id, monthly_rental, ...)", file=file)
    plans_file = None
    if doc.get("plans_file") is not None:
        plans_file = (path.parent / str(doc["plans_file"])).resolve()
        if not plans_file.exists():
            raise ConfigError(f"plans_file: {doc['plans_file']} not found (read relative to the test file)", file=file)
    if any(c.kind == "plan" for c in cases) and plans is None and plans_file is None:
        raise ConfigError("plan_cases need the plan catalogue: add plans: [...] or plans_file: PATH", file=file)
    return CaseFile(path, month, _mapping(doc.get("customer"), "customer", file), cases, plans, plans_file)


def _matrix_tests(path: Path) -> CaseFile | None:
    """A matrix file's own ``tests:`` list (scope: that matrix), if it has one."""
    try:
        doc = load_yaml(path)
    except ConfigError:
        return None  # reported by the rule validation
    if not isinstance(doc, dict) or doc.get("tests") is None or "matrix" not in doc:
        return None
    cases = _read_cases(doc["tests"], file=str(path), default_matrix=str(doc["matrix"]), start=0, where="tests")
    return CaseFile(path, None, {}, cases)


def test_files(matrices_dir: Path) -> list[Path]:
    """``<matrices>/tests/**/*.yaml|yml``, sorted (hidden files and folders skipped)."""
    folder = Path(matrices_dir) / "tests"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".yaml", ".yml")
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def discover(matrices_dir: Path) -> tuple[list[CaseFile], list[str]]:
    """Every test file of the folder and every matrix file's ``tests:`` section; (files, problems)."""
    files: list[CaseFile] = []
    problems: list[str] = []
    for path in test_files(matrices_dir):
        try:
            files.append(read_case_file(path))
        except ConfigError as exc:
            problems.append(exc.render())
    if Path(matrices_dir).is_dir():
        for path in matrix_files(Path(matrices_dir)):
            try:
                found = _matrix_tests(path)
            except ConfigError as exc:
                problems.append(exc.render())
                continue
            if found is not None:
                files.append(found)
    return files, problems


# -- building the case customers ---------------------------------------------------------------------
def view_column_types(model: ScoreModel) -> dict[str, str]:
    """customer_view's columns and DuckDB types: DESCRIBE of the real view query on empty tables."""
    con = duckdb.connect(":memory:")
    try:
        for t in TABLES.values():
            con.execute(f'CREATE TABLE "{t.name}" (' + ", ".join(f'"{c.name}" {c.type}' for c in t.columns) + ")")
        rows = con.execute(f"DESCRIBE {view_sql(model, has_vas=True)}", view_params("2000-01")).fetchall()
    finally:
        con.close()
    return {str(r[0]): str(r[1]) for r in rows}


def _join_date(month: str, tenure: Any) -> dt.date | None:
    if tenure is None:
        return None
    first = month_from_index(month_index(month) - int(tenure))
    return dt.date(int(first[:4]), int(first[5:7]), 1)


_DECIMAL_RE = re.compile(r"DECIMAL\(\d+,\s*(\d+)\)")


def _decimal(value: Any, type_: str) -> Any:
    """A number for a DECIMAL(p,s) column (money): the decimal written (100.01 is 100.01, not
    the float 100.0100000000000051…), rounded half away from zero to s decimals like the view."""
    m = _DECIMAL_RE.fullmatch(type_.upper().replace(" ", ""))
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or m is None:
        return value
    return py_round_half_away(value, int(m.group(1)))


def _convert(value: Any, type_: str, where: str, file: str) -> Any:
    """A YAML value for a column of DuckDB type ``type_`` (None stays NULL)."""
    if value is None:
        return None
    t = type_.upper()
    if t == "BOOLEAN":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}", file=file)
    if t in ("DOUBLE", "FLOAT", "REAL") or t.startswith("DECIMAL"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _decimal(value, t) if t.startswith("DECIMAL") else float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}", file=file)
    if t in ("INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected a whole number, got {value!r}", file=file)
    if t == "VARCHAR":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected text, got {value!r}", file=file)
        return str(value)
    if t == "DATE":
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a date YYYY-MM-DD, got {value!r}", file=file)
    return value  # another type (a score column of a custom scores.yaml): DuckDB casts or refuses


class CustomerBuilder:
    """Completes partial case customers into customer_view rows (see the module docstring)."""

    def __init__(self, model: ScoreModel, types: dict[str, str] | None = None) -> None:
        self.model = model
        self.types = types if types is not None else view_column_types(model)
        self.columns = list(model.output_columns)
        self.score_columns = [c.name for c in model.columns]
        self.flagged = [c for c in self.columns if c in DERIVED or c in self.score_columns]

    def check(self, case: Case, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` with every value converted to its column's type; unknown columns refused."""
        out = {}
        known = [c for c in self.columns if c not in ASSIGNED]
        for col, value in given.items():
            where = f'case "{case.name}": customer: {col}'
            if col in ASSIGNED:
                raise ConfigError(f"{where}: is set by mktool test (one customer per case; month from the file or "
                                  "--month)", file=case.file)
            if col not in self.types:
                raise ConfigError(f"{where}: unknown customer_view column{_suggest(col, known)}", file=case.file)
            out[col] = _convert(value, self.types[col], where, case.file)
        return out

    def row(self, month: str, msisdn: str, given: dict[str, Any]) -> list[Any]:
        """One row of the raw table: values, then a given-flag per derived / score column."""
        values = {**DEFAULT_CUSTOMER, **given, "msisdn": msisdn, "month": month}
        values = {c: _decimal(v, self.types[c]) if c in self.types else v for c, v in values.items()}
        flags = {c: c in given for c in self.flagged}
        if "join_date" not in given:
            values["join_date"] = _join_date(month, values.get("tenure_months"))
            flags["tenure_months"] = True
        return [values.get(c) for c in self.columns] + [flags[c] for c in self.flagged]

    def sql(self, month: str) -> str:
        """The SELECT that turns the raw table into customer_view rows."""
        p = view_params(month)
        fill = {"month_index": p["month_index"], "month_end": p["month_end"], "horizon_3m": p["horizon_3m"]}
        score = set(self.score_columns)
        base_cols = []
        for c in self.columns:
            if c in score:
                base_cols.append(f'"{c}" AS "_v_{c}"')
            elif c in DERIVED:
                base_cols.append(f'CASE WHEN "_g_{c}" THEN "{c}" ELSE ({DERIVED[c].format(**fill)}) END AS "{c}"')
            else:
                base_cols.append(f'"{c}"')
        base_cols += [f'"_g_{c}"' for c in self.score_columns]
        layers = [f"base AS (SELECT {', '.join(base_cols)} FROM _mk_case_raw)"]
        prev = "base"
        for i, col in enumerate(self.model.columns):
            layers.append(f'c{i} AS (SELECT *, CASE WHEN "_g_{col.name}" THEN "_v_{col.name}" ELSE ({col.sql}) END '
                          f'AS "{col.name}" FROM {prev})')
            prev = f"c{i}"
        select = ", ".join(f'CAST("{c}" AS {self.types[c]}) AS "{c}"' for c in self.columns)
        return "WITH " + ",\n".join(layers) + f"\nSELECT {select} FROM {prev} ORDER BY msisdn"

    def create(self, con: duckdb.DuckDBPyConnection, month: str, customers: Sequence[tuple[str, dict[str, Any]]],
               table: str = "customer_view") -> None:
        cols = [f'"{c}" {self.types[c]}' for c in self.columns] + [f'"_g_{c}" BOOLEAN' for c in self.flagged]
        con.execute(f"CREATE OR REPLACE TEMP TABLE _mk_case_raw ({', '.join(cols)})")
        rows = [self.row(month, msisdn, given) for msisdn, given in customers]
        if rows:  # through Arrow: binding thousands of parameters is slow in DuckDB
            import pyarrow as pa

            names = [*self.columns, *(f"_g_{c}" for c in self.flagged)]
            arrow = pa.table({f"c{i}": pa.array([row[i] for row in rows]) for i in range(len(names))})
            con.register("_mk_case_rows", arrow)
            try:
                con.execute("INSERT INTO _mk_case_raw SELECT * FROM _mk_case_rows")
            finally:
                con.unregister("_mk_case_rows")
        con.execute(f'CREATE OR REPLACE TABLE "{table}" AS {self.sql(month)}')
        con.execute("DROP TABLE _mk_case_raw")


def build_customer_view(con: duckdb.DuckDBPyConnection, model: ScoreModel, month: str,
                        customers: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """customer_view on ``con`` from (msisdn, given columns) pairs, completed as a case customer."""
    CustomerBuilder(model).create(con, month, customers)


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


def _diff_rows(expected: list[dict[str, Any]], actual: list[dict[str, Any]], *, with_matrix: bool) -> list[str]:
    """Side-by-side expected / actual, one line per rank; ``✗`` marks the lines that differ."""
    from rich.cells import cell_len  # CJK scripts are two cells wide

    n = max(len(expected), len(actual))
    scripts = any("script" in e for e in expected)
    left = [_offer_text(expected[i], with_matrix=with_matrix) if i < len(expected) else "-" for i in range(n)]
    right = [_offer_text(actual[i], with_matrix=with_matrix, with_script=scripts) if i < len(actual) else "-"
             for i in range(n)]
    if not n:
        return []
    width = max(len("expected"), *(cell_len(s) for s in left))
    lines = [f"    rank  {'expected'.ljust(width)}  actual"]
    for i in range(n):
        same = i < len(expected) and i < len(actual) and _offer_matches(expected[i], actual[i])
        pad = " " * (width - cell_len(left[i]))
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



def _check_matrix_case(case: Case, rules: Any) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Validate a matrix case against the rule set: (matrix or None, expect, includes, excludes)."""
    matrix = None
    if case.matrix != ALL:
        names = [m.name for m in rules.matrices]
        if case.matrix not in names:
            raise ConfigError(f'case "{case.name}": matrix: unknown matrix \'{case.matrix}\'{_suggest(case.matrix, names)}'
                              f" (matrices: {', '.join(names)}, or `all` for the full ranking)", file=case.file)
        matrix = rules.matrix(case.matrix)
    scope_rules = [r for m in ([matrix] if matrix is not None else rules.matrices) for r in m.rules]
    rule_ids = {r.id for r in scope_rules}
    if case.rule is not None and case.rule not in rule_ids:
        raise ConfigError(f'case "{case.name}": rule: \'{case.rule}\' is not a rule of {case.scope}'
                          f"{_suggest(case.rule, rule_ids)}", file=case.file)
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
                                  f"{_suggest(pid, rules.policies)}", file=case.file)
            rid = item.get("rule")
            if rid is not None and str(rid) not in rule_ids:
                raise ConfigError(f'case "{case.name}": {where}[{i}]: \'{rid}\' is not a rule of {case.scope}'
                                  f"{_suggest(str(rid), rule_ids)}", file=case.file)
    for x in excludes:
        if x not in rule_ids and x not in rules.policies:
            raise ConfigError(f'case "{case.name}": excludes: \'{x}\' is neither a rule of {case.scope} nor a policy'
                              f"{_suggest(x, [*rule_ids, *rules.policies])}", file=case.file)
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
            problems.append(f"expected no {x}, got {_offer_text(hit[0], with_matrix=with_matrix)} at rank {hit[0]['rank']}")
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
                              f"{_suggest(str(expected['rule']), ids)}", file=case.file)
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
        result.message = (f"matrix {matrix.name} ({matrix_file or matrix.file}), rule {rule}: expected {text(expected)}, "
                          f"got {text(shown_got)}")
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
        rows.append([_convert(values.get(c.name), c.type, f"{where}: {c.name}", str(cf.path)) for c in contract.columns])
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
                   builder: CustomerBuilder) -> list[CaseResult]:
    results: dict[int, CaseResult] = {}
    customers = []
    configs = {}
    expects = {}
    try:
        base_config = load_plan_config(matrices_dir)
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
                                "FROM staged WHERE msisdn = $case_msisdn", {**fq.params, "case_msisdn": c.msisdn}).fetchone()
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
                result.details = [f"    rank {i + 1}: expected {_plan_text(expected[i], keys) if i < len(expected) else '-'}"
                                  f"\n            actual   {_plan_text(actual[i], keys) if i < len(actual) else '-'}"
                                  for i in range(n)]
            results[c.no] = result
    return [results[c.no] for c in cases]


# -- the run ---------------------------------------------------------------------------------------
def _selected(case: Case, pattern: str | None) -> bool:
    if not pattern:
        return True
    p = pattern.lower()
    fields = [case.file, Path(case.file).name, Path(case.file).stem, case.name, case.matrix or "", case.rule or "",
              case.kind]
    if any(ch in p for ch in "*?["):
        return any(fnmatch.fnmatch(f.lower(), p) for f in fields)
    return any(p in f.lower() for f in fields)


def current_month() -> str:
    today = dt.date.today()
    return f"{today.year:04d}-{today.month:02d}"


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
    model = None
    builder = None
    model_error = None
    try:
        model = load_score_model(matrices_dir)
        builder = CustomerBuilder(model)
    except ConfigError as exc:
        model_error = exc.render()
    results: list[CaseResult] = []
    for cf, cases in selected:
        m = cf.month or month or current_month()  # a file that pins its month keeps it
        matrix_cases = [c for c in cases if c.kind == "matrix"]
        plan_cases = [c for c in cases if c.kind == "plan"]
        with reporter.step(f"testing {cf.path.name}"):
            if matrix_cases:
                if builder is None:
                    results += [_error(c, f"{c.scope}: cannot build the customer: {model_error}") for c in matrix_cases]
                elif rules is None:
                    results += [_error(c, _rule_error_for(c, rule_errors, matrix_file)) for c in matrix_cases]
                else:
                    results += _run_matrix_file(cf, matrix_cases, m, project_from_report(report), builder, matrix_file,
                                                warnings)
            if plan_cases:
                if builder is None:
                    results += [_error(c, f"plan: cannot build the customer: {model_error}") for c in plan_cases]
                else:
                    results += _run_plan_file(cf, plan_cases, m, matrices_dir, builder)
    coverage = _coverage(rules, results) if rules is not None and not pattern else []
    return TestRun(matrices_dir, [cf.path for cf, _ in selected], results, rule_errors, warnings, coverage,
                   {str(cf.path): cf for cf, _ in selected})


def _rule_error_for(case: Case, errors: list[str], matrix_file: dict[str, str]) -> str:
    """The validation error that stops this case: its matrix's first error, else the folder's first."""
    mine = matrix_file.get(case.matrix or "")
    chosen = next((e for e in errors if mine and e.startswith(mine)), None) or (errors[0] if errors else "rules do not load")
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
    return [(m.file, m.name, rule.id, (m.name, rule.id) in fires, (m.name, rule.id) in not_fires)
            for m in rules.matrices for rule in m.rules]


# -- JUnit XML (for CI test reports) -----------------------------------------------------------------
def junit_xml(run: TestRun) -> str:
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites", name="mktool test")
    by_file: dict[str, list[CaseResult]] = {}
    for r in run.results:
        by_file.setdefault(r.case.file, []).append(r)
    for file, results in by_file.items():
        suite = ET.SubElement(suites, "testsuite", name=file, tests=str(len(results)),
                              failures=str(sum(r.status == "fail" for r in results)),
                              errors=str(sum(r.status == "error" for r in results)))
        for r in results:
            tc = ET.SubElement(suite, "testcase", classname=f"{file}:{r.case.scope}", name=r.case.name)
            if r.status != "pass":
                el = ET.SubElement(tc, "failure" if r.status == "fail" else "error", message=r.message)
                el.text = "\n".join([r.message, *r.details])
    return ET.tostring(suites, encoding="unicode")


def _json_value(value: Any) -> Any:
    """A plan's exact money and rates stay JSON numbers (228.0, 1.036362: the same digits)."""
    return float(value) if isinstance(value, Decimal) else value


def result_document(run: TestRun) -> dict[str, Any]:
    """The run as JSON-able data (``mktool test --format json``)."""
    return {
        "matrices_dir": str(run.matrices_dir),
        "files": [str(f) for f in run.files],
        "passed": sum(r.ok for r in run.results),
        "failed": sum(r.status == "fail" for r in run.results),
        "errors": sum(r.status == "error" for r in run.results),
        "rule_errors": run.rule_errors,
        "cases": [{"file": r.case.file, "case": r.case.name, "scope": r.case.scope, "rule": r.case.rule,
                   "status": r.status, "message": r.message, "expected": r.expected,
                   "actual": [{k: _json_value(v) for k, v in a.items() if k != "msisdn"} for a in r.actual]}
                  for r in run.results],
        "coverage": [{"file": f, "matrix": m, "rule": rid, "fires": a, "does_not_fire": b}
                     for f, m, rid, a, b in run.coverage],
    }


# -- what `mktool test` prints ---------------------------------------------------------------------
STATUS_STYLE = {"pass": "[green]pass[/green]", "fail": "[bold red]FAIL[/bold red]", "error": "[bold red]ERROR[/bold red]"}


def _given_text(case: Case, file_customer: dict[str, Any] | None = None) -> str:
    given = {**(file_customer or {}), **case.customer}
    return ", ".join(f"{k}={v}" for k, v in given.items()) or "(the default customer)"


def render_report(run: TestRun, reporter: Reporter) -> None:
    """The pass/fail table (unless quiet), then every failure with its diff (always), on stderr."""
    from rich.markup import escape
    from rich.table import Table

    console = reporter.console
    if not console.is_terminal and console.width < 140:  # CI logs: do not fold at 80 columns
        from rich.console import Console

        console = Console(file=reporter.console.file, width=140, highlight=False, no_color=reporter.console.no_color)
    if run.results and not reporter.quiet:
        table = Table(title=f"Rule tests ({run.matrices_dir})", header_style="bold")
        for col in ("file", "result", "scope", "rule", "case"):
            table.add_column(col, overflow="fold", no_wrap=col != "case")
        previous = None
        for r in run.results:
            name = Path(r.case.file).name
            table.add_row(escape(name) if name != previous else "", STATUS_STYLE[r.status], escape(r.case.scope),
                          escape(r.case.rule or ""), escape(r.case.name))
            previous = name
        console.print(table)
    for text in run.rule_errors:
        console.print(f"[bold red]error:[/bold red] {escape(text)}", highlight=False, soft_wrap=True)
    for r in run.failed:
        label = "FAIL" if r.status == "fail" else "ERROR"
        console.print(f"\n[bold red]{label}[/bold red] {escape(r.case.label)}", highlight=False, soft_wrap=True)
        console.print(f"  {escape(r.message)}", highlight=False, soft_wrap=True)
        cf = run.case_files.get(r.case.file)
        if r.status == "fail":
            console.print(f"  customer: {escape(_given_text(r.case, cf.customer if cf else None))}", highlight=False,
                          soft_wrap=True)
        for line in r.details:
            console.print(escape(line), highlight=False, soft_wrap=True)
    for w in run.warnings:
        reporter.warn(w)  # warn escapes once


def coverage_problems(run: TestRun) -> list[str]:
    """Rules without a case where they fire, or without one where they do not."""
    if run.failed:
        return []  # a failing case is the message; missing coverage would only repeat it
    out = []
    for file, _matrix, rule, fires, not_fires in run.uncovered:
        hint = "where it does not fire (name the rule in the case's `rule:` or `excludes:`)"
        gaps = ([] if fires else ["where it fires"]) + ([] if not_fires else [hint])
        out.append(f"{file}: rule {rule}: no passing test case " + " and none ".join(gaps))
    return out


def default_customer_rows(matrices_dir: Path, month: str | None = None) -> list[tuple[str, str, str, str]]:
    """(column, type, value, source) of the default customer, completed exactly as a case customer."""
    model = load_score_model(Path(matrices_dir))
    builder = CustomerBuilder(model)
    month = month or current_month()
    with MemoryDatabase() as db:
        builder.create(db.c, month, [("13900000000", {})])
        cur = db.c.execute("SELECT * FROM customer_view")
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
    assert row is not None
    score = set(builder.score_columns)
    out = []
    for name, value in zip(names, row):
        source = ("assigned" if name in ASSIGNED else "scores.yaml" if name in score
                  else "derived" if name == "join_date" or (name in DERIVED and name != "tenure_months")
                  else "default")
        out.append((name, builder.types[name], "NULL" if value is None else str(value), source))
    return out
