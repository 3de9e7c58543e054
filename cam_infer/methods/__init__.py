"""Tensors → maps: one module per method, each registering itself (`registry.method`) under its
user-facing name. Every module of this package is imported here, so adding a method is adding a module.

Every method takes a `Context` (activations, targets, backend, input when it needs full passes,
gradients of the target score for the gradient methods) and keyword options, and returns
low-resolution maps (N,h,w) before ReLU and normalisation.
"""

from __future__ import annotations

import importlib
import pkgutil

from .registry import METHODS, NEEDS, Context, MethodSpec, get_method, method  # noqa: F401

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in ("registry", "__main__"):
        importlib.import_module(f"{__name__}.{_module}")

# Cheapest first: by what a method needs, then by name.
_order = sorted(METHODS.values(), key=lambda spec: (NEEDS.index(spec.needs), spec.name))
METHODS.clear()
METHODS.update((spec.name, spec) for spec in _order)

GRADIENT_FREE = tuple(name for name, m in METHODS.items() if not m.gradient and m.in_all)   # what "all" runs
GRADIENT = tuple(name for name, m in METHODS.items() if m.gradient)

__all__ = ["Context", "GRADIENT", "GRADIENT_FREE", "METHODS", "MethodSpec", "get_method", "method"]
