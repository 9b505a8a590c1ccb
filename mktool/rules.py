"""Loading and validating the marketing rule files (SPEC §4, §6): matrices, policies, channels.

Everything here happens before any SQL touches the database. Each problem is collected
(rather than stopping at the first) with a message that starts with the file and the rule:
``matrices/retention.yaml: rule R6: when: unknown column 'arpu3m' (did you mean 'arpu_3m'?)``.

* ``validate_all(matrices_dir)`` checks every YAML of the folder (scores.yaml, plan.yaml when
  the plan module exists, policies.yaml, channels.yaml, every matrix) and returns a
  :class:`CheckReport`; ``report.raise_for_errors()`` raises the first error.
* ``load_rules(matrices_dir)`` is what ``matrix`` / ``export`` / ``run`` call: the same
  checks for the files they need, raising the first error, returning a :class:`RuleSet`.

Which files are matrices: every ``*.yaml`` / ``*.yml`` under the folder whose top level has a
``matrix:`` key, except the catalogue/model files (:data:`NOT_MATRICES`) and anything under a
``tests/`` sub-folder (rule fixtures). Rule SQL goes through :func:`mktool.sqlcheck.check_expression`
against the customer_view columns, then is bound against the real column types of a
customer_view built in memory from the input contract and scores.yaml (one row of NULLs, no
data): non-boolean conditions, impossible operand types, and text literals that are not
valid for the column they meet (``contacts >= 'x'``) are errors at check time, not at `matrix`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb

from mktool.ahp import ahp_weights
from mktool.contract import TABLES
from mktool.errors import ConfigError
from mktool.planconfig import PLAN_FILE, PlanConfig, load_plan_config
from mktool.schema import CHANNEL_NAMES, CYCLES, LIST_FORMATS, MASKS, TARGET_COLUMNS
from mktool.scoremodel import SCORES_FILE, ScoreModel, load_score_model, view_params, view_sql
from mktool.sqlcheck import CheckedExpression, check_expression, text_results, vocabulary_mismatches
from mktool.sqlquote import is_id, is_name, quote_identifier
from mktool.yamlio import load_yaml, unknown_keys

__all__ = [
    "CHANNEL_NAMES",
    "Channel",
    "ChannelConfig",
    "CheckReport",
    "ContactPolicy",
    "Matrix",
    "Policy",
    "Problem",
    "Rule",
    "RuleSet",
    "load_channels",
    "load_policies",
    "load_rules",
    "matrix_files",
    "validate_all",
]

POLICIES_FILE = "policies.yaml"
CHANNELS_FILE = "channels.yaml"
# Model / catalogue files of the matrices folder that are not matrices.
NOT_MATRICES = frozenset({"scores.yaml", "plan.yaml", POLICIES_FILE, CHANNELS_FILE})
TESTS_DIR = "tests"

PRIORITY_FAMILY = "priority"
HIT_MODES = ("first", "collect")
CHANNEL_FORMATS = LIST_FORMATS

DOC_KEYS = {"doc", "description"}
MATRIX_KEYS = {"matrix", "family", "hit", "where", "rules", "tests"} | DOC_KEYS  # tests: cases for `mktool test`
RULE_KEYS = {"id", "when", "policy", "group", "script", "channels"} | DOC_KEYS
PRIORITY_RULE_KEYS = {"id", "when", "order"} | DOC_KEYS
POLICY_KEYS = {"id", "name", "family", "valid_from", "valid_to", "channels", "exclusive_group",
               "cooldown_days", "holdout"} | DOC_KEYS
CHANNEL_KEYS = {"cycle", "capacity", "format", "columns", "mask", "salt_env", "contact_cap"} | DOC_KEYS
CONTACT_POLICY_KEYS = {"cooldown_days", "monthly_cap"}



# -- problems -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One finding of validation: an error (stops a run) or a warning (``check --strict``)."""

    severity: Literal["error", "warning"]
    text: str  # starts with the file: "matrices/x.yaml: rule R6: when: ..."

    def __str__(self) -> str:
        return self.text


