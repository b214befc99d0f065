"""ExecuTorch bundle backend: runs `model.pte` (vision_encoder / token_embedding / text_decoder) through the
ExecuTorch Python runtime, implementing the generation loop's `Backend` protocol.

    alignkd generate --model out/tiny_et --image photo.png --prompt "What is in the picture?" --json
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignkd.errors import AlignKDError


def _register_kernels() -> None:
    """The llama custom ops (custom_sdpa, update_cache) and quantized kernels live in separate libraries that
    register themselves on import; a program using them fails with "Missing operator" without this."""
    try:
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401
    except ImportError as err:
        raise AlignKDError(f"running an ExecuTorch bundle needs the executorch package ({err}); run: pip install 'alignkd[executorch]'") from err


class ExecuTorchBackend:
    """One loaded program; every output is cloned because the runtime reuses its planned output memory."""

    def __init__(self, pte: Path, max_seq_len: int, vocab_size: int):
        _register_kernels()
        from executorch.runtime import Runtime, Verification

        self.max_seq_len = max_seq_len
        self.vocab_size = vocab_size
        program = Runtime.get().load_program(str(pte), verification=Verification.Minimal)
        self._vision = program.load_method("vision_encoder")
        self._embed = program.load_method("token_embedding")
        self._decoder = program.load_method("text_decoder")

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._vision.execute([pixel_values.float().contiguous()])[0].clone()

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self._embed.execute([ids.long().contiguous()])[0].clone()

    def _run(self, embeds: torch.Tensor, position: int) -> torch.Tensor:
        out = self._decoder.execute([embeds.float().contiguous(), torch.tensor([position], dtype=torch.long)])[0]
        # The decoder returns the last position only ([1,V]); reshape guards a [1,S,V] program too.
        return out.reshape(-1, self.vocab_size)[-1].clone()

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        # Writing from position 0 makes earlier cache contents unreachable: attention reads [0, n) only.
        return self._run(embeds, 0)

    def decode(self, embeds: torch.Tensor, position: int) -> torch.Tensor:
        return self._run(embeds, position)
