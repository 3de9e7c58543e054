"""Tensors → maps: one module per method, each registering itself (`registry.method`) under its
user-facing name, with its code for other tasks beside it (`registry.implements`). Every module of this
package is imported here, so adding a method is adding a module.

A classifier method takes a `Context` (activations, targets, backend, input when it needs full passes,
gradients of the target score for the gradient methods) and keyword options, and returns
low-resolution maps (N,h,w) before ReLU and normalisation. A detector method takes a detection context (one
image: its cut maps, per level) and the targets, and returns one raw map per target at the input's size, its
levels combined by `levels`.
"""

from __future__ import annotations

import importlib
import pkgutil

from .registry import (METHODS, NEEDS, Context, MethodSpec, explaining, get_method, implements,  # noqa: F401
                       in_all, method)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in ("registry", "levels"):
        importlib.import_module(f"{__name__}.{_module}")

# Cheapest first: by what a method needs, then by name.
_order = sorted(METHODS.values(), key=lambda spec: (NEEDS.index(spec.needs), spec.name))
METHODS.clear()
METHODS.update((spec.name, spec) for spec in _order)

GRADIENT_FREE = tuple(in_all("classification"))   # what "all" runs for a classifier
GRADIENT = tuple(name for name, m in METHODS.items() if m.gradient)

__all__ = ["Context", "GRADIENT", "GRADIENT_FREE", "METHODS", "MethodSpec", "explaining", "get_method", "implements",
           "in_all", "method"]
