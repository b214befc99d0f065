"""The Align-KD loss terms (Feng et al., CVPR 2025) as pure functions and two tiny adapter modules.

Implemented as the paper defines them (the project's Align-KD method notes, §1), not as the
released code computes them: the attention block is text-query x vision-key (the released mask took
the causally-zeroed transpose, a zero-gradient term), the logit term is a true reverse KL over a
token mask in fp32 (the released one is forward-KL cross-entropy over all positions in fp16), focus
tokens are ranked by attention from text rows only, and the adapters are nn.Modules meant to be
owned by the optimizer. Every reduction is done in fp32 whatever the input dtype.

Index convention shared by `gather_text_vision_block`, `attention_mse` and `focus_topk`: position
tensors are padded with a negative value (PAD_POSITION); `text_pos >= 0` is the `text_valid` mask.

Exercised by: python -m pytest tests/distill/test_losses.py
"""

import torch
from torch import Tensor, nn
import torch.nn.functional as F

PAD_POSITION = -1


def _zero_like_graph(x: Tensor) -> Tensor:
    # An empty selection must still return a tensor attached to the graph, so `loss.backward()`
    # works on a batch where a term has nothing to compare (no response tokens, no image).
    return x.sum() * 0.0


def _kl_rows(p_logits: Tensor, q_logits: Tensor, temperature: float) -> Tensor:
    """KL(p || q) per row, [n, V] -> [n], fp32; 0 * log 0 counts as 0 (vocab masked with -inf)."""
    log_p = F.log_softmax(p_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(q_logits.float() / temperature, dim=-1)
    return _kl_logp(log_p, log_q)


def _kl_logp(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities [n, V] -> [n]; 0 * log 0 counts as 0."""
    p = log_p.exp()
    # where() before the product, not after: (-inf) - (-inf) = nan would otherwise leak into the
    # backward pass even where p == 0.
    log_ratio = torch.where(p > 0, log_p - log_q, torch.zeros_like(log_p))
    return (p * log_ratio).sum(-1)


def _masked_kl(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float,
               reverse: bool) -> Tensor:
    if student.shape != teacher.shape or mask.shape != student.shape[:-1]:
        raise ValueError(f"logits {tuple(student.shape)} / {tuple(teacher.shape)} and mask "
                         f"{tuple(mask.shape)} must be [..., V], [..., V] and [...].")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    mask = mask.bool()
    # Select rows before the fp32 upcast: [B*L, 32000] in fp32 is the big allocation, and padded
    # rows (possibly inf/nan) never enter the graph.
    s_sel, t_sel = student[mask], teacher.detach()[mask]
    if s_sel.shape[0] == 0:
        return _zero_like_graph(s_sel.float())
    p, q = (s_sel, t_sel) if reverse else (t_sel, s_sel)
    return _kl_rows(p, q, temperature).mean() * temperature**2


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor,
               temperature: float = 1.0) -> Tensor:
    """Reverse KL, the paper's L_RKLD (Eq. 6, after MiniLLM), averaged over masked positions.

    student_logits, teacher_logits: [N, V] (any [..., V] works with mask [...]); mask: [N] bool.
    Returns a fp32 scalar: T^2 * mean_{n: mask[n]} sum_v p_S (log p_S - log p_T), with
    p = softmax(logits / T). The teacher is detached. Math is fp32 for any input dtype.

    Temperature: both logits are divided by T and the result is multiplied by T^2 (Hinton et al.,
    2015), so gradient magnitudes stay comparable across T and the loss weight need not be retuned;
    at the default T = 1 this is the plain KL.
    All-False mask: returns 0.0 attached to the student's graph (zero gradient, never NaN).
    Vocabulary entries with logit -inf in the student contribute 0 (0 * log 0 = 0).
    """
    return _masked_kl(student_logits, teacher_logits, mask, temperature, reverse=True)


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor,
               temperature: float = 1.0) -> Tensor:
    """Forward KL, T^2 * mean_{masked n} sum_v p_T (log p_T - log p_S); contract as `reverse_kl`.

    The released code's "RKLD" equals this plus H(p_T) (same gradient), in fp16, over all positions.
    Vocabulary entries with logit -inf in the teacher contribute 0.
    """
    return _masked_kl(student_logits, teacher_logits, mask, temperature, reverse=False)


def topk_kl(student_logits: Tensor, mask: Tensor, teacher_idx: Tensor, teacher_logp: Tensor, teacher_tail: Tensor,
            temperature: float = 1.0, reverse: bool = True) -> Tensor:
    """KL between the teacher's cached top-K distribution and the student's, each with a tail bucket.

    student_logits: [..., V] with mask [...] (as `reverse_kl`); the n = mask.sum() selected rows, in row-major
    order, pair with the cached teacher rows: teacher_idx [n, K] vocabulary indices, teacher_logp [n, K] the
    teacher's log p_T(v) = log_softmax(z_T / T)[v] there, teacher_tail [n] log(1 - sum_K p_T), -inf when the
    K indices cover the vocabulary. Both distributions are coarsened to the same K + 1 buckets: the K tokens
    and "any other token". With q_k = softmax(z_S / T)[idx_k] and q_tail = 1 - sum_k q_k (computed as a
    logsumexp over the other V - K logits, not as a difference, so a tiny tail keeps its precision):

        reverse: T^2 * mean_n [ sum_k q_k (log q_k - log p_k) + q_tail (log q_tail - log p_tail) ]
        forward: T^2 * mean_n [ sum_k p_k (log p_k - log q_k) + p_tail (log p_tail - log q_tail) ]

    This is the KL between the bucketed distributions: never above the full-vocabulary KL (log-sum inequality)
    and equal to it when K = V. fp32 math; the teacher side carries no gradient.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    s_sel = student_logits[mask.bool()].float() / temperature
    n, k = teacher_idx.shape
    if s_sel.shape[0] != n or teacher_logp.shape != (n, k) or teacher_tail.shape != (n,):
        raise ValueError(f"{s_sel.shape[0]} masked student rows but cached teacher rows idx {tuple(teacher_idx.shape)}, "
                         f"logp {tuple(teacher_logp.shape)}, tail {tuple(teacher_tail.shape)}.")
    if n == 0:
        return _zero_like_graph(s_sel)
    idx = teacher_idx.long()
    log_z = torch.logsumexp(s_sel, dim=-1, keepdim=True)
    s_top = s_sel.gather(1, idx) - log_z
    rest = s_sel.scatter(1, idx, float("-inf"))
    # An empty tail (K = V) would give logsumexp(all -inf) = -inf, whose backward is nan: compute it on zeros
    # and put the -inf back with where(), which sends no gradient there.
    empty = torch.isneginf(rest).all(dim=-1, keepdim=True)
    s_tail = torch.where(empty, float("-inf"), torch.logsumexp(rest.masked_fill(empty, 0.0), dim=-1, keepdim=True) - log_z)
    log_s = torch.cat([s_top, s_tail], dim=-1)
    log_t = torch.cat([teacher_logp.detach().float(), teacher_tail.detach().float()[:, None]], dim=-1)
    p, q = (log_s, log_t) if reverse else (log_t, log_s)
    return _kl_logp(p, q).mean() * temperature**2


def response_mask(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Logit positions whose next token is supervised: [B, L] long -> [B, L] bool.

    mask[b, t] = labels[b, t+1] != ignore_index; the last position is False (it predicts nothing
    that has a label). Logits at t predict token t+1, as in the shifted cross-entropy.
    """
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != ignore_index
    return mask


def gather_text_vision_block(attn_probs: Tensor, vision_pos: Tensor, text_pos: Tensor) -> Tensor:
    """Per-sample text-query x vision-key block of an attention map (the A_{1,t-v} of Eq. 1).

    attn_probs: [B, H, L, L] (query, key) as HF returns them; vision_pos: [B, Nv] long;
    text_pos: [B, T] long. Negative entries (PAD_POSITION) are padding.
    Returns [B, H, T, Nv] with out[b, h, i, j] = attn_probs[b, h, text_pos[b, i], vision_pos[b, j]]
    and 0 wherever text_pos[b, i] or vision_pos[b, j] is padding. Rows are queries: text follows
    the image, so this is the causally non-zero lower-left block.
    """
    batch, _, length, _ = attn_probs.shape
    for name, pos in (("vision_pos", vision_pos), ("text_pos", text_pos)):
        if pos.dim() != 2 or pos.shape[0] != batch:
            raise ValueError(f"{name} must be [B={batch}, n], got {tuple(pos.shape)}.")
        if pos.numel() and int(pos.max()) >= length:
            # The released code indexed past L here, a device-side assert on CUDA.
            raise ValueError(f"{name} holds position {int(pos.max())} >= sequence length {length}.")
    rows, cols = text_pos.clamp(min=0), vision_pos.clamp(min=0)
    b = torch.arange(batch, device=attn_probs.device)[:, None, None]
    # Advanced indices split by the head slice come out first: [B, T, Nv, H].
    block = attn_probs[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    valid = (text_pos >= 0)[:, None, :, None] & (vision_pos >= 0)[:, None, None, :]
    return block.masked_fill(~valid, 0.0)


def attention_mse(student_tv: Tensor, teacher_tv: Tensor, text_valid: Tensor) -> Tensor:
    """L_{A1,t-v} (paper Eq. 1): MSE(P_attn(A^T_{1,t-v}), A^S_{1,t-v}) over valid text rows.

    student_tv, teacher_tv: [B, H, T, Nv] layer-0 attention probabilities, text queries x vision
    keys, the teacher already mapped to the student's H heads by `HeadAdapter` (not detached here,
    so the adapter trains). text_valid: [B, T] bool.
    Returns the fp32 mean of squared differences over exactly the entries (b, h, t, j) with
    text_valid[b, t], all heads and all Nv vision columns: one mean over the batch, not a mean of
    per-sample means. A sample with no image must have all its rows invalid. No valid row: 0.0
    attached to the graph.
    """
    if student_tv.shape != teacher_tv.shape or text_valid.shape != student_tv.shape[::2]:
        raise ValueError(f"student {tuple(student_tv.shape)}, teacher {tuple(teacher_tv.shape)} "
                         f"and text_valid {tuple(text_valid.shape)} must be [B,H,T,Nv] x2, [B,T].")
    # fp32: attention probabilities are ~1/L, their squared errors underflow fp16.
    sq = (student_tv.float() - teacher_tv.float()).pow(2)
    rows = text_valid.bool()[:, None, :, None].expand_as(sq)
    count = rows.sum()
    if count == 0:
        return _zero_like_graph(sq)
    return sq.masked_fill(~rows, 0.0).sum() / count


def focus_topk(teacher_tv: Tensor, text_valid: Tensor, k: int) -> Tensor:
    """Idx_K (paper §3.3, Eq. 2 and the top-K after it): the vision tokens text attends to most.

    teacher_tv: [B, Ht, T, Nv] teacher layer-0 text-query x vision-key probabilities (raw heads);
    text_valid: [B, T] bool. Score[b, n] = sum_{t valid} mean_h teacher_tv[b, h, t, n], in fp32.
    Returns LongTensor [B, k] of indices into 0..Nv-1, ordered by descending score; ties go to the
    lower index (stable sort), so the result is deterministic. A sample with no valid row scores
    all zeros and gets 0..k-1. k > Nv or k < 0 raises ValueError. No gradient flows (indices).
    """
    nv = teacher_tv.shape[-1]
    if not 0 <= k <= nv:
        raise ValueError(f"focus k={k} must be between 0 and the number of vision tokens Nv={nv}.")
    with torch.no_grad():
        per_row = teacher_tv.float().mean(dim=1)  # mean over heads, as the released code does
        score = per_row.masked_fill(~text_valid.bool()[:, :, None], 0.0).sum(dim=1)
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    return order[:, :k]


def vision_token_mse(student_v: Tensor, teacher_v: Tensor, focus: Tensor,
                     focus_weight: float) -> Tensor:
    """L_V = L_V-all + lambda * L_V-focus (paper Eqs. 4-5; lambda 0.1 in the paper, 1 in the code).

    student_v: [B, Nv, D] student projector outputs; teacher_v: [B, Nv, D] teacher projector outputs
    already mapped to width D by `VisionAdapter` (not detached, so the adapter trains);
    focus: [B, k] long from `focus_topk`. L_V-all is the mean over all B*Nv*D entries, L_V-focus
    the mean over the B*k*D entries of each sample's own focus tokens; fp32. k = 0: focus term 0.
    """
    if student_v.shape != teacher_v.shape or focus.shape[0] != student_v.shape[0]:
        raise ValueError(f"student {tuple(student_v.shape)}, teacher {tuple(teacher_v.shape)} and "
                         f"focus {tuple(focus.shape)} must be [B,Nv,D] x2 and [B,k].")
    sq = (student_v.float() - teacher_v.float()).pow(2)
    loss_all = sq.mean()
    if focus.shape[1] == 0:
        return loss_all
    idx = focus.long()[:, :, None].expand(-1, -1, sq.shape[-1])
    loss_focus = sq.gather(1, idx).mean()
    return loss_all + focus_weight * loss_focus


class HeadAdapter(nn.Linear):
    """P_attn: teacher heads -> student heads, [B, Ht, T, Nv] -> [B, Hs, T, Nv].

    A Linear(Ht, Hs) with bias over the head axis, identical to the paper's 1x1 Conv2d whose
    channels are heads (Conv2d weight = self.weight.view(Hs, Ht, 1, 1)).

    Init: student head s averages the teacher heads covering the slice [s*Ht/Hs, (s+1)*Ht/Hs) of
    the head axis (fractional overlaps weighted; with Ht = 2*Hs, head s = mean of teacher heads
    2s and 2s+1), bias 0. Each output row is then a convex mix of teacher rows, i.e. a genuine
    attention map on the student's scale, so the MSE sends a meaningful signal from step one; the
    released code's random init made the early target noise plus a bias offset.
    """

    def __init__(self, teacher_heads: int, student_heads: int):
        super().__init__(teacher_heads, student_heads, bias=True)

    def reset_parameters(self) -> None:
        ht, hs = self.in_features, self.out_features
        # In units of 1/(Ht*Hs): student head s spans [s*Ht, (s+1)*Ht),
        # teacher head t spans [t*Hs, (t+1)*Hs).
        s = torch.arange(hs)[:, None]
        t = torch.arange(ht)[None, :]
        overlap = (torch.minimum((s + 1) * ht, (t + 1) * hs)
                   - torch.maximum(s * ht, t * hs)).clamp(min=0)
        with torch.no_grad():
            self.weight.copy_(overlap.to(self.weight.dtype) / ht)
            self.bias.zero_()

    def forward(self, teacher_tv: Tensor) -> Tensor:
        # The teacher runs in fp16/bf16; the adapter trains in its own (fp32) dtype.
        x = teacher_tv.to(self.weight.dtype).movedim(1, -1)
        return super().forward(x).movedim(-1, 1)


class VisionAdapter(nn.Linear):
    """P_V: teacher projector width -> student width, [B, Nv, Dt] -> [B, Nv, Ds], Linear with bias.

    Equal to the paper's 1x1 Conv1d over tokens. Weight keeps PyTorch's random init, as the paper
    says: two independently trained projectors share no coordinate correspondence to start from.
    """

    def __init__(self, teacher_dim: int, student_dim: int):
        super().__init__(teacher_dim, student_dim, bias=True)

    def forward(self, teacher_v: Tensor) -> Tensor:
        return super().forward(teacher_v.to(self.weight.dtype))
