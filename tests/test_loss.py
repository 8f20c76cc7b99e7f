import csv

import numpy as np
import pytest
import torch
import yaml

from bertcls.config import load_config
from bertcls.errors import ConfigError
from bertcls.loss import build_loss, class_weights
from bertcls.train import train
from conftest import make_config


def test_balanced_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    ids = [0] * 6 + [1] * 3 + [2]
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=ids)
    assert class_weights("balanced", ["a", "b", "c"], ids) == pytest.approx(expected.tolist())


def test_mapping_names_labels_and_the_rest_weigh_one():
    assert class_weights({"c": 3.0, "a": 0.5}, ["a", "b", "c"], [0, 1, 2]) == [0.5, 1.0, 3.0]
    assert class_weights("none", ["a", "b"], [0, 1]) is None
    with pytest.raises(ConfigError, match="training.class_weights: no label 'd' in train \\(labels: a, b\\)"):
        class_weights({"d": 2.0}, ["a", "b"], [0, 1])


def test_weighted_loss_is_the_weighted_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])

    class Model:
        def __call__(self, **inputs):
            assert "labels" not in inputs
            return type("Out", (), {"logits": logits})()

    loss = build_loss({"b": 4.0}, ["a", "b"], [0, 1, 0], "cpu")(Model(), {"input_ids": None, "labels": labels})
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert loss.item() == pytest.approx(((per_row * torch.tensor([1.0, 4.0, 1.0])).sum() / 6).item())


def test_a_heavier_class_pulls_predictions_towards_it(tmp_path, toy_data, trained_run):
    # trained_run: the same data, config and seed without weights
    run = train(load_config(make_config(tmp_path, toy_data, training={"class_weights": {"negative": 5}})), quiet=True)

    def mean_negative(folder):
        rows = list(csv.DictReader(open(folder / "reports" / "test" / "predictions.csv", encoding="utf-8")))
        return sum(float(r["prob_negative"]) for r in rows) / len(rows)

    assert mean_negative(run) > mean_negative(trained_run) + 0.05
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"]["class_weights"] == {"negative": 5.0}


def test_unknown_label_in_class_weights_stops_before_training(tmp_path, toy_data):
    with pytest.raises(ConfigError, match="no label 'neutral'"):
        train(load_config(make_config(tmp_path, toy_data, training={"class_weights": {"neutral": 2}})), quiet=True)


def test_multilabel_balanced_weights_are_negatives_over_positives_in_the_bce():
    ids = [[1, 0], [1, 1], [1, 0], [0, 0]]  # label 0: 3 positives / 1 negative; label 1: 1 / 3
    assert class_weights("balanced", ["a", "b"], ids, multi_label=True) == pytest.approx([1 / 3, 3.0])
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.2, 0.1], [0.0, -2.0]])
    labels = torch.tensor(ids, dtype=torch.float32)

    class Model:
        def __call__(self, **inputs):
            return type("Out", (), {"logits": logits})()

    loss = build_loss("balanced", ["a", "b"], ids, "cpu", multi_label=True)(Model(), {"input_ids": None, "labels": labels})
    p = torch.sigmoid(logits)
    by_hand = -(torch.tensor([1 / 3, 3.0]) * labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
