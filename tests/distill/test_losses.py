"""Hand-computed checks of alignkd.distill.losses: values, masks, dtypes, gradients, orientation.

Run: python -m pytest tests/distill/test_losses.py
"""

import math

import pytest
import torch

from alignkd.distill.losses import (
    HeadAdapter,
    VisionAdapter,
    attention_mse,
    focus_topk,
    forward_kl,
    gather_text_vision_block,
    response_mask,
    reverse_kl,
    vision_token_mse,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def logits_of(*probs):
    """Logits whose softmax is exactly `probs` (log p, shifted by an arbitrary constant)."""
    return torch.log(torch.tensor(probs, dtype=torch.float64)) + 7.0


# p_S = [1/2, 1/4, 1/4], p_T = [1/8, 1/8, 3/4]:
#   RKL = 1/2 ln(4) + 1/4 ln(2) + 1/4 ln(1/3)        = 1.25 ln2 - 0.25 ln3 = 0.591781...
#   FKL = 1/8 ln(1/4) + 1/8 ln(1/2) + 3/4 ln(3)      = 0.75 ln3 - 0.375 ln2 = 0.564029...
RKL_A = 1.25 * LN2 - 0.25 * LN3
FKL_A = 0.75 * LN3 - 0.375 * LN2
# Second token: identical distributions -> both KLs are 0.
S2 = (0.2, 0.3, 0.5)


def two_tokens(dtype=torch.float32):
    student = torch.stack([logits_of(0.5, 0.25, 0.25), logits_of(*S2)]).to(dtype)
    teacher = torch.stack([logits_of(0.125, 0.125, 0.75), logits_of(*S2) - 3.0]).to(dtype)
    return student, teacher


def test_kl_hand_values_and_asymmetry():
    student, teacher = two_tokens()
    mask = torch.tensor([True, True])
    assert reverse_kl(student, teacher, mask).item() == pytest.approx(RKL_A / 2, abs=1e-6)
    assert forward_kl(student, teacher, mask).item() == pytest.approx(FKL_A / 2, abs=1e-6)
    assert abs(RKL_A - FKL_A) > 0.02  # the two directions really differ on this pair


def test_kl_identical_inputs_are_zero():
    x = torch.randn(5, 11)
    mask = torch.ones(5, dtype=torch.bool)
    assert reverse_kl(x, x.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert forward_kl(x, x + 2.5, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_masked_positions_do_not_contribute():
    student, teacher = two_tokens()
    student[1] = torch.tensor([50.0, -50.0, 0.0])  # huge KL that must be ignored
    teacher[1] = torch.tensor([float("nan"), 0.0, 0.0])  # and a nan that must not leak
    mask = torch.tensor([True, False])
    assert reverse_kl(student, teacher, mask).item() == pytest.approx(RKL_A, abs=1e-6)
    assert forward_kl(student, teacher, mask).item() == pytest.approx(FKL_A, abs=1e-6)


def test_kl_accepts_batch_and_sequence_dims():
    student, teacher = two_tokens()
    mask = torch.tensor([[True, False]])
    got = reverse_kl(student[None], teacher[None], mask)
    assert got.item() == pytest.approx(RKL_A, abs=1e-6)


def test_kl_temperature_divides_logits_and_scales_by_t_squared():
    student, teacher = two_tokens()
    mask = torch.tensor([True, False])
    # Logits doubled and T = 2 give back the same softmaxes, so the value is T^2 * KL = 4 * KL.
    assert reverse_kl(2 * student, 2 * teacher, mask, temperature=2.0).item() == pytest.approx(
        4 * RKL_A, abs=1e-5)
    assert forward_kl(2 * student, 2 * teacher, mask, temperature=2.0).item() == pytest.approx(
        4 * FKL_A, abs=1e-5)
    with pytest.raises(ValueError):
        reverse_kl(student, teacher, mask, temperature=0.0)


def test_kl_empty_mask_is_zero_with_graph():
    student, teacher = two_tokens()
    student.requires_grad_(True)
    for fn in (reverse_kl, forward_kl):
        loss = fn(student, teacher, torch.zeros(2, dtype=torch.bool))
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(student.grad, torch.zeros_like(student))
        student.grad = None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kl_low_precision_inputs_give_fp32_result(dtype):
    student, teacher = two_tokens(dtype)
    mask = torch.tensor([True, True])
    for fn, hand in ((reverse_kl, RKL_A), (forward_kl, FKL_A)):
        got = fn(student, teacher, mask)
        assert got.dtype == torch.float32
        # Bit-identical to feeding the same (rounded) values as fp32 ...
        assert torch.equal(got, fn(student.float(), teacher.float(), mask))
        # ... and as accurate as a float64 evaluation of those rounded values.
        ref = fn(student.double(), teacher.double(), mask).item()
        assert got.item() == pytest.approx(ref, abs=1e-6)
        tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # input rounding only
        assert got.item() == pytest.approx(hand / 2, abs=tol)


def test_kl_minus_inf_vocab_entries_count_as_zero():
    # p_S = [1/2, 1/2, 0], p_T = [1/4, 3/4, 0]: RKL = 1/2 ln2 + 1/2 ln(2/3) = ln2 - 1/2 ln3.
    student = torch.tensor([[0.0, 0.0, -float("inf")]], requires_grad=True)
    teacher = torch.tensor([[0.0, LN3, -float("inf")]])
    loss = reverse_kl(student, teacher, torch.tensor([True]))
    assert loss.item() == pytest.approx(LN2 - 0.5 * LN3, abs=1e-6)
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_kl_gradients_reach_student_only():
    student, teacher = two_tokens()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    for fn in (reverse_kl, forward_kl):
        fn(student, teacher, torch.tensor([True, True])).backward()
        assert student.grad is not None and student.grad[0].abs().sum() > 1e-3
        assert teacher.grad is None
        student.grad = None
    # Reverse KL gradient by hand for row 0 (mean over 2 rows -> factor 1/2):
    #   d/dz_i = p_i * (log(p_i/q_i) - KL).
    reverse_kl(student, teacher, torch.tensor([True, True])).backward()
    p = torch.tensor([0.5, 0.25, 0.25])
    log_ratio = torch.tensor([2 * LN2, LN2, -LN3])
    expect = 0.5 * p * (log_ratio - RKL_A)
    assert torch.allclose(student.grad[0], expect, atol=1e-6)
    assert torch.allclose(student.grad[1], torch.zeros(3), atol=1e-7)


def test_response_mask_marks_positions_whose_next_label_is_supervised():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    expect = torch.tensor([[False, True, True, False], [True, False, False, False]])
    assert torch.equal(response_mask(labels), expect)
    assert torch.equal(response_mask(labels.masked_fill(labels == -100, 0), ignore_index=0), expect)


def causal_attention(scores):
    """softmax over keys of [B, H, L, L] scores with a causal (query >= key) mask."""
    length = scores.shape[-1]
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def test_gather_takes_text_rows_and_vision_columns():
    # Sample 0: [BOS, v, v, t, t, t]; sample 1: [sys, sys, v, v, t, t] with one padded text slot.
    attn = causal_attention(torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)))
    vision_pos = torch.tensor([[1, 2], [2, 3]])
    text_pos = torch.tensor([[3, 4, 5], [4, 5, -1]])
    block = gather_text_vision_block(attn, vision_pos, text_pos)
    assert block.shape == (2, 3, 3, 2)
    assert torch.equal(block[0], attn[0, :, 3:6, 1:3])  # lower-left block: query text, key vision
    assert torch.equal(block[1, :, :2], attn[1, :, 4:6, 2:4])
    assert torch.equal(block[1, :, 2], torch.zeros(3, 2))  # padded row
    assert (block[0] > 0).all() and (block[1, :, :2] > 0).all()
    # The released code's orientation (vision queries x text keys) is causally all zero.
    released = gather_text_vision_block(attn, text_pos.clamp(max=5), vision_pos)
    assert torch.equal(released, torch.zeros_like(released))
    with pytest.raises(ValueError):
        gather_text_vision_block(attn, vision_pos, torch.tensor([[3, 4, 6], [4, 5, -1]]))


def test_attention_mse_means_over_exactly_the_valid_entries():
    # B=2, H=2, T=2, Nv=1. Head 0 differences: sample 0 rows (1, 2), sample 1 rows (3, 100);
    # head 1 differences are 0. Sample 1 row 1 is invalid.
    student = torch.zeros(2, 2, 2, 1)
    teacher = torch.zeros(2, 2, 2, 1)
    teacher[0, 0, :, 0] = torch.tensor([1.0, 2.0])
    teacher[1, 0, :, 0] = torch.tensor([3.0, 100.0])
    valid = torch.tensor([[True, True], [True, False]])
    # valid entries: 3 rows x 2 heads x 1 column = 6; squared errors 1 + 4 + 9 (+ zeros).
    assert attention_mse(student, teacher, valid).item() == pytest.approx(14 / 6)
    # Small case with 2 columns: diffs (0.25, 0) on the valid row -> 0.0625 / 2.
    s = torch.tensor([[[[0.5, 0.25], [0.1, 0.2]]]])
    t = torch.tensor([[[[0.25, 0.25], [0.9, 0.7]]]])
    assert attention_mse(s, t, torch.tensor([[True, False]])).item() == pytest.approx(0.03125)
    no_rows = torch.zeros(2, 2, dtype=torch.bool)
    empty = attention_mse(student.requires_grad_(True), teacher, no_rows)
    assert empty.item() == 0.0 and empty.requires_grad


def test_attention_mse_gradients_reach_student_and_adapter_not_in_released_orientation():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 6, 4, generator=gen, requires_grad=True)  # student queries, 2 heads
    k = torch.randn(1, 2, 6, 4, generator=gen)
    student_attn = causal_attention(q @ k.transpose(-1, -2))
    teacher_attn = causal_attention(torch.randn(1, 4, 6, 6, generator=gen))  # 4 teacher heads
    adapter = HeadAdapter(4, 2)
    vision_pos, text_pos = torch.tensor([[1, 2]]), torch.tensor([[3, 4, 5]])
    valid = text_pos >= 0
    s_tv = gather_text_vision_block(student_attn, vision_pos, text_pos)
    t_tv = adapter(gather_text_vision_block(teacher_attn, vision_pos, text_pos))
    attention_mse(s_tv, t_tv, valid).backward()
    assert q.grad.abs().sum() > 1e-4
    assert adapter.weight.grad.abs().sum() > 1e-4 and adapter.bias.grad.abs().sum() > 1e-4
    # Released orientation: rows = vision queries, columns = text keys -> no signal to the student.
    q.grad = None
    student_attn = causal_attention(q @ k.transpose(-1, -2))
    s_bad = gather_text_vision_block(student_attn, text_pos, vision_pos)
    t_bad = adapter(gather_text_vision_block(teacher_attn, text_pos, vision_pos))
    attention_mse(s_bad, t_bad, torch.ones(1, 2, dtype=torch.bool)).backward()
    assert torch.equal(q.grad, torch.zeros_like(q))


