"""The rules folder, loaded and validated once: what every step of a command reads.

A :class:`Project` holds the typed, validated contents of the matrices folder — the score
model (scores.yaml), the policy catalogue, the channels and contact policy, every matrix,
the plan configuration (plan.yaml) — and the secrets the folder names from the environment
(the hash salt of each ``mask: hash`` channel, read once here through its ``salt_env``).

:func:`load_project` runs the same validation as ``mktool check`` (every problem collected)
and raises the first with a count of the rest. A command loads its project once and passes
it to each step, so that ``mktool run`` refuses a broken rule file or a missing salt before
its first write rather than after three steps have committed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from mktool.ahp import ahp_weights
from mktool.contract import TABLES
from mktool.errors import ConfigError
from mktool.planconfig import PLAN_FILE, PlanConfig, load_plan_config
from mktool.rules import (
    CHANNELS_FILE,
    DEFAULT_WAVE_ID,
    POLICIES_FILE,
    SCENE_EVENT_COLUMNS,
    Channel,
    ChannelConfig,
    Matrix,
    Policy,
    PolicyGroup,
    Problem,
    Problems,
    Rule,
    RuleSet,
    Scene,
    raise_first,
    read_rule_files,
)
from mktool.scoremodel import SCORES_FILE, ScoreModel, load_score_model, view_params, view_sql
from mktool.sqlcheck import CheckedExpression, duckdb_type_of, spark_divergences, text_results, vocabulary_mismatches
from mktool.sqlquote import quote_identifier
from mktool.yamlio import YamlFile, suggest


# -- validating the whole folder (what `mktool check` reports) --------------------------------------
@dataclass
class CheckReport:
    """What ``validate_all`` found: every problem, and the rule set when there were no errors."""

    matrices_dir: Path
    problems: list[Problem]
    rules: RuleSet | None
    files: list[str]
    scores: ScoreModel | None = None  # scores.yaml, when it loaded
    plan: PlanConfig | None = None  # plan.yaml, when it loaded
    #: what would mean something else on --engine spark (asked for: ``validate_all(spark=True)``), else None
    spark_divergences: list[str] | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def raise_for_errors(self) -> None:
        """Raise the first error as a ``ConfigError`` (with a count of the others)."""
        raise_first(self.errors)




# -- binding against a typed customer_view with one row of NULLs ------------------------------------
@dataclass(frozen=True)
class _Bound:
    """One expression to bind: where it is written, its DuckDB SQL, its text as the analyst wrote
    it, the relation it is bound against, and whether it must be a condition (boolean)."""

    at: str
    sql: str
    source: str
    relation: str = "customer_view"
    condition: bool = False


def _type_check(matrices: list[Matrix], model: Any, problems: Problems, scenes: Iterable[Scene] = (),
                spark: list[str] | None = None) -> None:
    """Bind every expression against the real column types of customer_view: only DuckDB knows them.

    The view is built in memory from the input contract and scores.yaml, with one row in which
    every column is NULL (no data, no database file). Each expression — the value indicators
    and columns of scores.yaml, each matrix's ``where``, every rule's ``when`` and every
    scene's conditions (:func:`_scene_expressions`) — is then checked by :func:`_bind_problem`.
    If the view cannot be built, the score expression that breaks it is named (and the matrix
    checks are skipped: they need the view). With ``spark`` (a list), a folder without errors gets
    each expression's :func:`mktool.sqlcheck.spark_divergences` appended to it, as
    ``<where>: <what> <why>``: typed on the same view.
    """
    con = _typed_view(model, problems)
    if con is None:
        return
    vocabularies = _vocabularies(model)
    try:
        items = _expressions(con, matrices, model, scenes)
        kinds = _bind_all(con, items)
        for item in items:
            problem = (None if kinds is not None else _bind_problem(con, item.sql, item.relation)) \
                or _vocabulary_problem(item.sql, vocabularies)
            if problem:
                problems.error(f"{item.at}: {problem}")
                continue
            if item.condition:
                kind = kinds[item] if kinds is not None else _kind(con, item)
                if kind not in ("BOOLEAN", '"NULL"', "NULL"):
                    problems.error(f"{item.at}: expected a boolean condition, but '{_short(item.source)}' is {kind}")
        if spark is not None and not problems.error_count:
            spark += [f"{item.at}: {why}" for item in items
                      for why in spark_divergences(item.sql, duckdb_type_of(con, item.relation))]
    finally:
        con.close()


def _expressions(con: duckdb.DuckDBPyConnection, matrices: Iterable[Matrix], model: Any,
                 scenes: Iterable[Scene]) -> list[_Bound]:
    """Every expression of the folder, where it is written and what it is bound against: the value
    indicators and columns of scores.yaml, each matrix's ``where``, every rule's ``when`` and every
    scene's conditions."""
    items = [_Bound(at, sql, sql) for at, sql in _score_expressions(model)]
    for m in matrices:
        written: list[tuple[str, Rule | None, CheckedExpression | None]] = (
            [("where", None, m.where)] if m.where is not None else [])
        written += [("when", r, r.when) for r in m.rules]
        items += [_Bound(rule.at(what) if rule else m.at(what), expr.duckdb_sql, expr.source, condition=True)
                  for what, rule, expr in written if expr is not None]
    return items + _scene_expressions(con, scenes)


