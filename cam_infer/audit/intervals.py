"""Intervals and paired comparisons of an audit's rows, for every audit (classifier, detector, masks).

For every row name (method or baseline) and metric column: the mean over the units (images, or detections)
that have the column, with its expanded percentile bootstrap 95 % interval (`cam_infer.metrics.uncertainty`,
B = 1000, seeded). For every metric with a direction: each method against the best baseline, then every pair of
methods, as the mean of the paired difference A − B over the units both scored, with its interval; "different" when
the interval excludes 0 over at least `VERDICT_MIN_IMAGES` (6) units (`uncertainty.differs`: with fewer, one sign
over every unit happens by chance often enough that any bootstrap interval would call it a difference).
"""

from __future__ import annotations

import math

from ..metrics.uncertainty import (DEFAULT_RESAMPLES, DEFAULT_SEED, VERDICT_MIN_IMAGES, bootstrap_interval, differs,
                                   paired_difference)

LEVEL = 0.95
BOOTSTRAP = {"kind": "expanded percentile (Hesterberg 2015)", "level": LEVEL, "resamples": DEFAULT_RESAMPLES,
             "seed": DEFAULT_SEED, "verdict_min_units": VERDICT_MIN_IMAGES}


def image_key(row) -> tuple:
    """What pairs two rows of different methods: the image (for a detector or a segmenter, the target's index) and
    the class scored (a class-agnostic map's region or detection class). Two methods are compared only where they
    score the same class: a class-agnostic method scores the top-1 where the others were asked for another class
    (``--target``), a difference of two classes."""
    scored = next((row[k] for k in ("class_id", "region_class_id", "detection_class_id") if k in row), None)
    return row["image"], row.get("index"), scored


def scores(rows, name: str, column: str, key=image_key) -> dict:
    """unit → the row's value of `column` for rows of `name` that have it (finite), in the units' order (so
    that the seeded resamples do not depend on the order the rows came in)."""
    out = {}
    for row in rows:
        if row.get("method") != name:
            continue
        value = row.get(column, "")
        if value is None or value == "":
            continue
        value = float(value)
        if math.isfinite(value):
            out[key(row)] = value
    return dict(sorted(out.items(), key=lambda item: _sortable(item[0])))


def _sortable(unit: tuple) -> tuple:
    return tuple((value is None, "" if value is None else value) for value in unit)


def _interval(values) -> dict:
    i = bootstrap_interval(values, level=LEVEL)
    return {"n": len(values), "mean": i.mean, "low": i.low, "high": i.high}


def intervals(rows, names, columns, key=image_key) -> dict:
    """name → column → {n, mean, low, high}, for the columns a name has values of."""
    out = {}
    for name in names:
        out[name] = {}
        for column in columns:
            values = list(scores(rows, name, column, key).values())
            if values:
                out[name][column] = _interval(values)
    return out


def best_baseline(found: dict, baselines, column: str, higher_is_better: bool) -> str | None:
    """The baseline with the best mean of `column` (`found`: `intervals`' result)."""
    means = {b: found[b][column]["mean"] for b in baselines if column in found.get(b, {})}
    if not means:
        return None
    return (max if higher_is_better else min)(means, key=means.get)


def comparisons(rows, methods, baselines, directions: dict, found: dict, key=image_key) -> dict:
    """column → [{a, b, n, mean (of A − B), low, high, different}]: each method against the column's best
    baseline, then every pair of methods. `directions`: column → higher is better (columns without one are
    references and not compared)."""
    out = {}
    for column, higher in directions.items():
        if higher is None:
            continue
        best = best_baseline(found, baselines, column, higher)
        pairs = [(m, best) for m in methods if best is not None]
        pairs += [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
        compared = [c for a, b in pairs if (c := _paired(rows, a, b, column, key)) is not None]
        if compared:
            out[column] = compared
    return out


def _paired(rows, a: str, b: str, column: str, key) -> dict | None:
    first, second = scores(rows, a, column, key), scores(rows, b, column, key)
    common = [k for k in first if k in second]
    if not common:
        return None
    i = paired_difference([first[k] for k in common], [second[k] for k in common], level=LEVEL)
    return {"a": a, "b": b, "n": len(common), "mean": i.mean, "low": i.low, "high": i.high,
            "different": differs(i, len(common))}


def uncertainty(rows, methods, baselines, directions: dict, key=image_key) -> dict:
    """What summary.json gets: ``intervals`` (every method and baseline, every column of `directions`),
    ``paired`` (`comparisons`) and ``bootstrap`` (how they were drawn)."""
    rows = list(rows)
    found = intervals(rows, [*methods, *baselines], directions, key)
    return {"intervals": found, "paired": comparisons(rows, list(methods), list(baselines), directions, found, key),
            "bootstrap": dict(BOOTSTRAP)}
