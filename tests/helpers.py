"""Helpers shared by the tests: run the CLI as a user does, check a one-line error, run a linear tail at full size."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
from conftest import ROOT


def run_cli(*args, cwd=None, env=None, timeout=300):
    """`python -m cam_infer ARGS` in a subprocess, with this checkout on the path."""
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cam_infer", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def without_progress(stderr: str) -> list[str]:
    """stderr's lines but the progress lines a long piped run writes (`cam_infer.progress`)."""
    return [line for line in stderr.strip().splitlines() if not re.match(r"(explain|audit) \[[#.]+\] \d+/\d+ ", line)]


def assert_one_line_error(result, fragment: str, during_run: bool = False):
    """A user error: exit 1, nothing on stdout, one line on stderr that contains `fragment`. `during_run`: an
    error found on the first image, after the run said what it would cost (stdout: that line only)."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert all(line.startswith("cost per image: ") for line in result.stdout.splitlines()) if during_run \
        else result.stdout == ""
    lines = without_progress(result.stderr) if during_run else result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cam-infer: error: ") and fragment in lines[0], lines[0]


def without_branches(bundle, folder):
    """A copy of a detector's bundle in `folder` without its cropped class branches, as a bundle made before them
    (or whose branch was not found): every perturbed row then runs through the whole head."""
    import json
    import shutil
    shutil.copytree(bundle.path, folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    for cut in manifest["cut"]:
        cut.pop("branch", None)                   # a level smaller than its window has none
    for role in [r for r in manifest["graphs"] if r.startswith("branch_")]:
        (folder / manifest["graphs"].pop(role)["file"]).unlink()
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return folder


def two_graph_pass(bundle, x, runtime: str):
    """(activations, outputs) of x through the bundle's features graph, then its head graph, each run on its
    own by `runtime` (onnxruntime | openvino): the reference for the joined graph's one call."""
    import numpy as np
    if runtime == "onnxruntime":
        import onnxruntime as ort

        def run(path, data):
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            return session.run(None, {session.get_inputs()[0].name: data})[0]
    else:
        import openvino as ov
        core = ov.Core()

        def run(path, data):
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            return compiled({0: data})[0].copy()
    a = run(bundle.features_path, np.ascontiguousarray(x, np.float32))
    return a, run(bundle.head_path, a)


def full_size_region_scores(tail, a, c, region, positions, activation) -> np.ndarray:
    """Brute force: the float tail at the output's full size with the cut kept at each position alone."""
    from cam_infer.bundle.linear_tail import apply
    values = []
    for i, j in positions:
        kept = np.zeros((1, *a.shape), np.float32)
        kept[0, :, i, j] = a[:, i, j]
        values.append(apply(tail.logits(kept), activation)[0, c][region].mean(dtype=np.float64))
    return np.array(values)


def triton_config(path):
    """A config.pbtxt read with Triton's own schema (tritonclient's model_config_pb2)."""
    import importlib.util
    from pathlib import Path

    import tritonclient
    from google.protobuf import text_format
    schema_file = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config", schema_file)
    schema = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(schema)
    return text_format.Parse(Path(path).read_text(), schema.ModelConfig())
