"""Loading and validating the marketing rule files (SPEC §4, §6): matrices, policies, channels.

Everything here happens before any SQL touches the database. Each problem is collected
(rather than stopping at the first) with a message that starts with its location — file,
line, key path and rule (:func:`mktool.errors.location`):
``matrices/retention.yaml:47 @ rules[5].when (rule R6): unknown column 'arpu3m' (did you mean 'arpu_3m'?)``.

* ``validate_all(matrices_dir)`` checks every YAML of the folder (scores.yaml, plan.yaml,
  policies.yaml, channels.yaml, every matrix) and returns a :class:`CheckReport` (with the
  score model and plan config that loaded); :func:`mktool.project.load_project` turns it into
  the :class:`~mktool.project.Project` every step takes, raising the first error.
* ``load_rules(matrices_dir)``: the matrices with their catalogues only (no plan.yaml), for
  callers that inspect rules; the steps take a project.
* The scene files (issue 14; docs/scenes.md "scene files"): ``scenes.yaml`` and
  ``scenes/*.yaml`` (:func:`scene_files`), each scene checked like a rule (unknown keys with a
  suggestion, its policy and channels against the catalogues, the policy's allowed channels),
  its ``when`` and its waves' through sqlcheck over customer_view's columns plus the event's
  (:data:`SCENE_EVENT_COLUMNS`), then type-checked by mktool.project like the rules.

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
import datetime as dt
import difflib
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mktool.errors import ConfigError, short_repr
from mktool.schema import (
    CHANNEL_KINDS,
    CHANNEL_NAMES,
    CYCLES,
    LIST_COLUMNS,
    LIST_FORMATS,
    MASKS,
    POPUP,
    POPUP_CHANNELS,
    PUSH,
    SCREEN_COLUMNS,
    SUMMARY_COLUMNS,
    TARGET_COLUMNS,
)
from mktool.sqlcheck import CheckedExpression, check_expression
from mktool.sqlquote import is_id, is_name
from mktool.yamlio import Located, YamlFile, load_yaml, read_yaml, suggest

__all__ = [
    "CHANNEL_NAMES",
    "Channel",
    "ChannelConfig",
    "ContactPolicy",
    "Matrix",
    "Policy",
    "PolicyGroup",
    "Problem",
    "Rule",
    "RuleSet",
    "load_channels",
    "default_columns",
    "is_popup",
    "load_policies",
    "matrix_files",
    "read_rule_files",
    "scene_files",
]

POLICIES_FILE = "policies.yaml"
CHANNELS_FILE = "channels.yaml"
SCENES_FILE = "scenes.yaml"  # the scenes (issue 14); more in scenes/*.yaml
SCENES_DIR = "scenes"
# Model / catalogue files of the matrices folder that are not matrices.
NOT_MATRICES = frozenset({"scores.yaml", "plan.yaml", POLICIES_FILE, CHANNELS_FILE, SCENES_FILE})
TESTS_DIR = "tests"

PRIORITY_FAMILY = "priority"
HIT_MODES = ("first", "collect")
CHANNEL_FORMATS = LIST_FORMATS

DOC_KEYS = {"doc", "description"}
MATRIX_KEYS = {"matrix", "family", "hit", "where", "rules", "tests"} | DOC_KEYS  # tests: cases for `mktool test`
RULE_KEYS = {"id", "when", "policy", "group", "script", "channels"} | DOC_KEYS
PRIORITY_RULE_KEYS = {"id", "when", "order"} | DOC_KEYS
POLICY_KEYS = {"id", "name", "family", "valid_from", "valid_to", "channels", "exclusive_group",
               "cooldown_days", "withdraw_days", "holdout"} | DOC_KEYS
GROUP_KEYS = {"id", "name", "policies"} | DOC_KEYS
CHANNEL_KEYS = {"kind", "cycle", "capacity", "format", "columns", "mask", "salt_env", "contact_cap",
                "retry_days"} | DOC_KEYS
CONTACT_POLICY_KEYS = {"cooldown_days", "monthly_cap", "retry_days", "universal_holdout", "universal_salt"}
SCENE_FILE_KEYS = {"scenes"} | DOC_KEYS
SCENE_KEYS = {"id", "name", "event_type", "when", "waves", "policy", "channels", "script", "expires_after",
              "once_per"} | DOC_KEYS
WAVE_KEYS = {"id", "when"} | DOC_KEYS
#: The event's columns a scene's ``when`` may use beside customer_view's, with their types (docs/scenes.md).
SCENE_EVENT_COLUMNS = {"value": "DOUBLE", "event_time": "TIMESTAMP", "event_type": "VARCHAR"}
#: A scene without ``waves:`` has this one wave (``when`` TRUE).
DEFAULT_WAVE_ID = "1"
DEFAULT_ONCE_PER_DAYS = 30
#: expires_after / once_per beyond this are refused: no real-time offer waits a century (and a
#: timedelta of more days overflows).
MAX_SCENE_DAYS = 36_500
DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
WAVE_ID_RE = re.compile(r"[a-z0-9][a-z0-9_]*")  # below_10, or 1, 2 (the default wave is "1")
#: The universal control group's largest share of the base: beyond half, the "control" is the campaign's majority.
MAX_UNIVERSAL_HOLDOUT = 0.5
#: The salt of the universal draw when channels.yaml names none (a new salt draws a new group).
DEFAULT_UNIVERSAL_SALT = "mktool-universal"
#: What a pop-up refuses: it uses no capacity, counts no contacts and has no retry wait (SPEC §6).
PUSH_ONLY_KEYS = ("capacity", "contact_cap", "retry_days")



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


def _where(source: YamlFile | None, file: str, path: str, label: str | None = None) -> str:
    """``<file>:<line> @ <path> (<label>)`` from a file's line table (file and path alone without one)."""
    return (source or YamlFile(file, None)).where(path, label)


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
    withdraw_days: int | None = None  # withdrawn everywhere this many days after an acceptance (None: export's default)
    holdout: float | None = None  # share of targets kept back as a control group
    file: str = ""
    path: str = ""  # key path in policies.yaml: policies[3]
    source: YamlFile | None = field(default=None, compare=False, repr=False)

    def at(self, key: str = "") -> str:
        """The location of one of this policy's keys (``policies.yaml:12 @ policies[3].channels (policy X)``)."""
        return _where(self.source, self.file, f"{self.path}.{key}" if key else self.path, f"policy {self.id}")

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
class Wave:
    """One wave of a scene (issue 14): the scene fires again when an event meets a deeper
    condition (balance < 10 yuan, then < 5), at most once per wave within the scene's once_per."""

    id: str
    when: str  # one SQL boolean expression over the event's and the customer view's columns
    level: int  # 1-based position in the scene's waves: a deeper wave has a higher level


