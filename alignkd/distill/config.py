"""The training configuration: one dataclass tree for `alignkd distill` (Align-KD) and `alignkd train` (CE only).

Defaults are the paper's (Feng et al. 2025, §4.1): layer 0, K = 16, focus weight 0.1, every other term
weight 1, reverse KL on response tokens at temperature 1, text rows = every non-padding token after the
image. Each knob the paper's ablations turn (Tables 3 and 4) is a field here. Shipped presets live in
`alignkd/configs/`; `tests/distill/test_config.py` loads every one.

    alignkd distill -c alignkd/configs/synth_distill.yaml max_steps=50 loss.weights.kd=0
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from alignkd.errors import AlignKDError


class Divergence(str, enum.Enum):
    reverse = "reverse"  # the paper's RKLD (Eq. 6)
    forward = "forward"  # what the released code computes (up to the teacher entropy)


class KDMask(str, enum.Enum):
    response = "response"  # logit t counts when label t+1 is supervised (MiniLLM convention)
    all = "all"  # every non-padding position (the released code)


class AttnBlock(str, enum.Enum):
    text_vision = "text_vision"  # A_{1,t-v}: text queries x vision keys (the paper's default)
    vision_vision = "vision_vision"
    text_text = "text_text"
    full = "full"  # every non-padding query x key
    # vision queries x text keys: the released code's block. Every such key follows its query, so the causal mask
    # has zeroed it in both models and the term is a no-op (spec §1.2); kept to reproduce that behaviour.
    vision_text = "vision_text"


class Precision(str, enum.Enum):
    no = "no"
    bf16 = "bf16"
    fp16 = "fp16"


@dataclass
class ModelSpec:
    """A model: an official-format checkpoint folder, or a preset built randomly around a tokenizer folder."""

    path: str | None = None
    preset: str | None = None
    tokenizer: str | None = None  # with `preset`: the tokenizer folder (vocab size is taken from it)
    vision_tower_from: str | None = None  # copy CLIP weights from this checkpoint (e.g. the teacher's)
    dtype: str = "float32"

    def __post_init__(self):
        if (self.path is None) == (self.preset is None):
            raise AlignKDError("a model needs exactly one of `path` (checkpoint folder) or `preset` (+ `tokenizer`)")
        if self.preset is not None and self.tokenizer is None:
            raise AlignKDError(f"model preset {self.preset!r} needs `tokenizer`: a folder with tokenizer.model")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise AlignKDError(f"model dtype {self.dtype!r} must be float32, bfloat16 or float16")


@dataclass
class DataConfig:
    train: str = ""  # LLaVA-format .json or .jsonl
    image_root: str | None = None  # default: the data file's folder
    template: str = "v1"  # "v1" (fine-tuning) or "plain" (pre-training)
    max_length: str = "long"  # "short" (512), "long" (2048) or a number: max embedded tokens
    strict: bool = False  # stop at the first bad record instead of skipping and counting
    num_workers: int = 0


@dataclass
class LossWeights:
    ce: float = 1.0
    kd: float = 1.0  # logit distillation
    attn: float = 1.0  # first-layer attention MSE (Eq. 1)
    vision_all: float = 1.0  # L_V-all
    vision_focus: float = 0.1  # lambda * L_V-focus, lambda = 0.1 (the released code uses 1.0)


@dataclass
class AttnTerm:
    """One attention-distillation term: the (query x key) block of one decoder layer (negative counts from the end)."""

    layer: int = 0
    block: AttnBlock = AttnBlock.text_vision

    def __post_init__(self):
        try:
            self.block = AttnBlock(self.block)
        except ValueError:
            raise AlignKDError(f"loss.attn_extra block {self.block!r} is not one of {', '.join(m.value for m in AttnBlock)}") from None
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise AlignKDError(f"loss.attn_extra layer {self.layer!r} must be an integer (0 = first layer, -1 = last)")


@dataclass
class LossConfig:
    weights: LossWeights = field(default_factory=LossWeights)
    divergence: Divergence = Divergence.reverse
    kd_mask: KDMask = KDMask.response
    temperature: float = 1.0
    attn_layer: int = 0
    attn_block: AttnBlock = AttnBlock.text_vision
    focus_k: int = 16
    # Further attention terms beside (attn_layer, attn_block), each with the same weight: Table 4's
    # "A1,t-v + A_last,all" is attn_extra: [{layer: -1, block: full}].
    attn_extra: list[AttnTerm] = field(default_factory=list)
    # A departure from the paper, off by default: divide each attention term's MSE by the mean square of its
    # (head-mapped) teacher block, so it is O(1) instead of ~1e-7 (probabilities ~1/L) and not nearly inert.
    attn_normalise: bool = False

    def attn_terms(self) -> list[AttnTerm]:
        """Every attention term, the paper's (attn_layer, attn_block) first."""
        return [AttnTerm(self.attn_layer, self.attn_block), *self.attn_extra]

    def check_layers(self, n_layers: int, who: str) -> None:
        """Refuse a term or focus layer that `who` (a model with n_layers decoder layers) does not have."""
        for term in self.attn_terms():
            if not -n_layers <= term.layer < n_layers:
                raise AlignKDError(f"loss attention term on layer {term.layer} ({term.block.value}): the {who} has "
                                   f"{n_layers} decoder layers, so use a layer in {-n_layers}..{n_layers - 1} (-1 = last)")

    def __post_init__(self):
        self.attn_extra = [t if isinstance(t, AttnTerm) else AttnTerm(**t) for t in self.attn_extra]
        seen = [(t.layer, t.block) for t in self.attn_terms()]
        if len(set(seen)) != len(seen):
            raise AlignKDError(f"loss.attn_extra repeats an attention term {[(l, b.value) for l, b in seen]}; list each (layer, block) once")
        # accept plain strings from Python callers too, and fail with the valid choices
        for name, enum_cls in (("divergence", Divergence), ("kd_mask", KDMask), ("attn_block", AttnBlock)):
            try:
                setattr(self, name, enum_cls(getattr(self, name)))
            except ValueError:
                raise AlignKDError(f"loss.{name} {getattr(self, name)!r} is not one of {', '.join(m.value for m in enum_cls)}") from None
        if self.temperature <= 0:
            raise AlignKDError(f"loss.temperature must be > 0, got {self.temperature}")
        if self.focus_k < 0:
            raise AlignKDError(f"loss.focus_k must be >= 0, got {self.focus_k}")
        for name in ("ce", "kd", "attn", "vision_all", "vision_focus"):
            if getattr(self.weights, name) < 0:
                raise AlignKDError(f"loss.weights.{name} must be >= 0 (0 switches the term off)")


@dataclass
class OptimConfig:
    lr: float = 4e-5  # the LLM (the paper's fine-tuning stage: 4e-5 for everything)
    projector_lr: float | None = None  # the paper's pre-training stage: 1e-3
    adapter_lr: float | None = None  # the KD adapters; default: projector_lr, else lr
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0

    def __post_init__(self):
        # `not x >= 0` also refuses NaN
        for name in ("lr", "projector_lr", "adapter_lr", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise AlignKDError(f"optim.{name} must be >= 0, got {value}")
        if not 0 <= self.warmup_ratio <= 1:
            raise AlignKDError(f"optim.warmup_ratio is the fraction of steps spent warming up, so it must be between 0 and 1; got {self.warmup_ratio}")
        if not self.max_grad_norm > 0:
            raise AlignKDError(f"optim.max_grad_norm must be > 0, got {self.max_grad_norm}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise AlignKDError(f"optim.betas must be two numbers in [0, 1) (AdamW's beta1, beta2), e.g. [0.9, 0.999]; got {list(betas)}")


@dataclass
class TrainConfig:
    student: ModelSpec
    teacher: ModelSpec | None = None  # None: plain supervised fine-tuning (`alignkd train`)
    adapters_from: str | None = None  # adapters.safetensors of an earlier stage (stage 2 continues stage 1's)
    teacher_cache: str | None = None  # `alignkd cache-teacher` output: train from it, the teacher is never loaded
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output_dir: str = "runs/alignkd"
    batch_size: int = 1  # per process
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    mixed_precision: Precision = Precision.no
    teacher_dtype: str = "float32"
    gradient_checkpointing: bool = False
    freeze_vision_tower: bool = True
    seed: int = 0
    log_every: int = 1
    save_every: int | None = None  # optimizer steps between resumable checkpoints (None: only at the end)
    keep_checkpoints: int = 2
    tensorboard: bool = True

    def __post_init__(self):
        self.mixed_precision = Precision(self.mixed_precision)
        if self.keep_checkpoints < 1:
            raise AlignKDError("keep_checkpoints must be >= 1")
        if not self.data.train:
            raise AlignKDError("data.train is required: the LLaVA-format training file")
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise AlignKDError("batch_size, grad_accum and epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise AlignKDError("max_steps must be >= 1")
        if self.save_every is not None and self.save_every < 1:
            raise AlignKDError(f"save_every must be >= 1 (optimizer steps between checkpoints), or null to save only the final student; got {self.save_every}")
        if self.log_every < 1:
            raise AlignKDError(f"log_every must be >= 1 (optimizer steps between logged values); got {self.log_every}")
        if self.data.num_workers < 0:
            raise AlignKDError(f"data.num_workers must be >= 0; got {self.data.num_workers}")
        if self.adapters_from is not None and self.teacher is None:
            raise AlignKDError(f"adapters_from {self.adapters_from} needs a teacher: the KD adapters map the teacher's attention and "
                               "features; set adapters_from=null for CE-only training")
        if self.teacher_dtype not in ("float32", "bfloat16", "float16"):
            raise AlignKDError(f"teacher_dtype {self.teacher_dtype!r} must be float32, bfloat16 or float16")

    @property
    def distill(self) -> bool:
        return self.teacher is not None or self.teacher_cache is not None
