"""Contacts recorded if and only if lists were delivered (issue 10 item 5), and a manifest that is true (item 7).

An export of a new daily cycle over the lists of an earlier `mktool run` is interrupted at each
publish point (mktool.publish.FAULT_POINTS, injected by MKTOOL_FAULT=point:kind): by SIGKILL (a
real subprocess kills itself there), by Ctrl-C (KeyboardInterrupt) and by ENOSPC / EIO. After
each, once the next command (`mktool status`, a reader) has run:

* contacts recorded ⇔ lists present: every list the manifest names is there with its sha256 and
  row count, no other list is in the folder, and each list of the manifest's run holds exactly the
  (msisdn, policy) pairs recorded as `sent` for its channel and cycle;
* the state is the one before the export (interrupted before its commit) or the one after it
  (after its commit), never a mix;
* running the export again gives the state of an uninterrupted run, with nothing left behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow
import pytest
import sqlglot
import yaml
from conftest import ENV, FIXTURES, MATRICES, NEXT_DAY, D, M, cycle_dir, mktool, mktool_here, slow_beyond
from test_safety import db_state, files_state, without_manifest

from mktool.publish import FAULT_POINTS, JOURNAL_PREFIX, STAGING_PREFIX
from mktool.rules import load_channels
from mktool.versions import engine_info

COMMITTED_AT = FAULT_POINTS.index("after_commit")  # points from here on come after the commit


def export_args(db: Path, out: Path, *extra: str, date: str = NEXT_DAY) -> list[str]:
    return ["export", "--month", M, "--date", date, "--out", str(out), "--matrices", str(MATRICES), "--db", str(db),
            "--quiet", *extra]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The fixture through `mktool run` (cycle D): a database with contacts and a folder of lists (only:
    --no-report, these tests list the folder's files)."""
    root = tmp_path_factory.mktemp("publish_base")
    done = mktool("run", "--month", M, "--ingest", str(FIXTURES), "--date", D, "--out", str(root / "out"),
                  "--matrices", str(MATRICES), "--db", str(root / "mk.duckdb"), "--quiet", "--no-report")
    assert done.returncode == 0, done.stderr
    return root


def copy_world(base: Path, to: Path) -> tuple[Path, Path]:
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(base / "mk.duckdb", to / "mk.duckdb")
    shutil.copytree(base / "out", to / "out", symlinks=True)  # the latest pointers stay links
    return to / "mk.duckdb", to / "out"


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory) -> dict[str, Any]:
    """The export of NEXT_DAY nobody interrupts: (database state, files) before and after it."""
    db, out = copy_world(base, tmp_path_factory.mktemp("publish_reference"))
    before = (db_state(db), files_state(out))
    done = mktool(*export_args(db, out))
    assert done.returncode == 0, done.stderr
    after = (db_state(db), files_state(out))
    assert after[0] != before[0] and without_manifest(after[1]) != without_manifest(before[1])
    return {"before": before, "after": after}


# == the invariant ===============================================================================
def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(msisdn, policy_id) of every row of a list."""
    if path.suffix == ".csv":
        return [(r["msisdn"], r["policy_id"]) for r in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        return [(r["msisdn"], r["policy_id"]) for r in rows]
    con = duckdb.connect()
    try:
        return con.execute("SELECT msisdn, policy_id FROM read_parquet(?)", [str(path)]).fetchall()
    finally:
        con.close()

#: The pop-up channels of the shipped rules (their lists are never recorded as sent).
POPUPS = {name for name, ch in load_channels(MATRICES).channels.items() if ch.popup}


def assert_delivered_iff_recorded(db: Path, folder: Path) -> dict[str, Any]:
    """The folder is what its manifest says, and the manifest's run's lists are exactly its `sent` records."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    lists = {p.name for p in folder.iterdir() if p.is_file() and p.suffix in (".csv", ".jsonl", ".parquet")
             and not p.name.startswith(".")}
    assert lists == set(manifest["outputs"]), "a list the manifest does not name, or a named list missing"
    assert json.loads((folder / "funnel.json").read_text(encoding="utf-8"))["funnels"] == manifest["funnels"]
    con = duckdb.connect(str(db), read_only=True)
    try:
        for name, entry in manifest["outputs"].items():
            path = folder / name
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
            pairs = read_pairs(path)
            assert len(pairs) == entry["rows"], name
            if entry.get("run_id") != manifest["run_id"]:
                continue
            sent = con.execute("SELECT msisdn, policy_id FROM contact_history WHERE outcome = 'sent' AND channel = ? "
                               "AND cycle = ?", [entry["channel"], entry["cycle"]]).fetchall()
            if entry["channel"] in POPUPS:  # a pop-up's showing is not a contact: nothing is recorded
                assert sent == [], f"{name}: a pop-up list recorded as sent"
                continue
            assert sorted(sent) == sorted(pairs), f"{name}: the contacts recorded are not the list delivered"
        pending = con.execute("SELECT count(*) FROM publish_log WHERE published_at IS NULL").fetchone()
    finally:
        con.close()
    return {"manifest": manifest, "pending": pending}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((STAGING_PREFIX, JOURNAL_PREFIX)))


