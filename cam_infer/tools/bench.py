"""What a method costs on a bundle: median time per image over one plain forward pass, and peak memory.

Every (backend, method) runs in its own process so that its peak resident memory (``ru_maxrss`` of
that process, read with ``os.wait4``) is its own. Inside the process the forward pass and the
method are timed alternately, after one warm-up each, so the ratio compares runs made under the
same machine load. For Score-CAM the floor is also measured: the same number of full passes as the
method makes, batched as it batches them.

    cam-infer bench bundle/ --backend openvino --method all --repeats 7
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import numpy as np

from ..errors import CamInferError, MethodNotApplicable
from ..methods import METHODS


def _cases(gradient: bool, fused: bool = False) -> dict[str, tuple[str, dict]]:
    """Benchmark cases from the registry: each method's `bench` entries, name shown → (method, options)."""
    return {case: (spec.name, options) for spec in METHODS.values()
            if spec.gradient == gradient and (not fused or spec.fused is not None)
            for case, options in spec.bench.items() if not fused or set(options) <= {"closed_form"}}


CASES = _cases(gradient=False)
ALL_CASES = [case for case, (name, _) in CASES.items() if METHODS[name].in_all]     # what "all" measures
GRADIENT_CASES = _cases(gradient=True)   # need torch: gradients from the head graph run in torch
NOT_APPLICABLE = 2       # a measuring child's exit code for a method that does not apply to the bundle


def measure(bundle_path: str, backend: str, method: str, options: dict, repeats: int, batch: int = 1,
            enhance: dict | None = None, precision: str = "f32") -> dict:
    """In this process: median ms per image of the forward pass and of the method, alternating.
    `enhance`: {"name": enhancer, "options": {...}} to time the method under an enhancer; its floor is the
    full passes it makes (its inputs × the method's own passes), batched."""
    from ..enhancers import get_enhancer
    from ..explainer import Explainer
    spec = METHODS[method]
    explainer = Explainer(bundle_path, backend=backend, gradients="torch" if spec.gradient else None,
                          precision=precision)
    from ..bundle.verify import random_images
    x = random_images(explainer.bundle.preprocessing, batch)            # random pixels, in the model's own range
    forward = lambda: explainer.backend.forward(x)                       # noqa: E731
    extra = {} if enhance is None else {"enhance": enhance["name"], "enhance_options": enhance["options"]}
    run = lambda: explainer.explain(x, method, **options, **extra)       # noqa: E731
    floor = None
    if spec.floor is not None or enhance is not None:   # full passes: time as many, batched as the method does
        passes, rows = spec.floor(explainer, x, options) if spec.floor is not None else (1, 1)
        if enhance is not None:
            inputs = get_enhancer(enhance["name"]).passes(*x.shape[2:], **enhance["options"])
            passes, rows = passes * inputs, rows if spec.floor is not None else inputs
        chunk = np.repeat(x[:1], rows, axis=0)
        floor = lambda: [explainer.backend.forward(chunk[:min(rows, passes - i)])   # noqa: E731
                         for i in range(0, passes, rows)]
    long = spec.floor is not None and enhance is None and passes > 64
    if long:                                   # a long run warms itself up; warm up on a short one
        explainer.explain(x, method, **{**options, "top_k": 8})
        explainer.backend.forward(chunk)
    timings: dict[str, list[float]] = {"forward": [], "method": [], "floor": []}
    for r in range(repeats + 1):
        for name, fn in (("forward", forward), ("method", run), ("floor", floor)):
            if fn is None or (r == 0 and long and name != "forward"):
                continue
            start = time.perf_counter()
            fn()
            if r:  # run 0 is the warm-up
                timings[name].append((time.perf_counter() - start) * 1000 / batch)
    result = {name: statistics.median(t) for name, t in timings.items() if t}
    result["ratio"] = result["method"] / result["forward"]
    if "floor" in result:
        result["ratio_to_floor"] = result["method"] / result["floor"]
        result["floor_passes"] = passes
    result["backend"] = explainer.backend.describe()
    result["precision"] = explainer.backend.precision
    return result


