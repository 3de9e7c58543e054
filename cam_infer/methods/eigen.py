"""Eigen-CAM — Muhammad & Yeasin, IJCNN 2020 (arXiv 2008.00299).

O = A reshaped to (h·w, K); L = O v₁ = σ₁ u₁, the projection on the first principal component.
v₁ by power iteration v ← OᵀO v/‖OᵀO v‖ from the channel sums Oᵀ1 (activations have a dominant first
component, λ₂/λ₁ ≈ 0.05–0.35 on real networks: a dozen matrix–vector products), stopped when the distance
left, estimated from how fast the steps shrink, is below 1e-10 (1e-6 in float32, for A not centred); when
the steps shrink slowly (λ₂/λ₁ > 0.9), the exact eigenproblem of the smaller Gram matrix instead:
O Oᵀ (h·w×h·w, L = √λ₁ u₁) or OᵀO (K×K, L = O v₁).
Sign made deterministic: not centred (the paper), flip so that Σ_k v₁ₖ ≥ 0 (for A ≥ 0, Perron–
Frobenius gives v₁ ≥ 0, so L ≥ 0); ``centered=True`` subtracts the column means first, as
pytorch-grad-cam's EigenCAM does, and flips so that L correlates positively with the channel mean.
Class-agnostic.

Detectors (pytorch-grad-cam's YOLO tutorial): the first principal component of each cut level, combined
unit-free (`levels.unit_free`); one map per image. The tutorial uses one level only (the stride-32 map before
Detect); here every level of the cut counts.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..kernels import power_component
from ..errors import CamInferError
from .levels import unit_free
from .registry import Context, fused, implements, method

TINY = 1e-30
EIGEN_SQUARINGS = 10      # fused: 1024 power-iteration steps
POWER_STEPS = 100
FLOAT32_TOLERANCE = 1e-6
IN_PASS_TOLERANCE = 1e-4      # sin θ bound up to which the clean pass's map is taken (`eigen_in_pass`)
IN_PASS_SQUARINGS = 6         # 64 power steps: (λ₂/λ₁)⁶⁴ < 1e-6 up to λ₂/λ₁ = 0.8; beyond, the certificate says
GOLDEN = 2.399963229728653                       # the golden angle, radians


def first_component(a: np.ndarray, centered: bool) -> np.ndarray:
    """(K,h,w) → (h,w) projection on the first principal component, sign fixed."""
    k, h, w = a.shape
    projection = _centered_projection(a) if centered else _projection(a.reshape(k, h * w))
    return projection.reshape(h, w).astype(np.float32, copy=False)


def _projection(rows: np.ndarray) -> np.ndarray:
    """O v₁ of O = rowsᵀ (rows: (K, h·w), not centred), sign so that Σ_k v₁ₖ ≥ 0: power iteration in
    float32 as one Numba call (`kernels.power_component`); the exact eigenproblem when it does not settle."""
    rows = np.ascontiguousarray(rows, np.float32)
    projection, steps = power_component(rows, start_vector(rows.sum(axis=1)), FLOAT32_TOLERANCE,
                                        POWER_STEPS)
    if steps:
        return projection
    o = rows.T.astype(np.float64)
    projection = gram_projection(o)
    return -projection if np.sum(o.T @ projection) < 0 else projection     # Oᵀ L = σ₁² v₁: the sign of Σ_k v₁ₖ


def _centered_projection(a: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's variant: O's column means subtracted first (float64), sign so that L correlates
    positively with the channel mean."""
    k = a.shape[0]
    o = a.reshape(k, -1).T.astype(np.float64)
    o = o - o.mean(axis=0, keepdims=True)
    projection = power_projection(o)
    if projection is None:
        projection = gram_projection(o)
    reference = a.mean(axis=0).ravel()
    flip = np.dot(projection - projection.mean(), reference - reference.mean()) < 0
    return -projection if flip else projection


def start_vector(sums: np.ndarray) -> np.ndarray:
    """The channel sums Oᵀ1, normalised, plus a tenth of a fixed irregular unit vector (never ⟂ v₁ in
    practice), in the sums' precision."""
    return irregular(len(sums), sums.dtype.str) + sums / max(np.linalg.norm(sums), TINY)


@lru_cache(maxsize=64)
def irregular(k: int, dtype: str) -> np.ndarray:
    """cos(j·golden angle), j = 1…k, scaled to norm 0.1."""
    v = np.cos(np.arange(1, k + 1) * GOLDEN).astype(dtype)
    v = v / np.linalg.norm(v) * v.dtype.type(0.1)
    v.flags.writeable = False                                       # shared between calls
    return v


