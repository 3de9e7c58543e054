"""The method registry is the one place that knows each method: typed options, applicability, cost,
benchmark cases, ONNX builders; the CLI, bench, fuse and the docs' method table and pages read it; adding a method is
adding one module."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from cam_infer import CamInferError, Explainer
from cam_infer.errors import MethodNotApplicable
from cam_infer.methods import GRADIENT, GRADIENT_FREE, METHODS
from cam_infer.methods.registry import fused, method
from test_docs import load_hook, needs_mkdocs


def test_every_method_declares_what_it_needs_and_costs():
    for spec in METHODS.values():
        assert spec.cost and spec.summary and spec.bench, spec.name
        assert spec.fn.__module__ == f"cam_infer.methods.{spec.fn.__module__.rsplit('.', 1)[1]}"
        for task in spec.tasks:                                   # every task's code in the method's one module
            code = spec.implementation(task)
            assert code.cost and code.fn.__module__ == spec.fn.__module__, (spec.name, task)
            for option in code.options.values():
                assert option.kind or option.choices, f"{spec.name}.{option.name} ({task}) has no type"
                if option.choices:
                    assert option.default == option.choices[0], f"{spec.name}.{option.name} ({task}): default first"
    by_name_only = {name for name, spec in METHODS.items() if not spec.in_all}
    assert set(GRADIENT_FREE) | set(GRADIENT) | by_name_only == set(METHODS)
    assert not set(GRADIENT_FREE) & set(GRADIENT) and not set(GRADIENT_FREE) & by_name_only


@pytest.mark.parametrize("name, options, message", [
    ("recipro", {"score": "probability"}, "recipro: score must be one of 'prob', 'logit', not 'probability'"),
    ("recipro", {"closed_form": 1}, "recipro: closed_form must be bool, not 1"),
    ("score", {"top_k": "64"}, "score: top_k must be int or None, not '64'"),
    ("entropy", {"bins": 3}, "method 'entropy' has no option bins; its options: estimator, weighting"),
])
def test_options_are_checked_from_their_annotations(tiny_bundle, name, options, message):
    x = np.zeros((1, *tiny_bundle.input_shape), np.float32)
    with pytest.raises(CamInferError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Explainer(tiny_bundle).explain(x, name, **options)


def test_a_name_registered_twice_is_an_error():
    with pytest.raises(ValueError, match="method name 'eigen' is registered twice"):
        method("eigen", cost="1 feature pass")(lambda ctx: None)
    with pytest.raises(ValueError, match="two ONNX builders"):
        fused("eigen", class_specific=False)(lambda f: None)


def test_not_applicable_is_a_typed_error(tmp_path):
    from tiny_onnx import tiny_cnn

    from cam_infer import split_onnx
    bundle = split_onnx(tiny_cnn(), layer="relu2", out=tmp_path / "b")       # head: conv3, relu, GAP, Gemm
    explainer = Explainer(bundle)
    assert explainer.linear_head is None
    with pytest.raises(MethodNotApplicable, match="needs a head that is global average pooling"):
        explainer.explain(np.zeros((1, *bundle.input_shape), np.float32), "cam")
    from cam_infer.runs import choose_methods
    chosen, skipped = choose_methods(["all"], has_linear_head=False)
    assert skipped == ["cam"] and "cam" not in chosen
    with pytest.raises(MethodNotApplicable):
        choose_methods(["cam"], has_linear_head=False)


BENCH_TABLES = ["bench/methods.md", "bench/seed_methods.md", "bench/gradients.md", "bench/rollout.md",
                "bench/transformers.md"]


@needs_mkdocs
def test_every_method_has_a_committed_benchmark_figure():
    measured = load_hook().measured_ratios((ROOT / f).read_text() for f in BENCH_TABLES)
    assert set(measured) == set(METHODS)


@needs_mkdocs
def test_the_docs_table_is_the_registry_with_the_committed_benchmark_figures():
    """The method table lives in the classifiers guide, where the docs hook writes it at every build."""
    hook = load_hook()
    assert hook.TABLE_MARKER in (ROOT / "docs" / "guides" / "classifiers.md").read_text()
    measured = hook.measured_ratios((ROOT / f).read_text() for f in BENCH_TABLES)
    assert hook.measured_table() == hook.methods_table(measured)


@needs_mkdocs
def test_measured_ratios_reads_benchmark_rows():
    text = ("**resnet18**\n| openvino CPU (latency) | eigen | 9.0 | 8.0 | 1.50× | 300 |\n"
            "**resnet50**\n| onnxruntime cpu/CPU | eigen | 9.0 | 8.0 | 1.30× | 300 |\n"
            "| openvino CPU (latency) | eigen | 9.0 | 8.0 | 1.10× | 300 |\n"
            "| openvino CPU (latency) | recipro (head passes) | 9.0 | 8.0 | 1.40× | 300 |\n"
            "| openvino CPU (latency) | recipro | 9.0 | 8.0 | 1.12× | 300 |\n"
            "| openvino CPU (latency) | score top_k=64 | 1266.9 | 19.7 | 64.21× (1.03× its 1227 ms of passes) | 637 |")
    assert load_hook().measured_ratios([text]) == {"eigen": "1.10×", "recipro": "1.12×",
                                       "score": "64.21× (1.03× its passes, top_k=64)"}


TOY = '''"""Toy-CAM: the channel maximum (a method added as one module, for the registry test)."""

from __future__ import annotations

from typing import Literal

from .levels import unit_free
from .registry import Context, fused, implements, method


@method("toy", cost="1 feature pass", bench={"toy": {}, "toy (min)": {"reduce": "min"}})
def toy(ctx: Context, *, reduce: Literal["max", "min"] = "max"):
    """channel maximum (or minimum)"""
    return ctx.activations.max(axis=1) if reduce == "max" else ctx.activations.min(axis=1)


@fused("toy", class_specific=False)
def toy_onnx(f, *, reduce: str = "max") -> str:
    """ReduceMax over channels."""
    return f.b.reduce("ReduceMax" if reduce == "max" else "ReduceMin", f.activation, [1], keepdims=False, hint="map")


@implements("toy", "detection", cost="no extra pass")
def toy_detections(ctx, targets, *, reduce: Literal["max", "min"] = "max"):
    """channel maximum (or minimum) of each cut level, combined unit-free"""
    m = unit_free({i: a.max(axis=0) if reduce == "max" else a.min(axis=0) for i, a in enumerate(ctx.level_maps())},
                  ctx.size)
    return [m for _ in targets]
'''


def test_adding_a_method_is_adding_one_module(tmp_path):
    """A copy of the package with one new file, methods/toy.py, code for classifiers and detectors: the CLI lists
    it, `--method all` runs it on a classifier and on the shipped detector, bench has its cases, fuse builds it
    for both, the method table has its row, and its option is checked for both."""
    shutil.copytree(ROOT / "cam_infer", tmp_path / "cam_infer", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "cam_infer" / "methods" / "toy.py").write_text(TOY)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), CAM_INFER_CACHE_DIR=str(tmp_path / "cache"))
    code = """
