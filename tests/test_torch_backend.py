"""The PyTorch backend of `Explainer.from_torch` on small models: the module given as the layer is the cut the
exported head graph continues from, and the user's model is explained as it is in eval mode and left as given."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import needs_torch

from cam_infer import CamInferError, Explainer
from cam_infer.bundle.split import random_images

pytestmark = needs_torch


def conv_bn_net():
    """conv → BatchNorm (running statistics away from 0 and 1) → ReLU → GAP → linear, in eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_a_module_the_exporter_folded_is_refused():
    """The legacy exporter folds the BatchNorm into the convolution: the graph's node named after the convolution
    outputs the normalised tensor, the module itself does not; its head would score another model."""
    with pytest.raises(CamInferError, match="module '0' does not give the tensor the exported graph is cut at"):
        Explainer.from_torch(conv_bn_net(), layer="0", input_size=(16, 16), exporter="legacy")
    explainer = Explainer.from_torch(conv_bn_net(), layer="2", input_size=(16, 16), exporter="legacy")
    x = random_images(explainer.bundle.preprocessing, 2, seed=3)
    e = explainer.explain(x, "recipro")
    np.testing.assert_array_equal(e.targets, explainer.backend.forward(x).argmax(axis=1))


def test_a_module_called_twice_is_differentiated_at_its_first_output():
    """`features` stops at the module's first output and the head graph continues from it (through the second
    call): the gradients are those of that tensor, not of the second call's output."""
    import torch
    from torch import nn

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.shared, self.fc = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1), nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.shared(torch.relu(self.shared(torch.relu(self.stem(x))))))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model = Shared().eval()
    explainer = Explainer.from_torch(model, layer="shared", input_size=(16, 16), exporter="legacy")
    x = random_images(explainer.bundle.preprocessing, 2, seed=3)
    targets = np.array([1, 2])
    stem = torch.relu(model.stem(torch.from_numpy(x)))
    first = model.shared(stem).detach().requires_grad_(True)
    scores = model.fc(torch.relu(model.shared(torch.relu(first))).mean((2, 3)))
    expected, = torch.autograd.grad(scores[torch.arange(2), torch.from_numpy(targets)].sum(), first)
    a = explainer.backend.features(x)
    np.testing.assert_allclose(a, first.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(explainer.backend.gradients(x, a, targets), expected.numpy(),
                               atol=1e-6 * float(expected.abs().max()))


def test_a_layer_the_model_then_changes_in_place():
    """A BatchNorm followed by ReLU6(inplace=True), as in MobileNetV2 (the dynamo exporter keeps the BatchNorm):
    the gradients are the model's, not autograd's refusal to change a leaf in place."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    explainer = Explainer.from_torch(model, layer="1", input_size=(16, 16), exporter="dynamo")
    x = random_images(explainer.bundle.preprocessing, 2, seed=3)
    targets = np.array([0, 3])
    a = torch.from_numpy(explainer.backend.features(x)).requires_grad_(True)
    scores = model[3:](torch.nn.functional.relu6(a))
    expected, = torch.autograd.grad(scores[torch.arange(2), torch.from_numpy(targets)].sum(), a)
    np.testing.assert_allclose(explainer.backend.gradients(x, a.detach().numpy(), targets), expected.numpy(),
                               atol=1e-6 * float(expected.abs().max()))


def test_each_module_keeps_its_own_training_mode(tmp_path):
    """A model in eval mode with one module in training mode is refused, naming it; export_torch gives every
    module its own mode back (a training model with frozen BatchNorms keeps them frozen)."""
    from torch import nn

    from cam_infer import export_torch

    model = conv_bn_net()
    model[1].train()
    with pytest.raises(CamInferError, match=r"training mode; call model.eval\(\) first .*in training mode: '1'\)"):
        Explainer.from_torch(model, layer="2", input_size=(16, 16))
    model = conv_bn_net().train()
    model[1].eval()
    export_torch(model, layer="2", input_size=(16, 16), out=tmp_path / "bundle", exporter="legacy")
    assert [m.training for m in model.modules()] == [not isinstance(m, nn.BatchNorm2d) for m in model.modules()]


def test_a_model_put_back_in_training_mode_is_refused_and_left_untouched():
    import torch

    model = conv_bn_net()
    explainer = Explainer.from_torch(model, layer="2", input_size=(16, 16))
    x = random_images(explainer.bundle.preprocessing, 2, seed=3)
    explainer.explain(x, "gradcam")
    model.train()
    statistics = model[1].running_mean.clone()
    for method in ("recipro", "gradcam"):
        with pytest.raises(CamInferError, match=r"training mode again \(the model, '0', '1' …\); call model.eval"):
            explainer.explain(x, method)
    assert torch.equal(model[1].running_mean, statistics)
    model.eval()
    explainer.explain(x, "gradcam")


def nested_net():
    """A block whose `conv` holds numbered sequences (MobileNetV2's InvertedResidual): the legacy exporter names
    their scopes `/1/conv/conv.1/conv.1.0/Conv`, each part from the module's last non-numeric name on."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
                                      nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))

        def forward(self, x):
            return self.conv(x)

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


def test_the_legacy_exporters_scopes_are_read_as_the_models_module_paths(tmp_path):
    import onnx
    import torch

    from cam_infer.bundle.graph import Graph

    model = nested_net()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False)
    paths = Graph.from_model(onnx.load(path), None, None).module_paths
    assert {"1.conv.1", "1.conv.1.0"} <= paths <= {name for name, _ in model.named_modules()}
    explainer = Explainer.from_torch(model, layer="1.conv.1", input_size=(16, 16), exporter="legacy")
    assert explainer.bundle.manifest["target_layer"]["module"] == "1.conv.1"


def test_from_torch_takes_auto_and_its_refusals_name_what_it_takes():
    """`auto` is the last module output the model can be cut at, as export_torch's; a refusal names modules and
    `layer='auto'` (from_torch takes no tensor name and no --layer), a module the legacy exporter folded as such."""
    model = conv_bn_net()
    explainer = Explainer.from_torch(model, layer="auto", input_size=(16, 16), exporter="legacy")
    assert explainer.backend.module is model[2]
    assert explainer.bundle.manifest["target_layer"]["requested"] == "auto"
    for layer, reason in (("1", r"module '1' has no node of its own in the graph the legacy exporter made: it was "
                                r"folded into another module .* exporter='dynamo' .*or use layer='auto'$"),
                          ("5", r"layer '5' is the model's output, not a feature map; use layer='auto'$")):
        with pytest.raises(CamInferError, match=reason) as refused:
            Explainer.from_torch(conv_bn_net(), layer=layer, input_size=(16, 16), exporter="legacy")
        assert "--layer" not in str(refused.value)


@pytest.mark.parametrize("precision", ["half", "double"])
def test_a_float16_or_float64_model_is_refused_in_one_line(precision):
    dtype = {"half": "float16", "double": "float64"}[precision]
    with pytest.raises(CamInferError, match=rf"^the model's weights are {dtype}; .*copy.deepcopy\(model\).float\(\)"):
        Explainer.from_torch(getattr(conv_bn_net(), precision)(), layer="2", input_size=(16, 16))
