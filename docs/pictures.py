"""Write the site's pictures into docs/img/ (committed; rerun after a method changes its maps):

    python docs/pictures.py

- ``img/methods/<method>.jpg``: each registered method's overlay of one photo, as `Explanation.overlay` draws
  it; on MobileNetV2 and a photo of ``../shared/data`` when that is there, else on the embedded ShapesNet
  and a synthetic scene. Gradient methods only where torch is installed.
  Methods of transformers only (attention rollout, ViT Recipro-CAM) on a ViT trained on the synthetic scenes,
  given with ``--vit model.onnx``, and a synthetic scene; without it their pictures are left as they are.
- ``img/methods-grid.jpg``: the gradient-free methods side by side.
- ``img/detection.jpg``: the embedded detector's grid, as ``cam-infer demo`` draws it.
- ``img/audit-report.jpg``: the top of an audit's ``index.html`` (ShapesNet, 12 synthetic scenes), as headless
  Chromium shows it; only where Chromium is installed.
- ``img/diff-report.jpg``: the top of a diff's ``index.html`` (MobileNetV2 fp32 against int8, the photos of
  ``../shared/data``), as headless Chromium shows it; only where Chromium and the photos are.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cam_infer import Explainer, split_onnx  # noqa: E402
from cam_infer.tools.demo import DEMO_SEED, embedded_bundle_path, run_detection_demo  # noqa: E402
from cam_infer.methods import GRADIENT_FREE, METHODS  # noqa: E402
from cam_infer.tools.synthetic import CLASSES, scene  # noqa: E402

IMG = ROOT / "docs" / "img"
SHARED = ROOT.parent / "shared" / "data"
PHOTO = SHARED / "images" / "samoyed_dog.jpg"
WIDTH = 280                                     # pixels of one overlay on the site
CHANNELS = {"score": {"top_k": 64}, "ss-cam": {"top_k": 16}, "is-cam": {"top_k": 16}}   # minutes, not hours


TRANSFORMERS_ONLY = {"vit-recipro"}                 # besides those that need the attention


def subject(work: Path) -> tuple[Path, object, str]:
    """The bundle, the image and what they are."""
    if PHOTO.is_file():
        bundle = split_onnx(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", layer="auto", out=work / "mobilenet",
                            labels=SHARED / "imagenet_classes.txt").path
        return bundle, PHOTO, f"MobileNetV2, {PHOTO.name}"
    return embedded_bundle_path(), scene("multiple", DEMO_SEED, 0).image, "ShapesNet, a synthetic scene"


def write_jpeg(path: Path, rgb: np.ndarray, width: int = WIDTH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    small = cv2.resize(rgb, (width, round(rgb.shape[0] * width / rgb.shape[1])), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])


def method_pictures(bundle: Path, image) -> dict[str, np.ndarray]:
    has_torch = importlib.util.find_spec("torch") is not None
    plain = Explainer(bundle)
    with_gradients = Explainer(bundle, gradients="torch") if has_torch else None
    pictures = {}
    for name, spec in METHODS.items():
        if (spec.gradient and not has_torch) or transformers_only(spec):
            continue
        ex = with_gradients if spec.gradient else plain
        e = ex.explain([image], name, **CHANNELS.get(name, {}))
        pictures[name] = e.overlay(0)
        print(f"{name}: {e.label(int(e.targets[0]))} p={e.scores[0]:.2f}")
    return pictures


def transformers_only(spec) -> bool:
    return spec.needs == "attention" or spec.name in TRANSFORMERS_ONLY


def transformer_pictures(vit: Path, work: Path) -> dict[str, np.ndarray]:
    """Each method of transformers only, on `vit` (split with auto) and a synthetic scene of its classes: the second
    (on the first, the committed ViT's vit-recipro map is near-uniform and captioned so, high wherever the square
    the model predicts is not: what it says of an almost empty image; how often that happens is the pointing in
    bench/transformers_pointing.md)."""
    bundle = split_onnx(vit, layer="auto", out=work / "vit", labels=list(CLASSES),
                        preprocessing={"crop": "none", "mean": (0.5,) * 3, "std": (0.25,) * 3}).path
    explainer, image = Explainer(bundle), scene("multiple", DEMO_SEED, 1).image
    pictures = {}
    for name in (n for n, spec in METHODS.items() if transformers_only(spec)):
        pictures[name] = explainer.explain([image], name).overlay(0)
        print(f"{name}: on {vit.name}")
    return pictures


def grid(pictures: dict[str, np.ndarray], names, columns: int = 4) -> np.ndarray:
    """The named pictures in rows of `columns`, scaled to one height, the last row padded with white."""
    height = min(pictures[n].shape[0] for n in names)
    tiles = [cv2.resize(pictures[n], (round(pictures[n].shape[1] * height / pictures[n].shape[0]), height))
             for n in names]
    width = max(tile.shape[1] for tile in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % columns)
    return np.concatenate([np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)])


def audit_screenshot(work: Path) -> np.ndarray | None:
    """The top of an audit report's page as a browser shows it, or None without Chromium."""
    from cam_infer.audit import AuditOptions, run_audit
    from cam_infer.tools.synthetic import write_scenes

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None
    shutil.copytree(embedded_bundle_path(), work / "shapes")
    write_scenes(work / "scenes", "cluttered", n=12)
    (work / "scenes" / "boxes.json").rename(work / "boxes.json")
    here = Path.cwd()
    os.chdir(work)                          # the run's own files are given relative to it
    try:
        run_audit(Path("shapes"), [Path("scenes")], AuditOptions(methods=("recipro", "eigen", "score"), tolerance=15),
                  Path("report"), boxes=Path("boxes.json"), progress=False)
    finally:
        os.chdir(here)
    shot = work / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={work / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1400,860", (work / "report" / "index.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    return cv2.cvtColor(cv2.imread(str(shot)), cv2.COLOR_BGR2RGB)


def diff_screenshot(work: Path) -> np.ndarray | None:
    """The top of a diff report's page (MobileNetV2 fp32 against the zoo's int8 file on the photos of ../shared/data),
    as a browser shows it, or None without Chromium or the photos."""
    from cam_infer.diff import run_diff

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None or not PHOTO.is_file():
        return None
    work.mkdir(exist_ok=True)
    for name, source in (("mobilenetv2.onnx", "models/mobilenetv2-fp32-dequant.onnx"),
                         ("mobilenetv2-12-int8.onnx", "deployed/mobilenetv2-12-int8.onnx"), ("photos", "images")):
        (work / name).symlink_to(SHARED / source)
    here = Path.cwd()
    os.chdir(work)                          # the run's own files are given relative to it
    try:
        run_diff(Path("mobilenetv2.onnx"), Path("mobilenetv2-12-int8.onnx"), [Path("photos")], Path("diff"),
                 progress=False)
    finally:
        os.chdir(here)
    shot = work / "diff.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={work / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1000,1300", (work / "diff" / "index.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    return cv2.cvtColor(cv2.imread(str(shot)), cv2.COLOR_BGR2RGB)


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit", type=Path, help="a ViT classifier of the synthetic scenes (.onnx), for rollout")
    parser.add_argument("--only-vit", action="store_true", help="only the pictures of methods of transformers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.vit:
            for name, picture in transformer_pictures(args.vit, Path(tmp)).items():
                write_jpeg(IMG / "methods" / f"{name}.jpg", picture)
        if args.only_vit:
            return
        bundle, image, what = subject(Path(tmp))
        print(what)
        pictures = method_pictures(bundle, image)
        for name, picture in pictures.items():
            write_jpeg(IMG / "methods" / f"{name}.jpg", picture)
        write_jpeg(IMG / "methods-grid.jpg", grid(pictures, GRADIENT_FREE), width=1000)
        run_detection_demo(Path(tmp), "onnxruntime", 2, report=lambda *_: None)
        write_jpeg(IMG / "detection.jpg", cv2.cvtColor(cv2.imread(str(Path(tmp) / "detection.png")), cv2.COLOR_BGR2RGB),
                   width=900)
        report = audit_screenshot(Path(tmp))
        if report is not None:
            write_jpeg(IMG / "audit-report.jpg", report, width=800)
        report = diff_screenshot(Path(tmp) / "diff")
        if report is not None:
            write_jpeg(IMG / "diff-report.jpg", report, width=800)


if __name__ == "__main__":
    main()
