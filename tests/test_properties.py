"""Property tests: arbitrary shapes (rank 1-4) and extreme logits against a float64
log-sum-exp truth written here (checked against TensorFlow at the end), plus
identities every correct kernel satisfies.

Tolerances scale with what each row's loss subtracts (``max - logit[label]``,
`oracle.label_scale`), not with its largest |logit|: with generated logits of
1e30 or 3e38 the latter would accept any value. Deterministic
(`derandomize=True`), 50 examples a property.
"""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import xent
from oracle import (EPS32, EPS64, FLOATS, assert_close_to_truth, dense_scale, label_scale,
                    row_scale)

SPARSE_NN = xent.nn.sparse_softmax_cross_entropy_with_logits
DENSE_NN = xent.nn.softmax_cross_entropy_with_logits
SPARSE_RAW = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits
DENSE_RAW = xent.raw_ops.SoftmaxCrossEntropyWithLogits

PROPERTY = settings(max_examples=50, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Logit values: ordinary, huge, tiny, subnormal, zero and -inf (a masked class).
SPECIAL = [0.0, -0.0, 1e30, -1e30, 1e-30, -1e-30, 1e-40, 3e38, -3e38, 60000.0, -60000.0]


def finite_max(dtype):
    return float(ml_dtypes.finfo(dtype).max)


@st.composite
def logits_arrays(draw, min_rank=1, max_rank=4, allow_minus_inf=True, classes=None,
                  dtypes=FLOATS, huge=True):
    dtype = draw(st.sampled_from(dtypes))
    rank = draw(st.integers(min_rank, max_rank))
    batch = tuple(draw(st.lists(st.integers(0, 4), min_size=rank - 1, max_size=rank - 1)))
    c = classes if classes is not None else draw(st.sampled_from([1, 2, 3, 5, 17, 100]))
    ordinary = st.floats(-40.0, 40.0, allow_nan=False, width=32)
    specials = [v for v in SPECIAL if abs(v) <= finite_max(dtype) or v == 0] if huge else [0.0]
    choices = [ordinary, ordinary, st.sampled_from(specials)]
    if allow_minus_inf:
        choices.append(st.just(-np.inf))
    values = draw(hnp.arrays(np.float64, batch + (c,), elements=st.one_of(*choices)))
    return values.astype(dtype)


def logsumexp_truth(labels_onehot, logits, dense=False):
    """float64 TF formula: sum_j y_j * (log(sum_k exp(x_k - m)) - (x_j - m)), m = max x.

    Where ``x - m`` or the loss overflows TF's accumulator (float32 unless
    float64) it is infinite here too. With
    ``dense=True`` a zero label times that infinity is NaN, as TF's dense
    kernel computes it; the sparse op never touches the other classes.
    """
    x = np.asarray(logits).astype(np.float64)
    limit = np.inf if np.asarray(logits).dtype == np.float64 else float(np.finfo(np.float32).max)
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(x, axis=-1, keepdims=True)
        shifted = x - m
        shifted = np.where(shifted < -limit, -np.inf, shifted)   # overflows the accumulator
        lse = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
        per_class = labels_onehot * (lse - shifted)
        if not dense:
            per_class = np.where(labels_onehot == 0, 0.0, per_class)
        loss = np.sum(per_class, axis=-1)
        loss = np.where(np.abs(loss) > limit, np.copysign(np.inf, loss), loss)
        probs = np.exp(shifted - lse)
    return loss, probs - labels_onehot


def assert_rows_close(got, want, rtol, atol):
    """``|got - want| <= atol + rtol |want|`` entry by entry (`atol` per row); NaN and
    infinities where `want` has them."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    finite = np.isfinite(want)
    with np.errstate(invalid="ignore"):
        bad = finite & ~(np.abs(got - want) <= atol + rtol * np.abs(want))
    assert not bad.any(), f"got {got[bad][:4]}, want {want[bad][:4]}"


def draw_labels(data, logits):
    c = logits.shape[-1]
    return data.draw(hnp.arrays(np.int64, logits.shape[:-1], elements=st.integers(0, c - 1)))


# -- xent == oracle ------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), logits=logits_arrays())
def test_sparse_matches_logsumexp_oracle_for_any_shape_and_values(data, logits):
    labels = draw_labels(data, logits)
    onehot = np.eye(logits.shape[-1])[labels]
    truth, _ = logsumexp_truth(onehot, logits)
    got = SPARSE_NN(labels=labels, logits=logits)
    assert_close_to_truth(got, truth, logits.dtype, label_scale(logits, labels))


@PROPERTY
@given(data=st.data(), logits=logits_arrays(allow_minus_inf=False))
def test_dense_matches_logsumexp_oracle_for_any_shape_and_values(data, logits):
    raw = data.draw(hnp.arrays(np.float64, logits.shape, elements=st.floats(0.0, 1.0)))
    labels = raw.astype(logits.dtype)
    truth, _ = logsumexp_truth(labels.astype(np.float64), logits, dense=True)
    got = DENSE_NN(labels=labels, logits=logits)
    assert_close_to_truth(got, truth, logits.dtype, dense_scale(logits, labels))


@PROPERTY
@given(data=st.data(), logits=logits_arrays(min_rank=2, max_rank=2))
def test_sparse_backprop_is_softmax_minus_onehot(data, logits):
    labels = draw_labels(data, logits)
    onehot = np.eye(logits.shape[-1])[labels]
    truth_loss, truth_grad = logsumexp_truth(onehot, logits)
    loss, backprop = SPARSE_RAW(features=logits, labels=labels)
    assert_close_to_truth(loss, truth_loss, logits.dtype, label_scale(logits, labels))
    assert_close_to_truth(backprop, truth_grad, logits.dtype, 1.0)


@PROPERTY
@given(data=st.data(), logits=logits_arrays(min_rank=2, max_rank=2, allow_minus_inf=False))
def test_dense_backprop_is_softmax_minus_labels(data, logits):
    raw = data.draw(hnp.arrays(np.float64, logits.shape, elements=st.floats(0.0, 1.0)))
    labels = raw.astype(logits.dtype)
    truth_loss, truth_grad = logsumexp_truth(labels.astype(np.float64), logits, dense=True)
    loss, backprop = DENSE_RAW(features=logits, labels=labels)
    assert_close_to_truth(loss, truth_loss, logits.dtype, dense_scale(logits, labels))
    assert_close_to_truth(backprop, truth_grad, logits.dtype, 1.0)


# -- identities ------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), logits=logits_arrays())
def test_sparse_loss_is_nonnegative_for_rows_with_a_finite_logit(data, logits):
    labels = draw_labels(data, logits)
    got = np.asarray(SPARSE_NN(labels=labels, logits=logits)).astype(np.float64)
    has_finite = np.isfinite(logits.astype(np.float64)).any(axis=-1)
    assert not np.isnan(got[has_finite]).any()
    assert (got[has_finite] >= 0).all()


@PROPERTY
@given(data=st.data(),
       logits=logits_arrays(allow_minus_inf=False, dtypes=[np.dtype(np.float32),
                                                            np.dtype(np.float64)]))
def test_sparse_equals_dense_with_one_hot_labels(data, logits):
    with np.errstate(over="ignore"):   # TF's dense op is NaN (0 * inf) where x - m overflows
        assume(logits.size == 0 or np.all(np.isfinite(logits.max(-1) - logits.min(-1))))
    labels = draw_labels(data, logits)
    onehot = np.eye(logits.shape[-1], dtype=logits.dtype)[labels]
    sparse = SPARSE_NN(labels=labels, logits=logits)
    dense = DENSE_NN(labels=onehot, logits=logits)
    eps = EPS32 if logits.dtype == np.float32 else EPS64
    assert_rows_close(sparse, dense, rtol=8 * eps, atol=8 * eps * label_scale(logits, labels))


@PROPERTY
@given(data=st.data(), logits=logits_arrays(min_rank=2, max_rank=2))
def test_backprop_rows_sum_to_zero(data, logits):
    labels = draw_labels(data, logits)
    _, backprop = SPARSE_RAW(features=logits, labels=labels)
    grad = backprop.astype(np.float64)
    finite_rows = np.isfinite(logits.astype(np.float64)).any(axis=-1)
    c = logits.shape[-1]
    eps = {2: 2.0 ** -8, 4: EPS32, 8: EPS64}[logits.dtype.itemsize]
    assert np.isfinite(grad[finite_rows]).all()
    np.testing.assert_allclose(grad[finite_rows].sum(axis=-1), 0.0, atol=2 * c * eps)
    assert (grad[finite_rows] >= -1).all() and (grad[finite_rows] <= 1).all()


@PROPERTY
@given(data=st.data(), shift=st.sampled_from([-1e3, -7.5, 3.0, 1e4]),
       logits=logits_arrays(allow_minus_inf=True, dtypes=[np.dtype(np.float64)], huge=False))
def test_sparse_loss_invariant_to_adding_a_constant_per_row(data, shift, logits):
    labels = draw_labels(data, logits)
    base = SPARSE_NN(labels=labels, logits=logits)
    moved = SPARSE_NN(labels=labels, logits=logits + shift)
    scale = row_scale(logits) + abs(shift)
    np.testing.assert_allclose(moved, base, rtol=1e-12, atol=8 * EPS64 * np.max(scale, initial=1))


@PROPERTY
@given(data=st.data(), logits=logits_arrays(min_rank=2, max_rank=3, dtypes=[np.dtype(np.float64)]))
def test_sparse_loss_equivariant_to_permuting_classes(data, logits):
    labels = draw_labels(data, logits)
    c = logits.shape[-1]
    perm = np.asarray(data.draw(st.permutations(range(c))))
    inverse = np.argsort(perm)
    base = SPARSE_NN(labels=labels, logits=logits)
    permuted = SPARSE_NN(labels=inverse[labels], logits=logits[..., perm])
    assert_rows_close(permuted, base, rtol=1e-12, atol=8 * EPS64 * label_scale(logits, labels))


@PROPERTY
@given(data=st.data(), logits=logits_arrays(min_rank=2, max_rank=2))
def test_in_place_backprop_equals_out_of_place_for_any_input(data, logits):
    labels = draw_labels(data, logits)
    expected_loss, expected_grad = SPARSE_RAW(features=logits.copy(), labels=labels)
    loss, grad = SPARSE_RAW(features=logits, labels=labels, backprop_out=logits)
    assert np.shares_memory(grad, logits) or grad.size == 0
    np.testing.assert_array_equal(loss.astype(np.float64), expected_loss.astype(np.float64))
    np.testing.assert_array_equal(logits.astype(np.float64), expected_grad.astype(np.float64))


@pytest.mark.parametrize("dtype", FLOATS, ids=[d.name for d in FLOATS])
def test_oracle_itself_agrees_with_tf(tf, dtype):
    # The oracle is only useful if it is TF's formula: check it once per dtype.
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((5, 7)) * 5).astype(dtype)
    logits[0, 2] = -np.inf
    labels = np.array([0, 1, 2, 3, 6])
    truth, grad = logsumexp_truth(np.eye(7)[labels], logits)
    x = logits.astype(np.float64)
    tf_loss, tf_grad = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=x, labels=labels)
    np.testing.assert_allclose(truth, tf_loss.numpy(), rtol=1e-13)
    np.testing.assert_allclose(grad, tf_grad.numpy(), rtol=1e-12, atol=1e-15)
