#!/usr/bin/env python3
"""Simulate the month after an export: the customers' responses and orders that follow mktool's lists.

    python scripts/simulate_responses.py --db mktool.duckdb --lists out --month 2026-10 \
        --out fixtures/extracts
    python scripts/simulate_responses.py --fixtures

The first form reads a database after ``mktool run --month M`` (or ``export``): the push contacts
export recorded (contact_history rows with ``recorded_by = 'mktool'`` of M's cycles), the
hold-outs of M (policy and, when the database has them, universal ones), and the pop-up lists of
each cycle folder (``<lists>/<M>/<cycle date>/<pop-up channel>.<format>``: a showing is not
written back to the database). It writes two extracts named after the month of the cycles:

* ``contact_history_<N>.parquet``: the responses, dated from the day after the cycle date to 24
  days later (never on or before a cycle date, so they cannot change that cycle's lists): calls
  answered or not, messages mostly without a reply, and pop-up showings (a customer of a pop-up
  list who walks in or calls: one row per offer shown, accepted or rejected);
* ``orders_<N>.parquet``: orders and cancellations that follow them: most acceptances order
  within days, a few contacted pairs that did not accept order anyway, held-out pairs order at
  the organic rate of their offer, and a tenth of the orders are cancelled.

``--fixtures`` regenerates the committed fixture files from scratch: it runs the README's Quick
start (``mktool run --month 2026-10 --ingest <fixtures/extracts without these two files> --date
2026-11-01``) into a temporary database and output folder, then simulates into
fixtures/extracts. Re-run it whenever the rules or the generator change the October lists.

Every draw is ``hash(key, tag, seed)`` in set-based DuckDB SQL (no ``random()``, no Python loop
over rows) and every file is written sorted, through a staging folder renamed into place, so the
same database and lists give byte-identical files (with the same DuckDB version). The rates are
the constants below; fixtures/README.md lists them with the figures they give on the fixture.
"""
from __future__ import annotations

import argparse
import calendar
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mktool.project import load_project  # noqa: E402  (this checkout's mktool, not an installed one)

FIXTURES = ROOT / "fixtures" / "extracts"
QUICK_START_MONTH = "2026-10"
QUICK_START_DATE = "2026-11-01"
MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
CYCLE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DEFAULT_SEED = 7
#: What --fixtures writes (the month of the Quick start's cycle), left out of the run it simulates from.
SIMULATED_FIXTURES = ("contact_history_2026-11.parquet", "orders_2026-11.parquet")

#: Responses come in on days 1 … RESPONSE_DAYS after the contact (the cycle date).
RESPONSE_DAYS = 24
#: A push contact's response, per mille of its contacts, in the order accepted, rejected,
#: no_answer, unsubscribed; the rest have no response row (a message read and ignored). A call
#: goes unanswered ~30% of the time; of the reached, ~18% accept, ~2% opt out and the others say
#: no. A message (sms, app) mostly gets no reply; a few order by replying, a few opt out. Account
#: managers know their customers: fewer unanswered calls, more acceptances.
PUSH_RESPONSES: dict[str, tuple[int, int, int, int]] = {
    "outbound": (126, 560, 300, 14),
    "manager": (210, 620, 160, 10),
    "sms": (30, 0, 0, 20),
    "app": (40, 30, 0, 10),
}
#: A push channel not named above (a project's own) answers like a message.
OTHER_PUSH_RESPONSES = PUSH_RESPONSES["app"]
#: Share of a pop-up list's customers who walk in (frontdesk) or call (inbound) in the period,
#: and the chance that each offer shown to them is accepted (otherwise rejected).
POPUP_APPEAR = 0.15
POPUP_ACCEPT = {"frontdesk": 0.20, "inbound": 0.15}
OTHER_POPUP_ACCEPT = 0.15
#: Orders: an accepted pair orders within 0-10 days of its first acceptance (a pop-up acceptance
#: mostly on the spot); a contacted pair that did not accept, or a held-out pair (policy or
#: universal), orders within the response days at the organic rate; cancellations (退订) half
#: within 7 days (days 1-6) and half later (days 8-20).
ORDER_ACCEPTED = 0.70
ORDER_CONTACTED = 0.03
ORDER_HELD_OUT = 0.04
POPUP_ON_THE_SPOT = 0.70
ORDER_LAG_DAYS = 10
CANCEL = 0.10
CANCEL_EARLY = 0.5


