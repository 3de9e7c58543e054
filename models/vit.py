"""Small vision transformers in the layouts edge boxes run, for the transformer tests: a ViT with a class
token (timm's layout: Dosovitskiy et al., ICLR 2021), a DeiT with class and distillation tokens whose
inference head averages the two heads (Touvron et al., ICML 2021), and a Swin-style model with shifted
windows, one patch merging and no class token (Liu et al., ICCV 2021).

Every block is timm's pre-norm residual pair, x ← x + attn(norm1(x)); x ← x + mlp(norm2(x)), so the
residual stream between blocks is where a CAM cuts.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention over (B, T, D) tokens, softmax(q·kᵀ/√d)·v, as timm writes it; `bias`
    (heads, T, T) is added to the logits (Swin's window mask)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        if bias is not None:
            logits = logits + bias
        return self.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding (a stride-`patch` convolution), `prefix` learned tokens (1: the class token; 2: class and
    distillation tokens, DeiT), learned position embeddings, `depth` blocks, a final LayerNorm, and a linear
    head on the class token — or, with two prefix tokens, the mean of a head on each (DeiT at inference)."""

    def __init__(self, classes: int, size=(128, 128), patch: int = 16, dim: int = 64, depth: int = 4,
                 heads: int = 2, prefix: int = 1):
        super().__init__()
        grid = (size[0] // patch) * (size[1] // patch)
        self.prefix = prefix
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.dist_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if prefix == 2 else None
        self.pos_embed = nn.Parameter(torch.randn(1, prefix + grid, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.head_dist = nn.Linear(dim, classes) if prefix == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
        prefix = torch.cat(prefix, 1).expand(x.shape[0], -1, -1)
        tokens = self.norm(self.blocks(torch.cat([prefix, tokens], 1) + self.pos_embed))
        if self.head_dist is None:
            return self.head(tokens[:, 0])
        return (self.head(tokens[:, 0]) + self.head_dist(tokens[:, 1])) / 2


class SwinBlock(nn.Module):
    """A Swin block on an (B, h, w, D) map: attention within `window`² windows, the map rolled by `shift`
    first (and back after), a mask keeping rolled-in tokens apart; then the MLP on every token."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], window: int, shift: int):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.register_buffer("mask", self._mask(grid) if shift else None, persistent=False)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        s = self.window
        return x.reshape(b, h // s, s, w // s, s, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, d)

    def _unwindows(self, x: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        s, d = self.window, x.shape[-1]
        return x.reshape(b, h // s, w // s, s, s, d).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, d)

    def _mask(self, grid: tuple[int, int]) -> torch.Tensor:
        """(windows, 1, s², s²): −100 between tokens that the roll brought from different regions."""
        h, w = grid
        region = torch.zeros(1, h, w, 1)
        cuts = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
        for i, rows in enumerate(cuts):
            for j, cols in enumerate(cuts):
                region[:, rows, cols, :] = 3 * i + j
        ids = self._windows(region).squeeze(-1)
        return ((ids[:, None, :] != ids[:, :, None]).float() * -100.0)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        windows = self._windows(y)
        if self.shift:
            n = self.mask.shape[0]
            att = self.attn(windows.reshape(b * n, -1, d), self.mask.repeat(b, 1, 1, 1))
        else:
            att = self.attn(windows)
        y = self._unwindows(att, b, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2×2 neighbouring tokens concatenated (4D), normalised, projected to 2D: the map halves."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, i::2, j::2] for j in (0, 1) for i in (0, 1)]
        return self.reduction(self.norm(torch.cat(parts, -1)))


class SwinLike(nn.Module):
    """Patch embedding to an (B, h, w, D) map, two Swin blocks (plain then shifted windows), patch merging,
    two more (shifted only where the map holds more than one window), a final LayerNorm, global average
    pooling and a linear head. No class token."""

    def __init__(self, classes: int, size=(128, 128), patch: int = 16, dim: int = 48, heads: int = 2,
                 window: int = 4):
        super().__init__()
        grid = (size[0] // patch, size[1] // patch)
        half = (grid[0] // 2, grid[1] // 2)
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.embed_norm = nn.LayerNorm(dim)
        self.stage1 = nn.Sequential(SwinBlock(dim, heads, grid, window, 0),
                                    SwinBlock(dim, heads, grid, window, window // 2))
        self.merge = PatchMerging(dim)
        shift = window // 2 if min(half) > window else 0              # one window covers the map: no shift
        self.stage2 = nn.Sequential(SwinBlock(2 * dim, 2 * heads, half, window, 0),
                                    SwinBlock(2 * dim, 2 * heads, half, window, shift))
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        tokens = self.stage2(self.merge(self.stage1(tokens)))
        return self.head(self.norm(tokens).mean((1, 2)))


def vit(classes: int, **options) -> ViT:
    """8×8 patches (a 16×16 grid at 128²): fine enough for the scenes' smallest shapes (12–20 px)."""
    return ViT(classes, prefix=1, **{"patch": 8, **options})


def deit(classes: int, **options) -> ViT:
    return ViT(classes, prefix=2, **options)


def swin(classes: int, **options) -> SwinLike:
    return SwinLike(classes, **options)
