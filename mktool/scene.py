"""The trigger step of `mktool scene` (issue 14, docs/scenes.md "how a batch decides"): which event
files are new, and what each event of a batch decides per scene — set-based in DuckDB.

One event file is one batch. This module finds the files, reads the ledger (``scene_files``)
and loads one file under the events contract into temp tables; the delivery step
(mktool/scenedelivery.py) applies the contact policy to the triggers and records the batch
(ledger row, ``scene_events``) in its publish unit. Nothing here writes a permanent table
except :func:`ensure_scene_tables`, which the publish unit calls.

Public API (stable; the delivery, rules, cli and reference helpers build on it)
  ``event_files(path) -> list[Path]``
      PATH a Parquet file (taken as given) or a folder: its ``*.parquet`` files, not recursive,
      hidden (``.*``) and temporary (``*.tmp``, ``*.part``, ``*.partial``) names ignored
      (:func:`is_event_file_name`), by name.
  ``file_checksum(path) -> str``       sha256 of the bytes; the batch id is its first 12 hex digits
      (:func:`batch_id`).
  ``ensure_scene_tables(con)``         CREATE TABLE IF NOT EXISTS scene_files and scene_events
      (:data:`SCENE_FILES_COLUMNS`, :data:`SCENE_EVENTS_COLUMNS`).
  ``ledger_entry(con, checksum) -> LedgerEntry | None``  the ledger row of a processed file.
  ``ledger_watermark(con) -> datetime | None``           max(last_event) of the ledger's batches.
  ``ledger_query(batch, processed_at) -> Query``          the batch's ledger row, for the publish unit.
  ``order_files(con, paths) -> list[EventFile]``
      every path with its checksum, ledger entry (processed before: skip it) or refusal (error),
      and, for a new readable file, its rows and first/last event (read under the contract).
      Sorted by (first_event, last_event, file name), files without events last: the order new
      files are processed in (``is_new``). A copy of a file earlier in the same call (same
      checksum) is marked ``copy_of`` it: it is in the ledger (``ledger_entry``, the skip
      message) once that file's batch has committed.
  ``load_batch(con, project, event_file) -> Batch``
      loads the file into ``_s_events`` and decides every event into ``_s_outcomes`` and
      ``_s_triggers`` (temp tables, kept for the delivery step); refuses a stale or missing view.
  ``view_month(con) -> str``           the latest scored month of customer_view.
  ``events_query(source) -> Query``    ``_s_events`` from any relation with msisdn, event_time,
      event_type, value: ``seq`` = row number by (event_time, event_type, msisdn, value NULLS LAST).
  ``outcome_queries(scenes, policies, *, view_month, watermark, batch=None, earlier=SCENE_EVENTS_TABLE,
  view=VIEW_TABLE) -> OutcomeQueries`` and ``run_outcomes(con, queries) -> dict[str, int]``
      the decision itself over ``_s_events``, ``view`` (rows of ``view_month``) and ``earlier``
      (a relation shaped like scene_events: earlier batches' keys and fired triggers). A test
      (``mktool test`` scene cases) builds these three tables on a small database and calls them.

The decision (definitions §3), per event in seq order: ``duplicate`` (key msisdn, event_type,
event_time seen in an earlier batch or earlier in this one), ``no_scene``; else per listening
scene (position order) the first of ``stale``, ``unknown_customer``, ``not_matched``,
``once_per``, ``fired``. once_per chains inside a batch are decided in rounds (see
:class:`OutcomeQueries`); a Python loop runs over rounds, never over events.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from mktool.database import table_exists
from mktool.dialect import Query, microseconds_between
from mktool.errors import InputError, MktoolError, RuleError, StateError, engine_said
from mktool.freshness import require_fresh_view
from mktool.ingest import SourceFile, read_schema, validate
from mktool.project import Project
from mktool.publish import file_sha256
from mktool.rules import Policy, Scene
from mktool.schema import (
    EVENT_COLUMNS,
    FIRED,
    OUTCOME_COLUMNS,
    SCENE_EVENTS_COLUMNS,
    SCENE_EVENTS_TABLE,
    SCENE_EVENTS_TEMP,
    SCENE_FILES_COLUMNS,
    SCENE_FILES_KEY,
    SCENE_FILES_TABLE,
    SCENE_OUTCOMES,
    SCENE_OUTCOMES_TEMP,
    SCENE_TRIGGERS_TEMP,
    TEMPORARY_SUFFIXES,
    TRIGGER_COLUMNS,
    VIEW_TABLE,
)
from mktool.sqlquote import quote_identifier, quote_literal

__all__ = [
    "BATCH_ID_LENGTH",
    "Batch",
    "EVENT_COLUMNS",
    "EventFile",
    "LedgerEntry",
    "OUTCOME_COLUMNS",
    "OutcomeQueries",
    "SCENE_EVENTS_COLUMNS",
    "SCENE_FILES_COLUMNS",
    "TRIGGER_COLUMNS",
    "batch_id",
    "cycle_date_of",
    "ensure_scene_tables",
    "event_files",
    "events_query",
    "file_checksum",
    "is_event_file_name",
    "ledger_entry",
    "ledger_query",
    "ledger_watermark",
    "load_batch",
    "order_files",
    "outcome_queries",
    "run_outcomes",
    "view_month",
]

EVENTS_CONTRACT = "events"  # mktool/contract.py's table the event files follow
BATCH_ID_LENGTH = 12
US_PER_DAY = 86_400 * 1_000_000

# the decision's own work tables (temp)
_SCENES = "_s_scenes"  # scene_id, position, event_type, expires_us, once_per_us, policy, script, channels
_WAVES = "_s_waves"  # scene_id, wave_level, wave
_UNIQUE = "_s_unique"  # _s_events + duplicate
_PAIRS = "_s_pairs"  # non-duplicate event × listening scene: stale, known
_LEVELS = "_s_levels"  # fresh known pairs: wave_level (NULL: not matched)
_OPEN = "_s_open"  # matched pairs not decided yet (once_per rounds)
_DECIDED = "_s_decided"  # matched pairs decided: fired or once_per
_NEXT = "_s_next"  # per (msisdn, scene): the pair a round fires
_BLOCKERS = "_s_blockers"  # once_per pairs: the trigger named as blocking each
_WORK_TABLES = (_SCENES, _WAVES, _UNIQUE, _PAIRS, _LEVELS, _OPEN, _DECIDED, _NEXT, _BLOCKERS)


# -- files ------------------------------------------------------------------------------------------
def is_event_file_name(name: str) -> bool:
    """A folder's entry that is an event file: ``*.parquet`` (any case), not hidden, not temporary."""
    lower = name.lower()
    return not name.startswith(".") and not lower.endswith(TEMPORARY_SUFFIXES) and lower.endswith(".parquet")


