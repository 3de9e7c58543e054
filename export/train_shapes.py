"""Train ShapesNet on the synthetic scenes and write the package's embedded bundle (needs torch).

    python export/train_shapes.py                 # ~5 minutes on 2 cores; writes cam_infer/data/shapes/

Every epoch draws fresh training scenes (seed 0, the four splits in equal parts, never the test
images: those use seed 1), so the model cannot memorise them. The record of the run — seed,
epochs, time, test accuracy per split — is written next to the bundle in ``training.json``;
re-running the script reproduces the bundle's accuracy (torch's CPU kernels are deterministic
with one thread per op order; small differences in the last digit are possible across machines).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cam_infer.tools.synthetic import CLASSES, SPLITS, generate  # noqa: E402
from export.training import fit  # noqa: E402

PREPROCESSING = {"crop": "none", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
TRAIN_SEED, TEST_SEED = 0, 1


def tensors(scenes):
    import torch
    x = np.stack([s.image for s in scenes]).astype(np.float32) / 255.0
    x = (x - np.float32(0.5)) / np.float32(0.25)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), \
        torch.tensor([s.label for s in scenes])


def training_scenes(epoch: int, per_split: int):
    scenes = [s for split in SPLITS for s in generate(split, per_split, TRAIN_SEED, start=epoch * per_split)]
    order = np.random.default_rng((TRAIN_SEED, epoch)).permutation(len(scenes))
    return [scenes[i] for i in order]


def accuracy(model, per_split: int) -> dict[str, float]:
    import torch
    result = {}
    with torch.no_grad():
        for split in SPLITS:
            x, y = tensors(generate(split, per_split, TEST_SEED))
            result[split] = float((model(x).argmax(1) == y).float().mean())
    return result


def main() -> None:
    import torch

    import models
    from cam_infer import export_torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "cam_infer" / "data" / "shapes"))
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--per-split", type=int, default=1000, help="training scenes per split and epoch")
    parser.add_argument("--test-per-split", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    torch.manual_seed(TRAIN_SEED)
    torch.set_num_threads(2)
    model = models.shapes_net(len(CLASSES))

    def losses(epoch: int):
        x, y = tensors(training_scenes(epoch, args.per_split))
        for i in range(0, len(x) - args.batch + 1, args.batch):
            yield torch.nn.functional.cross_entropy(model(x[i:i + args.batch]), y[i:i + args.batch])

    def report(epoch: int, loss: float, seconds: float) -> None:
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss:.4f}, {seconds:.0f} s, test {accuracy(model, 100)}",
              flush=True)

    seconds = fit(model, args.epochs, len(SPLITS) * args.per_split // args.batch, args.lr, losses, report)
    model.eval()
    result = accuracy(model, args.test_per_split)
    print("test accuracy per split:", result)

    out = Path(args.out)
    labels = out.parent / "shapes_labels.txt"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("\n".join(CLASSES) + "\n")
    export_torch(model, layer="features", input_size=(128, 128), out=out, exporter="legacy",
                 preprocessing=PREPROCESSING, labels=labels, overwrite=True)
    labels.unlink()
    record = {"script": "export/train_shapes.py", "seed": TRAIN_SEED, "test_seed": TEST_SEED,
              "epochs": args.epochs, "train_scenes_per_split_and_epoch": args.per_split, "batch": args.batch,
              "lr": args.lr, "training_seconds": round(seconds, 1), "torch": torch.__version__,
              "parameters": sum(p.numel() for p in model.parameters()),
              "test_scenes_per_split": args.test_per_split,
              "test_accuracy": {k: round(v, 4) for k, v in result.items()},
              "test_accuracy_mean": round(float(np.mean(list(result.values()))), 4)}
    (out.parent / "shapes_training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
