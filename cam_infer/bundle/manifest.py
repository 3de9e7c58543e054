"""A bundle: ``features.onnx`` + ``head.onnx`` + ``bundle.json`` in one folder.

Loading a bundle reads JSON and checks hashes; it never executes code or unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from ..errors import CamInferError
from ..images import Preprocessing
from ..outputs import write_atomically
from .positions import PRODUCTS

MANIFEST = "bundle.json"
FORMAT = "cam-infer-bundle"
FORMAT_VERSION = 1


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A split model on disk; `manifest` is the parsed ``bundle.json``."""

    path: Path
    manifest: dict
    # A model file given where a bundle folder is taken → the folder of its bundle, split once into the cache.
    # Splitting is a step above this module, so the package sets it (`model_cache.bundle_of_file`).
    folder_of_model_file: ClassVar[Callable[[Path], Path]]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Bundle":
        if not isinstance(path, (str, os.PathLike)):
            raise CamInferError(f"a bundle is a folder (or a model file) given by its path, not {type(path).__name__}")
        path = Path(path)
        if path.is_file():
            path = cls.folder_of_model_file(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise CamInferError(f"bundle folder '{path}' does not exist")
        if not manifest_path.is_file():
            raise CamInferError(f"'{path}' is not a bundle: it has no {MANIFEST} (make one with cam-infer split)")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CamInferError(f"{manifest_path} is not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CamInferError(f"{manifest_path} is not a cam-infer bundle manifest")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise CamInferError(f"bundle '{path}' has format version {version}; this cam-infer reads version "
                                f"{FORMAT_VERSION}; re-create it with cam-infer split")
        check_manifest(manifest, manifest_path)
        bundle = cls(path, manifest)
        bundle.check_graphs()
        return bundle

    def check_graphs(self) -> None:
        for role, entry in self.manifest["graphs"].items():
            files = [(entry["file"], entry["sha256"])]
            if entry.get("weights"):                      # an OpenVINO IR: the .bin beside the .xml
                files.append((entry["weights"], entry.get("weights_sha256")))
            for name, digest in files:
                file = self.path / name
                if not file.is_file():
                    raise CamInferError(f"bundle '{self.path}' is missing its {role} graph file '{name}'")
                if sha256_of(file) != digest:
                    raise CamInferError(f"the {role} graph of bundle '{self.path}' was modified after the bundle "
                                        "was made (sha256 mismatch); re-create the bundle")

    @property
    def runtimes(self) -> list[str]:
        """The runtimes that run this bundle (checked when it was made)."""
        recorded = self.manifest.get("runtimes", {"onnxruntime": {"runs": True}, "openvino": {"runs": True}})
        return [name for name, r in recorded.items() if r.get("runs")]

    @property
    def graph_format(self) -> str:
        """``onnx`` (runs on ONNX Runtime and OpenVINO) or ``openvino`` (an IR bundle: OpenVINO only)."""
        return "openvino" if self.manifest["graphs"]["features"]["file"].endswith(".xml") else "onnx"

    # --- what the methods and backends read ----------------------------------------------

    @property
    def features_path(self) -> Path:
        return self.graph_path("features")

    @property
    def head_path(self) -> Path:
        return self.graph_path("head")

    @cached_property
    def quantized_head(self) -> bool:
        """Whether the head graph (ONNX) holds QuantizeLinear/DequantizeLinear nodes."""
        if self.graph_format != "onnx":
            return False
        import onnx

        from .qdq_tail import is_quantized
        return is_quantized(onnx.load(self.head_path, load_external_data=False))

    @cached_property
    def computes_in_float16(self) -> bool:
        """Whether the bundle's graphs (ONNX) compute in float16: a float16 weight (an initializer or a Constant)
        that an operation other than a Cast reads, in the features or the head (a half-precision file, with float16
        or float32 inputs). ONNX Runtime's CPU provider computes such a graph in float16; OpenVINO upcasts it to its
        own precision. Recorded by the split (``graphs.<role>.float16_weights``); read from the graphs of a bundle
        written before."""
        if self.graph_format != "onnx":
            return False
        recorded = [self.manifest["graphs"][role].get("float16_weights") for role in ("features", "head")]
        if None not in recorded:                                  # recorded by the split
            return any(recorded)
        import onnx

        from .graph import reads_float16_weights
        return any(reads_float16_weights(onnx.load(self.graph_path(role), load_external_data=False).graph)
                   for role in ("features", "head"))

    def joined_model(self):
        """Features and head as one ONNX model whose outputs are the cut's tensors, then the model's
        (`joined`): a clean pass in one call. None for IR bundles."""
        if self.graph_format != "onnx":
            return None
        import onnx

        from .joined import joined_model
        return joined_model(onnx.load(self.features_path), onnx.load(self.head_path), self.cut_levels)

    @contextmanager
    def joined_file(self):
        """The joined model for a runtime to read while the block runs: the path of a temporary file with its
        weights beside it, which both runtimes read with less memory than the same model as bytes (ONNX
        Runtime holds a ResNet-50 in ~40 % less; the weights are written tensor by tensor, never serialized
        twice); the model's bytes where no temporary folder takes it (a full disk)."""
        import shutil
        import tempfile

        import onnx
        folder = None
        try:
            folder = tempfile.mkdtemp(prefix="cam-infer-")
            path = Path(folder) / "joined.onnx"
            onnx.save_model(self.joined_model(), path, save_as_external_data=True, location="joined.weights",
                            size_threshold=1024)
        except OSError:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            yield self.joined_model().SerializeToString()
            return
        try:
            yield str(path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @property
    def cut_levels(self) -> list[dict] | None:
        """A detector's cut levels (name, shape, stride, offset in the packed vector); None for a classifier."""
        return self.manifest.get("cut")

    @property
    def layers(self) -> list[str]:
        """Where the model is cut, as runs and reports record it: its layer's tensor, or each member of its cut set."""
        if self.cut_levels:
            return [level["name"] for level in self.cut_levels]
        return [self.manifest.get("target_layer", {}).get("tensor") or self.activation_name]

    def graph_path(self, role: str) -> Path:
        """The file of graph `role`: ``features``, ``head``, or a detector's ``branch_<level>``."""
        if role not in self.manifest["graphs"]:
            raise CamInferError(f"bundle '{self.path}' has no {role} graph")
        return self.path / self.manifest["graphs"][role]["file"]

    def files(self) -> set[Path]:
        """Every file of the bundle, resolved: bundle.json and its graphs (an IR graph's .bin too)."""
        graphs = [self.path / g["file"] for g in self.manifest["graphs"].values()]
        weights = [g.with_suffix(".bin") for g in graphs if g.suffix == ".xml"]
        return {f.resolve() for f in [self.path / MANIFEST, *graphs, *weights]}

    @property
    def input_name(self) -> str:
        return self.manifest["input"]["name"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return tuple(self.manifest["input"]["shape"][1:])

    @property
    def activation_name(self) -> str:
        return self.manifest["activation"]["name"]

    @property
    def activation_shape(self) -> tuple[int, int, int]:
        """(K, h, w) of the target-layer activation for one image."""
        return tuple(self.manifest["activation"]["shape"])

    @property
    def tokens(self):
        """How a transformer's cut tokens are seen as the grid `activation_shape` (`tokens.TokenLayout`), or None."""
        record = self.manifest["activation"].get("tokens")
        if record is None:
            return None
        from .tokens import TokenLayout
        return TokenLayout.from_dict(record)

    @property
    def cut_shape(self) -> tuple[int, ...]:
        """The cut tensor for one image as the graphs hold it: tokens (T,D) or (h,w,D), else `activation_shape`."""
        record = self.manifest["activation"].get("tokens")
        return tuple(record["shape"]) if record else self.activation_shape

    @property
    def cut_field(self) -> str:
        """Where bundle.json records `cut_shape`."""
        return "activation.tokens" if self.manifest["activation"].get("tokens") else "activation"

    @property
    def attention(self) -> list[tuple[str, tuple[int, ...]]]:
        """A token model's attention probabilities (Softmax outputs) of every block, in order, with their shapes for
        one image; empty when the graph showed none."""
        record = self.manifest["activation"].get("tokens") or {}
        return [(name, tuple(shape or ())) for name, shape in zip(record.get("attention", []),
                                                                 record.get("attention_shapes", []))]

    def attention_model(self, head_fusion: str = "mean"):
        """The joined model with the attention probabilities, fused over the heads, as outputs between the cut and
        the scores (`tokens.with_attention`); of an IR bundle, an ``ov.Model`` (`openvino_tokens.attention_model`)."""
        from .tokens import with_attention
        if self.graph_format == "openvino":
            from .openvino_tokens import attention_model
            return attention_model(self.features_path, self.head_path, [name for name, _ in self.attention],
                                   head_fusion)
        import onnx

        from .joined import head_renames, joined_model
        from .tokens import SOFTMAX
        features, head = onnx.load(self.features_path), onnx.load(self.head_path)
        # a block after the cut whose attention tensor the join renamed (its name is also a features tensor's)
        renames = head_renames(features, head, self.cut_levels)
        ours = {o for n in features.graph.node if n.op_type in SOFTMAX for o in n.output}
        names = [name if name in ours else renames.get(name, name) for name, _ in self.attention]
        return with_attention(joined_model(features, head, self.cut_levels), names, head_fusion)

    @property
    def task(self) -> str:
        """``classification``, ``detection`` (a cut set before a YOLO-style head, `cam_infer.detection`) or
        ``segmentation`` (class scores per pixel, `bundle.segmentation`)."""
        return self.manifest.get("task", "classification")

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The head's output for one image: (C,) class scores, or a detector's (4+C, anchors)."""
        return tuple(self.manifest["output"].get("shape", [self.num_classes]))

    @property
    def num_classes(self) -> int:
        return int(self.manifest["output"]["num_classes"])

    @property
    def output_kind(self) -> str:
        """``logits`` or ``probabilities`` (the model ends in a softmax)."""
        return self.manifest["output"]["kind"]

    @cached_property
    def scores_step(self) -> float:
        """One quantization step of the scores the head returns: an int8 file's logits (before a left-out quantized
        Softmax, or its output), or its quantized probabilities (a QLinearSoftmax's); 0 where they are float, and for
        a segmenter or a detector, whose scores of a region or a detection are finer than one step of a pixel's. A
        bundle written before the logits' step was recorded: read from its head graph."""
        output = self.manifest["output"]
        if self.task != "classification":
            return 0.0
        if self.output_kind == "probabilities":
            return float(output.get("model_output_step") or 0.0)
        if "logits_step" in output:
            return float(output["logits_step"] or 0.0)
        if not output.get("left_out"):
            return float(output.get("model_output_step") or 0.0)       # the model's output is the logits
        return self._head_output_step()

    def _head_output_step(self) -> float:
        """The quantization step of what the ONNX head graph returns (its last DequantizeLinear), or 0."""
        if self.graph_format == "openvino":
            return 0.0                                    # an earlier IR bundle: not read (cam-infer split it again)
        import onnx

        from .anatomy import output_step
        from .graph import Graph
        return output_step(Graph(onnx.load(self.head_path, load_external_data=False)))

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.get("labels")

    @property
    def dynamic_batch(self) -> bool:
        return self.manifest["batch"] == "dynamic"

    @property
    def fixed_batch(self) -> int:
        """The batch size the graphs were kept at when the source's could not be released (1 usually)."""
        return int(self.manifest.get("fixed_batch") or 1)

    @property
    def call_batch(self) -> int | None:
        """The batch every runtime call of the graphs must have (`fixed_batch`; shorter calls are zero-padded to
        it); None when they take any."""
        return None if self.dynamic_batch else self.fixed_batch

    @cached_property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.manifest["preprocessing"])

    @property
    def normalisation(self) -> dict | None:
        """Where the preprocessing's mean, std and scale come from: each "given", "model" (the model file's record or
        its integer input) or "default" (guessed for a float input); None for a bundle written before it was
        recorded (`bundle.split.normalisation_record`)."""
        return self.manifest.get("normalisation")

    def preprocess(self, images) -> np.ndarray:
        """Image paths or RGB uint8 arrays → (N,3,H,W) float32 model input."""
        if isinstance(images, (str, os.PathLike, np.ndarray)) and not (
                isinstance(images, np.ndarray) and images.ndim == 4):
            images = [images]
        prep = self.preprocessing
        return np.stack([prep(image) for image in images]).astype(np.float32, copy=False)

    def label(self, class_id: int) -> str:
        labels = self.labels
        return labels[class_id] if labels else str(class_id)

    def bytes_per_item(self, role: str) -> int:
        """Rough working memory per image of one graph, for cutting batches into chunks."""
        if role == "joined":
            return self.bytes_per_item("features") + self.bytes_per_item("head")
        if role == PRODUCTS:                            # the products (h·w, C) and the positions (h·w, K)
            k, h, w = self.cut_shape
            return self.bytes_per_item("joined") + 4 * h * w * (self.num_classes + k)
        if role.startswith("attention"):
            return self.bytes_per_item("joined") + sum(4 * int(np.prod(shape[1:])) for _, shape in self.attention)
        if role.startswith("maps-"):                    # a map and its saliency at the input (`tasks.in_pass`)
            return self.bytes_per_item("joined") + 4 * int(np.prod(self.input_shape[1:]))
        return int(self.manifest["memory"][f"{role}_bytes_per_item"])


OUTPUT_KINDS = ("logits", "probabilities", "softmax", "sigmoid", "detections")


def check_manifest(manifest: dict, path: Path) -> None:
    """The fields every run reads, present and of their kind: an edited ``bundle.json`` is one line naming the
    field, never an IndexError in the middle of a run (or labels shifted against the classes)."""
    def refuse(what: str):
        raise CamInferError(f"{path}: {what}; re-create the bundle with cam-infer split")

    def section(name: str, *keys: str) -> dict:
        value = manifest.get(name)
        if not isinstance(value, dict):
            refuse(f"'{name}' is missing or not an object")
        for key in keys:
            if key not in value:
                refuse(f"'{name}.{key}' is missing")
        return value

    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    def positive_ints(name: str, value, allow_none_first: bool = False):
        items = value if isinstance(value, list) else None
        if not items or not all(count(v) or (allow_none_first and i == 0 and v is None) for i, v in enumerate(items)):
            refuse(f"'{name}' must be a list of positive integers, not {value!r}")

    graphs = section("graphs")
    if not graphs or not all(isinstance(g, dict) and "file" in g and "sha256" in g for g in graphs.values()):
        refuse("'graphs' must name each graph's file and sha256")
    preprocessing = section("preprocessing")
    try:
        prep = Preprocessing.from_dict(preprocessing)
    except (CamInferError, TypeError) as exc:
        refuse(f"'preprocessing': {exc}")
    shape = section("input", "name", "shape")["shape"]
    positive_ints("input.shape", shape, allow_none_first=True)
    expected = [prep.channels, *prep.input_size]
    if shape[1:] != expected:
        refuse(f"'input.shape' {shape} does not match the preprocessing's {expected[0]} channel"
               f"{'s' if expected[0] != 1 else ''} of {expected[1]}×{expected[2]} pixels")
    activation = section("activation", "name", "shape")
    positive_ints("activation.shape", activation["shape"])
    tokens = activation.get("tokens")
    if tokens is not None:
        positive_ints("activation.tokens.shape", tokens.get("shape") if isinstance(tokens, dict) else tokens)
    output = section("output", "kind", "num_classes")
    classes = output["num_classes"]
    if not count(classes):
        refuse(f"'output.num_classes' must be a positive integer, not {classes!r}")
    if output["kind"] not in OUTPUT_KINDS:
        refuse(f"'output.kind' must be one of {', '.join(OUTPUT_KINDS)}, not {output['kind']!r}")
    if "shape" in output:
        positive_ints("output.shape", output["shape"])
    labels = manifest.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            refuse("'labels' must be a list of strings, one per class")
        if len(labels) != classes:
            refuse(f"'labels' has {len(labels)} names for the model's {classes} classes")
    if manifest.get("batch") not in ("dynamic", "fixed"):
        refuse(f"'batch' must be 'dynamic' or 'fixed', not {manifest.get('batch')!r}")


def write_manifest(folder: Path, manifest: dict) -> None:
    write_atomically(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")