def event_files(path: Path) -> list[Path]:
    """The event files of PATH: the file itself, or a folder's event files (not recursive), by name.

    A file named explicitly is taken whatever its name (the caller chose it); in a folder only
    complete-looking Parquet files count, so a writer's ``.part`` or a hidden file is left alone.
    """
    path = Path(path)
    if path.is_dir():
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"cannot read folder ({exc.strerror or exc})", file=str(path)) from None
        found = []
        for entry in entries:
            if not is_event_file_name(entry.name):
                continue
            try:
                if not stat.S_ISREG(os.stat(entry.path).st_mode):  # follows a link to a file
                    continue  # a folder named x.parquet, a device …
            except OSError:
                pass  # a link that leads nowhere: order_files refuses it by name
            found.append(Path(entry.path))
        return found
    if path.exists():
        return [path]
    if path.is_symlink():
        raise InputError("symbolic link leads nowhere", file=str(path))
    raise InputError("no such file or folder", file=str(path))


def file_checksum(path: Path) -> str:
    """sha256 of the file's bytes (hex): a file's identity in the ledger, whatever its name."""
    try:
        return file_sha256(Path(path))
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", file=str(path)) from None


def batch_id(checksum: str) -> str:
    """A batch's id: the first 12 hex digits of its file's checksum."""
    return checksum[:BATCH_ID_LENGTH]


# -- the ledger ---------------------------------------------------------------------------------------
def _create_sql(table: str, columns: Sequence[tuple[str, str]], key: str | None = None) -> str:
    cols = ", ".join(f"{quote_identifier(name)} {type_}" for name, type_ in columns)
    primary = f", PRIMARY KEY ({quote_identifier(key)})" if key else ""
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols}{primary})"


def ensure_scene_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create scene_files and scene_events when missing (the publish unit calls it before writing)."""
    con.execute(_create_sql(SCENE_FILES_TABLE, SCENE_FILES_COLUMNS, SCENE_FILES_KEY))
    con.execute(_create_sql(SCENE_EVENTS_TABLE, SCENE_EVENTS_COLUMNS))


@dataclass(frozen=True)
class LedgerEntry:
    """One processed file as the ledger recorded it."""

    checksum: str
    file_name: str
    path: str
    size: int
    rows: int
    first_event: dt.datetime | None
    last_event: dt.datetime | None
    batch: str
    cycle_date: dt.date | None
    processed_at: dt.datetime | None

    def skipped(self, name: str) -> str:
        """``skipped events-x.parquet: already processed as batch 3fa9c2d1e0b7 on 2026-10-05 (as events-y.parquet)``:
        the batch's cycle date; the earlier name only when it differs."""
        other = f" (as {self.file_name})" if self.file_name != name else ""
        day = self.cycle_date or (self.processed_at.date() if self.processed_at else None)
        on = f" on {day.isoformat()}" if day else ""
        return f"skipped {name}: already processed as batch {self.batch}{on}{other}"


