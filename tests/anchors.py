"""The anchors' own code, run beside ours on the same inputs: pytorch-grad-cam 1.5.7 in a subprocess.

pytorch-grad-cam is installed once, with `pip --target`, into a folder that survives test sessions; its
module-level `torchvision` and `sklearn` imports are met by stand-ins whose functions raise (the registry's
torchvision does not load beside the CPU torch here; scikit-learn serves only KPCA-CAM and feature
factorization; the code the tests call uses neither). Its scipy, tqdm and
ttach come with it; the venv's numpy, torch and OpenCV are used. Where the package registry cannot be
reached the test skips, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

PACKAGES = ["grad-cam==1.5.7", "ttach==0.0.3", "scipy==1.16.3", "tqdm==4.67.1"]
FOLDER = ROOT / ".pytest_cache" / "anchors" / "pytorch-grad-cam-1.5.7"

ABSENT = "def _absent(*args, **kwargs):\n    raise NotImplementedError('a stand-in: not installed here')\n\n\n"
STAND_INS = {
    "torchvision/__init__.py": '"""A stand-in: the names pytorch-grad-cam imports; using them raises."""\n',
    "torchvision/transforms/__init__.py": ABSENT + "Compose = Normalize = ToTensor = Resize = _absent\n",
    "torchvision/transforms/functional.py": "from . import _absent as resize  # noqa: F401\n",
    "sklearn/__init__.py": '"""A stand-in: the names pytorch-grad-cam imports; using them raises."""\n',
    "sklearn/decomposition.py": ABSENT + "KernelPCA = NMF = _absent\n",
}


def pytorch_grad_cam_path() -> str:
    """PYTHONPATH entries under which `import pytorch_grad_cam` works (installing it the first time)."""
    packages, stand_in = FOLDER / "packages", FOLDER / "stand-in"
    if not (packages / "pytorch_grad_cam").is_dir():
        shutil.rmtree(FOLDER, ignore_errors=True)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                 str(packages), *PACKAGES], capture_output=True, text=True, timeout=600)
        if result.returncode:
            pytest.skip(f"pytorch-grad-cam 1.5.7 could not be installed from the package registry: "
                        f"{result.stderr.strip().splitlines()[-1:]}")
    for name, text in STAND_INS.items():
        (stand_in / name).parent.mkdir(parents=True, exist_ok=True)
        (stand_in / name).write_text(text)
    return os.pathsep.join([str(stand_in), str(packages), str(ROOT)])


def run_pytorch_grad_cam(code: str, inputs: dict[str, np.ndarray], folder: Path, timeout: int = 600) -> dict:
    """Run `code` in a subprocess with pytorch-grad-cam importable. The arrays in `inputs` are saved to
    `folder/inputs.npz` and loaded as the dict `inputs`; the code puts its arrays in the dict `outputs`,
    which comes back (saved as `folder/outputs.npz`). `ROOT` names this checkout (for `models/`)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "inputs.npz", **inputs)
    script = (f"import numpy as np\nROOT = {str(ROOT)!r}\n"
              f"inputs = dict(np.load({str(folder / 'inputs.npz')!r}))\noutputs = {{}}\n"
              f"{code}\n"
              f"np.savez({str(folder / 'outputs.npz')!r}, **outputs)\n")
    env = dict(os.environ, PYTHONPATH=pytorch_grad_cam_path())
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(folder / "outputs.npz"))

