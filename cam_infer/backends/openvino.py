"""OpenVINO: devices CPU, GPU, NPU, AUTO/MULTI/HETERO; latency or throughput hints; model cache;
asynchronous infer requests when a batch is cut into several chunks."""

from __future__ import annotations

import math
import threading

import numpy as np

from ..bundle import Bundle
from ..bundle.positions import PRODUCTS, openvino_position_products
from ..errors import CamInferError
from .base import Backend
from .sessions import (Lender, RuntimeOptions, compiled_precision, openvino_compiled, openvino_device, openvino_model,
                       precision_note)

SINGLE = 1                                      # the batch that gets its own static-shape compiled copy
THROUGHPUT_HINTS = ("throughput", "cumulative_throughput")
BOTH_COPIES_BYTES = 64 * 2**20                  # graphs up to this size keep that copy beside the dynamic one


class OpenVINOBackend(Backend):
    """Options: ``device``, ``hint`` (latency | throughput | cumulative_throughput), ``threads``,
    ``cache_dir`` (compiled-model cache), ``precision`` (``f32`` keeps inference in float32 so results match
    ONNX Runtime; ``bf16``, ``f16``; ``auto`` (or None) lets OpenVINO choose, e.g. bf16 on CPUs that have it),
    ``memory_budget_mb``. Any number of threads may run it at once: each run borrows an infer request of
    its own (`Lender`). With a throughput hint a call's batch is cut so that every stream has work: the clean
    pass one image per request on its static-batch copy, other graphs one chunk per request, the chunks of a
    call in flight together on an ``AsyncInferQueue`` (`chunk_size`)."""

    name = "openvino"

    def __init__(self, bundle: Bundle, *, device: str = "CPU", hint: str = "latency", threads: int | None = None,
                 cache_dir: str | None = None, precision: str | None = "f32", memory_budget_mb: float = 256):
        super().__init__(bundle, memory_budget_mb=memory_budget_mb, threads=threads)
        self.runtime = RuntimeOptions(threads=threads, precision="auto" if precision is None else precision,
                                      device=openvino_device(device),
                                      hint=hint, cache_dir=cache_dir)
        self.device = self.runtime.device
        self._compiled: dict = {}                                       # (role, batch) → its `Compiled`
        self._lock = threading.RLock()                                  # guards _compiled and _single
        self._joined = None                                             # the joined ov.Model, read once
        self._added: dict = {}                                          # role → ov.Model built here (`PRODUCTS`)
        self.joins = bundle.graph_format == "onnx"
        self.products_in_pass = self.joins
        self.maps_in_pass = True                                        # `tasks.in_pass`: ONNX and IR
        self.hint = hint
        self._clean = "joined" if self.joins else "features"           # the graph of the clean pass
        self._single = bundle.dynamic_batch                             # batch 1 on a static copy, for now
        self._both = sum(p.stat().st_size for p in (bundle.features_path, bundle.head_path)) <= BOTH_COPIES_BYTES
        self._graph(self._clean, SINGLE)                                # compile errors show here, at once
        self._graph("head")
        self._parallel = self._optimal_requests()
        self._precision = compiled_precision(self._graph("head").model, self.runtime.precision)
        precision_note(self.runtime.precision, self._precision, self.device)

    def _graph(self, role: str, batch: int | None = None) -> "Compiled":
        """Graph `role` compiled once for the key `_key` gives `batch` (None: the graph's own batch). On a
        bundle with a dynamic batch, the clean pass runs batches of one on a copy compiled for that static
        shape (OpenVINO's CPU plugin is 4–8 % faster on it: YOLOv8n, MobileNetV2) and other batches on the
        dynamic graph; for a model over BOTH_COPIES_BYTES the first larger batch replaces the static copy
        (its compiled weights cost ~60 % of the model's again: ResNet-50)."""
        with self._lock:
            key = self._key(role, batch)
            if key not in self._compiled:
                try:
                    self._compiled[key] = Compiled(self._compile(*key))
                except CamInferError:
                    if key[1] is None or role.startswith("maps-"):     # an in-pass graph: the general path instead,
                        raise                                           # the clean pass keeps its static copy
                    self._single = False    # no static copy (OpenVINO's int8 passes fail on a QDQ ViT at batch 1)
                    return self._graph(role)
            return self._compiled[key]

    def _compile(self, role: str, batch: int | None):
        try:
            model = self._model(role)
            if batch is not None:
                model = model.clone()                           # shares the weights
                shape = model.input(0).get_partial_shape()
                shape[0] = batch
                model.reshape({model.input(0): shape})
            return openvino_compiled(model, self.runtime)
        except RuntimeError as exc:
            raise CamInferError(f"OpenVINO cannot compile this bundle for {self.device}: "
                                f"{str(exc).strip().splitlines()[0][:300]}") from None

    def _add_products(self, weight: np.ndarray) -> None:
        """The joined ov.Model's clone (its weights shared, not read again) with the product appended."""
        with self._lock:
            if PRODUCTS not in self._added:
                self._added[PRODUCTS] = openvino_position_products(self._model("joined").clone(), weight,
                                                                   self.bundle.cut_shape)

    def explained_pass(self, role: str, graph, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            if role not in self._added:
                self._added[role] = openvino_model(graph)
        x = self._checked(x, self.bundle.input_shape, "input images")
        if len(x) == 1:                                 # one image is one chunk: no chunking to work out
            return self._run(role, self._count([x])[0])
        return self._chunked(role, x)

    def output_count(self, role: str) -> int:
        """A graph built here (a map in the pass, the products) counts its own outputs."""
        if role in self._added:
            return len(self._added[role].outputs)
        return super().output_count(role)

    def _model(self, role: str):
        if role in self._added:
            return self._added[role]
        if role.startswith("attention-"):                  # attention-<head fusion>
            return openvino_model(self.bundle.attention_model(role.split("-")[1]))
        if role != "joined":
            return openvino_model(self.bundle.graph_path(role))
        if self._joined is None:
            with self.bundle.joined_file() as source:
                self._joined = openvino_model(source)
        return self._joined

    def _key(self, role: str, batch: int | None) -> tuple[str, int | None]:
        if not self._is_clean_pass(role) or not self._single or batch is None:
            return role, None
        if batch == SINGLE:
            return role, SINGLE
        if not self._both:                                  # a larger batch: the dynamic graph alone from now on
            self._single = False
            for key in [key for key in self._compiled if key[1] == SINGLE]:
                self._compiled.pop(key)
        return role, None

    def _is_clean_pass(self, role: str) -> bool:
        """Whether graph `role` is the clean pass, or the clean pass with more outputs (the products, a map in the
        pass, the attention): the graphs that run on the static batch-1 copy."""
        return role in (self._clean, PRODUCTS) or role.startswith(("attention-", "maps-"))

    def compiled_property(self, name: str, role: str = "head"):
        """A property of the compiled `role` graph (e.g. ``INFERENCE_NUM_THREADS``), as OpenVINO reports it."""
        return self._graph(role).model.get_property(name)

    def parallel_requests(self) -> int:
        return self._parallel

    def chunk_size(self, role: str, items: int | None = None) -> int:
        """Latency hint: what fits the memory budget. Throughput hints: the clean pass, and on a model small enough
        for two compiled copies the clean pass with more outputs (Recipro-CAM's products, the attention), one image
        per request (the static copy, as OpenVINO's own throughput runs go: the products on the dynamic graph in
        chunks of four cost MobileNetV2's folder run 1 core-ms an image more), other graphs `items` shared out over
        the optimal number of requests."""
        size = super().chunk_size(role, items)
        if self.hint not in THROUGHPUT_HINTS or not self.bundle.dynamic_batch:
            return size
        if self._single and (role == self._clean or (self._both and self._is_clean_pass(role))):
            return SINGLE               # a model over BOTH_COPIES_BYTES keeps one static copy: the plain pass's
        return size if not items else min(size, math.ceil(items / self.parallel_requests()))

    def _optimal_requests(self) -> int:
        try:
            return int(self.compiled_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        except RuntimeError:
            return 1

    def _run(self, role: str, x: np.ndarray) -> list[np.ndarray]:
        return self._graph(role, len(x)).run({0: x}, share_inputs=True)    # x C-contiguous float32: no copy in

    def _run_chunks(self, role: str, chunks: list[np.ndarray]) -> list[np.ndarray]:
        if len(chunks) == 1 or self.parallel_requests() == 1:
            return super()._run_chunks(role, chunks)
        results: list = [None] * len(chunks)

        def done(request, index):
            results[index] = _outputs(request)

        with self._graph(role, len(chunks[0])).request_queue(self.parallel_requests()) as requests:
            requests.set_callback(done)
            for index, chunk in enumerate(chunks):
                requests.start_async({0: chunk}, index, share_inputs=True)   # chunks stay alive until wait_all
            requests.wait_all()
        return results

    @property
    def precision(self) -> str:
        """What the compiled graphs run at, as OpenVINO reports it (``auto`` on this CPU: bf16 where it has AVX-512
        BF16 or AMX; on a virtual device, AUTO, what the device it runs on reports: `sessions.compiled_precision`)."""
        return self._precision

    def describe(self) -> str:
        return f"openvino {self.device} ({self.hint}, {self.precision})"


class Compiled:
    """A compiled graph and the infer requests it lends: a run borrows an idle request (or a new one when all
    are busy) and gives it back, so that threads running the graph at once never share one."""

    def __init__(self, model):
        self.model = model
        self._requests = Lender(model.create_infer_request)
        self._queues: dict[int, Lender] = {}

    def request(self):
        return self._requests.borrow()

    def run(self, feeds: dict, share_inputs: bool = False) -> list[np.ndarray]:
        """The graph's outputs (copies) on `feeds`, on a lent request."""
        with self.request() as request:
            request.infer(feeds, share_inputs=share_inputs)
            return _outputs(request)

    def request_queue(self, jobs: int):
        """An ``AsyncInferQueue`` of `jobs` requests, borrowed as `request` is."""
        import openvino as ov
        lender = self._queues.setdefault(jobs, Lender(lambda: ov.AsyncInferQueue(self.model, jobs)))
        return lender.borrow()


def _outputs(request) -> list[np.ndarray]:
    return [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]
