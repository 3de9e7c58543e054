"""What a diff leaves in its folder: diff.csv (one row per image and method, rewritten as images are done),
summary.json (means with expanded percentile bootstrap 95 % intervals, paired method comparisons, the images that
drifted most) and index.html (one self-contained page: those images side by side, A | B)."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import asdict
from itertools import combinations
from pathlib import Path

from ..audit.report import PAGE_STYLE, write_csv
from ..metrics.uncertainty import VERDICT_MIN_IMAGES, bootstrap_interval, differs, paired_difference
from ..outputs import write_atomically
from .work import COLUMNS, SIMILARITIES

CSV_NAME, SUMMARY_NAME, HTML_NAME, ERRORS_NAME = "diff.csv", "summary.json", "index.html", "errors.json"
SHOWN = {"spearman": "Spearman (ranks)", "ssim": "SSIM", "top_iou": "IoU of the top 20 %"}
DRIFTED = 20                  # images listed in summary.json, most drifted first
NEGLIGIBLE = 1e-6             # a paired difference of Spearman within this of 0 is rounding, not a difference: the
                              # maps of one model on ONNX Runtime and OpenVINO differ by ~1e-10 per image


def write_rows(path: Path, rows) -> None:
    """diff.csv: the header and one line per (image, method)."""
    write_csv(path, rows, COLUMNS)


def summarise(rows: list[dict], methods, protocol: dict, errors: list, drifted: int = DRIFTED) -> dict:
    """Per image: top-1 agreement and probability shift (B − A); per method: the mean of each similarity with its
    bootstrap 95 % interval; per pair of methods: the paired difference of their Spearman; the most drifted images
    (lowest Spearman, averaged over the methods; the first `drifted`)."""
    per_image = _per_image(rows)
    per_method = {m: [r for r in rows if r["method"] == m] for m in methods}
    spearman_of = {m: {r["image"]: r["spearman"] for r in per_method[m] if r["spearman"] is not None}
                   for m in methods}
    paired = {}
    for m1, m2 in combinations(methods, 2):
        both = [image for image in spearman_of[m1] if image in spearman_of[m2]]
        difference = paired_difference([spearman_of[m1][i] for i in both], [spearman_of[m2][i] for i in both])
        paired[f"{m1} - {m2}"] = {**_interval(difference), "images": len(both),
                                  "differs": _differs(difference, len(both))}
    return {
        "images": len(per_image),
        "top1_agreement": _mean([r["top1_agree"] for r in per_image.values()]),
        "probability_shift": _mean([r["probability_shift"] for r in per_image.values()]),
        "absolute_probability_shift": _mean([abs(r["probability_shift"]) for r in per_image.values()]),
        "methods": {m: {"images": len(per_method[m]), "compared": len(spearman_of[m]),
                        **{k: _mean([r[k] for r in per_method[m] if r[k] is not None]) for k in SIMILARITIES},
                        "degenerate_a": sum(r["degenerate_a"] for r in per_method[m]),
                        "degenerate_b": sum(r["degenerate_b"] for r in per_method[m])} for m in methods},
        "paired_spearman": paired,
        "drifted": _drifted(rows, per_image)[:drifted],
        "protocol": protocol, "errors": errors,
        "notes": {"intervals": "mean, and the expanded percentile bootstrap 95 % interval of the mean over images "
                               "(Hesterberg 2015; 1000 resamples, seed 0)",
                  "probability_shift": "B's probability of the explained class minus A's, per image",
                  "compared": "images whose two maps are compared: a flat (degenerate) map on either side has no "
                              "ranking, so no similarity; those images are counted in degenerate_a/_b instead",
                  "paired_spearman": "per image, method 1's Spearman minus method 2's; 'differs' when the interval "
                                     f"excludes 0 by more than {NEGLIGIBLE:g} (one method's maps moved more than the "
                                     f"other's), over at least {VERDICT_MIN_IMAGES} images"},
    }


def _differs(interval, images: int) -> bool:
    """A paired difference is real when its interval excludes 0 by more than rounding, over at least
    `VERDICT_MIN_IMAGES` images (`metrics.uncertainty.differs`)."""
    return differs(interval, images, NEGLIGIBLE)


def _per_image(rows) -> dict:
    """The first row of every image (its top-1 and probability fields are the same in all its rows)."""
    out: dict = {}
    for row in rows:
        out.setdefault(row["image"], row)
    return out


def _drifted(rows, per_image: dict) -> list[dict]:
    """Images by the mean Spearman of their methods' maps, lowest (most drifted) first, after those whose map is flat
    on one side only; an image whose maps are the same on A and B (every similarity 1, or flat on both sides, for
    every method) and whose top-1 is too has not drifted, and is left out."""
    values: dict = {}
    for row in rows:
        values.setdefault(row["image"], {})[row["method"]] = {**{k: row[k] for k in SIMILARITIES}, "pair": row["pair"],
                                                              "flat": _flat_side(row)}
    mean = {image: _compared_spearman(by_method) for image, by_method in values.items()}
    first = {image: any(v["flat"] in ("A", "B") for v in by_method.values()) for image, by_method in values.items()}
    return [{"image": image, "spearman": mean[image], "top1_a": per_image[image]["top1_a"],
             "top1_b": per_image[image]["top1_b"], "methods": values[image]}
            for image in sorted(values, key=lambda image: (not first[image], 1.0 if mean[image] is None else
                                                           mean[image], image))
            if not _unchanged(values[image]) or per_image[image]["top1_a"] != per_image[image]["top1_b"]]


def _flat_side(row: dict) -> str:
    """Which side's map is flat (degenerate): "", "A", "B" or "A and B"."""
    return " and ".join(side for side in ("A", "B") if row[f"degenerate_{side.lower()}"])


