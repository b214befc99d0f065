"""ONNX bundle backend: `vision_encoder.onnx`, `token_embedding.onnx` and `text_decoder.onnx` (past key values
in, present out) on onnxruntime's CPU provider, implementing the generation loop's `Backend` protocol.

    alignkd generate --model out/tiny_onnx --image photo.png --prompt "What is in the picture?" --json
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alignkd.errors import AlignKDError


class OnnxBackend:
    """Keeps the past key values between calls as numpy arrays (the decoder concatenates, no fixed cache)."""

    def __init__(self, folder: Path, parts: dict, max_seq_len: int, n_layers: int, n_kv_heads: int, head_dim: int,
                 threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise AlignKDError(f"running an ONNX bundle needs onnxruntime ({err}); run: pip install 'alignkd[onnx]'") from err
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        session = lambda name: ort.InferenceSession(str(folder / parts[name]["file"]), opts, providers=["CPUExecutionProvider"])
        self._vision, self._embed, self._decoder = session("vision_encoder"), session("token_embedding"), session("text_decoder")
        self.max_seq_len = max_seq_len
        self._empty = np.zeros((1, n_kv_heads, 0, head_dim), dtype=np.float32)
        self._kv_names = [f"past_key_values.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
        self._past: list[np.ndarray] = []

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self._vision.run(None, {"pixel_values": pixel_values.float().numpy()})[0]
        return torch.from_numpy(out)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._embed.run(None, {"input_ids": ids.long().numpy()})[0])

    def _run(self, embeds: torch.Tensor, past: list[np.ndarray], start: int) -> torch.Tensor:
        n = embeds.shape[1]
        feeds = {
            "inputs_embeds": embeds.float().numpy(),
            "attention_mask": np.ones((1, start + n), dtype=np.int64),
            "position_ids": np.arange(start, start + n, dtype=np.int64)[None],
        }
        feeds.update(zip(self._kv_names, past))
        logits, *present = self._decoder.run(None, feeds)
        self._past = present
        return torch.from_numpy(logits[0, -1].astype(np.float32))

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        return self._run(embeds, [self._empty] * len(self._kv_names), 0)

    def decode(self, embeds: torch.Tensor, position: int) -> torch.Tensor:
        if self._past and self._past[0].shape[2] != position:
            raise AlignKDError(f"decode at position {position} but the cache holds {self._past[0].shape[2]} positions; call prefill first")
        return self._run(embeds, self._past, position)
