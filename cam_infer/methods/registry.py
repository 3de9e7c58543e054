"""The method registry and what every method receives."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..backends.base import Backend
from ..bundle import Bundle
from ..bundle.head import LinearHead
from ..errors import CamInferError


@dataclass
class Context:
    """What a method may use. `logits` are the head's scores on `activations` (probabilities for
    bundles whose output kind is ``probabilities``)."""

    x: np.ndarray                  # (N,3,H,W) model input
    activations: np.ndarray        # (N,K,h,w)
    targets: np.ndarray            # (N,) class explained per image
    outputs: np.ndarray            # (N,C) head(activations)
    backend: Backend
    bundle: Bundle
    linear_head: LinearHead | None = field(default=None)
    gradients: np.ndarray | None = field(default=None)   # (N,K,h,w) ∂y_target/∂A, pre-softmax y

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Class probabilities of head outputs: a softmax unless the model already ends in one."""
        return outputs if self.bundle.output_kind == "probabilities" else softmax(outputs)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    needs: str            # "features" | "linear_head" | "head" | "model" | "gradients"
    options: tuple[str, ...]

    def __call__(self, ctx: Context, **options) -> np.ndarray:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise CamInferError(f"method '{self.name}' has no option {', '.join(unknown)}; "
                                f"its options: {', '.join(self.options) or 'none'}")
        return self.fn(ctx, **options)


METHODS: dict[str, Method] = {}


def method(name: str, needs: str = "features"):
    """Register a method function under `name`; its keyword-only arguments are its options."""
    def register(fn):
        params = inspect.signature(fn).parameters.values()
        options = tuple(p.name for p in params if p.kind == p.KEYWORD_ONLY)
        METHODS[name] = Method(name, fn, needs, options)
        return fn
    return register


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise CamInferError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise CamInferError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")
