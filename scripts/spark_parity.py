#!/usr/bin/env python3
"""Run one generated month through ``mktool run`` on DuckDB and on Spark and compare every output file.

    python scripts/spark_parity.py --subscribers 200000 [--work /tmp/mkparity] [--spark-master 'local[2]']
                                   [--seed 7] [--json parity.json] [--compare-only]

Issue 16's "Done means": on a generated data set, ``mktool run`` on Spark ``local[2]`` writes the same
target lists and funnel.json as on DuckDB, byte for byte, and the manifest and report differ only in
what names the run (ids, times, command line, engine). This script checks exactly that:

1. Generates ``scripts/generate_fixtures.py --subscribers N --months 2026-08,2026-09,2026-10 --seed 7
   --label-month`` once into ``<work>/extracts-N/`` (every extract ``mktool run`` reads, as in
   ``fixtures/``; a marker file records N, seed and the generator's checksum; reused while they match).
   ``--seed S`` generates another data set, into ``<work>/extracts-N-seedS/``.
2. ``mktool run --month 2026-10 --ingest <extracts> --date 2026-11-01`` on a fresh DuckDB file, then the
   same with ``--engine spark --spark-master local[2] --warehouse <fresh folder>``, both reading one copy
   of the rules folder (``<work>/rules``, outside git, so that the manifest's rules commit cannot move
   between the two runs); each run is one
   subprocess measured like scripts/benchmark.py measures a step (wall time, peak RSS of the process
   tree: Python and the JVM it starts).
3. Compares the two cycle folders ``<out>/2026-10/2026-11-01/``:

   * the same file names;
   * every list (``*.csv``, ``*.jsonl``, ``*.parquet``) and ``funnel.json``: **byte for byte**. mktool
     writes every list in a defined order, so order counts; for a difference the script says whether
     the rows are the same in another order, how many rows differ and which columns;
   * ``manifest.json``: equal after masking (removing) the keys ``MANIFEST_MASKED`` names, at any depth,
     and ``export.out`` (each engine wrote to its own folder); the masked values are printed;
   * ``report.html``: equal after replacing, in both, the provenance cells (run id, created at, command,
     versions, engine), every string the masked manifest keys hold, 12-hex run ids and ISO date-times
     (evaluate's run id and time are in the page too) by placeholders.

Exit status 0 when everything matches, 1 on any difference, 2 when a run failed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402  (the measuring and the mktool command line are benchmark.py's)

ROOT = benchmark.ROOT
GENERATOR = benchmark.GENERATOR
MONTH, MONTHS, DATE, SEED = benchmark.MONTH, benchmark.MONTHS, benchmark.EXPORT_DATE, benchmark.SEED
LIST_SUFFIXES = (".csv", ".jsonl", ".parquet")
#: manifest keys (at any depth) that name the run rather than its results: its ids, when things were
#: recorded, the command that started it and the engine (and the software versions) that computed it.
MANIFEST_MASKED = ("run_id", "created_at", "recorded_at", "command_line", "engine", "engines")
HEX_ID = re.compile(r"\b[0-9a-f]{12}\b")
#: the report's provenance cells that show the masked manifest keys (command line, versions, ids, times)
PROVENANCE = re.compile(r"(<td>(?:run id|created at|command|versions|engine)</td><td>)[^<]*(</td>)")
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?")


# -- comparing two cycle folders -----------------------------------------------------------------------
@dataclass
class FileResult:
    name: str
    verdict: str            # identical | equal after masking | DIFFERENT | MISSING on <engine>
    detail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict in ("identical", "equal after masking")


def _rows(name: str, data: bytes) -> tuple[list[str], list[tuple[str, ...]]] | None:
    """A list's header and rows as text tuples (csv, jsonl), or None for a format read as bytes only."""
    text = data.decode("utf-8")
    if name.endswith(".csv"):
        records = list(csv.reader(io.StringIO(text, newline="")))
        return (records[0], [tuple(r) for r in records[1:]]) if records else ([], [])
    if name.endswith(".jsonl"):
        docs = [json.loads(line) for line in text.splitlines() if line.strip()]
        header = list(docs[0]) if docs else []
        return header, [tuple(json.dumps(d.get(k), ensure_ascii=False, sort_keys=True) for k in header) for d in docs]
    return None


