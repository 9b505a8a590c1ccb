"""The Spark session mktool runs on with ``--engine spark`` (issue 16): how it is built, and the
settings every mktool session has whatever the user passes.

PySpark is an optional extra (``pip install "mktool[spark]"``) and needs a Java 17+ runtime, so
it is imported only when a Spark session is asked for; without it the error says what to install.

The fixed settings are the ones mktool's semantics rest on (docs/design/spark-audit.md):

- ``spark.sql.ansi.enabled=true``: an overflowing cast or sum raises instead of giving NULL or
  wrapping (Spark 4's default; set so that a cluster's older default cannot change a result).
- ``spark.sql.decimalOperations.allowPrecisionLoss=true`` (Spark's default): mktool.dialect's exact
  forms are built for it. Its integer quotients divide DECIMAL(38,0) by DECIMAL(38,0), typed
  decimal(38,6) under this setting and decimal(38,18) without it, where 10³⁷ overflows; its
  12-decimal units are read as DECIMAL(24,0) so that no product is cut (docs/money.md).
- ``spark.sql.session.timeZone=UTC``: timestamps are wall-clock values in the extracts (DuckDB's
  TIMESTAMP has no zone); a cluster in Asia/Shanghai must not shift them.
- ``spark.sql.sources.partitionColumnTypeInference.enabled=false``: a warehouse partition
  ``month=2026-10`` is read back as the text it was written from.
- ``spark.sql.sources.partitionOverwriteMode=dynamic``: an overwrite replaces only the months
  it writes.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mktool.config import DEFAULT_SPARK_MASTER, PACKAGE_DIR, SparkOptions
from mktool.errors import MktoolError, UsageError

#: What mktool's results depend on: set on every session, after the user's --spark-conf.
FIXED_CONF: dict[str, str] = {
    "spark.sql.ansi.enabled": "true",
    "spark.sql.decimalOperations.allowPrecisionLoss": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}

#: Defaults a user may override with --spark-conf, and that a session's launcher may have set already
#: (spark-submit --conf, spark-defaults.conf): a value set there is kept, as a data engineer expects.
DEFAULT_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    # stderr is mktool's progress and errors: no JVM stage bars between them (a cron log stays readable)
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
#: The defaults for a laptop-sized session only: on a cluster (yarn, spark://, k8s://) the web UI is how a
#: job is watched, and 8 shuffle partitions would make each one of a 60M-subscriber month far too big.
LOCAL_ONLY = frozenset({"spark.ui.enabled", "spark.sql.shuffle.partitions"})

#: What PySpark's launcher sets for an interactive shell when a plain Python process starts the JVM.
_SHELL_LAUNCHER_CONF = frozenset({"spark.ui.showConsoleProgress"})

#: Set by spark-submit (and pyspark's own shells) for the Python driver it starts: the JVM is up
#: already, with spark-submit's --master and --conf, and a session built here must join it as it is.
GATEWAY_ENV = "PYSPARK_GATEWAY_PORT"

#: Log4j 2's own setting for its configuration file (it reads the environment as well as -D properties).
LOG4J_ENV = "LOG4J_CONFIGURATION_FILE"
#: mktool's log setup for a driver JVM it starts: errors only, on stderr (the file says why).
LOG4J_PROPERTIES = "spark_log4j2.properties"
#: Where a launch's -D options are given (a -Dlog4j... among them is the user's log setup).
_SUBMIT_OPTION_VARS = ("PYSPARK_SUBMIT_ARGS", "SPARK_SUBMIT_OPTS")
#: Every variable user_log4j_setup reads: what tells a JVM started here which log4j2 setup to use.
LOG4J_SOURCES = (LOG4J_ENV, *_SUBMIT_OPTION_VARS, "SPARK_CONF_DIR", "SPARK_HOME")

INSTALL_HINT = 'install the Spark extra: pip install "mktool[spark]" (it needs a Java 17 runtime)'


class SparkUnavailable(MktoolError):
    """PySpark or Java is missing: the user installs them (exit 1, like any missing prerequisite)."""


def parse_conf(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` pairs of --spark-conf, in the order given (a later one wins, as in spark-submit).

    The messages speak of the value (the command line adds the option's name); a key of FIXED_CONF
    is refused rather than silently overridden, so that a user learns it has no effect."""
    pairs: list[tuple[str, str]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"expected KEY=VALUE such as spark.executor.memory=8g, got {item!r}")
        if key.strip() in FIXED_CONF:
            raise UsageError(f"{key.strip()} is set by mktool to {FIXED_CONF[key.strip()]} "
                             "(its results depend on it)")
        pairs.append((key.strip(), value))
    return tuple(pairs)


