"""Tasks: what differs between kinds of model (`base.Task`); everything else is shared by the `Explainer`.

    task_of(bundle)        # the Task class for the bundle's manifest ("task": classification | detection |
                           # segmentation)

classification.py (classes from the outputs, one batch per method call), detection.py (detections or
boxes, one image per method call, the cut set's levels), segmentation.py (a class over a region of pixels, one image
per method call, its targets as rows).
"""

from __future__ import annotations

from ..errors import CamInferError
from .base import Task, class_index
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassificationTask, DetectionTask, SegmentationTask)}


def task_of(bundle) -> type[Task]:
    """The Task class of the bundle's kind of model."""
    task = TASKS.get(bundle.task)
    if task is None:
        raise CamInferError(f"bundle '{bundle.path}' is a {bundle.task!r} model; this version of cam-infer explains "
                            f"{' and '.join(sorted(TASKS))} models (upgrade cam-infer, or re-split the model)")
    return task


__all__ = ["TASKS", "Task", "class_index", "task_of"]
