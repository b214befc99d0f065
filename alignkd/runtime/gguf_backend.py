"""GGUF bundle backend: llama.cpp through llama-cpp-python, implementing the generation loop's `Backend` protocol.

- Image: llama.cpp's own CLIP + LDPv2 graph (mtmd: `mtmd_tokenize_from_parts` + `mtmd_encode_chunk` on the
  projector GGUF). The loop hands over our preprocessed pixels; they are turned back into the exact uint8
  square image they came from (the official preprocessing resizes on uint8), which mtmd takes unchanged at
  the model's image size and normalises with the mean/std stored in the projector. `encode_pil` runs
  llama.cpp's own preprocessing instead (its pad/resize differs from the official one: see docs/export.md).
  A bundle exported with `--vision-runtime pytorch` has no projector GGUF: its image tokens come from the
  checkpoint's own CLIP tower and LDPv2 projector (`MobileVLM.encode_images`, weights from
  `vision_encoder.safetensors`, config from the manifest) in eager PyTorch (`load_vision_encoder`); the loaded
  model's kind is then `gguf+pytorch-vision`.
- Text: embeddings in, through `llama_decode` with `llama_batch.embd` (the loop splices image tokens into the
  prompt embeddings, as for every backend); token embeddings are rows of the GGUF's `token_embd.weight`,
  dequantised on demand by the `gguf` package (no copy of the table is kept).
- f32 bundles run with an f32 KV cache and without flash attention, so they reproduce the eager tokens;
  other bundles use llama.cpp's defaults (f16 KV cache), as its own tools do.

    alignkd generate --model out/tiny_gguf --image photo.png --prompt "What is in the picture?" --json
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import torch

from alignkd.errors import AlignKDError

GGML_TYPE_F32 = 0
PROJECTOR_TYPE = "ldpv2"
VISION_PREFIXES = ("vision_tower.", "mm_projector.")  # MobileVLM's modules in vision_encoder.safetensors
PYTORCH_VISION_KIND = "gguf+pytorch-vision"  # LoadedModel.kind of a bundle whose image tokens are PyTorch's
PYTORCH_VISION_NOTE = ("this GGUF bundle's image tokens come from its PyTorch vision encoder (vision_encoder.safetensors), "
                       "not llama.cpp's mtmd; only the language model runs in llama.cpp")


def _import():
    try:
        import gguf
        import llama_cpp
        from llama_cpp import mtmd_cpp
    except ImportError as err:
        raise AlignKDError(f"running a GGUF bundle needs llama-cpp-python and gguf ({err}); run: pip install 'alignkd[gguf]'") from err
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log callback prints llama.cpp's INFO lines otherwise
    _quiet_mtmd(llama_cpp, mtmd_cpp)
    return gguf, llama_cpp, mtmd_cpp


def _quiet_mtmd(llama_cpp, mtmd_cpp) -> None:
    """Route mtmd/clip's log (a dozen lines per image on stderr) through llama-cpp-python's callback, which
    honours the logger level; the binding has no wrapper for mtmd_log_set, so it is declared here."""
    from llama_cpp import _logger

    lib = getattr(mtmd_cpp, "_libmtmd", None)
    if lib is None or not hasattr(lib, "mtmd_log_set"):
        return
    lib.mtmd_log_set.argtypes = [llama_cpp.llama_log_callback, ctypes.c_void_p]
    lib.mtmd_log_set.restype = None
    lib.mtmd_log_set(_logger.llama_log_callback, None)


def projector_type(path: Path) -> str | None:
    """`clip.projector_type` of a projector GGUF (None when absent or the file is not GGUF)."""
    import gguf

    try:
        field = gguf.GGUFReader(str(path)).get_field("clip.projector_type")
    except (ValueError, OSError):
        return None
    return None if field is None else str(field.contents())


def load_vision_encoder(path: Path, manifest: dict, where: Path):
    """`MobileVLM.encode_images` of a model built from the manifest's config on the meta device, its CLIP tower and
    projector given the weights of `path` (official key names, safetensors); the language model stays on meta."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from alignkd.data.image import ImageConfig
    from alignkd.models.checkpoint import config_from_manifest, from_official_key
    from alignkd.models.mobilevlm import MobileVLM

    image = manifest["image"]
    config = config_from_manifest(manifest["model"], ImageConfig(size=image["size"]), where)
    with torch.device("meta"):
        model = MobileVLM(config)
    try:
        state = {from_official_key(k): v for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError) as err:
        raise AlignKDError(f"cannot read the vision encoder {path} ({err}); re-export the bundle") from None
    expected = {k for k in model.state_dict() if k.startswith(VISION_PREFIXES)}
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)
        raise AlignKDError(f"{path} does not hold the vision encoder {where} describes ({len(odd)} weights missing or "
                           f"unexpected, such as {odd[0]!r}); re-export the bundle")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:  # a shape that differs from the config's
        raise AlignKDError(f"{path} does not hold the vision encoder {where} describes "
                           f"({str(err).splitlines()[-1].strip()}); re-export the bundle") from None
    emb = model.vision_tower.embeddings  # a non-persistent buffer: not in the file, computed as checkpoint loading does
    emb.register_buffer("position_ids", torch.arange(emb.num_positions).expand((1, -1)), persistent=False)
    return model.eval().encode_images