class Problems:
    """Collects problems so that one `mktool check` shows all of them."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.silent = 0  # problems already described by another message

    def error(self, text: str) -> None:
        self.items.append(Problem("error", text))

    def warn(self, text: str) -> None:
        self.items.append(Problem("warning", text))

    @contextlib.contextmanager
    def catch(self) -> Iterator[None]:
        """Record a ``ConfigError`` (and its subclass ``RuleError``) raised inside, then go on."""
        try:
            yield
        except _Reported:
            self.silent += 1
        except ConfigError as exc:
            self.error(exc.render())

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]

    @property
    def error_count(self) -> int:
        """Every error, including those described by another message: what "did it fail" checks use."""
        return len(self.errors) + self.silent


class _Reported(ConfigError):
    """A problem already described by another message (e.g. a key missing because misspelt)."""

    def __init__(self) -> None:
        super().__init__("already reported")


def _fail(file: str, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(message, file=file, hint=hint)


def _suggest(name: str, known: list[str] | tuple[str, ...] | set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# -- the model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """One entry of the policy catalogue (policies.yaml)."""

    id: str
    name: str
    family: str
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None
    channels: tuple[str, ...] = ()  # allowed channels; () = any
    exclusive_group: str | None = None  # a customer gets at most one policy of a group
    cooldown_days: int | None = None  # no re-offer within this many days after a rejection
    holdout: float | None = None  # share of targets kept back as a control group
    file: str = ""

    def valid_in(self, month: str) -> bool:
        """True when the validity dates overlap calendar month ``month`` (YYYY-MM)."""
        first = dt.date(int(month[:4]), int(month[5:7]), 1)
        last = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
        if self.valid_from is not None and self.valid_from > last:
            return False
        if self.valid_to is not None and self.valid_to < first:
            return False
        return True

    @property
    def validity(self) -> str:
        return f"{self.valid_from or '…'} to {self.valid_to or '…'}"


@dataclass(frozen=True)
class Channel:
    """One push channel of channels.yaml."""

    name: str
    cycle: str  # daily | monthly
    format: str  # csv | parquet | jsonl
    capacity: int | None = None  # targets per cycle; None = unlimited
    columns: tuple[str, ...] | None = None  # target-list columns; None = export's default
    mask: str = "none"  # msisdn masking: none | mask | hash
    contact_cap: int | None = None  # contacts per customer per calendar month on this channel
    salt_env: str = "MKTOOL_HASH_SALT"  # mask: hash reads its salt from this environment variable


@dataclass(frozen=True)
class ContactPolicy:
    cooldown_days: int | None = None
    monthly_cap: int | None = None


@dataclass(frozen=True)
class ChannelConfig:
    channels: dict[str, Channel]
    contact_policy: ContactPolicy
    file: str = ""

    @property
    def names(self) -> list[str]:
        return list(self.channels)


@dataclass(frozen=True)
class Rule:
    """One row of a decision table."""

    matrix: str
    no: int  # 1-based position in the file: the rule order
    id: str
    when: CheckedExpression
    policy: str | None = None  # offer matrices
    group: str | None = None  # policy group (政策群)
    script: str | None = None  # recommendation phrase
    channels: tuple[str, ...] = ()
    order: tuple[str, ...] = ()  # priority matrix: the customer's family order
    doc: str | None = None


@dataclass(frozen=True)
class Matrix:
    name: str
    family: str
    hit: str  # first | collect
    where: CheckedExpression | None
    rules: tuple[Rule, ...]
    file: str
    doc: str | None = None

    @property
    def is_priority(self) -> bool:
        return self.family == PRIORITY_FAMILY


@dataclass
class RuleSet:
    """Every validated matrix with the catalogues it refers to."""

    matrices_dir: Path
    matrices: list[Matrix]  # sorted by name
    policies: dict[str, Policy]
    channels: ChannelConfig
    columns: list[str]  # customer_view columns the rules may use
    warnings: list[Problem] = field(default_factory=list)

    @property
    def priority(self) -> Matrix:
        return next(m for m in self.matrices if m.is_priority)

    @property
    def offers(self) -> list[Matrix]:
        """The matrices that recommend policies (all but the priority matrix), by name."""
        return [m for m in self.matrices if not m.is_priority]

    def matrix(self, name: str) -> Matrix:
        for m in self.matrices:
            if m.name == name:
                return m
        raise ConfigError(f"unknown matrix '{name}'{_suggest(name, [m.name for m in self.matrices])}; "
                          f"matrices: {', '.join(m.name for m in self.matrices)}")

    @property
    def families(self) -> list[str]:
        return sorted({m.family for m in self.offers})


@dataclass
class CheckReport:
    """What ``validate_all`` found: every problem, and the rule set when there were no errors."""

    matrices_dir: Path
    problems: list[Problem]
    rules: RuleSet | None
    files: list[str]
    scores: ScoreModel | None = None  # scores.yaml, when it loaded
    plan: PlanConfig | None = None  # plan.yaml, when it loaded

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def raise_for_errors(self) -> None:
        """Raise the first error as a ``ConfigError`` (with a count of the others)."""
        raise_first(self.errors)


def raise_first(errors: list[Problem]) -> None:
    if errors:
        more = len(errors) - 1
        hint = f"{more} more problem{'s' if more > 1 else ''}: run `mktool check` to list them all" if more else None
        raise ConfigError(errors[0].text, hint=hint)


# -- small typed readers (messages "<file>: <at>: <key>: ...") ------------------------------------
def _where(at: str, key: str) -> str:
    return f"{at}: {key}" if at else key


def _get(raw: dict[str, Any], key: str, types: type | tuple[type, ...], *, file: str, at: str,
         required: bool = False) -> Any:
    value = raw.get(key)
    where = _where(at, key)
    if value is None:
        if required:
            raise _fail(file, f"{where}: missing required key")
        return None
    tuple_types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, tuple_types) or (isinstance(value, bool) and bool not in tuple_types):
        names = " or ".join("text" if t is str else "list" if t is list else "mapping" if t is dict
                            else t.__name__ for t in tuple_types)
        raise _fail(file, f"{where}: expected {names}, got {type(value).__name__} {value!r}")
    return value


def _text(raw: dict[str, Any], key: str, *, file: str, at: str, required: bool = False) -> str | None:
    """A short text; YAML numbers (``group: 6``) are accepted and kept as their text."""
    value = _get(raw, key, (str, int, float), file=file, at=at, required=required)
    if value is None:
        return None
    text = str(value).strip()
    if required and not text:
        raise _fail(file, f"{_where(at, key)}: must not be empty")
    return text or None


def _int(raw: dict[str, Any], key: str, *, file: str, at: str, minimum: int = 0) -> int | None:
    value = _get(raw, key, int, file=file, at=at)
    if value is not None and value < minimum:
        raise _fail(file, f"{_where(at, key)}: must be ≥ {minimum}, got {value}")
    return value


def _choice(raw: dict[str, Any], key: str, choices: tuple[str, ...], *, file: str, at: str,
            required: bool = False, default: str | None = None) -> str | None:
    value = _text(raw, key, file=file, at=at, required=required)
    if value is None:
        return default
    if value not in choices:
        raise _fail(file, f"{_where(at, key)}: '{value}' is not one of {', '.join(choices)}{_suggest(value, choices)}")
    return value


def _names(raw: dict[str, Any], key: str, *, file: str, at: str) -> tuple[str, ...] | None:
    """A list of names (channels, columns, families); duplicates refused."""
    value = _get(raw, key, list, file=file, at=at)
    if value is None:
        return None
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise _fail(file, f"{_where(at, key)}: expected a list of names, found {item!r}")
        if item in out:
            raise _fail(file, f"{_where(at, key)}: '{item}' is listed twice")
        out.append(item.strip())
    return tuple(out)


def _date(raw: dict[str, Any], key: str, *, file: str, at: str) -> dt.date | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return dt.date.fromisoformat(value.strip())
    raise _fail(file, f"{_where(at, key)}: expected a date YYYY-MM-DD, got {value!r}")


def _mapping_doc(path: Path, file: str, top_key: str) -> dict[str, Any]:
    doc = load_yaml(path)
    if not isinstance(doc, dict) or top_key not in doc:
        raise _fail(file, f"expected a mapping with a top-level '{top_key}:' key")
    return doc


# -- policies.yaml ------------------------------------------------------------------------------
def _read_policies(matrices_dir: Path, problems: Problems) -> dict[str, Policy] | None:
    path = matrices_dir / POLICIES_FILE
    file = str(path)
    if not path.exists():
        problems.error(f"{file}: missing: the policy catalogue is required (a top-level 'policies:' list)")
        return None
    try:
        doc = _mapping_doc(path, file, "policies")
        unknown_keys(doc, {"policies"} | DOC_KEYS, file=path, at="")
        raw_list = _get(doc, "policies", list, file=file, at="", required=True)
    except ConfigError as exc:
        problems.error(exc.render())
        return None
    policies: dict[str, Policy] = {}
    before = problems.error_count
    for i, raw in enumerate(raw_list):
        with problems.catch():
            policy = _read_policy(raw, i, file)
            if policy.id in policies:
                raise _fail(file, f"policy {policy.id}: duplicate policy id (policies[{i}] repeats an earlier entry)")
            policies[policy.id] = policy
    return policies if problems.error_count == before else None


def _read_policy(raw: Any, i: int, file: str) -> Policy:
    if not isinstance(raw, dict):
        raise _fail(file, f"policies[{i}]: expected a mapping with id, name, family, got {raw!r}")
    pid = _text(raw, "id", file=file, at=f"policies[{i}]", required=True)
    assert pid is not None
    at = f"policy {pid}"
    if not is_id(pid):
        raise _fail(file, f"{at}: id: use letters, digits, '_', '.' or '-'")
    unknown_keys(raw, POLICY_KEYS, file=Path(file), at=at)
    name = _text(raw, "name", file=file, at=at, required=True)
    family = _text(raw, "family", file=file, at=at, required=True)
    assert name is not None and family is not None
    if not is_name(family):
        raise _fail(file, f"{at}: family: '{family}' must be a lower-case name such as retention")
    valid_from = _date(raw, "valid_from", file=file, at=at)
    valid_to = _date(raw, "valid_to", file=file, at=at)
    if valid_from and valid_to and valid_from > valid_to:
        raise _fail(file, f"{at}: valid_from {valid_from} is after valid_to {valid_to}")
    holdout = _get(raw, "holdout", (int, float), file=file, at=at)
    if holdout is not None and not 0 <= holdout < 1:
        raise _fail(file, f"{at}: holdout: a share of customers, 0 ≤ holdout < 1, got {holdout}")
    return Policy(
        id=pid, name=name, family=family, valid_from=valid_from, valid_to=valid_to,
        channels=_names(raw, "channels", file=file, at=at) or (),
        exclusive_group=_text(raw, "exclusive_group", file=file, at=at),
        cooldown_days=_int(raw, "cooldown_days", file=file, at=at),
        holdout=float(holdout) if holdout is not None else None,
        file=file,
    )


def load_policies(matrices_dir: Path) -> dict[str, Policy]:
    """The policy catalogue by id (raises the first problem)."""
    problems = Problems()
    policies = _read_policies(matrices_dir, problems)
    raise_first(problems.errors)
    assert policies is not None
    return policies


# -- channels.yaml ------------------------------------------------------------------------------
def _read_channels(matrices_dir: Path, problems: Problems) -> ChannelConfig | None:
    path = matrices_dir / CHANNELS_FILE
    file = str(path)
    if not path.exists():
        problems.error(f"{file}: missing: the channel list is required (a top-level 'channels:' mapping)")
        return None
    try:
        doc = _mapping_doc(path, file, "channels")
        unknown_keys(doc, {"channels", "contact_policy"} | DOC_KEYS, file=path, at="")
        raw_channels = _get(doc, "channels", dict, file=file, at="", required=True)
    except ConfigError as exc:
        problems.error(exc.render())
        return None
    before = problems.error_count
    channels: dict[str, Channel] = {}
    for name, raw in raw_channels.items():
        with problems.catch():
            channels[str(name)] = _read_channel(str(name), raw, file)
    if not raw_channels:
        problems.error(f"{file}: channels: define at least one channel ({', '.join(CHANNEL_NAMES)})")
    contact = ContactPolicy()
    with problems.catch():
        raw_cp = _get(doc, "contact_policy", dict, file=file, at="")
        if raw_cp is not None:
            unknown_keys(raw_cp, CONTACT_POLICY_KEYS, file=path, at="contact_policy")
            contact = ContactPolicy(
                cooldown_days=_int(raw_cp, "cooldown_days", file=file, at="contact_policy"),
                monthly_cap=_int(raw_cp, "monthly_cap", file=file, at="contact_policy", minimum=1),
            )
    if problems.error_count != before:
        return None
    return ChannelConfig(channels, contact, file)


def _read_channel(name: str, raw: Any, file: str) -> Channel:
    at = f"channel {name}"
    if not is_name(name):
        raise _fail(file, f"{at}: channel names are lower-case names such as {', '.join(CHANNEL_NAMES)}")
    if not isinstance(raw, dict):
        raise _fail(file, f"{at}: expected a mapping with cycle, capacity, format, got {raw!r}")
    unknown_keys(raw, CHANNEL_KEYS, file=Path(file), at=at)
    cycle = _choice(raw, "cycle", CYCLES, file=file, at=at, required=True)
    fmt = _choice(raw, "format", CHANNEL_FORMATS, file=file, at=at, required=True)
    assert cycle is not None and fmt is not None
    columns = _names(raw, "columns", file=file, at=at)
    for col in columns or ():
        if col not in TARGET_COLUMNS:
            raise _fail(file, f"{at}: columns: unknown target-list column '{col}'{_suggest(col, TARGET_COLUMNS)}; "
                              f"columns: {', '.join(TARGET_COLUMNS)}")
    salt_env = _text(raw, "salt_env", file=file, at=at) or "MKTOOL_HASH_SALT"
    return Channel(
        name=name, cycle=cycle, format=fmt, salt_env=salt_env,
        capacity=_int(raw, "capacity", file=file, at=at, minimum=1),
        columns=columns,
        mask=_choice(raw, "mask", MASKS, file=file, at=at, default="none") or "none",
        contact_cap=_int(raw, "contact_cap", file=file, at=at, minimum=1),
    )


def matrix_files_by_name(matrices_dir: Path) -> dict[str, str]:
    """matrix name → file, read straight from the YAML (also when the rule set does not load)."""
    out: dict[str, str] = {}
    for path in matrix_files(Path(matrices_dir)):
        try:
            doc = load_yaml(path)
        except ConfigError:
            continue
        if isinstance(doc, dict) and doc.get("matrix") is not None:
            out.setdefault(str(doc["matrix"]), str(path))
    return out


def load_channels(matrices_dir: Path) -> ChannelConfig:
    """channels.yaml: the push channels and the contact policy (raises the first problem)."""
    problems = Problems()
    config = _read_channels(matrices_dir, problems)
    raise_first(problems.errors)
    assert config is not None
    return config


# -- matrices -----------------------------------------------------------------------------------
def matrix_files(matrices_dir: Path) -> list[Path]:
    """Candidate matrix files: every YAML under the folder but the catalogues and tests/."""
    found = []
    for path in sorted(matrices_dir.rglob("*")):
        if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
            continue
        rel = path.relative_to(matrices_dir)
        if any(part.startswith(".") or part == TESTS_DIR for part in rel.parts[:-1]) or rel.name.startswith("."):
            continue
        if len(rel.parts) == 1 and rel.name in NOT_MATRICES:
            continue
        found.append(path)
    return found


@dataclass
class _Context:
    """What rule validation checks against (None: that catalogue failed to load; skip the check)."""

    columns: list[str] | None
    policies: dict[str, Policy] | None
    channels: ChannelConfig | None


def _read_matrix(path: Path, ctx: _Context, problems: Problems, failed_families: set[str]) -> Matrix | None:
    """One matrix file; None when it is not a matrix or has errors (recorded in ``problems``).

    The family of a matrix that fails is added to ``failed_families`` so that cross-file
    checks do not also call that family missing.
    """
    file = str(path)
    try:
        doc = load_yaml(path)
    except ConfigError as exc:
        problems.error(exc.render())
        return None
    if not isinstance(doc, dict):
        return None  # not a matrix (an empty or list-shaped YAML file)
    if "matrix" not in doc:
        if "rules" in doc:  # looks like a matrix with a typo in its name key
            key = next((k for k in doc if difflib.get_close_matches(str(k), ["matrix"], n=1, cutoff=0.6)), None)
            hint = f" (found '{key}': did you mean 'matrix'?)" if key else ""
            problems.error(f"{file}: has 'rules:' but no top-level 'matrix:' key{hint}")
        return None
    before = problems.error_count
    failed_families.add(str(doc.get("family")))  # until the matrix has loaded
    try:
        unknown_keys(doc, MATRIX_KEYS, file=path, at="")
        name = _text(doc, "matrix", file=file, at="", required=True)
        family = _text(doc, "family", file=file, at="", required=True)
        assert name is not None and family is not None
        if not is_name(name):
            raise _fail(file, f"matrix: '{name}' must be a lower-case name (letters, digits, _)")
        if not is_name(family):
            raise _fail(file, f"family: '{family}' must be a lower-case name such as retention")
        is_priority = family == PRIORITY_FAMILY
        hit = _choice(doc, "hit", HIT_MODES, file=file, at="", required=not is_priority,
                      default="first" if is_priority else None)
        assert hit is not None
        if is_priority and hit != "first":
            raise _fail(file, "hit: the priority matrix gives each customer exactly one order: use hit: first")
        raw_rules = _get(doc, "rules", list, file=file, at="", required=True)
        doc_text = _text(doc, "doc", file=file, at="") or _text(doc, "description", file=file, at="")
    except ConfigError as exc:
        problems.error(exc.render())
        return None
    where: CheckedExpression | None = None
    with problems.catch():
        raw_where = doc.get("where")
        if raw_where is not None:
            where = check_expression(_sql_text(raw_where), location=f"{file}: where", columns=ctx.columns, kind="boolean")
    if not raw_rules:
        problems.error(f"{file}: rules: the matrix has no rules")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_rules):
        rule = _read_rule(raw, i, file=file, matrix=name, family=family, is_priority=is_priority, ctx=ctx,
                          problems=problems, seen=seen)
        if rule is not None:
            rules.append(rule)
    if problems.error_count != before:
        return None
    failed_families.discard(family)
    return Matrix(name=name, family=family, hit=hit, where=where, rules=tuple(rules), file=file, doc=doc_text)


def _sql_text(value: Any) -> str:
    """YAML turns `when: true` into a bool and `when: 1` into an int; give sqlcheck the text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value  # str, or anything else for sqlcheck to refuse with its type