# == interrupted at each publish point =============================================================
KINDS = ["kill", "interrupt", "enospc"]
CASES = [(point, kind) for point in FAULT_POINTS for kind in KINDS] + [("fsync", "eio"), ("between_renames", "eio")]
#: The cases of the default run: killed before and after the commit, and an I/O error between the renames
#: (the rest of the sweep is `slow`: CI runs it).
FAST_CASES = {("before_commit", "kill"), ("after_commit", "kill"), ("between_renames", "eio")}


@pytest.mark.parametrize(("point", "kind"), slow_beyond(CASES, FAST_CASES))
def test_an_interrupted_publish_is_finished_or_undone_and_a_rerun_converges(base, reference, tmp_path, point, kind):
    db, out = copy_world(base, tmp_path)
    folder = cycle_dir(out, M, NEXT_DAY)
    interrupted = mktool(*export_args(db, out), fault=f"{point}:{kind}")
    committed = FAULT_POINTS.index(point) >= COMMITTED_AT
    if kind == "kill":
        assert interrupted.returncode == -signal.SIGKILL
    elif kind == "interrupt":
        assert interrupted.returncode == 130, interrupted.stderr
        if committed:  # never "nothing was committed" once it was
            assert "nothing was committed" not in interrupted.stderr
            assert "had committed the contacts" in interrupted.stderr and "next mktool command" in interrupted.stderr
        else:
            assert "Interrupted; nothing was committed." in interrupted.stderr
    else:
        assert interrupted.returncode == 1, interrupted.stderr
        assert interrupted.stderr.startswith("Error: ") and "Traceback" not in interrupted.stderr
        assert str(folder) in interrupted.stderr
        assert ("were committed" in interrupted.stderr) == committed
        assert ("nothing was recorded" in interrupted.stderr) == (not committed)
    # A committed publish may still wait for its renames, an uncommitted one left only hidden names:
    # either way no list under a final name is half old, half new.
    if not committed:
        assert files_state(out) == reference["before"][1]
        assert db_state(db) == reference["before"][0]

    status = mktool_here("status", "--db", str(db))  # the next command, a reader, finishes a committed publish
    assert status.exit_code == 0, status.output
    assert_delivered_iff_recorded(db, cycle_dir(out, M, D))  # the other cycle's folder is never touched
    state = assert_delivered_iff_recorded(db, folder) if committed else {}
    if committed:
        assert without_manifest(files_state(out)) == without_manifest(reference["after"][1])
        assert db_state(db) == reference["after"][0]
        assert not [n for n in leftovers(folder) if n.startswith(JOURNAL_PREFIX)]
        assert state["pending"] == (1,)  # a reader cannot write: the log is marked by the next writer
    else:
        assert files_state(out) == reference["before"][1] and db_state(db) == reference["before"][0]

    again = mktool_here(*export_args(db, out))  # re-run: the state of an uninterrupted run, nothing left behind
    assert again.exit_code == 0, again.output
    assert leftovers(folder) == []
    assert without_manifest(files_state(out)) == without_manifest(reference["after"][1])
    assert db_state(db) == reference["after"][0]
    assert assert_delivered_iff_recorded(db, folder)["pending"] == (0,)


@pytest.mark.parametrize("point", ["journal", "before_commit", "after_commit"])
def test_a_real_ctrl_c_once_the_publish_is_committing_is_held_until_it_is_done(base, reference, tmp_path, point):
    """A SIGINT (what Ctrl-C sends) from the journal on waits for the renames: published, and said so."""
    db, out = copy_world(base, tmp_path)
    done = mktool(*export_args(db, out), fault=f"{point}:sigint")
    assert done.returncode == 130, done.stderr
    assert "had committed" in done.stderr and "lists are in place" in done.stderr
    assert leftovers(cycle_dir(out, M, NEXT_DAY)) == []  # nothing left for the next command to do
    assert assert_delivered_iff_recorded(db, cycle_dir(out, M, NEXT_DAY))["pending"] == (0,)
    assert without_manifest(files_state(out)) == without_manifest(reference["after"][1])
    assert db_state(db) == reference["after"][0]


