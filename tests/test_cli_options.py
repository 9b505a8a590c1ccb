"""Options declared once (issue 11, item 5), checked over every command that has them.

* ``--format``: each command takes one vocabulary of a family declared once in cli.py; a value
  outside it is a usage error (exit 2) naming the allowed values, the same ones --help lists.
* ``--month``: one parser over the data contract's month (``contract.check_month``); a bad
  month is a usage error naming the option on every command that takes one.
* Environment twins: read once, by the command line (option, else environment, else
  default); a bad value is a usage error naming both the option and the variable.
* Library messages speak of the value ("month '2026-13' is not YYYY-MM"), never of a flag.

The command lists come from the app itself, so a command added later is covered here without
anyone remembering to add it.
"""

from __future__ import annotations

import ast
import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from conftest import MATRICES, ROOT, M

from mktool import cli as cli_module
from mktool.config import ENV, Settings, default_memory_limit, resolve_matrices_dir
from mktool.contract import check_month
from mktool.errors import MktoolError, UsageError
from mktool.export import run_export
from mktool.matrices import generated_sql
from mktool.planconfig import PlanConfig
from mktool.project import load_project, load_rules

GROUP = typer.main.get_command(cli_module.app)
COMMANDS: dict[str, Any] = GROUP.commands  # type: ignore[attr-defined]

#: What each command needs besides the option under test to get past parsing.
REQUIRED: dict[str, list[str]] = {"ingest": ["x.parquet"], "explain": ["13800000001"], "latest": ["--channel", "sms"],
                                  "evaluate": ["churn"]}


def _option(command: Any, flag: str) -> Any | None:
    return next((p for p in command.params if flag in getattr(p, "opts", [])), None)


def _takers(flag: str) -> list[str]:
    return sorted(name for name, command in COMMANDS.items() if _option(command, flag) is not None)


MONTH_TAKERS = _takers("--month")
FORMAT_TAKERS = _takers("--format")


def _base_args(name: str, *, month: bool = True) -> list[str]:
    """The command with what it requires (its arguments, a good --month) and nothing else."""
    args = [name, *REQUIRED.get(name, [])]
    option = _option(COMMANDS[name], "--month")
    if month and option is not None and option.required:
        args += ["--month", M]
    return args


def _parse(*args: str) -> dict[str, Any]:
    """Parse a command line as the app does, without running the command: its options' values."""
    name, *rest = args
    return COMMANDS[name].make_context(name, list(rest)).params  # type: ignore[no-any-return]


