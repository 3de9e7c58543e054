"""The reference architectures of models/, exported with both torch exporters, split at their usual
CAM layer: the features graph must return exactly the torch module's output (a forward hook is the
independent reference) and head(features(x)) the torch model's scores, on both runtimes."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import needs_torch

pytestmark = [needs_torch, pytest.mark.slow]       # every architecture through torch export: --run-slow

# (builder kwargs, input size): small inputs keep the suite fast; VGG's 7x7 adaptive pool needs a
# multiple of 7 at its input for the legacy exporter, hence 224 with a narrow classifier.
CASES = {
    "resnet18": ({}, 64),
    "resnet50": ({}, 64),
    "vgg16": ({"hidden": 32}, 224),
    "mobilenet_v2": ({}, 64),
    "densenet121": ({}, 64),
    "squeezenet1_1": ({}, 64),
    "shapes_net": ({}, 128),
}


def _module_output(model, layer: str, x):
    import torch
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        with torch.no_grad():
            scores = model(torch.from_numpy(x))
    finally:
        handle.remove()
    return captured["a"].numpy(), scores.numpy()


@pytest.mark.parametrize("exporter", [pytest.param("dynamo", marks=pytest.mark.slow), "legacy"])
@pytest.mark.parametrize("name", list(CASES))
def test_reference_architecture_round_trip(tmp_path, name, exporter):
    import torch

    import models
    from cam_infer import export_torch, load_backend

    torch.manual_seed(0)
    kwargs, size = CASES[name]
    model = models.BUILDERS[name](num_classes=7, **kwargs)
    layer = models.CAM_LAYERS[name]
    bundle = export_torch(model, layer=layer, input_size=(size, size), out=tmp_path / "b", exporter=exporter)
    assert bundle.manifest["target_layer"]["matched_by"] == "module"
    assert bundle.manifest["provenance"]["exporter"].endswith(f"({exporter})")
    assert bundle.dynamic_batch

    x = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    activation, scores = _module_output(model, layer, x)
    assert bundle.activation_shape == activation.shape[1:]
    for backend_name in ("onnxruntime", "openvino"):
        backend = load_backend(bundle, backend=backend_name)
        a = backend.features(x)
        scale = max(1.0, float(np.abs(activation).max()))
        np.testing.assert_allclose(a, activation, atol=2e-4 * scale, rtol=0)
        np.testing.assert_allclose(backend.head(a), scores, atol=2e-4 * max(1.0, float(np.abs(scores).max())), rtol=0)


def test_layer_inside_a_residual_block_is_refused_with_the_nearest_module(tmp_path):
    import models
    from cam_infer import CamInferError, export_torch

    with pytest.raises(CamInferError, match=r"'layer4\.0\.conv1' is not a cut point: the head also reads .*"
                                            r"nearest valid layer: 'layer(3|4\.0)'"):
        export_torch(models.resnet18(num_classes=3), layer="layer4.0.conv1", input_size=(64, 64),
                     out=tmp_path / "b", exporter="legacy")


def test_export_leaves_the_users_model_as_it_was(tmp_path):
    import torch

    import models
    from cam_infer import export_torch

    model = models.resnet18(num_classes=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_torch(model, layer="layer4", input_size=(64, 64), out=tmp_path / "b", exporter="legacy")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_module_is_refused_before_exporting(tmp_path):
    import models
    from cam_infer import CamInferError, export_torch

    with pytest.raises(CamInferError, match=r"no module 'layer5'; did you mean 'layer\d'"):
        export_torch(models.resnet18(), layer="layer5", input_size=(64, 64), out=tmp_path / "b")
