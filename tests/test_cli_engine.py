"""The engine's global options (issue 16): --engine, --spark-master, --spark-remote, --spark-conf and
--warehouse, given before the command, with their environment twins.

What reaches the library is read from the Settings each command builds (``settings_made``): the
options are parsed and checked here, Settings.from_options carries them. None of these tests
starts Spark: `status` stops at "no database" after building its Settings (the Spark connection
is not wired to the commands yet), and check/test must never start an engine at all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import M

from mktool import cli as cli_module
from mktool import spark as spark_mod
from mktool.config import DEFAULT_SPARK_MASTER, DEFAULT_WAREHOUSE, ENV, Settings, SparkOptions
from mktool.database import Database
from mktool.errors import StateError
from mktool.spark import FIXED_CONF


@pytest.fixture
def settings_made(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Settings]]:
    """Every Settings a command builds, with no engine variable of the caller's environment set."""
    made: list[Settings] = []
    original = Settings.__post_init__

    def record(self: Settings) -> None:
        original(self)
        made.append(self)

    monkeypatch.setattr(Settings, "__post_init__", record)

    def stop(self: Database) -> Database:  # the Settings are what is checked: no engine starts (yarn, s3a…)
        raise StateError(f"stopped before the {self.settings.engine} engine")

    monkeypatch.setattr(Database, "__enter__", stop)
    for name in ENV.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield made


def status(runner: Any, made: list[Settings], *before: str) -> Settings:
    """``mktool <before> status --db none.duckdb``: the Settings it built (it then stops before the engine)."""
    result = runner.invoke(cli_module.app, [*before, "status", "--db", "none.duckdb"])
    assert result.exit_code == 1 and "stopped before the " in result.stderr, result.output
    assert len(made) == 1
    return made.pop()


def usage_error(result: Any, *options: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Usage: " in result.stderr and "Traceback" not in result.output, result.output
    assert "Invalid value for " + " / ".join(f"'{o}'" for o in options) in result.stderr, result.stderr
    return " ".join(result.stderr.split())  # unwrapped


# -- defaults, flags, environment --------------------------------------------------------------------------
def test_without_engine_options_the_defaults_reach_the_library(runner, settings_made) -> None:
    settings = status(runner, settings_made)
    assert (settings.engine, settings.spark, settings.warehouse) == ("duckdb", SparkOptions(), DEFAULT_WAREHOUSE)
    assert settings.spark.master == DEFAULT_SPARK_MASTER == "local[*]" and DEFAULT_WAREHOUSE == "mktool-warehouse"


def test_every_engine_option_reaches_settings(runner, settings_made) -> None:
    settings = status(runner, settings_made, "--engine", "spark", "--spark-master", "yarn",
                      "--spark-conf", "spark.executor.memory=8g", "--spark-conf", "spark.sql.shuffle.partitions=200",
                      "--spark-conf", "spark.executor.memory=4g", "--warehouse", "hdfs:///mk")
    assert settings.engine == "spark"
    assert settings.spark == SparkOptions(master="yarn", remote=None, conf=(
        ("spark.executor.memory", "8g"), ("spark.sql.shuffle.partitions", "200"), ("spark.executor.memory", "4g")))
    assert settings.warehouse == "hdfs:///mk"  # a URI as written: not a Path (which would make it hdfs:/mk)
    remote = status(runner, settings_made, "--engine", "spark", "--spark-remote", "sc://spark.example:15002")
    assert remote.spark == SparkOptions(remote="sc://spark.example:15002")
    assert remote.warehouse == DEFAULT_WAREHOUSE


@pytest.mark.parametrize(("variable", "flag", "env_value", "flag_value", "read"), [
    ("MKTOOL_ENGINE", "--engine", "spark", "duckdb", lambda s: s.engine),
    ("MKTOOL_SPARK_MASTER", "--spark-master", "yarn", "spark://head:7077", lambda s: s.spark.master),
    ("MKTOOL_SPARK_REMOTE", "--spark-remote", "sc://env:15002", "sc://flag:15002", lambda s: s.spark.remote),
    ("MKTOOL_WAREHOUSE", "--warehouse", "/data/env-wh", "s3a://bucket/wh", lambda s: s.warehouse),
])
def test_flag_beats_environment_beats_default(runner, settings_made, monkeypatch, variable: str, flag: str,
                                              env_value: str, flag_value: str, read: Any) -> None:
    spark = [] if flag == "--engine" else ["--engine", "spark"]
    default = read(status(runner, settings_made, *spark))
    monkeypatch.setenv(variable, env_value)
    from_env = read(status(runner, settings_made, *spark))
    from_flag = read(status(runner, settings_made, *spark, flag, flag_value))
    assert (from_env, from_flag) == (env_value, flag_value)
    assert default == {"--engine": "duckdb", "--spark-master": "local[*]", "--spark-remote": None,
                       "--warehouse": "mktool-warehouse"}[flag]


def test_bad_engine_is_a_usage_error_from_the_flag_and_from_the_environment(runner, settings_made,
                                                                            monkeypatch) -> None:
    text = usage_error(runner.invoke(cli_module.app, ["--engine", "Spark", "status"]), "--engine")
    assert "'Spark' is not one of duckdb, spark" in text
    monkeypatch.setenv("MKTOOL_ENGINE", "postgres")
    text = usage_error(runner.invoke(cli_module.app, ["status"]), "--engine")
    assert "(env var: 'MKTOOL_ENGINE')" in text and "'postgres' is not one of duckdb, spark" in text
    assert settings_made == []


# -- --spark-conf ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "says"), [
    ("spark.executor.memory", "expected KEY=VALUE such as spark.executor.memory=8g, got 'spark.executor.memory'"),
    ("=8g", "expected KEY=VALUE such as spark.executor.memory=8g, got '=8g'"),
    ("spark.sql.session.timeZone=Asia/Shanghai",
     "spark.sql.session.timeZone is set by mktool to UTC (its results depend on it)"),
])
def test_a_bad_spark_conf_is_a_usage_error_before_any_work(runner, settings_made, tmp_path: Path, value: str,
                                                           says: str) -> None:
    result = runner.invoke(cli_module.app, ["--engine", "spark", "--spark-conf", "spark.ui.enabled=true",
                                            "--spark-conf", value, "status", "--db", "none.duckdb"])
    assert says in usage_error(result, "--spark-conf")
    assert settings_made == [] and not (tmp_path / "none.duckdb").exists()