def _usage_error(result: Any, option: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Usage: " in result.stderr, result.stderr
    assert f"Invalid value for '{option}'" in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_the_commands_are_found() -> None:
    """The introspection below sees the commands it is meant to cover."""
    assert set(MONTH_TAKERS) == {"check", "diff", "evaluate", "explain", "export", "factors", "funnel", "latest",
                                 "matrix", "plan", "profile", "report", "run", "score", "snapshot", "test"}
    # latest prints one path, report writes one HTML page
    assert set(FORMAT_TAKERS) == set(MONTH_TAKERS) - {"latest", "report"} | {"status"}


# -- --format: one vocabulary per family, refused outside it, listed in --help -------------------------
FAMILIES = {cli_module.OUTPUT_FORMATS, cli_module.TABLE_JSON, cli_module.FUNNEL_FORMATS, cli_module.CHECK_FORMATS,
            cli_module.DIFF_FORMATS, cli_module.PLAN_FORMATS}


def _help_vocabulary(runner: Any, name: str) -> tuple[str, ...]:
    """The values ``--help`` shows for --format: ``-f, --format [a|b|c]``."""
    result = runner.invoke(cli_module.app, [name, "--help"])
    assert result.exit_code == 0, result.output
    found = re.search(r"--format \[([a-z|]+)\]", result.stdout)
    assert found, result.stdout
    return tuple(found[1].split("|"))


@pytest.mark.parametrize("name", FORMAT_TAKERS)
def test_every_format_is_a_declared_family_refused_outside_it(runner, cli, name: str) -> None:
    listed = _help_vocabulary(runner, name)
    assert listed in FAMILIES, f"{name} --format {listed} is not one of the declared families"
    result = cli(*_base_args(name), "--format", "xml", "--matrices", str(MATRICES))
    _usage_error(result, "--format")
    assert f"'xml' is not one of {', '.join(listed)}" in result.stderr, result.stderr
    assert not cli.db.exists()  # refused before the database was opened


@pytest.mark.parametrize("name", FORMAT_TAKERS)
def test_every_listed_format_is_accepted_and_the_default_is_one(runner, name: str) -> None:
    listed = _help_vocabulary(runner, name)
    for value in listed:
        assert _parse(*_base_args(name), "--format", value)["fmt"] == value
    default = _option(COMMANDS[name], "--format").default
    assert default is None or default in listed
    with pytest.raises(typer.BadParameter, match="is not one of"):
        _parse(*_base_args(name), "--format", listed[0].upper())  # exact spelling, as the library compares


def test_status_format_is_checked(cli) -> None:
    result = cli("status", "--format", "xml")
    _usage_error(result, "--format")
    assert "'xml' is not one of table, json" in result.stderr


def test_report_and_list_families() -> None:
    """The families' values, and plan's mix of --out's list formats and --sweep's grid formats."""
    assert cli_module.OUTPUT_FORMATS == ("csv", "parquet", "jsonl")
    assert cli_module.PLAN_FORMATS == ("csv", "parquet", "jsonl", "table", "json")
    assert set(cli_module.SWEEP_FORMATS) <= set(cli_module.PLAN_FORMATS)
    for name in ("score", "matrix", "export", "run"):
        assert _parse(*_base_args(name), "--format", "parquet")["fmt"] == "parquet"
        with pytest.raises(typer.BadParameter, match="'table' is not one of csv, parquet, jsonl"):
            _parse(*_base_args(name), "--format", "table")


@pytest.mark.parametrize(("args", "says"), [
    (["--sweep", "--format", "parquet"], "--sweep prints as table, csv, json, not 'parquet'"),
    (["--format", "table", "--out", "plans.csv"], "'table' is only for --sweep; --out writes csv, parquet, jsonl"),
    (["--format", "json"], "'json' is only for --sweep"),
])
def test_plan_format_fits_its_mode(cli, args: list[str], says: str) -> None:
    result = cli("plan", "--month", M, *args, "--matrices", str(MATRICES))
    _usage_error(result, "--format")
    assert says in result.stderr, result.stderr
    assert not cli.db.exists()


# -- --month: one type over contract.check_month, on every command -------------------------------------
BAD_MONTHS = ["2026-13", "2026-00", "2026-7", "2026/10", "26-10", "2026-10-01", "2026-10\n", " 2026-10", "",
              "\uff12\uff10\uff12\uff16-10"]


@pytest.mark.parametrize("month", BAD_MONTHS, ids=repr)
@pytest.mark.parametrize("name", MONTH_TAKERS)
def test_bad_month_is_a_usage_error_on_every_command(cli, name: str, month: str) -> None:
    result = cli(*_base_args(name, month=False), "--month", month, "--matrices", str(MATRICES))
    _usage_error(result, "--month")
    assert f"month {month!r} is not YYYY-MM" in result.stderr, result.stderr
    assert not cli.db.exists()


@pytest.mark.parametrize("name", MONTH_TAKERS)
def test_good_month_is_passed_as_written(name: str) -> None:
    for month in ("2026-10", "1999-01", "2026-12"):
        assert _parse(*_base_args(name, month=False), "--month", month)["month"] == month
        assert _parse(*_base_args(name, month=False), "-m", month)["month"] == month


def test_the_month_type_is_the_contract_check() -> None:
    """The CLI's parser says what contract.check_month says; both accept exactly the same months."""
    for month in [*BAD_MONTHS, "2026-10", "2000-01"]:
        try:
            expected: str | None = check_month(month)
        except MktoolError as exc:
            expected = None
            with pytest.raises(typer.BadParameter) as refused:
                cli_module.parse_month(month)
            assert refused.value.message == exc.message
        if expected is not None:
            assert cli_module.parse_month(month) == expected


# -- environment twins: read once, by the command line; flag > env > default -------------------------------
@pytest.fixture
def settings_made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Settings]]:
    """Every Settings the command builds (after its own checks), to see what reached the library."""
    made: list[Settings] = []
    original = Settings.__post_init__

    def record(self: Settings) -> None:
        original(self)
        made.append(self)

    monkeypatch.setattr(Settings, "__post_init__", record)
    for name in ENV.values():
        monkeypatch.delenv(name, raising=False)
    yield made


def _status_settings(runner: Any, made: list[Settings], *args: str) -> Settings:
    result = runner.invoke(cli_module.app, ["status", *args])
    assert result.exit_code == 1 and "no database at" in result.stderr, result.output  # the settings were used
    assert len(made) == 1
    return made[0]


# setting, option, environment value, option value, the Settings field each gives
TWINS = [
    ("memory_limit", "--memory-limit", "1234MB", "567MB"),
    ("threads", "--threads", "97", "98"),
    ("lock_wait", "--wait", "0.25", "0.5"),
    ("matrices_dir", "--matrices", "env-rules", "flag-rules"),
    ("temp_dir", "--temp-dir", "env-spill", "flag-spill"),
]
TYPED = {"threads": int, "lock_wait": float, "matrices_dir": Path, "temp_dir": Path, "memory_limit": str}


