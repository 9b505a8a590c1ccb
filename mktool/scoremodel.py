"""The score model and the customer-view query, beneath the steps (SPEC §3).

``scores.yaml`` (the AHP-weighted value score, its tiers and the ordered score columns) is
read and validated here, and the one-statement SQL of customer_view is built here, because
both the `score` step and rule validation (which binds every rule against a typed
customer_view built in memory) need them: validation must not import a step.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from mktool import dialect
from mktool.ahp import MAX_CONSISTENCY_RATIO, AhpResult, ahp_weights, check_matrix
from mktool.contract import month_from_index, month_index, window
from mktool.errors import ConfigError
from mktool.sqlcheck import check_expression
from mktool.sqlquote import check_label, quote_identifier, quote_literal
from mktool.yamlio import Located, YamlFile, read_yaml

SQL_DIR = Path(__file__).parent / "sql"
SCORES_FILE = "scores.yaml"

# Columns the base query provides, in order (SPEC §3 base columns first, then features).
BASE_COLUMNS = (
    "msisdn", "month", "city", "plan_id", "status", "payment", "handset_gen", "vnet", "group_id", "balance",
    "bundle_type", "bundle_end", "contract_end", "join_date", "tenure_months", "arpu", "arpu_3m", "rental_3m",
    "voice_overage_3m", "data_overage_3m", "addon_3m", "current_total_3m", "return_rate", "voice_min_3m",
    "data_mb_3m", "months_in_window",
)
FEATURE_COLUMNS = (
    "billing_months", "arpu_prev", "ld_fee", "voice_out_min", "voice_local_min", "voice_ld_out_min",
    "voice_ld_in_min", "voice_roam_min", "ld_top_province", "sms_count", "data_mb", "contacts", "contacts_in_net",
    "voice_min_prev", "data_mb_prev", "contacts_prev", "in_net_share", "voice_total_min", "ld_unit_price",
    "plan_name", "plan_rental", "product_status", "included_data_mb", "included_voice_min", "data_saturation",
    "voice_saturation", "vas_active", "has_newspaper", "has_crbt", "has_ring_change",
    "has_mobile_internet", "month_end", "contract_ends_3m", "bundle_ends_3m",
)
VALUE_COLUMNS = ("value_score", "value_tier")
VAS_SERVICES = ("newspaper", "crbt", "ring_change", "mobile_internet")
PARAM_RE = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
#: Decimals of data_saturation and voice_saturation (use ÷ allowance: 0.9 is 90%), rounded half away from zero.
SATURATION_SCALE = 4
#: The money markers of sql/customer_view_base.sql (``@fen(b0.total_fee)``): each is one
#: formula of mktool/dialect.py, so that money is computed the same way everywhere.
MONEY_MARKER_RE = re.compile(r"@([a-z_]+)\(([^()]*)\)")
MONEY_MARKERS: dict[str, Callable[..., str]] = {
    "money": lambda x: dialect.read_money(x),
    "fen": lambda x: dialect.fen(x),
    "average": lambda s, n: dialect.average(s, n, 2),
    "percent": lambda a, b: dialect.percent(a, b),
    "ratio": lambda a, b: dialect.quantity_ratio(a, b, SATURATION_SCALE),
}


# -- months ---------------------------------------------------------------------------------
def last_day(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return f"{month}-{calendar.monthrange(y, m)[1]:02d}"


# -- the score model (scores.yaml) --------------------------------------------------------------
@dataclass
class Indicator:
    name: str
    sql: str  # validated scalar expression over the base/feature columns


@dataclass
class Criterion:
    name: str
    indicators: list[Indicator]
    ahp: AhpResult


@dataclass
class ScoreColumn:
    name: str
    sql: str


@dataclass
class ScoreModel:
    path: Path
    criteria: list[Criterion]
    ahp: AhpResult
    tiers: list[tuple[str, Fraction]]  # tier name, share of customers, best first
    columns: list[ScoreColumn]
    params: dict[str, Any] = field(default_factory=dict)
    source: YamlFile | None = field(default=None, compare=False, repr=False)  # scores.yaml, to locate problems

    def where(self, path: str, label: str | None = None) -> str:
        """The location of a key of scores.yaml (``scores.yaml:111 @ columns[10].expr (segment)``)."""
        return (self.source or YamlFile(str(self.path), None)).where(path, label)

    def indicator_weights(self) -> list[tuple[str, str, float]]:
        """(criterion, indicator, global weight) — what the value score is made of."""
        return [
            (c.name, ind.name, cw * iw)
            for c, cw in zip(self.criteria, self.ahp.weights)
            for ind, iw in zip(c.indicators, c.ahp.weights)
        ]

    @property
    def output_columns(self) -> list[str]:
        return [*BASE_COLUMNS, *FEATURE_COLUMNS, *VALUE_COLUMNS, *(c.name for c in self.columns)]


def _substitute(sql: str, params: dict[str, Any], node: Located) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in params:
            raise node.error(f"unknown parameter ${{{name}}} (params: {', '.join(params) or 'none'})")
        value = params[name]
        try:
            return quote_literal(value if isinstance(value, (bool, int, float)) else str(value))
        except ValueError as exc:
            raise node.error(f"parameter ${{{name}}}: {exc}") from None

    return PARAM_RE.sub(repl, sql)


def _comparison_matrix(node: Located, size: int) -> AhpResult:
    if node.value is None:
        return ahp_weights([[1.0] * size for _ in range(size)])
    if not isinstance(node.value, list) or not all(isinstance(r, list) for r in node.value):
        raise node.error("expected a list of rows")
    matrix = [[cell.number() for cell in row.items()] for row in node.items()]
    if len(matrix) != size:
        raise node.error(f"has {len(matrix)} rows but there are {size} items to compare")
    problem = check_matrix(matrix)
    if problem:
        raise node.error(problem)
    result = ahp_weights(matrix)
    if not result.consistent:
        raise node.error(
            f"consistency ratio {result.consistency_ratio:.3f} is ≥ {MAX_CONSISTENCY_RATIO:.2f}: "
            "the pairwise judgements contradict each other (λmax "
            f"{result.lambda_max:.3f} for n = {size})",
            hint="revise the comparisons so that if A > B and B > C then A > C by roughly the product",
        )
    return result


def _label(node: Located, what: str) -> str:
    try:
        return check_label(node.value, file=None, at="", what=what)
    except ConfigError as exc:
        raise node.error(exc.message) from None


def load_score_model(matrices_dir: Path, overrides: dict[str, Any] | None = None) -> ScoreModel:
    """Read and validate scores.yaml: shapes, AHP consistency, every SQL expression."""
    path = matrices_dir / SCORES_FILE
    if not path.exists():
        raise ConfigError(f"missing {SCORES_FILE} in the matrices folder {matrices_dir}", file=str(path))
    source = read_yaml(path)
    doc = source.root
    if not isinstance(doc.value, dict):
        raise doc.error("expected a mapping with keys params, value, columns")
    doc.check_keys({"params", "value", "columns"})
    params = dict(doc.get("params", dict) or {})
    for key, value in (overrides or {}).items():
        if key not in params:
            raise doc.child("params").error(f"unknown parameter '{key}' (known: {', '.join(params)})")
        params[key] = value
    known: list[str] = [*BASE_COLUMNS, *FEATURE_COLUMNS]

    doc.get("value", dict, required=True)
    value = doc.child("value")
    value.check_keys({"criteria", "pairwise", "tiers"})
    value.get("criteria", list, required=True)
    criteria: list[Criterion] = []
    for rc in value.child("criteria").items():
        rc.check_keys({"name", "indicators", "pairwise"})
        cname = rc.get("name", str, required=True)
        inds = []
        rc.get("indicators", list, required=True)
        for ri in rc.child("indicators").items():
            iname = ri.get("name", str, required=True)
            expr_node = ri.child("expr")
            expr = _substitute(str(ri.get("expr", (str, int, float), required=True)), params, expr_node)
            checked = check_expression(expr, location=expr_node.where(), columns=known, kind="scalar")
            inds.append(Indicator(iname, checked.duckdb_sql))
        if not inds:
            raise rc.child("indicators").error("needs at least one indicator")
        criteria.append(Criterion(cname, inds, _comparison_matrix(rc.child("pairwise"), len(inds))))
    if not criteria:
        raise value.child("criteria").error("needs at least one criterion")
    ahp = _comparison_matrix(value.child("pairwise"), len(criteria))

    tiers: list[tuple[str, Fraction]] = []
    value.get("tiers", list, required=True)
    for rt in value.child("tiers").items():
        rt.get("tier", str, required=True)
        rt.get("share", (int, float, str), required=True)
        tiers.append((_label(rt.child("tier"), "value tier name"), Fraction(str(rt.child("share").number()))))
    if sum(share for _, share in tiers) != 1:
        raise value.child("tiers").error(f"shares add up to {float(sum(s for _, s in tiers)):g}, not 1")
    known += list(VALUE_COLUMNS)

    columns: list[ScoreColumn] = []
    doc.get("columns", list, required=True)
    for rcol in doc.child("columns").items():
        rcol.check_keys({"name", "expr", "doc"})
        name = rcol.get("name", str, required=True)
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise rcol.child("name").error(f"'{name}' must be a lower-case SQL identifier")
        if name in known:
            raise rcol.child("name").error(f"column '{name}' already exists in the view")
        expr_node = rcol.child("expr").labelled(name)
        expr = _substitute(str(rcol.get("expr", (str, int, float, bool), required=True)), params, expr_node)
        checked = check_expression(expr, location=expr_node.where(), columns=known, kind="scalar")
        columns.append(ScoreColumn(name, checked.duckdb_sql))
        known.append(name)
    return ScoreModel(path, criteria, ahp, tiers, columns, params, source)


# -- SQL --------------------------------------------------------------------------------------
def _vas_sql(has_vas: bool) -> str:
    if not has_vas:
        flags = ", ".join(f"false AS has_{s}" for s in VAS_SERVICES)
        return f"SELECT CAST(NULL AS VARCHAR) AS msisdn, 0 AS vas_active, {flags} WHERE false"
    flags = ", ".join(f"bool_or(active AND service = '{s}') AS has_{s}" for s in VAS_SERVICES)
    return (f"SELECT msisdn, count(*) FILTER (WHERE active) AS vas_active, {flags} FROM vas WHERE month = $month "
            "GROUP BY msisdn")


def render_money_markers(sql: str) -> str:
    """Replace the base query's ``@name(args)`` markers (outside ``--`` comments) by their SQL."""
    def repl(m: re.Match[str]) -> str:
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        if name not in MONEY_MARKERS:
            raise ValueError(f"customer_view_base.sql: unknown marker @{name}")
        return MONEY_MARKERS[name](*args)

    return "\n".join(line if line.lstrip().startswith("--") else MONEY_MARKER_RE.sub(repl, line)
                     for line in sql.splitlines())


