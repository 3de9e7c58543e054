"""What an audit leaves in its folder: metrics.csv (rewritten as images are done), summary.json
(per-method and per-baseline means, their bootstrap intervals, paired comparisons, the protocol), summary.csv and
paired.csv (the same as tables) and index.html (one self-contained page).

Extending it: `add_column` adds a metric column (it then gets its interval, comparisons, chart and table
cell); `add_section` adds a section to index.html, a function of the `Report`."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CamInferError
from ..metrics import adcc
from ..metrics.uncertainty import VERDICT_MIN_IMAGES
from ..numerics import is_whole_number
from ..outputs import write_atomically
from .intervals import uncertainty
from .work import COLUMNS, thumbnail_name

CSV_NAME, SUMMARY_NAME, HTML_NAME, ERRORS_NAME = "metrics.csv", "summary.json", "index.html", "errors.json"
SUMMARY_CSV, PAIRED_CSV = "summary.csv", "paired.csv"      # means with intervals; paired comparisons
ROWS_NAME = "rows.jsonl"                                    # a detector's or segmenter's rows, one JSON per line
# column → (shown as, higher is better; None: a reference, tabled, not charted nor compared); `add_column` adds one
SHOWN = {"adcc": ("ADCC (mean per image)", True), "average_drop": ("Average Drop", False),
         "increase": ("Increase in Confidence", True), "coherency": ("Coherency", True),
         "complexity": ("Complexity", False), "insertion": ("Insertion AUC", True), "deletion": ("Deletion AUC", False),
         "pointing": ("Pointing game", True), "energy": ("Energy pointing", True),
         "box_hit": ("Box accuracy (IoU ≥ threshold)", True), "box_iou": ("Box IoU (mean)", True),
         "energy_baseline": ("Energy of a uniform map (baseline)", None),
         "road_morf": ("ROAD MoRF (Δ probability)", False), "road_lerf": ("ROAD LeRF (Δ probability)", True),
         "road": ("ROAD combined", True), "arcc": ("ARCC", True)}


def write_csv(path: Path, rows, columns: tuple[str, ...] = COLUMNS) -> None:
    """metrics.csv: the header and one line per row (the columns a row lacks are empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue())


def csv_rows(path: Path):
    """metrics.csv's rows, as strings."""
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def per_target_csv_rows(rows: list[dict]) -> list[dict]:
    """A detector's or segmenter's rows.jsonl rows as metrics.csv has them: explained targets only (an image
    without any has one row of method None), the flags as 0/1."""
    flags = ("class_agnostic", "degenerate", "uniform", "baseline")
    return [{**r, **{flag: int(bool(r.get(flag))) for flag in flags}} for r in rows if r["method"] is not None]


def thumbnail_grid(out: Path, files, names: dict, methods) -> list[tuple[str, dict]]:
    """The report's grid: (image name, method → thumbnail PNG) for the images that have thumbnails."""
    grid = []
    for image in files:
        paths = {m: out / thumbnail_name(names[image], m) for m in methods}
        pngs = {m: path.read_bytes() for m, path in paths.items() if path.exists()}
        if pngs:
            grid.append((names[image], pngs))
    return grid


