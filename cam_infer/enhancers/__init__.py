"""Enhancers: wrap any method (gradient-free or not), run it on transformed copies of the input and fuse
the maps. ``Explainer.explain(x, method, enhance="evet", enhance_options={...})``; one module per enhancer,
registered in `ENHANCERS` (name → function(explainer, x, method, target, options, **enhancer_options)).
"""

from __future__ import annotations

from ..errors import CamInferError
from .evet import evet

ENHANCERS = {"evet": evet}


def get_enhancer(name: str):
    if name not in ENHANCERS:
        raise CamInferError(f"unknown enhancer '{name}'; choose one of: {', '.join(ENHANCERS)}")
    return ENHANCERS[name]


__all__ = ["ENHANCERS", "get_enhancer"]
