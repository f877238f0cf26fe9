"""The NumPy reference kernels against TensorFlow, through every public face.

The rest of the suite runs on the default, fused kernels, and test_fused.py
compares those with the reference; here the reference itself meets the
oracle. A selection of the TensorFlow comparisons of test_nn, test_raw_ops,
test_properties, test_losses_v1 and test_keras_losses runs again with
``xent.set_kernels("numpy")`` (what xent computes where numba is missing):
the same test functions, over a smaller grid of their parameters.
"""
import importlib
import inspect
import itertools

import pytest

import test_keras_losses as keras_t   # the test modules, as pytest imports them
import test_losses_v1 as v1_t
import test_nn as nn_t
import test_raw_ops as raw_t
import xent
from oracle import BF16, FLOATS
from pairwise import pairwise
from xent import _core


def _runs(module, name, argnames, values):
    """(module, test name, kwargs) for each tuple of `values` of the parameters `argnames`."""
    return [(module.__name__, name, dict(zip(argnames, v))) for v in values]


def _every(k, cases):
    """Every `k`-th case of a grid (a spread-out sample of it)."""
    return list(cases)[::k]


RUNS = [
    # -- tf.nn ------------------------------------------------------------------------
    *_runs(nn_t, "test_sparse_matches_tf_float64_truth",
           ("batch", "classes", "dtype", "label_dtype"),
           [(*case, dtype, label) for case, dtype, label
            in pairwise(nn_t.CASES, FLOATS, nn_t.LABEL_DTYPES)]),
    *_runs(nn_t, "test_dense_matches_tf_float64_truth", ("batch", "classes", "dtype"),
           [(*case, dtype) for case, dtype in pairwise(nn_t.CASES[::2], FLOATS)]),
    *[(nn_t.__name__, name, {"dtype": dtype}) for name, dtype in itertools.product(
        ["test_sparse_minus_inf_masked_logits_stay_finite",
         "test_sparse_label_on_minus_inf_logit_is_inf_like_tf",
         "test_sparse_all_minus_inf_row_is_nan_and_other_rows_unaffected",
         "test_dense_all_minus_inf_row_is_nan_and_other_rows_unaffected",
         "test_sparse_huge_logits_match_tf_without_cancellation",
         "test_dense_huge_logits_one_hot_match_tf_without_cancellation",
         "test_sparse_float_extremes_near_dtype_max_stay_finite_like_tf",
         "test_dense_one_class_loss_is_zero_for_any_label_weight"], FLOATS)],
    *_runs(nn_t, "test_dense_infinite_and_nan_targets_match_tf", ("classes", "dtype"),
           itertools.product([3, 5000], FLOATS)),
    *_runs(nn_t, "test_dense_infinite_target_on_the_max_where_s_rounds_to_one_is_tfs",
           ("dtype",), [(FLOATS[2],), (FLOATS[3],)]),
    *_runs(nn_t, "test_dense_targets_whose_float32_sum_overflows_give_tfs_finite_loss",
           ("classes",), [(2,), (3,)]),
    *_runs(nn_t, "test_dense_labels_broadcast_and_flatten_like_tf",
           ("labels_shape", "logits_shape"), nn_t.BROADCASTS),
    *_runs(nn_t, "test_sparse_non_contiguous_logits_match_truth", ("layout",),
           [(k,) for k in nn_t.LAYOUTS]),
    *_runs(nn_t, "test_dense_non_contiguous_inputs_match_truth", ("layout",),
           [(k,) for k in nn_t.LAYOUTS]),
    # -- tf.raw_ops -------------------------------------------------------------------
    *_runs(raw_t, "test_sparse_raw_loss_and_backprop_match_tf_float64",
           ("shape", "dtype", "label_dtype"), pairwise(raw_t.SHAPES, FLOATS, raw_t.LABEL_DTYPES)),
    *_runs(raw_t, "test_dense_raw_loss_and_backprop_match_tf_float64", ("shape", "dtype"),
           pairwise(raw_t.SHAPES, FLOATS)),
    *_runs(raw_t, "test_sparse_raw_class_counts_around_block_sizes_match_tf", ("classes", "dtype"),
           pairwise([7, 65, 257, 4097, 65537], [FLOATS[2], BF16])),
    *_runs(raw_t, "test_raw_in_place_into_non_contiguous_features_overwrites_them_with_tf_backprop",
           ("op", "layout"), itertools.product(["sparse", "dense"], raw_t.LAYOUTS)),
    *_runs(raw_t, "test_backprop_out_overlapping_the_features_gets_tf_backprop",
           ("op", "overlap", "shape"),
           itertools.product(["sparse", "dense"], raw_t.OVERLAPS, [(700, 400)])),
    *_runs(raw_t, "test_dense_backprop_out_over_the_labels_gets_tf_backprop", ("view",),
           [("same",), ("reversed-rows",)]),
    *_runs(raw_t, "test_sparse_raw_many_rows_match_tf", ("rows",), [(1,), (65,), (4099,)]),
    (raw_t.__name__, "test_sparse_in_place_result_matches_tf", {}),
    # -- the float64 log-sum-exp truth of test_properties (itself checked against TF) --
    *[("test_properties", name, {}) for name in (
        "test_sparse_matches_logsumexp_oracle_for_any_shape_and_values",
        "test_dense_matches_logsumexp_oracle_for_any_shape_and_values",
        "test_sparse_backprop_is_softmax_minus_onehot")],
    # -- tf.compat.v1.losses -----------------------------------------------------------
    *_runs(v1_t, "test_sparse_softmax_cross_entropy_matches_tf",
           ("dtype_id", "rank", "weight_kind", "reduction_name"), _every(3, v1_t.SPARSE_CASES)),
    *_runs(v1_t, "test_softmax_cross_entropy_matches_tf",
           ("dtype_id", "rank", "weight_kind", "reduction_name", "label_smoothing"),
           _every(5, v1_t.DENSE_CASES)),
    *_runs(v1_t, "test_sparse_class_counts_match_tf", ("dtype_id", "rank", "num_classes"),
           pairwise(v1_t.DTYPE_IDS, v1_t.RANKS, (1, 2, 17, 300))),
    # -- tf.keras.losses ---------------------------------------------------------------
    *_runs(keras_t, "test_sparse_categorical_crossentropy_function_matches_tf",
           ("kind", "rank", "dtype"),
           pairwise(["logits", "softmax", "unnormalized", "clipping_bites"], [1, 2, 3],
                    [FLOATS[2], FLOATS[3]])),
    *_runs(keras_t, "test_categorical_crossentropy_function_matches_tf",
           ("kind", "rank", "dtype", "label_smoothing"),
           pairwise(["logits", "softmax", "unnormalized", "clipping_bites"], [1, 2, 3],
                    [FLOATS[2], FLOATS[3]], [0.0, 0.1])),
    *_runs(keras_t, "test_sparse_class_ignore_class_matches_tf",
           ("ignore_class", "from_logits", "weighted", "reduction"),
           _every(3, pairwise((-1, 255, 0), (True, False), (False, True), keras_t.ALL_REDUCTIONS))),
    *_runs(keras_t, "test_loss_object_half_dtype_rounds_float64_truth_once",
           ("cls_name", "dtype", "from_logits"),
           itertools.product(["SparseCategoricalCrossentropy", "CategoricalCrossentropy"],
                             ["float16", "bfloat16"], [True, False])),
    *_runs(keras_t, "test_seed_example_gives_0_3239", ("cls_name",),
           [("SparseCategoricalCrossentropy",), ("CategoricalCrossentropy",)]),
]