def per_target_writer(summary: dict, protocol: dict, methods, baselines, columns, means, shown: dict, unit: str,
                      grid: int) -> Callable:
    """A detector's or segmenter's `Job.write`: rows.jsonl and metrics.csv after every batch; at the end
    `summary` filled (means per method and baseline with intervals, over `unit`, and the `protocol`), summary.json,
    the intervals' CSVs and index.html with the first `grid` images' thumbnails. `columns`: metrics.csv's."""
    def write(run, final: bool) -> None:
        write_atomically(run.out / ROWS_NAME, "".join(json.dumps(r) + "\n" for r in run.rows))
        write_csv(run.out / CSV_NAME, per_target_csv_rows(run.rows), columns)
        if not final:
            return
        summary.update(methods=means_per_method(run.rows, methods, means, unit),
                       baselines=means_per_method(run.rows, baselines, means, unit),
                       **uncertainty(run.rows, methods, baselines, {c: chart[1] for c, chart in shown.items()}),
                       images=len(run.found.files), protocol=protocol,
                       degenerate=degenerate_counts([r for r in run.rows if not r.get("baseline")], methods),
                       skipped=run.skipped, errors=run.errors, redone=run.redone)
        write_atomically(run.out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        write_uncertainty_csvs(run.out, summary)
        write_per_target_page(run.out, summary, thumbnail_grid(run.out, run.found.files[:grid], run.names,
                                                               methods), methods, shown, unit)
    return write


def write_per_target_page(out: Path, summary: dict, grid, methods, shown: dict, unit: str) -> None:
    """index.html of a detector's or segmenter's audit, drawn by the classifier audit's writer from its summary
    (means per method and baseline with their counts as ``<column>_n``, intervals, paired comparisons)."""
    def means(group: dict) -> dict:
        return {m: {k: v for k, v in found.items() if not k.endswith("_n")} for m, found in group.items()}

    everything = {**summary["methods"], **summary["baselines"]}
    counts = {m: {k[:-2]: v for k, v in found.items() if k.endswith("_n")} for m, found in everything.items()}
    view = {"methods": means(summary["methods"]), "baselines": means(summary["baselines"]), "counts": counts,
            "intervals": summary["intervals"], "paired": summary["paired"], "bootstrap": summary["bootstrap"],
            "protocol": summary["protocol"], "errors": summary["errors"], "skipped": summary["skipped"],
            "degenerate": summary["degenerate"]}
    write_html(out, view, grid, methods, shown=shown, unit=unit)


def recorded_protocol(bundle, methods) -> dict:
    """What every task's audit records in its protocol beside its settings: where the model is cut, its graphs'
    hashes, its preprocessing (and where its mean, std and scale come from, `Bundle.normalisation`; a detector's are
    fixed), the package's release, and which methods are class-agnostic (their one map is scored for whatever class
    the others explain)."""
    from ..methods.registry import class_agnostic
    from ..runs import bundle_hashes
    from ..version import __version__

    return {"layer": bundle.layers, "graphs": bundle_hashes(bundle), "preprocessing": bundle.preprocessing.to_dict(),
            **({"normalisation": bundle.normalisation or "not recorded"} if bundle.task != "detection" else {}),
            "cam_infer": __version__, "class_agnostic": [m for m in methods if class_agnostic(m)]}


def degenerate_counts(rows, methods) -> dict:
    """Per method with constant (``degenerate``) maps: how many of its rows had one, of how many. They are scored
    as constant maps (they drop nothing and point nowhere), so a mean over many of them says more of the maps'
    rounding than of the method."""
    counts = {m: [0, 0] for m in methods}
    for row in rows:
        if row.get("method") in counts:
            counts[row["method"]][1] += 1
            counts[row["method"]][0] += str(row.get("degenerate", "")).lower() in ("1", "true")
    return {m: {"degenerate": n, "of": total} for m, (n, total) in counts.items() if n}


def degenerate_line(summary: dict) -> str | None:
    """The one line that says which methods' means include constant maps, and how many."""
    counts = summary.get("degenerate") or {}
    if not counts:
        return None
    shown = ", ".join(f"{m} {c['degenerate']} of {c['of']}" for m, c in counts.items())
    return f"constant (degenerate) maps, scored as constant in the means: {shown} (the degenerate column of {CSV_NAME})"


def check_grid(grid) -> None:
    """The report's thumbnail count: a whole number from 0."""
    if not is_whole_number(grid) or grid < 0:
        raise CamInferError(f"grid (the images shown in index.html) must be a whole number from 0, not {grid!r}")


def check_tolerance(tolerance) -> None:
    """The pointing game's tolerance: a finite number of pixels from 0."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.number)) or \
            not np.isfinite(tolerance) or tolerance < 0:
        raise CamInferError(f"tolerance (pixels around the box for the pointing game) must be a finite number from 0, "
                            f"not {tolerance!r}")


def means_per_method(rows: list[dict], methods, columns, counted: str) -> dict:
    """Per method: how many rows it has (under the name `counted`) and the mean of every column over the rows that
    have it, with that number of rows as `<column>_n` (a detector's or a segmenter's rows.jsonl)."""
    out = {}
    for m in methods:
        own = [r for r in rows if r.get("method") == m]
        means = {counted: len(own)}
        for column in columns:
            values = [r[column] for r in own if column in r]
            if values:
                means[column] = float(np.mean(values))
                means[f"{column}_n"] = len(values)
        out[m] = means
    return out


def closing_lines(summary: dict, out, files: str) -> list[str]:
    """An audit's last lines: the methods with constant maps, the images redone because they changed since the last
    run, and where the report is."""
    lines = [line] if (line := degenerate_line(summary)) else []
    if summary.get("redone"):
        lines.append(f"redid {len(summary['redone'])} image(s) that changed since the last run, e.g. "
                     f"{summary['redone'][0]}")
    lines.append(f"report: {Path(out) / HTML_NAME} ({files})")
    return lines


def summarise(rows, methods, protocol: dict, errors: list, baselines=()) -> dict:
    """Per-method (and per-baseline) means over the rows (metrics.csv's) that have each column, ADCC of the
    means, and the bootstrap intervals and paired comparisons of every shown column (`cam_infer.audit.intervals`)."""
    rows = list(rows)
    names = [*methods, *baselines]
    sums = {m: {} for m in names}
    counts = {m: {} for m in names}
    images = {m: 0 for m in names}
    for row in rows:
        method = row["method"]
        if method not in sums:
            continue
        images[method] += 1
        for column in SHOWN:
            if row.get(column, "") != "":
                sums[method][column] = sums[method].get(column, 0.0) + float(row[column])
                counts[method][column] = counts[method].get(column, 0) + 1
    per_name = {}
    for m in names:
        means = {c: sums[m][c] / counts[m][c] for c in sums[m]}
        if {"coherency", "complexity", "average_drop"} <= set(means):
            means["adcc_of_means"] = float(adcc(means["coherency"], means["complexity"], means["average_drop"]))
        per_name[m] = {"images": images[m], **means}
    directions = {c: higher for c, (_, higher) in SHOWN.items()}
    return {"methods": {m: per_name[m] for m in methods}, "baselines": {b: per_name[b] for b in baselines},
            "counts": counts, **uncertainty(rows, methods, baselines, directions), "protocol": protocol,
            "degenerate": degenerate_counts(rows, methods), "errors": errors, "notes": NOTES}


NOTES = {"adcc_of_means": "ADCC of the dataset means of coherency, complexity and average drop "
                          "(how published tables report it); 'adcc' is the mean of per-image ADCC",
         "box_hit": "fraction of images whose thresholded-map box has IoU >= iou_threshold with a "
                    "ground-truth box of the explained class",
         "counts": "per method and metric, the number of images its mean is taken over (images "
                   "without boxes of the explained class, or with masks without a pixel of it, have no "
                   "localisation metrics)",
         "baselines": "maps that know nothing of the model, scored by the same metric code (cam_infer.audit.baselines):"
                      " a method must beat the best of them",
         "intervals": "per method or baseline and metric: the mean with its expanded percentile bootstrap 95 % "
                      "interval (Hesterberg 2015)",
         "paired": "per metric: each method against the best baseline, then every pair of methods: the mean of "
                   "A - B over the images both scored, its 95 % interval; different when it excludes 0 over at least "
                   f"{VERDICT_MIN_IMAGES} images"}


def write_uncertainty_csvs(out: Path, summary: dict) -> None:
    """summary.csv: one line per method or baseline and metric (mean, interval); paired.csv: one line per
    comparison."""
    baselines = set(summary.get("baselines", {}))
    lines = [{"name": name, "baseline": int(name in baselines), "metric": column, **found}
             for name, columns in summary["intervals"].items() for column, found in columns.items()]
    _write_table(out / SUMMARY_CSV, lines, ("name", "baseline", "metric", "n", "mean", "low", "high"))
    pairs = [{"metric": column, **pair, "b_baseline": int(pair["b"] in baselines), "different": int(pair["different"])}
             for column, compared in summary["paired"].items() for pair in compared]
    _write_table(out / PAIRED_CSV, pairs, ("metric", "a", "b", "b_baseline", "n", "mean", "low", "high", "different"))


def _write_table(path: Path, lines, columns) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(lines)
    write_atomically(path, buffer.getvalue())


def skipped_metrics_line(metrics) -> str:
    """The one line saying which default metrics were not measured, and why."""
    return f"not measured: {', '.join(metrics)} (localisation metrics need ground-truth boxes: give --boxes FILE)"


@dataclass
class Report:
    """What a section of index.html is drawn from."""

    out: Path
    summary: dict
    grid: list                      # (image name, method → thumbnail PNG)
    methods: list
    shown: dict                     # column → (title, higher is better; None: a reference, tabled, not charted)
    unit: str                       # what a method's count in summary["methods"] counts

    @property
    def baselines(self) -> list:
        return list(self.summary.get("baselines", {}))

    @property
    def rows(self) -> dict:
        """name → its means, the methods' then the baselines'."""
        return {**self.summary["methods"], **self.summary.get("baselines", {})}

    @property
    def columns(self) -> list:
        """The shown columns some method or baseline has."""
        return [c for c in self.shown if any(c in means for means in self.rows.values())]


Section = Callable[[Report], str]        # the section's HTML ("" to leave it out)


def add_column(name: str, title: str, higher_is_better: bool | None) -> None:
    """A metric column in every classifier audit's table, charts, intervals and comparisons (metrics.csv's
    column `name`; `higher_is_better` None: a reference, tabled, not charted nor compared)."""
    SHOWN[name] = (title, higher_is_better)


def add_section(name: str, render: Section, before: str = "maps") -> None:
    """A section of index.html, drawn by `render(report)`, placed before the section `before`."""
    at = next((i for i, (n, _) in enumerate(SECTIONS) if n == before), len(SECTIONS))
    SECTIONS.insert(at, (name, render))


PAGE_STYLE = """body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 24px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } th.name { text-align: left; font-weight: normal; max-width: 200px;
  overflow-wrap: anywhere; }"""                 # the tables of every report page (audit, diff)


def write_html(out: Path, summary: dict, grid: list[tuple[str, dict]], methods, shown: dict | None = None,
               unit: str = "images") -> Path:
    """index.html: its sections (`SECTIONS`: summary table, bar charts with error bars, paired differences,
    thumbnails, protocol), all inline. `shown`: column → (title, higher is better; None: a reference) (default:
    the classifier's); `unit`: what a method's count in summary["methods"] counts."""
    shown = {"adcc_of_means": ("ADCC (of means)", True), **SHOWN} if shown is None else shown
    report = Report(out, summary, grid, list(methods), shown, unit)
    per_method = summary["methods"]
    page = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>cam-infer audit</title>
<style>
{PAGE_STYLE}
tr.baseline th, tr.baseline td {{ color: #555; font-style: italic; background: #fafafa; }}
small.ci {{ color: #666; white-space: nowrap; }} .paired th.name {{ white-space: nowrap; }} .real {{ font-weight: bold; color: #060; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 16px; }} .chart {{ border: 1px solid #ddd; padding: 8px; }}
.grid td {{ padding: 2px; }} .grid img {{ display: block; width: 128px; }} .err {{ color: #a00; }}
</style></head><body>
<h1>cam-infer audit</h1>
<p>{html.escape(str(summary['protocol'].get('bundle', '')))} · {len(methods)} methods ·
{max((per_method[m][unit] for m in methods), default=0)} {unit}</p>{_notices(summary)}
{"".join(render(report) for _, render in SECTIONS)}
</body></html>
"""
    path = out / HTML_NAME
    write_atomically(path, page)
    return path


def _notices(summary: dict) -> str:
    errors = (f"<p class=err>{len(summary['errors'])} image(s) could not be read and were skipped "
              f"(listed in {ERRORS_NAME}).</p>" if summary["errors"] else "")
    if line := degenerate_line(summary):
        errors += f"<p class=err>{html.escape(line)}.</p>"
    if summary.get("skipped_metrics"):
        errors += f"<p>{html.escape(skipped_metrics_line(summary['skipped_metrics']))}.</p>"
    skipped = summary.get("skipped", [])
    if skipped:
        errors += (f"<p>{len(skipped)} file(s) in the folders are not images and were skipped: "
                   f"{html.escape(', '.join(skipped[:10]))}{' ...' if len(skipped) > 10 else ''} "
                   f"(all in {SUMMARY_NAME}).</p>")
    return errors


def summary_section(report: Report) -> str:
    """The table: a line per method, then per baseline (marked); each mean with its 95 % interval."""
    columns, unit, counts = report.columns, report.unit, report.summary.get("counts", {})
    intervals = report.summary.get("intervals", {})
    head = "".join(f"<th>{html.escape(report.shown[c][0])}{_arrow(report.shown[c][1])}</th>" for c in columns)
    body = ""
    for name, means in report.rows.items():
        baseline = name in report.baselines
        shown_name = f"{html.escape(name)} <small>(baseline)</small>" if baseline else html.escape(name)
        body += (f"<tr{' class=baseline' if baseline else ''}><th>{shown_name}</th><td>{means.get(unit, '–')}</td>"
                 + "".join(f"<td>{_cell(means.get(c))}{_count(counts.get(name, {}).get(c), means.get(unit))}"
                           f"{_ci(intervals.get(name, {}).get(c))}</td>" for c in columns) + "</tr>")
    return (f"<h2>Summary (means over {unit} with their 95 % bootstrap intervals; n = {unit} a mean is over, "
            f"when not all; baselines in italics)</h2>\n<table class=summary><tr><th>method</th><th>{unit}</th>"
            f"{head}</tr>{body}</table>")


def charts_section(report: Report) -> str:
    """A bar chart per metric with a direction, each bar with its interval's error bar; baselines in grey."""
    intervals = report.summary.get("intervals", {})
    charts = "".join(_bar_chart(report.shown[c][0], report.shown[c][1],
                                {m: means.get(c) for m, means in report.rows.items()},
                                {m: intervals.get(m, {}).get(c) for m in report.rows}, set(report.baselines))
                     for c in report.columns if report.shown[c][1] is not None)
    return f"<h2>Per metric (bars: means; whiskers: 95 % intervals)</h2><div class=charts>{charts}</div>"


def paired_section(report: Report) -> str:
    """A line per comparison (each method against the best baseline, then every pair of methods), a column per
    metric: the mean of A − B with its interval, bold and marked when the interval excludes 0."""
    paired = report.summary.get("paired", {})
    if not paired:
        return ""
    baselines = set(report.baselines)
    lines: dict = {}
    for column, compared in paired.items():
        for pair in compared:
            against = "the best baseline" if pair["b"] in baselines else pair["b"]
            lines.setdefault((pair["a"], against), {})[column] = pair
    columns = list(paired)
    head = "".join(f"<th>{html.escape(report.shown.get(c, (c,))[0])}</th>" for c in columns)
    body = "".join(f"<tr><th class=name>{html.escape(a)} − {html.escape(b)}</th>"
                   + "".join(_difference(cells.get(c), baselines) for c in columns) + "</tr>"
                   for (a, b), cells in lines.items())
    return (f"<h2>Paired differences (A − B per {report.unit[:-1]}: mean and 95 % interval; "
            f"<b class=real>bold ≠</b>: different, the interval excludes 0 over at least {VERDICT_MIN_IMAGES} "
            f"{report.unit})</h2>\n"
            f"<table class=paired><tr><th>A − B</th>{head}</tr>{body}</table>")


def _difference(pair, baselines) -> str:
    if pair is None:
        return "<td>–</td>"
    against = f"<br><small>vs {html.escape(pair['b'])}</small>" if pair["b"] in baselines else ""
    mark = " class=real" if pair["different"] else ""
    return (f"<td{mark}>{'≠ ' if pair['different'] else ''}{pair['mean']:+.3f}"
            f"<br><small class=ci>[{pair['low']:+.3f}, {pair['high']:+.3f}]</small>{against}</td>")


def maps_section(report: Report) -> str:
    methods = report.methods
    thumbs_head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    thumbs = "".join(
        f"<tr><th class=name>{html.escape(name)}</th>"
        + "".join(f"<td><img alt='{html.escape(name)} {html.escape(m)}' src='data:image/png;base64,"
                  f"{base64.b64encode(pngs[m]).decode()}'></td>" if m in pngs else "<td></td>" for m in methods)
        + "</tr>" for name, pngs in report.grid)
    return (f"<h2>Maps ({len(report.grid)} images)</h2>\n"
            f"<table class=grid><tr><th>image</th>{thumbs_head}</tr>{thumbs}</table>")


def protocol_section(report: Report) -> str:
    protocol = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(json.dumps(v))}</li>"
                       for k, v in report.summary["protocol"].items())
    bootstrap = report.summary.get("bootstrap")
    if bootstrap:
        protocol += f"<li><b>bootstrap</b>: {html.escape(json.dumps(bootstrap))}</li>"
    return f"<h2>Protocol</h2><ul>{protocol}</ul>"


