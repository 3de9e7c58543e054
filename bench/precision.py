"""The precision benchmark: what each gradient-free method costs over the forward pass at float32 and at the
runtime's own precision (bf16 on this CPU's OpenVINO), and Recipro-CAM against openvino-xai 1.1.0 on the same ONNX
file at the same precision. ResNet-50 (random weights, seed 0) and MobileNetV2 (torchvision weights from
../shared/data), 224×224, OpenVINO CPU. Needs the torch extra (to export the two models) and openvino-xai in a
Python of its own (it pins an older OpenVINO and NumPy): ``--xai-python``.

    python bench/precision.py --work /tmp/cam-precision --out bench/precision.md [--quick]

Method ÷ forward: `cam_infer.tools.bench.run_cases` at each precision (each case in its own process, the forward pass
and the method alternated call by call), on OpenVINO at f32 and auto (bf16 here) and on ONNX Runtime at f32 (its CPU
provider has no bfloat16 on x86: auto is f32 there). Against openvino-xai: one driver process per side, kept warm; the parent
asks each for one call at a time, alternating sides (and their order) call by call, so both see the same load;
each call is timed inside its process. Ours explains batch 1 like openvino-xai (which cannot batch), and batch 8
per image. openvino-xai compiles its model without a precision (bf16 here); for float32 its compile is given
``INFERENCE_PRECISION_HINT=f32``.

The closed form's floor (Recipro-CAM, GAP→linear head): the features pass alone, the same pass with the closed
form's product (h·w positions × K channels × C classes) and softmax appended to the runtime's graph as one more
output, at the same precision, and the product alone as the package runs it (ONNX Runtime, float32), alternated
call by call: what the closed form costs over the forward pass wherever it runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SINGLE_PASS = ["activation", "entropy", "eigen", "cam", "ablation", "recipro"]
OTHER_CASES = ["recipro (head passes)", "ablation (head passes)", "score top_k=64"]
# ONNX Runtime's CPU provider computes in float32 only (its one bfloat16 option, fast-math GEMMs, is for ARM64):
# its precision auto is float32, the rows of f32.
BACKENDS = {"f32": ("openvino", "onnxruntime"), "auto": ("openvino",)}
MODELS = {"resnet50": None, "mobilenet_v2": SHARED / "models" / "mobilenet_v2-torchvision-bnfolded.pth"}


# --- the two sides' drivers: each reads one command a line ("forward", "explain", "explain8", "quit") and
# --- answers with the call's milliseconds (per image) -------------------------------------------------------

def xai_driver(onnx_path: str, precision: str, target: int) -> None:
    """openvino-xai's side (its own Python): Recipro-CAM inserted into the model, batch 1, as its docs show."""
    import numpy as np
    import openvino as ov
    import openvino_xai as xai
    from openvino_xai.explainer.explainer import ExplainMode

    if precision == "f32":                      # openvino-xai compiles with no config: ask for float32 there
        compile_model = ov.Core.compile_model
        ov.Core.compile_model = lambda self, model, device_name="CPU", config=None: compile_model(
            self, model, device_name, {**(config or {}), "INFERENCE_PRECISION_HINT": "f32"})
    model = ov.Core().read_model(onnx_path)
    explainer = xai.Explainer(model=model, task=xai.Task.CLASSIFICATION, explain_mode=ExplainMode.WHITEBOX,
                              explain_method=xai.Method.RECIPROCAM)
    plain = ov.Core().compile_model(model, "CPU")
    used = plain.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    calls = {"forward": lambda: plain(x),
             "explain": lambda: explainer(x, targets=[target], resize=True, output_size=(224, 224), colormap=False)}
    _serve(calls, used)


def ours_driver(bundle: str, precision: str, target: int) -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from cam_infer import Explainer
    from cam_infer.backends.sessions import leave_the_cores_to_the_runtime

    leave_the_cores_to_the_runtime()
    explainer = Explainer(bundle, backend="openvino", precision=precision)
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    calls = {"forward": lambda: explainer.backend.forward(x[:1]),
             "explain": lambda: explainer.explain(x[:1], "recipro", target=target),
             "explain8": lambda: explainer.explain(x, "recipro", target=target)}
    _serve(calls, explainer.backend.precision, per_image={"explain8": 8})


