"""What a run costs, said before it starts (`cam_infer.cost`): the passes the cost line announces are the rows
the runtime actually runs, counted at the backend's runtime calls; and long runs report progress when piped."""

from __future__ import annotations

import io
import re
from collections import Counter

import numpy as np
import pytest
from conftest import SHARED, needs_shared
from helpers import run_cli

from cam_infer import Explainer
from cam_infer.cost import classifier_plan, cost_line, detection_plan
from cam_infer.enhancers import variants
from cam_infer.methods import GRADIENT_FREE


def counting(backend) -> Counter:
    """Rows the backend sends to its runtime, per graph (features, head, joined, branch_<l>)."""
    rows: Counter = Counter()
    run = backend._run

    def counted(role, x):
        rows[role] += len(x)
        return run(role, x)
    backend._run = counted
    return rows


def model_and_head_rows(rows: Counter) -> tuple[int, int]:
    """(whole-model rows, head-only rows): a model pass is a features or joined row (the joined graph with
    Recipro-CAM's product too, or a map computed in the pass: ``maps-<method>``); without a joined graph it also
    runs one head row."""
    from cam_infer.bundle.positions import PRODUCTS
    in_pass = sum(n for role, n in rows.items() if role.startswith("maps-"))
    model = rows["features"] + rows["joined"] + rows[PRODUCTS] + in_pass
    return model, rows["head"] - rows["features"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_announced_passes_are_the_passes_run(tiny_bundle, backend):
    explainer = Explainer(tiny_bundle, backend=backend)
    x = np.random.default_rng(0).random((1, *tiny_bundle.input_shape), np.float32)
    cases = {"recipro": {"closed_form": False}, "ablation": {"closed_form": False}, "score": {}, "eigen": {}}
    plan = {m.name: m.per_image for m in classifier_plan(tiny_bundle, variants(cases), cases,
                                                         explainer.linear_head is not None)}
    k, h, w = tiny_bundle.activation_shape
    a = explainer.backend.features(x)[0]
    varying = int((np.ptp(a.reshape(k, -1), axis=1) > 0).sum())        # Score-CAM skips constant channels
    assert (plan["recipro"].model, plan["recipro"].head) == (1, h * w)
    assert (plan["ablation"].model, plan["ablation"].head) == (1, k)
    assert (plan["score"].model, plan["score"].bound) == (1 + k, True)
    assert (plan["eigen"].model, plan["eigen"].head) == (1, 0)
    rows = counting(explainer.backend)
    for method, options in cases.items():
        rows.clear()
        explainer.explain(x, method, **options)
        model, head = model_and_head_rows(rows)
        expected = plan[method]
        if method == "score":
            assert model == 1 + varying <= expected.model, (method, rows)
        else:
            assert (model, head) == (expected.model, expected.head), (method, rows)


def test_closed_forms_announce_no_head_rows(tiny_bundle):
    explainer = Explainer(tiny_bundle, backend="onnxruntime")
    assert explainer.linear_head is not None
    plan = classifier_plan(tiny_bundle, variants(["recipro", "ablation"]), {}, True)
    rows = counting(explainer.backend)
    for cost in plan:
        rows.clear()
        explainer.explain(np.ones((1, *tiny_bundle.input_shape), np.float32), cost.name)
        assert model_and_head_rows(rows) == (cost.per_image.model, cost.per_image.head) == (1, 0)


def test_enhancer_multiplies_the_methods_passes(tiny_bundle):
    from cam_infer.enhancers import get_enhancer
    plain, enhanced = classifier_plan(tiny_bundle, variants(["score", "score+evet"]), {}, True)
    inputs = get_enhancer("evet").passes(*tiny_bundle.input_shape[1:])
    assert inputs > 1 and enhanced.per_image.model == plain.per_image.model * inputs


def test_method_all_says_its_cost_before_the_run(tmp_path, tiny_bundle):
    photo = tmp_path / "p.png"
    import cv2
    cv2.imwrite(str(photo), np.random.default_rng(1).integers(0, 255, (40, 50, 3), np.uint8))
    result = run_cli("explain", tiny_bundle.path, photo, "--method", "all", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("cost per image: ") and "measured a model pass" in first, result.stdout
    explainer = Explainer(tiny_bundle)
    methods = [m for m in GRADIENT_FREE if m != "cam" or explainer.linear_head is not None]
    for cost in classifier_plan(tiny_bundle, variants(methods), {}, explainer.linear_head is not None):
        assert f"{cost.name} {cost.per_image.describe()}" in first
    assert re.search(r"score ≤ (\d+) model passes", first).group(1) == str(1 + tiny_bundle.activation_shape[0])


def test_cost_line_says_bounds_and_times():
    from cam_infer.cost import MethodCost, Passes
    line = cost_line([MethodCost("recipro", Passes(model=1), Passes(head=1600)), MethodCost("eigen", Passes(model=1))],
                     {"model": 0.2, "head": 0.05})
    assert line.startswith("cost per image: recipro 1 model pass + 1600 head rows per detection (≈ 80 s); "
                           "eigen 1 model pass — measured a model pass 200 ms, a head row 50 ms"), line


@needs_shared
@pytest.mark.slow
def test_detector_passes_are_the_rows_run(tmp_path):
    from cam_infer import Explainer
    from cam_infer.detection.context import DetectionContext
    from cam_infer.detection.split import split_detector
    from cam_infer.detection.targets import central_targets
    from cam_infer.methods import get_method
    model = SHARED / "deployed" / "nudenet_320n.onnx"
    for cut, options in (("detect-input", {}), ("backbone", {"block": 8})):
        explainer = Explainer(split_detector(model, tmp_path / cut, cut=cut), backend="onnxruntime")
        x, _, _ = explainer._inputs([SHARED / "deployed" / "basketball1.png"])
        packed, outputs = explainer.backend.observe(x)
        rows = counting(explainer.backend)
        for name in ("recipro", "ablation"):
            chosen = options if name == "recipro" else {}                       # block: a Recipro-CAM option
            counted_on = DetectionContext(explainer, None, None, None), central_targets(explainer.grid)
            (cost,) = detection_plan(*counted_on, {name: get_method(name)}, {name: chosen})
            per_level = []
            for target in central_targets(explainer.grid):
                rows.clear()
                ctx = DetectionContext(explainer, x, packed[0], outputs[0])
                get_method(name).implementation("detection")(ctx, [target], **chosen)
                crops = sum(n for role, n in rows.items() if role.startswith("branch_"))
                per_level.append((crops, rows["head"]))
            most = max(per_level, key=sum)
            assert (cost.per_target.crops, cost.per_target.head) == most, (cut, name, per_level)
        if cut == "backbone":
            assert detection_plan(*counted_on, {"recipro": get_method("recipro")})[0].per_target.head == 40 * 40 + 1


def test_piped_progress_writes_a_bounded_number_of_lines(monkeypatch):
    from cam_infer import progress
    clock = iter(np.arange(0, 1000, 1.0))            # one second passes at every reading of the clock
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()                            # not a terminal
    with progress.Progress(100, "audit", stream=stream, every=10) as bar:
        for _ in range(100):
            bar.advance()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and lines[-1].startswith("audit [") and "100/100" in lines[-1]
    assert 5 <= len(lines) <= 100 / 10 + 1, lines
    short = io.StringIO()
    with progress.Progress(3, "audit", stream=short) as bar:
        bar.advance(3)
    assert short.getvalue() == ""                    # a short piped run stays quiet


def test_cli_progress_appears_when_piped(tmp_path, tiny_bundle, monkeypatch, capsys):
    import cv2

    from cam_infer import progress
    from cam_infer.cli import main
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), np.random.default_rng(i).integers(0, 255, (40, 50, 3), np.uint8))
    monkeypatch.setattr(progress, "EVERY", 0.0)      # a line at every step: what a long run writes every EVERY s
    assert main(["explain", str(tiny_bundle.path), str(tmp_path), "--method", "eigen", "--out",
                 str(tmp_path / "out"), "--batch-size", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert 1 <= len(err) <= 3 + 1 and all(line.startswith("explain [") for line in err), err
    assert err[-1].split("] ")[1].startswith("5/5")


def dip_map(size: int = 40) -> np.ndarray:
    """What Recipro-CAM gives at a detector's backbone cut: every cell keeps the score but one small dip."""
    m = np.full((size, size), 0.9, np.float32)
    m[2:4, 2:4] = 0.2
    return m


def test_near_uniform_is_the_fraction_above_half_the_range():
    from cam_infer.postprocess import UNIFORM_FRACTION, near_uniform, normalise
    blob = np.zeros((40, 40), np.float32)
    blob[5:30, 5:30] = 1.0                                          # 39 % of the map: a region
    broad = np.ones((40, 40), np.float32)
    broad[:, :5] = 0.0                                              # 87.5 % high: still below the bar
    maps, degenerate = normalise(np.stack([dip_map(), blob, broad, np.full((40, 40), 3.0, np.float32)]))
    fractions = [(m >= 0.5).sum() / m.size for m in maps]           # counted, not averaged
    assert [f > UNIFORM_FRACTION for f in fractions] == list(near_uniform(maps)) == [True, False, False, False]
    assert list(degenerate) == [False, False, False, True]          # a constant map is degenerate, not uniform


def test_healthy_maps_are_not_flagged():
    from cam_infer.tools.demo import DEMO_SEED, SPLITS, embedded_bundle_path, scene
    explainer = Explainer(embedded_bundle_path())
    x = explainer.preprocess([scene(split, DEMO_SEED, seed).image for split in SPLITS for seed in range(2)])
    for method in GRADIENT_FREE:
        if method != "score":
            assert not explainer.explain(x, method).uniform.any(), method


@needs_shared
def test_real_photos_broadest_maps_are_not_flagged(tmp_path):
    from cam_infer.bundle import split_model
    bundle = split_model(SHARED / "models" / "squeezenet1.1-fp32.onnx", layer="auto", out=tmp_path / "sq")
    e = Explainer(bundle).explain([SHARED / "deployed" / "basketball1.png", SHARED / "images" / "samoyed_dog.jpg"],
                                  "recipro")
    assert ((e.saliency >= 0.5).mean(axis=(1, 2)) > 0.7).all() and not e.uniform.any()  # broad, still a region


def test_a_near_uniform_map_is_flagged_in_records_and_captions(tmp_path, tiny_bundle):
    import cv2

    from cam_infer.methods import METHODS, method
    from cam_infer.postprocess import caption
    from cam_infer.runs import explain_files

    @method("dip-test", cost="1 feature pass")
    def dip(ctx):
        """a near-uniform map"""
        _, _, h, w = ctx.activations.shape
        return np.stack([dip_map(max(h, w))[:h, :w]] * len(ctx.activations))
    try:
        cv2.imwrite(str(tmp_path / "p.png"), np.random.default_rng(2).integers(0, 255, (40, 50, 3), np.uint8))
        results = explain_files(Explainer(tiny_bundle), [tmp_path / "p.png"], ["dip-test", "eigen"], tmp_path / "out")
    finally:
        del METHODS["dip-test"]
    flags = {r["method"]: (r["uniform"], r["degenerate"]) for r in results.records}
    assert flags == {"dip-test": (True, False), "eigen": (False, False)}
    assert caption("recipro", "cat", 3, 0.5, uniform=True).endswith("[near-uniform map: no localisation]")
    assert caption("recipro", "cat", 3, 0.5, degenerate=True, uniform=True).endswith("[constant map]")


def test_vit_recipro_announces_its_reduced_copies_not_full_head_rows(vit_bundles):
    """Reduced, each of its h·w copies carries the prefix tokens, ≤ 9 neighbours and one token for the rest: not
    a head row of every token (a 16·16 grid: 11 tokens, not 257); with ``reduced=False``, full head rows."""
    bundle = vit_bundles["vit"]
    _, h, w = bundle.activation_shape
    for options, unit in (({}, "reduced"), ({"reduced": False}, "head")):
        chosen = {"vit-recipro": {"reduced": True, **options}}
        (cost,) = classifier_plan(bundle, variants(["vit-recipro"]), chosen, False)
        assert cost.per_image.counts() == {**dict.fromkeys(cost.per_image.counts(), 0), "model": 1, unit: h * w}
    assert f"+ {h * w} head rows" in cost_line([cost])
    (cost,) = classifier_plan(bundle, variants(["vit-recipro"]), {"vit-recipro": {"reduced": True}}, False)
    assert f"+ {h * w} reduced head rows" in cost_line([cost])
