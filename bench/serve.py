"""The serving table: `cam-infer serve` on MobileNetV2 (torchvision weights), 2 cores.

- Served: the bundle with recipro (the Explainer behind the server) and the fused recipro model
  (`cam-infer fuse`, one runtime call), each by `cam-infer serve` on 127.0.0.1: ONNX Runtime, and the
  fused model also on OpenVINO (`--backend openvino`).
- Clients: tritonclient.http in threads of this process, binary tensors, one preprocessed 224² image per
  request, at concurrency 1, 8 and 32, a fixed number of requests each (after a warm-up): requests/s over
  the whole burst, p50 and p99 latency, and the mean batch the server formed (its /metrics). Clients and
  server share the machine's 2 cores.
- Overhead at concurrency 1: a request to the server alternated call by call with a bare in-process
  forward pass of the unsplit model on the same runtime (same image, threads as the server's), the
  median of the per-pair ratios; the request carries the FP32 tensor or UINT8 pixels, and is sent by
  tritonclient or by http.client with a prebuilt body (the server's and the loopback's cost). Three
  rounds across all servers, their median and range. The floor: the same requests to a bare ASGI app
  under uvicorn answering with a real response's bytes (`floor_server`), what any Python server on this
  stack costs here.
- The serving target, at concurrency 1: a request ÷ (the same model's in-process call + the floor's request),
  the three alternated call by call, the median of the per-triple ratios (≤ 1.1 wanted).
- Precision: ``--precision`` (default ``auto``, what each runtime runs by default, as deployed: bf16 on this
  CPU's OpenVINO, float32 on ONNX Runtime's CPU provider) for the servers and every in-process reference.

    python bench/serve.py --work /tmp/cam-serve --out bench/serve.md [--quick]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cam_infer.tools.bench import Report  # noqa: E402

CONCURRENCY = (1, 8, 32)


class Server:
    def __init__(self, model: Path, *args, command: list | None = None):
        command = command or [sys.executable, "-m", "cam_infer", "serve", str(model), "--port", "0", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.process.stdout.readline()
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))

    def batches(self) -> tuple[int, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30).read().decode()
        count = int(re.search(r"^cam_infer_batch_size_count (\d+)$", text, re.M).group(1))
        total = float(re.search(r"^cam_infer_batch_size_sum ([\d.]+)$", text, re.M).group(1))
        return count, total

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def request_fn(port: int, model: str, x: np.ndarray):
    """One request by tritonclient.http (binary tensors): FP32 preprocessed input, or UINT8 pixels."""
    import tritonclient.http as http
    client = http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120.0)
    tensor = http.InferInput("input", list(x.shape), "UINT8" if x.dtype == np.uint8 else "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [http.InferRequestedOutput(n) for n in ("scores", "saliency", "saliency_class")]

    def call():
        result = client.infer(model, [tensor], outputs=outputs)
        return result.as_numpy("saliency")
    return call


def plain_request_fn(port: int, model: str, x: np.ndarray):
    """The same request by http.client on one kept-alive connection, its body built once: what the server
    and the loopback cost, without a client library's own time."""
    import http.client
    import json
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape),
                                     "datatype": "UINT8" if x.dtype == np.uint8 else "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": n, "parameters": {"binary_data": True}}
                                     for n in ("scores", "saliency", "saliency_class")]}).encode()
    body = header + x.tobytes()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call():
        connection.request("POST", f"/v2/models/{model}/infer", body, headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(data[:300])
        call.last_headers = {k.lower(): v for k, v in response.getheaders()}
        return data
    return call


def overheads(port: int, model: str, forward, x: np.ndarray, pixels: np.ndarray, repeats: int) -> dict:
    """Each way of calling, alternated call by call with the bare forward pass in its own pair: the median
    of the per-call ratios, and the medians of the two times."""
    found = {}
    for client, make in (("tritonclient", request_fn), ("http.client", plain_request_fn)):
        for sent, data in (("FP32", x), ("UINT8 pixels", pixels)):
            call = make(port, model, data)
            for _ in range(20):
                call(), forward()
            times = {"server": [], "forward": []}
            for _ in range(repeats):
                for key, fn in (("forward", forward), ("server", call)):
                    start = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - start)
            ratios = np.array(times["server"]) / np.array(times["forward"])
            found[(client, sent)] = (statistics.median(ratios), statistics.median(times["server"]) * 1000,
                                     statistics.median(times["forward"]) * 1000)
    return found