class SimulationError(Exception):
    """The database or the lists cannot be simulated from (said in one sentence)."""


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def _month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = con.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = 'src' AND table_name = ?",
                       [table]).fetchall()
    return {r[0] for r in rows}


def _cycles(con: duckdb.DuckDBPyConnection, month: str) -> list[date]:
    """The cycles of export month M (funnel_counts' channel funnels and holdouts), as dates."""
    parts = []
    if _columns(con, "funnel_counts") >= {"month", "funnel", "cycle"}:
        parts.append(f"SELECT cycle FROM src.funnel_counts WHERE month = {_lit(month)} AND funnel LIKE 'channel:%'")
    if _columns(con, "holdouts") >= {"month", "cycle"}:
        parts.append(f"SELECT cycle FROM src.holdouts WHERE month = {_lit(month)}")
    if not parts:
        return []
    rows = con.execute(f"SELECT DISTINCT cycle FROM ({' UNION ALL '.join(parts)}) WHERE cycle IS NOT NULL "
                       "ORDER BY cycle").fetchall()
    return [date.fromisoformat(r[0]) for r in rows if CYCLE_RE.match(r[0])]


def _list_scan(path: Path, fmt: str) -> str:
    """A scan of one exported list with msisdn and policy_id as text."""
    lit = _lit(path.as_posix())
    if fmt == "csv":
        return f"read_csv({lit}, header = true, all_varchar = true)"
    if fmt == "parquet":
        return f"read_parquet({lit})"
    return f"read_json({lit}, format = 'newline_delimited')"


def _load_popup_lists(con: duckdb.DuckDBPyConnection, lists_root: Path, month: str, cycles: list[date],
                      popups: list[tuple[str, str]]) -> None:
    """Table shown(cycle_date, channel, msisdn, policy_id): every pop-up list of every cycle folder."""
    scans = []
    for cycle in cycles:
        for channel, fmt in popups:
            path = lists_root / month / cycle.isoformat() / f"{channel}.{fmt}"
            if not path.is_file():
                continue
            cols = {r[0].lower() for r in con.execute(f"DESCRIBE SELECT * FROM {_list_scan(path, fmt)}").fetchall()}
            if not {"msisdn", "policy_id"} <= cols:
                raise SimulationError(f"{path}: the pop-up list has no msisdn or policy_id column")
            scans.append(f"SELECT DATE '{cycle.isoformat()}' AS cycle_date, {_lit(channel)} AS channel, "
                         f"CAST(msisdn AS VARCHAR) AS msisdn, CAST(policy_id AS VARCHAR) AS policy_id, "
                         f"{_lit(path.as_posix())} AS file FROM {_list_scan(path, fmt)}")
    if not scans:
        con.execute("CREATE TEMP TABLE shown (cycle_date DATE, channel VARCHAR, msisdn VARCHAR, policy_id VARCHAR)")
        return
    con.execute("CREATE TEMP TABLE shown_raw AS " + " UNION ALL ".join(scans))
    bad = con.execute("SELECT file FROM shown_raw WHERE msisdn IS NULL OR NOT regexp_full_match(msisdn, '[0-9]{11}') "
                      "LIMIT 1").fetchone()
    if bad:
        raise SimulationError(f"{bad[0]}: msisdn is not an 11-digit number (a masked list cannot be simulated)")
    con.execute("CREATE TEMP TABLE shown AS SELECT DISTINCT cycle_date, channel, msisdn, policy_id FROM shown_raw")


def _held_date_sql(cols: set[str]) -> str:
    """holdouts' held date: cycle_date when the table has it, else the cycle id as a date."""
    from_cycle = ("CASE WHEN length(cycle) = 10 THEN CAST(cycle AS DATE) "
                  "ELSE CAST(cycle || '-01' AS DATE) END")
    return f"coalesce(cycle_date, {from_cycle})" if "cycle_date" in cols else from_cycle