def ledger_entry(con: duckdb.DuckDBPyConnection, checksum: str) -> LedgerEntry | None:
    """The ledger row of a file with this checksum (None: never processed, or no ledger yet)."""
    if not table_exists(con, SCENE_FILES_TABLE):
        return None
    names = [name for name, _ in SCENE_FILES_COLUMNS]
    row = con.execute(f"SELECT {', '.join(quote_identifier(n) for n in names)} FROM {SCENE_FILES_TABLE} "
                      "WHERE checksum = ?", [checksum]).fetchone()
    return None if row is None else LedgerEntry(**dict(zip(names, row)))


def ledger_watermark(con: duckdb.DuckDBPyConnection) -> dt.datetime | None:
    """max(last_event) over the ledger's batches: the clock the next batch is processed at."""
    if not table_exists(con, SCENE_FILES_TABLE):
        return None
    row = con.execute(f"SELECT max(last_event) FROM {SCENE_FILES_TABLE}").fetchone()
    return row[0] if row else None


# -- ordering ------------------------------------------------------------------------------------------
@dataclass
class EventFile:
    """One event file of an invocation: new (entry and error None), processed before (entry), or refused (error)."""

    path: Path
    checksum: str = ""
    batch_id: str = ""
    size: int = 0
    rows: int = 0
    first_event: dt.datetime | None = None
    last_event: dt.datetime | None = None
    entry: LedgerEntry | None = None
    error: MktoolError | None = None
    #: an earlier file of the same call with the same checksum (a copy): skipped once that one is recorded
    copy_of: Path | None = None
    #: the file as validated under the events contract (load_batch reads it without validating again)
    source: SourceFile | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_new(self) -> bool:
        """To be processed: not in the ledger, not refused, not a copy of an earlier file of the call."""
        return self.entry is None and self.error is None and self.copy_of is None


def _damaged(path: Path, exc: duckdb.Error) -> InputError:
    """A file DuckDB fails to read past its header (a corrupt page): bad input, named, not a bug."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(f"damaged Parquet file: DuckDB cannot read it in full ({reason})", file=str(path),
                      table=EVENTS_CONTRACT, hint="export the file again")


def _validated(con: duckdb.DuckDBPyConnection, path: Path) -> SourceFile:
    """The file read and validated as ingest validates events.parquet (same refusals, same messages)."""
    src = SourceFile(path=path, table=EVENTS_CONTRACT)
    try:
        read_schema(con, src, allow_empty=True)
        validate(con, src)
    except duckdb.Error as exc:
        if isinstance(exc, duckdb.InterruptException):
            raise
        raise _damaged(path, exc) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", file=str(path)) from None
    return src


def _event_select(src: SourceFile) -> str:
    """The events of a validated file as stored (trimmed, cast), the contract's columns only."""
    cols = ", ".join(f"{src.stored(name)} AS {name}" for name in ("msisdn", "event_time", "event_type", "value"))
    return f"SELECT {cols} FROM {src.scan}"


def _describe(con: duckdb.DuckDBPyConnection, event_file: EventFile) -> None:
    """Fill a new file's rows and first/last event (refusal into ``error``)."""
    try:
        src = _validated(con, event_file.path)
        row = con.execute(f"SELECT count(*), min(event_time), max(event_time) FROM ({_event_select(src)}) AS e"
                          ).fetchone()
    except MktoolError as exc:
        event_file.error = exc
        return
    except duckdb.Error as exc:
        if isinstance(exc, duckdb.InterruptException):
            raise
        event_file.error = _damaged(event_file.path, exc)
        return
    assert row is not None
    event_file.source = src
    event_file.rows, event_file.first_event, event_file.last_event = int(row[0]), row[1], row[2]


def _order_key(f: EventFile) -> tuple[Any, ...]:
    never = dt.datetime.max
    return (f.first_event is None, f.first_event or never, f.last_event or never, f.path.name, str(f.path))


def order_files(con: duckdb.DuckDBPyConnection, paths: Iterable[Path]) -> list[EventFile]:
    """Every file with its checksum and ledger entry; the new ones read under the contract.

    Sorted by (first_event, last_event, name), files without events (empty, processed before
    with none, or refused) last by name: the order new files are processed in. A new file with
    the checksum of one before it in that order is marked ``copy_of`` that one (not new): once
    the first is processed, ``ledger_entry`` gives the message to skip the copy with.
    """
    out: list[EventFile] = []
    for path in paths:
        f = EventFile(path=Path(path))
        try:
            f.size = f.path.stat().st_size
            f.checksum = file_checksum(f.path)
        except MktoolError as exc:
            f.error = exc
        except OSError as exc:
            f.error = InputError(f"cannot read ({exc.strerror or exc})", file=str(path))
        if f.error is None:
            f.batch_id = batch_id(f.checksum)
            f.entry = ledger_entry(con, f.checksum)
            if f.entry is not None:
                f.rows, f.first_event, f.last_event = f.entry.rows, f.entry.first_event, f.entry.last_event
            else:
                _describe(con, f)
        out.append(f)
    out.sort(key=_order_key)
    first: dict[str, Path] = {}
    for f in out:
        if f.entry is None and f.error is None:
            f.copy_of = first.get(f.checksum)
            first.setdefault(f.checksum, f.path)
    return out


