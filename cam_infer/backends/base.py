"""What every backend does the same way: input checks, chunking under a memory budget, shapes."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..bundle import Bundle
from ..bundle.positions import PRODUCTS
from ..errors import CamInferError
from ..numerics import zero_padded

DEFAULT_MEMORY_BUDGET_MB = 256


class Backend(ABC):
    """Runs ``features(x) -> (N,K,h,w)`` and ``head(a) -> (N,C)`` for any N, in order."""

    name = "backend"

    def __init__(self, bundle: Bundle, *, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
                 threads: int | None = None):
        if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, (int, float)) \
                or not memory_budget_mb > 0:
            raise CamInferError(f"memory_budget_mb must be a positive number (megabytes), not {memory_budget_mb!r}")
        if threads is not None and threads < 1:
            raise CamInferError("threads must be at least 1")
        self.bundle = bundle
        self.memory_budget = int(memory_budget_mb * 2**20)
        self.threads = threads
        self.runtime_calls = 0          # how many chunks went to the runtime (for tests and tuning)
        self.joins = False              # runs the bundle's joined graph for observe/forward (set by subclasses)
        self.products_in_pass = False   # `observe_products` runs (set by subclasses)
        self.maps_in_pass = False       # `explained_pass` runs (set by subclasses)

    @property
    def precision(self) -> str:
        """The precision the runtime computes in (``auto`` resolved where the runtime says): f32, bf16 or f16."""
        return "f32"

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """A preprocessed batch checked against the model's input shape and for values the model can score (a NaN
        or an infinity gives NaN scores, then a map captioned with a class it does not explain); float32,
        C-contiguous."""
        x = self._checked(x, self.bundle.input_shape, "input images")
        if not len(x):
            raise CamInferError("the batch is empty: give at least one image")
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            many = len(bad) > 1
            raise CamInferError(f"input image{'s' if many else ''} {', '.join(map(str, bad[:5]))}"
                                f"{' …' if len(bad) > 5 else ''} of the batch hold{'' if many else 's'} NaN or "
                                "infinite values: the model cannot score them")
        return x

    def features(self, x: np.ndarray) -> np.ndarray:
        """Images (N,3,H,W) float32 → target-layer activations (N,K,h,w) float32 (through the joined graph
        where the backend runs one: a second copy of the model's weights costs more than its head)."""
        if self.joins:
            return self.observe(x)[0]
        x = self._checked(x, self.bundle.input_shape, "input images")
        return self._shaped(self._chunked("features", x)[0], len(x), self.bundle.cut_shape, self.bundle.cut_field)

    def head(self, a: np.ndarray) -> np.ndarray:
        """Activations (N,K,h,w) float32 → class scores (N,C) float32 (logits or probabilities); a detector's
        (N, 4+C, anchors)."""
        a = self._checked(a, self.bundle.cut_shape, "activations")
        return self._shaped(self._chunked("head", a)[0], len(a), self.bundle.output_shape, "output")

    def branch(self, level: int, crops: np.ndarray) -> np.ndarray:
        """A detector's class-score branch of cut level `level` (`detection.branches`): crops (N, C, k, k) →
        class scores (N, classes, k, k)."""
        crops = np.ascontiguousarray(crops, dtype=np.float32)
        return self._chunked(f"branch_{level}", crops)[0].reshape(len(crops), -1, *crops.shape[2:])

    def observe(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A clean pass: (activations, outputs) of images x. One runtime call per chunk where the backend
        runs the bundle's joined graph (`bundle/joined.py`); else ``features`` then ``head``."""
        x = self._checked(x, self.bundle.input_shape, "input images")
        if not self.joins:
            a = self.features(x)
            return a, self.head(a)
        *parts, outputs = self._chunked("joined", x)
        a = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)     # a detector's cut maps, packed
        return (self._shaped(a, len(x), self.bundle.cut_shape, self.bundle.cut_field),
                self._shaped(outputs, len(x), self.bundle.output_shape, "output"))

    def observe_products(self, x: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A clean pass that also returns Recipro-CAM's closed-form product Aᵀ Wᵀ (N, h·w, C) of a GAP→linear
        head's weight W, computed in the same runtime call at the runtime's precision (`bundle/positions.py`):
        (activations, outputs, products). Only where `products_in_pass` (OpenVINO running the joined graph)."""
        x = self._checked(x, self.bundle.input_shape, "input images")
        self._add_products(weight)
        a, outputs, products = self._chunked(PRODUCTS, x)
        return (a.reshape(len(x), *self.bundle.cut_shape), outputs.reshape(len(x), *self.bundle.output_shape),
                products.reshape(len(x), -1, len(weight)))

    def explained_pass(self, role: str, graph, x: np.ndarray) -> list[np.ndarray]:
        """A clean pass through `graph` (an onnx.ModelProto: the joined model with a method's map among its
        outputs, `tasks.in_pass`), opened once as graph `role`: its outputs, each (N, -1). Only where
        `maps_in_pass`."""
        raise CamInferError(f"the {self.name} backend runs no maps in its clean pass")

    def _add_products(self, weight: np.ndarray) -> None:
        """Make graph `PRODUCTS`, the joined graph with the product as one more output, runnable (once)."""
        raise CamInferError(f"the {self.name} backend computes no closed-form product in its clean pass")

    def attention(self, x: np.ndarray, head_fusion: str = "mean") -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """A token model's clean pass with the attention probabilities of every block fused over its heads (mean,
        max or min), in one runtime call per chunk: (cut tokens, [(N,T,T) per block], outputs)."""
        x = self._checked(x, self.bundle.input_shape, "input images")
        cut, *attention, outputs = self._chunked(f"attention-{head_fusion}", x)
        return (cut.reshape(len(x), *self.bundle.cut_shape),
                [_per_image(a, len(x), shape[1:]) for a, (_, shape) in zip(attention, self.bundle.attention)],
                outputs.reshape(len(x), *self.bundle.output_shape))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The whole model: ``head(features(x))``."""
        if self.joins:
            return self.observe(x)[1]
        return self.head(self.features(x))

    def chunk_size(self, role: str, items: int | None = None) -> int:
        """Images per runtime call for `role` (on a call of `items` images): the fixed batch of fixed-batch
        graphs (the last chunk is padded), else what fits the budget."""
        if self.bundle.call_batch:
            return self.bundle.call_batch
        in_flight = max(1, self.parallel_requests())
        return max(1, self.memory_budget // (self.bundle.bytes_per_item(role) * in_flight))

    def parallel_requests(self) -> int:
        """How many chunks the runtime works on at once (each needs its own memory)."""
        return 1

    def _chunked(self, role: str, x: np.ndarray) -> list[np.ndarray]:
        """Every output of graph `role` on x, run chunk by chunk; each (N, -1)."""
        if len(x) == 0:
            return [np.zeros((0,), np.float32)] * self.output_count(role)
        size = self.chunk_size(role, len(x))
        chunks = [x[i:i + size] for i in range(0, len(x), size)]
        counts = [len(c) for c in chunks]
        if not self.bundle.dynamic_batch:            # a fixed batch: pad with zeros, drop their outputs
            chunks = [zero_padded(c, size) for c in chunks]
        per_chunk = self._run_chunks(role, self._count(chunks))
        if len(chunks) == 1:
            return [o.reshape(len(chunks[0]), -1)[:counts[0]] for o in per_chunk[0]]
        return [np.concatenate([outputs[k].reshape(len(c), -1)[:n] for outputs, c, n in zip(per_chunk, chunks, counts)])
                for k in range(len(per_chunk[0]))]

    def _run_chunks(self, role: str, chunks: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [self._run(role, c) for c in chunks]

    def output_count(self, role: str) -> int:
        """How many outputs graph `role` has: 1, except the joined graph's cut tensors + output."""
        if role.startswith("attention"):
            return 2 + len(self.bundle.attention)
        if role == PRODUCTS:
            return 3
        return 1 + (len(self.bundle.cut_levels or [None]) if role == "joined" else 0)

    def _count(self, chunks: list) -> list:
        self.runtime_calls += len(chunks)
        return chunks

    @abstractmethod
    def _run(self, role: str, x: np.ndarray) -> list[np.ndarray]:
        """Run graph `role` (``features``, ``head``, ``joined``, ``branch_<l>``) on one chunk; its outputs."""

    def _shaped(self, values: np.ndarray, n: int, shape: tuple, field: str) -> np.ndarray:
        """A graph's output for n images as bundle.json says one image's is, or one line where the graph disagrees
        (an edited bundle.json)."""
        if values.size != n * int(np.prod(shape)):
            raise CamInferError(f"bundle '{self.bundle.path}': its graph gives {values.size // max(n, 1)} values of "
                                f"'{field}' per image, and bundle.json's {field} shape {list(shape)} says "
                                f"{int(np.prod(shape))}; re-create the bundle with cam-infer split")
        return values.reshape(n, *shape)

    @staticmethod
    def _checked(x: np.ndarray, item_shape: tuple, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != len(item_shape) + 1 or tuple(x.shape[1:]) != tuple(item_shape):
            raise CamInferError(f"{what} must have shape (N, {', '.join(map(str, item_shape))}), not {x.shape}")
        if x.dtype.kind != "f":
            raise CamInferError(f"{what} must be floating point, not {x.dtype}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def describe(self) -> str:
        return self.name


def _per_image(attention: np.ndarray, n: int, shape) -> np.ndarray:
    """One block's fused attention as (N, T, T); attention within windows, whose leading axis counts the windows of
    every image, as (N, windows, t, t), so a method reading whole-image attention can see and refuse it."""
    if attention.size == n * int(np.prod(shape)):
        return attention.reshape(n, *shape)
    return attention.reshape(n, -1, *shape[-2:])          # the runtime may merge the windows into other axes
