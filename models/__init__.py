"""Reference architectures whose state_dict keys match torchvision's layouts.

Our own definitions (torchvision itself does not load on this CPU build of torch), so a user's
torchvision checkpoint loads with ``model.load_state_dict(torch.load(path, weights_only=True))``.
Each builder takes ``num_classes`` and returns the model in eval mode with random weights.

| name | usual CAM layer |
|---|---|
| resnet18, resnet50 | ``layer4`` |
| vgg16 | ``features.29`` (ReLU after conv5_3) |
| mobilenet_v2 | ``features`` (= ``features.18``) |
| densenet121 | ``features`` |
| squeezenet1_1 | ``features`` (fire9) |
| shapes_net | ``features`` (the project's own model for the synthetic scenes) |
| shapes_detector | a detector, not in BUILDERS: a cut set ``model.4``, ``model.6`` (`cam_infer.detection`) |
| shapes_segmenter | a segmenter, not in BUILDERS: ``decoder`` (before the 1×1 classifier and the bilinear ×4) |
"""

from .densenet import densenet121
from .mobilenetv2 import mobilenet_v2
from .resnet import resnet18, resnet50
from .shapes import shapes_net
from .shapes_detector import shapes_detector
from .shapes_segmenter import shapes_segmenter
from .squeezenet import squeezenet1_1
from .vgg import vgg16

BUILDERS = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "mobilenet_v2": mobilenet_v2,
    "densenet121": densenet121,
    "squeezenet1_1": squeezenet1_1,
    "shapes_net": shapes_net,
}

CAM_LAYERS = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "vgg16": "features.29",
    "mobilenet_v2": "features",
    "densenet121": "features",
    "squeezenet1_1": "features",
    "shapes_net": "features",
}

__all__ = ["BUILDERS", "densenet121", "mobilenet_v2", "resnet18", "resnet50", "shapes_detector", "shapes_net",
           "shapes_segmenter",
           "squeezenet1_1", "vgg16"]