def _read_rule(raw: Any, i: int, *, file: str, matrix: str, family: str, is_priority: bool, ctx: _Context,
               problems: Problems, seen: dict[str, int]) -> Rule | None:
    if not isinstance(raw, dict):
        problems.error(f"{file}: rules[{i}]: expected a mapping with id, when, "
                       f"{'order' if is_priority else 'policy'}, got {raw!r}")
        return None
    before = problems.error_count
    rid: str | None = None
    with problems.catch():
        rid = _text(raw, "id", file=file, at=f"rules[{i}]", required=True)
        assert rid is not None
        if not is_id(rid):
            raise _fail(file, f"rule {rid}: id: use letters, digits, '_', '.' or '-'")
        if rid in seen:
            raise _fail(file, f"rule {rid}: duplicate rule id (rules[{seen[rid]}] and rules[{i}] are both '{rid}')")
        seen[rid] = i
    at = f"rule {rid}" if rid else f"rules[{i}]"
    allowed = PRIORITY_RULE_KEYS if is_priority else RULE_KEYS
    # A key that is missing because it was misspelt is reported once, as the unknown key.
    typos = {close for k in set(raw) - allowed for close in difflib.get_close_matches(str(k), sorted(allowed), n=1)}
    with problems.catch():
        if is_priority and "policy" in raw:
            raise _fail(file, f"{at}: a priority-matrix rule gives an 'order' (a list of families), not a policy")
        if not is_priority and "order" in raw:
            raise _fail(file, f"{at}: 'order' belongs in the priority matrix (family: priority); "
                              "this matrix's rules give a 'policy'")
        unknown_keys(raw, allowed, file=Path(file), at=at)

    when: CheckedExpression | None = None
    with problems.catch():
        if raw.get("when") is None:
            if "when" in typos:
                raise _Reported()
            raise _fail(file, f"{at}: when: missing required key (use `when: true` for a catch-all)")
        when = check_expression(_sql_text(raw["when"]), location=f"{file}: {at}: when", columns=ctx.columns,
                                kind="boolean")
    doc_text = None
    with problems.catch():
        doc_text = _text(raw, "doc", file=file, at=at) or _text(raw, "description", file=file, at=at)

    policy_id = group = script = None
    channels: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    if is_priority:
        with problems.catch():
            order = _names(raw, "order", file=file, at=at) or ()
            if not order and ("order" in typos or "policy" in raw):
                raise _Reported()
            if not order:
                raise _fail(file, f"{at}: order: missing: the list of families to offer, in order "
                                  "(for example retention, traffic, new_service)")
            if PRIORITY_FAMILY in order:
                raise _fail(file, f"{at}: order: '{PRIORITY_FAMILY}' is not an offer family")
    else:
        policy: Policy | None = None
        with problems.catch():
            if raw.get("policy") is None and "policy" in typos:
                raise _Reported()
            policy_id = _text(raw, "policy", file=file, at=at, required=True)
            assert policy_id is not None
            if ctx.policies is not None:
                policy = ctx.policies.get(policy_id)
                if policy is None:
                    raise _fail(file, f"{at}: policy: unknown policy '{policy_id}'{_suggest(policy_id, ctx.policies)}: "
                                      f"add it to {POLICIES_FILE}")
                if policy.family != family:
                    raise _fail(file, f"{at}: policy: '{policy_id}' is a {policy.family} policy in {POLICIES_FILE}, "
                                      f"but matrix '{matrix}' is family {family}")
        with problems.catch():
            group = _text(raw, "group", file=file, at=at)
        with problems.catch():
            script = _text(raw, "script", file=file, at=at)
        with problems.catch():
            channels = _names(raw, "channels", file=file, at=at) or ()
            if not channels and policy is not None:
                channels = policy.channels
            if not channels and policy is not None:
                raise _fail(file, f"{at}: channels: missing, and policy {policy_id} names no channels either")
            if ctx.channels is not None:
                for ch in channels:
                    if ch not in ctx.channels.channels:
                        raise _fail(file, f"{at}: channels: unknown channel '{ch}'{_suggest(ch, ctx.channels.names)}; "
                                          f"{CHANNELS_FILE} defines {', '.join(ctx.channels.names)}")
            if policy is not None and policy.channels:
                bad = [ch for ch in channels if ch not in policy.channels]
                if bad:
                    raise _fail(file, f"{at}: channels: policy {policy.id} may not be offered on "
                                      f"{', '.join(bad)} (its channels: {', '.join(policy.channels)})")
    if problems.error_count != before or rid is None or when is None:
        return None
    return Rule(matrix=matrix, no=i + 1, id=rid, when=when, policy=policy_id, group=group, script=script,
                channels=channels, order=order, doc=doc_text)


