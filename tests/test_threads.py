"""One Explainer called from several threads at once gives exactly what the same calls give one after the
other, on both runtimes, for a classifier and a detector; and explaining changes no process-wide setting."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import cam_infer
from cam_infer import Explainer
from cam_infer.bundle.verify import random_images
from cam_infer.tools.synthetic import detection_scene

DATA = Path(cam_infer.__file__).parent / "data"
THREADS = 4
ROUNDS = 3                      # each round starts the four calls together


def at_once(call, inputs: list) -> list:
    """call(input) for every input, in THREADS threads released together."""
    start = threading.Barrier(len(inputs))

    def together(item):
        start.wait()
        return call(item)

    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(together, inputs))


def assert_same_when_concurrent(call, inputs: list, maps) -> None:
    serial = [maps(call(item)) for item in inputs]
    assert any(len(m) for m in serial)
    for _ in range(ROUNDS):
        for got, expected in zip((maps(e) for e in at_once(call, inputs)), serial):
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(g, e)


CLASSIFIER_CASES = [("onnxruntime", {}, "recipro", {}), ("onnxruntime", {}, "ablation", {"closed_form": False}),
                    ("onnxruntime", {}, "score", {}), ("openvino", {}, "recipro", {}),
                    ("openvino", {}, "ablation", {"closed_form": False}), ("openvino", {}, "eigen", {}),
                    ("openvino", {"hint": "throughput", "memory_budget_mb": 0.5}, "score", {})]


@pytest.mark.parametrize("backend, backend_options, method, options", CLASSIFIER_CASES)
def test_one_classifier_explainer_from_four_threads_gives_the_serial_maps(backend, backend_options, method,
                                                                          options):
    explainer = Explainer(DATA / "shapes", backend=backend, **backend_options)
    inputs = [random_images(explainer.bundle.preprocessing, 2, seed=seed) for seed in range(THREADS)]
    assert_same_when_concurrent(lambda x: explainer.explain(x, method, **options), inputs,
                                lambda e: [e.maps, e.saliency, e.scores])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("method", ["recipro", "ablation", "score"])
def test_one_detector_explainer_from_four_threads_gives_the_serial_maps(backend, method):
    explainer = Explainer(DATA / "shapes_detector", backend=backend)
    inputs = [[detection_scene(1, i).image] for i in range(THREADS)]
    options = {"top_k": 8} if method == "score" else {}
    assert_same_when_concurrent(lambda images: explainer.explain(images, method, **options), inputs,
                                lambda e: [d.saliency for items in e.items for d in items])


def test_gradients_from_four_threads_give_the_serial_maps():
    pytest.importorskip("torch")
    explainer = Explainer(DATA / "shapes", backend="openvino", gradients="torch")
    inputs = [random_images(explainer.bundle.preprocessing, 2, seed=seed) for seed in range(THREADS)]
    assert_same_when_concurrent(lambda x: explainer.explain(x, "gradcam"), inputs, lambda e: [e.maps])


def test_explaining_changes_no_thread_pool_limit(monkeypatch):
    """A per-call limit of NumPy's BLAS threads is process-wide: two overlapping calls could leave it at one."""
    import threadpoolctl

    explainer = Explainer(DATA / "shapes", backend="onnxruntime")
    x = random_images(explainer.bundle.preprocessing, 2)

    def refused(*args, **kwargs):
        raise AssertionError("explain() changed a thread pool limit of the process")
    monkeypatch.setattr(threadpoolctl.ThreadpoolController, "limit", refused)
    monkeypatch.setattr(threadpoolctl, "threadpool_limits", refused)
    for method in ("cam", "eigen", "recipro", "ablation"):
        explainer.explain(x, method)


def test_a_torch_model_from_four_threads_gives_the_serial_maps():
    """The torch backend's hook on the user's module sees every thread's pass: passes take turns."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 5)).eval()
    explainer = Explainer.from_torch(model, layer="3", input_size=(32, 32))
    inputs = [random_images(explainer.bundle.preprocessing, 2, seed=seed) for seed in range(THREADS)]
    for method in ("gradcam", "recipro"):
        assert_same_when_concurrent(lambda x: explainer.explain(x, method), inputs, lambda e: [e.maps])



@pytest.fixture
def blas_threads():
    """NumPy's BLAS threads now (two for the test), restored afterwards."""
    from threadpoolctl import ThreadpoolController, threadpool_limits

    controller = ThreadpoolController()
    before = controller.select(user_api="blas").info()
    threadpool_limits(limits=2, user_api="blas")
    yield lambda: {pool["num_threads"] for pool in controller.select(user_api="blas").info()}
    for pool in before:
        threadpool_limits(limits={pool["prefix"]: pool["num_threads"]})


class Served(Exception):
    """Raised where the server would open its model."""


@pytest.mark.parametrize("where", ["cli", "worker", "server"])
def test_the_cli_the_workers_and_the_server_leave_the_cores_to_the_runtime_once(blas_threads, where, tmp_path,
                                                                                 monkeypatch):
    import shutil

    import cam_infer.serve.loading
    from cam_infer.cli import main
    from cam_infer.parallel import ExplainerSpec
    from cam_infer.serve import serve

    def load_served(*args):
        raise Served
    assert blas_threads() == {2}
    if where == "cli":
        assert main(["info", str(DATA / "shapes")]) == 0
    elif where == "server":
        pytest.importorskip("uvicorn")
        monkeypatch.setattr(cam_infer.serve.loading, "load_served", load_served)
        with pytest.raises(Served):
            serve(DATA / "shapes")
    else:
        bundle = shutil.copytree(DATA / "shapes", tmp_path / "shapes")     # a spec no other test opened
        ExplainerSpec(str(bundle), backend="onnxruntime").open()
    assert blas_threads() == {1}
