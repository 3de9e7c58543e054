"""How methods explain a segmenter's cut set (split by `cam_infer.bundle.skip_cut_set`).

A method explains each member with the others kept clean (`explain_levels`), and the members' maps are combined
by the rule of the method's units (`methods.levels`): Recipro-CAM's maps are changes of the one region score,
summed; the others are in their member's own units, each ReLU'd and min–max'd, then averaged.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import CamInferError

# Methods whose maps are changes of the one target score: the members' maps add up (`levels.same_unit`).
SAME_UNIT = frozenset({"recipro"})
CHUNK_VALUES = 2**24         # packed values per head call from one member's rows (64 MB of float32)


def level_view(levels: list[dict], rows: np.ndarray, i: int) -> np.ndarray:
    """Member i of packed rows (R, total) as a writable (R, K, h, w) view."""
    level = levels[i]
    size = int(np.prod(level["shape"]))
    return rows[:, level["offset"]:level["offset"] + size].reshape(len(rows), *level["shape"])


class MemberHead:
    """The head seen from member i: rows (R,K,h,w) of it go back into the image's clean packed cut, the other
    members kept, through the whole head."""

    def __init__(self, backend, levels: list[dict], packed: np.ndarray, member: int):
        self.backend, self.levels, self.packed, self.member = backend, levels, packed, member

    def __call__(self, i: int, rows: np.ndarray) -> np.ndarray:
        step = max(1, CHUNK_VALUES // self.packed.shape[1])
        full = np.repeat(self.packed[i:i + 1], min(step, len(rows)), axis=0)    # the other members stay clean
        outputs = []
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            level_view(self.levels, full, self.member)[:len(chunk)] = chunk
            outputs.append(self.backend.head(full[:len(chunk)]))
        return np.concatenate(outputs)


class MemberRecipro:
    """Recipro-CAM's rows of member m, read fast: the recipro shortcut's interface (`recipro_scores`, as a
    `bundle.linear_tail.LinearTail` has it), computed by head passes.

    S(i,j) = (1/|R|) Σ_{p∈R} y_c(head(cut with member m kept at (i,j) only, the other members clean))(p). The rows
    live in one buffer of packed cuts whose member view is zero: each chunk writes its positions' K values, runs
    the head and writes zeros back (K values per row moved, not the member's K·h·w). A row differs from the row
    with the member all zero (y⁰, one more pass) only within the head's receptive field of (i,j), measured on the
    head (`receptive_window`) as a detector's locality is: S(i,j) = (Σ_{p∈R} y⁰_c(p) + Σ_{p∈R∩F_ij} (y_c − y⁰_c)(p)
    )/|R|, so the class's probability (exp(y_c − max y)/Σ_k exp(y_k − max y)) is computed on the window F_ij
    only, not on the whole scores."""

    activation = "none"              # the head's outputs are the model's scores, activation included

    def __init__(self, backend, levels: list[dict], packed: np.ndarray, member: int):
        self.backend, self.levels, self.packed, self.member = backend, levels, packed, member

    def recipro_scores(self, a: np.ndarray, c: int, region: np.ndarray, activation: str) -> np.ndarray:
        k, h, w = a.shape
        step = max(1, min(h * w, CHUNK_VALUES // self.packed.size, self.backend.chunk_size("head", h * w)))
        rows = np.repeat(self.packed[None], max(step, 3), axis=0)
        view = level_view(self.levels, rows, self.member)
        view[...] = 0
        base = pixel_scores(self.backend.head(rows[:1]), c, activation)[0]             # (H, W): y⁰_c
        window = receptive_window(self.backend, rows, view, base.shape)
        total, size = float(base[region].sum(dtype=np.float64)), int(region.sum())
        ys, xs = np.divmod(np.arange(h * w), w)
        scores = np.empty(h * w, np.float64)
        for start in range(0, h * w, step):
            n = min(step, h * w - start)
            r, y, x = np.arange(n), ys[start:start + n], xs[start:start + n]
            view[r, :, y, x] = a[:, y, x].T
            outputs = self.backend.head(rows[:n])
            view[r, :, y, x] = 0
            py, px = window.pixels(y, x)
            inside = pixel_scores(outputs[r[:, None, None], :, py[:, :, None], px[:, None, :]].transpose(0, 3, 1, 2),
                                  c, activation) - base[py[:, :, None], px[:, None, :]]
            scores[start:start + n] = (total + (inside * region[py[:, :, None], px[:, None, :]]).sum(
                axis=(1, 2), dtype=np.float64)) / size
        return scores.reshape(h, w)


class Window:
    """The output pixels a member's cell can change: rows [i·sy + y0, i·sy + y1) and columns likewise, a fixed
    ky × kx window kept inside the (H, W) scores (shifted at the borders, where the field is clipped)."""

    def __init__(self, stride: tuple[int, int], start: tuple[int, int], size: tuple[int, int], shape):
        self.stride, self.start, self.size, self.shape = stride, start, size, shape

    def pixels(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, ky) rows and (n, kx) columns of the windows of cells (y, x)."""
        out = []
        for v, s, a, k, full in zip((y, x), self.stride, self.start, self.size, self.shape):
            origin = np.clip(v * s + a, 0, full - k)
            out.append(origin[:, None] + np.arange(k))
        return tuple(out)


def receptive_window(backend, rows: np.ndarray, view: np.ndarray, shape) -> Window:
    """Where the head's scores move when the member's centre cell changes (random values, twice, over a zero
    member): the changed pixels' extent around the cell, one cell's stride wider each side; the whole scores
    when the head mixes everything (a global pooling)."""
    _, h, w = view.shape[1:]
    H, W = shape
    sy, sx = H // h, W // w
    if sy * h != H or sx * w != W:
        return Window((0, 0), (0, 0), (H, W), (H, W))
    cy, cx = h // 2, w // 2
    rng = np.random.default_rng(0)
    scale = 1.0 + float(np.abs(rows[0]).max())
    for r in (1, 2):
        view[r, :, cy, cx] = rng.standard_normal(view.shape[1]).astype(np.float32) * scale
    outputs = backend.head(rows[:3])
    view[1:3, :, cy, cx] = 0
    moved = np.any(outputs[1:] != outputs[:1], axis=(0, 1))
    if not moved.any():
        return Window((sy, sx), (0, 0), (1, 1), (H, W))
    found = []
    for axis, (s, centre, full) in enumerate(((sy, cy, H), (sx, cx, W))):
        hit = np.flatnonzero(moved.any(axis=1 - axis))
        first, last = hit[0] - centre * s - s, hit[-1] - centre * s + 2 * s
        found.append((first, min(last - first, full)))
    return Window((sy, sx), (found[0][0], found[1][0]), (found[0][1], found[1][1]), (H, W))


def pixel_scores(outputs: np.ndarray, c: int, activation: str) -> np.ndarray:
    """y_c of outputs (R,C,...) at each pixel: the softmax over the classes (``activation="softmax"``), or the
    outputs as they are."""
    if activation != "softmax":
        return outputs[:, c].astype(np.float64)
    e = outputs - outputs.max(axis=1, keepdims=True)
    np.exp(e, out=e)
    return (e[:, c] / e.sum(axis=1)).astype(np.float64)


def finest_grid(levels: list[dict]) -> tuple[int, int]:
    """(h, w) of the finest member: the grid a cut set's maps are combined on."""
    return tuple(max((lv["shape"][1:] for lv in levels), key=lambda s: s[0] * s[1]))


def refuse_gradients(spec) -> None:
    if spec.gradient:
        raise CamInferError(f"method '{spec.name}' needs gradients, which cam-infer does not take through a cut set's "
                            "packed head; use a gradient-free method, or split at one layer")


def explain_levels(code, spec, ctx, options: dict) -> np.ndarray:
    """The method's maps (T, h0, w0) on the finest member's grid: each member explained by `code` with the others
    clean, combined by the rule of the method's units."""
    from ..methods.levels import same_unit, unit_free
    refuse_gradients(spec)
    levels = ctx.bundle.cut_levels
    per_member = []
    for m in range(len(levels)):
        member = replace(ctx, activations=np.ascontiguousarray(level_view(levels, ctx.activations, m)),
                         tail=MemberRecipro(ctx.backend, levels, ctx.activations[0], m))   # rows: one image's cut
        member.head = MemberHead(ctx.backend, levels, ctx.activations, m)
        member.features = lambda x, m=m: np.ascontiguousarray(level_view(levels, ctx.backend.features(x), m))
        per_member.append(np.asarray(code(member, **options), np.float32))
    finest = finest_grid(levels)
    combine = same_unit if spec.name in SAME_UNIT else unit_free
    return np.stack([combine({m: maps[t] for m, maps in enumerate(per_member)}, tuple(finest))
                     for t in range(len(ctx.targets))])
