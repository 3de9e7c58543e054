"""What an audit leaves in its folder: metrics.csv (rewritten as images are done), summary.json
(per-method means and the protocol) and index.html (one self-contained page)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

from ..metrics import adcc
from ..outputs import write_atomically
from .work import COLUMNS

CSV_NAME, SUMMARY_NAME, HTML_NAME, ERRORS_NAME = "metrics.csv", "summary.json", "index.html", "errors.json"
# column → (shown as, higher is better)
SHOWN = {"adcc": ("ADCC (mean per image)", True), "average_drop": ("Average Drop", False),
         "increase": ("Increase in Confidence", True), "coherency": ("Coherency", True),
         "complexity": ("Complexity", False), "insertion": ("Insertion AUC", True), "deletion": ("Deletion AUC", False),
         "pointing": ("Pointing game", True), "energy": ("Energy pointing", True),
         "box_hit": ("Box accuracy (IoU ≥ threshold)", True), "box_iou": ("Box IoU (mean)", True),
         "energy_baseline": ("Energy of a uniform map (baseline)", False)}


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


def summarise(rows, methods, protocol: dict, errors: list) -> dict:
    """Per-method means over the rows (metrics.csv's) that have each column, and ADCC of the means."""
    sums = {m: {} for m in methods}
    counts = {m: {} for m in methods}
    images = {m: 0 for m in methods}
    for row in rows:
        method = row["method"]
        if method not in sums:
            continue
        images[method] += 1
        for column in SHOWN:
            if row.get(column, "") != "":
                sums[method][column] = sums[method].get(column, 0.0) + float(row[column])
                counts[method][column] = counts[method].get(column, 0) + 1
    per_method = {}
    for m in methods:
        means = {c: sums[m][c] / counts[m][c] for c in sums[m]}
        if {"coherency", "complexity", "average_drop"} <= set(means):
            means["adcc_of_means"] = float(adcc(means["coherency"], means["complexity"], means["average_drop"]))
        per_method[m] = {"images": images[m], **means}
    return {"methods": per_method, "counts": counts, "protocol": protocol, "errors": errors,
            "notes": {"adcc_of_means": "ADCC of the dataset means of coherency, complexity and average drop "
                                       "(how published tables report it); 'adcc' is the mean of per-image ADCC",
                      "box_hit": "fraction of images whose thresholded-map box has IoU >= iou_threshold with a "
                                 "ground-truth box of the explained class",
                      "counts": "per method and metric, the number of images its mean is taken over (images "
                                "without boxes of the explained class have no localisation metrics)"}}


def skipped_metrics_line(metrics) -> str:
    """The one line saying which default metrics were not measured, and why."""
    return f"not measured: {', '.join(metrics)} (localisation metrics need ground-truth boxes: give --boxes FILE)"


def write_html(out: Path, summary: dict, grid: list[tuple[str, dict]], methods, shown: dict | None = None,
               unit: str = "images", sections: str = "") -> Path:
    """index.html: summary table, one bar chart per metric, thumbnails (images × methods), all inline.
    `shown`: column → (title, higher is better; None: a reference, tabled, not charted) (default: the classifier's);
    `unit`: what a method's count in summary["methods"] counts; `sections`: more HTML before the protocol."""
    per_method = summary["methods"]
    shown = {"adcc_of_means": ("ADCC (of means)", True), **SHOWN} if shown is None else shown
    columns = [c for c in shown if any(c in per_method[m] for m in methods)]
    head = "".join(f"<th>{html.escape(shown[c][0])}{_arrow(shown[c][1])}</th>" for c in columns)
    counts = summary.get("counts", {})
    body = "".join(
        f"<tr><th>{html.escape(m)}</th><td>{per_method[m][unit]}</td>"
        + "".join(f"<td>{_cell(per_method[m].get(c))}{_count(counts.get(m, {}).get(c), per_method[m][unit])}</td>"
                  for c in columns) + "</tr>" for m in methods)
    charts = "".join(_bar_chart(shown[c][0], shown[c][1], {m: per_method[m].get(c) for m in methods})
                     for c in columns if shown[c][1] is not None)
    thumbs_head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    thumbs = "".join(
        f"<tr><th class=name>{html.escape(name)}</th>"
        + "".join(f"<td><img alt='{html.escape(name)} {html.escape(m)}' src='data:image/png;base64,"
                  f"{base64.b64encode(pngs[m]).decode()}'></td>" if m in pngs else "<td></td>" for m in methods)
        + "</tr>" for name, pngs in grid)
    protocol = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(json.dumps(v))}</li>"
                       for k, v in summary["protocol"].items())
    errors = (f"<p class=err>{len(summary['errors'])} image(s) could not be read and were skipped "
              f"(listed in {ERRORS_NAME}).</p>" if summary["errors"] else "")
    if summary.get("skipped_metrics"):
        errors += f"<p>{html.escape(skipped_metrics_line(summary['skipped_metrics']))}.</p>"
    skipped = summary.get("skipped", [])
    if skipped:
        errors += (f"<p>{len(skipped)} file(s) in the folders are not images and were skipped: "
                   f"{html.escape(', '.join(skipped[:10]))}{' ...' if len(skipped) > 10 else ''} "
                   f"(all in {SUMMARY_NAME}).</p>")
    page = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>cam-infer audit</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 24px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} th.name {{ text-align: left; font-weight: normal; max-width: 200px;
  overflow-wrap: anywhere; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 16px; }} .chart {{ border: 1px solid #ddd; padding: 8px; }}
.grid td {{ padding: 2px; }} .grid img {{ display: block; width: 128px; }} .err {{ color: #a00; }}
</style></head><body>
<h1>cam-infer audit</h1>
<p>{html.escape(str(summary['protocol'].get('bundle', '')))} · {len(methods)} methods ·
{max((per_method[m][unit] for m in methods), default=0)} {unit}</p>{errors}
<h2>Summary (means over {unit}; n = {unit} a mean is over, when not all)</h2>
<table><tr><th>method</th><th>{unit}</th>{head}</tr>{body}</table>
<h2>Per metric</h2><div class=charts>{charts}</div>
<h2>Maps ({len(grid)} images)</h2>
<table class=grid><tr><th>image</th>{thumbs_head}</tr>{thumbs}</table>{sections}
<h2>Protocol</h2><ul>{protocol}</ul>
</body></html>
"""
    path = out / HTML_NAME
    write_atomically(path, page)
    return path


def _arrow(higher_better) -> str:
    return "" if higher_better is None else " ↑" if higher_better else " ↓"


def _cell(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _count(n, images: int) -> str:
    """How many images a mean is over, shown when it is not all of them."""
    return "" if n is None or n == images else f" <small class=n>(n={n})</small>"


def _bar_chart(title: str, higher_better: bool, values: dict) -> str:
    """A horizontal bar per method, scaled to the largest value; inline SVG."""
    known = {m: v for m, v in values.items() if v is not None and math.isfinite(v)}
    top = max([abs(v) for v in known.values()] + [1e-12])
    width, row = 220, 22
    bars = []
    for i, (m, v) in enumerate(values.items()):
        y = 24 + i * row
        length = 0 if m not in known else width * abs(known[m]) / top
        bars.append(f"<text x=0 y={y + 14} font-size=12>{html.escape(m)}</text>"
                    f"<rect x=120 y={y + 3} width={length:.1f} height=14 fill='#4a7bd0'></rect>"
                    f"<text x={124 + length:.1f} y={y + 14} font-size=11>{_cell(known.get(m))}</text>")
    height = 30 + row * len(values)
    label = f"{title} ({'higher' if higher_better else 'lower'} is better)"
    return (f"<svg class=chart role=img aria-label='{html.escape(label)}' width={120 + width + 60} height={height}>"
            f"<text x=0 y=14 font-size=13 font-weight=bold>{html.escape(label)}</text>{''.join(bars)}</svg>")
