"""Classification: the targets are classes, chosen from the clean outputs (top-1, top-k) or named; a target's
score is its class probability; a method call explains the whole batch, one row per (image, class)."""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from functools import partial

import numpy as np

from ..backends.sessions import FLOAT32, RuntimeOptions, onnxruntime_session
from ..errors import CamInferError, ClassAgnosticWarning
from ..explanation import Explanation
from ..numerics import FLOAT16_TOLERANCE, softmax, zero_padded
from ..postprocess import normalise, upsample
from .base import Task, class_index


class ClassificationTask(Task):
    name = "classification"
    requests = frozenset({"top_classes", "enhance", "enhance_options", "finer", "upsampled", "gradients"})

    def open(self) -> None:
        from .in_pass import MapsInPass
        self.in_pass = MapsInPass(self.explainer)

    def linear_head(self):
        """The head as global pooling + linear, verified against a float32 run of the head graph on random
        activations (the closed forms of CAM, Recipro-CAM and Ablation-CAM); None when it is not one. Exact
        whatever precision the explanations run at: against a bf16 head the closed form differs by bf16's
        rounding (~2^-8) and a true GAP→linear head would be refused. A head whose graph holds W and b in float16
        (an fp16 model) is checked within `FLOAT16_TOLERANCE`: its maps then differ from the graph's by its own
        rounding. A quantized head (QDQ, QOperator, or an IR's FakeQuantize ops) is read as the float graph it rounds
        and checked within its output's quantization steps (`_within_steps`)."""
        if self.bundle.tokens is not None:          # a token model's head: methods run the head graph
            return None
        head, run = self._head_and_reference()
        if head is None:
            return None
        if head.step:
            return self._checked(head) if self._within_steps(head, run) else None
        a = np.random.default_rng(0).standard_normal((2, *self.bundle.activation_shape)).astype(np.float32)
        # a head read by running it is also checked on signed activations (a ReLU after the pooling would pass
        # on positive ones only)
        for sample in (np.abs(a), a) if head.source.probed else (np.abs(a),):
            expected = run(sample).reshape(len(sample), -1)
            got = head.logits(sample.mean(axis=(2, 3)))
            if self.bundle.output_kind == "probabilities":
                got = softmax(got)
            scale = max(1.0, float(np.abs(expected).max()))
            tolerance = FLOAT16_TOLERANCE if head.float16 else 1e-4
            if not np.allclose(got, expected, atol=tolerance * scale, rtol=tolerance):
                return None
        return self._checked(head)

    def _checked(self, head):
        """A verified head, its large products run by ONNX Runtime on the runtime's threads."""
        products = RuntimeOptions(threads=self.explainer.backend.threads, spinning="during-run")
        return replace(head, open_session=partial(onnxruntime_session, runtime=products, memory_arena=False))

    def _within_steps(self, head, run) -> bool:
        """A quantized head's float reading against the head graph run on the cut of four real-range inputs (random
        images through the bundle's preprocessing: activations out of the range its quantizers were calibrated for
        would be clipped): within 2 steps of the logits' quantization, the mean error within half a step, as a
        segmenter's quantized tail is accepted (`bundle.linear_tail.read_linear_tail`). A head that ends in a float
        Softmax after its last DequantizeLinear is compared in logits: the log of its probabilities and the
        reading's logits, each row's mean set apart (softmax drops it); in probabilities, 2 steps of logits would
        let a head of zeros pass among 1 001 classes."""
        from ..bundle.qdq_tail import within_steps
        from ..bundle.verify import random_images
        a, _ = self.explainer.backend.observe(random_images(self.bundle.preprocessing, 4, seed=5))
        expected = run(np.asarray(a, np.float32)).reshape(len(a), -1)
        got = head.logits(np.asarray(a, np.float32).mean(axis=(2, 3)))
        if self.bundle.output_kind == "probabilities":    # compared as logits, each row's mean set apart
            if not (expected > 0).all():
                return False                              # probabilities rounded to 0: no logits to compare
            expected, got = np.log(expected), got.astype(np.float64)
            expected, got = (v - v.mean(axis=1, keepdims=True) for v in (expected, got))
        return within_steps(np.abs(got - expected), head.step)

    def _head_and_reference(self):
        """The head read as GAP → linear (None when it is not one) and a float32 run of the head graph to check it
        against: ONNX Runtime on an ONNX head, read from its graph (`read_linear_head`); OpenVINO on an IR head,
        read by running it (`probed_linear_head`, logits only: a head ending in a softmax is not probed; an int8 head
        through its float graph, `bundle.openvino_head`). A head of a fixed batch runs in zero-padded calls of that
        batch."""
        batch = self.bundle.call_batch
        if self.bundle.graph_format == "onnx":
            import onnx

            from ..bundle.head import read_linear_head
            head = read_linear_head(onnx.load(self.bundle.head_path), self.bundle.activation_shape[0],
                                    self.bundle.activation_shape[1:])
            if head is None:
                return None, None
            session = onnxruntime_session(self.bundle.head_path, FLOAT32, quiet=True, memory_arena=False)
            name = session.get_inputs()[0].name
            return head, partial(_in_batches, lambda a: session.run(None, {name: a})[0], batch)
        if self.bundle.output_kind != "logits":
            return None, None
        from ..backends.sessions import openvino_compiled, openvino_model
        from ..bundle.head import probed_linear_head
        from ..bundle.openvino_head import float_head, rounds
        from ..bundle.openvino_split import logits_step
        from ..bundle.verify import runtime_message
        model = openvino_model(self.bundle.head_path)
        compiled = openvino_compiled(model, FLOAT32)
        run = partial(_in_batches, lambda a: compiled(a)[0], batch)
        probed, step = run, 0.0
        if rounds(model):                   # an int8 head: its float graph probed, checked within its steps
            floated, step = float_head(model), logits_step(model)
            if floated is None or not step:
                return None, None
            float_compiled = openvino_compiled(floated, FLOAT32)
            probed = partial(_in_batches, lambda a: float_compiled(a)[0], batch)
        try:
            return replace(probed_linear_head(probed, self.bundle.activation_shape), step=step), run
        except RuntimeError as exc:         # OpenVINO cannot run the head on probes: no closed forms, say why
            warnings.warn(f"the head graph does not run on probe activations ({runtime_message(exc, 300)}); "
                          f"CAM and the closed forms are off", stacklevel=3)
            return None, None

    def observe_for(self, spec, x: np.ndarray, options: dict | None = None):
        """`Task.observe_for`; for Recipro-CAM's closed form, the clean pass also computes its product in the
        runtime's call (`Backend.observe_products`), the cut then given as (activations, products)."""
        if not self._products_in_pass(spec, options or {}):
            return super().observe_for(spec, x, options)
        a, outputs, products = self.explainer.backend.observe_products(x, self.explainer.linear_head.weight)
        return (a, products), outputs

    def _products_in_pass(self, spec, options: dict) -> bool:
        return (spec.name == "recipro" and options.get("closed_form", True) and self.explainer.linear_head is not None
                and self.explainer.backend.products_in_pass and self.bundle.tokens is None)

    def explained_in_pass(self, spec, x, request, options, originals, names, start) -> Explanation | None:
        """The Explanation computed inside the clean pass (`tasks.in_pass`) where it applies, else None."""
        if not self.in_pass.applies(spec.name, len(x), request, options):
            return None
        out = self.in_pass.run(spec.name, x)
        if out is None:
            return None
        n, shapes = len(x), self.in_pass.shapes
        return Explanation(spec.name, out["saliency"].reshape(n, *shapes["saliency"]),
                           out["map"].reshape(n, *shapes["map"]), out["class"].reshape(n).astype(np.int64),
                           out["score"].reshape(n), out["degenerate"].reshape(n), (time.perf_counter() - start) * 1000,
                           {}, labels=self.bundle.labels, images=originals, names=names,
                           preprocessing=self.bundle.preprocessing, outputs=out["scores"].reshape(n, *shapes["scores"]),
                           class_agnostic=self.class_agnostic(spec))

    def run_method(self, spec, ctx, targets, options: dict) -> np.ndarray:
        return spec.implementation(self.name)(ctx, **options)

    def class_agnostic(self, spec) -> bool:
        """`Task.class_agnostic`: by nature (activation, eigen, entropy), or at this cut (Grad Entropy-CAM behind a
        GAP→linear head, whose gradients are constant in space)."""
        return not spec.class_specific or (spec.agnostic_on_linear_head and self.explainer.linear_head is not None)

    def request_for(self, spec, n: int, request: dict) -> dict:
        """A class-agnostic method gives one map per image: a class asked of it is still checked, then dropped
        with a `ClassAgnosticWarning`."""
        if not self.class_agnostic(spec) or (request["target"] is None and request["top_classes"] is None):
            return request
        self.targets_for(request["target"], np.zeros((n, self.bundle.num_classes)), request["top_classes"])
        from ..methods.registry import class_agnostic_note
        warnings.warn(class_agnostic_note([spec.name]), ClassAgnosticWarning, stacklevel=3)
        return {**request, "target": None, "top_classes": None}

    def contexts(self, spec, x, activations, outputs, request: dict, originals):
        """One context for the batch, one row per (image, class): the feature pass is not repeated."""
        from ..methods import Context

        targets = self.targets_for(request["target"], outputs, request["top_classes"])
        activations, beside = activations if isinstance(activations, tuple) else (activations, None)
        attention, products = (None, beside) if isinstance(beside, np.ndarray) else (beside, None)
        activations, prefix = self.grid_of(activations)
        k = targets.shape[1] if targets.ndim == 2 else None
        if k is not None:
            x, activations, outputs = (np.repeat(v, k, axis=0) for v in (x, activations, outputs))
            prefix = None if prefix is None else np.repeat(prefix, k, axis=0)
            attention = None if attention is None else [np.repeat(a, k, axis=0) for a in attention]
            products = None if products is None else np.repeat(products, k, axis=0)
        ctx = Context(x=x, activations=activations, targets=targets.reshape(-1), outputs=outputs,
                      backend=self.explainer.backend, bundle=self.bundle, linear_head=self.explainer.linear_head,
                      prefix=prefix, attention=attention, position_products=products)
        objective = self._finer(ctx, spec, request["finer"])
        if spec.needs == "gradients":
            ctx.gradients = self._gradients(spec.name, x, activations, ctx.targets, objective, prefix)
            ctx.gradient_source = lambda xs, a, t: self._gradients(spec.name, xs, a, t, objective)
        return [(ctx, targets)]

    def _gradients(self, method: str, x, activations, targets, objective=None, prefix=None) -> np.ndarray:
        """∂y/∂A at the cut as the methods see it. On a token model the head is differentiated at its input, the
        tokens (prefix tokens included: images `x`'s own where `prefix` is not given), and the gradients of the
        patch tokens are viewed as the grid — what pytorch-grad-cam's reshape transforms do."""
        gradients = self.explainer.gradients
        if gradients is None:
            from ..gradients import require_torch
            require_torch()
            raise CamInferError(f"method '{method}' needs gradients: open the Explainer with gradients='torch' "
                                "(or use Explainer.from_torch with a PyTorch model)")
        layout = self.bundle.tokens
        if layout is not None:
            if prefix is None:
                prefix = layout.split(self.explainer.backend.features(x))[1]
            activations = layout.join(activations, prefix)
        result = gradients(x, activations, targets, objective) if objective is not None else \
            gradients(x, activations, targets)
        return result if layout is None else layout.split(result)[0]

    def explanation(self, spec, method, jobs, maps, request, options, originals, names, model_outputs, start):
        (ctx, targets), = jobs
        flat = ctx.targets
        maps = maps[0].astype(np.float32)
        normalised, degenerate = normalise(maps)
        saliency = upsample(normalised, self.bundle.input_shape[1:]) if request["upsampled"] else normalised
        probabilities = ctx.probabilities(ctx.outputs)
        scores = probabilities[np.arange(len(flat)), flat].astype(np.float32)
        if targets.ndim == 2:
            maps, saliency, scores, degenerate = (v.reshape(*targets.shape, *v.shape[1:])
                                                  for v in (maps, saliency, scores, degenerate))
        return Explanation(method, saliency, maps, targets, scores, degenerate, (time.perf_counter() - start) * 1000,
                           {**options, **({"finer": vars(ctx.finer)} if ctx.finer else {})}, labels=self.bundle.labels,
                           images=originals, names=names, preprocessing=self.bundle.preprocessing,
                           outputs=model_outputs, class_agnostic=self.class_agnostic(spec))

    def enhanced(self, x, originals, names, method, request, options, start):
        """An enhancer around the method: its fused saliency, the base explanation's classes and scores.
        `maps` then holds the fused map at input resolution (there is no low-resolution map)."""
        from ..enhancers import get_enhancer

        if request["top_classes"] is not None:
            raise CamInferError("enhancers explain one class per image; give target, not top_classes")
        enhance, enhance_options = request["enhance"], request["enhance_options"] or {}
        options = {**options, **({} if request["finer"] is None else {"finer": request["finer"]})}
        fused, base = get_enhancer(enhance)(self.explainer, x, method, request["target"], options, **enhance_options)
        span = fused.max(axis=(1, 2)) - fused.min(axis=(1, 2))
        degenerate = span <= 1e-7                   # the fused maps are means of [0,1] maps: not re-normalised
        return replace(base, method=f"{method}+{enhance}", saliency=fused, maps=fused, degenerate=degenerate,
                       milliseconds=(time.perf_counter() - start) * 1000,
                       options={**options, "enhance": enhance, **enhance_options},
                       images=originals, names=names)

    def _finer(self, ctx, chosen, finer):
        """Set up Finer-CAM on the context (its reference classes, from the clean logits); returns the torch
        objective for the gradient methods, or None."""
        from ..errors import MethodNotApplicable
        from ..finer import Finer

        finer = Finer.of(finer)
        if finer is None:
            return None
        if not chosen.class_specific:
            raise MethodNotApplicable(f"method '{chosen.name}' does not depend on the class: finer does not apply")
        if self.bundle.output_kind != "logits":
            raise CamInferError("finer scores logits, and this model ends in a softmax (its head returns "
                                "probabilities)")
        ctx.finer = finer
        ctx.finer_refs = np.stack([finer.references_for(row, int(c)) for row, c in zip(ctx.outputs, ctx.targets)])
        targets, refs = ctx.targets, ctx.finer_refs
        return lambda torch, scores: finer.torch_objective(torch, scores, targets, refs)

    def targets_for(self, target, outputs: np.ndarray, top_classes: int | None = None) -> np.ndarray:
        """The classes to explain: (N,) for one class per image, (N,k) for several (``top_classes``, or one
        list per image, ``[[243, 281], ...]``, all of the same length)."""
        n, classes = outputs.shape
        if top_classes is not None:
            if target is not None:
                raise CamInferError("give either target or top_classes, not both")
            if isinstance(top_classes, bool) or not isinstance(top_classes, (int, np.integer)) \
                    or not 1 <= top_classes <= classes:
                raise CamInferError(f"top_classes must be an integer from 1 to {classes}, not {top_classes!r}")
            return np.argsort(-outputs, axis=1, kind="stable")[:, :top_classes].astype(np.int64)
        if target is None:
            return outputs.argmax(axis=1)
        if isinstance(target, np.ndarray) and target.ndim == 0:       # what outputs.argmax() returns: one class
            target = target.item()
        if isinstance(target, (str, bytes)) or not isinstance(target, (list, tuple, np.ndarray)):
            return np.array([self.class_id(target, classes)] * n, np.int64)
        values = list(target)
        if len(values) != n:
            raise CamInferError(f"{len(values)} targets given for {n} images")
        if values and all(isinstance(v, (list, tuple, np.ndarray)) for v in values):
            if len({len(v) for v in values}) != 1 or not len(values[0]):
                raise CamInferError("several classes per image: give each image a list of the same length, "
                                    "e.g. target=[[243, 281], [1, 2]]")
            return np.array([[self.class_id(c, classes) for c in v] for v in values], np.int64)
        return np.array([self.class_id(v, classes) for v in values], np.int64)

    def class_id(self, value, classes: int) -> int:
        return class_index(value, self.bundle.labels, classes)


def _in_batches(run, batch: int | None, a: np.ndarray) -> np.ndarray:
    """run(a) as (N, C): in one call, or in zero-padded calls of a graph's fixed batch."""
    if batch is None:
        return run(a).reshape(len(a), -1)
    rows = []
    for start in range(0, len(a), batch):
        chunk = a[start:start + batch]
        rows.append(run(zero_padded(chunk, batch)).reshape(batch, -1)[:len(chunk)])
    return np.concatenate(rows)
