"""Former names of a detector's explainer, kept for existing code: `cam_infer.Explainer` explains detectors
(`cam_infer.tasks.detection`), `cam_infer.Explanation` holds their maps."""

from __future__ import annotations

from ..errors import CamInferError
from ..explainer import Explainer
from ..explanation import DetectionMap, Explanation
from .context import Crop, DetectionContext, WholeLevel

DetectionExplanation = Explanation


def DetectionExplainer(bundle, backend: str = "auto", device: str = "CPU", **backend_options) -> Explainer:
    """`Explainer` on a detector bundle (a classifier is refused)."""
    explainer = Explainer(bundle, backend=backend, device=device, **backend_options)
    if explainer.task.name != "detection":
        raise CamInferError(f"bundle '{explainer.bundle.path}' is a classifier; use Explainer")
    return explainer


__all__ = ["Crop", "DetectionContext", "DetectionExplainer", "DetectionExplanation", "DetectionMap", "WholeLevel"]
