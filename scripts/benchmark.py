#!/usr/bin/env python3
"""Benchmark mktool end to end on synthetic extracts, against three hand-written baselines.

    python scripts/benchmark.py --subscribers 1000000 [--work /tmp/mkbench] [--steps ...]
                                [--repeat 3] [--skip-pandas] [--json results.json]
    python scripts/benchmark.py --subscribers 10000000 --steps run --skip-pandas
    python scripts/benchmark.py -n 1000000 --engine both --spark-master 'local[2]' \
                                --spark-conf spark.driver.memory=8g      # DuckDB and Spark side by side

What it does (docs/benchmark.md explains every figure):

1. Generates the extracts once with scripts/generate_fixtures.py into
   ``<work>/extracts-<N>/`` (months 2026-08..2026-10) and reuses them on later runs; a
   small ``extracts-<N>.json`` beside the folder marks a complete generation.
2. Runs each mktool step as its own subprocess (``--quiet``) against a fresh database
   ``<work>/bench-<N>.duckdb``: ingest, score, matrix, plan, export (month 2026-10, export
   cycle date 2026-11-01), then evaluate and factors (not in the pipeline total; factors first
   ingests, untimed, the churn label ``<work>/label-<N>/subscribers_2026-11.parquet``, generated
   once) — or ``mktool run`` end to end with ``--steps run``. For every
   process it records wall time and peak RSS: the process tree's summed RSS polled every
   20 ms with psutil, and the kernel's high-water mark from wait4() (which catches spikes
   between polls); the figure shown is the larger of the two. A step whose command is not
   in ``mktool --help`` yet is skipped and said so; a step whose prerequisite was skipped
   or failed is skipped too.
3. Measures three baselines of the plan step on the same extracts, each in a subprocess
   (the DuckDB one with the same thread count and memory limit as mktool): one hand-written
   DuckDB query doing SPEC §5 end to end from the raw Parquet files (``COPY ... TO``
   Parquet), a straightforward pandas script and a polars lazy query. All outputs must agree
   on the number of targeted customers.
4. Prints the table (step, seconds, peak RSS MB) and the target ratios, and with
   ``--json`` writes all the figures.
5. With ``--engine spark`` or ``both``, runs the steps (``--spark-steps``) as ``mktool --engine spark
   --spark-master M --warehouse W <step>`` on a fresh warehouse, measured the same way (the peak RSS is
   the process tree's: the Python driver and the JVM child, each kind's own peak kept too), and prints
   DuckDB and Spark side by side with the ``uptime`` load at the end of every step.

This is a script, not a test: it never fails on a missed target (exit status 0 unless
something could not run at all); it prints MISS beside the figure instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import psutil

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "scripts" / "generate_fixtures.py"

MONTH = "2026-10"
MONTHS = ("2026-08", "2026-09", "2026-10")
NEXT_MONTH = "2026-11"  # the churn label of MONTH (`mktool factors`)
EXPORT_DATE = "2026-11-01"
SEED = 7
PIPELINE = ("ingest", "score", "matrix", "plan", "export")
#: The steps measured by default: the pipeline (its total is what builds are compared by), then the
#: campaign evaluation of the exported month, the churn factor ranking and the segment profile of the scored
#: month (not in the total: an older build has none of them).
DEFAULT_STEPS = (*PIPELINE, "evaluate", "factors", "profile", "scene")
ALL_STEPS = (*DEFAULT_STEPS, "run")
#: The steps a Spark run takes by default: the pipeline, which the README's side-by-side table compares.
#: evaluate and scene run on Spark too (docs/spark.md) but only with --spark-steps: scene's 31 batches take
#: minutes each there, whatever the data's size.
SPARK_STEPS = (*PIPELINE, "run")
#: step -> the steps whose output it needs (a skipped or failed prerequisite skips it).
NEEDS = {"ingest": (), "score": ("ingest",), "matrix": ("score",), "plan": ("score",),
         "export": ("matrix",), "evaluate": ("export",), "factors": ("score",), "profile": ("score",),
         "scene": ("export",), "run": ()}
#: How mktool is started: this checkout's code (``python -m mktool`` with the checkout first on
#: PYTHONPATH), not whatever ``mktool`` on PATH was last installed from (--mktool overrides).
MKTOOL: list[str] = [sys.executable, "-m", "mktool"]
MKTOOL_ENV: dict[str, str] = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
}
POLL_SECONDS = 0.02
#: the parts of a step's process tree whose peaks are kept apart (:func:`process_kind`)
PARTS = ("driver", "jvm", "workers")
MB = 1024 * 1024

# Targets (docs/benchmark.md says where they come from).
TARGET_PLAN_VS_SQL = 1.5          # mktool plan ≤ 1.5 × the hand-written DuckDB query
TARGET_INGEST_SCORE_S = 15.0      # ingest + score ≤ 15 s at 1M subscribers
TARGET_INGEST_SCORE_RSS_MB = 2048  # … with peak RSS ≤ 2 GB
TARGET_STEP_RSS_MB = 3072          # every step ≤ 3 GB


# -- measuring one process ------------------------------------------------------------------------
@dataclass
class Measured:
    name: str
    command: list[str]
    status: str = "ok"                 # ok | failed (exit N) | skipped: why
    seconds: float | None = None
    peak_rss_mb: float | None = None   # max(polled tree sum, kernel high-water mark)
    polled_tree_rss_mb: float | None = None
    hiwater_rss_mb: float | None = None
    cpu_seconds: float | None = None   # user + system of the process and its children
    other_load_cores: float | None = None  # CPU used by everything else on the machine meanwhile, in cores
    extra: dict[str, Any] = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)  # wall seconds of each repetition

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _tree_rss(proc: psutil.Process) -> int:
    return sum(_tree_rss_by_kind(proc).values())


def process_kind(p: psutil.Process, root: psutil.Process) -> str:
    """Which part of a step's process tree ``p`` is: ``driver``, ``jvm`` or ``workers``.

    A Spark step is several processes: the Python driver (mktool and PySpark's client, the process
    started), the JVM that PySpark starts as its child (``spark-submit`` execs ``java``), and the
    Python workers the JVM forks (``pyspark.daemon``) when it hands rows to Python. A DuckDB step is
    the driver alone.
    """
    if p.pid == root.pid:
        return "driver"
    try:
        name = p.name()
    except psutil.Error:
        return "workers"
    return "jvm" if name.startswith("java") else "workers"


def _tree_rss_by_kind(proc: psutil.Process, cpu: dict[int, float] | None = None) -> dict[str, int]:
    """RSS of the process and its descendants, summed by :func:`process_kind`; each one's CPU seconds
    so far into ``cpu`` (the JVM is never waited for, so ``wait4`` does not count its CPU)."""
    out = {"driver": 0, "jvm": 0, "workers": 0}
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            rss = p.memory_info().rss
            if cpu is not None:
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
        except psutil.Error:
            continue
        out[process_kind(p, proc)] += rss
    return out


def _busy(t: Any) -> float:
    """Seconds the machine's CPUs were busy (guest time is already inside user on Linux)."""
    return t.user + getattr(t, "nice", 0.0) + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


QUIET_WAIT = 0.0  # set from --quiet-wait