def power_projection(o: np.ndarray, steps: int = POWER_STEPS) -> np.ndarray | None:
    """O v₁ (float64) by power iteration on OᵀO from `start_vector`, in O's precision, or None when it does
    not settle quickly. Each step's move shrinks by ρ ≈ λ₂/λ₁, so the distance left is about move·ρ/(1−ρ):
    stop when that is below 1e-10 (1e-6 in float32); give up when ρ > 0.9. (The float32 path runs the
    same iteration as the Numba kernel `power_component`; this is its NumPy twin.)"""
    tolerance = FLOAT32_TOLERANCE if o.dtype == np.float32 else 1e-10
    v = start_vector(o.sum(axis=0))
    previous = None
    for step in range(steps):
        nxt = o.T @ (o @ v)
        size = np.linalg.norm(nxt)
        if size <= TINY:
            return None
        nxt /= size
        moved = float(np.linalg.norm(nxt - v))
        v = nxt
        rho = min(moved / previous, 1.0) if previous else 1.0
        if moved == 0.0 or (rho < 1.0 and moved * rho / (1 - rho) < tolerance):
            return (o @ v).astype(np.float64)
        if step >= 4 and rho > 0.9:
            return None
        previous = moved
    return None


def gram_projection(o: np.ndarray) -> np.ndarray:
    """O v₁ exactly, through the eigenproblem of the smaller Gram matrix."""
    hw, k = o.shape
    if hw <= k:
        values, vectors = np.linalg.eigh(o @ o.T)
        return vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
    return o @ np.linalg.eigh(o.T @ o)[1][:, -1]


@method("eigen", cost="1 feature pass + a power iteration on the smaller Gram matrix (its eigenproblem where it "
                       "does not settle)")
def eigen(ctx: Context, *, centered: bool = False) -> np.ndarray:
    """first principal component of A (h·w×K), by power iteration on the smaller Gram matrix; sign fixed (Σ v₁ ≥ 0)
    `centered=True` is pytorch-grad-cam's EigenCAM"""
    return np.stack([first_component(a, centered) for a in ctx.activations])



@implements("eigen", "detection", cost="no extra pass (a power iteration per level)")
def eigen_detections(ctx, targets, *, centered: bool = False) -> list[np.ndarray]:
    """mean_l U(minmax(first principal component of A_l)): the dominant pattern of the cut maps"""
    m = unit_free({i: first_component(a, centered) for i, a in enumerate(ctx.level_maps())}, ctx.size)
    return [m for _ in targets]

@fused("eigen", class_specific=False)
def eigen_onnx(f, *, centered: bool = False, squarings: int = EIGEN_SQUARINGS) -> str:
    """L = O v₁ (O = A as h·w×K, v₁ its first right singular vector) by power iteration on the
    smaller Gram matrix G, OOᵀ (then L = √λ u) or OᵀO: G is squared `squarings` times (normalised
    each time), so u ∝ G^(2^s)·v₀ — 2^s power steps in s matrix products — then the sign as the
    Explainer's. The error falls as (λ₂/λ₁)^(2^s)."""
    if not isinstance(squarings, int) or isinstance(squarings, bool) or not 0 <= squarings <= 30:
        raise CamInferError(f"squarings must be an integer in 0..30, not {squarings!r}")
    return _power_map(f, centered, squarings)


def eigen_in_pass(f) -> str:
    """`eigen_onnx`'s map (default options, `IN_PASS_SQUARINGS`) with a certificate beside it, the output
    ``settled`` (N,1) bool: the map is taken from the clean pass only where it is true, else the Explainer computes it
    (`_settled`)."""
    return _power_map(f, False, IN_PASS_SQUARINGS, certified=True)


