"""Precision as deployed: explanations at the runtime's precision (bf16 on OpenVINO CPUs that have it), checks of a
split or a closed form exact against float32, and every bf16 result compared with float32 at a tolerance derived
from the format.

The tolerance. bf16 keeps an 8-bit significand: rounding to it has unit roundoff u = 2^-8. OpenVINO's CPU plugin
rounds a convolution's input and weights to bf16, accumulates in float32 and stores the output in bf16. For a
layer y = W x + b with |y| bounded by M = |W||x| + |b| (ReLU does not increase errors), the error of y is at most
|W| Δx + u|W||x| (input) + u|W||x| (weights) + u|b| + u|y| (stored) ≤ |W| Δx + 3u M; over L such layers, to first
order, Δ ≤ 3 L u M_L, where M_L is the same network run on |x| with |W|, |b| (the magnitude network). The
activations A then enter the closed forms in float32, so CAM's Σ_k W_ck A_k differs by at most Σ_k |W_ck| ΔA_k,
and a softmax score by at most 2 max_j |Δz_j| (its Jacobian p_c(δ_cj − p_j) has row sum ≤ 2 p_c ≤ 2).
Recipro-CAM's product Aᵀ Wᵀ runs inside the pass (`bundle/positions.py`): one layer more, L + 1, on
M_{L+1} = |W| M_L / (h·w).
A 10 % margin covers the second-order terms (products of two roundings, u² ≈ 1.5e-5 relative).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cam_infer import Explainer
from cam_infer.backends import load_backend
from cam_infer.backends.sessions import FLOAT32, onnxruntime_session

BF16_UNIT_ROUNDOFF = 2.0 ** -8
MARGIN = 1.1


def _bf16_here(bundle) -> bool:
    import openvino as ov
    return load_backend(bundle, "openvino", precision="bf16").compiled_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


def _images(n: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, 3, size, size)).astype(np.float32)


def _magnitudes(bundle, x: np.ndarray) -> tuple[np.ndarray, int]:
    """(M, L): the features graph run on |x| with every initializer made |.|, and its number of layers."""
    model = onnx.load(bundle.features_path)
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(np.abs(numpy_helper.to_array(init)), init.name))
    layers = sum(node.op_type in ("Conv", "Gemm", "MatMul") for node in model.graph.node)
    session = onnxruntime_session(model, FLOAT32)
    return session.run(None, {session.get_inputs()[0].name: np.abs(x)})[0], layers


@pytest.fixture
def bf16(tiny_bundle):
    if not _bf16_here(tiny_bundle):
        pytest.skip("this CPU has no bf16 in OpenVINO")
    return Explainer(tiny_bundle, backend="openvino", precision="bf16")


def test_a_gap_linear_head_is_trusted_at_bf16(bf16, tiny_bundle):
    """The head check compares the closed form with a float32 run of the head graph: at bf16 it still reads the
    tiny model's GAP→linear head (against the bf16 head outputs it failed, and CAM was refused)."""
    f32 = Explainer(tiny_bundle, backend="openvino", precision="f32")
    assert bf16.linear_head is not None
    np.testing.assert_array_equal(bf16.linear_head.weight, f32.linear_head.weight)
    assert bf16.explain(_images(2), method="cam").maps.shape == (2, *tiny_bundle.activation_shape[1:])


def test_closed_forms_at_bf16_agree_with_float32_within_the_format(bf16, tiny_bundle):
    f32 = Explainer(tiny_bundle, backend="openvino", precision="f32")
    x = _images(4)
    targets = f32.backend.forward(x).argmax(axis=1)
    a32, _ = f32.backend.observe(x)
    a16, _ = bf16.backend.observe(x)
    magnitude, layers = _magnitudes(tiny_bundle, x)
    bound = MARGIN * 3 * layers * BF16_UNIT_ROUNDOFF * magnitude                  # (N,K,h,w), see the docstring
    assert np.all(np.abs(a16 - a32) <= bound)
    assert np.abs(a16 - a32).max() > 0, "bf16 ran as float32: nothing was compared"

    weight = np.abs(f32.linear_head.weight[targets])                              # (N,K)
    cam_bound = np.einsum("nk,nkhw->nhw", weight, bound)
    cam16, cam32 = (e.explain(x, method="cam", target=targets).maps for e in (bf16, f32))
    assert np.all(np.abs(cam16 - cam32) <= cam_bound)

    h, w = a32.shape[2:]                       # Recipro-CAM's product runs in the pass at bf16: one more layer
    product = MARGIN * 3 * (layers + 1) * BF16_UNIT_ROUNDOFF * magnitude
    logit_bound = np.einsum("ck,nkhw->nhwc", np.abs(f32.linear_head.weight), product).max(axis=-1) / (h * w)
    rec16, rec32 = (e.explain(x, method="recipro", target=targets).maps for e in (bf16, f32))
    assert np.all(np.abs(rec16 - rec32) <= 2 * logit_bound)