def _kind(con: duckdb.DuckDBPyConnection, item: _Bound) -> str:
    """The SQL type of one expression that binds (``arpu_3m + 1`` is DECIMAL, a condition BOOLEAN)."""
    return duckdb_type_of(con, item.relation)(item.sql) or "unknown"  # bound already: always known


#: The column names of the one query that binds every expression of a relation at once. An
#: expression that mentions one is bound alone: DuckDB lets a select list refer to an earlier
#: column's alias, so in the shared query it could bind where alone it does not.
_BATCH_ALIAS = "_mk_bound_"


def _bind_all(con: duckdb.DuckDBPyConnection, items: list[_Bound]) -> dict[_Bound, str] | None:
    """The type of every expression when all of them pass :func:`_bind_problem`'s three steps
    together, in one query per relation (a rule folder's 60-odd expressions took 300 statements
    one by one: a third of every command's start); None when any step fails for any of them, so
    that each is then checked alone and the problem is named by the expression it is in."""
    kinds: dict[_Bound, str] = {}
    for relation in dict.fromkeys(item.relation for item in items):
        batch = [item for item in items if item.relation == relation]
        if any(_BATCH_ALIAS in item.sql.lower() for item in batch):
            return None
        columns = ", ".join(f"({item.sql}) AS {_BATCH_ALIAS}{i}" for i, item in enumerate(batch))
        if _bind_problem(con, f"SELECT {columns} FROM {relation}", relation=None) is not None:
            return None
        described = con.execute(f"DESCRIBE SELECT {columns} FROM {relation}").fetchall()
        kinds.update((item, str(row[1])) for item, row in zip(batch, described, strict=True))
    return kinds


#: The relation a scene's conditions are bound against: customer_view's row of NULLs with the
#: event's columns (rules.SCENE_EVENT_COLUMNS), unqualified as the trigger step embeds them.
_SCENE_ROWS = "_mk_scene_rows"


def _scene_expressions(con: duckdb.DuckDBPyConnection, scenes: Iterable[Scene]) -> list[_Bound]:
    """Each scene's ``when`` and its waves', to be bound like a rule's over customer_view plus
    value, event_time and event_type (a non-boolean, an impossible comparison, a value a label
    column never holds: refused at check time rather than in the middle of a batch)."""
    items = [(s.at("when"), s.when) for s in scenes if s.when is not None]
    items += [(s.at(f"waves[{w.level - 1}].when"), w.when) for s in scenes if _has_waves(s) for w in s.waves]
    if not items:
        return []
    event = ", ".join(f"CAST(NULL AS {t}) AS {quote_identifier(c)}" for c, t in SCENE_EVENT_COLUMNS.items())
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_SCENE_ROWS} AS SELECT *, {event} FROM customer_view")
    return [_Bound(at, sql, sql, _SCENE_ROWS, condition=True) for at, sql in items]