def _power_map(f, centered: bool, squarings: int, certified: bool = False) -> str:
    """The map (N,h,w) of `eigen_onnx`; with `certified`, also the output ``settled`` (`_settled`)."""
    b = f.b
    k, h, w = f.shape
    uncentred = f.positions_by_channel()                                         # O (N,hw,K)
    rows = b.op("Sub", uncentred, b.reduce("ReduceMean", uncentred, [1]), hint="centered") if centered else uncentred
    columns = b.op("Transpose", rows, perm=[0, 2, 1], hint="o_t")                # Oᵀ (N,K,hw)
    by_position = h * w <= k
    gram = b.op("MatMul", rows, columns) if by_position else b.op("MatMul", columns, rows)
    power = gram
    for _ in range(squarings):
        power = b.op("MatMul", power, power)
        power = b.op("Div", power, b.op("Add", b.reduce("ReduceL2", power, [1, 2]), b.const(TINY)), hint="power")
    vector = _unit(b, b.op("MatMul", power, _start_vector(b, h * w if by_position else k)))   # G^(2^s)·v₀
    turned = b.op("MatMul", gram, vector, hint="gv")                                           # G v (N,n,1)
    eigenvalue = None
    if by_position or certified:
        eigenvalue = b.reduce("ReduceSum", b.op("Mul", vector, turned), [1], hint="rayleigh")  # vᵀGv (N,1,1)
    if by_position:
        projection = b.op("Mul", vector, b.op("Sqrt", b.op("Relu", eigenvalue)), hint="projection")   # (N,hw,1)
    else:
        projection = b.op("MatMul", rows, vector, hint="projection")                                # (N,hw,1)
    if centered:
        reference = b.reduce("ReduceMean", uncentred, [2])                          # channel mean (N,hw,1)
        agreement = _dot(b, _centred(b, projection), _centred(b, reference))
    elif by_position:
        agreement = _dot(b, projection, b.reduce("ReduceSum", uncentred, [2]))     # Σ_k (Oᵀ L)_k
    else:                                   # Σ_k (Oᵀ L)_k = 1ᵀ OᵀO v = Σ_k (G v)_k: from the small Gram matrix
        agreement = b.reduce("ReduceSum", turned, [1, 2])
    if certified:
        _settled(b, gram, vector, turned, eigenvalue, min(k, h * w))
    sign = b.op("Where", b.op("Less", agreement, b.const(0.0)), b.const(-1.0), b.const(1.0), hint="sign")
    return b.reshape(b.op("Mul", projection, sign), (0, h, w), hint="map")


def _settled(b, gram: str, vector: str, turned: str, eigenvalue: str, n: int) -> None:
    """The output ``settled`` (N,1): whether the unit vector v found is within `IN_PASS_TOLERANCE` of G's first
    eigenvector. With λ = vᵀGv and r = ‖Gv − λv‖, every other eigenvalue of G (symmetric, ≥ 0) is at most
    λ̄₂ = √(‖G‖²_F − λ²) (Σᵢ λᵢ² = ‖G‖²_F), so where λ > λ̄₂ the angle θ between v and the first eigenvector has
    sin θ ≤ r / (λ − λ̄₂) (Davis & Kahan's sin θ theorem for one vector). Settled: that bound ≤ `IN_PASS_TOLERANCE`,
    the map then within √2·`IN_PASS_TOLERANCE`·σ₁ of the exact first component (up to float32 rounding: r's own is
    ~n·2⁻²⁴·λ, n the Gram matrix's side)."""
    residual = b.reduce("ReduceL2", b.op("Sub", turned, b.op("Mul", vector, eigenvalue)), [1], hint="residual")
    energy = b.reduce("ReduceSumSquare", gram, [1, 2], hint="frobenius2")                      # Σ λᵢ²
    rounding = b.op("Mul", energy, b.const(float(4 * n * 2.0 ** -24)))                         # its float32 rounding
    rest = b.op("Sqrt", b.op("Add", b.op("Relu", b.op("Sub", energy, b.op("Mul", eigenvalue, eigenvalue))), rounding))
    gap = b.op("Sub", eigenvalue, rest, hint="gap")
    settled = b.op("And", b.op("Greater", gap, b.const(0.0)),
                   b.op("LessOrEqual", residual, b.op("Mul", gap, b.const(IN_PASS_TOLERANCE))))
    b.op("Reshape", settled, b.ints([0, 1], "shape"), outputs=["settled"])


def _start_vector(b, n: int) -> str:
    """v₀ᵢ = 2 + sin i, (n,1): positive, so never orthogonal to a Perron vector, and not constant,
    so never orthogonal to centred data (whose Gram matrix has 1 in its null space). Computed, not stored."""
    ids = b.op("Range", b.const(0.0), b.const(float(n)), b.const(1.0))
    return b.reshape(b.op("Add", b.op("Sin", ids), b.const(2.0)), (n, 1), hint="start")


def _unit(b, v: str) -> str:
    return b.op("Div", v, b.op("Add", b.reduce("ReduceL2", v, [1]), b.const(TINY)), hint="unit")


def _centred(b, column: str) -> str:
    return b.op("Sub", column, b.reduce("ReduceMean", column, [1]))


def _dot(b, x: str, y: str) -> str:
    """Σ over the positions of two (N,n,1) columns → (N,1,1)."""
    return b.reduce("ReduceSum", b.op("Mul", x, y), [1])


@implements("eigen", "segmentation", cost="no extra pass (a power iteration per image)")
def eigen_segments(ctx: Context, *, centered: bool = False) -> np.ndarray:
    """first principal component of the cut, one map per image whatever the class and region"""
    return eigen(ctx, centered=centered)