@dataclass(frozen=True)
class Scene:
    """One scene of matrices/scenes.yaml (场景营销, seeds 000 and 004): an event type and a SQL
    condition turned into trigger lists in micro-batches (``mktool scene``; docs/scenes.md)."""

    id: str
    name: str
    event_type: str  # the events' event_type it listens to (an identifier, normalised like ingest's)
    when: str | None  # SQL boolean over value, event_time, event_type and the customer view; None: always
    waves: tuple[Wave, ...]  # at least one; a scene without ``waves:`` has the single wave "1" (when TRUE)
    policy: str  # a policies.yaml policy id
    channels: tuple[str, ...]  # channels.yaml channels, in preference order (push or pop-up)
    expires_after: dt.timedelta  # an event older than this when processed is dropped as stale
    once_per_days: int  # at most one trigger per customer × scene × wave within this many days
    script: str | None = None  # optional agent/SMS text; None: the policy's name
    position: int = 0  # 1-based order of the scene across the scene files (a customer's triggers rank by it)
    file: str = ""
    path: str = ""  # key path in its file: scenes[2]
    source: YamlFile | None = field(default=None, compare=False, repr=False)

    def at(self, key: str = "") -> str:
        """The location of one of this scene's keys (``scenes.yaml:12 @ scenes[2].when (scene X)``)."""
        return _where(self.source, self.file, f"{self.path}.{key}" if key else self.path, f"scene {self.id}")


@dataclass(frozen=True)
class PolicyGroup:
    """A policy group (政策群, seed 001) of policies.yaml ``groups:``: the offers of one family the
    agent may choose instead of a rule's main policy, best first."""

    id: str
    name: str
    policies: tuple[str, ...]  # member policy ids, in the group's order
    family: str = ""  # the members' family (one family per group)
    file: str = ""
    path: str = ""  # key path in policies.yaml: groups[2]
    source: YamlFile | None = field(default=None, compare=False, repr=False)

    def at(self, key: str = "") -> str:
        """The location of one of this group's keys (``policies.yaml:80 @ groups[2].policies (group 6)``)."""
        return _where(self.source, self.file, f"{self.path}.{key}" if key else self.path, f"group {self.id}")


@dataclass(frozen=True)
class Channel:
    """One channel of channels.yaml: a pop-up (the agent's screen) or a push list."""

    name: str
    cycle: str  # daily | monthly
    format: str  # csv | parquet | jsonl
    kind: str = PUSH  # popup | push (default by name: frontdesk and inbound are pop-ups)
    capacity: int | None = None  # targets per cycle; None = unlimited
    columns: tuple[str, ...] | None = None  # target-list columns; None = export's default
    mask: str = "none"  # msisdn masking: none | mask | hash
    contact_cap: int | None = None  # contacts per customer per calendar month on this channel
    salt_env: str = "MKTOOL_HASH_SALT"  # mask: hash reads its salt from this environment variable
    retry_days: int | None = None  # push: days after a no_answer before this channel retries (None: contact_policy's)

    @property
    def popup(self) -> bool:
        return self.kind == POPUP


@dataclass(frozen=True)
class ContactPolicy:
    cooldown_days: int | None = None
    monthly_cap: int | None = None
    retry_days: int | None = None  # a push channel's wait after a no_answer (a channel's own value wins)
    # The universal control group (issue 13): this share of the whole base, drawn from the msisdn
    # and the salt alone (the same customers every month), is contacted by no campaign. 0: off.
    universal_holdout: float = 0.0
    universal_salt: str = DEFAULT_UNIVERSAL_SALT


@dataclass(frozen=True)
class ChannelConfig:
    channels: dict[str, Channel]
    contact_policy: ContactPolicy
    file: str = ""
    source: YamlFile | None = field(default=None, compare=False, repr=False)

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
    source: YamlFile | None = field(default=None, compare=False, repr=False)  # the matrix file

    def at(self, key: str = "") -> str:
        """The location of one of this rule's keys (``retention.yaml:31 @ rules[5].when (rule R6)``)."""
        path = f"rules[{self.no - 1}]" + (f".{key}" if key else "")
        return _where(self.source, self.source.file if self.source else self.matrix, path, f"rule {self.id}")


@dataclass(frozen=True)
class Matrix:
    name: str
    family: str
    hit: str  # first | collect
    where: CheckedExpression | None
    rules: tuple[Rule, ...]
    file: str
    doc: str | None = None
    source: YamlFile | None = field(default=None, compare=False, repr=False)

    def at(self, key: str = "") -> str:
        """The location of a top-level key of this matrix file (``retention.yaml:3 @ where``)."""
        return _where(self.source, self.file, key)

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
    groups: dict[str, PolicyGroup] = field(default_factory=dict)  # policies.yaml groups: by id
    scenes: tuple[Scene, ...] = ()  # scenes.yaml and scenes/*.yaml, in position order (issue 14)

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
        raise ConfigError(f"unknown matrix '{name}'{suggest(name, [m.name for m in self.matrices])}; "
                          f"matrices: {', '.join(m.name for m in self.matrices)}")

    @property
    def families(self) -> list[str]:
        return sorted({m.family for m in self.offers})


def raise_first(errors: list[Problem]) -> None:
    if errors:
        more = len(errors) - 1
        hint = f"{more} more problem{'s' if more > 1 else ''}: run `mktool check` to list them all" if more else None
        raise ConfigError(errors[0].text, hint=hint)