def measure_in_subprocess(bundle_path: str, backend: str, method: str, options: dict, repeats: int,
                          batch: int = 1, enhance: dict | None = None, precision: str = "f32") -> dict:
    """`measure` in a fresh process; adds its peak resident memory in MB."""
    spec = json.dumps([str(bundle_path), backend, method, options, repeats, batch, enhance, precision])
    process = subprocess.Popen([sys.executable, "-m", "cam_infer.tools.bench", spec], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        lines = stderr.strip().splitlines()
        error = MethodNotApplicable if process.returncode == NOT_APPLICABLE else CamInferError
        last = lines[-1].removeprefix("cam-infer: error: ") if lines else "no output"
        raise error(f"benchmark of {method} on {backend} failed: {last}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mb"] = result.pop("maxrss_kb") / 1024
    return result


def case_of(case: str, known: dict) -> tuple[str, dict, dict | None]:
    """A case name → (method, options, enhancer or None); 'recipro+sess' is the case 'recipro' under SESS."""
    from ..enhancers import get_enhancer, split_variant

    if case in known:
        return (*known[case], None)
    base, enhancer = split_variant(case)
    if enhancer is None or base not in known:
        raise CamInferError(f"unknown benchmark case '{case}'; cases: {', '.join(known)} (each also as CASE+sess, "
                            "CASE+evet)")
    get_enhancer(enhancer)
    return (*known[base], {"name": enhancer, "options": {}})


def check_cases(cases, known: dict, what: str) -> list:
    unknown = [c for c in cases if c not in known]
    if unknown:
        raise CamInferError(f"unknown {what} {', '.join(map(repr, unknown))}; cases: {', '.join(known)}")
    return list(cases)


def run_cases(bundle_path, backends, cases, repeats: int, *, score_repeats: int | None = None,
              report=print, precision: str = "f32") -> list[dict]:
    """Measure every case on every backend (cases: names of `CASES`); `cam` is left out on heads
    that are not GAP→linear. Full Score-CAM may take fewer repeats (`score_repeats`): it is K passes."""
    known = {**CASES, **GRADIENT_CASES}
    for case in cases:
        case_of(case, known)
    rows = []
    for backend in backends:
        for case in cases:
            method, options, enhance = case_of(case, known)
            long = (METHODS[method].floor is not None and not options.get("top_k")) or enhance is not None
            n = score_repeats if (long and score_repeats) else repeats
            try:
                row = measure_in_subprocess(bundle_path, backend, method, options, n, enhance=enhance,
                                            precision=precision)
            except MethodNotApplicable:
                continue
            row.update(case=case, repeats=n)
            rows.append(row)
            report(format_row(row))
    return rows


class Report:
    """A benchmark's markdown: each line printed as it comes and kept; `write(path)` saves them (no path: nothing)."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def write(self, path) -> None:
        if path:
            from pathlib import Path
            Path(path).write_text("\n".join(self.lines).lstrip() + "\n")


def write_section(path, heading: str | None, text: str) -> None:
    """Write `text` as one section of a markdown page that several benchmarks share: the section that starts with the
    line `heading` (up to the next ``## `` line) is replaced, or appended; heading None is the part before the first
    ``## `` line. `text` starts with its heading line."""
    from pathlib import Path
    page = Path(path)
    old = page.read_text(encoding="utf-8") if page.is_file() else ""
    sections, current = {None: []}, None
    for line in old.splitlines():
        if line.startswith("## "):
            current = line.strip()
            sections[current] = []
        sections[current].append(line)
    sections[heading.strip() if heading else None] = text.strip("\n").splitlines()
    parts = ["\n".join(lines).strip("\n") for lines in sections.values()]
    page.write_text("\n\n".join(p for p in parts if p) + "\n", encoding="utf-8")


HEADER = ("| backend | method | median ms/image | forward ms | ratio to forward | peak MB |\n"
          "|---|---|---:|---:|---:|---:|")


def format_row(row: dict) -> str:
    extra = f" ({row['ratio_to_floor']:.2f}× its {row['floor']:.0f} ms of passes)" if "ratio_to_floor" in row else ""
    return (f"| {row['backend']} | {row['case']} | {row['method']:.1f} | {row['forward']:.1f} | "
            f"{row['ratio']:.2f}×{extra} | {row['peak_mb']:.0f} |")


# --- fused models ------------------------------------------------------------------------------

FUSED_CASES = _cases(gradient=False, fused=True)
FUSED_HEADER = ("| runtime | method | plain ms | fused ms | fused / plain | file size growth |\n"
                "|---|---|---:|---:|---:|---:|")


def open_session(path, runtime: str, precision: str = "f32"):
    """A callable x → outputs for an ONNX file on ONNX Runtime or OpenVINO (CPU, latency hint) at `precision` (an
    IR file: OpenVINO)."""
    from ..backends.sessions import FLOAT32, onnxruntime_session, openvino_compiled
    if runtime == "onnxruntime":
        session = onnxruntime_session(path, FLOAT32.but(precision=precision))
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    if runtime == "openvino":
        request = openvino_compiled(path, FLOAT32.but(hint="latency", precision=precision)).create_infer_request()
        return lambda x: request.infer({0: x})
    raise CamInferError(f"unknown runtime '{runtime}'; choose onnxruntime or openvino")


def compare_fused(bundle_path, runtime: str, case: str, repeats: int, work, precision: str = "f32") -> dict:
    """Median ms of the plain model and of the fused model, batch 1, timed alternately in this process."""
    from pathlib import Path

    from ..backends.sessions import FLOAT32, computed_precision
    from ..bundle import Bundle
    from ..fuse import fuse, plain_model, save

    if case not in FUSED_CASES:
        raise CamInferError(f"unknown fused case '{case}'; cases: {', '.join(FUSED_CASES)}")
    method, options = FUSED_CASES[case]
    bundle, work = Bundle.load(bundle_path), Path(work)
    suffix = ".xml" if bundle.graph_format == "openvino" else ".onnx"       # an IR bundle fuses into IR
    if suffix == ".xml" and runtime != "openvino":
        raise CamInferError(f"an OpenVINO IR bundle's fused model runs on openvino, not {runtime}")
    plain = save(plain_model(bundle), work / f"plain{suffix}", overwrite=True)
    fused = save(fuse(bundle, method, **options), work / f"fused{suffix}", overwrite=True)
    runs = {"plain": open_session(plain, runtime, precision), "fused": open_session(fused, runtime, precision)}
    x = np.random.default_rng(0).standard_normal((1, *bundle.input_shape)).astype(np.float32)
    timings: dict[str, list[float]] = {"plain": [], "fused": []}
    for r in range(repeats + 2):
        for name, run in runs.items():
            start = time.perf_counter()
            run(x)
            if r >= 2:   # two warm-up runs
                timings[name].append((time.perf_counter() - start) * 1000)
    result = {name: statistics.median(t) for name, t in timings.items()}
    result.update(ratio=result["fused"] / result["plain"], growth=_size(fused) / _size(plain) - 1,
                  runtime=f"{runtime} ({computed_precision(FLOAT32.but(precision=precision), runtime, bundle)})",
                  case=case)
    return result


def _size(path) -> int:
    """A model file's bytes, an IR's weights (.bin) included."""
    weights = path.with_suffix(".bin")
    return path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.is_file() else 0)


def run_fused(bundle, runtimes, cases, repeats: int, report=print, precision: str = "f32") -> list[dict]:
    """Every fused case on every runtime (cases: names of `FUSED_CASES`); a method that does not apply to the
    bundle (cam on a head that is not GAP→linear) is left out."""
    import tempfile

    check_cases(cases, FUSED_CASES, "fused case")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for runtime in runtimes:
            for case in cases:
                try:
                    row = compare_fused(bundle.path, runtime, case, repeats, work, precision)
                except MethodNotApplicable:
                    continue
                rows.append(row)
                report(format_fused_row(row))
    return rows


def format_fused_row(row: dict) -> str:
    return (f"| {row['runtime']} | {row['case']} | {row['plain']:.1f} | {row['fused']:.1f} | {row['ratio']:.3f}× | "
            f"{row['growth']:+.3%} |")


def peak_resident_kb() -> int:
    """VmHWM of this process. (Not ru_maxrss: Linux carries that over exec from the parent.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(spec: str) -> None:
    bundle_path, backend, method, options, repeats, batch, enhance, precision = json.loads(spec)
    result = measure(bundle_path, backend, method, options, repeats, batch, enhance, precision)
    result["maxrss_kb"] = peak_resident_kb()
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        _child(sys.argv[1])
    except MethodNotApplicable as exc:
        print(f"cam-infer: error: {exc}", file=sys.stderr)
        sys.exit(NOT_APPLICABLE)
    except CamInferError as exc:
        print(f"cam-infer: error: {exc}", file=sys.stderr)
        sys.exit(1)
