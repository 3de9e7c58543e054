"""Cut sets of segmenters whose decoder reads several encoder levels: found from the graph (a tiny U-Net built here,
our own segmenter, the PAN), recorded in the manifest and shown by `cam-infer info`; maps against brute force (the
region score recomputed by the unsplit model's decoder on the perturbed cut set, in torch); both runtimes; a set
that does not separate the input from the scores is refused naming what the decoder reads around it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import SHARED, needs_shared
from helpers import assert_one_line_error, run_cli

from cam_infer import Bundle, Explainer
from cam_infer.bundle.segmentation import split_segmenter
from cam_infer.errors import CamInferError
from cam_infer.postprocess import normalise

torch = pytest.importorskip("torch")
SIZE = 16


class TinyUNet(torch.nn.Module):
    """enc1 (4,16,16) → enc2 (6,8,8); the decoder reads both: conv(cat(enc1, up(enc2))) → 3 classes."""

    def __init__(self):
        super().__init__()
        self.enc1 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
        self.enc2 = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, stride=2, padding=1), torch.nn.ReLU())
        self.dec = torch.nn.Sequential(torch.nn.Conv2d(10, 5, 3, padding=1), torch.nn.ReLU())
        self.cls = torch.nn.Conv2d(5, 3, 1)

    def forward(self, x):
        skip = self.enc1(x)
        return self.decode(skip, self.enc2(skip))

    def decode(self, skip, deep):
        up = torch.nn.functional.interpolate(deep, scale_factor=2, mode="nearest")
        return self.cls(self.dec(torch.cat([skip, up], dim=1)))


@pytest.fixture(scope="session")
def unet(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyUNet().eval()
    path = tmp_path_factory.mktemp("unet") / "unet.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False,
                      opset_version=17)
    bundle = split_segmenter(path, "enc2", out=path.parent / "bundle", preprocessing={"mean": (0, 0, 0), "scale": 1.0,
                                                                                       "std": (1, 1, 1)})
    return model, path, bundle


@pytest.fixture(scope="session")
def scene():
    rng = np.random.default_rng(3)
    return rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)


def test_a_layer_bypassed_by_a_skip_gets_the_cut_set_the_decoder_reads(unet, scene):
    model, path, bundle = unet
    cut = bundle.manifest["cut"]
    assert bundle.manifest["target_layer"]["matched_by"] == "cut set"
    assert [lv["shape"] for lv in cut] == [[4, 16, 16], [6, 8, 8]] and [lv["stride"] for lv in cut] == [1, 2]
    packed = Explainer(bundle).backend.features(scene)[0]
    with torch.no_grad():
        skip = model.enc1(torch.from_numpy(scene))
        deep = model.enc2(skip)
    np.testing.assert_allclose(packed[:4 * 256].reshape(4, 16, 16), skip[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(packed[4 * 256:].reshape(6, 8, 8), deep[0].numpy(), atol=1e-5)
    info = run_cli("info", bundle.path)
    assert info.returncode == 0 and "cut set" in info.stdout and cut[0]["name"] in info.stdout, info.stderr


def brute_force_recipro(model, scene, target: int, region: np.ndarray) -> np.ndarray:
    """Σ_l R_l(S_l): S_l(i,j) the region score of softmax(decode(...)) with member l kept at (i,j) only, the other
    member clean, members resampled to the finest grid (bilinear) and summed."""
    with torch.no_grad():
        skip = model.enc1(torch.from_numpy(scene))
        members = [skip, model.enc2(skip)]
        maps = []
        for m, member in enumerate(members):
            _, _, h, w = member.shape
            level = np.zeros((h, w))
            for i in range(h):
                for j in range(w):
                    kept = torch.zeros_like(member)
                    kept[..., i, j] = member[..., i, j]
                    inputs = [kept if n == m else members[n] for n in range(2)]
                    probs = torch.softmax(model.decode(*inputs), dim=1)[0, target].numpy()
                    level[i, j] = probs[region].mean()
            maps.append(cv2.resize(level.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR))
    return np.sum(maps, axis=0)


def test_recipro_and_activation_on_a_cut_set_equal_brute_force(unet, scene, monkeypatch):
    from cam_infer.segmentation import cut_set
    model, _, bundle = unet
    monkeypatch.setattr(cut_set, "CHUNK_VALUES", 5 * 1408)      # 5 packed rows per head call: a last partial chunk
    e = Explainer(bundle).explain(scene, "recipro")
    item = e.items[0][0]
    with torch.no_grad():
        clean = model(torch.from_numpy(scene))[0].numpy()
    region = clean.argmax(axis=0) == item.class_id
    np.testing.assert_array_equal(item.region, region)
    np.testing.assert_allclose(item.raw, brute_force_recipro(model, scene, item.class_id, region), atol=1e-5)
    with torch.no_grad():
        skip = model.enc1(torch.from_numpy(scene))
        levels = [skip[0].mean(0).numpy(), model.enc2(skip)[0].mean(0).numpy()]
    unit_free = [cv2.resize(normalise(m[None])[0][0], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for m in levels]
    activation = Explainer(bundle).explain(scene, "activation").items[0][0].raw
    np.testing.assert_allclose(activation, np.mean(unit_free, axis=0), atol=1e-5)


def test_the_receptive_window_holds_every_pixel_a_cell_moves_on_both_members(unet, scene):
    """Brute force: each cell of each member of the tiny U-Net set to random values over the zero member, the other
    member clean: every score pixel that moves lies in the window recipro scores."""
    from cam_infer.segmentation.cut_set import level_view, receptive_window
    _, _, bundle = unet
    backend = Explainer(bundle).backend
    packed = backend.features(scene)
    rng = np.random.default_rng(1)
    for m, level in enumerate(bundle.manifest["cut"]):
        k, h, w = level["shape"]
        rows = np.repeat(packed, h * w + 1, axis=0)
        view = level_view(bundle.manifest["cut"], rows, m)
        view[...] = 0
        probe = rows[:3].copy()
        window = receptive_window(backend, probe, level_view(bundle.manifest["cut"], probe, m), (SIZE, SIZE))
        ys, xs = np.divmod(np.arange(h * w), w)
        view[np.arange(1, h * w + 1), :, ys, xs] = rng.standard_normal((h * w, k)).astype(np.float32) * 10
        outputs = backend.head(rows)
        moved = np.any(outputs[1:] != outputs[:1], axis=1)                                 # (h·w, H, W)
        py, px = window.pixels(ys, xs)
        inside = np.zeros_like(moved)
        inside[np.arange(h * w)[:, None, None], py[:, :, None], px[:, None, :]] = True
        assert moved.any(axis=(1, 2)).all() and not (moved & ~inside).any(), m
        assert window.size[0] < SIZE                                                     # a window, not the scores


def test_a_layer_set_that_does_not_separate_input_from_scores_is_refused_naming_what_is_missing(unet, tmp_path):
    _, path, bundle = unet
    skip = bundle.manifest["cut"][0]["name"]
    with pytest.raises(CamInferError, match=f"the decoder also reads '{skip}'") as refused:
        split_segmenter(path, "enc2.0,enc2", out=tmp_path / "b")
    assert "\n" not in str(refused.value)
    assert_one_line_error(run_cli("split", path, "--layer", "enc2.0,enc2", "--out", tmp_path / "d"),
                          "do not separate the input from the scores")
    chosen = split_segmenter(path, f"{skip},enc2", out=tmp_path / "c")
    assert [lv["name"] for lv in chosen.manifest["cut"]] == [lv["name"] for lv in bundle.manifest["cut"]]
    with pytest.raises(CamInferError, match="needs gradients"):
        Explainer(bundle).explain(np.zeros((1, 3, SIZE, SIZE), np.float32), "gradcam")
    from cam_infer.segmentation.fuse import fuse_segmenter
    with pytest.raises(CamInferError, match="fuse takes a segmenter split at one layer"):
        fuse_segmenter(bundle, "eigen")


@pytest.fixture(scope="session")
def unet_int8(unet):
    """The tiny U-Net quantized to int8 QDQ (uint8 activations, int8 weights) by ONNX Runtime's quantizer."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Calibration(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)
    _, path, _ = unet
    quantized = path.parent / "unet_int8.onnx"
    quantize_static(str(path), str(quantized), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return quantized


def test_a_quantized_segmenter_cut_set_reads_its_members_dequantized_and_reproduces_the_int8_model(unet_int8,
                                                                                                 tmp_path):
    import onnx
    import onnxruntime as ort
    bundle = split_segmenter(unet_int8, "enc2", out=tmp_path / "int8", preprocessing={"mean": (0, 0, 0), "scale": 1.0,
                                                                                       "std": (1, 1, 1)})
    names = [lv["name"] for lv in bundle.manifest["cut"]]
    assert all(n.endswith("_QuantizeLinear_Output") for n in names) and len(names) == 2    # the uint8 tensors
    model = onnx.load(unet_int8)
    consumed = [next(n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == t)
                for t in names]                                           # what the decoder reads: their real values
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in consumed)
    full = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    scores, *members = full.run(None, {"input": x})
    backend = Explainer(bundle, backend="onnxruntime").backend
    packed, outputs = backend.observe(x)
    np.testing.assert_array_equal(outputs, scores)                                   # the unsplit int8 model's
    np.testing.assert_array_equal(backend.head(backend.features(x)), scores)
    np.testing.assert_array_equal(packed, np.concatenate([m.reshape(3, -1) for m in members], axis=1))
    e = Explainer(bundle, backend="onnxruntime").explain(x[:1], "recipro", target="all")
    assert len(e.items[0]) >= 2 and all(not s.degenerate for s in e.items[0])