def test_focus_topk_uses_valid_text_rows_and_breaks_ties_low_index():
    # B=2, Ht=2, T=3, Nv=4, all values dyadic so sums are exact.
    tv = torch.zeros(2, 2, 3, 4)
    tv[0, 0, 0], tv[0, 1, 0] = torch.tensor([0, .5, .25, .25]), torch.tensor([.25, .25, .25, .25])
    tv[0, 0, 1], tv[0, 1, 1] = torch.tensor([0, .25, .5, 0]), torch.tensor([0, .25, .25, .5])
    tv[0, :, 2] = torch.tensor([1.0, 0, 0, 0])  # invalid row that would make column 0 win
    # sample 0 head-mean rows: [.125,.375,.25,.25] + [0,.25,.375,.25] = [.125,.625,.625,.5]
    tv[1, :, 0] = torch.tensor([0.5, 0.125, 0.25, 0.125])
    tv[1, :, 1:] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # invalid rows favouring column 1
    valid = torch.tensor([[True, True, False], [True, False, False]])
    got = focus_topk(tv, valid, k=3)
    assert got.dtype == torch.long
    assert got.tolist() == [[1, 2, 3], [0, 2, 1]]  # 1 and 2 tie, 1 and 3 tie: lower index first
    assert focus_topk(tv, valid, k=4).shape == (2, 4)
    with pytest.raises(ValueError):
        focus_topk(tv, valid, k=5)