def _mapping_doc(path: Path, top_key: str) -> Located:
    doc = read_yaml(path).root
    if not isinstance(doc.value, dict) or top_key not in doc.value:
        raise doc.error(f"expected a mapping with a top-level '{top_key}:' key")
    return doc


# -- policies.yaml ------------------------------------------------------------------------------
def _read_policies(matrices_dir: Path, problems: Problems) -> dict[str, Policy] | None:
    return _read_catalogue(matrices_dir, problems)[0]


def _read_catalogue(matrices_dir: Path, problems: Problems
                    ) -> tuple[dict[str, Policy] | None, dict[str, PolicyGroup] | None]:
    """policies.yaml: the policies by id and the policy groups by id (None: that part has errors)."""
    path = matrices_dir / POLICIES_FILE
    file = str(path)
    if not path.exists():
        problems.error(f"{file}: missing: the policy catalogue is required (a top-level 'policies:' list)")
        return None, None
    try:
        doc = _mapping_doc(path, "policies")
        doc.check_keys({"policies", "groups"} | DOC_KEYS)
        doc.get("policies", list, required=True)
    except ConfigError as exc:
        problems.error(exc.render())
        return None, None
    policies = _read_policy_list(doc, problems)
    return policies, _read_groups(doc, policies, problems)


def _read_policy_list(doc: Located, problems: Problems) -> dict[str, Policy] | None:
    policies: dict[str, Policy] = {}
    before = problems.error_count
    for i, node in enumerate(doc.child("policies").items()):
        with problems.catch():
            policy = _read_policy(node)
            if policy.id in policies:
                raise node.child("id").labelled(f"policy {policy.id}").error(
                    f"duplicate policy id (policies[{i}] repeats an earlier entry)")
            policies[policy.id] = policy
    return policies if problems.error_count == before else None


def _read_groups(doc: Located, policies: dict[str, Policy] | None,
                 problems: Problems) -> dict[str, PolicyGroup] | None:
    """policies.yaml ``groups:``: each names known policies of one family, and its id once."""
    try:
        if doc.get("groups", list) is None:
            return {}
    except ConfigError as exc:
        problems.error(exc.render())
        return None
    groups: dict[str, PolicyGroup] = {}
    first: dict[str, int] = {}
    before = problems.error_count
    for i, node in enumerate(doc.child("groups").items()):
        with problems.catch():
            group = _read_group(node, policies)
            if group.id in groups:
                raise node.child("id").labelled(f"group {group.id}").error(
                    f"duplicate group id (groups[{first[group.id]}] and groups[{i}] are both '{group.id}')")
            groups[group.id] = group
            first[group.id] = i
    return groups if problems.error_count == before else None


def _catalogue_entry(node: Located, what: str, keys: set[str], fields: str) -> tuple[str, str, Located]:
    """An entry of policies.yaml (a policy, a group): its id and name, and the node labelled with
    it so that every later error names the entry (``(policy X)``, ``(group 6)``)."""
    if not isinstance(node.value, dict):
        raise node.error(f"expected a mapping with {fields}, got {short_repr(node.value)}")
    entry_id = node.text("id", required=True)
    assert entry_id is not None
    node = node.labelled(f"{what} {entry_id}")
    if not is_id(entry_id):
        raise node.child("id").error("use letters, digits, '_', '.' or '-'")
    node.check_keys(keys)
    name = node.text("name", required=True)
    assert name is not None
    return entry_id, name, node


def _read_group(node: Located, policies: dict[str, Policy] | None) -> PolicyGroup:
    gid, name, node = _catalogue_entry(node, "group", GROUP_KEYS, "id, name, policies")
    members = node.names("policies")
    if not members:
        raise node.child("policies").error("missing: the group's policies, best first")
    family = ""
    if policies is not None:
        families: dict[str, str] = {}
        for k, pid in enumerate(members):
            policy = policies.get(pid)
            if policy is None:
                raise node.child("policies").child(k).error(
                    f"unknown policy '{pid}'{suggest(pid, policies)}: a group lists policies of this file")
            families.setdefault(policy.family, pid)
        if len(families) > 1:
            mixed = ", ".join(f"{pid} is {fam}" for fam, pid in families.items())
            raise node.child("policies").error(f"a group's policies are of one family, but {mixed}")
        family = next(iter(families))
    return PolicyGroup(id=gid, name=name, policies=members, family=family, file=node.doc.file, path=node.path,
                       source=node.doc)


