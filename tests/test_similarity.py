"""Map-similarity measures against closed forms and brute-force twins."""

import numpy as np
import pytest

from cam_infer.metrics.similarity import average_ranks, spearman, ssim, top_iou, top_mask


def brute_ranks(x):
    x = np.ravel(x)
    return np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])


def brute_ssim(a, b, w=7):
    a = (a - a.min()) / (a.max() - a.min())
    b = (b - b.min()) / (b.max() - b.min())
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for i in range(a.shape[0] - w + 1):
        for j in range(a.shape[1] - w + 1):
            pa, pb = a[i:i + w, j:j + w].ravel(), b[i:i + w, j:j + w].ravel()
            ma, mb = pa.mean(), pb.mean()
            va, vb = pa.var(ddof=1), pb.var(ddof=1)
            cab = ((pa - ma) * (pb - mb)).sum() / (pa.size - 1)
            vals.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ranks_average_ties():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0])
    assert average_ranks(x).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 200).astype(float)
    np.testing.assert_array_equal(average_ranks(y), brute_ranks(y))


def test_spearman_is_pearson_of_ranks_of_absolute_values():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(12, 12))
    b = a + rng.normal(scale=0.7, size=a.shape)
    b[0, :6] = b[0, 0]  # ties
    expected = np.corrcoef(brute_ranks(np.abs(a)), brute_ranks(np.abs(b)))[0, 1]
    assert spearman(a, b) == pytest.approx(expected, abs=1e-12)
    assert spearman(a, -a) == pytest.approx(1.0)  # absolute values
    assert spearman(np.arange(5.0), np.arange(5.0)[::-1]) == pytest.approx(-1.0)


def test_spearman_hand_case():
    # ranks (1,2,3,4) vs (2,1,4,3): d^2 sum = 4, rho = 1 - 6*4/(4*15) = 0.6
    assert spearman([1.0, 2, 3, 4], [2.0, 1, 4, 3]) == pytest.approx(0.6)


def test_ssim_self_is_one_and_matches_brute_force():
    rng = np.random.default_rng(2)
    a = rng.random((16, 19))
    b = np.clip(a + rng.normal(scale=0.3, size=a.shape), 0, None)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, 5 * a + 2) == pytest.approx(1.0, abs=1e-12)  # min-max normalised first
    assert ssim(a, b) == pytest.approx(brute_ssim(a, b), abs=1e-10)
    assert ssim(a, b) < 0.9


def test_ssim_refuses_small_maps():
    with pytest.raises(ValueError):
        ssim(np.zeros((5, 9)), np.zeros((5, 9)))


def test_top_iou_closed_form():
    a = np.arange(100.0).reshape(10, 10)
    assert top_mask(a).sum() == 20
    assert top_iou(a, a) == 1.0
    assert top_iou(a, -a) == 0.0
    b = np.roll(a.ravel(), 10).reshape(10, 10)  # top 20 shifted by ten: overlap 10, union 30
    assert top_iou(a, b) == pytest.approx(10 / 30)