def test_maps_computed_in_the_pass_at_bf16_are_the_general_paths_within_one_layer_of_the_format(bf16, tiny_bundle):
    """At bf16 one image's top-1 activation, CAM and Ablation-CAM maps are computed inside the clean pass
    (`tasks.in_pass`), the map's products rounded by OpenVINO as the model's are. Against the general path's bf16
    cut A (the same graph up to it) in float64: a map Σ_k v_k A_k (v = 1/K, W_c, or ablation's W_ck ā_k / |y_c|
    with y_c = W_c·ā + b_c) within one more layer's rounding, 3u Σ_k |v_k| |A_k| (ablation: 6u, its pooling and
    products, plus y_c's own rounding 3u (Σ_k |W_ck| |ā_k| + |b_c|) relative to |y_c|); the
    class within twice the head's own rounding (3u (|W| mean|A| + |b|)) of the general path's top logit, its
    probability within 2 max |Δz|; the saliency within 4δ/span (normalising a map off by δ ≤ that bound plus a
    store's u·max|map|, over its range) plus 8u (the normalising's two stores and the resize's two products, 3u
    each). Feature Entropy-CAM, Σ_k Ĥ_k A_k: its weights within 8u Ĥ_k + 3u/ln(h·w) (p's three roundings, the
    logarithm's store, the product's, the sum's and the scale's), so the map within (8u + 3u/ln(h·w)) Σ_k |A_k|
    plus the weighted sum's 3u Σ_k Ĥ_k |A_k|."""
    from test_kernels import numpy_spatial_entropy
    from test_per_call import twin_saliency

    from cam_infer.numerics import softmax

    in_pass, u = bf16.task.in_pass, BF16_UNIT_ROUNDOFF
    plain = {"target": None, "top_classes": None, "finer": None, "enhance": None, "upsampled": True}
    weight, bias = bf16.linear_head.weight.astype(np.float64), bf16.linear_head.bias.astype(np.float64)
    for image in _images(3):
        image = image[None]
        a, logits = (v[0].astype(np.float64) for v in bf16.backend.observe(image))
        head_bound = MARGIN * 3 * u * (np.abs(weight) @ np.abs(a).mean(axis=(1, 2)) + np.abs(bias)).max()
        for method in ("activation", "cam", "ablation", "entropy"):
            assert in_pass.applies(method, 1, plain, {})
            e = bf16.explain(image, method)
            assert in_pass._graphs.get(f"maps-{method}") is not None                       # the in-pass graph ran
            c = int(e.targets[0])
            assert logits[c] >= logits.max() - 2 * head_bound
            assert abs(e.scores[0] - softmax(logits[None])[0, c]) <= 2 * head_bound
            v, rounding = (np.full(len(a), 1 / len(a)), 3 * u) if method == "activation" else (weight[c], 3 * u)
            if method == "ablation":
                pooled = a.mean(axis=(1, 2))
                logit = weight[c] @ pooled + bias[c]
                v = weight[c] * pooled / abs(logit)
                rounding = 6 * u + 3 * u * (np.abs(weight[c]) @ np.abs(pooled) + abs(bias[c])) / abs(logit)
            if method == "entropy":
                v = numpy_spatial_entropy(a)
            expected = np.tensordot(v, a, axes=1)
            bound = MARGIN * rounding * np.tensordot(np.abs(v), np.abs(a), axes=1)
            if method == "entropy":
                bound += MARGIN * (8 * u + 3 * u / np.log(a.shape[1] * a.shape[2])) * np.abs(a).sum(axis=0)
            assert np.all(np.abs(e.maps[0] - expected) <= bound)
            positive = np.maximum(expected, 0)
            off = bound.max() + u * np.abs(expected).max()
            saliency_bound = MARGIN * (4 * off / (positive.max() - positive.min()) + 8 * u)
            assert saliency_bound < (0.5 if method == "entropy" else 0.25)      # a bound that says something
            assert np.abs(e.saliency[0] - twin_saliency(expected, e.saliency.shape[-1])).max() <= saliency_bound