def describe_list_difference(name: str, duck: bytes, spark: bytes) -> list[str]:
    """Why two lists' bytes differ: order only, or which rows and columns (the first few examples)."""
    if name.endswith(".parquet"):
        return [f"{len(duck):,} against {len(spark):,} bytes (Parquet: compare with duckdb by hand)"]
    a, b = _rows(name, duck), _rows(name, spark)
    assert a is not None and b is not None
    (ha, ra), (hb, rb) = a, b
    out: list[str] = []
    if ha != hb:
        return [f"header differs: duckdb {ha} / spark {hb}"]
    if sorted(ra) == sorted(rb):
        first = next(i for i, (x, y) in enumerate(zip(ra, rb)) if x != y)
        return [f"same {len(ra):,} rows in another order (first at row {first + 1}: "
                f"duckdb {ra[first][:3]} / spark {rb[first][:3]})"]
    out.append(f"rows: duckdb {len(ra):,}, spark {len(rb):,}")
    key = ha[0] if ha else "?"
    by_key_a: dict[str, list[tuple[str, ...]]] = {}
    by_key_b: dict[str, list[tuple[str, ...]]] = {}
    for r in ra:
        by_key_a.setdefault(r[0], []).append(r)
    for r in rb:
        by_key_b.setdefault(r[0], []).append(r)
    only_a = sorted(set(by_key_a) - set(by_key_b))
    only_b = sorted(set(by_key_b) - set(by_key_a))
    if only_a:
        out.append(f"{len(only_a):,} {key} only on duckdb, e.g. {only_a[:3]}")
    if only_b:
        out.append(f"{len(only_b):,} {key} only on spark, e.g. {only_b[:3]}")
    columns: dict[str, int] = {}
    examples: list[str] = []
    changed = 0
    for k in sorted(set(by_key_a) & set(by_key_b)):
        xs, ys = sorted(by_key_a[k]), sorted(by_key_b[k])
        if xs == ys:
            continue
        changed += 1
        for x, y in zip(xs, ys):
            for col, u, v in zip(ha, x, y):
                if u != v:
                    columns[col] = columns.get(col, 0) + 1
                    if len(examples) < 5:
                        examples.append(f"{key} {k} {col}: duckdb {u!r} / spark {v!r}")
        if len(xs) != len(ys):
            columns["(row count)"] = columns.get("(row count)", 0) + 1
    if changed:
        out.append(f"{changed:,} {key} whose rows differ; by column: "
                   + ", ".join(f"{c} {n:,}" for c, n in sorted(columns.items(), key=lambda kv: -kv[1])))
        out += examples
    if not only_a and not only_b and not changed:
        out.append("same rows as sets per key, different order or duplicates")
    return out


def _json_paths(a: Any, b: Any, path: str = "") -> list[str]:
    """The paths at which two JSON documents differ (the first 20)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only on {'spark' if k not in a else 'duckdb'}")
            else:
                out += _json_paths(a[k], b[k], f"{path}.{k}")
        return out[:20]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _json_paths(x, y, f"{path}[{i}]")][:20]
    return [] if a == b else [f"{path or '.'}: duckdb {json.dumps(a, ensure_ascii=False)[:120]} / "
                              f"spark {json.dumps(b, ensure_ascii=False)[:120]}"]


def mask_manifest(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the manifest without the keys that name the run, {path: masked value})."""
    masked: dict[str, Any] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, dict):
            kept = {}
            for k, v in x.items():
                p = f"{path}.{k}"
                if k in MANIFEST_MASKED or p == ".export.out":
                    masked[p] = v
                else:
                    kept[k] = walk(v, p)
            return kept
        if isinstance(x, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(x)]
        return x

    return walk(doc, ""), masked


def _strings(x: Any) -> list[str]:
    """The texts a masked manifest value shows as on the report page (a command line: joined by spaces)."""
    if isinstance(x, dict):
        return [s for v in x.values() for s in _strings(v)]
    if isinstance(x, list):
        return [" ".join(map(str, x))] if x and all(isinstance(v, str) for v in x) else \
            [s for v in x for s in _strings(v)]
    return [str(x)] if x is not None and not isinstance(x, bool) and len(str(x)) >= 3 else []


def mask_report(html: str, masked: dict[str, Any]) -> str:
    """The report page with the run's ids, times, command line and engine replaced by placeholders."""
    html = PROVENANCE.sub(r"\1«masked»\2", html)
    # Only long values (ids, times, paths, command lines) are replaced as text: a short one such as the
    # engine's name "spark" also occurs inside other words and paths (a worktree named wt-sparkbench).
    for s in sorted({s for v in masked.values() for s in _strings(v) if len(s) >= 8}, key=len, reverse=True):
        html = html.replace(s, "«masked»")
    return DATETIME.sub("«time»", HEX_ID.sub("«id»", html))


