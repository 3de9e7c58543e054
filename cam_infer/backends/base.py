"""What every backend does the same way: input checks, chunking under a memory budget, shapes."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..bundle import Bundle
from ..errors import CamInferError

DEFAULT_MEMORY_BUDGET_MB = 256


class Backend(ABC):
    """Runs ``features(x) -> (N,K,h,w)`` and ``head(a) -> (N,C)`` for any N, in order."""

    name = "backend"

    def __init__(self, bundle: Bundle, *, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
                 threads: int | None = None):
        if memory_budget_mb <= 0:
            raise CamInferError("memory budget must be positive (megabytes)")
        if threads is not None and threads < 1:
            raise CamInferError("threads must be at least 1")
        self.bundle = bundle
        self.memory_budget = int(memory_budget_mb * 2**20)
        self.threads = threads
        self.runtime_calls = 0          # how many chunks went to the runtime (for tests and tuning)

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """A preprocessed batch checked against the model's input shape; float32, C-contiguous."""
        return self._checked(x, self.bundle.input_shape, "input images")

    def features(self, x: np.ndarray) -> np.ndarray:
        """Images (N,3,H,W) float32 → target-layer activations (N,K,h,w) float32."""
        x = self._checked(x, self.bundle.input_shape, "input images")
        return self._chunked("features", x).reshape(len(x), *self.bundle.activation_shape)

    def head(self, a: np.ndarray) -> np.ndarray:
        """Activations (N,K,h,w) float32 → class scores (N,C) float32 (logits or probabilities); a detector's
        (N, 4+C, anchors)."""
        a = self._checked(a, self.bundle.activation_shape, "activations")
        return self._chunked("head", a).reshape(len(a), *self.bundle.output_shape)

    def branch(self, level: int, crops: np.ndarray) -> np.ndarray:
        """A detector's class-score branch of cut level `level` (`detection.branches`): crops (N, C, k, k) →
        class scores (N, classes, k, k)."""
        crops = np.ascontiguousarray(crops, dtype=np.float32)
        return self._chunked(f"branch_{level}", crops).reshape(len(crops), -1, *crops.shape[2:])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The whole model: ``head(features(x))``."""
        return self.head(self.features(x))

    def chunk_size(self, role: str) -> int:
        """Images per runtime call for `role`: the fixed batch of fixed-batch graphs (the last chunk is
        padded), else what fits the budget."""
        if not self.bundle.dynamic_batch:
            return self.bundle.fixed_batch
        in_flight = max(1, self.parallel_requests())
        return max(1, self.memory_budget // (self.bundle.bytes_per_item(role) * in_flight))

    def parallel_requests(self) -> int:
        """How many chunks the runtime works on at once (each needs its own memory)."""
        return 1

    def _chunked(self, role: str, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0,), np.float32)
        size = self.chunk_size(role)
        chunks = [x[i:i + size] for i in range(0, len(x), size)]
        counts = [len(c) for c in chunks]
        if not self.bundle.dynamic_batch:            # a fixed batch: pad with zeros, drop their outputs
            chunks = [c if len(c) == size else np.concatenate([c, np.zeros((size - len(c), *c.shape[1:]), c.dtype)])
                      for c in chunks]
        outputs = self._run_chunks(role, self._count(chunks))
        return np.concatenate([o.reshape(len(c), -1)[:n] for o, c, n in zip(outputs, chunks, counts)])

    def _run_chunks(self, role: str, chunks: list[np.ndarray]) -> list[np.ndarray]:
        return [self._run(role, c) for c in chunks]

    def _count(self, chunks: list) -> list:
        self.runtime_calls += len(chunks)
        return chunks

    @abstractmethod
    def _run(self, role: str, x: np.ndarray) -> np.ndarray:
        """Run graph `role` (``features`` or ``head``) on one chunk; return its first output."""

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
