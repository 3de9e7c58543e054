"""Image files → model inputs, exactly as the bundle's preprocessing says.

Order of operations (torchvision's ImageNet convention by default):
1. decode to RGB uint8 (alpha dropped over black, grayscale expanded, 16-bit scaled to 8-bit), a JPEG, PNG or WebP
   turned upright as its EXIF orientation says (as OpenCV's ``imread`` and photo viewers show it);
2. ``crop="center"``: resize the shorter side to ``resize`` (further where a non-square ``input_size`` needs it,
   so that the crop fits with the aspect ratio kept), then center-crop ``input_size``;
   ``crop="none"``: resize straight to ``input_size`` (aspect ratio not kept); the resize's filter is
   ``interpolation`` (see `INTERPOLATIONS`);
3. reorder channels to ``color`` (rgb or bgr), or for a 1-channel model convert to gray (ITU-R BT.601,
   as OpenCV does);
4. ``x = (pixel * scale - mean) / std`` per channel, in the order of ``color``; NCHW float32.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from .kernels import lookup_channels
from .errors import CamInferError, UnreadableImage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {
    "area": "OpenCV's area average when shrinking, bilinear when enlarging (bundles that record none)",
    "antialias": "PIL's bilinear, antialiased as torchvision's (antialias=True) and PIL's Image.resize",
    "bicubic": "PIL's bicubic (a=-0.5), antialiased as torchvision's (antialias=True) and PIL's Image.resize",
    "bilinear": "bilinear without antialiasing (OpenCV's INTER_LINEAR, torch's antialias=False)",
    "nearest": "nearest pixel, PIL's and torchvision's convention (OpenCV's INTER_NEAREST_EXACT)",
}


def default_resize(input_size: tuple[int, int]) -> int:
    """torchvision's 256-for-224 rule: the shorter side is resized to round(S / 0.875)."""
    return int(round(min(input_size) / 0.875))


@dataclass(frozen=True)
class Preprocessing:
    input_size: tuple[int, int]                       # (H, W) of the model input
    resize: int | None = None                         # shorter side before the crop; None: 256/224 rule
    crop: str = "center"                              # "center" | "none" | "letterbox" (Ultralytics: fit, pad)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1 / 255
    color: str = "rgb"                                # "rgb" | "bgr"
    layout: str = field(default="NCHW")
    channels: int = 3                                 # 3 (colour) or 1 (grayscale)
    pad: int = 114                                    # the letterbox's border value (uint8, every channel)
    interpolation: str | None = None                  # INTERPOLATIONS; None: area (bilinear for a letterbox)

    def __post_init__(self):
        object.__setattr__(self, "input_size", tuple(_number("input size", v, int) for v in _sequence(
            "input size", self.input_size)))
        object.__setattr__(self, "scale", _number("scale", self.scale))
        if self.scale == 0:
            raise CamInferError("scale must be non-zero: with 0 every image would be the same input")
        if self.channels not in (1, 3):
            raise CamInferError(f"channels must be 1 (grayscale) or 3 (colour), not {self.channels}")
        if self.channels == 1 and (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD):
            object.__setattr__(self, "mean", (0.0,))        # no ImageNet statistics for gray: x·scale
            object.__setattr__(self, "std", (1.0,))
        object.__setattr__(self, "mean", tuple(_number("mean", v) for v in _sequence("mean", self.mean)))
        object.__setattr__(self, "std", tuple(_number("std", v) for v in _sequence("std", self.std)))
        if self.resize is None and self.crop == "center":
            object.__setattr__(self, "resize", default_resize(self.input_size))
        if self.crop not in ("center", "none", "letterbox"):
            raise CamInferError(f"crop must be 'center', 'none' or 'letterbox', not '{self.crop}'")
        if self.interpolation is None:
            object.__setattr__(self, "interpolation", "bilinear" if self.crop == "letterbox" else "area")
        if self.interpolation not in INTERPOLATIONS:
            raise CamInferError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                                f"not '{self.interpolation}'")
        if self.color not in ("rgb", "bgr"):
            raise CamInferError(f"color must be 'rgb' or 'bgr', not '{self.color}'")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise CamInferError(f"mean and std take {self.channels} value(s), one per channel")
        if any(s == 0 for s in self.std):
            raise CamInferError("std values must be non-zero")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise CamInferError(f"input size must be two positive integers (H W), not {self.input_size}")
        if self.resize is not None and self.crop == "center" and self.resize < min(self.input_size):
            raise CamInferError(f"resize {self.resize} is smaller than the input size {self.input_size}; "
                                "the shorter side is resized to at least the input's")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def geometry(self, rgb: np.ndarray) -> np.ndarray:
        """Resize and crop (or letterbox) an RGB uint8 image to the model's input size (steps 2)."""
        h, w = self.input_size
        new_h, new_w, top, left = self._crop_geometry(rgb.shape)
        if self.crop != "letterbox":
            return resize(rgb, new_w, new_h, self.interpolation)[top:top + h, left:left + w]
        resized = resize(rgb, new_w, new_h, self.interpolation)       # Ultralytics: bilinear, the default
        out = np.full((h, w, rgb.shape[2]), self.pad, np.uint8)
        out[-top:-top + new_h, -left:-left + new_w] = resized
        return out

    def mask_geometry(self, mask: np.ndarray) -> np.ndarray:
        """`geometry` for a (H,W) bool mask: nearest-neighbour resize, the same crop; a letterbox's border is
        False."""
        h, w = self.input_size
        new_h, new_w, top, left = self._crop_geometry(mask.shape)
        resized = cv2.resize(mask.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST).astype(bool)
        if self.crop != "letterbox":
            return resized[top:top + h, left:left + w]
        out = np.zeros((h, w), bool)
        out[-top:-top + new_h, -left:-left + new_w] = resized
        return out

    def _crop_geometry(self, image_shape) -> tuple[int, int, int, int]:
        """(resized height, resized width, top, left) of `geometry` for an image of shape (H,W): the resized
        image's pixel (top, left) is the input's (0, 0); a letterbox's are negative (its border)."""
        h, w = self.input_size
        src_h, src_w = image_shape[:2]
        if self.crop == "none":
            return h, w, 0, 0
        if self.crop == "letterbox":             # Ultralytics' LetterBox(center=True), no upscaling limit
            ratio = min(h / src_h, w / src_w)
            new_w, new_h = max(1, int(round(src_w * ratio))), max(1, int(round(src_h * ratio)))   # a 1-px-thin photo
            return new_h, new_w, -int(round((h - new_h) / 2 - 0.1)), -int(round((w - new_w) / 2 - 0.1))
        ratio = max(self.resize / min(src_h, src_w), h / src_h, w / src_w)   # a non-square crop fits, unstretched
        new_w, new_h = max(w, int(round(src_w * ratio))), max(h, int(round(src_h * ratio)))
        return new_h, new_w, int(round((new_h - h) / 2.0)), int(round((new_w - w) / 2.0))

    def to_image(self, saliency: np.ndarray, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Undo `geometry` for a map: a saliency (H,W) over the model's input → the same map over the original
        image of shape (H0,W0), and the mask (H0,W0) of the pixels the model saw (outside it the map is 0).

        Original pixel centre u maps to the model's u·s − left + (s − 1)/2 with s = resized/original size
        (the resize's pixel-centre convention); the map is sampled there bilinearly."""
        saliency = self._checked_map(saliency)
        src_h, src_w = image_shape[:2]
        back = cv2.warpAffine(saliency, self.to_model(image_shape), (src_w, src_h),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        rows, cols = self.seen_window(image_shape)
        seen = np.zeros((src_h, src_w), bool)
        seen[rows, cols] = True
        return np.where(seen, np.clip(back, 0, 1), 0).astype(np.float32), seen

    def _checked_map(self, saliency: np.ndarray) -> np.ndarray:
        h, w = self.input_size
        saliency = np.asarray(saliency, np.float32)
        if saliency.shape != (h, w):
            raise CamInferError(f"a saliency over this model's input is {h}x{w}, not {saliency.shape}")
        return saliency

    def to_model(self, image_shape: tuple[int, int]) -> np.ndarray:
        """The affine map (2×3) from an original pixel centre (u, v) to where `geometry` puts it in the model's
        input: u·s − left + (s − 1)/2, s = resized/original size."""
        src_h, src_w = image_shape[:2]
        new_h, new_w, top, left = self._crop_geometry(image_shape)
        sx, sy = new_w / src_w, new_h / src_h
        return np.array([[sx, 0, (sx - 1) / 2 - left], [0, sy, (sy - 1) / 2 - top]], np.float64)

    def seen_window(self, image_shape: tuple[int, int]) -> tuple[slice, slice]:
        """(rows, cols) of the original image whose pixel centres land inside the model's input: the part the
        model saw, a rectangle."""
        h, w = self.input_size
        to_model = self.to_model(image_shape)
        cols = np.arange(image_shape[1]) * to_model[0, 0] + to_model[0, 2]
        rows = np.arange(image_shape[0]) * to_model[1, 1] + to_model[1, 2]
        return _inside(rows, h), _inside(cols, w)

    def window_map(self, saliency: np.ndarray, image_shape: tuple[int, int]) -> tuple[np.ndarray, tuple[slice, slice]]:
        """`to_image` inside the seen window only: the map over those original pixels (unclipped), and the
        window. What an overlay draws (the rest is greyed, whatever the map is there)."""
        rows, cols = self.seen_window(image_shape)
        to_model = self.to_model(image_shape)
        to_model[:, 2] += to_model[:, :2] @ [cols.start, rows.start]       # the window's (0, 0) is (cols, rows)
        back = cv2.warpAffine(self._checked_map(saliency), to_model, (cols.stop - cols.start, rows.stop - rows.start),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        return back, (rows, cols)

    def box_to_input(self, box, image_shape: tuple[int, int]) -> list[int] | None:
        """A box [x1,y1,x2,y2] (inclusive pixels) of an image of shape (H,W) → the same box in the model's
        input after `geometry`, clipped to it; None when the crop leaves none of it."""
        h, w = self.input_size
        x1, y1, x2, y2 = box
        x1, y1, x2, y2 = self.box_from_image([x1, y1, float(x2) + 1, float(y2) + 1], image_shape)
        out = [int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)) - 1, int(np.ceil(y2)) - 1]
        if out[2] < 0 or out[3] < 0 or out[0] > w - 1 or out[1] > h - 1:
            return None
        return [min(max(out[0], 0), w - 1), min(max(out[1], 0), h - 1), min(max(out[2], 0), w - 1),
                min(max(out[3], 0), h - 1)]

    def box_from_image(self, box, image_shape: tuple[int, int]) -> list[float]:
        """A box [x1,y1,x2,y2] in continuous coordinates of an image of shape (H,W) → the model input's,
        unclipped: `geometry`'s resize and crop or letterbox applied (the inverse of `box_to_image`)."""
        src_h, src_w = image_shape[:2]
        new_h, new_w, top, left = self._crop_geometry(image_shape)
        sx, sy = new_w / src_w, new_h / src_h
        x1, y1, x2, y2 = (float(v) for v in box)
        return [x1 * sx - left, y1 * sy - top, x2 * sx - left, y2 * sy - top]

    def box_to_image(self, box, image_shape: tuple[int, int]) -> list[float]:
        """A box [x1,y1,x2,y2] in the model's input coordinates (continuous, as a detector's) → the original
        image's of shape (H,W), clipped to it: the inverse of `geometry`'s resize and crop or letterbox."""
        src_h, src_w = image_shape[:2]
        new_h, new_w, top, left = self._crop_geometry(image_shape)
        sx, sy = new_w / src_w, new_h / src_h
        x1, y1, x2, y2 = (float(v) for v in box)
        return [min(max((x1 + left) / sx, 0.0), src_w), min(max((y1 + top) / sy, 0.0), src_h),
                min(max((x2 + left) / sx, 0.0), src_w), min(max((y2 + top) / sy, 0.0), src_h)]

    def standardise(self, rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(H,W,3) RGB uint8 at input size → (C,H,W) float32 (steps 3–4), into `out` if given."""
        if self.channels == 1:
            pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None]
        else:
            pixels = rgb[..., ::-1] if self.color == "bgr" else rgb
        if pixels.dtype == np.uint8:                   # a table of the 256 values: the same float32 results
            out = np.empty((pixels.shape[2], *pixels.shape[:2]), np.float32) if out is None else out
            lookup_channels(pixels, _table(self.scale, self.mean, self.std), out)
            return out
        x = _normalised(pixels, self.scale, self.mean, self.std)
        if out is None:
            return x
        out[...] = x
        return out

    def normalised_range(self) -> tuple[float, float]:
        """The least and the greatest value this preprocessing gives any pixel of any channel."""
        table = _table(self.scale, tuple(self.mean), tuple(self.std))
        return float(table.min()), float(table.max())

    def check_range(self, x: np.ndarray) -> None:
        """Refuse a preprocessed batch (N,C,H,W) whose values lie two whole ranges beyond what this preprocessing
        gives any photo: raw 0–255 pixels where normalised ones were expected explain another image, silently.
        (Values slightly outside, from another resize or an augmentation, are the user's to give.)"""
        table = _table(self.scale, tuple(self.mean), tuple(self.std))          # (C, 256): every pixel value
        lo, hi = table.min(axis=1), table.max(axis=1)
        if x.ndim != 4 or x.shape[1] != len(lo) or not x.size:
            return
        low, high = x.min(axis=(0, 2, 3)), x.max(axis=(0, 2, 3))
        if ((low < lo - 2 * (hi - lo)) | (high > hi + 2 * (hi - lo))).any():
            raise CamInferError(f"the batch's values span {low.min():.4g} … {high.max():.4g}, far outside what "
                                f"this bundle's preprocessing gives a photo ({lo.min():.4g} … {hi.max():.4g}): give "
                                "photos (paths or RGB arrays) or explainer.preprocess()'s batch; if the model does take "
                                "these values, split it with its preprocessing (--scale, --mean, --std)")

    def __call__(self, image: "str | os.PathLike | np.ndarray") -> np.ndarray:
        """One image (path or RGB uint8 array of any size) → (C,H,W) float32."""
        rgb = load_image(image) if isinstance(image, (str, os.PathLike)) else as_rgb_uint8(image)
        return self.standardise(self.geometry(rgb))


def _normalised(pixels: np.ndarray, scale: float, mean: tuple, std: tuple) -> np.ndarray:
    """(H,W,C) → (C,H,W) float32: (pixels·scale − mean) / std."""
    x = pixels.astype(np.float32) * np.float32(scale)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@lru_cache(maxsize=32)
def _table(scale: float, mean: tuple, std: tuple) -> np.ndarray:
    """(C, 256): every uint8 value normalised per channel, by the very float32 operations of `_normalised`."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], len(mean), axis=2)     # (256,1,C)
    table = _normalised(values, scale, mean, std)[:, :, 0]
    table.flags.writeable = False
    return table


def resize(rgb: np.ndarray, width: int, height: int, interpolation: str = "area") -> np.ndarray:
    """(H,W,C) uint8 → (height,width,C) uint8 with one of `INTERPOLATIONS`."""
    if (rgb.shape[1], rgb.shape[0]) == (width, height):
        return rgb
    if interpolation in _PIL_FILTERS:
        return _pil_resize(rgb, width, height, *_PIL_FILTERS[interpolation])
    if interpolation == "area" and (width < rgb.shape[1] or height < rgb.shape[0]):
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    flag = cv2.INTER_NEAREST_EXACT if interpolation == "nearest" else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=flag)


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, 1 - x, 0.0)


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


_PIL_FILTERS = {"antialias": (_triangle, 1.0), "bicubic": (_cubic, 2.0)}


@lru_cache(maxsize=64)
def _pil_weights(src: int, dst: int, kernel, support: float) -> tuple[np.ndarray, np.ndarray]:
    """PIL's resampling weights from `src` to `dst` pixels as a banded matrix: output pixel i is
    Σ_k weights[i, k] · input[first[i] + k]. The kernel is stretched by the scale when shrinking
    (the antialiasing) and each row normalised to sum 1, as PIL's ``precompute_coeffs`` does."""
    scale = src / dst
    stretch = max(scale, 1.0)
    centre = (np.arange(dst) + 0.5) * scale
    first = np.maximum(np.trunc(centre - support * stretch + 0.5), 0).astype(np.int64)
    last = np.minimum(np.trunc(centre + support * stretch + 0.5), src).astype(np.int64)
    taps = np.arange(int((last - first).max()))
    pixel = first[:, None] + taps[None, :]
    weights = np.where(pixel < last[:, None], kernel((pixel - centre[:, None] + 0.5) / stretch), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.minimum(pixel, src - 1), weights.astype(np.float32)


def _pil_pass(image: np.ndarray, dst: int, axis: int, kernel, support: float) -> np.ndarray:
    """One separable pass along `axis` (0: rows, 1: columns) of (H,W,C) float32: the banded product
    W·image, W (dst × src) the weights of `_pil_weights`."""
    pixel, weights = _pil_weights(image.shape[axis], dst, kernel, support)
    shape = list(image.shape)
    shape[axis] = dst
    out = np.zeros(shape, np.float32)
    for k in range(weights.shape[1]):
        w = weights[:, k, None, None] if axis == 0 else weights[None, :, k, None]
        out += np.take(image, pixel[:, k], axis=axis) * w
    return out


def _pil_resize(rgb: np.ndarray, width: int, height: int, kernel, support: float) -> np.ndarray:
    """PIL's ``Image.resize`` with BILINEAR or BICUBIC as Wy · image · Wxᵀ per channel, clipped to [0, 255]
    between the passes as PIL's 8-bit passes are, rounded once. PIL also rounds between its passes (in an
    order it chooses), so its pixels are within 0.5·Σ|w| + 0.5 < 1.5 of the exact ones: 1 apart at most."""
    image = rgb.astype(np.float32)
    if width != rgb.shape[1]:
        image = np.clip(_pil_pass(image, width, 1, kernel, support), 0, 255)
    if height != rgb.shape[0]:
        image = _pil_pass(image, height, 0, kernel, support)
    return np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to (H,W,3) RGB uint8; every failure is a `CamInferError`."""
    return as_rgb_uint8(_decoded(path))


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask image file → (H,W) bool: nonzero in any colour channel at the file's own bit depth (a 16-bit
    PNG's label 1 is inside, where 8 bits would round it to 0), and not transparent where it has an alpha
    channel (white on transparent is the white shape, as composited over black)."""
    image = _decoded(path)
    if image.ndim == 2:
        return image != 0
    colour = image[..., :-1] if image.shape[2] in (2, 4) else image
    inside = (colour != 0).any(axis=2)
    return inside & (image[..., -1] != 0) if image.shape[2] in (2, 4) else inside


def _decoded(path: str | os.PathLike) -> np.ndarray:
    """An image file's pixels as decoded, (H,W) or (H,W,C) RGB(A) at its own depth; `UnreadableImage` else."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UnreadableImage(f"'{path}' is a folder, not an image (the cam-infer commands take folders; in Python, "
                              "list its images)")
    if not os.path.isfile(path):
        raise UnreadableImage(f"image '{path}' does not exist")
    return _decode(np.fromfile(path, dtype=np.uint8), f"'{path}'")


def decode_image(data, what: str = "the data") -> np.ndarray:
    """An encoded image (bytes or a uint8 array: PNG, JPEG, ...) → (H,W,3) RGB uint8; `UnreadableImage` if
    it is none."""
    return as_rgb_uint8(_decode(data, what))


def _decode(data, what: str) -> np.ndarray:
    """Encoded bytes → the pixels as decoded, (H,W) or (H,W,C) RGB(A) at their own depth."""
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as exc:           # OpenCV refuses, e.g. a header declaring more than 2^30 pixels
        too_large = "CV_IO_MAX_IMAGE_PIXELS" in str(exc)
        reason = "its header declares more pixels than OpenCV decodes (2^30)" if too_large else "OpenCV cannot " \
            "decode it"
        raise UnreadableImage(f"{what} is not a readable image: {reason}") from None
    if image is None:
        reason = _truncated(data) or "not a readable image (PNG, JPEG, BMP, TIFF, WebP, ...)"
        raise UnreadableImage(f"{what} is {reason}")
    if image.ndim == 3 and image.shape[2] >= 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return upright(image, exif_orientation(data))


def _truncated(data: np.ndarray) -> str | None:
    """Why a JPEG or PNG OpenCV did not decode is unreadable, when its data end before its closing marker (a copy
    or download cut short). Viewers show such a file, the missing part filled in; the decoder cannot tell whether
    every pixel arrived (a JPEG that lacks only its marker looks the same to it as one cut mid-picture), so the
    picture is not explained."""
    head, tail = data[:8].tobytes(), data[-32:].tobytes().rstrip(b"\0")
    if head[:3] == b"\xff\xd8\xff" and not tail.endswith(b"\xff\xd9"):
        kind, marker = "JPEG", "its end-of-image marker"
    elif head == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail:
        kind, marker = "PNG", "its IEND chunk"
    else:
        return None
    return (f"a truncated {kind}: its data end before {marker} (a copy or download cut short); viewers fill in "
            "what is missing, cam-infer explains only whole pictures: copy the file again")


ORIENTED = {2: lambda i: cv2.flip(i, 1), 3: lambda i: cv2.rotate(i, cv2.ROTATE_180), 4: lambda i: cv2.flip(i, 0),
            5: cv2.transpose, 6: lambda i: cv2.rotate(i, cv2.ROTATE_90_CLOCKWISE),
            7: lambda i: cv2.rotate(cv2.transpose(i), cv2.ROTATE_180),
            8: lambda i: cv2.rotate(i, cv2.ROTATE_90_COUNTERCLOCKWISE)}      # EXIF orientation → the upright picture


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """The image as its EXIF orientation says it is seen (as OpenCV's `imread` shows it; decoding with
    IMREAD_UNCHANGED, which keeps alpha and 16 bits, leaves a phone photo on its side)."""
    return ORIENTED[orientation](image) if orientation in ORIENTED else image


def exif_orientation(data: np.ndarray) -> int:
    """An image's EXIF orientation tag (0x0112 of IFD0), 1..8; 1 where it has none. Read from a JPEG's APP1 ``Exif``
    segment, a PNG's ``eXIf`` chunk and a WebP's ``EXIF`` chunk: the three whose orientation OpenCV's `imread`
    applies and decoding with IMREAD_UNCHANGED does not (a TIFF's own orientation is applied by its decoder)."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_orientation(data)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_orientation(data)
    data = bytes(data[:65536 * 2]) if len(data) > 3 and data[0] == 0xFF and data[1] == 0xD8 else b""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] not in (0xD9, 0xDA):     # up to the scan
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if data[at + 1] == 0xE1 and data[at + 4:at + 10] == b"Exif\0\0":
            return _tiff_orientation(data[at + 10:at + 2 + length])
        at += 2 + length
    return 1


def _png_orientation(data: np.ndarray) -> int:
    """A PNG's orientation: its ``eXIf`` chunk (a TIFF header and IFD0), before or after the image data."""
    at = 8
    while at + 8 <= len(data):
        length, kind = int.from_bytes(bytes(data[at:at + 4]), "big"), bytes(data[at + 4:at + 8])
        if kind == b"eXIf":
            return _tiff_orientation(bytes(data[at + 8:at + 8 + length]))
        if kind == b"IEND":
            break
        at += 12 + length
    return 1


def _webp_orientation(data: np.ndarray) -> int:
    """A WebP's orientation: its ``EXIF`` chunk (a TIFF header and IFD0)."""
    at = 12
    while at + 8 <= len(data):
        kind, length = bytes(data[at:at + 4]), int.from_bytes(bytes(data[at + 4:at + 8]), "little")
        if kind == b"EXIF":
            return _tiff_orientation(bytes(data[at + 8:at + 8 + length]))
        at += 8 + length + (length & 1)
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd:ifd + 2], order) if ifd + 2 <= len(tiff) else 0
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry:entry + 2], order) == 0x0112:
            return int.from_bytes(tiff[entry + 8:entry + 10], order)
    return 1


def _sequence(name: str, values) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise CamInferError(f"{name} must be a list of numbers, not {values!r}")
    return tuple(values)


def _number(name: str, value, kind=float):
    """A preprocessing number as `kind`, finite, or one line saying which setting is not one."""
    try:
        number = kind(value) if not isinstance(value, (str, bytes, bool)) else None
        finite = number is not None and bool(np.isfinite(number))
    except (TypeError, ValueError, OverflowError):
        finite = False
    if not finite or (kind is int and number != value):
        raise CamInferError(f"{name} must be {'an integer' if kind is int else 'a finite number'}, not {value!r}")
    return number


def _inside(centres: np.ndarray, size: int) -> slice:
    """The run of increasing pixel centres that fall inside [−0.5, size − 0.5). Where none does (an image one
    pixel thin, stretched wider than the input), the one pixel that covers the input's centre: what the model saw."""
    start, stop = np.searchsorted(centres, -0.5, "left"), np.searchsorted(centres, size - 0.5, "left")
    if start == stop:
        start = int(np.argmin(np.abs(centres - (size - 1) / 2)))
        stop = start + 1
    return slice(int(start), int(stop))


FLOAT_SLACK = 1e-3      # a float image's overshoot past [0, 1] taken as resampling's rounding, and clipped


def is_pil_image(image) -> bool:
    """A PIL (Pillow) image, told without importing PIL."""
    return type(image).__module__.startswith("PIL.") and hasattr(image, "convert") and hasattr(image, "mode")


def _pil_pixels(image) -> np.ndarray:
    """A PIL image's pixels for `as_rgb_uint8`: its own colours (a palette image's are not its indices, and its
    transparent entries are transparent, as a tRNS chunk makes them in the file), a 16-bit one's 16 bits (PIL's
    convert clips them at 255: a white picture), a premultiplied one's (La, RGBa) composited over black as the
    file's are (PIL converts La to nothing, and RGBa to RGB by undoing the premultiplication: opaque)."""
    if image.mode.startswith("I;16"):                  # a 16-bit PNG or TIFF as Image.open gives it
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":                              # 32-bit integers: 8-bit or 16-bit values, as their range says
        pixels = np.asarray(image)
        low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
        if low < 0 or high > 65535:
            raise CamInferError(f"a PIL image of mode 'I' must hold 8- or 16-bit values, not {low} … {high}")
        return pixels.astype(np.uint8 if high <= 255 else np.uint16)
    if image.mode in ("La", "RGBa"):                   # alpha premultiplied: the colours are already over black
        return np.asarray(image)[..., :-1]
    alpha = "A" in image.mode or ("transparency" in image.info and image.mode in ("P", "RGB"))  # OpenCV's tRNS
    return np.asarray(image.convert("RGBA" if alpha else "RGB"))


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Grayscale, RGBA (composited over black), 16-bit or float [0,1] arrays, or a PIL image → (H,W,3) uint8 RGB."""
    if is_pil_image(image):
        image = _pil_pixels(image)
    if not isinstance(image, np.ndarray):
        raise CamInferError(f"an image is a path, an RGB array (H,W,3) or a PIL image, not {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4) or min(image.shape[:2]) < 1:
        raise CamInferError(f"an image must be (H,W), (H,W,1), (H,W,3) or (H,W,4), not {image.shape}")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype.kind == "f":
        low, high = float(image.min()), float(image.max())            # a NaN anywhere makes both NaN
        if not -FLOAT_SLACK <= low <= high <= 1.0 + FLOAT_SLACK:     # 0–255 data clipped to [0,1]: a white image
            raise CamInferError(f"a float image must hold values in [0, 1], not {low:.6g} … {high:.6g}; give 0–255 "
                                "pixels as uint8")
        image = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise CamInferError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float in [0,1]")
    channels = image.shape[2]
    if channels in (2, 4):  # gray+alpha or RGBA: composite over black
        alpha = image[..., -1:].astype(np.float32) / 255.0
        image = (image[..., :-1].astype(np.float32) * alpha).round().astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)
