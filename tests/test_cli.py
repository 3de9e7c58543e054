"""The command line: split, info, export; every user error is one line and a non-zero exit."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from tiny_onnx import mlp, tiny_cnn

from conftest import ROOT, needs_torch
from helpers import assert_one_line_error, run_cli


def test_split_then_info(tmp_path, tiny_onnx_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    result = run_cli("split", tiny_onnx_path, "--layer", "conv3", "--out", tmp_path / "b", "--labels", labels,
                     "--input-size", "64", "64", "--mean", "0", "0", "0", "--std", "1", "1", "1", "--color", "bgr")
    assert result.returncode == 0, result.stderr
    info = run_cli("info", tmp_path / "b", "--backend", "openvino")
    assert info.returncode == 0, info.stderr
    for fragment in ("target layer 'conv3' (ONNX tensor)", "activation   (N,16,16,16)", "4 classes, logits",
                     "labels       4 (a, b, c, ...)", "BGR", "verified     yes", "dynamic",
                     "runs on    openvino CPU (latency, f32): yes"):
        assert fragment in info.stdout


def test_an_input_size_beyond_the_model_or_the_memory_is_one_line(tmp_path, tiny_onnx_path):
    """--input-size on a model fixed at 64x64, and one no machine holds on a model of dynamic size, were a
    MemoryError's internal error (the fixed model allocated a 28 GiB verification image before any check)."""
    assert_one_line_error(run_cli("split", tiny_onnx_path, "--input-size", "100000", "100000", "--out", tmp_path / "a"),
                          "the model input 'image' is fixed at 64x64; --input-size 100000 100000 does not fit it")
    onnx.save(tiny_cnn(size="S"), tmp_path / "dynamic.onnx")
    assert_one_line_error(run_cli("split", tmp_path / "dynamic.onnx", "--input-size", "400000", "400000", "--out",
                                  tmp_path / "b"), "out of memory (Unable to allocate")
    assert run_cli("split", tmp_path / "dynamic.onnx", "--input-size", "48", "40", "--out", tmp_path / "c"
                   ).returncode == 0


def test_synthetic_scenes_never_replace_other_scenes_ground_truth(tmp_path):
    """Scenes of another split written into a folder of scenes replaced its boxes.json: the first scenes lost
    their ground truth. The same command again is fine (the same scenes)."""
    assert run_cli("synthetic", "--out", tmp_path / "s", "-n", "3").returncode == 0
    assert run_cli("synthetic", "--out", tmp_path / "s", "-n", "3").returncode == 0
    for split in ("large", "detection"):
        assert_one_line_error(run_cli("synthetic", "--out", tmp_path / "s", "-n", "2", "--split", split),
                              f"'{tmp_path / 's'}' holds boxes.json of other scenes (3, e.g. cluttered_00000.png)")
    assert len(json.loads((tmp_path / "s" / "boxes.json").read_text())) == 3
    assert_one_line_error(run_cli("synthetic", "--out", tmp_path / "t", "--split", "nosuch"),
                          "unknown split 'nosuch'; splits: large, small, multiple, cluttered, detection, segmentation")
    assert not (tmp_path / "t").exists()


def _corrupt_files(tmp_path, tiny_onnx_path):
    (tmp_path / "notes.onnx").write_text("this is not a model\n" * 20)
    data = tiny_onnx_path.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    onnx.save(tiny_cnn(skip=True), tmp_path / "skip.onnx")


