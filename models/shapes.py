"""ShapesNet: the project's own small CNN for the synthetic shapes scenes (`cam_infer.tools.synthetic`).

128×128 RGB → six 3×3 conv+BN+ReLU blocks (strides 2, 2, 1, 2, 1, 1; the last three at 16×16,
receptive field 55 pixels) → global average pooling → linear. No dilation: a dilated last layer
(tried first) answers in a grid pattern, two cells either side of a small object, and put every
method's maximum beside the object instead of on it (pointing game 0.26 on small objects). The CAM layer is ``features`` (its output: 64×16×16, one cell per 8 pixels),
and the head is GAP→linear, so CAM and the closed forms of Recipro-CAM and Ablation-CAM apply.
About 0.1 M parameters.
"""

from __future__ import annotations

from torch import nn

CHANNELS = (16, 32, 32, 64, 64, 64)
STRIDES = (2, 2, 1, 2, 1, 1)


class ShapesNet(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        layers, cin = [], 3
        for cout, stride in zip(CHANNELS, STRIDES):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def shapes_net(num_classes: int = 4) -> ShapesNet:
    return ShapesNet(num_classes).eval()
