"""The benchmark scripts still run (a few steps): they are what docs/ quote, so they must not rot."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toy_grounding_probe_runs_and_reports_a_curve(capsys):
    result = _load("toy_grounding").main(["--steps", "2", "--val", "6", "--eval-every", "1", "--question", "exist",
                                          "--objects", "3"])
    assert [point["step"] for point in result["curve"]] == [0, 1, 2]
    assert all(0.0 <= point["acc"] <= 1.0 for point in result["curve"])
    assert result["curve"][2]["val_loss"] < result["curve"][0]["val_loss"]  # two steps of training move the loss
    assert 0.5 <= result["majority_acc"] <= 1.0  # yes/no: the majority answer is at least half
    assert '"curve"' in capsys.readouterr().out  # one JSON object on stdout


def test_toy_grounding_probe_with_the_scene_as_text_has_no_image():
    result = _load("toy_grounding").main(["--steps", "2", "--val", "6", "--eval-every", "2", "--question", "exist",
                                          "--objects", "2", "--scene-as-text"])
    assert result["scene_as_text"] and [point["step"] for point in result["curve"]] == [0, 2]
    assert result["curve"][1]["val_loss"] < result["curve"][0]["val_loss"]


def test_toy_grounding_probe_with_several_turns_and_a_warmup():
    result = _load("toy_grounding").main(["--steps", "2", "--val", "6", "--eval-every", "2", "--question", "exist",
                                          "--objects", "2", "--turns", "3", "--warmup", "2", "--batch", "2"])
    assert result["turns"] == 3 and result["curve"][1]["val_loss"] < result["curve"][0]["val_loss"]


def test_compact_text_comparison_probe_balances_its_answers_and_learns(capsys):
    module = _load("toy_compare_text")
    import random

    answers = [module.example(random.Random(i), 2)[1] for i in range(400)]
    assert 0.4 < answers.count(module.YES) / len(answers) < 0.6
    tokens, _ = module.example(random.Random(0), 3)
    assert tokens[-1] == module.SEP and tokens[-4] == module.QMARK  # the filler follows the question
    result = module.main(["--steps", "2", "--val", "32", "--eval-every", "1", "--batch", "8", "--filler", "2"])
    assert [p["step"] for p in result["curve"]] == [0, 1, 2] and 0.4 < result["majority_acc"] < 0.7
    assert '"curve"' in capsys.readouterr().out


def test_toy_clip_patch_benchmark_runs_per_patch_size(capsys):
    result = _load("toy_clip_patch").main(["--patch", "8", "--steps", "2", "--scenes", "8", "--val", "6",
                                           "--eval-every", "1"])
    run = result["results"]["8"]
    assert run["grid"] == 12 and [p["step"] for p in run["curve"]] == [0, 1, 2]
    assert set(run["val"]) == set(run["majority"]) == {"color", "shape", "size"}
    assert all(0.0 <= v <= 1.0 for v in run["val"].values())
    assert '"results"' in capsys.readouterr().out


def test_real_shape_distill_benchmark_runs_tiny_on_cpu_with_the_plan_next_to_each_row(capsys):
    result = _load("distill_real_shape").main(["--tiny", "--steps", "1", "--seq", "40", "--only", "alignkd"])
    rows = {(r["variant"], r["strategy"], r["checkpointing"]): r for r in result["rows"]}
    assert len(rows) == 4 and result["tiny"] and result["device"] == "cpu"
    for key, row in rows.items():  # FSDP included: the layer-0 capture runs inside the layer's forward
        assert "error" not in row, (key, row)
        assert row["s_per_step"] > 0 and row["peak_gib"] > 0
        assert 0.5 < row["planned_over_measured"] < 2.0, row  # the tiny models' totals are weights, mostly
    assert '"rows"' in capsys.readouterr().out


def test_real_shape_distill_benchmark_refuses_in_one_line_without_a_gpu(capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the benchmark would run")
    with pytest.raises(SystemExit) as exit_info:
        _load("distill_real_shape").main([])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0 and "needs a CUDA GPU" in err and "--tiny" in err


def test_runtimes_benchmark_reports_every_row_and_ratios_from_the_rows(tmp_path, monkeypatch, capsys):
    """One round on the tiny fixture: eager is measured; the native runner (not built here) and llama.cpp (no
    bundle, no --export-missing) are explicit unavailable rows, and so is each ratio that needs them."""
    monkeypatch.setenv("ALIGNKD_RUNNER", str(tmp_path / "no-runner"))
    out = tmp_path / "rt.json"
    result = _load("runtimes").main(["--only", "eager:fp32", "executorch-native:fp32", "llama.cpp:f16", "--rounds", "1",
                                     "--runs", "1", "--warmup", "0", "--max-new-tokens", "4", "--workdir", str(tmp_path),
                                     "--bandwidth-mb", "32", "--bandwidth-repeats", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))  # the file holds every figure printed
    rows = {r["row"]: r for r in result["rows"]}
    eager = rows["eager:fp32"]
    assert eager["status"] == "ok" and len(eager["per_round"]) == 1 and eager["decode_tokens"] == 3
    assert all(eager[k] > 0 for k in ("load_s", "vision_encode_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "size_mb"))
    roof = eager["roofline"]
    assert roof["bytes_per_token"] == roof["weight_bytes"] + roof["kv_bytes"] > 0
    assert roof["roofline_tok_s"] == pytest.approx(result["bandwidth"]["median_gb_s"] * 1e9 / roof["bytes_per_token"])
    assert roof["decode_pct_of_roofline"] == pytest.approx(100 * eager["decode_tok_s"] / roof["roofline_tok_s"])
    assert len(result["bandwidth"]["samples_gb_s"]) == 4  # before and after the rounds
    assert rows["executorch-native:fp32"]["status"] == "unavailable" and "ALIGNKD_RUNNER" in rows["executorch-native:fp32"]["reason"]
    assert rows["llama.cpp:f16"]["status"] == "unavailable" and "gguf_f16" in rows["llama.cpp:f16"]["reason"]
    assert {(p["row"], p["against"], p["status"]) for p in result["ratios"]} == {
        ("eager:fp32", "llama.cpp:f16", "unavailable"), ("executorch-native:fp32", "llama.cpp:f16", "unavailable")}
    printed = capsys.readouterr().out
    assert "llama.cpp:f16 unavailable: no bundle gguf_f16/" in printed and "eager:fp32" in printed


def test_runtimes_ratios_are_quotients_of_the_rows_at_matched_bits():
    bench = _load("runtimes")

    def row(name, decode, prefill, vision, rss, size, status="ok"):
        runtime, scheme = name.split(":")
        figures = {"load_s": 1.0, "vision_encode_s": vision, "prefill_tok_s": prefill, "decode_tok_s": decode,
                   "peak_rss_mb": rss, "size_mb": size}
        return {"row": name, "runtime": runtime, "scheme": scheme, "status": status, **figures,
                "per_round": [figures, {**figures, "decode_tok_s": decode * 2}]}

    rows = [row("executorch:8da4w", 12.0, 180.0, 3.0, 2000.0, 1900.0), row("onnx:int8", 6.0, 50.0, 2.0, 900.0, 1500.0),
            row("llama.cpp:q4_k_s", 15.0, 90.0, 2.0, 1000.0, 800.0), row("llama.cpp:q4_0", 10.0, 60.0, 1.0, 500.0, 750.0),
            {"row": "llama.cpp:q8_0", "runtime": "llama.cpp", "scheme": "q8_0", "status": "unavailable", "reason": "x"}]
    pairs = {(p["row"], p["against"]): p for p in bench.ratios(rows)}
    assert set(pairs) == {("executorch:8da4w", "llama.cpp:q4_k_s"), ("executorch:8da4w", "llama.cpp:q4_0"),
                          ("onnx:int8", "llama.cpp:q8_0")}
    k_s = pairs[("executorch:8da4w", "llama.cpp:q4_k_s")]
    assert k_s["decode_speedup"] == pytest.approx(12 / 15) and k_s["prefill_speedup"] == pytest.approx(2.0)
    assert k_s["vision_encode_speedup"] == pytest.approx(2 / 3) and k_s["peak_rss_ratio"] == pytest.approx(2.0)
    assert k_s["size_ratio"] == pytest.approx(1900 / 800) and k_s["decode_speedup_by_round"] == pytest.approx([0.8, 0.8])
    assert pairs[("executorch:8da4w", "llama.cpp:q4_0")]["decode_speedup"] == pytest.approx(1.2)
    assert pairs[("onnx:int8", "llama.cpp:q8_0")] == {"row": "onnx:int8", "against": "llama.cpp:q8_0", "status": "unavailable",
                                                       "reason": "llama.cpp:q8_0 not measured in this run"}


@pytest.mark.parametrize("argv, says", [(["--only", "onnx:8da4w"], "row 'onnx:8da4w' is not one of"),
                                        (["--checkpoint", "nowhere"], "--checkpoint nowhere has no config.json"),
                                        (["--rounds", "0"], "need --rounds")])
def test_runtimes_benchmark_refuses_bad_input_in_one_line_before_measuring(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load("runtimes").main(argv + ["--workdir", str(tmp_path / "w")])
    assert exit_info.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # nothing exported, nothing written


def _tiny_world(tmp_path) -> Path:
    from alignkd.data.synth_world import SynthConfig, synthesize

    synthesize(tmp_path / "world", SynthConfig.tiny())
    return tmp_path / "world"


def test_quant_accuracy_compares_a_bundle_with_its_checkpoint_and_reuses_it(tmp_path, capsys):
    """Two bundles (ONNX fp32 and int8 of the tiny fixture), 2 questions per benchmark: the int8 row holds the
    compare's figures, the export's parity and the same against fp32; a second run reuses the bundles and the
    answers and gives the same figures."""
    pytest.importorskip("onnxruntime")
    module = _load("quant_accuracy")
    out = tmp_path / "qa"
    argv = [str(ROOT / "tests/fixtures/mobilevlm_official_tiny/checkpoint"), "--world", str(_tiny_world(tmp_path)),
            "--out", str(out), "--only", "onnx-fp32,onnx-int8", "--limit", "2", "--max-new-tokens", "4"]
    result = module.main(argv)
    assert json.loads(capsys.readouterr().out) == json.loads((out / "quant_accuracy.json").read_text()) == json.loads(json.dumps(result))
    full, row = result["bundles"]
    assert "error" not in row and "error" not in full, result
    assert full["class"] == "full" and full["tolerance"] == 0.0 and full["parity"]["exact_tokens"]
    assert (row["bundle"], row["scheme"], row["class"], row["tolerance"]) == ("onnx-int8", "int8", "int8", 0.5)
    assert set(row["per_benchmark"]) == set(module.BENCHES)
    assert row["delta"] == pytest.approx(row["average"] - result["reference"]["average"])
    assert row["met"] == (abs(row["delta"]) <= 0.5)
    assert 0.0 <= row["answer_agreement"] <= 1.0 and row["answers_compared"] >= 2 * len(module.BENCHES)
    assert 0.0 <= row["pope_yes_ratio"] <= 100.0
    manifest = json.loads((out / "bundles" / "onnx-int8" / "manifest.json").read_text())
    assert row["parity"]["token_agreement"] == manifest["parity"]["end_to_end"]["token_agreement"]
    assert row["parity"]["yes_no_answered"] == 0  # random weights answer no yes/no prompt: that floor does not bind
    assert row["parity"]["passes_floors_now"] is manifest["parity"]["passed"] is True and row["parity"]["misses"] == []
    assert row["vs_full_precision"]["bundle"] == "onnx-fp32"
    assert row["vs_full_precision"]["delta"] == pytest.approx(row["average"] - full["average"])
    stamp = (out / "bundles" / "onnx-int8" / "manifest.json").stat().st_mtime_ns
    again = module.main(argv)
    assert (out / "bundles" / "onnx-int8" / "manifest.json").stat().st_mtime_ns == stamp  # not exported again
    assert again["bundles"] == [full, row]


def test_quant_accuracy_refuses_a_teacher_of_another_world_and_unknown_bundles(tmp_path, capsys):
    import shutil

    module = _load("quant_accuracy")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ROOT / "tests/fixtures/mobilevlm_official_tiny/checkpoint", ckpt)
    (ckpt / "teacher_record.json").write_text(json.dumps({"world_hash": "0" * 64}))
    world = _tiny_world(tmp_path)
    for argv, says in (([str(ckpt), "--world", str(world), "--out", str(tmp_path / "qa")], "trained on another synthetic world"),
                       ([str(ckpt), "--world", str(world), "--only", "onnx-int3"], "unknown bundle(s) ['onnx-int3']")):
        with pytest.raises(SystemExit) as exit_info:
            module.main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and err.count("\n") == 0 and says in err, err
    assert not (tmp_path / "qa" / "bundles").exists()


def test_quant_layers_probe_quantises_the_named_linears_and_compares_answers(tmp_path, capsys):
    from torch import nn

    module = _load("quant_layers")
    ckpt = ROOT / "tests/fixtures/mobilevlm_official_tiny/checkpoint"
    result = module.main([str(ckpt), "--world", str(_tiny_world(tmp_path)), "--limit", "2", "--max-new-tokens", "3",
                          "--only", "lm_head int4 only,8da8w"])
    assert set(result["variants"]) == {"lm_head int4 only", "8da8w"} and '"variants"' in capsys.readouterr().out
    for row in result["variants"].values():
        assert set(row["same_answers"]) == set(module.BENCHES) and all(0 <= v <= 1 for v in row["same_answers"].values())
    from alignkd.models.checkpoint import load_checkpoint

    model = module.quantise(load_checkpoint(ckpt)[0], *module.VARIANTS["lm_head int4 only"])
    linears = {name: type(m.weight).__name__ for name, m in model.llm.named_modules() if isinstance(m, nn.Linear)}
    assert linears.pop("lm_head") != "Parameter" and set(linears.values()) == {"Parameter"}  # only the lm_head quantised


def test_real_shape_tokenizer_padding_keeps_ids_and_llama_cpp_takes_it(tmp_path):
    """The real-shape checkpoint's tokenizer is the tiny one padded with unused pieces to the vocabulary size:
    text keeps its ids, the padding is never produced, and a GGUF of a model with that vocabulary loads in llama.cpp."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignkd.data.tokenizer import Tokenizer
    from alignkd.export.gguf import write_language_model

    tiny = ROOT / "tests/fixtures/mobilevlm_official_tiny/checkpoint"
    _load("export_targets").pad_tokenizer(tiny, tmp_path / "tok", 600)
    ours, padded = Tokenizer.from_folder(tiny), Tokenizer.from_folder(tmp_path / "tok")
    assert (ours.vocab_size, padded.vocab_size) == (512, 600)
    assert padded.sp.IsUnused(512) and padded.sp.IsUnused(599) and not padded.sp.IsUnused(300)
    assert (padded.bos_id, padded.eos_id, padded.unk_id, padded.pad_id) == (ours.bos_id, ours.eos_id, ours.unk_id, ours.pad_id)
    texts = ("A chat between a curious user and an artificial intelligence assistant.", " leading space, 123 digits!",
             "USER: What colour is the largest object? ASSISTANT:", "ünïcödé and [PAD] brackets")
    for text in texts:
        assert padded.encode(text) == ours.encode(text), text
    with pytest.raises(ValueError, match="more than the 100 asked for"):
        _load("export_targets").pad_tokenizer(tiny, tmp_path / "small", 100)

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'alignkd[gguf]'")
    pytest.importorskip("gguf", reason="the gguf package is not installed: pip install 'alignkd[gguf]'")
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    from alignkd.errors import AlignKDError

    with pytest.raises(AlignKDError, match="the tokenizer has 512 pieces but the model's vocabulary is 600"):
        write_language_model(llm, ours, tmp_path / "unpadded.gguf", "unpadded")  # why the padding exists
    write_language_model(llm, padded, tmp_path / "model.gguf", "padded")
    cpp = llama_cpp.Llama(str(tmp_path / "model.gguf"), vocab_only=True, verbose=False)
    assert cpp.n_vocab() == 600
    for text in texts[:3]:
        assert cpp.tokenize(text.encode(), add_bos=True) == ours.encode(text), text