def _read_policy(node: Located) -> Policy:
    pid, name, node = _catalogue_entry(node, "policy", POLICY_KEYS, "id, name, family")
    family = node.text("family", required=True)
    assert family is not None
    if not is_name(family):
        raise node.child("family").error(f"'{family}' must be a lower-case name such as retention")
    valid_from = node.date("valid_from")
    valid_to = node.date("valid_to")
    if valid_from and valid_to and valid_from > valid_to:
        raise node.child("valid_from").error(f"valid_from {valid_from} is after valid_to {valid_to}")
    holdout = node.get("holdout", (int, float))
    if holdout is not None and not 0 <= holdout < 1:
        raise node.child("holdout").error(f"a share of customers, 0 ≤ holdout < 1, got {holdout}")
    return Policy(
        id=pid, name=name, family=family, valid_from=valid_from, valid_to=valid_to,
        channels=node.names("channels") or (),
        exclusive_group=node.text("exclusive_group"),
        cooldown_days=node.integer("cooldown_days"),
        withdraw_days=node.integer("withdraw_days"),
        holdout=float(holdout) if holdout is not None else None,
        file=node.doc.file, path=node.path, source=node.doc,
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
        doc = _mapping_doc(path, "channels")
        doc.check_keys({"channels", "contact_policy"} | DOC_KEYS)
        raw_channels = doc.get("channels", dict, required=True)
    except ConfigError as exc:
        problems.error(exc.render())
        return None
    before = problems.error_count
    channels: dict[str, Channel] = {}
    for name, node in doc.child("channels").entries():
        with problems.catch():
            channels[str(name)] = _read_channel(str(name), node)
    if not raw_channels:
        problems.error(doc.child("channels").error(f"define at least one channel ({', '.join(CHANNEL_NAMES)})")
                       .render())
    contact = ContactPolicy()
    with problems.catch():
        if doc.get("contact_policy", dict) is not None:
            cp = doc.child("contact_policy")
            cp.check_keys(CONTACT_POLICY_KEYS)
            contact = ContactPolicy(cooldown_days=cp.integer("cooldown_days"),
                                    monthly_cap=cp.integer("monthly_cap", minimum=1),
                                    retry_days=cp.integer("retry_days"),
                                    universal_holdout=_universal_holdout(cp),
                                    universal_salt=_universal_salt(cp))
    if problems.error_count != before:
        return None
    return ChannelConfig(channels, contact, file, doc.doc)


def _universal_holdout(cp: Located) -> float:
    """contact_policy's ``universal_holdout``: a share 0 ≤ x ≤ 0.5 of the base (absent: 0, off)."""
    share = cp.child("universal_holdout").value
    if share is None:
        return 0.0
    if isinstance(share, bool) or not isinstance(share, (int, float)):
        raise cp.child("universal_holdout").error(
            f"expected a number (a share of the customer base such as 0.02), got {type(share).__name__} "
            f"{short_repr(share)}")
    if not 0 <= share <= MAX_UNIVERSAL_HOLDOUT:
        raise cp.child("universal_holdout").error(
            f"a share of the customer base, 0 ≤ universal_holdout ≤ {MAX_UNIVERSAL_HOLDOUT}, got {share}",
            hint="e.g. 0.02: 2% of the customers are contacted by no campaign; 0 turns the control group off")
    return float(share)


def _universal_salt(cp: Located) -> str:
    """contact_policy's ``universal_salt``: any text without control characters (it becomes an SQL
    literal through sqlquote.quote_literal only); a new salt draws a new universal group."""
    salt = cp.text("universal_salt")
    if salt is None:
        if "universal_salt" in cp:
            raise cp.child("universal_salt").error("must not be empty (leave the key out for the default salt)")
        return DEFAULT_UNIVERSAL_SALT
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in salt):
        raise cp.child("universal_salt").error(f"a salt is printable text, got {short_repr(salt)}")
    return salt


def _read_channel(name: str, node: Located) -> Channel:
    if not is_name(name):
        raise node.error(f"channel names are lower-case names such as {', '.join(CHANNEL_NAMES)}")
    if not isinstance(node.value, dict):
        raise node.error(f"expected a mapping with cycle, capacity, format, got {short_repr(node.value)}")
    node.check_keys(CHANNEL_KEYS)
    cycle = node.choice("cycle", CYCLES, required=True)
    fmt = node.choice("format", CHANNEL_FORMATS, required=True)
    assert cycle is not None and fmt is not None
    columns = node.names("columns")
    for k, col in enumerate(columns or ()):
        if col not in LIST_COLUMNS:
            raise node.child("columns").child(k).error(
                f"unknown target-list column '{col}'{suggest(col, LIST_COLUMNS)}; "
                f"columns: {', '.join(LIST_COLUMNS)}")
    salt_env = node.text("salt_env") or "MKTOOL_HASH_SALT"
    kind = node.choice("kind", CHANNEL_KINDS, default=POPUP if name in POPUP_CHANNELS else PUSH) or PUSH
    if kind == POPUP:
        for key in PUSH_ONLY_KEYS:
            if node.child(key).value is not None:
                raise node.child(key).error(
                    f"a pop-up channel has no {key}: it shows every current offer of the customer in front of the "
                    "agent, uses no capacity and counts no contacts",
                    hint=f"remove {key}, or make the channel `kind: push`")
    return Channel(
        name=name, cycle=cycle, format=fmt, kind=kind, salt_env=salt_env,
        capacity=node.integer("capacity", minimum=1),
        columns=columns,
        mask=node.choice("mask", MASKS, default="none") or "none",
        contact_cap=node.integer("contact_cap", minimum=1),
        retry_days=node.integer("retry_days"),
    )


def is_popup(channel: Channel) -> bool:
    """A pop-up channel (the agent's screen when the customer walks in or calls: SPEC §6) rather
    than a push list: its ``kind`` (channels.yaml's, defaulted from schema.POPUP_CHANNELS)."""
    return channel.kind == POPUP


def default_columns(channel: Channel, view_columns: Collection[str] | None = None) -> tuple[str, ...]:
    """A channel's target-list columns: its ``columns:``, else the standard ones (SPEC §6), and on a
    pop-up channel also the agent's screen: the customer summary columns customer_view has
    (``view_columns``; stickiness_tier and churn_flag are scores.yaml's) and the recent contacts."""
    if channel.columns:
        return tuple(channel.columns)
    if not is_popup(channel):
        return TARGET_COLUMNS
    screen = [c for c in SCREEN_COLUMNS
              if c not in SUMMARY_COLUMNS or view_columns is None or c in view_columns]
    return (*TARGET_COLUMNS, *screen)


def _check_channel_columns(channels: ChannelConfig | None, view_columns: list[str] | None,
                           problems: Problems) -> None:
    """A channel asking for a customer-summary column that customer_view does not have (scores.yaml
    defines stickiness_tier and churn_flag) would fail at export: refuse it now."""
    if channels is None or view_columns is None or channels.source is None:
        return
    for name, channel in channels.channels.items():
        for k, col in enumerate(channel.columns or ()):
            if col in SUMMARY_COLUMNS and col not in view_columns:
                problems.error(f"{channels.source.where(f'channels.{name}.columns[{k}]')}: customer_view has no "
                               f"column '{col}' (scores.yaml defines the score columns): the list cannot show it")


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
        if len(rel.parts) > 1 and rel.parts[0] == SCENES_DIR:  # scene files (issue 14), read by _read_scenes
            continue
        found.append(path)
    return found


@dataclass
class _Context:
    """What rule validation checks against (None: that catalogue failed to load; skip the check)."""

    columns: list[str] | None
    policies: dict[str, Policy] | None
    channels: ChannelConfig | None
    groups: dict[str, PolicyGroup] | None = None


