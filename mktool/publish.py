"""Publishing an export folder and its database transaction as one unit (SPEC §6).

Contacts are written back to contact_history if and only if their lists were delivered, so a
publish has exactly one commit point, the database COMMIT, and everything around it can be
finished or undone from a journal:

1. every file (the lists, funnel.json, manifest.json) is staged in a hidden folder
   ``.mktool-staging-<pid>-<run>`` beside its final place, and fsynced;
2. a journal ``.mktool-publish-<run>.json`` (the run, its database, the staged → final names
   with their sha256, the old files this publish removes, the contact rows' cycle ids) is
   written under a temporary name, fsynced and renamed into the folder;
3. the database transaction (write-back, hold-outs, funnels) also inserts the journal into
   ``publish_log``: its COMMIT is the publish's;
4. the staged files are renamed into place (manifest.json last: it describes the folder), the
   files that are no longer part of the folder are removed, then the journal and the staging
   folder; ``publish_log`` marks the run published.

Recovery, by whichever command comes next: a ``publish_log`` row not marked published whose
journal is still in its folder is rolled forward (every database open does this, readers too:
``mktool status`` or ``funnel`` finish a publish a kill interrupted); an export into a folder
also rolls back a journal its database never committed (the staged files are removed). So after
an interruption at any point, contacts recorded ⇔ the lists under their final names, all from
the same run, and a re-run replaces them as if nothing had happened.

The folder is one export cycle's, ``<out>/<month>/<cycle-date>/``: the unit, its lock and its
recovery are per cycle folder, so a publish never reads or writes another cycle's files. Once a
publish is complete, :func:`point_latest` moves the stable pointers ``<out>/<month>/latest`` and
``<out>/latest`` (relative symlinks, each replaced atomically) to the newest cycle by date.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

import duckdb

from mktool.errors import Interrupted, MktoolError

STAGING_PREFIX = ".mktool-staging-"
JOURNAL_PREFIX = ".mktool-publish-"
JOURNAL_SUFFIX = ".json"
PARTIAL_SUFFIX = ".partial"
LOG_TABLE = "publish_log"
SEAL = "manifest.json"  # renamed last: a reader who sees the new manifest sees every file it names
LATEST = "latest"  # <out>/<month>/latest and <out>/latest: symlinks to the newest cycle folder
_MONTH_NAME = re.compile(r"\d{4}-\d{2}")
_DATE_NAME = re.compile(r"\d{4}-\d{2}-\d{2}")

LOG_DDL = f"""CREATE TABLE IF NOT EXISTS {LOG_TABLE} (
    run_id VARCHAR, folder VARCHAR, journal VARCHAR, committed_at TIMESTAMP, published_at TIMESTAMP)"""

# -- test-only fault injection --------------------------------------------------------------------
FAULT_ENV = "MKTOOL_FAULT"
FAULT_POINTS = ("write_list", "write_funnel", "write_manifest", "fsync", "journal", "before_commit",
                "after_commit", "between_renames")
FAULT_KINDS = ("kill", "interrupt", "sigint", "enospc", "eio")


def fault(point: str) -> None:
    """Simulate a crash at a named publish point when ``MKTOOL_FAULT=point[:kind]`` says so (tests only).

    kind: ``kill`` (SIGKILL, the default), ``interrupt`` (KeyboardInterrupt raised right there),
    ``sigint`` (a real SIGINT to this process, as Ctrl-C sends it), ``enospc`` or ``eio`` (an OSError).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, kind = spec.partition(":")
    if name != point:
        return
    kind = kind or "kill"
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "sigint":
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # let the handler run here, as it would for a real Ctrl-C
        return
    code = {"enospc": errno.ENOSPC, "eio": errno.EIO}.get(kind)
    if code is None:
        raise ValueError(f"{FAULT_ENV}: unknown kind '{kind}' (one of {', '.join(FAULT_KINDS)})")
    raise OSError(code, os.strerror(code), f"<{point}>")