def _bands(shares: tuple[int, int, int, int]) -> str:
    acc, rej, na, uns = shares
    return f"{acc}, {acc + rej}, {acc + rej + na}, {acc + rej + na + uns}"


def _responses_sql(push_channels: list[str], first: date, last_day: date) -> str:
    """The responses: push contacts answered (or not), pop-up customers who came (offers shown)."""
    bands = ", ".join(f"({_lit(ch)}, {_bands(PUSH_RESPONSES.get(ch, OTHER_PUSH_RESPONSES))})"
                      for ch in push_channels) or "(NULL, 0, 0, 0, 0)"
    accept = ", ".join(f"({_lit(ch)}, {rate})" for ch, rate in POPUP_ACCEPT.items())
    return f"""
        CREATE TEMP TABLE responses AS
        WITH b(channel, a, r, n, u) AS (VALUES {bands}),
        push_drawn AS (
            SELECT p.msisdn, p.channel, p.policy_id,
                   p.contact_date + 1 + floor(pow(u(p.msisdn, p.policy_id || p.channel, 'rday'), 2)
                                              * {RESPONSE_DAYS})::INTEGER AS contact_date,
                   floor(u(p.msisdn, p.policy_id || p.channel || p.contact_date, 'resp') * 1000)::INTEGER AS x,
                   b.a, b.r, b.n, b.u
            FROM push p JOIN b USING (channel)
        ), push_resp AS (
            SELECT msisdn, least(contact_date, DATE '{last_day.isoformat()}') AS contact_date, channel, policy_id,
                   CASE WHEN x < a THEN 'accepted' WHEN x < r THEN 'rejected'
                        WHEN x < n THEN 'no_answer' ELSE 'unsubscribed' END AS outcome
            FROM push_drawn WHERE x < u
        ), came AS (
            -- a customer of a pop-up list comes once in the period, on or after their first list
            SELECT channel, msisdn,
                   least(min(cycle_date) + 1 + floor(u(msisdn, channel, 'wday') * {RESPONSE_DAYS})::INTEGER,
                         DATE '{last_day.isoformat()}') AS contact_date
            FROM shown
            WHERE u(msisdn, channel, 'walkin') < {POPUP_APPEAR} AND msisdn NOT IN (SELECT msisdn FROM gone)
            GROUP BY channel, msisdn
        ), latest AS (
            SELECT c.channel, c.msisdn, c.contact_date, max(s.cycle_date) AS cycle_date
            FROM came c JOIN shown s ON s.channel = c.channel AND s.msisdn = c.msisdn AND s.cycle_date < c.contact_date
            GROUP BY ALL
        ), popup_resp AS (
            SELECT l.msisdn, l.contact_date, l.channel, s.policy_id,
                   CASE WHEN u(l.msisdn, s.policy_id || l.channel, 'pacc')
                             < coalesce((SELECT rate FROM (VALUES {accept}) a(channel, rate)
                                         WHERE a.channel = l.channel), {OTHER_POPUP_ACCEPT})
                        THEN 'accepted' ELSE 'rejected' END AS outcome
            FROM latest l JOIN shown s USING (channel, msisdn, cycle_date)
        )
        SELECT * FROM push_resp
        WHERE contact_date > DATE '{first.isoformat()}'
        QUALIFY row_number() OVER (PARTITION BY msisdn, contact_date, channel, policy_id ORDER BY outcome) = 1
        UNION ALL
        SELECT * FROM popup_resp
    """


