"""`mktool diff`: what a change does to the target lists, before it is merged.

Two ways to get the two sides:

* two export cycle folders (``mktool diff OUT_A/2026-10/latest OUT_B/2026-10/2026-11-01``): the
  lists and funnel.json that ``mktool export`` / ``mktool run`` wrote;
* the current rules against another matrices folder on the same data (``mktool diff --month M
  --against-matrices ../main/matrices``): both rule sets run the whole month (score, matrix,
  plan, export, fixed cycle date) in temporary databases, built from ``--fixtures DIR`` or
  copied from ``--db``, which is never written.

Side A is the base ("before": the first folder, or the --against-matrices rules) and side B
the change ("after": the second folder, or the current --matrices). The result, per channel
and per channel × policy: customers before and after, customers gained (in B, not in A) and
lost, offers whose rank moved; the funnel stages that moved; with --against-matrices also the
per-rule hit counts. Rendered as a table (for people and pull-request comments), markdown,
json (stable: sorted keys and rows) or csv (one long table).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from mktool.config import Settings
from mktool.console import QUIET, Reporter
from mktool.errors import MktoolError, StateError
from mktool.pipeline import list_reader, target_lists, temporary_run
from mktool.project import load_project

__all__ = ["DiffResult", "compare_folders", "compare_rules", "render_csv", "render_json", "render_markdown"]

FORMATS = ("table", "json", "csv", "markdown")
NO_POLICY = "-"


@dataclass
class DiffResult:
    before: str  # what side A is (a folder, or "rules in <dir>")
    after: str
    channels: list[dict[str, Any]]  # channel, customers_before/after, rows_before/after, gained, lost, rank_changed
    policies: list[dict[str, Any]]  # channel, policy_id, customers_before/after, gained, lost, rank_changed
    funnels: list[dict[str, Any]]  # funnel, stage_no, stage, before, after, delta (every stage)
    rule_hits: list[dict[str, Any]] = field(default_factory=list)  # matrix, rule_id, policy_id, before, after, delta
    month: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return (not any(c["gained"] or c["lost"] or c["rank_changed"] or c["rows_before"] != c["rows_after"]
                        for c in self.channels)
                and not any(f["delta"] for f in self.funnels) and not any(r["delta"] for r in self.rule_hits))

    def as_dict(self) -> dict[str, Any]:
        return {
            "before": self.before, "after": self.after, "month": self.month, "identical": self.identical,
            "channels": self.channels, "policies": self.policies, "funnels": self.funnels,
            "rule_hits": self.rule_hits, "notes": self.notes,
        }


# -- loading one side ---------------------------------------------------------------------------------------
def _load_lists(con: duckdb.DuckDBPyConnection, folder: Path, side: str) -> list[str]:
    """Every target list of ``folder`` into table ``side`` (channel, msisdn, policy_id, rank); notes."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {side} "
                "(channel VARCHAR, msisdn VARCHAR, policy_id VARCHAR, rank INTEGER)")
    con.execute("CREATE TEMP TABLE IF NOT EXISTS list_names (channel VARCHAR)")
    notes = []
    for path in target_lists(folder):
        con.execute("INSERT INTO list_names VALUES (?)", [path.stem])
        cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {list_reader(path)}").fetchall()}
        if "msisdn" not in cols:
            notes.append(f"{path}: no msisdn column, not compared")
            continue
        channel = path.stem
        policy = "CAST(policy_id AS VARCHAR)" if "policy_id" in cols else f"'{NO_POLICY}'"
        rank = "TRY_CAST(rank AS INTEGER)" if "rank" in cols else "CAST(NULL AS INTEGER)"
        if "policy_id" not in cols:
            notes.append(f"{path}: no policy_id column: compared by customer only")
        con.execute(f"INSERT INTO {side} SELECT ?, CAST(msisdn AS VARCHAR), {policy}, {rank} FROM {list_reader(path)}",
                    [channel])
    return notes


def _load_funnels(folder: Path) -> dict[str, list[tuple[str, int]]]:
    path = Path(folder) / "funnel.json"
    if not path.exists():
        return {}
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {name: [(s["stage"], int(s["count"])) for s in stages] for name, stages in doc.get("funnels", {}).items()}


def _check_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise StateError(f"no export folder at {folder}", hint="give a cycle folder <out>/<month>/<cycle-date>, "
                                                                       "e.g. out/2026-10/latest")
    if not target_lists(folder) and not (folder / "funnel.json").exists():
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        hint = (f"it holds folders ({', '.join(subdirs[:4])}): give one of them, or for a month folder one of its "
                "cycle folders (<out>/<month>/<cycle-date> or <out>/<month>/latest)") if subdirs else None
        raise StateError(f"{folder} holds no target lists and no funnel.json", hint=hint)
    return folder


# -- comparing ------------------------------------------------------------------------------------------------
CHANNEL_SQL = """
WITH keys AS (SELECT DISTINCT channel FROM list_names),
ca AS (SELECT DISTINCT channel, msisdn FROM a),
cb AS (SELECT DISTINCT channel, msisdn FROM b),
pairs AS (
    SELECT a.channel, a.msisdn, a.policy_id FROM a JOIN b USING (channel, msisdn, policy_id)
    WHERE a.rank IS DISTINCT FROM b.rank
)
SELECT k.channel,
    (SELECT count(*) FROM ca WHERE ca.channel = k.channel) AS customers_before,
    (SELECT count(*) FROM cb WHERE cb.channel = k.channel) AS customers_after,
    (SELECT count(*) FROM a WHERE a.channel = k.channel) AS rows_before,
    (SELECT count(*) FROM b WHERE b.channel = k.channel) AS rows_after,
    (SELECT count(*) FROM cb WHERE cb.channel = k.channel
        AND NOT EXISTS (SELECT 1 FROM ca WHERE ca.channel = cb.channel AND ca.msisdn = cb.msisdn)) AS gained,
    (SELECT count(*) FROM ca WHERE ca.channel = k.channel
        AND NOT EXISTS (SELECT 1 FROM cb WHERE cb.channel = ca.channel AND cb.msisdn = ca.msisdn)) AS lost,
    (SELECT count(*) FROM pairs WHERE pairs.channel = k.channel) AS rank_changed
FROM keys k
ORDER BY k.channel
"""

POLICY_SQL = """
WITH pa AS (SELECT DISTINCT channel, policy_id, msisdn, rank FROM a),
pb AS (SELECT DISTINCT channel, policy_id, msisdn, rank FROM b),
j AS (
    SELECT coalesce(pa.channel, pb.channel) AS channel, coalesce(pa.policy_id, pb.policy_id) AS policy_id,
           pa.msisdn AS m_before, pb.msisdn AS m_after, pa.rank AS r_before, pb.rank AS r_after
    FROM pa FULL OUTER JOIN pb
      ON pa.channel = pb.channel AND pa.policy_id = pb.policy_id AND pa.msisdn = pb.msisdn
)
SELECT channel, policy_id,
    count(DISTINCT m_before) AS customers_before,
    count(DISTINCT m_after) AS customers_after,
    count(DISTINCT CASE WHEN m_before IS NULL THEN m_after END) AS gained,
    count(DISTINCT CASE WHEN m_after IS NULL THEN m_before END) AS lost,
    count(DISTINCT CASE WHEN m_before IS NOT NULL AND m_after IS NOT NULL AND r_before IS DISTINCT FROM r_after
                        THEN m_after END) AS rank_changed
FROM j
GROUP BY channel, policy_id
ORDER BY channel, policy_id
"""