def measure(name: str, command: list[str], *, log_dir: Path, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Measured:
    """Run ``command`` to completion; wall time, peak RSS (polled tree sum and kernel high-water)."""
    wait_for_quiet(QUIET_WAIT)
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    result = Measured(name, command)
    me = psutil.Process()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        sys_before, me_before = psutil.cpu_times(), me.cpu_times()
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=cwd)
        peak = 0
        peak_by_kind = {"driver": 0, "jvm": 0, "workers": 0}
        tree_cpu: dict[int, float] = {}  # pid -> its user + system seconds, last seen
        done = threading.Event()

        def poll() -> None:
            nonlocal peak
            try:
                ps = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not done.is_set():
                by_kind = _tree_rss_by_kind(ps, tree_cpu)
                peak = max(peak, sum(by_kind.values()))
                for kind, rss in by_kind.items():
                    peak_by_kind[kind] = max(peak_by_kind[kind], rss)
                done.wait(POLL_SECONDS)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        poller.join()
        sys_after, me_after = psutil.cpu_times(), me.cpu_times()
        proc.returncode = os.waitstatus_to_exitcode(status)
    result.seconds = seconds
    result.runs = [seconds]
    result.polled_tree_rss_mb = peak / MB
    if peak_by_kind["jvm"]:  # each part's own peak (they need not peak at the same poll)
        # the whole tree's CPU as last polled (up to 20 ms short per process), JVM included
        result.extra["tree_cpu_seconds"] = sum(tree_cpu.values())
        for kind, rss in peak_by_kind.items():
            result.extra[f"peak_{kind}_rss_mb"] = rss / MB
    result.hiwater_rss_mb = usage.ru_maxrss * 1024 / MB  # ru_maxrss is in KiB on Linux
    result.peak_rss_mb = max(result.polled_tree_rss_mb, result.hiwater_rss_mb)
    result.cpu_seconds = usage.ru_utime + usage.ru_stime
    # Busy CPU of the whole machine minus this step's and the poller's: other people's load. A Spark
    # step's own CPU is its whole tree's: wait4 counts only the driver, never the JVM it starts
    # (the JVM's two busy cores were reported as other load before).
    busy = _busy(sys_after) - _busy(sys_before)
    mine = (me_after.user + me_after.system) - (me_before.user + me_before.system)
    step_cpu = max(result.cpu_seconds, result.extra.get("tree_cpu_seconds", 0.0))
    result.other_load_cores = max(0.0, busy - step_cpu - mine) / seconds if seconds > 0 else 0.0
    if proc.returncode != 0:
        tail = err_path.read_text(errors="replace").strip().splitlines()[-3:]
        result.status = f"failed (exit {proc.returncode})"
        result.extra["stderr_tail"] = tail
    return result


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float | None:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` cores for 2 s in a row.

    On a shared machine every other process's CPU time inflates the wall times measured here.
    Returns the load seen last (in cores), or None when not waiting.
    """
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    cores = psutil.cpu_count() or 1
    quiet_samples = 0
    load = 0.0
    while True:
        load = psutil.cpu_percent(interval=1.0) / 100 * cores
        quiet_samples = quiet_samples + 1 if load < threshold else 0
        if quiet_samples >= 2 or time.monotonic() >= deadline:
            return load


def best_of(runs: list[Measured]) -> Measured:
    """Repetitions of one measurement: the fastest run's figures, the largest peak RSS, all times kept."""
    ok = [r for r in runs if r.ok] or runs
    best = min(ok, key=lambda r: r.seconds if r.seconds is not None else float("inf"))
    best.runs = [r.seconds for r in runs if r.seconds is not None]
    rss = [r.peak_rss_mb for r in ok if r.peak_rss_mb is not None]
    if rss:
        best.peak_rss_mb = max(rss)
    return best


# -- machine and environment ----------------------------------------------------------------------
def machine_facts(threads: int, memory_limit: str) -> dict[str, Any]:
    import duckdb

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    try:  # the editable install runs the working tree: say when it differs from the commit
        dirty = [line[3:] for line in subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "mktool", "matrices"], capture_output=True,
            text=True, check=False).stdout.splitlines() if line.strip()]
    except OSError:
        dirty = []
    try:
        mk_version = subprocess.run([*MKTOOL, "--version"], capture_output=True, text=True,
                                    check=False, env=MKTOOL_ENV).stdout.strip()
        mk_code = mktool_code()
    except OSError:
        mk_version, mk_code = "mktool cannot be started", ""
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu_model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "mktool": mk_version,
        "mktool_code": mk_code,
        "mktool_command": " ".join(MKTOOL),
        "git_commit": commit,
        "git_uncommitted": dirty,
        "threads": threads,
        "memory_limit": memory_limit,
    }


def mktool_code() -> str:
    """Where the mktool package that the steps run comes from."""
    if MKTOOL[1:3] != ["-m", "mktool"]:
        return shutil.which(MKTOOL[0]) or MKTOOL[0]
    return subprocess.run([MKTOOL[0], "-c", "import mktool, os; print(os.path.dirname(mktool.__file__))"],
                          capture_output=True, text=True, check=False, env=MKTOOL_ENV).stdout.strip()


def default_memory_limit() -> str:
    """mktool's own default (75% of RAM), so the baselines get the same budget."""
    try:
        from mktool.config import default_memory_limit as mk_default

        return mk_default()
    except Exception:  # noqa: BLE001 - the benchmark must run whatever state mktool is in
        return f"{max(1, int(psutil.virtual_memory().total * 0.75 / 2**30))}GB"


def available_commands() -> set[str]:
    """Subcommands listed by ``mktool --help`` (a step whose command is missing is skipped)."""
    try:
        text = subprocess.run([*MKTOOL, "--help"], capture_output=True, text=True, check=False,
                              env=MKTOOL_ENV).stdout
    except OSError:
        return set()
    commands: set[str] = set()
    in_commands = False
    for line in text.splitlines():
        if line.strip().lower().startswith("commands"):
            in_commands = True
            continue
        if in_commands:
            m = re.match(r"^\s{2}([a-z][\w-]*)\b", line)
            if m:
                commands.add(m.group(1))
            elif line.strip() and not line.startswith(" "):
                in_commands = False
    return commands


def command_options(name: str) -> str:
    try:
        return subprocess.run([*MKTOOL, name, "--help"], capture_output=True, text=True, check=False,
                              env=MKTOOL_ENV).stdout
    except OSError:
        return ""


# -- extracts ---------------------------------------------------------------------------------------
def _generated_for(n: int) -> dict[str, Any]:
    """What a cached generation must have been made with: size, months, seed and the generator's hash."""
    generator_sha = hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:16]
    return {"subscribers": n, "months": list(MONTHS), "seed": SEED, "generator_sha256": generator_sha}


def _marker(marker: Path) -> dict[str, Any]:
    """A cache marker's record ({} when it is missing or unreadable)."""
    try:
        return json.loads(marker.read_text()) if marker.exists() else {}
    except ValueError:
        return {}


def ensure_extracts(work: Path, n: int) -> tuple[Path, float | None]:
    """``<work>/extracts-<N>``, generated once; returns (folder, generation seconds or None if cached)."""
    folder = work / f"extracts-{n}"
    marker = work / f"extracts-{n}.json"
    wanted = _generated_for(n)
    if marker.exists() and folder.is_dir():
        done = _marker(marker)
        if {k: done.get(k) for k in wanted} == wanted and all((folder / f).exists() for f in done.get("files", [])):
            return folder, None
        if done.get("generator_sha256") != wanted["generator_sha256"]:
            print("scripts/generate_fixtures.py changed since the cached extracts were made: regenerating",
                  file=sys.stderr)
    if folder.exists():
        shutil.rmtree(folder)
    marker.unlink(missing_ok=True)
    print(f"generating {n:,} subscribers × {len(MONTHS)} months into {folder} …", file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(GENERATOR), "--subscribers", str(n), "--months", ",".join(MONTHS),
                    "--seed", str(SEED), "--out", str(folder)], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    files = sorted(p.name for p in folder.glob("*.parquet"))
    marker.write_text(json.dumps({**wanted, "files": files, "seconds": round(seconds, 1)}, indent=2))
    return folder, seconds


#: The scene batch (issue 14): one event per subscriber in one hour of the month's last day, the
#: default scenes' four event types in the fixtures' proportions, values around each scene's edge.
SCENE_EVENTS_SQL = """
COPY (
    WITH s AS (SELECT msisdn, hash(msisdn || 'bench-scene') AS h FROM read_parquet('{subscribers}')),
    e AS (
        SELECT msisdn, h,
               CASE h % 20 WHEN 0 THEN 'roaming_start' WHEN 1 THEN 'roaming_start' WHEN 2 THEN 'roaming_start'
                    ELSE CASE h % 3 WHEN 0 THEN 'balance_low' WHEN 1 THEN 'data_90pct' ELSE 'data_100pct' END
               END AS event_type
        FROM s
    )
    SELECT msisdn,
           TIMESTAMP '{day} 00:00:00' + to_seconds(CAST((h // 20) % 3600 AS BIGINT)) AS event_time,
           event_type,
           CAST(CASE event_type WHEN 'balance_low' THEN ((h // 7) % 1200) / 100.0
                                WHEN 'data_90pct' THEN 90 + ((h // 7) % 100) / 10.0
                                WHEN 'data_100pct' THEN 100 + ((h // 7) % 500) / 10.0
                                ELSE ((h // 7) % 600) / 10.0 END AS DOUBLE) AS value
    FROM e ORDER BY event_time, msisdn
) TO '{out}' (FORMAT parquet)
"""
SCENE_DAY = "2026-10-31"


def ensure_scene_events(work: Path, n: int, extracts: Path) -> tuple[Path, float | None]:
    """``<work>/scene-events-<N>/events-<day>.parquet`` (one event per subscriber), made once per
    extracts generation; returns (file, seconds or None if cached)."""
    folder = work / f"scene-events-{n}"
    file = folder / f"events-{SCENE_DAY}.parquet"
    marker = work / f"scene-events-{n}.json"
    wanted = {**_generated_for(n), "sql_sha256": hashlib.sha256(SCENE_EVENTS_SQL.encode()).hexdigest()[:16]}
    if file.exists() and _marker(marker) == wanted:
        return file, None
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    subscribers = extracts / f"subscribers_{MONTH}.parquet"
    with duckdb.connect() as con:
        con.execute(SCENE_EVENTS_SQL.format(subscribers=subscribers.as_posix(), day=SCENE_DAY, out=file.as_posix()))
    marker.write_text(json.dumps(wanted, indent=2))
    return file, time.perf_counter() - start


def ensure_label_month(work: Path, n: int) -> tuple[Path, float | None]:
    """``<work>/label-<N>/subscribers_<M+1>.parquet``: the churn label ``mktool factors`` needs, generated
    once beside the cached extracts (which stay as they are) and reused; returns (file, seconds or None).

    The generator is deterministic, so its ``--label-month`` run over the same subscribers, months and
    seed writes the same extracts plus the next month's subscribers: only that file is kept.
    """
    folder = work / f"label-{n}"
    target = folder / f"subscribers_{NEXT_MONTH}.parquet"
    marker = work / f"label-{n}.json"
    wanted = _generated_for(n)
    if target.exists():
        done = _marker(marker)
        if {k: done.get(k) for k in wanted} == wanted:
            return target, None
    if folder.exists():
        shutil.rmtree(folder)
    marker.unlink(missing_ok=True)
    staging = work / f"label-{n}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    print(f"generating the churn label ({NEXT_MONTH}'s subscribers) for {n:,} subscribers into {folder} …",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(GENERATOR), "--subscribers", str(n), "--months", ",".join(MONTHS),
                    "--seed", str(SEED), "--label-month", "--out", str(staging)], check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True)
    (staging / target.name).rename(target)
    shutil.rmtree(staging)
    marker.write_text(json.dumps({**wanted, "file": target.name, "seconds": round(seconds, 1)}, indent=2))
    return target, seconds


def ingest_label_month(work: Path, n: int, db: Path, env: dict[str, str], log_dir: Path,
                       notes: list[str], engine_opts: list[str] | None = None) -> str | None:
    """Before the factors step (untimed): ingest the churn label, M+1's subscribers; a failure's status or None."""
    label, seconds = ensure_label_month(work, n)
    log_dir.mkdir(parents=True, exist_ok=True)
    notes.append(f"churn label for factors: {label} ({'reused' if seconds is None else f'generated in {seconds:.1f} s'}"
                 "), ingested before the factors step, outside its time")
    print(f"ingesting the churn label {label.name} (not timed)", file=sys.stderr, flush=True)
    done = subprocess.run([*MKTOOL, *(engine_opts or []), "ingest", str(label), "--db", str(db), "--quiet"], env=env,
                          capture_output=True, text=True, check=False)
    (log_dir / f"mktool_ingest_label{'_spark' if engine_opts else ''}.stderr").write_text(done.stderr, encoding="utf-8")
    return None if done.returncode == 0 else f"failed: ingest of the churn label exited {done.returncode}"


def extract_facts(folder: Path) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    facts: dict[str, Any] = {"bytes": sum(p.stat().st_size for p in folder.glob("*.parquet"))}
    for table in ("subscribers", "usage", "billing", "plans"):
        files = sorted(folder.glob(f"{table}*.parquet"))
        if files:
            facts[f"{table}_rows"] = con.execute(
                "SELECT count(*) FROM read_parquet(?)", [[str(f) for f in files]]).fetchone()[0]
    if (folder / "plans.parquet").exists():
        facts["target_plans"] = con.execute(
            f"SELECT count(*) FROM read_parquet('{folder / 'plans.parquet'}') WHERE is_target").fetchone()[0]
    con.close()
    return facts


# -- baselines --------------------------------------------------------------------------------------
def window_months(month: str) -> list[str]:
    y, m = map(int, month.split("-"))
    out = []
    for back in (0, 1, 2):
        k = y * 12 + (m - 1) - back
        out.append(f"{k // 12:04d}-{k % 12 + 1:02d}")
    return out


def baseline_sql(extracts: Path, month: str, out: Path) -> str:
    """SPEC §5 end to end from the raw Parquet files, as one statement (COPY … TO Parquet)."""
    months = ", ".join(f"'{m}'" for m in window_months(month))
    d = extracts.as_posix()
    return f"""COPY (
WITH
sub AS (
    SELECT msisdn, plan_id, status FROM read_parquet('{d}/subscribers*.parquet') WHERE month = '{month}'
),
use AS (
    SELECT msisdn, avg(voice_out_min) AS voice_min_3m, avg(data_mb) AS data_mb_3m
    FROM read_parquet('{d}/usage*.parquet') WHERE month IN ({months}) GROUP BY msisdn
),
bill AS (
    SELECT msisdn, avg(rental_fee) AS rental_3m, avg(addon_fee) AS addon_3m,
           avg(rental_fee + voice_overage_fee + data_overage_fee + addon_fee) AS current_total_3m
    FROM read_parquet('{d}/billing*.parquet') WHERE month IN ({months}) GROUP BY msisdn
),
plans AS (SELECT * FROM read_parquet('{d}/plans.parquet')),
candidates AS (
    SELECT s.msisdn, s.plan_id, u.voice_min_3m, u.data_mb_3m, b.rental_3m, b.addon_3m, b.current_total_3m
    FROM sub s JOIN use u USING (msisdn) JOIN bill b USING (msisdn)
    WHERE s.status = 'active'
      AND round(u.data_mb_3m, 6) >= 5
      AND s.plan_id IN (SELECT plan_id FROM plans WHERE product_status = 1)
      AND b.current_total_3m > 0 AND b.rental_3m > 0
),
priced AS (
    SELECT c.msisdn, c.plan_id AS current_plan_id, t.plan_id, t.monthly_rental AS new_rental,
           greatest(0, coalesce(c.voice_min_3m, 0) - t.included_voice_min) * t.voice_overage_per_min
               AS new_voice_overage,
           greatest(0, c.data_mb_3m - t.included_data_mb) * t.data_overage_per_mb AS new_data_overage,
           coalesce(c.addon_3m, 0) AS addon_3m, c.current_total_3m AS current_total, c.rental_3m
    FROM candidates c JOIN plans t ON t.is_target AND t.plan_id <> c.plan_id
),
rated AS (
    SELECT *, new_rental + new_voice_overage + new_data_overage + addon_3m AS new_total
    FROM priced
),
rated6 AS (
    SELECT *, new_total / current_total AS total_fee_change, new_rental / rental_3m AS rental_change,
           round(new_total / current_total, 6) AS tfc6, round(new_rental / rental_3m, 6) AS rc6
    FROM rated
)
SELECT msisdn, current_plan_id, plan_id, new_rental, new_voice_overage, new_data_overage, new_total,
       current_total, total_fee_change, rental_change
FROM rated6
WHERE tfc6 BETWEEN 0.6 AND 1.5 AND rc6 BETWEEN 1.0 AND 2.0
QUALIFY row_number() OVER (PARTITION BY msisdn ORDER BY round(abs(tfc6 - 1), 6), new_rental DESC, plan_id) = 1
) TO '{out.as_posix()}' (FORMAT parquet)"""


DUCKDB_RUNNER = '''\
import json, sys, time
import duckdb
sql_file, out, threads, memory_limit, temp_dir = sys.argv[1:6]
con = duckdb.connect()
con.execute(f"SET threads = {int(threads)}")
con.execute(f"SET memory_limit = '{memory_limit}'")
con.execute("SET temp_directory = ?", [temp_dir])
start = time.perf_counter()
con.execute(open(sql_file, encoding="utf-8").read())
query_s = time.perf_counter() - start
rows, customers = con.execute(f"SELECT count(*), count(DISTINCT msisdn) FROM read_parquet('{out}')").fetchone()
print(json.dumps({"query_seconds": query_s, "rows": rows, "customers": customers}))
'''

PANDAS_RUNNER = '''\
"""SPEC section 5 plan recommendation, written the straightforward pandas way."""
import glob, json, sys, time
import numpy as np
import pandas as pd

extracts, month, months, out, chunk = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4], int(sys.argv[5])
start = time.perf_counter()

def read(table, columns):
    frames = [pd.read_parquet(f, columns=columns) for f in sorted(glob.glob(f"{extracts}/{table}*.parquet"))]
    return pd.concat(frames, ignore_index=True)

subs = read("subscribers", ["msisdn", "month", "plan_id", "status"])
subs = subs[subs["month"] == month]
usage = read("usage", ["msisdn", "month", "voice_out_min", "data_mb"])
usage = usage[usage["month"].isin(months)]
billing = read("billing", ["msisdn", "month", "rental_fee", "voice_overage_fee", "data_overage_fee", "addon_fee"])
billing = billing[billing["month"].isin(months)]
plans = pd.read_parquet(f"{extracts}/plans.parquet")

use = usage.groupby("msisdn").agg(voice_min_3m=("voice_out_min", "mean"), data_mb_3m=("data_mb", "mean"))
billing["cur"] = billing["rental_fee"] + billing["voice_overage_fee"] + billing["data_overage_fee"] \
+ billing["addon_fee"]
bill = billing.groupby("msisdn").agg(rental_3m=("rental_fee", "mean"), addon_3m=("addon_fee", "mean"),
                                     current_total_3m=("cur", "mean"))
del usage, billing

c = subs[["msisdn", "plan_id", "status"]].merge(use, on="msisdn").merge(bill, on="msisdn")
eligible = set(plans.loc[plans["product_status"] == 1, "plan_id"])
c = c[(c["status"] == "active") & (c["data_mb_3m"].round(6) >= 5) & c["plan_id"].isin(eligible)
      & (c["current_total_3m"] > 0) & (c["rental_3m"] > 0)]
c = c.drop(columns="status").rename(columns={"plan_id": "current_plan_id"}).reset_index(drop=True)
c["voice_min_3m"] = c["voice_min_3m"].fillna(0.0)
c["addon_3m"] = c["addon_3m"].fillna(0.0)
targets = plans.loc[plans["is_target"], ["plan_id", "monthly_rental", "included_data_mb", "included_voice_min",
                                         "data_overage_per_mb", "voice_overage_per_min"]]

kept = []
for i in range(0, len(c), chunk):  # the Cartesian product in chunks of customers, so it fits in memory
    x = c.iloc[i:i + chunk].merge(targets, how="cross")
    x = x[x["plan_id"] != x["current_plan_id"]]
    x["new_voice_overage"] = (x["voice_min_3m"] - x["included_voice_min"]).clip(lower=0) * x["voice_overage_per_min"]
    x["new_data_overage"] = (x["data_mb_3m"] - x["included_data_mb"]).clip(lower=0) * x["data_overage_per_mb"]
    x["new_total"] = x["monthly_rental"] + x["new_voice_overage"] + x["new_data_overage"] + x["addon_3m"]
    x["total_fee_change"] = x["new_total"] / x["current_total_3m"]
    x["rental_change"] = x["monthly_rental"] / x["rental_3m"]
    tfc6, rc6 = x["total_fee_change"].round(6), x["rental_change"].round(6)
    x = x[tfc6.between(0.6, 1.5) & rc6.between(1.0, 2.0)].copy()
    x["dist"] = (x["total_fee_change"].round(6) - 1).abs().round(6)
    kept.append(x)

res = pd.concat(kept, ignore_index=True)
res = res.sort_values(["msisdn", "dist", "monthly_rental", "plan_id"], ascending=[True, True, False, True])
res = res.groupby("msisdn", sort=False).head(1)
res = res.rename(columns={"monthly_rental": "new_rental", "current_total_3m": "current_total"})
res[["msisdn", "current_plan_id", "plan_id", "new_rental", "new_voice_overage", "new_data_overage", "new_total",
     "current_total", "total_fee_change", "rental_change"]].to_parquet(out, index=False)
print(json.dumps({"query_seconds": time.perf_counter() - start, "rows": len(res),
                  "customers": int(res["msisdn"].nunique())}))
'''

POLARS_RUNNER = '''\
"""SPEC section 5 plan recommendation, written the straightforward polars way (lazy, one collect)."""
import glob, json, sys, time
import polars as pl

extracts, month, months, out = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
start = time.perf_counter()

def scan(table):
    return pl.scan_parquet(sorted(glob.glob(f"{extracts}/{table}*.parquet")))

subs = scan("subscribers").filter(pl.col("month") == month).select("msisdn", "plan_id", "status")
use = (scan("usage").filter(pl.col("month").is_in(months)).group_by("msisdn")
       .agg(voice_min_3m=pl.col("voice_out_min").mean(), data_mb_3m=pl.col("data_mb").mean()))
bill = (scan("billing").filter(pl.col("month").is_in(months))
        .with_columns(cur=pl.col("rental_fee") + pl.col("voice_overage_fee") + pl.col("data_overage_fee")
                      + pl.col("addon_fee"))
        .group_by("msisdn")
        .agg(rental_3m=pl.col("rental_fee").mean(), addon_3m=pl.col("addon_fee").mean(),
             current_total_3m=pl.col("cur").mean()))
plans = pl.scan_parquet(f"{extracts}/plans.parquet")
eligible = plans.filter(pl.col("product_status") == 1).select("plan_id")
c = (subs.join(use, on="msisdn").join(bill, on="msisdn")
     .filter((pl.col("status") == "active") & (pl.col("data_mb_3m").round(6) >= 5)
             & (pl.col("current_total_3m") > 0) & (pl.col("rental_3m") > 0))
     .join(eligible, on="plan_id", how="semi")
     .drop("status").rename({"plan_id": "current_plan_id"})
     .with_columns(pl.col("voice_min_3m").fill_null(0.0), pl.col("addon_3m").fill_null(0.0)))
targets = plans.filter(pl.col("is_target")).select(
    "plan_id", "monthly_rental", "included_data_mb", "included_voice_min", "data_overage_per_mb",
    "voice_overage_per_min")
x = (c.join(targets, how="cross").filter(pl.col("plan_id") != pl.col("current_plan_id"))
     .with_columns(
         new_voice_overage=(pl.col("voice_min_3m") - pl.col("included_voice_min")).clip(lower_bound=0)
         * pl.col("voice_overage_per_min"),
         new_data_overage=(pl.col("data_mb_3m") - pl.col("included_data_mb")).clip(lower_bound=0)
         * pl.col("data_overage_per_mb"))
     .with_columns(new_total=pl.col("monthly_rental") + pl.col("new_voice_overage") + pl.col("new_data_overage")
                   + pl.col("addon_3m"))
     .with_columns(total_fee_change=pl.col("new_total") / pl.col("current_total_3m"),
                   rental_change=pl.col("monthly_rental") / pl.col("rental_3m"))
     .filter(pl.col("total_fee_change").round(6).is_between(0.6, 1.5)
             & pl.col("rental_change").round(6).is_between(1.0, 2.0))
     .with_columns(dist=(pl.col("total_fee_change").round(6) - 1).abs().round(6))
     .sort(["msisdn", "dist", "monthly_rental", "plan_id"], descending=[False, False, True, False])
     .group_by("msisdn", maintain_order=True).head(1)
     .rename({"monthly_rental": "new_rental", "current_total_3m": "current_total"})
     .select("msisdn", "current_plan_id", "plan_id", "new_rental", "new_voice_overage", "new_data_overage",
             "new_total", "current_total", "total_fee_change", "rental_change"))
res = x.collect()
res.write_parquet(out)
print(json.dumps({"query_seconds": time.perf_counter() - start, "rows": res.height,
                  "customers": res["msisdn"].n_unique()}))
'''


def run_baseline(name: str, runner: str, args: list[str], *, work: Path, log_dir: Path) -> Measured:
    script = work / f"{name}.py"
    script.write_text(runner, encoding="utf-8")
    m = measure(name, [sys.executable, str(script), *args], log_dir=log_dir)
    if m.ok:
        try:
            m.extra.update(json.loads((log_dir / f"{name}.stdout").read_text().strip().splitlines()[-1]))
        except (ValueError, IndexError):
            m.status = "failed (no result line)"
    return m


# -- mktool steps -----------------------------------------------------------------------------------
def fresh_database(db: Path) -> None:
    for p in (db, db.with_name(db.name + ".wal"), db.with_name(db.name + ".lock")):
        p.unlink(missing_ok=True)
    spill = db.with_name(db.name + ".tmp")
    if spill.exists():
        shutil.rmtree(spill, ignore_errors=True)


def ingest_paths(extracts: Path, exclude: list[str]) -> list[str]:
    """The extracts folder, or its files minus the excluded tables' (``--ingest-exclude``)."""
    if not exclude:
        return [str(extracts)]
    keep = []
    for f in sorted(extracts.glob("*.parquet")):
        table = re.split(r"[_.-]\d{4}-\d{2}$", f.stem)[0]
        if table not in exclude:
            keep.append(str(f))
    return keep


def step_command(step: str, *, db: Path, extracts: Path, out_dir: Path, run_help: str,
                 exclude: list[str], scene_events: Path | None = None) -> list[str]:
    common = ["--db", str(db), "--quiet"]
    if step == "scene":
        return [*MKTOOL, "scene", "--events", str(scene_events), "--out", str(out_dir), *common]
    if step == "ingest":
        return [*MKTOOL, "ingest", *ingest_paths(extracts, exclude), *common]
    if step in ("score", "matrix", "plan"):
        return [*MKTOOL, step, "--month", MONTH, *common]
    if step == "export":
        return [*MKTOOL, "export", "--month", MONTH, "--date", EXPORT_DATE, "--out", str(out_dir), *common]
    if step == "factors":
        return [*MKTOOL, "factors", "--month", MONTH, "--top", "0", "--format", "json", "--out",
                str(out_dir / "factors.json"), *common]
    if step == "evaluate":
        return [*MKTOOL, "evaluate", "--month", MONTH, "--format", "json", "--out", str(out_dir / "evaluation.json"),
                *common]
    if step == "profile":
        return [*MKTOOL, "profile", "--month", MONTH, "--format", "json", "--out", str(out_dir / "profile.json"),
                *common]
    if step == "run":
        cmd = [*MKTOOL, "run", "--month", MONTH]
        for path in ingest_paths(extracts, exclude):
            cmd += ["--ingest", path]
        cmd += common
        if "--date" in run_help:
            cmd += ["--date", EXPORT_DATE]
        if "--out" in run_help:
            cmd += ["--out", str(out_dir)]
        return cmd
    raise ValueError(step)


def spark_engine_options(master: str, warehouse: Path, conf: list[str]) -> list[str]:
    """mktool's global options for the Spark runs (they go before the command)."""
    opts = ["--engine", "spark", "--spark-master", master, "--warehouse", str(warehouse)]
    for item in conf:
        opts += ["--spark-conf", item]
    return opts


def fresh_warehouse(warehouse: Path) -> None:
    """An empty warehouse folder for the Spark run, as the DuckDB run gets a fresh database."""
    if warehouse.exists():
        shutil.rmtree(warehouse)


def run_steps(step_names: list[str], *, engine: str, engine_opts: list[str], commands: set[str], run_help: str,
              db: Path, extracts: Path, out_dir: Path, exclude: list[str], scene_events: Path | None, work: Path,
              n: int, env: dict[str, str], log_dir: Path, notes: list[str], repeat: int) -> dict[str, Measured]:
    """Each step as its own measured ``mktool`` process on one engine, in order (a failed need skips)."""
    steps: dict[str, Measured] = {}
    tag = "" if engine == "duckdb" else f"_{engine}"
    for step in step_names:
        cmd = step_command(step, db=db, extracts=extracts, out_dir=out_dir, run_help=run_help,
                           exclude=exclude, scene_events=scene_events)
        cmd = [*cmd[:len(MKTOOL)], *engine_opts, *cmd[len(MKTOOL):]]
        missing = [need for need in NEEDS[step] if need in step_names and not steps.get(need, Measured(need, [])).ok]
        if step not in commands:
            steps[step] = Measured(step, cmd, status=f"skipped: `mktool {step}` not available yet")
        elif missing:
            steps[step] = Measured(step, cmd, status=f"skipped: needs {', '.join(missing)}")
        elif step == "factors" and (problem := ingest_label_month(work, n, db, env, log_dir, notes,
                                                                   engine_opts or None)):
            steps[step] = Measured(step, cmd, status=problem)
        else:
            shown = ["mktool", *cmd[len(MKTOOL):]]
            if len(shown) > 16:
                shown = [*shown[:3 + len(engine_opts)], f"… ({len(shown) - 3 - len(engine_opts)} more arguments)"]
            print(f"[{time.strftime('%H:%M:%S')}] running {' '.join(shown)} ({load_average()})", file=sys.stderr,
                  flush=True)
            reps = repeat if step == "plan" else 1
            steps[step] = best_of([measure(f"mktool_{step}{tag}", cmd, log_dir=log_dir, env=env) for _ in range(reps)])
            steps[step].name = step
            steps[step].extra["load_average"] = load_average()
        if not steps[step].ok:
            print(f"  {step} ({engine}): {steps[step].status}", file=sys.stderr, flush=True)
            for line in steps[step].extra.get("stderr_tail", []):
                print(f"    {line}", file=sys.stderr)
    return steps


def load_average() -> str:
    """``uptime``'s 1/5/15-minute load, recorded with every figure (the machine may be shared)."""
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def db_facts(db: Path, month: str) -> dict[str, Any]:
    """After the run: targeted customers, the plan funnel, table sizes (read-only, outside the timing)."""
    import duckdb

    facts: dict[str, Any] = {}
    if not db.exists():
        return facts
    facts["db_mb"] = round(db.stat().st_size / MB, 1)
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error as exc:
        return {**facts, "error": str(exc).splitlines()[0]}
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        for t in ("customer_view", "recommendations", "plan_recommendations"):
            if t in tables:
                facts[f"{t}_rows"] = con.execute(f'SELECT count(*) FROM "{t}" WHERE month = ?', [month]).fetchone()[0]
        if "plan_recommendations" in tables:
            facts["plan_customers"] = con.execute(
                "SELECT count(DISTINCT msisdn) FROM plan_recommendations WHERE month = ?", [month]).fetchone()[0]
        if "funnel_counts" in tables:
            facts["plan_funnel"] = dict(con.execute(
                "SELECT stage, count FROM funnel_counts WHERE month = ? AND funnel = 'plan' ORDER BY stage_no",
                [month]).fetchall())
    finally:
        con.close()
    return facts


def explain_plan(db: Path, out: Path) -> str | None:
    """EXPLAIN ANALYZE of mktool's plan query on the benchmark database (for --explain)."""
    import duckdb

    try:
        from mktool.config import resolve_matrices_dir
        from mktool.plan import recommend_query
        from mktool.planconfig import load_plan_config
    except Exception as exc:  # noqa: BLE001
        return f"cannot import mktool.plan: {exc}"
    config = load_plan_config(resolve_matrices_dir(None))
    q = recommend_query(MONTH, config)
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("EXPLAIN ANALYZE " + q.sql, q.params).fetchall()
    finally:
        con.close()
    text = "\n".join(r[1] for r in rows)
    out.write_text(text, encoding="utf-8")
    return None


# -- report -----------------------------------------------------------------------------------------
def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}"


def fmt_mb(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("ok" if ok else "MISS")


def compute_ratios(steps: dict[str, Measured], sql: Measured | None, pandas: Measured | None,
                   polars: Measured | None = None) -> list[dict[str, Any]]:
    ratios: list[dict[str, Any]] = []
    plan = steps.get("plan")
    if plan and plan.ok and sql and sql.ok:
        r = plan.seconds / sql.seconds
        ratios.append({"name": "mktool plan / hand-written DuckDB query", "value": r, "unit": "x",
                       "target": f"<= {TARGET_PLAN_VS_SQL}", "ok": r <= TARGET_PLAN_VS_SQL})
    else:
        ratios.append({"name": "mktool plan / hand-written DuckDB query", "value": None, "unit": "x",
                       "target": f"<= {TARGET_PLAN_VS_SQL}", "ok": None})
    if all(s in steps and steps[s].ok for s in PIPELINE):
        total = sum(steps[s].seconds for s in PIPELINE)
        label = "pipeline (ingest+score+matrix+plan+export)"
    elif "run" in steps and steps["run"].ok:
        total, label = steps["run"].seconds, "mktool run"
    else:
        total, label = None, "pipeline (ingest+score+matrix+plan+export)"
    if total is not None and pandas and pandas.ok:
        r = total / pandas.seconds
        ratios.append({"name": f"{label} / pandas plan only", "value": r, "unit": "x", "target": "< 1", "ok": r < 1})
    else:
        ratios.append({"name": f"{label} / pandas plan only", "value": None, "unit": "x", "target": "< 1",
                       "ok": None})
    plan = steps.get("plan")
    if plan and plan.ok and polars and polars.ok:
        ratios.append({"name": "mktool plan / polars plan only", "value": plan.seconds / polars.seconds,
                       "unit": "x", "target": "(for comparison)", "ok": None})
    if total is not None and polars and polars.ok:
        ratios.append({"name": f"{label} / polars plan only", "value": total / polars.seconds, "unit": "x",
                       "target": "(for comparison)", "ok": None})
    if all(s in steps and steps[s].ok for s in ("ingest", "score")):
        secs = steps["ingest"].seconds + steps["score"].seconds
        rss = max(steps["ingest"].peak_rss_mb, steps["score"].peak_rss_mb)
        ratios.append({"name": "ingest + score time", "value": secs, "unit": "s",
                       "target": f"<= {TARGET_INGEST_SCORE_S:g} s (at 1M)", "ok": secs <= TARGET_INGEST_SCORE_S})
        ratios.append({"name": "ingest + score peak RSS", "value": rss, "unit": "MB",
                       "target": f"<= {TARGET_INGEST_SCORE_RSS_MB} MB (at 1M)",
                       "ok": rss <= TARGET_INGEST_SCORE_RSS_MB})
    for name, m in steps.items():
        if m.ok:
            ratios.append({"name": f"{name} peak RSS", "value": m.peak_rss_mb, "unit": "MB",
                           "target": f"<= {TARGET_STEP_RSS_MB} MB", "ok": m.peak_rss_mb <= TARGET_STEP_RSS_MB})
    return ratios


def print_report(facts: dict[str, Any], n: int, data: dict[str, Any], rows: list[Measured],
                 ratios: list[dict[str, Any]], counts: dict[str, int | None], notes: list[str]) -> None:
    print()
    print(f"mktool benchmark — {n:,} subscribers, month {MONTH} (window {', '.join(MONTHS)})")
    print(f"  machine: {facts['cpu'] or platform.machine()}; {facts['logical_cores']} logical cores "
          f"({facts['physical_cores']} physical), {facts['ram_gb']} GB RAM")
    print(f"  mktool: {facts['mktool_command']} → {facts['mktool_code']}; rules {facts.get('matrices', '?')}")
    print(f"  software: Python {facts['python']}, duckdb {facts['duckdb']}, {facts['mktool']} "
          f"(git {facts['git_commit'] or '?'}"
          + (f" + uncommitted changes in {', '.join(facts['git_uncommitted'])}" if facts["git_uncommitted"] else "")
          + ")")
    print(f"  DuckDB threads {facts['threads']}, memory_limit {facts['memory_limit']} (mktool and baselines alike)")
    print(f"  extracts: {data.get('bytes', 0) / MB:,.0f} MB of Parquet; "
          f"subscribers {data.get('subscribers_rows', 0):,} "
          f"rows, usage {data.get('usage_rows', 0):,}, billing {data.get('billing_rows', 0):,}, "
          f"target plans {data.get('target_plans', '?')}")
    print()
    w = max(len(r.name) for r in rows) if rows else 10
    header = f"  {'step':<{w}}  {'seconds':>9}  {'peak RSS MB':>11}  {'CPU s':>8}  {'other load':>10}  status"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in rows:
        secs = fmt_s(r.seconds) if r.ok else "-"
        rss = fmt_mb(r.peak_rss_mb) if r.ok else "-"
        cpu = fmt_s(r.cpu_seconds) if r.ok else "-"
        other = f"{r.other_load_cores:.2f}" if r.ok and r.other_load_cores is not None else "-"
        status = r.status
        if r.ok and len(r.runs) > 1:
            status = f"best of {len(r.runs)}: " + ", ".join(f"{s:.2f}" for s in r.runs)
        print(f"  {r.name:<{w}}  {secs:>9}  {rss:>11}  {cpu:>8}  {other:>10}  {status}")
    print()
    print("  targets")
    for ratio in ratios:
        value = "-" if ratio["value"] is None else (
            f"{ratio['value']:.2f}×" if ratio["unit"] == "x" else
            f"{ratio['value']:,.2f} s" if ratio["unit"] == "s" else f"{ratio['value']:,.0f} MB")
        print(f"    {ratio['name']:<62} {value:>12}   target {ratio['target']:<24} {verdict(ratio['ok'])}")
    if any(v is not None for v in counts.values()):
        print()
        print("  targeted customers (plan, top 1): " + ", ".join(
            f"{k} {v:,}" if v is not None else f"{k} -" for k, v in counts.items()))
    for note in notes:
        print("  " + note)
    print()


def warehouse_facts(warehouse: Path, month: str) -> dict[str, Any]:
    """After the Spark run: targeted customers and the plan funnel, read from the warehouse's Parquet."""
    facts: dict[str, Any] = {}
    if not warehouse.is_dir():
        return facts
    facts["warehouse_mb"] = round(sum(p.stat().st_size for p in warehouse.rglob("*") if p.is_file()) / MB, 1)
    part = warehouse / "plan_recommendations" / f"month={month}"
    con = duckdb.connect()
    try:
        if part.is_dir():
            row = con.execute("SELECT count(DISTINCT msisdn) FROM read_parquet(?)",
                              [str(part / "*.parquet")]).fetchone()
            facts["plan_customers"] = row[0] if row else None
        funnel = warehouse / "funnel_counts" / f"month={month}"
        if funnel.is_dir():
            facts["plan_funnel"] = dict(con.execute(
                "SELECT stage, count FROM read_parquet(?) WHERE funnel = 'plan' ORDER BY stage_no",
                [str(funnel / "*.parquet")]).fetchall())
    except duckdb.Error as exc:
        facts["error"] = str(exc).splitlines()[0]
    finally:
        con.close()
    return facts


def side_by_side(duck: dict[str, Measured], spark: dict[str, Measured]) -> list[dict[str, Any]]:
    """One row per step on either engine: seconds, peak RSS (Spark: Python driver + JVM) and the ratio."""
    rows: list[dict[str, Any]] = []
    for name in [*duck, *(s for s in spark if s not in duck)]:
        d, k = duck.get(name), spark.get(name)
        row: dict[str, Any] = {"step": name}
        for engine, m in (("duckdb", d), ("spark", k)):
            row[f"{engine}_status"] = m.status if m else "not run"
            row[f"{engine}_seconds"] = m.seconds if m and m.ok else None
            row[f"{engine}_peak_rss_mb"] = m.peak_rss_mb if m and m.ok else None
            row[f"{engine}_cpu_seconds"] = m.cpu_seconds if m and m.ok else None
            row[f"{engine}_load"] = m.extra.get("load_average") if m else None
        for kind in PARTS:
            row[f"spark_{kind}_rss_mb"] = k.extra.get(f"peak_{kind}_rss_mb") if k and k.ok else None
        row["spark_tree_cpu_seconds"] = k.extra.get("tree_cpu_seconds") if k and k.ok else None
        ds, ks = row["duckdb_seconds"], row["spark_seconds"]
        row["spark_over_duckdb"] = ks / ds if ds and ks else None
        rows.append(row)
    both = [r for r in rows if r["step"] in PIPELINE]
    if len(both) == len(PIPELINE):
        total: dict[str, Any] = {"step": "pipeline total"}
        for engine in ("duckdb", "spark"):
            ok = all(r[f"{engine}_seconds"] is not None for r in both)
            total[f"{engine}_status"] = "ok" if ok else "incomplete"
            total[f"{engine}_seconds"] = sum(r[f"{engine}_seconds"] for r in both) if ok else None
            total[f"{engine}_peak_rss_mb"] = max(r[f"{engine}_peak_rss_mb"] for r in both) if ok else None
            total[f"{engine}_cpu_seconds"] = sum(r[f"{engine}_cpu_seconds"] for r in both) if ok else None
            total[f"{engine}_load"] = None
        for kind in PARTS:
            total[f"spark_{kind}_rss_mb"] = max((r[f"spark_{kind}_rss_mb"] for r in both
                                                 if r[f"spark_{kind}_rss_mb"] is not None), default=None)
        ds, ks = total["duckdb_seconds"], total["spark_seconds"]
        total["spark_over_duckdb"] = ks / ds if ds and ks else None
        rows.append(total)
    return rows


def print_side_by_side(rows: list[dict[str, Any]], master: str, conf: list[str]) -> None:
    print(f"  DuckDB and Spark side by side (Spark master {master}"
          + (f", --spark-conf {' '.join(conf)}" if conf else "")
          + "; Spark's peak RSS is its process tree: the Python driver, the JVM and the Python workers it forks, "
            "each part's own peak shown too)")
    w = max(len(r["step"]) for r in rows)
    header = (f"  {'step':<{w}}  {'duckdb s':>9}  {'duckdb MB':>9}  {'spark s':>9}  {'spark MB':>9}  "
              f"{'driver MB':>9}  {'JVM MB':>8}  {'workers MB':>10}  {'spark/duckdb':>12}"
              "  load at the end (duckdb | spark)")
    print(header)
    print("  " + "-" * (len(header) - 2))
    def cell(r: dict[str, Any], engine: str, key: str, fmt: Any) -> str:
        v = r[f"{engine}_{key}"]
        return fmt(v) if v is not None else ("-" if r[f"{engine}_status"] in ("ok", "not run") else "FAIL")

    for r in rows:
        ratio = f"{r['spark_over_duckdb']:.1f}×" if r["spark_over_duckdb"] else "-"
        print(f"  {r['step']:<{w}}  {cell(r, 'duckdb', 'seconds', fmt_s):>9}  "
              f"{cell(r, 'duckdb', 'peak_rss_mb', fmt_mb):>9}  "
              f"{cell(r, 'spark', 'seconds', fmt_s):>9}  {cell(r, 'spark', 'peak_rss_mb', fmt_mb):>9}  "
              f"{fmt_mb(r['spark_driver_rss_mb']):>9}  {fmt_mb(r['spark_jvm_rss_mb']):>8}  "
              f"{fmt_mb(r['spark_workers_rss_mb']):>10}  {ratio:>12}  "
              f"{r['duckdb_load'] or '-'} | {r['spark_load'] or '-'}")
    failed = [f"{r['step']} ({e}): {r[f'{e}_status']}" for r in rows for e in ("duckdb", "spark")
              if r[f"{e}_status"] not in ("ok", "not run", "incomplete")]
    for line in failed:
        print(f"    {line}")
    print()


# -- main -------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See docs/benchmark.md for what each figure means.")
    p.add_argument("--subscribers", "-n", type=int, default=1_000_000, help="subscribers to generate [1000000]")
    p.add_argument("--work", type=Path, default=Path("/tmp/mkbench"),
                   help="work folder: extracts (cached by N), database, outputs, logs [/tmp/mkbench]")
    p.add_argument("--steps", default=",".join(DEFAULT_STEPS),
                   help=f"comma-separated steps from {', '.join(ALL_STEPS)} [{','.join(DEFAULT_STEPS)}]; "
                        "'run' is `mktool run` end to end")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the plan step and the two baselines this many times; report the fastest [1]")
    p.add_argument("--threads", type=int, default=None,
                   help="DuckDB threads for mktool (MKTOOL_THREADS) and the baselines [all cores]")
    p.add_argument("--memory-limit", default=None,
                   help="DuckDB memory limit for mktool (MKTOOL_MEMORY_LIMIT) and the baselines [75%% of RAM]")
    p.add_argument("--skip-pandas", action="store_true", help="skip the pandas baseline (use at 10M)")
    p.add_argument("--skip-polars", action="store_true", help="skip the polars baseline")
    p.add_argument("--skip-sql", action="store_true", help="skip the hand-written DuckDB baseline")
    p.add_argument("--pandas-chunk", type=int, default=250_000,
                   help="customers per chunk of the pandas Cartesian product [250000]")
    p.add_argument("--explain", action="store_true",
                   help="after the plan step, write EXPLAIN ANALYZE of its query to <work>/logs/explain_plan.txt")
    p.add_argument("--ingest-exclude", default="",
                   help="comma-separated tables whose files `mktool ingest` is not given, e.g. contact_history "
                        "(a workaround when an optional extract is refused; the report says so) []")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                   help="before each measurement wait up to SECONDS for other processes to use < 0.3 cores "
                        "(for shared machines) [0: do not wait]")
    p.add_argument("--mktool", default=None, metavar="CMD",
                   help="how to start mktool, e.g. 'mktool' for the one on PATH [this checkout: "
                        "python -m mktool with it first on PYTHONPATH]")
    p.add_argument("--engine", choices=("duckdb", "spark", "both"), default="duckdb",
                   help="which engine the mktool steps run on; 'both' runs every step on DuckDB, then on Spark, "
                        "and prints them side by side [duckdb]")
    p.add_argument("--spark-steps", default=None,
                   help="the steps of the Spark run, e.g. ingest,score,evaluate [--steps less "
                        f"{', '.join(s for s in ALL_STEPS if s not in SPARK_STEPS)}]")
    p.add_argument("--spark-master", default="local[*]", help="Spark master for the Spark steps [local[*]]")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="repeatable: passed to mktool's --spark-conf, e.g. spark.driver.memory=8g")
    p.add_argument("--warehouse", type=Path, default=None,
                   help="the Spark run's warehouse, emptied first [<work>/warehouse-<N>]")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    args = p.parse_args(argv)
    args.engines = ["duckdb", "spark"] if args.engine == "both" else [args.engine]
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    args.ingest_exclude = [t.strip() for t in args.ingest_exclude.split(",") if t.strip()]
    if args.spark_steps is None:
        args.spark_steps = [s for s in args.steps if s in SPARK_STEPS]
    else:
        args.spark_steps = [s.strip() for s in args.spark_steps.split(",") if s.strip()]
    if "duckdb" not in args.engines:
        args.steps = []
    if "spark" not in args.engines:
        args.spark_steps = []
    bad = [s for s in [*args.steps, *args.spark_steps] if s not in ALL_STEPS]
    if bad:
        p.error(f"unknown step(s) {', '.join(bad)}; choose from {', '.join(ALL_STEPS)}")
    if any("run" in st and len(st) > 1 for st in (args.steps, args.spark_steps)):
        p.error("--steps run measures `mktool run` alone; do not combine it with single steps")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    global QUIET_WAIT, MKTOOL
    args = parse_args(argv)
    QUIET_WAIT = args.quiet_wait
    if args.mktool:
        MKTOOL = args.mktool.split()
    n = args.subscribers
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log_dir = work / "logs"
    threads = args.threads or os.cpu_count() or 1
    memory_limit = args.memory_limit or default_memory_limit()
    env = {**MKTOOL_ENV, "MKTOOL_THREADS": str(threads), "MKTOOL_MEMORY_LIMIT": memory_limit}
    env.setdefault("MKTOOL_MATRICES", str(ROOT / "matrices"))
    env.pop("MKTOOL_DB", None)
    facts = machine_facts(threads, memory_limit)
    facts["matrices"] = os.environ.get("MKTOOL_MATRICES") or str(ROOT / "matrices")

    extracts, gen_seconds = ensure_extracts(work, n)
    data = extract_facts(extracts)
    data["generated_seconds"] = gen_seconds
    notes: list[str] = []
    if gen_seconds is None:
        notes.append(f"extracts reused from {extracts}")
    else:
        notes.append(f"extracts generated in {gen_seconds:.1f} s into {extracts}")

    if args.ingest_exclude:
        notes.append(f"NOTE: ingest was not given the {', '.join(args.ingest_exclude)} extract(s) (--ingest-exclude)")
    db = work / f"bench-{n}.duckdb"
    out_dir = work / f"out-{n}"
    fresh_database(db)
    if out_dir.exists():
        shutil.rmtree(out_dir)

    commands = available_commands()
    run_help = command_options("run") if "run" in commands else ""
    scene_events: Path | None = None
    if "scene" in args.steps and "scene" in commands:
        scene_events, scene_seconds = ensure_scene_events(work, n, extracts)
        notes.append(f"scene events {'reused from' if scene_seconds is None else 'generated into'} {scene_events}")
    steps: dict[str, Measured] = {}
    spark_steps: dict[str, Measured] = {}
    warehouse = args.warehouse.resolve() if args.warehouse else work / f"warehouse-{n}"
    spark_opts = spark_engine_options(args.spark_master, warehouse, args.spark_conf)
    for engine in args.engines:
        opts = spark_opts if engine == "spark" else []
        if engine == "spark":
            fresh_warehouse(warehouse)
            shutil.rmtree(work / f"out-{n}-spark", ignore_errors=True)
        measured = spark_steps if engine == "spark" else steps
        measured.update(run_steps(args.spark_steps if engine == "spark" else args.steps, engine=engine,
                                  engine_opts=opts, commands=commands, run_help=run_help, db=db, extracts=extracts,
                                  out_dir=out_dir if engine == "duckdb" else work / f"out-{n}-spark",
                                  exclude=args.ingest_exclude, scene_events=scene_events, work=work, n=n, env=env,
                                  log_dir=log_dir, notes=notes, repeat=args.repeat))
    after = db_facts(db, MONTH)
    if args.explain and steps.get("plan") and steps["plan"].ok:
        problem = explain_plan(db, log_dir / "explain_plan.txt")
        notes.append(problem or f"EXPLAIN ANALYZE of the plan query: {log_dir / 'explain_plan.txt'}")

    sql_m: Measured | None = None
    pandas_m: Measured | None = None
    polars_m: Measured | None = None
    if not args.skip_sql:
        out = work / "baseline_duckdb_plan.parquet"
        sql_file = work / "baseline_plan.sql"
        sql_file.write_text(baseline_sql(extracts, MONTH, out) + ";\n", encoding="utf-8")
        spill = work / "baseline_duckdb.tmp"
        print("running the hand-written DuckDB baseline", file=sys.stderr, flush=True)
        sql_m = best_of([run_baseline("baseline_duckdb", DUCKDB_RUNNER,
                                      [str(sql_file), str(out), str(threads), memory_limit, str(spill)],
                                      work=work, log_dir=log_dir) for _ in range(args.repeat)])
        sql_m.name = "baseline: hand-written DuckDB SQL (plan)"
    if not args.skip_pandas:
        out = work / "baseline_pandas_plan.parquet"
        print("running the pandas baseline", file=sys.stderr, flush=True)
        pandas_m = best_of([run_baseline("baseline_pandas", PANDAS_RUNNER,
                                         [str(extracts), MONTH, ",".join(window_months(MONTH)), str(out),
                                          str(args.pandas_chunk)], work=work, log_dir=log_dir)
                            for _ in range(args.repeat)])
        pandas_m.name = "baseline: pandas (plan)"
    if not args.skip_polars:
        out = work / "baseline_polars_plan.parquet"
        print("running the polars baseline", file=sys.stderr, flush=True)
        polars_m = best_of([run_baseline("baseline_polars", POLARS_RUNNER,
                                         [str(extracts), MONTH, ",".join(window_months(MONTH)), str(out)],
                                         work=work, log_dir=log_dir) for _ in range(args.repeat)])
        polars_m.name = "baseline: polars (plan)"
    for m in (sql_m, pandas_m, polars_m):
        if m is not None and not m.ok:
            print(f"  {m.name}: {m.status}", file=sys.stderr)
            for line in m.extra.get("stderr_tail", []):
                print(f"    {line}", file=sys.stderr)

    counts: dict[str, int | None] = {}
    if "plan_customers" in after or "plan" in steps or "run" in steps:
        counts["mktool"] = after.get("plan_customers")
    spark_after: dict[str, Any] = {}
    if spark_steps:
        spark_after = warehouse_facts(warehouse, MONTH)
        if "plan" in spark_steps or "run" in spark_steps:
            counts["mktool_spark"] = spark_after.get("plan_customers")
    if sql_m is not None:
        counts["duckdb_sql"] = sql_m.extra.get("customers") if sql_m.ok else None
    if pandas_m is not None:
        counts["pandas"] = pandas_m.extra.get("customers") if pandas_m.ok else None
    if polars_m is not None:
        counts["polars"] = polars_m.extra.get("customers") if polars_m.ok else None
    known = {k: v for k, v in counts.items() if v is not None}
    agree = len(set(known.values())) <= 1
    if len(known) >= 2 and not agree:
        warning = "WARNING: the plan outputs disagree on targeted customers: " + ", ".join(
            f"{k} {v:,}" for k, v in known.items())
        print(warning, file=sys.stderr)
        notes.append(warning)

    busy = [m.name for m in [*steps.values(), *spark_steps.values(), sql_m, pandas_m, polars_m]
            if m is not None and m.ok and (m.other_load_cores or 0) > 0.25]
    if busy:
        notes.append("WARNING: other processes used > 0.25 cores during " + ", ".join(busy)
                     + " (column 'other load'): those times are inflated; rerun on a quiet machine")
    rows = list(steps.values())
    total: Measured | None = None
    if all(s in steps and steps[s].ok for s in PIPELINE):
        total = Measured("pipeline total", [], seconds=sum(steps[s].seconds for s in PIPELINE),
                         peak_rss_mb=max(steps[s].peak_rss_mb for s in PIPELINE),
                         cpu_seconds=sum(steps[s].cpu_seconds for s in PIPELINE))
        rows.append(total)
    rows += [m for m in (sql_m, pandas_m, polars_m) if m is not None]
    ratios = compute_ratios(steps, sql_m, pandas_m, polars_m)
    print_report(facts, n, data, rows, ratios, counts, notes)
    side = side_by_side(steps, spark_steps) if spark_steps else []
    if side:
        print_side_by_side(side, args.spark_master, args.spark_conf)

    if args.json:
        doc = {
            "subscribers": n, "month": MONTH, "months": list(MONTHS), "machine": facts, "extracts": data,
            "steps": [asdict(m) for m in steps.values()],
            "baselines": [asdict(m) for m in (sql_m, pandas_m, polars_m) if m is not None],
            "pipeline_seconds": total.seconds if total else None,
            "engines": args.engines,
            "spark": {"master": args.spark_master, "conf": args.spark_conf, "warehouse": str(warehouse),
                      "steps": [asdict(m) for m in spark_steps.values()], "warehouse_facts": spark_after}
            if spark_steps else None,
            "side_by_side": side,
            "ratios": ratios, "targeted_customers": counts, "counts_agree": agree, "database": after,
            "notes": notes,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