@pytest.mark.parametrize(("field", "option", "env_value", "flag_value"), TWINS, ids=[t[0] for t in TWINS])
def test_flag_beats_environment_beats_default(runner, settings_made: list[Settings], monkeypatch, tmp_path: Path,
                                              field: str, option: str, env_value: str, flag_value: str) -> None:
    monkeypatch.chdir(tmp_path)
    db = ["--db", str(tmp_path / "none.duckdb")]
    default = getattr(_status_settings(runner, settings_made, *db), field)
    settings_made.clear()
    monkeypatch.setenv(ENV[field], env_value)
    from_env = getattr(_status_settings(runner, settings_made, *db), field)
    settings_made.clear()
    from_flag = getattr(_status_settings(runner, settings_made, *db, option, flag_value), field)
    convert = TYPED[field]
    assert from_env == convert(env_value) and from_flag == convert(flag_value)
    assert default not in (from_env, from_flag)
    expected_default = {"memory_limit": default_memory_limit(), "threads": os.cpu_count() or 1, "lock_wait": 0.0,
                        "matrices_dir": resolve_matrices_dir(None), "temp_dir": None}[field]
    assert default == expected_default


def test_db_flag_beats_environment_beats_default(runner, monkeypatch, tmp_path: Path) -> None:
    """End to end: the database a command opens (named in the error, as none exists there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MKTOOL_DB", raising=False)
    assert "no database at mktool.duckdb" in runner.invoke(cli_module.app, ["status"]).stderr
    monkeypatch.setenv("MKTOOL_DB", "from-env.duckdb")
    assert "no database at from-env.duckdb" in runner.invoke(cli_module.app, ["status"]).stderr
    result = runner.invoke(cli_module.app, ["status", "--db", "from-flag.duckdb"])
    assert "no database at from-flag.duckdb" in result.stderr
    monkeypatch.setenv("MKTOOL_DB", "")  # set but empty: not given
    assert "no database at mktool.duckdb" in runner.invoke(cli_module.app, ["status"]).stderr


@pytest.mark.parametrize(("name", "value", "option", "says"), [
    ("MKTOOL_MEMORY_LIMIT", "lots", "--memory-limit", "a size such as 8GB"),
    ("MKTOOL_MEMORY_LIMIT", "0%", "--memory-limit", "more than 0"),
    ("MKTOOL_THREADS", "many", "--threads", "whole number"),
    ("MKTOOL_THREADS", "0", "--threads", "at least 1"),
    ("MKTOOL_LOCK_WAIT", "inf", "--wait", "finite"),
    ("MKTOOL_LOCK_WAIT", "soon", "--wait", "a number of seconds"),
])
def test_bad_environment_value_is_a_usage_error_naming_the_variable(cli, monkeypatch, name: str, value: str,
                                                                     option: str, says: str) -> None:
    monkeypatch.setenv(name, value)
    for args in (["status"], ["score", "--month", M]):
        result = cli(*args)
        _usage_error(result, option)
        assert f"(env var: '{name}')" in result.stderr and says in result.stderr, result.stderr
        assert not cli.db.exists()


def test_a_given_option_is_not_overridden_by_a_bad_environment(runner, settings_made: list[Settings], monkeypatch,
                                                                tmp_path: Path) -> None:
    """The option wins without the environment being read at all (no second reading to trip on)."""
    monkeypatch.setenv("MKTOOL_THREADS", "0")
    monkeypatch.setenv("MKTOOL_MEMORY_LIMIT", "lots")
    settings = _status_settings(runner, settings_made, "--db", str(tmp_path / "none.duckdb"), "--threads", "2",
                                "--memory-limit", "1GB")
    assert (settings.threads, settings.memory_limit) == (2, "1GB")


def test_the_library_takes_values_and_never_reads_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ENV.values():
        monkeypatch.setenv(name, "not-read")  # bad for every check: reading any of them would raise
    settings = Settings.from_options(db=tmp_path / "a.duckdb")
    assert settings.db_path == tmp_path / "a.duckdb"
    assert settings.threads == (os.cpu_count() or 1) and settings.lock_wait == 0.0
    assert settings.memory_limit == default_memory_limit() and settings.temp_dir is None
    assert settings.matrices_dir == resolve_matrices_dir(None) != Path("not-read")
    given = Settings.from_options(db=tmp_path / "b.duckdb", matrices=tmp_path, memory_limit=" 2GB ", threads=3,
                                  temp_dir=tmp_path / "spill", lock_wait=1.5)
    assert (given.matrices_dir, given.memory_limit, given.threads, given.temp_dir, given.lock_wait) == (
        tmp_path, "2GB", 3, tmp_path / "spill", 1.5)


def test_every_environment_twin_is_declared_on_the_common_options() -> None:
    """The variable names live in config.ENV; every command's option reads exactly that one."""
    options = {"db_path": "--db", "matrices_dir": "--matrices", "memory_limit": "--memory-limit",
               "threads": "--threads", "temp_dir": "--temp-dir", "lock_wait": "--wait"}
    # The engine's, given before the command (mktool --engine spark run …): options of the app itself.
    engine = {"engine": "--engine", "spark_master": "--spark-master", "spark_remote": "--spark-remote",
              "warehouse": "--warehouse"}
    assert set(options) | set(engine) | {"out_dir"} == set(ENV)
    for name, command in COMMANDS.items():
        for field, flag in options.items():
            assert _option(command, flag).envvar == ENV[field], (name, flag)
        assert not any(_option(command, flag) for flag in engine.values()), name
    for field, flag in engine.items():
        assert _option(GROUP, flag).envvar == ENV[field], flag
    # The output folder of the commands that publish lists (diff's and plan's --out is a file: no twin).
    for name in ("export", "run", "latest"):
        assert _option(COMMANDS[name], "--out").envvar == ENV["out_dir"], name


