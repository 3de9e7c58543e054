"""`cam-infer serve`: the real server on 127.0.0.1, called with tritonclient.http (a real client of the
KServe v2 protocol) and with plain HTTP; answers equal `Explainer.explain` on the same input; bad requests
get a 4xx with one line and the server goes on; the token; 32 concurrent clients; SIGTERM; /metrics; the
model repository `fuse --repository` writes. Every request loop is bounded in count and time."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT, SHARED, needs_shared
from helpers import assert_one_line_error, run_cli

from cam_infer import Explainer
from cam_infer.postprocess import normalise, overlay_picture, upsample
from cam_infer.tools.synthetic import write_scenes

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'cam-infer[serve]')")
http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
pytestmark = pytest.mark.integration       # real servers: run with --run-slow, as .ci/run does

SHAPES = ROOT / "cam_infer" / "data" / "shapes"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


class Server:
    """`python -m cam_infer serve ... --port 0` in a subprocess; its URL from the line it prints."""

    def __init__(self, *args):
        self.process = subprocess.Popen([sys.executable, "-m", "cam_infer", "serve", *map(str, args), "--port", "0"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        line = self.process.stdout.readline()                  # blocks until it listens, or until it exits
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not found:
            self.process.kill()
            raise AssertionError(f"the server did not start: {line}{self.process.stderr.read()}")
        self.port = int(found.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs):
        return http.InferenceServerClient(f"127.0.0.1:{self.port}", **kwargs)

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
        """(status, headers, body) of a plain HTTP request."""
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def send_large(self, path: str, total: int, chunked: bool):
        """(status, headers, body) of a POST of `total` zero bytes, sent 1 MB at a time (with a
        Content-Length, or chunked); the server may answer before it has all of them."""
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.putrequest("POST", path)
        conn.putheader(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(total))))
        conn.endheaders()
        sent = 0
        try:
            while sent < total:
                chunk = b"\0" * min(2**20, total - sent)
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            if chunked:
                conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass                                                   # refused early: the answer is waiting
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    write_scenes(folder, "cluttered", 6)
    return sorted(folder.glob("*.png"))


@pytest.fixture(scope="module")
def explainer():
    return Explainer(SHAPES)


@pytest.fixture(scope="module")
def batch(scenes, explainer):
    return np.stack([explainer.bundle.preprocessing(p) for p in scenes]).astype(np.float32)


@pytest.fixture(scope="module")
def server():
    s = Server(SHAPES, "--method", "recipro")
    yield s
    s.stop()


def triton_infer(client, x: np.ndarray, parameters=None, binary: bool = True, model: str = "shapes",
                 input_name: str = "input"):
    tensor = http.InferInput(input_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [http.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "saliency", "saliency_class")]
    result = client.infer(model, [tensor], outputs=outputs, parameters=parameters)
    return {n: result.as_numpy(n) for n in ("scores", "saliency", "saliency_class")}


def expected(explainer, x, method: str, **kwargs) -> dict:
    e = explainer.explain(x, method, **kwargs)
    maps = normalise(e.maps.reshape(-1, *e.maps.shape[-2:]))[0].reshape(e.maps.shape)
    return {"scores": e.outputs, "saliency": maps,
            "saliency_class": np.full_like(e.targets, -1) if e.class_agnostic else e.targets}


def assert_same(got: dict, want: dict) -> None:
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["saliency"], want["saliency"], atol=1e-5)
    np.testing.assert_array_equal(got["saliency_class"], want["saliency_class"])


# --- the protocol, with a real client -------------------------------------------------------------------


def test_tritonclient_gets_the_explainers_answers(server, explainer, batch):
    client = server.client()
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("shapes")
    meta = client.get_model_metadata("shapes")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 128, 128]}]
    assert [o["name"] for o in meta["outputs"]] == ["scores", "saliency", "saliency_class"]
    assert_same(triton_infer(client, batch), expected(explainer, batch, "recipro"))
    assert_same(triton_infer(client, batch[:2], {"method": "eigen"}), expected(explainer, batch[:2], "eigen"))
    assert_same(triton_infer(client, batch[:3], {"class": 1}), expected(explainer, batch[:3], "recipro", target=1))
    two = triton_infer(client, batch[:2], {"top_classes": 2, "method": "ablation"})
    assert two["saliency"].shape == (2, 2, 16, 16) and two["saliency_class"].shape == (2, 2)
    assert_same(two, expected(explainer, batch[:2], "ablation", top_classes=2))
    assert_same(triton_infer(client, batch[:2], binary=False), expected(explainer, batch[:2], "recipro"))


def test_uint8_pixels_are_normalised_by_the_server_as_the_bundle_says(server, explainer, scenes):
    prep = explainer.bundle.preprocessing
    pixels = np.stack([prep.geometry(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)) for p in scenes[:3]])
    client = server.client()
    meta = client.get_model_metadata("shapes")
    assert meta["parameters"]["pixel_input"] == {"datatype": "UINT8", "shape": [-1, 128, 128, 3]}
    tensor = http.InferInput("input", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer("shapes", [tensor], parameters={"method": "eigen"})
    got = {n: result.as_numpy(n) for n in ("scores", "saliency", "saliency_class")}
    x = np.stack([prep.standardise(p) for p in pixels])
    assert_same(got, expected(explainer, x, "eigen"))
    wrong = http.InferInput("input", [1, 3, 128, 128], "UINT8")
    wrong.set_data_from_numpy(pixels[:1].transpose(0, 3, 1, 2).copy())
    with pytest.raises(Exception, match=r"UINT8 pixels must have shape \[-1, 128, 128, 3\]"):
        client.infer("shapes", [wrong])


def test_plain_json_requests_and_responses(server, explainer, batch):
    x = batch[:2]
    body = {"id": "r1", "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                    "data": x.ravel().tolist()}], "parameters": {"method": "eigen"}}
    status, headers, raw = server.request("/v2/models/shapes/versions/1/infer", json.dumps(body).encode(),
                                          {"Content-Type": "application/json"})
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(raw)
    assert answer["id"] == "r1" and answer["model_name"] == "shapes"
    got = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
    assert_same(got, expected(explainer, x, "eigen"))
    assert [o["datatype"] for o in answer["outputs"]] == ["FP32", "FP32", "INT64"]
    squeezed = gzip.compress(json.dumps(body).encode())                        # Content-Encoding: gzip
    status, headers, raw = server.request("/v2/models/shapes/infer", squeezed,
                                          {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 200 and json.loads(raw) == answer


def test_explain_takes_an_image_file_raw_or_as_a_form(server, explainer, scenes):
    e = explainer.explain([scenes[0]], "recipro")
    status, _, raw = server.request("/explain", scenes[0].read_bytes())
    assert status == 200
    answer = json.loads(raw)
    assert answer["class_id"] == int(e.targets[0]) and answer["label"] == explainer.bundle.labels[answer["class_id"]]
    assert abs(answer["score"] - float(e.scores[0])) < 1e-5
    assert answer["degenerate"] is bool(e.degenerate[0]) is False and answer["uniform"] is bool(e.uniform[0])
    np.testing.assert_allclose(np.array(answer["map"]["data"]), normalise(e.maps)[0][0], atol=6e-5)
    boundary = "----cam-infer-test"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + scenes[1].read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, _, raw = server.request("/explain?method=eigen&overlay=png", form,
                                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200
    answer = json.loads(raw)
    assert answer["method"] == "eigen"
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(answer["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(scenes[1]))
    assert picture.shape[0] > original.shape[0] and picture.shape[1] > original.shape[1]   # caption and bar added


def test_a_class_agnostic_method_is_served_as_one_map_under_no_class(server, explainer, batch, scenes):
    client = server.client()
    one = explainer.explain(batch[:2], "eigen", upsampled=False)
    for parameters in ({"method": "eigen", "top_classes": 2}, {"method": "eigen", "class": 1}):
        got = triton_infer(client, batch[:2], parameters)
        assert got["saliency"].shape == (2, 16, 16)
        np.testing.assert_allclose(got["saliency"], one.saliency, atol=1e-5)
        np.testing.assert_array_equal(got["saliency_class"], [-1, -1])
    status, _, raw = server.request("/explain?method=eigen&class=1&overlay=png", scenes[0].read_bytes())
    assert status == 200
    answer = json.loads(raw)
    top1 = int(explainer.backend.forward(batch[:1]).argmax())
    assert answer["class_agnostic"] is True and answer["class_id"] is answer["label"] is answer["score"] is None
    assert answer["predicted_class_id"] == top1 and answer["predicted_label"] == explainer.bundle.labels[top1]
    e = explainer.explain([scenes[0]], "eigen", upsampled=False)
    np.testing.assert_allclose(np.array(answer["map"]["data"]), e.saliency[0], atol=6e-5)
    picture = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(answer["overlay_png"]), np.uint8),
                                        cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    full = upsample(e.saliency, explainer.bundle.input_shape[1:])[0]
    rgb = cv2.cvtColor(cv2.imread(str(scenes[0])), cv2.COLOR_BGR2RGB)
    prep = explainer.bundle.preprocessing
    agnostic = overlay_picture(full, rgb, prep, "eigen: class-agnostic")
    labelled = overlay_picture(full, rgb, prep, f"eigen: {answer['predicted_label']} ({top1}) p=1.00")
    assert np.abs(picture.astype(int) - agnostic).max() <= 2 < np.abs(picture.astype(int) - labelled).max()


# --- bad requests -------------------------------------------------------------------------------------


def binary_request(x: np.ndarray, datatype: str = "FP32", name: str = "input", parameters=None) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         **({"parameters": parameters} if parameters else {})}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


def assert_error(result, status: int, fragment: str) -> None:
    code, headers, raw = result
    assert code == status, (code, raw[:300])
    message = json.loads(raw)["error"]
    assert fragment in message and "\n" not in message, message


def test_bad_requests_get_one_line_4xx_and_the_server_goes_on(server, batch):
    infer = "/v2/models/shapes/infer"
    x = batch[:1]
    cases = [
        (binary_request(np.zeros((1, 3, 64, 64), np.float32)), 400, "must have shape [-1, 3, 128, 128]"),
        (binary_request(x.astype(np.float64), "FP64"), 400, "must be FP32"),
        (binary_request(x, name="image"), 400, "this model takes one input, 'input'"),
        (binary_request(x, parameters={"top_classes": 0}), 400, "'top_classes' must be a positive integer"),
        (binary_request(x, parameters={"class": 99}), 400, "class 99 is not a class of this model"),
        (binary_request(x, parameters={"method": "gradcam"}), 400, "is not served"),
        (binary_request(np.full_like(x, np.nan)), 400, "holds NaN or infinite values"),
        (binary_request(np.full_like(x, 200.0)), 400, "far outside what this bundle's preprocessing gives a photo"),
        ((b'{"inputs": [', {"Content-Type": "application/json"}), 400, "not valid JSON"),
        ((b'{"inputs": []}', {}), 400, "non-empty 'inputs' list"),
        ((json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 128, 128], "datatype": "FP32",
                                  "data": [1.0, 2.0]}]}).encode(), {}), 400, "2 values for shape"),
        ((x.tobytes(), {"Inference-Header-Content-Length": "999999999"}), 400, "Inference-Header-Content-Length"),
        ((json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 128, 128], "datatype": "FP32",
                                  "data": x.ravel().tolist()}] * 2}).encode(), {}), 400, "'input' is given twice"),
    ]
    for (body, headers), status, fragment in cases:
        assert_error(server.request(infer, body, headers), status, fragment)
    assert_error(server.request("/v2/models/other/infer", *binary_request(x)), 404, "unknown model 'other'")
    assert_error(server.request("/v2/models/shapes/versions/7/infer", *binary_request(x)), 404, "version 1 only")
    assert_error(server.request("/no/such/path"), 404, "no endpoint /no/such/path")
    assert_error(server.request(infer, method="GET"), 405, "infer takes POST")
    body, headers = binary_request(x)
    assert_error(server.request(infer, body, {**headers, "Content-Encoding": "gzip"}), 400, "not valid gzip")
    assert_error(server.request(infer, body, {**headers, "Content-Encoding": "br"}), 415, "not supported")
    bomb = gzip.compress(b"\0" * (40 * 2**20))                                   # 40 kB that inflate to 40 MB
    assert_error(server.request(infer, bomb, {**headers, "Content-Encoding": "gzip"}), 413, "inflates to over")
    assert_error(server.send_large(infer, 50 * 2**20, chunked=False), 413, "at most")
    assert_error(server.send_large(infer, 40 * 2**20, chunked=True), 413, "over this server's limit")
    assert_error(server.request("/explain", b"this is not a picture"), 400, "not a readable image")
    assert_error(server.request("/explain", png_declaring(60000, 60000)), 400, "more pixels than OpenCV decodes")
    assert_error(server.request("/explain", b""), 400, "the body is empty")
    assert_error(server.send_large("/explain", 50 * 2**20, chunked=False), 413, "at most")     # 50 MB
    assert_error(server.send_large("/explain", 40 * 2**20, chunked=True), 413, "over this server's limit")
    status, _, raw = server.request("/v2/health/ready")
    assert status == 200 and json.loads(raw) == {"ready": True}
    assert server.request(infer, *binary_request(x))[0] == 200


def png_declaring(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header declares width x height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def test_a_parameter_the_model_does_not_read_is_refused_never_ignored(server, batch, scenes):
    """A misspelt 'class' (or a parameter given twice) would otherwise explain another class without a word."""
    infer, x, photo = "/v2/models/shapes/infer", batch[:1], scenes[0].read_bytes()
    assert_error(server.request(infer, *binary_request(x, parameters={"clas": 1})), 400, "unknown parameter 'clas'")
    assert_error(server.request(infer, *binary_request(x, parameters={"class": 1, "bogus": 1, "region": [1, 2, 3, 4]})),
                 400, "unknown parameters 'bogus', 'region'; this model takes method, class, top_classes")
    assert_error(server.request("/explain?clas=1", photo), 400, "unknown query parameter 'clas'")
    assert_error(server.request("/explain?top_classes=abc", photo), 400, "this model takes method, class, overlay")
    assert_error(server.request("/explain?class=1&class=2", photo), 400, "'class' given more than once")
    for path in ("/explain?class=1&overlay=png", "/explain"):
        assert server.request(path, photo)[0] == 200
    assert server.request(infer, *binary_request(x, parameters={"class": 1, "binary_data_output": True}))[0] == 200
    reserved = {"timeout": 1000000, "priority": 1, "sequence_id": 0}        # Triton's, sent by tritonclient
    assert server.request(infer, *binary_request(x, parameters=reserved))[0] == 200


def test_the_token_guards_everything_but_the_health_probes(batch):
    server = Server(SHAPES, "--token", "s3cret")
    try:
        assert_error(server.request("/v2/models/shapes/infer", *binary_request(batch[:1])), 401, "bearer token")
        body, headers = binary_request(batch[:1])
        assert_error(server.request("/v2/models/shapes/infer", body, {**headers, "Authorization": "Bearer nope"}),
                     401, "bearer token")
        assert_error(server.request("/metrics"), 401, "bearer token")
        assert server.request("/v2/health/live")[0] == 200
        client = server.client()
        with pytest.raises(Exception, match="bearer token"):
            client.get_model_metadata("shapes")
        tensor = http.InferInput("input", [1, 3, 128, 128], "FP32")
        tensor.set_data_from_numpy(batch[:1])
        result = client.infer("shapes", [tensor], headers={"Authorization": "Bearer s3cret"})
        assert result.as_numpy("saliency").shape == (1, 16, 16)
    finally:
        server.stop()


# --- load, metrics, shutdown ------------------------------------------------------------------------------


def test_32_concurrent_clients_all_get_their_own_answers_batched(server, explainer, batch):
    methods = ["recipro", "eigen", "ablation"]
    want = {(m, i): expected(explainer, batch[i:i + 1], m) for m in methods for i in range(len(batch))}
    before = prometheus(server)
    failures, done = [], []

    def client_loop(k: int) -> None:
        client = server.client()
        for j in range(3):                                            # bounded: 3 requests per client
            method, i = methods[(k + j) % 3], (k + j) % len(batch)
            try:
                got = triton_infer(client, batch[i:i + 1], {"method": method})
                assert_same(got, want[(method, i)])
                done.append(1)
            except Exception as exc:                                 # collected, asserted below
                failures.append(f"{method} {i}: {exc}")

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(32)]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, 180 - (time.time() - start)))
    assert not any(t.is_alive() for t in threads), "clients still waiting after 180 s"
    assert failures == [] and len(done) == 96
    after = prometheus(server)
    requests = after["infer_200"] - before["infer_200"]
    calls = after["batch_count"] - before["batch_count"]
    assert requests == 96 and calls < 96, (requests, calls)          # concurrent requests shared model calls


def prometheus(server) -> dict:
    status, headers, raw = server.request("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = raw.decode()
    count = re.search(r'cam_infer_requests_total\{endpoint="infer",status="200"\} (\d+)', text)
    batches = re.search(r"^cam_infer_batch_size_count (\d+)$", text, re.M)
    buckets = [int(v) for v in re.findall(r'cam_infer_batch_size_bucket\{le="[^"]+"\} (\d+)', text)]
    assert buckets == sorted(buckets)                                 # cumulative
    assert "# TYPE cam_infer_request_seconds histogram" in text
    return {"infer_200": int(count.group(1)) if count else 0, "batch_count": int(batches.group(1))}


def test_sigterm_lets_the_request_in_flight_finish(batch):
    server = Server(SHAPES)
    x = np.repeat(batch, 8, axis=0)                                   # 48 images of Score-CAM: a long call
    result: dict = {}

    def slow() -> None:
        result["answer"] = triton_infer(server.client(network_timeout=120.0), x, {"method": "score"})

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=120)
    assert server.process.wait(timeout=60) == 0
    assert result["answer"]["saliency"].shape == (48, 16, 16)


# --- fused models and their repository --------------------------------------------------------------------


def test_a_fused_model_is_served_as_it_computes(tmp_path, batch, server, scenes):
    fused = tmp_path / "shapes_recipro.onnx"
    made = subprocess.run([sys.executable, "-m", "cam_infer", "fuse", str(SHAPES), "--method", "recipro", "--out",
                           str(fused), "--repository", str(tmp_path / "repo")], capture_output=True, text=True,
                          env=ENV, cwd=ROOT)
    assert made.returncode == 0, made.stderr
    fused_server = Server(fused)
    try:
        session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
        want = dict(zip(["scores", "saliency", "saliency_class"], session.run(None, {"input": batch})))
        assert_same(triton_infer(fused_server.client(), batch, model="shapes_recipro"), want)
        meta = fused_server.client().get_model_metadata("shapes_recipro")
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("input", "FP32",
                                                                                   [-1, *batch.shape[1:]])]
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [
            (o.name, {"tensor(float)": "FP32", "tensor(int64)": "INT64"}[o.type]) for o in session.get_outputs()]
        wrong = binary_request(batch[:1], parameters={"method": "eigen"})
        assert_error(fused_server.request("/v2/models/shapes_recipro/infer", *wrong), 400, "computes recipro")
        nan = binary_request(np.full_like(batch[:1], np.nan))
        assert_error(fused_server.request("/v2/models/shapes_recipro/infer", *nan), 400, "holds NaN or infinite values")
        assert_same_explanations(fused_server, server, scenes[0].read_bytes(), "?overlay=png")
        pixels = np.clip(np.round(batch[:2].transpose(0, 2, 3, 1) * 255), 0, 255).astype(np.uint8)
        tensor = http.InferInput("input", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        result = fused_server.client().infer("shapes_recipro", [tensor])
        prep = Explainer(SHAPES).bundle.preprocessing
        x = np.stack([prep.standardise(p) for p in pixels])
        np.testing.assert_allclose(result.as_numpy("saliency"), session.run(None, {"input": x})[1], atol=1e-5)
    finally:
        fused_server.stop()
    server = Server(fused, "--backend", "openvino")
    try:
        got = triton_infer(server.client(), batch, model="shapes_recipro")
        np.testing.assert_allclose(got["saliency"], want["saliency"], atol=1e-4)
        np.testing.assert_array_equal(got["saliency_class"], want["saliency_class"])
        tensor = http.InferInput("input", list(pixels.shape), "UINT8")      # normalised in OpenVINO's graph
        tensor.set_data_from_numpy(pixels)
        result = server.client().infer("shapes_recipro", [tensor])
        np.testing.assert_allclose(result.as_numpy("saliency"), session.run(None, {"input": x})[1], atol=1e-4)
    finally:
        server.stop()
    check_repository(tmp_path / "repo", "shapes_recipro", batch)
    model = onnx.load(fused)                                   # a fused model that does not record it
    kept = [p for p in model.metadata_props if p.key != "cam_infer.preprocessing"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "old.onnx")
    server = Server(tmp_path / "old.onnx")
    try:
        assert_error(server.request("/v2/models/old/infer", *binary_request(pixels[:1], "UINT8")), 400,
                     "does not record its preprocessing")
        assert_error(server.request("/explain", scenes[0].read_bytes()), 400, "needs a classifier that records")
    finally:
        server.stop()
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:          # a size the graph cannot run
        d.dim_param = "side"
    onnx.save(model, tmp_path / "any.onnx")
    server = Server(tmp_path / "any.onnx")
    try:
        small = np.zeros((1, 3, 8, 8), np.float32)                           # the runtime itself fails
        assert_error(server.request("/v2/models/any/infer", *binary_request(small)), 500, "the server failed")
        assert server.request("/v2/models/any/infer", *binary_request(batch[:1]))[0] == 200    # and goes on
    finally:
        server.stop()
    assert "Traceback" in server.process.stderr.read()                       # logged for the operator


def test_explain_on_fused_top_classes_and_class_agnostic_models(tmp_path, server, scenes, batch):
    """/explain on a top-k fused model explains its best class; on a class-agnostic one (no saliency_class
    output) the map is the model's; both answer as the bundle's server does."""
    for method, flags in (("cam", ["--top-classes", "2"]), ("eigen", [])):
        fused = tmp_path / f"shapes_{method}.onnx"
        made = subprocess.run([sys.executable, "-m", "cam_infer", "fuse", str(SHAPES), "--method", method, *flags,
                               "--out", str(fused)], capture_output=True, text=True, env=ENV, cwd=ROOT)
        assert made.returncode == 0, made.stderr
        fused_server = Server(fused)
        try:
            for scene in scenes[:2]:
                assert_same_explanations(fused_server, server, scene.read_bytes(), f"?method={method}")
            if method == "eigen":                                    # no saliency_class output: -1, as a bundle's
                result = triton_infer(fused_server.client(), batch, model=f"shapes_{method}")
                np.testing.assert_array_equal(result["saliency_class"], np.full(len(batch), -1))
            why = "explains its top class; fuse with --class-input" if method == "cam" else "class-agnostic"
            assert_error(fused_server.request(f"/v2/models/shapes_{method}/infer",
                                              *binary_request(batch[:1], parameters={"class": 1})), 400, why)
        finally:
            fused_server.stop()


def test_a_class_input_fused_model_answers_with_the_class_it_was_fed(tmp_path, server, explainer, scenes, batch):
    """A --class-input fused model has no saliency_class output: /explain?class=c answered with the map of c under
    the top class's name and probability. Now it answers as the bundle's server (by index and by label), and
    /infer gives saliency_class as for a bundle: the fed classes, and -1 from a class-agnostic fused model."""
    fused = tmp_path / "shapes_recipro_class.onnx"
    made = subprocess.run([sys.executable, "-m", "cam_infer", "fuse", str(SHAPES), "--method", "recipro",
                           "--class-input", "--out", str(fused)], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert made.returncode == 0, made.stderr
    fused_server = Server(fused)
    try:
        for scene in scenes[:2]:
            top = json.loads(server.request("/explain", scene.read_bytes())[2])["class_id"]
            other = (top + 1) % 4                                          # a class that is not the top one
            got = assert_same_explanations(fused_server, server, scene.read_bytes(), f"?class={other}")
            assert got["class_id"] == other != top
            by_label = assert_same_explanations(fused_server, server, scene.read_bytes(),
                                                f"?class={explainer.bundle.labels[other]}")
            assert by_label["class_id"] == other
        classes = [i % 4 for i in range(len(batch))]
        result = triton_infer(fused_server.client(), batch, model="shapes_recipro_class",
                              parameters={"class": classes})
        np.testing.assert_array_equal(result["saliency_class"], classes)
    finally:
        fused_server.stop()


def test_method_options_are_set_for_every_request_with_option(tmp_path, explainer, scenes, batch):
    """serve had no way to set a method's options: Score-CAM over HTTP always ran every channel. --option sets them
    for every request (each method gets those it takes), says so in the metadata, and answers as the explainer."""
    server = Server(SHAPES, "--option", "top_k=4", "--option", "score=logit")
    try:
        meta = server.client().get_model_metadata("shapes")
        options = meta["parameters"]["options"]
        assert options["score"] == {"top_k": 4} and options["recipro"] == options["ablation"] == {"score": "logit"}
        assert "activation" not in options and "eigen" not in options      # they take neither
        for method, options in (("score", {"top_k": 4}), ("recipro", {"score": "logit"})):
            result = triton_infer(server.client(), batch, parameters={"method": method})
            want = expected(explainer, batch, method, **options)
            np.testing.assert_allclose(result["saliency"], want["saliency"], atol=1e-5)
            assert not np.allclose(want["saliency"], expected(explainer, batch, method)["saliency"], atol=1e-3)
    finally:
        server.stop()
    assert_one_line_error(run_cli("serve", SHAPES, "--option", "nosuch=1"), "no chosen method has an option 'nosuch'")
    assert_one_line_error(run_cli("serve", SHAPES, "--option", "top_k=abc"), "top_k must be int or None, not 'abc'")


def assert_same_explanations(fused: Server, bundle: Server, image: bytes, query: str = "") -> dict:
    """/explain of a fused model answers as the bundle's server does: class, label, probability, map and
    overlay."""
    answers = []
    for server in (fused, bundle):
        status, _, raw = server.request("/explain" + query, image)
        assert status == 200, raw[:300]
        answers.append(json.loads(raw))
    got, want = answers
    fields = {k for k in want if k not in ("map", "overlay_png")}           # method, class, label, probability
    assert fields == {k for k in got if k not in ("map", "overlay_png")}
    for k in fields:
        assert got[k] == (pytest.approx(want[k], abs=1e-5) if isinstance(want[k], float) else want[k]), k
    np.testing.assert_allclose(got["map"]["data"], want["map"]["data"], atol=2e-4)
    if "overlay_png" in want:
        pictures = [cv2.imdecode(np.frombuffer(base64.b64decode(a["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
                    for a in answers]
        assert pictures[0].shape == pictures[1].shape
        assert np.abs(pictures[0].astype(int) - pictures[1]).mean() < 0.5
    return got


@needs_shared
def test_a_fused_model_and_its_bundle_answer_under_the_same_names(tmp_path):
    """The real MobileNetV2 names its scores 'output': served fused or as a bundle, the client reads 'scores'
    (the serve guide's names); the fused model's own name is still answered when asked for; /explain answers."""
    model = SHARED / "models" / "mobilenetv2-fp32-dequant.onnx"
    bundle, fused = tmp_path / "mobilenet", tmp_path / "mobilenet_recipro.onnx"
    for command in (["split", model, "--out", bundle, "--labels", SHARED / "imagenet_classes.txt"],
                    ["fuse", bundle, "--method", "recipro", "--out", fused]):
        made = subprocess.run([sys.executable, "-m", "cam_infer", *map(str, command)], capture_output=True,
                              text=True, env=ENV, cwd=ROOT)
        assert made.returncode == 0, made.stderr
    assert onnx.load(fused, load_external_data=False).graph.output[0].name == "output"
    servers = {"bundle": Server(bundle, "--method", "recipro"), "fused": Server(fused)}
    try:
        explainer = Explainer(bundle)
        photos = [SHARED / "images" / name for name in ("dog_cat.jfif", "parrot.jpg", "coffee.png", "hot_dog.jpg")]
        x = explainer.bundle.preprocess(photos[:2])
        want = expected(explainer, x, "recipro")
        for kind, server in servers.items():
            client, name = server.client(), ("mobilenet" if kind == "bundle" else "mobilenet_recipro")
            meta = client.get_model_metadata(name)
            assert [o["name"] for o in meta["outputs"]] == ["scores", "saliency", "saliency_class"], kind
            tensor = http.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            r = client.infer(name, [tensor])                                   # as the serve guide's snippet
            got = {n: r.as_numpy(n) for n in ("scores", "saliency", "saliency_class")}
            np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(got["saliency"], want["saliency"], atol=1e-4)
            np.testing.assert_array_equal(got["saliency_class"], want["saliency_class"])
        asked = [http.InferRequestedOutput("output"), http.InferRequestedOutput("saliency")]
        r = servers["fused"].client().infer("mobilenet_recipro", [tensor], outputs=asked)
        assert [o["name"] for o in r.get_response()["outputs"]] == ["output", "saliency"]
        np.testing.assert_allclose(r.as_numpy("output"), want["scores"], rtol=1e-4, atol=1e-4)
        batch = explainer.bundle.preprocess(photos)                   # the serve guide's call (tests/test_readme.py runs it)
        tensor = http.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        readme = servers["bundle"].client().infer("mobilenet", [tensor], parameters={"method": "ablation", "top_classes": 2})
        assert_same({n: readme.as_numpy(n) for n in ("scores", "saliency", "saliency_class")},
                    expected(explainer, explainer.bundle.preprocess(photos), "ablation", top_classes=2))
        answer = assert_same_explanations(servers["fused"], servers["bundle"],
                                          (SHARED / "images" / "dog_cat.jfif").read_bytes(), "?overlay=png")
        assert answer["label"] == explainer.bundle.labels[int(want["saliency_class"][0])]
    finally:
        for server in servers.values():
            server.stop()


def check_repository(root: Path, name: str, batch: np.ndarray) -> None:
    """config.pbtxt read with Triton's own schema (tritonclient's model_config_pb2), against the model."""
    from helpers import triton_config
    config = triton_config(root / name / "config.pbtxt")
    model = onnx.load(root / name / "1" / "model.onnx")
    assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert [i.name for i in config.input] == [i.name for i in model.graph.input]
    assert [o.name for o in config.output] == [o.name for o in model.graph.output]
    assert list(config.input[0].dims) == [3, 128, 128] and list(config.output[1].dims) == [16, 16]
    assert list(config.output[2].dims) == [1] and list(config.output[2].reshape.shape) == []
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000
    listed = json.loads((root / "config.json").read_text())["model_config_list"][0]["config"]
    assert listed == {"name": name, "base_path": f"/models/{name}"}
    session = ort.InferenceSession(str(root / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": batch[:3]})[1].shape == (3, 16, 16)


def test_serve_refuses_what_it_cannot_serve_in_one_line(tmp_path):
    (tmp_path / "not.onnx").write_bytes(b"")
    assert_one_line_error(run_cli("serve", tmp_path / "nothing"), "neither a bundle folder nor a fused model")
    assert_one_line_error(run_cli("serve", SHAPES, "--method", "gradcam"), "is not served")
    for name in ("a/b", "", ".."):                   # the model would answer 404 on every URL
        assert_one_line_error(run_cli("serve", SHAPES, "--name", name), "the model's name is one segment of its URLs")
    code = ("import sys; sys.modules['starlette'] = None; from cam_infer.cli import main; "
            f"sys.exit(main(['serve', {str(SHAPES)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert_one_line_error(result, "pip install 'cam-infer[serve]'")


def test_a_port_in_use_is_one_line_and_exit_1():
    """Another process listens on the port: one line naming it, exit 1 (not uvicorn's log line and exit 3)."""
    import socket
    from helpers import run_cli
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", SHAPES, "--port", port, timeout=120)
    assert_one_line_error(result, f"port {port} on 127.0.0.1 is in use")
    assert "--port" in result.stderr and "Errno" not in result.stderr
    elsewhere = run_cli("serve", SHAPES, "--host", "192.0.2.1", "--port", "0", timeout=120)   # TEST-NET-1: not ours
    assert_one_line_error(elsewhere, "cannot listen on 192.0.2.1 port 0: Cannot assign requested address")


def test_the_precision_served_is_in_the_metadata_and_every_answer(batch, scenes):
    """`serve --precision`: the model metadata, each /v2 infer response and each /explain answer say what the
    model ran at (f32 by default; auto: the device's own, bf16 on OpenVINO CPUs that have it)."""
    from cam_infer.backends.sessions import openvino_core

    own = openvino_core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    for args, precision in (((), "f32"), (("--backend", "openvino", "--precision", "auto"), own)):
        s = Server(SHAPES, "--method", "cam", *args)
        try:
            assert s.client().get_model_metadata("shapes")["parameters"]["precision"] == precision
            body = {"inputs": [{"name": "input", "shape": [1, *batch.shape[1:]], "datatype": "FP32",
                                "data": batch[:1].ravel().tolist()}]}
            status, _, raw = s.request("/v2/models/shapes/infer", json.dumps(body).encode(),
                                       {"Content-Type": "application/json"})
            assert status == 200 and json.loads(raw)["parameters"] == {"precision": precision}
            status, _, raw = s.request("/explain", scenes[0].read_bytes())
            assert status == 200 and json.loads(raw)["precision"] == precision
        finally:
            s.stop()
