"""Exit codes cron can trust (issue 10, item 6), each case through the command line.

2 usage: a bad option value (a fixed format or vocabulary) is refused by its type before any
  work, with the usage line and the option named; environment twins get the same check.
1 bad input: OS errors (read-only, not a folder, a folder where a file is wanted, no space)
  and unreadable database files, in one ``Error:`` line naming the path, nothing half-written.
4 internal: anything unexpected, traceback only with --verbose; 130 on Ctrl-C.
Also: option values never reach SQL as text, and rich output shows values as written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from conftest import MATRICES, ROOT, M, write_table
from rich.console import Console

from mktool.cli import app, render_table
from mktool.config import Settings, check_lock_wait, check_memory_limit, check_threads
from mktool.console import Reporter
from mktool.database import Database, RunLock
from mktool.errors import UsageError

MSISDNS = ["13800000001", "13800000002", "13800000003"]


# -- helpers -------------------------------------------------------------------------------------
def extracts(folder: Path) -> Path:
    """The four required tables for month M, three customers (enough to score and write --out)."""
    write_table(folder / f"subscribers_{M}.parquet", "subscribers",
                [{"msisdn": m, "month": M} for m in MSISDNS])
    write_table(folder / f"usage_{M}.parquet", "usage", [{"msisdn": m, "month": M} for m in MSISDNS])
    write_table(folder / f"billing_{M}.parquet", "billing", [{"msisdn": m, "month": M} for m in MSISDNS])
    write_table(folder / "plans.parquet", "plans", [{"plan_id": "ZX128"}])
    return folder


def no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def usage_refused(result, option: str) -> None:
    """Exit 2 with click's usage line and the option named, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Usage: " in result.stderr, result.stderr
    assert f"Invalid value for '{option}'" in result.stderr, result.stderr
    no_traceback(result)


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A real read-only or tiny file system (root can write through chmod, not through these)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "ro"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with mounted_tmpfs(folder, "ro,size=1m") as mounted:
        yield mounted


# -- 2: bad option values, on every command that has the option ------------------------------------
MONTH_COMMANDS = [
    ["score"], ["matrix"], ["plan"], ["export"], ["funnel"], ["run"], ["explain", "13800000001"],
    ["check"], ["test"], ["snapshot"], ["diff", "--against-matrices", str(MATRICES)], ["evaluate", "churn"],
    ["factors"],
]


