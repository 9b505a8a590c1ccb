"""Where one mktool step's time goes on ``--engine spark``: per statement kind, how many statements,
their wall time, the Spark jobs they ran and the Parquet files they wrote (issue 16).

Every statement a step sends becomes Spark work of its own, and the number of statements does not grow
with the data: on a small month this fixed cost is the whole run. This script runs one CLI step in this
process with :class:`mktool.sparkdb.SparkConnection` instrumented (a Spark job group per statement,
``statusTracker`` for its jobs, the DataFrameWriter's output folders for its files) and prints a table.
Wall times are noisy on a loaded machine; job and file counts are not.

    python scripts/spark_profile.py --warehouse /tmp/wh ingest fixtures/extracts
    python scripts/spark_profile.py --warehouse /tmp/wh score --month 2026-10
    python scripts/spark_profile.py --warehouse /tmp/wh --json prof.json export --month 2026-10 --date 2026-11-01

Options before the step: ``--warehouse W`` (required), ``--master`` (default ``local[2]``),
``--json FILE`` (the raw per-statement records), ``--top N`` (the slowest statements listed),
``--conf KEY=VALUE`` (a ``--spark-conf``, repeatable).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from typer.testing import CliRunner  # noqa: E402

from mktool import sparkdb  # noqa: E402
from mktool.cli import app  # noqa: E402
from mktool.warehouse import HadoopFS  # noqa: E402

_TARGET = re.compile(r"^\s*(?:INSERT\s+INTO|CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?(?:TABLE|VIEW)"
                     r"(?:\s+IF\s+NOT\s+EXISTS)?|DELETE\s+FROM|UPDATE|DROP\s+TABLE(?:\s+IF\s+EXISTS)?|"
                     r"ALTER\s+TABLE|DESCRIBE|COPY)\s+\(?\s*([\w.\"]+)", re.IGNORECASE)


@dataclass
class Record:
    kind: str
    sql: str
    seconds: float = 0.0
    jobs: int = 0
    files: int = 0
    writes: int = 0
    fs_ops: int = 0
    parse: float = 0.0  # sqlglot parsing and mktool.dialect's rendering (Python)
    analyse: float = 0.0  # session.sql: Spark's parser and analyser (no job)


class Profile(threading.local):
    """Per thread (ingest checks keys on a second thread, on a cursor of the same connection): the
    statement being measured; shared by all threads: the records."""

    records: list[Record] = []  # noqa: RUF012 - one list for every thread, on purpose
    outside_fs_ops = 0
    groups = 0

    def __init__(self) -> None:
        self.stack: list[Record] = []
        self.timing = False


PROFILE = Profile()


def _kind(con: sparkdb.SparkConnection, sql: str, many: bool) -> str:
    keyword = sparkdb._first_keyword(sql)
    match = _TARGET.match(sql)
    where = ""
    if match and keyword in ("INSERT", "CREATE", "DELETE", "UPDATE", "DROP", "ALTER"):
        name = match.group(1).split(".")[-1].strip('"')
        temp = name in con._s.temps or re.search(r"\bTEMP(ORARY)?\b", sql[:60], re.IGNORECASE) \
            or match.group(1).lower().startswith("temp.")
        where = " temp" if temp else " warehouse"
    if keyword == "SELECT" and "information_schema" in sql:
        keyword = "SELECT information_schema"
    return ("executemany " if many else "") + keyword + where


def _instrument(method: Callable[..., Any], many: bool) -> Callable[..., Any]:
    def wrapper(self: sparkdb.SparkConnection, sql: str, *args: Any, **kwargs: Any) -> Any:
        if PROFILE.stack:  # executemany's per-row fallback: counted in the outer statement
            return method(self, sql, *args, **kwargs)
        record = Record(_kind(self, sql, many), " ".join(sql.split())[:160])
        sc = self.session.sparkContext
        Profile.groups += 1
        group = f"mk-profile-{Profile.groups}"
        sc.setJobGroup(group, record.kind)
        PROFILE.stack.append(record)
        started = time.perf_counter()
        try:
            result = method(self, sql, *args, **kwargs)
            self._force()  # a deferred count is the statement's work too (callers fetch it right after)
            return result
        finally:
            record.seconds = time.perf_counter() - started
            PROFILE.stack.pop()
            record.jobs = len(sc.statusTracker().getJobIdsForGroup(group))
            sc.setLocalProperty("spark.jobGroup.id", None)
            PROFILE.records.append(record)
    return wrapper


def _count_fs(method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: HadoopFS, *args: Any, **kwargs: Any) -> Any:
        if PROFILE.stack:
            PROFILE.stack[-1].fs_ops += 1
        else:
            Profile.outside_fs_ops += 1
        return method(self, *args, **kwargs)
    return wrapper


def _count_written(method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        out = method(self, path, *args, **kwargs)
        if PROFILE.stack:
            record = PROFILE.stack[-1]
            record.writes += 1
            session = self._spark
            jvm = session._jvm
            p = jvm.org.apache.hadoop.fs.Path(path)
            files = p.getFileSystem(session._jsc.hadoopConfiguration()).listFiles(p, True)
            while files.hasNext():
                if files.next().getPath().getName().startswith("part-"):
                    record.files += 1
        return out
    return wrapper


def _timed(method: Callable[..., Any], slot: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if PROFILE.timing:  # sqlglot inside render: counted once
            return method(*args, **kwargs)
        PROFILE.timing = True
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            PROFILE.timing = False
            if PROFILE.stack:
                record = PROFILE.stack[-1]
                setattr(record, slot, getattr(record, slot) + time.perf_counter() - started)
    return wrapper


def install() -> None:
    """Instrument sparkdb's connection, the warehouse's file system calls and Parquet writes."""
    from pyspark.sql.readwriter import DataFrameWriter  # noqa: PLC0415 - optional extra

    sparkdb.SparkConnection.execute = _instrument(sparkdb.SparkConnection.execute, False)  # type: ignore[method-assign]
    sparkdb.SparkConnection.executemany = _instrument(sparkdb.SparkConnection.executemany, True)  # type: ignore[method-assign]
    for name in ("exists", "mkdirs", "delete", "listdir", "list_dirs", "glob", "rename", "read_text",
                 "write_text", "replace"):
        setattr(HadoopFS, name, _count_fs(getattr(HadoopFS, name)))
    DataFrameWriter.parquet = _count_written(DataFrameWriter.parquet)  # type: ignore[method-assign]
    from pyspark.sql import SparkSession  # noqa: PLC0415 - optional extra

    SparkSession.sql = _timed(SparkSession.sql, "analyse")  # type: ignore[method-assign]
    sparkdb.render = _timed(sparkdb.render, "parse")  # type: ignore[assignment]
    sparkdb.sqlglot.parse = _timed(sparkdb.sqlglot.parse, "parse")  # type: ignore[assignment]
    sparkdb.sqlglot.parse_one = _timed(sparkdb.sqlglot.parse_one, "parse")  # type: ignore[assignment]


def jvm_cpu_seconds() -> float | None:
    """The CPU time (user + system) the Spark JVM has used so far: on a shared machine steadier than wall time."""
    from pyspark import SparkContext  # noqa: PLC0415 - optional extra

    gateway = SparkContext._gateway
    if gateway is None:
        return None
    pid = int(gateway.jvm.java.lang.ProcessHandle.current().pid())
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(total: float, top: int) -> str:
    by_kind: dict[str, list[Record]] = defaultdict(list)
    for r in PROFILE.records:
        by_kind[r.kind].append(r)
    lines = [f"{'statement kind':34} {'count':>6} {'seconds':>8} {'jobs':>6} {'writes':>6} {'files':>6} {'fs ops':>7}"
             f" {'parse s':>7} {'analyse s':>9}"]
    rows = sorted(by_kind.items(), key=lambda kv: -sum(r.seconds for r in kv[1]))
    for kind, recs in rows:
        lines.append(f"{kind:34} {len(recs):6d} {sum(r.seconds for r in recs):8.1f} {sum(r.jobs for r in recs):6d} "
                     f"{sum(r.writes for r in recs):6d} {sum(r.files for r in recs):6d} "
                     f"{sum(r.fs_ops for r in recs):7d} {sum(r.parse for r in recs):7.1f} "
                     f"{sum(r.analyse for r in recs):9.1f}")
    recs = PROFILE.records
    in_sql = sum(r.seconds for r in recs)
    lines.append(f"{'all statements':34} {len(recs):6d} {in_sql:8.1f} {sum(r.jobs for r in recs):6d} "
                 f"{sum(r.writes for r in recs):6d} {sum(r.files for r in recs):6d} {sum(r.fs_ops for r in recs):7d} "
                 f"{sum(r.parse for r in recs):7.1f} {sum(r.analyse for r in recs):9.1f}")
    lines.append(f"{'outside statements':34} {'':6} {total - in_sql:8.1f} {'':6} {'':6} {'':6} "
                 f"{PROFILE.outside_fs_ops:7d}")
    lines.append(f"{'step total (session start incl.)':34} {'':6} {total:8.1f}")
    jvm = jvm_cpu_seconds()
    lines.append(f"CPU seconds: JVM {jvm if jvm is not None else float('nan'):.1f}, Python {time.process_time():.1f}; "
                 f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    lines.append("")
    lines.append(f"slowest {top} statements:")
    for r in sorted(recs, key=lambda r: -r.seconds)[:top]:
        lines.append(f"  {r.seconds:6.2f}s {r.jobs:3d} jobs {r.files:3d} files  {r.kind}: {r.sql[:110]}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--conf", action="append", default=[], help="a --spark-conf KEY=VALUE (repeatable)")
    parser.add_argument("step", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    install()
    started = time.perf_counter()
    confs = [arg for item in ns.conf for arg in ("--spark-conf", item)]
    result = CliRunner().invoke(app, ["--engine", "spark", "--spark-master", ns.master, "--warehouse", ns.warehouse,
                                      *confs, *ns.step])
    total = time.perf_counter() - started
    if result.exit_code != 0:
        print(result.output, file=sys.stderr)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return int(result.exit_code or 1)
    print(report(total, ns.top))
    if ns.json is not None:
        ns.json.write_text(json.dumps([asdict(r) for r in PROFILE.records], indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
