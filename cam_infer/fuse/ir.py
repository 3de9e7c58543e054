"""`fuse` on an OpenVINO IR bundle: one IR model (.xml and .bin) that returns the scores and the saliency map.

    model = fuse("ir-bundle/", method="recipro")       # an ov.Model; save(model, "fused.xml")

The method's nodes are the ones the ONNX fuse writes (each method's `@fused` builder, `assemble.method_nodes`),
built as a small ONNX graph whose inputs are the cut and the scores. OpenVINO reads that graph, and it is wired onto
the bundle's features and head joined back into one model: the cut feeds it, the scores too (`ir_graph.stitched`).
Where a builder runs the head (Recipro-CAM's masked copies) or a graph made from it (ViT Recipro-CAM's opened tail),
its ONNX nodes leave a gap (`fusion.Call`) filled with OpenVINO's own graph of the head: nothing of the IR is
re-expressed in ONNX. A GAP → linear head's W and b are read where the IR holds them (`ir_graph.head_tensors`),
or added as read where it holds them in no float constant (an int8 head's).
This module: the plain model, the record in rt_info, running, saving and summarising a fused IR.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CamInferError
from ..outputs import write_atomically
from .ir_graph import joined_ir

METADATA = "cam_infer"          # the rt_info section of the model's metadata (`bundle.model_cache.is_fused_ir`)


def plain_ir(bundle):
    """The model the bundle was split from, as one ``ov.Model``: the features and head joined, the scores out."""
    import openvino as ov
    parameters, _, scores, _ = joined_ir(bundle.features_path, bundle.head_path)
    return ov.Model([scores], parameters, "cam_infer_plain")


def describe(model, entries: dict) -> None:
    """The fused model's record (`assemble._description`'s entries) in its rt_info, section ``cam_infer``."""
    for key, value in entries.items():
        model.set_rt_info(str(value), [METADATA, key.removeprefix("cam_infer.")])


def described(model) -> dict:
    """What `describe` wrote, as ``cam_infer.<key>`` entries."""
    from ..bundle.graph import rt_info_section
    return {f"cam_infer.{key}": value for key, value in rt_info_section(model, METADATA).items()}


def run(model, feeds: dict, precision: str = "f32") -> dict:
    """The fused IR on OpenVINO's CPU at `precision`: its outputs by name."""
    return runner(model, precision)(feeds)


def runner(model, precision: str = "f32"):
    """`model` (an IR, or an ONNX model) compiled once on OpenVINO's CPU at `precision`: feeds → outputs by name."""
    from ..backends.sessions import FLOAT32, openvino_compiled
    request = openvino_compiled(model, FLOAT32.but(precision=precision)).create_infer_request()

    def outputs(feeds: dict) -> dict:
        request.infer(feeds)
        return {name: request.get_tensor(o).data.copy() for o in request.model_outputs for name in o.get_names()}
    return outputs


def save_ir(model, path: "str | os.PathLike", overwrite: bool = False) -> Path:
    """`model` as `path` (.xml) and its weights beside it (.bin), each written whole or not at all."""
    import tempfile

    import openvino as ov
    path = Path(path)
    if path.is_dir():
        raise CamInferError(f"'{path}' is a folder; --out is the fused model's file")
    if path.exists() and not overwrite:
        raise CamInferError(f"'{path}' exists; choose another --out or pass --force")
    if path.suffix != ".xml":
        raise CamInferError(f"'{path}' should end in .xml: the fused model of an OpenVINO IR bundle is IR (and its "
                            "weights go beside it, .bin)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        written = Path(scratch) / "model.xml"
        ov.save_model(model, str(written), compress_to_fp16=False)
        write_atomically(path.with_suffix(".bin"), written.with_suffix(".bin").read_bytes())
        write_atomically(path, written.read_bytes().replace(b"model.bin", path.with_suffix(".bin").name.encode()))
    return path


def summary_ir(model, path: Path, bundle) -> str:
    """What `cam-infer fuse` prints for an IR: the files, their growth, inputs, outputs and the check."""
    def shape(port) -> str:
        return str(port.get_partial_shape()).replace(" ", "").replace("?", "N", 1)

    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    graphs = (bundle.features_path, bundle.head_path)
    plain = sum(p.stat().st_size + p.with_suffix(".bin").stat().st_size for p in graphs)
    error = json.loads(described(model)["cam_infer.check"])
    return (f"wrote {path} and {path.with_suffix('.bin').name} ({size / 1e6:.1f} MB, {size / plain - 1:+.2%} over the "
            f"bundle's graphs)\n"
            f"inputs   {', '.join(f'{p.get_any_name()} {shape(p)}' for p in model.inputs)}\n"
            f"outputs  {', '.join(f'{p.get_any_name()} {shape(p)}' for p in model.outputs)}\n"
            "checked  against the Explainer on OpenVINO (f32): max relative difference "
            f"{error['relative_difference']:.2g}"
            + "".join(f"; at {p}: {d:.2g}" for p, d in error.items() if p != "relative_difference"))