def compare_folders(duck: Path, spark: Path) -> list[FileResult]:
    """Every file of the two cycle folders, judged as the module docstring says."""
    names = sorted({p.name for p in duck.iterdir()} | {p.name for p in spark.iterdir()})
    results: list[FileResult] = []
    masked: dict[str, dict[str, Any]] = {"duckdb": {}, "spark": {}}
    for name in names:
        a, b = duck / name, spark / name
        if not a.exists() or not b.exists():
            results.append(FileResult(name, f"MISSING on {'duckdb' if not a.exists() else 'spark'}"))
            continue
        da, db = a.read_bytes(), b.read_bytes()
        if name == "manifest.json":
            (ma, masked["duckdb"]), (mb, masked["spark"]) = (mask_manifest(json.loads(d)) for d in (da, db))
            diff = _json_paths(ma, mb)
            shown = [f"masked {k}: duckdb {json.dumps(v, ensure_ascii=False)[:100]} / spark "
                     f"{json.dumps(masked['spark'].get(k), ensure_ascii=False)[:100]}"
                     for k, v in masked["duckdb"].items() if v != masked["spark"].get(k) and k != ".engines"
                     and not k.endswith(("run_id", "recorded_at", "created_at", "command_line"))]
            results.append(FileResult(name, "DIFFERENT" if diff else "equal after masking", diff + shown))
        elif name.endswith(".html"):
            results.append(FileResult(name, "pending"))  # after the manifest's masked values are known
        elif da == db:
            results.append(FileResult(name, "identical"))
        elif name.endswith(LIST_SUFFIXES):
            results.append(FileResult(name, "DIFFERENT", describe_list_difference(name, da, db)))
        elif name.endswith(".json"):
            results.append(FileResult(name, "DIFFERENT", _json_paths(json.loads(da), json.loads(db))))
        else:
            results.append(FileResult(name, "DIFFERENT", [f"{len(da):,} against {len(db):,} bytes"]))
    for r in results:
        if r.verdict != "pending":
            continue
        ha = mask_report((duck / r.name).read_text(encoding="utf-8"), masked["duckdb"])
        hb = mask_report((spark / r.name).read_text(encoding="utf-8"), masked["spark"])
        if ha == hb:
            r.verdict = "identical" if (duck / r.name).read_bytes() == (spark / r.name).read_bytes() \
                else "equal after masking"
        else:
            la, lb = ha.splitlines(), hb.splitlines()
            diff = [f"line {i + 1}: duckdb {x.strip()[:150]!r} / spark {y.strip()[:150]!r}"
                    for i, (x, y) in enumerate(zip(la, lb)) if x != y]
            if len(la) != len(lb):
                diff.append(f"lines: duckdb {len(la):,}, spark {len(lb):,}")
            r.verdict, r.detail = "DIFFERENT", diff[:10]
    return results


# -- running ---------------------------------------------------------------------------------------
def ensure_extracts(work: Path, n: int, seed: int = SEED) -> tuple[Path, float | None]:
    """``<work>/extracts-N`` (``extracts-N-seedS`` for another seed than the benchmark's), with the churn
    label month, generated once; (folder, seconds or None)."""
    name = f"extracts-{n}" if seed == SEED else f"extracts-{n}-seed{seed}"
    folder, marker = work / name, work / f"{name}.json"
    wanted = {"subscribers": n, "months": list(MONTHS), "seed": seed, "label_month": True,
              "generator_sha256": hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:16]}
    if folder.is_dir() and benchmark._marker(marker) == wanted:
        return folder, None
    shutil.rmtree(folder, ignore_errors=True)
    print(f"generating {n:,} subscribers into {folder} …", file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(GENERATOR), "--subscribers", str(n), "--months", ",".join(MONTHS),
                    "--seed", str(seed), "--label-month", "--out", str(folder)], check=True,
                   stdout=subprocess.DEVNULL)
    marker.write_text(json.dumps(wanted, indent=2), encoding="utf-8")
    return folder, time.perf_counter() - start