@pytest.mark.parametrize("key", sorted(FIXED_CONF))
def test_every_fixed_setting_is_refused_on_the_command_line(runner, settings_made, key: str) -> None:
    result = runner.invoke(cli_module.app, ["--engine", "spark", "--spark-conf", f"{key}={FIXED_CONF[key]}", "check"])
    assert f"{key} is set by mktool to {FIXED_CONF[key]}" in usage_error(result, "--spark-conf")


# -- combinations -----------------------------------------------------------------------------------------------
def test_master_and_remote_together_are_a_usage_error(runner, settings_made) -> None:
    result = runner.invoke(cli_module.app, ["--engine", "spark", "--spark-master", "yarn",
                                            "--spark-remote", "sc://h:15002", "status"])
    assert "give one, not both (both on the command line)" in usage_error(result, "--spark-master", "--spark-remote")
    assert settings_made == []


def test_master_and_remote_both_in_the_environment_are_a_usage_error(runner, settings_made, monkeypatch) -> None:
    monkeypatch.setenv("MKTOOL_SPARK_MASTER", "yarn")
    monkeypatch.setenv("MKTOOL_SPARK_REMOTE", "sc://h:15002")
    result = runner.invoke(cli_module.app, ["--engine", "spark", "status"])
    text = usage_error(result, "--spark-master", "--spark-remote")
    assert "MKTOOL_SPARK_MASTER and MKTOOL_SPARK_REMOTE are both set" in text


def test_one_on_the_command_line_wins_over_the_other_from_the_environment(runner, settings_made,
                                                                           monkeypatch) -> None:
    monkeypatch.setenv("MKTOOL_SPARK_MASTER", "yarn")
    assert status(runner, settings_made, "--engine", "spark", "--spark-remote", "sc://h:15002").spark == SparkOptions(
        master=DEFAULT_SPARK_MASTER, remote="sc://h:15002")
    monkeypatch.delenv("MKTOOL_SPARK_MASTER")
    monkeypatch.setenv("MKTOOL_SPARK_REMOTE", "sc://h:15002")
    assert status(runner, settings_made, "--engine", "spark", "--spark-master", "yarn").spark == SparkOptions(
        master="yarn", remote=None)