def _has_waves(scene: Scene) -> bool:
    """True when the scene lists its waves (the default wave, TRUE, needs no check)."""
    return not (len(scene.waves) == 1 and scene.waves[0].when == "TRUE" and scene.waves[0].id == DEFAULT_WAVE_ID)


def _vocabularies(model: Any) -> dict[str, frozenset[str]]:
    """customer_view's label columns and the values they can hold: the contract's vocabulary
    columns (stored normalised by ingest), value_tier (the tier names of scores.yaml) and every
    score column that is a CASE of text literals (``segment``, ``stickiness_tier``)."""
    out = {c.name: frozenset(c.allowed()) for c in TABLES["subscribers"].columns
           if c.is_vocabulary and not c.channels}
    out["value_tier"] = frozenset(name for name, _ in model.tiers)
    for col in model.columns:
        values = text_results(col.sql)
        if values is not None:
            out[col.name] = values
    return out


def _vocabulary_problem(sql: str, vocabularies: dict[str, frozenset[str]]) -> str | None:
    """A comparison with a value its column never holds (``status = 'Active'``), or None."""
    for column, value in vocabulary_mismatches(sql, vocabularies):
        values = ", ".join(sorted(vocabularies[column]))
        return (f"{value[:40]!r} is never a value of {column} (its values: {values}; compared exactly, "
                "case included): the comparison can never match")
    return None


def _score_expressions(model: Any) -> list[tuple[str, str]]:
    """(location, SQL) of every expression of scores.yaml, located as ``load_score_model`` does."""
    out = []
    for i, crit in enumerate(model.criteria):
        for j, ind in enumerate(crit.indicators):
            out.append((model.where(f"value.criteria[{i}].indicators[{j}].expr"), ind.sql))
    for i, col in enumerate(model.columns):
        out.append((model.where(f"columns[{i}].expr", col.name), col.sql))
    return out


def _typed_view(model: Any, problems: Problems) -> duckdb.DuckDBPyConnection | None:
    """An in-memory connection with the contract's tables (empty) and customer_view (one row of
    NULLs), the optimizer off so that constants are evaluated rather than folded away."""
    con = duckdb.connect(":memory:", config={"enable_external_access": False})
    try:
        for t in TABLES.values():
            cols = ", ".join(f"{quote_identifier(c.name)} {c.type}" for c in t.columns)
            con.execute(f"CREATE TABLE {quote_identifier(t.name)} ({cols})")
        try:
            con.execute(f"CREATE TABLE customer_view AS {view_sql(model, has_vas=True)}", view_params("2000-01"))
        except duckdb.Error as exc:
            problems.error(_culprit(con, model, exc))
            con.close()
            return None
        con.execute("INSERT INTO customer_view DEFAULT VALUES")
        con.execute("PRAGMA disable_optimizer")
    except BaseException:
        con.close()
        raise
    return con


def _culprit(con: duckdb.DuckDBPyConnection, model: Any, exc: duckdb.Error) -> str:
    """The score expression that stops customer_view from binding: each value indicator alone
    (as the only indicator of the model), then the first prefix of the score columns that fails."""
    def binds(candidate: Any) -> str | None:
        try:
            con.execute(f"DESCRIBE {view_sql(candidate, has_vas=True)}", view_params("2000-01"))
        except duckdb.Error as err:
            return _first_line(err)
        return None

    alone = ahp_weights([[1.0]])
    for i, crit in enumerate(model.criteria):
        for j, ind in enumerate(crit.indicators):
            one = dataclasses.replace(crit, indicators=[ind], ahp=alone)
            problem = binds(dataclasses.replace(model, criteria=[one], ahp=alone, columns=[]))
            if problem:
                return f"{model.where(f'value.criteria[{i}].indicators[{j}].expr')}: DuckDB: {problem}"
    for k, col in enumerate(model.columns):
        problem = binds(dataclasses.replace(model, columns=model.columns[:k + 1]))
        if problem:
            return f"{model.where(f'columns[{k}].expr', col.name)}: DuckDB: {problem}"
    return f"{model.path}: customer_view does not bind: DuckDB: {_first_line(exc)}"  # pragma: no cover


