"""Enhancers: wrap any method (gradient-free or not), run it on transformed copies of the input and fuse
the maps. ``Explainer.explain(x, method, enhance="sess", enhance_options={...})``; one module per enhancer,
registered in `ENHANCERS` (name → `Enhancer`: its function(explainer, x, method, target, options,
**enhancer_options) and the number of full-size passes it makes per image, for the benchmark's floor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import CamInferError
from . import evet, sess


@dataclass(frozen=True)
class Enhancer:
    name: str
    run: Callable            # (explainer, x, method, target, options, **enhancer options) → (fused, base explanation)
    passes: Callable         # (height, width, **enhancer options) → inputs the base method explains per image

    def __call__(self, *args, **kwargs):
        return self.run(*args, **kwargs)


ENHANCERS = {"evet": Enhancer("evet", evet.evet, evet.passes), "sess": Enhancer("sess", sess.sess, sess.passes)}


def split_variant(name: str) -> tuple[str, str | None]:
    """A method name with an optional enhancer suffix: 'recipro+sess' → ('recipro', 'sess'),
    'gradcam++' → ('gradcam++', None)."""
    method, plus, enhancer = name.rpartition("+")
    return (method, enhancer) if method and enhancer else (name, None)


def get_enhancer(name: str) -> Enhancer:
    if name not in ENHANCERS:
        raise CamInferError(f"unknown enhancer '{name}'; choose one of: {', '.join(ENHANCERS)}")
    return ENHANCERS[name]


__all__ = ["ENHANCERS", "Enhancer", "get_enhancer", "split_variant"]
