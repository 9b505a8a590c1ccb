"""`mktool scene --watch`'s loop (mktool/scenewatch.py) with a runner of the test's own.

The runner here reads each file's bytes: ``BAD…`` is refused, bytes seen before are skipped as the
ledger would (by checksum), anything else is a batch. So these tests check the loop's own rules —
which files are complete, which are given again, what a refused file or a locked database does,
how SIGTERM and Ctrl-C end it — independently of the scene step; tests/test_scene_cli.py runs the
real runner end to end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mktool.config import Settings
from mktool.console import Reporter
from mktool.database import Database, RunLock
from mktool.errors import Interrupted, LockedError, MktoolError
from mktool.scenewatch import Watcher, complete_files, is_event_file_name, list_event_files, watch

NOW = time.time()  # the tests' wall clock: mtimes are set relative to it (the loop of watch() reads the real one)
SEC = 1_000_000_000


@dataclass
class Batch:
    file: Path
    batch_id: str
    cycle_date: dt.date = dt.date(2026, 10, 5)
    lists: dict[str, int] = field(default_factory=lambda: {"sms": 1})
    outcomes: dict[str, int] = field(default_factory=lambda: {"fired": 1})
    held_out: dict[str, int] = field(default_factory=dict)


@dataclass
class Entry:
    """A ledger entry's one method the loop uses."""

    batch: str
    file_name: str

    def skipped(self, name: str) -> str:
        return f"skipped {name}: already processed as batch {self.batch} (as {self.file_name})"


@dataclass
class Run:
    batches: list[Batch] = field(default_factory=list)
    skipped: list[tuple[Path, Entry]] = field(default_factory=list)
    refused: list[tuple[Path, MktoolError]] = field(default_factory=list)


class FakeRunner:
    """Processes files as run_scene_files would, by their bytes; remembers every call."""

    def __init__(self, *, during: Callable[[Path], None] | None = None) -> None:
        self.ledger: dict[str, str] = {}
        self.calls: list[list[str]] = []
        self.during = during  # called while "processing" each file (a signal, a Ctrl-C)

    def __call__(self, db: Any, project: Any, paths: list[Path], *, out_dir: Path, reporter: Reporter,
                 stop: Callable[[], bool]) -> Run:
        self.calls.append([p.name for p in paths])
        run = Run()
        for i, p in enumerate(paths):
            if i and stop():
                break
            if self.during is not None:
                self.during(p)
            data = p.read_bytes()
            if data.startswith(b"BAD"):
                run.refused.append((p, MktoolError("column event_time: not a TIMESTAMP", file=str(p))))
                continue
            sha = hashlib.sha256(data).hexdigest()
            if sha in self.ledger:
                run.skipped.append((p, Entry(sha[:12], self.ledger[sha])))
                continue
            self.ledger[sha] = p.name
            run.batches.append(Batch(p, sha[:12]))
        return run


def put(folder: Path, name: str, data: bytes, *, age: float) -> Path:
    """A file whose mtime is ``age`` seconds before NOW."""
    path = folder / name
    path.write_bytes(data)
    t = int((NOW - age) * SEC)
    os.utime(path, ns=(t, t))
    return path


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def watcher(folder: Path, runner: FakeRunner, reporter: Reporter, *, once: bool = False,
            open_db: Callable[[], Any] | None = None, clock: Clock | None = None) -> Watcher:
    return Watcher(folder, interval=1.0, project=None, out_dir=folder.parent / "out",  # type: ignore[arg-type]
                   open_db=open_db or (lambda: contextlib.nullcontext(None)), runner=runner, reporter=reporter,
                   once=once, clock=clock or Clock())


@pytest.fixture
def reporter() -> Reporter:
    return Reporter()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


# -- which files are complete ---------------------------------------------------------------------
def test_event_file_names() -> None:
    assert is_event_file_name("events-2026-10-01.parquet")
    assert is_event_file_name("EVENTS.PARQUET")
    for name in (".events.parquet", "events.parquet.tmp", "events.parquet.part", "events.parquet.partial",
                 "events.csv", "events.parquet.TMP"):
        assert not is_event_file_name(name), name


