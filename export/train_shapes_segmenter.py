"""Train ShapesSegmenter on the synthetic shapes scenes and write the package's embedded segmenter (needs torch).

    python export/train_shapes_segmenter.py      # writes cam_infer/data/shapes_segmenter/shapes_segmenter.onnx

Every epoch draws fresh training scenes (seed 0) from the four splits in turn; the held-out scenes use seed 1.
The label map of a scene is 0 (background, distractors included) everywhere but on its instances' masks,
which carry 1 + the class index. Loss: pixel-wise cross-entropy. The record of the run — seed, epochs,
time, held-out pixel accuracy, per-class IoU and mIoU (background included) — is written next to the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cam_infer.tools.synthetic import SIZE, SPLITS, scene, segmentation_labels  # noqa: E402
from export.training import fit  # noqa: E402

TRAIN_SEED, TEST_SEED = 0, 1


def scenes_of(seed: int, start: int, n: int):
    return [scene(SPLITS[i % len(SPLITS)], seed, i) for i in range(start, start + n)]


def tensors(scenes):
    import torch
    x = np.stack([s.image for s in scenes]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    y = np.stack([segmentation_labels(s) for s in scenes]).astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def confusion(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    counts = np.bincount(truth.ravel() * classes + predicted.ravel(), minlength=classes * classes)
    return counts.reshape(classes, classes)


def evaluate(model, n: int) -> dict:
    """Held-out pixel accuracy, IoU per class = TP / (TP + FP + FN), mIoU = their mean."""
    import torch

    from models.shapes_segmenter import CLASSES
    matrix = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    for start in range(0, n, 50):
        x, y = tensors(scenes_of(TEST_SEED, start, min(50, n - start)))
        with torch.no_grad():
            matrix += confusion(model(x).argmax(1).numpy(), y.numpy(), len(CLASSES))
    tp = np.diag(matrix).astype(np.float64)
    iou = tp / np.maximum(matrix.sum(0) + matrix.sum(1) - tp, 1)
    return {"pixel_accuracy": round(float(tp.sum() / matrix.sum()), 4),
            "iou": {c: round(float(v), 4) for c, v in zip(CLASSES, iou)},
            "miou": round(float(iou.mean()), 4), "test_scenes": n}


def export_onnx(model, path: Path) -> None:
    import onnx
    import torch

    from models.shapes_segmenter import CLASSES
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    from cam_infer.tools.demo import SHAPES_PREPROCESSING
    for key, value in (("task", "segment"), ("names", json.dumps(list(CLASSES))),
                       ("description", "cam-infer ShapesSegmenter (export/train_shapes_segmenter.py)"),
                       ("cam_infer.preprocessing", json.dumps(SHAPES_PREPROCESSING))):   # read when it is split
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def main() -> None:
    import torch
    from torch.nn import functional as F

    from models.shapes_segmenter import shapes_segmenter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "cam_infer" / "data" / "shapes_segmenter"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--per-epoch", type=int, default=768)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--test", type=int, default=400)
    args = parser.parse_args()

    torch.manual_seed(TRAIN_SEED)
    torch.set_num_threads(2)
    model = shapes_segmenter()

    def losses(epoch: int):
        for i in range(0, args.per_epoch - args.batch + 1, args.batch):
            x, y = tensors(scenes_of(TRAIN_SEED, epoch * args.per_epoch + i, args.batch))
            yield F.cross_entropy(model(x), y)

    def report(epoch: int, loss: float, seconds: float) -> None:
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss:.4f}, {seconds:.0f} s, {evaluate(model, 100)}", flush=True)

    seconds = fit(model, args.epochs, args.per_epoch // args.batch, args.lr, losses, report)
    model.eval()
    result = evaluate(model, args.test)
    export_onnx(model, Path(args.out) / "shapes_segmenter.onnx")
    record = {"script": "export/train_shapes_segmenter.py", "seed": TRAIN_SEED, "test_seed": TEST_SEED,
              "epochs": args.epochs, "scenes_per_epoch": args.per_epoch, "batch": args.batch, "lr": args.lr,
              "training_seconds": round(seconds, 1), "torch": torch.__version__,
              "parameters": sum(p.numel() for p in model.parameters()), "test": result}
    (Path(args.out).parent / "shapes_segmenter_training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
