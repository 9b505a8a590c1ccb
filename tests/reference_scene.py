"""An independent reference of `mktool scene` (/work/scene-definitions.md §2–4, docs/scenes.md).

Plain Python over rows, written from the definitions alone — never from mktool/scene.py or
mktool/scenedelivery.py — so that tests/test_scene_reference.py can compare the two on random
event streams: two readings of one text that agree on every case are far likelier right than one.
Events are decided one by one in ``seq`` order (the definitions' rounds of once_per are, per
(msisdn, scene), exactly that sequence), and the contact policy is the README's table read
stage by stage for each offer.

What it models of the contact policy: dnd (per channel and ``*``), unsubscribed, withdrawal after
an accept (withdraw_days, valid_to, else 180 days), the rejection cool-down (the policy's, else
contact_policy's), the no_answer wait on push channels, exclusive groups, dedupe against
contact_history's (msisdn, channel, policy_id, cycle date), contact_cap and monthly_cap (counting
the batch month's push contacts up to the cycle date, earlier batches' too, and this batch's
placements by rank), the universal control group (md5 draw of msisdn | salt) and the policy
hold-out (md5 draw of msisdn | policy | batch month). Not modelled: channel capacity (the
definitions leave it out of scenes) and masking (the tests use unmasked channels).

The ``when`` of a scene and of a wave is either a Python predicate over the event's row (the
view's columns plus value, event_time, event_type; None is SQL's NULL) or SQL text evaluated by
``SqlConditions`` (DuckDB as an expression evaluator only). NULL counts as false.

Not part of the package: a helper module of the tests.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

POPUPS_BY_DEFAULT = ("frontdesk", "inbound")
PUSH_STAGES = ("dnd", "unsubscribed", "withdrawn", "cooldown", "no_answer", "exclusion", "dedupe", "contact_cap")
POPUP_STAGES = ("dnd", "unsubscribed", "withdrawn", "cooldown", "exclusion")
DEFAULT_WITHDRAW_DAYS = 180
IGNORED_SUFFIXES = (".tmp", ".part", ".partial")
MSISDN_RE = re.compile(r"^[0-9]{11}$")
UNIVERSAL = "universal"
POLICY = "policy"


# -- the rules -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Wave:
    id: str
    when: Any  # SQL text, a predicate, or None (TRUE)
    level: int


@dataclass(frozen=True)
class Scene:
    id: str
    name: str
    event_type: str
    when: Any
    waves: tuple[Wave, ...]
    policy: str
    channels: tuple[str, ...]
    expires_after: dt.timedelta
    once_per_days: int
    script: str | None
    position: int


def scene_of(obj: Any, position: int | None = None) -> Scene:
    """A reference Scene from mktool's rules.Scene, a plain dict (the YAML's keys) or a Scene."""
    if isinstance(obj, Scene):
        return obj
    get = obj.get if isinstance(obj, Mapping) else (lambda k, d=None: getattr(obj, k, d))
    waves_raw = get("waves") or ()
    waves: list[Wave] = []
    for n, w in enumerate(waves_raw, start=1):
        wget = w.get if isinstance(w, Mapping) else (lambda k, d=None, w=w: getattr(w, k, d))
        waves.append(Wave(str(wget("id")), wget("when"), int(wget("level") or n)))
    if not waves:
        waves = [Wave("1", None, 1)]
    expires = get("expires_after")
    if not isinstance(expires, dt.timedelta):
        expires = duration(str(expires))
    once = get("once_per_days", None)
    if once is None:
        once = get("once_per", None)
    return Scene(id=str(get("id")), name=str(get("name") or get("id")), event_type=str(get("event_type")),
                 when=get("when"), waves=tuple(waves), policy=str(get("policy")),
                 channels=tuple(get("channels") or ()), expires_after=expires,
                 once_per_days=int(once if once is not None else 30), script=get("script"),
                 position=int(position if position is not None else (get("position") or 0)))


def duration(text: str) -> dt.timedelta:
    m = re.fullmatch(r"([1-9][0-9]*)([mhd])", text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    n = int(m.group(1))
    return {"m": dt.timedelta(minutes=n), "h": dt.timedelta(hours=n), "d": dt.timedelta(days=n)}[m.group(2)]


@dataclass(frozen=True)
class Policy:
    id: str
    name: str
    channels: tuple[str, ...] | None = None
    exclusive_group: str | None = None
    cooldown_days: int | None = None
    withdraw_days: int | None = None
    valid_to: dt.date | None = None
    holdout: float = 0.0


@dataclass(frozen=True)
class Channel:
    name: str
    kind: str  # push | popup
    contact_cap: int | None = None
    retry_days: int | None = None

    @property
    def push(self) -> bool:
        return self.kind == "push"


@dataclass
class Settings:
    """policies.yaml and channels.yaml as the contact policy reads them."""

    policies: dict[str, Policy]
    channels: dict[str, Channel]
    cooldown_days: int = 30
    monthly_cap: int | None = None
    retry_days: int = 7
    universal_holdout: float = 0.0
    universal_salt: str = "mktool-universal"

    def push(self, channel: str) -> bool:
        ch = self.channels.get(channel)
        return ch is None or ch.push  # a channel not in channels.yaml counts as push (as export reads history)


def settings_from(matrices: Path) -> Settings:
    """Read channels.yaml and policies.yaml with plain YAML (not mktool's loader)."""
    chan_doc = yaml.safe_load((matrices / "channels.yaml").read_text(encoding="utf-8"))
    channels: dict[str, Channel] = {}
    for name, spec in (chan_doc.get("channels") or {}).items():
        spec = spec or {}
        kind = spec.get("kind") or ("popup" if name in POPUPS_BY_DEFAULT else "push")
        channels[name] = Channel(name, kind, spec.get("contact_cap"), spec.get("retry_days"))
    cp = chan_doc.get("contact_policy") or {}
    pol_doc = yaml.safe_load((matrices / "policies.yaml").read_text(encoding="utf-8"))
    policies: dict[str, Policy] = {}
    for p in pol_doc.get("policies") or []:
        vt = p.get("valid_to")
        if isinstance(vt, str):
            vt = dt.date.fromisoformat(vt)
        policies[str(p["id"])] = Policy(str(p["id"]), str(p["name"]),
                                        tuple(p["channels"]) if p.get("channels") else None,
                                        p.get("exclusive_group"), p.get("cooldown_days"), p.get("withdraw_days"),
                                        vt, float(p.get("holdout") or 0.0))
    return Settings(policies, channels, int(cp.get("cooldown_days", 30)), cp.get("monthly_cap"),
                    int(cp.get("retry_days", 7)), float(cp.get("universal_holdout") or 0.0),
                    str(cp.get("universal_salt") or "mktool-universal"))


# -- the draw (mktool/dialect.py's docs: n / 2³², n the first 8 hex digits of md5(parts joined by '|')) --
def draw(*parts: str) -> float:
    digest = hashlib.md5("|".join(parts).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) / 2 ** 32


# -- conditions ----------------------------------------------------------------------------------------
class SqlConditions:
    """Evaluates SQL boolean conditions over rows (the event's and the view's columns) with DuckDB,
    as an expression evaluator only: one query per condition over all rows of a batch."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema  # the view's columns and value, event_time, event_type

    def evaluate(self, condition: str, rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        if not rows:
            return []
        data = [{**{n: r.get(n) for n in self.schema.names}, "_idx": i} for i, r in enumerate(rows)]
        table = pa.Table.from_pylist(data, schema=self.schema.append(pa.field("_idx", pa.int64())))
        con = duckdb.connect()
        try:
            con.register("t", table)
            got = dict(con.execute(f"SELECT _idx, coalesce(({condition}), false) FROM t").fetchall())
        finally:
            con.close()
        return [bool(got[i]) for i in range(len(rows))]


def holds(condition: Any, rows: Sequence[Mapping[str, Any]], sql: SqlConditions | None) -> list[bool]:
    if condition is None:
        return [True] * len(rows)
    if callable(condition):
        return [bool(condition(r)) for r in rows]  # None (NULL) is false
    if sql is None:
        raise ValueError(f"a SQL condition without an evaluator: {condition}")
    return sql.evaluate(str(condition), rows)


# -- events and files ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    msisdn: str
    event_time: dt.datetime
    event_type: str
    value: float

    @property
    def key(self) -> tuple[str, str, dt.datetime]:
        return (self.msisdn, self.event_type, self.event_time)


class Refused(Exception):
    """A file the events contract refuses (the reference's own, simple reading of it)."""


def read_events(path: Path, *, lower: bool = False) -> list[Event]:
    """The file's rows under the events contract as ingest reads it (docs/contract.md): msisdn 11
    digits, event_time a timestamp (or a text that is one), event_type a non-empty text, trimmed and
    lower-cased (as ingest normalises it; a scene's event_type is a lower-case identifier), value a finite
    number; no NULLs."""
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is refused
        raise Refused(f"{path.name}: unreadable ({exc})") from exc
    names = set(table.column_names)
    for col in ("msisdn", "event_time", "event_type", "value"):
        if col not in names:
            raise Refused(f"{path.name}: no column {col}")
    out = []
    for r in table.to_pylist():
        ms, t, et, v = r["msisdn"], r["event_time"], r["event_type"], r["value"]
        if isinstance(ms, str):
            ms = ms.strip()
        if not isinstance(ms, str) or not MSISDN_RE.match(ms):
            raise Refused(f"{path.name}: msisdn {ms!r}")
        if isinstance(t, str):
            try:
                t = dt.datetime.fromisoformat(t.strip())
            except ValueError as exc:
                raise Refused(f"{path.name}: event_time {t!r}") from exc
        if not isinstance(t, dt.datetime):
            raise Refused(f"{path.name}: event_time {t!r}")
        if not isinstance(et, str) or not et.strip():
            raise Refused(f"{path.name}: event_type {et!r}")
        if v is None or isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise Refused(f"{path.name}: value {v!r}")
        out.append(Event(ms, t.replace(tzinfo=None), et.strip().lower() if lower else et.strip(), float(v)))
    return out


def listed_files(path: Path) -> list[Path]:
    """A file, or a folder's *.parquet (not recursive; hidden and temporary names ignored)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir()
                  if p.is_file() and p.suffix == ".parquet" and not p.name.startswith(".")
                  and not p.name.endswith(IGNORED_SUFFIXES))


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- what a batch decides ----------------------------------------------------------------------------
@dataclass
class Outcome:
    """One scene_events row (the delivery columns filled for fired rows)."""

    batch: str
    seq: int
    msisdn: str
    event_time: dt.datetime
    event_type: str
    value: float
    scene_id: str | None
    wave: str | None
    wave_level: int | None
    outcome: str
    blocked_by_time: dt.datetime | None = None
    blocked_by_batch: str | None = None
    policy_id: str | None = None
    delivery: str | None = None
    channel: str | None = None
    blocked_at: str | None = None
    held_kind: str | None = None
    rank: int | None = None
    blockers: tuple[tuple[dt.datetime, str], ...] = ()  # every trigger that blocks (any may be named)


@dataclass(frozen=True)
class Trigger:
    msisdn: str
    scene_id: str
    wave_level: int
    event_time: dt.datetime
    batch: str


@dataclass(frozen=True)
class Contact:
    msisdn: str
    contact_date: dt.date
    channel: str
    policy_id: str
    outcome: str


@dataclass(frozen=True)
class ListRow:
    msisdn: str
    month: str
    channel: str
    rank: int
    scene_id: str
    scene_name: str
    wave: str
    event_type: str
    event_time: str
    event_value: float
    policy_id: str
    policy_name: str
    script: str


@dataclass(frozen=True)
class HoldoutRow:
    cycle: str
    cycle_date: dt.date
    channel: str
    msisdn: str
    policy_id: str
    kind: str


@dataclass
class Batch:
    file: str
    checksum: str
    batch_id: str
    rows: int
    first_event: dt.datetime | None
    last_event: dt.datetime | None
    cycle_date: dt.date
    month: str
    watermark: dt.datetime | None
    outcomes: list[Outcome] = field(default_factory=list)
    lists: dict[str, list[ListRow]] = field(default_factory=dict)
    holdouts: list[HoldoutRow] = field(default_factory=list)
    contacts: list[Contact] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Rows of scene_events per outcome."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.outcome] = out.get(o.outcome, 0) + 1
        return out


@dataclass
class Run:
    batches: list[Batch] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, batch id it was processed as)
    refused: list[str] = field(default_factory=list)  # file names


@dataclass
class Mistakes:
    """Planted mistakes (tests/test_scene_reference.py proves that the comparison catches each)."""

    once_per_inclusive: bool = False  # block at exactly N days apart (<= instead of <)
    stale_inclusive: bool = False  # exactly expires_after old is stale (>= instead of >)
    duplicate_without_type: bool = False  # the key is (msisdn, event_time) only
    lowest_wave: bool = False  # the first true wave instead of the highest
    once_per_any_wave: bool = False  # a trigger blocks a deeper wave too
    watermark_includes_batch: bool = False  # the batch's own last event is its clock
    order_by_name: bool = False  # files in name order, not by their events' time
    cap_ignores_history: bool = False  # monthly_cap counts only this batch's placements
    dnd_ignores_star: bool = False  # dnd '*' does not cover every channel
    no_universal: bool = False  # the universal control group is not drawn
    case_kept_event_type: bool = False  # event_type only trimmed on load (ingest trims and lower-cases it)
    no_dedupe: bool = False  # a contact already recorded on the key (msisdn, channel, policy, day) is listed again


class Reference:
    """The state a database accumulates over `mktool scene` runs, and the runs themselves."""

    def __init__(self, scenes: Iterable[Any], view: Mapping[str, Mapping[str, Any]], settings: Settings, *,
                 dnd: Iterable[tuple[str, str]] = (), history: Iterable[Contact] = (),
                 sql: SqlConditions | None = None, today: dt.date | None = None,
                 mistakes: Mistakes | None = None) -> None:
        listed = [scene_of(s) for s in scenes]
        if any(s.position == 0 for s in listed):
            listed = [replace(s, position=n) for n, s in enumerate(listed, start=1)]
        self.scenes = sorted(listed, key=lambda s: s.position)
        self.view = view
        self.settings = settings
        self.dnd = set(dnd)
        self.history = list(history)
        self.sql = sql
        self.today = today or dt.date.today()
        self.m = mistakes or Mistakes()
        self.ledger: dict[str, Batch] = {}  # checksum → its batch
        self.keys: set[tuple[Any, ...]] = set()  # every processed event's key (scene_events)
        self.triggers: list[Trigger] = []

    # -- the files of one invocation --------------------------------------------------------------
    def run(self, paths: Sequence[Path]) -> Run:
        run = Run()
        files: list[Path] = []
        for p in paths:
            files.extend(listed_files(Path(p)))
        new: list[tuple[Any, Path, str, list[Event]]] = []
        for f in files:
            digest = checksum(f)
            if digest in self.ledger:
                run.skipped.append((f.name, self.ledger[digest].batch_id))
                continue
            try:
                events = read_events(f, lower=not self.m.case_kept_event_type)
            except Refused:
                run.refused.append(f.name)
                continue
            times = [e.event_time for e in events]
            first, last = (min(times), max(times)) if times else (None, None)
            far = dt.datetime.max
            sort_key = (f.name,) if self.m.order_by_name else (first or far, last or far, f.name)
            new.append((sort_key, f, digest, events))
        for _, f, digest, events in sorted(new, key=lambda x: x[0]):
            if digest in self.ledger:  # a copy of a file processed a moment ago in this invocation
                run.skipped.append((f.name, self.ledger[digest].batch_id))
                continue
            batch = self.batch(f, digest, events)
            run.batches.append(batch)
        return run

    def watermark(self) -> dt.datetime | None:
        lasts = [b.last_event for b in self.ledger.values() if b.last_event is not None]
        return max(lasts) if lasts else None

    # -- one batch --------------------------------------------------------------------------------
    def batch(self, path: Path, digest: str, events: list[Event]) -> Batch:
        batch_id = digest[:12]
        watermark = self.watermark()
        ordered = sorted(events, key=lambda e: (e.event_time, e.event_type, e.msisdn, e.value))
        first = ordered[0].event_time if ordered else None
        last = max(e.event_time for e in ordered) if ordered else None
        if self.m.watermark_includes_batch and last is not None:
            watermark = max(watermark, last) if watermark else last
        if last is not None:
            cycle_date = last.date()
        elif watermark is not None:
            cycle_date = watermark.date()
        else:
            cycle_date = self.today
        b = Batch(path.name, digest, batch_id, len(events), first, last, cycle_date,
                  cycle_date.strftime("%Y-%m"), watermark)
        b.outcomes = self.decide(b, ordered)
        self.deliver(b)
        self.ledger[digest] = b
        for o in b.outcomes:
            self.keys.add(self._key(o.msisdn, o.event_type, o.event_time))
        return b

    def _key(self, msisdn: str, event_type: str, event_time: dt.datetime) -> tuple[Any, ...]:
        return (msisdn, event_time) if self.m.duplicate_without_type else (msisdn, event_type, event_time)

    def decide(self, b: Batch, ordered: list[Event]) -> list[Outcome]:
        """§3: each event's outcome per scene, in seq order."""
        by_type: dict[str, list[Scene]] = {}
        for s in self.scenes:
            by_type.setdefault(s.event_type, []).append(s)
        # the conditions, evaluated once per (event, scene) over the event's row
        rows = [self._row(e) for e in ordered]
        truth: dict[tuple[str, int, int], bool] = {}  # (scene, wave level or 0 for the scene's when, seq index)
        for s in self.scenes:
            idx = [i for i, e in enumerate(ordered) if e.event_type == s.event_type and rows[i] is not None]
            sub = [rows[i] for i in idx]
            for level, cond in [(0, s.when)] + [(w.level, w.when) for w in s.waves]:
                for i, ok in zip(idx, holds(cond, sub, self.sql)):  # type: ignore[arg-type]
                    truth[(s.id, level, i)] = ok
        seen: set[tuple[Any, ...]] = set()
        out: list[Outcome] = []
        fired_here: list[Trigger] = []
        for i, e in enumerate(ordered):
            seq = i + 1
            base: dict[str, Any] = dict(batch=b.batch_id, seq=seq, msisdn=e.msisdn, event_time=e.event_time,
                                        event_type=e.event_type, value=e.value)
            key = self._key(e.msisdn, e.event_type, e.event_time)
            if key in self.keys or key in seen:
                out.append(Outcome(**base, scene_id=None, wave=None, wave_level=None, outcome="duplicate"))
                continue
            seen.add(key)
            listening = by_type.get(e.event_type, [])
            if not listening:
                out.append(Outcome(**base, scene_id=None, wave=None, wave_level=None, outcome="no_scene"))
                continue
            for s in listening:
                o = Outcome(**base, scene_id=s.id, wave=None, wave_level=None, outcome="", policy_id=s.policy)
                out.append(o)
                if b.watermark is not None:
                    age = b.watermark - e.event_time
                    if (age >= s.expires_after) if self.m.stale_inclusive else (age > s.expires_after):
                        o.outcome = "stale"
                        continue
                if rows[i] is None:
                    o.outcome = "unknown_customer"
                    continue
                true_waves = [w for w in s.waves if truth[(s.id, w.level, i)]]
                if not truth[(s.id, 0, i)] or not true_waves:
                    o.outcome = "not_matched"
                    continue
                wave = (min if self.m.lowest_wave else max)(true_waves, key=lambda w: w.level)
                o.wave, o.wave_level = wave.id, wave.level
                limit = dt.timedelta(days=s.once_per_days)
                blocker = None
                blockers: list[tuple[dt.datetime, str]] = []
                for t in self.triggers + fired_here:
                    if t.msisdn != e.msisdn or t.scene_id != s.id:
                        continue
                    if not self.m.once_per_any_wave and t.wave_level < wave.level:
                        continue
                    gap = abs(e.event_time - t.event_time)
                    if (gap <= limit) if self.m.once_per_inclusive else (gap < limit):
                        blockers.append((t.event_time, t.batch))
                        if blocker is None or (t.event_time, t.batch) < (blocker.event_time, blocker.batch):
                            blocker = t
                if blocker is not None:
                    o.outcome = "once_per"
                    o.blocked_by_time, o.blocked_by_batch = blocker.event_time, blocker.batch
                    o.blockers = tuple(blockers)
                    continue
                o.outcome = "fired"
                fired_here.append(Trigger(e.msisdn, s.id, wave.level, e.event_time, b.batch_id))
        self.triggers.extend(fired_here)
        return out

    def _row(self, e: Event) -> dict[str, Any] | None:
        v = self.view.get(e.msisdn)
        if v is None:
            return None
        return {**v, "value": e.value, "event_time": e.event_time, "event_type": e.event_type}

    # -- §4: the contact policy over the batch's triggers ----------------------------------------
    def deliver(self, b: Batch) -> None:
        st = self.settings
        scenes = {s.id: s for s in self.scenes}
        fired = [o for o in b.outcomes if o.outcome == "fired"]
        # rank per msisdn by (position, wave_level DESC, event_time, seq)
        by_msisdn: dict[str, list[Outcome]] = {}
        for o in fired:
            by_msisdn.setdefault(o.msisdn, []).append(o)
        for trig in by_msisdn.values():
            trig.sort(key=lambda o: (scenes[o.scene_id or ""].position, -(o.wave_level or 0), o.event_time, o.seq))
            for n, o in enumerate(trig, start=1):
                o.rank = n
        offers: dict[tuple[str, str], Outcome] = {}
        for o in sorted(fired, key=lambda o: (o.msisdn, o.rank)):
            pair = (o.msisdn, o.policy_id or "")
            if pair in offers:
                o.delivery = "merged"
            else:
                offers[pair] = o
        hist = [c for c in self.history if c.contact_date <= b.cycle_date]
        month_start = b.cycle_date.replace(day=1)
        # screening per offer × candidate channel
        rows: dict[tuple[str, str], list[tuple[str, str | None]]] = {}  # offer → [(channel, failed stage)]
        for pair, o in offers.items():
            s = scenes[o.scene_id or ""]
            pol = st.policies.get(s.policy)
            candidates = [c for c in s.channels if pol is None or pol.channels is None or c in pol.channels]
            rows[pair] = [(c, self._screen(o.msisdn, s.policy, c, b.cycle_date, hist)) for c in candidates]
        # exclusion: per customer and exclusive group the better-ranked offer (over rows still in)
        best_in_group: dict[tuple[str, str], int] = {}
        for pair, screened in rows.items():
            pol = st.policies.get(pair[1])
            if pol is None or pol.exclusive_group is None:
                continue
            if any(f is None for _, f in screened):
                k = (pair[0], pol.exclusive_group)
                best_in_group[k] = min(best_in_group.get(k, 10 ** 9), offers[pair].rank or 0)
        for pair, screened in rows.items():
            pol = st.policies.get(pair[1])
            if pol is None or pol.exclusive_group is None:
                continue
            if (offers[pair].rank or 0) != best_in_group.get((pair[0], pol.exclusive_group)):
                rows[pair] = [(c, f if f is not None else "exclusion") for c, f in screened]
        # dedupe: a contact_history row on (msisdn, channel, policy_id, cycle date)
        on_day = {(c.msisdn, c.channel, c.policy_id) for c in self.history
                  if c.contact_date == b.cycle_date and not self.m.no_dedupe}
        for pair, screened in rows.items():
            rows[pair] = [(c, "dedupe" if f is None and st.push(c) and (pair[0], c, pair[1]) in on_day else f)
                          for c, f in screened]
        # the allocation among push channels, rounds over each offer's surviving channels
        prior: dict[tuple[str, str], int] = {}
        if not self.m.cap_ignores_history:
            for c in self.history:
                if st.push(c.channel) and month_start <= c.contact_date <= b.cycle_date:
                    prior[(c.msisdn, c.channel)] = prior.get((c.msisdn, c.channel), 0) + 1
        choices = {pair: [c for c, f in chans if f is None and st.push(c)] for pair, chans in rows.items()}
        placed: dict[tuple[str, str], str] = {}
        rounds = max((len(v) for v in choices.values()), default=0)
        for r in range(rounds):
            before = dict(placed)  # the earlier rounds' placements
            proposals = sorted(((offers[p].rank or 0, p[1], p, ch[r]) for p, ch in choices.items()
                                if len(ch) > r and p not in placed), key=lambda x: (x[2][0], x[0], x[1]))
            within: list[tuple[int, str, tuple[str, str], str]] = []
            per_channel: dict[tuple[str, str], int] = {}
            for rank, pol_id, pair, ch in proposals:
                k = (pair[0], ch)
                per_channel[k] = per_channel.get(k, 0) + 1
                count = per_channel[k] + sum(1 for q, c in before.items() if q[0] == pair[0] and c == ch) \
                    + prior.get(k, 0)
                cap = st.channels[ch].contact_cap if ch in st.channels else None
                if cap is None or count <= cap:
                    within.append((rank, pol_id, pair, ch))
            per_customer: dict[str, int] = {}
            for _rank, _pol_id, pair, ch in within:
                per_customer[pair[0]] = per_customer.get(pair[0], 0) + 1
                total = per_customer[pair[0]] + sum(1 for q in before if q[0] == pair[0]) \
                    + sum(n for (m, _), n in prior.items() if m == pair[0])
                if st.monthly_cap is None or total <= st.monthly_cap:
                    placed[pair] = ch
        # hold-outs and the lists
        b.lists = {c: [] for c in self.list_channels()}
        for pair, o in sorted(offers.items()):
            s = scenes[o.scene_id or ""]
            shown = [c for c, f in rows[pair] if f is None and not st.push(c)]
            on = ([placed[pair]] if pair in placed else []) + shown
            if not on:
                o.delivery = "blocked"
                o.blocked_at = self._blocked_at(rows[pair], pair in placed)
                continue
            kind = self._held(o.msisdn, s.policy, b.month)
            if kind is not None:
                o.delivery, o.held_kind = "held_out", kind
                b.holdouts.extend(HoldoutRow(f"scene:{b.batch_id}", b.cycle_date, c, o.msisdn, s.policy, kind)
                                  for c in on)
                continue
            o.delivery, o.channel = "listed", on[0]
            pol = st.policies.get(s.policy)
            for ch in on:
                b.lists.setdefault(ch, []).append(ListRow(
                    o.msisdn, b.month, ch, o.rank or 0, s.id, s.name, o.wave or "", o.event_type,
                    o.event_time.strftime("%Y-%m-%d %H:%M:%S"), o.value, s.policy, pol.name if pol else s.policy,
                    s.script if s.script is not None else (pol.name if pol else s.policy)))
                if st.push(ch):
                    b.contacts.append(Contact(o.msisdn, b.cycle_date, ch, s.policy, "sent"))
        for rows_ in b.lists.values():
            rows_.sort(key=lambda r: (r.msisdn, r.rank, r.policy_id))
        self.history.extend(b.contacts)

    def list_channels(self) -> list[str]:
        out: list[str] = []
        for s in self.scenes:
            out.extend(c for c in s.channels if c not in out)
        return out

    def _screen(self, msisdn: str, policy_id: str, channel: str, cycle_date: dt.date,
                hist: list[Contact]) -> str | None:
        """The first screening stage that removes the row (offer × channel), or None."""
        st = self.settings
        pol = st.policies.get(policy_id)
        if (msisdn, channel) in self.dnd or (not self.m.dnd_ignores_star and (msisdn, "*") in self.dnd):
            return "dnd"
        if any(c.msisdn == msisdn and c.channel == channel and c.outcome == "unsubscribed" for c in hist):
            return "unsubscribed"
        for c in hist:
            if c.msisdn != msisdn or c.outcome != "accepted":
                continue
            ap = st.policies.get(c.policy_id)
            same = c.policy_id == policy_id or (
                ap is not None and pol is not None and ap.exclusive_group is not None
                and ap.exclusive_group == pol.exclusive_group)
            if not same:
                continue
            if ap is not None and ap.withdraw_days is not None:
                active = c.contact_date >= cycle_date - dt.timedelta(days=ap.withdraw_days)
            elif ap is not None and ap.valid_to is not None:
                active = cycle_date <= ap.valid_to
            else:
                active = c.contact_date >= cycle_date - dt.timedelta(days=DEFAULT_WITHDRAW_DAYS)
            if active:
                return "withdrawn"
        cooldown = pol.cooldown_days if pol is not None and pol.cooldown_days is not None else st.cooldown_days
        if any(c.msisdn == msisdn and c.policy_id == policy_id and c.outcome == "rejected"
               and c.contact_date >= cycle_date - dt.timedelta(days=cooldown) for c in hist):
            return "cooldown"
        if st.push(channel):
            for c in hist:
                if c.msisdn == msisdn and c.policy_id == policy_id and c.outcome == "no_answer" and st.push(c.channel):
                    ch = st.channels.get(c.channel)
                    wait = ch.retry_days if ch is not None and ch.retry_days is not None else st.retry_days
                    if c.contact_date > cycle_date - dt.timedelta(days=wait):
                        return "no_answer"
        return None

    def _blocked_at(self, chans: list[tuple[str, str | None]], placed: bool) -> str:
        """The first stage after which none of the offer's rows survived."""
        for n, stage in enumerate(PUSH_STAGES):
            alive = [c for c, f in chans if f is None or f not in PUSH_STAGES[:n + 1]]
            if not alive:
                return stage
        return "contact_cap"  # every row survived the screening but the caps placed none

    def _held(self, msisdn: str, policy_id: str, month: str) -> str | None:
        st = self.settings
        if not self.m.no_universal and st.universal_holdout > 0 and draw(msisdn, st.universal_salt) < \
                st.universal_holdout:
            return UNIVERSAL
        pol = st.policies.get(policy_id)
        if pol is not None and pol.holdout > 0 and draw(msisdn, policy_id, month) < pol.holdout:
            return POLICY
        return None


# -- reading a database ---------------------------------------------------------------------------------
def view_of(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, dict[str, Any]], pa.Schema]:
    """customer_view of its latest month, by msisdn, and the schema of a condition's row."""
    month = con.execute("SELECT max(month) FROM customer_view").fetchall()[0]
    arrow = con.sql("SELECT * FROM customer_view WHERE month = $m",
                    params={"m": month[0] if month else None}).to_arrow_table()
    assert arrow is not None
    rows = {r["msisdn"]: r for r in arrow.to_pylist()}
    schema = arrow.schema
    for name, type_ in (("value", pa.float64()), ("event_time", pa.timestamp("us")), ("event_type", pa.string())):
        if name not in schema.names:
            schema = schema.append(pa.field(name, type_))
    return rows, schema


def history_of(con: duckdb.DuckDBPyConnection) -> list[Contact]:
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "contact_history" not in tables:
        return []
    return [Contact(*r) for r in con.execute(
        "SELECT msisdn, contact_date, channel, policy_id, outcome FROM contact_history").fetchall()]


def dnd_of(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "dnd" not in tables:
        return set()
    return {(m, c) for m, c in con.execute("SELECT msisdn, channel FROM dnd").fetchall()}


def month_days(month: str) -> int:
    return calendar.monthrange(int(month[:4]), int(month[5:7]))[1]
