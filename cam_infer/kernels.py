"""Numba kernels for the hot loops NumPy cannot express without large temporaries.

Arrays in, arrays out; nothing here knows about bundles, backends or options. Each kernel has a
plain NumPy twin in ``tests/test_kernels.py``.
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic

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


@launched_safely
@njit(cache=CACHE, parallel=True, nogil=True)
def class_argmax(scores: np.ndarray) -> np.ndarray:
    """(C,H,W) scores → (H,W) int64: the class of the highest score per pixel, the first on ties and the first NaN
    (NumPy's ``argmax(axis=0)``). Row by row: one image row's best scores and classes stay in cache while every
    class plane's row passes over them in memory order, the comparison written without a branch so that it
    vectorises (1.5× the plane-by-plane loop on DeepLab's 21×513×513 scores: 3.8 against 5.8 ms); the rows shared
    among the cores."""
    c, h, w = scores.shape
    out = np.empty((h, w), np.int64)
    for i in prange(h):
        best = np.empty(w, scores.dtype)
        index = np.empty(w, np.int32)
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


@njit(cache=CACHE, nogil=True)
def region_means(scores: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(R,H,W) scores, (H,W) bool region → (R,) float64: each row's mean over the region's pixels, summed in
    row-major order. The region is read once; its pixels' offsets are kept for the rows after the first (DeepLab's
    96 k-pixel dog: 0.17 ms, where NumPy's `nonzero` and gather took 1.3)."""
    n_rows, h, w = scores.shape
    pixels = np.empty(h * w, np.int64)
    n = 0
    first = 0.0
    for y in range(h):
        for x in range(w):
            if region[y, x]:
                pixels[n] = y * w + x
                first += scores[0, y, x]
                n += 1
    out = np.full(n_rows, np.nan)
    if n == 0:                                        # no pixel: NaN, as NumPy's mean of nothing
        return out
    out[0] = first / n
    for r in range(1, n_rows):
        total = 0.0
        for u in range(n):
            total += scores[r, pixels[u] // w, pixels[u] % w]
        out[r] = total / n
    return out


LOG2E = np.float32(1.4426950408889634)
LN2_HI, LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)      # ln 2 in two parts (Cody–Waite)
EXP_POLY = (np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3),
            np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1))


@intrinsic
def float_from_bits(typingctx, bits):
    """The float32 whose bits are the int32 `bits` (a register move, no memory)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.FloatType())
    return types.float32(types.int32), codegen


@njit(cache=CACHE, nogil=True, fastmath={"nnan", "ninf", "nsz", "arcp", "contract"})
def exp_rows(z: np.ndarray, count: int) -> None:
    """z[:, :count] ← exp(z[:, :count]), float32, in a loop LLVM vectorises (Numba has no vector exp without
    Intel's SVML: it calls the scalar expf per value, 4–5 ns each here, this 0.5). e^x = 2^n·p(r),
    n = ⌊x·log₂e + ½⌋, r = x − n·ln 2 (ln 2 in two parts), p Cephes' expf polynomial (within 2 ulp on
    |r| ≤ ln2/2), 2^n written into the exponent's bits. x is clamped to [−87, 88]: no overflow, no denormals."""
    for row in range(z.shape[0]):
        for u in range(count):
            x = min(max(z[row, u], np.float32(-87.0)), np.float32(88.0))
            n = np.floor(x * LOG2E + np.float32(0.5))
            r = (x - n * LN2_HI) - n * LN2_LO
            p = EXP_POLY[0]
            p = p * r + EXP_POLY[1]
            p = p * r + EXP_POLY[2]
            p = p * r + EXP_POLY[3]
            p = p * r + EXP_POLY[4]
            p = p * r + EXP_POLY[5]
            z[row, u] = (p * r * r + r + np.float32(1.0)) * float_from_bits((np.int32(n) + np.int32(127)) << 23)


