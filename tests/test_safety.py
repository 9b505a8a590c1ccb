"""Safe runs (issue 5 §6): the run lock, and kill -9 mid-export / mid-ingest — real subprocesses.

A killed command must leave no partial file under a final name and the database exactly as it
was before the command. To kill at a known moment rather than by luck, the killed processes
run the real CLI with one function wrapped (``HOOK``): after the wrapped call returns, the
process writes a marker file and sleeps, and the test sends SIGKILL as soon as the marker is
there. Wrapping ``export._record_contacts`` stops a real export inside its write transaction
(contacts inserted, not committed); ``export._held_out`` stops it while it is writing the lists
(the first one staged, nothing renamed); ``ingest._load_table`` stops a real ingest inside its
transaction after the first table was replaced. One more export is killed without any hook, as
soon as its first list file appears in the staging folder, and must leave either the state
before or the state after the command.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import ENV, FIXTURES, MATRICES, NEXT_DAY, D, M, cycle_dir, mktool, month_rows, write_table

HOOK = r"""
import importlib, os, sys, time
target, marker, pause = os.environ["MKTOOL_TEST_HOOK"].split("|")
module_name, _, func_name = target.rpartition(".")
module = importlib.import_module(module_name)
original = getattr(module, func_name)

def hooked(*args, **kwargs):
    result = original(*args, **kwargs)
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(float(pause))
    return result

setattr(module, func_name, hooked)
sys.argv = ["mktool", *sys.argv[1:]]
from mktool.cli import main
main()
"""


def start_hooked(tmp_path: Path, target: str, *args: str, pause: float = 120) -> tuple[subprocess.Popen[str], Path]:
    """Start ``mktool args`` with ``target`` wrapped; returns once the process is paused after it."""
    marker = tmp_path / f"paused-{target}"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOOK, *args],
                            env={**ENV, "MKTOOL_TEST_HOOK": f"{target}|{marker}|{pause}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the hooked command ended (exit {proc.returncode}) before reaching {target}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the hooked command never reached {target}")
        time.sleep(0.02)
    return proc, marker


def kill9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def db_state(db: Path) -> dict[str, Any]:
    """Every table's columns, row count and content hash (opened read-write, as the next command would).

    Except publish_log: a log of run ids and times (like manifest.json's run_id), one row per publish.
    """
    con = duckdb.connect(str(db))
    try:
        state = {}
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                                    "AND table_name <> 'publish_log' ORDER BY 1").fetchall():
            columns = [r[:2] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
            count, digest = con.execute(
                f'SELECT count(*), md5(coalesce(string_agg(CAST(t AS VARCHAR), chr(10) '
                f'ORDER BY CAST(t AS VARCHAR)), \'\')) '
                f'FROM "{table}" t').fetchone()
            state[table] = (columns, count, digest)
        return state
    finally:
        con.close()


def files_state(folder: Path) -> dict[str, str]:
    """sha256 of every file under a final (not hidden) name."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not any(part.startswith(".") for part in
                                                                          p.relative_to(folder).parts)}


def without_manifest(files: dict[str, str]) -> dict[str, str]:
    """manifest.json holds its run's id and time; everything else it describes is compared beside it."""
    return {k: v for k, v in files.items() if not k.endswith("manifest.json")}


def export_args(db: Path, out: Path, date: str = NEXT_DAY, fmt: str | None = None) -> list[str]:
    return ["export", "--month", M, "--date", date, "--out", str(out), "--matrices", str(MATRICES), "--db", str(db),
            *(["--format", fmt] if fmt else [])]