def _orders_sql(first: date, last_day: date) -> str:
    """Orders and cancellations following the responses, the other contacts and the hold-outs."""
    end = f"TIMESTAMP '{(last_day + timedelta(days=1)).isoformat()} 00:00:00'"
    return f"""
        CREATE TEMP TABLE new_orders AS
        WITH accepted AS (
            SELECT msisdn, policy_id, arg_min(channel, (contact_date, channel)) AS channel,
                   min(contact_date) AS d,
                   bool_or(channel IN (SELECT channel FROM popups)) AS popup
            FROM responses WHERE outcome = 'accepted' GROUP BY msisdn, policy_id
        ), crafted AS (
            -- deliberate cases for whoever reads the evaluation: an outbound acceptance never
            -- ordered, and two ordered on the day, one cancelled on day 3 and one on day 9
            SELECT msisdn, policy_id, row_number() OVER (ORDER BY hash(msisdn, policy_id, 'craft', seed()),
                                                         msisdn, policy_id) AS n
            FROM accepted
            WHERE channel = 'outbound' AND d <= DATE '{first.isoformat()}' + 14
              AND msisdn NOT IN (SELECT msisdn FROM gone)
              AND NOT EXISTS (SELECT 1 FROM ordered_before o WHERE o.msisdn = accepted.msisdn
                              AND o.policy_id = accepted.policy_id)
            QUALIFY n <= 3
        ), contacted AS (
            SELECT msisdn, policy_id, arg_min(channel, (contact_date, channel)) AS channel,
                   min(contact_date) AS d
            FROM (SELECT msisdn, policy_id, channel, contact_date FROM push
                  UNION ALL SELECT msisdn, policy_id, channel, contact_date FROM responses
                  WHERE channel IN (SELECT channel FROM popups))
            GROUP BY msisdn, policy_id
        ), drawn AS (
            SELECT a.msisdn, a.policy_id,
                   CASE WHEN u(a.msisdn, a.policy_id, 'och') < 0.8 THEN a.channel END AS channel,
                   a.d + CASE WHEN c.n IS NOT NULL THEN 0
                              WHEN a.popup AND u(a.msisdn, a.policy_id, 'spot') < {POPUP_ON_THE_SPOT} THEN 0
                              ELSE floor(pow(u(a.msisdn, a.policy_id, 'lag'), 2) * {ORDER_LAG_DAYS + 1})::INTEGER
                         END AS d,
                   c.n AS crafted
            FROM accepted a LEFT JOIN crafted c USING (msisdn, policy_id)
            WHERE coalesce(c.n IN (2, 3), u(a.msisdn, a.policy_id, 'ord') < {ORDER_ACCEPTED})
            UNION ALL
            SELECT k.msisdn, k.policy_id, CASE WHEN u(k.msisdn, k.policy_id, 'och') < 0.3 THEN k.channel END,
                   k.d + 1 + floor(u(k.msisdn, k.policy_id, 'lag') * {RESPONSE_DAYS})::INTEGER, NULL
            FROM contacted k
            WHERE NOT EXISTS (SELECT 1 FROM accepted a WHERE a.msisdn = k.msisdn AND a.policy_id = k.policy_id)
              AND u(k.msisdn, k.policy_id, 'ord') < {ORDER_CONTACTED}
            UNION ALL
            SELECT h.msisdn, h.policy_id, NULL,
                   h.d + 1 + floor(u(h.msisdn, h.policy_id, 'lag') * {RESPONSE_DAYS})::INTEGER, NULL
            FROM held h WHERE u(h.msisdn, h.policy_id, 'ord') < {ORDER_HELD_OUT}
        ), placed AS (
            SELECT msisdn, policy_id, channel, crafted,
                   d::TIMESTAMP + to_seconds(8 * 3600 + floor(u(msisdn, policy_id, 'ot') * 14 * 3600)::BIGINT)
                       AS order_time
            FROM drawn w
            WHERE msisdn NOT IN (SELECT msisdn FROM gone)
              -- a pair that already ordered in the period (the extracts' own orders) does not again
              AND NOT EXISTS (SELECT 1 FROM ordered_before o WHERE o.msisdn = w.msisdn AND o.policy_id = w.policy_id)
            QUALIFY row_number() OVER (PARTITION BY msisdn, policy_id ORDER BY d, channel NULLS LAST) = 1
        ), cancels AS (
            SELECT msisdn, policy_id,
                   CASE WHEN u(msisdn, policy_id, 'cxc') < 0.5 THEN channel END AS channel,
                   order_time + to_days(CASE crafted WHEN 2 THEN 3 WHEN 3 THEN 9 ELSE
                                CASE WHEN u(msisdn, policy_id, 'cxe') < {CANCEL_EARLY}
                                     THEN 1 + floor(u(msisdn, policy_id, 'cxd') * 6)
                                     ELSE 8 + floor(u(msisdn, policy_id, 'cxd') * 13) END END::INTEGER)
                       + to_seconds(floor(u(msisdn, policy_id, 'cxt') * 3600)::BIGINT) AS order_time
            FROM placed
            WHERE crafted IN (2, 3) OR (crafted IS NULL AND u(msisdn, policy_id, 'cxl') < {CANCEL})
        )
        SELECT msisdn, order_time, policy_id, 'order' AS action, channel FROM placed WHERE order_time < {end}
        UNION ALL
        SELECT msisdn, order_time, policy_id, 'cancel', channel FROM cancels WHERE order_time < {end}
    """


