"""The transformer benchmark (issue: vision transformers): what each method that runs on a token model costs over
the forward pass, and ViT Recipro-CAM against openvino-xai 1.1.0's ViTReciproCAM on the same ONNX file (target: ≥ 10×
faster, equal maps, any batch). A ViT-S-sized classifier (224×224, patch 16, D = 384, 12 blocks, 6 heads, 197 tokens;
random weights, seed 0: the time does not depend on them), exported with the legacy exporter (dynamic batch, which
openvino-xai needs) and split with ``auto`` at the last block's input.

    python bench/transformers.py --work /tmp/cam-transformers --out bench/transformers.md
    python bench/transformers.py --batches 1 --out bench/transformers.md          # batch 1 only (a loaded machine)
    python bench/transformers.py --small --repeats 3 --out bench/transformers_small.md

``--small``: every method (score, ss-cam, is-cam and the gradient methods through torch included) on the three
trained test models (tests/data/transformers: ViT, DeiT, Swin-style, 128×128), both runtimes, batch 1. Their
forward passes are 2–10 ms, so on a shared machine the ratios of the cheap methods are noisy; the many-pass
methods' ratios to their own passes are the steadier figure.

Method ÷ forward: `cam_infer.tools.bench.measure` in one process per row, the forward pass and the method alternated
call by call after a warm-up, both runtimes at f32, batch 1 and 8. Against openvino-xai: one driver process per side,
kept warm; the parent asks each for one call at a time, alternating sides (and their order) call by call; each call
is timed inside its process; each side at its default precision (bf16 on this CPU's OpenVINO), then both at f32
(openvino-xai's compile given ``INFERENCE_PRECISION_HINT=f32``). openvino-xai explains batch 1 only; ours also
batch 8 (per image). The maps of the two sides on the same input are compared (f32, all classes' raw logits).
The same model converted to OpenVINO IR (float32 weights) adds rows: vit-recipro, rollout and activation on our IR
bundle, and the comparison with openvino-xai run on that IR file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CASES = [("vit-recipro", {}), ("vit-recipro (h·w full copies)", {"reduced": False}), ("rollout", {}),
         ("activation", {}), ("recipro", {}), ("ablation", {})]
IR_CASES = [("vit-recipro", {}), ("rollout", {}), ("activation", {})]
SIZE = {"d": 384, "heads": 6, "depth": 12, "patch": 16, "size": (224, 224), "classes": 10}


def prepared(work: Path) -> tuple[Path, Path]:
    """(the ViT-S ONNX file, our bundle split from that same file)."""
    onnx_path, bundle = work / "vit-s.onnx", work / "vit-s-bundle"
    if not (bundle / "bundle.json").is_file() or not onnx_path.is_file():
        import torch
        from tiny_transformers import ViT, export

        from cam_infer import split_onnx
        torch.manual_seed(0)
        work.mkdir(parents=True, exist_ok=True)
        export(ViT(**SIZE).eval(), str(onnx_path), (224, 224))
        split_onnx(onnx_path, "auto", bundle, overwrite=True)
    return onnx_path, bundle


def prepared_ir(work: Path, onnx_path: Path) -> tuple[Path, Path]:
    """(the ViT-S as OpenVINO IR, float32 weights, converted from the ONNX file; our IR bundle split from it)."""
    ir_path, bundle = work / "vit-s.xml", work / "vit-s-ir-bundle"
    if not (bundle / "bundle.json").is_file() or not ir_path.is_file():
        import openvino as ov

        from cam_infer.bundle.openvino_split import split_openvino
        ov.save_model(ov.convert_model(str(onnx_path)), str(ir_path), compress_to_fp16=False)
        split_openvino(ir_path, "auto", bundle, overwrite=True)
    return ir_path, bundle


# --- the two sides' drivers: each reads one command a line and answers with the call's milliseconds per image ---

def xai_driver(onnx_path: str, precision: str, target: int) -> None:
    """openvino-xai's side (its own Python): ViTReciproCAM inserted into the model, batch 1, as its docs show."""
    import numpy as np
    import openvino as ov
    import openvino_xai as xai
    from openvino_xai.explainer.explainer import ExplainMode

    if precision == "f32":
        compile_model = ov.Core.compile_model
        ov.Core.compile_model = lambda self, model, device_name="CPU", config=None: compile_model(
            self, model, device_name, {**(config or {}), "INFERENCE_PRECISION_HINT": "f32"})
    model = ov.Core().read_model(onnx_path)                       # the ONNX file or the IR converted from it
    try:
        explainer = xai.Explainer(model=model, task=xai.Task.CLASSIFICATION, explain_mode=ExplainMode.WHITEBOX,
                                  explain_method=xai.Method.VITRECIPROCAM)
    except RuntimeError as exc:                                    # it could not insert its method into this graph
        print(json.dumps({"failed": str(exc).strip().splitlines()[0][:160]}), flush=True)
        return
    plain = ov.Core().compile_model(model, "CPU")
    used = plain.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    _serve({"forward": lambda: plain(x),
            "explain": lambda: explainer(x, targets=[target], resize=True, output_size=(224, 224), colormap=False)},
           used)


