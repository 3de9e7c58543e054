"""`cam-infer serve`: explanations next to predictions over the Open Inference Protocol (KServe v2), the
REST API that Triton, OpenVINO Model Server, KServe and Seldon speak, so `tritonclient.http` and curl work
unchanged against it.

    serve("bundles/mobilenet", method="recipro", port=8000)          # or a fused model: "model.onnx"

The data path: request → `tensors` (JSON or binary tensors) → `batcher` (concurrent requests as one
batch) → `models` (the Explainer, or the fused graph) → response. `app` holds the routes, the token check,
the body limit and the error format; `metrics` the Prometheus counters. Needs the ``serve`` extra
(Starlette, uvicorn): ``pip install 'cam-infer[serve]'``.
"""

from __future__ import annotations

import numbers

from contextlib import contextmanager

from ..backends import check_threads
from ..backends.sessions import leave_the_cores_to_the_runtime
from ..errors import CamInferError

INSTALL = "pip install 'cam-infer[serve]'"


def serve(source, *, method: str | None = None, host: str = "127.0.0.1", port: int = 8000, backend: str = "auto",
          device: str = "CPU", precision: str = "f32", threads: int | None = None, token: str | None = None, name: str | None = None,
          max_batch: int = 16, window_ms: float = 0.0, max_body_mb: float = 32.0, options: dict | None = None,
          ready=None) -> None:
    """Serve a bundle folder or a fused .onnx model until SIGTERM or Ctrl-C (in-flight requests finish).
    `options`: the methods' options for every request (``{"top_k": 64}``: each method gets those it takes).
    `ready(port)` is called once the socket listens."""
    if isinstance(port, bool) or not isinstance(port, numbers.Integral) or not 0 <= port <= 65535:
        raise CamInferError(f"port must be an integer from 0 (any free port) to 65535, not {port!r}")
    port = int(port)
    check_threads(threads)
    if name is not None and (not isinstance(name, str) or not name or "/" in name or name in (".", "..")):
        raise CamInferError(f"the model's name is one segment of its URLs (/v2/models/NAME), so neither empty, "
                            f"'.', '..' nor holding '/': not {name!r}")
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise CamInferError(f"serve needs Starlette and uvicorn, which are not installed here: {INSTALL}") from None
    from pathlib import Path

    from .app import create_app
    from .loading import load_served

    for flag, value, fits, allowed in (("--max-batch", max_batch, lambda v: v >= 1, "at least 1"),
                                       ("--batch-window-ms", window_ms, lambda v: v >= 0, "0 or more"),
                                       ("--max-body-mb", max_body_mb, lambda v: v > 0, "more than 0")):
        if not fits(value):
            raise CamInferError(f"{flag} must be {allowed}, not {value}")
    leave_the_cores_to_the_runtime()
    served = load_served(source, method, backend, device, threads, precision, options)
    if name is None:
        path = Path(source).resolve()
        name = path.stem if path.is_file() else path.name
    app = create_app(served, name, token=token, max_body=int(max_body_mb * 2**20), max_batch=max_batch,
                     window=window_ms / 1000)
    listening = listening_socket(host, port)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30, lifespan="on")
    server = uvicorn.Server(config)
    if ready is not None:
        _announce_when_listening(server, ready)
    with listening, _clean_exit_on_signals():
        server.run(sockets=[listening])


def listening_socket(host: str, port: int):
    """The server's socket, bound to (host, port) before the server starts: binding is the only truthful
    check that the port is free, and holding the socket leaves no moment for another process to take it."""
    import errno
    import os
    import socket
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise CamInferError(f"cannot listen on host {host!r}: {exc.strerror}; give --host an address of "
                            "this machine (127.0.0.1 by default)") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name != "nt":                    # a port in TIME_WAIT is free (on Windows it would take a used one)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CamInferError(f"port {port} on {host} is in use (another server is listening there): stop it, "
                                "or choose another port with --port") from None
        raise CamInferError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    return sock


@contextmanager
def _clean_exit_on_signals():
    """uvicorn handles SIGTERM and SIGINT while it runs (graceful shutdown), then raises them again for the
    handlers it found: here those do nothing, so a graceful shutdown is a clean exit (status 0)."""
    import signal
    signals = (signal.SIGTERM, signal.SIGINT)
    try:
        previous = {s: signal.signal(s, lambda *_: None) for s in signals}
    except ValueError:                       # not the main thread: uvicorn does not capture signals either
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _announce_when_listening(server, ready) -> None:
    """Call ready(port) from uvicorn's startup, once its sockets listen (the real port when 0 was asked)."""
    startup = server.startup

    async def started(sockets=None):
        await startup(sockets=sockets)
        ports = [s.getsockname()[1] for srv in getattr(server, "servers", []) for s in srv.sockets]
        ready(ports[0] if ports else server.config.port)
    server.startup = started


__all__ = ["serve"]
