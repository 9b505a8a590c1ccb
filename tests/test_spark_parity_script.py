"""scripts/spark_parity.py's comparison and scripts/benchmark.py's engine table, on tiny files (no Spark)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT


def _load(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


parity = _load("spark_parity")
benchmark = parity.benchmark

CSV = "msisdn,policy_id,script\n13800000000,PLAN_CHANGE,a\n13800000001,PLAN_CHANGE,b\n"
MANIFEST = {"run_id": "aa464b7da591", "created_at": "2026-12-02T13:39:25", "month": "2026-10",
            "engine": {"name": "duckdb", "version": "2.0.1"}, "engines": {"duckdb": "2.0.1"},
            "command_line": ["mktool", "run", "--month", "2026-10"],
            "export": {"out": "/tmp/a", "date": "2026-11-01"},
            "outputs": {"sms.csv": {"rows": 2, "sha256": "x", "run_id": "aa464b7da591"}},
            "steps": {"score": {"recorded_at": "2026-12-02T13:39:22.951025", "settings": {"top": 1}}}}
REPORT = ("<p>run aa464b7da591, created 2026-12-02 13:39:25</p>\n<td>1,158</td>\n"
          "<tr><td>versions</td><td>mktool 0.1.0, duckdb 2.0.1</td></tr><p>wt-sparkbench</p>\n"
          "<tr><td>command</td><td>mktool run --month 2026-10 --db /tmp/x.duckdb</td></tr>\n")


def _spark_manifest(**changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(MANIFEST))
    doc.update({"run_id": "0123456789ab", "created_at": "2026-12-02T14:01:00",
                "engine": {"name": "spark", "version": "4.3.0"}, "engines": {"pyspark": "4.3.0"},
                "command_line": ["mktool", "--engine", "spark", "run"], "export": {"out": "/tmp/b",
                                                                                  "date": "2026-11-01"}})
    doc["outputs"]["sms.csv"]["run_id"] = "0123456789ab"
    doc["steps"]["score"]["recorded_at"] = "2026-12-02T14:00:00.1"
    doc.update(changes)
    return doc


def _folders(tmp_path: Path, spark_files: dict[str, str]) -> tuple[Path, Path]:
    duck, spark = tmp_path / "duckdb", tmp_path / "spark"
    duck.mkdir(parents=True)
    spark.mkdir(parents=True)
    files = {"sms.csv": CSV, "funnel.json": '{"plan": [10, 5]}\n', "manifest.json": json.dumps(MANIFEST),
             "report.html": REPORT}
    for name, text in files.items():
        (duck / name).write_text(text, encoding="utf-8")
    spark_report = REPORT.replace("aa464b7da591", "0123456789ab").replace("13:39:25", "14:01:00") \
        .replace("duckdb 2.0.1</td>", "spark 4.3.0</td>").replace("mktool run", "mktool --engine spark run")
    defaults = {**files, "manifest.json": json.dumps(_spark_manifest()), "report.html": spark_report}
    for name, text in {**defaults, **spark_files}.items():
        (spark / name).write_text(text, encoding="utf-8")
    return duck, spark


def _verdicts(results: list[Any]) -> dict[str, str]:
    return {r.name: r.verdict for r in results}


def test_same_outputs_match_with_only_the_runs_names_masked(tmp_path: Path) -> None:
    verdicts = _verdicts(parity.compare_folders(*_folders(tmp_path, {})))
    assert verdicts == {"sms.csv": "identical", "funnel.json": "identical", "manifest.json": "equal after masking",
                        "report.html": "equal after masking"}


def test_a_changed_list_value_names_the_row_and_column(tmp_path: Path) -> None:
    results = parity.compare_folders(*_folders(tmp_path, {"sms.csv": CSV.replace(",b\n", ",c\n")}))
    r = next(r for r in results if r.name == "sms.csv")
    assert r.verdict == "DIFFERENT"
    assert any("script 1" in line for line in r.detail), r.detail
    assert any("msisdn 13800000001 script: duckdb 'b' / spark 'c'" in line for line in r.detail), r.detail


def test_a_list_in_another_order_is_a_difference_said_to_be_order_only(tmp_path: Path) -> None:
    header, one, two = CSV.splitlines()
    results = parity.compare_folders(*_folders(tmp_path, {"sms.csv": f"{header}\n{two}\n{one}\n"}))
    r = next(r for r in results if r.name == "sms.csv")
    assert r.verdict == "DIFFERENT" and "another order" in r.detail[0]


def test_a_missing_list_and_a_changed_funnel_are_differences(tmp_path: Path) -> None:
    duck, spark = _folders(tmp_path, {"funnel.json": '{"plan": [10, 4]}\n'})
    (spark / "sms.csv").unlink()
    verdicts = _verdicts(parity.compare_folders(duck, spark))
    assert verdicts["sms.csv"] == "MISSING on spark"
    assert verdicts["funnel.json"] == "DIFFERENT"


def test_manifest_differences_outside_the_masked_keys_count(tmp_path: Path) -> None:
    changed = _spark_manifest(month="2026-09")
    results = parity.compare_folders(*_folders(tmp_path, {"manifest.json": json.dumps(changed)}))
    r = next(r for r in results if r.name == "manifest.json")
    assert r.verdict == "DIFFERENT" and r.detail[0].startswith(".month"), r.detail
    row_count = _spark_manifest()
    row_count["outputs"]["sms.csv"]["rows"] = 3
    results = parity.compare_folders(*_folders(tmp_path / "x", {"manifest.json": json.dumps(row_count)}))
    assert _verdicts(results)["manifest.json"] == "DIFFERENT"


def test_a_report_figure_that_differs_is_found_beyond_the_masks(tmp_path: Path) -> None:
    duck, spark = _folders(tmp_path, {})
    (spark / "report.html").write_text((spark / "report.html").read_text().replace("1,158", "1,157"))
    r = next(r for r in parity.compare_folders(duck, spark) if r.name == "report.html")
    assert r.verdict == "DIFFERENT" and "line 2" in r.detail[0]


def test_jsonl_lists_are_compared_by_key_and_field(tmp_path: Path) -> None:
    a = '{"msisdn":"1","rank":1}\n{"msisdn":"2","rank":2}\n'
    duck, spark = _folders(tmp_path, {"app.jsonl": a.replace('"rank":2', '"rank":3')})
    (duck / "app.jsonl").write_text(a)
    r = next(r for r in parity.compare_folders(duck, spark) if r.name == "app.jsonl")
    assert r.verdict == "DIFFERENT"
    assert any('msisdn "2" rank: duckdb \'2\' / spark \'3\'' in line for line in r.detail), r.detail


def test_engine_options_go_before_the_command() -> None:
    cmd = parity.run_command("spark", extracts=Path("/x"), out=Path("/o"), db=Path("/d"), warehouse=Path("/w"),
                             master="local[2]")
    run = cmd.index("run")
    assert cmd[run - 6:run] == ["--engine", "spark", "--spark-master", "local[2]", "--warehouse", "/w"]
    assert "--engine" not in parity.run_command("duckdb", extracts=Path("/x"), out=Path("/o"), db=Path("/d"),
                                                warehouse=Path("/w"), master="local[2]")


def _m(name: str, seconds: float, rss: float, **extra: Any) -> Any:
    return benchmark.Measured(name, [], seconds=seconds, peak_rss_mb=rss, cpu_seconds=seconds, extra=dict(extra))


def test_side_by_side_rows_ratio_and_pipeline_total() -> None:
    duck = {s: _m(s, 2.0, 100.0) for s in benchmark.PIPELINE}
    spark = {s: _m(s, 10.0, 900.0, peak_driver_rss_mb=200.0, peak_jvm_rss_mb=700.0,
                    peak_workers_rss_mb=0.0) for s in benchmark.PIPELINE}
    spark["export"] = benchmark.Measured("export", [], status="failed (exit 1)")
    rows = benchmark.side_by_side(duck, spark)
    by = {r["step"]: r for r in rows}
    assert by["plan"]["spark_over_duckdb"] == pytest.approx(5.0)
    assert by["plan"]["spark_jvm_rss_mb"] == 700.0
    assert by["export"]["spark_seconds"] is None and by["export"]["spark_status"] == "failed (exit 1)"
    assert by["pipeline total"]["duckdb_seconds"] == pytest.approx(10.0)
    assert by["pipeline total"]["spark_seconds"] is None  # one failed step: no Spark total


def test_engine_option_selects_the_steps_of_each_engine() -> None:
    args = benchmark.parse_args(["--engine", "both"])
    assert args.engines == ["duckdb", "spark"]
    assert args.spark_steps == list(benchmark.PIPELINE)  # evaluate, factors, profile, scene: not yet on Spark
    args = benchmark.parse_args(["--engine", "spark", "--steps", "run"])
    assert args.steps == [] and args.spark_steps == ["run"]
    assert benchmark.parse_args([]).spark_steps == []  # the default stays DuckDB only


def test_measure_splits_a_process_tree_into_driver_jvm_and_workers(tmp_path: Path) -> None:
    java = tmp_path / "java"  # a child named like the JVM (a copy of sleep), and a grandchild of it
    shutil.copy(shutil.which("sleep") or "/bin/sleep", java)
    script = ("import subprocess, sys; j = subprocess.Popen([sys.argv[1], '1.0']); "
              "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1.0)']); j.wait(); w.wait()")
    m = benchmark.measure("tree", [sys.executable, "-c", script, str(java)], log_dir=tmp_path / "logs")
    assert m.ok, m.extra
    assert m.extra["peak_driver_rss_mb"] > 1 and m.extra["peak_jvm_rss_mb"] > 0
    assert m.extra["peak_workers_rss_mb"] > 1  # the second Python child
    assert m.polled_tree_rss_mb >= m.extra["peak_driver_rss_mb"]
    assert m.extra["tree_cpu_seconds"] >= 0.0
