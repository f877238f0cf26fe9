"""Every public function as a case for gradient tests: xent's call, TensorFlow's
call, inputs, and which inputs are differentiated.

Shared by test_torch.py and test_jax.py, which run xent's side on their own
arrays; TensorFlow (`tf.GradientTape`) is the oracle. A case's output ``out``
is reduced to a scalar as ``sum(out * cotangent)`` with a fixed random
cotangent, so a vector-Jacobian product with a non-trivial upstream gradient
is checked, not just the gradient of a sum.
"""
import dataclasses
from typing import Callable

import numpy as np

import xent

BATCH, CLASSES = 6, 5
V1_REDUCTIONS = ("none", "weighted_sum", "weighted_mean", "weighted_sum_over_batch_size",
                 "weighted_sum_by_nonzero_weights")
KERAS_REDUCTIONS = ("sum_over_batch_size", "sum", "none", "mean_with_sample_weight")


@dataclasses.dataclass(frozen=True)
class Case:
    """One public call. `xent_fn(x, a)` / `tf_fn(tf, a)` take the input dict `a`."""

    name: str
    make: Callable  # (rng, dtype) -> dict of NumPy inputs
    wrt: tuple  # names of the float inputs to differentiate
    xent_fn: Callable
    tf_fn: Callable
    tf_float32_only: bool = False  # TF computes this in float32 even for float64

    def __str__(self):
        return self.name


def _logits(rng, dtype, shape=(BATCH, CLASSES)):
    return (2.0 * rng.standard_normal(shape)).astype(dtype)


def _probs(rng, dtype, shape=(BATCH, CLASSES)):
    e = np.exp(rng.standard_normal(shape))
    return (e / e.sum(-1, keepdims=True)).astype(dtype)


def _labels(rng, shape=(BATCH,)):
    return rng.integers(0, CLASSES, shape).astype(np.int64)


def _weights(rng, dtype, shape=(BATCH,)):
    w = rng.uniform(0.5, 2.0, shape)
    w.flat[1] = 0.0
    return w.astype(dtype)


def sparse_inputs(rng, dtype):
    return {"labels": _labels(rng), "logits": _logits(rng, dtype)}


def dense_inputs(rng, dtype):
    return {"labels": _probs(rng, dtype), "logits": _logits(rng, dtype)}


def no_classes_inputs(rng, dtype):
    """Dense labels and logits ``[BATCH, 0]``: a loss of 0, gradients as empty."""
    return {"labels": np.zeros((BATCH, 0), dtype), "logits": np.zeros((BATCH, 0), dtype)}


def _nn_cases():
    yield Case("nn.sparse", sparse_inputs, ("logits",),
               lambda x, a: xent.nn.sparse_softmax_cross_entropy_with_logits(**a),
               lambda tf, a: tf.nn.sparse_softmax_cross_entropy_with_logits(**a))
    yield Case("nn.sparse-rank3",
               lambda rng, d: {"labels": _labels(rng, (2, 3)), "logits": _logits(rng, d, (2, 3, CLASSES))},
               ("logits",),
               lambda x, a: xent.nn.sparse_softmax_cross_entropy_with_logits(**a),
               lambda tf, a: tf.nn.sparse_softmax_cross_entropy_with_logits(**a))
    yield Case("nn.dense", dense_inputs, ("labels", "logits"),
               lambda x, a: xent.nn.softmax_cross_entropy_with_logits(**a),
               lambda tf, a: tf.nn.softmax_cross_entropy_with_logits(**a))
    yield Case("nn.dense-no-classes", no_classes_inputs, ("labels", "logits"),
               lambda x, a: xent.nn.softmax_cross_entropy_with_logits(**a),
               lambda tf, a: tf.nn.softmax_cross_entropy_with_logits(**a))
    yield Case("nn.dense-axis0",
               lambda rng, d: {"labels": _probs(rng, d, (BATCH, CLASSES)).T.copy(),
                               "logits": _logits(rng, d, (CLASSES, BATCH))},
               ("labels", "logits"),
               lambda x, a: xent.nn.softmax_cross_entropy_with_logits(**a, axis=0),
               lambda tf, a: tf.nn.softmax_cross_entropy_with_logits(**a, axis=0))