def base_sql(*, has_vas: bool) -> str:
    """The base and feature columns' query (named parameters: see ``view_params``)."""
    text = (SQL_DIR / "customer_view_base.sql").read_text(encoding="utf-8")
    return render_money_markers(text).replace("$vas_sql", _vas_sql(has_vas))


def view_sql(model: ScoreModel, *, has_vas: bool) -> str:
    """The whole customer-view query for one month (named parameters: see ``view_params``).

    The percentile and tier windows run on narrow rows (msisdn and the indicators) and are
    joined back: window sorts that carry the view's ~60 columns cost 10× the time and memory.
    """
    base = base_sql(has_vas=has_vas)
    indicators = []
    pct = []
    terms = []
    for k, (crit, cw) in enumerate(zip(model.criteria, model.ahp.weights)):
        for m, (ind, iw) in enumerate(zip(crit.indicators, crit.ahp.weights)):
            # ranked as DOUBLE: the same order and ties as the exact DECIMAL money (exact below
            # 9·10⁹ yuan), at half the cost of sorting 128-bit decimals
            indicators.append(f"CAST(coalesce(({ind.sql}), 0) AS DOUBLE) AS _x_{k}_{m}")
            pct.append(f"percent_rank() OVER (ORDER BY _x_{k}_{m}) AS _p_{k}_{m}")
            terms.append(f"{cw * iw!r} * _p_{k}_{m}")
    value_score = f"round(100 * ({' + '.join(terms)}), 4)"
    # Tiers by rank of the score: exact integer arithmetic on cumulative shares.
    cases = []
    cumulative = Fraction(0)
    for name, share in model.tiers[:-1]:
        cumulative += share
        cases.append(f"WHEN _rank * {cumulative.denominator} <= _n * {cumulative.numerator} THEN {quote_literal(name)}")
    tier_sql = f"CASE {' '.join(cases)} ELSE {quote_literal(model.tiers[-1][0])} END"
    layers = [
        f"base AS ({base})",
        f"indicators AS (SELECT msisdn, {', '.join(indicators)} FROM base)",
        f"percentiles AS (SELECT msisdn, {', '.join(pct)} FROM indicators)",
        f"scores AS (SELECT msisdn, {value_score} AS value_score FROM percentiles)",
        "ranked AS (SELECT msisdn, value_score, row_number() OVER (ORDER BY value_score DESC, msisdn) AS _rank, "
        "count(*) OVER () AS _n FROM scores)",
        f"tiers AS (SELECT msisdn, value_score, {tier_sql} AS value_tier FROM ranked)",
        "tiered AS (SELECT base.*, tiers.value_score, tiers.value_tier FROM base JOIN tiers USING (msisdn))",
    ]
    prev = "tiered"
    for i, col in enumerate(model.columns):
        layers.append(f"c{i} AS (SELECT *, ({col.sql}) AS {quote_identifier(col.name)} FROM {prev})")
        prev = f"c{i}"
    select = ", ".join(quote_identifier(c) for c in model.output_columns)
    return "WITH " + ",\n".join(layers) + f"\nSELECT {select} FROM {prev}"


def view_params(month: str) -> dict[str, Any]:
    m, prev, prev2 = window(month)
    horizon = month_from_index(month_index(month) + 3)
    return {
        "month": m, "prev": prev, "prev2": prev2, "month_index": month_index(month),
        "month_end": last_day(month), "horizon_3m": last_day(horizon),
    }