@pytest.mark.parametrize("args, fragment", [
    (["split", "{tmp}/missing.onnx", "--out", "{tmp}/b"], "does not exist"),
    (["split", "{tmp}/notes.onnx", "--out", "{tmp}/b"], "is not"),
    (["split", "{tmp}/truncated.onnx", "--out", "{tmp}/b"], "is not a readable ONNX model"),
    (["split", "{tiny}", "--layer", "layer9", "--out", "{tmp}/b"], "unknown layer 'layer9'"),
    (["split", "{tmp}/skip.onnx", "--layer", "relu2", "--out", "{tmp}/b"],
     "is not a cut point: the head also reads 'relu1'"),
    (["split", "{tmp}/mlp.onnx", "--out", "{tmp}/b"], "no feature map"),
    (["split", "{tiny}", "--out", "{tmp}/b", "--labels", "{tmp}/nolabels.txt"], "labels file"),
    (["split", "{tiny}", "--out", "{tmp}/b", "--labels", "{tmp}/labels.png"], "is not UTF-8 text"),
    (["split", "{tiny}", "--out", "{tmp}/b", "--scale", "0"], "scale must be non-zero"),
    (["split", "{tiny}", "--out", "{tmp}/b", "--conf", "0.5", "--cut", "backbone"], "--cut, --conf are for detectors"),
    (["split", "{tiny}", "--out", "{tmp}/b", "--input-size", "0", "0"], "input size must be two positive integers"),
    (["info", "{tmp}/nobundle"], "does not exist"),
    (["synthetic", "--out", "{tmp}/s", "-n", "-3"], "the number of scenes must be at least 1, not -3"),
    (["synthetic", "--out", "{tmp}/s", "-n", "2", "--seed", "-1"], "the seed must be 0 or more, not -1"),
    (["serve", "{tiny}", "--port", "70000"], "port must be an integer from 0 (any free port) to 65535, not 70000"),
    (["serve", "{tiny}", "--threads", "0"], "threads must be a positive integer, not 0"),
    (["serve", "{shapes}", "--max-batch", "0"], "--max-batch must be at least 1, not 0"),
    (["serve", "{shapes}", "--batch-window-ms", "-5"], "--batch-window-ms must be 0 or more, not -5.0"),
    (["serve", "{shapes}", "--max-body-mb", "0"], "--max-body-mb must be more than 0, not 0.0"),
    (["explain", "{shapes}", "{tmp}", "--method", " , ", "--out", "{tmp}/o"], "--method names no method"),
    (["bench", "{shapes}", "--backend", "nope"], "unknown backend 'nope'"),
    (["info", "{shapes}", "--precision", "bf16"], "--precision is the precision info runs one image at on --backend"),
    (["bench", "{shapes}", "--backend", "onnxruntime", "--precision", "bf16"],
     "ONNX Runtime's CPU provider computes in float32; bench --precision bf16 with --backend openvino"),
    (["explain", "{shapes}", "{tmp}", "--maps", "png", "--out", "{tmp}/o"], "give it with --overlays none"),
    (["explain", "{shapes}", "{tmp}", "--enhance-option", "transforms=2", "--out", "{tmp}/o"],
     "give the enhancer with --enhance"),
    (["explain", "{shapes}", "{tmp}", "--method", "cam", "--finer", "-1", "--out", "{tmp}/o"],
     "finer's gamma must be 0 or more, not -1.0"),
    (["explain", "{shapes}", "{tmp}", "--finer-references", "0", "--out", "{tmp}/o"],
     "--finer-references set Finer-CAM's comparison; give it with --finer GAMMA"),
    (["fuse", "{shapes}", "--out", "{tmp}/f.onnx", "--repository", "{tmp}/r", "--max-batch", "0"],
     "--max-batch must be at least 1"),
    (["fuse", "{shapes}", "--out", "{tmp}/f.onnx", "--repository", "{tmp}/notes.onnx"],
     "is a file; a model repository"),
    (["audit", "{shapes}", "{tmp}", "--out", "{tmp}/a", "--steps", "100000"],
     "steps must be an integer from 1 to 1024"),
    (["demo", "--out", "{tmp}/d", "--backend", "openvino", "--device", "NOSUCH"],
     "OpenVINO device 'NOSUCH' is not available here"),
])
def test_user_errors_print_one_line(tmp_path, tiny_onnx_path, args, fragment):
    _corrupt_files(tmp_path, tiny_onnx_path)
    (tmp_path / "labels.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 8)
    args = [a.format(tmp=tmp_path, tiny=tiny_onnx_path, shapes=ROOT / "cam_infer" / "data" / "shapes") for a in args]
    assert_one_line_error(run_cli(*args), fragment)
    assert not (tmp_path / "f.onnx").exists()                  # a refused fuse writes nothing
    assert not (tmp_path / "o").exists()                       # a refused explain leaves no --out behind


@pytest.mark.parametrize("damage, fragment", [("missing", "missing its head graph"), ("modified", "was modified"),
                                              ("backend", "unknown backend 'tensorrt'"),
                                              ("device", "OpenVINO device 'NPU' is not available")])
def test_bundle_and_backend_errors_print_one_line(tmp_path, tiny_bundle, damage, fragment):
    bundle = shutil.copytree(tiny_bundle.path, tmp_path / "b")
    extra = []
    if damage == "missing":
        (bundle / "head.onnx").unlink()
    elif damage == "modified":
        (bundle / "head.onnx").write_bytes((bundle / "head.onnx").read_bytes() + b"\0")
    elif damage == "backend":
        extra = ["--backend", "tensorrt"]
    else:
        extra = ["--backend", "openvino", "--device", "NPU"]
    result = run_cli("info", bundle, *extra)
    if damage in ("backend", "device"):  # the description prints first, then the one-line error
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and fragment in result.stderr
        assert "Traceback" not in result.stderr
    else:
        assert_one_line_error(result, fragment)


@needs_torch
@pytest.mark.slow
def test_export_command_with_factory_and_weights(tmp_path):
    import torch

    import models
    model = models.resnet18(num_classes=5)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    result = run_cli("export", "models.resnet:resnet18", "--weights", tmp_path / "weights.pt", "--layer", "layer4",
                     "--input-size", "64", "64", "--out", tmp_path / "b", "--exporter", "legacy", cwd=ROOT)
    assert_one_line_error(result, "does not fit the model")   # 1000-class factory, 5-class weights
    (tmp_path / "factory.py").write_text("import models\n\ndef build():\n    return models.resnet18(num_classes=5)\n")
    result = run_cli("export", "factory:build", "--weights", tmp_path / "weights.pt", "--layer", "layer4",
                     "--input-size", "64", "64", "--out", tmp_path / "b", "--exporter", "legacy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "target layer 'layer4' (torch module)" in result.stdout and "(N,512,2,2)" in result.stdout


@needs_torch
@pytest.mark.parametrize("args, fragment", [
    (["export", "nosuchmodule:build"], "cannot import 'nosuchmodule'"),
    (["export", "models.resnet"], "must look like 'package.module:function'"),
    (["export", "models.resnet:resnet18", "--weights", "{tmp}/none.pt"], "weights file"),
    (["export", "models.resnet:resnet18", "--weights", "{tmp}/bad.pt"], "is not a loadable state_dict"),
])
def test_export_errors_print_one_line(tmp_path, args, fragment):
    (tmp_path / "bad.pt").write_text("garbage")
    args = [a.format(tmp=tmp_path) for a in args] + ["--layer", "layer4", "--input-size", "64", "64",
                                                     "--out", str(tmp_path / "b")]
    assert_one_line_error(run_cli(*args, cwd=ROOT), fragment)


@pytest.mark.parametrize("task", ["classifier", "detector"])
def test_info_wraps_a_long_runtime_refusal_at_words(tmp_path, tiny_onnx_path, task):
    """A runtime's refusal is shown whole, in lines of at most 100 characters broken between words."""
    import json
    if task == "classifier":
        assert run_cli("split", tiny_onnx_path, "--out", tmp_path / "b").returncode == 0
    else:
        from cam_infer.tools.demo import embedded_detector_path
        shutil.copytree(embedded_detector_path(), tmp_path / "b")
    manifest = tmp_path / "b" / "bundle.json"
    record = json.loads(manifest.read_text())
    why = " ".join(f"reason{i:03d}" for i in range(60)) + " the end"                 # 538 characters
    record["runtimes"]["openvino"] = {"runs": False, "why_not": why}
    manifest.write_text(json.dumps(record))
    info = run_cli("info", tmp_path / "b")
    assert info.returncode == 0, info.stderr
    block = [line for line in info.stdout.splitlines() if line.startswith(("runtimes", "             "))]
    assert all(len(line) <= 100 for line in block) and len(block) > 5
    assert f"openvino: no ({why})" in " ".join(line.strip() for line in block)


def test_an_option_given_twice_is_refused_not_replaced(tmp_path):
    """`--method recipro --method cam` ran cam alone; now every plain option given twice is an error naming it,
    while the repeatable ones (--option) still add up."""
    shapes = ROOT / "cam_infer" / "data" / "shapes"
    result = run_cli("explain", shapes, tmp_path, "--method", "recipro", "--method", "cam", "--out", tmp_path / "o")
    assert result.returncode == 2 and "--method is given twice" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "o").exists()
    result = run_cli("audit", shapes, tmp_path, "--out", tmp_path / "a", "--steps", "4", "--steps", "8")
    assert result.returncode == 2 and "--steps is given twice" in result.stderr
    from cam_infer.tools.synthetic import write_scenes
    scenes = write_scenes(tmp_path / "s", "large", 1)
    result = run_cli("explain", shapes, scenes, "--method", "score", "--option", "top_k=4", "--option",
                     "weighting=channel-softmax", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr


def test_values_that_start_with_a_minus_and_a_digit_are_values_not_options(tmp_path):
    """`--box -50,10,100,100:person` (a box partly left of the image) failed in argparse ("expected one argument":
    it takes only a plain number such as -5 for a value, and read the list as an option); only `--box=-50,...`
    worked. Every argument that starts with a minus and a digit is now a value, and options still parse."""
    import cv2
    import numpy as np

    from cam_infer.cli.arguments import build_parser

    args = build_parser().parse_args(["explain", "b", "i.png", "--box", "-50,10,100,100:person", "--box",
                                      "-1,-2,3,4:0", "--region", "-5,0,40,40", "--out", "o", "--method", "recipro"])
    assert args.box == ["-50,10,100,100:person", "-1,-2,3,4:0"] and args.region == "-5,0,40,40"
    assert args.method == "recipro" and args.out == "o"
    assert build_parser().parse_args(["split", "m.onnx", "--mean", "-0.5", "-.5", "-1e-3", "--std", "1", "1", "1",
                                      "--out", "o"]).mean == [-0.5, -0.5, -0.001]
    cv2.imwrite(str(tmp_path / "a.png"), np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8))
    result = run_cli("explain", ROOT / "cam_infer" / "data" / "shapes_detector", tmp_path / "a.png", "--box",
                     "-20,10,60,60:0", "--method", "recipro", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    (given,) = json.loads((tmp_path / "o" / "results.json").read_text())["results"][0]["detections"]
    assert given["index"] is None and given["box"] == [0.0, 10.0, 60.0, 60.0]      # clipped to the image