# --- the precision used, in every output ----------------------------------------------------------------------

def _device_default() -> str:
    from cam_infer.backends.sessions import openvino_core
    return openvino_core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def test_each_backend_reports_the_precision_it_runs_at(tiny_bundle):
    assert load_backend(tiny_bundle, "openvino").precision == "f32"                   # the default: reproducible
    assert load_backend(tiny_bundle, "openvino", precision="auto").precision == _device_default()
    assert load_backend(tiny_bundle, "onnxruntime", precision="auto").precision == "f32"
    assert "(latency, f32)" in load_backend(tiny_bundle, "openvino").describe()


def test_info_reports_the_precision_a_bundle_runs_at(tiny_bundle):
    from helpers import run_cli

    result = run_cli("info", tiny_bundle.path, "--backend", "openvino", "--precision", "auto")
    assert result.returncode == 0, result.stderr
    assert f"runs on    openvino CPU (latency, {_device_default()}): yes" in result.stdout


def test_workers_open_the_explainer_at_the_runs_precision(bf16, tiny_bundle):
    from cam_infer.parallel import ExplainerSpec, _OPENED

    spec = ExplainerSpec.of(bf16)
    assert spec.precision == "bf16"
    try:
        assert spec.open().backend.precision == "bf16"                  # as a worker process opens it
    finally:
        _OPENED.pop(spec, None)


def test_a_folder_run_records_its_precision_and_refuses_to_resume_at_another(bf16, tiny_bundle, tmp_path):
    import json

    import cv2
    from helpers import run_cli

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8))
    out = tmp_path / "out"
    first = run_cli("explain", tiny_bundle.path, images, "--method", "cam", "--backend", "openvino",
                    "--precision", "bf16", "--out", out)
    assert first.returncode == 0, first.stderr
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["precision"] == "bf16" and "bf16" in settings["backend"]
    again = run_cli("explain", tiny_bundle.path, images, "--method", "cam", "--backend", "openvino",
                    "--precision", "f32", "--out", out)
    assert again.returncode != 0
    assert ('holds results of a run with other settings (backend: "openvino CPU (throughput, bf16)" then, '
            '"openvino CPU (throughput, f32)" now)') in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_an_audit_records_the_precision_it_ran_at(tiny_bundle, tmp_path):
    import json

    from cam_infer.audit import AuditOptions, run_audit
    from cam_infer.tools.synthetic import write_scenes

    scenes = write_scenes(tmp_path / "scenes", "large", 2)
    options = AuditOptions(methods=("activation",), metrics=("adcc",), backend="openvino", precision="auto", steps=4)
    summary = run_audit(tiny_bundle.path, [scenes], options, tmp_path / "audit", progress=False)
    assert summary["protocol"]["runs_at"] == _device_default() and summary["protocol"]["precision"] == "auto"
    assert json.loads((tmp_path / "audit" / "summary.json").read_text())["protocol"]["runs_at"] == _device_default()
    with pytest.raises(Exception, match="other settings"):
        run_audit(tiny_bundle.path, [scenes], AuditOptions(methods=("activation",), metrics=("adcc",),
                                                          backend="openvino", precision="f32", steps=4),
                  tmp_path / "audit", progress=False)


def test_a_fused_model_records_its_precision_and_its_maps_there(tiny_bundle):
    import json

    from cam_infer.bundle.split import random_images
    from cam_infer.fuse import fuse

    meta = {p.key: p.value for p in fuse(tiny_bundle, "cam", precision="bf16").metadata_props}
    assert meta["cam_infer.precision"] == "bf16"
    check = json.loads(meta["cam_infer.check"])
    assert check["relative_difference"] < 1e-5                          # float32 on ONNX Runtime: exact
    # at bf16, per map: max |Δ| / max |map| ≤ max Σ_k |W_ck| ΔA_k / max |map|, ΔA bounded as at the top of this file
    x = random_images(tiny_bundle.preprocessing, 2)                       # the images the check ran on
    f32 = Explainer(tiny_bundle, backend="onnxruntime")
    maps = f32.explain(x, method="cam").maps
    magnitude, layers = _magnitudes(tiny_bundle, x)
    weight = np.abs(f32.linear_head.weight[f32.backend.forward(x).argmax(axis=1)])
    bound = np.einsum("nk,nkhw->nhw", weight, MARGIN * 3 * layers * BF16_UNIT_ROUNDOFF * magnitude)
    relative = (bound.max(axis=(1, 2)) / np.abs(maps).max(axis=(1, 2))).max()
    assert 0 < check["bf16"] <= relative
    assert {p.key: p.value for p in fuse(tiny_bundle, "cam").metadata_props}["cam_infer.precision"] == "f32"



def test_a_precision_the_device_does_not_run_is_said_and_recorded_as_what_ran(tiny_bundle, tmp_path):
    """Asked for bf16, OpenVINO runs it where the CPU has it (no note) and f32 elsewhere: then a PrecisionWarning
    (one note line from the CLI) says so, and the run records f32, never the precision asked for."""
    import json
    import warnings

    import openvino as ov
    from cam_infer.errors import PrecisionWarning
    from cam_infer.tools.synthetic import write_scenes
    from helpers import run_cli

    ran = "bf16" if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = Explainer(tiny_bundle, backend="openvino", precision="bf16")
    assert explainer.backend.precision == ran
    assert sum(issubclass(w.category, PrecisionWarning) for w in caught) == (ran != "bf16")
    write_scenes(tmp_path / "s", "cluttered", 1)
    result = run_cli("explain", str(tiny_bundle.path), str(tmp_path / "s"), "--method", "activation", "--backend",
                     "openvino", "--precision", "bf16", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("cam-infer: note: OpenVINO on CPU runs")]
    assert len(notes) == (ran != "bf16")
    assert json.loads((tmp_path / "o" / "results.json").read_text())["settings"]["precision"] == ran


def _runs_as(precision: str) -> str:
    """What OpenVINO's CPU plugin compiles a model at when asked for `precision`, read from the compiled model."""
    import openvino as ov
    x = ov.opset13.parameter([1], np.float32)
    compiled = ov.Core().compile_model(ov.Model([ov.opset13.relu(x)], [x]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": precision})
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


@pytest.mark.parametrize("device", ["CPU", "AUTO", "MULTI:CPU"])
def test_f16_is_recorded_as_what_the_device_runs_on_every_output(tiny_bundle, tmp_path, device):
    """Asked for f16, this CPU compiles bf16 (or f32): the backend, an audit's runs_at, a fused model's precision and
    check, and a served fused model all say what ran, with a note; a virtual device (AUTO, MULTI) that reports no
    precision itself is read through the device it runs on, not recorded as the value asked for."""
    import json
    import warnings

    from cam_infer.audit import AuditOptions, run_audit
    from cam_infer.errors import PrecisionWarning
    from cam_infer.fuse import fuse, save
    from cam_infer.serve.models import FusedRuntime
    from cam_infer.tools.synthetic import write_scenes

    ran = _runs_as("f16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = Explainer(tiny_bundle, backend="openvino", device=device, precision="f16")
        fused = fuse(tiny_bundle, "cam", precision="f16")
        path = save(fused, tmp_path / "fused.onnx")
        served = FusedRuntime(path, "openvino", device, None, precision="f16")
    assert explainer.backend.precision == ran and served.precision == ran
    assert sum(issubclass(w.category, PrecisionWarning) for w in caught) == 3 * (ran != "f16")
    meta = {p.key: p.value for p in fused.metadata_props}
    assert meta["cam_infer.precision"] == ran and ran in json.loads(meta["cam_infer.check"])
    assert Explainer(tiny_bundle, backend="openvino", device=device, precision="auto").backend.precision == \
        _device_default()
    e = explainer.explain(_images(1), method="activation")
    assert (e.runtime, e.precision, e.layers) == ("openvino", ran, [tiny_bundle.manifest["target_layer"]["tensor"]])
    scenes = write_scenes(tmp_path / "scenes", "large", 1)
    if device == "CPU":                         # a folder run records what ran, not what was asked, and the layer
        from helpers import run_cli
        result = run_cli("explain", tiny_bundle.path, scenes, "--method", "activation", "--backend", "openvino",
                         "--precision", "f16", "--out", tmp_path / "run")
        assert result.returncode == 0, result.stderr
        settings = json.loads((tmp_path / "run" / "results.json").read_text())["settings"]
        assert settings["precision"] == ran and settings["layer"] == e.layers
    options = AuditOptions(methods=("activation",), metrics=("adcc",), backend="openvino", device=device,
                           precision="f16", steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrecisionWarning)
        assert run_audit(tiny_bundle.path, [scenes], options, tmp_path / "audit", progress=False)["protocol"][
            "runs_at"] == ran


def test_an_empty_precision_is_refused_on_both_runtimes(tiny_bundle):
    from cam_infer.errors import CamInferError
    for backend in ("openvino", "onnxruntime"):
        with pytest.raises(CamInferError, match="unknown precision ''"):
            Explainer(tiny_bundle, backend=backend, precision="")


def test_a_map_within_the_formats_rounding_is_flagged_only_at_a_reduced_precision():
    """δ = u·max|z| for a logit map; a probability map of logits takes the softmax's sensitivity 2·max p(1−p)."""
    from cam_infer.numerics import within_rounding

    z = np.array([[10.0, 0.0], [10.0, 0.0]])
    logits = np.array([10.0, 10.0 + 0.9 * 10 * BF16_UNIT_ROUNDOFF])           # spans 0.9 of one rounding of 10
    assert within_rounding(logits, z, "bf16", False) and not within_rounding(logits, z, "f32", False)
    assert not within_rounding(np.array([10.0, 10.0 + 1.1 * 10 * BF16_UNIT_ROUNDOFF]), z, "bf16", False)
    assert not within_rounding(logits, z, "f16", False)                       # f16's u is 2⁻¹¹: resolved there
    p = np.array([0.5, 0.5 + 0.9 * 2 * 0.25 * 10 * BF16_UNIT_ROUNDOFF])      # 0.9 of the probability's rounding
    assert within_rounding(p, z, "bf16", True)
    p = np.array([0.5, 0.5 + 1.1 * 2 * 0.25 * 10 * BF16_UNIT_ROUNDOFF])      # 1.1 of it, half a logit's rounding
    assert not within_rounding(p, z, "bf16", True) and within_rounding(p, z, "bf16", False)


def test_a_map_one_step_of_quantized_logits_wide_is_flagged_at_any_precision():
    """Scores that are multiples of the logits' step s: one step apart is rounding's two levels, two steps are not
    (δ = 1.5·s; times 2·max p(1−p) for probabilities of the logits); the larger of the step and the format's rule."""
    from cam_infer.numerics import within_rounding

    s, z = 0.0444, np.array([[3.0, 0.0]])
    assert within_rounding(np.array([3.0, 3.0 + s, 3.0]), z, "f32", False, step=s)
    assert not within_rounding(np.array([3.0, 3.0 + 2 * s]), z, "f32", False, step=s)
    assert not within_rounding(np.array([3.0, 3.0 + s]), z, "f32", False)                  # a float file: no step
    p = np.array([0.5, 0.5 + 1.4 * 2 * 0.25 * s])                                          # 1.4 steps of probability
    assert within_rounding(p, z, "f32", True, step=s) and not within_rounding(p * 1.1, z, "f32", True, step=s)
    big = np.array([[1000.0, 0.0]])                                   # bf16's rounding of 1000 (3.9) outweighs the step
    assert within_rounding(np.array([1000.0, 1003.0]), big, "bf16", False, step=s)


def test_a_confident_vits_maps_at_bf16_are_the_float32_maps_or_flagged(tmp_path):
    """A trained ViT at bf16 on cluttered scenes (some predicted with p > 0.998): Recipro-CAM's and ViT Recipro-CAM's
    maps there span less than bf16's rounding of the logits and were noise (correlation with float32's down to
    −0.5, changing with the batch). Such maps are now degenerate (no picture); every other map is float32's to the
    format (correlation ≥ 0.9), and float32 flags none."""
    from cam_infer.bundle.split import split_onnx
    from cam_infer.tools.synthetic import write_scenes
    from conftest import ROOT

    bundle = split_onnx(ROOT / "tests" / "data" / "transformers" / "vit_legacy.onnx", "auto", tmp_path / "b",
                        preprocessing={"crop": "none", "mean": (0.5,) * 3, "std": (0.25,) * 3})
    if not _bf16_here(bundle):
        pytest.skip("this CPU has no bf16 in OpenVINO")
    images = sorted(write_scenes(tmp_path / "s", "cluttered", 8).glob("*.png"))
    f32 = Explainer(bundle, backend="openvino", precision="f32")
    bf16 = Explainer(bundle, backend="openvino", precision="bf16")
    flagged = 0
    for method, options in (("recipro", {"score": "logit"}), ("vit-recipro", {})):
        exact, rounded = f32.explain(images, method, **options), bf16.explain(images, method, **options)
        assert not exact.degenerate.any()
        for i in range(len(images)):
            if rounded.degenerate[i]:
                flagged += 1
                assert not rounded.saliency[i].any()
            else:
                assert np.corrcoef(exact.saliency[i].ravel(), rounded.saliency[i].ravel())[0, 1] >= 0.9
    assert flagged >= 2