def test_complete_means_old_enough_or_unchanged_since_the_previous_poll(inbox: Path) -> None:
    put(inbox, "old.parquet", b"a", age=1.0)  # exactly one interval old: complete
    put(inbox, "young.parquet", b"b", age=0.5)
    put(inbox, "growing.parquet", b"c", age=0.5)
    (inbox / "sub").mkdir()
    put(inbox, ".hidden.parquet", b"d", age=10)
    put(inbox, "x.parquet.tmp", b"e", age=10)
    first = list_event_files(inbox)
    assert [p.name for p in first] == ["growing.parquet", "old.parquet", "young.parquet"]
    assert [p.name for p in complete_files(first, None, interval=1.0, now=NOW)] == ["old.parquet"]
    put(inbox, "growing.parquet", b"cc", age=0.4)  # more bytes since the first listing
    second = list_event_files(inbox)
    assert [p.name for p in complete_files(second, first, interval=1.0, now=NOW)] == ["old.parquet",
                                                                                   "young.parquet"]


def test_a_growing_file_is_taken_only_once_it_stops_changing(inbox: Path, reporter: Reporter) -> None:
    runner = FakeRunner()
    w = watcher(inbox, runner, reporter)
    put(inbox, "e1.parquet", b"one", age=0.1)
    assert w.poll().taken == []  # young, no previous poll
    put(inbox, "e1.parquet", b"one two", age=0.05)
    assert w.poll().taken == []  # grew since the previous poll
    poll = w.poll()  # unchanged since the previous poll: complete, though still young
    assert [p.name for p in poll.taken] == ["e1.parquet"] and len(poll.batches) == 1
    assert runner.calls == [["e1.parquet"]]
    assert w.poll().taken == []  # handled: not given again


def test_a_tmp_file_is_never_taken_and_its_renamed_file_is(inbox: Path, reporter: Reporter) -> None:
    runner = FakeRunner()
    w = watcher(inbox, runner, reporter)
    tmp = put(inbox, "e2.parquet.tmp", b"rows", age=30)
    assert w.poll().taken == []
    tmp.rename(inbox / "e2.parquet")  # a rename keeps the mtime: 30 s old, complete at once
    assert [p.name for p in w.poll().taken] == ["e2.parquet"]
    assert runner.calls == [["e2.parquet"]]


def test_once_takes_only_files_one_interval_old(inbox: Path, reporter: Reporter) -> None:
    runner = FakeRunner()
    w = watcher(inbox, runner, reporter, once=True)
    put(inbox, "young.parquet", b"y", age=0.5)
    put(inbox, "old.parquet", b"o", age=5)
    assert [p.name for p in w.poll().taken] == ["old.parquet"]
    assert [p.name for p in w.poll().taken] == []  # --once has no previous poll: young stays young


