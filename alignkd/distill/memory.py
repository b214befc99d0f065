"""Measured peak memory of one real training step, to hold the memory plan (`plan.py`) to account.

On CUDA the allocator's own peak counter is read; on CPU, where torch keeps no such counter, `PeakMemory`
(a TorchDispatchMode) counts every storage an op allocates and frees it when the storage dies, which is what
the CUDA counter reports. The step is the recipe's: the frozen teacher's forward with the layer-0 capture
(no autocast, in `teacher_dtype`), the student module under autocast when mixed precision is on, backward and
AdamW's step; the batch is one image and `seq` embedded tokens, every text token supervised (the plan's
worst case).

    python -m pytest tests/distill/test_plan.py -q
    python benchmarks/distill_real_shape.py --tiny
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakMemory(TorchDispatchMode):
    """Bytes of the storages allocated inside the `with` block and still alive (`current`), and their peak."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._live: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._live.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # an output on an input's storage is a view or an in-place result, not an allocation
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self._live or key in inputs:
                continue
            self._live.add(key)
            self.current += storage.nbytes()
            weakref.finalize(storage, self._free, key, storage.nbytes())
        self.peak = max(self.peak, self.current)
        return out


def synthetic_batch(vocab: int, image_size: int, seq: int, image_tokens: int, batch: int = 1, seed: int = 0) -> dict:
    """`batch` rows of `seq` embedded tokens: BOS, the image, then text, all of it supervised."""
    text = seq - image_tokens  # BOS + the text after the image
    if text < 3:
        raise ValueError(f"seq {seq} leaves no text after {image_tokens} image tokens")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, text + 1), generator=g)
    ids[:, 0], ids[:, 1] = 1, -200
    labels = ids.clone()
    labels[:, :2] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
            "images": torch.randn(batch, 3, image_size, image_size, generator=g)}


def build_step(student_cfg, teacher_cfg, loss, *, teacher_dtype=torch.float32, checkpointing=False, device="cpu",
               seed: int = 0):
    """(module, teacher, optimizer) as the recipe sets them up, random weights."""
    from alignkd.distill.objective import AlignKDModule
    from alignkd.models.mobilevlm import MobileVLM

    torch.manual_seed(seed)
    with torch.device(device):
        student = MobileVLM(student_cfg)
        teacher = None
        if teacher_cfg is not None:  # built in its dtype: a 7B never exists in fp32
            default = torch.get_default_dtype()
            torch.set_default_dtype(teacher_dtype)
            try:
                teacher = MobileVLM(teacher_cfg).requires_grad_(False).eval()
            finally:
                torch.set_default_dtype(default)
        if checkpointing:
            student.llm.activation_checkpointing_enable()
        module = AlignKDModule(student.train(), loss, teacher.config.num_heads if teacher else None,
                               teacher.config.hidden_size if teacher else None)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    return module, teacher, optimizer


def train_step(module, teacher, optimizer, batch: dict, loss, mixed: bool, set_to_none: bool = True) -> None:
    from alignkd.distill.objective import run_teacher

    t_out = run_teacher(teacher, batch, loss) if teacher is not None else None
    device = next(module.parameters()).device.type
    with torch.autocast(device, torch.bfloat16) if mixed else nullcontext():
        terms = module(batch, t_out)
    terms["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=set_to_none)


def measure_peak(module, teacher, optimizer, batch: dict, loss, mixed: bool) -> int:
    """Peak bytes above what was allocated before the step: weights, AdamW state and the gradients (kept, zeroed,
    from a first step) are not counted, as the plan counts them apart."""
    train_step(module, teacher, optimizer, batch, loss, mixed, set_to_none=False)
    if batch["input_ids"].is_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(module, teacher, optimizer, batch, loss, mixed, set_to_none=False)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with PeakMemory() as mem:
        train_step(module, teacher, optimizer, batch, loss, mixed, set_to_none=False)
    return mem.peak
