"""MobileVLM V2: CLIP ViT vision tower + LDPv2 projector + LLaMA decoder, on transformers' own blocks.

Matches the official `MobileLlamaForCausalLM` (Meituan-AutoML/MobileVLM, V2 code) number for number: the
vision feature is CLIP hidden state `select_layer` (-2) with CLS dropped, the projector is LDPv2 (exact-GELU
MLP, 12x12 adaptive average pool, depthwise-conv PEG with residual), and each image placeholder (-200) in
`input_ids` is replaced by the 144 image tokens, with labels -100 there. Checked against the official outputs
in `tests/models/test_parity.py`. Checkpoint reading and writing live in `checkpoint.py`; size presets at the
bottom of this file.

    model = MobileVLM(mobilevlm_tiny())
    out = model(input_ids=ids_with_minus_200, images=pixels, labels=labels)   # out.logits, out.loss
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from alignkd.data.image import ImageConfig
from alignkd.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from alignkd.errors import AlignKDError

CLIP_L_336 = "openai/clip-vit-large-patch14-336"
POOLED_GRID = 12  # the official TokenDownLayer pools to a fixed 12x12 grid whatever the CLIP grid is
POOLED_GRID_KEY = "alignkd_pooled_grid"  # config.json key, written only when a (toy) model pools to another grid


@dataclass
class MobileVLMConfig:
    """Everything needed to build the model; `extra` keeps unknown config.json keys for a faithful save."""

    llm: LlamaConfig
    vision: CLIPVisionConfig
    image: ImageConfig = field(default_factory=ImageConfig)
    vision_tower_name: str = CLIP_L_336
    projector_type: str = "ldpnetv2"
    select_layer: int = -2
    select_feature: str = "patch"  # "patch" drops CLS; "cls_patch" keeps it
    context_length: int = 2048
    pooled_grid: int = POOLED_GRID  # LDPv2's output grid: 12 in every official checkpoint; the toy presets use 3
    extra: dict = field(default_factory=dict)

    @property
    def num_image_tokens(self) -> int:
        return self.pooled_grid * self.pooled_grid

    @property
    def hidden_size(self) -> int:
        return self.llm.hidden_size

    @property
    def num_heads(self) -> int:
        return self.llm.num_attention_heads


class LDPv2Projector(nn.Module):
    """LDPv2 (`ldpnetv2`): per-token MLP -> 2D average pool to 12x12 -> PEG (x + depthwise 3x3 conv(x)).

    `grid` is the pooled side: 12 as in the official code; only the synthetic presets change it.
    """

    def __init__(self, vision_dim: int, llm_dim: int, grid: int = POOLED_GRID):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))
        self.pool = nn.AdaptiveAvgPool2d((grid, grid))
        self.peg = nn.Conv2d(llm_dim, llm_dim, 3, 1, 1, bias=True, groups=llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, Cv] -> [B, grid*grid, D]
        x = self.mlp(x)
        b, n, d = x.shape
        side = int(n**0.5)
        if side * side != n:
            raise ValueError(f"LDPv2 needs a square patch grid, got {n} tokens")
        x = self.pool(x.transpose(1, 2).reshape(b, d, side, side))
        x = x + self.peg(x)
        return x.flatten(2).transpose(1, 2)


@dataclass
class SplicedInputs:
    """The decoder's input after the image tokens replace the placeholders (right-padded batch)."""

    inputs_embeds: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor  # [B, L] bool
    labels: torch.Tensor | None  # [B, L] with -100 on image and padding positions
    image_features: torch.Tensor | None  # [n_images, 144, D] projector output
    image_positions: list[torch.Tensor]  # per sample, LongTensor of its image-token positions (may be empty)


@dataclass
class MobileVLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None
    spliced: SplicedInputs
    past_key_values: object = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


