"""Reading test files: ``matrices/tests/*.yaml`` and a matrix file's own ``tests:`` list.

The keys of a file and of a case are in :mod:`mktool.ruletest`'s docstring. Every problem
is a :class:`ConfigError` naming the file and the case; expectations are only read here and
checked against the rule set when the case runs (:mod:`mktool.ruletest.judging`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mktool.contract import MONTH_RE
from mktool.errors import ConfigError
from mktool.rules import matrix_files
from mktool.schema import MONEY_COLUMNS, PLAN_STAGES, RATE_COLUMNS
from mktool.yamlio import load_yaml, unknown_keys

ALL = "all"  # matrix scope: the full ranked recommendation of every matrix
NO_OFFER = ("no offer", "no offers", "none", "nothing")
NO_PLAN = ("no plan", "none", "nothing")
FILE_KEYS = {"month", "matrix", "scene", "customer", "cases", "plans", "plans_file", "plan_cases", "doc",
             "description"}
CASE_KEYS = {"case", "rule", "matrix", "customer", "expect", "includes", "excludes", "doc", "description"}
# Scene cases (issue 14 §7): an event, a partial customer, earlier triggers, the expected trigger.
SCENE_CASE_KEYS = {"case", "scene", "customer", "event", "earlier", "watermark", "expect", "doc", "description"}
EVENT_KEYS = {"event_type", "value", "event_time"}
EARLIER_KEYS = {"scene", "wave", "event_time"}
TRIGGER_KEYS = {"scene", "wave", "outcome"}
NO_TRIGGER = ("no trigger", "no triggers", "none", "nothing")
ALL_SCENES = "all scenes"
PLAN_CASE_KEYS = {"case", "customer", "config", "expect", "stage", "doc", "description"}
OFFER_KEYS = {"policy", "rule", "rank", "group", "matrix", "script"}
PRIORITY_KEYS = {"rule", "order"}
PLAN_CONFIG_KEYS = {"total_change", "rental_change", "top", "min_data_mb"}
MONEY, RATES = MONEY_COLUMNS, RATE_COLUMNS  # money to 2 decimals, rates to 4 (as in the lists)
PLAN_KEYS = {"rank", "plan_id", "plan_name", "current_plan_id", *MONEY, *RATES}
CASE_STAGES = PLAN_STAGES[1:]  # a plan case names the stage a customer stops at; "base" has everyone


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
    scene: str | None = None  # scene cases: the scene under test (None: every scene of the event's type)
    event: dict[str, Any] = field(default_factory=dict)  # scene cases: event_type, value, event_time
    earlier: list[dict[str, Any]] = field(default_factory=list)  # scene cases: earlier triggers {scene, wave, time}
    watermark: dt.datetime | None = None  # scene cases: the clock of the batch (None: no earlier batch)

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
        if self.kind == "scene":
            return f"scene {self.scene}" if self.scene else ALL_SCENES
        return "all matrices" if self.matrix == ALL else f"matrix {self.matrix}"


@dataclass
class CaseFile:
    path: Path
    month: str | None
    customer: dict[str, Any]
    cases: list[Case]
    plans: list[dict[str, Any]] | None = None
    plans_file: Path | None = None


# -- reading test files ----------------------------------------------------------------------------
def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean \'x\'?)' for a misspelt name, else ''."""
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _mapping(value: Any, where: str, file: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of column: value, got {value!r}", file=file)
    return {str(k): v for k, v in value.items()}


def _timestamp(value: Any, where: str, file: str) -> dt.datetime:
    """A YAML timestamp (``2026-10-05 10:00:00``, quoted or not; a date is its midnight)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = dt.datetime.fromisoformat(value.strip())
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            raise ConfigError(f"{where}: write the wall-clock time without a time zone (the events' event_time is "
                              f"China Standard Time), got {value.isoformat()}", file=file)
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    raise ConfigError(f"{where}: expected a timestamp such as 2026-10-05 10:00:00, got {value!r}", file=file)


def _read_scene_case(rc: dict[str, Any], *, name: str, file: str, default_scene: str | None, no: int) -> Case:
    """A scene case: ``event`` (event_type: the scene's by default), ``earlier`` triggers, ``watermark``."""
    at = f'case "{name}"'
    unknown_keys(rc, SCENE_CASE_KEYS, file=Path(file), at=at)
    if rc.get("expect") is None:
        raise ConfigError(f"{at}: expect: missing: the trigger(s) ({{scene: X, wave: W}}), or `no trigger`",
                          file=file)
    event = _mapping(rc.get("event"), f"{at}: event", file)
    unknown_keys(event, EVENT_KEYS, file=Path(file), at=f"{at}: event")
    if event.get("event_time") is None:
        raise ConfigError(f"{at}: event: event_time: missing (e.g. event_time: 2026-10-05 10:00:00)", file=file)
    event["event_time"] = _timestamp(event["event_time"], f"{at}: event: event_time", file)
    value = event.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{at}: event: value: expected a number (or leave it out: NULL), got {value!r}", file=file)
    if event.get("event_type") is not None:
        event["event_type"] = str(event["event_type"]).strip()
    raw_earlier = rc.get("earlier") or []
    if not isinstance(raw_earlier, list):
        raise ConfigError(f"{at}: earlier: expected a list of earlier triggers {{wave, event_time}}", file=file)
    earlier = []
    for i, item in enumerate(raw_earlier):
        where = f"{at}: earlier[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping with wave and event_time, got {item!r}", file=file)
        unknown_keys(item, EARLIER_KEYS, file=Path(file), at=where)
        if item.get("event_time") is None:
            raise ConfigError(f"{where}: event_time: missing: when the earlier trigger's event happened", file=file)
        earlier.append({"scene": str(item["scene"]) if item.get("scene") is not None else None,
                        "wave": str(item["wave"]) if item.get("wave") is not None else None,
                        "event_time": _timestamp(item["event_time"], f"{where}: event_time", file)})
    watermark = rc.get("watermark")
    scene = rc.get("scene", default_scene)
    return Case(file=file, no=no, name=name, kind="scene",
                customer=_mapping(rc.get("customer"), f"{at}: customer", file),
                scene=str(scene) if scene is not None else None, event=event, earlier=earlier,
                watermark=_timestamp(watermark, f"{at}: watermark", file) if watermark is not None else None,
                expect=rc["expect"])


def _read_cases(raw: Any, *, file: str, default_matrix: str | None, start: int, where: str,
                default_scene: str | None = None) -> list[Case]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of cases, got {type(raw).__name__}", file=file)
    cases: list[Case] = []
    for i, rc in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(rc, dict):
            raise ConfigError(f"{at}: expected a mapping with case, customer, expect, got {rc!r}", file=file)
        name = rc.get("case")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{at}: case: give every case a name (case: what it checks)", file=file)
        at = f'case "{name}"'
        if "event" in rc or (default_scene is not None and "matrix" not in rc):
            cases.append(_read_scene_case(rc, name=name.strip(), file=file, default_scene=default_scene,
                                          no=start + len(cases) + 1))
            continue
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
    cases: list[Case] = []
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
            raise ConfigError(f"{at}: stage: '{stage}' is not a plan funnel stage{suggest(stage, CASE_STAGES)}; "
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
    default_scene = doc.get("scene")
    cases = _read_cases(doc.get("cases"), file=file, default_matrix=str(default_matrix) if default_matrix else None,
                        start=0, where="cases", default_scene=str(default_scene) if default_scene else None)
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


def current_month() -> str:
    """The evaluation month of a file that pins none and a run without --month."""
    today = dt.date.today()
    return f"{today.year:04d}-{today.month:02d}"
