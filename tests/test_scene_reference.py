"""mktool scene against tests/reference_scene.py on random adversarial event streams (issue 14).

Each seed builds a stream of invocations of `run_scene_files` over several event files: duplicates
within and across files (and a same-time event of another type, which is not one), a renamed copy
of a processed file, a late file whose events sit exactly at and one second past a scene's
expires_after behind the watermark, once_per edges exactly N days apart and one second less, waves
listed out of order, unknown customers, view columns that are NULL, dnd (a channel and '*'),
opt-outs, accepts, rejections, no_answers and the month's earlier contacts against the caps, the
universal control group and a policy hold-out; a malformed file among good ones; an empty file.
The real run's scene_events, ledger, lists, contacts and hold-outs are compared field by field with
the reference. MKTOOL_REFERENCE_SEEDS=N runs N seeds (default 20; the first 8 in the default run, the
rest marked `slow`, which CI runs).

The comparison is shown to be able to fail: each planted mistake of the reference (Mistakes) must
make at least one of the seeds disagree with mktool.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import os
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import reference_scene as ref
from conftest import MATRICES, ROOT, slow_beyond
from typer.testing import CliRunner

from mktool import rules
from mktool.cli import app
from mktool.config import Settings
from mktool.console import QUIET
from mktool.database import Database
from mktool.project import Project, load_project

scenedelivery = pytest.importorskip("mktool.scenedelivery")

SEEDS = int(os.environ.get("MKTOOL_REFERENCE_SEEDS", "20"))
N_CUSTOMERS = 300
MONTHS = ["2026-08", "2026-09", "2026-10"]
T0 = dt.datetime(2026, 11, 4, 0, 0, 0)  # the streams' first day (the view month is 2026-10)
GRID = dt.timedelta(minutes=30)
SECOND = dt.timedelta(seconds=1)
EVENT_TYPES = ("ev_a", "ev_b", "ev_c")
NO_SCENE_TYPE = "ev_d"
VALUES = (1.0, 4.5, 5.0, 7.0, 9.5, 10.0, 15.0, 20.0, 25.0)
TEST_POLICIES = """\
  # -- scene reference tests (tests/test_scene_reference.py) --
  - {id: SC_TEST_A, name: 场景测试A, family: new_service, channels: [sms, app, inbound], cooldown_days: 10,
     holdout: 0.15}
  - {id: SC_TEST_B, name: 场景测试B, family: new_service, channels: [sms, app], withdraw_days: 5}
  - {id: SC_TEST_C, name: 场景测试C, family: new_service, channels: [app, sms, inbound, outbound],
     exclusive_group: sc_test}
  - {id: SC_TEST_D, name: 场景测试D, family: new_service, channels: [sms, outbound, inbound],
     exclusive_group: sc_test}
