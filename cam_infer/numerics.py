"""Small numerics shared along the data path."""

from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(z − max z) / Σ exp(z − max z) along `axis` (stable for large logits)."""
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def probabilities_of(outputs: np.ndarray, output_kind: str) -> np.ndarray:
    """Class probabilities of head outputs: a softmax unless the model already ends in one
    (`Bundle.output_kind` ``probabilities``)."""
    return outputs if output_kind == "probabilities" else softmax(outputs)