def _v1_cases():
    for r in V1_REDUCTIONS:
        yield Case(f"losses.sparse-{r}",
                   lambda rng, d: {**sparse_inputs(rng, d), "weights": _weights(rng, d)},
                   ("logits", "weights"),
                   lambda x, a, r=r: xent.losses.sparse_softmax_cross_entropy(**a, reduction=r),
                   lambda tf, a, r=r: tf.compat.v1.losses.sparse_softmax_cross_entropy(**a, reduction=r),
                   tf_float32_only=True)
        yield Case(f"losses.dense-{r}",
                   lambda rng, d: {"onehot_labels": np.eye(CLASSES, dtype=d)[_labels(rng)],
                                   "logits": _logits(rng, d), "weights": _weights(rng, d)},
                   ("logits", "weights"),
                   lambda x, a, r=r: xent.losses.softmax_cross_entropy(**a, label_smoothing=0.1, reduction=r),
                   lambda tf, a, r=r: tf.compat.v1.losses.softmax_cross_entropy(
                       **a, label_smoothing=0.1, reduction=r),
                   tf_float32_only=True)
        yield Case(f"losses.weighted-{r}",
                   lambda rng, d: {"losses": rng.uniform(0.1, 3.0, (BATCH,)).astype(d),
                                   "weights": _weights(rng, d)},
                   ("losses", "weights"),
                   lambda x, a, r=r: xent.losses.compute_weighted_loss(**a, reduction=r),
                   lambda tf, a, r=r: tf.compat.v1.losses.compute_weighted_loss(**a, reduction=r),
                   tf_float32_only=True)


def _keras_function_cases():
    def sparse_from_probs(rng, d):
        return {"y_true": _labels(rng), "y_pred": _probs(rng, d)}

    for name, make, kwargs in [
        ("logits", sparse_inputs, {"from_logits": True}),
        ("probs", sparse_from_probs, {}),
        ("ignore2", sparse_inputs, {"from_logits": True, "ignore_class": 2}),
    ]:
        yield Case(f"keras.sparse_fn-{name}",
                   lambda rng, d, make=make: dict(zip(("y_true", "y_pred"), make(rng, d).values())),
                   ("y_pred",),
                   lambda x, a, k=kwargs: xent.keras.losses.sparse_categorical_crossentropy(**a, **k),
                   lambda tf, a, k=kwargs: tf.keras.losses.sparse_categorical_crossentropy(**a, **k))
    for name, make, kwargs in [
        ("logits-smooth", dense_inputs, {"from_logits": True, "label_smoothing": 0.1}),
        ("probs", lambda rng, d: {"labels": _probs(rng, d), "logits": _probs(rng, d)}, {}),
    ]:
        yield Case(f"keras.categorical_fn-{name}",
                   lambda rng, d, make=make: dict(zip(("y_true", "y_pred"), make(rng, d).values())),
                   ("y_true", "y_pred"),
                   lambda x, a, k=kwargs: xent.keras.losses.categorical_crossentropy(**a, **k),
                   lambda tf, a, k=kwargs: tf.keras.losses.categorical_crossentropy(**a, **k))


def _keras_class_cases():
    for r in KERAS_REDUCTIONS:
        yield Case(f"keras.SparseCategoricalCrossentropy-{r}",
                   lambda rng, d: {"y_true": _labels(rng), "y_pred": _logits(rng, d),
                                   "sample_weight": _weights(rng, d)},
                   ("y_pred", "sample_weight"),
                   lambda x, a, r=r: xent.keras.losses.SparseCategoricalCrossentropy(
                       from_logits=True, reduction=r, dtype=_dtype_name(a))(**a),
                   lambda tf, a, r=r: tf.keras.losses.SparseCategoricalCrossentropy(
                       from_logits=True, reduction=r, dtype=_dtype_name(a))(**a))
        yield Case(f"keras.CategoricalCrossentropy-{r}",
                   lambda rng, d: {"y_true": _probs(rng, d), "y_pred": _probs(rng, d),
                                   "sample_weight": _weights(rng, d)},
                   ("y_pred", "sample_weight"),
                   lambda x, a, r=r: xent.keras.losses.CategoricalCrossentropy(
                       label_smoothing=0.05, reduction=r, dtype=_dtype_name(a))(**a),
                   lambda tf, a, r=r: tf.keras.losses.CategoricalCrossentropy(
                       label_smoothing=0.05, reduction=r, dtype=_dtype_name(a))(**a))


