"""ONNX Runtime: the CPU execution provider, or OpenVINO's execution provider where installed."""

from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..errors import CamInferError
from .base import Backend

PROVIDERS = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider"}
SPINNING = {True: {"session.intra_op.allow_spinning": "1"},
            "during-run": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
            False: {"session.intra_op.allow_spinning": "0"}}


def set_spinning(options, spinning: "bool | str") -> None:
    """How idle intra-op threads wait for work: busy-waiting between runs too (True, ONNX Runtime's default:
    the fastest back-to-back runs, the cores kept busy), busy-waiting only while a run lasts ("during-run":
    no futex wake-up per operator, the cores free once the run returns), or sleeping (False)."""
    if not isinstance(spinning, (bool, str)) or spinning not in SPINNING:
        raise CamInferError(f"spinning must be True, False or 'during-run', not {spinning!r}")
    for key, value in SPINNING[spinning].items():
        options.add_session_config_entry(key, value)


class OnnxRuntimeBackend(Backend):
    """Options: ``provider`` (``cpu`` | ``openvino``), ``device`` (CPU; with the OpenVINO
    provider also GPU/NPU), ``threads``, ``memory_budget_mb``, ``spinning`` (True, False or
    "during-run": how idle worker threads wait, `set_spinning`)."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, provider: str = "cpu", device: str = "CPU", threads: int | None = None,
                 memory_budget_mb: float = 256, spinning: "bool | str" = True):
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
        set_spinning(options, spinning)
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
