"""LIBERO's lifelong metrics and the forgetting status, on hand-made matrices."""

import math

import numpy as np
import pytest

from smolvla.continual.metrics import RETAINED, SIGNIFICANT, SLIGHT, forgetting_status, lifelong_metrics

NAN = math.nan


def test_metrics_of_a_hand_made_success_matrix():
    # c[i][k]: success on stage k's task after stage i
    c = [
        [0.9, NAN, NAN],
        [0.6, 0.8, NAN],
        [0.3, 0.5, 1.0],
    ]
    m = lifelong_metrics(c)
    assert m["FWT"] == pytest.approx((0.9 + 0.8 + 1.0) / 3)
    # task 1 loses 0.3 then 0.6 (mean 0.45), task 2 loses 0.3; the last task has no later stage
    assert m["NBT"] == pytest.approx((0.45 + 0.3) / 2)
    # task 1 averages 0.9, 0.6, 0.3; task 2 0.8, 0.5; task 3 1.0
    assert m["AUC"] == pytest.approx((0.6 + 0.65 + 1.0) / 3)


def test_no_forgetting_and_backward_improvement():
    kept = np.tril(np.full((4, 4), 0.7)) + np.triu(np.full((4, 4), NAN), 1)
    assert lifelong_metrics(kept) == pytest.approx({"FWT": 0.7, "NBT": 0.0, "AUC": 0.7})
    improved = [[0.5, NAN], [0.9, 0.8]]  # learning task 2 made task 1 better: negative NBT
    assert lifelong_metrics(improved)["NBT"] == pytest.approx(-0.4)
    assert lifelong_metrics([[0.4]]) == {"FWT": 0.4, "NBT": None, "AUC": 0.4}


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match="K×K"):
        lifelong_metrics([[0.1, 0.2]])
    with pytest.raises(ValueError, match="missing"):
        lifelong_metrics([[0.5, NAN], [NAN, 0.5]])


def test_forgetting_status_is_relative_to_the_loss_right_after_learning():
    assert forgetting_status(0.105, 0.1, 1.1, 1.5) == RETAINED
    assert forgetting_status(0.14, 0.1, 1.1, 1.5) == SLIGHT
    assert forgetting_status(0.2, 0.1, 1.1, 1.5) == SIGNIFICANT
    # the same absolute loss is fine for a task that was always hard to fit
    assert forgetting_status(0.2, 0.19, 1.1, 1.5) == RETAINED
    assert forgetting_status(None, 0.1, 1.1, 1.5) is None
