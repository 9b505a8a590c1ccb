"""`mktool scene --watch DIR`: the near-real-time loop over a folder of event files (issue 14).

Every interval the folder is listed; the files that are complete (definitions §6) and not yet
handled are given to the scene runner (``scenedelivery.run_scene_files``) in one go, which
processes them one committed batch at a time. Why each rule:

- Complete: a name that is not hidden or temporary (``.x``, ``x.tmp``/``.part``/``.partial``:
  written-then-renamed files arrive whole), and either an mtime at least one interval old or the
  same size and mtime as at the previous poll (a copy that is still growing changes one of them).
- The database is opened only while files are processed and closed after, so the monthly
  ``mktool run`` can take its lock between polls. A locked database is "busy, retrying at the
  next poll", not a crash: the files stay new and are taken at a later poll.
- A refused file (unreadable, breaks the events contract) is named once and skipped until its
  size or mtime changes (a corrected file dropped under the same name is taken again); the loop
  goes on with the other files.
- A file already handled is not given again while it is unchanged; one that changed is (its new
  bytes have a new checksum, or the ledger skips it and says so).
- SIGTERM (systemd's stop) asks the loop to stop: the batch running finishes, the runner checks
  ``stop()`` before the next one, and the loop exits 0. Ctrl-C interrupts: the batch running is
  abandoned inside its publish unit (nothing of it is recorded) and the command exits 130.

The runner is a parameter (the CLI passes ``run_scene_files``): this module is the loop only, and
its tests drive it with a runner of their own.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

import duckdb

from mktool.console import Reporter
from mktool.database import Database
from mktool.errors import Interrupted, LockedError, MktoolError
from mktool.project import Project
from mktool.scene import LedgerEntry, is_event_file_name
from mktool.scenedelivery import BatchResult, SceneRun
from mktool.schema import SCENE_FILES_TABLE

#: How often a sleeping loop looks at its stop flag (a SIGTERM is answered within this).
TICK_SECONDS = 0.05


@dataclass(frozen=True)
class Seen:
    """A file as one listing saw it: what "unchanged" compares."""

    size: int
    mtime_ns: int


def list_event_files(folder: Path) -> dict[Path, Seen]:
    """The folder's event files (not recursive) with their size and mtime, by name."""
    found: dict[Path, Seen] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_event_file_name(entry.name):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except FileNotFoundError:  # renamed or removed while listed
                continue
            found[folder / entry.name] = Seen(st.st_size, st.st_mtime_ns)
    return dict(sorted(found.items()))


def complete_files(listing: dict[Path, Seen], previous: dict[Path, Seen] | None, *, interval: float,
                   now: float) -> list[Path]:
    """The files of ``listing`` that are complete: mtime at least ``interval`` old, or the same
    size and mtime as in the ``previous`` listing (None: the first poll, or ``--once``)."""
    out = []
    for path, seen in listing.items():
        old_enough = now - seen.mtime_ns / 1e9 >= interval
        stable = previous is not None and previous.get(path) == seen
        if old_enough or stable:
            out.append(path)
    return out


#: Opens the database for one poll's processing (the CLI's ``run.db(write=True, must_exist=True)``).
OpenDatabase = Callable[[], AbstractContextManager[Database]]


class SceneRunner(Protocol):
    def __call__(self, db: Database, project: Project, paths: list[Path], *, out_dir: Path, reporter: Reporter,
                 stop: Callable[[], bool]) -> SceneRun: ...


def file_of(item: BatchResult | tuple[Path, LedgerEntry | MktoolError]) -> Path:
    """The file a runner's result item names: a BatchResult's ``file``, or the first of a (file, …) pair."""
    return Path(item[0] if isinstance(item, tuple) else item.file)


@dataclass
class StopFlag:
    """Set by SIGTERM's handler; the runner's ``stop()`` and the loop's sleep read it."""

    reason: str | None = None

    def __call__(self) -> bool:
        return self.reason is not None


