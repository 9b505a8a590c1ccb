"""mktool.spark: --spark-conf parsing, the order a session's settings are applied in, what a user
without PySpark or Java is told, and that every setting mktool's results rest on is in force.

Only the last tests take the `spark` fixture (a real local session); the others stand in for the
missing pieces (sys.modules, PATH, JAVA_HOME) so that they run on a machine without Spark too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from conftest import ENV, SPARK_MASTER, _spark_missing, jvm_noise, plain_jvm_env, require

import mktool.spark
from mktool.config import SparkOptions
from mktool.errors import EXIT_BAD_INPUT, EXIT_USAGE, UsageError
from mktool.spark import (
    DEFAULT_CONF,
    FIXED_CONF,
    GATEWAY_ENV,
    INSTALL_HINT,
    LOCAL_ONLY,
    LOG4J_ENV,
    LOG4J_SOURCES,
    SparkUnavailable,
    open_session,
    parse_conf,
    quiet_jvm_logging,
    session_conf,
    user_log4j_setup,
)


# -- parse_conf ---------------------------------------------------------------------------------------
def test_parse_conf_keeps_the_pairs_in_the_order_given() -> None:
    pairs = parse_conf(["spark.executor.memory=8g", "spark.sql.shuffle.partitions=200", "spark.executor.memory=4g"])
    # A repeated key stays twice: the later one wins when the pairs become a dict (as in spark-submit).
    assert pairs == (("spark.executor.memory", "8g"), ("spark.sql.shuffle.partitions", "200"),
                     ("spark.executor.memory", "4g"))
    assert parse_conf([]) == ()


def test_parse_conf_splits_at_the_first_equals_sign_and_strips_only_the_key() -> None:
    # A JVM option is itself KEY=VALUE: only the first "=" separates.
    assert parse_conf(["spark.driver.extraJavaOptions=-Dfile.encoding=UTF-8"]) == (
        ("spark.driver.extraJavaOptions", "-Dfile.encoding=UTF-8"),)
    assert parse_conf([" spark.app.name =mk"]) == (("spark.app.name", "mk"),)


@pytest.mark.parametrize("item", ["spark.executor.memory", "=8g", "  =8g", ""])
def test_parse_conf_refuses_what_is_not_key_equals_value(item: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_conf(["spark.ui.enabled=false", item])
    assert caught.value.exit_code == EXIT_USAGE
    assert caught.value.message == f"expected KEY=VALUE such as spark.executor.memory=8g, got {item!r}"


@pytest.mark.parametrize("key", sorted(FIXED_CONF))
def test_parse_conf_refuses_every_key_mktool_fixes(key: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_conf([f"{key}=whatever"])
    assert caught.value.message == f"{key} is set by mktool to {FIXED_CONF[key]} (its results depend on it)"
    with pytest.raises(UsageError):  # the key is compared stripped: a space does not get it through
        parse_conf([f" {key} =whatever"])


# -- session_conf -------------------------------------------------------------------------------------
def test_session_conf_is_defaults_then_the_users_then_the_fixed_settings() -> None:
    options = SparkOptions(conf=(("spark.sql.shuffle.partitions", "200"), ("spark.executor.memory", "8g"),
                                 # a library caller bypassing parse_conf: the fixed value wins anyway
                                 ("spark.sql.session.timeZone", "Asia/Shanghai")))
    conf = session_conf(options)
    assert conf["spark.sql.shuffle.partitions"] == "200"  # the user's over the default 8
    assert conf["spark.ui.enabled"] == "false"  # a default nobody overrode
    assert conf["spark.executor.memory"] == "8g"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert {k: conf[k] for k in FIXED_CONF} == FIXED_CONF
    # Keys in the order they first appear: the defaults, the user's new ones, the other fixed ones.
    assert list(conf) == [*DEFAULT_CONF, "spark.executor.memory", "spark.sql.session.timeZone",
                          *[k for k in FIXED_CONF if k != "spark.sql.session.timeZone"]]
    assert session_conf(SparkOptions()) == {**DEFAULT_CONF, **FIXED_CONF}


def test_session_conf_on_a_cluster_keeps_the_clusters_ui_and_shuffle_partitions() -> None:
    # yarn/spark:///k8s://: the web UI is how a job is watched, and 8 shuffle partitions are a laptop's.
    conf = session_conf(SparkOptions(master="yarn"))
    assert not LOCAL_ONLY & set(conf)
    assert conf == {**{k: v for k, v in DEFAULT_CONF.items() if k not in LOCAL_ONLY}, **FIXED_CONF}
    # what spark-submit --conf or spark-defaults.conf set already is not overridden by a default
    preset = session_conf(SparkOptions(), {"spark.sql.shuffle.partitions": "400", "spark.ui.enabled": "true"})
    assert "spark.sql.shuffle.partitions" not in preset and "spark.ui.enabled" not in preset
    assert preset["spark.ui.showConsoleProgress"] == "false"


def test_session_conf_later_user_pair_wins() -> None:
    conf = session_conf(SparkOptions(conf=parse_conf(["spark.executor.memory=8g", "spark.executor.memory=4g"])))
    assert conf["spark.executor.memory"] == "4g"


# -- open_session without PySpark, without Java --------------------------------------------------------
def test_open_session_without_pyspark_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import pyspark.sql` raise ImportError, as on a machine without it.
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(SparkUnavailable) as caught:
        open_session(SparkOptions())
    assert caught.value.exit_code == EXIT_BAD_INPUT
    assert caught.value.message.startswith("the Spark engine needs PySpark, which is not installed (")
    assert caught.value.hint == INSTALL_HINT
    assert 'pip install "mktool[spark]"' in INSTALL_HINT and "Java 17" in INSTALL_HINT


class Recorder:
    """A stand-in for pyspark.sql's SparkSession.builder: records what open_session asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.session = types.SimpleNamespace(conf=types.SimpleNamespace(set=self._set),
                                             sparkContext=types.SimpleNamespace(setLogLevel=self._level))

    def _set(self, key: str, value: str) -> None:
        self.calls.append(("conf.set", key, value))

    def _level(self, level: str) -> None:
        self.calls.append(("setLogLevel", level))

    def __getattr__(self, name: str) -> Any:
        def call(*args: str) -> Any:
            self.calls.append((name, *args))
            return self.session if name == "getOrCreate" else self
        return call


