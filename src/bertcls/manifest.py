"""The run's manifest: the config and the machine in, RUN/manifest.json out, saying what a run was made with.

    started, ended      ISO 8601 UTC; ended is null until the run finishes
    resumed_from        null, or the checkpoint this session continued from (a resumed run without a manifest)
    command             the command line (sys.argv)
    python, libraries   the versions of Python, bertcls and the libraries it trains with (optional ones when installed)
    host                OS, CPU model and its native bf16 instructions, cores, and the CUDA GPUs
    data                per data key (train, validation, test): the source as configured; for a local
                        file also its size and sha256 (hashing runs at about 1.2 GB/s on one core)
    git                 the commit, and whether tracked files changed since (as `git describe --dirty`), of
                        the git work tree the config file lies in; null when it lies in none, or git is missing
    resumes             one entry per `train --resume`: the fields from started to host, data or git where
                        they differ from the first session's, and config_changes, the config keys that differ
                        from the checkpoint's (`training.epochs: 3 -> 4`, as --force or a harmless key allowed)

The main process writes it after claiming the run folder (`begin`) and completes it at the end (`end`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertcls import __version__, atomic, machine, runs

if TYPE_CHECKING:  # pydantic: only for the annotation
    from bertcls.config import Config, DataConfig

# The libraries a run trains with (distribution names); each is in the manifest, null if not installed.
KEY_LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "datasets", "huggingface_hub",
                 "scikit-learn", "numpy", "pydantic")
# Extras and trackers: listed only when installed.
OPTIONAL_LIBRARIES = ("onnx", "onnxruntime", "onnxscript", "cleanlab", "fastapi", "uvicorn", "tensorboard", "mlflow", "wandb")
# A git command that takes longer (a huge or networked work tree) is given up on: the field is null.
GIT_TIMEOUT_S = 5


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def begin(run: Path, config: Config, config_file: str | Path | None, started: str, resumed_from: Path | None,
          config_changes: list[str] | None = None) -> None:
    """Write the manifest of a run starting now, or add this session to it when resuming (with `config_changes`,
    `key: old -> new` for each key that differs from the checkpoint's config)."""
    path = Path(run) / runs.MANIFEST_FILE
    earlier = read_manifest(run) if resumed_from else None
    session = {"started": started, "resumed_from": resumed_from.name if resumed_from else None, **environment()}
    made_of = {"data": data_files(config.data), "git": git_state(config_file)}
    if earlier is None:
        manifest = {**session, "ended": None, **made_of, "resumes": []}
    else:
        changed = {key: value for key, value in made_of.items() if value != earlier.get(key)}
        if config_changes:
            changed["config_changes"] = config_changes
        manifest = {**earlier, "ended": None, "resumes": [*earlier.get("resumes", []), {**session, **changed}]}
    runs.record_files(run, runs.MANIFEST_FILE)
    atomic.write_json(path, manifest)


def end(run: Path) -> None:
    """Note the end time in the manifest `begin` wrote (if it is still there)."""
    manifest = read_manifest(run)
    if manifest is not None:
        atomic.write_json(Path(run) / runs.MANIFEST_FILE, {**manifest, "ended": utc_now()})


def read_manifest(run: Path) -> dict[str, Any] | None:
    """The run's manifest, or None where there is none or it cannot be read."""
    try:
        manifest = json.loads((Path(run) / runs.MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def environment() -> dict[str, Any]:
    """The command line, and the versions and host this process runs with."""
    return {"command": list(sys.argv), "python": platform.python_version(), "libraries": library_versions(), "host": host()}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"bertcls": __version__}
    for name in (*KEY_LIBRARIES, *OPTIONAL_LIBRARIES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in KEY_LIBRARIES:
                versions[name] = None
    return versions


def host() -> dict[str, Any]:
    """OS, CPU (model, native bf16 instructions, cores) and, with CUDA, each GPU's name and memory."""
    import torch  # already loaded by training; the GPUs are torch's to name

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    found = {"os": platform.platform(), "hostname": platform.node(), "cpu": cpu_model(), "cpu_bf16": machine.cpu_bf16_flags(),
             "cpu_count": os.cpu_count(), "usable_cpus": usable, "cuda": torch.version.cuda, "gpus": []}
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found["gpus"].append({"name": props.name, "memory_mb": round(props.total_memory / 2**20),
                                  "capability": f"{props.major}.{props.minor}"})
    return found


def cpu_model() -> str | None:
    """The CPU's model name as /proc/cpuinfo gives it (Linux), else what the platform says."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None
    line = next((line for line in text.splitlines() if line.startswith("model name")), "")
    return line.partition(":")[2].strip() or platform.processor() or None


def data_files(cfg: DataConfig) -> dict[str, dict[str, Any]]:
    """Each configured data source; a local file (config.py made its path absolute) with its size and sha256."""
    found = {}
    for key in ("train", "validation", "test"):
        source = getattr(cfg, key)
        if source is None:
            continue
        path = Path(source)
        local = path.is_absolute() and path.is_file()
        found[key] = {"source": source, "bytes": path.stat().st_size, "sha256": sha256_file(path)} if local else {"source": source, "sha256": None}
    return found


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def git_state(config_file: str | Path | None) -> dict[str, Any] | None:
    """The commit of the git work tree holding `config_file`, and whether its tracked files changed; None when
    there is no config file, no git, no work tree (or no commit yet), or git took too long."""
    if config_file is None:
        return None
    folder = Path(config_file).resolve().parent
    head = _git(folder, "rev-parse", "HEAD", "--show-toplevel")
    if head is None or len(head.splitlines()) != 2:
        return None
    commit, top = head.splitlines()
    # --no-optional-locks: status would otherwise refresh (write) the index of a repository that is not ours
    status = _git(folder, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status.strip()), "work_tree": top}


def _git(folder: Path, *args: str) -> str | None:
    """git's output for `args` run in `folder`, or None if it failed (absent, not a work tree) or timed out."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()
