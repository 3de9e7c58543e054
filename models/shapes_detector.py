"""ShapesDetector: the project's own small anchor-free detector for the synthetic detection scenes
(`cam_infer.tools.synthetic.detection_scene`), laid out as an Ultralytics YOLOv8 export so that everything that
reads one reads it: modules ``model.0`` … ``model.7`` with the detection head last, output (N, 4+C, A)
with boxes (cx, cy, w, h) in input pixels and sigmoid class scores, anchors level-major (stride 8, then 16).

128×128 RGB/255 → Conv blocks (3×3 conv + BN + SiLU) at strides 2, 4, 4, 8 (P3, ``model.4``), 16, 16
(P4, ``model.6``) → Detect (``model.7``): per level a box branch and a class branch, each 3×3 → 3×3 → 1×1
as Ultralytics' ``cv2``/``cv3``; box = the cell centre minus/plus softplus distances × stride.
About 0.43 M parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Detect(nn.Module):
    def __init__(self, channels: tuple[int, ...], classes: int, strides: tuple[int, ...] = (8, 16)):
        super().__init__()
        self.strides, self.classes = strides, classes
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, 48), Conv(48, 48), nn.Conv2d(48, 4, 1)) for c in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, 48), Conv(48, 48), nn.Conv2d(48, classes, 1)) for c in channels)

    def raw(self, feats):
        """Per level: ltrb distances (N,4,h,w) in cells, class logits (N,C,h,w)."""
        return [(F.softplus(b(f)), c(f)) for f, b, c in zip(feats, self.cv2, self.cv3)]

    def forward(self, feats):
        boxes, scores = [], []
        for (ltrb, logits), s in zip(self.raw(feats), self.strides):
            n, _, h, w = ltrb.shape
            ys, xs = torch.meshgrid(torch.arange(h, dtype=ltrb.dtype), torch.arange(w, dtype=ltrb.dtype), indexing="ij")
            cx, cy = (xs + 0.5) * s, (ys + 0.5) * s
            x1, y1 = cx - ltrb[:, 0] * s, cy - ltrb[:, 1] * s
            x2, y2 = cx + ltrb[:, 2] * s, cy + ltrb[:, 3] * s
            box = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=1)
            boxes.append(box.reshape(n, 4, h * w))
            scores.append(torch.sigmoid(logits).reshape(n, self.classes, h * w))
        return torch.cat([torch.cat(boxes, dim=2), torch.cat(scores, dim=2)], dim=1)


class ShapesDetector(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.model = nn.ModuleList([Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), Conv(32, 32), Conv(32, 64, 3, 2),
                                    Conv(64, 64), Conv(64, 96, 3, 2), Conv(96, 96), Detect((64, 96), classes)])

    def features(self, x):
        for i in range(5):
            x = self.model[i](x)
        p3 = x
        p4 = self.model[6](self.model[5](p3))
        return [p3, p4]

    def forward(self, x):
        return self.model[7](self.features(x))


def shapes_detector(classes: int = 5) -> ShapesDetector:
    return ShapesDetector(classes).eval()