def _no_log4j_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of LOG4J_SOURCES set, and whatever open_session sets among them undone after the test
    (setenv first: monkeypatch restores only what it saw, and a variable absent at delenv goes unrecorded)."""
    for name in LOG4J_SOURCES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _pyspark_stand_in(monkeypatch: pytest.MonkeyPatch, launched: dict[str, str] | None = None,
                      running: bool = False) -> Recorder:
    builder = Recorder()
    _no_log4j_setup(monkeypatch)
    # the JVM's launch conf (spark-submit's --master/--conf): none unless a test says so
    monkeypatch.setattr(mktool.spark, "launched_conf", lambda launch=(): dict(launched or {}))
    monkeypatch.delenv(GATEWAY_ENV, raising=False)
    sql = types.ModuleType("pyspark.sql")
    sql.SparkSession = types.SimpleNamespace(  # type: ignore[attr-defined]
        builder=builder, getActiveSession=lambda: builder.session if running else None)
    root = types.ModuleType("pyspark")
    root.sql = sql  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyspark", root)
    monkeypatch.setitem(sys.modules, "pyspark.sql", sql)
    return builder


def test_open_session_without_java_says_so_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    builder = _pyspark_stand_in(monkeypatch)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(SparkUnavailable) as caught:
        open_session(SparkOptions(master="local[2]"))
    assert caught.value.exit_code == EXIT_BAD_INPUT
    assert caught.value.message == "the Spark engine needs a Java runtime: neither JAVA_HOME nor java on PATH"
    assert caught.value.hint == "install Java 17, e.g. apt-get install openjdk-17-jre-headless"
    assert builder.calls == []  # no JVM was asked for


def test_open_session_with_java_home_only_builds_with_mktools_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    builder = _pyspark_stand_in(monkeypatch)
    monkeypatch.setenv("JAVA_HOME", "/opt/jdk17")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    options = SparkOptions(master="yarn", conf=(("spark.executor.memory", "8g"),))
    session = open_session(options)
    assert session is builder.session
    expected_conf = [("config", k, v) for k, v in session_conf(options).items()]
    assert builder.calls == [("appName", "mktool"), ("master", "yarn"), *expected_conf, ("getOrCreate",),
                             ("setLogLevel", "ERROR"), *[("conf.set", k, v) for k, v in FIXED_CONF.items()]]


def test_open_session_on_spark_connect_needs_no_local_java(monkeypatch: pytest.MonkeyPatch) -> None:
    builder = _pyspark_stand_in(monkeypatch)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    open_session(SparkOptions(remote="sc://spark.example:15002"))
    assert builder.calls[:2] == [("appName", "mktool"), ("remote", "sc://spark.example:15002")]
    assert ("master", "local[*]") not in builder.calls


def test_open_session_on_spark_connect_sets_only_the_users_and_the_fixed_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server was started with its own executors, UI and shuffle partitions: no laptop defaults.
    builder = _pyspark_stand_in(monkeypatch)
    open_session(SparkOptions(remote="sc://h:15002", conf=(("spark.sql.shuffle.partitions", "64"),)))
    assert builder.calls == [("appName", "mktool"), ("remote", "sc://h:15002"), ("getOrCreate",),
                             ("conf.set", "spark.sql.shuffle.partitions", "64"),
                             *[("conf.set", k, v) for k, v in FIXED_CONF.items()]]


def test_a_conf_the_connect_server_refuses_is_a_usage_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    builder = _pyspark_stand_in(monkeypatch)

    def refuse(key: str, value: str) -> None:
        raise RuntimeError(f'[CANNOT_MODIFY_CONFIG] Cannot modify the value of the Spark config: "{key}".')

    builder.session.conf.set = refuse
    with pytest.raises(UsageError) as caught:
        open_session(SparkOptions(remote="sc://h:15002", conf=(("spark.executor.memory", "8g"),)))
    assert caught.value.message.startswith("Spark setting spark.executor.memory: the Spark Connect server at "
                                           "sc://h:15002 does not let a session set it ([CANNOT_MODIFY_CONFIG]")
    assert "start-connect-server.sh --conf" in (caught.value.hint or "")


def test_under_spark_submit_the_master_and_conf_are_spark_submits(monkeypatch: pytest.MonkeyPatch) -> None:
    launched = {"spark.master": "yarn", "spark.app.name": "mk-october", "spark.sql.shuffle.partitions": "400"}
    builder = _pyspark_stand_in(monkeypatch, launched)
    monkeypatch.setenv(GATEWAY_ENV, "40123")  # what spark-submit sets for the Python driver it starts
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)  # the JVM is up already: no java needed
    options = SparkOptions(conf=(("spark.executor.memory", "8g"),))
    open_session(options)
    configs = [c for c in builder.calls if c[0] == "config"]
    assert not [c for c in builder.calls if c[0] in ("master", "appName")]
    assert configs == [("config", k, v) for k, v in session_conf(options, launched, master="yarn").items()]
    assert ("config", "spark.executor.memory", "8g") in configs
    assert not [c for c in configs if c[1] in LOCAL_ONLY]  # not on yarn, and 400 was set by spark-submit
    assert [c for c in builder.calls if c[0] == "conf.set"] == [("conf.set", k, v) for k, v in FIXED_CONF.items()]


def test_under_spark_submit_another_spark_master_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    builder = _pyspark_stand_in(monkeypatch, {"spark.master": "local[2]"})
    monkeypatch.setenv(GATEWAY_ENV, "40123")
    with pytest.raises(UsageError) as caught:
        open_session(SparkOptions(master="yarn"))
    assert caught.value.message == ("Spark master yarn asked for, but spark-submit started this process with "
                                    "master local[2], which it keeps")
    assert builder.calls == []
    open_session(SparkOptions(master="local[2]"))  # the same master, said twice, is fine


# -- the driver JVM's log setup ------------------------------------------------------------------------
def test_a_jvm_started_here_gets_mktools_quiet_log_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    _pyspark_stand_in(monkeypatch)
    monkeypatch.setenv("JAVA_HOME", "/opt/jdk17")
    open_session(SparkOptions(master="local[2]"))
    shipped = Path(os.environ[LOG4J_ENV])
    assert shipped == Path(mktool.spark.__file__).with_name("spark_log4j2.properties") and shipped.is_file()
    lines = dict(line.split(" = ", 1) for line in shipped.read_text().splitlines() if " = " in line)
    assert lines["rootLogger.level"] == "error"
    # a failed task's and job's ERROR lines repeat the error mktool reports in one line
    assert {lines[f"logger.{name}.level"] for name in ("tasks", "executor", "utils", "writer")} == {"fatal"}
    assert lines["appender.console.target"] == "SYSTEM_ERR"  # stdout is data (--out -), never the JVM's logs


@pytest.mark.parametrize("name, value", [(LOG4J_ENV, "/etc/spark/mine.properties"),
                                         ("PYSPARK_SUBMIT_ARGS", "--driver-java-options -Dlog4j2.configurationFile=x "
                                                                 "pyspark-shell"),
                                         ("SPARK_SUBMIT_OPTS", "-Dlog4j.configurationFile=x")])
def test_the_users_own_log_setup_is_kept(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    _no_log4j_setup(monkeypatch)
    monkeypatch.setenv(name, value)
    quiet_jvm_logging()
    assert os.environ.get(LOG4J_ENV) == (value if name == LOG4J_ENV else None)


@pytest.mark.parametrize("variable, folder", [("SPARK_CONF_DIR", "."), ("SPARK_HOME", "conf")])
def test_a_log4j2_file_in_sparks_conf_folder_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     variable: str, folder: str) -> None:
    _no_log4j_setup(monkeypatch)
    monkeypatch.setenv(variable, str(tmp_path))
    assert not user_log4j_setup()  # the folder without a log4j2 file: mktool's setup still applies
    (tmp_path / folder).mkdir(exist_ok=True)
    (tmp_path / folder / "log4j2.properties").write_text("rootLogger.level = info\n")
    assert user_log4j_setup()
    quiet_jvm_logging()
    assert LOG4J_ENV not in os.environ


def test_under_spark_submit_the_log_setup_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_log4j_setup(monkeypatch)
    monkeypatch.setenv(GATEWAY_ENV, "40123")  # the JVM is up, with spark-submit's own log setup
    quiet_jvm_logging()
    assert LOG4J_ENV not in os.environ


def test_the_launch_carries_the_users_spark_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    launches: list[Any] = []
    _pyspark_stand_in(monkeypatch)
    monkeypatch.setattr(mktool.spark, "launched_conf", lambda launch=(): launches.append(launch) or {})
    monkeypatch.setenv("JAVA_HOME", "/opt/jdk17")
    conf = (("spark.driver.memory", "6g"), ("spark.sql.shuffle.partitions", "3"))
    open_session(SparkOptions(master="local[2]", conf=conf))
    assert launches == [conf]


@pytest.mark.spark
def test_a_driver_jvm_started_by_mktool_has_the_users_driver_memory_and_a_quiet_stderr() -> None:
    """spark.driver.memory is read only when the driver's JVM starts: --spark-conf must reach that
    start (it used to be set on the builder after it, where Spark ignores it, and the driver kept 1 GB).
    The JVM's log4j banner and WARN lines stay off stderr."""
    require(_spark_missing())
    code = ("from mktool.spark import SparkOptions, open_session\n"
            f"s = open_session(SparkOptions(master={SPARK_MASTER!r}, conf=(('spark.driver.memory', '1536m'),)))\n"
            "print(s.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())\n"
            "print(s.conf.get('spark.driver.memory'))\n")
    done = subprocess.run([sys.executable, "-c", code], env=plain_jvm_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    max_heap, setting = done.stdout.split()
    assert setting == "1536m"
    assert 1_200 * 2**20 < int(max_heap) <= 1536 * 2**20  # the default 1g would give < 1024 MiB
    assert jvm_noise(done.stderr) == [], done.stderr


def test_importing_mktool_does_not_load_pyspark() -> None:
    # PySpark takes ~1 s to import and may be absent: the CLI and mktool.spark load it only for a session.
    code = "import sys, mktool.cli, mktool.spark; print(sorted(m for m in sys.modules if m.startswith('py4j') " \
           "or m.startswith('pyspark')))"
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- on a real session ----------------------------------------------------------------------------------
def test_every_fixed_setting_is_in_force(spark: Any) -> None:
    for key, value in FIXED_CONF.items():
        assert spark.conf.get(key) == value, key
    # The fixture's own --spark-conf is applied over the default 8.
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    assert spark.sql("SELECT current_timezone() AS tz").collect()[0].tz == "UTC"
    # ANSI: a cast that cannot hold the value raises instead of giving NULL.
    with pytest.raises(Exception, match="CAST_INVALID_INPUT|cannot be cast"):
        spark.sql("SELECT CAST('x' AS INT)").collect()


def test_an_existing_session_gets_the_fixed_settings_back(spark: Any) -> None:
    # getOrCreate returns the process's session as it is: open_session sets the fixed values on it again.
    spark.conf.set("spark.sql.session.timeZone", "Asia/Shanghai")
    spark.conf.set("spark.sql.ansi.enabled", "false")
    try:
        again = open_session(SparkOptions(master="local[2]"))
        assert again is spark
        assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
        assert spark.conf.get("spark.sql.ansi.enabled") == "true"
    finally:
        for key, value in FIXED_CONF.items():
            spark.conf.set(key, value)


def test_a_running_session_keeps_its_own_settings_over_mktools_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """getOrCreate sets a builder's settings on the session already running (a notebook's, the tests'):
    mktool's defaults stay off it, the user's --spark-conf and the fixed settings do not."""
    builder = _pyspark_stand_in(monkeypatch, running=True)
    monkeypatch.setenv("JAVA_HOME", "/opt/jdk17")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    open_session(SparkOptions(master="local[2]", conf=(("spark.sql.shuffle.partitions", "3"),)))
    configured = {call[1]: call[2] for call in builder.calls if call[0] == "config"}
    assert configured.get("spark.sql.shuffle.partitions") == "3"
    assert not set(configured) & (set(mktool.spark.DEFAULT_CONF) - {"spark.sql.shuffle.partitions"})
    assert {k: v for k, v in configured.items() if k in FIXED_CONF} == FIXED_CONF


def test_pysparks_shell_launcher_does_not_turn_the_stage_bars_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain python process's gateway comes up with spark.ui.showConsoleProgress=true (PySpark's
    "pyspark-shell" launch): that is not a user's setting, and mktool's default (false) still applies."""
    builder = _pyspark_stand_in(monkeypatch, launched={"spark.ui.showConsoleProgress": "true",
                                                       "spark.app.name": "pyspark-shell"})
    monkeypatch.setenv("JAVA_HOME", "/opt/jdk17")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    open_session(SparkOptions(master="local[2]"))
    configured = {call[1]: call[2] for call in builder.calls if call[0] == "config"}
    assert configured["spark.ui.showConsoleProgress"] == "false"
