"""Eval resume is keyed on the model's content and the generation settings, not on the model folder's name.

    python -m pytest tests/eval/test_provenance.py -q
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from alignkd.errors import AlignKDError
from alignkd.eval.provenance import KEY_FILE, model_fingerprint
from alignkd.eval.run import evaluate

CAP = 4


def retrained(model: Path, where: Path) -> Path:
    """A copy of `model` in another folder of the same name, one tensor changed (as further training would)."""
    from safetensors.torch import load_file, save_file

    copy = where / model.name
    shutil.copytree(model, copy)
    tensors = load_file(copy / "model.safetensors")
    name = sorted(tensors)[len(tensors) // 2]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    return copy


def test_another_model_with_the_same_folder_name_is_refused(model, suite, tmp_path):
    out = tmp_path / "answers"
    evaluate(model, ["pope"], suite, out, limit=2, max_new_tokens=CAP, progress=False)
    before = (out / "pope.jsonl").read_text()
    other = retrained(model, tmp_path / "run2")
    assert other.name == model.name
    with pytest.raises(AlignKDError, match=f"{out} holds answers made with another model; pass another --out folder, or --overwrite"):
        evaluate(other, ["pope"], suite, out, limit=2, max_new_tokens=CAP, progress=False)
    assert (out / "pope.jsonl").read_text() == before  # nothing lost, nothing mixed
    fresh = evaluate(other, ["pope"], suite, out, limit=2, max_new_tokens=CAP, progress=False, overwrite=True)
    assert (fresh["benchmarks"]["pope"]["generated"], fresh["benchmarks"]["pope"]["reused"]) == (2, 0)


def test_other_generation_settings_are_refused(model, suite, tmp_path):
    out = tmp_path / "answers"
    evaluate(model, ["gqa"], suite, out, limit=1, max_new_tokens=CAP, progress=False)
    with pytest.raises(AlignKDError, match="another --max-new-tokens"):
        evaluate(model, ["gqa"], suite, out, limit=1, max_new_tokens=CAP + 1, progress=False)
    with pytest.raises(AlignKDError, match="another --dtype"):
        evaluate(model, ["gqa"], suite, out, limit=1, max_new_tokens=CAP, progress=False, dtype="bfloat16")
    with pytest.raises(AlignKDError, match="another control"):
        evaluate(model, ["gqa"], suite, out, limit=1, max_new_tokens=CAP, progress=False, shuffled=True)
    # a larger --limit only extends the run: the answers already there do not depend on it
    more = evaluate(model, ["gqa"], suite, out, limit=2, max_new_tokens=CAP, progress=False)
    assert (more["benchmarks"]["gqa"]["generated"], more["benchmarks"]["gqa"]["reused"]) == (1, 1)


def test_overwrite_removes_every_old_answer_file(model, suite, tmp_path):
    out = tmp_path / "answers"
    evaluate(model, ["gqa", "pope"], suite, out, limit=1, max_new_tokens=CAP, progress=False)
    (out / "notes.txt").write_text("mine")
    evaluate(model, ["gqa"], suite, out, limit=1, max_new_tokens=CAP + 1, progress=False, overwrite=True)
    assert not (out / "pope.jsonl").exists()  # would otherwise be reused later under the new key
    assert (out / "notes.txt").read_text() == "mine"  # what is not an answer file stays


def test_a_copy_of_the_same_model_resumes(model, suite, tmp_path, monkeypatch):
    out = tmp_path / "answers"
    evaluate(model, ["pope"], suite, out, limit=2, max_new_tokens=CAP, progress=False)
    copy = tmp_path / "elsewhere" / model.name
    shutil.copytree(model, copy)  # new mtimes, same bytes
    os.utime(copy / "model.safetensors", (1, 1))
    again = evaluate(copy, ["pope"], suite, out, limit=2, max_new_tokens=CAP, progress=False)
    assert (again["benchmarks"]["pope"]["generated"], again["benchmarks"]["pope"]["reused"]) == (0, 2)


def test_answers_without_a_key_are_not_trusted(model, suite, tmp_path, no_load):
    out = tmp_path / "answers"
    out.mkdir()
    (out / "pope.jsonl").write_text('{"question_id": 1, "prompt": "?", "text": "yes", "model_id": "checkpoint"}\n')
    with pytest.raises(AlignKDError, match=f"no {KEY_FILE} saying which model"):
        evaluate(model, ["pope"], suite, out, limit=1, progress=False)
    (out / KEY_FILE).write_text("[1, 2]")  # damaged key: not trusted either
    with pytest.raises(AlignKDError, match="another .*answer protocol version"):
        evaluate(model, ["pope"], suite, out, limit=1, progress=False)


def test_a_key_without_answers_binds_nothing(model, suite, tmp_path):
    out = tmp_path / "answers"
    out.mkdir()
    (out / KEY_FILE).write_text(json.dumps({"protocol": 0}))  # a run killed before its first answer
    result = evaluate(model, ["pope"], suite, out, limit=1, max_new_tokens=CAP, progress=False)
    assert result["benchmarks"]["pope"]["generated"] == 1
    assert json.loads((out / KEY_FILE).read_text())["max_new_tokens_cap"] == CAP


def test_fingerprints(model, tmp_path):
    assert model_fingerprint(model) == model_fingerprint(model)
    assert model_fingerprint(model)["kind"] == "checkpoint"
    assert model_fingerprint(retrained(model, tmp_path)) != model_fingerprint(model)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"files": {"a.pte": "00"}}')
    first = model_fingerprint(bundle)
    (bundle / "manifest.json").write_text('{"files": {"a.pte": "01"}}')
    assert first["kind"] == "bundle" and model_fingerprint(bundle) != first
    with pytest.raises(AlignKDError, match="does not exist"):
        model_fingerprint(tmp_path / "missing")


def test_unwritable_out_is_one_sentence_before_the_model_load(model, suite, tmp_path, monkeypatch, no_load):
    out = tmp_path / "locked" / "answers"
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "locked")):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(AlignKDError, match=f"cannot write to {out} \\(Permission denied\\); pass an --out folder"):
        evaluate(model, ["pope"], suite, out, limit=1, progress=False)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_folder(model, suite, tmp_path, no_load):
    out = tmp_path / "answers"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(AlignKDError, match="cannot write to"):
            evaluate(model, ["pope"], suite, out, limit=1, progress=False)
    finally:
        out.chmod(0o700)


def test_cli_refusal_names_out_and_overwrite(model, suite, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "answers"
    evaluate(model, ["pope"], suite, out, limit=1, max_new_tokens=CAP, progress=False)
    cmd = [sys.executable, "-m", "alignkd.cli", "eval", str(model), "--bench", "pope", "--data", str(suite), "--out", str(out),
           "--limit", "1", "--max-new-tokens", str(CAP + 1), "--json"]
    import alignkd

    env = {**os.environ, "PYTHONPATH": str(Path(alignkd.__file__).resolve().parents[1])}  # this checkout's alignkd
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: {out} holds answers made with another --max-new-tokens")
    assert "Traceback" not in refused.stderr
    done = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["benchmarks"]["pope"]["generated"] == 1
