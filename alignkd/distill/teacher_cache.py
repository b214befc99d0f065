"""The teacher-output cache: one pass of the frozen teacher over the training data, then training without it.

The paper (§4.5) saved the teacher's outputs for samples that ran out of memory and trained on them later
without the teacher on the device. `alignkd cache-teacher -c CONFIG -o CACHE --top-k K` runs the config's
teacher once over its training data and writes, per record, what the Align-KD terms read from the teacher:

- at the KD positions (`loss.kd_mask`): the top-K vocabulary indices, the teacher's log-probabilities there
  (at `loss.temperature`, fp32) and the log of the remaining mass (`losses.topk_kl` adds it as a tail bucket);
- the layer-0 attention block of `loss.attn_block` for all teacher heads (and the text->vision block for the
  focus ranking when that is another block), and the projector's image tokens at the teacher's width, both in
  `dtype` (fp16 by default).

Records are keyed by their index in the data file, which the data hash pins, so any shuffle finds its entry;
each entry also holds a hash of the record's tokens, checked when it is read. Files: `shard-NNNNN.safetensors`
(a fixed range of records each, written to a temporary name and renamed) and `manifest.json` (the teacher's
hash, the data's hash, K, dtype, the loss settings, the shards done, in data-file order). A killed pass keeps
its completed shards; re-running the same command redoes only the rest. `teacher_cache: CACHE` in a distill
config then trains without loading the teacher (`TeacherCache`); a cache of another teacher, other data or
other loss settings is refused.

    alignkd cache-teacher -c alignkd/configs/synth_distill.yaml -o runs/teacher_cache --top-k 64
    alignkd distill -c alignkd/configs/synth_distill.yaml teacher_cache=runs/teacher_cache
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import torch

from alignkd.distill.config import KDMask, LossWeights, TrainConfig
from alignkd.distill.losses import response_mask
from alignkd.distill.objective import TeacherOutputs, TopKLogits, run_teacher
from alignkd.errors import AlignKDError

FORMAT, VERSION = "alignkd-teacher-cache", 1
MANIFEST = "manifest.json"
DTYPES = ("float16", "bfloat16", "float32")
# teacher fingerprint: small files whole, large ones by 16 evenly spaced 64 KiB blocks (first block = header)
WHOLE_BELOW, BLOCK, BLOCKS = 4 << 20, 64 << 10, 16
LOSS_KEYS = ("kd_mask", "temperature", "attn_layer", "attn_block")


# ---- identities: what the cache was built from ----------------------------------------------------------

def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _folder_hash(folder: Path, full: bool) -> str:
    """sha256 of a folder's files (names, sizes, bytes); `full=False` reads only sampled blocks of large files."""
    if not folder.is_dir():
        raise AlignKDError(f"teacher checkpoint {folder} does not exist; fix teacher.path in the config")
    h = hashlib.sha256()
    for path in _files(folder):
        size = path.stat().st_size
        h.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with path.open("rb") as f:
            if full or size <= WHOLE_BELOW:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
            else:
                for j in range(BLOCKS):
                    f.seek((size - BLOCK) * j // (BLOCKS - 1))
                    h.update(f.read(BLOCK))
    return h.hexdigest()


def teacher_identity(spec, seed: int, full: bool = False) -> dict:
    """What makes the teacher: a checkpoint folder's bytes (sampled unless `full`), or a preset + seed + tokenizer.

    The sampled fingerprint reads config, tokenizer and 16 blocks of each weight file (a few MB for a 7B), never
    the whole weights: it is what a training run checks, without loading the teacher."""
    parts = {"dtype": spec.dtype}
    if spec.path is not None:
        parts["checkpoint"] = _folder_hash(Path(spec.path), full)
    else:
        parts.update(preset=spec.preset, seed=seed, tokenizer=_folder_hash(Path(spec.tokenizer), full))
    if spec.vision_tower_from:
        parts["vision_tower_from"] = _folder_hash(Path(spec.vision_tower_from), full)
    return {"fingerprint": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(),
            "source": spec.path or f"preset {spec.preset}"}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def data_identity(dataset, template: str) -> dict:
    """The training data as the teacher saw it: file bytes, template, length limit, tokenizer, image preprocessing.
    Image files are not hashed (1.2M of them); each record's tokens are checked when its entry is read."""
    parts = {
        "file_sha256": _file_sha256(dataset.data_path),
        "template": template,
        "max_length": dataset.max_length,
        "tokenizer_sha256": hashlib.sha256(dataset.tokenizer.sp.serialized_model_proto()).hexdigest(),
        "image": dataset.processor.config.to_dict() if hasattr(dataset.processor, "config") else None,
        "image_tokens": dataset.num_image_tokens,
    }
    return json.loads(json.dumps(parts))  # tuples as lists: the form it has when read back from the manifest


def loss_identity(loss) -> dict:
    return {"kd_mask": loss.kd_mask.value, "temperature": float(loss.temperature), "attn_layer": loss.attn_layer,
            "attn_block": loss.attn_block.value}


def _row_check(input_ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> str:
    """A record's tokens and labels, hashed: the entry read back must belong to the record being trained."""
    n = int(mask.sum())
    data = input_ids[:n].to("cpu", torch.int64).numpy().tobytes() + labels[:n].to("cpu", torch.int64).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


# ---- the cache pass -------------------------------------------------------------------------------------

def splice_rows(input_ids: torch.Tensor, values: torch.Tensor, image_tokens: int, width: int, image_value, pad_value):
    """Per-token values [B, T] laid out as `MobileVLM.splice` lays out the sequence: each -200 placeholder becomes
    `image_tokens` positions holding `image_value` (None: the placeholder's own value), right-padded with
    `pad_value` to `width`. Gives the spliced labels and attention mask without running the vision tower."""
    from alignkd.data.templates import IMAGE_TOKEN_INDEX

    out = torch.full((input_ids.shape[0], width), pad_value, dtype=values.dtype, device=values.device)
    for b in range(input_ids.shape[0]):
        is_image = input_ids[b] == IMAGE_TOKEN_INDEX
        row = values[b] if image_value is None else torch.where(is_image, torch.as_tensor(image_value, dtype=values.dtype,
                                                                                          device=values.device), values[b])
        row = torch.repeat_interleave(row, torch.where(is_image, image_tokens, 1))
        out[b, : row.shape[0]] = row[:width]
    return out


def kd_positions(batch: dict, kd_mask: KDMask, image_tokens: int, width: int) -> torch.Tensor:
    """[B, width] bool: the logit positions the KD term reads, as the objective finds them on the spliced batch."""
    from alignkd.data.templates import IGNORE_INDEX

    ids = batch["input_ids"]
    if kd_mask == KDMask.response:
        return response_mask(splice_rows(ids, batch["labels"], image_tokens, width, IGNORE_INDEX, IGNORE_INDEX))
    return splice_rows(ids, batch["attention_mask"].bool(), image_tokens, width, None, False)


def teacher_topk(logits: torch.Tensor, k: int, temperature: float):
    """Rows [n, V] -> (idx [n, K], logp [n, K] fp32, tail [n] fp32 = log of the mass outside the K, -inf if none)."""
    z = logits.float() / temperature
    log_z = torch.logsumexp(z, dim=-1, keepdim=True)
    top, idx = torch.topk(z, k, dim=-1)
    rest = z.scatter(1, idx, float("-inf"))
    tail = torch.logsumexp(rest, dim=-1) - log_z[:, 0]
    return idx, top - log_z, tail


def _sample_tensors(key: int, b: int, t: TeacherOutputs, batch: dict, kd_mask: torch.Tensor, k: int, temperature: float,
                    dtype: torch.dtype, with_tv: bool, image_offset: int, heads: int) -> tuple[dict, int]:
    """The cached tensors of sample b of a teacher batch, named `KEY.part`."""
    from alignkd.data.templates import IMAGE_TOKEN_INDEX

    idx, logp, tail = teacher_topk(t.logits[b][kd_mask[b]], k, temperature)
    idx_dtype = torch.int16 if t.logits.shape[-1] <= 32768 else torch.int32
    out = {"idx": idx.to(idx_dtype), "logp": logp, "tail": tail}
    n_rows, n_cols = int((t.rows[b] >= 0).sum()), int((t.cols[b] >= 0).sum())
    block = t.block if t.block is not None else torch.zeros(t.logits.shape[0], heads, 0, 0)
    out["block"] = block[b, :, :n_rows, :n_cols].to(dtype)
    if with_tv:
        n_text, n_vis = int((t.text[b] >= 0).sum()), int((t.vision[b] >= 0).sum())
        tv = t.text_vision[b, :, :n_text, :n_vis] if t.text_vision is not None else torch.zeros(heads, 0, 0)
        out["tv"] = tv.to(dtype)
    n_img = int((batch["input_ids"][b] == IMAGE_TOKEN_INDEX).sum())
    feats = t.image_features[image_offset:image_offset + n_img] if n_img else None
    out["image"] = feats.to(dtype) if feats is not None else torch.zeros(0, dtype=dtype)
    return {f"{key}.{name}": v.detach().to("cpu").contiguous() for name, v in out.items()}, image_offset + n_img


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _start_or_resume(out: Path, header: dict) -> dict:
    """The manifest to continue: a fresh one in an empty folder, or the folder's own when it was built alike."""
    path = out / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        differ = [k for k in ("format", "version", "teacher", "data", "top_k", "dtype", "loss", "samples_per_shard")
                  if _comparable(manifest.get(k), k) != _comparable(header[k], k)]
        if differ:
            what = ", ".join(f"top-k {manifest.get('top_k')}, not {header['top_k']}" if k == "top_k" else f"another {k}"
                             for k in differ)
            raise AlignKDError(f"{out} holds a teacher cache built with other settings ({what}); re-run with the settings it "
                               "was started with to continue it, or choose a new -o folder")
        done = {s["file"] for s in manifest["shards"]}
        for stray in out.glob("shard-*"):  # partial shards, or written but not yet recorded: redone
            if stray.name not in done:
                stray.unlink()
        return manifest
    if out.exists() and any(out.iterdir()):
        raise AlignKDError(f"{out} is not empty and holds no teacher cache (no {MANIFEST}); choose an empty or new -o folder")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {**header, "shards": [], "complete": False}
    _atomic_json(path, manifest)
    return manifest


def _comparable(value, key):
    # a resumed pass compares the teacher's fingerprint only: the full hash is provenance, and the folder may have moved
    return value.get("fingerprint") if key == "teacher" and isinstance(value, dict) else value


def build_cache(cfg: TrainConfig, out, top_k: int | None = None, dtype: str = "float16", samples_per_shard: int = 256,
                progress: bool = True) -> dict:
    """Run the config's teacher over its training data into the cache folder `out`; returns the manifest."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from alignkd.data.dataset import Collator, LlavaDataset
    from alignkd.distill.checkpoint import load_spec

    out = Path(out)
    if cfg.teacher is None:
        raise AlignKDError("cache-teacher needs `teacher:` in the config: the model whose outputs to cache")
    if dtype not in DTYPES:
        raise AlignKDError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if samples_per_shard < 1:
        raise AlignKDError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    set_seed(cfg.seed)  # a preset teacher is built randomly: the same seed gives the same teacher as `distill`
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # read straight into teacher_dtype on the device, as distill does: no full-precision copy of a 7B on the host
    teacher, tok = load_spec(cfg.teacher, train=False, dtype=cfg.teacher_dtype, device=device)
    teacher.requires_grad_(False).to(device, getattr(torch, cfg.teacher_dtype))
    vocab = teacher.config.llm.vocab_size
    k = vocab if top_k is None else top_k
    if not 1 <= k <= vocab:
        raise AlignKDError(f"--top-k {top_k} must be between 1 and the teacher's vocabulary size {vocab}")
    dataset = LlavaDataset(cfg.data.train, cfg.data.image_root, tok, teacher.config.image, cfg.data.template,
                           cfg.data.max_length, teacher.config.num_image_tokens, cfg.data.strict)
    header = {"format": FORMAT, "version": VERSION, "teacher": teacher_identity(cfg.teacher, cfg.seed),
              "data": data_identity(dataset, cfg.data.template), "top_k": k, "dtype": dtype, "loss": loss_identity(cfg.loss),
              "samples_per_shard": samples_per_shard, "records": len(dataset), "order": "data-file order, key = record index",
              "teacher_heads": teacher.config.num_heads, "teacher_dim": teacher.config.hidden_size, "vocab_size": vocab,
              "teacher_dtype": cfg.teacher_dtype}
    manifest = _start_or_resume(out, header)
    if "content_sha256" not in manifest["teacher"]:
        manifest["teacher"]["content_sha256"] = teacher_identity(cfg.teacher, cfg.seed, full=True)["fingerprint"]
        _atomic_json(out / MANIFEST, manifest)
    n_shards = -(-len(dataset) // samples_per_shard)
    done = {s["file"] for s in manifest["shards"]}
    bar = tqdm(total=len(dataset), disable=not progress, desc="cache-teacher", dynamic_ncols=True)
    bar.update(sum(s["records"][1] - s["records"][0] for s in manifest["shards"]))
    try:
        for j in range(n_shards):
            name = f"shard-{j:05d}.safetensors"
            if name in done:
                continue
            span = (j * samples_per_shard, min((j + 1) * samples_per_shard, len(dataset)))
            entry = _write_shard(teacher, dataset, Collator(tok.pad_id), cfg, k, getattr(torch, dtype), out / name, span, device, bar)
            manifest["shards"].append(entry)
            manifest["complete"] = len(manifest["shards"]) == n_shards
            _atomic_json(out / MANIFEST, manifest)
    except KeyboardInterrupt:
        raise AlignKDError(f"interrupted: {len(manifest['shards'])} of {n_shards} shards are complete in {out}; "
                           "re-run the same command to continue") from None
    finally:
        bar.close()
    if not manifest["complete"]:  # an empty data file has no shard to write
        manifest["complete"] = True
        _atomic_json(out / MANIFEST, manifest)
    return manifest


def _write_shard(teacher, dataset, collator, cfg: TrainConfig, k: int, dtype, path: Path, span, device, bar) -> dict:
    from safetensors.torch import save_file

    # every term's teacher side, whatever the weights: one cache serves any loss weighting
    loss = replace(cfg.loss, weights=LossWeights(attn=1.0, vision_focus=1.0), focus_k=max(cfg.loss.focus_k, 1))
    with_tv = loss.attn_block.value != "text_vision"
    tensors, keys, checks = {}, [], {}
    for start in range(span[0], span[1], cfg.batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + cfg.batch_size, span[1]))])
        bar.update(min(start + cfg.batch_size, span[1]) - start)
        if batch["input_ids"] is None:
            continue
        on_dev = {n: (v.to(device) if isinstance(v, torch.Tensor) else v) for n, v in batch.items()}
        t = run_teacher(teacher, on_dev, loss)
        kd_mask = kd_positions(on_dev, loss.kd_mask, teacher.config.num_image_tokens, t.logits.shape[1])
        offset = 0
        for b, key in enumerate(batch["indices"]):
            part, offset = _sample_tensors(key, b, t, on_dev, kd_mask, k, loss.temperature, dtype, with_tv, offset,
                                           teacher.config.num_heads)
            tensors.update(part)
            keys.append(key)
            checks[str(key)] = _row_check(batch["input_ids"][b], batch["labels"][b], batch["attention_mask"][b])
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"keys": json.dumps(keys), "checks": json.dumps(checks)})
    os.replace(tmp, path)
    return {"file": path.name, "records": list(span), "samples": len(keys), "skipped": (span[1] - span[0]) - len(keys),
            "bytes": path.stat().st_size}


# ---- training from the cache ----------------------------------------------------------------------------

def _pad_stack(blocks: list[torch.Tensor]) -> torch.Tensor:
    """[H, R_b, C_b] per sample -> [B, H, max R, max C], zeros outside: the layout `run_teacher` returns."""
    rows = max(b.shape[1] for b in blocks)
    cols = max(b.shape[2] for b in blocks)
    out = blocks[0].new_zeros(len(blocks), blocks[0].shape[0], rows, cols)
    for i, b in enumerate(blocks):
        out[i, :, : b.shape[1], : b.shape[2]] = b
    return out


class TeacherCache:
    """A built cache, read while training: the teacher's outputs for a batch, looked up by record index.

    `TeacherCache(path)` reads and checks the manifest (complete, this format); `check(cfg, dataset)` refuses a
    cache of another teacher, other data, other loss settings or another vocabulary before any training."""

    def __init__(self, path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise AlignKDError(f"teacher_cache {self.path} holds no {MANIFEST}; build it with "
                               f"`alignkd cache-teacher -c CONFIG -o {self.path}`")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise AlignKDError(f"teacher_cache {self.path}: {MANIFEST} is not an alignkd teacher cache of version {VERSION}; "
                               "rebuild it with `alignkd cache-teacher`")
        if not self.manifest.get("complete"):
            n = -(-self.manifest["records"] // self.manifest["samples_per_shard"])
            raise AlignKDError(f"teacher_cache {self.path} is incomplete ({len(self.manifest['shards'])} of {n} shards); "
                               "finish it by re-running the same `alignkd cache-teacher` command")
        self.num_heads, self.hidden_size = self.manifest["teacher_heads"], self.manifest["teacher_dim"]
        self._shards = sorted(self.manifest["shards"], key=lambda s: s["records"][0])
        self._open: dict[str, tuple] = {}

    def check(self, cfg: TrainConfig, dataset, vocab_size: int) -> None:
        m, here = self.manifest, self.path
        if cfg.teacher is not None and teacher_identity(cfg.teacher, cfg.seed)["fingerprint"] != m["teacher"]["fingerprint"]:
            raise AlignKDError(f"teacher_cache {here} was built from another teacher ({m['teacher']['source']}) than the config's "
                               f"{cfg.teacher.path or cfg.teacher.preset}; point teacher_cache at this teacher's cache or "
                               f"rebuild it with `alignkd cache-teacher -c CONFIG -o NEW_FOLDER`")
        data = data_identity(dataset, cfg.data.template)
        differ = [k for k in data if data[k] != m["data"].get(k)]
        if differ:
            raise AlignKDError(f"teacher_cache {here} was built from other training data than {cfg.data.train} "
                               f"({', '.join(differ)} differ); rebuild it with `alignkd cache-teacher -c CONFIG -o NEW_FOLDER`")
        loss = loss_identity(cfg.loss)
        for key in LOSS_KEYS:
            if loss[key] != m["loss"][key]:
                raise AlignKDError(f"teacher_cache {here} holds outputs for loss.{key}={m['loss'][key]} but the config asks "
                                   f"for {loss[key]}; set loss.{key}={m['loss'][key]} or rebuild the cache with this config")
        if vocab_size != m["vocab_size"]:
            raise AlignKDError(f"teacher_cache {here} has the teacher's vocabulary of {m['vocab_size']} tokens but the student "
                               f"has {vocab_size}; both must share the tokenizer")

    def _shard(self, key: int):
        import bisect

        from safetensors import safe_open

        j = bisect.bisect_right([s["records"][0] for s in self._shards], key) - 1
        shard = self._shards[j] if j >= 0 and key < self._shards[j]["records"][1] else None
        if shard is None:
            raise AlignKDError(f"record {key} is outside teacher_cache {self.path} ({self.manifest['records']} records); rebuild the cache")
        if shard["file"] not in self._open:
            if len(self._open) >= 8:  # shuffled reads touch every shard: keep a few mapped, not thousands
                self._open.pop(next(iter(self._open)))
            handle = safe_open(str(self.path / shard["file"]), framework="pt")
            self._open[shard["file"]] = (handle, json.loads(handle.metadata()["checks"]))
        return self._open[shard["file"]]

    def _entry(self, key: int, check: str) -> dict:
        handle, checks = self._shard(key)
        if str(key) not in checks:
            raise AlignKDError(f"record {key} of the training data was skipped when teacher_cache {self.path} was built "
                               "(e.g. an image missing then) but is trained now; rebuild the cache")
        if checks[str(key)] != check:
            raise AlignKDError(f"record {key} of the training data does not match its entry in teacher_cache {self.path} "
                               "(its tokens differ); rebuild the cache with this data")
        names = ("idx", "logp", "tail", "block", "image") + (("tv",) if self.manifest["loss"]["attn_block"] != "text_vision" else ())
        return {n: handle.get_tensor(f"{key}.{n}") for n in names}

    def teacher_outputs(self, batch: dict, device) -> TeacherOutputs:
        """What `run_teacher` gives for this batch, from the cache: top-K logits instead of full ones."""
        entries = [self._entry(key, _row_check(batch["input_ids"][b], batch["labels"][b], batch["attention_mask"][b]))
                   for b, key in enumerate(batch["indices"])]
        topk = TopKLogits(*(torch.cat([e[n] for e in entries]).to(device) for n in ("idx", "logp", "tail")))
        block = _pad_stack([e["block"] for e in entries]).to(device)
        tv = _pad_stack([e["tv"] for e in entries]).to(device) if "tv" in entries[0] else block
        images = [e["image"] for e in entries if e["image"].numel()]
        feats = torch.cat(images).to(device) if images else None
        return TeacherOutputs(None, block, tv if feats is not None else None, feats, None, None, None, None, topk=topk)
