"""Maps → pictures: ReLU, per-map min–max with a degenerate flag, bilinear resize, overlay."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .errors import CamInferError
from .images import as_rgb_uint8
from .numerics import nonzero_per_row

EPS = 1e-7
FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_CAPTION_SCALE = 0.4      # capitals 11 px high (cv2.getTextSize); smaller is hard to read
CAPTION_LINES = 2
# A map with more than this fraction of its pixels at or above half its range highlights nearly everything:
# it carries no localisation. Healthy maps of the demo scenes and the real photos (MobileNetV2, SqueezeNet,
# every gradient-free method) put at most 79 % there; a detector's backbone-cut Recipro-CAM map, 99.9 %.
UNIFORM_FRACTION = 0.9
GREY = np.array([[0.35 / 3, 0.35 / 3, 0.35 / 3, 110.0]])        # what the model did not see: 0.35·mean + 110
COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
             "inferno": cv2.COLORMAP_INFERNO, "hot": cv2.COLORMAP_HOT, "magma": cv2.COLORMAP_MAGMA}


def normalise(maps: np.ndarray, in_place: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """ReLU then per-map min–max to [0,1]. A map whose range is below EPS·max(1, |max|) is
    *degenerate* (constant after ReLU): it comes back all zeros with its flag set, never NaN.
    ``in_place``: overwrite `maps` (float32) instead of a new array (no fresh pages to fault in)."""
    maps = np.asarray(maps, np.float32)
    maps = np.maximum(maps, 0, out=maps if in_place else None)
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    degenerate = (span <= EPS * np.maximum(1.0, np.abs(hi)))[:, 0, 0]
    maps -= lo
    maps /= np.where(span > 0, span, 1.0)
    maps[degenerate] = 0.0
    return maps, degenerate


def near_uniform(saliency: np.ndarray) -> np.ndarray:
    """Which normalised maps (..., H, W) in [0,1] carry no localisation: more than `UNIFORM_FRACTION` of
    their pixels at or above half the range (a constant map, all zeros, is degenerate instead)."""
    saliency = np.asarray(saliency)
    above = nonzero_per_row((saliency >= 0.5).reshape(-1, *saliency.shape[-2:])).reshape(saliency.shape[:-2])
    return above / (saliency.shape[-2] * saliency.shape[-1]) > UNIFORM_FRACTION


def flagged(degenerate: bool, uniform: bool = False) -> str:
    """What a caption appends about a map that shows no region: constant, or near-uniform."""
    return " [constant map]" if degenerate else " [near-uniform map: no localisation]" if uniform else ""


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners=False, as torch's and cv2's default) to size (H,W), clipped to [0,1]."""
    out = resize_planes(np.asarray(maps, np.float32), size)
    return np.clip(out, 0, 1, out=out)


def resize_planes(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n,h,w) → (n,H,W), each plane resized bilinearly with half-pixel centres (cv2's INTER_LINEAR, torch's
    align_corners=False), values as they are; float32 or float64 as given."""
    h, w = size
    planes = np.asarray(planes)
    out = np.empty((len(planes), h, w), planes.dtype if planes.dtype == np.float64 else np.float32)
    for m, into in zip(planes.astype(out.dtype, copy=False), out):
        cv2.resize(m, (w, h), dst=into, interpolation=cv2.INTER_LINEAR)     # written in place: no copies
    return out


def check_overlay_options(colormap: str, alpha: float) -> None:
    if not isinstance(colormap, str) or colormap not in COLORMAPS:
        raise CamInferError(f"unknown colormap '{colormap}'; choose one of: {', '.join(COLORMAPS)}")
    number = isinstance(alpha, (int, float, np.integer, np.floating)) and not isinstance(alpha, bool)
    if not number or not 0.0 <= alpha <= 1.0:
        raise CamInferError(f"alpha must be a number in [0, 1], not {alpha!r}")


def overlay(image: np.ndarray, saliency: np.ndarray, colormap: str = "jet", alpha: float = 0.5,
            geometry=None) -> np.ndarray:
    """Blend a colour-mapped saliency (H,W in [0,1]) over an RGB image: (1−alpha)·image + alpha·heat, RGB uint8
    (pytorch-grad-cam's ``show_cam_on_image``).

    A map over the model's input (``e.saliency[i]``) over the original photo needs `geometry`: the Explanation,
    the Bundle or its Preprocessing. The map is then put back where the model saw it (its resize and crop
    undone) and what the model did not see is greyed, as ``e.overlay(i)`` draws it. Without `geometry` the map
    must have the image's own shape; any other map is refused: stretched over the photo (even one of the same
    aspect, when the model saw a centre crop of it) it would show heat where the model never looked."""
    check_overlay_options(colormap, alpha)
    return _overlay_into(as_rgb_uint8(image), saliency, colormap, alpha, geometry)


def _overlay_into(rgb: np.ndarray, saliency: np.ndarray, colormap: str, alpha: float, geometry,
                  out: np.ndarray | None = None) -> np.ndarray:
    saliency = np.asarray(saliency, np.float32)
    if saliency.ndim != 2:
        raise CamInferError(f"saliency must be one (H,W) map, not shape {saliency.shape}")
    if geometry is not None:
        return _placed(rgb, saliency, _preprocessing_of(geometry), colormap, alpha, out)
    _check_same_shape(saliency.shape, rgb.shape[:2])
    return _blend(rgb, saliency, colormap, alpha, out)


def _blend(rgb: np.ndarray, saliency: np.ndarray, colormap: str, alpha: float, out: np.ndarray | None = None
           ) -> np.ndarray:
    """(1−alpha)·rgb + alpha·heat, rounded to the nearest and saturated; heat = the colormap at round(255·s),
    s clipped to [0, 1] (in `out` when given)."""
    level = cv2.convertScaleAbs(np.clip(saliency, 0, 1), alpha=255.0)           # round(255·s), in one pass
    heat = cv2.applyColorMap(level, rgb_colormap(colormap))
    return cv2.addWeighted(rgb, 1 - alpha, heat, alpha, 0.0, dst=out)


@lru_cache(maxsize=None)
def rgb_colormap(colormap: str) -> np.ndarray:
    """The colormap as a (256,1,3) RGB lookup table (OpenCV's tables are BGR): colouring a map is one lookup."""
    table = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], COLORMAPS[colormap])
    return np.ascontiguousarray(table[..., ::-1])


def _placed(rgb: np.ndarray, saliency: np.ndarray, preprocessing, colormap: str, alpha: float,
            out: np.ndarray | None = None) -> np.ndarray:
    """The map over the model's input blended where the model saw the original `rgb`; the rest greyed
    (0.35·mean + 110). Only the seen window is mapped back and blended (in `out` when given)."""
    out = np.empty_like(rgb) if out is None else out
    back, (rows, cols) = preprocessing.window_map(saliency, rgb.shape[:2])
    _blend(rgb[rows, cols], back, colormap, alpha, out=out[rows, cols])
    for band in ((slice(0, rows.start), slice(None)), (slice(rows.stop, None), slice(None)),
                 (rows, slice(0, cols.start)), (rows, slice(cols.stop, None))):
        if out[band].size:
            out[band] = cv2.cvtColor(cv2.transform(rgb[band], GREY), cv2.COLOR_GRAY2RGB)     # not a broadcast: 2× less
    return out


def _preprocessing_of(geometry):
    """The `Preprocessing` an Explanation or a Bundle carries, or `geometry` itself when it is one."""
    preprocessing = getattr(geometry, "preprocessing", geometry)
    if not hasattr(preprocessing, "to_image"):
        raise CamInferError(f"geometry must be an Explanation, a Bundle or a Preprocessing (how the model's input "
                            f"was cut from the image), not {type(geometry).__name__}"
                            + (" without one" if preprocessing is None else ""))
    return preprocessing


def _check_same_shape(map_shape: tuple[int, int], image_shape: tuple[int, int]) -> None:
    """Refuse a map of another shape than the image's: drawn over it, it would be stretched."""
    if tuple(map_shape) != tuple(image_shape):
        (h, w), (image_h, image_w) = map_shape, image_shape
        raise CamInferError(f"a {h}x{w} map does not fit a {image_h}x{image_w} image: stretched over it, it would "
                            "show heat where the model did not look; use e.overlay(i), or overlay(image, "
                            "e.saliency[i], geometry=e) to place it where the model saw it")


def overlay_picture(saliency: np.ndarray, image: np.ndarray, preprocessing=None, text: str | None = None,
                    colormap: str = "jet", alpha: float = 0.5, bar: bool = True) -> np.ndarray:
    """The overlay a person looks at: the map over `image`, a caption strip (what the map explains) and a
    colour bar (what the colours mean). With `preprocessing`, `image` is the original picture and the map
    (over the model's input) is put back where the model's view of it was; the rest is greyed. Drawn in
    place in one picture (`with_colour_bar` and `with_caption` around `overlay` draw the same pixels)."""
    check_overlay_options(colormap, alpha)
    rgb = as_rgb_uint8(image)
    h, w = rgb.shape[:2]
    side = colour_bar(h, w, colormap) if bar else np.zeros((h, 0, 3), np.uint8)
    strip = caption_strip(text, w + side.shape[1]) if text else np.zeros((0, w + side.shape[1], 3), np.uint8)
    picture = np.empty((len(strip) + h, w + side.shape[1], 3), np.uint8)
    picture[:len(strip)] = strip
    picture[len(strip):, w:] = side
    _overlay_into(rgb, saliency, colormap, alpha, preprocessing, out=picture[len(strip):, :w])
    return picture


CLASS_AGNOSTIC = "class-agnostic"


def caption(method: str, label: str | None, class_id: int | None, score: float | None,
            degenerate: bool = False, uniform: bool = False) -> str:
    """'recipro: tabby (281) p=0.87' — the method, the class the map explains and its probability, and a flag
    for a map that shows no region (`flagged`). A class-agnostic map (``class_id=None``) names no class:
    'eigen: class-agnostic'."""
    if class_id is None:
        text = f"{method}: {CLASS_AGNOSTIC}"
    else:
        text = f"{method}: {label} ({class_id}) p={score:.2f}" if label else f"{method}: class {class_id} p={score:.2f}"
    return text + flagged(degenerate, uniform)


def class_fields(class_id: int, label: str | None, score: float, agnostic: bool) -> dict:
    """What a record says of a map's class: the class it explains, its label and probability; a
    class-agnostic map explains none, so it says ``class_agnostic: true`` and keeps the model's top-1 apart,
    as ``predicted_*``."""
    if agnostic:
        return {"class_agnostic": True, "class_id": None, "label": None, "score": None,
                "predicted_class_id": class_id, "predicted_label": label, "predicted_score": score}
    return {"class_id": class_id, "label": label, "score": score}


def with_caption(picture: np.ndarray, text: str) -> np.ndarray:
    """A white strip above the picture with `text` in black (`caption_strip`)."""
    return np.concatenate([caption_strip(text, picture.shape[1]), picture], axis=0)


