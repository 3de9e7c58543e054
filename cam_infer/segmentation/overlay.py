"""Pictures of explained segmentation targets: the map over the image (the bundle's resize and crop undone),
the outline of each target's region in its own colour with its class name, and a caption saying what the
map explains and where the region came from (``predicted``: the pixels the model assigns to the class in
the clean pass; ``mask``, ``box`` or ``pixel``: given with ``region=``). A class-agnostic map names no class:
its caption says so and its outlines carry no label."""

from __future__ import annotations

import cv2
import numpy as np

from ..detection.overlay import COLOURS, label_chip, label_scale
from ..errors import CamInferError
from ..postprocess import caption, flagged, overlay_picture


def region_source(region) -> str:
    """Where a target's region came from, by the ``region=`` request: none → ``predicted``; a mask (a path or
    a 2-D array), a box ``[x1, y1, x2, y2]`` or a pixel ``(x, y)``."""
    if region is None:
        return "predicted"
    if isinstance(region, (str, bytes)) or hasattr(region, "__fspath__"):
        return "mask"
    shape = np.shape(region)
    return "mask" if len(shape) == 2 else "box" if shape == (4,) else "pixel"


def segment_overlay(e, i: int, j: int | None, rgb, on: str, colormap: str, alpha: float) -> np.ndarray:
    """Image i (its original RGB `rgb`) with target j's map and region outline (None: every explained target,
    their maps' pixel-wise maximum and every outline); i and j checked by the caller."""
    if rgb is None:
        raise CamInferError("give explain() image files or arrays, or overlay(image=...), to draw the regions on them")
    items = e.items[i] if j is None else [e.items[i][j]]
    saliency = np.max([s.saliency for s in items], axis=0)
    original = on == "original"
    prep = e.preprocessing
    image = rgb if original or e.images is None else prep.geometry(rgb)      # no originals: rgb is the view
    picture = overlay_picture(saliency, image, prep if original else None, _caption(e.method, items), colormap,
                              alpha)
    regions = [region_on_image(prep, s.region, image.shape[:2]) if original else s.region for s in items]
    labels = [None if s.class_agnostic else s.label or f"class {s.class_id}" for s in items]
    return draw_outlines(picture, regions, labels, top=picture.shape[0] - image.shape[0])


def region_on_image(prep, region: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A region at the model's input → the original image's pixels: those whose centre samples it at 0.5 or more;
    where none does (a pixel or a sliver of a shrunk image, which bilinear sampling of the centres can miss), the
    original pixels holding its pixels' centres, so that a region given is always outlined."""
    on_image = prep.to_image(region.astype(np.float32), shape)[0] >= 0.5
    if on_image.any() or not region.any():
        return on_image
    to_model = prep.to_model(shape)
    ys, xs = np.nonzero(region)
    rows = np.clip(np.round((ys - to_model[1, 2]) / to_model[1, 1]).astype(int), 0, shape[0] - 1)
    cols = np.clip(np.round((xs - to_model[0, 2]) / to_model[0, 0]).astype(int), 0, shape[1] - 1)
    on_image[rows, cols] = True
    return on_image


def _caption(method: str, items) -> str:
    if len(items) > 1:
        return f"{method}: {len(items)} regions"
    s = items[0]
    where = f" in {_source_of(s)} region, {s.pixels} px"
    if s.class_agnostic:
        return caption(method, None, None, None, s.degenerate, s.uniform) + where
    name = s.label or f"class {s.class_id}"
    return f"{method}: {name} ({s.class_id}) s={s.score:.2f}{where}{flagged(s.degenerate, s.uniform)}"


def _source_of(s) -> str:
    return getattr(s, "source", "predicted")


def draw_outlines(picture: np.ndarray, regions, labels, top: int = 0) -> np.ndarray:
    """Each (H,W) bool region's outline on `picture` (whose image starts `top` rows down, under its caption),
    holes included: a black line under one in the region's colour, and its label (None: none) at its top."""
    out = picture.copy()
    shape = regions[0].shape if regions else out.shape[:2]
    thickness = max(1, round(max(shape) / 320))
    scale = label_scale(shape)
    for k, (region, label) in enumerate(zip(regions, labels)):
        colour = COLOURS[k % len(COLOURS)]
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE,
                                       offset=(0, top))
        cv2.drawContours(out, contours, -1, (0, 0, 0), thickness + 2)
        cv2.drawContours(out, contours, -1, colour, thickness)
        if label is not None and contours:
            _place(out, label_chip(label, colour, scale), region, top)
    return out


def _place(out: np.ndarray, chip: np.ndarray, region: np.ndarray, top: int) -> None:
    """The chip just above the region's top row, or just below its bottom row when the caption is in the way
    (else inside it); at its leftmost pixel, within the picture."""
    h, w = chip.shape[:2]
    ys, xs = np.nonzero(region)
    first, last = int(ys.min()) + top, int(ys.max()) + top
    y = first - h if first - h >= top else last + 3 if last + 3 + h <= out.shape[0] else first
    x = max(0, min(int(xs.min()), out.shape[1] - w))
    out[y:y + h, x:x + w] = chip[:out.shape[0] - y, :out.shape[1] - x]
