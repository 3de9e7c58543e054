"""ADCC — Poppi, Cornia, Baraldi, Cucchiara, "Revisiting The Evaluation of Class Activation
Mapping for Explainability: A Novel Metric and Experimental Analysis", CVPR-W 2021 (arXiv 2104.10252).

Coherency = (Pearson(S, S′) + 1)/2, S′ the map of the explanation map E = x ⊙ S for the same class
(0 when the correlation is undefined); Complexity = mean |S|;
ADCC = 3 / (1/Coherency + 1/(1 − Complexity) + 1/(1 − Average Drop)).
The official code averages per-image ADCC; the published tables are the ADCC of the dataset means
of the three components (`adcc` of the means) — report both.
"""

from __future__ import annotations

import numpy as np


def coherency(saliency: np.ndarray, again: np.ndarray) -> float:
    """(Pearson + 1)/2 of two maps of the same shape; 0 when either is constant."""
    a, b = np.asarray(saliency, np.float64).ravel(), np.asarray(again, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    if denominator == 0 or not np.isfinite(denominator):
        return 0.0
    return float(((a * b).sum() / denominator + 1) / 2)    # not np.dot: BLAS's threads would change the last digits


def complexity(saliency: np.ndarray) -> float:
    """Mean absolute value of a map in [0,1]."""
    return float(np.abs(np.asarray(saliency, np.float64)).mean())


def adcc(coherency, complexity, average_drop):
    """Harmonic mean of Coherency, 1 − Complexity and 1 − Average Drop (fractions; arrays work
    element-wise); 0 where any of the three is 0."""
    terms = [np.asarray(coherency, np.float64), 1 - np.asarray(complexity, np.float64),
             1 - np.asarray(average_drop, np.float64)]
    zero = np.any([t <= 0 for t in terms], axis=0)
    with np.errstate(divide="ignore"):
        value = 3 / sum(1 / np.where(t <= 0, 1, t) for t in terms)
    result = np.where(zero, 0.0, value)
    return float(result) if result.ndim == 0 else result