@njit(cache=CACHE, nogil=True)
def summed_area(region: np.ndarray) -> np.ndarray:
    """(H,W) bool → (H+1,W+1) int32 T, T[y,x] = the True cells of region[:y,:x] (0 on the first row and column)."""
    h, w = region.shape
    table = np.zeros((h + 1, w + 1), np.int32)
    for y in range(h):
        run = 0
        for x in range(w):
            run += region[y, x]
            table[y + 1, x + 1] = table[y, x + 1] + run
    return table


def support_scores(*args) -> None:
    """`support_rows`, its rows dealt out to the threads 4 at a time rather than in one block each: a region
    rarely spreads evenly over the image (the PAN's clothes: 5.9 against 7.0 ms)."""
    previous = numba.set_parallel_chunksize(4)
    try:
        support_rows(*args)
    finally:
        numba.set_parallel_chunksize(previous)


@launched_safely
@njit(cache=CACHE, parallel=True, nogil=True, fastmath={"nnan", "ninf", "nsz", "arcp", "contract"})
def support_rows(a: np.ndarray, weights: np.ndarray, bias: np.ndarray, logistic: bool, region: np.ndarray,
                 table: np.ndarray, rows: tuple, columns: tuple, base: float, out: np.ndarray) -> None:
    """Recipro-CAM's region score through a linear tail (`bundle.linear_tail.LinearTail.recipro_scores`), at
    every position q = (i, j) of out (h,w):

        S(q) = (1/|R|) [ base · (|R| − Σ_g n_g) + Σ_g n_g · f(d_g) ],
        d_g = b + Σ_{ty,tx} u_y[ty] v_q[:,ty,tx] u_x[tx],   v_q[l,ty,tx] = Σ_κ W[κ,ty,tx,l] a[κ,q]

    g the (row group, column group) pairs of q's support: output rows (columns) whose resize weights on q's
    cells are the same, u_y, u_x those weights; n_g the region's pixels in g. a (K,h,w) the cut, W (K,k,k,J)
    and b (J,) give J logits d; f(d) = 1 / (1 + Σ_j e^{d_j}) when `logistic` (the softmax of class c with
    d_j = z_j − z_c over the other classes; the sigmoid with the one d = −z_c), else d_0 (the logit itself).
    v_q is only computed where the support meets the region (no BLAS product: an idle BLAS pool that spins
    after one slowed the runtime's next pass by 1.7× on the PAN).

    `rows` and `columns` are, per axis, (index (n,L): each support's output rows, group (n,L) int32, −1 for
    padding, span (n,2): its first and last row when they are contiguous, else (0, −1), sizes (n,D): rows per
    group, weights (n,k,D)); table the region's `summed_area`: a support with no region pixel costs four reads,
    one inside the region no per-pixel read. A row group's logits are computed for all its column groups at once
    in loops LLVM vectorises, the empty ones weighted 0."""
    ys, y_group, y_span, y_sizes, y_weights = rows
    xs, x_group, x_span, x_sizes, x_weights = columns
    h, w = out.shape
    n_in, k, n_logits = weights.shape[0], weights.shape[1], weights.shape[3]
    dy_n, dx_n = y_weights.shape[2], x_weights.shape[2]
    total = table[-1, -1]
    for i in prange(h):
        counts = np.empty((dy_n, dx_n), np.float64)
        in_row = np.empty(dy_n, np.int64)
        v = np.empty((k, k, n_logits), np.float32)
        t = np.empty((n_logits, k), np.float32)
        d = np.empty((n_logits, dx_n), np.float32)
        sums = np.empty(dx_n, np.float32)
        for j in range(w):
            y0, y1, x0, x1 = y_span[i, 0], y_span[i, 1], x_span[j, 0], x_span[j, 1]
            full = False
            if y1 >= y0 and x1 >= x0:
                hits = table[y1 + 1, x1 + 1] - table[y0, x1 + 1] - table[y1 + 1, x0] + table[y0, x0]
                if hits == 0:
                    out[i, j] = base
                    continue
                full = hits == (y1 - y0 + 1) * (x1 - x0 + 1)
            if full:
                for dy in range(dy_n):
                    in_row[dy] = y_sizes[i, dy] * (x1 - x0 + 1)
                    for dx in range(dx_n):
                        counts[dy, dx] = y_sizes[i, dy] * x_sizes[j, dx]
            else:
                counts[:] = 0.0
                in_row[:] = 0
                for m in range(ys.shape[1]):
                    gy = y_group[i, m]
                    if gy >= 0:
                        for n in range(xs.shape[1]):
                            gx = x_group[j, n]
                            if gx >= 0 and region[ys[i, m], xs[j, n]]:
                                counts[gy, gx] += 1.0
                                in_row[gy] += 1
            v[:] = np.float32(0.0)
            for kappa in range(n_in):
                value = a[kappa, i, j]
                for ty in range(k):
                    for tx in range(k):
                        for l in range(n_logits):
                            v[ty, tx, l] += weights[kappa, ty, tx, l] * value
            hits = 0
            kept = 0.0
            for dy in range(dy_n):
                if in_row[dy] == 0:
                    continue
                hits += in_row[dy]
                for l in range(n_logits):                   # t = Σ_ty u_y[ty] v_q[l,ty,:]
                    for tx in range(k):
                        s = np.float32(0.0)
                        for ty in range(k):
                            s += y_weights[i, ty, dy] * v[ty, tx, l]
                        t[l, tx] = s
                for l in range(n_logits):                   # d = b + t · u_x, every column group of the row
                    d[l, :] = bias[l]
                    for tx in range(k):
                        factor = t[l, tx]
                        for dx in range(dx_n):
                            d[l, dx] += factor * x_weights[j, tx, dx]
                if logistic:
                    exp_rows(d, dx_n)
                    sums[:] = np.float32(1.0)
                    for l in range(n_logits):
                        for dx in range(dx_n):
                            sums[dx] += d[l, dx]
                    for dx in range(dx_n):
                        kept += counts[dy, dx] / sums[dx]
                else:
                    for dx in range(dx_n):
                        kept += counts[dy, dx] * d[0, dx]
            out[i, j] = (base * (total - hits) + kept) / total