@pytest.mark.parametrize("command", MONTH_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("month", ["2026/10", "2026-7", "2026-13", "2026-00", "26-10", "2026-10-01", "", "２０２６-10"])
def test_bad_month_is_a_usage_error_everywhere(cli, command: list[str], month: str) -> None:
    result = cli(*command, "--month", month, "--matrices", str(MATRICES))
    usage_refused(result, "--month")
    assert "YYYY-MM" in result.stderr
    assert not cli.db.exists()  # refused before the database was opened


DATE_COMMANDS = [["export", "--month", M], ["run", "--month", M], ["snapshot", "--month", M],
                 ["diff", "--month", M, "--against-matrices", str(MATRICES)]]


@pytest.mark.parametrize("command", DATE_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("date", ["2026-11-1", "2026-02-30", "20261101", "2026-11-01T00:00", "tomorrow"])
def test_bad_date_is_a_usage_error(cli, command: list[str], date: str) -> None:
    result = cli(*command, "--date", date, "--matrices", str(MATRICES))
    usage_refused(result, "--date")
    assert not cli.db.exists()


FORMAT_COMMANDS = [
    (["status"], "table, json"), (["score", "--month", M], "csv, parquet, jsonl"),
    (["matrix", "--month", M], "csv, parquet, jsonl"), (["plan", "--month", M], "csv, parquet, jsonl, table, json"),
    (["export", "--month", M], "csv, parquet, jsonl"), (["run", "--month", M], "csv, parquet, jsonl"),
    (["funnel", "--month", M], "table, json, csv"), (["check"], "text, json"),
    (["explain", "13800000001", "--month", M], "table, json"), (["test"], "table, json"),
    (["snapshot", "--month", M], "table, json"), (["diff", "a", "b"], "table, json, csv, markdown"),
    (["evaluate", "churn", "--month", M], "table, json, csv"), (["factors", "--month", M], "table, json, csv"),
]


@pytest.mark.parametrize(("command", "choices"), FORMAT_COMMANDS, ids=lambda c: c[0] if isinstance(c, list) else "")
def test_unknown_format_is_a_usage_error_on_every_command(cli, command: list[str], choices: str) -> None:
    result = cli(*command, "--format", "xyz", "--matrices", str(MATRICES))
    usage_refused(result, "--format")
    assert f"'xyz' is not one of {choices}" in result.stderr
    assert not cli.db.exists()


@pytest.mark.parametrize(("args", "option", "says"), [
    (["plan", "--month", M, "--total-change", "abc"], "--total-change", "expected LO:HI"),
    (["plan", "--month", M, "--total-change", "1.5:0.6"], "--total-change", "LO (1.5) is greater than HI (0.6)"),
    (["plan", "--month", M, "--rental-change", "nan:2"], "--rental-change", "LO"),
    (["plan", "--month", M, "--sweep", "--sweep-total", "0:1"], "--sweep-total", "positive"),
    (["plan", "--month", M, "--top", "0"], "--top", "at least 1"),
    (["plan", "--month", M, "--top", "two"], "--top", "whole number"),
    (["plan", "--month", M, "--min-data", "nan"], "--min-data", "finite"),
    (["plan", "--month", M, "--min-data", "-1"], "--min-data", "at least 0"),
    (["export", "--month", M, "--channel", "fax"], "--channel", "unknown channel 'fax'"),
    (["export", "--month", M, "--cycle", "weekly"], "--cycle", "'weekly' is not one of daily, monthly"),
    (["matrix", "--month", M, "--show-sql", "oracle"], "--show-sql", "'oracle' is not one of duckdb, spark"),
    (["matrix", "--month", M, "--only", "retension"], "--only", "retension"),
    (["ingest", "x.parquet", "--table", "bills"], "--table", "'bills' is not one of"),
    (["score", "--month", M, "--param", "churn_flag_at"], "--param", "expected name=value"),
    (["score", "--month", M, "--param", "=3"], "--param", "expected name=value"),
    (["score", "--month", M, "--param", "churn_flag_att=3"], "--param", "has no parameter 'churn_flag_att'"),
    (["explain", "1380000004", "--month", M], "MSISDN", "11 digits"),
    (["explain", "1380000004x", "--month", M], "MSISDN", "11 digits"),
    (["status", "--threads", "-1"], "--threads", "at least 1"),
    (["status", "--threads", "0"], "--threads", "at least 1"),
    (["status", "--threads", "2.5"], "--threads", "whole number"),
    (["status", "--wait", "nan"], "--wait", "finite"),
    (["status", "--wait", "inf"], "--wait", "finite"),
    (["status", "--wait", "-1"], "--wait", "0 or more"),
    (["status", "--memory-limit", "1GB'; CREATE TABLE x(i INT); --"], "--memory-limit", "a size such as 8GB"),
    (["status", "--memory-limit", "lots"], "--memory-limit", "a size such as 8GB"),
    (["status", "--memory-limit", "0GB"], "--memory-limit", "at least 16MiB"),
    (["status", "--memory-limit", "10KB"], "--memory-limit", "at least 16MiB"),
    (["status", "--memory-limit", "0%"], "--memory-limit", "more than 0"),
    (["status", "--memory-limit", "150%"], "--memory-limit", "at most 100%"),
])
def test_bad_option_value_is_a_usage_error(cli, args: list[str], option: str, says: str) -> None:
    result = cli(*args, "--matrices", str(MATRICES))
    usage_refused(result, option)
    assert says in result.stderr, result.stderr
    assert not cli.db.exists()


@pytest.mark.parametrize(("name", "value", "option"), [
    ("MKTOOL_THREADS", "0", "--threads"), ("MKTOOL_THREADS", "-1", "--threads"),
    ("MKTOOL_LOCK_WAIT", "nan", "--wait"), ("MKTOOL_MEMORY_LIMIT", "1GB'; CREATE TABLE x(i INT); --", "--memory-limit"),
])
def test_environment_twins_get_the_same_check(cli, monkeypatch, name: str, value: str, option: str) -> None:
    monkeypatch.setenv(name, value)
    result = cli("status")
    usage_refused(result, option)
    assert f"env var: '{name}'" in result.stderr


@pytest.mark.parametrize(("args", "options"), [
    (["export", "--month", M, "--out", "-"], "'--out' / '--channel'"),
    (["plan", "--month", M, "--dry-run", "--out", "x.csv"], "'--dry-run' / '--out'"),
    (["plan", "--month", M, "--sweep", "--format", "parquet"], "'--format'"),
    (["plan", "--month", M, "--format", "table", "--out", "x.csv"], "'--format'"),
    (["snapshot", "--write", "--check"], "'--write' / '--check'"),
    (["diff", "only-one"], "'FOLDERS'"),
])
def test_options_that_do_not_go_together_are_usage_errors(cli, args: list[str], options: str) -> None:
    result = cli(*args, "--matrices", str(MATRICES))
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {options}" in result.stderr and "Usage: " in result.stderr
    no_traceback(result)


def test_good_values_still_pass(cli, tmp_path: Path) -> None:
    assert cli("ingest", str(extracts(tmp_path / "x")), "--memory-limit", "512MB", "--threads", "1",
               "--wait", "0.5").exit_code == 0
    for limit in ("1.5GiB", "50%", "2 GB", "800mb", "1G", "512M", "16MiB", "1gigabyte"):
        result = cli("status", "--format", "json", "--memory-limit", limit)
        assert result.exit_code == 0, result.output


# -- option values never reach SQL as text -----------------------------------------------------------
INJECTION = "1GB'; CREATE TABLE pwned AS SELECT 1 AS i; --"


def test_settings_refuse_injection_whatever_the_caller(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="memory limit must be a size"):
        Settings(db_path=tmp_path / "a.duckdb", memory_limit=INJECTION)
    # The environment twins are read by the command line only (test_environment_twins_get_the_same_check);
    # a library caller passing the same text as a value gets the same refusal.
    with pytest.raises(UsageError, match="threads must be a whole number"):
        Settings.from_options(db=tmp_path / "a.duckdb", threads="1; DROP TABLE x")  # type: ignore[arg-type]
    # A caller that changes the field after construction still cannot reach the SET statement.
    settings = Settings(db_path=tmp_path / "a.duckdb", memory_limit="1GB", threads=1)
    settings.memory_limit = INJECTION
    with pytest.raises(UsageError), Database(settings, write=True):
        pass
    assert not (tmp_path / "a.duckdb").exists()
    assert check_memory_limit(" 8GB ") == "8GB" and check_threads("3") == 3 and check_lock_wait("0.5") == 0.5
    for bad in (True, 0, -2, "1.5", 1.5, "x"):
        with pytest.raises(UsageError):
            check_threads(bad)


def test_settings_are_bound_not_spliced(tmp_path: Path) -> None:
    """A spill folder with a quote in its name works, and the limits are what was asked."""
    spill = tmp_path / "it's here"
    settings = Settings(db_path=tmp_path / "b.duckdb", memory_limit="512MiB", threads=2, temp_dir=spill)
    with Database(settings, write=True) as db:
        got = db.c.execute("SELECT current_setting('memory_limit'), current_setting('threads'), "
                           "current_setting('temp_directory')").fetchone()
        tables = {r[0] for r in db.c.execute("SHOW TABLES").fetchall()}
    assert got == ("512.0 MiB", 2, str(spill))
    assert "pwned" not in tables


def test_cli_memory_limit_injection_runs_nothing(cli, tmp_path: Path) -> None:
    assert cli("ingest", str(extracts(tmp_path / "x"))).exit_code == 0
    result = cli("status", "--memory-limit", INJECTION)
    assert result.exit_code == 2
    assert "pwned" not in {r[0] for r in duckdb.connect(str(cli.db), read_only=True).execute("SHOW TABLES").fetchall()}


def test_wait_nan_does_not_wait_forever(tmp_path: Path) -> None:
    """Even past the CLI: a lock wait of nan would never reach its deadline."""
    with pytest.raises(UsageError, match="finite"):
        Settings(db_path=tmp_path / "c.duckdb", lock_wait=float("nan"))
    with pytest.raises(UsageError, match="finite"):
        Settings(db_path=tmp_path / "c.duckdb", lock_wait=float("inf"))


# -- 1: OS errors name the path, once, and leave nothing behind ---------------------------------------
def test_out_file_in_a_read_only_folder(cli, read_only_dir: Path) -> None:
    target = read_only_dir / "view.csv"
    result = cli("score", "--month", M, "--out", str(target))
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    assert str(read_only_dir) in line and ("Read-only file system" in line or "Permission denied" in line)
    no_traceback(result)
    assert not cli.db.exists()  # refused before any work: no database was made
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.parametrize("command", [["export", "--month", M], ["run", "--month", M]], ids=lambda c: c[0])
def test_out_folder_that_is_a_file(cli, tmp_path: Path, command: list[str]) -> None:
    existing = tmp_path / "lists"
    existing.write_text("not a folder")
    result = cli(*command, "--out", str(existing), "--matrices", str(MATRICES))
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    assert str(existing) in line and "is a file" in line
    no_traceback(result)
    assert existing.read_text() == "not a folder" and not cli.db.exists()


def test_out_below_a_file(cli, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    result = cli("score", "--month", M, "--out", str(tmp_path / "plain" / "sub" / "view.csv"))
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert str(tmp_path / "plain") in line and "not a folder" in line
    no_traceback(result)


def test_out_file_that_is_a_folder(cli, tmp_path: Path) -> None:
    result = cli("score", "--month", M, "--out", str(tmp_path))
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert str(tmp_path) in line and "is a folder" in line


def test_export_out_in_a_read_only_folder(cli, read_only_dir: Path) -> None:
    result = cli("export", "--month", M, "--out", str(read_only_dir / "lists"), "--matrices", str(MATRICES))
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    assert str(read_only_dir) in line
    no_traceback(result)


def test_db_in_a_read_only_folder(cli, tmp_path: Path, read_only_dir: Path) -> None:
    db = read_only_dir / "mk.duckdb"
    result = cli("ingest", str(extracts(tmp_path / "x")), db_path=db)
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    assert str(db) in line
    no_traceback(result)


def test_a_database_on_a_read_only_disk_can_be_read_not_written(cli, tmp_path: Path) -> None:
    """Readers need no lock and no spill folder there (no writer can exist); writers get one line."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    with mounted_tmpfs(tmp_path / "disk", "size=8m") as disk:
        db = disk / "mk.duckdb"
        assert cli("ingest", str(extracts(tmp_path / "x")), db_path=db).exit_code == 0
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        status = cli("status", "--format", "json", db_path=db)
        assert status.exit_code == 0, status.output
        assert {r["table"] for r in json.loads(status.stdout) if r["rows"]} >= {"subscribers", "usage"}
        result = cli("ingest", str(tmp_path / "x"), db_path=db)
        assert result.exit_code == 1, result.output
        [line] = error_lines(result.stderr)
        assert str(disk) in line and "Read-only file system" in line
        no_traceback(result)
        explicit = cli("status", "--temp-dir", str(disk / "spill"), db_path=db)
        assert explicit.exit_code == 1 and "Read-only file system" in explicit.stderr


def test_temp_dir_read_only_leaves_no_database(cli, tmp_path: Path, read_only_dir: Path) -> None:
    result = cli("ingest", str(extracts(tmp_path / "x")), "--temp-dir", str(read_only_dir))
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    assert str(read_only_dir) in line
    no_traceback(result)
    assert not cli.db.exists()  # the database this command would have created is gone again


def test_temp_dir_that_is_a_file(cli, tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.write_text("x")
    result = cli("ingest", str(extracts(tmp_path / "x")), "--temp-dir", str(spill))
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert str(spill) in line and "is a file" in line
    assert not cli.db.exists() and spill.read_text() == "x"


def test_no_space_left_for_the_database(cli, tmp_path: Path) -> None:
    """16 KB: the write-ahead log does not fit, the commit fails, the new database is removed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    with mounted_tmpfs(tmp_path / "full", "size=16k") as full:
        db = full / "mk.duckdb"
        result = cli("ingest", str(extracts(tmp_path / "x")), "--temp-dir", str(tmp_path / "spill"), db_path=db)
        assert result.exit_code == 1, result.output
        [line] = error_lines(result.stderr)
        assert "No space left on device" in line and str(full) in line
        no_traceback(result)
        assert not db.exists() and not db.with_name(db.name + ".wal").exists()


def test_no_space_left_after_the_commit_says_what_was_kept(cli, tmp_path: Path) -> None:
    """32 KB: the commit reaches the write-ahead log, the checkpoint does not fit; the message says
    the step is committed, and once there is room the next command sees it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    with mounted_tmpfs(tmp_path / "full", "size=32k") as full:
        db = full / "mk.duckdb"
        result = cli("ingest", str(extracts(tmp_path / "x")), "--temp-dir", str(tmp_path / "spill"), db_path=db)
        assert result.exit_code == 1, result.output
        [line] = error_lines(result.stderr)
        assert "committed to the write-ahead log" in line and "No space left on device" in line and str(db) in line
        no_traceback(result)
        subprocess.run(["mount", "-o", "remount,size=4m", str(full)], check=True)
        status = cli("status", "--format", "json", "--temp-dir", str(tmp_path / "spill"), db_path=db)
        assert status.exit_code == 0, status.output
        assert {r["table"] for r in json.loads(status.stdout) if r["rows"]} >= {
            "subscribers", "usage", "billing", "plans"}


# -- 1: a --db that is not a readable database ------------------------------------------------------
def test_db_that_is_a_folder(cli, tmp_path: Path) -> None:
    folder = tmp_path / "data.duckdb"
    folder.mkdir()
    for command in (["status"], ["ingest", str(extracts(tmp_path / "x"))]):
        result = cli(*command, db_path=folder)
        assert result.exit_code == 1, result.output
        [line] = error_lines(result.stderr)
        assert str(folder) in line and "is a folder" in line
        no_traceback(result)
    assert list(folder.iterdir()) == []


def _real_db(path: Path) -> bytes:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE ingest_log AS SELECT range::VARCHAR AS load_id FROM range(200000)")
    con.close()
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "checksum"])
def test_db_that_is_damaged(cli, tmp_path: Path, damage: str) -> None:
    db = tmp_path / "damaged.duckdb"
    data = _real_db(db)
    if damage == "truncated":
        db.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        db.write_bytes(b"hello, not a database\n" * 500)
    elif damage == "empty":
        db.write_bytes(b"")
    else:
        broken = bytearray(data)
        broken[5000:9000] = b"\xff" * 4000
        db.write_bytes(bytes(broken))
    before = db.read_bytes()
    for command in (["status"], ["score", "--month", M]):
        result = cli(*command, db_path=db)
        assert result.exit_code == 1, result.output
        [line] = error_lines(result.stderr)
        assert str(db) in line and "cannot open the database" in line
        no_traceback(result)
    assert db.read_bytes() == before


@pytest.mark.parametrize("damage", ["page data", "page header", "truncated"])
def test_a_damaged_parquet_extract_is_bad_input(cli, tmp_path: Path, damage: str) -> None:
    """Exit 1 naming the file, whether DuckDB names it (bad UTF-8 in a page) or not (a page
    header it cannot decode: "don't know what type"), and no database is left behind."""
    import pyarrow.parquet as pq

    folder = extracts(tmp_path / "x")
    usage = folder / f"usage_{M}.parquet"
    many = [f"138{i:08d}" for i in range(5000)]
    write_table(usage, "usage", [{"msisdn": m, "month": M} for m in many])
    pq.write_table(pq.read_table(usage), usage, compression="none")  # page bytes as they are on disk
    raw = bytearray(usage.read_bytes())
    if damage == "page data":
        middle = len(raw) // 2
        raw[middle:middle + 2000] = b"\xff" * 2000
    elif damage == "page header":
        raw[4:40] = b"\xff" * 36  # just after the PAR1 magic: the first page header
    else:
        raw = raw[: len(raw) * 2 // 3]
    usage.write_bytes(bytes(raw))
    result = cli("ingest", str(folder))
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    assert str(usage) in line, line
    no_traceback(result)
    assert not cli.db.exists()
    run = cli("run", "--month", M, "--ingest", str(folder), "--out", str(tmp_path / "out"), "--date", "2026-11-01",
              "--matrices", str(MATRICES))
    assert run.exit_code == 1 and str(usage) in run.stderr
    assert not cli.db.exists() and not (tmp_path / "out").exists()


def test_environment_twins_of_paths_are_checked_like_the_options(runner, monkeypatch, tmp_path: Path) -> None:
    folder = tmp_path / "db-folder"
    folder.mkdir()
    monkeypatch.setenv("MKTOOL_DB", str(folder))
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 1 and str(folder) in result.stderr and "is a folder" in result.stderr
    no_traceback(result)
    spill = tmp_path / "spill-file"
    spill.write_text("x")
    monkeypatch.setenv("MKTOOL_DB", str(tmp_path / "mk.duckdb"))
    monkeypatch.setenv("MKTOOL_TEMP_DIR", str(spill))
    result = runner.invoke(app, ["ingest", str(extracts(tmp_path / "x"))])
    assert result.exit_code == 1 and str(spill) in result.stderr and "is a file" in result.stderr
    assert not (tmp_path / "mk.duckdb").exists()


# -- rich output shows values as written ------------------------------------------------------------
def _recording() -> tuple[Reporter, io.StringIO]:
    buf = io.StringIO()
    return Reporter(console=Console(file=buf, width=200, highlight=False, color_system=None)), buf


@pytest.mark.parametrize("value", ["[/]", "[bold]x", "a[/red]b", "[arpu]", "\\[x]", "[link=http://e]y"])
def test_messages_and_cells_are_escaped_exactly_once(value: str) -> None:
    reporter, buf = _recording()
    reporter.info(f"info {value}")
    reporter.warn(f"warn {value}")
    reporter.error(f"error {value}")
    reporter.verbose = True
    reporter.debug(f"debug {value}")
    render_table(reporter, f"title {value}", [f"col {value}"], [(f"cell {value}",), (None,)])
    text = buf.getvalue()
    for word in ("info", "warn", "error", "debug", "title", "col", "cell"):
        assert f"{word} {value}" in text, (word, text)


def test_a_path_with_markup_prints_as_written(cli, tmp_path: Path) -> None:
    folder = tmp_path / "a[/]b[bold]c"
    db = folder / "mk.duckdb"
    assert cli("ingest", str(extracts(tmp_path / "x")), db_path=db).exit_code == 0
    result = cli("status", db_path=db)
    assert result.exit_code == 0, result.output
    assert "a[/]b[bold]c/mk.duckdb" in "".join(line.strip() for line in result.stdout.splitlines())
    missing = cli("status", db_path=folder / "nope.duckdb")
    assert missing.exit_code == 1 and str(folder / "nope.duckdb") in missing.stderr
    assert "\\[" not in missing.stderr


def test_an_error_line_is_escaped_once(tmp_path: Path, runner) -> None:
    """`mktool check` problems carry the file's own text such as [arpu]; `\\[arpu]` was the double escape."""
    import shutil

    matrices = tmp_path / "m"
    shutil.copytree(MATRICES, matrices)
    retention = matrices / "retention.yaml"
    retention.write_text(retention.read_text(encoding="utf-8").replace(
        "matrix: retention\n", "matrix: retention\n'wen[arpu]': x\n", 1), encoding="utf-8")
    result = runner.invoke(app, ["check", "--matrices", str(matrices), "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 1
    assert "wen[arpu]" in result.stderr and "\\[" not in result.stderr


# -- 4 and 130, and the traceback rule, in a real process ----------------------------------------------
def _mktool(args: list[str], *, patch: str = "", env: dict[str, str] | None = None,
            **kwargs) -> subprocess.Popen:
    """Run the real entry point; ``patch`` is Python run first (to plant a bug or an interrupt)."""
    code = f"import sys\nimport mktool.cli\n{patch}\nsys.argv = ['mktool', *sys.argv[1:]]\nmktool.cli.main()\n"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=kwargs.pop("cwd", None),
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, **kwargs)


BUG = "import mktool.ingest\nmktool.ingest.status = lambda db: {}['no such key']"


def test_unexpected_error_exits_4_without_traceback(cli, tmp_path: Path) -> None:
    assert cli("ingest", str(extracts(tmp_path / "x"))).exit_code == 0
    proc = _mktool(["status", "--db", str(cli.db)], patch=BUG)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    assert error_lines(err) == ["Error: internal error: KeyError: 'no such key'"]
    assert "Traceback" not in err and "--verbose" in err


def test_unexpected_error_shows_the_traceback_with_verbose(cli, tmp_path: Path) -> None:
    assert cli("ingest", str(extracts(tmp_path / "x"))).exit_code == 0
    proc = _mktool(["status", "--db", str(cli.db), "--verbose"], patch=BUG)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4
    assert "Traceback (most recent call last)" in err and "KeyError" in err
    assert "Error: internal error: KeyError" in err


def test_a_usage_error_in_a_real_process_exits_2(tmp_path: Path) -> None:
    proc = _mktool(["status", "--format", "xyz", "--db", str(tmp_path / "x.duckdb")])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Invalid value for '--format'" in err and "Traceback" not in err


def test_interrupt_exits_130(cli, tmp_path: Path) -> None:
    assert cli("ingest", str(extracts(tmp_path / "x"))).exit_code == 0
    proc = _mktool(["status", "--db", str(cli.db)],
                   patch="import mktool.ingest\n"
                         "def interrupted(db):\n    raise KeyboardInterrupt\n"
                         "mktool.ingest.status = interrupted")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err


def test_ctrl_c_while_waiting_for_the_lock_exits_130(cli, tmp_path: Path) -> None:
    """A real SIGINT: the run waits (--wait 60) behind a writer's lock and is interrupted."""
    assert cli("ingest", str(extracts(tmp_path / "x"))).exit_code == 0
    with RunLock(cli.db, exclusive=True, wait=0):
        proc = _mktool(["status", "--db", str(cli.db), "--wait", "60"])
        deadline = time.monotonic() + 60
        lock_file = cli.db.with_name(cli.db.name + ".lock")
        # The waiting process is inside the lock loop once it has opened the lock file.
        while time.monotonic() < deadline and proc.poll() is None:
            fds = Path(f"/proc/{proc.pid}/fd")
            with contextlib.suppress(OSError):
                if any(os.path.realpath(fd) == str(lock_file) for fd in fds.iterdir()):
                    break
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err


INTERRUPT_SCORE = ("import mktool.view\n"
                   "def interrupted(*args, **kwargs):\n    raise KeyboardInterrupt\n"
                   "mktool.view.score = interrupted")


def test_ctrl_c_in_run_after_ingest_says_what_stays_committed(tmp_path: Path) -> None:
    """`run` commits step by step: a Ctrl-C during score must not claim that nothing was committed."""
    db = tmp_path / "mk.duckdb"
    proc = _mktool(["run", "--month", M, "--ingest", str(extracts(tmp_path / "x")), "--out", str(tmp_path / "out"),
                    "--date", "2026-11-01", "--matrices", str(MATRICES), "--db", str(db)], patch=INTERRUPT_SCORE)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Committed before it: ingest" in err and "nothing was committed" not in err
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM subscribers").fetchone() == (3,)  # the ingest step is kept
    con.close()


def test_ctrl_c_before_any_commit_says_nothing_was_committed(cli, tmp_path: Path) -> None:
    assert cli("ingest", str(extracts(tmp_path / "x"))).exit_code == 0
    proc = _mktool(["score", "--month", M, "--db", str(cli.db), "--matrices", str(MATRICES)], patch=INTERRUPT_SCORE)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Interrupted; nothing was committed." in err


def test_no_space_left_for_an_out_file_leaves_no_part_of_it(cli, tmp_path: Path) -> None:
    """A full disk under --out: exit 1 naming the path, and no partial file under any name."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    folder = tmp_path / "x"
    many = [f"1390000{i:04d}" for i in range(400)]
    write_table(folder / f"subscribers_{M}.parquet", "subscribers", [{"msisdn": m, "month": M} for m in many])
    write_table(folder / f"usage_{M}.parquet", "usage", [{"msisdn": m, "month": M} for m in many])
    write_table(folder / f"billing_{M}.parquet", "billing", [{"msisdn": m, "month": M} for m in many])
    write_table(folder / "plans.parquet", "plans", [{"plan_id": "ZX128"}])
    assert cli("ingest", str(folder)).exit_code == 0
    with mounted_tmpfs(tmp_path / "full", "size=16k") as full:
        result = cli("score", "--month", M, "--out", str(full / "view.csv"), "--matrices", str(MATRICES))
        assert result.exit_code == 1, result.output
        [line] = error_lines(result.stderr)
        assert "No space left on device" in line and str(full) in line
        no_traceback(result)
        assert list(full.iterdir()) == []


def test_an_engine_error_names_the_engine_once() -> None:
    """A Spark error (mktool.sparkdb's ``Spark: …``) is quoted as it is; a DuckDB one gets its name."""
    from mktool.errors import engine_said
    assert engine_said("Spark: TaskResultLost") == "Spark: TaskResultLost"
    assert engine_said("Binder Error: column x") == "DuckDB: Binder Error: column x"
