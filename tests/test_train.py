import json

import pytest
import torch
import yaml

from bertcls import runs
from bertcls.config import load_config
from bertcls.errors import RunError
from bertcls.train import Callback, build_optimizer, clip_gradients, train
from conftest import make_config


def test_a_run_learns_the_toy_task_and_writes_its_folder(trained_run):
    metrics = json.loads((trained_run / runs.METRICS_FILE).read_text())
    assert metrics["validation"]["accuracy"] >= 0.9, metrics["validation"]
    assert metrics["test"]["accuracy"] >= 0.9 and "f1_macro" in metrics["test"]
    assert (trained_run / "model" / "model.safetensors").is_file()
    saved = yaml.safe_load((trained_run / runs.CONFIG_FILE).read_text())
    assert saved["model"]["name"] == "tiny" and saved["training"]["epochs"] == 3
    log = [json.loads(line) for line in (trained_run / runs.LOG_FILE).read_text().splitlines()]
    losses = [r["loss"] for r in log if "split" not in r]
    assert losses[-1] < losses[0]  # the training loss falls
    assert [r["epoch"] for r in log if r.get("split") == "validation"] == [1, 2, 3]


def test_same_config_and_seed_give_the_same_metrics(tmp_path, toy_data):
    first = train(load_config(make_config(tmp_path, toy_data, training={"epochs": 1})), quiet=True)
    again = train(load_config(make_config(tmp_path, toy_data, training={"epochs": 1}, output_dir=str(tmp_path / "again"))), quiet=True)
    a = json.loads((first / runs.METRICS_FILE).read_text())
    b = json.loads((again / runs.METRICS_FILE).read_text())
    assert a["validation"] == b["validation"] and a["test"] == b["test"]


def test_a_finished_run_is_not_overwritten_without_asking(tmp_path, toy_data):
    cfg = load_config(make_config(tmp_path, toy_data, training={"epochs": 1}))
    run = train(cfg, quiet=True)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="already holds a finished run; pass --overwrite"):
        train(cfg, quiet=True)
    train(cfg, overwrite=True, quiet=True)
    assert (run / "notes.txt").read_text() == "mine"  # never delete what bertcls did not write


def test_loss_curve_and_report_figures_can_be_turned_off(tmp_path, toy_data):
    run = train(load_config(make_config(tmp_path, toy_data, training={"epochs": 1, "loss_curve": False, "report_figures": False})), quiet=True)
    assert not (run / runs.LOSS_FILE).exists()
    assert {p.name for p in (run / runs.REPORTS_DIR / "test").iterdir()} == {"predictions.csv"}  # the figures are trained_run's test


def test_gradient_accumulation_and_early_stopping(tmp_path, toy_data):
    # A learning rate too small to flip any prediction: validation accuracy never improves after epoch 1.
    cfg = load_config(make_config(tmp_path, toy_data, training={"epochs": 6, "gradient_accumulation_steps": 3, "early_stopping_patience": 2,
                                                                 "learning_rate": 1e-12, "metric_for_best": "accuracy"}))
    run = train(cfg, quiet=True)
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    steps = [r["step"] for r in map(json.loads, (run / runs.LOG_FILE).read_text().splitlines()) if r.get("split")]
    assert steps == [5, 10, 15]  # 240 rows / batch 16 = 15 micro-batches = 5 optimizer steps per epoch; stopped after epoch 3
    assert metrics["best_epoch"] == 1 and metrics["train"]["epochs"] == 3 and metrics["train"]["optimizer_steps"] == 15