def _run_id(run):
    module, name, kwargs = run
    values = "-".join(getattr(v, "__name__", None) or getattr(v, "name", None) or str(v)
                      for v in kwargs.values())
    return f"{module}.{name.removeprefix('test_')}[{values}]"


@pytest.fixture(autouse=True)
def reference_kernels():
    """Every call in the test runs on the NumPy reference kernels."""
    with _core.using_kernels("numpy"):
        assert xent.get_kernels() == "numpy"
        yield


@pytest.mark.parametrize("run", RUNS, ids=[_run_id(r) for r in RUNS])
def test_reference_kernels_match_tensorflow(request, run):
    """One TensorFlow comparison of the suite, on the NumPy reference kernels."""
    module, name, kwargs = run
    test = getattr(importlib.import_module(module), name)
    fixtures = {p: request.getfixturevalue(p)
                for p in inspect.signature(test).parameters if p not in kwargs}
    test(**fixtures, **kwargs)
    assert xent.get_kernels() == "numpy"


@pytest.mark.parametrize("weighted", [False, True])
def test_a_label_out_of_range_gives_the_reference_a_nan_row_as_the_fused_kernels(weighted):
    """Under `jax.jit` no label is checked: the fused kernels give a bad label's row
    NaN (loss, lse, gradient), TF's GPU behaviour. The reference indexed with it:
    an IndexError that failed the whole XLA computation (-5, or C), or, for -1,
    the last class's loss, silently."""
    import numpy as np
    from xent import _kernels
    logits = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    labels = np.array([0, -5, 4, -1, 3])
    weights = np.array([2.0, 3.0, 0.5, 1.0, 4.0]) if weighted else None
    grad = np.zeros_like(logits)
    loss, lse = _kernels.sparse_rows(logits, labels, grad, weights)
    bad = np.array([False, True, True, True, False])
    assert np.isnan(loss[bad]).all() and np.isnan(lse[bad]).all() and np.isnan(grad[bad]).all()
    good = _kernels.sparse_rows(logits[~bad], labels[~bad], np.zeros_like(logits[~bad]),
                                None if weights is None else weights[~bad])[0]
    np.testing.assert_array_equal(loss[~bad], good)
    jax = pytest.importorskip("jax")
    got = jax.jit(lambda x, y: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x))(
        logits, labels)
    np.testing.assert_array_equal(np.isnan(np.asarray(got)), bad)
