"""Every Numba kernel against a plain NumPy twin."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cam_infer import kernels
from helpers import full_size_region_scores

RNG = np.random.default_rng(0)


def numpy_spatial_entropy(a):
    k, h, w = a.shape
    p = np.maximum(a.reshape(k, -1), 0).astype(np.float64)
    total = p.sum(axis=1, keepdims=True)
    p = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=1) / np.log(h * w)


def numpy_first_component(a: np.ndarray) -> np.ndarray:
    """Eigen-CAM's map of a cut (K,h,w) in float64: O v₁ (O the cut as h·w×K, v₁ OᵀO's first eigenvector, signed so
    that Σ_k v₁ₖ ≥ 0), (h,w); its norm is σ₁."""
    o = a.reshape(len(a), -1).T.astype(np.float64)
    v = np.linalg.eigh(o.T @ o)[1][:, -1]
    return (o @ (v if v.sum() >= 0 else -v)).reshape(a.shape[1:])


def numpy_histogram_entropy(a, bins=256):
    out = []
    for x in a.reshape(a.shape[0], -1):
        if x.max() <= x.min():
            out.append(0.0)
            continue
        counts, _ = np.histogram((x - x.min()) / (x.max() - x.min()), bins=bins, range=(0, 1))
        q = counts[counts > 0] / x.size
        out.append(-(q * np.log2(q)).sum() / np.log2(min(x.size, bins)))
    return np.array(out)


def test_spatial_entropy_matches_numpy_and_bounds():
    a = RNG.standard_normal((20, 7, 7)).astype(np.float32)
    a[3] = 0                                           # no positive mass: entropy 0
    a[4] = 1                                           # uniform: entropy 1
    a[5] = 0
    a[5, 2, 2] = 3                                     # one hot: entropy 0
    got = kernels.spatial_entropy(a)
    np.testing.assert_allclose(got, numpy_spatial_entropy(a), rtol=1e-5, atol=1e-6)
    assert got[3] == 0 and abs(got[4] - 1) < 1e-6 and got[5] == 0


def test_histogram_entropy_matches_numpy():
    a = RNG.standard_normal((10, 14, 14)).astype(np.float32)
    a[0] = 2.0
    np.testing.assert_allclose(kernels.histogram_entropy(a, 256), numpy_histogram_entropy(a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", [np.ones((1, 1), np.float32),
                                    np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16])
def test_recipro_masked_batch_matches_numpy(kernel):
    a = RNG.standard_normal((5, 4, 6)).astype(np.float32)
    k, h, w = a.shape
    expected = np.zeros((h * w, k, h, w), np.float32)
    r = kernel.shape[0] // 2
    for i in range(h):
        for j in range(w):
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    if 0 <= i + di < h and 0 <= j + dj < w:
                        expected[i * w + j, :, i + di, j + dj] = kernel[di + r, dj + r] * a[:, i, j]
    out = np.full_like(expected, 7.0)
    kernels.recipro_masked_batch(a, kernel, out)
    np.testing.assert_array_equal(out, expected)


def test_ablated_batch_matches_numpy():
    a = RNG.standard_normal((6, 3, 3)).astype(np.float32)
    channels = np.array([0, 4, 5])
    out = np.empty((3, 6, 3, 3), np.float32)
    kernels.ablated_batch(a, channels, out)
    for r, c in enumerate(channels):
        expected = a.copy()
        expected[c] = 0
        np.testing.assert_array_equal(out[r], expected)


def test_bilinear_minmax_masks_match_cv2_resize_and_minmax():
    a = RNG.standard_normal((6, 7, 7)).astype(np.float32)
    a[2] = 0.5                                          # constant: invalid, mask left at 0
    channels = np.array([0, 2, 5])
    out = np.empty((3, 32, 48), np.float32)
    valid = kernels.bilinear_minmax_masks(a, channels, 32, 48, out)
    assert valid.tolist() == [True, False, True]
    for r, c in enumerate(channels):
        if not valid[r]:
            assert not out[r].any()
            continue
        up = cv2.resize(a[c], (48, 32), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(out[r], (up - up.min()) / (up.max() - up.min()), atol=2e-5)


def test_masked_inputs_matches_numpy():
    x = RNG.standard_normal((3, 8, 8)).astype(np.float32)
    masks = RNG.random((4, 8, 8)).astype(np.float32)
    out = np.empty((4, 3, 8, 8), np.float32)
    kernels.masked_inputs(x, masks, out)
    np.testing.assert_allclose(out, x[None] * masks[:, None], rtol=1e-6)


CONCURRENT_LAUNCHES = """
import threading, numpy as np
from cam_infer import kernels
rng = np.random.default_rng(1)
x, masks = rng.standard_normal((3, 64, 64)).astype(np.float32), rng.random((16, 64, 64)).astype(np.float32)
a, channels = rng.standard_normal((32, 7, 7)).astype(np.float32), np.arange(0, 32, 2)
failures = []
def launch():
    out, up = np.empty((16, 3, 64, 64), np.float32), np.empty((16, 64, 64), np.float32)
    for _ in range(100):
        kernels.masked_inputs(x, masks, out)
        kernels.bilinear_minmax_masks(a, channels, 64, 64, up)
        if not np.array_equal(out, x[None] * masks[:, None]):
            failures.append("masked_inputs")
