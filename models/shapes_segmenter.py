"""ShapesSegmenter: the project's own small semantic segmenter for the synthetic shapes scenes
(`cam_infer.tools.synthetic`), an encoder–decoder with one skip connection ending in a DeepLab-style head.

128×128 RGB/255 → encoder: 3×3 conv+BN+ReLU blocks at strides 2, 4 (``skip``, 32×32), 8 and 8 (``encoder``,
16×16) → decoder: bilinear ×2 of the encoder's output concatenated with the skip, two 3×3 blocks (``decoder``,
48×32×32: the layer to explain) → ``classifier``: 1×1 conv to one logit per class → bilinear ×4 back to
128×128. Output (N, 5, 128, 128) logits, NCHW; channel 0 is the background (everything that is not an
object of a class, distractors included), channels 1..4 are ``CLASSES`` in order.

The head after the explained layer is a 1×1 conv followed by a bilinear upsampling: both linear, so a class's
region score is linear in the layer's activations (the linear-tail case). About 0.1 M parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CLASSES = ("background", "circle", "square", "triangle", "cross")


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesSegmenter(nn.Module):
    def __init__(self, classes: int = len(CLASSES)):
        super().__init__()
        self.skip = nn.Sequential(block(3, 16, 2), block(16, 32, 2))
        self.encoder = nn.Sequential(block(32, 48, 2), block(48, 64), block(64, 64))
        self.decoder = nn.Sequential(block(64 + 32, 48), block(48, 48))
        self.classifier = nn.Conv2d(48, classes, 1)

    def forward(self, x):
        skip = self.skip(x)
        deep = F.interpolate(self.encoder(skip), scale_factor=2.0, mode="bilinear", align_corners=False)
        logits = self.classifier(self.decoder(torch.cat([deep, skip], dim=1)))
        return F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False)


def shapes_segmenter(classes: int = len(CLASSES)) -> ShapesSegmenter:
    return ShapesSegmenter(classes).eval()