def _bind_problem(con: duckdb.DuckDBPyConnection, sql: str, relation: str | None = "customer_view") -> str | None:
    """What is wrong with ``sql`` over customer_view's types, or None (``relation=None``: ``sql``
    is a whole query already, :func:`_bind_all`'s).

    Three steps, all without data: (1) DuckDB binds it (unknown function, impossible operand
    types: ``city > 5``, ``upper(contacts)``); (2) every text literal that DuckDB implicitly
    casts to a column's type is cast on its own, in whatever branch it sits (``contacts >=
    'x'``, ``join_date > '2026-13-01'``, ``CASE ... ELSE 'x'``): on zero rows DuckDB never
    evaluates such a cast and the error would wait for `matrix`; (3) the expression runs on
    the row of NULLs with the optimizer off, which evaluates its constant arguments
    (``date_trunc('mnth', ...)``, a bad regular expression, ``make_date(2026, 13, 1)``).
    """
    query = sql if relation is None else f"SELECT ({sql}) AS x FROM {relation}"
    try:
        con.execute(f"DESCRIBE {query}")
    except duckdb.Error as exc:
        return f"DuckDB: {_first_line(exc)}"
    row = con.execute("SELECT json_serialize_plan(?, optimize := false)", [query]).fetchone()
    plan = json.loads(row[0]) if row else {}
    for value, target in _literal_casts(plan):
        try:
            con.execute(f"SELECT CAST(CAST(? AS VARCHAR) AS {target})", [value]).fetchall()
        except duckdb.Error as exc:
            return (f"'{_short(value, 40)}' is used as a {target} here but is not a valid {target} "
                    f"(DuckDB: {_first_line(exc)})")
    try:
        con.execute(query).fetchall()
    except duckdb.Error as exc:
        return f"DuckDB: {_first_line(exc)}"
    return None


def _literal_casts(plan: Any) -> Iterator[tuple[str, str]]:
    """(text, SQL type) of every text constant the bound plan casts to another type."""
    stack = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if node.get("expression_class") == "BOUND_FUNCTION" and node.get("type") == "OPERATOR_CAST":
            children = node.get("children") or []
            child = children[0] if len(children) == 1 else None
            value = (child or {}).get("value") or {}
            target = _sql_type(node.get("return_type"))
            if (isinstance(child, dict) and child.get("expression_class") == "BOUND_CONSTANT"
                    and (value.get("type") or {}).get("id") == "VARCHAR" and not value.get("is_null")
                    and isinstance(value.get("value"), str) and target is not None
                    and not (node.get("function_data") or {}).get("try_cast")):
                yield value["value"], target
        stack.extend(node.values())


_SIMPLE_TYPES = frozenset(
    "BOOLEAN TINYINT SMALLINT INTEGER BIGINT HUGEINT UTINYINT USMALLINT UINTEGER UBIGINT UHUGEINT "
    "FLOAT DOUBLE DATE TIME TIMESTAMP INTERVAL UUID".split()
)


