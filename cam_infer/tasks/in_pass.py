"""Single-pass maps computed inside the runtime's clean pass: for a classifier one graph returns the scores, the
class explained, its score, the raw map, the saliency at the input's resolution and the degenerate flag, so
that only a few small arrays leave the runtime and no NumPy work follows the pass.

Why: on a model whose pass takes a few milliseconds (MobileNetV2, 3–7 ms) the Python work after the pass — the
method on the (K,h,w) cut, normalising, the resize to the input, the softmax — runs 3–4× slower than the same
work in a loop (the pass has just evicted it from the caches) and cost 0.45–0.70 ms a call: 7–11 % of the pass.
In the graph it runs on the runtime's threads beside the pass. A segmenter's class-agnostic maps (activation,
entropy, Eigen-CAM) are computed so too, the graph returning the scores and the map (`AGNOSTIC_OUTPUTS`): the cut,
which the general path copies out beside the scores, stays in the runtime (the PAN's 2 MB: 1.11× the unsplit
model's pass on the general path, 0.98× in the pass, alternated over 40 rounds). The map's nodes read the cut
channels-last, as OpenVINO holds it (`fuse.fusion.Fusion.channels_last`).

The graph is the bundle's joined model (features and head, the cut not exposed) plus the method's ONNX
builder (`methods.registry.fused`, as `cam-infer fuse` writes it; Ablation-CAM's closed form,
`methods.ablation.ablation_in_graph`), then the map normalised as `postprocess.normalise` does and resized as
`postprocess.upsample` does (bilinear, half-pixel centres, clipped to [0,1]). It is built and compiled once per
method, only for the calls it computes as `explain` does otherwise: one image's top-1 class, the method's
default options, no Finer-CAM, the saliency upsampled, a bundle whose graphs are small enough that a second
compiled copy costs little (`SMALL_MODEL_BYTES`). Every other call takes the general path.

At a reduced precision (bf16, f16) OpenVINO rounds the graph's products and stores to that format, the method's
nodes too (its per-node ``disable_fp16_compression`` mark does not keep a MatMul in float32 at bf16: measured on
2026.4), so the map is computed at the model's own precision. Only the methods whose rounding there is bounded by
the format run so (`AT_REDUCED_PRECISION`; u = 2⁻⁸ for bf16; each bound tested in tests/test_precision.py):
- a weighted sum of the cut's channels Σ_k v_k A_k (activation, CAM) is rounded as one more layer,
  3u Σ_k |v_k||A_k|; Ablation-CAM's weights, divided by the class logit they recompute, add that logit's rounding
  relative to it;
- Feature Entropy-CAM's weights Ĥ_k = −Σ_u p_u ln p_u / ln(h·w) take p's three roundings (the sum, its reciprocal,
  the product), the logarithm's store, the product's and the sum's and the scale's: |ΔĤ_k| ≤ 8u Ĥ_k + 3u/ln(h·w)
  (the logarithm itself is computed in float32, its input and output stored in bf16), so the map is within
  (8u + 3u/ln(h·w)) Σ_k |A_k| plus the weighted sum's 3u Σ_k Ĥ_k |A_k|;
- the saliency is a few u more (normalising's stores, the resize's products).
Eigen-CAM runs in the pass at float32 only (its eigenvector has no bound in the format's rounding alone: it
depends on the gap λ₁ − λ₂), its fixed number of power steps certified per image (`methods.eigen.eigen_in_pass`:
the output ``settled``); an image whose vector the certificate does not settle takes the general path.

On an IR bundle the same nodes are built on its cut and scores and wired onto its two IR graphs joined
(`fuse.ir_graph`), the head's W and b read where the IR holds them (else added as read): one call where the general
path makes two.

OpenVINO only: on ONNX Runtime a second session of the model (its own spinning thread pool) beside the joined one
slowed both, alternated with the forward pass (MobileNetV2: 1.40–1.83× the forward against 1.09–1.13× for the
general path), and a runtime does not run part of a graph for the outputs asked."""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from ..errors import CamInferError