@contextlib.contextmanager
def sigterm_stops(flag: StopFlag) -> Iterator[None]:
    """While the loop runs, SIGTERM sets ``flag`` instead of killing the process mid-batch."""
    if threading.current_thread() is not threading.main_thread():  # an embedding caller: no signals here
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        flag.reason = "SIGTERM"

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Poll:
    """One poll: the files given to the runner and what became of them."""

    taken: list[Path] = field(default_factory=list)
    batches: list[BatchResult] = field(default_factory=list)
    skipped: list[tuple[Path, LedgerEntry]] = field(default_factory=list)
    refused: list[tuple[Path, MktoolError]] = field(default_factory=list)
    busy: bool = False  # the database was locked: nothing was taken, the files stay new


@dataclass
class WatchResult:
    """What the loop did, for the command's last line and exit code."""

    polls: int = 0
    batches: int = 0
    skipped: int = 0
    refused: list[Path] = field(default_factory=list)
    stopped_by: str | None = None  # "SIGTERM", or None (--once)


class Watcher:
    """The state between polls: the previous listing, the files handled and the files refused."""

    def __init__(self, folder: Path, *, interval: float, project: Project, out_dir: Path,
                 open_db: OpenDatabase, runner: SceneRunner, reporter: Reporter,
                 stop: Callable[[], bool] = lambda: False, once: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        if not math.isfinite(interval) or interval <= 0:
            raise MktoolError(f"the watch interval must be a number of seconds above 0, got {interval!r}")
        self.folder = folder
        self.interval = interval
        self.project = project
        self.out_dir = out_dir
        self.open_db = open_db
        self.runner = runner
        self.reporter = reporter
        self.stop = stop
        self.once = once
        self.clock = clock
        self.previous: dict[Path, Seen] | None = None
        self.handled: dict[Path, Seen] = {}  # processed or skipped by the ledger, as they were then
        self.refused: dict[Path, Seen] = {}  # named once; skipped until their size or mtime changes
        self.busy = False  # the last poll found the database locked

    def new_files(self, listing: dict[Path, Seen]) -> list[Path]:
        """The complete files that were neither handled nor refused as they are now."""
        complete = complete_files(listing, None if self.once else self.previous, interval=self.interval,
                                  now=self.clock())
        return [p for p in complete if self.handled.get(p) != listing[p] and self.refused.get(p) != listing[p]]

    def poll(self) -> Poll:
        """List the folder once and give the complete new files to the runner (the database open only for that)."""
        listing = list_event_files(self.folder)
        for gone in set(self.handled) - set(listing):
            del self.handled[gone]
        for gone in set(self.refused) - set(listing):
            del self.refused[gone]
        taken = self.new_files(listing)
        self.previous = listing
        result = Poll(taken=taken)
        if not taken:
            return result
        try:
            with self.open_db() as db:
                if self.busy:
                    self.reporter.info("database free again: processing the waiting files")
                    self.busy = False
                run = self.runner(db, self.project, taken, out_dir=self.out_dir, reporter=self.reporter,
                                  stop=self.stop)
                report_run(run, self.reporter, db)
        except LockedError as exc:
            if self.once:
                raise
            if not self.busy:
                self.reporter.warn(f"database busy ({exc.message}): retrying at the next poll")
            else:
                self.reporter.debug("database still busy: retrying at the next poll")
            self.busy = True
            result.busy = True
            return result
        result.batches, result.skipped, result.refused = list(run.batches), list(run.skipped), list(run.refused)
        for path in [b.file for b in result.batches] + [p for p, _ in result.skipped]:
            if path in listing:
                self.handled[path] = listing[path]
        for item in result.refused:
            path = file_of(item)
            if path in listing:
                self.refused[path] = listing[path]
                if not self.once:
                    self.reporter.warn(f"{path.name} is skipped until it changes (size or modification time)")
        return result


def batch_line(batch: BatchResult, events: int | None) -> str:
    """One line per delivered batch: file → batch id, events, fired, listed (and held out) per channel."""
    listed = ", ".join(f"{name} {n:,}" for name, n in batch.lists.items()) or "no channel"
    held = sum(batch.held_out.values())
    return (f"{batch.file.name} → batch {batch.batch_id} ({batch.cycle_date}): "
            f"{'?' if events is None else f'{events:,}'} event{'' if events == 1 else 's'}, "
            f"{batch.outcomes.get('fired', 0):,} fired; "
            f"listed {listed}" + (f"; {held:,} held out" if held else ""))


def batch_events(db: Database | None, batch_ids: list[str]) -> dict[str, int]:
    """The events of each batch, as the ledger recorded them (BatchResult counts outcome rows, not events)."""
    if db is None or not batch_ids or not db.table_exists(SCENE_FILES_TABLE):
        return {}
    rows = db.c.execute(f"SELECT batch, rows FROM {SCENE_FILES_TABLE} WHERE list_contains($ids, batch)",
                        {"ids": batch_ids}).fetchall()
    return {str(b): int(n) for b, n in rows}


def report_run(run: SceneRun, reporter: Reporter, db: Database | None = None) -> None:
    """What the runner did, on stderr: a line per batch, per file the ledger skipped, per file refused."""
    events = batch_events(db, [b.batch_id for b in run.batches])
    for batch in run.batches:
        reporter.info(batch_line(batch, events.get(batch.batch_id)))
    for path, entry in run.skipped:
        reporter.info(entry.skipped(path.name))
    for _, exc in run.refused:
        reporter.error(exc.render())


def sleep_until(deadline: float, stop: Callable[[], bool], *, clock: Callable[[], float] = time.monotonic) -> None:
    """Sleep to ``deadline`` in short ticks, returning early once ``stop()`` holds (SIGTERM)."""
    while not stop():
        left = deadline - clock()
        if left <= 0:
            return
        time.sleep(min(TICK_SECONDS, left))


def watch(folder: Path, *, interval: float, project: Project, out_dir: Path, open_db: OpenDatabase,
          runner: SceneRunner, reporter: Reporter, once: bool = False,
          max_polls: int | None = None) -> WatchResult:
    """Poll ``folder`` every ``interval`` seconds until SIGTERM (or once), processing its new complete files.

    Ctrl-C raises :class:`~mktool.errors.Interrupted` with what was delivered before it (the CLI
    exits 130); ``max_polls`` bounds the loop for tests.
    """
    if not folder.exists():
        raise MktoolError("the folder to watch does not exist", file=str(folder),
                          hint="create it, or point --watch at the folder the event files are dropped into")
    if not folder.is_dir():
        raise MktoolError("is a file, not a folder to watch", file=str(folder),
                          hint="--watch takes the folder; --events takes one file")
    flag = StopFlag()
    watcher = Watcher(folder, interval=interval, project=project, out_dir=out_dir, open_db=open_db, runner=runner,
                      reporter=reporter, stop=flag, once=once)
    result = WatchResult()
    try:
        with sigterm_stops(flag):
            if not once:  # inside: a Ctrl-C right after this line is the loop's, and says so
                reporter.info(f"watching {folder} every {interval:g} s (SIGTERM or Ctrl-C stops)")
            while not flag():
                started = time.monotonic()
                poll = watcher.poll()
                result.polls += 1
                result.batches += len(poll.batches)
                result.skipped += len(poll.skipped)
                result.refused += [file_of(item) for item in poll.refused]
                if once or (max_polls is not None and result.polls >= max_polls):
                    break
                sleep_until(started + interval, flag)
    except (KeyboardInterrupt, duckdb.InterruptException) as exc:
        note = getattr(exc, "note", None) or "Interrupted; the batch running (if any) left nothing behind"
        raise Interrupted(f"{note}; the batches delivered before it stay delivered (their folders and ledger rows); "
                          "the watch loop stopped") from None
    result.stopped_by = flag.reason
    if flag.reason:
        reporter.info(f"{flag.reason}: stopped watching {folder} after {result.polls} poll(s), "
                      f"{result.batches} batch(es) delivered")
    return result
