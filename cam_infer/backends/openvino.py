"""OpenVINO: devices CPU, GPU, NPU, AUTO/MULTI/HETERO; latency or throughput hints; model cache;
asynchronous infer requests when a batch is cut into several chunks."""

from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..errors import CamInferError
from .base import Backend

HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
SINGLE = 1                                      # the batch that gets its own static-shape compiled copy
BOTH_COPIES_BYTES = 64 * 2**20                  # graphs up to this size keep that copy beside the dynamic one


class OpenVINOBackend(Backend):
    """Options: ``device``, ``hint`` (latency | throughput | cumulative_throughput), ``threads``,
    ``cache_dir`` (compiled-model cache), ``precision`` (``f32`` keeps CPU inference in float32 so
    results match ONNX Runtime; ``None`` lets OpenVINO choose, e.g. bf16 on CPUs that have it),
    ``memory_budget_mb``."""

    name = "openvino"

    def __init__(self, bundle: Bundle, *, device: str = "CPU", hint: str = "latency", threads: int | None = None,
                 cache_dir: str | None = None, precision: str | None = "f32", memory_budget_mb: float = 256):
        super().__init__(bundle, memory_budget_mb=memory_budget_mb, threads=threads)
        import openvino as ov

        if hint not in HINTS:
            raise CamInferError(f"unknown OpenVINO hint '{hint}'; choose one of: {', '.join(HINTS)}")
        core = ov.Core()
        self._core = core
        self.device = _checked_device(core, device)
        config = {"PERFORMANCE_HINT": HINTS[hint]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
            if self.device.startswith("CPU"):
                config["ENABLE_CPU_PINNING"] = False   # workers with a few threads each would all pin the first cores
        if precision and self.device.startswith("CPU"):
            config["INFERENCE_PRECISION_HINT"] = precision
        if cache_dir:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        self._config = config
        self._compiled: dict = {}
        self._requests: dict = {}
        self._queues: dict = {}
        self._joined = None                                             # the joined ov.Model, read once
        self.joins = bundle.graph_format == "onnx"
        self.hint = hint
        self._clean = "joined" if self.joins else "features"           # the graph of the clean pass
        self._single = bundle.dynamic_batch                             # batch 1 on a static copy, for now
        self._both = sum(p.stat().st_size for p in (bundle.features_path, bundle.head_path)) <= BOTH_COPIES_BYTES
        self._compile(*self._key(self._clean, SINGLE))                 # compile errors show here, at once
        self._compile("head")
        self._parallel = self._optimal_requests()

    def _compile(self, role: str, batch: int | None = None):
        """Graph `role` compiled once for `batch` (None: the graph's own batch) with its infer request. On a
        bundle with a dynamic batch, the clean pass runs batches of one on a copy compiled for that static
        shape (OpenVINO's CPU plugin is 4–8 % faster on it: YOLOv8n, MobileNetV2) and other batches on the
        dynamic graph; for a model over BOTH_COPIES_BYTES the first larger batch replaces the static copy
        (its compiled weights cost ~60 % of the model's again: ResNet-50)."""
        key = (role, batch)
        if key not in self._compiled:
            try:
                model = self._model(role)
                if batch is not None:
                    model = model.clone()                           # shares the weights
                    shape = model.input(0).get_partial_shape()
                    shape[0] = batch
                    model.reshape({model.input(0): shape})
                self._compiled[key] = self._core.compile_model(model, self.device, self._config)
            except RuntimeError as exc:
                raise CamInferError(f"OpenVINO cannot compile this bundle for {self.device}: "
                                    f"{str(exc).strip().splitlines()[0][:300]}") from None
            self._requests[key] = self._compiled[key].create_infer_request()
        return self._compiled[key]

    def _model(self, role: str):
        if role != "joined":
            return self._core.read_model(str(self.bundle.graph_path(role)))
        if self._joined is None:
            with self.bundle.joined_file() as source:
                self._joined = self._core.read_model(source)
        return self._joined

    def _key(self, role: str, batch: int) -> tuple[str, int | None]:
        if role != self._clean or not self._single:
            return role, None
        if batch == SINGLE:
            return role, SINGLE
        if not self._both:                                  # a larger batch: the dynamic graph alone from now on
            self._single = False
            for table in (self._compiled, self._requests, self._queues):
                table.pop((role, SINGLE), None)
        return role, None

    def compiled_property(self, name: str, role: str = "head"):
        """A property of the compiled `role` graph (e.g. ``INFERENCE_NUM_THREADS``), as OpenVINO reports it."""
        return self._compile(role).get_property(name)

    def parallel_requests(self) -> int:
        return self._parallel

    def _optimal_requests(self) -> int:
        try:
            return int(self._compile("head").get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        except RuntimeError:
            return 1

    def _run(self, role: str, x: np.ndarray) -> list[np.ndarray]:
        key = self._key(role, len(x))
        self._compile(*key)
        request = self._requests[key]
        request.infer({0: x}, share_inputs=True)       # x is C-contiguous float32 (checked): no copy in
        return _outputs(request)

    def _run_chunks(self, role: str, chunks: list[np.ndarray]) -> list[np.ndarray]:
        if len(chunks) == 1 or self.parallel_requests() == 1:
            return super()._run_chunks(role, chunks)
        import openvino as ov

        key = self._key(role, len(chunks[0]))
        if key not in self._queues:
            self._queues[key] = ov.AsyncInferQueue(self._compile(*key), self.parallel_requests())
        queue = self._queues[key]
        results: list = [None] * len(chunks)

        def done(request, index):
            results[index] = _outputs(request)

        queue.set_callback(done)
        for index, chunk in enumerate(chunks):
            queue.start_async({0: chunk}, index, share_inputs=True)   # chunks stay alive until wait_all
        queue.wait_all()
        return results

    def describe(self) -> str:
        return f"openvino {self.device} ({self.hint})"


def _outputs(request) -> list[np.ndarray]:
    return [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]


def _checked_device(core, device: str) -> str:
    device = device.upper()
    available = list(core.available_devices)
    base = device.split(":")[0]
    if base in VIRTUAL_DEVICES:
        return device
    if device in available or any(a.split(".")[0] == device for a in available):
        return device
    raise CamInferError(f"OpenVINO device '{device}' is not available here; available: "
                        f"{', '.join(available) or 'none'} (or AUTO)")
