import os

import pytest

from bertcls import atomic, checkpoint, runs
from bertcls.errors import RunError


def test_a_fresh_start_clears_only_what_bertcls_wrote(tmp_path):
    ours = [".config.yaml.abc123.tmp", ".model.tmp-1234", ".model.old-99", ".checkpoint-12.tmp-ab", ".checkpoint-3.old-x",
            "config.yaml", "log.jsonl", "model"]
    theirs = [".modelrc", ".config.yaml.bak", "notes.txt", "checkpoint-notes"]
    runs.record_files(tmp_path, "config.yaml", "log.jsonl")  # what an earlier run recorded writing
    for name in ours + theirs:
        (tmp_path / name).mkdir() if "-" in name or name == "model" else (tmp_path / name).write_text("x")
    runs.prepare_run_dir(tmp_path, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs + [runs.RECORD_FILE])


def test_a_resume_clears_the_temporaries_a_killed_run_left_in_model_and_reports(tmp_path):
    graph, figure = f"{runs.MODEL_DIR}/{runs.TORCHSCRIPT_FILE}", "reports/test/roc_curve.png"
    runs.record_files(tmp_path, graph, figure)
    left = [f"{runs.MODEL_DIR}/.{runs.TORCHSCRIPT_FILE}.k2j4.tmp", "reports/test/.roc_curve.png.9x.tmp"]
    theirs = [f"{runs.MODEL_DIR}/.notes.txt.1.tmp", f"{runs.MODEL_DIR}/{runs.TORCHSCRIPT_FILE}.tmp", "reports/test/mine.png"]
    for name in left + theirs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    runs.prepare_run_dir(tmp_path, overwrite=False, resuming=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file() and p.name != runs.RECORD_FILE) == sorted(theirs)


def test_an_unfinished_run_with_checkpoints_is_not_silently_restarted(tmp_path):
    runs.record_files(tmp_path, f"checkpoint-7/{runs.CHECKPOINT_STATE}")
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-7" / runs.CHECKPOINT_STATE).write_text("{}")
    with pytest.raises(RunError, match=r"holds an unfinished run \(checkpoint-7\); pass --resume"):
        runs.prepare_run_dir(tmp_path, overwrite=False)
    runs.prepare_run_dir(tmp_path, overwrite=False, resuming=True)
    assert runs.checkpoints(tmp_path) == [tmp_path / "checkpoint-7"]
    runs.prepare_run_dir(tmp_path, overwrite=True)
    assert runs.checkpoints(tmp_path) == []


@pytest.mark.parametrize("left", ["model", "checkpoint-53"])
def test_an_unfinished_run_without_a_checkpoint_to_resume_keeps_what_a_fresh_start_would_delete(tmp_path, left):
    """Killed before its first checkpoint, a run still holds the best model so far; a checkpoint without its state.json
    cannot be resumed from. Neither goes without --overwrite, which takes the damaged checkpoint too."""
    file = f"{left}/{runs.CHECKPOINT_WEIGHTS if left.startswith('checkpoint') else 'model.safetensors'}"
    runs.record_files(tmp_path, file)
    (tmp_path / left).mkdir()
    (tmp_path / file).write_text("weights")
    with pytest.raises(RunError) as refused:
        runs.prepare_run_dir(tmp_path, overwrite=False)
    named = "model/" if left == "model" else left
    assert str(refused.value) == (f"output_dir {tmp_path} holds an unfinished run with no checkpoint to resume from, and a fresh start "
                                  f"would delete its {named}; pass --overwrite to start over, or choose another output_dir")
    if left.startswith("checkpoint"):
        with pytest.raises(RunError, match=rf"--resume: {tmp_path / left} has no {runs.CHECKPOINT_STATE} \(deleted, or lost\)"):
            checkpoint.find(tmp_path, True, {}, "", force=False)
    assert (tmp_path / file).read_text() == "weights"
    runs.prepare_run_dir(tmp_path, overwrite=True)
    assert not (tmp_path / left).exists()


def test_checkpoints_are_ordered_by_step_and_need_their_state(tmp_path):
    for name in ("checkpoint-10", "checkpoint-9", "checkpoint-x", "checkpoint-11"):
        (tmp_path / name).mkdir()
        if name != "checkpoint-11":
            (tmp_path / name / runs.CHECKPOINT_STATE).write_text("{}")
    assert [p.name for p in runs.checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10"]


def test_publish_dir_replaces_a_folder_whole(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "old.bin").write_text("old")
    tmp = atomic.temp_dir_for(dest)
    (tmp / "new.bin").write_text("new")
    runs.publish_dir(tmp, dest)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and [p.name for p in dest.iterdir()] == ["new.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask  # like mkdir, not mkdtemp's 0700


def test_publish_dir_never_leaves_the_folder_missing(tmp_path, monkeypatch):
    """Killed after its first rename, a reader sees the new folder (swapped in at once), never none."""
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "old.bin").write_text("old")
    tmp = atomic.temp_dir_for(dest)
    (tmp / "new.bin").write_text("new")
    replace = os.replace

    def killed_after(src, dst):
        replace(src, dst)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(runs.os, "replace", killed_after)
    with pytest.raises(KeyboardInterrupt):
        runs.publish_dir(tmp, dest)
    assert [p.name for p in dest.iterdir()] == ["new.bin"]


def test_a_folder_moved_aside_by_a_kill_is_put_back_on_resume(tmp_path):
    # killed between publish_dir's two renames: model/ was moved aside, the new one not yet in place
    runs.record_files(tmp_path, "model/model.safetensors")
    (tmp_path / ".model.old-1a2b").mkdir()
    (tmp_path / ".model.old-1a2b" / "model.safetensors").write_text("weights")
    runs.prepare_run_dir(tmp_path, overwrite=False, resuming=True)
    assert (tmp_path / "model" / "model.safetensors").read_text() == "weights"


def test_filling_without_hard_links_takes_back_a_file_copied_in_part(tmp_path, monkeypatch):
    import errno
    import shutil

    def no_links(source, target):  # vfat, exFAT, SMB
        raise OSError(errno.EPERM, "Operation not permitted")

    def disk_fills(source, target):
        with open(target, "w") as f:
            f.write("half of it")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp_path / "mine.txt").write_text("kept")
    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(shutil, "copy2", disk_fills)
    with pytest.raises(RunError, match="No space left on device"), atomic.filling(tmp_path, "--output") as folder:
        (folder / "metrics.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_a_search_or_a_run_without_a_model_is_named_as_such(tmp_path):
    search, run = tmp_path / "search", tmp_path / "run"
    search.mkdir()
    (search / runs.SEARCH_FILE).write_text("{}")
    with pytest.raises(RunError, match=rf"^--model {search} is a search \(bertcls tune\), not a run; give one of its runs: "):
        runs.model_dir(search)
    run.mkdir()
    runs.record_files(run, "log.jsonl")  # started, stopped before its first evaluation
    with pytest.raises(RunError, match=rf"^--model {run} is a run that has saved no model yet .*\(bertcls train CONFIG\), or give"):
        runs.model_dir(run)
    (run / "checkpoint-5").mkdir()
    (run / "checkpoint-5" / runs.CHECKPOINT_STATE).write_text("{}")
    with pytest.raises(RunError, match=r"bertcls train CONFIG --resume\), or give another run$"):
        runs.model_dir(run)
    (run / runs.METRICS_FILE).write_text("{}")  # finished, its model/ removed since, as tune --keep best does to losing trials
    with pytest.raises(RunError, match=rf"^--model {run} is a finished run whose model/ was removed \(bertcls tune --keep best"):
        runs.model_dir(run)
