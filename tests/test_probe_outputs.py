"""Adversarial probes of the output promises (issue 10 items 5-7) that the other tests did not cover.

Each test is a case found by probing the real command: a Ctrl-C that lands while mktool starts
or exits, standard output closed under ``--out -``, a ``--matrices`` folder that is not there
for ``mktool test``, and numbers Python accepts but no user means (``1_000``, ``+3``, ``٣``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, MATRICES, ROOT, cycle_dir

import mktool.cli as cli
from mktool.errors import EXIT_INTERRUPTED

PLAIN_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def start_mktool(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mktool", *args], cwd=cwd, env=PLAIN_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


# -- Ctrl-C outside a command's own handling ----------------------------------------------------
@pytest.mark.parametrize("delay", [0.02, 0.08, 0.15, 0.25, 0.35])
def test_ctrl_c_while_mktool_starts_exits_130_without_a_traceback(tmp_path: Path, delay: float) -> None:
    """A Ctrl-C during the imports (before any command runs) was a KeyboardInterrupt traceback and
    death by signal (-2): cron saw no `Interrupted` line, and a traceback without --verbose."""
    proc = start_mktool("status", "--db", str(tmp_path / "none.duckdb"), cwd=tmp_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == -signal.SIGINT and not err:
        # Earlier still: the signal came before the interpreter had installed its own SIGINT handler,
        # and the default action ended the process silently (seen once at 0.02 s on a loaded machine).
        return
    if "Fatal Python error: init_import_site" in err or "Could not import runpy module" in err:
        # The signal came while the interpreter itself was still starting (site.py, before any line of
        # mktool ran), or while it imported runpy for ``-m``: Python's own report, which no program can
        # catch. None of its frames is ours.
        assert "/mktool/" not in err, err
        return
    frames = re.findall(r'File "([^"]+)"', err)
    if frames and all(f.startswith("<frozen ") for f in frames) and err.rstrip().endswith("KeyboardInterrupt"):
        # The same, one step later: runpy (``python -m``) was still finding the mktool package, so
        # not one line of mktool had run yet; every frame of the traceback is the interpreter's own.
        return
    assert "Traceback" not in err
    # 1: it got far enough to say "no database"; 130: interrupted, and said so. (-SIGINT is what a
    # shell also reports as 130; a narrow window of it remains, see the report of this probe.)
    assert proc.returncode in (1, EXIT_INTERRUPTED, -signal.SIGINT), (proc.returncode, err)
    if proc.returncode != 1:
        assert "Interrupted" in err


@pytest.fixture(autouse=True)
def _sigint_restored():
    """cli.main ignores SIGINT once its command is over: give this test process its handler back."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_after_the_command_returned_is_130_not_death_by_signal(monkeypatch, capsys) -> None:
    """KeyboardInterrupt outside typer's handling (as the command returns, or a second SIGINT that
    DuckDB had already turned into an interrupt) propagated and Python died of SIGINT."""

    def app() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "Interrupted" in err and "nothing was committed" not in err  # it cannot know what had committed


def test_ctrl_c_already_reported_is_not_reported_twice(monkeypatch, capsys) -> None:
    def app() -> None:
        cli.INTERRUPT_REPORTED = True
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(cli, "INTERRUPT_REPORTED", False)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == ""


# -- standard output closed ---------------------------------------------------------------------
def _built(tmp_path: Path) -> Path:
    db = tmp_path / "mk.duckdb"
    done = subprocess.run([sys.executable, "-m", "mktool", "run", "--month", "2026-10", "--ingest",
                           str(FIXTURES), "--date", "2026-11-01", "--out", str(tmp_path / "out"),
                           "--db", str(db), "--matrices", str(MATRICES), "-q"],
                          cwd=tmp_path, env=PLAIN_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return db


def _sent(db: Path) -> int:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        return int(con.execute("SELECT count(*) FROM contact_history WHERE outcome = 'sent' AND recorded_by = 'mktool'"
                               " AND channel = 'manager'").fetchone()[0])


def test_export_to_a_closed_stdout_is_bad_input_and_records_nothing(tmp_path: Path) -> None:
    """`mktool export --channel manager --out - >&-` was exit 4 'internal error: AttributeError'."""
    db = _built(tmp_path)
    before = _sent(db)
    # Start the child with descriptor 1 closed, as `>&-` does.
    done = subprocess.run(
        [sys.executable, "-c", "import os, subprocess, sys; os.close(1); "
         "sys.exit(subprocess.call([sys.executable, '-m', 'mktool', 'export', '--month', '2026-10', '--date', "
         f"'2026-11-02', '--channel', 'manager', '--out', '-', '--db', {str(db)!r}, '--matrices', "
         f"{str(ROOT / 'matrices')!r}], stdout=None))"],
        cwd=tmp_path, env=PLAIN_ENV, capture_output=False, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert "standard output" in done.stderr and "nothing was recorded" in done.stderr
    assert _sent(db) == before


# -- the rules folder must exist ----------------------------------------------------------------
@pytest.mark.parametrize("where", ["missing", "file"])
def test_rule_tests_in_a_matrices_folder_that_is_not_there_is_bad_input(tmp_path: Path, where: str) -> None:
    """`mktool test --matrices /nonexistent` warned "no rule tests" and exited 0: CI passed on a typo."""
    folder = tmp_path / "nope"
    if where == "file":
        folder.write_text("x", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mktool", "test", "--matrices", str(folder)], cwd=tmp_path,
                          env=PLAIN_ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert str(folder) in done.stderr and "Traceback" not in done.stderr


# -- numbers as a person writes them ------------------------------------------------------------
@pytest.mark.parametrize("option,value", [
    ("--top", "1_000"), ("--top", "٣"), ("--top", "0x10"),
    ("--min-data", "1_0"), ("--min-data", "٣"), ("--min-data", "0x10"),
    ("--total-change", "0.6:1_5"), ("--rental-change", "١:2"),
])
def test_plan_numbers_python_would_accept_are_usage_errors(option: str, value: str) -> None:
    """int('1_000') and float('٣') are numbers to Python, not to a marketer or a cron line."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.app, ["plan", "--month", "2026-10", "--dry-run", option, value])
    assert result.exit_code == 2, result.output
    assert option in result.output


@pytest.mark.parametrize("option,value", [("--threads", "1_000"), ("--threads", "٣"), ("--wait", "1_0"),
                                          ("--wait", "٣")])
def test_setting_numbers_python_would_accept_are_usage_errors(option: str, value: str) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.app, ["status", option, value])
    assert result.exit_code == 2, result.output
    assert option in result.output


def test_typers_silent_130_gets_its_interrupted_line(monkeypatch, capsys) -> None:
    """typer turns a Ctrl-C while it parses the options into a bare exit 130 with nothing on stderr."""

    def app() -> None:
        raise SystemExit(EXIT_INTERRUPTED)

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(cli, "INTERRUPT_REPORTED", False)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == EXIT_INTERRUPTED
    assert "Interrupted" in capsys.readouterr().err


# -- provenance: the rules the recommendations were computed from --------------------------------
def test_manifest_names_the_rules_the_matrix_step_read_when_export_reads_others(tmp_path: Path) -> None:
    """matrix ran on folder A; export ran with --matrices B (a copy with one rule file edited). The
    manifest named only B and its commit: untrue for the recommendations in the lists."""
    import json
    import shutil

    a, b = tmp_path / "rules_a", tmp_path / "rules_b"
    shutil.copytree(MATRICES, a)
    shutil.copytree(MATRICES, b)
    edited = sorted(p for p in b.glob("*.yaml") if p.name not in ("channels.yaml", "policies.yaml", "plan.yaml",
                                                                  "scores.yaml"))[0]
    edited.write_text(edited.read_text(encoding="utf-8") + "\n# edited after the matrix step\n", encoding="utf-8")
    db, out = tmp_path / "mk.duckdb", tmp_path / "out"
    common = ["--db", str(db), "-q"]
    run = subprocess.run([sys.executable, "-m", "mktool", "run", "--month", "2026-10", "--ingest",
                          str(FIXTURES), "--date", "2026-11-01", "--out", str(out),
                          "--matrices", str(a), *common], cwd=tmp_path, env=PLAIN_ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    same = json.loads((cycle_dir(out, "2026-10", "2026-11-01") / "manifest.json").read_text(encoding="utf-8"))
    assert same["rules"]["matrix_step_same_rules"] is True
    export = subprocess.run([sys.executable, "-m", "mktool", "export", "--month", "2026-10", "--date", "2026-11-01",
                             "--out", str(out), "--matrices", str(b), *common], cwd=tmp_path, env=PLAIN_ENV,
                            capture_output=True, text=True)
    assert export.returncode == 0, export.stderr
    manifest = json.loads((cycle_dir(out, "2026-10", "2026-11-01") / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["rules"]["folder"] == str(b.resolve())
    assert manifest["rules"]["matrix_step_same_rules"] is False
    used = manifest["steps"]["matrix"]["settings"]["rules"]
    assert used["folder"] == str(a.resolve())
    import hashlib

    assert used["files"][edited.name] == hashlib.sha256((a / edited.name).read_bytes()).hexdigest()
    assert manifest["rule_files"][edited.name] == hashlib.sha256(edited.read_bytes()).hexdigest()


# -- two databases, one folder ------------------------------------------------------------------
def test_a_publish_waits_for_another_databases_publish_into_the_same_folder(tmp_path: Path) -> None:
    """The run lock is per database: two databases exporting into one folder renamed their files in
    turn, so the folder could hold one run's list beside the other run's manifest. A publish now
    holds the folder (an flock on it) from its recovery to its last rename."""
    import fcntl
    import json

    db = _built(tmp_path)
    folder = cycle_dir(tmp_path / "shared", "2026-10", "2026-11-01")  # the cycle folder, held as another publish would
    folder.mkdir(parents=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another database's publish would hold it
    try:
        proc = start_mktool("export", "--month", "2026-10", "--date", "2026-11-01", "--out", str(tmp_path / "shared"),
                            "--db", str(db), "--matrices", str(MATRICES), "-q", cwd=tmp_path)
        time.sleep(4)
        assert proc.poll() is None, proc.communicate()
        assert not (folder / "manifest.json").exists()
        assert not any(p.suffix in (".csv", ".jsonl") for p in folder.iterdir())
    finally:
        os.close(fd)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert {o["run_id"] for o in manifest["outputs"].values()} == {manifest["run_id"]}


# -- a full disk under --out ----------------------------------------------------------------------
def test_export_into_a_full_disk_says_it_in_one_plain_line(tmp_path: Path) -> None:
    """DuckDB's COPY failure came through as its JSON ({"exception_type":"IO",…,"errno":"28"})."""
    from test_cli_exit_codes import mounted_tmpfs

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    db = _built(tmp_path)
    with mounted_tmpfs(tmp_path / "full", "size=64k") as full:
        done = subprocess.run([sys.executable, "-m", "mktool", "export", "--month", "2026-10", "--date", "2026-11-01",
                               "--out", str(full / "out"), "--db", str(db), "--matrices", str(MATRICES), "-q"],
                              cwd=tmp_path, env=PLAIN_ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr
        first = done.stderr.splitlines()[0]
        assert first.startswith("Error: ") and "No space left on device" in first and str(full) in first
        assert "exception_type" not in done.stderr and "{" not in first
        assert "nothing was recorded" in first
        assert not list((full / "out").rglob("*"))  # the output folder as before: not even an empty cycle folder


def test_the_start_up_exit_code_is_the_documented_one() -> None:
    import mktool.__main__ as entry
    from mktool import errors

    assert entry.EXIT_INTERRUPTED == errors.EXIT_INTERRUPTED == 130


#: Importing the CLI with a Ctrl-C landing in the middle of it, deterministically: the import of
#: mktool.cli signals the process itself while it runs Python code for a native module that, like
#: DuckDB's (nanobind, defining its enums), aborts the process if that code raises.
CTRL_C_DURING_IMPORT = """
import builtins, os, signal, sys, time
import mktool.__main__ as entry
real_import = builtins.__import__
def import_interrupted(name, *args, **kw):
    if name == "mktool.cli":
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(50):
                time.sleep(0.01)
        except BaseException:
            os.write(2, b"Critical nanobind error: enum_append\\n")
            os.abort()
        sys.stderr.write("imported on\\n")
    return real_import(name, *args, **kw)
builtins.__import__ = import_interrupted
sys.argv = ["mktool", "status", "--db", "none.duckdb"]
entry.main()
"""


def test_a_ctrl_c_while_the_cli_imports_ends_at_once_with_130_and_one_line(tmp_path: Path) -> None:
    """Seen in CI: a Ctrl-C raised as KeyboardInterrupt while DuckDB's native module defined its
    enums aborted Python ("Critical nanobind error", SIGABRT) with a traceback. During the import
    the handler ends mktool itself; no exception is raised anywhere."""
    done = subprocess.run([sys.executable, "-c", CTRL_C_DURING_IMPORT], cwd=tmp_path, env=PLAIN_ENV,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (EXIT_INTERRUPTED, "Interrupted; nothing was committed.\n")


def test_a_process_started_deaf_to_ctrl_c_stays_deaf_while_the_cli_imports(tmp_path: Path) -> None:
    """``cmd &`` from a script starts mktool with SIGINT ignored; the import guard must not make it
    interruptible (it would end a background job that the shell meant to shield)."""
    done = subprocess.run([sys.executable, "-c", CTRL_C_DURING_IMPORT], cwd=tmp_path, env=PLAIN_ENV,
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.returncode == 1, done.stderr  # status went on and said "no database"
    assert done.stderr.startswith("imported on\n") and "no database" in done.stderr


def test_the_import_guard_gives_python_its_ctrl_c_back_for_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import mktool.__main__ as entry

    during: list[object] = []
    monkeypatch.setattr(cli, "main", lambda: during.append(("command", signal.getsignal(signal.SIGINT))))
    import builtins

    real_import = builtins.__import__

    def watching_import(name: str, *args: object, **kw: object) -> object:
        if name == "mktool.cli":
            during.append(("import", signal.getsignal(signal.SIGINT)))
        return real_import(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", watching_import)
    entry.main()
    assert during == [("import", entry._end_at_once), ("command", signal.default_int_handler)]


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_ctrl_c_that_python_wraps_while_importing_is_still_an_interrupt(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], wrapped: bool) -> None:
    """Python 3.11 reports a KeyboardInterrupt inside a dataclass's ``__set_name__`` as a RuntimeError
    caused by it (seen under load: a traceback ending in "... in 'MonthEvaluation'"); the start-up
    guard treats both as a Ctrl-C, and any other import error still propagates."""
    import builtins

    import mktool.__main__ as entry

    real_import = builtins.__import__

    def interrupted_import(name: str, *args: object, **kw: object) -> object:
        if name == "mktool.cli":
            if not wrapped:
                raise KeyboardInterrupt
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as cause:
                raise RuntimeError("Error calling __set_name__ on '_HAS_DEFAULT_FACTORY_CLASS' instance") from cause
        return real_import(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    with pytest.raises(SystemExit) as exc:
        entry.main()
    assert exc.value.code == entry.EXIT_INTERRUPTED
    assert "Interrupted; nothing was committed." in capsys.readouterr().err


def test_an_import_error_at_start_up_is_not_taken_for_a_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    import mktool.__main__ as entry

    real_import = builtins.__import__

    def broken_import(name: str, *args: object, **kw: object) -> object:
        if name == "mktool.cli":
            raise RuntimeError("a real bug")
        return real_import(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", broken_import)
    with pytest.raises(RuntimeError, match="a real bug"):
        entry.main()
