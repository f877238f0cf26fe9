"""TensorFlow as the oracle: how close xent must be to it, and the shared cases.

Every test file compares xent with TensorFlow; the rules for that comparison
live here, once:

  - `assert_close_to_truth`: xent's result against TensorFlow's float64
    answer on the same inputs, within the SPEC's tolerance for the result's
    dtype (float32: 1e-6 relative plus a few float32 ulps of a scale; half
    precision: one ulp of the output format of the rounded truth).
  - `row_scale` and `label_scale`: the scale of a row's rounding error, for
    the absolute part of that tolerance.
  - `ulp` and `assert_within_one_ulp`: one unit in the last place of a dtype.
  - `tf_message`: the text of a TensorFlow error without its wrapping.
  - `EXTREME`: logits at the edges (-inf masks, +-1e30, one class, no rows).
  - `infinite_target_rows`: dense targets of +-inf and NaN, and their float64 truth.
  - `hessian_vector_tf`: TensorFlow's Hessian-vector product of a loss.
"""
import re

import ml_dtypes
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
FLOAT_IDS = [d.name for d in FLOATS]
HALF_NAMES = ("float16", "bfloat16")


# -- the scale of a row's rounding error --------------------------------------------------


def row_scale(logits, axis=-1):
    """``max |finite logit|`` along the class `axis`, in float64, at least 1.

    For inputs of ordinary size. With huge logits (1e30) it is huge too, and a
    tolerance built on it accepts anything: use `label_scale` there.
    """
    mag = np.abs(np.asarray(logits).astype(np.float64))
    mag = np.where(np.isfinite(mag), mag, 0.0)
    return np.max(mag, axis=axis, initial=1.0)


def label_scale(logits, labels):
    """``max_j x_j - x_label + 1`` per row: the size of what the sparse loss subtracts.

    TensorFlow computes ``log(sum exp(x - max)) - (x_label - max)``; its
    rounding error is a few ulps of ``max - x_label`` (plus one for the log),
    however large the logits themselves are. Non-finite rows get 1 (their
    truth is inf or NaN, compared exactly). logits ``[..., C]``, labels
    ``[...]`` → ``[...]``.
    """
    x = np.asarray(logits).astype(np.float64)
    picked = np.take_along_axis(x, np.asarray(labels)[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore"):
        gap = np.max(x, axis=-1, initial=-np.inf) - picked + 1.0
    return np.where(np.isfinite(gap), gap, 1.0)


def dense_scale(logits, labels):
    """``sum_j |y_j| (max - x_j) + max_j |y_j|`` per row: `label_scale` for target rows.

    Entries with ``y_j == 0`` or a non-finite ``x_j`` add nothing (their
    terms are exact, or make the truth inf or NaN, compared exactly).
    """
    x = np.asarray(logits).astype(np.float64)
    y = np.abs(np.broadcast_to(np.asarray(labels).astype(np.float64), x.shape))
    with np.errstate(invalid="ignore"):
        gap = np.max(x, axis=-1, keepdims=True, initial=-np.inf) - x
        terms = np.where((y == 0) | ~np.isfinite(gap), 0.0, y * gap)
    return np.sum(terms, axis=-1) + np.max(y, axis=-1, initial=1.0)


# -- tolerances ---------------------------------------------------------------------------


def _target_and_tolerance(truth, dtype, scale):
    """The value to compare with (the truth, rounded for half dtypes) and the tolerance."""
    if dtype.name in HALF_NAMES:
        with np.errstate(over="ignore", invalid="ignore"):  # rounding may overflow to inf
            rounded = truth.astype(dtype)
            target = rounded.astype(np.float64)
            return target, np.spacing(np.abs(rounded)).astype(np.float64) + 4 * EPS32 * scale
    if dtype.name == "float32":
        return truth, 1e-6 * np.abs(truth) + 4 * EPS32 * scale
    return truth, 1e-12 * np.abs(truth) + 4 * EPS64 * scale


def assert_close_to_truth(got, truth, dtype, scale=1.0):
    """Assert `got` (xent, of `dtype`) is within the SPEC tolerance of a float64 truth.

    Args:
      got: NumPy array or scalar from xent, of `dtype` and the truth's shape.
      truth: TensorFlow's answer in float64 (or computed from it).
      dtype: the dtype xent must return.
      scale: the rounding scale per entry (`row_scale`, `label_scale`), broadcast
        to the truth's shape.

    NaN must be where the truth's NaN is, infinities equal, and every finite
    entry within ``1e-6 |truth| + 4 eps32 * scale`` (float32),
    ``1e-12 |truth| + 4 eps64 * scale`` (float64), or one ulp of the rounded
    truth plus ``4 eps32 * scale`` (float16, bfloat16: computed in float32,
    rounded once).
    """
    dtype = np.dtype(dtype)
    assert isinstance(got, (np.ndarray, np.generic)), type(got)
    got = np.asarray(got)
    assert got.dtype.name == dtype.name, (got.dtype, dtype)
    assert got.shape == np.shape(truth), (got.shape, np.shape(truth))
    truth = np.asarray(truth, np.float64)
    scale = np.broadcast_to(np.asarray(scale, np.float64), truth.shape)
    target, tol = _target_and_tolerance(truth, dtype, scale)
    value = got.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(value), np.isnan(target), err_msg="NaN positions differ")
    inf = np.isinf(target)
    np.testing.assert_array_equal(value[inf], target[inf], err_msg="infinite entries differ")
    finite = ~np.isnan(target) & ~inf
    with np.errstate(invalid="ignore"):
        bad = finite & ~(np.abs(value - target) <= tol)
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} entries off: got {value[bad][:5]}, truth {truth[bad][:5]}, "
        f"tol {np.where(finite, tol, 0)[bad][:5]}")


