"""The test helpers themselves: a grid that misses a pair, or a tolerance that cannot
fail, would weaken every test built on them without a sign."""
import itertools

import numpy as np
import pytest

from oracle import assert_close_to_truth, label_scale, row_scale
from pairwise import pairwise

OPTIONS = (["float16", "bfloat16", "float32", "float64"], [1, 2, 3], list("abcdefghij"),
           ["NONE", "SUM", "MEAN", "SUM_OVER_BATCH_SIZE", "SUM_BY_NONZERO_WEIGHTS"], [0.0, 0.1, 0.5])


@pytest.mark.parametrize("count", [2, 3, 4, 5])
def test_pairwise_grid_puts_every_value_beside_every_value_of_every_other_option(count):
    options = OPTIONS[:count]
    cases = pairwise(*options)
    assert all(len(case) == count for case in cases)
    for i, j in itertools.combinations(range(count), 2):
        met = {(case[i], case[j]) for case in cases}
        assert met == set(itertools.product(options[i], options[j])), (i, j)
    assert cases == pairwise(*options)                      # deterministic
    largest, second = sorted(len(o) for o in options)[-1:-3:-1]
    assert len(cases) <= 1.25 * largest * second   # near the least possible, largest * second


def test_label_scale_tolerance_rejects_a_wrong_loss_that_row_scale_accepted():
    """Logits of 1e30 with the label on a tied maximum: the loss is log 2. The old scale,
    max |logit|, allowed any error below 4.8e23; the new one is max - logit[label] + 1."""
    logits = np.array([[1e30, 1e30, -1e30]], np.float32)
    labels = np.array([0])
    truth = np.array([np.log(2.0)])
    wrong = np.array([np.log(2.0) + 1e-3], np.float32)
    assert_close_to_truth(wrong, truth, np.float32, row_scale(logits))   # the hole
    with pytest.raises(AssertionError):
        assert_close_to_truth(wrong, truth, np.float32, label_scale(logits, labels))
    assert_close_to_truth(np.array([np.log(2.0)], np.float32), truth, np.float32,
                          label_scale(logits, labels))
