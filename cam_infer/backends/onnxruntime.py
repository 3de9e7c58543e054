"""ONNX Runtime: the CPU execution provider, or OpenVINO's execution provider where installed."""

from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..errors import CamInferError
from .base import Backend

PROVIDERS = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


class OnnxRuntimeBackend(Backend):
    """Options: ``provider`` (``cpu`` | ``openvino``), ``device`` (CPU; with the OpenVINO
    provider also GPU/NPU), ``threads``, ``memory_budget_mb``, ``spinning`` (let idle worker
    threads busy-wait; off gives the cores back to other work sooner)."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, provider: str = "cpu", device: str = "CPU", threads: int | None = None,
                 memory_budget_mb: float = 256, spinning: bool = True):
        super().__init__(bundle, memory_budget_mb=memory_budget_mb, threads=threads)
        import onnxruntime as ort

        if provider not in PROVIDERS:
            raise CamInferError(f"unknown ONNX Runtime provider '{provider}'; choose one of: {', '.join(PROVIDERS)}")
        if provider == "cpu" and device.upper() != "CPU":
            raise CamInferError(f"ONNX Runtime's CPU provider cannot use device '{device}'; use device='CPU', "
                                "provider='openvino', or backend='openvino'")
        if PROVIDERS[provider] not in ort.get_available_providers():
            raise CamInferError(f"the ONNX Runtime provider '{provider}' is not installed here "
                                "(for OpenVINO: pip install onnxruntime-openvino)")
        providers = ([(PROVIDERS[provider], {"device_type": device.upper()})] if provider == "openvino" else []) + \
            ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.provider, self.device = provider, device.upper()
        self._options, self._providers = options, providers
        self._sessions: dict = {}
        self._names: dict = {}
        self.joins = bundle.graph_format == "onnx"
        if self.joins:
            with bundle.joined_file() as source:
                self._session("joined", source)
        self._session("head")

    def _session(self, role: str, source: "str | bytes | None" = None):
        """The session of graph `role`, made once; further graphs (a detector's branches) on first use."""
        if role not in self._sessions:
            import onnxruntime as ort
            s = ort.InferenceSession(source or str(self.bundle.graph_path(role)), self._options,
                                     providers=self._providers)
            self._sessions[role] = s
            self._names[role] = s.get_inputs()[0].name
        return self._sessions[role]

    def _run(self, role: str, x: np.ndarray) -> list[np.ndarray]:
        return self._session(role).run(None, {self._names[role]: x})

    def describe(self) -> str:
        return f"onnxruntime {self.provider}/{self.device}"