def ours_driver(bundle: str, precision: str, target: int) -> None:
    import numpy as np

    from cam_infer import Explainer
    from cam_infer.backends.sessions import leave_the_cores_to_the_runtime

    leave_the_cores_to_the_runtime()
    explainer = Explainer(bundle, backend="openvino", precision=precision)
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    _serve({"forward": lambda: explainer.backend.forward(x[:1]),
            "explain": lambda: explainer.explain(x[:1], "vit-recipro", target=target),
            "explain8": lambda: explainer.explain(x, "vit-recipro", target=target)},
           explainer.backend.precision, per_image={"explain8": 8})


def _serve(calls: dict, precision: str, per_image: dict | None = None) -> None:
    import time

    for fn in calls.values():
        fn(), fn()
    print(json.dumps({"ready": precision}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            return
        start = time.perf_counter()
        calls[name]()
        print(json.dumps((time.perf_counter() - start) * 1000 / (per_image or {}).get(name, 1)), flush=True)


class DriverFailed(Exception):
    """A side could not set its method up on the model (its reason)."""


class Side:
    def __init__(self, python: str, role: str, *args):
        self.process = subprocess.Popen([python, __file__, "--driver", role, *map(str, args)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {role} driver did not start")
        answer = json.loads(line)
        if "failed" in answer:
            self.process.wait(timeout=120)
            raise DriverFailed(answer["failed"])
        self.precision = answer["ready"]

    def __call__(self, name: str) -> float:
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.wait(timeout=120)


def against_xai(onnx_path: Path, bundle: Path, precision: str, xai_python: str, rounds: int, calls: int,
                report) -> None:
    ours = Side(sys.executable, "ours", bundle, "auto" if precision == "bf16" else "f32", 3)
    try:
        xai = Side(xai_python, "xai", onnx_path, precision, 3)
    except DriverFailed:
        ours.close()
        raise
    times: dict = {k: [[] for _ in range(rounds)] for k in ("ours forward", "ours", "ours b8", "xai forward", "xai")}
    try:
        for r in range(rounds):
            for i in range(calls):
                order = [("ours forward", ours, "forward"), ("xai forward", xai, "forward"), ("ours", ours, "explain"),
                         ("xai", xai, "explain"), ("ours b8", ours, "explain8")]
                for key, side, call in (order if i % 2 == 0 else order[::-1]):
                    times[key][r].append(side(call))
    finally:
        ours.close(), xai.close()
    med = {k: [statistics.median(t) for t in v] for k, v in times.items()}
    ratio = [x / o for x, o in zip(med["xai"], med["ours"])]
    ratio8 = [x / o for x, o in zip(med["xai"], med["ours b8"])]
    m = {k: statistics.median(v) for k, v in med.items()}
    report(f"| {precision} (ours {ours.precision}, openvino-xai {xai.precision}) | {m['xai forward']:.1f} | "
           f"{m['xai']:.1f} ({m['xai'] / m['xai forward']:.1f}×) | {m['ours forward']:.1f} | "
           f"{m['ours']:.1f} ({m['ours'] / m['ours forward']:.2f}×) | {m['ours b8']:.1f} | "
           f"**{statistics.median(ratio):.1f}×** ({min(ratio):.1f}–{max(ratio):.1f}) | "
           f"{statistics.median(ratio8):.1f}× |")


def same_maps(onnx_path: Path, bundle: Path, xai_python: str, work: Path, backends=("onnxruntime", "openvino"),
              label: str = "") -> str:
    """Correlation and largest difference of the raw maps of every class, ours (`backends`, f32, on `bundle`) against
    openvino-xai's (f32, on the ONNX file), on two random inputs."""
    import numpy as np

    from cam_infer import Explainer
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    np.save(work / "x.npy", x)
    subprocess.run([xai_python, str(ROOT / "tests" / "xai_vit_recipro.py"), str(onnx_path), str(work / "x.npy"),
                    str(work / "xai-maps.npz")], check=True)
    theirs = np.load(work / "xai-maps.npz")["maps"]
    lines = []
    for backend in backends:
        explainer = Explainer(bundle, backend=backend, precision="f32")
        ours = np.stack([explainer.explain(x, "vit-recipro", target=c).maps for c in range(theirs.shape[1])], axis=1)
        corr = min(np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours.reshape(-1, 196),
                                                                            theirs.reshape(-1, 196)))
        lines.append(f"| {backend}{label} (f32) | {corr:.6f} | {np.abs(ours - theirs).max():.2e} | "
                     f"{np.abs(theirs).max():.2f} |")
    return "\n".join(lines)


def small_models(work: Path, repeats: int, report, names=("vit", "deit", "swin")) -> None:
    """Every method (gradient ones through torch) on the three trained test models, both runtimes, batch 1."""
    from cam_infer.bundle.split import split_onnx
    from cam_infer.tools.bench import CASES, GRADIENT_CASES, HEADER, run_cases
    load = os.getloadavg()
    report(f"Trained test models (tests/data/transformers, 128×128 scenes, 16-px patches), cut by `auto` at the last "
           f"block's input; f32, batch 1, median of {repeats} runs alternated with the forward pass. Machine: "
           f"{os.cpu_count()} cores shared with other work; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
           "at the start.\n")
    for name in names:
        bundle = work / f"small-{name}"
        if not (bundle / "bundle.json").is_file():
            split_onnx(ROOT / "tests" / "data" / "transformers" / f"{name}_legacy.onnx", "auto", bundle, overwrite=True)
        report(f"\n**{name}** method ÷ forward\n")
        report(HEADER)
        run_cases(bundle, ("onnxruntime", "openvino"), [*CASES, *GRADIENT_CASES], repeats, score_repeats=3,
                  report=report)
    load = os.getloadavg()
    report(f"\nMachine load at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-transformers", help="where the model and bundle are written")
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--repeats", type=int, default=5, help="runs per method case (alternated with the forward)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the openvino-xai comparison")
    parser.add_argument("--calls", type=int, default=8, help="calls per side and round")
    parser.add_argument("--xai-python", default=str(ROOT.parent / "venv-xai" / "bin" / "python"),
                        help="a Python with openvino-xai 1.1.0 installed")
    parser.add_argument("--skip-methods", action="store_true", help="only the openvino-xai comparison")
    parser.add_argument("--batches", default="1,8", help="the batch sizes of the method ÷ forward tables")
    parser.add_argument("--small", action="store_true",
                        help="only every method on the trained test models (tests/data/transformers), batch 1")
    parser.add_argument("--small-models", default="vit,deit,swin", help="which of them, with --small")
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.driver:
        path, precision, target = rest
        (xai_driver if args.driver == "xai" else ours_driver)(path, precision, int(target))
        return

    from cam_infer.tools.bench import HEADER, Report, format_row, measure_in_subprocess
    report = Report()
    work = Path(args.work)
    if args.small:
        small_models(work, args.repeats, report, args.small_models.split(","))
        report.write(args.out)
        return
    onnx_path, bundle = prepared(work)
    ir_path, ir_bundle = prepared_ir(work, onnx_path)
    load = os.getloadavg()
    report(f"ViT-S-sized (D 384, 12 blocks, 6 heads, 224×224, 197 tokens), cut at the last block's input. Machine: "
           f"{os.cpu_count()} cores shared with other work; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
           "(1, 5, 15 min) at the start: absolute times are high, ratios are measured in one run.\n")
    if not args.skip_methods:
        for batch in map(int, args.batches.split(",")):
            report(f"\n**vit-s** method ÷ forward, f32, batch {batch}, median of {args.repeats} runs\n")
            report(HEADER)
            for backend in ("onnxruntime", "openvino"):
                for case, options in CASES:
                    row = measure_in_subprocess(bundle, backend, case.split(" ")[0], options, args.repeats, batch)
                    report(format_row({**row, "case": case}))
            for case, options in IR_CASES:
                row = measure_in_subprocess(ir_bundle, "openvino", case.split(" ")[0], options, args.repeats, batch)
                report(format_row({**row, "case": f"{case} (IR bundle)"}))
    report(f"\n**vit-recipro against openvino-xai 1.1.0** on the same ONNX file, ms per image; median of {args.rounds} "
           f"rounds × {args.calls} calls, alternated call by call\n")
    report("| precision | xai forward | xai ViTReciproCAM | our forward | our vit-recipro | ours, batch 8 | "
           "xai ÷ ours (rounds) | xai ÷ ours batch 8 |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for precision in ("bf16", "f32"):
        against_xai(onnx_path, bundle, precision, args.xai_python, args.rounds, args.calls, report)
    report("\n**The same on the IR file** (`vit-s.xml`, converted from the ONNX file with float32 weights): "
           "openvino-xai on the IR, ours on the IR bundle split from it\n")
    report("| precision | xai forward | xai ViTReciproCAM | our forward | our vit-recipro | ours, batch 8 | "
           "xai ÷ ours (rounds) | xai ÷ ours batch 8 |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for precision in ("bf16", "f32"):
        try:
            against_xai(ir_path, ir_bundle, precision, args.xai_python, args.rounds, args.calls, report)
        except DriverFailed as failed:
            report(f"| {precision} | openvino-xai 1.1.0 cannot explain this file (white-box ViTReciproCAM: `{failed}`) "
                   "| | | | | | |")
    report("\n**Same maps**: raw logit maps of all 10 classes on two random inputs, ours against openvino-xai's "
           "(f32)\n")
    report("| ours | lowest correlation | largest difference | largest |value| |\n|---|---:|---:|---:|")
    report(same_maps(onnx_path, bundle, args.xai_python, work))
    report(same_maps(onnx_path, ir_bundle, args.xai_python, work, ("openvino",), ", the IR bundle"))
    load = os.getloadavg()
    report(f"\nMachine load at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    report.write(args.out)


if __name__ == "__main__":
    main()