def _sql_type(t: Any) -> str | None:
    """A bound type of the plan's JSON as SQL (None for types this check does not cast to)."""
    if not isinstance(t, dict):
        return None
    tid, info = t.get("id"), t.get("type_info") or {}
    if tid in _SIMPLE_TYPES:
        return str(tid)
    if tid == "DECIMAL" and isinstance(info.get("width"), int) and isinstance(info.get("scale"), int):
        return f"DECIMAL({info['width']}, {info['scale']})"
    if tid == "LIST":
        child = _sql_type(info.get("child_type"))
        return f"{child}[]" if child else None
    return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _short(text: str, width: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- entry points -------------------------------------------------------------------------------
@dataclass
class _Loaded:
    rules: RuleSet | None
    files: list[str]
    scores: ScoreModel | None = None
    plan: PlanConfig | None = None


def _load(matrices_dir: Path, problems: Problems, *, with_plan: bool, spark: list[str] | None = None) -> _Loaded:
    matrices_dir = Path(matrices_dir)
    files: list[str] = []
    if not matrices_dir.is_dir():
        problems.error(f"{matrices_dir}: the matrices folder does not exist")
        return _Loaded(None, files)
    model = None
    columns: list[str] | None = None
    files.append(str(matrices_dir / SCORES_FILE))
    with problems.catch():
        model = load_score_model(matrices_dir)
        columns = list(model.output_columns)
    read = read_rule_files(matrices_dir, problems, columns=columns, files=files)
    policies, channels = read.policies, read.channels
    plan = _check_plan(matrices_dir, problems, files, policies, channels) if with_plan else None
    if model is not None:
        _type_check(read.matrices, model, problems, read.scenes, spark)
    if problems.error_count or policies is None or channels is None or columns is None or read.groups is None:
        return _Loaded(None, files, model, plan)
    return _Loaded(RuleSet(matrices_dir, read.matrices, policies, channels, columns, problems.warnings,
                           groups=read.groups, scenes=read.scenes), files, model, plan)


def _check_plan(matrices_dir: Path, problems: Problems, files: list[str],
                policies: dict[str, Policy] | None, channels: ChannelConfig | None) -> PlanConfig | None:
    """plan.yaml, and the policy and channels it names (None when it does not load)."""
    path = matrices_dir / PLAN_FILE
    files.append(str(path))
    config = None
    with problems.catch():
        config = load_plan_config(matrices_dir)
    if config is None:
        return None
    source = YamlFile(str(path), None, config.lines)
    policy_id = config.policy
    if policies is not None:
        policy = policies.get(policy_id)
        if policy is None:
            problems.error(f"{source.where('policy')}: unknown policy '{policy_id}'{suggest(policy_id, policies)}: "
                           f"add it to {POLICIES_FILE}")
    if channels is not None:
        for k, ch in enumerate(config.channels):
            if ch not in channels.channels:
                problems.error(f"{source.where(f'channels[{k}]')}: unknown channel '{ch}'"
                               f"{suggest(ch, channels.names)}; {CHANNELS_FILE} defines {', '.join(channels.names)}")
    return config


def validate_all(matrices_dir: Path, *, spark: bool = False) -> CheckReport:
    """Check every YAML of the matrices folder; collect every problem rather than stop at one.
    ``spark``: also name what would mean something else on ``--engine spark`` (``spark_divergences``)."""
    problems = Problems()
    divergences: list[str] | None = [] if spark else None
    loaded = _load(Path(matrices_dir), problems, with_plan=True, spark=divergences)
    return CheckReport(Path(matrices_dir), problems.items, loaded.rules, loaded.files, loaded.scores, loaded.plan,
                       divergences)


def load_rules(matrices_dir: Path) -> RuleSet:
    """The validated rule set for `matrix` / `export` / `run`; raises the first error found.

    Warnings (e.g. a priority order naming a family no matrix has) are in ``.warnings``.
    """
    problems = Problems()
    rules = _load(Path(matrices_dir), problems, with_plan=False).rules
    raise_first(problems.errors)
    assert rules is not None
    return rules



@dataclass(frozen=True)
class Project:
    """One validated matrices folder (see the module docstring)."""

    root: Path
    scores: ScoreModel
    rules: RuleSet
    plan: PlanConfig
    #: channel -> salt, for the ``mask: hash`` channels whose salt variable is set (never shown)
    salts: Mapping[str, str] = field(default_factory=dict, repr=False)
    files: tuple[str, ...] = ()
    #: what would mean something else on --engine spark (``load_project(spark=True)``), else None
    spark_divergences: tuple[str, ...] | None = None

    @property
    def policies(self) -> dict[str, Policy]:
        return self.rules.policies

    @property
    def channels(self) -> ChannelConfig:
        return self.rules.channels

    @property
    def groups(self) -> dict[str, PolicyGroup]:
        return self.rules.groups

    @property
    def scenes(self) -> tuple[Scene, ...]:
        return self.rules.scenes

    @property
    def warnings(self) -> list[Problem]:
        return self.rules.warnings

    def score_model(self, params: dict[str, Any] | None = None) -> ScoreModel:
        """The score model, or (with ``--param`` overrides) scores.yaml re-derived with them."""
        return load_score_model(self.root, params) if params else self.scores

    def salt(self, channel: Channel) -> str | None:
        """The salt of a ``mask: hash`` channel (None for other masks); refused when unset."""
        if channel.mask != "hash":
            return None
        salt = self.salts.get(channel.name)
        if not salt:
            raise _missing_salt(channel)
        return salt

    def require_spark_portable(self) -> None:
        """Refuse, before any work on ``--engine spark``, a rule expression that would mean something
        else there (:func:`mktool.sqlcheck.spark_divergences`): the lists would differ from DuckDB's
        without a word. Needs a project loaded with ``spark=True``."""
        if self.spark_divergences is None:
            raise RuntimeError("require_spark_portable: the project was loaded without spark=True")
        raise_first([Problem("error", text) for text in self.spark_divergences])

    def require_salts(self, channels: Iterable[str] | None = None) -> None:
        """Refuse, before any work, a ``mask: hash`` channel (of ``channels``; default all) without its salt."""
        wanted = set(self.channels.names if channels is None else channels)
        missing = [ch for name, ch in self.channels.channels.items()
                   if name in wanted and ch.mask == "hash" and not self.salts.get(name)]
        if missing:
            first = _missing_salt(missing[0])
            more = len(missing) - 1
            if more:
                others = ", ".join(f"{ch.name} ({ch.salt_env})" for ch in missing[1:])
                first = ConfigError(first.message, hint=f"{first.hint}; also missing: {others}")
            raise first


def _missing_salt(channel: Channel) -> ConfigError:
    return ConfigError(f"channels.{channel.name}.mask: hash needs a salt in the environment variable "
                       f"{channel.salt_env}",
                       hint=f"export {channel.salt_env}=<secret shared with the channel's vendor>")


def read_salts(channels: ChannelConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The salt of every ``mask: hash`` channel whose variable is set (and not empty)."""
    env = os.environ if environ is None else environ
    return {name: env[ch.salt_env] for name, ch in channels.channels.items()
            if ch.mask == "hash" and env.get(ch.salt_env)}


def project_from_report(report: CheckReport, environ: Mapping[str, str] | None = None) -> Project:
    """The project of a ``validate_all`` report; raises its first error (with a count of the rest)."""
    report.raise_for_errors()
    assert report.rules is not None and report.scores is not None and report.plan is not None
    divergences = report.spark_divergences
    return Project(root=Path(report.matrices_dir), scores=report.scores, rules=report.rules, plan=report.plan,
                   salts=read_salts(report.rules.channels, environ), files=tuple(report.files),
                   spark_divergences=None if divergences is None else tuple(divergences))


def load_project(root: Path, environ: Mapping[str, str] | None = None, *, spark: bool = False) -> Project:
    """Load and validate the whole matrices folder once; raises the first problem found. ``spark``:
    also find what :meth:`Project.require_spark_portable` refuses."""
    return project_from_report(validate_all(Path(root), spark=spark), environ)
