"""Train the small transformers of the tests on the synthetic scenes and export them (needs torch).

    python export/train_transformers.py vit deit swin     # a few minutes each on 2 cores

Writes tests/data/transformers/<name>_legacy.onnx and <name>_dynamo.onnx (the same weights through
torch's two exporters; their graphs differ), <name>.pt (the weights, for the torch references),
<name>.json, the record of the run (seed, epochs, time, test accuracy per split), and for the ViT the
deployed variants:

    python export/train_transformers.py --variants vit   # vit_int8_qdq.onnx, vit_fp16.onnx from vit.pt
    python export/train_transformers.py deit --patch 8 --epochs 5 --per-split 600 --out /tmp/deit8  # a trial

int8: ONNX Runtime's static quantization (QDQ, per-tensor, 64 calibration scenes of seed 2) of the
legacy export; fp16: the model in half precision through the legacy exporter (float16 inputs and
outputs, as onnxconverter-common's keep_io_types=False writes). Training follows export/train_shapes.py: fresh scenes every epoch
(seed 0), test scenes from seed 1, the shapes classifier's preprocessing (mean 0.5, std 0.25).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cam_infer.tools.synthetic import CLASSES, SPLITS  # noqa: E402
from export.train_shapes import TEST_SEED, TRAIN_SEED, accuracy, tensors, training_scenes  # noqa: E402
from export.training import fit  # noqa: E402

OUT = ROOT / "tests" / "data" / "transformers"
SIZE = (128, 128)


def export(model, path: Path, dynamo: bool) -> None:
    import torch
    x = torch.zeros(1, 3, *SIZE)
    if dynamo:
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=256)},), external_data=False)
    else:
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], dynamo=False,
                          opset_version=17, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def train(name: str, epochs: int, per_split: int, batch: int, lr: float, patch: int | None = None,
          out: Path = OUT) -> dict:
    import torch

    from models import vit
    torch.manual_seed(TRAIN_SEED)
    model = getattr(vit, name)(len(CLASSES), size=SIZE, **({"patch": patch} if patch else {}))

    def losses(epoch: int):
        x, y = tensors(training_scenes(epoch, per_split))
        for i in range(0, len(x) - batch + 1, batch):
            yield torch.nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch])

    def report(epoch: int, loss: float, seconds: float) -> None:
        print(f"{name} epoch {epoch + 1}/{epochs}: loss {loss:.4f}, {seconds:.0f} s, test {accuracy(model, 50)}",
              flush=True)

    seconds = fit(model, epochs, len(SPLITS) * per_split // batch, lr, losses, report)
    model.eval()
    result = accuracy(model, 250)
    out.mkdir(parents=True, exist_ok=True)
    for dynamo in (False, True):
        export(model, out / f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx", dynamo)
    torch.save(model.state_dict(), out / f"{name}.pt")
    record = {"script": "export/train_transformers.py", "model": f"models.vit.{name}", "input_size": list(SIZE),
              "seed": TRAIN_SEED, "test_seed": TEST_SEED, "epochs": epochs,
              "train_scenes_per_split_and_epoch": per_split, "batch": batch, "lr": lr,
              **({"patch": patch} if patch else {}),
              "training_seconds": round(seconds, 1), "torch": torch.__version__,
              "parameters": sum(p.numel() for p in model.parameters()), "test_scenes_per_split": 250,
              "test_accuracy": {k: round(v, 4) for k, v in result.items()},
              "test_accuracy_mean": round(float(np.mean(list(result.values()))), 4)}
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return record


def variants(name: str) -> None:
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from cam_infer.tools.synthetic import generate
    from models import vit
    model = getattr(vit, name)(len(CLASSES), size=SIZE)
    model.load_state_dict(torch.load(OUT / f"{name}.pt", weights_only=True))
    model.eval()
    calibration = [tensors(generate(split, 16, 2))[0].numpy() for split in SPLITS]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter({"input": x[i:i + 1]} for x in calibration for i in range(len(x)))

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(OUT / f"{name}_legacy.onnx"), str(OUT / f"{name}_int8_qdq.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    half = model.half()
    torch.onnx.export(half, (torch.zeros(1, 3, *SIZE, dtype=torch.float16),), str(OUT / f"{name}_fp16.onnx"),
                      input_names=["input"], output_names=["logits"], dynamo=False, opset_version=17,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def main() -> None:
    import torch
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", choices=("vit", "deit", "swin"))
    parser.add_argument("--variants", action="store_true", help="only write the int8 and fp16 files from <name>.pt")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--per-split", type=int, default=800, help="training scenes per split and epoch")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--patch", type=int, help="patch size in pixels (default: the model's own, 8 or 16)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the files are written")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.models:
        if args.variants:
            variants(name)
        else:
            train(name, args.epochs, args.per_split, args.batch, args.lr, args.patch, args.out)


if __name__ == "__main__":
    main()
