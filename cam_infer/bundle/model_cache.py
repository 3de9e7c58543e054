"""A model file where a bundle folder is taken: split it with ``auto`` once, into the user cache.

The bundle goes to ``<cache>/bundles/<name>-<key>``, the cache folder of `kernel_cache.cache_dir` and the
key a digest of the file's sha256 (with an IR's ``.bin``), the split options and the cam-infer version:
a changed file, other options or another release get a new split; the same file is split once. A split
is written to a temporary folder and renamed into place, so concurrent first uses never see half a
bundle (the one renamed first wins, the others are dropped).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import CamInferError
from ..kernel_cache import cache_dir
from ..version import __version__
from .manifest import FORMAT_VERSION, MANIFEST, sha256_of
from .openvino_segmentation import split_openvino_file
from .openvino_split import is_openvino_source
from .split import split_onnx

MODEL_SUFFIXES = (".onnx", ".xml", ".tflite")
_announced: set[Path] = set()
_resolved: dict[tuple, Path] = {}        # (file, mtime, size) → folder: hashed once per process



def is_model_file(path: Path) -> bool:
    """A file `split` takes (ONNX, OpenVINO IR .xml, TFLite), not a fused model written by ``cam-infer fuse``."""
    return path.is_file() and path.suffix.lower() in MODEL_SUFFIXES and not _is_fused(path)


def bundle_of_file(path: Path) -> Path:
    """A file given where a bundle folder is taken → the folder of its cached bundle, or a one-line refusal."""
    if _is_fused(path):
        raise CamInferError(f"'{path}' is a fused model (cam-infer fuse), not a bundle: serve it, or give the "
                            "bundle folder it was fused from")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise CamInferError(f"'{path}' is a file, neither a bundle folder nor a model file (.onnx, .xml, .tflite)")
    return cached_bundle(path)


def cached_bundle(model: Path) -> Path:
    """The folder of the model file's bundle, split with ``auto`` on first use; says so on one line."""
    stat = model.stat()
    seen = (model.resolve(), stat.st_mtime_ns, stat.st_size)
    if seen in _resolved and (_resolved[seen] / MANIFEST).is_file():
        return _resolved[seen]
    _resolved[seen] = _cached_bundle(model)
    return _resolved[seen]


def _cached_bundle(model: Path) -> Path:
    options = _split_options(model)
    folder = cache_dir() / "bundles" / f"{model.stem}-{_key(model, options)}"
    reused = (folder / MANIFEST).is_file()
    if not reused:
        _split_into(model, folder, options)
    _announce(model, folder, reused)
    return folder


def _split_options(model: Path) -> dict:
    from ..detection.anatomy import is_detector
    from .graph import load_onnx
    from .segmentation import is_segmenter
    graph = load_onnx(model) if model.suffix.lower() == ".onnx" else None
    if graph is not None and is_detector(graph) or model.suffix.lower() == ".xml" and _is_ir_detector(model):
        return {"task": "detection", "cut": "detect-input"}
    if graph is not None and is_segmenter(graph):
        return {"task": "segmentation", "layer": "auto"}
    return {"task": "classification", "layer": "auto"}


def _key(model: Path, options: dict) -> str:
    weights = model.with_suffix(".bin")
    files = [sha256_of(model)] + ([sha256_of(weights)] if model.suffix.lower() == ".xml" and weights.is_file() else [])
    text = json.dumps({"files": files, "options": options, "format": FORMAT_VERSION, "version": __version__},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _split_into(model: Path, folder: Path, options: dict) -> None:
    """Split into a temporary folder beside `folder`, then rename it into place."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as exc:
        raise CamInferError(f"cannot write the bundle cache {folder.parent} ({exc.strerror}); split '{model}' with "
                            "cam-infer split MODEL --out FOLDER and pass the folder") from None
    try:
        try:
            _split(model, work / "bundle", options)
        except CamInferError as exc:
            raise CamInferError(f"'{model}' is a model file, and splitting it automatically failed: {exc}; split it "
                                "with cam-infer split MODEL --out FOLDER and pass the folder") from None
        try:
            (work / "bundle").rename(folder)
        except OSError:
            if not (folder / MANIFEST).is_file():        # not a concurrent split that got there first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _is_ir_detector(model: Path) -> bool:
    from ..detection.openvino_split import is_openvino_detector
    from .openvino_split import read_openvino_model
    return is_openvino_detector(read_openvino_model(model))


def _split(model: Path, out: Path, options: dict) -> None:
    if options["task"] == "detection":
        from ..detection.split import split_detector
        split_detector(model, out, cut=options["cut"])
    elif is_openvino_source(model):
        split_openvino_file(model, options["layer"], out)
    elif options["task"] == "segmentation":
        from .segmentation import split_segmenter
        split_segmenter(model, layer=options["layer"], out=out)
    else:
        split_onnx(model, options["layer"], out)


def _announce(model: Path, folder: Path, reused: bool) -> None:
    """One line on stderr, once per process (worker processes stay quiet)."""
    if folder in _announced or multiprocessing.parent_process() is not None:
        return
    _announced.add(folder)
    target = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["target_layer"]
    where = target.get("tensor") or target.get("requested")
    print(f"split {model.name} at '{where}' into {folder}" + (" (cached)" if reused else ""), file=sys.stderr,
          flush=True)


def _is_fused(path: Path) -> bool:
    """An ONNX file with cam-infer fuse's metadata, or an IR whose rt_info has it (served and benchmarked as it is)."""
    if path.suffix.lower() == ".xml":
        return is_fused_ir(path)
    if path.suffix.lower() != ".onnx":
        return False
    import onnx
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  (an unreadable file is no fused model; the split says what is wrong with it)
        return False
    return any(p.key == "cam_infer.method" for p in model.metadata_props)


def is_fused_ir(path: Path) -> bool:
    """An IR file written by ``cam-infer fuse`` (its rt_info has a ``cam_infer`` section naming the method, `fuse.ir`).
    Reads the .xml only, never the weights: the rt_info closes the file, so only its last MB is searched."""
    import os
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 2**20))
            tail = f.read()
    except OSError:
        return False
    return b"<cam_infer>" in tail and b"<method value=" in tail