threads = [threading.Thread(target=launch) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
import numba
print(numba.threading_layer(), len(failures))
"""


def test_parallel_kernels_launched_from_several_threads_on_numba_s_workqueue_layer():
    """Where neither OpenMP nor TBB loads, Numba's workqueue layer aborts the process when two threads launch
    parallel kernels at once (the pipelined runner and the server explain from several threads): launches take
    turns there, and the results stay exact."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    run = subprocess.run([sys.executable, "-c", CONCURRENT_LAUNCHES], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["workqueue", "0"]


@pytest.mark.parametrize("gap", [0.05, 0.5, 0.97])       # λ₂/λ₁: settles at once / slowly / gives up (ρ > 0.9)
def test_power_component_matches_its_numpy_twin(gap):
    from cam_infer.methods.eigen import FLOAT32_TOLERANCE, POWER_STEPS, power_projection, start_vector
    rng = np.random.default_rng(5)
    u, _ = np.linalg.qr(rng.standard_normal((300, 12)))
    v, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    s = np.array([1.0, np.sqrt(gap), *np.linspace(0.3, 0.01, 10)]) * 10
    o = ((u * s) @ v.T).astype(np.float32)                            # (n=300, K=12)
    rows = np.ascontiguousarray(o.T)
    projection, steps = kernels.power_component(rows, start_vector(rows.sum(axis=1)), FLOAT32_TOLERANCE, POWER_STEPS)
    twin = power_projection(o)
    assert (steps == 0) == (twin is None) == (gap > 0.9)
    if twin is not None:
        twin = twin * np.sign(np.sum(o.T @ twin))                     # the kernel's sign: Σ_k v₁ₖ ≥ 0
        np.testing.assert_allclose(projection, twin, rtol=1e-4, atol=1e-4 * np.abs(twin).max())
        exact = s[0] * u[:, 0] * np.sign(np.sum(v[:, 0]))
        np.testing.assert_allclose(projection, exact, rtol=1e-3, atol=1e-3 * np.abs(exact).max())


def test_add_normalised_matches_normalise_then_cv2_resize():
    from cam_infer.postprocess import EPS, normalise
    levels = [RNG.standard_normal((40, 40)), RNG.standard_normal((20, 20)), RNG.standard_normal((10, 10)),
              np.full((10, 10), 0.3), -np.abs(RNG.standard_normal((20, 20)))]      # constant; nothing above 0
    out = np.full((40, 40), 0.25, np.float32)
    expected = out.copy()
    for m in levels:
        m = m.astype(np.float32)
        kernels.add_normalised(m, out, 0.2, EPS)
        normalised, degenerate = normalise(m[None])
        assert not degenerate[0] or not normalised.any()
        expected += 0.2 * cv2.resize(normalised[0], (40, 40), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out, expected, atol=2e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_lookup_channels_matches_numpy_take(channels):
    pixels = RNG.integers(0, 256, (9, 7, channels), dtype=np.uint8)
    pixels[0, 0], pixels[-1, -1] = 0, 255
    table = RNG.standard_normal((channels, 256)).astype(np.float32)
    for view in (pixels, pixels[..., ::-1]):                # contiguous, and the reversed view a BGR model reads
        out = np.full((channels, 9, 7), np.nan, np.float32)
        kernels.lookup_channels(view, table, out)
        np.testing.assert_array_equal(out, np.stack([np.take(table[c], view[..., c]) for c in range(channels)]))


def test_class_argmax_matches_numpy_argmax_with_ties_and_nans():
    scores = RNG.integers(0, 4, (21, 37, 29)).astype(np.float32)       # many ties: the first class wins
    scores[5, 3, 4] = scores[9, 3, 4] = np.nan                           # the first NaN wins
    scores[:, 7, 7] = np.nan
    np.testing.assert_array_equal(kernels.class_argmax(scores), scores.argmax(axis=0))
    logits = RNG.standard_normal((3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(kernels.class_argmax(logits), logits.argmax(axis=0))


def test_exp_rows_matches_numpy_exp_within_two_ulp_and_clamps():
    x = np.stack([np.linspace(-87, 88, 20_001, dtype=np.float32), RNG.uniform(-3, 3, 20_001).astype(np.float32)])
    got = x.copy()
    kernels.exp_rows(got, x.shape[1] - 1)                      # the last column is left as it was
    reference = np.exp(x[:, :-1].astype(np.float64))
    assert np.abs(got[:, :-1] / reference - 1).max() < 2.5e-7
    np.testing.assert_array_equal(got[:, -1], x[:, -1])
    extreme = np.array([[-1e4, -100.0, 100.0, 1e4]], np.float32)
    kernels.exp_rows(extreme, 4)
    assert np.isfinite(extreme).all() and extreme[0, 0] == extreme[0, 1] > 0 and extreme[0, 2] == extreme[0, 3]


def test_summed_area_matches_numpy_cumsums():
    region = RNG.random((37, 23)) < 0.4
    expected = np.pad(region.astype(np.int32).cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    np.testing.assert_array_equal(kernels.summed_area(region), expected)


def brute_force_region_scores(tail, a, c, region, activation):
    """The twin of `support_scores` (through `LinearTail.recipro_scores`): the float tail at the output's full
    size, the cut kept at one position at a time, the target's score averaged over the region."""
    _, h, w = a.shape
    positions = [(i, j) for i in range(h) for j in range(w)]
    return full_size_region_scores(tail, a, c, region, positions, activation).reshape(h, w)


@pytest.mark.parametrize("k, factor, mode", [(1, 8, "half_pixel"), (3, 4, "align_corners"), (3, 2, "half_pixel")])
def test_support_scores_match_the_full_size_tail_position_by_position(k, factor, mode):
    """Softmax, sigmoid and identity, on supports whose weight rows repeat (8×: scored once per group) and ones
    that do not; a random region, the whole image, one pixel, all but one pixel and a rectangle; and with the
    summed-area shortcuts turned off (the spans cleared: every support read pixel by pixel), the same values."""
    from cam_infer.bundle.linear_tail import LinearTail, linear_weights
    n_class, n_in, h, w = 4, 6, 5, 6
    tail = LinearTail(RNG.standard_normal((n_class, n_in, k, k)).astype(np.float32),
                      RNG.standard_normal(n_class).astype(np.float32),
                      linear_weights(h, h * factor, mode).astype(np.float32),
                      linear_weights(w, w * factor, mode).astype(np.float32), "softmax")
    assert (tail.groups[0][0] is not None) == (factor == 8)
    a = np.abs(RNG.standard_normal((n_in, h, w))).astype(np.float32)
    one = np.zeros((h * factor, w * factor), bool)
    one[7, 3] = True
    block = np.zeros_like(one)
    block[5:19, 2:13] = True
    regions = [RNG.random(one.shape) < 0.3, np.ones_like(one), one, ~one, block]
    unshortened = LinearTail(tail.kernel, tail.bias, tail.ry, tail.rx, tail.activation)
    for axis in unshortened.kernel_axes:
        axis[2][:] = (0, -1)
    for region in regions:
        for activation in ("softmax", "sigmoid", "none"):
            c = 2
            expected = brute_force_region_scores(tail, a, c, region, activation)
            got = tail.recipro_scores(a, c, region, activation)
            np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6 * np.abs(expected).max())
            np.testing.assert_allclose(unshortened.recipro_scores(a, c, region, activation), got, rtol=1e-6)


def test_every_parallel_kernel_takes_turns_where_launches_are_not_threadsafe():
    """A `parallel=True` kernel not wrapped in `launched_safely` would abort the process on Numba's workqueue
    layer when the server or the pipelined runner launch it from two threads."""
    import inspect
    parallel = [name for name, f in vars(kernels).items()
                if getattr(getattr(f, "__wrapped__", f), "targetoptions", {}).get("parallel")]
    assert {"bilinear_minmax_masks", "masked_inputs", "support_rows", "class_argmax"} <= set(parallel)
    for name in parallel:
        assert inspect.getsource(getattr(kernels, name)).lstrip().startswith("@launched_safely"), name


def test_region_means_match_numpy_masked_means():
    scores = RNG.standard_normal((5, 4, 33, 29)).astype(np.float32)[:, 2]          # rows of a class: a strided view
    region = RNG.random((33, 29)) < 0.3
    np.testing.assert_allclose(kernels.region_means(scores, region), scores[:, region].mean(axis=1, dtype=np.float64),
                               rtol=1e-12)
    np.testing.assert_allclose(kernels.region_means(scores[:1], region), [scores[0][region].mean(dtype=np.float64)],
                               rtol=1e-12)
    assert np.isnan(kernels.region_means(scores, np.zeros_like(region))).all()


def test_support_scores_where_a_resize_skips_cells_of_the_cut():
    """A resize to fewer rows than the cut has (3×: 12 → 4) leaves cells that reach no output pixel: their
    positions keep the bias's score, as the full-size tail gives."""
    from cam_infer.bundle.linear_tail import LinearTail, linear_weights
    tail = LinearTail(RNG.standard_normal((3, 4, 1, 1)).astype(np.float32), RNG.standard_normal(3).astype(np.float32),
                      linear_weights(12, 4, "asymmetric").astype(np.float32),
                      linear_weights(9, 18, "half_pixel").astype(np.float32), "softmax")
    assert not tail.supports[0][2].any(axis=1).all()                   # some cells reach no output row
    a = np.abs(RNG.standard_normal((4, 12, 9))).astype(np.float32)
    region = RNG.random((4, 18)) < 0.5
    for activation in ("softmax", "sigmoid", "none"):
        np.testing.assert_allclose(tail.recipro_scores(a, 1, region, activation),
                                   brute_force_region_scores(tail, a, 1, region, activation), rtol=2e-6, atol=1e-7)


def numpy_class_token_row(fused: list, discard_ratio: float, renormalise: str) -> np.ndarray:
    """The twin of `kernels.rollout_step`, the blocks in turn: per block and image, the kept entries' positions by
    a full partition, their row sums and the class row's product by ``np.bincount``."""
    n, t, _ = fused[0].shape
    v = np.zeros((n, t), np.float64)
    v[:, 0] = 1.0
    drop = int(t * t * discard_ratio)
    for block in reversed(fused):
        block = np.asarray(block, np.float32).reshape(n, t * t)
        for i, image in enumerate(block):
            where = np.arange(t * t)
            if drop:
                where = np.union1d(np.flatnonzero(image > np.partition(image, drop - 1)[drop - 1]), [0])
            rows, columns = np.divmod(where, t)
            values = image[where]
            sums = np.bincount(rows, values, t) + 1.0
            if renormalise == "rows":
                scaled = v[i] / sums
                v[i] = np.bincount(columns, scaled[rows] * values, t) + scaled
            else:
                v[i] = (np.bincount(columns, v[i][rows] * values, t) + v[i]) / sums
    return v


@pytest.mark.parametrize("discard_ratio", [0.9, 0.0, 0.5, 0.999])
@pytest.mark.parametrize("renormalise", ["rows", "reference"])
def test_rollout_steps_equal_their_numpy_twin(discard_ratio, renormalise):
    rng = np.random.default_rng(int(discard_ratio * 1000))
    t = 50                                                          # a class token and a 7×7 grid
    fused = [rng.dirichlet(np.full(t, 0.3), size=(3, t)).astype(np.float32) for _ in range(5)]
    fused[2][1] = np.round(fused[2][1] * 8) / 8                     # ties at the threshold in one image
    got = np.zeros((3, t))
    got[:, 0] = 1.0
    drop = int(t * t * discard_ratio)
    if drop:                                                        # F[0,0] at the threshold itself: kept
        fused[3][2][0, 0] = np.sort(fused[3][2].ravel())[drop - 1]
    for block in reversed(fused):
        thresholds = np.sort(block.reshape(3, -1), axis=1)[:, drop - 1] if drop else np.full(3, -np.inf, np.float32)
        kernels.rollout_step(block, thresholds.astype(np.float32), renormalise == "reference", got)
    np.testing.assert_allclose(got, numpy_class_token_row(fused, discard_ratio, renormalise), rtol=1e-12, atol=0)


def test_softmax_column_is_the_softmax_of_one_class_per_row_even_where_its_exponentials_overflow():
    from cam_infer.numerics import softmax, softmax_column
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((7, 3, 50)) * 30).astype(np.float32)
    z[0, 0, 5] = 200.0                                  # e^(200 − z_c) overflows float32: its p_c is 0
    c = rng.integers(0, 50, (7, 3))
    chosen = np.take_along_axis(z, c[..., None], axis=2)[..., 0]
    expected = np.take_along_axis(softmax(z.astype(np.float64)), c[..., None], axis=2)[..., 0]
    np.testing.assert_allclose(softmax_column(z.copy(), chosen), expected, rtol=1e-5, atol=1e-30)
