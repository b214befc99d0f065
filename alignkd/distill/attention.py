"""Layer-0 attention capture without paying for it: hooks inside the layer, only the rows and columns the loss needs.

The released Align-KD code asks both models for `output_attentions=True`, which forces eager attention in
every layer and materialises every layer's L x L map (about 10 GB for the 7B teacher at 2k tokens), then
keeps layer 0. Here hooks on one decoder layer record, during the model's own forward, the outputs of its
`q_proj` and `k_proj` and the RoPE cos/sin handed to its attention; afterwards the probabilities of just the
selected query rows over all keys are computed from those tensors (rotary applied as the layer applies it),
with the causal and padding masks, and sliced to the selected key columns. Nothing calls the projections
again after the forward, so the capture works when their weights are sharded and only gathered inside the
layer's forward (FSDP, DeepSpeed ZeRO-3). Every layer, layer 0 included, keeps running SDPA.
`tests/distill/test_attention.py` checks the block equals the eager layer-0 attention;
`benchmarks/distill_step.py` measures the memory against `output_attentions=True`.

    with Layer0Capture(model.llm) as cap:
        out = model(input_ids, images, attention_mask)
    block = cap.probs(text_pos, vision_pos, out.spliced.attention_mask)   # [B, H, T, Nv]
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

PAD = -1  # padding value in position index tensors


class Layer0Capture:
    """Records one decoder layer's query/key projections and RoPE tables during the forward inside the `with` block."""

    def __init__(self, llm, layer: int = 0):
        self.attn = llm.model.layers[layer].self_attn
        self.q = self.k = None  # [B, L, H*d], [B, L, Hkv*d]: the projections' outputs, before rotary
        self.cos = self.sin = None
        self._handles = []

    # Gradient checkpointing re-runs the layer during backward; each hook keeps the first (forward) capture.
    def _rope_hook(self, module, args, kwargs):
        if self.cos is None:
            self.cos, self.sin = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)

    def _q_hook(self, module, args, output):
        if self.q is None:
            self.q = output

    def _k_hook(self, module, args, output):
        if self.k is None:
            self.k = output

    def __enter__(self) -> "Layer0Capture":
        self.q = self.k = self.cos = self.sin = None
        self._handles = [self.attn.register_forward_pre_hook(self._rope_hook, with_kwargs=True),
                         self.attn.q_proj.register_forward_hook(self._q_hook),
                         self.attn.k_proj.register_forward_hook(self._k_hook)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def probs(self, rows: torch.Tensor, cols: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """Softmax attention probabilities [B, H, R, C] of query positions `rows` [B, R] on key positions
        `cols` [B, C] (PAD = -1 marks padding; padded rows/columns come out 0). `key_valid` [B, L] is the
        attention mask (False = padding key). The softmax runs over all keys allowed by the causal and
        padding masks, in fp32 like transformers' eager attention, so the block equals a slice of the full map.
        """
        if self.q is None or self.k is None or self.cos is None:
            raise RuntimeError("Layer0Capture.probs called before a forward pass inside the `with` block")
        attn = self.attn
        b, length, _ = self.k.shape
        n_rows = rows.shape[1]
        row_idx = rows.clamp(min=0)
        gather = lambda t, idx: t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))
        q = gather(self.q, row_idx).view(b, n_rows, -1, attn.head_dim).transpose(1, 2)
        k = self.k.view(b, length, -1, attn.head_dim).transpose(1, 2)
        # position ids are shared across the batch here, so cos/sin may come with batch 1
        cos, sin = self.cos.expand(b, -1, -1), self.sin.expand(b, -1, -1)
        q, _ = apply_rotary_pos_emb(q, q, gather(cos, row_idx), gather(sin, row_idx))
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        k = repeat_kv(k, attn.num_key_value_groups)
        scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling  # [B, H, R, L]
        key_pos = torch.arange(length, device=k.device)
        allowed = (key_pos[None, None, :] <= row_idx[:, :, None]) & key_valid.bool()[:, None, :]  # [B, R, L]
        scores = scores.float().masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
        p = torch.softmax(scores, dim=-1).to(q.dtype)
        col_idx = cols.clamp(min=0)
        block = p.gather(3, col_idx[:, None, None, :].expand(-1, p.shape[1], n_rows, -1))
        valid = (rows >= 0)[:, None, :, None] & (cols >= 0)[:, None, None, :]
        return block * valid


def pad_positions(positions: list[torch.Tensor], device=None) -> torch.Tensor:
    """Stack per-sample position lists into [B, max_len] padded with PAD."""
    width = max((p.numel() for p in positions), default=0)
    out = torch.full((len(positions), width), PAD, dtype=torch.long, device=device)
    for i, p in enumerate(positions):
        out[i, : p.numel()] = p
    return out


def block_positions(image_positions: list[torch.Tensor], attention_mask: torch.Tensor, block: str):
    """Per-sample (rows, cols) position sets for an attention block, found from the spliced image positions.

    text = non-padding positions after the sample's last image token (the paper: all text after the image);
    vision = the image-token positions. A sample without an image has no text rows (nothing to align).
    Returns rows [B, R], cols [B, C], text [B, T], vision [B, Nv], all PAD-padded.
    """
    device = attention_mask.device
    texts, visions, alls = [], [], []
    for b, vis in enumerate(image_positions):
        valid = torch.nonzero(attention_mask[b].bool()).flatten()
        alls.append(valid)
        visions.append(vis.to(device))
        texts.append(valid[valid > vis.max()] if vis.numel() else valid[:0])
    text, vision, every = pad_positions(texts, device), pad_positions(visions, device), pad_positions(alls, device)
    choice = {
        "text_vision": (text, vision),
        "vision_vision": (vision, vision),
        "text_text": (text, text),
        "full": (every, every),
        "vision_text": (vision, text),  # causally empty: the released code's block (AttnBlock.vision_text)
    }
    rows, cols = choice[block]
    return rows, cols, text, vision
