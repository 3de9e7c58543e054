"""The HTTP application: the Open Inference Protocol's REST endpoints, a human `/explain`, `/metrics`.

    GET  /v2/health/live, /v2/health/ready                 probes (never need the token)
    GET  /v2                                               server metadata
    GET  /v2/models/{name}[/versions/1][/ready]            model metadata / readiness
    POST /v2/models/{name}[/versions/1]/infer              JSON tensors or the binary tensor extension (`Infer`)
    POST /explain?method=&class=&overlay=png               an image file (raw body or multipart 'file')
                                                           (a segmenter: also &region=; `serve.segmenter`)
    GET  /metrics                                          Prometheus text

Every error is ``{"error": "one line"}`` with a 4xx status (5xx only for a failure of the server itself);
the server goes on serving. A body over the size limit is refused before it is read (Content-Length) or
as soon as it passes the limit (chunked).
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import time
import zlib
from dataclasses import replace

import numpy as np

from ..errors import CamInferError
from ..version import __version__
from .batcher import Batcher
from .metrics import Metrics, endpoint_of
from .models import known_parameters
from .tensors import HEADER_LENGTH, ProtocolError, encode_response, parse_request

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
VERSION = "1"


def create_app(served, name: str, *, token: str | None = None, max_body: int = 32 * 2**20, max_batch: int = 16,
               window: float = 0.0):
    """The ASGI application serving `served` (a `models.ServedBundle` or `ServedFused`) as model `name`."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    metrics = Metrics()
    batcher = Batcher(served, max_batch=max_batch, window=window, on_batch=metrics.batch)

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    def model_or_404(request):
        served_model(name, request.path_params["name"], request.path_params.get("version", VERSION))

    async def live(request):
        return JSONResponse({"live": True})

    async def ready(request):
        running = batcher.task is not None and not batcher.task.done()
        return JSONResponse({"ready": running}, status_code=200 if running else 503)

    async def server_metadata(request):
        return JSONResponse({"name": "cam-infer", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model_metadata(request):
        model_or_404(request)
        inputs, outputs = served.metadata()
        parameters = {"method": served.method, "precision": served.precision}
        options = {m: o for m, o in getattr(served, "options", {}).items() if o}
        if options:                                   # what --option set, per method
            parameters["options"] = options
        if served.pixels is not None:                 # the input may also come as UINT8 RGB pixels
            parameters["pixel_input"] = {"datatype": "UINT8", "shape": [-1, *served.pixels.input_size, 3]}
        return JSONResponse({"name": name, "versions": [VERSION], "platform": f"cam-infer_{served.kind}",
                             "inputs": inputs, "outputs": outputs, "parameters": parameters})

    async def model_ready(request):
        model_or_404(request)
        return JSONResponse({"name": name, "ready": True})

    async def explain(request):
        if served.preprocessing is None:
            raise ProtocolError("/explain needs a classifier that records its preprocessing and output kind (a "
                                "bundle, or a classifier fused by this release); this model is served at "
                                f"/v2/models/{name}/infer only")
        image = await image_of(request, max_body)
        from ..images import decode_image
        try:
            rgb = decode_image(image, "the request body")
        except CamInferError as exc:
            raise ProtocolError(str(exc)) from None
        query = request.query_params
        known_parameters(query.keys(), served.explain_parameters, "query parameter")
        repeated = sorted({k for k in query.keys() if len(query.getlist(k)) > 1})
        if repeated:
            raise ProtocolError(f"query parameter{'s' if len(repeated) > 1 else ''} {', '.join(map(repr, repeated))} "
                                "given more than once")
        if hasattr(served, "explain_image"):          # a segmenter: classes over regions of the sent image
            parameters = {k: _query_value(v) for k, v in query.items() if k in ("method", "class", "region")}
            answer = await batcher.call(served.explain_image, rgb, parameters, query.get("overlay"))
            return JSONResponse(answer)
        x = served.preprocessing(rgb)[None]
        parameters = {k: _query_value(v) for k, v in query.items() if k in ("method", "class")}
        key, classes = served.key(parameters, 1)
        outputs = one_map(await batcher.run(x, key, classes))
        return JSONResponse(explanation_json(served, outputs, rgb, query.get("overlay"), key.method))

    async def prometheus(request):
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    routes = [Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata),
              Route("/v2/models/{name}", model_metadata),
              Route("/v2/models/{name}/versions/{version}", model_metadata),
              Route("/v2/models/{name}/ready", model_ready),
              Route("/v2/models/{name}/versions/{version}/ready", model_ready),
              Route("/explain", explain, methods=["POST"]), Route("/metrics", prometheus)]

    async def failed(request, exc):
        status, message = status_of(exc)
        return error(message, status)

    async def http_error(request, exc):
        return error(exc.detail if exc.status_code != 404 else f"no endpoint {request.url.path}", exc.status_code)

    from starlette.exceptions import HTTPException
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ProtocolError: failed, HTTPException: http_error, CamInferError: failed,
                                        Exception: failed})
    return Guard(app, Infer(served, name, batcher, max_body), token, max_body, metrics)


