"""The teacher-output cache: exact against the online teacher at K = V, resumable after a kill, and refusing a
cache of another teacher, other data or other settings (`alignkd.distill.teacher_cache`)."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from alignkd.config import from_dict
from alignkd.data.dataset import Collator, LlavaDataset
from alignkd.distill import teacher_cache as tc
from alignkd.distill.checkpoint import load_spec
from alignkd.distill.config import LossConfig, ModelSpec, TrainConfig
from alignkd.distill.losses import forward_kl, reverse_kl, topk_kl
from alignkd.distill.objective import AlignKDModule, run_teacher
from alignkd.errors import AlignKDError
from alignkd.models.checkpoint import save_checkpoint
from alignkd.models.mobilevlm import MobileVLM, get_preset

from conftest import synth_config

N_RECORDS = 10


@pytest.fixture(scope="module")
def small_data(world, tmp_path_factory):
    """The first records of the tiny world, with a text-only one among them (mixed batches)."""
    records = json.loads((world / "train" / "finetune.json").read_text())
    text_only = [r for r in records if "image" not in r][:1]
    chosen = [r for r in records if "image" in r][: N_RECORDS - 1] + text_only
    path = tmp_path_factory.mktemp("data") / "small.json"
    path.write_text(json.dumps(chosen))
    return path


def _cfg(world, teacher_ckpt, data_file, out, **extra):
    raw = synth_config(world, teacher_ckpt, out, **extra)
    raw["data"]["train"] = str(data_file)
    return from_dict(TrainConfig, raw)


def _build(world, teacher_ckpt, data, out, k=None, dtype="float32", per_shard=3, **extra):
    cfg = _cfg(world, teacher_ckpt, data, out.parent / "run", **extra)
    return tc.build_cache(cfg, out, top_k=k, dtype=dtype, samples_per_shard=per_shard, progress=False)


# ---- the loss -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [True, False])
def test_topk_kl_is_the_full_kl_at_k_equal_vocab_and_below_it_otherwise(reverse):
    torch.manual_seed(0)
    student = (torch.randn(2, 5, 40) * 3).requires_grad_(True)
    teacher = torch.randn(2, 5, 40) * 3
    mask = torch.rand(2, 5) > 0.3
    full_fn = reverse_kl if reverse else forward_kl
    full = full_fn(student, teacher, mask, 2.0)
    (g_full,) = torch.autograd.grad(full, student)
    for k in (40, 8, 1):
        idx, logp, tail = tc.teacher_topk(teacher[mask], k, 2.0)
        cached = topk_kl(student, mask, idx, logp, tail, 2.0, reverse)
        (g,) = torch.autograd.grad(cached, student)
        assert torch.isfinite(g).all()
        if k == 40:
            assert torch.isneginf(tail).all()
            torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g, g_full, rtol=1e-4, atol=1e-7)
        else:
            assert cached <= full + 1e-6  # the bucketed KL never exceeds the full one


def test_topk_kl_tail_bucket_by_hand():
    # V = 3, K = 1: buckets {token 0} and {1, 2}
    student = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    teacher = torch.log(torch.tensor([[0.8, 0.1, 0.1]]))
    idx, logp, tail = tc.teacher_topk(teacher, 1, 1.0)
    assert idx.tolist() == [[0]] and torch.allclose(tail.exp(), torch.tensor([0.2]))
    got = topk_kl(student, torch.ones(1, dtype=torch.bool), idx, logp, tail, 1.0, reverse=True)
    want = 0.5 * torch.log(torch.tensor(0.5 / 0.8)) + 0.5 * torch.log(torch.tensor(0.5 / 0.2))
    torch.testing.assert_close(got, want)


# ---- cached run == online run ---------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [{}, {"kd_mask": "all", "attn_block": "full", "divergence": "forward"}],
                         ids=["paper", "all_positions_full_block"])
def test_full_vocab_cache_gives_the_online_losses_and_gradients(world, teacher_ckpt, small_data, tmp_path, loss):
    _build(world, teacher_ckpt, small_data, tmp_path / "cache", loss=loss)
    torch.manual_seed(0)
    student, tok = load_spec(ModelSpec(preset="synth_student", tokenizer=str(world / "tokenizer")))
    teacher, _ = load_spec(ModelSpec(path=str(teacher_ckpt)), train=False)
    cfg = LossConfig(**loss)
    ds = LlavaDataset(small_data, world / "train" / "images", tok, student.config.image)
    # another order and batching than the cache pass: entries are found by record, not by position
    batch = Collator(tok.pad_id)([ds[i] for i in (9, 4, 0, 7, 2)])
    online = AlignKDModule(student, cfg, teacher.config.num_heads, teacher.config.hidden_size)
    cached = copy.deepcopy(online)
    cache = tc.TeacherCache(tmp_path / "cache")
    results = []
    for module, t_out in ((online, run_teacher(teacher, batch, cfg)), (cached, cache.teacher_outputs(batch, "cpu"))):
        terms = module(batch, t_out)
        terms["loss"].backward()
        results.append((terms, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}))
    (t_on, g_on), (t_ca, g_ca) = results
    for name in ("loss", "ce", "kd", "attn", "vision_all", "vision_focus"):
        assert t_on[name].item() > 0, name
        torch.testing.assert_close(t_ca[name], t_on[name], rtol=1e-5, atol=1e-7, msg=name)
    assert g_ca.keys() == g_on.keys()
    for name in g_on:
        torch.testing.assert_close(g_ca[name], g_on[name], rtol=1e-4, atol=1e-7, msg=name)


def test_training_from_the_cache_never_loads_the_teacher(world, teacher_ckpt, small_data, tmp_path, monkeypatch):
    from alignkd.distill import recipe

    _build(world, teacher_ckpt, small_data, tmp_path / "cache", k=32, dtype="float16")
    real = recipe.load_spec

    def student_only(spec, train=True):
        assert spec.preset == "synth_student", "the teacher was loaded"
        return real(spec, train)

    monkeypatch.setattr(recipe, "load_spec", student_only)
    for teacher in ({"path": str(teacher_ckpt)}, None):  # checked against the cache when named, optional otherwise
        cfg = _cfg(world, teacher_ckpt, small_data, tmp_path / f"run{teacher is None}", teacher=teacher,
                   teacher_cache=str(tmp_path / "cache"), max_steps=2)
        out = recipe.run(cfg, progress=False)
        final = json.loads((out / "train_summary.json").read_text())["final"]
        assert final["kd"] > 0 and final["attn"] > 0 and final["vision_all"] > 0


# ---- kill and resume ------------------------------------------------------------------------------------

def test_a_killed_pass_keeps_its_shards_and_redoes_the_rest(world, teacher_ckpt, small_data, tmp_path, monkeypatch):
    whole = _build(world, teacher_ckpt, small_data, tmp_path / "whole")
    real = tc._write_shard
    calls = []

    def killed_in_second_shard(*args):
        calls.append(args[6].name)
        if len(calls) == 2:
            args[6].with_name(args[6].name + ".tmp").write_bytes(b"half a shard")  # what a kill leaves
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(tc, "_write_shard", killed_in_second_shard)
    with pytest.raises(AlignKDError, match=r"interrupted: 1 of 4 shards are complete .*re-run the same command"):
        _build(world, teacher_ckpt, small_data, tmp_path / "cache")
    with pytest.raises(AlignKDError, match="incomplete"):
        tc.TeacherCache(tmp_path / "cache")
    # a shard renamed into place whose manifest update was lost: redone too
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    calls.clear()
    monkeypatch.setattr(tc, "_write_shard", lambda *a: calls.append(a[6].name) or real(*a))
    _build(world, teacher_ckpt, small_data, tmp_path / "cache")
    assert calls == ["shard-00001.safetensors", "shard-00002.safetensors", "shard-00003.safetensors"]
    assert manifest["shards"][0]["file"] == "shard-00000.safetensors"
    resumed = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert resumed["complete"] and [s["file"] for s in resumed["shards"]] == [s["file"] for s in whole["shards"]]
    assert not list((tmp_path / "cache").glob("*.tmp"))
    for shard in whole["shards"]:
        a, b = load_file(tmp_path / "whole" / shard["file"]), load_file(tmp_path / "cache" / shard["file"])
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    calls.clear()
    _build(world, teacher_ckpt, small_data, tmp_path / "cache")  # complete: nothing to redo
    assert calls == []


# ---- refusals ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache16(world, teacher_ckpt, small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("c16") / "cache"
    _build(world, teacher_ckpt, small_data, out, k=16, dtype="float16")
    return out


def _train_from(cache, world, teacher_ckpt, data_file, tmp_path, **extra):
    from alignkd.distill.recipe import run

    cfg = _cfg(world, teacher_ckpt, data_file, tmp_path / "run", teacher_cache=str(cache), max_steps=1, **extra)
    return run(cfg, progress=False)


def test_cache_of_another_teacher_is_refused(world, teacher_ckpt, small_data, cache16, tmp_path):
    tok_cfg = get_preset("synth_teacher")
    from alignkd.data.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(world / "tokenizer")
    tok_cfg.llm.vocab_size = tok.vocab_size
    torch.manual_seed(7)  # same architecture, same files and sizes, other weights
    other = save_checkpoint(MobileVLM(tok_cfg), tok, tmp_path / "other_teacher")
    with pytest.raises(AlignKDError, match=r"was built from another teacher .* rebuild it with `alignkd cache-teacher"):
        _train_from(cache16, world, other, small_data, tmp_path)


def test_cache_of_other_data_is_refused(world, teacher_ckpt, small_data, cache16, tmp_path):
    records = json.loads(small_data.read_text())
    other = tmp_path / "small.json"
    other.write_text(json.dumps(records[:-1]))
    with pytest.raises(AlignKDError, match=r"built from other training data than .*\(file_sha256 differ\)"):
        _train_from(cache16, world, teacher_ckpt, other, tmp_path)
    with pytest.raises(AlignKDError, match=r"\(template, max_length differ\)"):
        _train_from(cache16, world, teacher_ckpt, small_data, tmp_path,
                    data={"train": str(small_data), "image_root": str(world / "train" / "images"), "template": "plain",
                          "max_length": 1000})


def test_other_loss_settings_and_top_k_are_refused(world, teacher_ckpt, small_data, cache16, tmp_path):
    with pytest.raises(AlignKDError, match=r"holds outputs for loss.temperature=1.0 but the config asks for 2.0"):
        _train_from(cache16, world, teacher_ckpt, small_data, tmp_path, loss={"temperature": 2.0})
    # continuing a cache with another K would mix two caches in one folder
    with pytest.raises(AlignKDError, match=r"holds a teacher cache built with other settings \(top-k 16, not 64\); re-run with the settings"):
        _build(world, teacher_ckpt, small_data, cache16, k=64, dtype="float16")
    with pytest.raises(AlignKDError, match=r"--top-k 100000 must be between 1 and the teacher's vocabulary size"):
        _build(world, teacher_ckpt, small_data, tmp_path / "c2", k=100000)
    with pytest.raises(AlignKDError, match="holds no manifest.json"):
        _train_from(tmp_path, world, teacher_ckpt, small_data, tmp_path)


def test_extra_attention_terms_are_refused_with_a_cache(world, teacher_ckpt, small_data, cache16, tmp_path):
    """The cache holds the layer-0 block only: a last-layer term (loss.attn_extra) needs the teacher online."""
    with pytest.raises(AlignKDError, match=r"loss.attn_extra needs attention from other layers than layer 0, which teacher_cache"):
        _train_from(cache16, world, teacher_ckpt, small_data, tmp_path, loss={"attn_extra": [{"layer": -1, "block": "full"}]})


def test_a_changed_record_is_refused_at_its_entry(world, teacher_ckpt, small_data, cache16):
    _, tok = load_spec(ModelSpec(preset="synth_student", tokenizer=str(world / "tokenizer")))
    ds = LlavaDataset(small_data, world / "train" / "images", tok, get_preset("synth_student").image)
    batch = Collator(tok.pad_id)([ds[1]])
    batch["indices"] = [2]  # record 1's tokens looked up under record 2's key
    with pytest.raises(AlignKDError, match=r"record 2 of the training data does not match its entry"):
        tc.TeacherCache(cache16).teacher_outputs(batch, "cpu")


def test_a_batch_of_text_only_records_distils_online_and_from_the_cache(world, teacher_ckpt, small_data, cache16):
    # regression: the online teacher crashed capturing an empty text x vision block (no image, so no text rows)
    student, tok = load_spec(ModelSpec(preset="synth_student", tokenizer=str(world / "tokenizer")))
    teacher, _ = load_spec(ModelSpec(path=str(teacher_ckpt)), train=False)
    ds = LlavaDataset(small_data, world / "train" / "images", tok, student.config.image)
    batch = Collator(tok.pad_id)([ds[N_RECORDS - 1]])
    assert batch["images"] is None
    module = AlignKDModule(student, LossConfig(), teacher.config.num_heads, teacher.config.hidden_size)
    for t_out in (run_teacher(teacher, batch, LossConfig()), tc.TeacherCache(cache16).teacher_outputs(batch, "cpu")):
        terms = module(batch, t_out)
        terms["loss"].backward()
        assert terms["kd"].item() > 0 and terms["attn"].item() == 0 and terms["vision_all"].item() == 0


def test_cli_caches_then_distils_from_the_cache(world, teacher_ckpt, small_data, tmp_path):
    import subprocess
    import sys

    import yaml

    cli = lambda *a: subprocess.run([sys.executable, "-m", "alignkd", *a], capture_output=True, text=True, timeout=300)
    raw = synth_config(world, teacher_ckpt, tmp_path / "run", max_steps=1)
    raw["data"]["train"] = str(small_data)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    cache = tmp_path / "cache"
    done = cli("cache-teacher", "-c", str(path), "-o", str(cache), "--top-k", "16", "--samples-per-shard", "4")
    assert done.returncode == 0, done.stderr
    assert f"teacher_cache={cache}" in done.stdout and json.loads((cache / "manifest.json").read_text())["top_k"] == 16
    done = cli("distill", "-c", str(path), f"teacher_cache={cache}", "teacher=null")
    assert done.returncode == 0, done.stderr
    done = cli("cache-teacher", "-c", str(path), "-o", str(tmp_path / "run"), "--top-k", "16")  # a training run's folder
    assert done.returncode == 2 and "holds no teacher cache" in done.stderr and "Traceback" not in done.stderr
