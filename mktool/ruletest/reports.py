"""What a test run reports, as data: the JSON document, the JUnit XML, the coverage gaps.

Terminal rendering (the pass/fail table, colours) is the CLI's: :mod:`mktool.render`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal
from typing import Any

from mktool.ruletest.judging import SCENES_SCOPE, CaseResult, TestRun


# -- JUnit XML (for CI test reports) -----------------------------------------------------------------
def junit_xml(run: TestRun) -> str:
    """One testsuite per test file, one testcase per case; a failure or error carries the message and the diff."""
    suites = ET.Element("testsuites", name="mktool test")
    by_file: dict[str, list[CaseResult]] = {}
    for r in run.results:
        by_file.setdefault(r.case.file, []).append(r)
    for file, results in by_file.items():
        suite = ET.SubElement(suites, "testsuite", name=file, tests=str(len(results)),
                              failures=str(sum(r.status == "fail" for r in results)),
                              errors=str(sum(r.status == "error" for r in results)))
        for r in results:
            tc = ET.SubElement(suite, "testcase", classname=f"{file}:{r.case.scope}", name=r.case.name)
            if r.status != "pass":
                el = ET.SubElement(tc, "failure" if r.status == "fail" else "error", message=r.message)
                el.text = "\n".join([r.message, *r.details])
    return ET.tostring(suites, encoding="unicode")


def _json_value(value: Any) -> Any:
    """A plan's exact money and rates stay JSON numbers (228.0, 1.036362: the same digits)."""
    return float(value) if isinstance(value, Decimal) else value


def result_document(run: TestRun) -> dict[str, Any]:
    """The run as JSON-able data (``mktool test --format json``)."""
    return {
        "matrices_dir": str(run.matrices_dir),
        "files": [str(f) for f in run.files],
        "passed": sum(r.ok for r in run.results),
        "failed": sum(r.status == "fail" for r in run.results),
        "errors": sum(r.status == "error" for r in run.results),
        "rule_errors": run.rule_errors,
        "cases": [{"file": r.case.file, "case": r.case.name, "scope": r.case.scope, "rule": r.case.rule,
                   "status": r.status, "message": r.message, "expected": r.expected,
                   "actual": [{k: _json_value(v) for k, v in a.items() if k != "msisdn"} for a in r.actual]}
                  for r in run.results],
        "coverage": [{"file": f, "matrix": m, "rule": rid, "fires": a, "does_not_fire": b}
                     for f, m, rid, a, b in run.coverage if m != SCENES_SCOPE],
        "scene_coverage": [{"file": f, "scene": sid, "fires": a, "does_not_fire": b}
                           for f, m, sid, a, b in run.coverage if m == SCENES_SCOPE],
    }


def coverage_problems(run: TestRun) -> list[str]:
    """Rules without a case where they fire, or without one where they do not."""
    if run.failed:
        return []  # a failing case is the message; missing coverage would only repeat it
    out = []
    for file, matrix, rule, fires, not_fires in run.uncovered:
        if matrix == SCENES_SCOPE:
            hint = "where an event of its type does not fire it (expect: {scene: X, outcome: not_matched} or stale)"
            gaps = ([] if fires else ["where it fires"]) + ([] if not_fires else [hint])
            out.append(f"{file}: scene {rule}: no passing test case " + " and none ".join(gaps))
            continue
        hint = "where it does not fire (name the rule in the case's `rule:` or `excludes:`)"
        gaps = ([] if fires else ["where it fires"]) + ([] if not_fires else [hint])
        out.append(f"{file}: rule {rule}: no passing test case " + " and none ".join(gaps))
    return out