def session_conf(options: SparkOptions, preset: Mapping[str, str] | None = None, *,
                 master: str | None = None) -> dict[str, str]:
    """The settings a session is built with: the defaults not ``preset`` (by spark-submit or
    spark-defaults.conf; on a cluster ``master`` only those of DEFAULT_CONF not LOCAL_ONLY), then the
    user's, then the fixed ones (a fixed key among the user's is refused by parse_conf on the command
    line, and overridden here)."""
    where = options.master if master is None else master
    defaults = {k: v for k, v in DEFAULT_CONF.items()
                if k not in (preset or {}) and (where.startswith("local") or k not in LOCAL_ONLY)}
    return {**defaults, **dict(options.conf), **FIXED_CONF}


def launched_conf(launch: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The conf the JVM was launched with (spark-submit's --master and --conf, spark-defaults.conf,
    PYSPARK_SUBMIT_ARGS): what a SparkConf loads from the JVM's system properties.

    A JVM not yet running is started here with ``launch`` (the user's --spark-conf) as spark-submit
    --conf pairs: a setting read only when the driver starts (spark.driver.memory, its Java options)
    has its effect only that way, as with ``pyspark --conf``. Under spark-submit, or once the process's
    JVM is up, ``launch`` changes nothing here (the builder then sets what a running JVM can take)."""
    _pyspark_sql()  # PySpark there, or the error that says what to install
    import pyspark  # noqa: PLC0415 - optional extra, as in _pyspark_sql

    # the gateway getOrCreate would start anyway, but with the user's driver settings
    pyspark.SparkContext._ensure_initialized(conf=pyspark.SparkConf(loadDefaults=False).setAll(list(launch)))
    return {str(k): str(v) for k, v in pyspark.SparkConf().getAll()}


#: PySpark's loggers of a failed query (pyspark.errors.exceptions.base, PySparkException._log_exception).
_QUERY_CONTEXT_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")


def _pyspark_sql() -> Any:
    # PySpark 4.3 warns at import that it "does not yet fully support pandas >= 3": mktool hands
    # Spark no pandas objects (Arrow and SQL only), so the warning is noise on every command.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    try:
        import pyspark.sql  # noqa: PLC0415 - optional extra (~450 MB): imported only for --engine spark
    except ImportError as exc:
        raise SparkUnavailable(f"the Spark engine needs PySpark, which is not installed ({exc})",
                               hint=INSTALL_HINT) from exc
    _quiet_query_context_loggers()
    return pyspark.sql


def _quiet_query_context_loggers() -> None:
    """PySpark 4 logs every SQL error it raises, as JSON with the JVM's whole stack, on stderr: mktool
    reports the error itself (one Error line naming the rule or table; the traceback with --verbose)."""
    try:
        from pyspark.logger import PySparkLogger  # noqa: PLC0415 - as pyspark.sql
    except ImportError:  # a PySpark that has no such logger logs nothing of the kind
        return
    for name in _QUERY_CONTEXT_LOGGERS:
        PySparkLogger.getLogger(name).disabled = True


def submitted() -> bool:
    """Whether this process is a driver that spark-submit started (the JVM is there, configured)."""
    return GATEWAY_ENV in os.environ


def user_log4j_setup() -> bool:
    """Whether the user has a log4j2 setup a JVM started here would use: LOG4J_CONFIGURATION_FILE, a
    -Dlog4j... option in PYSPARK_SUBMIT_ARGS or SPARK_SUBMIT_OPTS, or a log4j2 file in Spark's conf folder
    (SPARK_CONF_DIR, else SPARK_HOME/conf). Theirs is kept: mktool's quiet default is only a default."""
    env = os.environ
    if env.get(LOG4J_ENV):
        return True
    if any("log4j" in env.get(name, "") for name in _SUBMIT_OPTION_VARS):
        return True
    conf_dirs = [env["SPARK_CONF_DIR"]] if env.get("SPARK_CONF_DIR") else []
    if env.get("SPARK_HOME"):
        conf_dirs.append(str(Path(env["SPARK_HOME"]) / "conf"))
    return any((Path(folder) / name).is_file() for folder in conf_dirs
               for name in ("log4j2.properties", "log4j2.xml", "log4j2.yaml", "log4j2.json"))


def quiet_jvm_logging() -> None:
    """Give the driver JVM about to start here mktool's log setup (errors only, on stderr), unless the
    user has one. Spark's default profile prints a banner and WARN lines on stderr before any session
    setting can lower the level (setLogLevel comes after the JVM is up); Log4j 2 reads its file from the
    environment the JVM inherits. Under spark-submit the JVM is up already: nothing is changed."""
    if submitted() or user_log4j_setup():
        return
    os.environ[LOG4J_ENV] = str(PACKAGE_DIR / LOG4J_PROPERTIES)


def open_session(options: SparkOptions) -> Any:
    """A SparkSession (``getOrCreate``: the process's session if one exists) with mktool's settings.

    With a master URL the JVM starts here and needs ``java`` (JAVA_HOME or PATH); with
    ``remote`` the session is a Spark Connect client and the cluster's Java is what counts.
    Under spark-submit the master and conf are spark-submit's: mktool adds its fixed settings, the
    user's --spark-conf and only the defaults spark-submit did not set (a --spark-master other than
    spark-submit's is refused: the session could not move to it).
    """
    pyspark_sql = _pyspark_sql()
    if options.remote is not None:
        return _connect_session(pyspark_sql, options)
    if not submitted() and not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise SparkUnavailable("the Spark engine needs a Java runtime: neither JAVA_HOME nor java on PATH",
                               hint="install Java 17, e.g. apt-get install openjdk-17-jre-headless")
    quiet_jvm_logging()
    preset = launched_conf(options.conf)
    if not submitted():
        # PySpark's own launcher (the "pyspark-shell" gateway a plain python process starts) turns the
        # console progress bars on for its shells: that is not a user's choice to keep, and the bars
        # would fill mktool's stderr between its own lines.
        preset = {k: v for k, v in preset.items() if k not in _SHELL_LAUNCHER_CONF}
    builder = pyspark_sql.SparkSession.builder
    if submitted():
        master = preset.get("spark.master", options.master)
        if options.master not in (DEFAULT_SPARK_MASTER, master):
            raise UsageError(f"Spark master {options.master} asked for, but spark-submit started this process "
                             f"with master {master}, which it keeps",
                             hint="give the master to spark-submit (--master), not to mktool")
        if "spark.app.name" not in preset:
            builder = builder.appName(options.app_name)
    else:
        master = options.master
        builder = builder.appName(options.app_name).master(master)
    conf = session_conf(options, preset, master=master)
    if pyspark_sql.SparkSession.getActiveSession() is not None:
        # getOrCreate sets a builder's settings on the running session: mktool's defaults must not
        # undo what that session's owner (a notebook, a test, an embedding job) chose for it.
        given = {key for key, _ in options.conf}
        conf = {key: value for key, value in conf.items() if key not in DEFAULT_CONF or key in given}
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")  # Spark's WARN lines are not the user's to act on
    # getOrCreate returns an existing session as it is: the fixed settings are set on it too.
    for key, value in FIXED_CONF.items():
        session.conf.set(key, value)
    return session


def _connect_session(pyspark_sql: Any, options: SparkOptions) -> Any:
    """A Spark Connect session: the server was started with its own conf (executors, UI, shuffle
    partitions), so only the user's --spark-conf and the fixed settings are set, as session conf; a
    key the server will not change for a session (a static one: spark.executor.memory) is an error
    naming it, not a warning lost in the output."""
    session = pyspark_sql.SparkSession.builder.appName(options.app_name).remote(options.remote).getOrCreate()
    for key, value in options.conf:
        try:
            session.conf.set(key, value)
        except Exception as exc:  # noqa: BLE001 - the server's refusal, in Spark Connect's own exception types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"Spark setting {key}: the Spark Connect server at {options.remote} does not let a "
                             f"session set it ({reason})",
                             hint="set it where the Connect server is started (start-connect-server.sh --conf)") \
                from None
    for key, value in FIXED_CONF.items():
        session.conf.set(key, value)
    return session


def engine_version(session: Any) -> str:
    """The Spark release ``session`` runs on (``4.3.0``): manifest.json's engine.version beside name "spark",
    as a DuckDB run records duckdb.__version__ (mktool.versions.engine_info)."""
    return str(session.version)