def _dtype_name(a):
    """The Keras loss dtype for these inputs: None (float32 policy) or ``"float64"``."""
    return "float64" if "float64" in str(a["y_pred"].dtype) else None


def _raw_cases():
    dense = "SoftmaxCrossEntropyWithLogits"
    for name, make, op, wrt in [
        ("SparseSoftmaxCrossEntropyWithLogits", sparse_inputs,
         "SparseSoftmaxCrossEntropyWithLogits", ("features",)),
        (dense, dense_inputs, dense, ("features", "labels")),
        (f"{dense}-no-classes", no_classes_inputs, dense, ("features", "labels")),
    ]:
        def inputs(rng, d, make=make):
            a = make(rng, d)
            return {"features": a["logits"], "labels": a["labels"]}

        # The loss output; its gradient flows into features (and dense labels).
        yield Case(f"raw_ops.{name}-loss", inputs, wrt,
                   lambda x, a, op=op: getattr(xent.raw_ops, op)(**a)[0],
                   lambda tf, a, op=op: getattr(tf.raw_ops, op)(**a)[0])
        # The backprop output: TF's second-order term (the softmax Jacobian) for
        # the features, and nothing for dense labels (TF's registered gradient).
        yield Case(f"raw_ops.{name}-backprop", inputs, wrt,
                   lambda x, a, op=op: getattr(xent.raw_ops, op)(**a)[1],
                   lambda tf, a, op=op: getattr(tf.raw_ops, op)(**a)[1])


CASES = [*_nn_cases(), *_v1_cases(), *_keras_function_cases(), *_keras_class_cases(), *_raw_cases()]

_tf_cache = {}


def tf_oracle(tf, case, inputs, rng):
    """TensorFlow's output, a cotangent, and the gradients of ``sum(out * cotangent)``.

    The cotangent is drawn from `rng` in the output's shape. Inputs come from a
    freshly seeded generator, so the result is cached per case and dtype.
    """
    key = (case.name, inputs[case.wrt[0]].dtype.name)
    if key not in _tf_cache:
        args = {k: tf.constant(v) for k, v in inputs.items()}
        with tf.GradientTape() as tape:
            for k in case.wrt:
                tape.watch(args[k])
            out = case.tf_fn(tf, args)
            cotangent = rng.uniform(0.5, 1.5, out.shape)
            objective = tf.reduce_sum(out * tf.cast(cotangent, out.dtype))
        grads = tape.gradient(objective, [args[k] for k in case.wrt])
        grads = [np.zeros_like(inputs[k]) if g is None else g.numpy() for k, g in zip(case.wrt, grads)]
        _tf_cache[key] = (out.numpy(), cotangent, grads)
    return _tf_cache[key]


def tolerance(case, dtype):
    """``(rtol, atol)`` for comparing with TF: float32's unless both sides are float64."""
    if np.dtype(dtype) == np.float64 and not case.tf_float32_only:
        return 1e-10, 1e-12
    return 2e-5, 2e-6


def assert_matches_tf(case, dtype, got_out, got_grads, want):
    """xent's output and gradients (NumPy) against `tf_oracle`'s, with dtype and shape."""
    out, _, grads = want
    rtol, atol = tolerance(case, dtype)
    assert got_out.dtype == out.dtype, (got_out.dtype, out.dtype)
    np.testing.assert_allclose(got_out, out, rtol=rtol, atol=atol, err_msg=f"{case} value")
    for name, got, expected in zip(case.wrt, got_grads, grads):
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=f"{case} d/d{name}")