SMALL_MODEL_BYTES = 64 * 2**20      # the graphs' bytes up to which a method's own compiled copy is kept
MIN_OPSET = 13
OUTPUTS = ("scores", "class", "score", "map", "saliency", "degenerate")
AGNOSTIC_OUTPUTS = ("scores", "map")      # a segmenter's class-agnostic map: normalised and resized after the pass
AT_REDUCED_PRECISION = ("activation", "cam", "ablation", "entropy")    # bounded rounding: in the pass at bf16/f16
CERTIFIED = ("eigen",)     # a method whose graph also returns ``settled`` (N,1): where false, the general path


@lru_cache(maxsize=2)
def in_pass_methods(per_class: bool = True) -> dict:
    """Method name → its graph builder (f: `fuse.fusion.Fusion`) → the map tensor's name (N,h,w); without
    `per_class` (a segmenter, whose targets are regions found in the scores) the class-agnostic ones among them.
    Eigen-CAM's is its fused form with a certificate (`CERTIFIED`): a fixed number of power steps is not the
    Explainer's tolerance, so each image's vector is checked in the graph."""
    from ..methods import METHODS
    from ..methods.ablation import ablation_in_graph
    from ..methods.eigen import eigen_in_pass

    builders = {name: METHODS[name].fused for name in ("activation", "cam", "entropy")}
    builders["ablation"] = ablation_in_graph
    builders["eigen"] = eigen_in_pass
    if per_class:
        return builders
    return {name: builder for name, builder in builders.items() if not METHODS[name].class_specific}


class MapsInPass:
    """The in-pass graphs of one Explainer (built on first use, one per method) and when they apply. `per_class`:
    a classifier's graphs, which also return the top-1 class, its score and the saliency (`OUTPUTS`); else a
    segmenter's, its class-agnostic map beside the scores (`AGNOSTIC_OUTPUTS`): the cut stays in the runtime, the
    targets are found in the scores as always, and the map is resized by cv2 (to 512² two products in the graph
    cost more: 38.2 against 36.3 ms a call on the PAN)."""

    def __init__(self, explainer, per_class: bool = True):
        self.explainer = explainer
        self.bundle = explainer.bundle
        self.per_class = per_class
        self._graphs: dict = {}
        self._lock = threading.Lock()
        self.possible = self._bundle_fits()
        self.reduced = self.possible and explainer.backend.precision != "f32"
        self.shapes = {"saliency": tuple(self.bundle.input_shape[1:]), "map": tuple(self.bundle.activation_shape[1:]),
                       "scores": tuple(self.bundle.output_shape)}      # per image, read once

    def _bundle_fits(self) -> bool:
        bundle, backend = self.bundle, self.explainer.backend
        if bundle.tokens is not None or bundle.cut_levels is not None or not getattr(backend, "maps_in_pass", False):
            return False
        if bundle.call_batch not in (None, 1):     # one image: no padding to a larger batch
            return False
        graphs = (bundle.features_path, bundle.head_path)
        if bundle.graph_format == "openvino":                                  # an IR's weights: its .bin files
            graphs = (*graphs, *(p.with_suffix(".bin") for p in graphs))
            ops = {op for record in bundle.manifest["graphs"].values() for op in record.get("ops", {})}
            if "FakeQuantize" in ops:       # int8: joined, OpenVINO fuses its ops otherwise than in the two graphs the
                return False                # general path runs (scores a quantization step apart): not the same call
        return sum(p.stat().st_size for p in graphs) <= SMALL_MODEL_BYTES

    def applies(self, method: str, n: int, request: dict, options: dict) -> bool:
        """Whether the in-pass graph computes this call as the general path does (at bf16/f16, within the format's
        rounding of the map's own arithmetic)."""
        if not self.possible or n != 1 or options or method not in in_pass_methods(self.per_class):
            return False
        if self.reduced and method not in AT_REDUCED_PRECISION:
            return False
        if not self.per_class:                      # a class-agnostic map: any target and region, found after
            return True
        if request["target"] is not None or request["top_classes"] is not None or request["finer"] is not None \
                or request["enhance"] is not None or not request["upsampled"]:
            return False
        if method in ("cam", "ablation") and self.explainer.linear_head is None:
            return False
        return method != "ablation" or self.bundle.output_kind == "logits"

    def run(self, method: str, x: np.ndarray) -> dict | None:
        """The outputs of `method`'s in-pass graph on images x, `OUTPUTS` by name; None where the bundle's graphs
        are of an opset older than the graph's ops need, or the graph cannot be built or compiled for this model
        (the general path then runs, now and for every later call)."""
        role = f"maps-{method}"
        with self._lock:
            if role not in self._graphs:
                self._graphs[role] = self._built(method)
            graph = self._graphs[role]
        if graph is None:
            return None
        try:
            values = self.explainer.backend.explained_pass(role, graph, x)
        except (CamInferError, RuntimeError):       # OpenVINO cannot read or compile it: the general path instead
            with self._lock:
                self._graphs[role] = None
            return None
        out = dict(zip(outputs_of(method, self.per_class), values))
        if "settled" in out and not np.all(out["settled"]):   # not certified: the general path, for this call only
            return None
        return out

    def _built(self, method: str):
        try:
            linear_head = self.explainer.linear_head if self.per_class else None
            return in_pass_graph(self.bundle, linear_head, method, self.per_class)
        except Exception:  # noqa: BLE001  (a graph this model's ops cannot carry: the general path, which is exact)
            return None


