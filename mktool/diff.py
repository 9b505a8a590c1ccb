"""`mktool diff`: what a change does to the target lists, before it is merged.

Two ways to get the two sides:

* two export cycle folders (``mktool diff OUT_A/2026-10/latest OUT_B/2026-10/2026-11-01``): the
  lists and funnel.json that ``mktool export`` / ``mktool run`` wrote;
* the current rules against another matrices folder on the same data (``mktool diff --month M
  --against-matrices ../main/matrices``): both rule sets run the whole month (score, matrix,
  plan, export, fixed cycle date) in temporary databases, built from ``--fixtures DIR`` or
  copied from ``--db``, which is never written.

Side A is the base ("before": the first folder, or the --against-matrices rules) and side B
the change ("after": the second folder, or the current --matrices). Rows are matched by
channel, msisdn and policy_id (a list without policy_id: msisdn and rank) and compared column
by column, in DuckDB. The result, per channel and per channel × policy: customers before and
after, customers gained (in B, not in A) and lost, offers whose rank moved, rows whose other
columns changed (the script, money, plan, group ...) with a count per column; the funnel
stages that moved; with --against-matrices also the per-rule hit counts. "No differences"
means every list file is the same bytes on both sides (sha256): files that differ only in
column order or number format are a difference too, said as such. ``--out FILE`` writes the
rows themselves (msisdn, kind, before / after values). Rendered as a table (for people and
pull-request comments), markdown, json (stable: sorted keys and rows) or csv (one long table).
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
from mktool.errors import InputError, MktoolError, StateError
from mktool.output import copy_to_file
from mktool.pipeline import list_reader, target_lists, temporary_run
from mktool.project import load_project
from mktool.publish import file_sha256
from mktool.schema import TARGET_COLUMNS
from mktool.sqlquote import quote_identifier, quote_literal

__all__ = ["DiffResult", "compare_folders", "compare_rules", "render_csv", "render_json", "render_markdown"]

FORMATS = ("table", "json", "csv", "markdown")
NO_POLICY = "-"


@dataclass
class DiffResult:
    before: str  # what side A is (a folder, or "rules in <dir>")
    after: str
    # channel, customers_before/after, rows_before/after, gained, lost (customers), rank_changed, changed (rows),
    # changed_columns {column: rows}, same_bytes (the two list files are byte for byte the same)
    channels: list[dict[str, Any]]
    # channel, policy_id, customers_before/after, gained, lost, rank_changed, changed (rows), changed_columns
    policies: list[dict[str, Any]]
    funnels: list[dict[str, Any]]  # funnel, stage_no, stage, before, after, delta (every stage)
    rule_hits: list[dict[str, Any]] = field(default_factory=list)  # matrix, rule_id, policy_id, before, after, delta
    month: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Every list the same bytes on both sides (none only on one), and no funnel stage or rule hit moved."""
        return (all(c["same_bytes"] for c in self.channels)
                and not any(f["delta"] for f in self.funnels) and not any(r["delta"] for r in self.rule_hits))

    def as_dict(self) -> dict[str, Any]:
        return {
            "before": self.before, "after": self.after, "month": self.month, "identical": self.identical,
            "channels": self.channels, "policies": self.policies, "funnels": self.funnels,
            "rule_hits": self.rule_hits, "notes": self.notes,
        }


# -- loading and comparing the lists -----------------------------------------------------------------------
DETAIL = "_mk_diff_rows"  # every row of both sides, keyed, with what changed (session temp table)
CHANGE_TYPE = 'STRUCT("column" VARCHAR, "before" VARCHAR, "after" VARCHAR)'
#: A row's kind in the detail: on one side only, on both with other values, on both with another rank, the same.
GAINED, LOST, CHANGED, RANK_CHANGED, SAME = "gained", "lost", "changed", "rank_changed", "same"
KINDS = (GAINED, LOST, CHANGED, RANK_CHANGED)
#: The list's columns that identify a row rather than describe it (never reported as changed).
ROW_KEY = ("msisdn", "policy_id", "rank")


@dataclass
class _Side:
    """One side's list of a channel: the file, its sha256 and its columns (in file order)."""

    path: Path
    sha256: str
    columns: list[str]

    @property
    def reader(self) -> str:
        return list_reader(self.path)


