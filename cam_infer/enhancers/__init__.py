"""Enhancers: wrap any method (gradient-free or not), run it on transformed copies of the input and fuse
the maps. ``Explainer.explain(x, method, enhance="sess", enhance_options={...})``; one module per enhancer,
registered with `enhancer` in `ENHANCERS` (name → `Enhancer`). Like a method's, an enhancer's options are
the keyword-only arguments of its function, checked before it runs; its summary is its docstring's first line
and its cost the ``Cost:`` sentence of its module's docstring.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from dataclasses import dataclass
from typing import Callable

from ..errors import CamInferError
from ..methods.registry import MethodSpec, Option, check_options, get_method, options_of, split_variant, summary_of


@dataclass(frozen=True)
class Enhancer:
    name: str
    run: Callable            # (explainer, x, method, target, options, **enhancer options) → (fused, base explanation)
    count: Callable          # (height, width, **enhancer options) → inputs the base method explains per image
    options: dict[str, Option]
    summary: str
    cost: str

    def check_options(self, options: dict) -> None:
        check_options(options, self.options, f"enhancer '{self.name}'", self.name)

    def passes(self, height: int, width: int, **options) -> int:
        """Inputs the base method explains per image, with these options."""
        self.check_options(options)
        return self.count(height, width, **options)

    def __call__(self, explainer, x, method, target, options, **enhancer_options):
        self.check_options(enhancer_options)
        return self.run(explainer, x, method, target, options, **enhancer_options)


ENHANCERS: dict[str, Enhancer] = {}


def enhancer(name: str, *, passes: Callable):
    """Register an enhancer function under `name`; `passes` counts the inputs the base method explains."""
    def register(fn):
        if name in ENHANCERS:
            raise ValueError(f"enhancer name '{name}' is registered twice")
        cost = re.search(r"^Cost: (.*?)$", inspect.getdoc(sys.modules[fn.__module__]) or "", re.M)
        ENHANCERS[name] = Enhancer(name, fn, passes, options_of(fn), summary_of(fn, name),
                                   cost.group(1) if cost else "")
        return fn
    return register


def variants(names) -> dict[str, tuple[MethodSpec, Enhancer | None]]:
    """Each method name with an optional enhancer suffix → its method and enhancer (`cost.classifier_plan`)."""
    out = {}
    for name in names:
        method, enhancer = split_variant(name)
        out[name] = (get_method(method), None if enhancer is None else get_enhancer(enhancer))
    return out


def get_enhancer(name: str) -> Enhancer:
    if name not in ENHANCERS:
        raise CamInferError(f"unknown enhancer '{name}'; choose one of: {', '.join(ENHANCERS)}")
    return ENHANCERS[name]


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["ENHANCERS", "Enhancer", "enhancer", "get_enhancer", "split_variant", "variants"]
