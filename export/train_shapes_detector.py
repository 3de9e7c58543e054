"""Train ShapesDetector on the synthetic detection scenes and write the package's embedded detector bundle
(needs torch).

    python export/train_shapes_detector.py        # 7 minutes on 2 cores; writes cam_infer/data/shapes_detector/

Every epoch draws fresh training scenes (seed 0); the test scenes use seed 1. Assignment: each object goes
to the level of its size (longest side ≤ 32 px: stride 8, else 16) and to the cells of that level whose
centres lie in the middle half of its box (at least the cell of its centre). Loss: binary cross-entropy of
the class scores over every anchor (divided by the positives) plus L1 of the box distances in cells at the
positives. The record of the run — seed, epochs, time, test precision and recall at IoU 0.5, how often a
square and a tagged square are told apart — is written next to the bundle.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cam_infer.tools.synthetic import DETECTION_CLASSES, SIZE, detection_scene  # noqa: E402
from export.training import fit  # noqa: E402

TRAIN_SEED, TEST_SEED = 0, 1
STRIDES = (8, 16)


def batch_tensors(scenes):
    import torch
    x = np.stack([s.image for s in scenes]).astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def assign(scenes):
    """Per level: class targets (N,C,h,w), box targets (N,4,h,w) in cells, positive mask (N,h,w)."""
    import torch
    out = []
    for s in STRIDES:
        g = SIZE // s
        cls = np.zeros((len(scenes), len(DETECTION_CLASSES), g, g), np.float32)
        box = np.zeros((len(scenes), 4, g, g), np.float32)
        pos = np.zeros((len(scenes), g, g), bool)
        centres = (np.arange(g) + 0.5) * s
        for n, scene in enumerate(scenes):
            for (x1, y1, x2, y2), label in zip(scene.boxes, scene.labels):
                x2, y2 = x2 + 1, y2 + 1
                if (max(x2 - x1, y2 - y1) <= 32) != (s == 8):
                    continue
                qx, qy = (x2 - x1) / 4, (y2 - y1) / 4
                cols = np.flatnonzero((centres > x1 + qx) & (centres < x2 - qx))
                rows = np.flatnonzero((centres > y1 + qy) & (centres < y2 - qy))
                if not len(cols):
                    cols = [int(np.clip(((x1 + x2) / 2) // s, 0, g - 1))]
                if not len(rows):
                    rows = [int(np.clip(((y1 + y2) / 2) // s, 0, g - 1))]
                for r in rows:
                    for c in cols:
                        cls[n, label, r, c] = 1
                        box[n, :, r, c] = [(centres[c] - x1) / s, (centres[r] - y1) / s, (x2 - centres[c]) / s,
                                           (y2 - centres[r]) / s]
                        pos[n, r, c] = True
        out.append((torch.from_numpy(cls), torch.from_numpy(box), torch.from_numpy(pos)))
    return out


def loss_of(model, x, targets):
    from torch.nn import functional as F
    raw = model.model[7].raw(model.features(x))
    positives = max(1, sum(int(t[2].sum()) for t in targets))
    total = x.new_zeros(())
    for (ltrb, logits), (cls, box, pos) in zip(raw, targets):
        total = total + F.binary_cross_entropy_with_logits(logits, cls, reduction="sum") / positives
        if pos.any():
            mask = pos[:, None].expand_as(ltrb)
            total = total + F.l1_loss(ltrb[mask], box[mask], reduction="sum") / positives
    return total


def evaluate(model, n: int) -> dict:
    """Precision and recall at IoU ≥ 0.5 with the right class (conf 0.25, NMS 0.7); squares told apart."""
    import torch

    from cam_infer.detection.decode import detect, iou
    scenes = [detection_scene(TEST_SEED, i) for i in range(n)]
    with torch.no_grad():
        outputs = model(batch_tensors(scenes)).numpy()
    tp = fp = found = truths = 0
    squares = square_right = 0
    for scene, output in zip(scenes, outputs):
        d = detect(output, 0.25, 0.7)
        truths += len(scene.boxes)
        matched = set()
        for box, cls in zip(d.boxes, d.classes):
            overlaps = iou(box, scene.boxes.astype(np.float64) + [0, 0, 1, 1]) if len(scene.boxes) else np.zeros(0)
            k = int(np.argmax(overlaps)) if len(overlaps) else -1
            if k >= 0 and overlaps[k] >= 0.5 and k not in matched:
                matched.add(k)
                found += 1
                if int(scene.labels[k]) in (1, 4):
                    squares += 1
                    square_right += int(cls == scene.labels[k])
                if cls == scene.labels[k]:
                    tp += 1
                    continue
            fp += 1
    return {"precision": round(tp / max(tp + fp, 1), 4), "recall": round(tp / max(truths, 1), 4),
            "boxes_found": round(found / max(truths, 1), 4),
            "square_vs_tagged_square": round(square_right / max(squares, 1), 4), "test_scenes": n}


def export_onnx(model, path: Path) -> None:
    import onnx
    import torch
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}}, opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    names = {i: n for i, n in enumerate(DETECTION_CLASSES)}
    for key, value in (("task", "detect"), ("stride", str(max(STRIDES))), ("imgsz", str([SIZE, SIZE])),
                       ("names", str(names)), ("description", "cam-infer ShapesDetector (export/train_shapes_detector.py)")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def main() -> None:
    import torch

    from cam_infer.detection.split import split_detector
    from models.shapes_detector import shapes_detector

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "cam_infer" / "data" / "shapes_detector"))
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--per-epoch", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()

    torch.manual_seed(TRAIN_SEED)
    torch.set_num_threads(2)
    model = shapes_detector(len(DETECTION_CLASSES))

    def losses(epoch: int):
        scenes = [detection_scene(TRAIN_SEED, epoch * args.per_epoch + i) for i in range(args.per_epoch)]
        for i in range(0, len(scenes) - args.batch + 1, args.batch):
            chunk = scenes[i:i + args.batch]
            yield loss_of(model, batch_tensors(chunk), assign(chunk))

    def report(epoch: int, loss: float, seconds: float) -> None:
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss:.3f}, {seconds:.0f} s, {evaluate(model, 100)}", flush=True)

    seconds = fit(model, args.epochs, args.per_epoch // args.batch, args.lr, losses, report)
    model.eval()
    result = evaluate(model, args.test)
    print("test:", result)
    with tempfile.TemporaryDirectory() as work:
        onnx_path = Path(work) / "shapes_detector.onnx"
        export_onnx(model, onnx_path)
        split_detector(onnx_path, Path(args.out), overwrite=True)
    record = {"script": "export/train_shapes_detector.py", "seed": TRAIN_SEED, "test_seed": TEST_SEED,
              "epochs": args.epochs, "scenes_per_epoch": args.per_epoch, "batch": args.batch, "lr": args.lr,
              "training_seconds": round(seconds, 1), "torch": torch.__version__,
              "parameters": sum(p.numel() for p in model.parameters()), "test": result}
    (Path(args.out).parent / "shapes_detector_training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
