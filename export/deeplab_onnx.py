"""The shared DeepLab (uint8 TFLite, ending in an ArgMax) as an ONNX file, for ONNX Runtime. Needs tf2onnx and
tensorflow (not the package's dependencies):

    python export/deeplab_onnx.py ../shared/data/segmentation/deeplabv3_mnv2_dm05_pascal_quant.tflite deeplab.onnx

`python -m tf2onnx.convert --tflite` (opset 17) writes QDQ ONNX (QuantizeLinear/DequantizeLinear around float
convolutions, NHWC input, the ArgMax kept): 0.93 MB. On the four checked photos its class ids agree with
OpenVINO's reading of the TFLite file on 97.5–99.8 % of the pixels (rounding of the uint8 steps; the same
classes are present). The file is not committed (the model's licence is its own); split it as any segmenter:

    cam-infer split deeplab.onnx --out bundles/deeplab --labels voc21.txt
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def convert(tflite: Path, out: Path, opset: int = 17) -> Path:
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", str(tflite), "--output", str(out),
                    "--opset", str(opset)], check=True)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])))
