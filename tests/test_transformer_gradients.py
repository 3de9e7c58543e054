"""Gradient methods on transformer bundles: the head graph differentiated in torch at the token cut, the patch
tokens' gradients viewed as the grid — against pytorch-grad-cam 1.5.7's own GradCAM with its reshape transforms
on the torch model, same weights, same input, same tensor (the last block's input: the output of the block
before it), both maps at the grid's resolution."""

from __future__ import annotations

import numpy as np
import pytest

from anchors import run_pytorch_grad_cam
from cam_infer import Explainer
from cam_infer.bundle.split import split_onnx
from conftest import ROOT, needs_torch

pytestmark = [needs_torch, pytest.mark.slow]

FOLDER = ROOT / "tests" / "data" / "transformers"

PYTORCH_GRAD_CAM = '''
import sys, torch
sys.path.insert(0, ROOT)
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from models import vit

name, prefix, (h, w) = str(inputs["name"]), int(inputs["prefix"]), inputs["grid"].tolist()
model = getattr(vit, name)(4, size=(128, 128))
model.load_state_dict(torch.load(ROOT + f"/tests/data/transformers/{name}.pt", weights_only=True))
model.eval()
if name == "swin":
    layer = model.stage2[0]                      # its output, (B,h,w,D), is the last block's input
    def reshape(t):                              # pytorch-grad-cam's swinT_reshape_transform
        return t.permute(0, 3, 1, 2)
else:
    layer = model.blocks[-2]
    def reshape(t):                              # pytorch-grad-cam's vit_reshape_transform, `prefix` tokens dropped
        return t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2)).transpose(2, 3).transpose(1, 2)

class AtTheGrid(GradCAM):                        # its maps at the grid's size (no resize), as ours before upsampling
    def get_target_width_height(self, input_tensor):
        return w, h

with AtTheGrid(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
    outputs["maps"] = cam(torch.from_numpy(inputs["x"]),
                          targets=[ClassifierOutputTarget(int(c)) for c in inputs["targets"]])
'''


def scenes(n_per_split: int = 2):
    from cam_infer.tools.synthetic import SPLITS, generate
    drawn = [s for split in SPLITS for s in generate(split, n_per_split, 1)]
    x = (np.stack([s.image for s in drawn]).astype(np.float32) / 255.0 - np.float32(0.5)) / np.float32(0.25)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.array([s.label for s in drawn])


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_gradcam_equals_pytorch_grad_cam_with_its_reshape_transform(name, tmp_path):
    bundle = split_onnx(FOLDER / f"{name}_legacy.onnx", "auto", tmp_path / "bundle")
    x, labels = scenes()
    ours = Explainer(bundle, gradients="torch").explain(x, "gradcam", target=labels.tolist()).maps
    theirs = run_pytorch_grad_cam(PYTORCH_GRAD_CAM, {
        "x": x, "targets": labels, "name": np.array(name), "prefix": np.array(bundle.tokens.prefix),
        "grid": np.array(bundle.tokens.grid)}, tmp_path / "pytorch-grad-cam")["maps"]
    assert theirs.shape == ours.shape == (len(x), *bundle.tokens.grid)
    informative = 0
    for n in range(len(x)):
        mine = np.maximum(ours[n], 0)                            # pytorch-grad-cam: ReLU, then min-max
        mine = (mine - mine.min()) / (mine.max() - mine.min() + 1e-7)
        # ours reads the cut from ONNX Runtime, theirs from torch: float32 rounding, amplified up to 1e3-fold
        # where min-max scaling divides by a small maximum
        np.testing.assert_allclose(mine, theirs[n], atol=3e-3, err_msg=str(n))
        if theirs[n].std() > 0:                                  # a map ReLU zeroes is 0 on both sides
            informative += 1
            assert np.corrcoef(mine.ravel(), theirs[n].ravel())[0, 1] >= 0.99, n
    assert informative >= len(x) // 2
