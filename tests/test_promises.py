"""What the docs promise about the loop and the commands, checked from what a user sees: the learning
rates in log.jsonl, the best epoch, max_train_samples, gradient clipping, resume trimming the log,
evaluate's column options and --version."""

import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from bertcls import __version__, runs
from bertcls.checkpoint import LoopState
from bertcls.cli import app
from bertcls.config import load_config
from bertcls.train import train
from conftest import make_config, toy_rows, write_csv

runner = CliRunner()
QUICK = {"epochs": 2, "log_every_steps": 1, "save_torchscript": False, "loss_curve": False}


def log_of(run):
    return [json.loads(line) for line in (run / runs.LOG_FILE).read_text().splitlines()]


def expected_lr(schedule: str, step: int, total: int, warmup: int, peak: float) -> float:
    """The learning rate after `step` optimizer steps: linear warmup from 0, then linear or cosine decay to 0, or constant."""
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - warmup)
    return {"linear": peak * (1 - progress), "cosine": peak * 0.5 * (1 + math.cos(math.pi * progress)), "constant": peak}[schedule]


def test_the_logged_learning_rate_follows_the_linear_warmup_schedule(trained_run):
    # 240 rows / batch 16 = 15 steps an epoch, 3 epochs: 45 steps, warmup round(0.1 x 45) = 4 (the default ratio)
    logged = [r for r in log_of(trained_run) if "split" not in r]
    assert [r["step"] for r in logged] == list(range(5, 46, 5))
    assert all(r["lr"] == pytest.approx(expected_lr("linear", r["step"], 45, 4, 2e-3)) for r in logged)
    assert logged[-1]["lr"] == 0.0


@pytest.mark.parametrize("schedule, max_grad_norm", [("cosine", 0.05), ("constant", None)])
def test_schedules_max_train_samples_and_gradient_clipping(tmp_path, toy_data, monkeypatch, schedule, max_grad_norm):
    norms = []  # the L2 norm of the gradients every optimizer step applied (a fused step scales them in place)
    original = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **kw: original(self, *a, **kw) or norms.append(gradient_norm(self)))
    # max_train_samples 64: 4 micro-batches an epoch at batch 16, 2 optimizer steps with accumulation 2, 4 in all;
    # warmup_ratio 0.25: 1 step
    training = {**QUICK, "lr_scheduler": schedule, "warmup_ratio": 0.25, "max_grad_norm": max_grad_norm, "gradient_accumulation_steps": 2}
    run = train(load_config(make_config(tmp_path, toy_data, training=training), ["data.max_train_samples=64"]), quiet=True)
    logged = [r for r in log_of(run) if "split" not in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert [r["lr"] for r in logged] == pytest.approx([expected_lr(schedule, s, 4, 1, 2e-3) for s in range(1, 5)])
    assert json.loads((run / runs.METRICS_FILE).read_text())["train"]["optimizer_steps"] == 4
    assert len(norms) == 4
    if max_grad_norm:
        assert max(norms) <= max_grad_norm * (1 + 1e-5)
    else:
        assert max(norms) > 0.05  # what the clipped run held down


def gradient_norm(optimizer) -> float:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads])))


def test_the_best_epoch_is_the_one_metric_for_best_prefers(trained_run):
    evaluations = [r for r in log_of(trained_run) if r.get("split") == "validation"]
    best = max(evaluations, key=lambda r: r["f1_macro"])  # the default metric; the first of equals wins
    assert json.loads((trained_run / runs.METRICS_FILE).read_text())["best_epoch"] == best["epoch"]


@pytest.mark.parametrize("metric, values, best_epoch", [
    ("loss", [0.9, 0.5, 0.7, 0.5], 2),          # lower is better, and a tie keeps the earlier epoch
    ("accuracy", [0.6, 0.8, 0.8, 0.7], 2),
    ("f1_macro", [0.9, 0.5, 0.6, 0.7], 1),
])
def test_metric_for_best_chooses_the_epoch(metric, values, best_epoch):
    state = LoopState()
    for epoch, value in enumerate(values, start=1):
        state.offer({metric: value, "per_class": {}}, metric, epoch)
    assert state.best_epoch == best_epoch and state.evals_since_best == len(values) - best_epoch
    assert "per_class" not in state.best_metrics  # checkpoints carry the headline numbers only


@pytest.mark.slow  # in CI's second pass: two trainings and a resume
def test_resuming_from_an_older_checkpoint_drops_the_log_after_it(tmp_path, toy_data):
    config = make_config(tmp_path, toy_data, training={**QUICK, "keep_checkpoints": 2})
    run = train(load_config(config), quiet=True)
    reference = log_of(run)
    (run / runs.METRICS_FILE).unlink()  # as if stopped in the finish: the run can be resumed from any checkpoint it kept
    result = runner.invoke(app, ["train", str(config), "--resume", str(run / "checkpoint-15"), "-q"])
    assert result.exit_code == 0, result.output
    # every step once: the lines after step 15 were dropped, then written again by the resumed run
    assert [(r["step"], r.get("split")) for r in log_of(run)] == [(r["step"], r.get("split")) for r in reference]
    assert [r["loss"] for r in log_of(run) if "loss" in r and "split" not in r] == [r["loss"] for r in reference if "split" not in r]


def test_evaluate_reads_other_column_names_when_told(trained_run, tmp_path):
    rows = toy_rows(40, 9)
    data = write_csv(tmp_path / "renamed.csv", rows, header=("review", "sentiment"))
    result = runner.invoke(app, ["evaluate", str(data), "--model", str(trained_run), "--text-column", "review",
                                 "--label-column", "sentiment", "--output", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_examples"] == 40 and metrics["accuracy"] >= 0.8
    shutil.rmtree(tmp_path / "eval")
    wrong = runner.invoke(app, ["evaluate", str(data), "--model", str(trained_run)])
    assert wrong.exit_code == 2 and "no column 'text'" in wrong.output and "--text-column" in wrong.output


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"{__version__}\n"
