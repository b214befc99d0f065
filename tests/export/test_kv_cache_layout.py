"""The exported ExecuTorch decoder hands its KV caches to llama::custom_sdpa as stored: no transpose of the
whole cache per layer and step (before: CustomKVCache returned them transposed and SDPACustom transposed them
back, two XNNPACK copies of every cache at every decode step, about a third of the step at the 1.7B shape)."""

import torch

from alignkd.export.executorch import build_decoder


def _producers(node, seen=None):
    """Ops between `node` and the buffer or custom op it comes from (views and copies followed upwards)."""
    chain = []
    while node.op == "call_function" and "llama" not in str(node.target) and node.args:
        chain.append(str(node.target))
        node = node.args[0]
    return chain


@torch.inference_mode()
def test_sdpa_reads_the_caches_without_transposes(official):
    model, _ = official
    decoder = build_decoder(model, 64)
    dim = model.config.llm.hidden_size
    program = torch.export.export(decoder, (torch.zeros(1, 3, dim), torch.tensor([0])), strict=True)
    sdpa = [n for n in program.graph.nodes if "custom_sdpa" in str(n.target)]
    assert len(sdpa) == model.config.llm.num_hidden_layers
    for node in sdpa:
        for cache in node.args[1:3]:
            chain = _producers(cache)
            assert not any("transpose" in op or "permute" in op for op in chain), chain


@torch.inference_mode()
def test_stored_layout_decoder_matches_eager(official):
    """Prefill then two single-token steps against transformers' LLaMA on the same embeddings."""
    model, _ = official
    decoder = build_decoder(model, 64)
    embeds = torch.randn(1, 7, model.config.llm.hidden_size)
    ref = model.llm(inputs_embeds=embeds).logits[0]
    assert torch.allclose(decoder(embeds[:, :5], torch.tensor([0]))[0], ref[4], atol=1e-4)
    for pos in (5, 6):
        assert torch.allclose(decoder(embeds[:, pos:pos + 1], torch.tensor([pos]))[0], ref[pos], atol=1e-4)