def against_floor(call, in_process, floor_call, repeats: int) -> tuple[float, float, float, float]:
    """A request ÷ (the model's in-process call + the floor's request), the three alternated call by call (their
    order reversed every other time): the median of the per-triple ratios, and the three median times (ms)."""
    times = {"server": [], "in-process": [], "floor": []}
    calls = [("server", call), ("in-process", in_process), ("floor", floor_call)]
    for r in range(repeats + 20):
        for which, fn in (calls if r % 2 else calls[::-1]):
            start = time.perf_counter()
            fn()
            if r >= 20:
                times[which].append(time.perf_counter() - start)
    server, own, floor = (np.array(times[k]) for k in ("server", "in-process", "floor"))
    return (statistics.median(server / (own + floor)), *(statistics.median(t) * 1000 for t in (server, own, floor)))


def paired_ratio(base, fn, repeats: int) -> float:
    """fn's time over base's, alternated call by call: the median of the per-pair ratios."""
    times = {"fn": [], "base": []}
    for r in range(repeats + 20):
        for which, call in (("base", base), ("fn", fn)):
            start = time.perf_counter()
            call()
            if r >= 20:
                times[which].append(time.perf_counter() - start)
    return statistics.median(np.array(times["fn"]) / np.array(times["base"]))


def summary(rounds: list[tuple[float, float, float]]) -> str:
    """The median round's ratio in bold, the range over rounds, and that round's times."""
    ordered = sorted(rounds)
    ratio, server, forward = ordered[len(ordered) // 2]
    return (f"**{ratio:.2f}×** ({ordered[0][0]:.2f}–{ordered[-1][0]:.2f}; "
            f"{server:.2f} / {forward:.2f} ms)")


def floor_server(response: Path) -> None:
    """The floor under any Python server here: a bare ASGI app under uvicorn (as `cam-infer serve` runs it)
    that reads the whole request and answers with the bytes of a real response, without a model."""
    import pickle

    import uvicorn
    body, headers = pickle.loads(response.read_bytes())
    headers = [(k.encode(), v.encode()) for k, v in headers.items()] + [(b"content-length", str(len(body)).encode())]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    startup = server.startup

    async def started(sockets=None):
        await startup(sockets=sockets)
        print(f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", flush=True)
    server.startup = started
    server.run()


def real_response(port: int, model: str, x: np.ndarray, path: Path) -> None:
    """One response of the served model (body and headers), for `floor_server` to answer with."""
    import pickle
    call = plain_request_fn(port, model, x)
    body = call()
    header_length = call.last_headers["inference-header-content-length"]
    path.write_bytes(pickle.dumps((body, {"content-type": "application/octet-stream",
                                          "inference-header-content-length": header_length})))


def burst(port: int, model: str, x: np.ndarray, concurrency: int, per_client: int):
    latencies: list[float] = []
    lock = threading.Lock()

    def loop():
        call = request_fn(port, model, x)
        call()                                                    # warm-up, not counted
        barrier.wait(timeout=120)
        for _ in range(per_client):
            start = time.perf_counter()
            call()
            with lock:
                latencies.append(time.perf_counter() - start)

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait(timeout=120)
    start = time.perf_counter()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - start
    latencies.sort()
    return len(latencies) / wall, latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000


def main() -> None:
    from seed_methods import bundle_for

    from cam_infer import Preprocessing
    from cam_infer.backends.sessions import FLOAT32, onnxruntime_session, openvino_compiled
    from cam_infer.fuse.assemble import plain_model
    from cam_infer.serve.models import SPINNING

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-serve")
    parser.add_argument("--out")
    parser.add_argument("--requests", type=int, default=480, help="requests per concurrency level")
    parser.add_argument("--repeats", type=int, default=200, help="alternating calls for the overhead")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the overhead measurements")
    parser.add_argument("--precision", default="auto", help="the servers' and in-process references' precision "
                        "(default auto: each runtime's own default, as deployed)")
    parser.add_argument("--quick", action="store_true", help="fewer requests and calls (a check, not a table)")
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)      # run `floor_server` on this response
    args = parser.parse_args()
    if args.floor:
        return floor_server(args.floor)
    if args.quick:
        args.requests, args.repeats, args.rounds = 96, 40, 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = Report()
    import os
    report(f"Load average {os.getloadavg()[0]:.1f} at the start on {os.cpu_count()} cores. Precision {args.precision}.")
    bundle = bundle_for("mobilenet_v2", work)
    fused = work / "mobilenet_v2_recipro.onnx"
    subprocess.run([sys.executable, "-m", "cam_infer", "fuse", str(bundle), "--method", "recipro", "--out", str(fused),
                    "--force"], check=True, capture_output=True, cwd=ROOT)
    prep = Preprocessing((224, 224))
    photo = SHARED / "images" / "pelican.jpeg"
    x = prep(photo)[None].astype(np.float32)
    from cam_infer.images import load_image
    pixels = prep.geometry(load_image(photo))[None]
    served_runtime = FLOAT32.but(spinning=SPINNING, precision=args.precision)   # as the server's sessions
    (work / "plain.onnx").write_bytes(plain_model(bundle).SerializeToString())
    plain = onnxruntime_session(work / "plain.onnx", served_runtime)
    forward = lambda: plain.run(None, {plain.get_inputs()[0].name: x})      # noqa: E731

    report("\n**MobileNetV2** 224×224, one image per request, ONNX Runtime unless named, 2 cores shared by server and "
           "clients "
           f"(tritonclient.http threads, binary tensors); {args.requests} requests per row after a warm-up\n")
    report("| served | clients | requests/s | p50 ms | p99 ms | mean batch |\n|---|---:|---:|---:|---:|---:|")
    from cam_infer import Explainer
    explainer = Explainer(bundle, backend="onnxruntime", spinning=SPINNING, precision=args.precision)
    fused_session = onnxruntime_session(fused, served_runtime)
    # compiled as the fused model's OpenVINO server compiles it
    openvino_runtime = FLOAT32.but(hint="latency", precision=args.precision)
    compiled = [openvino_compiled(path, openvino_runtime) for path in (work / "plain.onnx", fused)]
    requests = [c.create_infer_request() for c in compiled]
    openvino_precision = compiled[1].get_property("INFERENCE_PRECISION_HINT").get_type_name()
    forward_ov = lambda: requests[0].infer({0: x})                  # noqa: E731
    in_process = {"fused, OpenVINO": (forward_ov, lambda: requests[1].infer({0: x})),
                  "bundle": (forward, lambda: explainer.explain(x, "recipro")),
                  "fused": (forward, lambda: fused_session.run(None, {"input": x}))}
    precision = ["--precision", args.precision]
    served = {"bundle, recipro": (Server(bundle, "--method", "recipro", *precision), bundle.name, forward),
              "fused recipro model": (Server(fused, "--backend", "onnxruntime", *precision), fused.stem, forward),
              "fused recipro model, OpenVINO": (Server(fused, "--backend", "openvino", *precision), fused.stem,
                                                forward_ov)}
    own_call = {"bundle, recipro": in_process["bundle"][1], "fused recipro model": in_process["fused"][1],
                "fused recipro model, OpenVINO": in_process["fused, OpenVINO"][1]}
    try:
        real_response(served["fused recipro model"][0].port, fused.stem, pixels, work / "response.pickle")
        floor = Server(None, command=[sys.executable, __file__, "--floor", str(work / "response.pickle")])
        served["bare ASGI app under uvicorn, no model: the floor"] = (floor, fused.stem, forward)
        shares = {key: [] for key in in_process}
        found = {label: [] for label in served}
        target = {label: [] for label in own_call}
        for _ in range(args.rounds):                   # the rounds interleaved: the machine drifts between them
            for key, (base, fn) in in_process.items():
                shares[key].append(paired_ratio(base, fn, args.repeats))
                time.sleep(1)                          # OpenVINO's idle threads spin a while: let them settle
            for label, (server, name, base) in served.items():
                found[label].append(overheads(server.port, name, base, x, pixels, args.repeats))
                time.sleep(1)
            for label, own in own_call.items():
                server, name, _ = served[label]
                target[label].append({sent: against_floor(plain_request_fn(server.port, name, data), own,
                                                          plain_request_fn(floor.port, fused.stem, data), args.repeats)
                                      for sent, data in (("FP32", x), ("UINT8 pixels", pixels))})
                time.sleep(1)
        for label, (server, name, _) in served.items():      # the bursts after the overheads: they leave
            if server is floor:                                 # the client process's threads behind
                continue
            for c in CONCURRENCY:
                before = server.batches()
                rate, p50, p99 = burst(server.port, name, x, c, max(1, args.requests // c))
                after = server.batches()
                mean_batch = (after[1] - before[1]) / max(1, after[0] - before[0])
                report(f"| {label} | {c} | {rate:.0f} | {p50:.1f} | {p99:.1f} | {mean_batch:.1f} |")
    finally:
        for server, _, _ in served.values():
            server.stop()
    report(f"\nOverhead at concurrency 1: one request alternated call by call with a bare in-process forward pass "
           f"of the unsplit model (ONNX Runtime, threads spinning only while a run lasts, as the server's; precision "
           f"{args.precision}), "
           f"{args.repeats} pairs per cell and round; the median of the per-pair ratios (server ms / forward ms), "
           f"in bold the median of {args.rounds} rounds run one after another across all servers, their range "
           "after it and the median round's times in brackets. "
           "The request carries the preprocessed FP32 tensor (602 kB) or the UINT8 pixels (151 kB), normalised "
           "by the server, or by the fused model's graph on the OpenVINO server (`serve/pixel_graph.py`); sent by tritonclient.http, or by http.client with the body built once (the "
           "server and the loopback alone). The floor: the same requests to a bare ASGI app under uvicorn that "
           "reads the request and answers with the bytes of a real response, without a model, parsing or "
           "batching (what any Python server on this stack costs here). The OpenVINO row: the fused model "
           "served with `--backend openvino`, against a bare OpenVINO forward pass compiled as its server "
           "compiles it (LATENCY hint, dynamic batch, the same precision).\n")
    share = {key: f"**{statistics.median(v):.2f}×** ({min(v):.2f}–{max(v):.2f})" for key, v in shares.items()}
    report(f"In the same process, without a server (same protocol): `Explainer.explain(x, 'recipro')` on the bundle "
           f"{share['bundle']}, the fused recipro model's ONNX Runtime call {share['fused']} the forward pass, on "
           f"OpenVINO {share['fused, OpenVINO']} OpenVINO's: the method's own share of each row below.\n")
    report("| served | client | FP32 tensor | UINT8 pixels |\n|---|---|---:|---:|")
    for label, rounds in found.items():
        for client in ("tritonclient", "http.client"):
            cells = [summary([r[(client, sent)] for r in rounds]) for sent in ("FP32", "UINT8 pixels")]
            report(f"| {label} | {client} | " + " | ".join(cells) + " |")
    report(f"\n**The serving target** (≤ 1.1): one request at one client ÷ (the same model's in-process call + the "
           "floor's request), the three alternated call by call, sent by http.client; the median of "
           f"{args.repeats} per-triple ratios in bold (median of {args.rounds} rounds, their range), then the median "
           "round's times: request / in-process call + floor request. In-process: the bundle's "
           "`Explainer.explain(x, 'recipro')`, the fused model's ONNX Runtime call, its OpenVINO call "
           f"(precision {args.precision}: OpenVINO computed in {openvino_precision}, ONNX Runtime's CPU provider in "
           "float32).\n")
    report("| served | FP32 tensor | UINT8 pixels |\n|---|---:|---:|")
    for label, rounds in target.items():
        cells = []
        for sent in ("FP32", "UINT8 pixels"):
            ordered = sorted(r[sent] for r in rounds)
            ratio, server, own, floor_ms = ordered[len(ordered) // 2]
            cells.append(f"**{ratio:.2f}×** ({ordered[0][0]:.2f}–{ordered[-1][0]:.2f}; "
                         f"{server:.2f} / {own:.2f} + {floor_ms:.2f} ms)")
        report(f"| {label} | " + " | ".join(cells) + " |")
    report(f"\nLoad average {os.getloadavg()[0]:.1f} at the end.")
    report.write(args.out)


if __name__ == "__main__":
    main()
