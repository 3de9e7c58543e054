"""Attention rollout's class-token row (`methods.rollout.class_token_row`, the discarded entries left out of sums
and products) against a brute-force twin that forms R whole, on attention made to be hard: ties at the discard
threshold, an all-zero block, the class token's own entry below the threshold."""

import numpy as np
import pytest

from cam_infer.methods.rollout import class_token_row

T, BLOCKS = 17, 4


def brute_force(a: np.ndarray, discard_ratio: float, renormalise: str) -> np.ndarray:
    """R = Â_L · … · Â_1 formed whole in float64, the threshold from a full sort: row 0."""
    rows = []
    for image in a.astype(np.float64):
        r = np.eye(T)
        for f in image:
            f = f.copy()
            drop = int(T * T * discard_ratio)
            if drop:
                threshold = np.sort(f.ravel())[drop - 1]
                corner = f[0, 0]
                f[f <= threshold] = 0
                f[0, 0] = corner
            s = f.sum(axis=1) + 1
            step = (f + np.eye(T)) / (s[:, None] if renormalise == "rows" else s[None, :])
            r = step @ r
        rows.append(r[0])
    return np.array(rows)


def hard_attention(seed: int) -> np.ndarray:
    """(3 images, BLOCKS, T, T): rows of a softmax rounded to 1/32 (many ties at any quantile), one block all zeros,
    one image whose class token never attends to itself."""
    rng = np.random.default_rng(seed)
    a = np.round(rng.dirichlet(np.full(T, 0.4), size=(3, BLOCKS, T)) * 32) / 32
    a[1, 2] = 0.0
    a[2, :, 0, 0] = 0.0
    return a.astype(np.float32)


@pytest.mark.parametrize("discard_ratio, renormalise", [(0.9, "rows"), (0.5, "reference"), (0.0, "rows"),
                                                        (0.97, "rows"), (0.3, "reference")])
def test_class_token_row_equals_the_whole_product_with_ties(discard_ratio, renormalise):
    a = hard_attention(int(discard_ratio * 100))
    got = class_token_row([a[:, b] for b in range(BLOCKS)], discard_ratio, renormalise)
    np.testing.assert_allclose(got, brute_force(a, discard_ratio, renormalise), rtol=1e-12, atol=1e-15)


def test_the_bracketed_selection_is_the_sorts_kth_value():
    """`kth_smallest` (a bracket from a strided sample, then a select inside it) against a full sort: random sizes
    and skews, many ties, k at both ends, and samples that miss the k-th value on purpose (every 16th value, the
    ones the sample reads, far above the rest: the bracket misses, the whole partition runs)."""
    from cam_infer.methods.rollout import SAMPLE_STRIDE, kth_smallest
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(1500):
        m = int(rng.integers(1, 40_000 if rng.random() < 0.1 else 3_000))
        values = (rng.random(m) ** rng.uniform(0.2, 5.0)).astype(np.float32)
        if rng.random() < 0.3:
            values = np.round(values * 16) / 16                       # ties at every quantile
        cases.append((values, int(rng.choice([0, m - 1, int(rng.integers(0, m))]))))
    skewed = rng.random(20_000).astype(np.float32)
    skewed[::SAMPLE_STRIDE] += 10.0
    cases += [(skewed, k) for k in (0, 9_000, 18_000, 19_999)]
    for values, k in cases:
        assert kth_smallest(values, k) == np.sort(values)[k], (values.size, k)
