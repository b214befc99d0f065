"""The trained module and its objective: the student plus the KD adapters, and every Align-KD term.

Everything that trains (student, head adapter, vision adapter) is this one module, so the optimizer, the
checkpoint and a DDP/FSDP wrapper all own the adapters (the released code kept them on the Trainer, outside
the optimizer, so they never trained). The frozen teacher runs outside it, under no_grad
(`run_teacher`), and hands in its logits, its layer-0 attention block and its projector outputs.

    L = w_ce CE + w_kd KL + w_attn MSE(P_attn(A^T_1,blk), A^S_1,blk) + w_vall L_V-all + w_vfocus L_V-focus

`loss.attn_extra` adds further (layer, block) attention terms under the same weight, each with its own head
adapter (Table 4's "A1,t-v + A_last,all"); `loss.attn_normalise` (a departure, off by default) scales each
attention MSE by its teacher block's mean square.

`tests/distill/test_objective.py` checks that every term has a gradient for what it should train.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from alignkd.distill.attention import Layer0Capture, block_positions
from alignkd.distill.config import AttnBlock, Divergence, KDMask, LossConfig
from alignkd.distill.losses import (HeadAdapter, VisionAdapter, attention_mse, focus_topk, forward_kl, response_mask,
                                    reverse_kl, topk_kl, vision_token_mse)

TERMS = ("ce", "kd", "attn", "vision_all", "vision_focus")


@dataclass
class TopKLogits:
    """The teacher's logits as the cache keeps them (`alignkd.distill.teacher_cache`), rows = KD-mask positions."""

    idx: torch.Tensor  # [n, K] vocabulary indices
    logp: torch.Tensor  # [n, K] teacher log-probabilities at the loss temperature
    tail: torch.Tensor  # [n] log of the remaining mass (-inf when K = V)


@dataclass
class TeacherOutputs:
    logits: torch.Tensor | None  # [B, L, V]; None when read from a teacher cache (see `topk`)
    block: torch.Tensor | None  # [B, Ht, R, C] the distilled attention block
    text_vision: torch.Tensor | None  # [B, Ht, T, Nv] for the focus ranking
    image_features: torch.Tensor | None  # [n_images, 144, Dt]
    rows: torch.Tensor
    cols: torch.Tensor
    text: torch.Tensor
    vision: torch.Tensor
    topk: TopKLogits | None = None  # instead of `logits`; rows..vision are then None and found from the student's splice
    extra: list = field(default_factory=list)  # (block, rows, cols) of each loss.attn_extra term


class _Captures:
    """One attention capture per decoder layer the loss reads (its terms and the focus ranking's layer)."""

    def __init__(self, llm, loss: LossConfig):
        n = len(llm.model.layers)
        layers = {t.layer % n for t in loss.attn_terms()}
        self.n, self.caps = n, {layer: Layer0Capture(llm, layer) for layer in sorted(layers)}
        self._stack = ExitStack()

    def __enter__(self):
        for cap in self.caps.values():
            self._stack.enter_context(cap)
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def __getitem__(self, layer: int) -> Layer0Capture:
        return self.caps[layer % self.n]


@torch.no_grad()
def run_teacher(teacher, batch: dict, loss: LossConfig) -> TeacherOutputs:
    """The teacher's forward (eval, no grad) with each attention block captured for the positions the loss uses."""
    with _Captures(teacher.llm, loss) as caps:
        out = teacher(batch["input_ids"], batch["images"], batch["attention_mask"])
    spliced = out.spliced
    rows, cols, text, vision = block_positions(spliced.image_positions, spliced.attention_mask, loss.attn_block.value)
    # a batch of text-only records has no rows (or no columns) in the block: nothing to capture
    need_attn = loss.weights.attn > 0 and rows.shape[1] > 0 and cols.shape[1] > 0
    need_focus = loss.weights.vision_focus > 0 and loss.focus_k > 0 and vision.shape[1] > 0
    cap = caps[loss.attn_layer]
    block = cap.probs(rows, cols, spliced.attention_mask) if need_attn else None
    if need_focus:
        tv = block if (block is not None and loss.attn_block == AttnBlock.text_vision) else cap.probs(text, vision, spliced.attention_mask)
    else:
        tv = None
    extra = []
    for term in loss.attn_extra if need_attn else ():
        r, c, _, _ = block_positions(spliced.image_positions, spliced.attention_mask, term.block.value)
        extra.append((caps[term.layer].probs(r, c, spliced.attention_mask), r, c))
    return TeacherOutputs(out.logits, block, tv, spliced.image_features, rows, cols, text, vision, extra=extra)


def _touch(module: nn.Module) -> torch.Tensor:
    """0 * sum(params): every parameter gets a (zero) gradient even when its term is off or has no data this
    step, so DDP's reducer sees all of them every step without find_unused_parameters. ZeRO-3 parameters (`ds_id`)
    are left out: they exist only inside their own module's forward, and ZeRO-3 has no such reducer."""
    params = [p for p in module.parameters() if p.requires_grad and not hasattr(p, "ds_id")]
    if not params:
        return torch.zeros((), requires_grad=True)
    return sum(p.sum() for p in params) * 0.0