def ulp(value, dtype):
    """One unit in the last place of `dtype` at the magnitude of `value` (float64)."""
    finfo = ml_dtypes.finfo(dtype)
    magnitude = np.maximum(np.abs(np.asarray(value, np.float64)), float(finfo.smallest_normal))
    return float(finfo.eps) * 2.0 ** np.floor(np.log2(magnitude))


def assert_within_one_ulp(actual, truth, dtype):
    """`actual`, of `dtype` and the truth's shape, within one ulp of the float64 truth."""
    actual = np.asarray(actual)
    assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    assert actual.shape == np.shape(truth), (actual.shape, np.shape(truth))
    error = np.abs(actual.astype(np.float64) - np.asarray(truth, np.float64))
    assert np.all(error <= ulp(truth, dtype)), (actual, truth, error / ulp(truth, dtype))


# -- TensorFlow's errors ------------------------------------------------------------------


def tf_message(exc):
    """TF's error text without the ``{{function_node ...}}`` prefix and ``[Op:...]`` suffix."""
    text = re.sub(r"^\{\{[^}]*\}\}\s*", "", str(exc))
    return re.sub(r"\s*\[Op:.*$", "", text, flags=re.S).strip()


# -- shared cases -------------------------------------------------------------------------

INF = np.inf
EXTREME = {  # (logits, labels): -inf masks, +-1e30, an all -inf row, one class, no rows
    "masked": ([[0.0, -INF, 1.0], [2.0, 3.0, -INF]], [0, 1]),
    "huge": ([[1e30, -1e30, 0.0], [-1e30, 1e30, 1e30]], [0, 2]),
    "all-neg-inf": ([[-INF, -INF]], [0]),
    "one-class": ([[3.0], [4.0]], [0, 0]),
    "empty": (np.zeros((0, 3)), np.zeros(0, np.int64)),
}


# Three entries of a row (logits, dense targets); the rest of the row is -300, target 0.
_INF, _NAN = np.inf, np.nan
# Logits whose magnitude swamps log S in a float64 sum (1e16 + log 2 == 1e16),
# clipped to a quarter of each dtype's largest (float16: 16376).
_HUGE = 1e16
INFINITE_TARGET_CASES = [
    ([0, 2, 1], [0, _INF, 0]),          # +inf on the max: +inf (TF's inf * log S)
    ([0, 2, 1], [0, -_INF, 0]),         # -inf on the max: -inf
    ([0, 2, 1], [_INF, 0, 0]),          # off the max: +inf
    ([0, 2, 1], [_INF, -_INF, 0]),      # both signs: NaN
    ([0, 2, 1], [_INF, 0, _INF]),       # twice: +inf
    ([-_INF, 2, 1], [_INF, 0, 0]),      # on a -inf logit: inf * inf
    ([-_INF, 2, 1], [1, _INF, 0]),      # beside a target 1 on a -inf logit: +inf
    ([-_INF, 2, 1], [-1, _INF, 0]),     # beside a target -1 on a -inf logit: NaN
    ([-_INF, 2, 1], [0, _INF, 0]),      # beside a target 0 on a -inf logit: NaN
    ([0, 2, 1], [_NAN, _INF, 0]),       # beside a NaN target: NaN
    ([-300, 2, -300], [0, _INF, 0]),    # on the max, with S = 1: NaN (TF's inf * 0)
    ([_HUGE, _HUGE, 0], [_INF, 0, 0]),  # on a tied max whose log S = log 2 a logit swamps: +inf
    ([_HUGE, _HUGE, 0], [-_INF, 0, 0]),  # the same, -inf
    ([0, 2, 1], [0.25, 0.5, 0.25]),     # finite
]


