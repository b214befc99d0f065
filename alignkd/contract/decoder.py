"""The stateful text decoder's attention-mask input, as ONNX and Core ML bundles take it (`causal_mask`).

Every reader that drives such a decoder (the Python ONNX / Core ML backends, the iOS app) builds the same mask.

    python -m pytest tests/export/test_parts.py -k causal_mask
"""

from __future__ import annotations

import torch


def causal_mask(past: int, seq: int, dtype=torch.float32) -> torch.Tensor:
    """Additive mask [1,1,seq,past+seq]: row i sees positions <= past + i."""
    total = past + seq
    allowed = torch.arange(total)[None, :] <= (past + torch.arange(seq))[:, None]
    return torch.where(allowed, 0.0, float("-inf")).to(dtype)[None, None]
