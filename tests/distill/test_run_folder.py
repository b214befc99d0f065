"""No lost work in the run folder: one run per output_dir, interrupted saves, disk full, history, safe resume."""

import errno
import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import alignkd.distill.checkpoint as checkpoint
import alignkd.distill.recipe as recipe
from alignkd.config import from_dict
from alignkd.distill.config import TrainConfig
from alignkd.distill.objective import AlignKDModule
from alignkd.distill.recipe import run
from alignkd.errors import AlignKDError

from conftest import synth_config


def _config(world, teacher_ckpt, out, **kw):
    kw.setdefault("teacher", None)  # CE-only: the run-folder logic is the same and twice as fast
    return from_dict(TrainConfig, synth_config(world, teacher_ckpt, out, **kw))


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()]


def _stop_at_forward(monkeypatch, call: int, exc=KeyboardInterrupt):
    """Raise `exc` in the `call`-th forward pass (with grad_accum 1: after call - 1 optimizer steps)."""
    forward, calls = AlignKDModule.forward, [0]

    def wrapped(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise exc()
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(AlignKDModule, "forward", wrapped)


# ---- 1. one run per output_dir ------------------------------------------------------------------------------

def test_new_run_into_a_finished_run_is_refused_then_overwrite_replaces_it(world, teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    run(_config(world, teacher_ckpt, out, max_steps=2), progress=False)
    (out / "notes.txt").write_text("mine")
    before = (out / "student" / "model.safetensors").read_bytes()
    with pytest.raises(AlignKDError, match=r"already holds a training run; pass --resume .* --overwrite"):
        run(_config(world, teacher_ckpt, out, max_steps=1, seed=5), progress=False)
    assert (out / "student" / "model.safetensors").read_bytes() == before and _steps(out) == [1, 2]
    run(_config(world, teacher_ckpt, out, max_steps=1, seed=5), progress=False, overwrite=True)
    assert _steps(out) == [1]  # the old run's history is gone, not appended to
    assert (out / "student" / "model.safetensors").read_bytes() != before
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_overwrite_refuses_a_folder_that_holds_no_training_run(world, teacher_ckpt, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    (out / "config.json").write_text('{"unrelated": true}')
    for overwrite in (False, True):
        with pytest.raises(AlignKDError, match="holds no alignkd training run"):
            run(_config(world, teacher_ckpt, out), progress=False, overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "holiday.jpg"]
    with pytest.raises(AlignKDError, match="--resume and --overwrite exclude each other"):
        run(_config(world, teacher_ckpt, tmp_path / "new"), resume=True, progress=False, overwrite=True)


def test_ctrl_c_names_a_checkpoint_that_exists_and_resume_keeps_one_history(world, teacher_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _stop_at_forward(monkeypatch, 3)
    with pytest.raises(AlignKDError, match=r"interrupted at step 2; saved .*step-2;") as err:
        run(_config(world, teacher_ckpt, out, max_steps=4, keep_checkpoints=1), progress=False)
    saved = Path(str(err.value).split("saved ")[1].split(";")[0])
    assert (saved / "train_state.json").is_file() and _steps(out) == [1, 2]
    monkeypatch.undo()
    run(_config(world, teacher_ckpt, out, max_steps=4, keep_checkpoints=1), resume=True, progress=False)
    assert _steps(out) == [1, 2, 3, 4]


def test_ctrl_c_after_resuming_an_earlier_checkpoint_is_what_resume_picks(world, teacher_ckpt, tmp_path, monkeypatch):
    """Resuming step-2 while step-4 exists, then Ctrl-C at step 3: --resume must continue step-3, not the old step-4."""
    out = tmp_path / "run"
    run(_config(world, teacher_ckpt, out, max_steps=5, save_every=2, keep_checkpoints=3), progress=False)
    _stop_at_forward(monkeypatch, 2)
    with pytest.raises(AlignKDError, match=r"saved .*step-3;"):
        run(_config(world, teacher_ckpt, out, max_steps=5, save_every=2, keep_checkpoints=3),
            resume=str(out / "checkpoints" / "step-2"), progress=False)
    assert checkpoint.latest_checkpoint(out).name == "step-3"
    assert _steps(out) == [1, 2, 3]


# ---- 2. interrupted saves and a full disk --------------------------------------------------------------------

def test_leftover_tmp_checkpoint_is_ignored_removed_and_reported(world, teacher_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = lambda: _config(world, teacher_ckpt, out, max_steps=4, save_every=2)  # noqa: E731
    run(cfg(), progress=False)
    partial = out / "checkpoints" / "step-35.tmp"
    shutil.copytree(out / "checkpoints" / "step-2" / "state", partial / "state")  # a kill -9 mid-save
    no_marker = out / "checkpoints" / "step-3"
    shutil.copytree(out / "checkpoints" / "step-2" / "student", no_marker / "student")
    capsys.readouterr()
    run(cfg(), resume=True, progress=False)
    printed = capsys.readouterr().out
    assert "ignored and removed" in printed and "step-35.tmp" in printed and "step-3:" in printed
    assert "resumed from" in printed and "step-2 at step 2" in printed
    assert not partial.exists() and not no_marker.exists()
    assert _steps(out) == [1, 2, 3, 4]  # history cut back to the resumed step: no duplicate lines


def test_second_ctrl_c_during_the_save_leaves_no_partial_checkpoint(world, teacher_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "run"
    save, calls = checkpoint.save_checkpoint, [0]

    def interrupted_save(model, tok, folder, *a, **kw):
        calls[0] += 1
        if calls[0] == 2:  # the save Ctrl-C asked for (the first one is step-2's)
            raise KeyboardInterrupt
        return save(model, tok, folder, *a, **kw)

    monkeypatch.setattr(checkpoint, "save_checkpoint", interrupted_save)
    _stop_at_forward(monkeypatch, 4)
    with pytest.raises(AlignKDError, match=r"interrupted again while saving step 3; the last complete checkpoint is .*step-2,"):
        run(_config(world, teacher_ckpt, out, max_steps=5, save_every=2), progress=False)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-2"]


def test_resume_from_an_interrupted_save_names_the_complete_one(world, teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    run(_config(world, teacher_ckpt, out, max_steps=3, save_every=2), progress=False)
    partial = out / "checkpoints" / "step-3.tmp"
    partial.mkdir()
    with pytest.raises(AlignKDError, match=r"not a complete checkpoint.*latest complete one is .*step-2"):
        run(_config(world, teacher_ckpt, out, max_steps=3), resume=str(partial), progress=False)


def _fake_free(monkeypatch, free_when):
    """shutil.disk_usage reporting 1 kB free once `free_when(path)` is true."""
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")

    def disk_usage(path):
        u = real(path)
        return usage(u.total, u.used, 1000 if free_when(Path(path)) else u.free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def test_save_that_cannot_fit_is_refused_before_writing(world, teacher_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fake_free(monkeypatch, lambda p: (out / "checkpoints" / "step-1").exists())
    with pytest.raises(AlignKDError, match=r"^disk full: could not save .*step-2 \(it needs about .* MB, 0.0 MB free\).*"
                                           r"--resume \(last complete checkpoint: .*step-1\)$"):
        run(_config(world, teacher_ckpt, out, max_steps=4, save_every=1, keep_checkpoints=1), progress=False)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"]
    assert (out / "checkpoints" / "step-1" / "train_state.json").is_file()


@pytest.mark.parametrize("save_every,what", [(1, "a checkpoint"), (None, "the trained student")])
def test_run_that_could_not_save_is_refused_before_training(world, teacher_ckpt, tmp_path, monkeypatch, save_every, what):
    out = tmp_path / "run"
    _fake_free(monkeypatch, lambda p: True)
    with pytest.raises(AlignKDError, match=rf"^disk full: {what} of this run needs about .* MB but .*run has 0.0 MB free; free"):
        run(_config(world, teacher_ckpt, out, max_steps=2, save_every=save_every), progress=False)
    assert not (out / "history.jsonl").exists()  # nothing trained


ENOSPC = [
    lambda: SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    lambda: OSError(errno.ENOSPC, "No space left on device"),
    lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save's
]


@pytest.mark.parametrize("error", ENOSPC, ids=["safetensors", "oserror", "torch-save"])
def test_disk_full_mid_save_is_one_line_and_keeps_the_last_checkpoint(world, teacher_ckpt, tmp_path, monkeypatch, error):
    out = tmp_path / "run"
    save, calls = checkpoint.save_checkpoint, [0]

    def failing_save(model, tok, folder, *a, **kw):
        calls[0] += 1
        if calls[0] == 2:
            Path(folder).mkdir(parents=True)
            (Path(folder) / "model.safetensors").write_bytes(b"partial")
            raise error()
        return save(model, tok, folder, *a, **kw)

    monkeypatch.setattr(checkpoint, "save_checkpoint", failing_save)
    # torch's writer reports a full disk only as "unexpected pos": the disk is looked at (full at that moment)
    _fake_free(monkeypatch, lambda p: (out / "checkpoints" / "step-2.tmp" / "student").exists())
    with pytest.raises(AlignKDError, match=r"^disk full: could not save .*step-2 .*last complete checkpoint: .*step-1\)$"):
        run(_config(world, teacher_ckpt, out, max_steps=4, save_every=1, keep_checkpoints=1), progress=False)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"]


def test_space_estimate_covers_what_a_save_writes(world, teacher_ckpt, tmp_path, monkeypatch):
    needs, real = {}, checkpoint.check_space

    def spy(accelerator, folder, need, target, output_dir):
        needs[target.name] = need
        return real(accelerator, folder, need, target, output_dir)

    monkeypatch.setattr(checkpoint, "check_space", spy)
    out = run(_config(world, teacher_ckpt, tmp_path / "run", teacher={"path": str(teacher_ckpt)}, max_steps=2,
                      save_every=1), progress=False)
    for name, folder in (("step-1", out / "checkpoints" / "step-1"), ("student", out / "student")):
        written = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert written <= needs[name] < 2 * written + 8 * 2**20, (name, written, needs[name])


# ---- 3. history as training goes ---------------------------------------------------------------------------

def test_killed_run_keeps_its_history(world, teacher_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _stop_at_forward(monkeypatch, 4, exc=SystemExit)  # no chance to save anything, like kill -9
    with pytest.raises(SystemExit):
        run(_config(world, teacher_ckpt, out, max_steps=6), progress=False)
    assert _steps(out) == [1, 2, 3]


# ---- 7. resuming never unpickles ------------------------------------------------------------------------------

class _Planted:
    """Unpickling this creates a file: proof that code from the checkpoint ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def saved_run(world, teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    run(_config(world, teacher_ckpt, out, max_steps=3, save_every=2), progress=False)
    return out, out / "checkpoints" / "step-2"


def test_checkpoint_holds_no_pickle(saved_run):
    _, ckpt = saved_run
    assert not list(ckpt.rglob("*.pkl"))
    assert json.loads((ckpt / "scheduler.json").read_text())["last_epoch"] == 2
    assert len(json.loads((ckpt / "state" / "rng_0.json").read_text())["torch"]) > 0


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl"])
def test_planted_pickle_is_refused_not_run(world, teacher_ckpt, saved_run, tmp_path, name):
    out, ckpt = saved_run
    marker = tmp_path / "pwned"
    torch.save(_Planted(marker), ckpt / "state" / name)
    with pytest.raises(AlignKDError, match=rf"{name} in .* pickle files, which alignkd does not load because unpickling can run code"):
        run(_config(world, teacher_ckpt, out, max_steps=3, save_every=2), resume=True, progress=False)
    assert not marker.exists()


def test_tampered_optimizer_state_is_refused_not_run(world, teacher_ckpt, saved_run, tmp_path):
    out, ckpt = saved_run
    marker = tmp_path / "pwned"
    torch.save({"state": {0: _Planted(marker)}, "param_groups": []}, ckpt / "state" / "optimizer.bin")
    with pytest.raises(AlignKDError, match="holds objects that are not plain tensors and is not loaded for safety"):
        run(_config(world, teacher_ckpt, out, max_steps=3, save_every=2), resume=True, progress=False)
    assert not marker.exists()


def test_old_checkpoint_without_json_schedule_is_refused(world, teacher_ckpt, saved_run):
    out, ckpt = saved_run
    (ckpt / "scheduler.json").unlink()
    with pytest.raises(AlignKDError, match="no scheduler.json .*older alignkd"):
        run(_config(world, teacher_ckpt, out, max_steps=3, save_every=2), resume=True, progress=False)


# ---- 11. an unwritable output_dir fails before any model is loaded -------------------------------------------

def test_unwritable_output_dir_is_one_line_before_training(world, teacher_ckpt, tmp_path, monkeypatch):
    def no_models(*a, **kw):
        raise AssertionError("models were loaded before the output folder was checked")

    monkeypatch.setattr(recipe, "load_spec", no_models)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(AlignKDError, match=r"output_dir .*a_file/run is not writable"):
        run(_config(world, teacher_ckpt, blocker / "run"), progress=False)
    import alignkd.distill.rundir as rundir

    def denied(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(rundir.tempfile, "TemporaryFile", denied)
    with pytest.raises(AlignKDError, match=r"output_dir .*locked is not writable \(Permission denied\); choose a folder"):
        run(_config(world, teacher_ckpt, tmp_path / "locked"), progress=False)