def _compare_lists(con: duckdb.DuckDBPyConnection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def rows(sql: str) -> list[dict[str, Any]]:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [{k: (int(v) if isinstance(v, int) else v) for k, v in zip(names, r)} for r in cur.fetchall()]

    return rows(CHANNEL_SQL), rows(POLICY_SQL)


def _compare_funnels(a: dict[str, list[tuple[str, int]]], b: dict[str, list[tuple[str, int]]]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(set(a) | set(b)):
        stages = list(dict.fromkeys([s for s, _ in a.get(name, [])] + [s for s, _ in b.get(name, [])]))
        da, db_ = dict(a.get(name, [])), dict(b.get(name, []))
        for i, stage in enumerate(stages, 1):
            before, after = da.get(stage), db_.get(stage)
            delta = (after or 0) - (before or 0)
            out.append({"funnel": name, "stage_no": i, "stage": stage, "before": before, "after": after,
                        "delta": delta})
    return out


def compare_folders(before: Path, after: Path, *, labels: tuple[str, str] | None = None) -> DiffResult:
    """Compare two export cycle folders (<out>/<month>/<cycle-date>)."""
    before, after = _check_folder(before), _check_folder(after)
    con = duckdb.connect(":memory:")
    try:
        notes = _load_lists(con, before, "a") + _load_lists(con, after, "b")
        channels, policies = _compare_lists(con)
    finally:
        con.close()
    funnels = _compare_funnels(_load_funnels(before), _load_funnels(after))
    a_label, b_label = labels or (str(before), str(after))
    month = before.name if before.name == after.name else None
    return DiffResult(a_label, b_label, channels, policies, funnels, month=month, notes=notes)


def _rule_hits(db_path: Path, month: str) -> dict[tuple[str, str], tuple[int, str | None, int]]:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute("SELECT matrix, rule_id, rule_no, policy_id, hits FROM rule_hits WHERE month = ?",
                           [month]).fetchall()
    finally:
        con.close()
    return {(m, r): (int(no), p, int(h)) for m, r, no, p, h in rows}


def compare_rules(month: str, current: Path, against: Path, *, fixtures: Path | None = None, db: Path | None = None,
                  cycle_date: dt.date | None = None, settings: Settings | None = None,
                  reporter: Reporter = QUIET) -> DiffResult:
    """Run the month with the ``against`` rules (before) and the ``current`` rules (after) and compare."""
    for folder in (against, current):
        if not Path(folder).is_dir():
            raise StateError(f"no matrices folder at {folder}")
    # Refuse a broken rule set before building anything (errors name the file and rule).
    before, after = load_project(Path(against)), load_project(Path(current))
    source = {"fixtures": fixtures} if fixtures is not None else {"source_db": db}
    with (reporter.step(f"running {month} with the rules in {against} and in {current}"),
          temporary_run(month, Path(against), cycle_date=cycle_date, settings=settings, label="before",
                        project=before, **source) as run_a,
          temporary_run(month, Path(current), cycle_date=cycle_date, settings=settings, label="after",
                        project=after, **source) as run_b):
        result = compare_folders(run_a.out_dir, run_b.out_dir, labels=(f"rules in {against}", f"rules in {current}"))
        hits_a, hits_b = _rule_hits(run_a.db_path, month), _rule_hits(run_b.db_path, month)
    rows = []

    def order(key: tuple[str, str]) -> tuple[str, int, str]:  # matrix, then the rule's place in it (after's first)
        return key[0], (hits_b.get(key) or hits_a[key])[0], key[1]

    for key in sorted(set(hits_a) | set(hits_b), key=order):
        a, b = hits_a.get(key), hits_b.get(key)
        rows.append({"matrix": key[0], "rule_id": key[1], "policy_id": (b or a)[1],  # type: ignore[index]
                     "before": a[2] if a else None, "after": b[2] if b else None,
                     "delta": (b[2] if b else 0) - (a[2] if a else 0)})
    result.rule_hits = rows
    result.month = month
    data = f"fixtures {fixtures}" if fixtures else f"a copy of {db}"
    result.notes.append(f"cycle date {run_b.cycle_date}; data: {data}")
    return result


# -- rendering ------------------------------------------------------------------------------------------------
def _n(v: Any) -> str:
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def _signed(v: int) -> str:
    return f"{v:+,}" if v else "0"


def sections(result: DiffResult) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, columns, rows) of every section a person reads; only what moved, except channel totals."""
    out = []
    out.append(("Target lists by channel",
                ["channel", "customers before", "after", "gained", "lost", "rank changed", "rows before", "rows after"],
                [[c["channel"], _n(c["customers_before"]), _n(c["customers_after"]), f"+{c['gained']:,}",
                  f"-{c['lost']:,}", _n(c["rank_changed"]), _n(c["rows_before"]), _n(c["rows_after"])]
                 for c in result.channels]))
    moved = [p for p in result.policies if p["gained"] or p["lost"] or p["rank_changed"]]
    out.append(("Customers gained and lost by channel and policy",
                ["channel", "policy", "before", "after", "gained", "lost", "rank changed"],
                [[p["channel"], p["policy_id"], _n(p["customers_before"]), _n(p["customers_after"]),
                  f"+{p['gained']:,}", f"-{p['lost']:,}", _n(p["rank_changed"])] for p in moved]))
    funnels = [f for f in result.funnels if f["delta"] or f["before"] is None or f["after"] is None]
    out.append(("Funnel stages that moved", ["funnel", "stage", "before", "after", "delta"],
                [[f["funnel"], f["stage"], _n(f["before"]), _n(f["after"]), _signed(f["delta"])] for f in funnels]))
    if result.rule_hits:
        hits = [r for r in result.rule_hits if r["delta"] or r["before"] is None or r["after"] is None]
        out.append(("Rule hits that moved", ["matrix", "rule", "policy", "before", "after", "delta"],
                    [[r["matrix"], r["rule_id"], r["policy_id"] or "", _n(r["before"]), _n(r["after"]),
                      _signed(r["delta"])] for r in hits]))
    return out


def headline(result: DiffResult) -> str:
    if result.identical:
        return f"No differences: {result.before} and {result.after} give the same target lists and funnels."
    gained = sum(c["gained"] for c in result.channels)
    lost = sum(c["lost"] for c in result.channels)
    offers_gained = sum(p["gained"] for p in result.policies)
    offers_lost = sum(p["lost"] for p in result.policies)
    ranks = sum(c["rank_changed"] for c in result.channels)
    changed = [c["channel"] for c in result.channels if c["gained"] or c["lost"] or c["rank_changed"]
               or c["rows_before"] != c["rows_after"]]
    return (f"{result.before} → {result.after}" + (f" ({result.month})" if result.month else "") + ": "
            f"customers +{gained:,} / -{lost:,} on the channel lists, offers (customer × policy) "
            f"+{offers_gained:,} / -{offers_lost:,}, {ranks:,} rank changes"
            + (f"; lists that moved: {', '.join(changed)}" if changed else ""))


def render_json(result: DiffResult) -> str:
    return json.dumps(result.as_dict(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


CSV_COLUMNS = ("section", "name", "item", "before", "after", "delta", "gained", "lost", "rank_changed")


def render_csv(result: DiffResult) -> str:
    """One long table: section (channel | policy | funnel | rule_hits), name, item, counts."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in result.channels:
        w.writerow(["channel", c["channel"], "", c["customers_before"], c["customers_after"],
                    c["customers_after"] - c["customers_before"], c["gained"], c["lost"], c["rank_changed"]])
    for p in result.policies:
        w.writerow(["policy", p["channel"], p["policy_id"], p["customers_before"], p["customers_after"],
                    p["customers_after"] - p["customers_before"], p["gained"], p["lost"], p["rank_changed"]])
    for f in result.funnels:
        w.writerow(["funnel", f["funnel"], f["stage"], _blank(f["before"]), _blank(f["after"]), f["delta"], "", "", ""])
    for r in result.rule_hits:
        w.writerow(["rule_hits", r["matrix"], r["rule_id"], _blank(r["before"]), _blank(r["after"]), r["delta"],
                    "", "", ""])
    return buf.getvalue()


def _blank(v: Any) -> Any:
    return "" if v is None else v


def render_markdown(result: DiffResult) -> str:
    """GitHub / GitLab flavoured markdown, for a pull-request comment."""
    lines = ["### mktool diff", "", headline(result), ""]
    if not result.identical:
        for title, cols, rows in sections(result):
            if not rows:
                continue
            lines += [f"**{title}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for row in rows:
                lines.append("| " + " | ".join(v.replace("|", "\\|") for v in row) + " |")
            lines.append("")
    lines += [f"_{n}_" for n in result.notes]
    return "\n".join(lines).rstrip() + "\n"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise MktoolError(f"format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    return fmt
