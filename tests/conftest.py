"""Shared fixtures: offline Hugging Face, a learnable toy dataset, configs, and one trained tiny run."""

import os

# Before anything imports transformers or datasets: never reach for the hub in tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import csv  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from bertcls import runs  # noqa: E402

GOOD = ["great", "wonderful", "superb", "delightful", "brilliant", "moving", "charming", "excellent"]
BAD = ["awful", "boring", "dreadful", "tedious", "clumsy", "dull", "painful", "terrible"]
FILLER = ["the", "film", "was", "plot", "acting", "story", "really", "quite", "and", "a", "movie", "cast"]


def toy_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """A sentiment task a tiny BERT learns in seconds: the label is carried by one cue word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.sample(FILLER, rng.randint(3, 8)) + [rng.choice(GOOD if label == "positive" else BAD)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows, header=("text", "label"), delimiter=",") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def toy_data(tmp_path) -> dict[str, Path]:
    return {
        "train": write_csv(tmp_path / "train.csv", toy_rows(240, 0)),
        "validation": write_csv(tmp_path / "validation.csv", toy_rows(60, 1)),
        "test": write_csv(tmp_path / "test.csv", toy_rows(60, 2)),
    }


def make_config(folder: Path, data: dict[str, Path], **sections) -> Path:
    """A config file in `folder` for the tiny model on `data`; `sections` update its sections."""
    raw = {
        "seed": 8,
        "output_dir": str(folder / "run"),
        "data": {"train": str(data["train"]), "validation": str(data["validation"]), "test": str(data.get("test", data["validation"])), "max_length": 32},
        "model": {"name": "tiny"},
        "training": {"epochs": 3, "batch_size": 16, "learning_rate": 2e-3, "precision": "fp32", "log_every_steps": 5,
                     "keep_checkpoints_at_end": True,  # tests look into a finished run's checkpoints
                     # most of a tiny run's finish: the report figures, the loss curve and the traced graph (checked
                     # in each precision); the tests of reports, figures and the graph turn them on
                     "report_figures": False, "loss_curve": False, "save_torchscript": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, worker_id) -> Path:
    """One tiny run trained on the toy task, shared by the predict and evaluate tests (read-only). Trained once
    per test session: the first worker process to need it trains it, the others wait for it and read it."""
    from filelock import FileLock

    from bertcls.config import load_config
    from bertcls.train import train

    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    folder = shared / "trained"
    with FileLock(str(shared / "trained.lock")):
        if not (folder / "run" / "metrics.json").is_file():
            folder.mkdir(exist_ok=True)
            data = {
                "train": write_csv(folder / "train.csv", toy_rows(240, 0)),
                "validation": write_csv(folder / "validation.csv", toy_rows(60, 1)),
                "test": write_csv(folder / "test.csv", toy_rows(60, 2)),
            }
            train(load_config(make_config(folder, data, training={"report_figures": True, "loss_curve": True, "save_torchscript": True})),
                  overwrite=True, quiet=True)  # a run as a user's: figures, loss curve and the traced graph
    return folder / "run"


def assert_one_line_error(result, message: str, run: Path | None = None) -> None:
    """A CliRunner result is what a user must see for a mistake: exit 2 and one `Error:` line holding `message`,
    no traceback; and with `run`, no finished-looking run folder."""
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
    if run is not None:
        assert not (run / "metrics.json").exists()


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    """Poll `condition` until it holds; fail if the training process ends (or 240 s pass) first."""
    deadline = time.monotonic() + 240
    while not condition():
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            pytest.fail(f"training ended (exit {process.returncode}) before {what}: {stderr}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def assert_same_run(run: Path, reference: Path) -> None:
    """`run` (interrupted and resumed) ended exactly like `reference`: weights, metrics and log."""
    import torch
    from safetensors.torch import load_file

    ours, theirs = load_file(run / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "final weights differ from the uninterrupted run"
    a, b = (json.loads((r / runs.METRICS_FILE).read_text()) for r in (run, reference))
    assert a["validation"] == b["validation"] and a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    assert a["train"]["optimizer_steps"] == b["train"]["optimizer_steps"]
    # the log reads as one run: every step once, with the same losses and learning rates
    strip = lambda r: {k: v for k, v in json.loads(r).items() if k != "examples_per_s"}  # noqa: E731
    assert [strip(r) for r in (run / runs.LOG_FILE).read_text().splitlines()] == \
        [strip(r) for r in (reference / runs.LOG_FILE).read_text().splitlines()]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Every test starts without the variables that steer bertcls, a launcher or the Hugging Face hub."""
    for name in list(os.environ):
        if name.startswith(("BERTCLS_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "ACCELERATE_")) or name in LAUNCHER_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


LAUNCHER_VARIABLES = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "NODE_RANK"}


def files_in(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under `folder`, with each file's bytes (None for a folder): equal before and after means
    nothing there was touched."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() if path.is_file() else None for path in sorted(folder.rglob("*"))}


@contextmanager
def file_size_limit(limit: int):
    """Files this process writes stop at `limit` bytes (RLIMIT_FSIZE, `ulimit -f`): a write past it fails with
    EFBIG, as on FAT32 past 4 GiB (Python ignores SIGXFSZ, which would otherwise kill the process)."""
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