# -- the batch ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """One loaded and decided batch (its temp tables _s_events, _s_outcomes, _s_triggers are left in place)."""

    file: Path
    checksum: str
    batch_id: str
    size: int
    rows: int
    first_event: dt.datetime | None
    last_event: dt.datetime | None
    cycle_date: dt.date
    month: str  # the cycle date's YYYY-MM
    view_month: str  # the customer view month the scenes were evaluated on
    watermark: dt.datetime | None  # max(last_event) of the earlier batches
    counts: Mapping[str, int]  # outcome → _s_outcomes rows (every outcome of SCENE_OUTCOMES, 0 when none)

    @property
    def fired(self) -> int:
        return self.counts.get(FIRED, 0)


def ledger_query(batch: Batch, processed_at: dt.datetime) -> Query:
    """The batch's ledger row (scene_files), for the publish unit that records the batch."""
    names = [name for name, _ in SCENE_FILES_COLUMNS]
    values = {"checksum": batch.checksum, "file_name": batch.file.name, "path": str(batch.file), "size": batch.size,
              "rows": batch.rows, "first_event": batch.first_event, "last_event": batch.last_event,
              "batch": batch.batch_id, "cycle_date": batch.cycle_date, "processed_at": processed_at}
    cols = ", ".join(quote_identifier(n) for n in names)
    typed = ", ".join(f"CAST(${n} AS {type_})" for n, type_ in SCENE_FILES_COLUMNS)
    return Query("scene:ledger", f"INSERT INTO {SCENE_FILES_TABLE} ({cols}) VALUES ({typed})", values)


def view_month(con: duckdb.DuckDBPyConnection) -> str:
    """The latest scored month (max(month) of customer_view); refused when none was scored."""
    row = con.execute(f"SELECT max(month) FROM {VIEW_TABLE}").fetchone() if table_exists(con, VIEW_TABLE) else None
    if row is None or row[0] is None:
        raise StateError("no customer view to evaluate the scenes on", table=VIEW_TABLE,
                         hint="run `mktool score` (or `mktool run`) first")
    return str(row[0])


def cycle_date_of(last_event: dt.datetime | None, watermark: dt.datetime | None,
                  today: dt.date | None = None) -> dt.date:
    """A batch's cycle date: date(last_event); a file without events: the watermark's date, else today."""
    if last_event is not None:
        return last_event.date()
    if watermark is not None:
        return watermark.date()
    return today or dt.date.today()


def events_query(source: str) -> Query:
    """``_s_events`` from a relation (SQL) with msisdn, event_time, event_type, value, in the batch's order."""
    sql = (f"CREATE OR REPLACE TEMP TABLE {SCENE_EVENTS_TEMP} AS\n"
           "SELECT CAST(row_number() OVER (ORDER BY event_time, event_type, msisdn, value NULLS LAST)\n"
           "            AS BIGINT) AS seq, msisdn, event_time, event_type, value\n"
           f"FROM ({source}) AS e")
    return Query("scene:events", sql)


def _earlier_relation(con: duckdb.DuckDBPyConnection, first: dt.datetime | None, last: dt.datetime | None,
                      scenes: Sequence[Scene]) -> str:
    """The rows of scene_events that can matter to a batch with events from ``first`` to ``last``: a
    duplicate has an event_time in that range, a blocking trigger is less than once_per days from
    it. The literal range lets DuckDB skip the row groups of older batches (scene_events grows by
    every batch; it is appended in time order). The same columns, empty, before the first batch."""
    if not table_exists(con, SCENE_EVENTS_TABLE) or first is None or last is None:
        cols = ", ".join(f"CAST(NULL AS {type_}) AS {quote_identifier(name)}" for name, type_ in SCENE_EVENTS_COLUMNS)
        return f"(SELECT {cols} WHERE false)"
    reach = dt.timedelta(days=max((s.once_per_days for s in scenes), default=0))
    return (f"(SELECT * FROM {SCENE_EVENTS_TABLE} WHERE event_time BETWEEN {quote_literal(first - reach)} "
            f"AND {quote_literal(last + reach)})")