class GGUFBackend:
    """One llama.cpp model + context (one sequence) and one mtmd context on the projector, or, with `vision`
    (a PyTorch module: pixel values -> image tokens), no projector: llama.cpp runs the language model only."""

    def __init__(self, model_path: Path, projector_path: Path | None, max_seq_len: int, *, exact: bool, image_size: int,
                 mean, std, rescale_factor: float, threads: int | None = None, vision=None):
        gguf, self._llama, self._mtmd = _import()
        self._vision = vision
        if vision is None:
            found = projector_type(projector_path)
            if found != PROJECTOR_TYPE:
                raise AlignKDError(f"{projector_path} is not a MobileVLM V2 projector (clip.projector_type {found!r}, expected "
                                   f"{PROJECTOR_TYPE!r}); re-export the bundle with alignkd export --target gguf")
        self.max_seq_len = max_seq_len
        # torch's thread count (what `alignkd profile` records); llama.cpp's own default is a fixed 4.
        threads = threads or torch.get_num_threads()
        self._pixels = (np.asarray(mean, np.float32), np.asarray(std, np.float32), rescale_factor, image_size)
        self._model = self._load_model(model_path)
        self._ctx = self._new_context(threads, exact)
        self._mctx = self._load_projector(projector_path, threads) if vision is None else None
        self.n_embd = self._llama.llama_model_n_embd(self._model)
        self.vocab_size = self._llama.llama_vocab_n_tokens(self._llama.llama_model_get_vocab(self._model))
        self._batch = self._llama.llama_batch_init(max_seq_len, self.n_embd, 1)
        reader = gguf.GGUFReader(str(model_path))
        self._embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
        self._dequantize = gguf.quants.dequantize

    def _load_model(self, path: Path):
        L = self._llama
        L.llama_backend_init()
        params = L.llama_model_default_params()
        model = L.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise AlignKDError(f"llama.cpp could not load {path}; re-export the bundle, or upgrade llama-cpp-python if the file is newer")
        return model

    def _new_context(self, threads: int | None, exact: bool):
        L = self._llama
        params = L.llama_context_default_params()
        params.n_ctx = params.n_batch = self.max_seq_len
        params.n_ubatch = min(512, self.max_seq_len)
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        if exact:  # f32 weights: keep the cache and attention in f32 too (llama.cpp's default cache is f16)
            params.type_k = params.type_v = GGML_TYPE_F32
            params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = L.llama_init_from_model(self._model, params)
        if not ctx:
            raise AlignKDError(f"llama.cpp could not create a context of {self.max_seq_len} positions; lower --max-seq-len")
        return ctx

    def _load_projector(self, path: Path, threads: int | None):
        M = self._mtmd
        params = M.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.n_threads = threads
        mctx = M.mtmd_init_from_file(str(path).encode(), self._model, params)
        if not mctx:
            raise AlignKDError(f"llama.cpp's mtmd could not load the projector {path}; re-export the bundle")
        return mctx

    # ---- image ----

    def _to_uint8(self, pixel_values: torch.Tensor) -> np.ndarray:
        mean, std, rescale, size = self._pixels
        chw = pixel_values[0].float().numpy()
        if chw.shape[1:] != (size, size):
            raise AlignKDError(f"pixel values of {chw.shape[2]}x{chw.shape[1]} do not match the projector's {size}x{size} input")
        rgb = (chw * std[:, None, None] + mean[:, None, None]) / rescale
        return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0))

    def encode_rgb(self, rgb: np.ndarray) -> torch.Tensor:
        """llama.cpp's image path on an RGB uint8 [H, W, 3] array: its preprocessing, CLIP and the projector."""
        M = self._mtmd
        if self._mctx is None:
            raise AlignKDError("this GGUF bundle has no llama.cpp image path (it was exported with --vision-runtime pytorch); "
                               "re-export it without that option to run llama.cpp's mtmd")
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        bitmap = M.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        chunks = M.mtmd_input_chunks_init()
        try:
            part = M.mtmd_input_part(text=None, bitmap=bitmap)
            parts = (ctypes.POINTER(M.mtmd_input_part) * 1)(ctypes.pointer(part))
            if M.mtmd_tokenize_from_parts(self._mctx, chunks, parts, 1, False) != 0:
                raise AlignKDError("llama.cpp's mtmd could not tokenize the image")
            chunk = M.mtmd_input_chunks_get(chunks, 0)
            n = M.mtmd_input_chunk_get_n_tokens(chunk)
            if M.mtmd_encode_chunk(self._mctx, chunk) != 0:
                raise AlignKDError("llama.cpp's mtmd failed to encode the image")
            out = np.ctypeslib.as_array(M.mtmd_get_output_embd(self._mctx), shape=(n * self.n_embd,))
            return torch.from_numpy(out.copy().reshape(1, n, self.n_embd))
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bitmap)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self._vision is not None:
            with torch.inference_mode():
                return self._vision(pixel_values.float())
        return self.encode_rgb(self._to_uint8(pixel_values))

    def encode_pil(self, image) -> torch.Tensor:
        """The raw image through llama.cpp's own pad/resize (what llama-mtmd-cli does with a file)."""
        return self.encode_rgb(np.asarray(image.convert("RGB")))

    # ---- text ----

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        rows = np.asarray(self._embd.data[ids[0].numpy()])
        table = self._dequantize(rows, self._embd.tensor_type).reshape(len(rows), self.n_embd)
        return torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32))[None]

    def _run(self, embeds: torch.Tensor, start: int) -> torch.Tensor:
        L, batch = self._llama, self._batch
        n = embeds.shape[1]
        if start + n > self.max_seq_len:
            raise AlignKDError(f"the prompt needs {start + n} positions but this GGUF bundle's context holds {self.max_seq_len}; "
                               "shorten the prompt or re-export with a larger --max-seq-len")
        data = np.ascontiguousarray(embeds[0].float().numpy())
        ctypes.memmove(batch.embd, data.ctypes.data, data.nbytes)
        batch.n_tokens = n
        for i in range(n):
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == n - 1
        rc = L.llama_decode(self._ctx, batch)
        if rc != 0:
            raise AlignKDError(f"llama.cpp's llama_decode failed (code {rc}) at position {start}")
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self._ctx, n - 1), shape=(self.vocab_size,))
        return torch.from_numpy(logits.copy())

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        self._llama.llama_memory_clear(self._llama.llama_get_memory(self._ctx), True)
        return self._run(embeds, 0)

    def decode(self, embeds: torch.Tensor, position: int) -> torch.Tensor:
        return self._run(embeds, position)

    def close(self) -> None:
        L = self._llama
        if getattr(self, "_mctx", None):
            self._mtmd.mtmd_free(self._mctx)
            self._mctx = None
        if getattr(self, "_batch", None) is not None:
            L.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            L.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            L.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass
