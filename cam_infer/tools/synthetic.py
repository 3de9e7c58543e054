"""Synthetic scenes with known answers: shapes to classify, with boxes and pixel masks of every instance.

An image shows one or more filled shapes of a single class (``CLASSES``) at random sizes, rotations
and places, sometimes with a striped texture, on a desaturated background. A class is a shape and
a family of saturated colours (``CLASS_HUES``, ±8 hue units): with shape alone, in random colours,
ShapesNet (107 k parameters) had not left chance level after 8 000 training images; the colour
family lets it learn the task in five minutes on a CPU. Distractors have saturated colours of any
hue, class hues included. The label is the class; the ground truth is every instance's box and
mask. Four named splits reproduce the situations CAM papers report methods failing on:

| split | scene |
|---|---|
| ``large`` | one object covering a large part of the image |
| ``small`` | one object of 12–20 pixels |
| ``multiple`` | two to four objects of the same class |
| ``cluttered`` | one object on a textured background, among distractor shapes that belong to no class (lines, dots, zigzags, rings) |

Deterministic: image ``i`` of split ``s`` with seed ``seed`` is drawn from
``np.random.default_rng((seed, index of s, i))``, so any image can be regenerated on its own.
About 850 images a second on one core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import CamInferError

CLASSES = ("circle", "square", "triangle", "cross")
SPLITS = ("large", "small", "multiple", "cluttered")
SIZE = 128                                                          # at most 384: see _noisy
CLASS_HUES = (0, 45, 90, 135)   # red, yellow-green, cyan, violet (OpenCV hue units, 0..179)
RADIUS = {"large": (28, 44), "small": (6, 10), "multiple": (10, 18), "cluttered": (13, 24)}  # half-size, pixels


@dataclass
class Scene:
    image: np.ndarray                # (H,W,3) RGB uint8
    label: int                       # index into CLASSES
    split: str
    boxes: np.ndarray                # (M,4) int [x1,y1,x2,y2], inclusive pixel bounds of each instance
    masks: np.ndarray                # (M,H,W) bool, each instance's visible pixels
    distractors: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # boxes, no class

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


def generate(split: str, n: int, seed: int = 0, start: int = 0, size: int = SIZE) -> list[Scene]:
    """Images start .. start+n-1 of `split` for `seed`."""
    if split not in SPLITS:
        raise CamInferError(f"unknown split '{split}'; splits: {', '.join(SPLITS)}")
    return [scene(split, seed, i, size) for i in range(start, start + n)]


def scene(split: str, seed: int, index: int, size: int = SIZE) -> Scene:
    rng = np.random.default_rng((seed, SPLITS.index(split), index))
    label = int(rng.integers(len(CLASSES)))
    cluttered = split == "cluttered"
    image = _textured_background(rng, size) if cluttered else _plain_background(rng, size)
    count = int(rng.integers(2, 5)) if split == "multiple" else 1
    placed = _place(rng, count, RADIUS[split], size)
    distractors = []
    if cluttered:
        for _ in range(int(rng.integers(2, 5))):
            box = _draw_distractor(rng, image, placed, size)
            if box is not None:
                distractors.append(box)
    boxes, masks = [], []
    for cx, cy, r in placed:
        mask = np.zeros((size, size), np.uint8)
        _draw_shape(mask, CLASSES[label], cx, cy, r, rng.uniform(0, 2 * np.pi))
        _paint(rng, image, mask.astype(bool), label)
        masks.append(mask.astype(bool))
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return Scene(image, label, split, np.array(boxes, np.int64), np.stack(masks),
                 np.array(distractors, np.int64).reshape(-1, 4))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    pixel = np.array([[[h, s, v]]], np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _dull_colour(rng) -> np.ndarray:
    """Backgrounds: low saturation (greys, beiges, slates), any brightness."""
    return _hsv(rng.integers(0, 180), rng.integers(0, 70), rng.integers(30, 256))


def _class_colour(rng, label: int) -> np.ndarray:
    """Objects: a saturated colour from the class's hue family (OpenCV hue units, 0..179)."""
    hue = (CLASS_HUES[label] + rng.integers(-8, 9)) % 180
    return _hsv(hue, rng.integers(150, 256), rng.integers(130, 256))


def _plain_background(rng, size: int) -> np.ndarray:
    colour = _dull_colour(rng)
    return _noisy(rng, np.broadcast_to(colour, (size, size, 3)), 8)


_NOISE = np.random.default_rng(20261121).standard_normal((512, 512, 3), dtype=np.float32)


def _noisy(rng, image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian pixel noise: a window of a fixed noise field at a random offset (drawing fresh
    normals per image would be most of the generation time)."""
    h, w = image.shape[:2]
    y, x = (int(v) for v in rng.integers(0, 512 - max(h, w), 2))
    noise = _NOISE[y:y + h, x:x + w] * np.float32(sigma)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _textured_background(rng, size: int) -> np.ndarray:
    a, b = _dull_colour(rng), _dull_colour(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:                                                  # stripes at a random angle
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 16)
        phase = (xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle))) * np.float32(2 * np.pi / period)
        t = (np.sin(phase) + 1) / 2
    elif kind == 1:                                                # checkerboard
        cell = int(rng.integers(6, 16))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:                                                          # smooth blobs
        coarse = rng.random((8, 8)).astype(np.float32)
        t = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    return _noisy(rng, a + (b - a) * (t[..., None] * np.float32(0.6)), 10)


def _place(rng, count: int, radius: tuple[int, int], size: int) -> list[tuple[int, int, int]]:
    """Centres and radii of `count` objects whose bounding circles do not overlap."""
    placed: list[tuple[int, int, int]] = []
    for _ in range(400):
        if len(placed) == count:
            break
        r = int(rng.integers(radius[0], radius[1] + 1))
        cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 4) ** 2 for x, y, q in placed):
            placed.append((cx, cy, r))
    return placed


def _polygon(cx: int, cy: int, r: float, angle: float, corners: int) -> np.ndarray:
    t = angle + 2 * np.pi * np.arange(corners) / corners
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _draw_shape(mask: np.ndarray, name: str, cx: int, cy: int, r: int, angle: float) -> None:
    if name == "circle":
        cv2.circle(mask, (cx, cy), r, 1, -1, cv2.LINE_8)
        return
    if name == "square":
        points = _polygon(cx, cy, r, angle, 4)
    elif name == "triangle":
        points = _polygon(cx, cy, r, angle, 3)
    else:  # cross: two bars of width r/2.2 through the centre
        u = np.array([np.cos(angle), np.sin(angle)])
        v = np.array([-u[1], u[0]])
        half = r / 2.2 / 2
        for d, e in ((u, v), (v, u)):
            bar = np.array([cx, cy]) + np.array([d * r + e * half, d * r - e * half, -d * r - e * half,
                                                 -d * r + e * half])
            cv2.fillPoly(mask, [np.round(bar).astype(np.int32)], 1, cv2.LINE_8)
        return
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1, cv2.LINE_8)


def _paint(rng, image: np.ndarray, mask: np.ndarray, label: int) -> None:
    colour = _class_colour(rng, label)
    if rng.random() < 0.3:                                         # striped fill
        other = np.clip(colour * 0.6, 0, 255)
        yy, xx = np.nonzero(mask)
        angle = rng.uniform(0, np.pi)
        stripes = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / 5) > 0)[:, None]
        image[yy, xx] = np.where(stripes, colour, other).astype(np.uint8)
    else:
        image[mask] = colour.astype(np.uint8)


def _draw_distractor(rng, image: np.ndarray, placed, size: int):
    """A shape of no class, away from the objects: a line, dots, a zigzag or a thin ring; its box."""
    colour = tuple(int(c) for c in _hsv(rng.integers(0, 180), rng.integers(150, 256), rng.integers(130, 256)))
    for _ in range(50):
        cx, cy = (int(v) for v in rng.integers(10, size - 10, 2))
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + 16) ** 2 for x, y, r in placed):
            break
    else:
        return None
    kind = rng.integers(4)
    if kind == 0:
        angle, length = rng.uniform(0, np.pi), rng.uniform(8, 14)
        d = np.array([np.cos(angle), np.sin(angle)]) * length
        cv2.line(image, (int(cx - d[0]), int(cy - d[1])), (int(cx + d[0]), int(cy + d[1])), colour, 2)
    elif kind == 1:
        for _ in range(3):
            cv2.circle(image, (cx + int(rng.integers(-8, 9)), cy + int(rng.integers(-8, 9))), 2, colour, -1)
    elif kind == 2:
        xs = cx + np.arange(-10, 11, 5)
        ys = cy + np.array([-4, 4, -4, 4, -4])
        cv2.polylines(image, [np.stack([xs, ys], 1).astype(np.int32)], False, colour, 2)
    else:
        cv2.circle(image, (cx, cy), int(rng.integers(6, 10)), colour, 1)
    return [max(0, cx - 16), max(0, cy - 16), min(size - 1, cx + 16), min(size - 1, cy + 16)]


def refuse_other_truth(out, names: list[str]) -> None:
    """A folder whose ``boxes.json`` lists scenes these `names` would not (another split's, more of them): writing
    ours would drop their ground truth."""
    import json

    path = Path(out) / "boxes.json"
    if not path.is_file():
        return
    try:
        listed = json.loads(path.read_text())
    except ValueError:
        listed = {"(unreadable)": None}
    others = sorted(set(listed) - set(names)) if isinstance(listed, dict) else ["(not a mapping)"]
    if others:
        raise CamInferError(f"'{out}' holds boxes.json of other scenes ({len(others)}, e.g. {others[0]}) that "
                            "these would replace; choose an empty --out")


def write_scenes(out, split: str = "cluttered", n: int = 100, seed: int = 0) -> Path:
    """Write `n` scenes of `split` as PNGs and their labelled boxes as ``boxes.json`` (for `cam-infer audit`)."""
    import json

    from ..outputs import prepare_folder

    generate(split, 0)                          # an unknown split is refused before the folder is made
    refuse_other_truth(out, [f"{split}_{i:05d}.png" for i in range(n)])
    out = prepare_folder(out)
    boxes = {}
    for i, scene_ in enumerate(generate(split, n, seed=seed)):
        name = f"{split}_{i:05d}.png"
        cv2.imwrite(str(out / name), cv2.cvtColor(scene_.image, cv2.COLOR_RGB2BGR))
        boxes[name] = [{"box": [int(v) for v in b], "label": scene_.class_name} for b in scene_.boxes]
    (out / "boxes.json").write_text(json.dumps(boxes, indent=1) + "\n")
    return out


# --- detection scenes ---------------------------------------------------------------------------------------

DETECTION_CLASSES = (*CLASSES, "tagged square")     # a tagged square: a square with a white dot beside it
MARKER_GAP = 3                                       # pixels between a tagged square's box and its dot
MARKER_RADIUS = 3


@dataclass
class DetectionScene:
    image: np.ndarray                # (H,W,3) RGB uint8
    boxes: np.ndarray                # (M,4) int [x1,y1,x2,y2] inclusive, each object's (a tag's dot excluded)
    labels: np.ndarray               # (M,) index into DETECTION_CLASSES
    markers: np.ndarray              # (M,3) int: the dot (cx, cy, r) of a tagged square; (-1,-1,0) otherwise


def detection_scene(seed: int, index: int, size: int = SIZE) -> DetectionScene:
    """One to three objects of any classes on a plain or textured background. A square and a tagged square
    look the same: only a white dot MARKER_GAP pixels right of the tagged one's box tells them apart, so a
    detector must look outside the box to tell the class. Loose white dots (not beside a square) appear in
    half the scenes, so a dot alone does not make a class. Deterministic in (seed, index)."""
    rng = np.random.default_rng((seed, 99, index))
    image = _textured_background(rng, size) if rng.random() < 0.3 else _plain_background(rng, size)
    placed = _place(rng, int(rng.integers(1, 4)), (8, 22), size - 2 * (MARKER_GAP + 2 * MARKER_RADIUS + 2))
    boxes, labels, markers = [], [], []
    for cx, cy, r in placed:
        label = int(rng.integers(len(DETECTION_CLASSES)))
        mask = np.zeros((size, size), np.uint8)
        shape = "square" if label == 4 else CLASSES[label]
        _draw_shape(mask, shape, cx, cy, r, rng.uniform(0, 2 * np.pi))
        _paint(rng, image, mask.astype(bool), 1 if label == 4 else label)
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
        marker = (-1, -1, 0)
        if label == 4:
            marker = (box[2] + MARKER_GAP + MARKER_RADIUS, (box[1] + box[3]) // 2, MARKER_RADIUS)
            cv2.circle(image, marker[:2], MARKER_RADIUS, (255, 255, 255), -1, cv2.LINE_8)
        boxes.append(box)
        labels.append(label)
        markers.append(marker)
    if rng.random() < 0.5:                                       # a loose dot, away from every object
        for _ in range(50):
            x, y = (int(v) for v in rng.integers(6, size - 6, 2))
            if all(not (b[0] - 12 <= x <= b[2] + 20 and b[1] - 12 <= y <= b[3] + 12) for b in boxes):
                cv2.circle(image, (x, y), MARKER_RADIUS, (255, 255, 255), -1, cv2.LINE_8)
                break
    return DetectionScene(image, np.array(boxes, np.int64).reshape(-1, 4), np.array(labels, np.int64),
                          np.array(markers, np.int64).reshape(-1, 3))


def write_detection_scenes(out, n: int = 100, seed: int = 1) -> Path:
    """Write `n` detection scenes as PNGs and ``boxes.json`` (image → [{"box", "label", "marker"}])."""
    import json
    refuse_other_truth(out, [f"detection_{i:05d}.png" for i in range(n)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(n):
        s = detection_scene(seed, i)
        name = f"detection_{i:05d}.png"
        cv2.imwrite(str(out / name), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        truth[name] = [{"box": b.tolist(), "label": DETECTION_CLASSES[c], **({"marker": m.tolist()} if m[2] else {})}
                       for b, c, m in zip(s.boxes, s.labels, s.markers)]
    (out / "boxes.json").write_text(json.dumps(truth, indent=1))
    return out


def segmentation_labels(s: Scene) -> np.ndarray:
    """A scene's label image for a segmenter with classes ("background", *CLASSES): 0 everywhere (distractors
    included) but on its instances, which carry 1 + the class index."""
    labels = np.zeros(s.image.shape[:2], np.uint8)
    labels[s.masks.any(axis=0)] = s.label + 1
    return labels


def write_segmentation_scenes(out, n: int = 100, seed: int = 1) -> Path:
    """Write `n` scenes (the four splits in turn) as ``images/<name>.png`` and their label images as
    ``masks/<name>.png`` (PASCAL VOC palette PNGs: `cam_infer.audit.masks`); two folders, since an audit
    searches a folder of images recursively."""
    from ..audit.masks import write_label_image

    out = Path(out)
    for folder in ("images", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = scene(SPLITS[i % len(SPLITS)], seed, i)
        name = f"{s.split}_{i:05d}.png"
        cv2.imwrite(str(out / "images" / name), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        write_label_image(out / "masks" / name, segmentation_labels(s))
    return out