def test_a_real_ctrl_c_while_the_lists_are_written_commits_nothing(base, reference, tmp_path):
    db, out = copy_world(base, tmp_path)
    done = mktool(*export_args(db, out), fault="write_list:sigint")
    assert done.returncode == 130 and "Interrupted; nothing was committed." in done.stderr
    assert not cycle_dir(out, M, NEXT_DAY).exists()  # undone: not even an empty cycle folder is left
    assert files_state(out) == reference["before"][1] and db_state(db) == reference["before"][0]


def test_the_next_export_rolls_back_an_uncommitted_publish_and_a_writer_finishes_a_committed_one(base, tmp_path):
    db, out = copy_world(base, tmp_path)
    folder = cycle_dir(out, M, NEXT_DAY)
    assert mktool(*export_args(db, out), fault="before_commit:kill").returncode == -signal.SIGKILL
    left = leftovers(folder)
    assert [n for n in left if n.startswith(JOURNAL_PREFIX)] and [n for n in left if n.startswith(STAGING_PREFIX)]
    dry = mktool(*export_args(db, out, "--dry-run"))  # a dry run writes nothing, not even a roll-back
    assert dry.returncode == 0, dry.stderr
    assert leftovers(folder) == left
    done = mktool(*export_args(db, out, "--channel", "sms"))
    assert done.returncode == 0, done.stderr
    assert leftovers(folder) == []  # the dead run's journal and staged files are gone
    assert_delivered_iff_recorded(db, folder)

    assert mktool(*export_args(db, out), fault="between_renames:kill").returncode == -signal.SIGKILL
    ingest = mktool("ingest", str(FIXTURES / "dnd.parquet"), "--db", str(db))  # any writer finishes it
    assert ingest.returncode == 0, ingest.stderr
    assert leftovers(folder) == []
    assert assert_delivered_iff_recorded(db, folder)["pending"] == (0,)


def test_a_journal_of_another_database_is_neither_finished_nor_deleted(base, tmp_path):
    db, out = copy_world(base, tmp_path / "a")
    other_db = tmp_path / "b.duckdb"
    shutil.copy(db, other_db)
    assert mktool(*export_args(db, out), fault="after_commit:kill").returncode == -signal.SIGKILL
    folder = cycle_dir(out, M, NEXT_DAY)
    left = leftovers(folder)
    refused = mktool(*export_args(other_db, out))
    assert refused.returncode == 1 and "another database" in refused.stderr and str(db) in refused.stderr
    assert leftovers(folder) == left
    assert mktool("funnel", "--month", M, "--db", str(db)).returncode == 0  # its own database finishes it
    assert leftovers(folder) == []
    assert_delivered_iff_recorded(db, folder)


# == a consumer of --out - that stops reading =====================================================
def sent_rows(db: Path, channel: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT msisdn, policy_id, cycle FROM contact_history WHERE outcome = 'sent' "
                           "AND channel = ? AND recorded_by = 'mktool' ORDER BY ALL", [channel]).fetchall()
    finally:
        con.close()


