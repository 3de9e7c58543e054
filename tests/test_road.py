"""ROAD and ARCC (`cam_infer.metrics.road`): the imputation against closed forms and a dense solve of the
reference's own system, the metrics against pytorch-grad-cam 1.5.7's own code (same weights, maps, images and
noise draws), and the audit's columns."""

from __future__ import annotations


import numpy as np
import pytest

from anchors import run_pytorch_grad_cam
from conftest import needs_torch
from helpers import assert_one_line_error, run_cli

from cam_infer.audit import AuditOptions, audit_image
from cam_infer.metrics import road as R
from cam_infer.metrics import complexity
from cam_infer.tools.demo import embedded_bundle_path
from cam_infer.tools.synthetic import generate


def dense_imputation(x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The reference's system (`NoisyLinearImputer.setup_sparse_system`) written out as a dense matrix, one
    equation per removed pixel, solved directly."""
    h, w = kept.shape
    removed = list(zip(*np.nonzero(~kept)))
    index = {p: i for i, p in enumerate(removed)}
    a = np.zeros((len(removed), len(removed)))
    b = np.zeros((len(removed), x.shape[0]))
    for i, (r, c) in enumerate(removed):
        total = 0.0
        for (dr, dc), weight in R.NEIGHBOURS:
            rr, cc = r + dr, c + dc
            if not (0 <= rr < h and 0 <= cc < w):
                continue
            total += weight
            if kept[rr, cc]:
                b[i] -= weight * x[:, rr, cc]
            else:
                a[i, index[(rr, cc)]] = weight
        a[i, i] = -total
    out = x.astype(np.float64).copy()
    out[:, ~kept] = np.linalg.solve(a, b).T
    return out


def test_imputation_solves_the_references_system():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 14, 11))
    kept = rng.random((14, 11)) < 0.3               # holes touching every border and corner
    kept[0, 0] = False
    ours = R.linear_imputation(x, kept, tolerance=1e-12)
    np.testing.assert_allclose(ours, dense_imputation(x, kept), atol=1e-9)
    np.testing.assert_array_equal(ours[:, kept], x[:, kept])


def test_a_linear_ramp_is_imputed_exactly_and_a_large_hole_to_the_tolerance():
    rows, cols = np.mgrid[0:40, 0:36].astype(np.float64)
    ramp = np.stack([0.5 * rows - 0.25 * cols, 0.1 * cols, 2 + 0 * rows])
    kept = np.ones((40, 36), bool)
    kept[5:36, 3:33] = False                        # interior: every removed pixel has all eight neighbours
    np.testing.assert_allclose(R.linear_imputation(ramp, kept, tolerance=1e-12), ramp, atol=1e-8)
    # a 40×36 grid goes through the half-resolution start: the default tolerance is within 1e-4 of exact
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40, 36))
    np.testing.assert_allclose(R.linear_imputation(x, kept), dense_imputation(x, kept), atol=1e-4)


def test_morf_removes_the_most_relevant_and_lerf_the_least():
    s = np.random.default_rng(1).permutation(121).reshape(11, 11).astype(np.float32) / 120
    for p in R.PERCENTILES:
        morf, lerf = R.kept_pixels(s, p, "morf"), R.kept_pixels(s, p, "lerf")
        # 121 distinct values: t_p is the value of rank 1.2·p exactly, and only those strictly below it are kept
        assert morf.sum() == lerf.sum() == 120 * p // 100
        assert s[morf].max() < s[~morf].min() and s[lerf].min() > s[~lerf].max()


def test_a_map_flat_at_its_minimum_leaves_road_undefined():
    s = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    assert R.road_defined(s)
    s[:2] = 0                                     # 20 % of the pixels at the minimum: MoRF at 10 keeps none
    assert not R.road_defined(s)
    with pytest.raises(Exception, match="at least one kept pixel"):
        R.linear_imputation(np.ones((3, 10, 10)), R.kept_pixels(s, 10, "morf"))


def test_arcc_is_the_harmonic_mean_with_road_doubled_and_clipped():
    assert R.arcc(0.8, 0.3, 0.2) == pytest.approx(3 / (1 / 0.8 + 1 / 0.7 + 1 / 0.4), rel=1e-6)
    assert R.arcc(0.8, 0.3, 0.7) == pytest.approx(3 / (1 / 0.8 + 1 / 0.7 + 1), rel=1e-6)
    assert R.arcc(0.8, 0.3, -0.1) == pytest.approx(3e-8, rel=1e-3)
    a = np.random.default_rng(0).random((8, 8))
    assert R.arcc_coherency(a, 2 * a + 1) == pytest.approx(1.0, abs=1e-6)       # ε in the denominator
    assert R.arcc_coherency(a, np.ones((8, 8))) == 0.5


def test_road_scores_are_probability_changes_averaged_over_percentiles():
    x = np.random.default_rng(0).standard_normal((3, 12, 12)).astype(np.float32)
    s = np.random.default_rng(1).random((12, 12)).astype(np.float32)
    seen = []

    def probability(batch):                       # the mean of the image: a model that is easy to follow
        seen.append(len(batch))
        return batch.mean(axis=(1, 2, 3))

    scores = R.road(probability, x, s)
    assert seen == [1 + 2 * 9]                    # one batch: the image and both orders' nine imputations
    morf = [R.perturbed(x, s, "morf", (p,))[0].mean() for p in R.PERCENTILES]
    lerf = [R.perturbed(x, s, "lerf", (p,))[0].mean() for p in R.PERCENTILES]
    assert scores.morf() == pytest.approx(np.mean(morf) - x.mean(), abs=1e-6)
    assert scores.lerf() == pytest.approx(np.mean(lerf) - x.mean(), abs=1e-6)
    assert scores.combined() == pytest.approx((scores.lerf() - scores.morf()) / 2)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    import cv2
    folder = tmp_path_factory.mktemp("road_scene")
    drawn = generate("multiple", 1, 5)[0]
    path = folder / "scene.png"
    cv2.imwrite(str(path), cv2.cvtColor(drawn.image, cv2.COLOR_RGB2BGR))
    return path


def test_audit_measures_road_and_arcc_only_when_asked(scene):
    from cam_infer import Explainer
    from cam_infer.metrics import class_probabilities

    assert not {"road", "arcc"} & set(AuditOptions(methods=("recipro",)).resolved(boxes=True).metrics)
    options = AuditOptions(methods=("recipro",), metrics=("road", "arcc"), baselines=())
    row = audit_image(embedded_bundle_path(), scene, options)["rows"][0]
    explainer = Explainer(embedded_bundle_path())
    x = explainer.preprocess([scene])
    e = explainer.explain(x, "recipro")
    s, target = e.saliency[0], e.targets[:1]
    direct = R.road(lambda batch: class_probabilities(explainer, batch, target), x[0], s)
    assert row["road_morf"] == pytest.approx(direct.morf(), abs=1e-6) and row["road_morf"] < -0.05
    assert row["road_lerf"] == pytest.approx(direct.lerf(), abs=1e-6)
    assert row["road"] == pytest.approx(direct.combined(), abs=1e-6)
    again = explainer.explain(x * s, "recipro", target=target).saliency[0]
    assert row["arcc"] == pytest.approx(R.arcc(R.arcc_coherency(s, again), complexity(s),
                                               direct.combined(R.ARCC_PERCENTILES)), abs=1e-6)


def test_a_detector_audit_refuses_road_in_one_line(tmp_path):
    result = run_cli("synthetic", "--out", str(tmp_path / "scenes"), "--split", "detection", "-n", "1")
    assert result.returncode == 0, result.stderr
    from cam_infer.tools.demo import embedded_detector_path
    result = run_cli("audit", str(embedded_detector_path()), str(tmp_path / "scenes"), "--metrics", "road",
                     "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "road score a classifier's class probability")


PYTORCH_GRAD_CAM = '''
import sys, torch
sys.path.insert(0, ROOT)
from models.shapes import shapes_net
from pytorch_grad_cam.metrics import road
from pytorch_grad_cam.metrics.arcc import ARCC
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

model = shapes_net(4)
model.load_state_dict(torch.load(str(inputs["weights"]), weights_only=True))
model.eval()
with torch.no_grad():                               # the same weights as the bundle's
    assert np.allclose(model(torch.from_numpy(inputs["x"])).numpy(), inputs["logits"], atol=1e-4)
draws = [inputs[f"draw_{i}"] for i in range(int(inputs["draws"]))]

def same_draws(t):                                  # the imputer's noise: the draws ours used, in its order
    d = torch.from_numpy(draws.pop(0)).float()
    assert d.shape == t.shape, (d.shape, t.shape)
    return d

road.torch.randn_like = same_draws
x, cams = torch.from_numpy(inputs["x"]), inputs["cams"]
targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in inputs["targets"]]
again = torch.from_numpy(inputs["again"])

def base_method(input_tensor, targets):            # the method's maps of x * cam: ours, handed over
    assert torch.allclose(input_tensor, x * torch.from_numpy(cams)[:, None], atol=1e-6)
    return inputs["again"]

outputs["morf"] = road.ROADMostRelevantFirstAverage()(x, cams, targets, model)
outputs["lerf"] = road.ROADLeastRelevantFirstAverage()(x, cams, targets, model)
outputs["combined"] = road.ROADCombined()(x, cams, targets, model)
outputs["arcc"] = ARCC(base_method)(x, cams, targets, model)
assert not draws
draws.append(inputs["single_draw"])                 # one imputation, compared pixel by pixel
outputs["imputed"] = road.NoisyLinearImputer()(x[0], torch.from_numpy(inputs["kept"].astype(np.float32))).numpy()
'''


def their_draws(cams, percentiles_by_call):
    """The noise draws in the order the reference's imputer asks for them: per call, per percentile, per image."""
    out = []
    for order, percentiles in percentiles_by_call:
        for p in percentiles:
            for s in cams:
                removed = int((~R.kept_pixels(s, p, order)).sum())
                out.append(R.noise_draws((3, removed), order, p).astype(np.float32))
    return out


def embedded_weights_as_shapes_net() -> dict:
    """The embedded ShapesNet bundle's weights as `models.shapes.ShapesNet`'s state_dict: its convolutions carry
    the batch norms folded in, so each norm becomes the identity plus the folded bias."""
    import onnx
    import torch
    from onnx import numpy_helper
    from models import shapes_net

    folder = embedded_bundle_path()
    weights = [numpy_helper.to_array(i) for i in onnx.load(folder / "features.onnx").graph.initializer]
    head = {i.name: numpy_helper.to_array(i) for i in onnx.load(folder / "head.onnx").graph.initializer}
    state = shapes_net(4).state_dict()
    for block, (kernel, bias) in enumerate(zip(weights[::2], weights[1::2])):
        conv, norm = f"features.{3 * block}", f"features.{3 * block + 1}"
        state[f"{conv}.weight"] = torch.from_numpy(kernel.copy())
        state[f"{norm}.weight"] = torch.ones(len(bias))
        state[f"{norm}.bias"] = torch.from_numpy(bias.copy())
        state[f"{norm}.running_mean"] = torch.zeros(len(bias))
        state[f"{norm}.running_var"] = torch.full((len(bias),), 1 - 1e-5)
    state["fc.weight"], state["fc.bias"] = (torch.from_numpy(head[k].copy()) for k in ("fc.weight", "fc.bias"))
    return state


@needs_torch
@pytest.mark.slow
def test_road_and_arcc_equal_pytorch_grad_cam(tmp_path):
    import torch
    from cam_infer import Explainer
    from cam_infer.metrics import class_probabilities

    torch.save(embedded_weights_as_shapes_net(), tmp_path / "net.pt")
    drawn = generate("multiple", 2, 7)
    x = (np.stack([d.image for d in drawn]).astype(np.float32) / 255 - np.float32(0.5)) / np.float32(0.25)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    explainer = Explainer(embedded_bundle_path())
    e = explainer.explain(x, "recipro")
    cams = e.saliency.astype(np.float32)
    assert all(R.road_defined(s) for s in cams)
    again = explainer.explain(x * cams[:, None], "recipro", target=e.targets).saliency.astype(np.float32)
    ours = []
    for n in range(len(x)):
        scores = R.road(lambda batch: class_probabilities(explainer, batch, e.targets[n:n + 1]), x[n], cams[n])
        arcc = R.arcc(R.arcc_coherency(cams[n], again[n]), complexity(cams[n]), scores.combined(R.ARCC_PERCENTILES))
        ours.append((scores.morf(), scores.lerf(), scores.combined(), arcc))
    ours = np.array(ours)
    every, few = R.PERCENTILES, R.ARCC_PERCENTILES
    draws = their_draws(cams, [("morf", every), ("lerf", every), ("lerf", every), ("morf", every),
                               ("lerf", few), ("morf", few)])
    kept = R.kept_pixels(cams[0], 50, "morf")
    single_draw = R.noise_draws((3, int((~kept).sum())), "morf", 50).astype(np.float32)
    theirs = run_pytorch_grad_cam(PYTORCH_GRAD_CAM, {
        "kept": kept, "single_draw": single_draw,
        "weights": np.array(str(tmp_path / "net.pt")), "x": x, "cams": cams, "targets": e.targets,
        "logits": explainer.backend.forward(x), "again": again, "draws": np.array(len(draws)),
        **{f"draw_{i}": d for i, d in enumerate(draws)}},
        tmp_path / "pytorch-grad-cam")
    for column, name in enumerate(("morf", "lerf", "combined", "arcc")):
        # the bar is 1e-3; the two agree to float32 rounding (measured: 6e-8)
        np.testing.assert_allclose(ours[:, column], theirs[name], atol=1e-5, err_msg=name)
    # the scores barely feel the 0.01 noise, the imputed pixels do: the same draws at the same pixels
    np.testing.assert_allclose(R.noisy_linear_imputation(x[0], kept, single_draw), theirs["imputed"], atol=2e-4)
    assert np.abs(ours[:, 0]).max() > 0.05 and ours[:, 3].max() > 0.05    # the scores move: not a vacuous match