def _cross_check(matrices: list[Matrix], matrices_dir: Path, problems: Problems, *,
                 failed_families: set[str]) -> list[Matrix]:
    """Checks across files: unique names, one priority matrix, families the orders name."""
    by_name: dict[str, Matrix] = {}
    for m in matrices:
        if m.name in by_name:
            problems.error(f"{m.file}: matrix '{m.name}' is already defined in {by_name[m.name].file}")
        else:
            by_name[m.name] = m
    unique = sorted(by_name.values(), key=lambda m: m.name)
    priority = [m for m in unique if m.is_priority]
    if not priority and PRIORITY_FAMILY not in failed_families:
        problems.error(f"{matrices_dir}: no priority matrix: one matrix must have `family: priority` and give "
                       "each customer an `order:` of families (end it with a catch-all rule `when: true`)")
    elif len(priority) > 1:
        problems.error(f"{priority[1].file}: a second priority matrix ('{priority[1].name}'; the first is "
                       f"'{priority[0].name}' in {priority[0].file}): exactly one matrix may have family: priority")
    families = sorted({m.family for m in unique if not m.is_priority})
    if priority:
        p = priority[0]
        unknown: dict[str, list[str]] = {}
        for rule in p.rules:
            for fam in rule.order:
                if fam not in families and fam not in failed_families:
                    unknown.setdefault(fam, []).append(rule.id)
        for fam, ids in unknown.items():
            problems.warn(f"{p.file}: rule{'s' if len(ids) > 1 else ''} {', '.join(ids)}: order: no matrix has "
                          f"family '{fam}'{_suggest(fam, families)} (families: {', '.join(families) or 'none'})")
    return unique