# index.html's sections in order: (name, render); `add_section` puts another one in
SECTIONS: list[tuple[str, Section]] = [("summary", summary_section), ("charts", charts_section),
                                       ("paired", paired_section), ("maps", maps_section),
                                       ("protocol", protocol_section)]


def _arrow(higher_better) -> str:
    return "" if higher_better is None else " ↑" if higher_better else " ↓"


def _cell(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _ci(found) -> str:
    return "" if not found else f"<br><small class=ci>[{found['low']:.3f}, {found['high']:.3f}]</small>"


def _count(n, images) -> str:
    """How many images a mean is over, shown when it is not all of them."""
    return "" if n is None or n == images else f" <small class=n>(n={n})</small>"


def _bar_chart(title: str, higher_better: bool, values: dict, intervals: dict | None = None,
               baselines=frozenset()) -> str:
    """A horizontal bar per method (baselines grey), scaled to the largest value or interval bound, with the
    interval as a whisker; inline SVG."""
    intervals = intervals or {}
    known = {m: v for m, v in values.items() if v is not None and math.isfinite(v)}
    bounds = [abs(b) for i in intervals.values() if i for b in (i["low"], i["high"]) if math.isfinite(b)]
    top = max([abs(v) for v in known.values()] + bounds + [1e-12])
    width, row = 220, 22
    bars = []
    for i, (m, v) in enumerate(values.items()):
        y = 24 + i * row
        length = 0 if m not in known else width * abs(known[m]) / top
        colour = "#aaa" if m in baselines else "#4a7bd0"
        bars.append(f"<text x=0 y={y + 14} font-size=12>{html.escape(m)}</text>"
                    f"<rect x=120 y={y + 3} width={length:.1f} height=14 fill='{colour}'></rect>")
        found = intervals.get(m)
        end = length
        if found and math.isfinite(found["low"]) and math.isfinite(found["high"]):
            low, high = (120 + width * abs(found[k]) / top for k in ("low", "high"))
            low, high = min(low, high), max(low, high)
            end = max(end, high - 120)
            bars.append(f"<path class=whisker d='M{low:.1f} {y + 10}H{high:.1f}M{low:.1f} {y + 5}V{y + 15}"
                        f"M{high:.1f} {y + 5}V{y + 15}' stroke='#222' fill='none'></path>")
        bars.append(f"<text x={124 + end:.1f} y={y + 14} font-size=11>{_cell(known.get(m))}</text>")
    height = 30 + row * len(values)
    label = f"{title} ({'higher' if higher_better else 'lower'} is better)"
    return (f"<svg class=chart role=img aria-label='{html.escape(label)}' width={120 + width + 70} height={height}>"
            f"<text x=0 y=14 font-size=13 font-weight=bold>{html.escape(label)}</text>{''.join(bars)}</svg>")