def _describe(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    try:
        return [str(r[0]) for r in con.execute(f"DESCRIBE SELECT * FROM {list_reader(path)}").fetchall()]
    except duckdb.Error as exc:
        raise InputError(f"cannot read the target list {path}: {str(exc).strip().splitlines()[0]}",
                         hint="give the folders export wrote (<out>/<month>), with the lists as exported") from None


def _sides(con: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, _Side]:
    """channel (the file's stem) -> its list in ``folder``."""
    return {path.stem: _Side(path, file_sha256(path), _describe(con, path)) for path in target_lists(folder)}


def _key(cols: set[str]) -> tuple[str, str]:
    """How rows of a list are matched across the sides: (policy expression, rank expression).

    By msisdn and policy_id (the rank is then compared); a list without policy_id by msisdn and
    rank; without either, by msisdn alone. Duplicate keys (a masked msisdn) are paired in order.
    """
    policy = "CAST(t.policy_id AS VARCHAR)" if "policy_id" in cols else quote_literal(NO_POLICY)
    rank = "TRY_CAST(t.rank AS INTEGER)" if "rank" in cols else "CAST(NULL AS INTEGER)"
    return policy, rank


def _side_rows(side: _Side, cols: set[str], keyed_by_rank: bool) -> str:
    """The list's rows with the key columns in front (``_mk_*``), every list column kept as read."""
    policy, rank = _key(cols)
    partition = f"CAST(t.msisdn AS VARCHAR), {policy}" + (f", {rank}" if keyed_by_rank else "")
    order = ", ".join([rank, *(f"CAST(t.{quote_identifier(c)} AS VARCHAR)" for c in side.columns)])
    return (f"SELECT CAST(t.msisdn AS VARCHAR) AS _mk_msisdn, {policy} AS _mk_policy, {rank} AS _mk_rank, "
            f"row_number() OVER (PARTITION BY {partition} ORDER BY {order}) AS _mk_dup, true AS _mk_here, t.* "
            f"FROM {side.reader} AS t")


def _compare_channel(con: duckdb.DuckDBPyConnection, channel: str, a: _Side | None, b: _Side | None) -> list[str]:
    """Insert the channel's rows of both sides into DETAIL, each with its kind and changed columns; notes."""
    notes: list[str] = []
    label = quote_literal(channel)
    if a is not None and b is not None and a.sha256 == b.sha256:  # the same bytes: every row the same
        policy, rank = _key(set(a.columns))
        con.execute(f"INSERT INTO {DETAIL} SELECT {label}, CAST(t.msisdn AS VARCHAR), {policy}, '{SAME}', {rank}, "
                    f"{rank}, [] FROM {a.reader} AS t")
        return notes
    if a is None or b is None:
        one = a or b
        assert one is not None
        policy, rank = _key(set(one.columns))
        kind, ranks = (GAINED, f"NULL, {rank}") if a is None else (LOST, f"{rank}, NULL")
        con.execute(f"INSERT INTO {DETAIL} SELECT {label}, CAST(t.msisdn AS VARCHAR), {policy}, '{kind}', {ranks}, "
                    f"[] FROM {one.reader} AS t")
        return notes
    both = set(a.columns) & set(b.columns)
    keyed_by_rank = "policy_id" not in both
    if keyed_by_rank:
        notes.append(f"{channel}: no policy_id column on both sides: rows matched by msisdn and rank")
    for side, other, when in ((a, b, "before"), (b, a, "after")):
        only = [c for c in side.columns if c not in other.columns]
        if only:
            notes.append(f"{channel}: column{'s' if len(only) > 1 else ''} {', '.join(only)} only {when}")
    compared = [c for c in b.columns if c in both and c not in ROW_KEY]
    changes = (", ".join(f"{{'column': {quote_literal(c)}, 'before': CAST(a.{quote_identifier(c)} AS VARCHAR), "
                         f"'after': CAST(b.{quote_identifier(c)} AS VARCHAR)}}" for c in compared))
    changes_sql = (f"list_filter([{changes}], lambda x: x.before IS DISTINCT FROM x.after)" if compared
                   else f"CAST([] AS {CHANGE_TYPE}[])")
    on = "a._mk_msisdn IS NOT DISTINCT FROM b._mk_msisdn AND a._mk_policy IS NOT DISTINCT FROM b._mk_policy " \
         "AND a._mk_dup = b._mk_dup" + (" AND a._mk_rank IS NOT DISTINCT FROM b._mk_rank" if keyed_by_rank else "")
    con.execute(f"""INSERT INTO {DETAIL}
        WITH j AS (
            SELECT coalesce(a._mk_msisdn, b._mk_msisdn) AS msisdn, coalesce(a._mk_policy, b._mk_policy) AS policy_id,
                   a._mk_here AS in_a, b._mk_here AS in_b, a._mk_rank AS rank_before, b._mk_rank AS rank_after,
                   CASE WHEN a._mk_here AND b._mk_here THEN {changes_sql} ELSE CAST([] AS {CHANGE_TYPE}[]) END
                       AS changes
            FROM ({_side_rows(a, both, keyed_by_rank)}) AS a
            FULL OUTER JOIN ({_side_rows(b, both, keyed_by_rank)}) AS b ON {on}
        )
        SELECT {label}, msisdn, policy_id,
               CASE WHEN in_a IS NULL THEN '{GAINED}' WHEN in_b IS NULL THEN '{LOST}'
                    WHEN len(changes) > 0 THEN '{CHANGED}'
                    WHEN rank_before IS DISTINCT FROM rank_after THEN '{RANK_CHANGED}' ELSE '{SAME}' END,
               rank_before, rank_after, changes
        FROM j""")
    return notes


def _empty_without_columns(con: duckdb.DuckDBPyConnection, side: _Side) -> bool:
    """An empty JSON Lines list has no columns to read: it holds no rows, like a list that is not there."""
    if "msisdn" in side.columns:
        return False
    row = con.execute(f"SELECT count(*) FROM {side.reader}").fetchone()
    return row is not None and int(row[0]) == 0


def _load(con: duckdb.DuckDBPyConnection, before: Path, after: Path) -> tuple[dict[str, bool], list[str]]:
    """Both folders' lists into DETAIL; channel -> same bytes on both sides, and notes."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {DETAIL} (channel VARCHAR, msisdn VARCHAR, policy_id VARCHAR, "
                f"kind VARCHAR, rank_before INTEGER, rank_after INTEGER, changes {CHANGE_TYPE}[])")
    sides_a, sides_b = _sides(con, before), _sides(con, after)
    same: dict[str, bool] = {}
    notes: list[str] = []
    for channel in sorted(set(sides_a) | set(sides_b)):
        a, b = sides_a.get(channel), sides_b.get(channel)
        same[channel] = a is not None and b is not None and a.sha256 == b.sha256
        a, b = (None if s is not None and _empty_without_columns(con, s) else s for s in (a, b))
        if a is None and b is None:  # empty on both sides
            continue
        missing = [s.path for s in (a, b) if s is not None and "msisdn" not in s.columns]
        if missing:
            notes.append(f"{missing[0]}: no msisdn column, rows not compared")
            continue
        notes += _compare_channel(con, channel, a, b)
    return same, notes


CHANNEL_SQL = f"""
WITH per AS (
    SELECT channel, msisdn, bool_or(kind <> '{GAINED}') AS was, bool_or(kind <> '{LOST}') AS is_now
    FROM {DETAIL} GROUP BY channel, msisdn
), customers AS (
    SELECT channel, count(*) FILTER (WHERE was) AS customers_before, count(*) FILTER (WHERE is_now) AS customers_after,
           count(*) FILTER (WHERE is_now AND NOT was) AS gained, count(*) FILTER (WHERE was AND NOT is_now) AS lost
    FROM per GROUP BY channel
), rows_ AS (
    SELECT channel, count(*) FILTER (WHERE kind <> '{GAINED}') AS rows_before,
           count(*) FILTER (WHERE kind <> '{LOST}') AS rows_after,
           count(*) FILTER (WHERE kind NOT IN ('{GAINED}', '{LOST}') AND rank_before IS DISTINCT FROM rank_after)
               AS rank_changed,
           count(*) FILTER (WHERE kind = '{CHANGED}') AS changed
    FROM {DETAIL} GROUP BY channel
)
SELECT * FROM customers JOIN rows_ USING (channel) ORDER BY channel
"""

POLICY_SQL = f"""
SELECT channel, policy_id,
    count(DISTINCT msisdn) FILTER (WHERE kind <> '{GAINED}') AS customers_before,
    count(DISTINCT msisdn) FILTER (WHERE kind <> '{LOST}') AS customers_after,
    count(*) FILTER (WHERE kind = '{GAINED}') AS gained,
    count(*) FILTER (WHERE kind = '{LOST}') AS lost,
    count(*) FILTER (WHERE kind NOT IN ('{GAINED}', '{LOST}') AND rank_before IS DISTINCT FROM rank_after)
        AS rank_changed,
    count(*) FILTER (WHERE kind = '{CHANGED}') AS changed
FROM {DETAIL}
GROUP BY channel, policy_id
ORDER BY channel, policy_id
"""

COLUMN_SQL = f"""
SELECT channel, policy_id, c."column" AS "column", count(*) AS n
FROM (SELECT channel, policy_id, unnest(changes) AS c FROM {DETAIL} WHERE kind = '{CHANGED}') AS u
GROUP BY ALL ORDER BY channel, policy_id, "column"
"""


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [{k: (int(v) if isinstance(v, int) else v) for k, v in zip(names, r)} for r in cur.fetchall()]


def _compare_lists(con: duckdb.DuckDBPyConnection,
                   same: dict[str, bool]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per channel and per channel × policy: customers, rows gained / lost / rank changed / changed, by column."""
    by_channel = {c["channel"]: c for c in _rows(con, CHANNEL_SQL)}
    policies = _rows(con, POLICY_SQL)
    columns: dict[tuple[str, str], dict[str, int]] = {}
    for r in _rows(con, COLUMN_SQL):
        columns.setdefault((r["channel"], r["policy_id"]), {})[r["column"]] = r["n"]
    for p in policies:
        p["changed_columns"] = columns.get((p["channel"], p["policy_id"]), {})
    channels = []
    zero = {"customers_before": 0, "customers_after": 0, "rows_before": 0, "rows_after": 0, "gained": 0, "lost": 0,
            "rank_changed": 0, "changed": 0}
    for name in sorted(same):
        row = {**zero, **by_channel.get(name, {}), "channel": name, "same_bytes": same[name]}
        totals: dict[str, int] = {}
        for p in policies:
            if p["channel"] == name:
                for col, n in p["changed_columns"].items():
                    totals[col] = totals.get(col, 0) + n
        row["changed_columns"] = dict(sorted(totals.items()))
        channels.append(row)
    return channels, policies


def _write_detail(con: duckdb.DuckDBPyConnection, target: Path) -> int:
    """``--out FILE``: one row per list row gained, lost or changed, with the before / after values.

    JSON Lines (FILE ends in .jsonl) carries the changes as a list of {column, before, after};
    csv a ``<column>_before`` / ``<column>_after`` pair for every column that changed anywhere.
    """
    order = "ORDER BY channel, policy_id, msisdn, kind, rank_before, rank_after"
    base = "channel, msisdn, policy_id, kind, rank_before, rank_after"
    where = f"WHERE kind <> '{SAME}'"
    if target.suffix.lower() == ".jsonl":
        return copy_to_file(con, f"SELECT {base}, changes FROM {DETAIL} {where} {order}", target, "jsonl")
    changed = [str(r[0]) for r in con.execute(
        f"SELECT c.\"column\" FROM (SELECT unnest(changes) AS c FROM {DETAIL}) AS u GROUP BY 1 ORDER BY 1").fetchall()]
    known = {c: i for i, c in enumerate(TARGET_COLUMNS)}
    changed.sort(key=lambda c: (known.get(c, len(known)), c))
    pairs = ", ".join(
        f"list_extract(list_filter(changes, lambda x: x.\"column\" = {quote_literal(c)}), 1).{side} "
        f"AS {quote_identifier(f'{c}_{side}')}" for c in changed for side in ("before", "after"))
    names = "NULLIF(array_to_string(list_transform(changes, lambda x: x.\"column\"), ';'), '')"
    select = (f"SELECT {base}, {names} AS changed_columns"
              + (f", {pairs}" if pairs else "") + f" FROM {DETAIL} {where} {order}")
    return copy_to_file(con, select, target, "csv")


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


def compare_folders(before: Path, after: Path, *, labels: tuple[str, str] | None = None,
                    detail: Path | None = None) -> DiffResult:
    """Compare two export cycle folders (<out>/<month>/<cycle-date>); ``detail``: write the per-row changes there (``--out``)."""
    before, after = _check_folder(before), _check_folder(after)
    con = duckdb.connect(":memory:")
    try:
        same, notes = _load(con, before, after)
        channels, policies = _compare_lists(con, same)
        written = _write_detail(con, detail) if detail is not None else None
    finally:
        con.close()
    for c in channels:
        if not c["same_bytes"] and not _row_moved(c):
            notes.append(f"{c['channel']}: the list files differ in bytes but no row changed "
                         "(column order, quoting, number format or file format)")
    if written is not None:
        notes.append(f"wrote {written:,} changed row{'s' if written != 1 else ''} to {detail}")
    funnels = _compare_funnels(_load_funnels(before), _load_funnels(after))
    a_label, b_label = labels or (str(before), str(after))
    month = before.name if before.name == after.name else None
    return DiffResult(a_label, b_label, channels, policies, funnels, month=month, notes=notes)


def _row_moved(c: dict[str, Any]) -> bool:
    return bool(c["gained"] or c["lost"] or c["rank_changed"] or c["changed"] or c["rows_before"] != c["rows_after"])


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
                  reporter: Reporter = QUIET, detail: Path | None = None) -> DiffResult:
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
        result = compare_folders(run_a.out_dir, run_b.out_dir, labels=(f"rules in {against}", f"rules in {current}"),
                                 detail=detail)
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