class AlignKDModule(nn.Module):
    """Student + adapters. `forward(batch, teacher_outputs)` returns the total loss and every term."""

    def __init__(self, student, loss: LossConfig, teacher_heads: int | None = None, teacher_dim: int | None = None,
                 teacher_layers: int | None = None):
        super().__init__()
        self.student = student
        self.loss_cfg = loss
        self.distill = teacher_heads is not None
        loss.check_layers(len(student.llm.model.layers), "student")
        if teacher_layers is not None:
            loss.check_layers(teacher_layers, "teacher")
        if self.distill:
            self.head_adapter = HeadAdapter(teacher_heads, student.config.num_heads)
            self.vision_adapter = VisionAdapter(teacher_dim, student.config.hidden_size)
            if loss.attn_extra:  # one head mapping per extra term: heads play other roles in other layers and blocks
                self.extra_head_adapters = nn.ModuleList(HeadAdapter(teacher_heads, student.config.num_heads) for _ in loss.attn_extra)

    def forward(self, batch: dict, teacher: TeacherOutputs | None = None) -> dict[str, torch.Tensor]:
        cfg, w = self.loss_cfg, self.loss_cfg.weights
        if batch["input_ids"] is None:
            # every record of this micro-batch was skipped: a zero step keeps all processes in lockstep
            zero = _touch(self)
            return {"loss": zero, **{name: zero.detach() for name in TERMS}}
        with _Captures(self.student.llm, cfg) as caps:
            out = self.student(batch["input_ids"], batch["images"], batch["attention_mask"], batch["labels"])
        terms = {"ce": out.loss}
        total = w.ce * out.loss + _touch(self.student.mm_projector)
        if not self.distill:
            return {"loss": total, **terms}
        if teacher is None:
            raise ValueError("the Align-KD objective needs the teacher's outputs")
        spliced = out.spliced
        if teacher.rows is None:  # cached teacher: same sequences, so the student's splice gives the same positions
            teacher = replace(teacher, **dict(zip(("rows", "cols", "text", "vision"), block_positions(
                spliced.image_positions, spliced.attention_mask, cfg.attn_block.value))))
        if teacher.logits is not None and teacher.logits.shape[:2] != out.logits.shape[:2]:
            raise ValueError(f"teacher and student sequences differ: {tuple(teacher.logits.shape)} vs {tuple(out.logits.shape)}")
        # logits: same position t predicts the same next token in both models, no shift needed
        mask = response_mask(spliced.labels) if cfg.kd_mask == KDMask.response else spliced.attention_mask
        kl = reverse_kl if cfg.divergence == Divergence.reverse else forward_kl
        if w.kd == 0:
            terms["kd"] = out.logits.sum() * 0.0
        elif teacher.topk is not None:
            t = teacher.topk
            terms["kd"] = topk_kl(out.logits, mask, t.idx, t.logp, t.tail, cfg.temperature, cfg.divergence == Divergence.reverse)
        else:
            terms["kd"] = kl(out.logits, teacher.logits, mask, cfg.temperature)
        # first-layer attention on the chosen block, teacher heads mapped onto the student's
        terms["attn"] = self._attn_term(caps[cfg.attn_layer], self.head_adapter, (teacher.block, teacher.rows, teacher.cols),
                                        spliced.attention_mask)
        for term, adapter, got in zip(cfg.attn_extra, getattr(self, "extra_head_adapters", ()), teacher.extra):
            terms["attn"] = terms["attn"] + self._attn_term(caps[term.layer], adapter, got, spliced.attention_mask)
        terms["vision_all"], terms["vision_focus"] = self._vision_terms(spliced, teacher)
        total = total + sum(getattr(w, name) * terms[name] for name in TERMS[1:])
        total = total + _touch(self.head_adapter) + _touch(self.vision_adapter)
        if cfg.attn_extra:
            total = total + _touch(self.extra_head_adapters)
        return {"loss": total, **terms}

    def _attn_term(self, cap, adapter, teacher_block, key_valid):
        """MSE between the student's block and the head-mapped teacher block (optionally normalised: a departure)."""
        block, rows, cols = teacher_block
        if self.loss_cfg.weights.attn <= 0 or block is None or not rows.shape[1] or not cols.shape[1]:
            return _touch(adapter)
        target = adapter(block)
        mse = attention_mse(cap.probs(rows, cols, key_valid), target, rows >= 0)
        if self.loss_cfg.attn_normalise:
            valid = (rows >= 0)[:, None, :, None].expand_as(target)
            scale = target.detach().float().pow(2)[valid].mean() if valid.any() else mse.new_ones(())
            mse = mse / scale.clamp(min=1e-12)
        return mse

    def _vision_terms(self, spliced, teacher: TeacherOutputs):
        """L_V-all and L_V-focus over the samples that carry images, weighted by their number of vision tokens."""
        cfg = self.loss_cfg
        feats = spliced.image_features
        if feats is None or teacher.image_features is None:
            zero = _touch(self.vision_adapter)
            return zero, zero
        projected = self.vision_adapter(teacher.image_features)
        total_all, total_focus, n_tokens, image_i = 0.0, 0.0, 0, 0
        for b, pos in enumerate(spliced.image_positions):
            n_img = pos.numel() // feats.shape[1]
            if n_img == 0:
                continue
            s = feats[image_i:image_i + n_img].reshape(1, -1, feats.shape[-1])
            t = projected[image_i:image_i + n_img].reshape(1, -1, projected.shape[-1])
            image_i += n_img
            v_all = vision_token_mse(s, t, torch.zeros(1, 0, dtype=torch.long, device=s.device), 0.0)
            if teacher.text_vision is not None:
                nv = s.shape[1]
                k = min(cfg.focus_k, nv)
                focus = focus_topk(teacher.text_vision[b:b + 1, :, :, :nv], teacher.text[b:b + 1] >= 0, k)
                v_focus = vision_token_mse(s, t, focus, 1.0) - v_all
            else:
                v_focus = v_all * 0.0
            total_all = total_all + v_all * s.shape[1]
            total_focus = total_focus + v_focus * s.shape[1]
            n_tokens += s.shape[1]
        return total_all / n_tokens, total_focus / n_tokens