def test_focus_topk_without_valid_rows_is_deterministic():
    # All scores tie at 0; an unstable sort or torch.topk returns arbitrary columns here.
    tv = torch.rand(1, 2, 3, 200)
    assert focus_topk(tv, torch.zeros(1, 3, dtype=torch.bool), k=5).tolist() == [[0, 1, 2, 3, 4]]


def test_vision_token_mse_all_plus_weighted_focus():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [3.0, 3.0]], [[1.0, 1.0], [2.0, 2.0]]])
    # squared errors: sample 0 tokens (0,4), (0,1); sample 1 tokens (1,1), (4,4).
    # all: 15 / 8. focus sample 0 -> token 1 (0,1), sample 1 -> token 0 (1,1): 3 / 4.
    focus = torch.tensor([[1], [0]])
    assert vision_token_mse(student, teacher, focus, 0.0).item() == pytest.approx(15 / 8)
    assert vision_token_mse(student, teacher, focus, 0.1).item() == pytest.approx(15 / 8 + 0.075)
    assert vision_token_mse(student, teacher, focus, 1.0).item() == pytest.approx(15 / 8 + 0.75)
    empty = torch.zeros(2, 0, dtype=torch.long)
    assert vision_token_mse(student, teacher, empty, 1.0).item() == pytest.approx(15 / 8)


