"""Layer-0 attention capture without paying for it: one hook, only the rows and columns the loss needs.

The released Align-KD code asks both models for `output_attentions=True`, which forces eager attention in
every layer and materialises every layer's L x L map (about 10 GB for the 7B teacher at 2k tokens), then
keeps layer 0. Here a forward pre-hook on one decoder layer's attention records its input (the hidden
states after `input_layernorm`, and the RoPE cos/sin); afterwards the probabilities of just the selected
query rows over all keys are recomputed from that layer's own q/k projections, with the causal and
padding masks, and sliced to the selected key columns. Every layer, layer 0 included, keeps running SDPA.
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
    """Records one decoder layer's attention input during the forward inside the `with` block."""

    def __init__(self, llm, layer: int = 0):
        self.attn = llm.model.layers[layer].self_attn
        self.hidden = None
        self.cos = self.sin = None
        self._handle = None

    def _hook(self, module, args, kwargs):
        # Gradient checkpointing re-runs the layer during backward; keep the first (forward) capture.
        if self.hidden is not None:
            return
        self.hidden = args[0] if args else kwargs["hidden_states"]
        pos_emb = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
        self.cos, self.sin = pos_emb

    def __enter__(self) -> "Layer0Capture":
        self.hidden = None
        self._handle = self.attn.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def probs(self, rows: torch.Tensor, cols: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """Softmax attention probabilities [B, H, R, C] of query positions `rows` [B, R] on key positions
        `cols` [B, C] (PAD = -1 marks padding; padded rows/columns come out 0). `key_valid` [B, L] is the
        attention mask (False = padding key). The softmax runs over all keys allowed by the causal and
        padding masks, in fp32 like transformers' eager attention, so the block equals a slice of the full map.
        """
        if self.hidden is None:
            raise RuntimeError("Layer0Capture.probs called before a forward pass inside the `with` block")
        attn, h = self.attn, self.hidden
        b, length, _ = h.shape
        n_rows = rows.shape[1]
        row_idx = rows.clamp(min=0)
        gather = lambda t, idx: t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))
        q = attn.q_proj(gather(h, row_idx)).view(b, n_rows, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, length, -1, attn.head_dim).transpose(1, 2)
        # position ids are shared across the batch here, so cos/sin may come with batch 1
        cos, sin = self.cos.expand(b, -1, -1), self.sin.expand(b, -1, -1)
        q, _ = apply_rotary_pos_emb(q, q, gather(cos, row_idx), gather(sin, row_idx))
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        k = repeat_kv(k, attn.num_key_value_groups)
        scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling  # [B, H, R, L]
        key_pos = torch.arange(length, device=h.device)
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
    }
    rows, cols = choice[block]
    return rows, cols, text, vision