def status_of(exc: Exception) -> tuple[int, str]:
    """The HTTP status and the message a request's failure is answered with."""
    if isinstance(exc, ProtocolError):
        return exc.status, str(exc)
    if isinstance(exc, CamInferError):
        return 400, str(exc)
    return 500, f"the server failed: {type(exc).__name__}: {exc}"


def served_model(name: str, wanted: str, version: str) -> None:
    """Refuse (404) a model name or version this server does not serve."""
    if wanted != name:
        raise ProtocolError(f"unknown model {wanted!r}; this server serves {name!r}", 404)
    if version != VERSION:
        raise ProtocolError(f"model {name!r} has version {VERSION} only, not {version!r}", 404)


class Infer:
    """POST /v2/models/{name}[/versions/{version}]/infer as a bare ASGI endpoint: the request every
    client makes, on the shortest path (no routing table, no request and response objects)."""

    PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")

    def __init__(self, served, name: str, batcher: Batcher, max_body: int):
        self.served, self.name, self.batcher, self.max_body = served, name, batcher, max_body

    def route(self, path: str):
        """The (model, version) of an infer path, or None."""
        match = self.PATH.fullmatch(path)
        return None if match is None else (match.group(1), match.group(2) or VERSION)

    async def __call__(self, scope, receive, send, model: str, version: str) -> None:
        try:
            if scope["method"] != "POST":
                raise ProtocolError(f"{scope['method']} is not allowed here; infer takes POST", 405)
            served_model(self.name, model, version)
            headers = dict(scope["headers"])
            body = await read_body(_chunks(receive), headers.get(b"content-encoding", b"").decode("latin-1"),
                                   self.max_body)
            length = headers.get(HEADER_LENGTH.lower().encode())
            body, response_headers = await self.answer(body, None if length is None else length.decode("latin-1"))
        except Exception as exc:
            await _send_error(send, *status_of(exc))
            if not isinstance(exc, (ProtocolError, CamInferError)):
                raise                                  # the server's own failure: uvicorn logs its traceback
            return
        headers = [(k.encode(), v.encode()) for k, v in response_headers.items()]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, body: bytes, header_length: str | None) -> tuple[bytes, dict]:
        served = self.served
        parsed = parse_request(body, header_length)
        x = parsed.inputs.get(served.input_name)
        if x is None or len(parsed.inputs) != 1:
            raise ProtocolError(f"this model takes one input, {served.input_name!r} (FP32, [-1, "
                                f"{', '.join(map(str, served.input_shape))}]); got {', '.join(parsed.inputs)}")
        pixels = x.dtype == np.uint8 and getattr(served, "pixels_in_graph", False)    # the graph normalises them
        if x.dtype == np.uint8:
            x = checked_pixels(served, x) if pixels else normalised_pixels(served, x)
        elif x.dtype != np.float32:
            raise ProtocolError(f"input {served.input_name!r} must be FP32 (or UINT8 pixels), not {x.dtype}")
        elif x.ndim != 1 + len(served.input_shape) or any(e not in (-1, d) for e, d in zip(served.input_shape,
                                                                                             x.shape[1:])):
            raise ProtocolError(f"input {served.input_name!r} must have shape [-1, "
                                f"{', '.join(map(str, served.input_shape))}], not {list(x.shape)}")
        if len(x) == 0:
            raise ProtocolError("the batch is empty")
        # NaN in, NaN scores out under class 0; refused here, before the request joins others in a batch
        if x.dtype == np.float32 and not np.isfinite(x).all():
            raise ProtocolError(f"input {served.input_name!r} holds NaN or infinite values: the model cannot "
                                "score them")
        preprocessing = getattr(served, "preprocessing", None)
        if x.dtype == np.float32 and not pixels and preprocessing is not None and hasattr(served, "explainer"):
            try:                   # this request's values, checked before it joins others in a batch
                preprocessing.check_range(x)
            except CamInferError as exc:
                raise ProtocolError(str(exc)) from None
        key, classes = served.key(parsed.parameters, len(x))
        key = replace(key, pixels=True) if pixels else key
        outputs = await self.batcher.run(np.ascontiguousarray(x), key, classes)
        names = parsed.wanted(list(outputs), served.aliases)
        return encode_response(self.name, VERSION, parsed.id, {n: outputs[served.aliases.get(n, n)] for n in names},
                               parsed.binary_outputs(names), {"precision": served.precision})


