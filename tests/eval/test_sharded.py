"""`accelerate launch -m alignkd eval`: questions sharded over processes, merged in question order, same answers.

    python -m pytest tests/eval/test_sharded.py -q
"""

import json
import os
import subprocess
import sys

from alignkd.eval.common import answer_record, read_answers
from alignkd.eval.registry import get_benchmark
from alignkd.eval.run import evaluate

BENCHES = ["pope", "mme"]  # MME shares a question_id between an image's two questions: the merge must keep both
LIMIT, CAP = 5, 2  # an odd count: the two shards differ in length


def _answers(path):
    return [(r["question_id"], r.get("round_id"), r["prompt"], r["text"], r["model_id"]) for r in read_answers(path)]


def test_two_processes_give_the_single_process_answers_in_question_order(suite, model, tmp_path):
    single = evaluate(model, BENCHES, suite, tmp_path / "one", limit=LIMIT, max_new_tokens=CAP, progress=False, model_id="m")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu, not --cpu: accelerate starts one process for `--cpu --num_processes 2` (it wants mpirun for more);
    # torch.distributed.run starts two, and without a GPU they talk over gloo
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                           "-m", "alignkd", "eval", str(model), "--bench", ",".join(BENCHES), "--data", str(suite),
                           "--out", str(tmp_path / "two"), "--limit", str(LIMIT), "--max-new-tokens", str(CAP), "--json"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = json.loads(done.stdout.strip().splitlines()[-1])  # one JSON object: only the main process prints
    assert sharded["processes"] == 2
    for name in BENCHES:
        one, two = (_answers(tmp_path / sub / f"{name}.jsonl") for sub in ("one", "two"))
        model_ids = {a[-1] for a in two}
        assert len(two) == LIMIT and model_ids == {model.resolve().name}
        assert [a[:-1] for a in two] == [a[:-1] for a in one]  # same answers, same (question) order
        assert sharded["benchmarks"][name]["value"] == single["benchmarks"][name]["value"]
        assert sharded["benchmarks"][name]["generated"] == LIMIT
        assert not list((tmp_path / "two").glob(f"{name}.part*"))  # shards merged and removed


def test_a_killed_sharded_run_resumes_from_its_shards(suite, model, tmp_path, monkeypatch):
    """Shards of a killed 2-process run (one with a torn last line) are merged; only the rest is generated."""
    from alignkd.runtime import generation

    out = tmp_path / "resume"
    evaluate(model, ["pope"], suite, out, limit=1, max_new_tokens=CAP, progress=False, model_id="m")  # claims out/
    questions = get_benchmark("pope").load_questions(suite)[:7]
    (out / "pope.jsonl").unlink()
    lines = [json.dumps(answer_record(q, "yes", "m")) for q in questions]
    (out / "pope.part0of2.jsonl").write_text("\n".join(lines[2:5:2]) + "\n")  # questions 2 and 4
    (out / "pope.part1of2.jsonl").write_text(lines[3] + "\n" + lines[5][:20])  # 3, then a torn write of 5
    calls = {"n": 0}
    real = generation.generate
    monkeypatch.setattr(generation, "generate", lambda *a, **k: calls.__setitem__("n", calls["n"] + 1) or real(*a, **k))
    result = evaluate(model, ["pope"], suite, out, limit=7, max_new_tokens=CAP, progress=False, model_id="m")
    assert calls["n"] == 7 - 3 and result["benchmarks"]["pope"]["reused"] == 3
    merged = read_answers(out / "pope.jsonl")
    assert [r["question_id"] for r in merged] == [q.question_id for q in questions]
    assert [merged[i]["text"] for i in (2, 3, 4)] == ["yes"] * 3 and not list(out.glob("pope.part*"))
