"""vit-recipro: the reduced copies equal the h·w full copies (openvino-xai's computation), both equal openvino-xai
1.1.0's own ViTReciproCAM on the same ONNX files, and the refusals."""

import subprocess

import numpy as np
import pytest

from cam_infer import CamInferError, Explainer
from cam_infer.bundle.split import split_onnx
from conftest import ROOT, needs_torch

pytestmark = needs_torch
XAI_PYTHON = ROOT.parent / "venv-xai" / "bin" / "python"
REFERENCE = ROOT / "tests" / "data" / "transformers" / "vit_recipro_openvino_xai.npz"
RUNTIMES = ("onnxruntime", "openvino")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from tiny_transformers import export_tiny
    folder = tmp_path_factory.mktemp("vit-recipro")
    models = {"vit": ("vit", False), "vit-dynamo": ("vit", True), "deit": ("deit", False), "swin": ("swin", False)}
    paths = {key: export_tiny(name, folder / f"{key}.onnx", dynamo=dynamo) for key, (name, dynamo) in models.items()}
    return {key: (path, split_onnx(path, "auto", folder / f"{key}-bundle")) for key, path in paths.items()}


@pytest.fixture(scope="session")
def explainers(tiny_models):
    return {(key, rt): Explainer(bundle.path, backend=rt, precision="f32") for key, (_, bundle) in tiny_models.items()
            for rt in RUNTIMES}


def inputs_for(bundle, n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *bundle.input_shape)).astype(np.float32)


@pytest.mark.parametrize("key", ["vit", "vit-dynamo", "deit"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_reduced_copies_equal_the_full_mosaic_copies(tiny_models, explainers, key, runtime):
    """P + 10 tokens per copy, the zero token's keys raised by log m, give what the h·w full copies give."""
    x = inputs_for(tiny_models[key][1])
    for options in ({}, {"kernel": "onehot"}, {"cls_token": False}, {"score": "prob"}):
        reduced = explainers[key, runtime].explain(x, method="vit-recipro", target=1, **options).maps
        full = explainers[key, runtime].explain(x, method="vit-recipro", target=1, reduced=False, **options).maps
        np.testing.assert_allclose(reduced, full, rtol=1e-4, atol=2e-6 * np.abs(full).max(), err_msg=str(options))
    from cam_infer.methods.vit_recipro import _TAILS
    tail = _TAILS[explainers[key, runtime].backend]["reduced"]
    assert tail.prefix == tiny_models[key][1].tokens.prefix                  # the prefix-only tail ran


def test_the_opened_tail_with_every_token_and_no_bias_is_the_head(tiny_models, explainers):
    from cam_infer.methods.vit_recipro import Tail
    for key in ("vit", "vit-dynamo", "deit"):
        for runtime in RUNTIMES:
            backend, bundle = explainers[key, runtime].backend, tiny_models[key][1]
            tokens = backend.features(inputs_for(bundle, 3))
            np.testing.assert_allclose(Tail(backend, bundle).clean(tokens), backend.head(tokens), rtol=1e-5, atol=1e-5)


def assert_same_maps(ours: np.ndarray, theirs: np.ndarray) -> None:
    for a, b in zip(ours, theirs):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_equals_the_committed_openvino_xai_maps(tiny_models, explainers):
    """openvino-xai 1.1.0's raw ViTReciproCAM maps of the tiny ViT (seeded weights), all classes. Regenerate with

        python -c "import sys; sys.path.insert(0, 'tests'); import numpy as np; from tiny_transformers import \\
            export_tiny; export_tiny('vit', '/tmp/vit.onnx'); np.save('/tmp/x.npy', np.random.default_rng(0)\\
            .standard_normal((2, 3, 64, 64)).astype(np.float32))"
        /path/to/venv-with-openvino-xai/bin/python tests/xai_vit_recipro.py /tmp/vit.onnx /tmp/x.npy \\
            tests/data/transformers/vit_recipro_openvino_xai.npz
    """
    reference = np.load(REFERENCE)
    x, maps = reference["inputs"], reference["maps"]
    for runtime in RUNTIMES:
        for c in range(maps.shape[1]):
            ours = explainers["vit", runtime].explain(x, method="vit-recipro", target=c).maps
            assert_same_maps(ours, maps[:, c])


@pytest.mark.skipif(not XAI_PYTHON.is_file(), reason="no Python with openvino-xai 1.1.0 next to the repository")
@pytest.mark.parametrize("key, flags", [("vit", ["--onehot"]), ("vit-dynamo", []), ("vit", ["--no-cls-token"])])
def test_equals_openvino_xai_run_live_on_the_same_file(tiny_models, explainers, tmp_path, key, flags):
    """(openvino-xai itself assumes one class token and a square grid: DeiT-style models are checked against the
    full copies above.)"""
    path, bundle = tiny_models[key]
    x = inputs_for(bundle, seed=3)
    np.save(tmp_path / "x.npy", x)
    subprocess.run([str(XAI_PYTHON), str(ROOT / "tests" / "xai_vit_recipro.py"), str(path), str(tmp_path / "x.npy"),
                    str(tmp_path / "maps.npz"), *flags], check=True, capture_output=True, timeout=300)
    theirs = np.load(tmp_path / "maps.npz")["maps"]
    options = {"kernel": "onehot"} if "--onehot" in flags else {"cls_token": False} if flags else {}
    for runtime in RUNTIMES:
        for c in (0, 4):
            ours = explainers[key, runtime].explain(x, method="vit-recipro", target=c, **options).maps
            assert_same_maps(ours, theirs[:, c])


def test_a_model_without_a_class_token_is_refused_in_one_line(tiny_models, explainers):
    x = inputs_for(tiny_models["swin"][1], 1)
    with pytest.raises(CamInferError, match=r"no prefix tokens \(a Swin-style grid\): use recipro$"):
        explainers["swin", "onnxruntime"].explain(x, method="vit-recipro")


def test_a_cnn_is_refused_in_one_line(tiny_bundle):
    with pytest.raises(CamInferError, match="no token model"):
        Explainer(tiny_bundle.path).explain([np.zeros((64, 64, 3), np.uint8)], method="vit-recipro")


def test_a_cut_before_two_blocks_keeps_every_token_through_the_tail(tiny_models, tmp_path):
    """Cut at an earlier block, the second block needs every token: the prefix-only tail is refused by its check at
    the clean tokens, and the reduced copies still equal the full copies (log-multiplicity bias in both blocks)."""
    from cam_infer.methods.vit_recipro import _TAILS
    bundle = split_onnx(tiny_models["vit"][0], "blocks.0", tmp_path / "b")           # blocks 1 and 2 after it
    explainer = Explainer(bundle.path, backend="onnxruntime")
    x = inputs_for(bundle)
    reduced = explainer.explain(x, method="vit-recipro", target=2).maps
    full = explainer.explain(x, method="vit-recipro", target=2, reduced=False).maps
    np.testing.assert_allclose(reduced, full, rtol=1e-4, atol=2e-6 * np.abs(full).max())
    assert _TAILS[explainer.backend]["reduced"] is _TAILS[explainer.backend]["whole"]


@pytest.mark.parametrize("key", ["vit", "vit-dynamo", "deit"])
def test_the_fused_model_equals_the_method_at_any_batch_on_both_runtimes(tiny_models, explainers, key):
    """One graph: the copies gathered from the cut tokens, the opened tail, the target's logit (fuse checks it too)."""
    from cam_infer.backends.sessions import onnxruntime_session, openvino_compiled
    from cam_infer.fuse import fuse
    bundle = tiny_models[key][1]
    for options in ({}, {"kernel": "onehot", "reduced": False}):
        model = fuse(bundle.path, "vit-recipro", raw=True, **options)
        x = inputs_for(bundle, 3, seed=7)
        session = onnxruntime_session(model.SerializeToString())
        names = [o.name for o in session.get_outputs()]
        ours = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
        compiled = openvino_compiled(model)
        theirs = {name: np.asarray(v) for name, v in zip(names, compiled({0: x}).values())}
        for outputs in (ours, theirs):
            expected = explainers[key, "onnxruntime"].explain(x, method="vit-recipro", target=outputs[
                "saliency_class"].tolist(), **options).maps
            np.testing.assert_allclose(outputs["saliency_raw"], expected, rtol=1e-4, atol=1e-5)


def _opened(bundle, prefix=0, between_norm_and_projections=False):
    import onnx
    from onnx import helper

    from cam_infer.bundle.reduced_tail import reduced_tail
    head = onnx.load(str(bundle.head_path))
    if between_norm_and_projections:                          # the norm's use no longer a projection by a constant
        norm = next(n for n in head.graph.node if n.op_type == "LayerNormalization")
        for node in head.graph.node:
            node.input[:] = ["norm_seen" if name == norm.output[0] else name for name in node.input]
        head.graph.node.insert(list(head.graph.node).index(norm) + 1,
                               helper.make_node("Identity", [norm.output[0]], ["norm_seen"]))
    return reduced_tail(head, bundle.tokens.shape[0], prefix)


@pytest.mark.parametrize("key", ["vit", "vit-dynamo", "deit"])
def test_the_opened_tail_projects_the_clean_tokens_once_and_projects_out_only_the_prefix(tiny_models, explainers,
                                                                                        key):
    """q, k, v: MatMuls on the T clean normalised tokens (gathered after); the output projection on the prefix rows;
    a norm used otherwise is gathered itself — each version equals the head at the clean tokens."""
    from cam_infer.backends.sessions import onnxruntime_session
    bundle = tiny_models[key][1]
    tokens = explainers[key, "onnxruntime"].backend.features(inputs_for(bundle, 2))
    expected = explainers[key, "onnxruntime"].backend.head(tokens)
    prefix = bundle.tokens.prefix
    for model, gathers_the_norm in ((_opened(bundle, prefix), False), (_opened(bundle, 0), False),
                                    (_opened(bundle, prefix, between_norm_and_projections=True), True)):
        graph = model.graph
        norm = next(n for n in graph.node if n.op_type == "LayerNormalization").output[0]
        users = {n.op_type for n in graph.node if norm in n.input}
        assert ("Gather" in users) == gathers_the_norm and (users <= {"MatMul", "Shape"}) != gathers_the_norm
        t = tokens.shape[1]
        session = onnxruntime_session(model.SerializeToString())
        got = session.run(None, dict(zip([i.name for i in session.get_inputs()], (
            tokens, np.arange(t)[None], np.ones((1, t, 1), np.float32), np.zeros((1, t), np.float32)))))[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    sliced = [n for n in _opened(bundle, prefix).graph.node if n.op_type == "Slice" and n.output[0].endswith("_prefix")]
    assert len(sliced) == 2                         # the output projection's input and the residual's stream


def test_threads_sharing_one_explainer_get_the_maps_each_would_alone(tiny_models):
    """The tail graph lends an infer request per call on OpenVINO: four threads explaining at once through one
    Explainer (a folder run's threads, a server) get the maps of single calls, none "Infer Request is busy"."""
    from concurrent.futures import ThreadPoolExecutor

    bundle = tiny_models["vit"][1]
    explainer = Explainer(bundle.path, backend="openvino", precision="f32")
    images = [inputs_for(bundle, 1, seed) for seed in range(8)]
    alone = [explainer.explain(x, "vit-recipro").maps for x in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda x: explainer.explain(x, "vit-recipro").maps, images * 3))
    for i, maps in enumerate(together):
        np.testing.assert_array_equal(maps, alone[i % len(images)])
