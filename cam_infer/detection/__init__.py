"""Object detectors (YOLO-style ONNX or OpenVINO IR): split at a cut set, per-detection maps, forward passes only.

    split_detector("yolov8n.onnx", "det/")                 # split.py: cut set, packing, verification
    split_detector("yolov8n.xml", "det-ir/")               # openvino_split.py: the same on the IR as it is
    Explainer("det/").explain(["a.jpg"], "recipro")            # cam_infer.tasks.detection: targets, maps

anatomy.py (what the detector is, cut sets), decode.py (anchors, boxes, NMS), record.py (the manifest's task
fields, the head's measured locality), branches.py (cropped class branches), targets.py (what a map
explains, its score), context.py (what a method gets of one image),
overlay.py, runs.py (explain files), audit.py (localisation per detection), fuse.py (a class-agnostic map
inside the model).
"""

from .split import split_detector


__all__ = ["split_detector"]
