"""Core ML bundle backend: the three `.mlpackage` parts with the decoder's KV cache as Core ML state.

Prediction exists only on macOS 15+ (coremltools' libcoremlpython); elsewhere construction raises a clear
AlignKDError. The macOS path follows the contract in the manifest but has not been run in this project's CI.

    alignkd generate --model out/tiny_coreml --image photo.png --prompt "What is in the picture?" --json   # macOS 15+
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from alignkd.errors import AlignKDError


def _macos_15_or_later() -> bool:
    if platform.system() != "Darwin":
        return False
    major = platform.mac_ver()[0].split(".")[0]
    return major.isdigit() and int(major) >= 15


class CoreMLBackend:
    def __init__(self, folder: Path, manifest: dict):
        if not _macos_15_or_later():
            raise AlignKDError(f"Core ML prediction needs macOS 15+; bundle {folder} can be inspected here but run it on a Mac (or export --target executorch/onnx)")
        import coremltools as ct

        parts = manifest["parts"]
        load = lambda name: ct.models.MLModel(str(folder / parts[name]["file"]))
        self._vision, self._embed, self._decoder = load("vision_encoder"), load("token_embedding"), load("text_decoder")
        self.max_seq_len = manifest["max_seq_len"]
        self._state = None

    def encode_image(self, pixel_values):
        out = self._vision.predict({"pixel_values": pixel_values.float().numpy()})
        return torch.from_numpy(np.asarray(out["image_tokens"], dtype=np.float32))

    def embed_tokens(self, ids):
        out = self._embed.predict({"input_ids": ids.to(torch.int32).numpy()})
        return torch.from_numpy(np.asarray(out["embeddings"], dtype=np.float32))

    def _run(self, embeds, past: int):
        from alignkd.contract.decoder import causal_mask

        mask = causal_mask(past, embeds.shape[1]).numpy()
        out = self._decoder.predict({"inputs_embeds": embeds.float().numpy(), "causal_mask": mask}, state=self._state)
        return torch.from_numpy(np.asarray(out["logits"], dtype=np.float32))[0, -1]

    def prefill(self, embeds):
        self._state = self._decoder.make_state()
        return self._run(embeds, 0)

    def decode(self, embeds, position: int):
        return self._run(embeds, position)