def killed_export_args(db: Path, out: Path) -> list[str]:
    """The export the kill tests interrupt: a new daily cycle, as jsonl, so that every list it would
    write has a name that does not exist yet: any file it leaves under a final name is visible."""
    return export_args(db, out, NEXT_DAY, "jsonl")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The committed fixture through `mktool run` once (database + lists of cycle D); tests work on copies."""
    root = tmp_path_factory.mktemp("safety_base")
    done = mktool("run", "--month", M, "--ingest", str(FIXTURES), "--date", D, "--out", str(root / "out"),
                  "--matrices", str(MATRICES), "--db", str(root / "mk.duckdb"), "--quiet", timeout=300)
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def world(base, tmp_path) -> tuple[Path, Path]:
    """A private copy of the base database and output folder: (db, out)."""
    shutil.copy(base / "mk.duckdb", tmp_path / "mk.duckdb")
    shutil.copytree(base / "out", tmp_path / "out", symlinks=True)  # the latest pointers stay links
    return tmp_path / "mk.duckdb", tmp_path / "out"


def reference_after(tmp_path: Path, db: Path, out: Path, args_for: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """What the command does when nobody kills it: run it on copies of the database and the output folder."""
    ref = tmp_path / "reference"
    ref.mkdir()
    shutil.copy(db, ref / "mk.duckdb")
    shutil.copytree(out, ref / "out", symlinks=True)
    done = mktool(*args_for(ref / "mk.duckdb", ref / "out"))
    assert done.returncode == 0, done.stderr
    return db_state(ref / "mk.duckdb"), files_state(ref / "out")


# == the lock ==========================================================================================
def test_a_second_writer_refuses_with_the_holder_s_pid_and_exit_3(world, tmp_path):
    db, out = world
    holder, _ = start_hooked(tmp_path, "mktool.export._record_contacts", *export_args(db, out))
    try:
        message = f"database is locked by another mktool run (pid {holder.pid})"
        for args in (export_args(db, tmp_path / "other", D),
                     ["ingest", str(FIXTURES / "dnd.parquet"), "--db", str(db)],
                     ["funnel", "--month", M, "--db", str(db)]):  # readers wait for writers too
            started = time.monotonic()
            second = mktool(*args)
            assert second.returncode == 3, (args, second.stderr)
            assert time.monotonic() - started < 30  # refused at once, not after the holder
            assert second.stderr.startswith("Error: ") and message in second.stderr
            assert "--wait" in second.stderr and "Traceback" not in second.stderr
            assert second.stdout == ""
        started = time.monotonic()
        waited = mktool(*export_args(db, tmp_path / "other", D), "--wait", "1")
        assert waited.returncode == 3 and message in waited.stderr
        assert time.monotonic() - started >= 1  # it did wait a second before giving up
        assert not (tmp_path / "other").exists()
    finally:
        kill9(holder)
    after = mktool("funnel", "--month", M, "--format", "json", "--db", str(db))  # the lock died with its holder
    assert after.returncode == 0, after.stderr


def test_a_writer_blocked_by_a_reader_names_the_reader_not_an_earlier_run(world, tmp_path):
    db, out = world
    assert mktool(*export_args(db, out)).returncode == 0  # an earlier writer, long gone
    reader, _ = start_hooked(tmp_path, "mktool.export.funnel_document", "funnel", "--month", M, "--db", str(db))
    try:
        second = mktool(*export_args(db, out))
        assert second.returncode == 3
        assert f"database is locked by another mktool run (pid {reader.pid})" in second.stderr
        assert mktool("funnel", "--month", M, "--format", "json", "--db", str(db)).returncode == 0  # readers share
    finally:
        kill9(reader)


def test_with_wait_a_second_run_queues_and_then_succeeds(world, tmp_path):
    db, out = world
    holder, _ = start_hooked(tmp_path, "mktool.export._record_contacts", *export_args(db, out), pause=3)
    second = subprocess.Popen([sys.executable, "-m", "mktool", *export_args(db, tmp_path / "second", "2026-11-03"),
                               "--wait", "30"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, second_err = second.communicate(timeout=120)
    holder_done = holder.poll() is not None  # the second could only start once the holder had finished
    holder_out, holder_err = holder.communicate(timeout=120)
    assert holder.returncode == 0, holder_err
    assert second.returncode == 0, second_err
    assert holder_done
    assert "Traceback" not in second_err and "locked" not in second_err
    con = duckdb.connect(str(db), read_only=True)
    cycles = {r[0] for r in con.execute("SELECT DISTINCT cycle FROM contact_history WHERE outcome = 'sent'").fetchall()}
    con.close()
    assert NEXT_DAY in cycles  # the holder committed …
    manifest = (cycle_dir(tmp_path / "second", M, "2026-11-03") / "manifest.json").read_text(encoding="utf-8")
    assert '"cycle_date": "2026-11-03"' in manifest  # … and so did the run that queued behind it


# == kill -9 mid-export ================================================================================
@pytest.mark.parametrize("target", [
    "mktool.export._record_contacts",  # inside the write transaction: contacts inserted, not committed
    "mktool.export._held_out",         # writing the lists: the first one staged, nothing renamed yet
])
def test_kill_9_mid_export_leaves_files_and_database_as_before(world, tmp_path, target):
    db, out = world
    before_db, before_files = db_state(db), files_state(out)
    ref_db, ref_files = reference_after(tmp_path, db, out, killed_export_args)
    assert ref_db != before_db and set(ref_files) - set(before_files)  # the export would change both …

    proc, _ = start_hooked(tmp_path, target, *killed_export_args(db, out))
    staging = list(cycle_dir(out, M, NEXT_DAY).glob(".mktool-staging-*"))
    assert staging  # the lists were being staged beside their final place
    kill9(proc)

    assert files_state(out) == before_files  # … but killed, no final name changed, no partial file appeared
    assert db_state(db) == before_db         # and the database holds exactly what it held before
    done = mktool(*killed_export_args(db, out))  # the next run works, and does what the killed one would have
    assert done.returncode == 0, done.stderr
    # the dead run's staging folder is cleaned up
    assert not list(cycle_dir(out, M, NEXT_DAY).glob(".mktool-staging-*"))
    after = files_state(out)
    assert without_manifest(after) == without_manifest(ref_files)
    assert db_state(db) == ref_db


def test_kill_9_as_soon_as_an_unhooked_export_starts_writing(world, tmp_path):
    """No hook: kill as soon as a list file appears in the staging folder (DuckDB is writing it).

    Wherever the kill lands, every file under a final name is the old one or the complete new
    one, and the database is as before the command or as after it, never in between."""
    db, out = world
    before_db, before_files = db_state(db), files_state(out)
    ref_db, ref_files = reference_after(tmp_path, db, out, killed_export_args)
    proc = subprocess.Popen([sys.executable, "-m", "mktool", *killed_export_args(db, out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    staging = cycle_dir(out, M, NEXT_DAY)
    while not list(staging.glob(".mktool-staging-*/*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    files = files_state(out)
    assert set(files) <= set(before_files) | set(ref_files)
    for name, digest in files.items():  # each file under a final name is the old one or the complete new one
        assert digest in (before_files.get(name), ref_files.get(name)), name
    state = db_state(db)
    assert state in (before_db, ref_db)
    # The jsonl export replaces the csv lists (no mix of old and new is left): once the next command has
    # finished or undone the publish, the folder is all before (database before) or all after (database after).
    assert mktool("status", "--db", str(db)).returncode == 0
    files = files_state(out)
    if state == before_db:
        assert files == before_files
    else:
        assert without_manifest(files) == without_manifest(ref_files)


# == kill -9 mid-ingest ================================================================================
def test_kill_9_mid_ingest_leaves_the_database_as_before(world, tmp_path):
    db, _ = world
    new = tmp_path / "new"
    people = ["13899990001", "13899990002"]
    write_table(new / f"subscribers_{M}.parquet", "subscribers", [r for m in people for r in month_rows(m, [M])])
    write_table(new / f"usage_{M}.parquet", "usage", [r for m in people for r in month_rows(m, [M])])
    write_table(new / f"billing_{M}.parquet", "billing", [r for m in people for r in month_rows(m, [M])])
    before = db_state(db)

    proc, _ = start_hooked(tmp_path, "mktool.ingest._load_table", "ingest", str(new), "--db", str(db))
    kill9(proc)
    assert db_state(db) == before

    done = mktool("ingest", str(new), "--db", str(db))  # the same load, not killed, does change the database
    assert done.returncode == 0, done.stderr
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT list(msisdn ORDER BY msisdn) FROM subscribers WHERE month = ?", [M]).fetchone() == (
        people,)
    con.close()


def test_a_failure_after_a_commit_keeps_the_new_database(tmp_path):
    """A new database is removed on failure only while nothing was committed to it."""
    from mktool.config import Settings
    from mktool.database import Database

    path = tmp_path / "new.duckdb"
    with pytest.raises(RuntimeError):
        with Database(Settings.from_options(db=path), write=True) as db:
            raise RuntimeError("refused before any write")
    assert not path.exists()
    with pytest.raises(RuntimeError):
        with Database(Settings.from_options(db=path), write=True) as db:
            with db.transaction() as con:
                con.execute("CREATE TABLE kept AS SELECT 1 AS x")
            raise RuntimeError("a later step failed")
    assert duckdb.connect(str(path), read_only=True).execute("SELECT x FROM kept").fetchall() == [(1,)]