def load_batch(con: duckdb.DuckDBPyConnection, project: Project, event_file: EventFile) -> Batch:
    """Load one new file into _s_events and decide its events into _s_outcomes and _s_triggers.

    Refuses (MktoolError) a file that breaks the events contract, a missing customer view, and a
    view older than the loads it reads (as export does: a batch never decides on a stale view).
    Only temp tables are written.
    """
    if event_file.error is not None:
        raise event_file.error
    month = view_month(con)
    require_fresh_view(con, month)
    if event_file.source is None or not event_file.checksum:
        event_file.checksum = event_file.checksum or file_checksum(event_file.path)
        event_file.batch_id = batch_id(event_file.checksum)
        event_file.size = event_file.size or event_file.path.stat().st_size
        _describe(con, event_file)
        if event_file.error is not None:
            raise event_file.error
    assert event_file.source is not None
    q = events_query(_event_select(event_file.source))
    try:
        con.execute(q.sql)
    except duckdb.Error as exc:
        if isinstance(exc, duckdb.InterruptException):
            raise
        raise _damaged(event_file.path, exc) from None
    watermark = ledger_watermark(con)
    queries = outcome_queries(project.scenes, project.policies, view_month=month, watermark=watermark,
                              batch=event_file.batch_id,
                              earlier=_earlier_relation(con, event_file.first_event, event_file.last_event,
                                                        project.scenes))
    counts = run_outcomes(con, queries)
    cycle_date = cycle_date_of(event_file.last_event, watermark)
    return Batch(file=event_file.path, checksum=event_file.checksum, batch_id=event_file.batch_id,
                 size=event_file.size, rows=event_file.rows, first_event=event_file.first_event,
                 last_event=event_file.last_event, cycle_date=cycle_date, month=cycle_date.strftime("%Y-%m"),
                 view_month=month, watermark=watermark, counts=counts)


# -- the decision (queries are data) ------------------------------------------------------------------------
@dataclass(frozen=True)
class OutcomeQueries:
    """The statements that decide a batch, run by :func:`run_outcomes`:

    ``setup`` the scene catalogue, duplicates, the (event × listening scene) pairs with stale and
    known, each scene's ``when`` and waves (one INSERT per scene), and the matched
    pairs an earlier batch's trigger blocks (decided once_per at once: a late event cannot sneak
    in before an issued trigger);
    ``round`` one once_per round, the same statements every round: per (msisdn, scene) the first
    undecided pair in seq order that no trigger so far blocks fires, and the undecided pairs
    before it are once_per; repeated until a round fires nothing (``pending`` counts its fires);
    ``finish`` the pairs left (all blocked) once_per, the blocker named for each once_per pair (of
    every earlier trigger that blocks it, the latest by event_time), then _s_outcomes and _s_triggers.
    """

    setup: tuple[Query, ...]
    round: tuple[Query, ...]
    pending: Query
    finish: tuple[Query, ...]
    counts: Query
    #: per scene's query (``scene:levels:<id>``): each condition's location and a query of it alone,
    #: run only when the scene's query fails, to name the condition in the error
    probes: Mapping[str, tuple[tuple[str, Query], ...]] = field(default_factory=dict)


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _catalogue_sql(scenes: Sequence[Scene], policies: Mapping[str, Policy]) -> tuple[Query, ...]:
    """_s_scenes and _s_waves as literal rows (every value through sqlquote.quote_literal): one
    statement per Query, as every engine executes them (Spark runs one statement per call)."""
    scene_cols = ("scene_id VARCHAR, position INTEGER, event_type VARCHAR, expires_us BIGINT, once_per_us BIGINT, "
                  "policy_id VARCHAR, policy_name VARCHAR, script VARCHAR, channels VARCHAR[]")
    wave_cols = "scene_id VARCHAR, wave_level INTEGER, wave VARCHAR"
    tables = (Query("scene:catalogue", f"CREATE OR REPLACE TEMP TABLE {_SCENES} ({scene_cols})"),
              Query("scene:waves", f"CREATE OR REPLACE TEMP TABLE {_WAVES} ({wave_cols})"))
    if not scenes:
        return tables
    rows = []
    for s in scenes:
        policy = policies.get(s.policy)
        name = policy.name if policy is not None else None
        channels = "CAST([" + ", ".join(quote_literal(c) for c in s.channels) + "] AS VARCHAR[])"
        rows.append("(" + ", ".join([
            quote_literal(s.id), str(int(s.position)), quote_literal(s.event_type), str(_micros(s.expires_after)),
            str(int(s.once_per_days) * US_PER_DAY), quote_literal(s.policy), quote_literal(name),
            quote_literal(s.script if s.script is not None else name), channels]) + ")")
    names = [c.split()[0] for c in scene_cols.split(", ")]
    inserts = [Query("scene:catalogue_rows", f"INSERT INTO {_SCENES} ({', '.join(names)}) VALUES\n  "
                     + ",\n  ".join(rows))]
    waves = [f"({quote_literal(s.id)}, {int(w.level)}, {quote_literal(w.id)})" for s in scenes for w in s.waves]
    if waves:
        inserts.append(Query("scene:wave_rows", f"INSERT INTO {_WAVES} VALUES\n  " + ",\n  ".join(waves)))
    return (*tables, *inserts)