def _serve(calls: dict, precision: str, per_image: dict | None = None) -> None:
    import time

    for fn in calls.values():                   # warm-up: two of each
        fn(), fn()
    print(json.dumps({"ready": precision}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            return
        start = time.perf_counter()
        calls[name]()
        print(json.dumps((time.perf_counter() - start) * 1000 / (per_image or {}).get(name, 1)), flush=True)


class Side:
    def __init__(self, python: str, role: str, *args):
        self.process = subprocess.Popen([python, __file__, "--driver", role, *map(str, args)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {role} driver did not start")
        self.precision = json.loads(line)["ready"]

    def __call__(self, name: str) -> float:
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.wait(timeout=60)


# --- the parent ------------------------------------------------------------------------------------------

def prepared(name: str, work: Path) -> tuple[Path, Path, int]:
    """(the model's ONNX file, our bundle split from that same file, the class both sides explain)."""
    import numpy as np

    from cam_infer import Explainer, export_torch, split_onnx
    from cam_infer.fuse import plain_model, save

    onnx_path, bundle = work / f"{name}.onnx", work / f"{name}-bundle"
    if not (bundle / "bundle.json").is_file():
        import torch

        sys.path.insert(0, str(ROOT))
        import models
        from cam_infer.bundle.export import load_weights
        torch.manual_seed(0)
        model = models.BUILDERS[name]()
        if MODELS[name]:
            load_weights(model, MODELS[name])
        exported = export_torch(model, layer=models.CAM_LAYERS[name], input_size=(224, 224), out=work / f"{name}-export",
                                exporter="legacy", overwrite=True)
        save(plain_model(exported), onnx_path, overwrite=True)
        split_onnx(onnx_path, layer=exported.activation_name, out=bundle, overwrite=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    return onnx_path, bundle, int(Explainer(bundle).backend.forward(x).argmax())


def against_xai(onnx_path: Path, bundle: Path, target: int, precision: str, xai_python: str, rounds: int,
                calls: int, report) -> None:
    ours = Side(sys.executable, "ours", bundle, "auto" if precision == "bf16" else "f32", target)
    xai = Side(xai_python, "xai", onnx_path, precision, target)
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
           f"{m['xai']:.1f} ({m['xai'] / m['xai forward']:.2f}×) | {m['ours forward']:.1f} | "
           f"{m['ours']:.1f} ({m['ours'] / m['ours forward']:.2f}×) | {m['ours b8']:.1f} | "
           f"**{statistics.median(ratio):.2f}×** ({min(ratio):.2f}–{max(ratio):.2f}) | "
           f"{statistics.median(ratio8):.2f}× |")


def closed_form_floor(bundle: Path, precision: str, calls: int) -> dict:
    """Median ms of: the features pass; the same with Recipro-CAM's closed form appended to the runtime's graph
    (its product and softmax as a second output); the product alone on ONNX Runtime. Batch 1, alternated."""
    import time

    import numpy as np
    import onnx
    import openvino.opset13 as ops

    from cam_infer.backends.sessions import RuntimeOptions, onnxruntime_session, openvino_compiled, openvino_model
    from cam_infer.bundle.head import gemm_model, read_linear_head

    def features():
        model = openvino_model(bundle / "features.onnx")
        model.reshape([1, 3, 224, 224])
        return model

    plain, appended = features(), features()
    a = appended.get_results()[0].input_value(0)
    k, h, w = a.get_partial_shape().to_shape()[1:]
    head = read_linear_head(onnx.load(bundle / "head.onnx"), k)
    positions = ops.transpose(ops.reshape(a, ops.constant(np.array([1, k, h * w])), False),
                              ops.constant(np.array([0, 2, 1])))
    logits = ops.add(ops.matmul(positions, ops.constant(head.weight / (h * w)), False, True), ops.constant(head.bias))
    appended.add_outputs([ops.softmax(logits, 2).output(0)])
    runtime = RuntimeOptions(precision=precision, hint="latency")
    requests = [openvino_compiled(m, runtime).create_infer_request() for m in (plain, appended)]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    pooled = np.ascontiguousarray(requests[0].infer([x])[0].reshape(k, h * w).T / (h * w))
    product = onnxruntime_session(gemm_model(head.weight, head.bias), RuntimeOptions(spinning="during-run"))
    runs = {"features": lambda: requests[0].infer([x]), "appended": lambda: requests[1].infer([x]),
            "product": lambda: product.run(None, {"pooled": pooled})}
    times: dict = {key: [] for key in runs}
    for i in range(calls + 4):
        for key, fn in (runs.items() if i % 2 else list(runs.items())[::-1]):
            start = time.perf_counter()
            fn()
            if i >= 4:
                times[key].append((time.perf_counter() - start) * 1000)
    used = openvino_compiled(plain, runtime).get_property("INFERENCE_PRECISION_HINT").get_type_name()
    medians = {key: statistics.median(v) for key, v in times.items()}
    return {"precision": used, "macs": h * w * k * len(head.bias), **medians}


def per_call_cost(bundle: Path, backend: str, precision: str, calls: int) -> dict:
    """Median ms per call of the explanation around the runtime's pass, per single-pass method: `Explainer.explain`
    on one image with the clean pass's outputs already there (the backend's pass returns them from memory), so
    what is timed is the package's own work per call: the method, normalising, the resize to the input, the
    record. Methods alternated call by call."""
    import time

    from cam_infer import Explainer
    from cam_infer.bundle.verify import random_images

    explainer = Explainer(bundle, backend=backend, precision=precision)
    explainer.task.in_pass.possible = False        # the general path: maps in the pass would time the pass itself
    x = random_images(explainer.bundle.preprocessing, 1)             # random pixels, in the model's range
    pass_ = explainer.backend
    clean = pass_.observe(x)
    pass_.observe = lambda _: clean
    if pass_.products_in_pass and explainer.linear_head is not None:
        products = pass_.observe_products(x, explainer.linear_head.weight)
        pass_.observe_products = lambda *_: products
    times: dict = {method: [] for method in SINGLE_PASS}
    for i in range(calls + 5):
        for method in (SINGLE_PASS if i % 2 else SINGLE_PASS[::-1]):
            start = time.perf_counter()
            explainer.explain(x, method)
            if i >= 5:
                times[method].append((time.perf_counter() - start) * 1000)
    return {method: statistics.median(t) for method, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-precision", help="where the models and bundles are written")
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=40,
                        help="calls per single-pass method case (alternated with the forward pass)")
    parser.add_argument("--other-repeats", type=int, default=5, help="calls per case of the methods of many passes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the openvino-xai comparison")
    parser.add_argument("--calls", type=int, default=15, help="calls per side and round")
    parser.add_argument("--xai-python", default=str(ROOT.parent / "venv-xai" / "bin" / "python"),
                        help="a Python with openvino-xai 1.1.0 installed")
    parser.add_argument("--floor-calls", type=int, default=60, help="calls per side for the closed form's floor")
    parser.add_argument("--per-call", type=int, default=400, help="calls per method for the cost around the pass")
    parser.add_argument("--quick", action="store_true", help="fewer runs and calls (a check, not a table)")
    parser.add_argument("--skip-methods", action="store_true", help="only the openvino-xai comparison")
    parser.add_argument("--single-pass-only", action="store_true",
                        help="only the single-pass methods' table (method ÷ forward), no other case or table")
    parser.add_argument("--precisions", default="f32,auto", help="the precisions of the method tables")
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.driver:
        path, precision, target = rest
        (xai_driver if args.driver == "xai" else ours_driver)(path, precision, int(target))
        return

    if args.quick:
        args.repeats, args.other_repeats, args.rounds, args.calls, args.floor_calls, args.per_call = 5, 2, 1, 5, 10, 40
    sys.path.insert(0, str(ROOT))
    import os

    from cam_infer.tools.bench import HEADER, Report, run_cases
    report = Report()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    report(f"OpenVINO CPU and ONNX Runtime's CPU provider, 224×224. Machine: {os.cpu_count()} cores, load average {load:.1f} at the start"
           + (" (shared with other work: absolute times are high, ratios are measured in one run)" if load > 1.5
              else "") + ".\n")
    prepared_models = {name: prepared(name, work) for name in args.models.split(",")}
    if not args.skip_methods:
        for name, (_, bundle, _) in prepared_models.items():
            for precision in args.precisions.split(","):
                report(f"\n**{name}**, precision {precision}; batch 1; median of {args.repeats} calls of each "
                       f"single-pass method ({args.other_repeats} of the others), alternated with the forward pass\n")
                report(HEADER)
                for backend in BACKENDS[precision]:
                    run_cases(bundle, [backend], SINGLE_PASS, args.repeats, report=report, precision=precision)
                    if not args.single_pass_only:
                        run_cases(bundle, [backend], OTHER_CASES, args.other_repeats, report=report,
                                  precision=precision)
    if args.single_pass_only:
        report(f"\nLoad average {os.getloadavg()[0]:.1f} at the end.")
        report.write(args.out)
        return
    report(f"\n**The explanation around the pass** (batch 1, ms per call, median of {args.per_call} calls alternated "
           "between the methods): `explain` with the clean pass's outputs already in memory, so only the package's "
           "own work per call is timed (the method, normalising, the resize to 224², the record)\n")
    report("| model | backend (precision) | " + " | ".join(SINGLE_PASS) + " |\n|---|---|" + "---:|" * len(SINGLE_PASS))
    for name, (_, bundle, _) in prepared_models.items():
        for backend, precision in (("openvino", "f32"), ("openvino", "auto"), ("onnxruntime", "f32")):
            cost = per_call_cost(bundle, backend, precision, args.per_call)
            report(f"| {name} | {backend} ({precision}) | " + " | ".join(f"{cost[m]:.3f}" for m in SINGLE_PASS) + " |")
    report(f"\n**Recipro-CAM's closed form: its floor** (batch 1, ms, median of {args.floor_calls} calls alternated; "
           "OpenVINO CPU, LATENCY hint, static shape)\n")
    report("| model | precision | h·w·K·C multiply-adds | features pass | with the closed form in the graph | "
           "the product alone (ONNX Runtime, f32) |\n|---|---|---:|---:|---:|---:|")
    for name, (_, bundle, _) in prepared_models.items():
        for precision in ("f32", "auto"):
            f = closed_form_floor(bundle, precision, args.floor_calls)
            report(f"| {name} | {precision} ({f['precision']}) | {f['macs'] / 1e6:.0f} M | {f['features']:.2f} | "
                   f"{f['appended']:.2f} ({f['appended'] / f['features']:.2f}×) | "
                   f"{f['product']:.2f} ({f['product'] / f['features']:.2f}×) |")
    for name, (onnx_path, bundle, target) in prepared_models.items():
        report(f"\n**{name}**: Recipro-CAM against openvino-xai 1.1.0 on the same ONNX file, batch 1, ms per image; "
               f"median of {args.rounds} rounds × {args.calls} calls, alternated call by call\n")
        report("| precision | xai forward | xai Recipro-CAM | our forward | our Recipro-CAM | ours, batch 8 | "
               "xai ÷ ours (rounds) | xai ÷ ours batch 8 |\n|---|---:|---:|---:|---:|---:|---:|---:|")
        for precision in ("bf16", "f32"):
            against_xai(onnx_path, bundle, target, precision, args.xai_python, args.rounds, args.calls, report)
    report(f"\nLoad average {os.getloadavg()[0]:.1f} at the end.")
    report.write(args.out)


if __name__ == "__main__":
    main()
