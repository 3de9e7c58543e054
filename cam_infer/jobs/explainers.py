"""The one place a folder run opens an explainer (the Explainer picks the task from the bundle's manifest)."""

from __future__ import annotations


def open_explainer(bundle, backend: str = "auto", device: str = "CPU", threads: int | None = None,
                   gradients: str | None = None, precision: str = "f32", hint: str | None = None):
    """The explainer of `bundle` (a folder or an opened Bundle) for its task, on `backend` and `device`;
    `threads`: the runtime's threads (None: its default); `gradients` ("torch"): a classifier's gradient
    methods on a runtime without them; `precision`: what the runtime computes in (`RuntimeOptions`); `hint`:
    OpenVINO's performance hint (a folder run's "throughput"; other runtimes have none)."""
    from ..backends import backend_name
    from ..bundle import Bundle

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    options = {"backend": backend, "device": device, **({"threads": threads} if threads else {}),
               **({"precision": precision} if backend != "torch" else {}),
               **({"hint": hint} if hint and backend != "torch" and backend_name(bundle, backend) == "openvino"
                  else {})}
    from ..explainer import Explainer
    return Explainer(bundle, gradients=gradients, **options)