@pytest.mark.parametrize("args", [
    ["--spark-master", "yarn"], ["--spark-remote", "sc://h:15002"], ["--spark-conf", "spark.executor.memory=8g"],
    ["--warehouse", "hdfs:///mk"],
])
def test_a_spark_option_with_the_duckdb_engine_is_a_usage_error(runner, settings_made, args: list[str]) -> None:
    for engine in ([], ["--engine", "duckdb"]):
        result = runner.invoke(cli_module.app, [*engine, *args, "status", "--db", "none.duckdb"])
        text = usage_error(result, args[0])
        assert "only with --engine spark, and the engine is duckdb: add --engine spark before the command" in text
    assert settings_made == []


def test_the_duckdb_engine_from_the_environment_is_named(runner, settings_made, monkeypatch) -> None:
    monkeypatch.setenv("MKTOOL_ENGINE", "duckdb")
    result = runner.invoke(cli_module.app, ["--spark-master", "yarn", "--warehouse", "wh", "status"])
    text = usage_error(result, "--spark-master", "--warehouse")
    assert "the engine is duckdb (from MKTOOL_ENGINE): add --engine spark before the command, or drop them" in text


def test_spark_settings_from_the_environment_are_ignored_on_duckdb(runner, settings_made, monkeypatch) -> None:
    """A profile may export the Spark jobs' settings on a machine that runs DuckDB jobs too."""
    monkeypatch.setenv("MKTOOL_SPARK_MASTER", "yarn")
    monkeypatch.setenv("MKTOOL_SPARK_REMOTE", "sc://h:15002")  # both: no conflict, as neither is used
    monkeypatch.setenv("MKTOOL_WAREHOUSE", "hdfs:///mk")
    settings = status(runner, settings_made)
    assert (settings.engine, settings.spark, settings.warehouse) == ("duckdb", SparkOptions(), DEFAULT_WAREHOUSE)


def test_engine_options_go_before_the_command(runner, settings_made) -> None:
    result = runner.invoke(cli_module.app, ["status", "--engine", "spark"])
    assert result.exit_code == 2 and "No such option: --engine" in result.stderr, result.output


# -- check and test never start an engine --------------------------------------------------------------------
@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """PySpark unimportable, and any session or database opened is a failure of the test."""
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an engine was started")

    monkeypatch.setattr(spark_mod, "open_session", refuse)
    monkeypatch.setattr(cli_module, "Database", refuse)


@pytest.mark.parametrize("command", [["check"], ["check", "--strict"], ["test", "--quiet"]])
def test_check_and_test_never_start_an_engine(runner, settings_made, no_engine, command: list[str]) -> None:
    result = runner.invoke(cli_module.app, ["--engine", "spark", "--spark-master", "spark://nowhere:7077",
                                            "--warehouse", "hdfs:///mk", *command])
    assert result.exit_code == 0, result.output
    # The command's own Settings; `test` judges the rules on in-memory DuckDB databases of its own.
    assert settings_made[0].engine == "spark"
    assert all(s.engine == "duckdb" for s in settings_made[1:])


def test_check_month_with_spark_is_a_usage_error(runner, settings_made, no_engine) -> None:
    result = runner.invoke(cli_module.app, ["--engine", "spark", "check", "--month", M])
    assert "check never starts Spark: with --engine spark, check the files without --month" in usage_error(
        result, "--month")


# -- --help ------------------------------------------------------------------------------------------------------
def test_help_documents_the_engine_options_with_an_example(runner) -> None:
    result = runner.invoke(cli_module.app, ["--help"])
    assert result.exit_code == 0
    text = result.stdout
    assert "mktool --engine spark --warehouse hdfs:///mk run --month 2026-10 --ingest hdfs:///extracts" in text
    for flag, variable in [("--engine [duckdb|spark]", "MKTOOL_ENGINE"), ("--spark-master URL", "MKTOOL_SPARK_MASTER"),
                           ("--spark-remote sc://HOST:PORT", "MKTOOL_SPARK_REMOTE"),
                           ("--warehouse PATH", "MKTOOL_WAREHOUSE")]:
        assert flag in text and f"env var: {variable}" in " ".join(text.split()), flag
    assert "--spark-conf KEY=VALUE" in text and "repeatable" in text
    assert "`check` and `test` never start an engine" in " ".join(text.split())
