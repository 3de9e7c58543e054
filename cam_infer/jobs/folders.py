"""The images of a folder run: files and folders → image files in order, the names their outputs take, and
each image read with the stamp a resume compares (`cam_infer.outputs.fingerprint`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import CamInferError
from ..images import load_image
from ..outputs import file_key, fingerprint

# Every suffix OpenCV's decoder reads (JPEG and its aliases, PNG, BMP, TIFF, WebP, JPEG 2000, the PNM family,
# Sun raster, OpenEXR, Radiance HDR; GIF where OpenCV reads it).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2",
                  ".ppm", ".pgm", ".pbm", ".pnm", ".pxm", ".pfm", ".sr", ".ras", ".exr", ".hdr", ".pic"}
if int(cv2.__version__.split(".")[0]) >= 5:      # OpenCV 5 decodes a GIF's first frame (4.x: not by default)
    IMAGE_SUFFIXES.add(".gif")


@dataclass
class ImageFiles:
    """The images of a run, in order, and the files of the given folders that are not images (skipped)."""

    files: list[Path]
    skipped: list[Path]
    names: dict[Path, str]            # image → its path relative to the folder it was found in (or its name)
    folders: dict[Path, Path] = field(default_factory=dict)   # file (image or skipped) → the folder it was found in


def collect_images(paths, leave_out=None) -> ImageFiles:
    """Files as given (any suffix: a non-image is reported later), folders searched recursively for
    image suffixes (symlinked folders followed), in sorted order; every other file in those folders is listed as
    skipped, a hidden one too whatever its suffix (the ``._photo.jpg`` macOS writes beside a photo copied from a
    Mac holds its metadata, no picture), and so is every folder below them that holds an earlier run (its
    journal): its pictures are no input. The files of `leave_out` (a run's output folder) are no input where it lies inside an image folder,
    and it may not be one. A file reached twice (one folder given two ways) is one image, the first way."""
    found: list[Path] = []
    skipped: list[Path] = []
    names: dict[Path, str] = {}
    folders: dict[Path, Path] = {}
    output = None if leave_out is None else Path(leave_out).resolve()
    for p in map(Path, paths):
        if p.is_dir() and output is not None and p.resolve() == output:
            raise CamInferError(f"--out '{leave_out}' is the image folder: the run's pictures would be read as images "
                                "on the next run; choose another --out (a folder inside it works)")
        if p.is_dir():
            below = output if output is not None and output.is_relative_to(p.resolve()) else None
            files, runs = _files_below(p, below)
            skipped += runs
            for f in [*files, *runs]:
                folders.setdefault(f, p)
            for f in files:
                if f.suffix.lower() in IMAGE_SUFFIXES and not hidden(f):
                    found.append(f)
                    names.setdefault(f, f.relative_to(p).as_posix())
                else:
                    skipped.append(f)
        elif p.is_file():
            found.append(p)
            names.setdefault(p, p.name)
        else:
            raise CamInferError(f"'{p}' does not exist")
    if not found:
        raise CamInferError("no images found in " + ", ".join(map(str, paths))
                            + (f" ({len(skipped)} other files skipped, e.g. '{skipped[0]}')" if skipped else ""))
    files = first_of_each_file(found)
    return ImageFiles(files, list(dict.fromkeys(skipped)), unique_names(files, names), folders)


def first_of_each_file(paths: list[Path]) -> list[Path]:
    """`paths` in order, each file once (`file_key`): the first path that reaches it."""
    firsts: dict[str, Path] = {}
    for path in paths:
        firsts.setdefault(file_key(path), path)
    return list(firsts.values())


def hidden(path: Path) -> bool:
    """A hidden file (its name starts with a dot): left out of a folder's images, as a file manager leaves it out."""
    return path.name.startswith(".")


def skipped_line(skipped: list[str], shown: int, where: str) -> str:
    """What a run left out of its folders, on one line: files that are not images (hidden files among them),
    folders of earlier runs, the first `shown` of them and where all are listed."""
    runs = [p for p in skipped if Path(p).is_dir()]
    dotted = sum(hidden(Path(p)) for p in set(skipped).difference(runs))
    files = len(skipped) - len(runs) - dotted
    kinds = [f"{files} file(s) that are not images"] if files else []
    kinds += [f"{dotted} hidden file(s)"] if dotted else []
    kinds += [f"{len(runs)} folder(s) of earlier runs"] if runs else []
    listed = ", ".join(skipped[:shown]) + (", ..." if len(skipped) > shown else "")
    return f"skipped {' and '.join(kinds)}: {listed} (all listed in {where})"


def _files_below(folder: Path, output: Path | None) -> tuple[list[Path], list[Path]]:
    """The files below `folder`, sorted, symlinked folders followed (each real folder once), and the folders left
    out: `output` (this run's) and every folder that holds an earlier run's journal (its pictures are no input)."""
    from .journal import JOURNAL

    files, runs, seen = [], [], set()
    for root, folders, names in os.walk(folder, followlinks=True):
        folders.sort(key=lambda name: ((Path(root) / name).is_symlink(), name))   # real folders first, by name
        real = Path(root).resolve()
        if real in seen or (output is not None and real.is_relative_to(output)):
            folders[:] = []
            continue
        seen.add(real)
        if JOURNAL in names and Path(root) != folder:
            runs.append(Path(root))
            folders[:] = []
            continue
        files += [Path(root) / name for name in names if (Path(root) / name).is_file()     # a broken link too: an
                  or (Path(root) / name).is_symlink()]                                     # image it cannot read
    return sorted(files), sorted(runs)


def unique_names(files: list[Path], names: dict[Path, str]) -> dict[Path, str]:
    """The relative names, made unique where two inputs share one (a counter is appended)."""
    out: dict[Path, str] = {}
    taken: set[str] = set()
    for f in files:
        name, i = names[f], 2
        while name in taken:
            stem, dot, suffix = names[f].rpartition(".")
            name, i = (f"{stem}-{i}.{suffix}" if dot else f"{names[f]}-{i}"), i + 1
        taken.add(name)
        out[f] = name
    return out


def overlay_names(images: list[Path]) -> dict[Path, str]:
    """Unique file stems for the overlays: the image stem, then parent_stem, then a counter."""
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for image in images:
        name = image.stem
        if name in taken:
            name = f"{image.parent.name}_{image.stem}"
        names[image] = free_name(name, taken)
    return names


def free_name(name: str, taken: set[str]) -> str:
    """`name`, or the first of name-2, name-3, … not in `taken`; added to `taken`."""
    base, i = name, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def read_stamped(path, errors: list) -> tuple[np.ndarray, dict] | None:
    """(RGB image, its stamp), or None with the reason added to `errors` when it cannot be read. The stamp
    is taken before decoding: a file replaced meanwhile is redone next time."""
    try:
        if os.path.islink(path) and not os.path.exists(path):
            raise CamInferError(f"'{path}' is a link to '{os.readlink(path)}', which does not exist")
        stamp = fingerprint(path)
        return load_image(path), stamp
    except (CamInferError, OSError) as exc:
        errors.append({"image": str(path), "error": str(exc)})
        return None
