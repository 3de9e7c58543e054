"""Every ONNX Runtime session and every OpenVINO compiled model of the package comes from here, set up from
one `RuntimeOptions`: threads, precision, spinning, provider, device, hint.

    session = onnxruntime_session("model.onnx", RuntimeOptions(threads=2))
    compiled = openvino_compiled("model.onnx", RuntimeOptions(device="CPU", hint="latency"))

Precision: ``f32`` (the default) computes in float32 on every runtime and device; ``bf16`` and ``f16`` ask the
device for them; ``auto`` leaves the runtime's own choice (OpenVINO: bf16 on CPUs with AVX-512 BF16 or AMX,
f16 on GPU and NPU; ONNX Runtime's CPU provider: float32). Checks of a split or of a closed form use
`FLOAT32`, whatever the explanations run at.
"""

from __future__ import annotations

import os
import queue
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache

from ..errors import CamInferError

PRECISIONS = ("f32", "bf16", "f16", "auto")
PROVIDERS = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider"}
SPINNING = {True: {"session.intra_op.allow_spinning": "1"},
            "during-run": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
            False: {"session.intra_op.allow_spinning": "0"}}
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
OPENVINO_PROVIDER_PRECISION = {"f32": "FP32", "f16": "FP16"}     # the OpenVINO execution provider's names


@dataclass(frozen=True)
class RuntimeOptions:
    """How a graph runs. ``threads``: intra-op threads (None: the runtime's default, every core);
    ``precision``: one of PRECISIONS; ``device``: CPU (ONNX Runtime's CPU provider), or an OpenVINO device
    (CPU, GPU, NPU, AUTO, ...). ONNX Runtime only: ``provider`` (cpu | openvino) and ``spinning`` (how idle
    intra-op threads wait: True busy-waits between runs too, ONNX Runtime's default and the fastest
    back-to-back runs; "during-run" busy-waits only while a run lasts, no futex wake-up per operator and
    the cores free once the run returns; False sleeps). OpenVINO only: ``hint`` (latency | throughput |
    cumulative_throughput; None: none) and ``cache_dir`` (compiled-model cache)."""

    threads: int | None = None
    precision: str = "f32"
    device: str = "CPU"
    provider: str = "cpu"
    spinning: "bool | str" = True
    hint: str | None = None
    cache_dir: str | None = None

    def __post_init__(self):
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise CamInferError(f"threads must be at least 1, not {self.threads!r}")
        if self.precision not in PRECISIONS:
            raise CamInferError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if not isinstance(self.spinning, (bool, str)) or self.spinning not in SPINNING:
            raise CamInferError(f"spinning must be True, False or 'during-run', not {self.spinning!r}")
        if self.hint is not None and self.hint not in HINTS:
            raise CamInferError(f"unknown OpenVINO hint '{self.hint}'; choose one of: {', '.join(HINTS)}")
        if self.provider not in PROVIDERS:
            raise CamInferError(f"unknown ONNX Runtime provider '{self.provider}'; choose one of: "
                                f"{', '.join(PROVIDERS)}")
        object.__setattr__(self, "device", self.device.upper())

    def but(self, **changes) -> "RuntimeOptions":
        """These options with `changes` (checked again)."""
        return replace(self, **changes)


FLOAT32 = RuntimeOptions()          # references and checks: float32 on the CPU, the runtime's default threads


# --- ONNX Runtime ---------------------------------------------------------------------------------------

def onnxruntime_session(model, runtime: RuntimeOptions = FLOAT32, *, quiet: bool = False, optimize: bool = True,
                        memory_arena: bool = True):
    """An ONNX Runtime session of `model` (a path, the serialized bytes or an ``onnx.ModelProto``). ``quiet``:
    the runtime logs nothing (the caller reports failures); ``optimize=False``: the graph runs as written
    (probes of intermediate tensors); ``memory_arena=False``: no arena kept between runs (one-off products)."""
    import onnxruntime as ort

    if runtime.provider == "cpu" and runtime.device != "CPU":
        raise CamInferError(f"ONNX Runtime's CPU provider cannot use device '{runtime.device}'; use device='CPU', "
                            "provider='openvino', or backend='openvino'")
    if PROVIDERS[runtime.provider] not in ort.get_available_providers():
        raise CamInferError(f"the ONNX Runtime provider '{runtime.provider}' is not installed here "
                            "(for OpenVINO: pip install onnxruntime-openvino)")
    options = ort.SessionOptions()
    options.log_severity_level = 4 if quiet else 3
    options.intra_op_num_threads = runtime.threads or 0
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = memory_arena
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for key, value in SPINNING[runtime.spinning].items():
        options.add_session_config_entry(key, value)
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    return ort.InferenceSession(model if isinstance(model, bytes) else os.fspath(model), options,
                                providers=_providers(runtime))


