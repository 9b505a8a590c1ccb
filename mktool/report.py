"""`mktool report --month M`: the month on one self-contained HTML page a manager can read.

What the page shows, and where each part comes from (docs/report.md says the same for readers):

* **provenance**: manifest.json of the cycle folder ``<lists>/<M>/<cycle>/`` (the newest, or
  ``--cycle``): the run id, when and by which command and versions it ran, the rules and loads;
* **funnels**: funnel_counts of M: the plan and matrix funnels, the cycle's channel funnels and the
  response funnels of the newest ``evaluate`` run, each drawn as a funnel chart;
* **distributions**: customers of customer_view M per value_tier, stickiness_tier and segment;
* **profile**: :func:`mktool.profile.profile_month` by segment;
* **rules**: rule_hits of M beside every rule of the project's matrices, 0-hit rules flagged;
* **plan sweep**: :func:`mktool.plan.sweep` on plan.yaml's grid as a heatmap, plan.yaml's windows marked;
* **evaluation**: the newest campaign_evaluation run of M, uplift drawn with its 95% interval;
* **churn**: the newest churn_evaluation run of M: cumulative gains against the random diagonal;
* **factors**: :func:`mktool.factors.rank_factors` (top 10 per tenure cohort).

Why it is built this way: the page is forwarded and printed, often offline, so it holds no
JavaScript at all and makes no request. Charts are Vega-Lite specs built here from the small
aggregated rows and rendered to inline SVG by vl-convert (the Vega project's own renderer, not
hand-drawn SVG); everything else is plain HTML with one inline style sheet. Every value is
escaped once, in :func:`esc`. Only aggregates appear: no msisdn or other personal data.

The report only reads: the database (every figure is a set-based query or a step's read-only
function) and the cycle folder. A section whose data is missing says what to load or run instead
of disappearing. The same database and manifest give the same bytes: no clock is read, the ids
the renderer numbers per process are renumbered per chart.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import vl_convert

from mktool import campaign, evaluate, export, plan
from mktool.contract import check_month
from mktool.database import Database, dict_rows
from mktool.errors import MktoolError
from mktool.factors import rank_factors
from mktool.output import write_text_file
from mktool.planconfig import Window
from mktool.profile import profile_month, profile_tables
from mktool.project import Project
from mktool.publish import SEAL, folder_lock, newest_cycle
from mktool.schema import (
    CAMPAIGN_EVALUATION_TABLE,
    CHURN_EVALUATION_TABLE,
    FUNNEL_TABLE,
    PLAN_TABLE,
    RECOMMENDATIONS_TABLE,
    RESPONSE_FUNNEL_PREFIX,
    VIEW_TABLE,
)
from mktool.sqlquote import quote_identifier

__all__ = ["REPORT_FILE", "SECTIONS", "Cycle", "build_report", "default_target", "find_cycle", "write_report"]

#: The report's file name in a cycle folder (`mktool run` writes it there).
REPORT_FILE = "report.html"
#: The sections, in page order: (id, heading).
SECTIONS = (
    ("provenance", "Provenance"),
    ("funnels", "Funnels"),
    ("distributions", "Customer distributions"),
    ("profile", "Segment profile"),
    ("rules", "Rule hits"),
    ("plan-sweep", "Plan threshold sweep"),
    ("evaluation", "Campaign evaluation"),
    ("churn", "Churn model"),
    ("factors", "Churn factors"),
)
#: The customer_view columns whose distribution the report draws.
DISTRIBUTION_COLUMNS = ("value_tier", "stickiness_tier", "segment")
NO_VALUE = "(none)"
FACTORS_TOP = 10
#: The class column of the profile section.
PROFILE_BY = "segment"

# -- formatting: every value the page shows passes through here ------------------------------------


def esc(value: Any) -> str:
    """A value as HTML text (quotes too: it may land in an attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def count(n: int | None) -> str:
    """A count as the terminal shows it: thousands separators."""
    return "–" if n is None else f"{int(n):,}"


def fixed(value: Decimal, places: int) -> Decimal:
    """``value`` to ``places`` decimals, half away from zero (the project's rounding, not Python's half-even)."""
    rounded = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return rounded.copy_abs() if rounded == 0 else rounded  # never "-0.00"


def percent(rate: float | None, digits: int = 2) -> str:
    """A 6-decimal rate as a percentage (the exact figure is in the stored document)."""
    return "–" if rate is None else f"{fixed(Decimal(repr(rate)) * 100, digits)}%"


def points(rate: float | None) -> str:
    """An uplift (a difference of rates) in percentage points, signed."""
    return "–" if rate is None else f"{signed(rate)} pts"


def signed(rate: float | None) -> str:
    """An uplift in percentage points, signed, without the unit (a table column names it)."""
    return "–" if rate is None else f"{fixed(Decimal(repr(rate)) * 100, 2):+}"


def decimal(value: float | None, places: int) -> str:
    return "–" if value is None else str(fixed(Decimal(repr(value)), places))


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[str] = (),
          classes: Sequence[str] | None = None, caption: str | None = None) -> str:
    """An HTML table; ``numeric`` columns right-aligned; ``classes`` one CSS class per row (or '')."""
    num = set(numeric)
    head = "".join(f'<th{" class=num" if c in num else ""}>{esc(c)}</th>' for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = classes[i] if classes else ""
        cells = "".join(f'<td{" class=num" if columns[j] in num else ""}>{esc(v)}</td>' for j, v in enumerate(row))
        body.append(f'<tr{f" class={cls}" if cls else ""}>{cells}</tr>')
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def problem(exc: MktoolError) -> str:
    """What a refused step says, for the page: its message and hint, never its example row (personal data)."""
    return exc.message + (f" ({exc.hint})" if exc.hint else "")


# -- charts: Vega-Lite specs rendered to inline SVG ------------------------------------------------
#: The look every chart shares (the page's palette; text measured in the renderer's sans-serif).
#: DejaVu Sans (Verdana's metrics) is measured by the renderer and shown by the browser where installed; a
#: narrower fallback elsewhere only leaves labels a little room to spare, never clipped.
CHART_FONT = "DejaVu Sans, Verdana, Geneva, sans-serif"
CHART_CONFIG: dict[str, Any] = {
    "background": "white",
    "font": CHART_FONT,
    "view": {"stroke": None},
    "axis": {"labelFontSize": 11, "titleFontSize": 11, "titleFontWeight": "normal", "labelColor": "#333",
             "titleColor": "#555", "domainColor": "#999", "tickColor": "#999", "gridColor": "#eee"},
    "legend": {"labelFontSize": 11, "titleFontSize": 11, "titleFontWeight": "normal"},
    "bar": {"color": "#3b6ea8"},
    "text": {"fontSize": 11, "color": "#222"},
}
BLUE, RED, GREY = "#3b6ea8", "#c0392b", "#8a8a8a"
_SVG_REFS = re.compile(r'\bid="([^"]*)"|url\(#([^)]*)\)|href="#([^"]*)"')
_NAMESPACES = (' xmlns="http://www.w3.org/2000/svg"', ' xmlns:xlink="http://www.w3.org/1999/xlink"')


class Charts:
    """Renders the page's charts in order; numbers each chart's SVG ids (the renderer counts per process)."""

    def __init__(self) -> None:
        self.n = 0

    def figure(self, name: str, spec: dict[str, Any], caption: str | None = None, title: str | None = None) -> str:
        """``<figure class="chart" data-chart=name>`` holding the spec drawn as inline SVG (``title`` above it,
        ``caption`` below)."""
        self.n += 1
        svg = vl_convert.vegalite_to_svg({**spec, "config": CHART_CONFIG}, allowed_base_urls=[])
        svg = _own_ids(svg, f"c{self.n}")
        for ns in _NAMESPACES:  # inline SVG in HTML needs no namespace declaration (nor any URL in the page)
            svg = svg.replace(ns, "", 1)
        svg = svg.replace("<svg ", f'<svg role="img" aria-label="{esc(title or caption or name)}" ', 1)
        head = f'<div class="chart-title">{esc(title)}</div>' if title else ""
        cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        return f'<figure class="chart" data-chart="{esc(name)}">{head}{svg}{cap}</figure>'


def _own_ids(svg: str, prefix: str) -> str:
    """The SVG's ids (and references to them) renamed ``<prefix>-1``, ``-2``…: unique on the page, and
    the same whatever the renderer drew before in this process."""
    names: dict[str, str] = {}

    def rename(m: re.Match[str]) -> str:
        old = next(g for g in m.groups() if g is not None)
        new = names.setdefault(old, f"{prefix}-{len(names) + 1}")
        if m.group(1) is not None:
            return f'id="{new}"'
        return f"url(#{new})" if m.group(2) is not None else f'href="#{new}"'

    return _SVG_REFS.sub(rename, svg)


def bars_spec(rows: list[dict[str, Any]], *, category: str, value: str = "count", label: str = "label",
              color: str | None = None, width: int = 300, label_width: int = 140,
              value_title: str | None = None) -> dict[str, Any]:
    """Horizontal bars in the rows' order, each labelled with its ``label`` text (no value axis:
    the label is the number, formatted as the terminal formats it)."""
    top = max([float(r[value]) for r in rows] + [0.0]) or 1.0
    room = 10 + 7 * max([len(str(r[label])) for r in rows] + [0])  # the label's pixels after the longest bar
    domain = top * width / max(width - room, width / 3)
    bar: dict[str, Any] = {"type": "bar", "cornerRadiusEnd": 2, "height": {"band": 0.75}}
    bar_enc: dict[str, Any] = {"x": {"field": value, "type": "quantitative", "axis": None,
                                     "scale": {"domain": [0, domain]}, "title": value_title}}
    if color:
        bar_enc["color"] = {"field": color, "type": "nominal", "legend": None,
                            "scale": {"domain": ["ok", "flag"], "range": [BLUE, RED]}}
    return {
        "width": width, "height": {"step": 20},
        "data": {"values": rows},
        "encoding": {"y": {"field": category, "type": "nominal", "sort": None, "title": None,
                           "axis": {"labelLimit": label_width, "ticks": False, "domain": False}}},
        "layer": [
            {"mark": bar, "encoding": bar_enc},
            {"mark": {"type": "text", "align": "left", "baseline": "middle", "dx": 4},
             "encoding": {"x": {"field": value, "type": "quantitative"}, "text": {"field": label}}},
        ],
    }


# -- the cycle folder ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cycle:
    """The cycle folder the report describes, and its manifest (None: no published cycle)."""

    folder: Path | None
    date: str | None
    manifest: dict[str, Any] | None


def find_cycle(lists_dir: Path, month: str, cycle: dt.date | None = None) -> Cycle:
    """``<lists>/<M>/<cycle>/`` with its manifest.json: ``cycle``'s (refused when it is not published),
    else the newest published cycle of M (none: an empty Cycle)."""
    month_dir = Path(lists_dir) / check_month(month)
    date = cycle.isoformat() if cycle is not None else newest_cycle(month_dir)
    if date is None:
        return Cycle(None, None, None)
    folder = month_dir / date
    path = folder / SEAL
    if not path.is_file():
        raise MktoolError(f"no published cycle {date} of {month} under {lists_dir}: {path} does not exist",
                          hint=f"cycles of {month} there: {', '.join(_cycle_names(month_dir)) or 'none'}; "
                               "check --lists (or MKTOOL_OUT) and --cycle")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MktoolError(f"{path}: not a readable manifest ({exc})",
                          hint=f"re-export the cycle with `mktool export --month {month} --date {date}`") from None
    if not isinstance(manifest, dict):
        raise MktoolError(f"{path}: not a manifest (a JSON object)",
                          hint=f"re-export the cycle with `mktool export --month {month} --date {date}`")
    return Cycle(folder, date, manifest)


def _cycle_names(month_dir: Path) -> list[str]:
    try:
        return sorted(p.name for p in month_dir.iterdir() if p.is_dir() and not p.is_symlink() and (p / SEAL).is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []


def default_target(month: str, cycle: Cycle) -> Path:
    """Where the report goes without --out: beside the lists it describes, else report-<M>.html here."""
    return cycle.folder / REPORT_FILE if cycle.folder is not None else Path(f"report-{month}.html")


# -- reading the database ---------------------------------------------------------------------------
def _rows(db: Database, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    return dict_rows(db.c.execute(sql, list(params)))


def _month_count(db: Database, table_name: str, month: str, what: str = "count(*)") -> int | None:
    if not db.table_exists(table_name):
        return None
    row = db.c.execute(f"SELECT {what} FROM {quote_identifier(table_name)} WHERE month = ?", [month]).fetchone()
    return None if row is None else int(row[0])


def scored_customers(db: Database, month: str) -> int:
    """How many customers ``month``'s customer view holds (0 when not scored, or no view at all):
    a report of an unscored month is every section saying what to run, which `mktool report` warns of."""
    return _month_count(db, VIEW_TABLE, month) or 0


def _newest_document(db: Database, table_name: str, month: str, run_id: str | None = None) -> dict[str, Any] | None:
    """The stored document of run ``run_id`` (default: the month's newest run: created_at, then run id)."""
    if not db.table_exists(table_name):
        return None
    where, params = "month = ?", [month]
    if run_id is not None:
        where += " AND run_id = ?"
        params.append(run_id)
    row = db.c.execute(f"SELECT run_id, created_at, document FROM {quote_identifier(table_name)} WHERE {where} "
                       "ORDER BY created_at DESC, run_id LIMIT 1", params).fetchone()
    if row is None:
        return None
    doc = json.loads(row[2])
    return {"run_id": row[0], "created_at": row[1].isoformat(sep=" ", timespec="seconds"), "document": doc}


# -- the page ---------------------------------------------------------------------------------------
@dataclass
class Page:
    """What the sections found, for the summary at the top."""

    db: Database
    project: Project
    month: str
    cycle: Cycle
    charts: Charts = field(default_factory=Charts)
    summary: list[tuple[str, str, str]] = field(default_factory=list)  # (label, value, detail)


def build_report(db: Database, project: Project, month: str, *, lists_dir: Path, cycle: dt.date | None = None,
                 found: Cycle | None = None) -> str:
    """The whole page for ``month`` (``found``: the cycle folder, when the caller looked it up already)."""
    check_month(month)
    page = Page(db, project, month, found if found is not None else find_cycle(lists_dir, month, cycle))
    builders: dict[str, Callable[[Page], str]] = {
        "provenance": provenance_section, "funnels": funnels_section, "distributions": distributions_section,
        "profile": profile_section, "rules": rules_section, "plan-sweep": sweep_section,
        "evaluation": evaluation_section, "churn": churn_section, "factors": factors_section,
    }
    _summary_counts(page)
    bodies = [(sid, heading, builders[sid](page)) for sid, heading in SECTIONS]
    sections = "\n".join(f'<section id="{sid}"><h2>{esc(heading)}</h2>\n{body}\n</section>'
                         for sid, heading, body in bodies)
    return _document(page, sections)


def write_report(db: Database, project: Project, month: str, *, lists_dir: Path, cycle: dt.date | None = None,
                 out: Path | None = None) -> Path:
    """Build the report and write it atomically to ``out`` (default: :func:`default_target`); returns the path.
    A report in a cycle folder is written under the folder's publish lock (an export may be publishing there)."""
    found = find_cycle(lists_dir, month, cycle)
    text = build_report(db, project, month, lists_dir=lists_dir, found=found)
    target = out if out is not None else default_target(month, found)
    if found.folder is not None and target.parent.resolve() == found.folder.resolve():
        with folder_lock(found.folder):
            write_text_file(target, text)
    else:
        write_text_file(target, text)
    return target


def _title(page: Page) -> str:
    parts = [f"Marketing run {page.month}"]
    if page.cycle.date:
        parts.append(f"cycle {page.cycle.date}")
    run_id = (page.cycle.manifest or {}).get("run_id")
    if run_id:
        parts.append(f"run {run_id}")
    return " · ".join(parts)


def _document(page: Page, sections: str) -> str:
    title = _title(page)
    tiles = "".join(f'<div class="tile"><div class="label">{esc(label)}</div><div class="value">{esc(value)}</div>'
                    f'<div class="detail">{esc(detail)}</div></div>' for label, value, detail in page.summary)
    nav = " · ".join(f'<a href="#{sid}">{esc(heading)}</a>' for sid, heading in SECTIONS)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
            f'<header><p class="kicker">mktool report</p><h1>{esc(title)}</h1>\n'
            f'<nav>{nav}</nav></header>\n<section id="summary" class="summary"><h2>Summary</h2>'
            f'<div class="tiles">{tiles}</div></section>\n{sections}\n</main>\n</body>\n</html>\n')


def _summary_counts(page: Page) -> None:
    """The headline counts: customers scored, offers, plan changes, the lists per channel."""
    db, month = page.db, page.month
    customers = _month_count(db, VIEW_TABLE, month)
    offers = _month_count(db, RECOMMENDATIONS_TABLE, month)
    offered = _month_count(db, RECOMMENDATIONS_TABLE, month, "count(DISTINCT msisdn)")
    plans = _month_count(db, PLAN_TABLE, month, "count(DISTINCT msisdn)")
    page.summary.append(("Customers scored", count(customers), f"customer_view {month}"))
    page.summary.append(("Offers", count(offers), f"for {count(offered)} customers" if offered is not None else ""))
    page.summary.append(("Plan changes", count(plans), "customers with a recommended plan"))
    outputs = (page.cycle.manifest or {}).get("outputs")
    if isinstance(outputs, dict) and outputs:
        lists = [(str(e.get("channel") or name), int(e.get("rows") or 0)) for name, e in sorted(outputs.items())
                 if isinstance(e, dict)]
        page.summary.append(("List rows", count(sum(n for _, n in lists)),
                             ", ".join(f"{ch} {count(n)}" for ch, n in lists)))
    else:
        page.summary.append(("List rows", "–", "no published cycle"))


# -- provenance --------------------------------------------------------------------------------------
def _part(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """A JSON object inside the manifest ({} when absent or not an object: an older or hand-edited manifest)."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def provenance_section(page: Page) -> str:
    m, month = page.cycle.manifest, page.month
    if m is None:
        return missing(f"No published cycle of {month} in this lists folder: run `mktool run --month {month}` "
                       f"(or `mktool export --month {month}`), or point --lists (MKTOOL_OUT) and --cycle at the "
                       "cycle folder the lists were written to.")
    rules, engines = _part(m, "rules"), _part(m, "engines")
    git = _part(rules, "git")
    command = m.get("command_line")
    facts = [
        ("month", m.get("month")), ("cycle date", m.get("cycle_date")), ("run id", m.get("run_id")),
        ("created at", m.get("created_at")),
        ("command", shlex.join(str(a) for a in command) if isinstance(command, list) else command),
        ("versions", ", ".join(f"{k} {v}" for k, v in engines.items())),
        ("rules folder", rules.get("folder")),
    ]
    if git:
        facts.append(("rules commit", f"{str(git.get('commit') or '')[:12]}"
                                      + (" (uncommitted changes)" if git.get("dirty") else "")))
    overrides = m.get("overrides")
    if isinstance(overrides, dict) and overrides:
        facts.append(("overrides", "; ".join(f"{step}: {json.dumps(v, ensure_ascii=False, sort_keys=True)}"
                                             for step, v in sorted(overrides.items()))))
    out = [table(["fact", "value"], facts)]
    outputs = m.get("outputs") if isinstance(m.get("outputs"), dict) else {}
    if outputs:
        rows = [(name, e.get("channel"), count(e.get("rows")), count(e.get("held_out")), e.get("cycle"))
                for name, e in sorted(outputs.items()) if isinstance(e, dict)]
        out.append("<h3>Lists in the cycle folder</h3>"
                   + table(["list", "channel", "rows", "held out", "cycle"], rows, numeric=("rows", "held out")))
    listed = m.get("loads")
    loads = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
    if loads:  # per table: the files (their sha256 are in manifest.json), months and rows
        tables: dict[str, list[dict[str, Any]]] = {}
        for e in loads:
            tables.setdefault(str(e.get("table")), []).append(e)
        loaded = [(name, ", ".join(Path(str(e.get("file"))).name for e in files),
                 ", ".join(sorted({str(mo) for e in files for mo in (e.get("months") or [])})),
                 count(sum(int(e.get("rows") or 0) for e in files))) for name, files in tables.items()]
        out.append(f"<h3>Extracts the database holds ({len(loads)} files; their sha256 in manifest.json)</h3>"
                   + table(["table", "files", "months", "rows"], loaded, numeric=("rows",)))
    return "\n".join(out)


# -- funnels -----------------------------------------------------------------------------------------
def funnel_figure(page: Page, name: str, stages: list[dict[str, Any]], unit: str = "customers") -> str:
    first = stages[0]["count"] if stages else 0
    rows = [{"stage": s["stage"], "count": s["count"], "label": count(s["count"])} for s in stages]
    last = stages[-1]["count"] if stages else 0
    share = f" ({percent(last / first, 1)})" if first else ""
    return page.charts.figure(f"funnel:{name}", bars_spec(rows, category="stage", label_width=110, width=250),
                              title=name, caption=f"{count(last)} of {count(first)} {unit} at the last stage{share}")


def funnels_section(page: Page) -> str:
    db, month = page.db, page.month
    if not db.table_exists(FUNNEL_TABLE):
        return missing(f"No funnels recorded for {month}: run `mktool run --month {month}` (or matrix, plan and "
                       "export).")
    cycles = export.funnel_cycles(db.c, month)
    date = page.cycle.date or (cycles[-1] if cycles else None)
    undated = export.funnel_document(db.c, month)["funnels"]  # the steps' and the response funnels
    responses = {k: v for k, v in undated.items() if k.startswith(RESPONSE_FUNNEL_PREFIX)}
    if date is not None:
        steps = export.funnel_document(db.c, month, dt.date.fromisoformat(date))["funnels"]
    else:
        steps = {k: v for k, v in undated.items() if not k.startswith(RESPONSE_FUNNEL_PREFIX)}
    if not steps and not responses:
        return missing(f"No funnels recorded for {month}: run `mktool run --month {month}` (or matrix, plan and "
                       "export).")
    out = []
    step_funnels = {k: v for k, v in steps.items() if not k.startswith("channel:")}
    channel_funnels = {k: v for k, v in steps.items() if k.startswith("channel:")}
    out.append("<h3>Plan and matrices (customers)</h3>")
    out.append(_grid(funnel_figure(page, k, v) for k, v in step_funnels.items()) if step_funnels else missing(
        f"No plan or matrix funnel for {month}: run `mktool matrix --month {month}` and "
        f"`mktool plan --month {month}`."))
    out.append(f"<h3>Channels{f', cycle {esc(date)}' if date else ''} (customers)</h3>")
    out.append(_grid(funnel_figure(page, k, v) for k, v in channel_funnels.items()) if channel_funnels else missing(
        f"No channel funnel for {month}: run `mktool export --month {month}`."))
    run = campaign.newest_run(db, month) if responses else None
    out.append("<h3>Responses (offers: customer × policy pairs)</h3>")
    if responses:
        if run is not None:
            out.append(note(f"From evaluate run {run['run_id']}, window {run['window_days']} days."))
        out.append(_grid(funnel_figure(page, k, v, unit="offers") for k, v in responses.items()))
    else:
        out.append(missing(_no_responses(db, month)))
    return "\n".join(out)


def _grid(figures: Any) -> str:
    return f'<div class="grid">{"".join(figures)}</div>'


def _first_cycle(db: Database, month: str) -> str | None:
    cycles = export.funnel_cycles(db.c, month) if db.table_exists(FUNNEL_TABLE) else []
    return cycles[0] if cycles else None


def _no_responses(db: Database, month: str) -> str:
    first = _first_cycle(db, month)
    since = f"dated from {first}" if first else "dated after the lists' cycle"
    if campaign.responses_exist(db, month):
        return (f"Responses to {month}'s lists are loaded but not evaluated yet: run "
                f"`mktool evaluate --month {month}`.")
    return (f"No responses for {month}'s lists yet: ingest contact_history and orders {since}, then run "
            f"`mktool evaluate --month {month}`.")


# -- distributions -------------------------------------------------------------------------------------
def distributions_section(page: Page) -> str:
    db, month = page.db, page.month
    if not _month_count(db, VIEW_TABLE, month):
        return missing(f"customer_view has no rows for {month}: run `mktool score --month {month}` "
                       f"(or `mktool run --month {month}`).")
    have = set(db.columns(VIEW_TABLE))
    present = [c for c in DISTRIBUTION_COLUMNS if c in have]
    parts = [f"SELECT '{c}' AS col, CAST({quote_identifier(c)} AS VARCHAR) AS val, count(*) AS customers "
             f"FROM {VIEW_TABLE} WHERE month = $month GROUP BY {quote_identifier(c)}" for c in present]
    counts: dict[str, list[tuple[str | None, int]]] = {c: [] for c in present}
    if parts:
        cur = db.c.execute(" UNION ALL ".join(parts) + " ORDER BY col, val NULLS LAST", {"month": month})
        for col, val, n in cur.fetchall():
            counts[col].append((val, int(n)))
    tiers = [name for name, _ in page.project.scores.tiers]
    figures = []
    for c in DISTRIBUTION_COLUMNS:
        if c not in counts:
            figures.append(f'<div class="chart-missing"><h3>{esc(c)}</h3>'
                           + missing(f"customer_view has no column {c}: scores.yaml does not define it.") + "</div>")
            continue
        values = counts[c]
        if c == "value_tier":  # scores.yaml's tier order, best first
            values.sort(key=lambda v: (v[0] is None, tiers.index(v[0]) if v[0] in tiers else len(tiers), v[0] or ""))
        total = sum(n for _, n in values) or 1
        rows = [{"value": NO_VALUE if v is None else v, "count": n, "label": f"{count(n)} · {percent(n / total, 1)}"}
                for v, n in values]
        figures.append(page.charts.figure(f"distribution:{c}", bars_spec(rows, category="value", width=220,
                                                                         label_width=130),
                                          title=c, caption=f"customers of {month} (count · share)"))
    return _grid(figures)


# -- profile ---------------------------------------------------------------------------------------------
def profile_section(page: Page) -> str:
    """`mktool profile --by segment`: its table (the command's own exact figures, counts with separators)
    and two charts from its document: mean ARPU and next month's churn rate per segment."""
    try:
        result = profile_month(page.db, page.project, page.month, by=PROFILE_BY)
    except MktoolError as exc:
        return missing(f"The profile of {page.month} cannot be computed: {problem(exc)}.")
    _, columns, rows = profile_tables(result)[0]
    shown = [(label, count(int(n)), *rest) for label, n, *rest in rows]
    out = []
    if result.churn_note:
        out.append(missing(result.churn_note[0].upper() + result.churn_note[1:] + "."))
    out.append(table([PROFILE_BY, *columns[1:]], shown, numeric=columns[1:],
                     classes=["" for _ in rows[:-1]] + ["total"],
                     caption="ARPU in yuan a month (means over the customers with a value), tenure in months; "
                             "saturation: use over the plan's allowance; contract, bundle: running at the month's end"))
    doc = result.document()
    key = result.class_key
    arpu = [{"class": r[key], "count": r["arpu_mean"], "label": decimal(r["arpu_mean"], 2)}
            for r in doc["rows"] if r["arpu_mean"] is not None]
    figures = [page.charts.figure("profile:arpu", bars_spec(arpu, category="class", width=220, label_width=140),
                                  title="Mean ARPU (yuan)", caption=f"per {PROFILE_BY}, {page.month}")] if arpu else []
    if result.next_month_loaded:
        churn = [{"class": r[key], "count": r["churn_rate"], "label": percent(r["churn_rate"])}
                 for r in doc["rows"] if r["churn_rate"] is not None]
        if churn:
            figures.append(page.charts.figure(
                "profile:churn", bars_spec(churn, category="class", width=220, label_width=140),
                title=f"Churn by {result.next_month}",
                caption=f"of the customers not closed in {page.month}, left or closed by {result.next_month}"))
    out.append(_grid(figures))
    return "\n".join(out)


# -- rule hits -------------------------------------------------------------------------------------------
def rules_section(page: Page) -> str:
    db, month = page.db, page.month
    hits: dict[tuple[str, str], int] = {}
    if db.table_exists("rule_hits"):
        for r in _rows(db, "SELECT matrix, rule_id, sum(hits) AS hits FROM rule_hits WHERE month = ? "
                           "GROUP BY matrix, rule_id ORDER BY matrix, rule_id", [month]):
            hits[(r["matrix"], r["rule_id"])] = int(r["hits"])
    if not hits:
        return missing(f"No rule hits recorded for {month}: run `mktool matrix --month {month}`.")
    policies = page.project.policies
    out = []
    zero = 0
    known: set[tuple[str, str]] = set()
    pairs = []
    for matrix in page.project.rules.matrices:
        rows, chart, classes = [], [], []
        for rule in matrix.rules:
            key = (matrix.name, rule.id)
            known.add(key)
            n = hits.get(key)
            policy = policies.get(rule.policy) if rule.policy else None
            offer = rule.policy or rule.group or ("→ " + " > ".join(rule.order) if rule.order else "")
            status = "not evaluated" if n is None else ("0 hits" if n == 0 else "")
            zero += n == 0
            rows.append((rule.no, rule.id, offer, policy.name if policy else "", count(n), status))
            classes.append("flag" if status else "")
            chart.append({"rule": rule.id, "count": n or 0, "label": count(n) if n is not None else "not evaluated",
                          "flag": "flag" if status else "ok"})
        figure = page.charts.figure(f"rules:{matrix.name}", bars_spec(chart, category="rule", color="flag",
                                                                     width=200, label_width=120),
                                    caption=f"customers per rule ({matrix.hit} hit)")
        pairs.append(f'<h3>{esc(matrix.name)}</h3><div class="side">{figure}'
                     + table(["#", "rule", "offer", "policy name", "hits", "flag"], rows, numeric=("#", "hits"),
                             classes=classes) + "</div>")
    stray = sorted(k for k in hits if k not in known)
    rules = sum(len(m.rules) for m in page.project.rules.matrices)
    page.summary.append(("Rules without a hit", count(zero), f"of {count(rules)} rules in "
                                                            f"{len(page.project.rules.matrices)} matrices"))
    out.append(note(f"{zero} rule{'s' if zero != 1 else ''} had no hit in {month} (flagged red)." if zero else
                    f"Every rule had at least one hit in {month}."))
    out += pairs
    if stray:
        out.append(note("Recorded hits of rules that are not in the current matrices (the rules changed after "
                        f"`mktool matrix` ran): {', '.join(f'{m}/{r} {count(hits[(m, r)])}' for m, r in stray)}."))
    return "\n".join(out)


# -- plan sweep -------------------------------------------------------------------------------------------
def sweep_section(page: Page) -> str:
    config, month = page.project.plan, page.month
    totals = sorted(set(config.sweep_total) | {config.total_change}, key=lambda w: (w.lo, w.hi))
    rentals = sorted(set(config.sweep_rental) | {config.rental_change}, key=lambda w: (w.lo, w.hi))
    try:
        cells = plan.sweep(page.db, page.project, month, totals, rentals)
    except MktoolError as exc:
        return missing(f"The plan sweep cannot be computed for {month}: {problem(exc)}.")
    low, high = min((c.customers for c in cells), default=0), max((c.customers for c in cells), default=0)
    rows = [{"total": str(c.total_change), "rental": str(c.rental_change), "customers": c.customers,
             "label": count(c.customers), "dark": high > low and c.customers - low > 0.5 * (high - low),
             "chosen": c.total_change == config.total_change and c.rental_change == config.rental_change}
            for c in cells]
    spec = {
        "data": {"values": rows},
        "width": {"step": 96}, "height": {"step": 34},
        "encoding": {
            "x": {"field": "rental", "type": "ordinal", "sort": [str(w) for w in rentals],
                  "title": "rental change (new rental / current rental)", "axis": {"orient": "top", "labelAngle": 0}},
            "y": {"field": "total", "type": "ordinal", "sort": [str(w) for w in totals],
                  "title": "total-fee change (new / current bill)"},
        },
        "layer": [
            {"mark": {"type": "rect"}, "encoding": {"color": {
                "field": "customers", "type": "quantitative", "scale": {"scheme": "blues"},
                "legend": {"title": "customers", "format": ",d"}}}},
            {"transform": [{"filter": "datum.chosen"}],
             "mark": {"type": "rect", "filled": False, "stroke": "#d35400", "strokeWidth": 3}},
            {"mark": {"type": "text", "baseline": "middle"}, "encoding": {
                "text": {"field": "label"},
                "color": {"condition": {"test": "datum.dark", "value": "white"}, "value": "#222"}}},
        ],
    }
    chosen = f"total {config.total_change} × rental {config.rental_change}"
    used = _plan_windows(page)
    out = [page.charts.figure("plan-sweep", spec, caption=f"Customers targeted per pair of windows; outlined: "
                                                          f"plan.yaml's windows ({chosen})")]
    if used and used != (str(config.total_change), str(config.rental_change)):
        out.append(note(f"This cycle's plan step ran with total {used[0]} × rental {used[1]} (overrides)."))
    return "\n".join(out)


def _plan_windows(page: Page) -> tuple[str, str] | None:
    steps = (page.cycle.manifest or {}).get("steps")
    settings = steps.get("plan", {}).get("settings") if isinstance(steps, dict) else None
    if not isinstance(settings, dict) or "total_change" not in settings:
        return None
    return str(Window(*_window(settings["total_change"]))), str(Window(*_window(settings["rental_change"])))


def _window(text: Any) -> tuple[float, float]:
    lo, _, hi = str(text).partition(":")
    return float(lo), float(hi)


# -- campaign evaluation -----------------------------------------------------------------------------------
def evaluation_section(page: Page) -> str:
    db, month = page.db, page.month
    latest = campaign.newest_run(db, month)
    stored = _newest_document(db, CAMPAIGN_EVALUATION_TABLE, month, latest["run_id"]) if latest else None
    if stored is None:
        return missing(_no_responses(db, month))
    doc = stored["document"]
    by = list(doc.get("by") or [])
    total = doc["total"]
    page.summary.append(("Orders", count(total.get("ordered")),
                         f"take-up {percent(total.get('take_up'))} of {count(total.get('contacted'))} offers"))
    ci = total.get("uplift_ci")
    page.summary.append(("Uplift", points(total.get("uplift")),
                         f"95% CI {points(ci[0])} to {points(ci[1])}" if ci else "no interval"))
    lines = [(" / ".join(NO_VALUE if r.get(b) is None else str(r.get(b)) for b in by) or "all", r)
             for r in doc["rows"]] + [("total", total)]
    out = [note(f"Evaluate run {stored['run_id']} ({stored['created_at']}): orders within {doc['window_days']} "
                f"days of the contact, contacted offers against held-out offers (customer × policy pairs).")]
    rows = [(key, count(f["contacted"]), count(f["ordered"]), percent(f["take_up"]), count(f["held_out"]),
             count(f["held_out_ordered"]), percent(f["take_up_control"]), signed(f["uplift"]),
             "–" if not f.get("uplift_ci") else f"{signed(f['uplift_ci'][0])} to {signed(f['uplift_ci'][1])}",
             percent(f["success_rate"]), percent(f["cancel_7d_rate"])) for key, f in lines]
    cols = [" / ".join(by) or "group", "contacted", "ordered", "take-up", "held out", "held out ordered",
            "control take-up", "uplift (pts)", "95% interval (pts)", "accepted", "cancelled in 7 days"]
    out.append(table(cols, rows, numeric=cols[1:], classes=["" for _ in lines[:-1]] + ["total"]))
    chart = [{"group": key, "uplift": float(Decimal(repr(f["uplift"])) * 100),
              "lo": float(Decimal(repr(f["uplift_ci"][0])) * 100) if f.get("uplift_ci") else None,
              "hi": float(Decimal(repr(f["uplift_ci"][1])) * 100) if f.get("uplift_ci") else None,
              "label": points(f["uplift"]), "kind": "total" if key == "total" and f is total else "group"}
             for key, f in lines if f.get("uplift") is not None]
    if chart:
        group_axis = {"field": "group", "type": "nominal", "sort": None, "title": None, "axis": {"labelLimit": 160}}
        spec = {
            "data": {"values": chart}, "width": 520, "height": {"step": 22},
            "layer": [  # y per layer, not shared: the zero line spans the whole height
                {"mark": {"type": "rule", "color": GREY, "strokeDash": [3, 3]}, "encoding": {"x": {"datum": 0}}},
                {"mark": {"type": "rule", "strokeWidth": 2, "color": BLUE},
                 "encoding": {"y": group_axis,
                              "x": {"field": "lo", "type": "quantitative", "axis": {"tickCount": 8},
                                    "title": "uplift, percentage points (bar: 95% interval)"},
                              "x2": {"field": "hi"}}},
                {"mark": {"type": "point", "filled": True, "size": 60},
                 "encoding": {"y": group_axis, "x": {"field": "uplift", "type": "quantitative"},
                              "color": {"field": "kind", "type": "nominal", "legend": None,
                                        "scale": {"domain": ["group", "total"], "range": [BLUE, "#d35400"]}}}},
            ],
        }
        undrawn = [key for key, f in lines if f.get("uplift") is None]
        caption = "Uplift (take-up minus control take-up) with its 95% interval (Newcombe)"
        if undrawn:
            caption += f"; not drawn, no held-out offer to compare with: {', '.join(undrawn)}"
        out.append(page.charts.figure("uplift", spec, caption=caption))
    else:
        out.append(missing(f"No uplift for {month}: no held-out offers, or orders are not loaded "
                           f"(`mktool ingest orders.parquet`, then `mktool evaluate --month {month}`)."))
    return "\n".join(out)


# -- churn model -------------------------------------------------------------------------------------------
def churn_section(page: Page) -> str:
    db, month = page.db, page.month
    after = evaluate.next_month(month)
    stored = _newest_document(db, CHURN_EVALUATION_TABLE, month)
    if stored is None:
        if not evaluate.next_month_loaded(db, month):
            return missing(f"{after}'s subscribers are not loaded, so nobody can be judged churned yet: ingest them "
                           f"(`mktool ingest subscribers_{after}.parquet`), then run "
                           f"`mktool evaluate churn --month {month}`.")
        return missing(f"{after}'s subscribers are loaded but the churn model of {month} is not evaluated yet: run "
                       f"`mktool evaluate churn --month {month}`.")
    doc = stored["document"]
    flag = doc["flag"]
    page.summary.append(("Churn flag", f"{percent(flag['precision'], 1)} / {percent(flag['recall'], 1)}",
                         f"precision / recall; {count(doc['churned'])} of {count(doc['base'])} churned by {after}"))
    out = [note(f"Evaluate run {stored['run_id']} ({stored['created_at']}): {count(doc['base'])} customers not "
                f"closed in {month}, {count(doc['churned'])} gone or closed by {after} (base rate "
                f"{percent(doc['base_rate'])}).")]
    selections = [("churn_flag", flag["flagged"], flag)] + [
        (f"top {Decimal(repr(t['share'])) * 100:.0f}% of churn_score", t["customers"], t) for t in doc["top"]]
    rows = [(name, count(n), count(f["churned"]), percent(f["precision"]), percent(f["recall"]),
             decimal(f["lift"], 2)) for name, n, f in selections]
    out.append(table(["selection", "customers", "churned", "precision", "recall", "lift"], rows,
                     numeric=("customers", "churned", "precision", "recall", "lift")))
    base = doc["base"] or 1
    points_: list[dict[str, Any]] = [{"share": 0.0, "recall": 0.0, "series": "churn_score"}]
    cum = 0
    for d in doc["gains"]:
        cum += d["customers"]
        points_.append({"share": cum / base, "recall": d["cumulative_recall"] or 0.0, "series": "churn_score"})
    points_ += [{"share": 0.0, "recall": 0.0, "series": "random"}, {"share": 1.0, "recall": 1.0, "series": "random"}]
    spec = {
        "data": {"values": points_}, "width": 360, "height": 260,
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": "share", "type": "quantitative", "title": "share of customers, highest churn_score first",
                  "axis": {"format": ".0%"}, "scale": {"domain": [0, 1]}},
            "y": {"field": "recall", "type": "quantitative", "title": "share of the churners found",
                  "axis": {"format": ".0%"}, "scale": {"domain": [0, 1]}},
            "color": {"field": "series", "type": "nominal", "title": None,
                      "scale": {"domain": ["churn_score", "random"], "range": [BLUE, GREY]},
                      "legend": {"orient": "bottom-right"}},
            "strokeDash": {"field": "series", "type": "nominal", "legend": None,
                           "scale": {"domain": ["churn_score", "random"], "range": [[1, 0], [4, 4]]}},
        },
    }
    gains = [(d["decile"], count(d["customers"]), count(d["churned"]), count(d["cumulative_churned"]),
              percent(d["cumulative_recall"]), decimal(d["lift"], 2)) for d in doc["gains"]]
    out.append('<div class="side">' + page.charts.figure(
        "churn-gains", spec, caption="Cumulative gains by decile of churn_score against random selection")
        + table(["decile", "customers", "churned", "cumulative", "recall", "lift"], gains,
                numeric=("decile", "customers", "churned", "cumulative", "recall", "lift")) + "</div>")
    return "\n".join(out)


# -- churn factors -----------------------------------------------------------------------------------------
def factors_section(page: Page) -> str:
    """`mktool factors --top 10`: per tenure cohort, the factors by information gain and each one's riskiest group."""
    month = page.month
    after = evaluate.next_month(month)
    if not evaluate.next_month_loaded(page.db, month):
        return missing(f"{after}'s subscribers are not loaded, so there is no churn label to rank factors by: ingest "
                       f"them (`mktool ingest subscribers_{after}.parquet`), then write the report again.")
    try:
        ranking = rank_factors(page.db, page.project, month, top=FACTORS_TOP)
    except MktoolError as exc:
        return missing(f"The churn factors of {month} cannot be ranked: {problem(exc)}.")
    out = [note(f"Per tenure cohort, the {FACTORS_TOP} columns of the customer view that best tell apart who left by "
                f"{after}: information gain in bits (the cohort's churn entropy minus what is left once the "
                f"customers are grouped by the column; numeric columns in {ranking.bins} quantile bins). A column "
                f"with many groups (an id such as group_id) gains just by splitting the customers finely: "
                f"weigh the gain against the groups column.")]
    for c in ranking.cohorts:
        chart = [{"factor": f.factor.name, "count": f.information_gain, "label": f"{f.information_gain:.4f}"}
                 for f in c.factors]
        rows = []
        for f in c.factors:
            worst = f.highest()
            rows.append((f.rank, f.factor.name, f.factor.kind, f"{f.information_gain:.6f}", len(f.groups),
                         worst.shown if worst else "–", count(worst.customers) if worst else "–",
                         percent(float(worst.churn_rate)) if worst and worst.churn_rate is not None else "–"))
        figure = page.charts.figure(f"factors:{c.cohort}", bars_spec(chart, category="factor", width=200,
                                                                      label_width=150),
                                    caption="information gain (bits)")
        out.append(f"<h3>{esc(c.cohort)}: {count(c.customers)} customers, {count(c.churned)} churned "
                   f"({percent(float(c.churn_rate)) if c.churn_rate is not None else '–'}), entropy "
                   f"{c.entropy:.4f} bits</h3>")
        out.append('<div class="side">' + figure + table(
            ["#", "factor", "kind", "information gain", "groups", "riskiest group", "its customers", "its churn rate"],
            rows, numeric=("#", "information gain", "groups", "its customers", "its churn rate")) + "</div>")
    if not ranking.cohorts:
        out.append(missing(f"No customer of {month} is in the churn base (every one is closed)."))
    if ranking.skipped:
        out.append(note("Not ranked: " + ", ".join(f"{s['factor']} ({s['reason']})" for s in ranking.skipped) + "."))
    return "\n".join(out)


# -- the style sheet ---------------------------------------------------------------------------------------
STYLE = """
:root { --ink: #1f2933; --muted: #5f6b76; --line: #d9dee3; --band: #f4f6f8; --accent: #3b6ea8; --flag: #c0392b; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", "Liberation Sans",
    "Noto Sans CJK SC", "Microsoft YaHei", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 32px 48px; }
header { border-bottom: 2px solid var(--ink); padding-bottom: 10px; margin-bottom: 18px; }
.kicker { margin: 0; color: var(--muted); text-transform: uppercase; letter-spacing: .08em; font-size: 11px; }
h1 { margin: 2px 0 8px; font-size: 26px; font-weight: 650; }
nav { font-size: 12px; color: var(--muted); }
nav a { color: var(--accent); text-decoration: none; }
h2 { font-size: 19px; margin: 30px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 18px 0 6px; color: var(--muted); font-weight: 600; }
.summary h2 { margin-top: 8px; }
.tiles { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; }
.tile { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; background: var(--band); }
.tile .label { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
.tile .value { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; margin: 2px 0; }
.tile .detail { font-size: 12px; color: var(--muted); }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; font-variant-numeric: tabular-nums; }
caption { text-align: left; color: var(--muted); font-size: 12px; padding-bottom: 4px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; font-size: 12px; color: #36414b; vertical-align: bottom; }
td.num, th.num { text-align: right; }
td.num { white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tr.flag td { color: var(--flag); }
tr.total td { font-weight: 650; border-top: 1.5px solid var(--ink); }
#provenance td:first-child { color: var(--muted); white-space: nowrap; }
#provenance td { word-break: break-word; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 8px 18px;
  align-items: start; }
.side { display: flex; gap: 18px; align-items: flex-start; }
.side > figure { flex: none; }
@media (max-width: 900px) { .side { flex-wrap: wrap; } }
figure.chart { margin: 4px 0 10px; break-inside: avoid; page-break-inside: avoid; }
figure.chart svg { display: block; max-width: 100%; height: auto; overflow: visible; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 2px; }
.chart-title { font-weight: 600; font-size: 13px; margin-bottom: 4px; }
p.missing { border-left: 4px solid #e0a800; background: #fff8e1; padding: 8px 12px; margin: 8px 0; }
p.note { color: var(--muted); margin: 4px 0 8px; }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  body { font-size: 11px; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  h2 { break-after: avoid; page-break-after: avoid; }
  h3 { break-after: avoid; page-break-after: avoid; }
  section { break-inside: auto; }
  table, .tile, figure.chart { break-inside: avoid; page-break-inside: avoid; }
  .grid { grid-template-columns: repeat(2, 1fr); }
  tbody tr:nth-child(even) td { background: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""
