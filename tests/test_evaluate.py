import numpy as np
import pytest

from bertcls.evaluate import compute_metrics, is_better, reliability
from bertcls.predict import softmax


def test_metrics_match_hand_computed_values():
    # gold: a a a b b c ; pred: a a b b c c
    m = compute_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"], loss=0.5)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class: a p=1 r=2/3 ; b p=1/2 r=1/2 ; c p=1/2 r=1
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["f1_micro"] == pytest.approx(4 / 6)
    assert m["f1_weighted"] == pytest.approx((0.8 * 3 + 0.5 * 2 + 2 / 3) / 6)
    assert m["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[2, 1, 0], [0, 1, 1], [0, 0, 1]]}
    assert m["loss"] == 0.5 and m["num_examples"] == 6


def test_absent_class_counts_as_zero_not_an_error():
    m = compute_metrics([0, 0], [0, 0], ["a", "b"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_better_means_lower_only_for_loss():
    assert is_better("loss", 0.1, 0.2) and not is_better("accuracy", 0.1, 0.2) and is_better("f1_macro", 0.1, None)


def test_softmax_rows_sum_to_one():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(p.sum(axis=1), 1) and p[0, 0] == pytest.approx(1.0) and p[1, 0] == pytest.approx(0.5)


def test_probabilities_add_calibration_error_and_binary_aucs():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    m = compute_metrics([0, 1, 1, 0], probs.argmax(1).tolist(), ["neg", "pos"], probs=probs)
    # gold positive scores 0.2, 0.7; gold negative 0.1, 0.6: 3 of 4 pairs ranked right
    assert m["roc_auc"] == pytest.approx(0.75) and m["positive_label"] == "pos"
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3) / 2)  # ranked 0.7+ 0.6- 0.2+ 0.1-: precision 1 and 2/3 at the positives
    # one row per confidence bin: |accuracy - confidence| = 0.1 (0.9 right), 0.8 (0.8 wrong), 0.3 (0.7 right), 0.6 (0.6 wrong)
    assert m["ece"] == pytest.approx((0.1 + 0.8 + 0.3 + 0.6) / 4)
    three = compute_metrics([0, 1, 2], [0, 1, 2], ["a", "b", "c"], probs=np.eye(3))
    assert "roc_auc" not in three and three["ece"] == pytest.approx(0.0)


def test_expected_calibration_error_by_hand():
    # bin [0.6, 0.667): confidences 0.6, 0.6, one right -> |0.5 - 0.6| ; bin [0.933, 1]: 1.0 right -> 0
    r = reliability(np.array([0.6, 0.6, 1.0]), np.array([True, False, True]))
    assert r["ece"] == pytest.approx(2 / 3 * 0.1)
    assert r["counts"].sum() == 3 and r["counts"][-1] == 1