# -- durable small writes -------------------------------------------------------------------------
def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk before a name points at it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MB blocks (extracts can be large): the provenance of what was read and delivered."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the journal ----------------------------------------------------------------------------------
@dataclass
class Journal:
    """What one publish will do to its folder, enough to finish or undo it without the process."""

    run_id: str
    database: str  # the resolved database path: only its own database may roll a journal back
    folder: str  # the resolved output folder
    staging: str  # the staging folder's name inside ``folder``
    files: dict[str, str]  # final name → sha256 of the staged file, in rename order (the seal last)
    remove: list[str] = field(default_factory=list)  # final names that are no longer part of the folder
    cycles: dict[str, str] = field(default_factory=dict)  # channel → cycle id of the contact rows
    created_at: str = ""

    @property
    def path(self) -> Path:
        return Path(self.folder) / f"{JOURNAL_PREFIX}{self.run_id}{JOURNAL_SUFFIX}"

    @property
    def staging_dir(self) -> Path:
        return Path(self.folder) / self.staging

    def dumps(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n"

    @classmethod
    def loads(cls, text: str, *, where: str) -> Journal:
        try:
            doc = json.loads(text)
            return cls(run_id=str(doc["run_id"]), database=str(doc["database"]), folder=str(doc["folder"]),
                       staging=str(doc["staging"]), files=dict(doc["files"]), remove=list(doc.get("remove", [])),
                       cycles=dict(doc.get("cycles", {})), created_at=str(doc.get("created_at", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise MktoolError(f"unreadable publish journal ({exc})", file=where,
                              hint="it was not written by mktool; move it away if no publish is pending") from None


# -- the database side ----------------------------------------------------------------------------
def _log_exists(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?",
                            [LOG_TABLE]).fetchone())


def record_commit(con: duckdb.DuckDBPyConnection, journal: Journal) -> None:
    """Inside the contacts' transaction: this run's publish commits with them."""
    con.execute(LOG_DDL)
    con.execute(f"INSERT INTO {LOG_TABLE} VALUES (?, ?, ?, now()::TIMESTAMP, NULL)",
                [journal.run_id, journal.folder, journal.dumps()])


def is_committed(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    return _log_exists(con) and bool(
        con.execute(f"SELECT 1 FROM {LOG_TABLE} WHERE run_id = ?", [run_id]).fetchone())


def mark_published(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    con.execute(f"UPDATE {LOG_TABLE} SET published_at = now()::TIMESTAMP WHERE run_id = ? AND published_at IS NULL",
                [run_id])


# -- rolling forward and back ---------------------------------------------------------------------
def roll_forward(journal: Journal) -> None:
    """Put a committed publish's files in place; safe to repeat after an interruption at any point."""
    folder = Path(journal.folder)
    staging = journal.staging_dir
    first = True
    for name, digest in journal.files.items():
        if name == SEAL:
            for old in journal.remove:  # before the seal: the new manifest never names a file that is gone
                (folder / old).unlink(missing_ok=True)
        source, target = staging / name, folder / name
        try:
            os.replace(source, target)
        except FileNotFoundError:
            # Renamed by an earlier, interrupted roll-forward; anything else is a lost staged file.
            if not target.exists() or file_sha256(target) != digest:
                raise MktoolError(f"the staged file {source} of committed run {journal.run_id} is missing",
                                  file=str(journal.path),
                                  hint="its contacts are recorded but its list is not in place: re-run the export "
                                       "of that cycle") from None
        if first:
            fault("between_renames")
            first = False
    if SEAL not in journal.files:
        for old in journal.remove:
            (folder / old).unlink(missing_ok=True)
    fsync_path(folder)
    journal.path.unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    fsync_path(folder)


def roll_back(journal: Journal) -> None:
    """Undo a publish its database never committed: only hidden names were written."""
    shutil.rmtree(journal.staging_dir, ignore_errors=True)
    journal.path.unlink(missing_ok=True)


def finish_pending(con: duckdb.DuckDBPyConnection, *, writable: bool, strict: bool = False) -> list[str]:
    """Roll forward every committed publish of this database whose files are not all in place yet.

    Returns the runs finished. ``strict`` raises when a folder cannot be finished (export and run
    must not write over it); otherwise the publish stays pending for the next command.
    """
    if not _log_exists(con):
        return []
    finished = []
    for run_id, text in con.execute(f"SELECT run_id, journal FROM {LOG_TABLE} WHERE published_at IS NULL "
                                    "ORDER BY committed_at, run_id").fetchall():
        try:
            journal = Journal.loads(text, where=f"{LOG_TABLE} run {run_id}")
            if journal.path.exists():
                roll_forward(journal)
                finished.append(run_id)
                with contextlib.suppress(OSError):  # a pointer is re-made by every publish; never blocks a reader
                    point_latest(Path(journal.folder))
        except MktoolError:
            if strict:
                raise
            continue
        except OSError as exc:
            if strict:
                raise _unfinished(journal, exc) from None
            continue
        if writable:
            mark_published(con, run_id)
    return finished


def _unfinished(journal: Journal, exc: BaseException) -> MktoolError:
    detail = exc.render() if isinstance(exc, MktoolError) else os_error_text(exc)
    return MktoolError(f"the lists of committed run {journal.run_id} could not be put in place: {detail}",
                       file=journal.folder, hint="fix the folder (space, permissions) and run any mktool command "
                                                 "on this database: it finishes the publish")


def os_error_text(exc: BaseException) -> str:
    """One plain line for an OS error, or for DuckDB's report of one.

    DuckDB reports a failed write of COPY as ``IO Error: Async write failed …: {"exception_type":
    "IO","exception_message":"Could not write file \\"…\\": No space left on device",…}``: the
    message inside is what a person needs.
    """
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    start = text.find("{")
    if start >= 0:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            inner = json.loads(text[start:]).get("exception_message")
            if inner:
                return f"{text[:start].split(':')[0].strip()}: {inner}"
    return text


def recover_folder(con: duckdb.DuckDBPyConnection, folder: Path, database: Path) -> None:
    """Before a publish into ``folder``: finish or undo whatever an interrupted one left there."""
    if not folder.is_dir():
        return
    own_db = str(Path(database).resolve())
    journals = {}
    for path in sorted(folder.glob(f"{JOURNAL_PREFIX}*{JOURNAL_SUFFIX}")):
        journal = Journal.loads(path.read_text(encoding="utf-8"), where=str(path))
        journals[journal.run_id] = journal
        try:
            if is_committed(con, journal.run_id):
                roll_forward(journal)
                mark_published(con, journal.run_id)
                with contextlib.suppress(OSError):  # the export that recovers it points them again anyway
                    point_latest(folder)
            elif journal.database == own_db:
                roll_back(journal)
            else:
                raise MktoolError(
                    f"an unfinished publish of run {journal.run_id} from another database ({journal.database}) is "
                    "in this folder", file=str(folder),
                    hint=f"run any mktool command with --db {journal.database} to finish it, or remove {path.name} "
                         "and its staging folder if that database is gone")
        except OSError as exc:
            raise _unfinished(journal, exc) from None
    # Staging folders (and half-written journals) of runs killed before their journal existed:
    # uncommitted by construction. A live process's (another database's export) is left alone.
    for path in folder.glob(f"{STAGING_PREFIX}*"):
        pid_text, _, run_id = path.name[len(STAGING_PREFIX):].partition("-")
        if run_id in journals or not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        (folder / f"{JOURNAL_PREFIX}{run_id}{JOURNAL_SUFFIX}{PARTIAL_SUFFIX}").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own earlier attempt, abandoned
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - alive, another user's
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """One publish at a time into ``folder``, whichever database it comes from.

    The run lock is per database: two databases exporting into one folder would otherwise rename
    their files in turn, and the folder could hold one run's sms.csv beside the other's manifest.
    The lock is an flock on the folder itself (no extra file in it); a publish holds it for
    seconds, so the second one waits.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# -- the latest pointers --------------------------------------------------------------------------
def _is_date(name: str) -> bool:
    if not _DATE_NAME.fullmatch(name):
        return False
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return False
    return True


def newest_cycle(month_dir: Path) -> str | None:
    """The newest published cycle folder of a month: the latest date-named folder holding a manifest."""
    try:
        entries = list(month_dir.iterdir())
    except FileNotFoundError:
        return None
    dates = [p.name for p in entries if _is_date(p.name) and not p.is_symlink() and (p / SEAL).is_file()]
    return max(dates) if dates else None


def _replace_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (relative): a symlink made under a temporary name, then renamed over it."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    tmp = link.with_name(f".{link.name}-{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(link.parent)


def point_latest(cycle_folder: Path) -> None:
    """After a publish into ``<out>/<month>/<cycle-date>/``: ``<out>/<month>/latest`` → the month's newest
    cycle folder, ``<out>/latest`` → ``<month>/<cycle-date>`` of the newest cycle overall (by cycle date,
    then month).

    Newest by date, not by time of writing: a re-run of an older cycle never moves a pointer back.
    Each update holds its folder's lock, so two publishes of the same month cannot leave the older
    one's pointer last. A folder not shaped like a cycle folder (a publish from before cycles) is
    left alone.
    """
    cycle_folder = Path(cycle_folder)
    month_dir = cycle_folder.parent
    out_dir = month_dir.parent
    if not (_is_date(cycle_folder.name) and _MONTH_NAME.fullmatch(month_dir.name)):
        return
    with folder_lock(month_dir):
        newest = newest_cycle(month_dir)
        if newest is not None:
            _replace_link(month_dir / LATEST, newest)
    with folder_lock(out_dir):
        overall = [(date, m.name) for m in out_dir.iterdir()
                   if _MONTH_NAME.fullmatch(m.name) and m.is_dir() and not m.is_symlink()
                   and (date := newest_cycle(m)) is not None]
        if overall:
            date, month = max(overall)
            _replace_link(out_dir / LATEST, f"{month}/{date}")


def newest_list(out_dir: Path, channel: str, month: str | None = None) -> Path | None:
    """The newest published list of ``channel`` under ``out_dir``: in the newest cycle folder (by cycle
    date, then month; of ``month`` only, when given) whose manifest.json names a list of that channel.

    A daily cycle's folder has only the daily channels, so ``<out>/latest`` may not hold a monthly
    channel's list: this finds it wherever it is. The path goes through the cycle folder itself,
    not a ``latest`` link, so it stays the same file when a newer cycle moves the links.
    """
    out_dir = Path(out_dir)
    try:
        months = [m for m in out_dir.iterdir() if _MONTH_NAME.fullmatch(m.name) and m.is_dir() and not m.is_symlink()
                  and month in (None, m.name)]
    except (FileNotFoundError, NotADirectoryError):
        return None
    cycles = [(c.name, m.name, c) for m in months for c in m.iterdir()
              if _is_date(c.name) and c.is_dir() and not c.is_symlink() and (c / SEAL).is_file()]
    for _, _, folder in sorted(cycles, reverse=True):
        try:
            outputs = json.loads((folder / SEAL).read_text(encoding="utf-8")).get("outputs", {})
        except (OSError, ValueError, AttributeError):
            continue
        for name, entry in sorted(outputs.items()) if isinstance(outputs, dict) else []:
            if isinstance(entry, dict) and entry.get("channel") == channel and (folder / name).is_file():
                return folder / name
    return None


# -- one publish ----------------------------------------------------------------------------------
class Publication:
    """The staged files of one run and the steps that publish them (see the module docstring)."""

    def __init__(self, folder: Path, database: Path, run_id: str, cycles: dict[str, str]) -> None:
        self.folder = Path(folder).resolve()
        self.database = Path(database).resolve()
        self.run_id = run_id
        self.cycles = dict(cycles)
        self.files: dict[str, str] = {}
        self.remove: list[str] = []
        self.journal: Journal | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.staging = self.folder / f"{STAGING_PREFIX}{os.getpid()}-{run_id}"
        self.staging.mkdir()

    def path(self, name: str) -> Path:
        """Where to stage the file that will be published as ``name``."""
        return self.staging / name

    def add(self, name: str, digest: str | None = None) -> None:
        """A staged file is complete (its sha256, when the caller already has it)."""
        self.files[name] = digest or file_sha256(self.path(name))

    def write_text(self, name: str, text: str) -> str:
        data = text.encode("utf-8")
        with open(self.path(name), "wb") as fh:
            fh.write(data)
        digest = sha256_bytes(data)
        self.add(name, digest)
        return digest

    def prepare(self) -> Journal:
        """Everything on disk, then the journal: after this the COMMIT may happen."""
        for name in self.files:
            fsync_path(self.path(name))
            fault("fsync")
        fsync_path(self.staging)
        order = sorted(n for n in self.files if n != SEAL) + ([SEAL] if SEAL in self.files else [])
        journal = Journal(run_id=self.run_id, database=str(self.database), folder=str(self.folder),
                          staging=self.staging.name, files={n: self.files[n] for n in order},
                          remove=sorted(set(self.remove) - set(self.files)), cycles=self.cycles,
                          created_at=dt.datetime.now().replace(microsecond=0).isoformat())
        partial = journal.path.with_name(journal.path.name + PARTIAL_SUFFIX)
        with open(partial, "w", encoding="utf-8") as fh:
            fh.write(journal.dumps())
            fault("journal")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, journal.path)
        fsync_path(self.folder)
        self.journal = journal
        return journal

    def abandon(self) -> None:
        """Before the COMMIT: remove every trace (only hidden names were written)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.journal is not None:
            self.journal.path.unlink(missing_ok=True)
        (self.folder / f"{JOURNAL_PREFIX}{self.run_id}{JOURNAL_SUFFIX}{PARTIAL_SUFFIX}").unlink(missing_ok=True)

    def complete(self, con: duckdb.DuckDBPyConnection) -> None:
        """After the COMMIT: the files into place, then the log says so."""
        assert self.journal is not None
        fault("after_commit")
        roll_forward(self.journal)
        mark_published(con, self.run_id)


def raise_publish_failure(con: duckdb.DuckDBPyConnection, pub: Publication, run_id: str, exc: BaseException,
                          folder: Path, *, unwritten: Callable[[str], str], interrupted: str,
                          unplaced: Callable[[BaseException], MktoolError]) -> NoReturn:
    """What a publish that failed with ``exc`` raises, from whether its commit happened (export's
    cycles and the scene batches alike): not committed — the staging is abandoned and a disk error
    says ``unwritten(detail)`` (nothing recorded, nothing changed); committed — a Ctrl-C is
    ``interrupted`` and a disk error ``unplaced(exc)`` (the next command puts the files in place);
    unknown (the connection is gone) or anything else — ``exc`` itself."""
    try:
        committed: bool | None = is_committed(con, run_id)
    except duckdb.Error:
        committed = None  # the connection is gone: the next command decides from the journal
    if committed is False:
        pub.abandon()
        if isinstance(exc, (OSError, duckdb.IOException)):  # a full disk while DuckDB writes a list, too
            raise MktoolError(unwritten(os_error_text(exc)), file=str(folder)) from None
        raise exc
    if committed and isinstance(exc, KeyboardInterrupt):
        raise Interrupted(interrupted) from None
    if committed and isinstance(exc, (OSError, duckdb.Error)):  # a rename, or the CHECKPOINT after the COMMIT
        raise unplaced(exc) from None
    raise exc


@contextlib.contextmanager
def deferred_interrupt(note: str) -> Iterator[None]:
    """Hold a Ctrl-C that arrives while a publish commits and renames until it has finished.

    The window is short (COMMIT, CHECKPOINT, a few renames); stopping inside it would leave the
    lists for the next command to put in place. The Ctrl-C is then raised as ``Interrupted``
    with ``note``, which says that the publish did complete. Outside the main thread (where no
    signal handler can be set) nothing is deferred.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise Interrupted(note)
