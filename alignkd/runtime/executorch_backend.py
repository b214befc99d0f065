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


def _checked_max_seq_len(program, pte: Path, manifest_len: int) -> int:
    """The manifest's max_seq_len, refused when it exceeds the cache the program was exported with."""
    if "get_max_seq_len" not in program.method_names:
        return manifest_len
    exported = int(program.load_method("get_max_seq_len").execute([])[0])
    if manifest_len > exported:
        raise AlignKDError(f"the bundle manifest says max_seq_len {manifest_len} but {pte} was exported with "
                           f"{exported}; the manifest was edited or belongs to another export, re-export the bundle")
    return manifest_len


class ExecuTorchBackend:
    """One loaded program; every output is cloned because the runtime reuses its planned output memory."""

    def __init__(self, pte: Path, max_seq_len: int, vocab_size: int, etdump: bool = False):
        _register_kernels()
        from executorch.runtime import Runtime, Verification

        self.vocab_size = vocab_size
        # etdump: record per-operator times (benchmarks/etdump_ops.py); write them with `write_etdump`
        program = Runtime.get().load_program(str(pte), verification=Verification.Minimal, enable_etdump=etdump)
        self._program = program
        self.max_seq_len = _checked_max_seq_len(program, pte, max_seq_len)
        self._vision = program.load_method("vision_encoder")
        self._embed = program.load_method("token_embedding")
        self._decoder = program.load_method("text_decoder")

    def write_etdump(self, path: Path) -> None:
        self._program.write_etdump_result_to_file(str(path), str(Path(path).with_suffix(".debug.bin")))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._vision.execute([pixel_values.float().contiguous()])[0].clone()

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        self._check_length(ids.shape[1])
        return self._embed.execute([ids.long().contiguous()])[0].clone()

    def _check_length(self, n: int, position: int = 0) -> None:
        # Past the exported bounds (a chunk of at most max_seq_len - 1, a cache of max_seq_len) the runtime only
        # says "set_inputs ... error 0x10" (InvalidArgument).
        if n > self.max_seq_len - 1 or position + n > self.max_seq_len:
            raise AlignKDError(f"the prompt needs {position + n} positions but this ExecuTorch bundle holds at most "
                               f"{self.max_seq_len - 1} (max_seq_len {self.max_seq_len}); shorten the prompt or re-export "
                               "with a larger --max-seq-len")

    def _run(self, embeds: torch.Tensor, position: int) -> torch.Tensor:
        self._check_length(embeds.shape[1], position)
        out = self._decoder.execute([embeds.float().contiguous(), torch.tensor([position], dtype=torch.long)])[0]
        # The decoder returns the last position only ([1,V]); reshape guards a [1,S,V] program too.
        return out.reshape(-1, self.vocab_size)[-1].clone()

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        # Writing from position 0 makes earlier cache contents unreachable: attention reads [0, n) only.
        return self._run(embeds, 0)

    def decode(self, embeds: torch.Tensor, position: int) -> torch.Tensor:
        return self._run(embeds, position)
