"""The whole pipeline at toy size: world -> teacher -> both students -> ONNX export -> eval -> profile -> summary."""

import json

from alignkd.quickstart import QuickstartConfig, format_summary, quickstart


def test_quickstart_end_to_end_and_rerun_skips(tmp_path):
    cfg = QuickstartConfig(train_images=24, eval_questions=4, teacher_steps=2, student_steps=2, batch_size=4,
                           exports=(("onnx", "fp32"),), profile_runs=1, eval_max_new_tokens=4)
    summary = quickstart(tmp_path, cfg)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["verdict"] == summary["verdict"] and "Align-KD" in summary["verdict"]
    assert set(summary["accuracy"]) == {"untrained student", "teacher", "student CE-only", "student Align-KD", "Align-KD onnx-fp32"}
    for name, ev in summary["accuracy"].items():
        assert set(ev["table"]) == {"GQA", "SQA-IMG", "TextVQA", "MME-P", "MMBench", "POPE"}, name
        assert ev["average"] is not None
    assert summary["profile"]["Align-KD onnx-fp32"]["decode_tok_s"] > 0
    assert (tmp_path / "student_alignkd" / "student" / "config.json").is_file()
    assert (tmp_path / "bundles" / "onnx-fp32" / "manifest.json").is_file()
    assert "Accuracy on the synthetic suite" in format_summary(summary)
    # a second run finds every training and export step done and skips it
    again = quickstart(tmp_path, cfg)
    assert "train the toy teacher" not in again["step_seconds"] and "export onnx fp32" not in again["step_seconds"]
    assert again["accuracy"]["student Align-KD"]["table"] == summary["accuracy"]["student Align-KD"]["table"]
