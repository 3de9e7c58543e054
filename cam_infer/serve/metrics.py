"""`/metrics` in Prometheus' text format: requests by endpoint and status, request latency and batch size
histograms. Endpoints are route kinds (infer, explain, metadata, health, metrics, other), never raw paths,
so that the label set stays bounded whatever clients send."""

from __future__ import annotations

import threading
from collections import Counter

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.count}"]


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1
            self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int) -> None:
        with self.lock:
            self.batches.observe(size)

    def text(self) -> str:
        with self.lock:
            lines = ["# HELP cam_infer_requests_total Requests served, by endpoint and HTTP status.",
                     "# TYPE cam_infer_requests_total counter"]
            lines += [f'cam_infer_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP cam_infer_request_seconds Time from the request's arrival to its response.",
                      "# TYPE cam_infer_request_seconds histogram"]
            for endpoint, histogram in sorted(self.latency.items()):
                lines += histogram.lines("cam_infer_request_seconds", f'endpoint="{endpoint}"')
            lines += ["# HELP cam_infer_batch_size Images per model call (dynamic batching).",
                      "# TYPE cam_infer_batch_size histogram"]
            lines += self.batches.lines("cam_infer_batch_size")
            return "\n".join(lines) + "\n"


def endpoint_of(path: str) -> str:
    if path.startswith("/v2/health"):
        return "health"
    if path == "/metrics":
        return "metrics"
    if path == "/explain":
        return "explain"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "infer"
    if path.startswith("/v2"):
        return "metadata"
    return "other"
