"""Shared fixtures. Real models and photos come from ../shared/data (CI has it; never copied here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "export"))

from tiny_onnx import tiny_cnn  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install 'cam-infer[torch]')")

SQUEEZENET_PREP = {"scale": 1.0, "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0), "color": "bgr"}
REAL_MODELS = {
    # file: (preprocessing, a named layer, the layer `auto` must find)
    "squeezenet1.1-fp32.onnx": (SQUEEZENET_PREP, "fire9/concat_1", "conv10_2"),
    "mobilenetv2-fp32-dequant.onnx": ({}, "features.17.conv.2", "features.18"),
}
# Images where every model in ../shared/data agrees on the top-1 class (SOURCES.md, validation summary).
STABLE_IMAGES = {"chelsea.png": 285, "coffee.png": 967, "fruits.jpg": 951, "hot_dog.jpg": 934, "kitten_224.png": 281,
                 "parrot.jpg": 88, "pelican.jpeg": 144, "samoyed_dog.jpg": 258, "squirrel_cls.jpg": 335}


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (full Score-CAM, every exporter variant, fresh venvs) and "
                          "integration (a real Ray cluster, real servers)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test; runs with --run-slow (as .ci/run does)")
    config.addinivalue_line("markers", "integration: starts a real Ray cluster or a real server; runs with --run-slow "
                                       "(as .ci/run does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    def later(item) -> bool:
        return item.get_closest_marker("slow") is not None or item.get_closest_marker("integration") is not None

    deselected = [item for item in items if later(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not later(item)]


@pytest.fixture
def tiny_onnx_path(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    from cam_infer import split_onnx
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return split_onnx(tiny_cnn(), layer="auto", out=out)


@pytest.fixture(scope="session")
def tiny_vits(tmp_path_factory):
    """The tiny test transformers (`tiny_transformers`) exported to ONNX once per session."""
    from tiny_transformers import export_tiny
    folder = tmp_path_factory.mktemp("tiny-vits")
    return {name: export_tiny(name, folder / f"{name}.onnx", dynamo=name == "swin") for name in ("vit", "deit", "swin")}


@pytest.fixture(scope="session")
def vit_bundles(tiny_vits, tmp_path_factory):
    from cam_infer.bundle.split import split_onnx
    folder = tmp_path_factory.mktemp("vit-bundles")
    return {name: split_onnx(path, "auto", folder / name) for name, path in tiny_vits.items()}