class Guard:
    """ASGI middleware before the routes: the bearer token, the Content-Length limit, and the metrics of
    every request (its endpoint kind, status and time); then the infer endpoint, or Starlette's routes."""

    def __init__(self, app, infer: Infer, token: str | None, max_body: int, metrics: Metrics):
        self.app, self.infer, self.token, self.max_body, self.metrics = app, infer, token, max_body, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(scope["path"], headers)
        try:
            infer = self.infer.route(scope["path"])
            if refusal:
                await _send_error(sending, *refusal)
            elif infer:
                await self.infer(scope, receive, sending, *infer)
            else:
                await self.app(scope, receive, sending)
        finally:
            self.metrics.request(endpoint_of(scope["path"]), status[0], time.perf_counter() - start)

    def _refusal(self, path: str, headers: dict) -> tuple[int, str] | None:
        if self.token and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return 401, "missing or wrong bearer token (Authorization: Bearer TOKEN)"
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return 400, "Content-Length is not a number"
            if size > self.max_body:
                return 413, f"the body has {size} bytes; this server takes at most {self.max_body}"
        return None


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": " ".join(str(message).split())}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def normalised_pixels(served, pixels: np.ndarray) -> np.ndarray:
    """UINT8 RGB pixels (N, H, W, 3), resized and cropped to the model's input, → the FP32 input, normalised
    as the model's preprocessing says."""
    prep = served.pixels
    pixels = checked_pixels(served, pixels)
    h, w = prep.input_size
    x = np.empty((len(pixels), prep.channels, h, w), np.float32)
    for image, out in zip(pixels, x):
        prep.standardise(image, out)
    return x


def checked_pixels(served, pixels: np.ndarray) -> np.ndarray:
    """UINT8 RGB pixels (N, H, W, 3) of the model's input size, or a `ProtocolError`."""
    prep = served.pixels
    if prep is None:
        raise ProtocolError("this fused model does not record its preprocessing (fused before cam-infer did); "
                            "send FP32 input, or fuse it again for UINT8 pixels")
    h, w = prep.input_size
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (h, w, 3):
        raise ProtocolError(f"UINT8 pixels must have shape [-1, {h}, {w}, 3] (RGB, resized and cropped), "
                            f"not {list(pixels.shape)}")
    if not len(pixels):
        raise ProtocolError("the batch is empty")
    return pixels


