"""Finer-CAM — Zhang, Gu, Chowdhury, Mai, Carlyn, Berger-Wolf, Su, Chao, CVPR 2025 (arXiv 2501.11309):
explain the class score *minus* the scores of the classes the model confuses it with, so that features
the classes share cancel. A variant of every class-specific method: it replaces the score the method takes.

References D: the `references` classes whose logits are closest to the explained class's, |y_d − y_c|
smallest, d ≠ c, chosen on the clean image. The objective on a logit vector y:
``preset="torchcam"`` (torchcam 0.5, default γ = 0.6): F(y) = y_c − γ·mean_{d∈D} y_d (linear in y, so CAM's
weights become W_c − γ·mean_d W_d exactly);
``preset="official"`` (the authors' code, α = 1): F(y) = Σ_d p_d (y_c − α·y_d) / Σ_d p_d, p = softmax(y).
γ = 0 gives the base method (on logits). Finer-CAM scores logits: a model that ends in a softmax has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CamInferError
from .numerics import softmax


@dataclass(frozen=True)
class Finer:
    gamma: float = 0.6
    references: int = 3
    preset: str = "torchcam"

    @classmethod
    def of(cls, value) -> "Finer | None":
        """`finer=` as explain() takes it: None, a γ, a dict of the fields, or a Finer."""
        if value is None or isinstance(value, Finer):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            finer = cls(gamma=float(value))
        elif isinstance(value, dict):
            unknown = set(value) - {"gamma", "references", "preset"}
            if unknown:
                raise CamInferError(f"finer takes gamma, references and preset, not {', '.join(sorted(unknown))}")
            finer = cls(**value)
        else:
            raise CamInferError(f"finer must be a γ (number) or a dict of gamma, references, preset, not {value!r}")
        if finer.preset not in ("torchcam", "official"):
            raise CamInferError(f"finer's preset must be 'torchcam' or 'official', not {finer.preset!r}")
        if finer.references < 1:
            raise CamInferError(f"finer's references must be at least 1, not {finer.references}")
        if not finer.gamma >= 0:
            raise CamInferError(f"finer's gamma must be 0 or more, not {finer.gamma}")
        return finer

    def references_for(self, logits: np.ndarray, target: int) -> np.ndarray:
        """The classes closest in logit to `target`, nearest first (target excluded)."""
        distance = np.abs(logits - logits[target]).astype(np.float64)
        distance[target] = np.inf
        count = min(self.references, len(logits) - 1)
        return np.argsort(distance, kind="stable")[:count]

    def objective(self, logits: np.ndarray, target: int, refs: np.ndarray) -> np.ndarray:
        """F for each row of logits (R,C) → (R,)."""
        logits = np.asarray(logits, np.float64)
        yc, yd = logits[:, target], logits[:, refs]
        if self.preset == "torchcam":
            return (yc - self.gamma * yd.mean(axis=1)).astype(np.float32)
        p = softmax(logits)[:, refs]
        return ((p * (yc[:, None] - self.gamma * yd)).sum(axis=1) / (p.sum(axis=1) + 1e-9)).astype(np.float32)

    def weight_row(self, weight: np.ndarray, target: int, refs: np.ndarray) -> np.ndarray:
        """CAM's weights under the objective: W_c − γ·mean_d W_d (exact for the linear preset, and for the
        official preset with one reference, where the probability weights cancel)."""
        if self.preset == "official" and len(refs) > 1:
            raise CamInferError("cam with finer's official preset needs one reference (its objective is not linear "
                                "in the logits otherwise); use references=1 or the torchcam preset")
        return weight[target] - self.gamma * weight[refs].mean(axis=0)

    def torch_objective(self, torch, scores, targets: np.ndarray, refs: np.ndarray):
        """F on torch logits (N,C) → (N,), for the gradient methods (p not detached, as the authors' code)."""
        rows = torch.arange(len(targets))
        yc = scores[rows, torch.from_numpy(targets)]
        yd = scores[rows[:, None], torch.from_numpy(refs)]
        if self.preset == "torchcam":
            return yc - self.gamma * yd.mean(dim=1)
        p = torch.softmax(scores, dim=1)[rows[:, None], torch.from_numpy(refs)]
        return (p * (yc[:, None] - self.gamma * yd)).sum(dim=1) / (p.sum(dim=1) + 1e-9)
