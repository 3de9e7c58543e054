"""The deployed-models benchmark: int8 MobileNetV2 against its float original, and what each
method costs on the int8 model itself, on OpenVINO CPU (and ONNX Runtime for the QOperator file, which
OpenVINO cannot read), batch 1.

    python bench/deployed.py --work /tmp/cam-deployed --out bench/deployed.md

Models (from ../shared/data): `mobilenetv2-fp32-dequant.onnx` (float), its int8 QDQ per-channel
quantization made here with onnxruntime.quantization (calibrated on the nine stable photos), the zoo's
QOperator `mobilenetv2-12-int8.onnx`, and the Coral uint8 `mobilenet_v1_0.5_160_quant.tflite` read by
OpenVINO directly. Forward passes of int8 and float are timed alternately, call by call, in one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from cam_infer.tools.bench import CASES, HEADER, run_cases  # noqa: E402

STABLE = ["chelsea.png", "coffee.png", "fruits.jpg", "hot_dog.jpg", "kitten_224.png", "parrot.jpg", "pelican.jpeg",
          "samoyed_dog.jpg", "squirrel_cls.jpg"]
METHOD_CASES = ["activation", "entropy", "eigen", "cam", "recipro", "ablation", "score top_k=64"]


def quantize_qdq(work: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from cam_infer import Preprocessing
    out = work / "mobilenetv2_int8_qdq.onnx"
    if out.is_file():
        return out
    prep = Preprocessing((224, 224))
    items = [{"input": prep(SHARED / "images" / n)[None]} for n in STABLE]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(items)

        def get_next(self):
            return next(self.items, None)
    quantize_static(str(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx"), str(out), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def bundles(work: Path) -> dict[str, Path]:
    from cam_infer.bundle import split_model
    sources = {"float32 (mobilenetv2-fp32-dequant.onnx)": SHARED / "models" / "mobilenetv2-fp32-dequant.onnx",
               "int8 QDQ per-channel (made here)": quantize_qdq(work),
               "int8 QOperator (mobilenetv2-12-int8.onnx)": SHARED / "deployed" / "mobilenetv2-12-int8.onnx",
               "uint8 TFLite (mobilenet_v1_0.5_160_quant.tflite)":
                   SHARED / "deployed" / "mobilenet_v1_0.5_160_quant.tflite"}
    made = {}
    for i, (name, source) in enumerate(sources.items()):
        out = work / f"bundle{i}"
        if not (out / "bundle.json").is_file():
            split_model(source, out=out, overwrite=True)
        made[name] = out
    return made


def forward_ratio(int8: Path, fp32: Path, backend: str, repeats: int) -> tuple[float, float]:
    """Median ms of one forward pass of each model, timed alternately call by call."""
    from cam_infer import Explainer
    a, b = Explainer(int8, backend=backend), Explainer(fp32, backend=backend)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(5):
        a.backend.forward(x), b.backend.forward(x)
    times: dict[str, list[float]] = {"int8": [], "fp32": []}
    for _ in range(repeats):
        for name, ex in (("int8", a), ("fp32", b)):
            start = time.perf_counter()
            ex.backend.forward(x)
            times[name].append((time.perf_counter() - start) * 1000)
    return statistics.median(times["int8"]), statistics.median(times["fp32"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-deployed")
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--repeats", type=int, default=7, help="method runs per case (default 7)")
    parser.add_argument("--forward-repeats", type=int, default=200)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    made = bundles(work)
    names = list(made)
    lines = ["| runtime | model | forward ms | over float32 |", "|---|---|---:|---:|"]
    for backend, int8 in (("openvino", names[1]), ("onnxruntime", names[1]), ("onnxruntime", names[2])):
        ms8, ms32 = forward_ratio(made[int8], made[names[0]], backend, args.forward_repeats)
        lines.append(f"| {backend} | {int8} | {ms8:.2f} | {ms8 / ms32:.2f}× (float32 {ms32:.2f} ms) |")
    print("\n".join(lines), flush=True)
    report = ["**Forward pass, batch 1, median of "
              f"{args.forward_repeats} alternating calls**", "", *lines, ""]
    for name, backend in ((names[1], "openvino"), (names[2], "onnxruntime"), (names[3], "openvino")):
        print(f"\n**{name}** on {backend}, batch 1, median of {args.repeats} runs\n\n{HEADER}", flush=True)
        rows: list[str] = []
        run_cases(str(made[name]), [backend], [c for c in METHOD_CASES if c in CASES], args.repeats,
                  score_repeats=3, report=lambda line: (print(line, flush=True), rows.append(line)))
        report += [f"**{name}** on {backend}, batch 1, median of {args.repeats} runs", "", HEADER, *rows, ""]
    if args.out:
        Path(args.out).write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