def _check_policy_channels(policies: dict[str, Policy] | None, channels: ChannelConfig | None,
                           problems: Problems) -> None:
    if not policies or channels is None:
        return
    for p in policies.values():
        for ch in p.channels:
            if ch not in channels.channels:
                problems.error(f"{p.file}: policy {p.id}: channels: unknown channel '{ch}'"
                               f"{_suggest(ch, channels.names)}; {CHANNELS_FILE} defines {', '.join(channels.names)}")


# -- binding against a typed customer_view with one row of NULLs ------------------------------------
def _type_check(matrices: list[Matrix], model: Any, problems: Problems) -> None:
    """Bind every expression against the real column types of customer_view: only DuckDB knows them.

    The view is built in memory from the input contract and scores.yaml, with one row in which
    every column is NULL (no data, no database file). Each expression — the value indicators
    and columns of scores.yaml, each matrix's ``where`` and every rule's ``when`` — is then
    checked by :func:`_bind_problem`. If the view cannot be built, the score expression that
    breaks it is named (and the matrix checks are skipped: they need the view).
    """
    con = _typed_view(model, problems)
    if con is None:
        return
    vocabularies = _vocabularies(model)
    try:
        for at, sql in _score_expressions(model):
            problem = _bind_problem(con, sql) or _vocabulary_problem(sql, vocabularies)
            if problem:
                problems.error(f"{at}: {problem}")
        for m in matrices:
            items: list[tuple[str, Rule | None, CheckedExpression | None]] = (
                [("where", None, m.where)] if m.where is not None else [])
            items += [("when", r, r.when) for r in m.rules]
            for what, rule, expr in items:
                if expr is None:
                    continue
                at = f"{m.file}: rule {rule.id}: {what}" if rule else f"{m.file}: {what}"
                problem = _bind_problem(con, expr.duckdb_sql) or _vocabulary_problem(expr.duckdb_sql, vocabularies)
                if problem:
                    problems.error(f"{at}: {problem}")
                    continue
                kind = con.execute(f"DESCRIBE SELECT ({expr.duckdb_sql}) AS x FROM customer_view").fetchall()[0][1]
                if kind not in ("BOOLEAN", '"NULL"', "NULL"):
                    problems.error(f"{at}: expected a boolean condition, but '{_short(expr.source)}' is {kind}")
    finally:
        con.close()


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
            out.append((f"{model.path}: value.criteria[{i}].indicators[{j}].expr", ind.sql))
    for i, col in enumerate(model.columns):
        out.append((f"{model.path}: columns[{i}] ({col.name}).expr", col.sql))
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
                return f"{model.path}: value.criteria[{i}].indicators[{j}].expr: DuckDB: {problem}"
    for k, col in enumerate(model.columns):
        problem = binds(dataclasses.replace(model, columns=model.columns[:k + 1]))
        if problem:
            return f"{model.path}: columns[{k}] ({col.name}).expr: DuckDB: {problem}"
    return f"{model.path}: customer_view does not bind: DuckDB: {_first_line(exc)}"  # pragma: no cover