def _compared_spearman(by_method: dict) -> float | None:
    """The mean Spearman of an image's compared maps (None: every method's map flat on a side). The drifted images
    are those whose map is flat on one side first (it became flat, or stopped being so), then by this, lowest first."""
    compared = [v["spearman"] for v in by_method.values() if v["spearman"] is not None]
    return sum(compared) / len(compared) if compared else None


def _unchanged(by_method: dict) -> bool:
    """Every similarity of every method's pair of maps is 1: the same maps (Spearman alone: the same ranking)."""
    return all(v["flat"] == "A and B" or all(v[k] == 1.0 for k in SIMILARITIES) for v in by_method.values())


def _mean(values) -> dict:
    return _interval(bootstrap_interval(values))


def _interval(interval) -> dict:
    """An Interval as JSON: NaN (no images) as null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(interval).items()}


def write_html(out: Path, summary: dict, grid: int, label=str) -> Path:
    """index.html: agreement and probability shift, per method its similarities with error bars, the paired
    comparisons, the `grid` most drifted images side by side (A | B per method), and the protocol; all inline.
    `label`: a class index → its name."""
    protocol = summary["protocol"]
    methods = list(summary["methods"])
    overall = "".join(f"<tr><th>{html.escape(title)}</th><td>{_shown(summary[key])}</td></tr>" for key, title in (
        ("top1_agreement", "top-1 agreement"), ("probability_shift", "probability shift of the class (B − A)"),
        ("absolute_probability_shift", "|probability shift|")))
    head = "".join(f"<th>{html.escape(title)} ↑</th>" for title in SHOWN.values())
    body = "".join(f"<tr><th>{html.escape(m)}</th><td>{_compared(summary['methods'][m])}</td>"
                   + "".join(f"<td>{_shown(summary['methods'][m][k])}</td>" for k in SHOWN) + "</tr>" for m in methods)
    charts = "".join(_interval_chart(title, {m: summary["methods"][m][k] for m in methods})
                     for k, title in SHOWN.items())
    paired = "".join(f"<tr><th>{html.escape(pair)}</th><td>{_shown(d)}</td><td>"
                     f"{_verdict(d)}"
                     f"</td></tr>" for pair, d in summary["paired_spearman"].items())
    paired = (f"<h2>Paired comparisons of Spearman (method 1 − method 2, per image)</h2><table><tr><th>pair</th>"
              f"<th>mean [95 % interval]</th><th>real difference</th></tr>{paired}</table>" if paired else "")
    drifted = "".join(_drifted_row(out, d, methods, label) for d in summary["drifted"][:grid]) or \
        f"<tr><td colspan={len(methods) + 2}>none: every image's maps and top-1 are the same on A and B</td></tr>"
    errors = (f"<p class=err>{len(summary['errors'])} image(s) could not be read and were skipped "
              f"(listed in {ERRORS_NAME}).</p>" if summary["errors"] else "")
    sides = "".join(f"<li><b>{side.upper()}</b>: {html.escape(protocol[side]['model'])} · "
                    f"{html.escape(protocol[side]['backend'])} · {html.escape(protocol[side]['precision'])} · layer "
                    f"{html.escape(str(protocol[side]['layer']))}</li>" for side in ("a", "b"))
    settings = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(json.dumps(v))}</li>"
                       for k, v in protocol.items() if k not in ("a", "b"))
    page = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>cam-infer diff</title>
<style>
{PAGE_STYLE}
.charts {{ display: flex; flex-wrap: wrap; gap: 16px; }} .chart {{ border: 1px solid #ddd; padding: 8px; }}
.pairs td {{ padding: 2px; text-align: center; }} .pairs img {{ display: block; }} .err {{ color: #a00; }}
small {{ color: #555; }}
</style></head><body>
<h1>cam-infer diff</h1>
<ul>{sides}</ul>
<p>{summary['images']} images · {len(methods)} methods · maps compared on {html.escape(protocol['compared_on'])};
the class explained: {html.escape(protocol['class'])}</p>{errors}
<h2>Predictions (mean [95 % bootstrap interval] over images)</h2>
<table>{overall}</table>
<h2>How alike the maps are (1: the same; mean [95 % interval])</h2>
<table><tr><th>method</th><th>images</th>{head}</tr>{body}</table>
<div class=charts>{charts}</div>
{paired}
<h2>The images whose explanation drifted most (A | B)</h2>
<table class=pairs><tr><th>image</th><th>top-1 A → B</th>{''.join(f'<th>{html.escape(m)}</th>' for m in methods)}</tr>
{drifted}</table>
<h2>Protocol</h2><ul>{settings}</ul>
</body></html>
"""
    path = out / HTML_NAME
    write_atomically(path, page)
    return path


