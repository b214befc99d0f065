"""The real CLI in a subprocess: instant --help, generate --json parity, one clear error per bad input."""

import json
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "alignkd.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_stages_without_importing_torch():
    code = "import sys, alignkd.cli; assert 'torch' not in sys.modules, 'torch imported at CLI import'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    out = run("--help")
    assert out.returncode == 0
    for stage in ("distill", "export", "profile", "eval", "generate"):
        assert stage in out.stdout


def test_generate_json_matches_official(fixture_dir, expected):
    case = expected["cases"][0]
    out = run("generate", "--model", str(fixture_dir / "checkpoint"), "--image", str(fixture_dir / case["image_file"]),
              "--prompt", case["question"], "--max-new-tokens", "8", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["output_ids"] == case["generate"]["new_token_ids"]
    assert result["input_ids"] == case["input_ids"]
    assert result["text"] == case["generate"]["decoded_text"].strip()


@pytest.mark.parametrize("extra,message", [
    (["--prompt", "<image>\nwhat?"], "no image was given"),
    (["--prompt", "what?", "--image", "IMG", "--raw-prompt"], "no <image> placeholder"),
    (["--prompt", "what?", "--image", "BROKEN"], "cannot decode image"),
    (["--prompt", "<image>\n<image>\nwhat?", "--image", "IMG"], "2 <image> placeholders but 1 images"),
])
def test_generate_bad_input(fixture_dir, tmp_path, extra, message):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    subst = {"IMG": str(fixture_dir / "images" / "img0.png"), "BROKEN": str(broken)}
    out = run("generate", "--model", str(fixture_dir / "checkpoint"), *[subst.get(a, a) for a in extra])
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_generate_missing_checkpoint(tmp_path):
    out = run("generate", "--model", str(tmp_path / "none"), "--prompt", "hi")
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_export_bad_target_and_existing_output(fixture_dir, tmp_path):
    out = run("export", str(fixture_dir / "checkpoint"), "--target", "tflite", "-o", str(tmp_path / "b"))
    assert out.returncode == 2 and "valid targets: executorch, onnx, coreml, gguf" in out.stderr
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "x").write_text("x")
    out = run("export", str(fixture_dir / "checkpoint"), "--target", "onnx", "-o", str(tmp_path / "exists"))
    assert out.returncode == 2 and "--overwrite" in out.stderr


def test_pretrain_vision_names_a_missing_world_and_keeps_a_finished_tower(tmp_path):
    out = run("data", "pretrain-vision", "--world", str(tmp_path / "no-world"), "--out", str(tmp_path / "vision"))
    assert out.returncode != 0 and "world.json not found" in out.stderr and "alignkd data synth" in out.stderr
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "report.json").write_text("{}")
    out = run("data", "pretrain-vision", "--world", str(tmp_path / "no-world"), "--out", str(tmp_path / "done"))
    assert out.returncode != 0 and "already holds a pre-trained tower" in out.stderr
    assert (tmp_path / "done" / "report.json").read_text() == "{}"  # nothing overwritten


def test_init_student_builds_a_checkpoint_and_refuses_an_existing_output(fixture_dir, tmp_path, tiny_llama_folder, tiny_clip_folder):
    llm, clip = tiny_llama_folder(tmp_path / "llama", fixture_dir / "checkpoint"), tiny_clip_folder(tmp_path / "clip")
    out = run("init-student", "--llm", str(llm), "--vision-tower", str(clip), "--projector", "ldpv2", "-o", str(tmp_path / "student"), "--seed", "5")
    assert out.returncode == 0, out.stderr
    assert "fresh ldpnetv2 (seed 5)" in out.stdout
    again = run("init-student", "--llm", str(llm), "--vision-tower", str(clip), "-o", str(tmp_path / "student"))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: -o") and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr
