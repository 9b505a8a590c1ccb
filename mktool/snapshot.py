"""`mktool snapshot`: fixture regression for CI.

The bundled fixture extracts (``fixtures/extracts``) go through the whole month — ingest,
score, matrix, plan, export — in a temporary database and output folder with a fixed cycle
date, never the user's ``--db``. What the month produced is recorded in a small committed JSON
file (``fixtures/snapshot.json``):

* every funnel's stage counts (plan, each matrix, each channel: funnel.json),
* every rule's hit count (the ``rule_hits`` table),
* every target list's rows, distinct customers and a content hash (sha256 of its rows,
  read back from the written file, sorted, so the hash does not depend on file bytes),
* the sha256 of every fixture file, so a check can tell "the data changed" from "the rules
  changed".

``snapshot --check`` recomputes every month in the file and lists what moved (what, before,
after, delta); a reviewer sees that a threshold change moved rule R6 from 140 to 152 hits and
the outbound list by 12 customers before merging. The temporary run and the list readers are
:mod:`mktool.pipeline`, shared with ``mktool diff``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from mktool.config import Settings
from mktool.console import QUIET, Reporter
from mktool.errors import CheckFailed, ConfigError, MktoolError, StateError
from mktool.export import funnel_document
from mktool.pipeline import list_reader, target_lists, temporary_run
from mktool.publish import file_sha256
from mktool.rules import matrix_files_by_name
from mktool.versions import engine_versions, version_changes

__all__ = [
    "DEFAULT_FILE",
    "DEFAULT_FIXTURES",
    "Change",
    "build_month",
    "change_rows",
    "check",
    "compare",
    "dumps",
    "list_content",
    "load",
    "raise_if_moved",
    "record",
    "write",
]

FORMAT = 1
DEFAULT_FILE = Path("fixtures/snapshot.json")
DEFAULT_FIXTURES = Path("fixtures/extracts")


def fixture_files(fixtures: Path) -> list[Path]:
    return sorted(p for p in Path(fixtures).iterdir() if p.is_file() and p.suffix.lower() == ".parquet")


# -- reading target lists back ----------------------------------------------------------------------
def read_list(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[list[str], list[tuple[str | None, ...]]]:
    """A target list's columns and rows, every value as text, rows sorted (order-independent)."""
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {list_reader(path)}").fetchall()]
    if not cols:
        return [], []
    select = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in cols)
    rows = con.execute(f"SELECT {select} FROM {list_reader(path)} ORDER BY ALL").fetchall()
    return cols, rows


def list_content(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, Any]:
    """rows, distinct customers and the sha256 of the sorted rows of one target list."""
    cols, rows = read_list(con, path)
    h = hashlib.sha256(json.dumps(cols, ensure_ascii=False).encode())
    for row in rows:
        h.update(b"\n" + json.dumps(row, ensure_ascii=False).encode())
    customers = len({r[cols.index("msisdn")] for r in rows}) if "msisdn" in cols else None
    return {"rows": len(rows), "customers": customers, "sha256": h.hexdigest()}


def build_month(month: str, matrices_dir: Path, fixtures: Path, *, cycle_date: dt.date | None = None,
                settings: Settings | None = None, reporter: Reporter = QUIET) -> dict[str, Any]:
    """The snapshot of one month: funnels, rule hits and target lists of the fixture run."""
    with temporary_run(month, matrices_dir, fixtures=fixtures, cycle_date=cycle_date, settings=settings,
                       reporter=reporter, label="snapshot") as run:
        con = duckdb.connect(str(run.db_path), read_only=True)
        try:
            funnels = funnel_document(con, month, run.cycle_date)["funnels"]
            hits = con.execute("SELECT matrix, rule_id, hits FROM rule_hits WHERE month = ? ORDER BY matrix, rule_no",
                               [month]).fetchall()
            lists = {p.stem: list_content(con, p) for p in target_lists(run.out_dir)}
        finally:
            con.close()
    rule_hits: dict[str, dict[str, int]] = {}
    for matrix, rule_id, n in hits:
        rule_hits.setdefault(matrix, {})[rule_id] = int(n)
    return {
        "cycle_date": run.cycle_date.isoformat(),
        "funnels": {name: {s["stage"]: int(s["count"]) for s in stages} for name, stages in funnels.items()},
        "rule_hits": rule_hits,
        "lists": lists,
    }


def record(months: list[str], matrices_dir: Path, fixtures: Path, *, cycle_date: dt.date | None = None,
           settings: Settings | None = None, reporter: Reporter = QUIET) -> dict[str, Any]:
    """A whole snapshot document for ``months`` (the fixture files' hashes included)."""
    fixtures = Path(fixtures)
    if not fixtures.is_dir() or not fixture_files(fixtures):
        raise StateError(f"no fixture extracts in {fixtures}",
                         hint="run from the project root, or give --fixtures DIR (Parquet extracts)")
    doc: dict[str, Any] = {
        "mktool_snapshot": FORMAT,
        "fixtures": fixtures.as_posix(),
        # the releases it was recorded with: a check that moves under other releases says so
        "engines": engine_versions(),
        "inputs": {p.name: file_sha256(p) for p in fixture_files(fixtures)},
        "months": {},
    }
    for month in sorted(months):
        with reporter.step(f"building the fixtures for {month}"):
            doc["months"][month] = build_month(month, matrices_dir, fixtures, cycle_date=cycle_date,
                                               settings=settings, reporter=QUIET)
    return doc


# -- the committed file ---------------------------------------------------------------------------------
def dumps(doc: dict[str, Any]) -> str:
    """Stable JSON: insertion order (funnel stages in order), 2-space indent, UTF-8, final newline."""
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def load(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise StateError(f"no snapshot at {path}",
                         hint="record one with `mktool snapshot --month YYYY-MM --write` (from the project root) "
                              "and commit it")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON (line {exc.lineno}): {exc.msg}", file=str(path),
                          hint="re-record it with `mktool snapshot --month YYYY-MM --write`") from None
    if not isinstance(doc, dict) or doc.get("mktool_snapshot") != FORMAT or not isinstance(doc.get("months"), dict):
        raise ConfigError("not an mktool snapshot (expected mktool_snapshot: 1 and months: {...})", file=str(path))
    return doc


def write(path: Path, doc: dict[str, Any], *, merge: bool = True) -> dict[str, Any]:
    """Write ``doc``; with ``merge``, months already in the file and not in ``doc`` are kept."""
    path = Path(path)
    if merge and path.exists():
        try:
            old = load(path)
        except MktoolError:
            old = None
        if old is not None and old.get("inputs") == doc["inputs"] and old.get("fixtures") == doc["fixtures"]:
            months = {**old["months"], **doc["months"]}
            doc = {**doc, "months": {m: months[m] for m in sorted(months)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(dumps(doc), encoding="utf-8")
    tmp.replace(path)
    return doc


# -- comparing --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    month: str
    what: str  # "funnel plan: in_rate_window", "rule retention/R6 (matrices/retention.yaml)", ...
    before: Any
    after: Any

    @property
    def delta(self) -> str:
        if isinstance(self.before, int) and isinstance(self.after, int):
            d = self.after - self.before
            pct = f" ({100 * d / self.before:+.1f}%)" if self.before else ""
            return f"{d:+,}{pct}"
        if self.before is None:
            return "new"
        if self.after is None:
            return "gone"
        return "changed"

    def as_dict(self) -> dict[str, Any]:
        return {"month": self.month, "what": self.what, "before": self.before, "after": self.after,
                "delta": self.delta}


def _flatten(month_doc: dict[str, Any], rule_files: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, stages in month_doc.get("funnels", {}).items():
        for stage, n in stages.items():
            out[f"funnel {name}: {stage}"] = n
    for matrix, rules in month_doc.get("rule_hits", {}).items():
        file = rule_files.get(matrix)
        for rule_id, n in rules.items():
            out[f"rule {matrix}/{rule_id}" + (f" ({file})" if file else "") + ": hits"] = n
    for channel, info in month_doc.get("lists", {}).items():
        out[f"list {channel}: rows"] = info.get("rows")
        out[f"list {channel}: customers"] = info.get("customers")
        out[f"list {channel}: content sha256"] = (info.get("sha256") or "")[:12] or None
    return out


def compare(before: dict[str, Any], after: dict[str, Any], *, rule_files: dict[str, str] | None = None) -> list[Change]:
    """What moved between two snapshot documents, month by month, in the order of the file."""
    changes: list[Change] = []
    files = rule_files or {}
    for name in sorted(set(before.get("inputs", {})) | set(after.get("inputs", {}))):
        a, b = before.get("inputs", {}).get(name), after.get("inputs", {}).get(name)
        if a != b:
            changes.append(Change("*", f"fixture {name}: sha256", a[:12] if a else None, b[:12] if b else None))
    for month in sorted(set(before["months"]) | set(after["months"])):
        a = _flatten(before["months"].get(month, {}), files)
        b = _flatten(after["months"].get(month, {}), files)
        if before["months"].get(month, {}).get("cycle_date") != after["months"].get(month, {}).get("cycle_date"):
            changes.append(Change(month, "cycle date", before["months"].get(month, {}).get("cycle_date"),
                                  after["months"].get(month, {}).get("cycle_date")))
        for key in list(dict.fromkeys([*a, *b])):
            if a.get(key) != b.get(key):
                changes.append(Change(month, key, a.get(key), b.get(key)))
    return changes


def check(path: Path, matrices_dir: Path, *, months: list[str] | None = None, fixtures: Path | None = None,
          settings: Settings | None = None,
          reporter: Reporter = QUIET) -> tuple[dict[str, Any], dict[str, Any], list[Change]]:
    """Recompute the snapshot's months (or ``months``) and compare; returns (before, after, changes)."""
    before = load(path)
    chosen = sorted(months) if months else sorted(before["months"])
    missing = [m for m in chosen if m not in before["months"]]
    if missing:
        raise StateError(f"{path} has no snapshot for {', '.join(missing)} "
                         f"(it has: {', '.join(before['months']) or 'none'})",
                         hint=f"record it with `mktool snapshot --month {missing[0]} --write`")
    if not chosen:
        raise StateError(f"{path} records no month", hint="record one with `mktool snapshot --month YYYY-MM --write`")
    fixtures = Path(fixtures) if fixtures is not None else Path(before.get("fixtures") or DEFAULT_FIXTURES)
    cycle = {m: before["months"][m].get("cycle_date") for m in chosen}
    after: dict[str, Any] = {"mktool_snapshot": FORMAT, "fixtures": fixtures.as_posix(),
                             "engines": engine_versions(), "months": {}}
    if not fixtures.is_dir() or not fixture_files(fixtures):
        raise StateError(f"no fixture extracts in {fixtures}",
                         hint="run `mktool snapshot --check` from the project root, or give --fixtures DIR")
    after["inputs"] = {p.name: file_sha256(p) for p in fixture_files(fixtures)}
    for month in chosen:
        date = dt.date.fromisoformat(cycle[month]) if cycle[month] else None
        with reporter.step(f"building the fixtures for {month}"):
            after["months"][month] = build_month(month, matrices_dir, fixtures, cycle_date=date, settings=settings)
    scoped = {**before, "months": {m: before["months"][m] for m in chosen}}
    return before, after, compare(scoped, after, rule_files=matrix_files_by_name(matrices_dir))


def raise_if_moved(changes: list[Change], path: Path, months: list[str], *,
                   recorded_engines: dict[str, str] | None = None,
                   current_engines: dict[str, str] | None = None) -> None:
    """CheckFailed when anything moved; when the engine releases differ too, the message says which.

    A move under another DuckDB / sqlglot / pyarrow release than the snapshot's is an engine
    drift to fix (or to bound in pyproject.toml), not something to re-record away.
    """
    if not changes:
        return
    n = len(changes)
    engines = version_changes(recorded_engines, current_engines or engine_versions())
    if engines:
        raise CheckFailed(
            f"snapshot check: {n} value{'s' if n != 1 else ''} moved against {path} ({', '.join(months)}), "
            f"and the engines differ from the ones it was recorded with: {', '.join(engines)}",
            hint="if the rules did not change, an engine release changed the results: do not re-record to "
                 "hide it; make mktool give the same results on both releases, or bound the range in "
                 "pyproject.toml below the one that moved them (docs/dependencies.md)",
        )
    raise CheckFailed(
        f"snapshot check: {n} value{'s' if n != 1 else ''} moved against {path} ({', '.join(months)})",
        hint=f"if the change is intended, re-record with `mktool snapshot --month {months[0]} --write` "
             f"and commit {path} with the rule change",
    )


def change_rows(changes: list[Change]) -> list[tuple[str, str, str, str, str]]:
    """(month, what, before, after, delta) per change, numbers with thousands separators: the --check table."""
    def show(v: Any) -> str:
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    return [(c.month, c.what, show(c.before), show(c.after), c.delta) for c in changes]