def test_vision_token_mse_trains_student_and_adapter():
    gen = torch.Generator().manual_seed(2)
    adapter = VisionAdapter(6, 4)
    student = torch.randn(2, 5, 4, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 5, 6, generator=gen, dtype=torch.float16)
    loss = vision_token_mse(student, adapter(teacher), torch.tensor([[0, 3], [4, 1]]), 0.1)
    assert loss.dtype == torch.float32
    loss.backward()
    assert student.grad.abs().sum() > 0 and adapter.weight.grad.abs().sum() > 0


def test_head_adapter_init_averages_head_groups_and_equals_a_1x1_conv():
    adapter = HeadAdapter(4, 2)
    assert torch.equal(adapter.weight, torch.tensor([[.5, .5, 0, 0], [0, 0, .5, .5]]))
    assert torch.equal(adapter.bias, torch.zeros(2))
    a, b = torch.rand(1, 1, 3, 5), torch.rand(1, 1, 3, 5)
    out = adapter(torch.cat([a, a, b, b], dim=1))
    assert out.shape == (1, 2, 3, 5) and torch.allclose(out, torch.cat([a, b], dim=1))
    # Non-divisible: 3 -> 2 heads weighs the shared middle head by its overlap.
    third = torch.tensor([[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
    assert torch.allclose(HeadAdapter(3, 2).weight, third)
    # Same map as the paper's Conv2d(Ht, Hs, 1) with bias, after training moves the weights.
    with torch.no_grad():
        adapter.weight.normal_()
        adapter.bias.normal_()
    conv = torch.nn.Conv2d(4, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(adapter.weight.view(2, 4, 1, 1))
        conv.bias.copy_(adapter.bias)
    x = torch.rand(2, 4, 3, 5)
    assert torch.allclose(adapter(x), conv(x), atol=1e-6)


def test_vision_adapter_is_linear_over_last_axis():
    adapter = VisionAdapter(6, 4)
    x = torch.randn(2, 5, 6)
    assert adapter(x).shape == (2, 5, 4)
    assert torch.allclose(adapter(x), x @ adapter.weight.T + adapter.bias)
    assert adapter(x.half()).dtype == torch.float32