def _scene_relation(scene: Scene, view: str) -> str:
    """One scene's fresh pairs of known customers as the relation its conditions are evaluated over:
    every column of the view and the event's value, event_time and event_type, unqualified."""
    return (f"SELECT v.*, p.value, p.event_time, p.event_type, p.seq AS _s_seq FROM {_PAIRS} p "
            f"JOIN {view} v ON v.msisdn = p.msisdn AND v.month = $view_month "
            f"WHERE p.scene_id = {quote_literal(scene.id)} AND NOT p.stale AND p.known")


def _level_sql(scene: Scene, view: str) -> str:
    """The level of the deepest wave whose ``when`` is true for each of the scene's pairs (NULL: the
    scene's ``when`` or no wave is true; NULL counts as false)."""
    waves = sorted(scene.waves, key=lambda w: w.level, reverse=True)
    level = "CASE " + " ".join(f"WHEN ({w.when}) THEN {int(w.level)}" for w in waves) + " END"
    if scene.when is not None:
        level = f"CASE WHEN ({scene.when}) THEN {level} END"
    return (f"INSERT INTO {_LEVELS} SELECT _s_seq, {quote_literal(scene.id)}, CAST({level} AS INTEGER) "
            f"FROM ({_scene_relation(scene, view)}) AS ev")


def _probes(scene: Scene, view: str, params: dict[str, Any]) -> tuple[tuple[str, Query], ...]:
    """(location, query) of each of a scene's conditions alone: the one that fails is named."""
    relation = _scene_relation(scene, view)
    conditions = ([(scene.at("when"), scene.when)] if scene.when is not None else []) + [
        (scene.at(f"waves[{w.level - 1}].when"), w.when) for w in scene.waves]
    return tuple((where, Query(f"scene:probe:{scene.id}", f"SELECT count(*) FROM ({relation}) AS ev WHERE ({cond})",
                               params)) for where, cond in conditions)


def _blocks(trigger: str, pair: str) -> str:
    """SQL true when the trigger ``trigger`` blocks the matched pair ``pair`` of the same customer and
    scene: a wave at least as deep, less than once_per days apart (exact microseconds)."""
    return (f"{trigger}.msisdn = {pair}.msisdn AND {trigger}.scene_id = {pair}.scene_id "
            f"AND {trigger}.wave_level >= {pair}.wave_level "
            f"AND abs({microseconds_between(f'{trigger}.event_time', f'{pair}.event_time')}) < {pair}.once_per_us")