def test_out_folder_flag_beats_environment_beats_default(monkeypatch) -> None:
    monkeypatch.delenv("MKTOOL_OUT", raising=False)
    assert str(_parse("export", "--month", M)["out"]) == "out"
    monkeypatch.setenv("MKTOOL_OUT", "/data/lists")
    for name in ("export", "run", "latest"):
        assert str(_parse(*_base_args(name), "--month", M)["out"]) == "/data/lists", name
    assert str(_parse("export", "--month", M, "--out", "elsewhere")["out"]) == "elsewhere"


# -- library messages speak of values ---------------------------------------------------------------------
def test_library_month_messages_name_the_value() -> None:
    with pytest.raises(MktoolError) as exc:
        check_month("2026-13")
    assert exc.value.message == "month '2026-13' is not YYYY-MM (a year and a month 01-12, such as 2026-10)"
    rules = load_rules(MATRICES)
    with pytest.raises(MktoolError, match=r"^month \"2026-10'; DROP TABLE x; --\" is not YYYY-MM") as exc:
        generated_sql(rules, "2026-10'; DROP TABLE x; --")
    assert exc.value.message.startswith("month ")


def test_library_setting_messages_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^threads must be a whole number of at least 1, got 0$"):
        Settings.from_options(db=tmp_path / "a.duckdb", threads=0)
    with pytest.raises(UsageError, match=r"^memory limit must be"):
        Settings.from_options(db=tmp_path / "a.duckdb", memory_limit="lots")
    with pytest.raises(UsageError, match=r"^lock wait must be a finite number"):
        Settings.from_options(db=tmp_path / "a.duckdb", lock_wait=float("nan"))
    with pytest.raises(MktoolError, match=r"^top: must be a whole number >= 1, got 0$"):
        PlanConfig().with_overrides(top=0)
    with pytest.raises(MktoolError, match=r"^total_change: expected LO:HI"):
        PlanConfig().with_overrides(total_change="abc")
    with pytest.raises(MktoolError, match=r"^cycle must be daily or monthly, got 'weekly'$"):
        run_export(None, load_project(MATRICES), M, out_dir=None, cycle_date=dt.date(2026, 11, 1),  # type: ignore[arg-type]
                   only_cycle="weekly")


#: Messages of other owners' modules that still name a flag (reported; they explain a command's own option).
KNOWN_FLAG_MESSAGES = ("month from the file or --month",)
FLAG = re.compile(r"(?<![\w`-])--[a-z][a-z-]*")


def _raised_messages(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """The literal text of every positional argument of a raised exception (hints are keywords: skipped)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for arg in node.exc.args:
                text = "".join(sub.value for sub in ast.walk(arg)
                               if isinstance(sub, ast.Constant) and isinstance(sub.value, str))
                yield node.lineno, text


def test_no_library_error_names_a_command_line_flag() -> None:
    found = []
    for path in sorted((ROOT / "mktool").rglob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for line, text in _raised_messages(ast.parse(path.read_text(encoding="utf-8"))):
            outside_commands = re.sub(r"`[^`]*`", "", text)  # `mktool plan --month M`: a command to run
            if FLAG.search(outside_commands) and not any(k in text for k in KNOWN_FLAG_MESSAGES):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not found, "\n".join(found)


def test_the_flag_scan_sees_a_flag() -> None:
    """The scan above can fail: a raise naming --month is found, one in a backticked command is not."""
    flagged = ast.parse('raise MktoolError(f"--month must be YYYY-MM, got {m}")\n'
                        'raise StateError("no view", hint="run `mktool score --month M`")\n'
                        'raise StateError("run `mktool score --month M` first")\n')
    texts = [re.sub(r"`[^`]*`", "", text) for _, text in _raised_messages(flagged)]
    assert [bool(FLAG.search(t)) for t in texts] == [True, False, False]
