"""The same small transformers as Hugging Face `transformers` models, our trained weights copied in exactly, and
exported to ONNX: their graphs differ from the hand-written ones (separate query/key/value projections,
attention through HF's own reshapes, Swin's relative position bias and padding checks), which is what users
of HF exports deploy. Needs `transformers` 5 (made with 5.25.0, in a venv of its own: it is no dependency of cam-infer).

    python export/hf_transformers.py [vit deit swin]   # after export/train_transformers.py; writes hf_<name>.onnx

The relative position bias of HF Swin is set to zero (ours has none), LayerNorm ε to ours (1e-5), GELU exact.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "data" / "transformers"


def split_qkv(state: dict, prefix: str, dim: int) -> dict:
    w, b = state[f"{prefix}.qkv.weight"], state[f"{prefix}.qkv.bias"]
    return {name: (w[k * dim:(k + 1) * dim], b[k * dim:(k + 1) * dim]) for k, name in enumerate(("q_proj", "k_proj",
                                                                                                    "v_proj"))}


LAYER = (("attn.proj", "attention.o_proj"), ("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
         ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2"))          # ours → transformers 5's names


def copy_block(s: dict, ours: dict, o: str, h: str, dim: int) -> None:
    """One of our blocks (`o`) into the HF block `h`: q/k/v split from our fused projection, the rest by name."""
    for name, (w, b) in split_qkv(ours, f"{o}.attn", dim).items():
        s[f"{h}.attention.{name}.weight"], s[f"{h}.attention.{name}.bias"] = w, b
    for ours_name, hf_name in LAYER:
        for p in ("weight", "bias"):
            s[f"{h}.{hf_name}.{p}"] = ours[f"{o}.{ours_name}.{p}"]


def vit_state(ours: dict, depth: int, dim: int, root: str, distilled: bool) -> dict:
    """Our ViT/DeiT state dict → HF ViTForImageClassification / DeiTForImageClassificationWithTeacher's."""
    s = {f"{root}.embeddings.cls_token": ours["cls_token"],
         f"{root}.embeddings.position_embeddings": ours["pos_embed"],
         f"{root}.embeddings.patch_embeddings.projection.weight": ours["patch_embed.weight"],
         f"{root}.embeddings.patch_embeddings.projection.bias": ours["patch_embed.bias"],
         f"{root}.layernorm.weight": ours["norm.weight"], f"{root}.layernorm.bias": ours["norm.bias"]}
    if distilled:
        s[f"{root}.embeddings.distillation_token"] = ours["dist_token"]
        s.update({"cls_classifier.weight": ours["head.weight"], "cls_classifier.bias": ours["head.bias"],
                  "distillation_classifier.weight": ours["head_dist.weight"],
                  "distillation_classifier.bias": ours["head_dist.bias"]})
    else:
        s.update({"classifier.weight": ours["head.weight"], "classifier.bias": ours["head.bias"]})
    for i in range(depth):
        copy_block(s, ours, f"blocks.{i}", f"{root}.layers.{i}", dim)
    return s


def swin_state(ours: dict, hf_keys, dims=(48, 96)) -> dict:
    """Our SwinLike state dict → HF SwinForImageClassification's (relative position bias tables zero)."""
    import torch
    s = {"swin.embeddings.patch_embeddings.projection.weight": ours["patch_embed.weight"],
         "swin.embeddings.patch_embeddings.projection.bias": ours["patch_embed.bias"],
         "swin.embeddings.norm.weight": ours["embed_norm.weight"], "swin.embeddings.norm.bias": ours["embed_norm.bias"],
         "swin.encoder.layers.0.downsample.norm.weight": ours["merge.norm.weight"],
         "swin.encoder.layers.0.downsample.norm.bias": ours["merge.norm.bias"],
         "swin.encoder.layers.0.downsample.reduction.weight": ours["merge.reduction.weight"],
         "swin.layernorm.weight": ours["norm.weight"], "swin.layernorm.bias": ours["norm.bias"],
         "classifier.weight": ours["head.weight"], "classifier.bias": ours["head.bias"]}
    for stage, dim in enumerate(dims):
        for block in range(2):
            copy_block(s, ours, f"stage{stage + 1}.{block}", f"swin.encoder.layers.{stage}.blocks.{block}", dim)
    for key in hf_keys:
        if key.endswith("relative_position_bias_table"):
            s[key] = torch.zeros_like(hf_keys[key])
    return s


def main(names=("vit", "deit", "swin")) -> None:
    import torch
    from transformers import (DeiTConfig, DeiTForImageClassificationWithTeacher, SwinConfig,
                              SwinForImageClassification, ViTConfig, ViTForImageClassification)

    def load(name):
        return torch.load(OUT / f"{name}.pt", weights_only=True)

    common = dict(image_size=128, patch_size=16, num_channels=3, hidden_size=64, num_hidden_layers=4,
                  num_attention_heads=2, intermediate_size=128, hidden_act="gelu", layer_norm_eps=1e-5,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=4)
    models = {
        "vit": (ViTForImageClassification(ViTConfig(**{**common, "patch_size": 8})), lambda m: vit_state(load("vit"), 4, 64, "vit", False)),
        "deit": (DeiTForImageClassificationWithTeacher(DeiTConfig(**common)),
                 lambda m: vit_state(load("deit"), 4, 64, "deit", True)),
        "swin": (SwinForImageClassification(SwinConfig(
            image_size=128, patch_size=16, num_channels=3, embed_dim=48, depths=[2, 2], num_heads=[2, 4],
            window_size=4, mlp_ratio=2.0, hidden_act="gelu", layer_norm_eps=1e-5, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, drop_path_rate=0.0, num_labels=4)),
            lambda m: swin_state(load("swin"), m.state_dict())),
    }
    sys.path.insert(0, str(ROOT))
    from models import vit as ours
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    for name, (model, state) in models.items():
        if name not in names:
            continue
        model.eval()
        missing, unexpected = model.load_state_dict(state(model), strict=False)
        missing = [k for k in missing if not k.endswith(("relative_position_index", "position_ids"))]
        assert not missing and not unexpected, (name, missing, unexpected)
        reference = getattr(ours, name)(4, size=(128, 128))
        reference.load_state_dict(load(name))
        with torch.no_grad():
            got, expected = model(pixel_values=x).logits, reference.eval()(x)
        assert torch.allclose(got, expected, atol=1e-4), (name, (got - expected).abs().max())

        class Logits(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values):
                return self.inner(pixel_values=pixel_values).logits

        torch.onnx.export(Logits(model).eval(), (x[:1],), str(OUT / f"hf_{name}.onnx"), input_names=["pixel_values"],
                          output_names=["logits"], dynamo=False, opset_version=17,
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
        print(name, "exported; logits equal ours within", float((got - expected).abs().max()))


if __name__ == "__main__":
    main(sys.argv[1:] or ("vit", "deit", "swin"))
