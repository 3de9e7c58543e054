"""Small int8 classifiers as other tools ship them, for the deployed-model tests (needs torch).

    python export/deployed_int8.py cifar-qop tests/data/cifar10_mobilenetv2_int8_qop.onnx

``cifar-qop``: a CIFAR-10 MobileNetV2 (32x32 input in [-1, 1], 10 classes, the CIFAR layout of
public int8 model collections: a stride-1 stem, a fixed batch of 1, the 10 scores returned as (10,)
without a batch axis), random
weights with batch-norm statistics taken from random images, quantized by ONNX Runtime to QOperator
int8 (QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CIFAR_SIZE = 32


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n,3,size,size) float32 in [-1, 1]: 4x4 random colours upsampled, a stand-in for photos."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 4, 4, 3)).astype(np.uint8)
    fine = np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR)) for c in coarse])
    return (fine.transpose(0, 3, 1, 2) / 127.5 - 1).astype(np.float32)


def cifar_mobilenet_v2(seed: int = 0):
    """MobileNetV2 (width 0.5) laid out for 32x32 images: stride-1 stem and first stride-2 stage at 1."""
    import torch
    from torch import nn

    from models.mobilenetv2 import MobileNetV2

    class CifarMobileNetV2(MobileNetV2):
        _SETTINGS = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2],
                     [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]

        def __init__(self):
            super().__init__(num_classes=10, width_mult=0.5)
            self.features[0][0].stride = (1, 1)

        def forward(self, x):
            x = nn.functional.avg_pool2d(self.features(x), 4)
            return self.classifier(x.view(x.size(0), -1)).reshape(-1)

    torch.manual_seed(seed)
    model = CifarMobileNetV2()
    model.train()
    with torch.no_grad():                      # batch-norm statistics of random images: sane activations
        for i in range(4):
            model(torch.from_numpy(smooth_images(16, CIFAR_SIZE, seed=seed + i)))
        model.eval()
        logits = model(torch.from_numpy(smooth_images(64, CIFAR_SIZE, seed=seed + 4))).reshape(64, -1)
        model.classifier[1].bias -= logits.mean(dim=0)                       # no class wins every image
        model.classifier[1].weight /= logits.std(dim=0).clamp(min=1e-3)[:, None]
    return model


def export_float(model, size: int) -> bytes:
    """The model as a fixed-batch-1 ONNX file (what such collections ship)."""
    import torch
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 3, size, size), buffer, input_names=["input"],
                      output_names=["output"], opset_version=13, dynamo=False)
    return buffer.getvalue()


def quantize_qop(float_model: bytes, out: Path, size: int, seed: int = 0) -> None:
    """Static QOperator int8 quantization (uint8 activations, int8 weights) calibrated on smooth random images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": image[None]} for image in smooth_images(16, size, seed=seed + 5)])

        def get_next(self):
            return next(self.batches, None)

    source = out.with_suffix(".float.onnx")
    source.write_bytes(float_model)
    try:
        quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        source.unlink()


def main() -> int:
    kind, out = sys.argv[1], Path(sys.argv[2])
    if kind != "cifar-qop":
        print(f"error: unknown model {kind!r}; known: cifar-qop", file=sys.stderr)
        return 1
    quantize_qop(export_float(cifar_mobilenet_v2(), CIFAR_SIZE), out, CIFAR_SIZE)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