def outcome_queries(scenes: Sequence[Scene], policies: Mapping[str, Policy], *, view_month: str,
                    watermark: dt.datetime | None, batch: str | None = None,
                    earlier: str = SCENE_EVENTS_TABLE, view: str = VIEW_TABLE) -> OutcomeQueries:
    """The statements deciding the events of ``_s_events`` (see :class:`OutcomeQueries`).

    ``view``: a relation with the customer view's columns (its ``view_month`` rows are read);
    ``earlier``: a relation with scene_events' columns batch, msisdn, event_time, event_type,
    scene_id, wave_level, outcome (earlier batches: their keys make duplicates, their fired rows
    block by once_per); ``watermark``: the clock the batch is processed at (None: nothing is stale);
    ``batch``: this batch's id, the blocked_by_batch of a pair blocked by a trigger of the batch itself.
    ``scenes``' ``when`` texts are embedded as validated by the scene files' loader.
    """
    params = {"view_month": view_month}
    wm = quote_literal(watermark) if watermark is not None else "CAST(NULL AS TIMESTAMP)"
    ledger = f"(SELECT batch, msisdn, scene_id, wave_level, event_time FROM {earlier} WHERE outcome = '{FIRED}')"
    setup = (
        *_catalogue_sql(scenes, policies),
        Query("scene:unique", f"""
CREATE OR REPLACE TEMP TABLE {_UNIQUE} AS
SELECT e.seq, e.msisdn, e.event_time, e.event_type, e.value,
       row_number() OVER (PARTITION BY e.msisdn, e.event_type, e.event_time ORDER BY e.seq) > 1
       OR EXISTS (SELECT 1 FROM {earlier} p WHERE p.msisdn = e.msisdn AND p.event_type = e.event_type
                  AND p.event_time = e.event_time) AS duplicate
FROM {SCENE_EVENTS_TEMP} e"""),
        Query("scene:pairs", f"""
CREATE OR REPLACE TEMP TABLE {_PAIRS} AS
SELECT u.seq, u.msisdn, u.event_time, u.event_type, u.value, s.scene_id, s.position, s.once_per_us,
       coalesce({microseconds_between('u.event_time', wm)} > s.expires_us, false) AS stale,
       EXISTS (SELECT 1 FROM {view} v WHERE v.month = $view_month AND v.msisdn = u.msisdn) AS known
FROM {_UNIQUE} u JOIN {_SCENES} s ON s.event_type = u.event_type
WHERE NOT u.duplicate""", params),
        Query("scene:levels", f"CREATE OR REPLACE TEMP TABLE {_LEVELS} (seq BIGINT, scene_id VARCHAR, "
                              "wave_level INTEGER)"),
        *(Query(f"scene:levels:{s.id}", _level_sql(s, view), params) for s in scenes),
        Query("scene:open", f"""
CREATE OR REPLACE TEMP TABLE {_OPEN} AS
SELECT p.seq, p.msisdn, p.scene_id, p.event_time, l.wave_level, p.once_per_us
FROM {_PAIRS} p JOIN {_LEVELS} l ON l.seq = p.seq AND l.scene_id = p.scene_id
WHERE l.wave_level IS NOT NULL"""),
        # a trigger of an earlier batch blocks whatever its time: a late event cannot sneak in before it
        Query("scene:ledger_blocks", f"""
CREATE OR REPLACE TEMP TABLE {_DECIDED} AS
SELECT o.seq, o.msisdn, o.scene_id, o.event_time, o.wave_level, o.once_per_us, 'once_per' AS outcome
FROM {_OPEN} o WHERE EXISTS (SELECT 1 FROM {ledger} t WHERE {_blocks("t", "o")})"""),
        Query("scene:undecided", f"DELETE FROM {_OPEN} o WHERE EXISTS (SELECT 1 FROM {_DECIDED} d "
                                 "WHERE d.seq = o.seq AND d.scene_id = o.scene_id)"),
    )
    fired_before = f"t.outcome = '{FIRED}' AND t.seq < o.seq AND {_blocks('t', 'o')}"
    round_ = (
        Query("scene:next", f"""
CREATE OR REPLACE TEMP TABLE {_NEXT} AS
SELECT o.msisdn, o.scene_id, min(o.seq) AS seq
FROM {_OPEN} o WHERE NOT EXISTS (SELECT 1 FROM {_DECIDED} t WHERE {fired_before})
GROUP BY o.msisdn, o.scene_id"""),
        # the undecided pairs before the one that fires are all blocked by a trigger so far
        Query("scene:passed_over", f"""
INSERT INTO {_DECIDED}
SELECT o.seq, o.msisdn, o.scene_id, o.event_time, o.wave_level, o.once_per_us, 'once_per'
FROM {_OPEN} o JOIN {_NEXT} n ON n.msisdn = o.msisdn AND n.scene_id = o.scene_id AND o.seq < n.seq"""),
        Query("scene:fire", f"""
INSERT INTO {_DECIDED}
SELECT o.seq, o.msisdn, o.scene_id, o.event_time, o.wave_level, o.once_per_us, '{FIRED}'
FROM {_OPEN} o JOIN {_NEXT} n ON n.seq = o.seq AND n.scene_id = o.scene_id"""),
        Query("scene:close", f"DELETE FROM {_OPEN} o WHERE EXISTS (SELECT 1 FROM {_DECIDED} d "
                             "WHERE d.seq = o.seq AND d.scene_id = o.scene_id)"),
    )
    batch_literal = f"CAST({quote_literal(batch)} AS VARCHAR)"
    finish = (
        # every pair no round fired is blocked by a trigger fired before it
        Query("scene:rest", f"""
INSERT INTO {_DECIDED}
SELECT o.seq, o.msisdn, o.scene_id, o.event_time, o.wave_level, o.once_per_us, 'once_per' FROM {_OPEN} o"""),
        # the trigger named as the blocker: of all that block the pair, the latest by event_time (this
        # batch's before an earlier batch's at the same time)
        Query("scene:blockers", f"""
CREATE OR REPLACE TEMP TABLE {_BLOCKERS} AS
WITH triggers AS (
    SELECT batch, msisdn, scene_id, wave_level, event_time, 0 AS own, 0 AS seq, '{FIRED}' AS outcome FROM {ledger} l
    UNION ALL
    SELECT {batch_literal}, msisdn, scene_id, wave_level, event_time, 1, seq, outcome FROM {_DECIDED}
    WHERE outcome = '{FIRED}'
)
SELECT o.seq, o.scene_id, t.event_time AS blocked_by_time, t.batch AS blocked_by_batch
FROM {_DECIDED} o JOIN triggers t ON (t.own = 0 OR t.seq < o.seq) AND {_blocks("t", "o")}
WHERE o.outcome = 'once_per'
QUALIFY row_number() OVER (PARTITION BY o.seq, o.scene_id ORDER BY t.event_time DESC, t.own DESC, t.seq DESC,
                           t.batch DESC) = 1"""),
        Query("scene:outcomes", f"""
CREATE OR REPLACE TEMP TABLE {SCENE_OUTCOMES_TEMP} AS
SELECT seq, msisdn, event_time, event_type, value, scene_id, wave, wave_level, outcome,
       blocked_by_time, blocked_by_batch
FROM (
    SELECT u.seq, u.msisdn, u.event_time, u.event_type, u.value, CAST(NULL AS VARCHAR) AS scene_id,
           0 AS position, CAST(NULL AS VARCHAR) AS wave, CAST(NULL AS INTEGER) AS wave_level,
           CASE WHEN u.duplicate THEN 'duplicate' ELSE 'no_scene' END AS outcome,
           CAST(NULL AS TIMESTAMP) AS blocked_by_time, CAST(NULL AS VARCHAR) AS blocked_by_batch
    FROM {_UNIQUE} u
    WHERE u.duplicate OR NOT EXISTS (SELECT 1 FROM {_SCENES} s WHERE s.event_type = u.event_type)
    UNION ALL
    SELECT p.seq, p.msisdn, p.event_time, p.event_type, p.value, p.scene_id, p.position, w.wave, d.wave_level,
           CASE WHEN p.stale THEN 'stale' WHEN NOT p.known THEN 'unknown_customer'
                WHEN l.wave_level IS NULL THEN 'not_matched' ELSE d.outcome END,
           b.blocked_by_time, b.blocked_by_batch
    FROM {_PAIRS} p
    LEFT JOIN {_LEVELS} l ON l.seq = p.seq AND l.scene_id = p.scene_id
    LEFT JOIN {_DECIDED} d ON d.seq = p.seq AND d.scene_id = p.scene_id
    LEFT JOIN {_BLOCKERS} b ON b.seq = p.seq AND b.scene_id = p.scene_id
    LEFT JOIN {_WAVES} w ON w.scene_id = d.scene_id AND w.wave_level = d.wave_level
) AS o"""),
        Query("scene:triggers", f"""
CREATE OR REPLACE TEMP TABLE {SCENE_TRIGGERS_TEMP} AS
SELECT o.seq, o.msisdn, CAST(o.msisdn AS BIGINT) AS cust_id, o.scene_id, s.position, o.wave, o.wave_level,
       s.policy_id, s.policy_name, s.script, s.channels, o.event_time, o.event_type, o.value,
       CAST(row_number() OVER (PARTITION BY o.msisdn ORDER BY s.position, o.wave_level DESC, o.event_time, o.seq)
            AS INTEGER) AS rank
FROM {SCENE_OUTCOMES_TEMP} o JOIN {_SCENES} s ON s.scene_id = o.scene_id
WHERE o.outcome = '{FIRED}'"""),
    )
    return OutcomeQueries(
        setup=setup, round=round_, pending=Query("scene:pending", f"SELECT count(*) FROM {_NEXT}"),
        finish=finish + tuple(Query(f"scene:drop:{t}", f"DROP TABLE IF EXISTS {t}") for t in _WORK_TABLES),
        counts=Query("scene:counts", f"SELECT outcome, count(*) FROM {SCENE_OUTCOMES_TEMP} GROUP BY outcome"),
        probes={f"scene:levels:{s.id}": _probes(s, view, params) for s in scenes},
    )