def run_command(engine: str, *, extracts: Path, out: Path, db: Path, warehouse: Path, master: str) -> list[str]:
    """``mktool run`` of the month on one engine (the engine options are global: before ``run``)."""
    engine_opts = ["--engine", "spark", "--spark-master", master, "--warehouse", str(warehouse)] \
        if engine == "spark" else []
    return [*benchmark.MKTOOL, *engine_opts, "run", "--month", MONTH, "--ingest", str(extracts), "--date", DATE,
            "--out", str(out), "--db", str(db), "--quiet"]


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", "-n", type=int, default=200_000, help="subscribers to generate [200000]")
    p.add_argument("--work", type=Path, default=Path("/tmp/mkparity"), help="work folder [/tmp/mkparity]")
    p.add_argument("--spark-master", default="local[2]", help="Spark master for the Spark run [local[2]]")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads (MKTOOL_THREADS) [2]")
    p.add_argument("--seed", type=int, default=SEED,
                   help=f"the generator's seed: another seed is another data set, for parity beyond the one "
                        f"the benchmark measures [{SEED}]")
    p.add_argument("--compare-only", action="store_true",
                   help="do not run: compare the output folders an earlier run of this script left")
    p.add_argument("--json", type=Path, default=None, help="write the summary to this JSON file")
    args = p.parse_args(argv)
    n, work = args.subscribers, args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    extracts, gen_seconds = ensure_extracts(work, n, args.seed)
    env = {**benchmark.MKTOOL_ENV, "MKTOOL_THREADS": str(args.threads)}
    # Both runs read one copy of the rules, outside git: the manifest records the rules folder's git
    # commit, and a checkout that moves between the two runs (a commit made meanwhile) must not look
    # like an engine difference.
    rules = work / "rules"
    if not args.compare_only:
        shutil.rmtree(rules, ignore_errors=True)
        shutil.copytree(Path(os.environ.get("MKTOOL_MATRICES") or ROOT / "matrices"), rules)
    env["MKTOOL_MATRICES"] = str(rules)
    for var in ("MKTOOL_DB", "MKTOOL_ENGINE", "MKTOOL_WAREHOUSE", "MKTOOL_SPARK_MASTER", "MKTOOL_SPARK_REMOTE",
                "MKTOOL_OUT"):
        env.pop(var, None)
    runs: dict[str, benchmark.Measured] = {}
    folders: dict[str, Path] = {}
    for engine in ("duckdb", "spark"):
        out, db, wh = work / f"out-{n}-{engine}", work / f"run-{n}-{engine}.duckdb", work / f"warehouse-{n}"
        folders[engine] = out / MONTH / DATE
        if args.compare_only:
            continue
        shutil.rmtree(out, ignore_errors=True)
        benchmark.fresh_database(db)
        if engine == "spark":
            shutil.rmtree(wh, ignore_errors=True)
        cmd = run_command(engine, extracts=extracts, out=out, db=db, warehouse=wh, master=args.spark_master)
        print(f"[{time.strftime('%H:%M:%S')}] mktool run on {engine} ({load()}) …", file=sys.stderr, flush=True)
        m = benchmark.measure(f"parity_{engine}_{n}", cmd, log_dir=work / "logs", env=env)
        m.extra["load_after"] = load()
        runs[engine] = m
        print(f"[{time.strftime('%H:%M:%S')}] {engine}: {m.status}, {m.seconds:.1f} s, peak RSS "
              f"{m.peak_rss_mb:,.0f} MB, CPU {m.cpu_seconds:.1f} s ({load()})", file=sys.stderr, flush=True)
        if not m.ok:
            for line in m.extra.get("stderr_tail", []):
                print(f"    {line}", file=sys.stderr)
            return 2
    missing = [e for e, f in folders.items() if not f.is_dir()]
    if missing:
        print(f"no cycle folder {folders[missing[0]]} ({missing[0]})", file=sys.stderr)
        return 2
    results = compare_folders(folders["duckdb"], folders["spark"])
    print()
    print(f"spark parity — {n:,} subscribers (seed {args.seed}), mktool run --month {MONTH} --date {DATE}, "
          f"spark {args.spark_master} against duckdb (threads {args.threads})")
    print(f"  extracts {extracts} ({'reused' if gen_seconds is None else f'generated in {gen_seconds:.1f} s'})")
    for engine, m in runs.items():
        print(f"  {engine:<7} {m.seconds:8.1f} s  peak RSS {m.peak_rss_mb:7,.0f} MB  CPU {m.cpu_seconds:7.1f} s  "
              f"(tree, JVM included: {m.extra.get('tree_cpu_seconds', m.cpu_seconds):.1f} s)  "
              f"other load {m.other_load_cores:.2f} cores  ({m.extra['load_after']} at the end)")
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"  {r.name:<{width}}  {r.verdict}")
        for line in r.detail:
            print(f"  {'':<{width}}    {line}")
    bad = [r.name for r in results if not r.ok]
    print(f"  => {'PARITY' if not bad else 'DIFFERENT: ' + ', '.join(bad)} "
          f"({len(results) - len(bad)} of {len(results)} files match)")
    if args.json:
        doc = {"subscribers": n, "month": MONTH, "date": DATE, "spark_master": args.spark_master,
               "runs": {e: {"seconds": m.seconds, "peak_rss_mb": m.peak_rss_mb, "cpu_seconds": m.cpu_seconds,
                            "tree_cpu_seconds": m.extra.get("tree_cpu_seconds"),
                            "other_load_cores": m.other_load_cores, "load_after": m.extra.get("load_after"),
                            "command": m.command} for e, m in runs.items()},
               "files": [{"name": r.name, "verdict": r.verdict, "detail": r.detail} for r in results],
               "parity": not bad, "manifest_masked_keys": [*MANIFEST_MASKED, "export.out"]}
        args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