@pytest.fixture(scope="session")
def unet_ir(unet):
    """The tiny U-Net as an OpenVINO IR (float32 weights), as a deployment would ship it."""
    import openvino as ov
    _, path, _ = unet
    ir = ov.convert_model(str(path))
    ir.reshape([1, 3, SIZE, SIZE])
    xml = path.parent / "unet.xml"
    ov.save_model(ir, str(xml), compress_to_fp16=False)
    return xml


def test_an_ir_segmenter_bypassed_layer_gets_the_cut_set_and_explains_as_the_onnx_bundle(unet, unet_ir, scene,
                                                                                        tmp_path):
    from cam_infer.bundle.openvino_segmentation import split_openvino_segmenter
    _, _, onnx_bundle = unet
    plain = {"mean": (0, 0, 0), "std": (1, 1, 1), "scale": 1.0}
    bundle = split_openvino_segmenter(unet_ir, "/enc2/enc2.1/Relu", out=tmp_path / "ir", preprocessing=plain)
    cut = bundle.manifest["cut"]
    assert [lv["name"] for lv in cut] == ["/enc1/enc1.1/Relu", "/enc2/enc2.1/Relu"]
    assert [(lv["shape"], lv["offset"]) for lv in cut] == [(lv["shape"], lv["offset"])
                                                           for lv in onnx_bundle.manifest["cut"]]
    assert bundle.graph_format == "openvino" and bundle.manifest["verification"]["max_abs_diff"] < 1e-5
    named = split_openvino_segmenter(unet_ir, "/enc2/enc2.1/Relu_output_0,/enc1/enc1.1/Relu", out=tmp_path / "ir2",
                                     preprocessing=plain)
    assert [lv["name"] for lv in named.manifest["cut"]] == [lv["name"] for lv in cut]
    for method in ("activation", "eigen", "entropy", "recipro", "ablation"):
        ir, ref = (Explainer(b, backend="openvino", precision="f32").explain(scene, method, target="all").items[0]
                   for b in (bundle, onnx_bundle))
        assert [s.class_id for s in ir] == [s.class_id for s in ref] and len(ir) >= 2
        for a, b in zip(ir, ref):
            np.testing.assert_allclose(a.raw, b.raw, atol=1e-6, err_msg=method)
    with pytest.raises(CamInferError, match="do not separate the input from the scores: the decoder also reads "
                                            "'/enc1/enc1.1/Relu'") as refused:
        split_openvino_segmenter(unet_ir, "/enc2/enc2.0/Conv,/enc2/enc2.1/Relu", out=tmp_path / "ir3")
    assert "\n" not in str(refused.value)
    result = run_cli("split", unet_ir, "--layer", "/enc2/enc2.1/Relu", "--out", tmp_path / "cli")
    assert result.returncode == 0 and Bundle.load(tmp_path / "cli").manifest["cut"] == cut, result.stderr


@needs_shared
@pytest.mark.slow
def test_deeplab_tflite_split_at_one_aspp_branch_gets_the_encoder_output_beside_it(tmp_path):
    """The DeepLab TFLite has no skip decoder; its ASPP does read the encoder output around each branch: naming one
    branch gives the cut set {encoder output, branch} on the int8 file, members NHWC in the file and quantized."""
    from cam_infer.bundle.openvino_segmentation import split_openvino_segmenter
    from cam_infer.bundle.openvino_split import read_openvino_model
    tflite = SHARED / "segmentation" / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
    model = read_openvino_model(tflite)             # OpenVINO names a TFLite file's ops anew at each reading
    aspp = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Concat"
                and [d.get_length() for d in op.get_output_partial_shape(0)] == [1, 512, 33, 33])
    branch = aspp.input_value(1).get_node().get_friendly_name()
    bundle = split_openvino_segmenter(tflite, branch, out=tmp_path / "set", model=model)
    cut = bundle.manifest["cut"]
    assert [lv["shape"] for lv in cut] == [[160, 33, 33], [256, 33, 33]] and cut[1]["name"] == branch
    assert bundle.manifest["verification"]["max_abs_diff"] < bundle.manifest["verification"]["output_step"]
    single = split_openvino_segmenter(tflite, cut[0]["name"], out=tmp_path / "one", model=model)
    assert "cut" not in single.manifest                                # the encoder output alone is a cut point
    x = Explainer(single, precision="f32")._inputs([SHARED / "images" / "samoyed_dog.jpg"])[0]
    packed = Explainer(bundle, precision="f32").backend.features(x)[0]
    alone = Explainer(single, precision="f32").backend.features(x)[0]
    np.testing.assert_allclose(packed[:160 * 33 * 33], alone.ravel(), atol=1e-5)
    dog = Explainer(bundle, precision="f32").explain(x, "activation", target=12).items[0][0]    # VOC class 12
    assert dog.pixels > 0.1 * dog.region.size and dog.saliency.shape == (513, 513)
    import openvino as ov                       # the int8 file split at one layer fuses into one IR model

    from cam_infer.fuse import save
    from cam_infer.segmentation.fuse import fuse_segmenter
    path = save(fuse_segmenter(single, "eigen"), tmp_path / "deeplab_eigen.xml")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = {n: v for o, v in compiled(x).items() for n in o.get_names()}
    ex = Explainer(single, precision="f32")
    step = single.manifest["verification"]["output_step"]     # joined again, OpenVINO fuses the int8 ops its own way:
    np.testing.assert_allclose(got["scores"], ex.backend.forward(x), rtol=0, atol=step * 1.01)   # one step, as the split
    np.testing.assert_allclose(got["saliency"][0], ex.explain(x, "eigen", target=12).items[0][0].saliency, atol=1e-3)