def test_a_best_model_before_the_last_step_is_the_one_scored_on_test(tmp_path, toy_data):
    class Spoil(Callback):  # after the first evaluation, a head that calls everything "0": every later model is worse
        def on_start(self, job):
            self.job = job

        def on_evaluate(self, state, metrics):
            if state.global_step == 15:
                head = self.job.accelerator.unwrap_model(self.job.model).classifier
                with torch.no_grad():
                    head.weight.zero_()
                    head.bias.copy_(torch.tensor([50.0, -50.0]))
            return False

    cfg = load_config(make_config(tmp_path, toy_data, training={"epochs": 2, "learning_rate": 1e-6, "metric_for_best": "loss",
                                                                 "save_torchscript": False, "loss_curve": False}))
    run = train(cfg, quiet=True, callbacks=(Spoil(),))
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    evaluations = {r["step"]: r for r in map(json.loads, (run / runs.LOG_FILE).read_text().splitlines()) if r.get("split")}
    assert evaluations[30]["loss"] > 10 and metrics["best_step"] == 15  # the spoiled model was never the best
    assert metrics["validation"]["loss"] == pytest.approx(evaluations[15]["loss"], abs=1e-6)
    assert metrics["test"]["loss"] < 1  # scored with the best model, not the spoiled one in memory at the end


def test_early_stopping_counts_evaluations_by_steps(tmp_path, toy_data):
    # Nothing is learnt at this learning rate: validation accuracy never improves on the first evaluation.
    cfg = load_config(make_config(tmp_path, toy_data, training={"epochs": 2, "eval_every_steps": 4, "early_stopping_patience": 2,
                                                                 "learning_rate": 1e-12, "metric_for_best": "accuracy",
                                                                 "save_torchscript": False, "loss_curve": False}))
    run = train(cfg, quiet=True)
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    steps = [r["step"] for r in map(json.loads, (run / runs.LOG_FILE).read_text().splitlines()) if r.get("split")]
    assert steps == [4, 8, 12]  # stopped 12 steps into the 15 of epoch 1, two evaluations after the best
    assert (metrics["best_step"], metrics["best_epoch"]) == (4, 1)
    assert metrics["train"]["optimizer_steps"] == 12 and metrics["train"]["epochs"] == 0.8
    assert [p.name for p in runs.checkpoints(run)] == ["checkpoint-8"]  # after each evaluation but the one that stopped training


def test_no_weight_decay_on_biases_and_layernorm(trained_run):
    from bertcls.config import TrainingConfig
    from bertcls.model import load_trained

    model, _ = load_trained(trained_run)
    decay, no_decay = build_optimizer(model, TrainingConfig(weight_decay=0.1), fused=False).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(no_decay["params"]) > 0


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("scale, max_norm", [(1.0, 0.5), (1e-4, 0.5), (float("inf"), 0.5)])
def test_clipping_scales_the_gradients_as_torch_does(trained_run, scale, max_norm, fused):
    # What AdamW takes in (its first moment, (1 - beta1) x gradient, and the gradients after the step) matches
    # torch's clipping before the step, whether the fused step scales them or they are scaled beforehand.
    from types import SimpleNamespace

    from bertcls.config import TrainingConfig
    from bertcls.model import load_trained

    models = [load_trained(trained_run)[0] for _ in range(2)]
    optimizers = [build_optimizer(model, TrainingConfig(), fused=fused) for model in models]
    torch.manual_seed(0)
    for ours, theirs in zip(*(m.parameters() for m in models), strict=True):
        ours.grad = torch.randn_like(ours) * scale
        theirs.grad = ours.grad.clone()
    clip_gradients(SimpleNamespace(device=torch.device("cpu"), distributed_type="NO", scaler=None), models[0], optimizers[0], max_norm)
    torch.nn.utils.clip_grad_norm_(models[1].parameters(), max_norm)
    for optimizer in optimizers:
        optimizer.step()
    for ours, theirs in zip(*(m.parameters() for m in models), strict=True):
        # torch's fp32 norm is off by ~1e-4
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-3, atol=0, equal_nan=True)
        moments = [optimizer.state[p]["exp_avg"] for optimizer, p in zip(optimizers, (ours, theirs), strict=True)]
        torch.testing.assert_close(*moments, rtol=1e-3, atol=0, equal_nan=True)


def test_checkpoint_works_with_plain_transformers_pipeline(trained_run):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(trained_run / "model"), device="cpu")
    out = clf(["the film was wonderful", "the film was dreadful"])
    assert [o["label"] for o in out] == ["positive", "negative"]
