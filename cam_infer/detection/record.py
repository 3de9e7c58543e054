"""What a detector's bundle records of its task, whatever the format of its graphs (ONNX, `split`; OpenVINO IR,
`openvino_split`): the manifest's task fields, and the head's locality, measured by changing one cell of each level
and seeing which anchors move."""

from __future__ import annotations

import numpy as np

from ..bundle.manifest import FORMAT, FORMAT_VERSION
from ..images import Preprocessing

PACKED = "cut_packed"


def measure_locality(run_features, run_head, levels: list[dict], prep: Preprocessing) -> list[dict]:
    """Per level: the head's receptive radius in cells (changing the centre cell moves the level's anchors
    up to that many cells away; None: all of them) and the levels whose anchors it moves, in their boxes or their
    class scores, each against its own scale (a level only the class branch reads moves scores of 1e-5 on a random
    image, below a millionth of the boxes' pixels). `run_features`: image batch → packed cut maps; `run_head`:
    packed rows → the model's output."""
    from ..bundle.verify import random_images
    packed = run_features(random_images(prep, 1, seed=7))
    clean = run_head(packed)[0]
    grids = [(lv["shape"][1], lv["shape"][2]) for lv in levels]
    out = []
    for i, level in enumerate(levels):
        c, h, w = level["shape"]
        changed = packed.copy()
        view = changed[0, level["offset"]:level["offset"] + c * h * w].reshape(c, h, w)
        view[:, h // 2, w // 2] += 1.0 + np.abs(view[:, h // 2, w // 2])
        moved = np.zeros(clean.shape[1], bool)
        diff = np.abs(run_head(changed)[0] - clean)
        for rows in (slice(0, 4), slice(4, None)):      # boxes (input pixels) and class scores ([0, 1]) each at
            moved |= diff[rows].max(axis=0) > 1e-6 * max(1.0, np.abs(clean[rows]).max())      # its own scale
        out.append(locality_of(moved, grids, i, (h // 2, w // 2), prep.input_size))
    return out


def locality_of(moved: np.ndarray, grids, level: int, cell: tuple[int, int], size) -> dict:
    """From the anchors that moved (A,) when `cell` of `level` changed: radius and levels reached. The
    output's anchors come level by level at the strides of its own grid (8, 16, 32 ...)."""
    from .decode import anchor_levels
    where = anchor_levels(size, len(moved))
    reached = sorted({int(v) for v in where.level[moved]})
    own = moved & (where.level == where.level_of_stride(size[0] // grids[level][0]))
    if not own.any():
        return {"radius": 0, "levels": reached}
    rows, cols = where.row[own], where.col[own]
    radius = int(max(np.abs(rows - cell[0]).max(), np.abs(cols - cell[1]).max()))
    full = radius >= max(grids[level]) - 1
    return {"radius": None if full else radius, "levels": reached}


def detection_fields(prep, levels, strides, classes, anchors, names, cut, receptive, nms, output: str,
                     image: str = "image") -> dict:
    """What a detector's manifest says of its task, whatever its graphs' format: input, preprocessing, cut set
    (each level with its measured locality), output layout, NMS and labels."""
    total = sum(int(np.prod(level["shape"])) for level in levels)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": "detection",
        "input": {"name": image, "shape": [None, 3, *prep.input_size], "layout": "NCHW",
                  "dtype": "float32", "model_dtype": "float32", "model_layout": "NCHW"},
        "preprocessing": prep.to_dict(),
        "target_layer": {"requested": cut if isinstance(cut, str) else ",".join(cut), "matched_by": "cut set",
                         "module": None, "tensor": ",".join(lv["name"] for lv in levels), "layout": "NCHW"},
        "activation": {"name": PACKED, "shape": [total], "dtype": "float32", "quantization": None},
        "cut": [{**lv, "receptive_radius": r["radius"], "moves_levels": r["levels"]}
                for lv, r in zip(levels, receptive)],
        "output": {"name": output, "kind": "detections", "layout": "ultralytics",
                   "num_classes": int(classes), "shape": [4 + int(classes), int(anchors)], "box": "cxcywh",
                   "scores": "sigmoid", "strides": strides},
        "nms": nms,
        "labels": names,
    }


__all__ = ["PACKED", "detection_fields", "locality_of", "measure_locality"]