def simulate(db_path: Path, lists_root: Path, month: str, out_dir: Path, *, matrices: Path | None = None,
             seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Write the responses and orders after export month ``month``; return {file name: rows}."""
    if not MONTH_RE.match(month):
        raise SimulationError(f"month {month!r} is not YYYY-MM")
    project = load_project(matrices or ROOT / "matrices")
    channels = project.channels.channels
    popups = [(name, ch.format) for name, ch in channels.items() if ch.popup]
    push_channels = [name for name, ch in channels.items() if not ch.popup]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".simulate_responses.", dir=out_dir))
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET preserve_insertion_order = true")
        con.execute("ATTACH " + _lit(Path(db_path).as_posix()) + " AS src (READ_ONLY)")
        cycles = _cycles(con, month)
        if not cycles:
            raise SimulationError(f"{db_path}: no export cycle of month {month} (run mktool export or run first)")
        first, last = cycles[0], cycles[-1]
        last_day = _month_end(last)
        response_month = _month_of(last)
        con.execute(f"""
            CREATE TEMP MACRO seed() AS {int(seed)};
            CREATE TEMP MACRO u(a, b, tag) AS (hash(a, b, tag, {int(seed)}) % 1000003)::DOUBLE / 1000003.0;
        """)
        con.execute("CREATE TEMP TABLE popups(channel VARCHAR)")
        if popups:
            con.execute("INSERT INTO popups VALUES " + ", ".join(f"({_lit(name)})" for name, _ in popups))
        cycle_ids = ", ".join(_lit(c.isoformat()) for c in cycles)
        # push contacts export recorded in the month's cycles (whatever their outcome is now)
        con.execute(f"""
            CREATE TEMP TABLE push AS
            SELECT msisdn, contact_date, channel, policy_id FROM src.contact_history
            WHERE recorded_by = 'mktool' AND cycle IN ({cycle_ids})
              AND channel NOT IN (SELECT channel FROM popups)
        """)
        hcols = _columns(con, "holdouts")
        con.execute(f"""
            CREATE TEMP TABLE held AS
            SELECT msisdn, policy_id, min({_held_date_sql(hcols)}) AS d
            FROM src.holdouts WHERE month = {_lit(month)} GROUP BY msisdn, policy_id
        """)
        # customers gone in the response month (absent or closed there, when it is loaded) neither come
        # in nor order
        con.execute(f"""
            CREATE TEMP TABLE gone AS
            SELECT DISTINCT s.msisdn FROM src.subscribers s
            WHERE s.month = {_lit(month)}
              AND EXISTS (SELECT 1 FROM src.subscribers WHERE month = {_lit(response_month)})
              AND NOT EXISTS (SELECT 1 FROM src.subscribers n WHERE n.month = {_lit(response_month)}
                              AND n.msisdn = s.msisdn AND n.status <> 'closed')
        """)
        has_orders = bool(_columns(con, "orders"))
        con.execute("CREATE TEMP TABLE ordered_before AS " + (
            f"SELECT DISTINCT msisdn, policy_id FROM src.orders WHERE action = 'order' "
            f"AND order_time >= TIMESTAMP '{first.isoformat()} 00:00:00'" if has_orders else
            "SELECT CAST(NULL AS VARCHAR) AS msisdn, CAST(NULL AS VARCHAR) AS policy_id WHERE false"))
        _load_popup_lists(con, Path(lists_root), month, cycles, popups)
        con.execute(_responses_sql(push_channels, first, last_day))
        con.execute(_orders_sql(first, last_day))
        names = {"contact_history": f"contact_history_{response_month}.parquet",
                 "orders": f"orders_{response_month}.parquet"}
        rows: dict[str, int] = {}
        for table, order_by, source in (
                ("contact_history", "msisdn, contact_date, channel, policy_id",
                 "SELECT msisdn, contact_date, channel, policy_id, outcome FROM responses"),
                ("orders", "msisdn, order_time, policy_id, action",
                 "SELECT msisdn, order_time, policy_id, action, channel FROM new_orders")):
            target = staging / names[table]
            written = con.execute(f"COPY ({source} ORDER BY {order_by}) TO {_lit(target.as_posix())} "
                                  "(FORMAT parquet, COMPRESSION zstd)").fetchone()
            rows[names[table]] = int(written[0]) if written else 0
        con.close()
        for name in rows:
            os.replace(staging / name, out_dir / name)
        return rows
    finally:
        con.close()
        shutil.rmtree(staging, ignore_errors=True)


def fixture_inputs(work: Path) -> Path:
    """A copy of fixtures/extracts without the simulated files (what the Quick start reads before them)."""
    target = work / "extracts"
    target.mkdir(parents=True)
    for path in sorted(FIXTURES.glob("*.parquet")):
        if path.name not in SIMULATED_FIXTURES:
            shutil.copy2(path, target / path.name)
    return target


def run_quick_start(extracts: Path, work: Path) -> tuple[Path, Path]:
    """`mktool run` of the Quick start into work/ (this checkout's mktool); returns (database, lists root)."""
    db, out = work / "mktool.duckdb", work / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MKTOOL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "mktool", "run", "--month", QUICK_START_MONTH, "--ingest", str(extracts),
           "--date", QUICK_START_DATE, "--db", str(db), "--out", str(out), "--matrices", str(ROOT / "matrices"),
           "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SimulationError(f"mktool run failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return db, out


def regenerate_fixtures(out_dir: Path = FIXTURES) -> dict[str, int]:
    """The committed fixture files from scratch: the Quick start without them, then the simulation."""
    with tempfile.TemporaryDirectory(prefix="simulate_responses.") as tmp:
        work = Path(tmp)
        db, lists = run_quick_start(fixture_inputs(work), work)
        rows = simulate(db, lists, QUICK_START_MONTH, out_dir)
    if sorted(rows) != sorted(SIMULATED_FIXTURES):  # the next run must leave these out again
        raise SimulationError(f"wrote {sorted(rows)}, expected {sorted(SIMULATED_FIXTURES)}: update SIMULATED_FIXTURES")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", action="store_true",
                    help="regenerate fixtures/extracts' responses and orders from a fresh Quick start run")
    ap.add_argument("--db", type=Path, help="database after mktool run/export of --month")
    ap.add_argument("--lists", type=Path, help="export's output folder (holds <month>/<cycle date>/)")
    ap.add_argument("--month", help="the export month, YYYY-MM")
    ap.add_argument("--out", type=Path, help="folder to write the two extracts into")
    ap.add_argument("--matrices", type=Path, help="rules folder (channels.yaml); default: this checkout's matrices")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        if args.fixtures:
            rows: dict[str, Any] = regenerate_fixtures()
            out = FIXTURES
        else:
            if not (args.db and args.lists and args.month and args.out):
                ap.error("--db, --lists, --month and --out are required without --fixtures")
            rows = simulate(args.db, args.lists, args.month, args.out, matrices=args.matrices)
            out = args.out
    except (SimulationError, duckdb.Error) as exc:
        print(f"simulate_responses: {exc}", file=sys.stderr)
        return 1
    width = max(len(n) for n in rows)
    for name, n in rows.items():
        print(f"{name:<{width}}  {n:>8,}")
    print(f"wrote {len(rows)} files to {out} in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
