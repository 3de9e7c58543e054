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


def test_gradient_methods_say_how_to_get_torch_when_it_is_missing(tmp_path):
    """Gradient-free methods run; a gradient method, from Python or the command line, names the extra."""
    code = BLOCK_TORCH + f"""
import numpy as np, cv2
from cam_infer import Explainer, CamInferError
from cam_infer.cli import main
from cam_infer.tools.demo import embedded_bundle_path
from cam_infer.tools.synthetic import generate
ex = Explainer(embedded_bundle_path())
x = ex.preprocess([s.image for s in generate("large", 2)])
assert ex.explain(x, "recipro").saliency.shape == (2, 128, 128)
for call in (lambda: ex.explain(x, "gradcam"), lambda: Explainer(embedded_bundle_path(), gradients="torch")):
    try:
        call()
    except CamInferError as exc:
        print("python:", exc)
cv2.imwrite(r"{tmp_path / 'a.png'}", generate("large", 1)[0].image[..., ::-1])
code = main(["explain", str(embedded_bundle_path()), r"{tmp_path / 'a.png'}", "--method", "layercam",
             "--out", r"{tmp_path / 'out'}"])
print("exit", code)
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("python: gradient methods need PyTorch, which is not installed here: "
                               "pip install 'cam-infer[torch]'") == 2
    assert "exit 1" in result.stdout
    assert result.stderr.strip().startswith("cam-infer: error: gradient methods need PyTorch") and \
        len(result.stderr.strip().splitlines()) == 1
