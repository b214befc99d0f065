"""The vision encoder in a form XNNPACK lowers whole: the ExecuTorch target's `vision_encoder` method.

`alignkd.export.parts.VisionEncoder` traced through transformers' CLIP leaves work outside the XNNPACK delegate
(93 segments at the 1.7B shape): `native_layer_norm` (no XNNPACK op), the masked "safe softmax" that SDPA's
math path emits (`eq`/`logical_not`/`any`/`where`), and `expand_copy` (the class token's broadcast and 4-D
matmuls). `LoweredVisionEncoder` computes the same maths from the same weights with ops XNNPACK takes:
- attention without a mask (CLIP vision attention has none) as two 3-D `bmm` and a last-dim softmax;
- layer norm decomposed, the per-token means as `linear` by a constant 1/D row (XNNPACK's mean wants 4-D
  NCHW and would add a layout transpose per norm), then `rsqrt`, `mul`, `add`;
- the class token and position embeddings folded into two constants and one `cat`, so nothing broadcasts.
The token means are buffers used through `F.linear`, not `nn.Linear`, so quantising the `nn.Linear` layers
(`quantize_vision`) leaves the norm statistics in fp32.

    python -m pytest tests/export/test_vision_lowered.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alignkd.export.parts import VisionEncoder


def _own(linear: nn.Linear) -> nn.Linear:
    """A new nn.Linear holding the same Parameters: quantising it in place leaves the eager model's module alone."""
    new = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    new.weight, new.bias = linear.weight, linear.bias
    return new


class _LayerNorm(nn.Module):
    """LayerNorm over the last dim from linear/mul/add/rsqrt only (no `native_layer_norm`)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        dim = norm.normalized_shape[-1]
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps
        self.register_buffer("mean_row", torch.full((1, dim), 1.0 / dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - F.linear(x, self.mean_row)
        var = F.linear(centred * centred, self.mean_row)
        return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias


class _Attention(nn.Module):
    """Unmasked multi-head self-attention on [1, N, D] with 3-D bmm (4-D matmuls trace to expand + bmm)."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = map(_own, (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj))
        self.heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale

    def _split(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(n, self.heads, self.head_dim).transpose(0, 1)  # [H, N, hd]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dim = x.shape[1], x.shape[2]
        q, k, v = (self._split(p(x), n) for p in (self.q_proj, self.k_proj, self.v_proj))
        weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * self.scale, dim=-1)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(1, n, dim)
        return self.out_proj(out)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Layer(nn.Module):
    def __init__(self, layer: nn.Module, act: str):
        super().__init__()
        self.norm1, self.norm2 = _LayerNorm(layer.layer_norm1), _LayerNorm(layer.layer_norm2)
        self.attn = _Attention(layer.self_attn)
        self.fc1, self.fc2 = _own(layer.mlp.fc1), _own(layer.mlp.fc2)
        self.act = _QuickGELU() if act == "quick_gelu" else layer.mlp.activation_fn

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.fc2(self.act(self.fc1(self.norm2(h))))


class LoweredVisionEncoder(nn.Module):
    """`VisionEncoder`'s maths (same weights, shared) in XNNPACK-delegable ops; pixels [1,3,S,S] -> [1,T,D]."""

    def __init__(self, model):
        super().__init__()
        ref = VisionEncoder(model)
        emb = ref.embeddings
        self.patch_embedding = emb.patch_embedding
        pos = emb.position_embedding.weight.detach()
        # cat then add equals add then cat elementwise: the same fp32 sums, no broadcast at run time
        self.register_buffer("cls_token", (emb.class_embedding.detach() + pos[0])[None, None], persistent=False)
        self.register_buffer("patch_pos", pos[1:][None], persistent=False)
        self.pre_layrnorm = _LayerNorm(ref.pre_layrnorm)
        act = model.config.vision.hidden_act
        self.layers = nn.ModuleList(_Layer(layer, act) for layer in ref.layers)
        self.drop_cls = ref.drop_cls
        self.mlp = nn.Sequential(*(_own(m) if isinstance(m, nn.Linear) else m for m in ref.mlp))
        self.peg = ref.peg
        self.dim, self.grid, self.pooled = ref.dim, ref.grid, ref.pooled

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2) + self.patch_pos
        h = self.pre_layrnorm(torch.cat([self.cls_token, patches], dim=1))
        for layer in self.layers:
            h = layer(h)
        if self.drop_cls:
            h = h[:, 1:]
        x = self.mlp(h).transpose(1, 2).reshape(1, self.dim, self.grid, self.grid)
        if self.grid != self.pooled and self.grid % self.pooled == 0:
            x = F.avg_pool2d(x, self.grid // self.pooled)
        elif self.grid != self.pooled:
            x = F.adaptive_avg_pool2d(x, (self.pooled, self.pooled))
        x = x + self.peg(x)
        return x.flatten(2).transpose(1, 2)