def in_pass_graph(bundle, linear_head, method: str, per_class: bool = True):
    """The joined model with `OUTPUTS` (`AGNOSTIC_OUTPUTS` without `per_class`) as its outputs (an
    onnx.ModelProto; of an IR bundle an ``ov.Model``, the nodes wired onto its IR graphs as `fuse.ir` wires a fused
    method's); None below opset 13."""
    import onnx

    from ..bundle.joined import head_as_joined, head_renames, joined_model
    from ..fuse.builder import Builder

    if bundle.graph_format == "openvino":
        return _in_pass_ir(bundle, linear_head, method, per_class)
    features, head = onnx.load(bundle.features_path), onnx.load(bundle.head_path)
    renames = head_renames(features, head, bundle.cut_levels)
    model = joined_model(features, head, bundle.cut_levels, expose_cut=False, name="in_pass")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset < MIN_OPSET:
        return None
    linear_head, head = head_as_joined(linear_head, head, renames)
    b = Builder(opset)
    scores = model.graph.output[0].name
    _method_nodes(b, bundle, linear_head, head, None, bundle.activation_name, scores, method, per_class)
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    del model.graph.output[:]
    model.graph.output.extend(_output_infos(bundle, scores, per_class, method))
    return model


def _in_pass_ir(bundle, linear_head, method: str, per_class: bool):
    """The IR bundle's two graphs joined, the method's nodes built as ONNX on its cut and scores and wired on."""
    from ..fuse.builder import Builder
    from ..fuse.ir_graph import (CUT, IR_OPSET, SCORES, cut_input, linear_head_inputs, method_graph, scores_input,
                              stitched)
    b = Builder(IR_OPSET)
    inputs = [cut_input(bundle, "N"), scores_input(bundle, "N")]
    fusion = _method_nodes(b, bundle, linear_head_inputs(bundle, linear_head, inputs, b), None, bundle.head_path,
                           CUT, SCORES, method, per_class)
    outputs = _output_infos(bundle, SCORES, per_class, method)[1:]
    graph = method_graph(b, inputs, [(o.name, o.type.tensor_type.elem_type) for o in outputs], fusion.calls)
    return stitched(bundle, graph, fusion.calls, [o.name for o in outputs], linear_head)


