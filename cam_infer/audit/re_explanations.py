"""ADCC's re-explanations of several images run together.

ADCC (Poppi et al., CVPR-W 2021; `cam_infer.metrics.adcc`) explains each map's explanation image E = x ⊙ S again
for the same class: S′ gives Coherency = (Pearson(S, S′) + 1)/2, and O, E's class probability, the Average Drop
max(0, Y − O)/Y. Run image by image, each re-explanation is a batch of one. Here the explanation images of several
images are gathered per method and explained in one call per method for every FLUSH_BYTES of them; each row's
ADCC fields are then written, equal to the image-by-image run within float rounding (tests/test_audit.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..metrics import adcc, average_drop, coherency, complexity, increase_in_confidence
from ..numerics import probabilities_of
from ..postprocess import normalise


class ReExplanations:
    """`explain(inputs, variant, targets)` → an Explanation of every input; rows get their ADCC fields at `flush`."""

    FLUSH_BYTES = 64 * 2**20              # ≈ 110 explanation images at 224×224

    def __init__(self, explain: Callable, output_kind: str, coherency_at: str = "input"):
        self.explain, self.output_kind, self.coherency_at = explain, output_kind, coherency_at
        self.pending: dict[str, list] = {}      # variant → [(row, its explanation image (1,C,H,W), its explanation)]
        self.held = 0

    def add(self, row: dict, variant: str, masked: np.ndarray, explanation) -> None:
        """Re-explain `masked` (E of one image) with `variant` later; `explanation`: that image's first one."""
        self.pending.setdefault(variant, []).append((row, masked, explanation))
        self.held += masked.nbytes
        if self.held >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        for variant, items in self.pending.items():
            targets = np.concatenate([e.targets for _, _, e in items])
            again = self.explain(np.concatenate([masked for _, masked, _ in items]), variant, targets)
            o = probabilities_of(again.outputs, self.output_kind)[np.arange(len(targets)), targets]
            again_low = normalise(again.maps)[0] if self.coherency_at == "map" else None
            for i, (row, _, e) in enumerate(items):
                row.update(self._fields(e, float(o[i]), again.saliency[i], None if again_low is None else again_low[i]))
        self.pending, self.held = {}, 0

    def _fields(self, e, o: float, again_saliency: np.ndarray, again_low) -> dict:
        """Average Drop, Increase in Confidence, Coherency, Complexity and ADCC of one image's map."""
        drop = float(average_drop(e.scores, o)[0])
        if self.coherency_at == "input":
            coherent, simple = coherency(e.saliency[0], again_saliency), complexity(e.saliency[0])
        else:
            low = normalise(e.maps)[0][0]
            coherent, simple = coherency(low, again_low), complexity(low)
        return {"average_drop": drop, "increase": float(increase_in_confidence(e.scores, o)[0]),
                "coherency": coherent, "complexity": simple, "adcc": float(adcc(coherent, simple, drop))}
