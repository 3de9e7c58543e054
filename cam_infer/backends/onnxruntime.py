"""ONNX Runtime: the CPU execution provider, or OpenVINO's execution provider where installed."""

from __future__ import annotations

import threading

import numpy as np

from ..bundle import Bundle
from .base import Backend
from .sessions import RuntimeOptions, computed_precision, onnxruntime_session


class OnnxRuntimeBackend(Backend):
    """Options: ``provider`` (``cpu`` | ``openvino``), ``device`` (CPU; with the OpenVINO
    provider also GPU/NPU), ``threads``, ``precision`` (``f32``; ``auto``; with the OpenVINO provider also
    ``f16``), ``memory_budget_mb``, ``spinning`` (True, False or "during-run": how idle worker threads wait,
    `sessions.RuntimeOptions`). Sessions run from any number of threads at once (ONNX Runtime's ``run`` is
    thread-safe)."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, provider: str = "cpu", device: str = "CPU", threads: int | None = None,
                 memory_budget_mb: float = 256, spinning: "bool | str" = True, precision: str = "f32"):
        super().__init__(bundle, memory_budget_mb=memory_budget_mb, threads=threads)
        self.runtime = RuntimeOptions(threads=threads, precision=precision, device=device, provider=provider,
                                      spinning=spinning)
        self.provider, self.device = provider, self.runtime.device
        self._sessions: dict = {}
        self._names: dict = {}
        self._opening = threading.Lock()
        # A quantized head runs on its own: in one graph with the cut exposed, ONNX Runtime leaves its Gemm in
        # float instead of fusing it into QGemm, whose u8s8 products saturate on CPUs without VNNI, so the
        # joined graph's scores would differ from the file's there (by up to 7 output steps on a tf2onnx int8
        # MobileNetV2 on an AVX2 CPU), while the head graph alone computes what the file computes.
        self.joins = bundle.graph_format == "onnx" and not bundle.quantized_head
        if self.joins:
            with bundle.joined_file() as source:
                self._session("joined", source)
        self._session("head")

    def _session(self, role: str, source: "str | bytes | None" = None):
        """The session of graph `role`, made once; further graphs (a detector's branches) on first use."""
        if role not in self._sessions:
            with self._opening:
                if role not in self._sessions:
                    if role.startswith("attention-") and source is None:     # attention-<head fusion>
                        source = self.bundle.attention_model(role.split("-")[1]).SerializeToString()
                    s = onnxruntime_session(source or self.bundle.graph_path(role), self.runtime)
                    self._names[role] = s.get_inputs()[0].name
                    self._sessions[role] = s
        return self._sessions[role]

    def _run(self, role: str, x: np.ndarray) -> list[np.ndarray]:
        return self._session(role).run(None, {self._names[role]: x})

    @property
    def precision(self) -> str:
        """f32 on the CPU provider (f16 for a half-precision file, which it computes as it is); the OpenVINO
        provider's precision as asked (``auto``: its own choice)."""
        return computed_precision(self.runtime, self.name, self.bundle)

    def describe(self) -> str:
        return f"onnxruntime {self.provider}/{self.device} ({self.precision})"