def test_real_shape_checkpoint_from_before_the_padding_gets_a_padded_tokenizer_in_place(tmp_path):
    """A workdir's real-shape checkpoint built earlier (512 pieces for more rows) is reused with its tokenizer padded,
    not rebuilt (6.7 GB) and not left for llama.cpp to refuse."""
    import shutil

    from alignkd.data.tokenizer import Tokenizer

    tiny = ROOT / "tests/fixtures/mobilevlm_official_tiny/checkpoint"
    old = tmp_path / "real_shape_ckpt"
    old.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny / name, old / name)
    (old / "config.json").write_text(json.dumps({"vocab_size": 640}))
    assert _load("export_targets").real_shape_checkpoint(old) == old
    padded = Tokenizer.from_folder(old)
    assert padded.vocab_size == 640 and padded.encode("USER: hi there") == Tokenizer.from_folder(tiny).encode("USER: hi there")
    assert sorted(p.name for p in old.iterdir()) == ["config.json", "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]


def test_runtimes_roofline_counts_the_int8_lm_head_of_a_4bit_bundle(tmp_path):
    """An 8da4w bundle whose manifest says `lm_head_bits: 8` reads its lm_head at a byte per weight (plus a scale
    per row); a bundle from before that fix (no `lm_head_bits`) at the body's int4 rate."""
    rt = _load("runtimes")
    d = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 4, "head_dim": 16, "ffn": 128, "vocab": 512}
    head, body = 512 * 64, rt.linear_weights(d) - 512 * 64
    for bits, head_per_weight in ((8, 1 + 4 / 64), (None, 0.5 + 2 / 32)):
        bundle = tmp_path / f"b{bits}"
        bundle.mkdir()
        quant = {"scheme": "8da4w", "group_size": 32, **({"lm_head_bits": bits} if bits else {})}
        (bundle / "manifest.json").write_text(json.dumps({"quant": quant}))
        got, source = rt.weight_bytes({"runtime": "executorch", "scheme": "8da4w", "model": bundle}, d)
        assert got == pytest.approx(body * (0.5 + 2 / 32) + head * head_per_weight)
        assert f"lm_head int{bits or 4}" in source


