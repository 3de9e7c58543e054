"""Build YOLO11, YOLO26 and YOLOv10 from Ultralytics' own model yamls at a reduced width, train them for a few
minutes on the synthetic detection scenes and export them as Ultralytics does (needs torch and ultralytics; no
weights are downloaded).

    python export/ultralytics_detectors.py tests/data/detectors --epochs 30

Each model is the yaml Ultralytics ships (`yolo11.yaml`, `yolo26.yaml`, `yolov10n.yaml`) with its `n` scale's width
multiplier set to `--width` (0.0625: a quarter of the n model's) and its channel cap to `--max-channels` (256),
5 classes: files of 0.3–0.8 MB. Training:
`model.train` on 128×128 scenes of `cam_infer.tools.synthetic.detection_scene` (train seed 0, val seed 1) with the
flips, mosaic and colour jitter off (a flip would move a tagged square's dot to the other side). Exports, all at
128×128 with a dynamic batch (`dynamic=True`), ONNX not simplified (onnxslim is not needed):

- `<name>_128.onnx`: the export's default, (N, 4+C, anchors); for YOLO26 and YOLOv10 (Ultralytics 8.4.190, `nms`
  unset) their one-to-many head's.
- `<name>_128_end2end.onnx` (YOLO26, YOLOv10): `nms=False`, the one-to-one head and a TopK inside the graph,
  (N, 300, 6).

Ultralytics imports torchvision for NMS and image transforms that neither building, training on tensors nor
exporting ONNX needs; torchvision's wheel does not load on this machine, so the script puts a stub package (NMS in
plain torch, for validation) on its own path before importing ultralytics. The stub lives in a temporary folder and
is never part of cam-infer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cam_infer.tools.synthetic import DETECTION_CLASSES, detection_scene  # noqa: E402

SIZE = 128
MODELS = {"yolo11": "11/yolo11.yaml", "yolo26": "26/yolo26.yaml", "yolov10": "v10/yolov10n.yaml"}
ONE2MANY = ("yolo26", "yolov10")

STUB_NMS = '''import torch


def nms(boxes, scores, iou_threshold):
    """Greedy NMS in torch, as torchvision.ops.nms (indices by decreasing score)."""
    order, keep = scores.argsort(descending=True), []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        rest, a = boxes[order[1:]], boxes[i]
        w = (torch.minimum(rest[:, 2], a[2]) - torch.maximum(rest[:, 0], a[0])).clamp(min=0)
        h = (torch.minimum(rest[:, 3], a[3]) - torch.maximum(rest[:, 1], a[1])).clamp(min=0)
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (rest[:, 2] - rest[:, 0]) * (rest[:, 3] - rest[:, 1]) - inter
        order = order[1:][inter / union <= iou_threshold]
    return torch.tensor(keep, dtype=torch.long)
'''


def torchvision_stub(folder: Path) -> Path:
    """A package named torchvision with distribution metadata (ultralytics reads its version) and ops.nms."""
    (folder / "torchvision" / "ops").mkdir(parents=True)
    (folder / "torchvision" / "transforms").mkdir()
    (folder / "torchvision" / "__init__.py").write_text('__version__ = "0.28.0"\nfrom . import ops\n')
    (folder / "torchvision" / "transforms" / "__init__.py").write_text("")
    (folder / "torchvision" / "ops" / "__init__.py").write_text(STUB_NMS)
    info = folder / "torchvision-0.28.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    return folder


def write_scenes(folder: Path, split: str, seed: int, n: int) -> None:
    """Ultralytics' dataset layout: images/<split>/*.png and labels/<split>/*.txt (class cx cy w h, in [0, 1])."""
    import cv2
    for sub in ("images", "labels"):
        (folder / sub / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = detection_scene(seed, i, SIZE)
        cv2.imwrite(str(folder / "images" / split / f"{i:05d}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        rows = []
        for (x1, y1, x2, y2), label in zip(s.boxes, s.labels):
            x2, y2 = x2 + 1, y2 + 1
            rows.append(f"{label} {(x1 + x2) / 2 / SIZE:.6f} {(y1 + y2) / 2 / SIZE:.6f} "
                        f"{(x2 - x1) / SIZE:.6f} {(y2 - y1) / SIZE:.6f}")
        (folder / "labels" / split / f"{i:05d}.txt").write_text("\n".join(rows) + "\n")


def dataset(folder: Path, train: int, val: int) -> Path:
    write_scenes(folder, "train", 0, train)
    write_scenes(folder, "val", 1, val)
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(DETECTION_CLASSES))
    (folder / "data.yaml").write_text(f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return folder / "data.yaml"


def narrow_yaml(name: str, width: float, channels: int, folder: Path) -> Path:
    """Ultralytics' yaml with the n scale's width multiplier set to `width` and its channel cap to `channels`, named
    so that Ultralytics reads scale n from it (<family>n-narrow.yaml)."""
    import ultralytics
    text = (Path(ultralytics.__file__).parent / "cfg" / "models" / MODELS[name]).read_text()
    text = re.sub(r"(\n\s*n: \[)([\d.]+), ([\d.]+), (\d+)\]",
                  lambda m: f"{m.group(1)}{m.group(2)}, {width}, {channels}]", text, count=1)
    text = re.sub(r"\nnc: \d+", f"\nnc: {len(DETECTION_CLASSES)}", text)
    (folder / f"{name}n-narrow.yaml").write_text(text)
    return folder / f"{name}n-narrow.yaml"


def train(name: str, cfg: Path, data: Path, epochs: int, work: Path):
    from ultralytics import YOLO
    model = YOLO(str(cfg), task="detect")
    start = time.perf_counter()
    if epochs:
        model.train(data=str(data), epochs=epochs, imgsz=SIZE, batch=32, workers=0, device="cpu", amp=False,
                    mosaic=0.0, fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.2, translate=0.1,
                    plots=False, project=str(work), name=name, exist_ok=True, seed=0, deterministic=True,
                    verbose=False, close_mosaic=0, warmup_epochs=1)
    seconds = time.perf_counter() - start
    metrics = {}
    if epochs:
        result = model.val(data=str(data), imgsz=SIZE, batch=32, workers=0, device="cpu", plots=False,
                           project=str(work), name=f"{name}_val", exist_ok=True, verbose=False)
        metrics = {"mAP50": round(float(result.box.map50), 3), "mAP50-95": round(float(result.box.map), 3)}
    return model, seconds, metrics


def export(model, out: Path, stem: str, **extra) -> Path:
    path = Path(model.export(format="onnx", imgsz=SIZE, dynamic=True, simplify=False, **extra))
    target = out / f"{stem}.onnx"
    shutil.move(str(path), target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=float, default=0.0625)
    parser.add_argument("--max-channels", type=int, default=256)
    parser.add_argument("--train", type=int, default=1000, help="training scenes")
    parser.add_argument("--val", type=int, default=200, help="validation scenes")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--openvino", action="store_true", help="also export each model as Ultralytics' OpenVINO IR")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.out = args.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="ultralytics_detectors_"))
    os.chdir(work)                                   # Ultralytics writes a yaml-built model's exports to the cwd
    sys.path.insert(0, str(torchvision_stub(work / "stub")))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "config"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    import ultralytics
    torch.manual_seed(0)
    np.random.seed(0)
    data = dataset(work / "scenes", args.train, args.val) if args.epochs else None
    record = {"ultralytics": ultralytics.__version__, "torch": torch.__version__, "imgsz": SIZE, "width": args.width,
              "epochs": args.epochs, "train_scenes": args.train, "val_scenes": args.val, "models": {}}
    for name in args.models.split(","):
        cfg = narrow_yaml(name, args.width, args.max_channels, work)
        model, seconds, metrics = train(name, cfg, data, args.epochs, work)
        files = [export(model, args.out, f"{name}_{SIZE}")]
        if name in ONE2MANY:
            files.append(export(model, args.out, f"{name}_{SIZE}_end2end", nms=False))
        if args.openvino:
            path = Path(model.export(format="openvino", imgsz=SIZE))          # its defaults: batch 1, float32
            shutil.move(str(path), args.out / f"{name}_{SIZE}_openvino_model")
        params = sum(p.numel() for p in model.model.parameters())
        record["models"][name] = {"parameters": int(params), "train_seconds": round(seconds), **metrics,
                                  "files": {f.name: f.stat().st_size for f in files}}
        print(json.dumps(record["models"][name]), flush=True)
    (args.out / "ultralytics_detectors.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
