"""`cam-infer explain` over folders, for every task: overlays and `results.json`, written by the driver
(`driver.run_job`) from the rows the task's work returns (one record per image and method)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..outputs import write_atomically
from .driver import Job, Run, run_job
from .folders import skipped_line
from .map_store import FOLDER as MAPS

RESULTS = "results.json"


@dataclass
class Results:
    """`results.json`: the run's settings, one record per (image, method), and unreadable images."""

    path: Path
    settings: dict
    records: list
    errors: list
    skipped: list = field(default_factory=list)
    redone: list = field(default_factory=list)     # images explained before whose file has changed since

    @classmethod
    def of(cls, run: Run, settings: dict) -> "Results":
        return cls(run.out / RESULTS, settings, run.rows, run.errors, run.skipped, run.redone)

    def summary_lines(self, methods: int, out) -> list[str]:
        """What `cam-infer explain` prints after a run."""
        lines = []
        if self.redone:
            lines.append(f"redid {len(self.redone)} image(s) that changed since the last run, e.g. {self.redone[0]}")
        if self.skipped:
            lines.append(skipped_line(self.skipped, 5, str(self.path)))
        images = len({r["image"] for r in self.records})
        kind = "maps" if self.settings.get("overlays") == "none" else "overlays"
        lines.append(f"{len(self.records)} {kind} ({images} images x {methods} methods) in {out}; "
                     f"results in {self.path}")
        return lines

    def save(self) -> None:
        write_atomically(self.path, json.dumps({"settings": self.settings, "results": self.records,
                                                "errors": self.errors, "skipped": self.skipped}, indent=1))


def picture_of(row: dict) -> str:
    """The file a record's picture is in: its overlay, or its map (a PNG, or the array store's shard) when the run
    wrote maps alone."""
    return row["overlay"] if "overlay" in row else row["map"]


def pictures_of(row: dict) -> list[str]:
    """Every file a record names: its picture and its targets' (a detector's detections, a segmenter's classes)."""
    found = [row[key] for key in ("overlay", "map") if isinstance(row.get(key), str)]
    for nested in (*row.get("detections", ()), *row.get("targets", ())):
        found += pictures_of(nested)
    return found


def explain_job(paths, out, settings: dict, methods, work, runner, *, batch_size: int = 1, restart: bool = False,
                progress: bool | None = None, report=None, cost=None, effective=lambda settings: settings) -> Results:
    """Explain the images of `paths` with `work` (a task's: a batch → its records and pictures); every
    record names its "overlay" (or its "map"), and a record whose picture is gone is redone. `report(cost())`
    before a run with work to do. `settings["options"]` holds each method's options: a rerun compares them as they
    take effect (`effective(settings)`: the methods' defaults filled in), and may add methods (only they run, over
    every image; the results keep both)."""
    settings = json.loads(json.dumps(settings))
    job = Job("explain", "results of a run", settings, tuple(methods), work,
              write=lambda run, final: Results.of(run, settings).save(), batch_size=batch_size, per_method=True,
              methods_in="options", effective=effective,
              keep=lambda out, row: (out / picture_of(row)).is_file(), clear=(RESULTS, MAPS), files_of=pictures_of,
              cost=cost)
    run = run_job(job, paths, out, runner, restart=restart, progress=progress, report=report)
    return Results.of(run, settings)
