"""Writing a bundle's `manifest.json`: the file table, the source checkpoint's hash, the manifest itself.

The reading side (schema, validation, path safety, file verification) is the contract every reader shares:
`alignkd.contract.manifest`. `write_manifest` validates against the same schema before it writes.

    python -m pytest tests/export/test_bundle.py -k manifest
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from alignkd.contract.manifest import FORMAT_VERSION, MANIFEST, sha256_file, validate


def file_table(folder: Path) -> dict:
    """{relative path: {sha256, bytes}} of every file under `folder` except the manifest itself."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def checkpoint_hash(folder: Path) -> str:
    """One sha256 over (relative path, file sha256) of every file of the checkpoint folder, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: dict) -> Path:
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as any reader will see them
    validate(manifest)
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def build_manifest(*, config, tokenizer, target: str, quant: dict, max_seq_len: int, parts: dict, template: str,
                   tokenizer_files: dict, source: dict, export_info: dict) -> dict:
    """Everything but `files` and `parity`, which are added once the files exist and parity is measured."""
    from alignkd.data.templates import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, get_template, user_message
    from alignkd.models.checkpoint import config_to_official

    tpl = get_template(template)
    prompt = tpl.prompt(user_message("{question}", 1))
    return {
        "format_version": FORMAT_VERSION,
        "model": {
            "family": "mobilevlm_v2",
            "config": config_to_official(config),
            "vision_config": config.vision.to_dict(),
            "hidden_size": config.llm.hidden_size,
            "num_layers": config.llm.num_hidden_layers,
            "num_heads": config.llm.num_attention_heads,
            "num_kv_heads": config.llm.num_key_value_heads,
            "head_dim": config.llm.hidden_size // config.llm.num_attention_heads,
            "vocab_size": config.llm.vocab_size,
        },
        "target": target,
        "quant": quant,
        "max_seq_len": max_seq_len,
        "parts": parts,
        "tokenizer": {"files": tokenizer_files, "vocab_size": tokenizer.vocab_size, "add_bos": tokenizer.add_bos,
                      "kind": "sentencepiece-legacy-llama"},
        "special_tokens": {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "unk": tokenizer.unk_id, "pad": tokenizer.pad_id},
        "image": config.image.to_dict(),
        "num_image_tokens": config.num_image_tokens,
        "prompt": {
            "template": template,
            "text": prompt,
            "image_placeholder": IMAGE_TOKEN,
            "image_placeholder_offset": prompt.index(IMAGE_TOKEN),
            "image_token_index": IMAGE_TOKEN_INDEX,
            "stop_strings": [tpl.stop_str] if tpl.stop_str else [],
            # how the ids are formed: each <image>-separated chunk tokenized alone, BOS once, image tokens spliced
            "tokenization": "chunks split at the placeholder are tokenized separately (SentencePiece, dummy prefix); BOS only before the first",
        },
        "source": source,
        "export": export_info,
    }
