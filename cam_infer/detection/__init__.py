"""Object detectors (YOLO-style ONNX): split at a cut set, per-detection maps, forward passes only.

    split_detector("yolov8n.onnx", "det/")                 # split.py: cut set, packing, verification
    DetectionExplainer("det/").explain(["a.jpg"], "recipro")   # explainer.py: targets, methods, maps

anatomy.py (what the detector is, cut sets), decode.py (anchors, boxes, NMS), targets.py (what a map
explains, its score), methods/ (one module per method), overlay.py, runs.py (explain files),
audit.py (localisation per detection), fuse.py (a class-agnostic map inside the model).
"""

from .explainer import DetectionExplainer, DetectionExplanation, DetectionMap
from .split import split_detector

__all__ = ["DetectionExplainer", "DetectionExplanation", "DetectionMap", "split_detector"]
