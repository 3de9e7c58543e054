"""Ground-truth masks for auditing segmenters: where each class truly is in an image.

Two layouts of a masks folder, for an image ``dog.jpg``:

- a label image ``dog.png`` (PASCAL VOC's SegmentationClass): one 8-bit index per pixel (a palette PNG or a
  greyscale one), the index of the model's output class there; 255 marks void pixels (borders, unsure), which
  every metric leaves out;
- one binary mask per class, a folder per class named as the model's class: ``<class>/dog.png``, nonzero =
  inside. Classes may overlap (models with independent sigmoid channels); there are no void pixels.

The masks are in the image's own pixels; `Truth.in_input` brings them into the model's input, where maps are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CamInferError

VOID = 255


@dataclass
class Truth:
    regions: dict[int, np.ndarray]      # class index → (H,W) bool
    valid: np.ndarray                   # (H,W) bool: pixels that count

    def region(self, index: int) -> np.ndarray:
        """The class's region; empty when the class is not in the image."""
        return self.regions.get(index, np.zeros(self.valid.shape, bool))

    def in_input(self, preprocessing) -> "Truth":
        """The masks in the model's input: the image's resize and crop (or letterbox) applied, nearest neighbour
        (`Preprocessing.mask_geometry`); a letterbox's border is not valid."""
        return Truth({c: preprocessing.mask_geometry(r) for c, r in self.regions.items()},
                     preprocessing.mask_geometry(self.valid))


def read_truth(folder, image_name: str, shape: tuple[int, int], classes: list[str]) -> Truth:
    """The ground truth of `image_name` (an image of `shape` = (H, W)) for a model with output `classes`."""
    folder, stem = Path(folder), Path(image_name).stem
    label_image = folder / f"{stem}.png"
    if label_image.is_file():
        return _from_label_image(label_image, shape, classes)
    per_class = {c: folder / c / f"{stem}.png" for c in classes}
    if any(p.is_file() for p in per_class.values()):
        _refuse_unknown_class_folders(folder, classes)
        return _from_class_masks({classes.index(c): p for c, p in per_class.items() if p.is_file()}, shape)
    raise CamInferError(f"no ground-truth mask for {image_name}: expected {label_image} or {folder}/<class>/{stem}.png")


def masks_digest(folder) -> dict:
    """What an audit's settings record of its masks folder beside its path: a sha256 over the name, size and
    modification time of every PNG in it and in its class folders (the stamp images are resumed by), so that masks
    corrected, added or removed since are another audit, not a resume that measures some images against the old
    masks and some against the new."""
    if folder is None:
        return {}
    import hashlib

    root, digest = Path(folder), hashlib.sha256()
    for path in sorted([*root.glob("*.png"), *root.glob("*/*.png")]):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"masks_sha256": digest.hexdigest()}


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "1"):
                raise CamInferError(f"{path} is a {image.mode} image; a mask is an 8-bit index or greyscale PNG")
            return np.asarray(image, np.uint8)
    except OSError as error:
        raise CamInferError(f"cannot read the mask {path}: {error}") from None


def _check_size(path: Path, mask: np.ndarray, shape: tuple[int, int]) -> None:
    if mask.shape != tuple(shape):
        raise CamInferError(f"the mask {path} is {mask.shape[1]}x{mask.shape[0]} "
                            f"but its image is {shape[1]}x{shape[0]}")


def _from_label_image(path: Path, shape: tuple[int, int], classes: list[str]) -> Truth:
    labels = _read_png(path)
    _check_size(path, labels, shape)
    present = [int(v) for v in np.unique(labels) if v != VOID]
    unknown = [v for v in present if v >= len(classes)]
    if unknown:
        raise CamInferError(f"the mask {path} has class index {unknown[0]} but the model has {len(classes)} classes "
                            f"(0..{len(classes) - 1}; {VOID} = void)")
    return Truth({v: labels == v for v in present}, labels != VOID)


def _from_class_masks(paths: dict[int, Path], shape: tuple[int, int]) -> Truth:
    regions = {}
    for index, path in paths.items():
        mask = _read_png(path)
        _check_size(path, mask, shape)
        regions[index] = mask > 0
    return Truth(regions, np.ones(shape, bool))


def _refuse_unknown_class_folders(folder: Path, classes: list[str]) -> None:
    unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise CamInferError(f"the masks folder has a folder '{unknown[0]}' that is no class of the model "
                            f"({', '.join(classes)})")


def write_label_image(path, labels: np.ndarray) -> Path:
    """Write a label image as a PASCAL VOC palette PNG (index = class, 255 = void)."""
    from PIL import Image
    image = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    image.putpalette(voc_palette().ravel().tolist())
    image.save(path)
    return Path(path)


def voc_palette() -> np.ndarray:
    """PASCAL VOC's colour map (256×3 uint8): bits of the index spread over R, G, B; 255 is drawn cream."""
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette
