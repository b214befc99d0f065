"""The three exported parts of MobileVLM (ExecuTorch's LLaVA layout), as plain nn.Modules every target traces.

- `VisionEncoder`: pixel values [1,3,H,W] -> image tokens [1,144,D]. CLIP runs only up to the selected
  layer (the last layer and the post-LN are never used by MobileVLM, so they are not exported), and the
  LDPv2 12x12 adaptive pool becomes avg_pool2d(k) when the patch grid is k times the pooled grid (24x24 ->
  12x12: k = 2; the toy presets' 12x12 -> 3x3: k = 4; identical maths, and a plain pooling op every backend
  has), and nothing at all when the grids are equal.
- `TokenEmbedding`: ids [1,n] -> embeddings [1,n,D].
- `PastKVDecoder` (ONNX) and `StatefulDecoder` (Core ML): the LLaMA decoder from embeddings. The ExecuTorch
  decoder is ExecuTorch's own llama transformer (custom SDPA and KV-cache ops) and lives in executorch.py.

Each wrapper shares the eager model's weights (no copies); `check_vision_encoder` proves the truncated
encoder equals `MobileVLM.encode_images`.

    python -m pytest tests/export/test_parts.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alignkd.models.mobilevlm import MobileVLM


class VisionEncoder(nn.Module):
    """CLIP up to `select_layer`, CLS dropped, then the LDPv2 projector."""

    def __init__(self, model: MobileVLM):
        super().__init__()
        cfg = model.config
        tower = model.vision_tower
        n_layers = cfg.vision.num_hidden_layers
        # hidden_states[0] is the embedding output, so hidden_states[k] is the output of layer k.
        used = cfg.select_layer % (n_layers + 1)
        self.embeddings = tower.embeddings
        self.pre_layrnorm = tower.pre_layrnorm
        self.layers = nn.ModuleList(tower.encoder.layers[:used])
        self.drop_cls = cfg.select_feature == "patch"
        proj = model.mm_projector
        self.mlp, self.peg = proj.mlp, proj.peg
        self.dim = cfg.llm.hidden_size
        self.grid = cfg.vision.image_size // cfg.vision.patch_size
        self.pooled = cfg.pooled_grid

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.layers:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        if self.drop_cls:
            h = h[:, 1:]
        x = self.mlp(h)
        # constant sizes only: traced shape arithmetic becomes int casts that Core ML's converter rejects
        x = x.transpose(1, 2).reshape(-1, self.dim, self.grid, self.grid)
        if self.grid != self.pooled and self.grid % self.pooled == 0:
            x = F.avg_pool2d(x, self.grid // self.pooled)  # equals the adaptive pool exactly when the output divides the grid
        elif self.grid != self.pooled:  # equal grids pool to themselves: no op
            x = F.adaptive_avg_pool2d(x, (self.pooled, self.pooled))
        x = x + self.peg(x)
        return x.flatten(2).transpose(1, 2)


class TokenEmbedding(nn.Module):
    def __init__(self, model: MobileVLM):
        super().__init__()
        self.embed = model.llm.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


class PastKVDecoder(nn.Module):
    """transformers' LLaMA with the cache as flat tensors in and out (the optimum / ORT GenAI names).

    forward(inputs_embeds [1,S,D], attention_mask [1,P+S], position_ids [1,S], past (2L tensors [1,H,P,hd]))
    -> (logits [1,S,V], present.0.key, present.0.value, ...), each present [1,H,P+S,hd].
    """

    def __init__(self, model: MobileVLM):
        super().__init__()
        self.llm = model.llm
        self.n_layers = model.config.llm.num_hidden_layers

    def forward(self, inputs_embeds, attention_mask, position_ids, past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.llm.config)
        for i in range(self.n_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                       cache=cache, use_cache=True)
        presents = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *presents)


class StatefulDecoder(nn.Module):
    """LLaMA decoder with the KV cache in mutable buffers (Core ML states), Apple's slice-update pattern.

    forward(inputs_embeds [1,S,D], causal_mask [1,1,S,E] additive, E = past + S) -> logits [1,S,V].
    The rotary tables are precomputed for `max_seq_len` positions so position = past + i without inputs.
    """

    def __init__(self, model: MobileVLM, max_seq_len: int, cache_dtype: torch.dtype = torch.float16):
        super().__init__()
        cfg = model.config.llm
        self.llm = model.llm
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        shape = (cfg.num_hidden_layers, 1, self.n_kv, max_seq_len, self.head_dim)
        self.register_buffer("keyCache", torch.zeros(shape, dtype=cache_dtype))
        self.register_buffer("valueCache", torch.zeros(shape, dtype=cache_dtype))
        # one spare row so that slicing cos[past:E] is valid for every E <= max_seq_len (torch.export bound)
        pos = torch.arange(max_seq_len + 1)[None]
        cos, sin = model.llm.model.rotary_emb(torch.zeros(1, dtype=torch.float32), pos)
        self.register_buffer("cos", cos[0], persistent=False)
        self.register_buffer("sin", sin[0], persistent=False)

    @staticmethod
    def _rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, inputs_embeds: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        s, e = inputs_embeds.shape[1], causal_mask.shape[-1]
        past = e - s
        cos, sin = self.cos[past:e][None, None], self.sin[past:e][None, None]
        h = inputs_embeds
        for i, layer in enumerate(self.llm.model.layers):
            att = layer.self_attn
            x = layer.input_layernorm(h)
            q = att.q_proj(x).view(1, s, self.n_heads, self.head_dim).transpose(1, 2)
            k = att.k_proj(x).view(1, s, self.n_kv, self.head_dim).transpose(1, 2)
            v = att.v_proj(x).view(1, s, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + self._rotate_half(q) * sin
            k = k * cos + self._rotate_half(k) * sin
            self.keyCache[i:i + 1, :, :, past:e] = k.to(self.keyCache.dtype).unsqueeze(0)
            self.valueCache[i:i + 1, :, :, past:e] = v.to(self.valueCache.dtype).unsqueeze(0)
            keys = self.keyCache[i, :, :, :e].to(q.dtype)
            values = self.valueCache[i, :, :, :e].to(q.dtype)
            if self.n_kv != self.n_heads:
                keys = keys.repeat_interleave(self.n_heads // self.n_kv, dim=1)
                values = values.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=causal_mask)
            h = h + att.o_proj(o.transpose(1, 2).reshape(1, s, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.llm.lm_head(self.llm.model.norm(h))


@torch.inference_mode()
def check_vision_encoder(model: MobileVLM, pixel_values: torch.Tensor) -> float:
    """Max-abs difference between the truncated encoder and the eager `encode_images` (expected ~1e-6)."""
    return float((VisionEncoder(model)(pixel_values) - model.encode_images(pixel_values)).abs().max())