def _bind_problem(con: duckdb.DuckDBPyConnection, sql: str) -> str | None:
    """What is wrong with ``sql`` over customer_view's types, or None.

    Three steps, all without data: (1) DuckDB binds it (unknown function, impossible operand
    types: ``city > 5``, ``upper(contacts)``); (2) every text literal that DuckDB implicitly
    casts to a column's type is cast on its own, in whatever branch it sits (``contacts >=
    'x'``, ``join_date > '2026-13-01'``, ``CASE ... ELSE 'x'``): on zero rows DuckDB never
    evaluates such a cast and the error would wait for `matrix`; (3) the expression runs on
    the row of NULLs with the optimizer off, which evaluates its constant arguments
    (``date_trunc('mnth', ...)``, a bad regular expression, ``make_date(2026, 13, 1)``).
    """
    query = f"SELECT ({sql}) AS x FROM customer_view"
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


def _load(matrices_dir: Path, problems: Problems, *, with_plan: bool) -> _Loaded:
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
    files += [str(matrices_dir / POLICIES_FILE), str(matrices_dir / CHANNELS_FILE)]
    policies = _read_policies(matrices_dir, problems)
    channels = _read_channels(matrices_dir, problems)
    _check_policy_channels(policies, channels, problems)
    plan = _check_plan(matrices_dir, problems, files, policies, channels) if with_plan else None
    ctx = _Context(columns, policies, channels)
    loaded: list[Matrix] = []
    failed_families: set[str] = set()
    for path in matrix_files(matrices_dir):
        files.append(str(path))
        m = _read_matrix(path, ctx, problems, failed_families)
        if m is not None:
            loaded.append(m)
    failed_families -= {m.family for m in loaded}
    matrices = _cross_check(loaded, matrices_dir, problems, failed_families=failed_families)
    if model is not None:
        _type_check(matrices, model, problems)
    if problems.error_count or policies is None or channels is None or columns is None:
        return _Loaded(None, files, model, plan)
    return _Loaded(RuleSet(matrices_dir, matrices, policies, channels, columns, problems.warnings), files, model, plan)


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
    policy_id = config.policy
    if policies is not None:
        policy = policies.get(policy_id)
        if policy is None:
            problems.error(f"{path}: policy: unknown policy '{policy_id}'{_suggest(policy_id, policies)}: "
                           f"add it to {POLICIES_FILE}")
    if channels is not None:
        for ch in config.channels:
            if ch not in channels.channels:
                problems.error(f"{path}: channels: unknown channel '{ch}'{_suggest(ch, channels.names)}; "
                               f"{CHANNELS_FILE} defines {', '.join(channels.names)}")
    return config


def validate_all(matrices_dir: Path) -> CheckReport:
    """Check every YAML of the matrices folder; collect every problem rather than stop at one."""
    problems = Problems()
    loaded = _load(Path(matrices_dir), problems, with_plan=True)
    return CheckReport(Path(matrices_dir), problems.items, loaded.rules, loaded.files, loaded.scores, loaded.plan)


def load_rules(matrices_dir: Path) -> RuleSet:
    """The validated rule set for `matrix` / `export` / `run`; raises the first error found.

    Warnings (e.g. a priority order naming a family no matrix has) are in ``.warnings``.
    """
    problems = Problems()
    rules = _load(Path(matrices_dir), problems, with_plan=False).rules
    raise_first(problems.errors)
    assert rules is not None
    return rules