def _providers(runtime: RuntimeOptions) -> list:
    if runtime.provider == "cpu":
        if runtime.precision not in ("f32", "auto"):
            raise CamInferError(f"ONNX Runtime's CPU provider computes in float32; for precision "
                                f"'{runtime.precision}' use backend='openvino' (a half-precision file it computes "
                                "in float16 as it is, at --precision f32 or auto, and records so)")
        return ["CPUExecutionProvider"]
    options = {"device_type": runtime.device}
    if runtime.precision != "auto":
        if runtime.precision not in OPENVINO_PROVIDER_PRECISION:
            raise CamInferError(f"ONNX Runtime's OpenVINO provider has no precision '{runtime.precision}'; "
                                f"choose one of: {', '.join([*OPENVINO_PROVIDER_PRECISION, 'auto'])}")
        options["precision"] = OPENVINO_PROVIDER_PRECISION[runtime.precision]
    return [(PROVIDERS["openvino"], options), "CPUExecutionProvider"]


# --- OpenVINO -------------------------------------------------------------------------------------------

@cache
def openvino_core():
    """The process's one ``ov.Core`` (it reads and compiles from any thread; settings go per compiled model)."""
    import openvino as ov
    return ov.Core()


def openvino_model(model):
    """`model` (a path, the serialized ONNX bytes, an ``onnx.ModelProto`` or an ``ov.Model``) as an ``ov.Model``."""
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    if isinstance(model, bytes):
        return openvino_core().read_model(model, b"")
    if isinstance(model, (str, os.PathLike)):
        return openvino_core().read_model(os.fspath(model))
    return model


def openvino_compiled(model, runtime: RuntimeOptions = FLOAT32):
    """`model` (as `openvino_model` takes it) compiled for ``runtime.device`` with `openvino_config`."""
    return openvino_core().compile_model(openvino_model(model), openvino_device(runtime.device),
                                         openvino_config(runtime))


def openvino_config(runtime: RuntimeOptions) -> dict:
    """The compile properties that say `runtime` to OpenVINO."""
    config = {}
    if runtime.hint:
        config["PERFORMANCE_HINT"] = HINTS[runtime.hint]
    if runtime.threads:
        config["INFERENCE_NUM_THREADS"] = runtime.threads
        if runtime.device.startswith("CPU"):
            config["ENABLE_CPU_PINNING"] = False       # workers with a few threads each would all pin the first cores
    if runtime.precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = runtime.precision
    if runtime.cache_dir:
        config["CACHE_DIR"] = os.fspath(runtime.cache_dir)
    return config


def openvino_device(device: str) -> str:
    """`device` when OpenVINO has it here (or it is a virtual device such as AUTO), else a `CamInferError`."""
    if not isinstance(device, str):
        raise CamInferError(f"device is an OpenVINO device's name (CPU, GPU, NPU, AUTO), not {device!r}")
    device = device.upper()
    if device.split(":")[0] in VIRTUAL_DEVICES:
        return device
    available = list(openvino_core().available_devices)
    if device in available or any(a.split(".")[0] == device for a in available):
        return device
    raise CamInferError(f"OpenVINO device '{device}' is not available here; available: "
                        f"{', '.join(available) or 'none'} (or AUTO)")


def resolved_precision(runtime: RuntimeOptions, backend: str) -> str:
    """The precision `runtime` computes in on `backend` (openvino | onnxruntime). OpenVINO: what the device compiles
    at when asked (`device_precision`); ONNX Runtime's CPU provider: f32 (it refuses the others)."""
    if backend == "openvino":
        return device_precision(openvino_device(runtime.device), runtime.precision)
    if runtime.precision != "auto":
        return runtime.precision
    return "f32" if runtime.provider == "cpu" else "auto"


def computed_precision(runtime: RuntimeOptions, backend: str, bundle) -> str:
    """What `bundle` is computed in: `resolved_precision`, but f16 for a half-precision file on ONNX Runtime's CPU
    provider, which computes its float16 operations as they are (`Bundle.computes_in_float16`)."""
    at = resolved_precision(runtime, backend)
    if backend == "onnxruntime" and runtime.provider == "cpu" and at == "f32" and bundle.computes_in_float16:
        return "f16"
    return at


@cache
def device_precision(device: str, precision: str) -> str:
    """What OpenVINO computes in on `device` asked for `precision` (``auto``: the device's default), read from a
    one-op model compiled there: a device may run another format than the one asked (this CPU runs f16 as bf16), and
    a virtual device (AUTO, MULTI) reports none itself, so the device it compiled on is asked."""
    import numpy as np
    import openvino as ov
    from openvino import opset13

    x = opset13.parameter([1], np.float32)
    config = {} if precision == "auto" else {"INFERENCE_PRECISION_HINT": precision}
    try:
        compiled = openvino_core().compile_model(ov.Model([opset13.relu(x)], [x]), device, config)
    except RuntimeError as exc:
        raise CamInferError(f"OpenVINO cannot compile for {device} at {precision}: "
                            f"{' '.join(str(exc).split())[:300]}") from None
    return compiled_precision(compiled, precision)


def compiled_precision(compiled, precision: str) -> str:
    """What a compiled OpenVINO model computes in: its ``INFERENCE_PRECISION_HINT``; on a virtual device that does not
    report one, that of the one device it runs on (`device_precision`); the `precision` asked only where no device
    says."""
    try:
        return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except RuntimeError:
        pass
    try:
        devices = list(compiled.get_property("EXECUTION_DEVICES"))
    except RuntimeError:
        devices = []
    if len(devices) == 1 and devices[0].split(":")[0].split(".")[0] not in VIRTUAL_DEVICES:
        return device_precision(devices[0], precision)
    return precision


def precision_note(asked: str, ran: str, device: str) -> None:
    """A `PrecisionWarning` where the device runs another precision than the one asked (not for ``auto``)."""
    if asked != "auto" and ran != asked:
        import warnings

        from ..errors import PrecisionWarning
        warnings.warn(f"OpenVINO on {device} runs {ran}, not {asked} (the device does not support it): the maps and "
                      f"records are at {ran}", PrecisionWarning, stacklevel=3)


# --- sharing the cores and the sessions -----------------------------------------------------------------

def leave_the_cores_to_the_runtime() -> None:
    """Once, in a process whose cores the runtimes own (the CLI, a folder run's worker, the server): NumPy's
    BLAS runs one thread from then on. The methods' small dense products (Eigen-CAM's Gram matrix, the closed
    forms) gain nothing from more, and an idle BLAS pool that keeps spinning after a product slowed the
    runtime's next pass (MobileNetV2, 2 cores: Ablation-CAM's closed form 1.25–1.5× slower with two BLAS
    threads; the int8 MobileNet V1's Recipro-CAM closed form on ONNX Runtime 28 against 2.8 ms). A library never
    changes this for its caller, not even for one call: an application that wants it calls this itself."""
    import numpy  # noqa: F401  (threadpoolctl limits the libraries already loaded)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")



class Lender:
    """Objects made by `make` when first needed, each lent to one borrower at a time: as many are made as were
    ever borrowed at once."""

    def __init__(self, make):
        self._make = make
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    @contextmanager
    def borrow(self):
        try:
            item = self._idle.get_nowait()
        except queue.Empty:
            item = self._make()
        try:
            yield item
        finally:
            self._idle.put(item)


__all__ = ["FLOAT32", "PRECISIONS", "Lender", "RuntimeOptions", "leave_the_cores_to_the_runtime", "onnxruntime_session",
           "openvino_compiled", "openvino_config", "openvino_core", "openvino_device", "openvino_model",
           "resolved_precision", "device_precision", "compiled_precision", "precision_note"]