@njit(cache=CACHE, nogil=True, fastmath={"nsz", "arcp", "contract", "reassoc"})
def rollout_step(fused: np.ndarray, thresholds: np.ndarray, reference: bool, v: np.ndarray) -> None:
    """One block of attention rollout's class-token row (`methods.rollout.class_token_row`), per image i:
    fused (N,T,T) float32, v (N,T) float64 updated in place,

        v ← (v/s)·F + v/s,   or with ``reference``  v ← (v·F + v)/s   (the reference code's division along the
                                                                        last axis),

    F the attention with the entries at or below the image's threshold set to 0 except F[0,0], s = F·1 + 1.
    Dense and branch-free over the entries (the comparison is a select, LLVM vectorises it: 15 µs for a block of
    197² entries, where gathering the kept tenth with NumPy took ~60); rows where v is 0 are skipped (all but the
    class token's in the last block). Float64 sums, reassociated."""
    n, t = v.shape
    sums = np.empty(t, np.float64)
    step = np.empty(t, np.float64)
    for i in range(n):
        f = fused[i]
        threshold = thresholds[i]
        corner = f[0, 0] if f[0, 0] <= threshold else np.float32(0.0)     # F[0,0] kept whatever its value
        for r in range(t):
            total = 0.0
            for c in range(t):
                x = f[r, c]
                total += x if x > threshold else np.float32(0.0)
            sums[r] = total + 1.0
        sums[0] += corner
        w = v[i]
        if not reference:
            for r in range(t):
                w[r] /= sums[r]
        step[:] = w
        for r in range(t):
            weight = w[r]
            if weight != 0.0:
                for c in range(t):
                    x = f[r, c]
                    step[c] += weight * (x if x > threshold else np.float32(0.0))
        step[0] += w[0] * corner
        if reference:
            for c in range(t):
                step[c] /= sums[c]
        w[:] = step