def _run(con: duckdb.DuckDBPyConnection, q: Query) -> duckdb.DuckDBPyConnection:
    return con.execute(q.sql, q.params) if q.params else con.execute(q.sql)


def _condition_error(con: duckdb.DuckDBPyConnection, probes: Sequence[tuple[str, Query]],
                     exc: duckdb.Error) -> RuleError:
    """A scene's query failed in DuckDB (a cast of a value that is not a number …): the error names the
    condition that fails on its own (else the scene's first), as a rule's error does."""
    where = probes[0][0] if probes else "scene"
    for at, probe in probes:
        try:
            _run(con, probe).fetchall()
        except duckdb.Error:
            where = at
            break
    lines = str(exc).strip().splitlines()
    return RuleError(f"{where}: {engine_said(lines[0] if lines else type(exc).__name__)}")


def run_outcomes(con: duckdb.DuckDBPyConnection, queries: OutcomeQueries) -> dict[str, int]:
    """Run the decision over ``_s_events``; returns the _s_outcomes rows per outcome (all outcomes, 0 when none).

    The Python loop runs over once_per rounds (a round fires at most one trigger per customer
    and scene), never over events.
    """
    for q in queries.setup:
        try:
            _run(con, q)
        except duckdb.Error as exc:
            if q.name not in queries.probes or isinstance(exc, duckdb.InterruptException):
                raise
            raise _condition_error(con, queries.probes[q.name], exc) from None
    while True:
        for q in queries.round:
            _run(con, q)
        row = _run(con, queries.pending).fetchone()
        if not row or not row[0]:
            break
    for q in queries.finish:
        _run(con, q)
    counts = {outcome: 0 for outcome in SCENE_OUTCOMES}
    counts.update({str(k): int(v) for k, v in _run(con, queries.counts).fetchall()})
    return counts
