"""RUN/manifest.json: what a run was made with, where, and when."""

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch
import transformers
import yaml

from bertcls import __version__, manifest, runs
from bertcls.config import load_config
from conftest import make_config


def test_the_manifest_says_what_the_run_was_made_with(trained_run):
    found = json.loads((trained_run / runs.MANIFEST_FILE).read_text())
    config = yaml.safe_load((trained_run / runs.CONFIG_FILE).read_text())
    for split in ("train", "validation", "test"):
        path = Path(config["data"][split])
        assert found["data"][split] == {"source": str(path), "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert found["python"] == ".".join(map(str, sys.version_info[:3])) and found["command"] == sys.argv
    assert {key: found["libraries"][key] for key in ("bertcls", "torch", "transformers")} == \
        {"bertcls": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    assert found["host"]["cpu_count"] == os.cpu_count() and found["host"]["gpus"] == [] and found["host"]["cuda"] == torch.version.cuda
    assert found["git"] is None  # the config lies in a temporary folder, in no git work tree
    assert datetime.fromisoformat(found["started"]) <= datetime.fromisoformat(found["ended"])
    assert found["resumed_from"] is None and found["resumes"] == []
    assert runs.MANIFEST_FILE in runs.read_record(trained_run)["files"]


def test_a_resume_keeps_the_first_start_and_adds_its_own(tmp_path, toy_data):
    config = load_config(make_config(tmp_path, toy_data))
    run = Path(config.output_dir)
    run.mkdir()
    manifest.begin(run, config, None, "2030-01-01T00:00:00+00:00", None)
    first = manifest.read_manifest(run)
    (tmp_path / "train.csv").write_text("text,label\nchanged,positive\n")  # a --force resume on other data
    manifest.begin(run, config, None, "2030-01-02T00:00:00+00:00", run / "checkpoint-15")
    manifest.end(run)
    now = manifest.read_manifest(run)
    assert now["started"] == "2030-01-01T00:00:00+00:00" and now["data"] == first["data"] and now["ended"] is not None
    [resume] = now["resumes"]
    assert resume["started"] == "2030-01-02T00:00:00+00:00" and resume["resumed_from"] == "checkpoint-15"
    assert resume["data"]["train"]["sha256"] == hashlib.sha256(b"text,label\nchanged,positive\n").hexdigest() and "git" not in resume
    (run / runs.MANIFEST_FILE).write_text("{cut sh")  # unreadable: a resume starts a new one, saying where from
    manifest.begin(run, config, None, "2030-01-03T00:00:00+00:00", run / "checkpoint-30")
    assert {k: manifest.read_manifest(run)[k] for k in ("started", "resumed_from", "resumes")} == \
        {"started": "2030-01-03T00:00:00+00:00", "resumed_from": "checkpoint-30", "resumes": []}


def test_git_state_is_the_config_folders_commit_and_null_outside_a_work_tree(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    config = repo / "configs" / "run.yaml"
    config.write_text("seed: 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "first"]):
        subprocess.run(git + args, check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert manifest.git_state(config) == {"commit": commit, "dirty": False, "work_tree": str(repo)}
    (repo / "notes.txt").write_text("untracked files do not make it dirty")
    assert manifest.git_state(config)["dirty"] is False
    config.write_text("seed: 2\n")
    assert manifest.git_state(config)["dirty"] is True
    outside = tmp_path / "elsewhere" / "run.yaml"
    outside.parent.mkdir()
    assert manifest.git_state(outside) is None and manifest.git_state(None) is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))  # no git at all
    assert manifest.git_state(config) is None