def caption_strip(text: str, w: int) -> np.ndarray:
    """A white strip `w` pixels wide with `text` in black: scaled to the width, never below MIN_CAPTION_SCALE; a
    text too long is wrapped at words, then shortened in its middle (`caption_lines`)."""
    scale, lines = caption_lines(text, w - 8)
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, 1)
    step = th + base + 3                                          # from one line's baseline to the next
    strip = np.full((th + 4 + base + 3 + step * (len(lines) - 1), w, 3), 255, np.uint8)    # descenders within
    for k, line in enumerate(lines):
        cv2.putText(strip, line, (4, th + 4 + k * step), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def caption_lines(text: str, room: int) -> tuple[float, list[str]]:
    """The font scale and lines of a caption `room` pixels wide. The scale follows the width (1.2 at 624 px
    and more) and shrinks to fit one line, but not below MIN_CAPTION_SCALE; there, the words are wrapped
    into at most CAPTION_LINES lines and, when still too long (an ImageNet synonym list on a small
    picture), words are left out of the middle for '...', keeping its start and end (method; class id and
    probability)."""
    scale = float(np.clip((room + 8) / 520, MIN_CAPTION_SCALE, 1.2))
    width = _text_width(text, scale)
    if width > room:
        scale = max(MIN_CAPTION_SCALE, scale * 0.97 * room / width)
    words = text.split()
    head, tail = words[:(len(words) + 1) // 2], words[(len(words) + 1) // 2:]
    lines = _wrapped(words, scale, room)
    while len(lines) > CAPTION_LINES and len(head) + len(tail) > 2:
        if len(head) >= len(tail):
            head.pop()
        else:
            tail.pop(0)
        lines = _wrapped([*head, "...", *tail], scale, room)
    return scale, [_cut_to(line, scale, room) for line in lines[:CAPTION_LINES]]


def _text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def _wrapped(words: list[str], scale: float, room: int) -> list[str]:
    """Words into lines of at most `room` pixels (a word wider than that has a line of its own)."""
    lines: list[str] = []
    for word in words:
        if lines and _text_width(f"{lines[-1]} {word}", scale) <= room:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _cut_to(line: str, scale: float, room: int) -> str:
    """A line ending in '...' where it is wider than `room` (one very long word)."""
    if _text_width(line, scale) <= room:
        return line
    while len(line) > 1 and _text_width(line + "...", scale) > room:
        line = line[:-1]
    return line + "..."


def with_colour_bar(picture: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A vertical colour bar on the right: the colormap from 1 (top, most evidence) to 0 (bottom)."""
    return np.concatenate([picture, colour_bar(*picture.shape[:2], colormap)], axis=1)


@lru_cache(maxsize=64)
def colour_bar(h: int, w: int, colormap: str = "jet") -> np.ndarray:
    """The colour bar `with_colour_bar` puts right of an h×w picture (a gap, the ramp, its 1 and 0), drawn once
    per size (read-only: a folder of photos of a few sizes reuses it)."""
    width = max(8, w // 28)
    label_w = max(14, width + 4)
    ramp = np.linspace(255, 0, h).astype(np.uint8)[:, None].repeat(width, axis=1)
    colours = cv2.applyColorMap(ramp, rgb_colormap(colormap))
    labels = np.full((h, label_w, 3), 255, np.uint8)
    scale = float(np.clip(h / 400, 0.3, 0.6))
    cv2.putText(labels, "1", (2, int(14 * scale / 0.45)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(labels, "0", (2, h - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    gap = np.full((h, 3, 3), 255, np.uint8)
    bar = np.concatenate([gap, colours, labels], axis=1)
    bar.flags.writeable = False
    return bar


# What a folder run writes per image and method: a JPEG overlay (the default: a 500-px photo's PNG overlay costs
# 7.7 ms to encode, more than MobileNetV2's forward pass, its JPEG 1.5 ms and a fifth of the bytes), a PNG
# overlay (lossless), or none: the saliency map alone as an 8-bit grey PNG at the model's input size.
OVERLAYS = ("jpg", "png", "none")
JPEG_QUALITY = 90


def check_overlays(overlays: str) -> None:
    if overlays not in OVERLAYS:
        raise CamInferError(f"--overlays takes {', '.join(OVERLAYS)}, not {overlays!r}")


def encode_png(picture: np.ndarray) -> bytes:
    """An RGB picture as PNG bytes (what `write_png` writes)."""
    return encode_picture(picture, "png")


def encode_picture(picture: np.ndarray, kind: str = "png") -> bytes:
    """An RGB picture as PNG or JPEG (quality JPEG_QUALITY) bytes."""
    options = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if kind == "jpg" else []
    ok, data = cv2.imencode(f".{kind}", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), options)
    if not ok:
        raise CamInferError(f"could not encode a picture as {kind.upper()}")
    return data.tobytes()


def map_levels(saliency: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as 8-bit levels round(255·s): what a map PNG holds, and what a run's array store keeps."""
    return np.uint8(np.round(np.clip(saliency, 0, 1) * 255))


def encode_map(saliency: np.ndarray) -> bytes:
    """A saliency map (H,W in [0,1]) as an 8-bit grey PNG: value round(255·s), so reading it back and dividing
    by 255 gives the map within 1/510 (`read_map`)."""
    ok, data = cv2.imencode(".png", map_levels(saliency))
    if not ok:
        raise CamInferError("could not encode a map as PNG")
    return data.tobytes()


def read_map(path) -> np.ndarray:
    """A map `encode_map` wrote, as float32 in [0,1]."""
    grey = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if grey is None or grey.ndim != 2:
        raise CamInferError(f"'{path}' is not a map a folder run wrote (an 8-bit grey PNG)")
    return grey.astype(np.float32) / 255


def write_file(path, data: bytes) -> None:
    """Write bytes a worker made; a failure (unwritable folder, full disk) is a user error."""
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise CamInferError(f"could not write '{path}' ({exc.strerror or exc}): is the folder writable, the disk "
                            "full?") from None


def write_png(path, picture: np.ndarray) -> None:
    """Write an RGB picture; a failure (unwritable folder, full disk) is a user error."""
    ok = False
    try:
        ok = cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    except cv2.error:
        ok = False
    if not ok:
        raise CamInferError(f"could not write '{path}' (is the folder writable, the disk full?)")