def test_decode_linears_lowers_every_linear_whole_and_times_it(tmp_path):
    """A tiny stack: every linear (7 per layer and the lm_head) is an XNNPACK delegate call and nothing is left to
    the portable kernels; the row carries its timing and the bytes its weights read."""
    bench = _load("decode_linears")
    out = tmp_path / "lin.json"
    result = bench.main(["--layers", "1", "--dims", "64", "128", "256", "--variants", "8da4w:32", "--warmup", "1",
                         "--iters", "3", "--bandwidth-mb", "16", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    (row,) = result["rows"]
    assert row["portable_ops"] == [] and row["delegate_calls"] >= 8
    assert row["ms_per_token"] > 0 and row["read_gb_s"] == pytest.approx(row["weight_bytes"] / row["ms_per_token"] / 1e6, rel=0.01)
    model = bench.linear_stack(1, 64, 128, 256)
    lm_head = 256 * 64 + 4 * 256  # int8 and a scale per row in both schemes
    assert row["weight_bytes"] == bench.weight_bytes(model, "8da4w", 32) == (57344 - 256 * 64) * (0.5 + 2 / 32) + lm_head
    assert bench.weight_bytes(model, "8da8w", 0) > row["weight_bytes"]


def test_toy_student_start_refuses_a_folder_of_students_trained_another_way(tmp_path):
    """Students are reused by folder, so a folder trained with other settings is refused before any work."""
    (tmp_path / "students.json").write_text(json.dumps({"student_steps": 300, "keep_grounding": True}))
    with pytest.raises(SystemExit, match="keep_grounding.*pass another --out"):
        _load("toy_student_start").main(["--out", str(tmp_path)])
    assert not (tmp_path / "world").exists()
