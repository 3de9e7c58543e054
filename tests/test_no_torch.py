"""The runtime path never imports torch, and works where torch is not installed at all."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

BLOCK_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_importing_cam_infer_does_not_import_torch():
    result = _python("import sys, cam_infer, cam_infer.cli, cam_infer.backends; print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_split_and_run_work_without_torch(tmp_path):
    code = BLOCK_TORCH + f"""
import numpy as np, onnx
sys.path.insert(0, "export")
from tiny_onnx import tiny_cnn
from cam_infer import split_onnx, load_backend, export_torch, CamInferError
b = split_onnx(tiny_cnn(), out=r"{tmp_path / 'b'}")
y = load_backend(b, "openvino").forward(np.zeros((2, 3, 64, 64), np.float32))
assert y.shape == (2, 4)
try:
    export_torch(object(), layer="layer4", out=r"{tmp_path / 'c'}")
except CamInferError as exc:
    print("export:", exc)
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "export: exporting a PyTorch model needs torch" in result.stdout