@pytest.mark.slow
def test_own_segmenter_cut_set_recipro_fast_rows_equal_the_whole_head_rows(tmp_path):
    """Recipro on a cut set (rows written in place, probabilities on each cell's receptive window) against the
    generic path (masked copies of the member through the whole head, the softmax over the whole scores)."""
    from test_segmentation_task import OWN, OWN_LABELS, PLAIN
    bundle = split_segmenter(OWN, "encoder", out=tmp_path / "own", labels=OWN_LABELS, preprocessing=PLAIN)
    from cam_infer.tools.synthetic import write_scenes
    write_scenes(tmp_path / "scenes", "cluttered", 1)
    image = sorted((tmp_path / "scenes").glob("*.png"))[0]
    explainer = Explainer(bundle, backend="onnxruntime")
    fast, whole = (explainer.explain([image], "recipro", target="all", shortcut=s).items[0] for s in (True, False))
    assert len(fast) == len(whole) >= 1
    for a, b in zip(fast, whole):
        np.testing.assert_allclose(a.raw, b.raw, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_own_segmenter_split_at_its_encoder_explains_through_the_skip_on_both_runtimes(tmp_path):
    from test_segmentation_task import OWN, OWN_LABELS, PLAIN
    bundle = split_segmenter(OWN, "encoder", out=tmp_path / "own", labels=OWN_LABELS, preprocessing=PLAIN)
    names = [lv["name"] for lv in bundle.manifest["cut"]]
    assert len(names) == 2 and any("skip" in n for n in names) and any("encoder" in n for n in names)
    from cam_infer.tools.synthetic import write_scenes
    write_scenes(tmp_path / "scenes", "cluttered", 1)
    image = sorted((tmp_path / "scenes").glob("*.png"))[0]
    maps = {}
    for backend in ("onnxruntime", "openvino"):
        e = Explainer(bundle, backend=backend, precision="f32").explain([image], "recipro")
        maps[backend] = [s.raw for s in e.items[0]]
        for s in e.items[0]:
            energy = float((s.saliency * s.region).sum() / s.saliency.sum())
            assert energy > s.region.mean(), (s.label, energy, s.region.mean())    # above a uniform map's
    for a, b in zip(*maps.values()):
        np.testing.assert_allclose(a, b, atol=2e-3 * np.abs(a).max())
    import openvino as ov

    from cam_infer.bundle.openvino_segmentation import split_openvino_segmenter
    ir = ov.convert_model(str(OWN))
    ir.reshape([1, 3, 128, 128])
    ov.save_model(ir, str(tmp_path / "own.xml"), compress_to_fp16=False)
    ir_bundle = split_openvino_segmenter(tmp_path / "own.xml", "/encoder/encoder.2/encoder.2.2/Relu",
                                         out=tmp_path / "own-ir", labels=OWN_LABELS, preprocessing=PLAIN)
    assert [lv["shape"] for lv in ir_bundle.manifest["cut"]] == [lv["shape"] for lv in bundle.manifest["cut"]]
    from_ir = Explainer(ir_bundle, precision="f32").explain([image], "recipro").items[0]
    for a, b in zip(from_ir, maps["openvino"]):
        np.testing.assert_allclose(a.raw, b, atol=1e-5 * np.abs(b).max())            # the IR as its ONNX file


@needs_shared
@pytest.mark.slow
def test_the_pan_split_at_its_deepest_encoder_stage_gets_its_skip_levels_on_both_runtimes(tmp_path):
    pan = SHARED / "segmentation" / "pan_mnv3s_skin_clothes_hair.onnx"
    bundle = split_segmenter(pan, "1062", out=tmp_path / "pan")
    cut = bundle.manifest["cut"]
    assert [lv["stride"] for lv in cut] == [4, 8, 16, 16] and cut[-1]["name"] == "1062"
    assert Bundle.load(tmp_path / "pan").manifest["target_layer"]["tensor"] == ",".join(lv["name"] for lv in cut)
    image = SHARED / "segmentation" / "dog_segmentation_256.bmp"
    results = {b: Explainer(bundle, backend=b, precision="f32").explain([image], "eigen", target="all")
               for b in ("onnxruntime", "openvino")}
    ort, ov = (r.items[0] for r in results.values())
    assert [s.class_id for s in ort] == [s.class_id for s in ov] and len(ort) >= 2
    for a, b in zip(ort, ov):
        assert a.raw.shape == (128, 128)
        np.testing.assert_allclose(a.raw, b.raw, atol=1e-2)


def test_an_integer_member_of_unknown_scale_is_refused_in_one_line(unet, tmp_path):
    """A member that is an integer tensor no DequantizeLinear reads and no quantized op describes (here a Cast
    to uint8 and back on the decoder's skip) has no real values to explain: refused, naming it."""
    import onnx
    from onnx import TensorProto, helper
    _, path, bundle = unet
    model = onnx.load(path)
    skip = bundle.manifest["cut"][0]["name"]                              # enc1's output, read by both paths
    for node in model.graph.node:                                         # the decoder's path only
        if node.op_type == "Concat":
            node.input[:] = [f"{skip}_real" if i == skip else i for i in node.input]
    at = next(i for i, n in enumerate(model.graph.node) if skip in n.output) + 1
    model.graph.node.insert(at, helper.make_node("Cast", [skip], [f"{skip}_uint8"], to=TensorProto.UINT8))
    model.graph.node.insert(at + 1, helper.make_node("Cast", [f"{skip}_uint8"], [f"{skip}_real"],
                                                     to=TensorProto.FLOAT))
    onnx.checker.check_model(model)
    cast = tmp_path / "cast.onnx"
    onnx.save(model, cast)
    deep = bundle.manifest["cut"][1]["name"]
    with pytest.raises(CamInferError, match=f"integer tensor '{skip}_uint8' of unknown scale") as refused:
        split_segmenter(cast, f"{skip}_uint8,{deep}", out=tmp_path / "b")
    assert "\n" not in str(refused.value)
    assert_one_line_error(run_cli("split", cast, "--layer", f"{skip}_uint8,{deep}", "--out", tmp_path / "c"),
                          "of unknown scale")


def test_the_cost_line_counts_recipro_head_rows_on_a_cut_set_and_none_on_a_linear_tail(unet, tmp_path):
    """A cut set runs one head row per cell of each member (16·16 + 8·8); a single cut before a linear tail none,
    unless the shortcut is turned off (one row per cell)."""
    from cam_infer.segmentation.runs import cost_line
    from cam_infer.tools.demo import embedded_segmenter_path
    _, _, bundle = unet
    cells = sum(lv["shape"][1] * lv["shape"][2] for lv in bundle.manifest["cut"])
    assert cells == 16 * 16 + 8 * 8
    assert cost_line(["recipro"], Explainer(bundle)) == f"cost per target: recipro {cells} head rows"
    own = Explainer(embedded_segmenter_path())
    assert own.task.tail is not None
    _, h, w = own.bundle.activation_shape
    assert cost_line(["recipro"], own) == "cost per target: recipro no head pass (the linear-tail shortcut)"
    assert cost_line(["recipro"], own, {"recipro": {"shortcut": False}}) == \
        f"cost per target: recipro {h * w} head rows"