"""
POLICIES = ("SC_TEST_A", "SC_TEST_B", "SC_TEST_C", "SC_TEST_D")
CHANNEL_SETS = {  # policy → channel lists a scene of it may name (its allowed channels, push or pop-up)
    "SC_TEST_A": (("sms",), ("sms", "app"), ("app", "sms"), ("inbound",)),
    "SC_TEST_B": (("sms",), ("app",), ("sms", "app")),
    "SC_TEST_C": (("app", "sms"), ("outbound", "sms"), ("inbound",)),
    "SC_TEST_D": (("sms", "outbound"), ("outbound",), ("inbound",)),
}
EXPIRES = (dt.timedelta(minutes=30), dt.timedelta(hours=1), dt.timedelta(hours=2), dt.timedelta(days=1))
HISTORY_OUTCOMES = ("sent", "sent", "accepted", "rejected", "no_answer", "unsubscribed")
HISTORY_CHANNELS = ("sms", "app", "outbound", "inbound")


# -- three-valued logic for the predicates (SQL's NULL is None) -----------------------------------
def _cmp(a: Any, op: str, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    a, b = (float(a), float(b)) if op not in ("=", "<>") else (a, b)
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "=": a == b, "<>": a != b}[op]


def _not(a: bool | None) -> bool | None:
    return None if a is None else not a


@dataclass(frozen=True)
class Cond:
    """One condition twice: the SQL text mktool embeds and the Python predicate the reference reads."""

    sql: str | None
    py: Callable[[Mapping[str, Any]], bool | None] | None


SCENE_CONDITIONS = (
    Cond(None, None),
    Cond("payment = 'prepaid'", lambda r: _cmp(r["payment"], "=", "prepaid")),
    Cond("churn_flag", lambda r: r["churn_flag"]),
    Cond("NOT churn_flag", lambda r: _not(r["churn_flag"])),
    Cond("handset_gen = '5G'", lambda r: _cmp(r["handset_gen"], "=", "5G")),  # NULL for some customers
    Cond("contract_end < DATE '2027-06-01'",  # NULL for most: not matched
         lambda r: _cmp(None if r["contract_end"] is None else r["contract_end"].toordinal(), "<",
                        dt.date(2027, 6, 1).toordinal())),
    Cond("hour(event_time) >= 12", lambda r: r["event_time"].hour >= 12),
    Cond("value >= 5", lambda r: _cmp(r["value"], ">=", 5)),
)


def _value_cond(op: str, x: float) -> Cond:
    return Cond(f"value {op} {x:g}", lambda r: _cmp(r["value"], op, x))


# -- the module's database and matrices ----------------------------------------------------------------
def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_fixtures", ROOT / "scripts" / "generate_fixtures.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@dataclass
class Base:
    db: Path
    matrices: Path
    project: Project
    settings: ref.Settings
    view: dict[str, dict[str, Any]]
    msisdns: list[str]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return build_base(tmp_path_factory.mktemp("scene_ref"))


def build_base(root: Path) -> Base:
    """300 generated customers ingested and scored for 2026-10, and a matrices copy with four test
    policies, monthly_cap 2 and a universal control group of 8%."""
    _load_generator().generate(root / "extracts", N_CUSTOMERS, MONTHS, seed=7)
    db = root / "base.duckdb"
    runner = CliRunner()
    for args in (["ingest", str(root / "extracts")], ["score", "--month", "2026-10"]):
        result = runner.invoke(app, [*args, "--db", str(db)])
        assert result.exit_code == 0, result.output
    matrices = root / "matrices"
    shutil.copytree(MATRICES, matrices)
    pol = matrices / "policies.yaml"
    text = pol.read_text(encoding="utf-8")
    assert "\npolicies:\n" in text
    pol.write_text(text.replace("\npolicies:\n", "\npolicies:\n" + TEST_POLICIES, 1), encoding="utf-8")
    chan = matrices / "channels.yaml"
    text = chan.read_text(encoding="utf-8")
    for old, new in (("  monthly_cap: 4\n", "  monthly_cap: 2\n"), ("  universal_holdout: 0.02\n",
                                                                     "  universal_holdout: 0.08\n")):
        assert old in text
        text = text.replace(old, new)
    chan.write_text(text, encoding="utf-8")
    project = load_project(matrices)
    con = duckdb.connect(str(db), read_only=True)
    try:
        view, _ = ref.view_of(con)
    finally:
        con.close()
    return Base(db, matrices, project, ref.settings_from(matrices), view, sorted(view))


# -- one random stream ------------------------------------------------------------------------------------
@dataclass
class Stream:
    seed: int
    scenes: list[rules.Scene]
    ref_scenes: list[ref.Scene]
    dnd: list[tuple[str, str]]
    history: list[ref.Contact]
    invocations: list[list[Path]]  # the paths of each run_scene_files call
    malformed: list[str] = field(default_factory=list)  # file names that must be refused


def _write_events(path: Path, events: Sequence[ref.Event]) -> Path:
    rows = sorted(events, key=lambda e: (e.msisdn, e.event_time, e.event_type, e.value))
    table = pa.table({"msisdn": [e.msisdn for e in rows], "event_time": [e.event_time for e in rows],
                      "event_type": [e.event_type for e in rows], "value": [e.value for e in rows]},
                     schema=pa.schema([("msisdn", pa.string()), ("event_time", pa.timestamp("us")),
                                       ("event_type", pa.string()), ("value", pa.float64())]))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _scenes(rng: random.Random) -> tuple[list[rules.Scene], list[ref.Scene]]:
    n = rng.randint(3, 4)
    types = [rng.choice(EVENT_TYPES) for _ in range(n)]
    types[1] = types[0] if rng.random() < 0.6 else types[1]  # often two scenes on one event type
    mk: list[rules.Scene] = []
    rf: list[ref.Scene] = []
    for i in range(n):
        policy = rng.choice(POLICIES) if i != 1 or rng.random() < 0.5 else mk[0].policy  # shared: merged
        channels = rng.choice(CHANNEL_SETS[policy])
        cond = rng.choice(SCENE_CONDITIONS)
        kind = rng.random()
        if kind < 0.3:
            wave_conds = [Cond(None, None)]
            ids = ["1"]
        elif kind < 0.55:
            wave_conds = [_value_cond("<", 10), _value_cond("<", 5)]  # the balance scene's shape
            ids = ["below_10", "below_5"]
        elif kind < 0.75:
            wave_conds = [_value_cond("<", 5), _value_cond("<", 10)]  # out of order: level 2 is the weaker
            ids = ["below_5", "below_10"]
        else:
            wave_conds = [_value_cond(">=", 5), _value_cond(">=", 10), _value_cond(">=", 20)]
            ids = ["ge_5", "ge_10", "ge_20"]
        expires = rng.choice(EXPIRES)
        once = rng.randint(1, 3)
        sid = f"sc_{i + 1}"
        mk.append(rules.Scene(
            id=sid, name=f"测试场景 {i + 1}", event_type=types[i], when=cond.sql,
            waves=tuple(rules.Wave(w, c.sql if c.sql is not None else "TRUE", n + 1)
                        for n, (w, c) in enumerate(zip(ids, wave_conds))),
            policy=policy, channels=tuple(channels), expires_after=expires, once_per_days=once,
            script=None if rng.random() < 0.5 else f"话术 {i + 1}", position=i + 1, file="scenes.yaml",
            path=f"scenes[{i}]"))
        rf.append(ref.Scene(sid, f"测试场景 {i + 1}", types[i], cond.py,
                            tuple(ref.Wave(w, c.py, n + 1) for n, (w, c) in enumerate(zip(ids, wave_conds))),
                            policy, tuple(channels), expires, once, mk[-1].script, i + 1))
    return mk, rf


def make_stream(seed: int, base: Base, folder: Path) -> Stream:
    rng = random.Random(seed)
    scenes, ref_scenes = _scenes(rng)
    known = rng.sample(base.msisdns, 10)
    unknown = [f"139{rng.randrange(10 ** 8):08d}" for _ in range(2)]
    unknown = [m for m in unknown if m not in base.view]
    people = known + unknown
    weights = [3] * len(known) + [1] * len(unknown)
    # the contact policy's inputs
    dnd: list[tuple[str, str]] = []
    for m in known:
        u = rng.random()
        if u < 0.10:
            dnd.append((m, "sms"))
        elif u < 0.17:
            dnd.append((m, "*"))
        elif u < 0.22:
            dnd.append((m, "app"))
    history: dict[tuple[str, dt.date, str, str], str] = {}
    for m in known:
        for _ in range(rng.choice((0, 0, 1, 2, 3))):
            day = dt.date(2026, 10, 20) + dt.timedelta(days=rng.randrange(20))
            channel = rng.choice(HISTORY_CHANNELS)
            policy = rng.choice(POLICIES + ("PREPAY_50_100",))
            history[(m, day, channel, policy)] = rng.choice(HISTORY_OUTCOMES)
    # contacts on the batches' own cycle dates (a monthly or daily list of that day): stage dedupe
    for m in rng.sample(known, 4):
        day = T0.date() + dt.timedelta(days=rng.choice((0, 1, 3, 5)))
        policy = rng.choice(POLICIES)
        for channel in rng.sample(("sms", "app", "outbound"), rng.randint(1, 3)):
            history[(m, day, channel, policy)] = "sent"
    contacts = [ref.Contact(m, d, c, p, o) for (m, d, c, p), o in sorted(history.items())]

    by_type: dict[str, list[ref.Scene]] = {}
    for s in ref_scenes:
        by_type.setdefault(s.event_type, []).append(s)

    def events_in(start: dt.datetime, slots: int, n: int) -> list[ref.Event]:
        out = []
        for _ in range(n):
            t = start + GRID * rng.randrange(slots)
            jitter = rng.random()
            t += SECOND if jitter < 0.12 else (-SECOND if jitter < 0.2 else dt.timedelta(0))
            etype = rng.choice(EVENT_TYPES + (NO_SCENE_TYPE,))
            out.append(ref.Event(rng.choices(people, weights)[0], t, etype, rng.choice(VALUES)))
        return out

    # files A, B (first run), late C, D with a copy of an A event, renamed copy of A (second run),
    # E, a malformed file, A again (third run), an empty file (fourth run)
    a = events_in(T0, 48, rng.randint(14, 24))
    b = events_in(T0 + dt.timedelta(days=1), 48, rng.randint(14, 24))
    d = events_in(T0 + dt.timedelta(days=3), 48, rng.randint(14, 24))
    e = events_in(T0 + dt.timedelta(days=5), 48, rng.randint(10, 18))
    files = {"A": a, "B": b, "D": d, "E": e}
    # event_type as a feed may send it: padded and in capitals (ingest trims and lower-cases it, so both
    # reach their scene)
    x = rng.choice(files["B"])
    files["B"] += [dataclasses.replace(x, event_type=f" {x.event_type} ", event_time=x.event_time + SECOND * 7),
                   dataclasses.replace(x, event_type=x.event_type.upper(), event_time=x.event_time + SECOND * 9)]
    # duplicates: within a file (another value), across files, and a same-time event of another type
    for name in ("A", "B", "D"):
        x = rng.choice(files[name])
        files[name].append(dataclasses.replace(x, value=x.value + 1))
        y = rng.choice(files[name])
        other = rng.choice([t for t in EVENT_TYPES + (NO_SCENE_TYPE,) if t != y.event_type])
        files[name].append(dataclasses.replace(y, event_type=other))
    # across files: B's last event again in D (D keeps its place after the late file C, whose events are
    # all older than B's last), an A and a B event again in E
    files["D"].append(max(files["B"], key=lambda x: (x.event_time, x.event_type, x.msisdn)))
    files["E"] += [rng.choice(a), rng.choice(b)]
    # waves: a deeper wave soon after a shallower one fires again, a shallower one after it does not
    for name in ("A", "B", "D"):
        for x in rng.sample(files[name], min(3, len(files[name]))):
            multi = [sc for sc in by_type.get(x.event_type, []) if len(sc.waves) > 1]
            if not multi:
                continue
            deep, shallow = (25.0, 7.0) if rng.random() < 0.5 else (1.0, 7.0)
            files[name] += [dataclasses.replace(x, event_time=x.event_time + 2 * GRID, value=deep),
                            dataclasses.replace(x, event_time=x.event_time + 3 * GRID, value=shallow)]
    # once_per edges: exactly N days after an earlier event of the same customer and type, and 1 s less
    for name, later in (("B", ("D", "E")), ("A", ("B", "D")), ("D", ("E",))):
        for x in rng.sample(files[name], min(4, len(files[name]))):
            scenes_of = by_type.get(x.event_type)
            if not scenes_of:
                continue
            days = rng.choice(scenes_of).once_per_days
            for delta in (dt.timedelta(days=days), dt.timedelta(days=days) - SECOND):
                t = x.event_time + delta
                for target in later:
                    start = T0 + dt.timedelta(days={"B": 1, "D": 3, "E": 5}[target])
                    if start <= t < start + dt.timedelta(days=1):
                        files[target].append(dataclasses.replace(x, event_time=t, value=rng.choice(VALUES)))
    # the late file: events at the watermark (B's last event) minus a scene's expires_after, and 1 s either side
    watermark = max(ev.event_time for ev in files["A"] + files["B"])
    late = []
    for s in ref_scenes:
        for delta in (dt.timedelta(0), SECOND, -SECOND):
            late.append(ref.Event(rng.choice(known), watermark - s.expires_after - delta, s.event_type,
                                  rng.choice(VALUES)))
    late += events_in(T0 + dt.timedelta(hours=30), 12, 4)
    files["C"] = late
    paths = {k: _write_events(folder / "src" / f"events-{k.lower()}.parquet", v) for k, v in files.items()}
    run1 = folder / "run1"
    run2 = folder / "run2"
    run3 = folder / "run3"
    run4 = folder / "run4"
    for p in (run1, run2, run3, run4):
        p.mkdir(parents=True)
    # names in or against the events' order, by seed: the order is the events', never the names'
    first, second = rng.sample(("feed-1.parquet", "feed-2.parquet"), 2)
    shutil.copy(paths["A"], run1 / first)
    shutil.copy(paths["B"], run1 / second)
    late_name, d_name = rng.sample(("late-1.parquet", "late-2.parquet"), 2)
    shutil.copy(paths["C"], run2 / late_name)
    shutil.copy(paths["D"], run2 / d_name)
    shutil.copy(paths["A"], run2 / "renamed-a.parquet")  # the same bytes: skipped
    _write_events(run2 / ".hidden.parquet", events_in(T0, 4, 2))  # hidden: ignored
    shutil.copy(paths["E"], run3 / "events-e.parquet")
    shutil.copy(paths["A"], run3 / "events-a.parquet")
    bad = run3 / "events-bad.parquet"
    kind = rng.randrange(6)
    good = events_in(T0 + dt.timedelta(days=6), 8, 3)
    day6 = T0 + dt.timedelta(days=6)
    if kind == 0:  # a 10-digit msisdn
        _write_events(bad, [*good, ref.Event("1380000000", day6, "ev_a", 1.0)])
    elif kind == 1:  # a NULL value (the events contract has no nullable column)
        table = pa.table({"msisdn": [good[0].msisdn, good[1].msisdn],
                          "event_time": [good[0].event_time, good[1].event_time],
                          "event_type": ["ev_a", "ev_b"], "value": [1.0, None]})
        pq.write_table(table, bad)
    elif kind == 2:  # not Parquet at all
        bad.write_bytes(b"msisdn,event_time\n13800000001,2026-11-10\n")
    elif kind == 3:  # a value that is not a finite number
        _write_events(bad, [*good, ref.Event(good[0].msisdn, day6, "ev_a", float("inf"))])
    elif kind == 4:  # an empty event_type
        _write_events(bad, [*good, ref.Event(good[0].msisdn, day6, "  ", 1.0)])
    else:  # no value column
        pq.write_table(pa.table({"msisdn": [good[0].msisdn], "event_time": [day6], "event_type": ["ev_a"]}), bad)
    _write_events(run4 / "events-empty.parquet", [])
    return Stream(seed, scenes, ref_scenes, dnd, contacts, [[run1], [run2], [run3], [run4]], [bad.name])


# -- running both --------------------------------------------------------------------------------------
@dataclass
class Observed:
    """What one side did: processing order, skips, refusals, scene_events, lists, contacts, hold-outs."""

    order: list[str]  # file names in processing order, per invocation joined
    batches: dict[str, str]  # file name → batch id
    skipped: list[tuple[int, str]]  # (invocation, file name)
    refused: list[tuple[int, str]]
    events: dict[tuple[str, int, str | None], dict[str, Any]]  # (batch, seq, scene_id) → row
    lists: dict[tuple[str, str], list[tuple[Any, ...]]]  # (batch, channel) → rows
    contacts: set[tuple[Any, ...]]
    holdouts: set[tuple[Any, ...]]
    cycle_dates: dict[str, dt.date]


def _prepare_db(base: Base, stream: Stream, path: Path) -> Path:
    shutil.copy(base.db, path)
    con = duckdb.connect(str(path))
    try:
        con.execute("DELETE FROM dnd")
        if stream.dnd:
            con.executemany("INSERT INTO dnd (msisdn, channel) VALUES (?, ?)", stream.dnd)
        if stream.history:
            con.executemany("INSERT INTO contact_history (msisdn, contact_date, channel, policy_id, outcome) "
                            "VALUES (?, ?, ?, ?, ?)", [dataclasses.astuple(c) for c in stream.history])
    finally:
        con.close()
    return path


def _scene_project(base: Base, stream: Stream) -> Project:
    return dataclasses.replace(base.project, rules=dataclasses.replace(base.project.rules,
                                                                       scenes=tuple(stream.scenes)))


def _read_list(path: Path) -> list[dict[str, Any]]:
    con = duckdb.connect()
    try:
        if path.suffix == ".csv":
            cur = con.execute(f"SELECT * FROM read_csv('{path.as_posix()}', all_varchar = true, header = true)")
        elif path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            cur = con.execute(f"SELECT * FROM read_parquet('{path.as_posix()}')")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def _list_row(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return (str(r["msisdn"]), str(r["month"]), str(r["channel"]), int(r["rank"]), str(r["scene_id"]),
            str(r["wave"]), str(r["event_type"]), str(r["event_time"]), float(r["event_value"]),
            str(r["policy_id"]), str(r["script"]))


def run_mktool(base: Base, stream: Stream, work: Path) -> Observed:
    db = _prepare_db(base, stream, work / "scene.duckdb")
    project = _scene_project(base, stream)
    out = work / "out"
    settings = Settings(db_path=db, matrices_dir=base.matrices, threads=2, memory_limit="1GB")
    obs = Observed([], {}, [], [], {}, {}, set(), set(), {})
    for n, paths in enumerate(stream.invocations):
        with Database(settings, write=True) as database:
            result = scenedelivery.run_scene_files(database, project, list(paths), out_dir=out, reporter=QUIET)
        for br in result.batches:
            name = Path(str(br.file)).name
            obs.order.append(name)
            obs.batches[name] = br.batch_id
            obs.cycle_dates[br.batch_id] = br.cycle_date
        obs.skipped += [(n, Path(str(f)).name) for f, _ in result.skipped]
        obs.refused += [(n, Path(str(f)).name) for f, _ in result.refused]
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM scene_events")
        names = [d[0] for d in cur.description]
        for r in cur.fetchall():
            row = dict(zip(names, r))
            obs.events[(row["batch"], int(row["seq"]), row["scene_id"])] = row
        cols = {r[0] for r in con.execute("DESCRIBE contact_history").fetchall()}
        if "cycle" in cols:
            obs.contacts = {tuple(r) for r in con.execute(
                "SELECT msisdn, contact_date, channel, policy_id, outcome, cycle FROM contact_history "
                "WHERE cycle LIKE 'scene:%'").fetchall()}
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "holdouts" in tables:
            obs.holdouts = {tuple(r) for r in con.execute(
                "SELECT cycle, cycle_date, channel, msisdn, policy_id, kind FROM holdouts "
                "WHERE cycle LIKE 'scene:%'").fetchall()}
    finally:
        con.close()
    channels = _list_channels(stream.ref_scenes)
    for batch_id, cycle_date in obs.cycle_dates.items():
        folder = out / "scenes" / cycle_date.isoformat() / batch_id
        for ch in channels:
            found = sorted(folder.glob(f"{ch}.*"))
            assert found, f"seed {stream.seed}: no {ch} list in {folder}"
            obs.lists[(batch_id, ch)] = [_list_row(r) for r in _read_list(found[0])]
    return obs


def _list_channels(scenes: Sequence[ref.Scene]) -> list[str]:
    out: list[str] = []
    for s in scenes:
        out.extend(c for c in s.channels if c not in out)
    return out


def run_reference(base: Base, stream: Stream, mistakes: ref.Mistakes | None = None) -> Observed:
    con = duckdb.connect(str(base.db), read_only=True)
    try:
        history = ref.history_of(con) + list(stream.history)
    finally:
        con.close()
    reference = ref.Reference(stream.ref_scenes, base.view, base.settings, dnd=stream.dnd, history=history,
                              mistakes=mistakes)
    obs = Observed([], {}, [], [], {}, {}, set(), set(), {})
    for n, paths in enumerate(stream.invocations):
        run = reference.run(paths)
        for b in run.batches:
            obs.order.append(b.file)
            obs.batches[b.file] = b.batch_id
            obs.cycle_dates[b.batch_id] = b.cycle_date
            for o in b.outcomes:
                obs.events[(b.batch_id, o.seq, o.scene_id)] = dataclasses.asdict(o)
            for ch, rows_ in b.lists.items():
                obs.lists[(b.batch_id, ch)] = [
                    (r.msisdn, r.month, r.channel, r.rank, r.scene_id, r.wave, r.event_type, r.event_time,
                     r.event_value, r.policy_id, r.script) for r in rows_]
            obs.contacts |= {(c.msisdn, c.contact_date, c.channel, c.policy_id, c.outcome, f"scene:{b.batch_id}")
                             for c in b.contacts}
            obs.holdouts |= {(h.cycle, h.cycle_date, h.channel, h.msisdn, h.policy_id, h.kind) for h in b.holdouts}
        obs.skipped += [(n, f) for f, _ in run.skipped]
        obs.refused += [(n, f) for f in run.refused]
    return obs


# -- the comparison --------------------------------------------------------------------------------------
DECIDED = ("msisdn", "event_time", "event_type", "value", "outcome")
FIRED = ("wave", "wave_level", "policy_id", "delivery", "channel", "blocked_at", "held_kind")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-9
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime):
        return a.replace(tzinfo=None) == b.replace(tzinfo=None)
    return bool(a == b)


def compare(got: Observed, want: Observed, *, with_contacts: bool = True) -> list[str]:
    """Every difference between mktool (got) and the reference (want), as readable lines."""
    diffs: list[str] = []
    if got.order != want.order:
        diffs.append(f"processing order: mktool {got.order} reference {want.order}")
    if got.batches != want.batches:
        diffs.append(f"batch ids: mktool {got.batches} reference {want.batches}")
    if sorted(got.skipped) != sorted(want.skipped):
        diffs.append(f"skipped: mktool {sorted(got.skipped)} reference {sorted(want.skipped)}")
    if sorted(got.refused) != sorted(want.refused):
        diffs.append(f"refused: mktool {sorted(got.refused)} reference {sorted(want.refused)}")
    for key in sorted(set(got.events) | set(want.events), key=str):
        g, w = got.events.get(key), want.events.get(key)
        if g is None or w is None:
            diffs.append(f"scene_events {key}: only in {'reference' if g is None else 'mktool'}: {g or w}")
            continue
        fields = list(DECIDED)
        if w["outcome"] in ("fired", "once_per"):
            fields += ["wave", "wave_level"]
        if w["outcome"] == "fired":
            fields += list(FIRED[2:])
        for f in fields:
            if not _same(g.get(f), w.get(f)):
                diffs.append(f"scene_events {key} {f}: mktool {g.get(f)!r} reference {w.get(f)!r} "
                             f"(reference row {_short(w)})")
        if w["outcome"] == "once_per" and g["outcome"] == "once_per":
            named = (g.get("blocked_by_time"), g.get("blocked_by_batch"))
            allowed = [(t, b) for t, b in w["blockers"]]
            if not any(_same(named[0], t) and named[1] == b for t, b in allowed):
                diffs.append(f"scene_events {key} blocked_by: mktool {named} reference one of {allowed}")
    for key in sorted(set(got.lists) | set(want.lists)):
        g_rows, w_rows = got.lists.get(key, []), want.lists.get(key, [])
        if len(g_rows) != len(w_rows) or not all(all(_same(a, b) for a, b in zip(x, y))
                                                 for x, y in zip(g_rows, w_rows)):
            diffs.append(f"list {key}: mktool {g_rows} reference {w_rows}")
    if with_contacts:
        if got.contacts != want.contacts:
            diffs.append(f"contacts: only mktool {sorted(got.contacts - want.contacts)} "
                         f"only reference {sorted(want.contacts - got.contacts)}")
        if got.holdouts != want.holdouts:
            diffs.append(f"holdouts: only mktool {sorted(got.holdouts - want.holdouts)} "
                         f"only reference {sorted(want.holdouts - got.holdouts)}")
    return diffs


def _short(row: Mapping[str, Any]) -> str:
    keys = ("msisdn", "event_time", "event_type", "value", "scene_id", "outcome", "wave", "delivery", "blocked_at")
    return "{" + ", ".join(f"{k}={row.get(k)}" for k in keys) + "}"


# -- the tests -----------------------------------------------------------------------------------------------
Observe = Callable[[int], tuple[Stream, Observed]]


@pytest.fixture(scope="module")
def observe(base: Base, tmp_path_factory: pytest.TempPathFactory) -> Observe:
    """mktool's run of a seed's stream, once per seed and worker (the planted-mistake tests reuse them)."""
    done: dict[int, tuple[Stream, Observed]] = {}

    def get(seed: int) -> tuple[Stream, Observed]:
        if seed not in done:
            work = tmp_path_factory.mktemp(f"seed{seed}")
            stream = make_stream(seed, base, work / "stream")
            done[seed] = (stream, run_mktool(base, stream, work))
        return done[seed]

    return get


def test_streams_exercise_every_case(base: Base, tmp_path: Path) -> None:
    """The random streams meet every outcome and delivery, and the edges they are built for."""
    seen: dict[str, int] = {}
    for seed in range(20):
        stream = make_stream(seed, base, tmp_path / f"s{seed}")
        want = run_reference(base, stream)
        for row in want.events.values():
            seen[row["outcome"]] = seen.get(row["outcome"], 0) + 1
            if row["outcome"] == "fired":
                tag = f"delivery:{row['delivery']}" + (f":{row['blocked_at']}" if row["blocked_at"] else "") \
                    + (f":{row['held_kind']}" if row["held_kind"] else "")
                seen[tag] = seen.get(tag, 0) + 1
        for _, name in want.skipped:
            seen["skipped"] = seen.get("skipped", 0) + 1
            assert name in ("renamed-a.parquet", "events-a.parquet"), name
        assert [name for _, name in want.refused] == stream.malformed
    for case in ("duplicate", "no_scene", "stale", "unknown_customer", "not_matched", "once_per", "fired",
                 "delivery:listed", "delivery:merged", "delivery:blocked:dnd", "delivery:blocked:unsubscribed",
                 "delivery:blocked:withdrawn", "delivery:blocked:cooldown", "delivery:blocked:no_answer",
                 "delivery:blocked:exclusion", "delivery:blocked:dedupe", "delivery:blocked:contact_cap",
                 "delivery:held_out:universal", "delivery:held_out:policy", "skipped"):
        assert seen.get(case, 0) > 0, (case, seen)


MISTAKE_SEEDS = range(8)  # enough for every mistake to show (each shows on 3 to 8 of them)


@pytest.mark.parametrize("seed", slow_beyond(range(SEEDS), len(MISTAKE_SEEDS)))
def test_scene_agrees_with_the_reference(seed: int, base: Base, observe: Observe) -> None:
    stream, got = observe(seed)
    want = run_reference(base, stream)
    assert got.events  # the lists may all be empty (every trigger blocked); the events never are
    diffs = compare(got, want)
    assert not diffs, f"seed {seed}: {len(diffs)} differences, first:\n" + "\n".join(diffs[:15])


@pytest.mark.parametrize("seed", range(min(SEEDS, 3)))
def test_a_malformed_file_is_refused_and_the_others_processed(seed: int, observe: Observe) -> None:
    """The malformed file of the third run is refused and named; the good file beside it is processed,
    and nothing of the refused file is in the ledger or scene_events."""
    stream, got = observe(seed)
    assert [(2, name) for name in stream.malformed] == got.refused
    assert "events-e.parquet" in got.order
    assert "events-bad.parquet" not in got.order and "events-bad.parquet" not in got.batches
    assert {k[0] for k in got.events} <= set(got.batches.values())  # the empty file has no rows


MISTAKES = [f.name for f in dataclasses.fields(ref.Mistakes)]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_comparison_catches_a_planted_mistake(mistake: str, base: Base, observe: Observe) -> None:
    """Each planted mistake of the reference makes some seed disagree with mktool: the streams reach
    the edge the mistake is about, and the comparison looks at the field it changes."""
    caught = []
    for seed in MISTAKE_SEEDS:
        stream, got = observe(seed)
        if compare(got, run_reference(base, stream, ref.Mistakes(**{mistake: True}))):
            caught.append(seed)
    assert caught, f"planted mistake {mistake} not caught on seeds {list(MISTAKE_SEEDS)}"