def _read_matrix(path: Path, ctx: _Context, problems: Problems, failed_families: set[str]) -> Matrix | None:
    """One matrix file; None when it is not a matrix or has errors (recorded in ``problems``).

    The family of a matrix that fails is added to ``failed_families`` so that cross-file
    checks do not also call that family missing.
    """
    file = str(path)
    try:
        source = read_yaml(path)
    except ConfigError as exc:
        problems.error(exc.render())
        return None
    doc = source.root
    raw = doc.value
    if not isinstance(raw, dict):
        return None  # not a matrix (an empty or list-shaped YAML file)
    if "matrix" not in raw:
        if "scenes" in raw:  # a scene file the loader would never read: say where scene files go
            problems.error(source.error("scenes", f"scenes are read from {SCENES_FILE} and {SCENES_DIR}/*.yaml of the "
                                        "matrices folder only: move this file there").render())
            return None
        if "rules" in raw:  # looks like a matrix with a typo in its name key
            key = next((k for k in raw if difflib.get_close_matches(str(k), ["matrix"], n=1, cutoff=0.6)), None)
            hint = f" (found '{key}': did you mean 'matrix'?)" if key else ""
            problems.error(source.error(str(key) if key else "",
                                        f"has 'rules:' but no top-level 'matrix:' key{hint}").render())
        return None
    before = problems.error_count
    failed_families.add(str(raw.get("family")))  # until the matrix has loaded
    try:
        doc.check_keys(MATRIX_KEYS)
        name = doc.text("matrix", required=True)
        family = doc.text("family", required=True)
        assert name is not None and family is not None
        if not is_name(name):
            raise doc.child("matrix").error(f"'{name}' must be a lower-case name (letters, digits, _)")
        if not is_name(family):
            raise doc.child("family").error(f"'{family}' must be a lower-case name such as retention")
        is_priority = family == PRIORITY_FAMILY
        hit = doc.choice("hit", HIT_MODES, required=not is_priority, default="first" if is_priority else None)
        assert hit is not None
        if is_priority and hit != "first":
            raise doc.child("hit").error("the priority matrix gives each customer exactly one order: use hit: first")
        raw_rules = doc.get("rules", list, required=True)
        doc_text = doc.text("doc") or doc.text("description")
    except ConfigError as exc:
        problems.error(exc.render())
        return None
    where: CheckedExpression | None = None
    with problems.catch():
        raw_where = raw.get("where")
        if raw_where is not None:
            where = check_expression(_sql_text(raw_where), location=doc.child("where").where(), columns=ctx.columns,
                                     kind="boolean")
    if not raw_rules:
        problems.error(doc.child("rules").error("the matrix has no rules").render())
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, node in enumerate(doc.child("rules").items()):
        rule = _read_rule(node, i, matrix=name, family=family, is_priority=is_priority, ctx=ctx,
                          problems=problems, seen=seen)
        if rule is not None:
            rules.append(rule)
    if problems.error_count != before:
        return None
    failed_families.discard(family)
    return Matrix(name=name, family=family, hit=hit, where=where, rules=tuple(rules), file=file, doc=doc_text,
                  source=source)