def test_a_pipe_closed_by_head_records_nothing_and_exits_1(base, tmp_path):
    db, out = copy_world(base, tmp_path)
    con = duckdb.connect(str(db))  # as if outbound had never been exported
    con.execute("DELETE FROM contact_history WHERE channel = 'outbound' AND outcome = 'sent' "
                "AND recorded_by = 'mktool'")
    con.close()
    assert (cycle_dir(out) / "outbound.csv").stat().st_size > 2 * 65536  # more than a pipe holds
    before = db_state(db)
    args = [sys.executable, "-m", "mktool", "export", "--month", M, "--date", D, "--out", "-", "--channel", "outbound",
            "--matrices", str(MATRICES), "--db", str(db), "--quiet"]
    producer = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-c", "100"], stdin=producer.stdout, stdout=subprocess.PIPE)
    assert producer.stdout is not None
    producer.stdout.close()  # head alone reads the pipe
    head_out, _ = head.communicate(timeout=120)
    stderr = producer.communicate(timeout=120)[1].decode()
    assert len(head_out) == 100
    assert producer.returncode == 1, stderr
    assert stderr.startswith("Error: ") and "closed the pipe" in stderr and "nothing was recorded" in stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert db_state(db) == before and sent_rows(db, "outbound") == []

    whole = tmp_path / "whole.csv"
    with open(whole, "wb") as fh:  # a consumer that reads it all: delivered, so recorded
        done = subprocess.run(args, env=ENV, stdout=fh, stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 0, done.stderr
    assert whole.read_bytes() == (cycle_dir(out) / "outbound.csv").read_bytes()
    assert sorted((m, p) for m, p, _ in sent_rows(db, "outbound")) == sorted(read_pairs(whole))
    assert {c for _, _, c in sent_rows(db, "outbound")} == {D}  # a daily channel: its cycle is the date


# == a re-export over older lists: no mix ===========================================================
def test_a_reexport_in_another_format_removes_the_old_lists_in_the_same_publish(base, tmp_path):
    db, out = copy_world(base, tmp_path)
    folder = cycle_dir(out)
    assert (folder / "sms.csv").exists()
    done = mktool(*export_args(db, out, "--format", "parquet", date=D))
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["app.parquet", "frontdesk.parquet", "funnel.json", "inbound.parquet", "manager.parquet",
                     "manifest.json", "outbound.parquet", "sms.parquet"]
    assert_delivered_iff_recorded(db, folder)
    # Killed between its renames, a jsonl re-export is finished by the next command: all jsonl, no parquet left.
    assert mktool(*export_args(db, out, "--format", "jsonl", date=D), fault="between_renames:kill").returncode == -9
    assert mktool("status", "--db", str(db)).returncode == 0
    assert sorted(p.suffix for p in folder.iterdir()
                  if p.name not in ("funnel.json", "manifest.json")) == [".jsonl"] * 6
    assert_delivered_iff_recorded(db, folder)


def test_a_one_channel_export_keeps_the_other_lists_and_their_manifest_entries(base, tmp_path):
    db, out = copy_world(base, tmp_path)
    folder = cycle_dir(out)
    first = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    done = mktool(*export_args(db, out, "--channel", "sms", date=D))  # a re-run of the same cycle, one channel
    assert done.returncode == 0, done.stderr
    state = assert_delivered_iff_recorded(db, folder)
    outputs = state["manifest"]["outputs"]
    assert outputs["sms.csv"]["run_id"] == state["manifest"]["run_id"] != first["run_id"]
    assert outputs["sms.csv"]["cycle"] == D
    for name in ("frontdesk.csv", "outbound.csv", "app.jsonl"):  # not re-exported: as they were, said so
        assert outputs[name] == first["outputs"][name] and outputs[name]["run_id"] == first["run_id"]


def test_a_folder_without_a_manifest_keeps_the_lists_it_does_not_replace_and_names_them(base, tmp_path):
    db, out = copy_world(base, tmp_path)
    folder = cycle_dir(out)
    (folder / "manifest.json").unlink()  # e.g. a folder written before manifests listed every file
    (folder / "sms.jsonl").write_text('{"msisdn": "13800000001", "policy_id": "X"}\n', encoding="utf-8")
    frontdesk = hashlib.sha256((folder / "frontdesk.csv").read_bytes()).hexdigest()
    done = mktool(*export_args(db, out, "--channel", "sms", date=D))
    assert done.returncode == 0, done.stderr
    outputs = assert_delivered_iff_recorded(db, folder)["manifest"]["outputs"]
    assert not (folder / "sms.jsonl").exists()  # sms in another format: replaced by sms.csv
    rows = len(read_pairs(folder / "frontdesk.csv"))
    assert outputs["frontdesk.csv"] == {"channel": "frontdesk", "rows": rows, "sha256": frontdesk}  # kept, as it is
    assert set(outputs) == {"app.jsonl", "frontdesk.csv", "inbound.csv", "manager.csv", "outbound.csv", "sms.csv"}


def test_a_channel_removed_from_the_rules_loses_its_list_and_that_cycle_s_records(base, tmp_path):
    db, out = copy_world(base, tmp_path)
    rules = tmp_path / "rules"
    shutil.copytree(MATRICES, rules)
    doc = yaml.safe_load((rules / "channels.yaml").read_text(encoding="utf-8"))
    del doc["channels"]["manager"]  # a monthly channel with a list in the base run
    (rules / "channels.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    for name in ("policies.yaml", "retention.yaml", "vnet.yaml"):  # and from what names it: the folder must check
        path = rules / name
        path.write_text(path.read_text(encoding="utf-8").replace(", manager]", "]").replace("[manager, ", "["),
                        encoding="utf-8")
    args = export_args(db, out, date=D)
    args[args.index(str(MATRICES))] = str(rules)
    folder = cycle_dir(out)
    assert {c for _, _, c in sent_rows(db, "manager")} == {D} and len(read_pairs(folder / "manager.csv")) > 10
    done = mktool(*args)
    assert done.returncode == 0, done.stderr
    assert not (folder / "manager.csv").exists()
    assert sent_rows(db, "manager") == []  # re-running cycle 2026-11-01 replaced its records, with none
    assert "channel:manager" not in json.loads((folder / "funnel.json").read_text(encoding="utf-8"))["funnels"]
    assert "manager.csv" not in json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["outputs"]
    assert_delivered_iff_recorded(db, folder)


# == Ctrl-C during `mktool run` ===================================================================
HOOK = r"""
import importlib, os, sys, time
target, marker = os.environ["MKTOOL_TEST_HOOK"].split("|")
module_name, _, func_name = target.rpartition(".")
module = importlib.import_module(module_name)
original = getattr(module, func_name)

def hooked(*args, **kwargs):
    with open(marker, "w") as fh:  # paused before the step starts: a Ctrl-C here finds it not begun
        fh.write(str(os.getpid()))
    time.sleep(120)
    return original(*args, **kwargs)

setattr(module, func_name, hooked)
sys.argv = ["mktool", *sys.argv[1:]]
from mktool.cli import main
main()
"""


def run_args(root: Path) -> list[str]:
    return ["run", "--month", M, "--ingest", str(FIXTURES), "--date", D, "--out", str(root / "out"),
            "--matrices", str(MATRICES), "--db", str(root / "mk.duckdb"), "--quiet"]


def test_ctrl_c_in_run_names_the_steps_that_had_committed(tmp_path):
    marker = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", HOOK, *run_args(tmp_path)],
                            env={**ENV, "MKTOOL_TEST_HOOK": f"mktool.plan.plan|{marker}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)  # a real Ctrl-C, during plan
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "nothing was committed" not in err.lower()
    assert "Interrupted during plan." in err and "Committed before it: ingest, score, matrix" in err
    assert "Not run: export" in err
    con = duckdb.connect(str(tmp_path / "mk.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) > 0 FROM recommendations").fetchone() == (True,)  # matrix did commit
    con.close()


def test_ctrl_c_in_run_after_the_export_committed_says_so(tmp_path):
    done = mktool(*run_args(tmp_path), fault="after_commit:interrupt")
    assert done.returncode == 130
    assert "Committed before it: ingest, score, matrix, plan" in done.stderr
    assert "had committed the contacts" in done.stderr and "nothing was committed" not in done.stderr
    assert mktool("status", "--db", str(tmp_path / "mk.duckdb")).returncode == 0
    assert_delivered_iff_recorded(tmp_path / "mk.duckdb", cycle_dir(tmp_path / "out"))
    stopped = mktool(*run_args(tmp_path / "again"), fault="write_list:interrupt")
    assert stopped.returncode == 130
    assert "Interrupted during export." in stopped.stderr and "export was interrupted before" in stopped.stderr


def test_the_interrupted_note_names_what_committed_wherever_the_ctrl_c_lands():
    from mktool.pipeline import _interrupted_note

    assert _interrupted_note([], ["score"], None) == (
        "Interrupted during score. Nothing was committed. score was interrupted before it finished (a step commits "
        "all or nothing). Not run: matrix, plan, export, evaluate. Re-run `mktool run` to finish.")
    between = _interrupted_note(["ingest", "score"], [], None)  # after score's commit, before matrix began
    assert between == ("Interrupted after score. Committed before it: ingest, score (their results are in the "
                       "database). Not run: matrix, plan, export, evaluate. Re-run `mktool run` to finish.")
    assert _interrupted_note(["score", "matrix", "plan"], ["export"], "Export note.") == (
        "Interrupted during export. Committed before it: score, matrix, plan (their results are in the database). "
        "Export note. Not run: evaluate. Re-run `mktool run` to finish.")


# == provenance ====================================================================================
def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_engine_info_names_the_connections_engine_and_refuses_to_guess() -> None:
    con = duckdb.connect()
    try:
        assert engine_info(con) == {"name": "duckdb", "version": duckdb.__version__}
    finally:
        con.close()
    with pytest.raises(TypeError, match="engine_info: no engine known for a object connection"):
        engine_info(object())


def test_the_manifest_names_engines_command_line_overrides_and_the_rules_commit(tmp_path):
    rules = tmp_path / "repo" / "rules"
    shutil.copytree(MATRICES, rules)
    git(tmp_path / "repo", "init", "-q")
    git(tmp_path / "repo", "add", ".")
    git(tmp_path / "repo", "commit", "-q", "-m", "rules")
    commit = git(tmp_path / "repo", "rev-parse", "HEAD")
    db, out = tmp_path / "mk.duckdb", tmp_path / "out"
    common = ["--matrices", str(rules), "--db", str(db), "--quiet"]
    for args in (["ingest", str(FIXTURES)], ["score", "--month", M, "--param", "churn_flag_at=40"],
                 ["matrix", "--month", M], ["plan", "--month", M, "--top", "2", "--total-change", "0.7:1.3"]):
        done = mktool(*args, *common)
        assert done.returncode == 0, (args, done.stderr)
    export = ["export", "--month", M, "--date", D, "--out", str(out), "--channel", "sms", *common]
    done = mktool(*export)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((cycle_dir(out) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["engines"] == {"mktool": manifest["mktool_version"], "python": platform.python_version(),
                                   "duckdb": duckdb.__version__, "sqlglot": sqlglot.__version__,
                                   "pyarrow": pyarrow.__version__}
    assert manifest["engine"] == {"name": "duckdb", "version": duckdb.__version__}  # the one the lists came from
    assert manifest["command_line"] == ["mktool", *export]
    assert manifest["overrides"] == {"score": {"--param": {"churn_flag_at": 40}},
                                     "plan": {"--top": "2", "--total-change": "0.7:1.3"}}
    assert manifest["steps"]["plan"]["settings"]["top"] == 2
    assert manifest["steps"]["plan"]["settings"]["total_change"] == "0.7:1.3"
    assert manifest["steps"]["score"]["settings"]["params"]["churn_flag_at"] == 40
    assert manifest["steps"]["plan"]["command_line"][:2] == ["mktool", "plan"]
    assert manifest["export"]["channel"] == "sms" and manifest["export"]["date"] == D
    assert manifest["rules"] == {"folder": str(rules.resolve()), "git": {
        "repository": str((tmp_path / "repo").resolve()), "commit": commit, "dirty": False},
        "matrix_step_same_rules": True}

    (rules / "scores.yaml").write_text((rules / "scores.yaml").read_text(encoding="utf-8") + "# edited\n",
                                       encoding="utf-8")
    assert mktool(*export).returncode == 0
    manifest = json.loads((cycle_dir(out) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["rules"]["git"]["commit"] == commit and manifest["rules"]["git"]["dirty"] is True
    assert manifest["rules"]["matrix_step_same_rules"] is False  # the matrices were evaluated before the edit
    git(tmp_path / "repo", "commit", "-q", "-am", "edit")
    (rules / "notes.txt").write_text("a file not committed yet\n", encoding="utf-8")
    assert mktool(*export).returncode == 0
    manifest = json.loads((cycle_dir(out) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["rules"]["git"]["dirty"] is True  # untracked files in the rules folder count
    assert manifest["rules"]["git"]["commit"] == git(tmp_path / "repo", "rev-parse", "HEAD") != commit

    done = mktool(*run_args(tmp_path / "plain"))  # no overrides: none named; the plan's settings still are
    assert done.returncode == 0, done.stderr
    manifest = json.loads((cycle_dir(tmp_path / "plain" / "out") / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["overrides"] == {} and manifest["steps"]["plan"]["settings"]["top"] == 1


def test_rules_outside_a_git_repository_have_no_commit(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(MATRICES, rules)
    if subprocess.run(["git", "-C", str(rules), "rev-parse"], capture_output=True).returncode == 0:
        pytest.skip("the temporary folder is inside a git repository")
    args = run_args(tmp_path)
    args[args.index(str(MATRICES))] = str(rules)
    done = mktool(*args)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((cycle_dir(tmp_path / "out") / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["rules"] == {"folder": str(rules.resolve()), "git": None, "matrix_step_same_rules": True}
