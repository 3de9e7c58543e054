"""Small numerics shared along the data path."""

from __future__ import annotations

import numpy as np


def is_whole_number(value) -> bool:
    """A Python or NumPy integer; a bool is not one, though Python counts it as an int."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def zero_padded(x: np.ndarray, rows: int) -> np.ndarray:
    """x with zero rows appended up to `rows` (a graph of a fixed batch takes no fewer)."""
    if len(x) == rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)])


def nonzero_per_row(values: np.ndarray) -> np.ndarray:
    """(R,) int64: the non-zero entries of each row of values (R, ...), one `np.count_nonzero` per row (with an
    axis it counts through a cast and a sum: 10× slower on a segmenter's class planes)."""
    return np.array([np.count_nonzero(row) for row in values], np.int64)


# A float16 graph against a float32 reading of it (or a split of it), relative to max(1, |values|): float16 rounds
# to 2^-11, and the sums of a convolution or a pooling (K ≈ 50–2 000 terms) grow that by ~16×.
FLOAT16_TOLERANCE = 2.0 ** -7
UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "f16": 2.0 ** -11}     # of the reduced formats a runtime computes in
ROUNDING_STEPS = 1.5      # scores this many quantization steps apart or fewer are rounding's levels, not evidence


def within_rounding(values: np.ndarray, outputs: np.ndarray, precision: str, probability_of_logits: bool,
                    step: float = 0.0) -> bool:
    """Whether a map of class scores `values` read from model outputs (…,C) computed at `precision` spans no more than
    the format's rounding of one output: δ = u·max|z| (u the unit roundoff, z the outputs), times the softmax's
    sensitivity 2·max p(1−p) where the map holds probabilities of the logits z. Such a map is the format's noise,
    not the model's (a confident ViT at bf16: a map spanning 2·10⁻⁵ of probability, uncorrelated with float32's and
    changing with the batch). Never at f32 — unless the outputs are quantized with `step` (an int8 file's logits):
    then δ ≥ 1.5·step, since scores that are multiples of the step and span one of them are two levels that rounding
    drew (an int8 ViT's map one step wide is uncorrelated with the float model's)."""
    u = UNIT_ROUNDOFF.get(precision)
    if u is None and not step:
        return False
    noise = max(u * max(float(outputs.max()), -float(outputs.min())) if u else 0.0,     # max|z| without a copy
                ROUNDING_STEPS * step)
    if probability_of_logits:
        noise *= softmax_sensitivity(values)
    return float(np.ptp(values)) <= noise


def softmax_sensitivity(p: np.ndarray) -> float:
    """2·max p(1−p): how far probabilities p of logits move per unit of their logits (at most)."""
    return 2 * float((p * (1 - p)).max())


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(z − max z) / Σ exp(z − max z) along `axis` (stable for large logits)."""
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def softmax_column(z: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """softmax(z)[..., c] for one class per row, given chosen = z[..., c]: exp(z_c − max z) / Σ exp(z − max z),
    without the other columns' divisions; z (…,C) is overwritten."""
    top = z.max(axis=-1)
    z -= top[..., None]
    return np.exp(chosen - top) / np.exp(z, out=z).sum(axis=-1)


def probabilities_of(outputs: np.ndarray, output_kind: str) -> np.ndarray:
    """Class probabilities of head outputs: a softmax unless the model already ends in one
    (`Bundle.output_kind` ``probabilities``)."""
    return outputs if output_kind == "probabilities" else softmax(outputs)
