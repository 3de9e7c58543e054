"""Numba kernels for the hot loops NumPy cannot express without large temporaries.

Arrays in, arrays out; nothing here knows about bundles, backends or options. Each kernel has a
plain NumPy twin in ``tests/test_kernels.py``.
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np
from numba import njit, prange

from .kernel_cache import use_user_cache

CACHE = use_user_cache()      # a per-user folder, never the installed package (kernel_cache.py)
THREADSAFE_LAYERS = ("tbb", "omp")
_launch = threading.Lock()
_layer: list[str] = []        # the threading layer Numba loaded, known after the first parallel launch


def launched_safely(kernel):
    """A ``parallel=True`` kernel that two threads never launch at once unless Numba's threading layer is
    threadsafe. Where neither OpenMP nor TBB loads, Numba falls back to its workqueue layer, which aborts the whole
    process when two threads launch parallel kernels at once (the pipelined folder runner and the server call
    methods from several threads): there, and on the first launch (the layer is chosen then), launches take turns."""
    @functools.wraps(kernel)
    def launch(*args):
        if _layer and _layer[0] in THREADSAFE_LAYERS:
            return kernel(*args)
        with _launch:
            result = kernel(*args)
            if not _layer:
                _layer.append(numba.threading_layer())
            return result
    return launch


@njit(cache=CACHE, nogil=True, fastmath=True)
def spatial_entropy(a: np.ndarray) -> np.ndarray:
    """Normalised spatial Shannon entropy per channel of a (K,h,w) map, in [0,1].

    p_u = max(a_u, 0) / Σ_v max(a_v, 0);  H = −Σ_u p_u ln p_u / ln(h·w);  H = 0 when Σ = 0.
    In float32, as the activations are (relative error ~1e-6; the float64 loop took twice as long: MobileNetV2's
    1280 × 49 values, 0.2 ms against 0.4 ms, most of it the logarithms).
    """
    k, h, w = a.shape
    n = h * w
    flat = a.reshape(k, n)
    out = np.zeros(k, np.float32)
    scale = np.float32(-1.0 / np.log(n)) if n > 1 else np.float32(-1.0)
    for c in range(k):
        total = np.float32(0.0)
        for u in range(n):
            v = flat[c, u]
            if v > 0:
                total += v
        if total <= 0:
            continue
        inverse = np.float32(1.0) / total
        entropy = np.float32(0.0)
        for u in range(n):
            v = flat[c, u]
            if v > 0:
                p = v * inverse
                entropy += p * np.log(p)
        out[c] = entropy * scale
    return out


@njit(cache=CACHE, nogil=True)
def histogram_entropy(a: np.ndarray, bins: int) -> np.ndarray:
    """Histogram entropy per channel of a (K,h,w) map, normalised to [0,1].

    Min–max the channel to [0,1], count `bins` equal bins (the maximum in the last),
    H = −Σ_b q_b log2 q_b / log2(min(h·w, bins)); a constant channel gives 0.
    """
    k, h, w = a.shape
    n = h * w
    out = np.zeros(k, np.float32)
    norm = np.log2(min(n, bins)) if min(n, bins) > 1 else 1.0
    counts = np.zeros(bins, np.int64)
    for c in range(k):
        lo = a[c, 0, 0]
        hi = a[c, 0, 0]
        for i in range(h):
            for j in range(w):
                lo = min(lo, a[c, i, j])
                hi = max(hi, a[c, i, j])
        if hi <= lo:
            continue
        counts[:] = 0
        for i in range(h):
            for j in range(w):
                b = int((a[c, i, j] - lo) / (hi - lo) * bins)
                counts[min(b, bins - 1)] += 1
        entropy = 0.0
        for b in range(bins):
            if counts[b] > 0:
                q = counts[b] / n
                entropy -= q * np.log2(q)
        out[c] = entropy / norm
    return out


@njit(cache=CACHE, nogil=True)
def recipro_masked_batch(a: np.ndarray, kernel: np.ndarray, out: np.ndarray) -> None:
    """Recipro-CAM's h·w masked copies of one (K,h,w) activation, written into out (h·w,K,h,w).

    Row r = i·w + j keeps the feature vector at (i, j), spread over the kernel's neighbourhood
    and scaled by it (1×1 kernel [[1]]: one-hot; 3×3 Gaussian: the official CNN variant,
    truncated at the borders, not renormalised); everything else is 0.
    """
    k, h, w = a.shape
    kh, kw = kernel.shape
    ch, cw = kh // 2, kw // 2
    out[:] = 0
    for i in range(h):
        for j in range(w):
            r = i * w + j
            for di in range(kh):
                for dj in range(kw):
                    y, x = i + di - ch, j + dj - cw
                    if 0 <= y < h and 0 <= x < w:
                        g = kernel[di, dj]
                        for c in range(k):
                            out[r, c, y, x] = g * a[c, i, j]


@njit(cache=CACHE, nogil=True)
def ablated_batch(a: np.ndarray, channels: np.ndarray, out: np.ndarray) -> None:
    """Copies of one (K,h,w) activation, copy r with channel `channels[r]` set to 0."""
    for r in range(channels.shape[0]):
        out[r] = a
        out[r, channels[r]] = 0


@njit(cache=CACHE, nogil=True, inline="always")
def bilinear_source(i: int, scale: float, size: int) -> tuple[int, int, float]:
    """Output cell i's two source cells along one axis and the second one's weight: half-pixel centres,
    edges clamped (cv2's INTER_LINEAR)."""
    f = max((i + 0.5) * scale - 0.5, 0.0)
    i0 = min(int(f), size - 1)
    return i0, min(i0 + 1, size - 1), f - i0


@launched_safely
@njit(cache=CACHE, parallel=True, nogil=True)
def bilinear_minmax_masks(a: np.ndarray, channels: np.ndarray, height: int, width: int,
                          out: np.ndarray) -> np.ndarray:
    """Upsample channels of a (K,h,w) map bilinearly (align_corners=False) to (height,width) and
    min–max each to [0,1], into out (len(channels),height,width). Returns a flag per channel:
    False where the upsampled channel is constant (its mask is left at 0)."""
    k, h, w = a.shape
    n = channels.shape[0]
    valid = np.zeros(n, np.bool_)
    sy = h / height
    sx = w / width
    for r in prange(n):
        c = channels[r]
        for y in range(height):
            y0, y1, ly = bilinear_source(y, sy, h)
            for x in range(width):
                x0, x1, lx = bilinear_source(x, sx, w)
                top = a[c, y0, x0] * (1 - lx) + a[c, y0, x1] * lx
                bottom = a[c, y1, x0] * (1 - lx) + a[c, y1, x1] * lx
                out[r, y, x] = top * (1 - ly) + bottom * ly
        lo = out[r].min()
        hi = out[r].max()
        if hi - lo > 1e-12 * max(1.0, abs(hi)):
            valid[r] = True
            scale = 1.0 / (hi - lo)
            for y in range(height):
                for x in range(width):
                    out[r, y, x] = (out[r, y, x] - lo) * scale
        else:
            out[r] = 0
    return valid


@launched_safely
@njit(cache=CACHE, parallel=True, nogil=True)
def masked_inputs(x: np.ndarray, masks: np.ndarray, out: np.ndarray) -> None:
    """out[r] = x ⊙ masks[r] for one (3,H,W) input and (n,H,W) masks, into out (n,3,H,W)."""
    n = masks.shape[0]
    channels = x.shape[0]
    for r in prange(n):
        for c in range(channels):
            out[r, c] = x[c] * masks[r]


@njit(cache=CACHE, nogil=True, fastmath=True)
def power_component(a: np.ndarray, start: np.ndarray, tolerance: float, steps: int) -> tuple[np.ndarray, int]:
    """Eigen-CAM's projection L = Aᵀv₁ of A (K, n) float32 (rows: channels) on its first principal
    component, by power iteration v ← AAᵀv/‖AAᵀv‖ from `start` (`methods.eigen`).

    ρ ≈ λ₂/λ₁ is the ratio of successive moves ‖v' − v‖; stop when the distance left, move·ρ/(1−ρ), is
    below `tolerance`. Returns (L, steps taken), sign chosen so that Σ_k v₁ₖ ≥ 0; steps 0 when it did not
    settle (ρ > 0.9 after 5 steps, a zero product, or `steps` used up): L is then meaningless.
    """
    k, n = a.shape
    v = start.copy()
    u = np.empty(n, np.float32)
    nxt = np.empty(k, np.float32)
    previous = 0.0
    taken = 0
    for step in range(steps):
        u[:] = 0.0
        for c in range(k):
            for p in range(n):
                u[p] += a[c, p] * v[c]
        size = 0.0
        for c in range(k):
            s = np.float32(0.0)
            for p in range(n):
                s += a[c, p] * u[p]
            nxt[c] = s
            size += s * s
        size = np.sqrt(size)
        if size <= 1e-30:
            break
        moved = 0.0
        for c in range(k):
            nxt[c] /= size
            moved += (nxt[c] - v[c]) ** 2
            v[c] = nxt[c]
        moved = np.sqrt(moved)
        rho = min(moved / previous, 1.0) if previous > 0 else 1.0
        if moved == 0.0 or (rho < 1.0 and moved * rho / (1.0 - rho) < tolerance):
            taken = step + 1
            break
        if step >= 4 and rho > 0.9:
            break
        previous = moved
    sign = np.float32(-1.0) if v.sum() < 0 else np.float32(1.0)
    projection = np.zeros(n, np.float32)
    if taken:
        for c in range(k):
            for p in range(n):
                projection[p] += a[c, p] * v[c]
        projection *= sign
    return projection, taken


@njit(cache=CACHE, nogil=True)
def add_normalised(m: np.ndarray, out: np.ndarray, weight: float, eps: float) -> None:
    """out += weight · R(minmax(ReLU(m))) for a (h,w) map onto out's finer (H,W) grid: R bilinear with
    half-pixel centres and clamped edges (cv2's INTER_LINEAR), the min–max of `postprocess.normalise`
    (a map whose range is ≤ eps·max(1, |max|) adds nothing)."""
    h, w = m.shape
    height, width = out.shape
    lo = np.inf
    hi = -np.inf
    for y in range(h):
        for x in range(w):
            v = max(m[y, x], 0.0)
            lo = min(lo, v)
            hi = max(hi, v)
    span = hi - lo
    if span <= eps * max(1.0, abs(hi)):
        return
    scale = weight / span
    sy = h / height
    sx = w / width
    for y in range(height):
        y0, y1, ly = bilinear_source(y, sy, h)
        for x in range(width):
            x0, x1, lx = bilinear_source(x, sx, w)
            top = max(m[y0, x0], 0.0) * (1 - lx) + max(m[y0, x1], 0.0) * lx
            bottom = max(m[y1, x0], 0.0) * (1 - lx) + max(m[y1, x1], 0.0) * lx
            out[y, x] += (top * (1 - ly) + bottom * ly - lo) * scale


@njit(cache=CACHE, nogil=True)
def lookup_channels(pixels: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """out[c, i, j] = table[c, pixels[i, j, c]]: (H,W,C) uint8 pixels → (C,H,W) through a per-channel
    table of the 256 values, in one pass."""
    h, w, c = pixels.shape
    for k in range(c):                 # a plane at a time: contiguous writes, one small table in cache
        values = table[k]
        for i in range(h):
            for j in range(w):
                out[k, i, j] = values[pixels[i, j, k]]


@njit(cache=CACHE, nogil=True)
def class_argmax(scores: np.ndarray) -> np.ndarray:
    """(C,H,W) scores → (H,W) int64: the class of the highest score per pixel, the first on ties and the first NaN
    (NumPy's ``argmax(axis=0)``). Row by row: one image row's best scores and classes stay in cache while every
    class plane's row passes over them in memory order, the comparison written without a branch so that it
    vectorises (1.5× the plane-by-plane loop on DeepLab's 21×513×513 scores: 3.8 against 5.8 ms)."""
    c, h, w = scores.shape
    out = np.empty((h, w), np.int64)
    best = np.empty(w, scores.dtype)
    index = np.empty(w, np.int32)
    for i in range(h):
        best[:] = scores[0, i]
        index[:] = 0
        for k in range(1, c):
            for j in range(w):
                v = scores[k, i, j]
                b = best[j]
                take = (v > b) | ((v != v) & (b == b))
                best[j] = v if take else b
                index[j] = k if take else index[j]
        out[i] = index
    return out
