"""Tiny untrained transformers for the tests (built and exported per session, never stored): a ViT (class token),
a DeiT-style model (class + distillation tokens, a non-square input) and a Swin-style one (no prefix, mean-pooled);
and two that are not read as a class-token ViT: the class token put last, registers with a pooled head."""
import torch, torch.nn as nn

class Block(nn.Module):
    def __init__(s, d, heads):
        super().__init__()
        s.norm1 = nn.LayerNorm(d); s.attn = Attn(d, heads); s.norm2 = nn.LayerNorm(d)
        s.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
    def forward(s, x):
        x = x + s.attn(s.norm1(x))
        return x + s.mlp(s.norm2(x))

class Attn(nn.Module):
    def __init__(s, d, heads):
        super().__init__(); s.h = heads; s.qkv = nn.Linear(d, 3 * d); s.proj = nn.Linear(d, d)
    def forward(s, x):
        B, T, D = x.shape
        qkv = s.qkv(x).reshape(B, T, 3, s.h, D // s.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)) * (D // s.h) ** -0.5
        a = a.softmax(-1)
        return s.proj((a @ v).transpose(1, 2).reshape(B, T, D))

class ViT(nn.Module):
    """`readout`: "front" (the class token first, the head reads it; two prefix tokens: their mean), "last" (the
    class token appended after the patches, the head reads token −1), "patches" (the prefix tokens are registers,
    the head averages the patch tokens)."""
    def __init__(s, size=(64, 64), patch=8, d=32, depth=3, heads=2, classes=5, prefix=1, readout="front"):
        super().__init__()
        s.readout = readout
        s.patch_embed = nn.Conv2d(3, d, patch, patch)
        n = (size[0] // patch) * (size[1] // patch)
        s.prefix = prefix
        s.cls_token = nn.Parameter(torch.randn(1, prefix, d) * .02)
        s.pos = nn.Parameter(torch.randn(1, n + prefix, d) * .02)
        s.blocks = nn.Sequential(*[Block(d, heads) for _ in range(depth)])
        s.norm = nn.LayerNorm(d); s.head = nn.Linear(d, classes)
    def forward(s, x):
        t = s.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = s.cls_token.expand(x.shape[0], -1, -1)
        t = (torch.cat([t, prefix], 1) if s.readout == "last" else torch.cat([prefix, t], 1)) + s.pos
        t = s.norm(s.blocks(t))
        if s.readout != "front":
            return s.head(t[:, -1] if s.readout == "last" else t[:, s.prefix:].mean(1))
        return s.head(t[:, 0] if s.prefix == 1 else t[:, :2].mean(1))

class WindowAttn(nn.Module):
    """Attention within 4×4 windows of an (h, w) grid of tokens, as Swin's: (N·windows, heads, 16, 16)."""
    def __init__(s, d, heads, grid):
        super().__init__(); s.attn, s.grid = Attn(d, heads), grid

    def forward(s, x):
        (h, w), (n, _, d) = s.grid, x.shape
        t = x.reshape(n, h // 4, 4, w // 4, 4, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, 16, d)
        t = s.attn(t).reshape(n, h // 4, w // 4, 4, 4, d).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(n, h * w, d)


class SwinLike(nn.Module):
    """No class token, (N,h,w,D) stream, mean-pooled head; attention within windows with `windowed`."""
    def __init__(s, size=(64, 64), patch=8, d=32, depth=2, heads=2, classes=5, windowed=False):
        super().__init__()
        s.patch_embed = nn.Conv2d(3, d, patch, patch)
        s.blocks = nn.Sequential(*[Block(d, heads) for _ in range(depth)])
        for b in s.blocks if windowed else []:
            b.attn = WindowAttn(d, heads, (size[0] // patch, size[1] // patch))
        s.norm = nn.LayerNorm(d); s.head = nn.Linear(d, classes)
    def forward(s, x):
        t = s.patch_embed(x).permute(0, 2, 3, 1)
        N, h, w, D = t.shape
        for b in s.blocks:
            t = b(t.reshape(N, h * w, D)).reshape(N, h, w, D)
        return s.head(s.norm(t).mean((1, 2)))

def export(model, path, size, dynamo=False):
    model.eval()
    x = torch.randn(1, 3, *size)
    torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["logits"],
                      dynamic_axes=None if dynamo else {"input": {0: "N"}, "logits": {0: "N"}},
                      dynamic_shapes=({0: torch.export.Dim("N", min=1, max=64)},) if dynamo else None,
                      dynamo=dynamo, opset_version=18 if dynamo else 17)

MODELS = {"vit": (lambda: ViT(), (64, 64)), "deit": (lambda: ViT(size=(48, 80), prefix=2), (48, 80)),
          "swin": (lambda: SwinLike(), (64, 64)), "swin-windows": (lambda: SwinLike(windowed=True), (64, 64)),
          "vit-class-last": (lambda: ViT(readout="last"), (64, 64)),
          "vit-registers-pooled": (lambda: ViT(prefix=4, readout="patches"), (64, 64))}


def build_tiny(name: str) -> nn.Module:
    """The same weights every time (seeded), in eval mode."""
    torch.manual_seed(0)
    return MODELS[name][0]().eval()


def export_tiny(name: str, path, dynamo: bool = False):
    export(build_tiny(name), str(path), MODELS[name][1], dynamo=dynamo)
    return path


def tail_logits(model: ViT, tokens) -> "torch.Tensor":
    """The model from its last block's input on: tokens (R,T,D) → logits (R,C)."""
    with torch.no_grad():
        t = model.norm(model.blocks[-1](torch.as_tensor(tokens)))
        return model.head(t[:, 0] if model.prefix == 1 else t[:, :2].mean(1))
