"""Pictures of explained detections: the map over the original image (letterbox undone), each box drawn
with its label and score, a caption and a colour bar. A class-agnostic map names no class: its caption
says so and its boxes are drawn without labels."""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import CamInferError
from ..postprocess import caption, near_uniform, overlay_picture

COLOURS = [(255, 255, 255), (255, 64, 160), (64, 255, 64), (255, 200, 0), (0, 200, 255)]


def detection_overlay(e, i: int, j: int | None, rgb, on: str, colormap: str, alpha: float) -> np.ndarray:
    """Image i (its original RGB `rgb`) with detection j (None: every explained detection, their maps' pixel-wise
    maximum); i and j checked by the caller."""
    items = e.items[i] if j is None else [e.items[i][j]]
    size = e.preprocessing.input_size
    if e.class_agnostic:                       # one map whatever the detection: no class over it
        saliency, degenerate = e.image_maps[i]
        text = caption(e.method, None, None, None, degenerate, bool(near_uniform(saliency)))
    else:
        saliency = np.max([d.saliency for d in items], axis=0) if items else np.zeros(size, np.float32)
        text = _caption(e.method, items)
    if rgb is None:
        raise CamInferError("give explain() image files or arrays, or overlay(image=...), to draw detections on them")
    original = on == "original"
    prep = e.preprocessing
    image = rgb if original or e.images is None else prep.geometry(rgb)      # no originals: rgb is the view
    picture = overlay_picture(saliency, image, prep if original else None, bar=True,
                              colormap=colormap, alpha=alpha, text=text)
    boxes = [d.box_image if original else d.box for d in items]
    return _draw_boxes(picture, items, boxes, image.shape, caption_height=picture.shape[0] - image.shape[0],
                       labelled=not e.class_agnostic)


def _caption(method: str, items) -> str:
    if len(items) == 1:
        d = items[0]
        return caption(method, d.label, d.class_id, d.score, d.degenerate, d.uniform)
    return f"{method}: {len(items)} detections" if items else f"{method}: no detection"


def _draw_boxes(picture: np.ndarray, items, boxes, shape, caption_height: int, labelled: bool = True) -> np.ndarray:
    out = picture.copy()
    thickness = max(1, round(max(shape[:2]) / 320))
    scale = label_scale(shape)
    for k, (d, box) in enumerate(zip(items, boxes)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        y1, y2 = y1 + caption_height, y2 + caption_height
        colour = COLOURS[k % len(COLOURS)]
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 0), thickness + 2)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        if labelled:
            _draw_label(out, f"{d.label} {d.score:.2f}", x1, y1, colour, scale, caption_height, shape[1])
    return out


def label_scale(shape) -> float:
    """The font scale of box labels on an image of shape (H,W): readable on small images, modest on large."""
    return float(np.clip(max(shape[:2]) / 900, 0.35, 0.8))


def label_chip(text: str, colour, scale: float) -> np.ndarray:
    """A box label as drawn: the text once, in the box's colour, on a black chip (readable over any heat)."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    chip = np.zeros((th + base + 4, tw + 4, 3), np.uint8)
    cv2.putText(chip, text, (2, th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return chip


def _draw_label(out: np.ndarray, text: str, x: int, y: int, colour, scale: float, top: int, width: int) -> None:
    """The label's chip above the box's corner (x, y), or just inside the box when the caption is in the way;
    moved left to stay within the image's `width`."""
    chip = label_chip(text, colour, scale)
    h, w = chip.shape[:2]
    y = y - h if y - h >= top else max(y, top)
    x = max(0, min(x, width - w))
    region = out[y:y + h, x:x + w]
    region[...] = chip[:region.shape[0], :region.shape[1]]