async def _chunks(receive):
    """An ASGI request's body, as it arrives."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProtocolError("the client went away", 499)
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def read_body(stream, encoding: str, limit: int) -> bytes:
    """The body from its chunks, at most `limit` bytes (also after gzip/deflate Content-Encoding)."""
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"the body is over this server's limit of {limit} bytes", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = encoding.lower()
    if encoding in ("gzip", "deflate"):
        inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise ProtocolError(f"the body is not valid {encoding}: {exc}") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise ProtocolError(f"the body inflates to over this server's limit of {limit} bytes", 413)
    elif encoding not in ("", "identity"):
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)", 415)
    return body


async def image_of(request, limit: int) -> bytes:
    """The image of a /explain request: the raw body, or the file of a multipart form."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_part_size=limit)
        except Exception as exc:                       # python-multipart's parse errors
            raise ProtocolError(f"the multipart form could not be read: {exc}") from None
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise ProtocolError("the form has no file; send the image as 'file' (curl -F file=@photo.jpg)")
        return await files[0].read()
    body = await read_body(request.stream(), request.headers.get("content-encoding", ""), limit)
    if not body:
        raise ProtocolError("the body is empty; send an image (curl --data-binary @photo.jpg)")
    return body


def one_map(outputs: dict) -> dict:
    """Outputs with one map per image and the class it explains, as /explain reads them: a top-k fused
    model's first map (its best class)."""
    saliency, chosen = outputs["saliency"], outputs["saliency_class"]
    return {**outputs, "saliency": saliency.reshape(len(saliency), -1, *saliency.shape[-2:])[:, 0],
            "saliency_class": chosen.reshape(len(chosen), -1)[:, 0]}


def explanation_json(served, outputs: dict, rgb: np.ndarray, overlay: str | None, method: str) -> dict:
    """The /explain answer: the class, its label and probability (a class-agnostic map: none, and the model's
    top-1 as ``predicted_*``), whether the map is degenerate (flat: all zeros) or near-uniform (as
    `Explanation.uniform`), the low-resolution map, and
    (overlay=png) the overlay over the sent image as base64 PNG."""
    from ..methods.registry import class_agnostic
    from ..numerics import probabilities_of
    from ..postprocess import caption, class_fields, encode_png, near_uniform, overlay_picture, upsample
    bundle = served.bundle
    agnostic = class_agnostic(method)
    class_id = int(outputs["scores"][0].argmax()) if agnostic else int(outputs["saliency_class"][0])
    probability = float(probabilities_of(outputs["scores"][:1], bundle.output_kind)[0, class_id])
    saliency = outputs["saliency"][0]
    label = bundle.label(class_id) if bundle.labels else None
    full = upsample(saliency[None], bundle.input_shape[1:])[0]
    degenerate = bool(saliency.max() <= 0.0)                       # the graph's normalisation zeroes a flat map
    answer = {"method": method, "precision": served.precision,
              **class_fields(class_id, label, round(probability, 6), agnostic),
              "degenerate": degenerate, "uniform": not degenerate and bool(near_uniform(full)),
              "map": {"shape": list(saliency.shape), "data": np.round(saliency.astype(np.float64), 4).tolist()}}
    if overlay not in (None, "", "none", "png"):
        raise ProtocolError(f"overlay must be 'png' or 'none', not {overlay!r}")
    if overlay == "png":
        text = caption(method, label, None if agnostic else class_id, probability)
        picture = overlay_picture(full, rgb, bundle.preprocessing, text)
        answer["overlay_png"] = base64.b64encode(encode_png(picture)).decode()
    return answer


def _query_value(text: str):
    """A query parameter's value: JSON (a list, a region), else the text. A whole number stays text, read as a class
    is everywhere (`tasks.class_index`): an index, or a label that is a number (PP-OCR's '180', class 1)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return text if isinstance(value, int) and not isinstance(value, bool) else value