def _sql_text(value: Any) -> str:
    """YAML turns `when: true` into a bool and `when: 1` into an int; give sqlcheck the text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value  # str, or anything else for sqlcheck to refuse with its type


def _read_rule(node: Located, i: int, *, matrix: str, family: str, is_priority: bool, ctx: _Context,
               problems: Problems, seen: dict[str, int]) -> Rule | None:
    raw = node.value
    if not isinstance(raw, dict):
        problems.error(node.error(f"expected a mapping with id, when, {'order' if is_priority else 'policy'}, "
                                  f"got {short_repr(raw)}").render())
        return None
    before = problems.error_count
    rid: str | None = None
    with problems.catch():
        rid = node.text("id", required=True)
        assert rid is not None
        if not is_id(rid):
            raise node.child("id", label=f"rule {rid}").error("use letters, digits, '_', '.' or '-'")
        if rid in seen:
            raise node.child("id", label=f"rule {rid}").error(
                f"duplicate rule id (rules[{seen[rid]}] and rules[{i}] are both '{rid}')")
        seen[rid] = i
    node = node.labelled(f"rule {rid}" if rid else None)
    allowed = PRIORITY_RULE_KEYS if is_priority else RULE_KEYS
    # A key that is missing because it was misspelt is reported once, as the unknown key.
    typos = {close for k in set(raw) - allowed for close in difflib.get_close_matches(str(k), sorted(allowed), n=1)}
    with problems.catch():
        if is_priority and "policy" in raw:
            raise node.child("policy").error("a priority-matrix rule gives an 'order' (a list of families), "
                                             "not a policy")
        if not is_priority and "order" in raw:
            raise node.child("order").error("'order' belongs in the priority matrix (family: priority); "
                                            "this matrix's rules give a 'policy'")
        node.check_keys(allowed)

    when: CheckedExpression | None = None
    with problems.catch():
        if raw.get("when") is None:
            if "when" in typos:
                raise _Reported()
            raise node.child("when").error("missing required key (use `when: true` for a catch-all)")
        when = check_expression(_sql_text(raw["when"]), location=node.child("when").where(), columns=ctx.columns,
                                kind="boolean")
    doc_text = None
    with problems.catch():
        doc_text = node.text("doc") or node.text("description")

    policy_id = group = script = None
    channels: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    if is_priority:
        with problems.catch():
            order = node.names("order") or ()
            if not order and ("order" in typos or "policy" in raw):
                raise _Reported()
            if not order:
                raise node.child("order").error("missing: the list of families to offer, in order "
                                                "(for example retention, traffic, new_service)")
            if PRIORITY_FAMILY in order:
                raise node.child("order").error(f"'{PRIORITY_FAMILY}' is not an offer family")
    else:
        policy: Policy | None = None
        with problems.catch():
            if raw.get("policy") is None and "policy" in typos:
                raise _Reported()
            policy_id = node.text("policy", required=True)
            assert policy_id is not None
            if ctx.policies is not None:
                policy = ctx.policies.get(policy_id)
                if policy is None:
                    raise node.child("policy").error(f"unknown policy '{policy_id}'"
                                                     f"{suggest(policy_id, ctx.policies)}: add it to {POLICIES_FILE}")
                if policy.family != family:
                    raise node.child("policy").error(f"'{policy_id}' is a {policy.family} policy in {POLICIES_FILE}, "
                                                     f"but matrix '{matrix}' is family {family}")
        with problems.catch():
            group = node.text("group")
            if group is not None and ctx.groups is not None:
                declared = ctx.groups.get(group)
                if declared is None:
                    known = f"declared: {', '.join(ctx.groups)}" if ctx.groups else "it declares none"
                    raise node.child("group").error(f"undeclared policy group '{group}'{suggest(group, ctx.groups)}: "
                                                    f"declare it under groups: in {POLICIES_FILE} ({known})")
                if declared.family and declared.family != family:
                    raise node.child("group").error(f"group '{group}' holds {declared.family} policies "
                                                    f"({declared.at()}), but matrix '{matrix}' is family {family}")
        with problems.catch():
            script = node.text("script")
        with problems.catch():
            channels = node.names("channels") or ()
            if not channels and policy is not None:
                channels = policy.channels
            if not channels and policy is not None:
                raise node.child("channels").error(f"missing, and policy {policy_id} names no channels either")
            if ctx.channels is not None:
                for ch in channels:
                    if ch not in ctx.channels.channels:
                        raise node.child("channels").error(
                            f"unknown channel '{ch}'{suggest(ch, ctx.channels.names)}; "
                            f"{CHANNELS_FILE} defines {', '.join(ctx.channels.names)}")
            if policy is not None and policy.channels:
                bad = [ch for ch in channels if ch not in policy.channels]
                if bad:
                    raise node.child("channels").error(f"policy {policy.id} may not be offered on "
                                                       f"{', '.join(bad)} (its channels: {', '.join(policy.channels)})")
    if problems.error_count != before or rid is None or when is None:
        return None
    return Rule(matrix=matrix, no=i + 1, id=rid, when=when, policy=policy_id, group=group, script=script,
                channels=channels, order=order, doc=doc_text, source=node.doc)


def _cross_check(matrices: list[Matrix], matrices_dir: Path, problems: Problems, *,
                 failed_families: set[str]) -> list[Matrix]:
    """Checks across files: unique names, one priority matrix, families the orders name."""
    by_name: dict[str, Matrix] = {}
    for m in matrices:
        if m.name in by_name:
            problems.error(f"{m.at('matrix')}: matrix '{m.name}' is already defined in {by_name[m.name].file}")
        else:
            by_name[m.name] = m
    unique = sorted(by_name.values(), key=lambda m: m.name)
    priority = [m for m in unique if m.is_priority]
    if not priority and PRIORITY_FAMILY not in failed_families:
        problems.error(f"{matrices_dir}: no priority matrix: one matrix must have `family: priority` and give "
                       "each customer an `order:` of families (end it with a catch-all rule `when: true`)")
    elif len(priority) > 1:
        problems.error(f"{priority[1].at('family')}: a second priority matrix ('{priority[1].name}'; the first is "
                       f"'{priority[0].name}' in {priority[0].file}): exactly one matrix may have family: priority")
    families = sorted({m.family for m in unique if not m.is_priority})
    if priority:
        p = priority[0]
        unknown: dict[str, list[Rule]] = {}
        for rule in p.rules:
            for fam in rule.order:
                if fam not in families and fam not in failed_families:
                    unknown.setdefault(fam, []).append(rule)
        for fam, rules in unknown.items():
            others = [r.id for r in rules[1:]]
            also = f"; also rule{'s' if len(others) > 1 else ''} {', '.join(others)}" if others else ""
            problems.warn(f"{rules[0].at('order')}: no matrix has family '{fam}'{suggest(fam, families)} "
                          f"(families: {', '.join(families) or 'none'}){also}")
    return unique


def _check_policy_channels(policies: dict[str, Policy] | None, channels: ChannelConfig | None,
                           problems: Problems) -> None:
    if not policies or channels is None:
        return
    for p in policies.values():
        for ch in p.channels:
            if ch not in channels.channels:
                problems.error(f"{p.at('channels')}: unknown channel '{ch}'"
                               f"{suggest(ch, channels.names)}; {CHANNELS_FILE} defines {', '.join(channels.names)}")


# -- scenes.yaml and scenes/*.yaml (issue 14) ---------------------------------------------------------
def scene_files(matrices_dir: Path) -> list[Path]:
    """The scene files in position order: scenes.yaml first, then scenes/*.yaml by file name.

    Both are optional (no file: no scenes); hidden files and sub-folders of scenes/ are not read.
    """
    out = []
    top = Path(matrices_dir) / SCENES_FILE
    if top.is_file():
        out.append(top)
    folder = Path(matrices_dir) / SCENES_DIR
    if folder.is_dir():
        out += sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".yaml", ".yml")
                       and not p.name.startswith(".")), key=lambda p: p.name)
    return out


def scene_columns(view_columns: Collection[str]) -> list[str]:
    """What a scene's ``when`` may use: customer_view's columns and the event's (SCENE_EVENT_COLUMNS)."""
    return [*view_columns, *(c for c in SCENE_EVENT_COLUMNS if c not in view_columns)]


def _read_scenes(matrices_dir: Path, ctx: _Context, problems: Problems, files: list[str]) -> tuple[Scene, ...]:
    """The scenes of the scene files that loaded, in position order (the others' errors are in
    ``problems``: a rule set is built only without errors, and these are still type-checked)."""
    scenes: list[Scene] = []
    first: dict[str, str] = {}  # scene id -> where its id is, for a duplicate's message
    position = 0
    for path in scene_files(matrices_dir):
        files.append(str(path))
        try:
            source = read_yaml(path)
        except ConfigError as exc:
            problems.error(exc.render())
            continue
        doc = source.root
        if doc.value is None:
            continue  # an empty file: no scenes (yet)
        try:
            if not isinstance(doc.value, dict):
                raise doc.error(f"expected a mapping with a top-level 'scenes:' list, got {short_repr(doc.value)}")
            doc.check_keys(SCENE_FILE_KEYS)
            if "scenes" not in doc.value:
                raise doc.error("expected a mapping with a top-level 'scenes:' list")
            doc.get("scenes", list)
        except ConfigError as exc:
            problems.error(exc.render())
            continue
        for node in doc.child("scenes").items():
            position += 1
            scene = _read_scene(node, ctx, problems, position=position, first=first)
            if scene is not None:
                scenes.append(scene)
    clash = [c for c in SCENE_EVENT_COLUMNS if c in (ctx.columns or ())]
    if scenes and clash:  # `value` in a scene's when would mean two things: refuse rather than guess
        problems.error(f"{scenes[0].at()}: customer_view has a column named {', '.join(clash)} (scores.yaml), "
                       f"which is also the event's: rename the score column, a scene's when reads "
                       f"{', '.join(SCENE_EVENT_COLUMNS)} as the event's")
    return tuple(scenes)


def _typos(raw: dict[Any, Any], allowed: set[str]) -> set[str]:
    """The allowed keys that an unknown key of ``raw`` looks like a misspelling of (reported once, as unknown)."""
    return {close for k in set(raw) - allowed for close in difflib.get_close_matches(str(k), sorted(allowed), n=1)}


def _read_scene(node: Located, ctx: _Context, problems: Problems, *, position: int,
                first: dict[str, str]) -> Scene | None:
    raw = node.value
    if not isinstance(raw, dict):
        problems.error(node.error("expected a mapping with id, name, event_type, policy, channels, expires_after, "
                                  f"got {short_repr(raw)}").render())
        return None
    before = problems.error_count
    typos = _typos(raw, SCENE_KEYS)
    sid: str | None = None
    written: str | None = None  # the id as written: it names the scene in every message, even when refused
    with problems.catch():
        if raw.get("id") is None and "id" in typos:
            raise _Reported()
        written = node.text("id", required=True)
        assert written is not None
        at_id = node.child("id", label=f"scene {written}")
        if not is_name(written):
            raise at_id.error(f"'{written}': a scene id is a lower-case identifier (a letter, then letters, digits "
                              "or _), such as balance_low_prepay")
        if written in first:
            raise at_id.error(f"duplicate scene id '{written}' (first at {first[written]}): scene ids are unique "
                              "across scenes.yaml and scenes/*.yaml")
        first[written] = at_id.where()
        sid = written
    node = node.labelled(f"scene {written}" if written else None)
    with problems.catch():
        node.check_keys(SCENE_KEYS)

    def required(key: str) -> str:
        if raw.get(key) is None and key in typos:
            raise _Reported()
        text = node.text(key, required=True)
        assert text is not None
        return text

    columns = scene_columns(ctx.columns) if ctx.columns is not None else None
    name = event_type = policy_id = None
    with problems.catch():
        name = required("name")
    with problems.catch():
        event_type = required("event_type")
        if not is_name(event_type):
            given, event_type = event_type, None
            raise node.child("event_type").error(
                f"{short_repr(given)} is not an event type: the events' event_type is compared exactly as ingest "
                "stores it (trimmed and lower-cased), and the types are lower-case identifiers such as balance_low")
    when: str | None = None
    with problems.catch():
        if raw.get("when") is not None:
            when = check_expression(_sql_text(raw["when"]), location=node.child("when").where(), columns=columns,
                                    kind="boolean").duckdb_sql
    waves: tuple[Wave, ...] | None = (Wave(DEFAULT_WAVE_ID, "TRUE", 1),)
    with problems.catch():
        if node.get("waves", list) is not None:
            waves = _read_waves(node.child("waves"), columns, problems)
    policy: Policy | None = None
    with problems.catch():
        policy_id = required("policy")
        if ctx.policies is not None:
            policy = ctx.policies.get(policy_id)
            if policy is None:
                raise node.child("policy").error(f"unknown policy '{policy_id}'{suggest(policy_id, ctx.policies)}: "
                                                 f"add it to {POLICIES_FILE}")
    channels: tuple[str, ...] = ()
    with problems.catch():
        if raw.get("channels") is None and "channels" in typos:
            raise _Reported()
        channels = node.names("channels") or ()
        if not channels:
            raise node.child("channels").error("missing: the channels to deliver the scene's trigger on, in order of "
                                               "preference (e.g. [sms] or [sms, app]; the inbound pop-up: [inbound])")
        if ctx.channels is not None:
            for k, ch in enumerate(channels):
                if ch not in ctx.channels.channels:
                    raise node.child("channels").child(k).error(
                        f"unknown channel '{ch}'{suggest(ch, ctx.channels.names)}; "
                        f"{CHANNELS_FILE} defines {', '.join(ctx.channels.names)}")
        if policy is not None and policy.channels:
            bad = [ch for ch in channels if ch not in policy.channels]
            if bad:
                raise node.child("channels").error(
                    f"policy {policy.id} may not be offered on {', '.join(bad)} (its channels: "
                    f"{', '.join(policy.channels)}; {policy.at('channels')})")
    script = None
    with problems.catch():
        script = node.text("script")
    expires_after: dt.timedelta | None = None
    with problems.catch():
        if raw.get("expires_after") is None and "expires_after" in typos:
            raise _Reported()
        expires_after = _duration(node.child("expires_after"))
    once_per = DEFAULT_ONCE_PER_DAYS
    with problems.catch():
        once_per = _once_per(node.child("once_per"))
    with problems.catch():
        node.text("doc")
        node.text("description")
    if (problems.error_count != before or sid is None or name is None or event_type is None or waves is None
            or policy_id is None or expires_after is None):
        return None
    return Scene(id=sid, name=name, event_type=event_type, when=when, waves=waves, policy=policy_id,
                 channels=channels, expires_after=expires_after, once_per_days=once_per, script=script,
                 position=position, file=node.doc.file, path=node.path, source=node.doc)


def _read_waves(node: Located, columns: list[str] | None, problems: Problems) -> tuple[Wave, ...] | None:
    """A scene's ``waves:``: each an id (unique in the scene) and a SQL condition; level = position."""
    if not node.value:
        raise node.error("an empty list: leave `waves:` out for one wave (when TRUE), or list the waves, "
                         "shallowest first (e.g. {id: below_10, when: \"value < 10\"}, then {id: below_5, ...})")
    waves: list[Wave] = []
    seen: dict[str, int] = {}
    before = problems.error_count
    for k, item in enumerate(node.items()):
        raw = item.value
        if not isinstance(raw, dict):
            problems.error(item.error(f"expected a mapping with id and when, got {short_repr(raw)}").render())
            continue
        typos = _typos(raw, WAVE_KEYS)
        wid: str | None = None
        when: CheckedExpression | None = None
        with problems.catch():
            item.check_keys(WAVE_KEYS)
        with problems.catch():
            wid = item.text("id", required=True)
            assert wid is not None
            if not WAVE_ID_RE.fullmatch(wid):
                raise item.child("id").error(f"'{wid}': a wave id is a lower-case identifier (letters, digits, _), "
                                             "such as below_10")
            if wid in seen:
                raise item.child("id").error(f"duplicate wave id (waves[{seen[wid]}] and waves[{k}] are both '{wid}')")
            seen[wid] = k
        with problems.catch():
            if raw.get("when") is None:
                if "when" in typos:
                    raise _Reported()
                raise item.child("when").error("missing required key: the wave's condition (e.g. \"value < 5\"); "
                                               "a deeper wave comes later in the list")
            when = check_expression(_sql_text(raw["when"]), location=item.child("when").where(), columns=columns,
                                    kind="boolean")
        if wid is not None and when is not None:
            waves.append(Wave(id=wid, when=when.duckdb_sql, level=k + 1))
    return tuple(waves) if problems.error_count == before else None


_DURATION_RE = re.compile(r"([0-9]+)([mhd])")
_MINUTES = {"m": 1, "h": 60, "d": 1440, "w": 7 * 1440}


def _duration(node: Located) -> dt.timedelta:
    """``expires_after``: ``<n>m`` | ``<n>h`` | ``<n>d``, n a whole number ≥ 1 (refusals suggest the nearest form)."""
    value = node.value
    form = "a whole number ≥ 1 and a unit m (minutes), h (hours) or d (days), such as 30m, 1h, 6h or 2d"
    if value is None:
        raise node.error(f"missing required key: how long an event stays fresh, {form}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise node.error(f"expected {form}, got {short_repr(value)}")
    text = str(value).strip()
    if isinstance(value, (int, float)):
        raise node.error(f"{text} has no unit: write {form} (e.g. {text}m for {text} minutes)")
    m = _DURATION_RE.fullmatch(text)
    if m is None:
        hint = _duration_hint(text)
        raise node.error(f"{short_repr(text)} is not a duration: write {form}" + (f" (here: {hint})" if hint else ""))
    n, unit = int(m.group(1)), m.group(2)
    if n < 1:
        raise node.error(f"'{text}': the number must be at least 1 (an event is fresh for some time): write {form}")
    if n * _MINUTES[unit] > MAX_SCENE_DAYS * 1440:
        raise node.error(f"'{text}' is more than {MAX_SCENE_DAYS:,} days: a scene's offer answers a recent event")
    return dt.timedelta(**{DURATION_UNITS[unit]: n})


def _duration_hint(text: str) -> str | None:
    """The nearest valid duration of a refused one: 1.5h → 90m, 1w → 7d, 2H → 2h."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([a-zA-Z]+)", text)
    if m is None:
        return None
    unit = m.group(2).lower()
    unit = {"min": "m", "mins": "m", "minute": "m", "minutes": "m", "hour": "h", "hours": "h", "day": "d",
            "days": "d", "week": "w", "weeks": "w"}.get(unit, unit)
    if unit not in _MINUTES:
        return None
    minutes = float(m.group(1)) * _MINUTES[unit]
    if minutes < 1 or not minutes.is_integer():
        return None
    n = int(minutes)
    return next(f"{n // _MINUTES[u]}{u}" for u in "dhm" if n % _MINUTES[u] == 0)


def _once_per(node: Located) -> int:
    """``once_per``: whole days ≥ 1 (default 30)."""
    value = node.value
    if value is None:
        return DEFAULT_ONCE_PER_DAYS
    if isinstance(value, bool) or not isinstance(value, int):
        raise node.error(f"expected whole days ≥ 1 (e.g. once_per: 7), got {short_repr(value)}")
    if not 1 <= value <= MAX_SCENE_DAYS:
        raise node.error(f"whole days, 1 ≤ once_per ≤ {MAX_SCENE_DAYS:,}, got {value}")
    return value


# -- the rule files together ------------------------------------------------------------------------
@dataclass
class RuleFiles:
    """What the policy catalogue, channels.yaml and the matrix files hold (None: did not load)."""

    policies: dict[str, Policy] | None
    channels: ChannelConfig | None
    matrices: list[Matrix]
    groups: dict[str, PolicyGroup] | None = None
    scenes: tuple[Scene, ...] = ()  # the scenes that loaded (a rule set is built only when every one did)


def read_rule_files(matrices_dir: Path, problems: Problems, *, columns: list[str] | None,
                    files: list[str]) -> RuleFiles:
    """Read and check policies.yaml, channels.yaml, every matrix and the scene files, collecting every problem.

    ``columns`` are the customer_view columns rule SQL may use (None when scores.yaml did not
    load: the expressions are then only parsed); each file read is appended to ``files``.
    """
    files += [str(matrices_dir / POLICIES_FILE), str(matrices_dir / CHANNELS_FILE)]
    policies, groups = _read_catalogue(matrices_dir, problems)
    channels = _read_channels(matrices_dir, problems)
    _check_policy_channels(policies, channels, problems)
    _check_channel_columns(channels, columns, problems)
    ctx = _Context(columns, policies, channels, groups)
    loaded: list[Matrix] = []
    failed_families: set[str] = set()
    for path in matrix_files(matrices_dir):
        files.append(str(path))
        m = _read_matrix(path, ctx, problems, failed_families)
        if m is not None:
            loaded.append(m)
    failed_families -= {m.family for m in loaded}
    matrices = _cross_check(loaded, matrices_dir, problems, failed_families=failed_families)
    scenes = _read_scenes(matrices_dir, ctx, problems, files)
    return RuleFiles(policies, channels, matrices, groups, scenes)