# -- refused, skipped, changed ----------------------------------------------------------------------
def test_a_malformed_file_is_named_once_and_the_loop_goes_on(inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runner = FakeRunner()
    w = watcher(inbox, runner, Reporter())
    put(inbox, "a-bad.parquet", b"BAD rows", age=5)
    first = w.poll()
    assert [p.name for p, _ in first.refused] == ["a-bad.parquet"] and first.batches == []
    put(inbox, "b-good.parquet", b"good rows", age=5)
    second = w.poll()
    assert [b.file.name for b in second.batches] == ["b-good.parquet"]
    assert runner.calls == [["a-bad.parquet"], ["b-good.parquet"]]  # the refused file is not given again
    err = capsys.readouterr().err
    assert err.count("a-bad.parquet: column event_time: not a TIMESTAMP") == 1
    assert "a-bad.parquet is skipped until it changes" in err
    assert "b-good.parquet → batch" in err and "(2026-10-05): ? events, 1 fired; listed sms 1" in err
    put(inbox, "a-bad.parquet", b"fixed rows", age=5)  # corrected under the same name: taken again
    third = w.poll()
    assert [b.file.name for b in third.batches] == ["a-bad.parquet"]


def test_the_same_file_twice_and_a_renamed_copy_are_skipped_by_the_ledger(
        inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runner = FakeRunner()
    w = watcher(inbox, runner, Reporter())
    put(inbox, "e1.parquet", b"rows", age=5)
    assert len(w.poll().batches) == 1
    assert w.poll().taken == []  # unchanged: the loop does not ask again
    put(inbox, "e1-copy.parquet", b"rows", age=5)  # a renamed copy: new to the loop, known to the ledger
    poll = w.poll()
    assert poll.batches == [] and [p.name for p, _ in poll.skipped] == ["e1-copy.parquet"]
    os.utime(inbox / "e1.parquet", ns=(int(NOW * SEC), int((NOW - 2) * SEC)))  # touched: given again, skipped
    assert [p.name for p, _ in w.poll().skipped] == ["e1.parquet"]
    assert "skipped e1-copy.parquet: already processed as batch" in capsys.readouterr().err


# -- the database: opened only to process, a lock is "busy" -----------------------------------------
def test_a_locked_database_is_busy_and_retried_at_the_next_poll(
        inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db_path = tmp_path / "mk.duckdb"
    settings = Settings.from_options(db=db_path)
    with Database(settings, write=True):
        pass  # the database exists
    opened: list[str] = []

    def open_db() -> Database:
        opened.append("open")
        return Database(settings, write=True, must_exist=True)

    runner = FakeRunner()
    w = watcher(inbox, runner, Reporter(), open_db=open_db)
    assert w.poll().taken == [] and opened == []  # nothing new: the database is not even opened
    put(inbox, "e1.parquet", b"rows", age=5)
    with RunLock(db_path, exclusive=True, wait=0):  # the monthly run holds it
        busy = w.poll()
        again = w.poll()
    assert busy.busy and again.busy and runner.calls == []
    done = w.poll()
    assert [b.file.name for b in done.batches] == ["e1.parquet"] and opened == ["open"] * 3
    err = capsys.readouterr().err
    assert err.count("database busy") == 1 and "retrying at the next poll" in err
    assert "database free again" in err
    with RunLock(db_path, exclusive=True, wait=0):  # closed after the poll: another writer can take it
        pass


def test_once_with_a_locked_database_is_an_error(inbox: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "mk.duckdb"
    settings = Settings.from_options(db=db_path)
    put(inbox, "e1.parquet", b"rows", age=5)
    w = watcher(inbox, FakeRunner(), Reporter(), once=True,
                open_db=lambda: Database(settings, write=True))
    with RunLock(db_path, exclusive=True, wait=0), pytest.raises(LockedError):
        w.poll()


# -- the loop: --once, SIGTERM, Ctrl-C --------------------------------------------------------------
def run_watch(folder: Path, runner: FakeRunner, **kwargs: Any) -> Any:
    return watch(folder, interval=kwargs.pop("interval", 0.05), project=None,  # type: ignore[arg-type]
                 out_dir=folder.parent / "out", open_db=lambda: contextlib.nullcontext(None),
                 runner=runner, reporter=Reporter(quiet=True), **kwargs)


def test_watch_once_reports_what_was_refused(inbox: Path) -> None:
    put(inbox, "a.parquet", b"BAD", age=5)
    put(inbox, "b.parquet", b"ok", age=5)
    result = run_watch(inbox, FakeRunner(), once=True)
    assert result.polls == 1 and result.batches == 1 and [p.name for p in result.refused] == ["a.parquet"]
    assert result.stopped_by is None


def test_sigterm_during_a_batch_lets_it_finish_and_stops_before_the_next(inbox: Path) -> None:
    put(inbox, "a.parquet", b"first", age=60)  # older than the interval: complete at the first poll
    put(inbox, "b.parquet", b"second", age=60)
    runner = FakeRunner(during=lambda p: os.kill(os.getpid(), signal.SIGTERM) if p.name == "a.parquet" else None)
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    result = run_watch(inbox, runner, interval=30)
    assert time.monotonic() - started < 5  # no 30 s sleep after SIGTERM
    assert result.stopped_by == "SIGTERM" and result.batches == 1 and list(runner.ledger.values()) == ["a.parquet"]
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the loop's only while it runs


def test_sigterm_while_sleeping_stops_the_loop(inbox: Path) -> None:
    runner = FakeRunner()

    def alarm(signum: int, frame: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        result = run_watch(inbox, runner, interval=0.1, max_polls=1000)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert result.stopped_by == "SIGTERM" and 1 < result.polls < 1000


def test_ctrl_c_raises_interrupted_with_what_stays(inbox: Path) -> None:
    put(inbox, "a.parquet", b"first", age=5)

    def ctrl_c(path: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        run_watch(inbox, FakeRunner(during=ctrl_c))
    assert "the watch loop stopped" in caught.value.note


def test_a_folder_that_is_not_there_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MktoolError, match="does not exist"):
        run_watch(tmp_path / "nowhere", FakeRunner(), once=True)
    (tmp_path / "file.parquet").write_bytes(b"x")
    with pytest.raises(MktoolError, match="not a folder"):
        run_watch(tmp_path / "file.parquet", FakeRunner(), once=True)