def _method_nodes(b, bundle, linear_head, head, ir_head, cut: str, scores: str, method: str, per_class: bool):
    """The method's map on the cut; where `per_class`, also the class (top-1), its probability and the map
    normalised and resized: the outputs but the scores, named so. Returns the `Fusion` they were built on."""
    from onnx import TensorProto

    from ..fuse.fusion import Fusion
    targets = None
    if per_class:
        flat_scores = b.reshape(scores, (0, -1), hint="scores")
        targets = b.op("ArgMax", flat_scores, axis=1, keepdims=1, hint="targets")                  # (N,1)
        probabilities = flat_scores if bundle.output_kind == "probabilities" else b.op("Softmax", flat_scores, axis=1)
        b.op("Cast", b.op("Squeeze", targets, b.ints([1], "axes")), to=TensorProto.INT32, outputs=["class"])
        b.op("GatherElements", probabilities, targets, axis=1, outputs=["score"])
    fusion = Fusion(b, cut, bundle.activation_shape, targets, 1, bundle.num_classes, bundle.output_kind,
                    linear_head, head, ir_head, channels_last=True)         # OpenVINO holds the cut channels-last
    raw = in_pass_methods(per_class)[method](fusion)
    b.op("Identity", raw, outputs=["map"])
    if per_class:
        _, h, w = bundle.activation_shape
        _normalised_and_resized(b, raw, bundle.input_shape[1:], h, w)
    return fusion


def outputs_of(method: str, per_class: bool = True) -> tuple[str, ...]:
    """The in-pass graph's outputs for `method`, in order."""
    return (OUTPUTS if per_class else AGNOSTIC_OUTPUTS) + (("settled",) if method in CERTIFIED else ())


def _output_infos(bundle, scores: str, per_class: bool = True, method: str = "") -> list:
    from onnx import TensorProto, helper
    _, h, w = bundle.activation_shape
    height, width = bundle.input_shape[1:]
    infos = {"scores": helper.make_tensor_value_info(scores, TensorProto.FLOAT, None),
             "class": helper.make_tensor_value_info("class", TensorProto.INT32, ["N"]),
             "score": helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]),
             "map": helper.make_tensor_value_info("map", TensorProto.FLOAT, ["N", h, w]),
             "saliency": helper.make_tensor_value_info("saliency", TensorProto.FLOAT, ["N", height, width]),
             "degenerate": helper.make_tensor_value_info("degenerate", TensorProto.BOOL, ["N", 1, 1]),
             "settled": helper.make_tensor_value_info("settled", TensorProto.BOOL, ["N", 1])}
    return [infos[name] for name in outputs_of(method, per_class)]


def _normalised_and_resized(b, maps: str, size, h: int, w: int) -> None:
    """`postprocess.normalise` then `postprocess.upsample`: ReLU, per-map min–max (a range ≤ EPS·max(1,|max|)
    is degenerate: all zeros), bilinear resize with half-pixel centres (cv2's INTER_LINEAR), clipped to [0,1]."""
    from ..postprocess import EPS

    positive = b.op("Relu", maps)
    lo = b.reduce("ReduceMin", positive, [-2, -1], hint="lo")
    hi = b.reduce("ReduceMax", positive, [-2, -1], hint="hi")
    span = b.op("Sub", hi, lo, hint="span")
    flat = b.op("LessOrEqual", span, b.op("Mul", b.op("Max", b.op("Abs", hi), b.const(1.0)), b.const(EPS)),
                outputs=["degenerate"])
    safe = b.op("Where", b.op("Greater", span, b.const(0.0)), span, b.const(1.0))
    normalised = b.op("Where", flat, b.const(0.0), b.op("Div", b.op("Sub", positive, lo), safe), hint="normalised")
    rows = b.op("MatMul", b.const(bilinear_weights(size[0], h)), normalised, hint="rows")            # (N,H,w)
    resized = b.op("MatMul", rows, b.const(bilinear_weights(size[1], w).T), hint="resized")           # (N,H,W)
    b.op("Clip", resized, b.const(0.0), b.const(1.0), outputs=["saliency"])


def bilinear_weights(size: int, n: int) -> np.ndarray:
    """(size, n): row i holds the weights of the n input samples in output sample i of a bilinear resize with
    half-pixel centres, clamped at the edges (cv2's INTER_LINEAR, ONNX Resize ``half_pixel``): a resize of a map
    M is then Rₕ M R_wᵀ, two small products (OpenVINO's Interpolate to 224² took 160 µs, the products ~10)."""
    source = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0, n - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n - 1)
    fraction = source - low
    weights = np.zeros((size, n), np.float64)
    np.add.at(weights, (np.arange(size), low), 1 - fraction)
    np.add.at(weights, (np.arange(size), high), fraction)
    return weights.astype(np.float32)