def infinite_target_rows(dtype, c):
    """`INFINITE_TARGET_CASES` as ``[14, c]`` logits and dense targets of `dtype` (each
    case's three entries spread over the row, the rest -300 with target 0), and
    the float64 truth: TensorFlow's terms y_j (log S - (x_j - M)), summed (5 NaN,
    8 infinite, 1 finite), and softmax - y."""
    at = [0, 1, 2] if c == 3 else [7, c // 2, c - 1]
    x = np.full((len(INFINITE_TARGET_CASES), c), -300.0)
    y = np.zeros_like(x)
    for i, (xs, ys) in enumerate(INFINITE_TARGET_CASES):
        x[i, at], y[i, at] = xs, ys
    x = np.minimum(x, float(ml_dtypes.finfo(dtype).max) / 4)
    x, y = x.astype(dtype), y.astype(dtype)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    d = x64 - x64.max(axis=1, keepdims=True)
    with np.errstate(all="ignore"):
        log_s = np.log(np.exp(d).sum(axis=1, keepdims=True))
        loss = (y64 * (log_s - d)).sum(axis=1)
        grad = np.exp(d - log_s) - y64
    assert np.isnan(loss).sum() == 5 and np.isinf(loss).sum() == 8
    return x, y, loss, grad


def hessian_vector_tf(tf, logits, labels, u, weights, dense):
    """TensorFlow's ``H u`` for ``sum(weights * loss(labels, logits))``, by two tapes.

    Returns ``(d/dlogits, d/dlabels)`` of ``sum(u * d loss / d logits)``; the
    second is zeros for the sparse loss, and for the dense one where TF passes
    nothing from the logits' gradient to the labels.
    """
    x, y = tf.constant(logits), tf.constant(labels)
    fn = (tf.nn.softmax_cross_entropy_with_logits if dense
          else tf.nn.sparse_softmax_cross_entropy_with_logits)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([x, y] if dense else [x])
        with tf.GradientTape() as inner:
            inner.watch(x)
            loss = tf.reduce_sum(fn(labels=y, logits=x) * tf.constant(weights, x.dtype))
        s = tf.reduce_sum(inner.gradient(loss, x) * u)
    hy = outer.gradient(s, y) if dense else None
    return outer.gradient(s, x).numpy(), np.zeros_like(labels) if hy is None else hy.numpy()


def forward_tangents_tf(tf, face, x, labels, dx, dy):
    """TensorFlow's forward-mode tangents (`tf.autodiff.ForwardAccumulator`) of `face`'s
    outputs at logits `x` and labels `labels`, along logits `dx` (and dense labels `dy`,
    or None). `face`: "sparse", "dense" (the nn functions), "raw_sparse", "raw_dense"
    (the raw ops: loss and backprop)."""
    xt, yt = tf.constant(x), tf.constant(labels)
    primals, tangents = [xt], [tf.constant(dx)]
    if dy is not None:
        primals.append(yt)
        tangents.append(tf.constant(dy))
    with tf.autodiff.ForwardAccumulator(primals, tangents) as acc:
        if face == "sparse":
            outs = [tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yt, logits=xt)]
        elif face == "dense":
            outs = [tf.nn.softmax_cross_entropy_with_logits(labels=yt, logits=xt)]
        elif face == "raw_sparse":
            outs = list(tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=xt, labels=yt))
        else:
            outs = list(tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=xt, labels=yt))
    return [acc.jvp(o).numpy() for o in outs]


def forward_mode_inputs(face, dtype, label_dtype):
    """``(logits, labels, logits tangent, labels tangent or None)`` for the forward-mode
    tests of `face` (as `forward_tangents_tf`): [5, 7] logits of `dtype`, dense
    labels (with a tangent) for the dense faces, else class indices of `label_dtype`."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((5, 7)) * 3).astype(dtype)
    dense = face in ("dense", "raw_dense")
    labels = (rng.dirichlet(np.ones(7), 5).astype(dtype) if dense
              else np.array([0, 6, 3, 3, 1], label_dtype))
    dx = rng.standard_normal(x.shape).astype(dtype)
    dy = rng.standard_normal(labels.shape).astype(dtype) if dense else None
    return x, labels, dx, dy


def half_ulps(got, truth, dtype):
    """The largest distance of `got` (float16 or bfloat16) from a float64 `truth`, in
    units of the spacing of `dtype` at the rounded truth (0.5: rounded once)."""
    dtype = np.dtype(dtype)
    wide = np.float16 if dtype == np.float16 else np.float32
    rounded = np.asarray(truth, np.float64).astype(wide).astype(np.float64)
    spacing = np.spacing(np.abs(rounded).astype(wide)).astype(np.float64)
    if dtype != np.float16:   # (bfloat16: float32's spacing times 2**16)
        spacing = spacing * 2.0 ** 16
    return float(np.max(np.abs(np.asarray(got, np.float64) - truth) / spacing))


def scaled_xent_gradient(logits, labels, upstream):
    """float64 ``upstream[:, None] * (softmax(logits) - onehot(labels))``, the gradient
    of ``sum(loss * upstream)``; `labels` int ``[N]``."""
    x = np.asarray(logits, np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p * np.asarray(upstream, np.float64)[:, None]