class MobileVLM(nn.Module):
    def __init__(self, config: MobileVLMConfig):
        super().__init__()
        if config.projector_type != "ldpnetv2":
            raise AlignKDError(f"projector {config.projector_type!r} is not supported; alignkd supports MobileVLM V2's 'ldpnetv2'")
        self.config = config
        self.vision_tower = CLIPVisionModel(config.vision)
        self.mm_projector = LDPv2Projector(config.vision.hidden_size, config.llm.hidden_size, config.pooled_grid)
        self.llm = LlamaForCausalLM(config.llm)
        self.vision_tower.requires_grad_(False)  # frozen in both official training stages

    @property
    def device(self) -> torch.device:
        return self.llm.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.lm_head.weight.dtype

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP hidden state `select_layer` ([N, 576, Cv] with CLS dropped), cast back to the images' dtype."""
        trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        tower_dtype = self.vision_tower.embeddings.patch_embedding.weight.dtype
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            out = self.vision_tower(pixel_values.to(tower_dtype), output_hidden_states=True)
            feats = out.hidden_states[self.config.select_layer]
        if self.config.select_feature == "patch":
            feats = feats[:, 1:]
        return feats.to(pixel_values.dtype)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixel values [N, 3, H, W] -> image tokens [N, 144, D] as they enter the decoder."""
        feats = self.vision_features(pixel_values)
        return self.mm_projector(feats.to(self.mm_projector.mlp[0].weight.dtype))

    def splice(self, input_ids, images=None, attention_mask=None, labels=None) -> SplicedInputs:
        """Replace every -200 in `input_ids` [B, T] by the next image's 144 tokens.

        `images` [n_images, 3, H, W] holds one row per placeholder, in reading order (samples without a
        placeholder take none). Rows are right-padded with zero embeddings and a False mask to the longest
        spliced row, as the official code does; positions of the original sequence keep their mask value.
        """
        n_placeholders = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        n_images = 0 if images is None else images.shape[0]
        if n_placeholders != n_images:
            raise AlignKDError(
                f"the batch has {n_placeholders} image placeholders (-200) but {n_images} images; "
                "pass one image per <image> in the prompt"
            )
        feats = self.encode_images(images) if n_images else None
        embed = self.llm.get_input_embeddings()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        rows, masks, row_labels, positions = [], [], [], []
        next_image = 0
        for b in range(input_ids.shape[0]):
            ids, mask = input_ids[b], attention_mask[b].bool()
            lab = labels[b] if labels is not None else None
            where = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist()
            parts, mparts, lparts, pos = [], [], [], []
            start, length = 0, 0
            for p in where + [ids.shape[0]]:
                parts.append(embed(ids[start:p]))
                mparts.append(mask[start:p])
                if lab is not None:
                    lparts.append(lab[start:p])
                length += p - start
                if p < ids.shape[0]:
                    img = feats[next_image].to(parts[-1].dtype)
                    next_image += 1
                    parts.append(img)
                    mparts.append(mask[p].expand(img.shape[0]))
                    if lab is not None:
                        lparts.append(torch.full((img.shape[0],), IGNORE_INDEX, dtype=lab.dtype, device=lab.device))
                    pos.append(torch.arange(length, length + img.shape[0], device=ids.device))
                    length += img.shape[0]
                start = p + 1
            rows.append(torch.cat(parts))
            masks.append(torch.cat(mparts))
            if lab is not None:
                row_labels.append(torch.cat(lparts))
            positions.append(torch.cat(pos) if pos else torch.zeros(0, dtype=torch.long, device=ids.device))
        width = max(r.shape[0] for r in rows)
        pad = lambda t, value: torch.cat([t, t.new_full((width - t.shape[0], *t.shape[1:]), value)])
        return SplicedInputs(
            inputs_embeds=torch.stack([pad(r, 0) for r in rows]),
            attention_mask=torch.stack([pad(m, False) for m in masks]),
            labels=torch.stack([pad(l, IGNORE_INDEX) for l in row_labels]) if labels is not None else None,
            image_features=feats,
            image_positions=positions,
        )

    def forward(self, input_ids, images=None, attention_mask=None, labels=None, **llm_kwargs) -> MobileVLMOutput:
        spliced = self.splice(input_ids, images, attention_mask, labels)
        mask = spliced.attention_mask
        # An all-ones mask is dropped so that SDPA can take its fast causal path; padding needs the mask.
        out = self.llm(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=None if bool(mask.all()) else mask.long(),
            labels=spliced.labels,
            **llm_kwargs,
        )
        return MobileVLMOutput(
            logits=out.logits,
            loss=out.loss,
            spliced=spliced,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


def num_parameters(config: MobileVLMConfig) -> int:
    """Parameter count of the full checkpoint, computed on the meta device (no weights allocated)."""
    with torch.device("meta"):
        model = MobileVLM(config)
    return sum(p.numel() for p in model.parameters())


# ---- presets: numbers only -------------------------------------------------------------------------------


def clip_vit_large_336() -> CLIPVisionConfig:
    """`openai/clip-vit-large-patch14-336`, vision part (the tower of every MobileVLM V2 size)."""
    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    )


def _llama(vocab, hidden, layers, heads, ffn, eps, max_pos=2048) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, rms_norm_eps=eps, max_position_embeddings=max_pos,
        rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu",
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def mobilevlm_v2_1_7b() -> MobileVLMConfig:
    """MobileVLM V2 1.7B: MobileLLaMA-1.4B-Chat (24 layers, 2048 wide, 16 heads) + CLIP ViT-L/14-336."""
    return MobileVLMConfig(llm=_llama(32000, 2048, 24, 16, 5632, 1e-6), vision=clip_vit_large_336())


def mobilevlm_v2_3b() -> MobileVLMConfig:
    """MobileVLM V2 3B: MobileLLaMA-2.7B-Chat (32 layers, 2560 wide, 32 heads of 80)."""
    return MobileVLMConfig(llm=_llama(32000, 2560, 32, 32, 6912, 1e-6), vision=clip_vit_large_336())


def mobilevlm_v2_7b() -> MobileVLMConfig:
    """MobileVLM V2 7B: Vicuna-7B v1.5 (32 layers, 4096 wide, 32 heads); 4096 positions, trained at 2048."""
    return MobileVLMConfig(llm=_llama(32000, 4096, 32, 32, 11008, 1e-5, max_pos=4096), vision=clip_vit_large_336())


def tiny_clip(image_size=72, patch=3, hidden=32, layers=3, heads=4) -> CLIPVisionConfig:
    """A 24x24-patch CLIP (so the 12x12 pool is the real 2x2 pool) small enough for tests."""
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
        image_size=image_size, patch_size=patch, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=hidden,
    )


def mobilevlm_tiny(vocab=512, hidden=64, layers=2, heads=4, ffn=128) -> MobileVLMConfig:
    """The shape of the official tiny fixture: a 2-layer, 64-wide LLaMA on the tiny CLIP."""
    return MobileVLMConfig(
        llm=_llama(vocab, hidden, layers, heads, ffn, 1e-6),
        vision=tiny_clip(),
        image=ImageConfig(size=72),
        vision_tower_name="openai/clip-vit-tiny",
    )


def synth_clip() -> CLIPVisionConfig:
    """The vision tower shared by the synthetic world's teacher and student: 96 px in 8 px patches (12x12 grid).

    8 px patches, not 4: the tower is pre-trained inside the quickstart's budget, and with 8 px patches each
    step costs a sixth as much for the same shape accuracy per step (`benchmarks/toy_clip_patch.py`, numbers
    in docs/quickstart.md). Like the real CLIP, the tower is pre-trained before the teacher and then frozen
    (`alignkd.distill.vision_pretrain`).
    """
    return tiny_clip(image_size=96, patch=8, hidden=64, layers=3, heads=4)


# The toy presets' LDPv2 pools the toy CLIP's 12x12 grid to 6x6 (a 2x2 pool, as the real 24x24 -> 12x12):
# 36 image tokens, four per cell of the synthetic scenes' 3x3 layout. More tokens than the focus term's K
# (the paper's 16 of 144 scaled to 4 of 36), so its text-driven selection is a real choice.
# The official pool stays covered by the official tiny fixture (`mobilevlm_tiny`) and the real presets.
SYNTH_POOLED_GRID = 6
SYNTH_FOCUS_K = 4  # the paper's K = 16 of 144 image tokens, scaled to 36


def synth_teacher(vocab=1024) -> MobileVLMConfig:
    """Toy teacher for the synthetic world: 4 layers, 256 wide, 8 heads (the 7B's role)."""
    return MobileVLMConfig(llm=_llama(vocab, 256, 4, 8, 512, 1e-5), vision=synth_clip(), image=ImageConfig(size=96),
                           vision_tower_name="synthetic/clip-96", pooled_grid=SYNTH_POOLED_GRID)


def synth_student(vocab=1024) -> MobileVLMConfig:
    """Toy student for the synthetic world: 2 layers, 128 wide, 4 heads (the 1.7B's role: narrower, fewer heads)."""
    return MobileVLMConfig(llm=_llama(vocab, 128, 2, 4, 256, 1e-6), vision=synth_clip(), image=ImageConfig(size=96),
                           vision_tower_name="synthetic/clip-96", pooled_grid=SYNTH_POOLED_GRID)


PRESETS = {
    "mobilevlm_v2_1_7b": mobilevlm_v2_1_7b,
    "mobilevlm_v2_3b": mobilevlm_v2_3b,
    "mobilevlm_v2_7b": mobilevlm_v2_7b,
    "mobilevlm_tiny": mobilevlm_tiny,
    "synth_teacher": synth_teacher,
    "synth_student": synth_student,
}


def get_preset(name: str) -> MobileVLMConfig:
    try:
        builder = PRESETS[name]
    except KeyError:
        raise AlignKDError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
    return builder()
