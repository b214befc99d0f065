"""Layer-0 capture: the recomputed block equals transformers' eager layer-0 attention, taken after the causal
mask, with text queries as rows and vision keys as columns, for a padded batch of different lengths."""

import copy

import pytest
import torch

from alignkd.distill.attention import PAD, Layer0Capture, block_positions
from alignkd.distill.losses import gather_text_vision_block


@pytest.fixture(scope="module")
def batch(official):
    model, tok = official
    torch.manual_seed(0)
    a = tok("USER: ")[:-1] + [-200] + tok("what colour is it? ASSISTANT: red")[1:]
    b = tok("hi ")[:-1] + [-200] + tok("count?")[1:]
    c = tok("no image here, just text")
    width = max(map(len, (a, b, c)))
    pad = lambda x: x + [0] * (width - len(x))
    ids = torch.tensor([pad(a), pad(b), pad(c)])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in (a, b, c)]).bool()
    images = torch.randn(2, 3, 72, 72)
    return ids, images, mask


@pytest.mark.parametrize("block", ["text_vision", "vision_vision", "text_text", "full"])
def test_capture_equals_eager_layer0(official, batch, block):
    model, _ = official
    ids, images, mask = batch
    eager = copy.deepcopy(model)
    eager.llm.set_attn_implementation("eager")
    with torch.no_grad():
        full = eager(ids, images, mask, output_attentions=True)
        attn0 = full.attentions[0]  # [B, H, L, L]
        with Layer0Capture(model.llm) as cap:
            out = model(ids, images, mask)  # SDPA in every layer
        rows, cols, text, vision = block_positions(out.spliced.image_positions, out.spliced.attention_mask, block)
        got = cap.probs(rows, cols, out.spliced.attention_mask)
    want = gather_text_vision_block(attn0, cols, rows)  # rows are queries, cols keys
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits, full.logits, atol=1e-4, rtol=0)
    if block == "text_vision":
        assert (rows[2] == PAD).all()  # the text-only sample has no text-after-image rows
        assert got[:2].abs().sum() > 0
        # rows are later than columns: the block lies below the diagonal, where the causal mask keeps mass
        assert (rows[:2, :, None] > cols[:2, None, :]).masked_select((rows[:2] >= 0)[:, :, None]).all()
        # the block the released code took (vision queries x text keys) is all zeros after the causal mask
        transposed = gather_text_vision_block(attn0, rows, cols)
        assert transposed[:2].abs().max() == 0


def test_positions_found_from_placeholder(official, batch):
    model, _ = official
    ids, images, mask = batch
    with torch.no_grad():
        out = model(ids, images, mask)
    rows, cols, text, vision = block_positions(out.spliced.image_positions, out.spliced.attention_mask, "text_vision")
    assert vision[0, 0] == (ids[0] == -200).nonzero().item() and vision.shape[1] == 144
    assert text[0, 0] == vision[0, -1] + 1
    n_text_b = int(out.spliced.attention_mask[1].sum()) - int(vision[1, -1]) - 1
    assert int((text[1] >= 0).sum()) == n_text_b  # padding excluded


def test_student_gradient_flows_through_capture(official, batch):
    model, _ = official
    student = copy.deepcopy(model).train()
    ids, images, mask = batch
    with Layer0Capture(student.llm) as cap:
        out = student(ids, images, mask)
    rows, cols, _, _ = block_positions(out.spliced.image_positions, out.spliced.attention_mask, "text_vision")
    cap.probs(rows, cols, out.spliced.attention_mask).pow(2).sum().backward()
    q = student.llm.model.layers[0].self_attn.q_proj.weight.grad
    assert q is not None and q.abs().sum() > 0
    assert student.mm_projector.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.vision_tower.parameters())


def test_capture_comes_from_the_forward_hooks_only(official, batch):
    """The block is made from what q_proj/k_proj produced inside the layer's forward: the projections run once
    (no second call after the forward, which sharded weights would not survive), and the block is the same when
    their weights are gone afterwards, as FSDP and ZeRO-3 free them once the layer has run."""
    model, _ = official
    ids, images, mask = batch
    attn = copy.deepcopy(model).llm.model.layers[0].self_attn
    calls = {"q_proj": 0, "k_proj": 0}
    count = lambda name: (lambda *_: calls.__setitem__(name, calls[name] + 1))
    handles = [getattr(model.llm.model.layers[0].self_attn, n).register_forward_hook(count(n)) for n in calls]
    try:
        with torch.no_grad():
            with Layer0Capture(model.llm) as cap:
                out = model(ids, images, mask)
            assert calls == {"q_proj": 1, "k_proj": 1}
            assert cap.q is not None and cap.k is not None and cap.cos is not None
            rows, cols, _, _ = block_positions(out.spliced.image_positions, out.spliced.attention_mask, "text_vision")
            want = cap.probs(rows, cols, out.spliced.attention_mask)
            assert calls == {"q_proj": 1, "k_proj": 1}  # probs() did not project again
            cap.attn = attn
            for proj in (attn.q_proj, attn.k_proj):  # what a sharded module looks like between forwards
                proj.weight = torch.nn.Parameter(torch.empty(0))
            got = cap.probs(rows, cols, out.spliced.attention_mask)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert want[:2].abs().sum() > 0
    # the hooks are gone after the `with` block: a later forward records nothing
    cap.q = None
    with torch.no_grad():
        model(ids, images, mask)
    assert cap.q is None