def _verdict(pair: dict) -> str:
    if pair["differs"]:
        return "yes"
    return "no" if pair["images"] >= VERDICT_MIN_IMAGES else _too_few(pair["images"])


def _too_few(images: int) -> str:
    return f"cannot say ({images} of the {VERDICT_MIN_IMAGES} images a verdict needs)" if images else \
        "no image compared (flat maps)"


def _compared(method: dict) -> str:
    """The images a method's similarities are over, and those left out for a flat map."""
    left_out = method["images"] - method.get("compared", method["images"])
    return f"{method['images']}" + (f" <small>({left_out} with a flat map left out)</small>" if left_out else "")


def _shown(interval: dict) -> str:
    if interval["mean"] is None:
        return "–"
    return f"{interval['mean']:.3f} <small>[{interval['low']:.3f}, {interval['high']:.3f}]</small>"


def _drifted_row(out: Path, drifted: dict, methods, label) -> str:
    """One drifted image: its name, its top-1 on A and B, and per method the pair A | B with its similarities."""
    cells = []
    for m in methods:
        shown = drifted["methods"].get(m)
        picture = out / shown["pair"] if shown else None
        if picture is None or not picture.is_file():
            cells.append("<td></td>")
            continue
        data = base64.b64encode(picture.read_bytes()).decode()
        said = (f"flat map on {shown['flat']}" if shown.get("flat") else
                f"ρ {shown['spearman']:.2f} · SSIM {shown['ssim']:.2f} · IoU {shown['top_iou']:.2f}")
        cells.append(f"<td><img alt='{html.escape(drifted['image'])} {html.escape(m)} A | B' "
                     f"src='data:image/png;base64,{data}'><small>{said}</small></td>")
    a, b = drifted["top1_a"], drifted["top1_b"]
    top1 = html.escape(label(a)) + (" (same)" if a == b else f" → {html.escape(label(b))}")
    name = html.escape(drifted["image"])
    return f"<tr><th class=name title='{name}'>{html.escape(Path(drifted['image']).name)}</th><td>{top1}</td>" \
           f"{''.join(cells)}</tr>"


def _interval_chart(title: str, values: dict) -> str:
    """Each method's mean as a dot on a 0..1 axis with its 95 % interval as a bar; inline SVG."""
    width, row, left = 220, 22, 120
    marks = []
    for i, (m, v) in enumerate(values.items()):
        y = 44 + i * row
        marks.append(f"<text x=0 y={y + 4} font-size=12>{html.escape(m)}</text>")
        if v["mean"] is None:
            continue
        x = [left + width * min(1.0, max(0.0, v[k])) for k in ("low", "mean", "high")]
        marks.append(f"<line x1={x[0]:.1f} x2={x[2]:.1f} y1={y} y2={y} stroke='#4a7bd0' stroke-width=3></line>"
                     f"<circle cx={x[1]:.1f} cy={y} r=4 fill='#1d3f7a'></circle>"
                     f"<text x={left + width + 6} y={y + 4} font-size=11>{v['mean']:.3f}</text>")
    axis = (f"<line x1={left} x2={left + width} y1=30 y2=30 stroke='#999'></line>"
            f"<text x={left - 3} y=27 font-size=10>0</text><text x={left + width - 3} y=27 font-size=10>1</text>")
    height = 44 + row * len(values)
    return (f"<svg class=chart role=img aria-label='{html.escape(title)}' width={left + width + 50} height={height}>"
            f"<text x=0 y=12 font-size=13 font-weight=bold>{html.escape(title)}</text>{axis}{''.join(marks)}</svg>")