def _columns_text(columns: dict[str, int]) -> str:
    return ", ".join(f"{c} {n:,}" for c, n in sorted(columns.items(), key=lambda kv: (-kv[1], kv[0])))


def sections(result: DiffResult) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, columns, rows) of every section a person reads; only what moved, except channel totals."""
    out = []
    out.append(("Target lists by channel",
                ["channel", "customers before", "after", "gained", "lost", "rank changed", "changed", "rows before",
                 "rows after", "same bytes"],
                [[c["channel"], _n(c["customers_before"]), _n(c["customers_after"]), f"+{c['gained']:,}",
                  f"-{c['lost']:,}", _n(c["rank_changed"]), _n(c.get("changed", 0)), _n(c["rows_before"]),
                  _n(c["rows_after"]), "yes" if c.get("same_bytes") else "no"]
                 for c in result.channels]))
    moved = [p for p in result.policies if p["gained"] or p["lost"] or p["rank_changed"] or p.get("changed")]
    out.append(("Offers gained, lost and changed by channel and policy",
                ["channel", "policy", "before", "after", "gained", "lost", "rank changed", "changed",
                 "changed columns"],
                [[p["channel"], p["policy_id"], _n(p["customers_before"]), _n(p["customers_after"]),
                  f"+{p['gained']:,}", f"-{p['lost']:,}", _n(p["rank_changed"]), _n(p.get("changed", 0)),
                  _columns_text(p.get("changed_columns") or {})] for p in moved]))
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
    changed_rows = sum(c.get("changed", 0) for c in result.channels)
    columns: dict[str, int] = {}
    for c in result.channels:
        for col, n in (c.get("changed_columns") or {}).items():
            columns[col] = columns.get(col, 0) + n
    moved = [c["channel"] + ("" if _row_moved({"changed": 0, **c}) else " (bytes only)")
             for c in result.channels if not c.get("same_bytes")]
    return (f"{result.before} → {result.after}" + (f" ({result.month})" if result.month else "") + ": "
            f"customers +{gained:,} / -{lost:,} on the channel lists, offers (customer × policy) "
            f"+{offers_gained:,} / -{offers_lost:,}, {ranks:,} rank changes, {changed_rows:,} rows changed"
            + (f" ({_columns_text(columns)})" if columns else "")
            + (f"; lists that moved: {', '.join(moved)}" if moved else ""))


def render_json(result: DiffResult) -> str:
    return json.dumps(result.as_dict(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


CSV_COLUMNS = ("section", "name", "item", "before", "after", "delta", "gained", "lost", "rank_changed", "changed",
               "column")


def render_csv(result: DiffResult) -> str:
    """One long table: section (channel | policy | changed_column | funnel | rule_hits), name, item, counts.

    A ``changed_column`` row is one column of one channel × policy: ``changed`` rows had another value in it.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in result.channels:
        w.writerow(["channel", c["channel"], "", c["customers_before"], c["customers_after"],
                    c["customers_after"] - c["customers_before"], c["gained"], c["lost"], c["rank_changed"],
                    c.get("changed", 0), ""])
    for p in result.policies:
        w.writerow(["policy", p["channel"], p["policy_id"], p["customers_before"], p["customers_after"],
                    p["customers_after"] - p["customers_before"], p["gained"], p["lost"], p["rank_changed"],
                    p.get("changed", 0), ""])
    for p in result.policies:
        for col, n in sorted((p.get("changed_columns") or {}).items()):
            w.writerow(["changed_column", p["channel"], p["policy_id"], "", "", "", "", "", "", n, col])
    for f in result.funnels:
        w.writerow(["funnel", f["funnel"], f["stage"], _blank(f["before"]), _blank(f["after"]), f["delta"],
                    "", "", "", "", ""])
    for r in result.rule_hits:
        w.writerow(["rule_hits", r["matrix"], r["rule_id"], _blank(r["before"]), _blank(r["after"]), r["delta"],
                    "", "", "", "", ""])
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