import numpy as np
from cam_infer.tools.bench import CASES, FUSED_CASES
from cam_infer.cli.arguments import build_parser
from cam_infer.tools.demo import embedded_bundle_path
from cam_infer.explainer import Explainer
from cam_infer.fuse import fuse
from cam_infer.methods import GRADIENT_FREE
from cam_infer.runs import choose_methods
import cam_infer, importlib.util
assert cam_infer.__file__.startswith(%r), cam_infer.__file__
hook = importlib.util.spec_from_file_location("generate", %r)
methods_table = importlib.util.module_from_spec(hook)
hook.loader.exec_module(methods_table)
methods_table = methods_table.methods_table
help_text = build_parser()._subparsers._group_actions[0].choices["explain"].format_help()
assert "toy" in help_text, help_text
assert "toy" in GRADIENT_FREE and "toy" in choose_methods(["all"], True)[0]
assert CASES["toy (min)"] == ("toy", {"reduce": "min"}) and "toy" in FUSED_CASES
assert "| `toy` |" in methods_table() and '`reduce="max"|"min"`' in methods_table().replace("\\\\|", "|")
ex = Explainer(embedded_bundle_path())
x = ex.preprocess([np.zeros((128, 128, 3), np.uint8) + 90])
e = ex.explain(x, "toy")
assert np.allclose(e.maps, ex.backend.features(x).max(axis=1))
model = fuse(ex.bundle, "toy")
try:
    ex.explain(x, "toy", reduce="mean")
except Exception as exc:
    assert "toy: reduce must be one of 'max', 'min'" in str(exc), exc
else:
    raise AssertionError("the option was not checked")

import contextlib, io, json, cv2
from cam_infer.cli import main
from cam_infer.tools.demo import embedded_detector_path
from cam_infer import Explainer
from cam_infer.detection.fuse import fusable, fuse_detector
from cam_infer.methods import in_all
from cam_infer.postprocess import normalise
assert "toy" in in_all("detection") and "toy" in fusable(), (in_all("detection"), fusable())
rgb = np.random.default_rng(0).integers(0, 255, (96, 120, 3), np.uint8)
cv2.imwrite("scene.png", rgb[..., ::-1].copy())
detector = str(embedded_detector_path())
assert main(["explain", detector, "scene.png", "--method", "all", "--out", "out", "--on", "model"]) == 0
records = json.loads(open("out/results.json").read())["results"]
toy_records = [r for r in records if r["method"] == "toy"]
assert len(toy_records) == 1 and toy_records[0]["class_agnostic"], records
dx = Explainer(detector)
x = dx._inputs([rgb])[0]
packed = dx.backend.features(x)[0]
levels = []
for level in dx.bundle.manifest["cut"]:
    a = packed[level["offset"]:level["offset"] + int(np.prod(level["shape"]))].reshape(level["shape"])
    m = np.maximum(a.max(axis=0), 0)
    levels.append((m - m.min()) / (m.max() - m.min() + 1e-8))
finest = max((m.shape for m in levels), key=lambda s: s[0] * s[1])
mean = np.mean([cv2.resize(m, finest[::-1], interpolation=cv2.INTER_LINEAR) for m in levels], axis=0)
expected = normalise(cv2.resize(mean, x.shape[:1:-1], interpolation=cv2.INTER_LINEAR)[None])[0][0]
got = dx.explain(x, "toy").image_maps[0][0]
assert np.abs(got - expected).max() < 1e-4, np.abs(got - expected).max()
fuse_detector(dx.bundle, "toy")
err = io.StringIO()
with contextlib.redirect_stderr(err):
    assert main(["explain", detector, "scene.png", "--method", "toy", "--option", "reduce=mean", "--out", "o2"]) == 1
assert err.getvalue().count("\\n") == 1 and "toy: reduce must be one of 'max', 'min'" in err.getvalue(), err.getvalue()
print("ok")
""" % (str(tmp_path), str(ROOT / "docs" / "hooks" / "generate.py"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


# --- every task: a detector's methods come from the same registry ----------------------------------------------

@pytest.fixture(scope="module")
def detector_scene():
    from cam_infer.tools.demo import embedded_detector_path
    from cam_infer.tools.synthetic import detection_scene
    return embedded_detector_path(), detection_scene(3, 3).image


def test_a_method_without_code_for_a_task_says_which_methods_have():
    from cam_infer.methods import explaining, get_method
    with pytest.raises(CamInferError, match=r"^method 'cam' does not explain detections; choose one of: (.*)$") as e:
        get_method("cam").implementation("detection")
    assert e.value.args[0].endswith(", ".join(explaining("detection"))) and "recipro" in explaining("detection")


@pytest.mark.parametrize("options, message", [
    ({"blok": 2}, "method 'recipro' has no option blok for detections; its options for detections: score, block"),
    ({"kernel": "onehot"}, "method 'recipro' has no option kernel for detections (an option for classifiers and segmenters); "
                           "its options for detections: score, block"),
    ({"block": "2"}, "recipro: block must be int, not '2'"),
    ({"score": "prob"}, "recipro: score must be one of 'anchor', 'match', not 'prob'"),
])
def test_a_detectors_options_are_checked_as_a_classifiers(detector_scene, options, message):
    from cam_infer import Explainer
    bundle, image = detector_scene
    with pytest.raises(CamInferError, match="^" + re.escape(message) + "$"):
        Explainer(bundle).explain([image], "recipro", **options)


def test_a_detector_option_typo_on_the_command_line_is_one_line(detector_scene, tmp_path):
    import cv2

    from helpers import assert_one_line_error, run_cli
    bundle, image = detector_scene
    cv2.imwrite(str(tmp_path / "scene.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    result = run_cli("explain", bundle, tmp_path / "scene.png", "--method", "eigen", "--option", "centred=true",
                     "--out", tmp_path / "out")
    assert_one_line_error(result, "no chosen method has an option 'centred'")


def test_detector_ablation_runs_in_chunks_of_the_memory_budget_with_the_same_maps(detector_scene):
    from cam_infer import Explainer
    bundle, image = detector_scene
    large = Explainer(bundle).explain([image], "ablation", target=0)
    small = Explainer(bundle, memory_budget_mb=0.05)
    rows = {}
    for role in ("head", "branch"):
        run = getattr(small.backend, role)

        def counted(*args, run=run, role=role):
            rows.setdefault(role, []).append(len(args[-1]))
            return run(*args)
        setattr(small.backend, role, counted)
    chunked = small.explain([image], "ablation", target=0)
    channels = max(level["shape"][0] for level in small.bundle.manifest["cut"])
    calls = [n for counts in rows.values() for n in counts]
    assert max(calls) < channels + 1 and len(calls) > 2, rows            # never the (C+1) copies at once
    np.testing.assert_allclose(chunked.items[0][0].saliency, large.items[0][0].saliency, atol=1e-6)


def test_every_method_s_class_dependence_is_read_whatever_pluses_its_name_holds():
    """'smoothgrad-cam++' was cut at its first '+' into 'smoothgrad-cam', no method: its run stopped after the
    cost line."""
    from cam_infer.enhancers import ENHANCERS
    from cam_infer.methods import METHODS
    from cam_infer.methods.registry import class_agnostic
    for name, spec in METHODS.items():
        assert class_agnostic(name) == (not spec.class_specific), name
        for enhancer in ENHANCERS:
            assert class_agnostic(f"{name}+{enhancer}") == (not spec.class_specific), (name, enhancer)
    assert "smoothgrad-cam++" in METHODS and not class_agnostic("smoothgrad-cam++")
