"""`xent.compat.v1.nn` against `tf.compat.v1.nn`: TF 1's argument names (``dim``),
its refusal of ``dim`` and ``axis`` together, and the v1 op's labels held
constant (no gradient), on NumPy arrays, torch tensors and JAX arrays."""
import numpy as np
import pytest

import xent

V1 = xent.compat.v1.nn
RNG = np.random.default_rng(21)
LOGITS = RNG.normal(size=(4, 5)).astype(np.float32) * 2
LABELS = np.abs(RNG.normal(size=(4, 5))).astype(np.float32)
SPARSE = RNG.integers(0, 5, 4)


@pytest.mark.parametrize("kwargs", [{}, {"dim": 0}, {"dim": None, "axis": 0}, {"axis": 0},
                                    {"dim": 1, "axis": 1}],
                         ids=["default", "dim", "axis-with-dim-none", "axis", "both"])
def test_v1_dense_op_takes_tf1s_axis_arguments(tf, kwargs):
    """``dim`` is the class axis; ``axis`` beside ``dim`` (whose default -1 counts as
    given) raises TF's ValueError; the values are TF's."""
    try:
        want = tf.compat.v1.nn.softmax_cross_entropy_with_logits(
            labels=LABELS, logits=LOGITS, **kwargs).numpy()
    except ValueError as error:
        with pytest.raises(ValueError, match=str(error)):
            V1.softmax_cross_entropy_with_logits(labels=LABELS, logits=LOGITS, **kwargs)
        return
    got = V1.softmax_cross_entropy_with_logits(labels=LABELS, logits=LOGITS, **kwargs)
    np.testing.assert_allclose(got, want, rtol=2e-6)


@pytest.mark.parametrize("kwargs", [{}, {"axis": 0}, {"dim": 0}, {"axis": 0, "dim": 0}],
                         ids=["default", "axis", "dim", "both"])
def test_v2_dense_op_and_the_sparse_op_take_positional_arguments(tf, kwargs):
    try:
        want = tf.compat.v1.nn.softmax_cross_entropy_with_logits_v2(LABELS, LOGITS, **kwargs).numpy()
    except ValueError as error:
        with pytest.raises(ValueError, match=str(error)):
            V1.softmax_cross_entropy_with_logits_v2(LABELS, LOGITS, **kwargs)
        return
    np.testing.assert_allclose(V1.softmax_cross_entropy_with_logits_v2(LABELS, LOGITS, **kwargs),
                               want, rtol=2e-6)
    np.testing.assert_allclose(V1.sparse_softmax_cross_entropy_with_logits(SPARSE, LOGITS),
                               tf.compat.v1.nn.sparse_softmax_cross_entropy_with_logits(
                                   SPARSE, LOGITS).numpy(), rtol=2e-6)


def _tf_gradients(tf, function):
    labels, logits = tf.constant(LABELS), tf.constant(LOGITS)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([labels, logits])
        loss = tf.reduce_sum(function(labels=labels, logits=logits))
    return [None if g is None else g.numpy() for g in tape.gradient(loss, [labels, logits])]


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("name", ["softmax_cross_entropy_with_logits",
                                  "softmax_cross_entropy_with_logits_v2"])
def test_only_the_v1_op_stops_the_labels_gradient(tf, framework, name):
    """TF 1's op holds the labels constant (TF: no gradient), its ``_v2`` does not;
    both give the logits TF's gradient."""
    d_labels_tf, d_logits_tf = _tf_gradients(tf, getattr(tf.compat.v1.nn, name))
    function = getattr(V1, name)
    if framework == "torch":
        torch = pytest.importorskip("torch")
        labels = torch.tensor(LABELS, requires_grad=True)
        logits = torch.tensor(LOGITS, requires_grad=True)
        loss = function(labels=labels, logits=logits).sum()
        loss.backward()
        d_labels = None if labels.grad is None else labels.grad.numpy()
        d_logits = logits.grad.numpy()
    else:
        jax = pytest.importorskip("jax")
        d_labels, d_logits = jax.grad(lambda y, x: function(labels=y, logits=x).sum(),
                                      argnums=(0, 1))(jax.numpy.asarray(LABELS),
                                                      jax.numpy.asarray(LOGITS))
        d_labels = np.asarray(d_labels)
    np.testing.assert_allclose(np.asarray(d_logits), d_logits_tf, rtol=2e-5, atol=1e-6)
    if d_labels_tf is None:   # (JAX gives a zero for a stopped input, torch no gradient)
        assert d_labels is None or not np.any(d_labels)
    else:
        np.testing.assert_allclose(d_labels, d_labels_tf, rtol=2e-5, atol=1e-6)


def test_v1_namespace_mirrors_tfs():
    assert xent.compat.v1.losses is xent.losses
    assert set(V1.__all__) == {"softmax_cross_entropy_with_logits",
                               "softmax_cross_entropy_with_logits_v2",
                               "sparse_softmax_cross_entropy_with_logits"}


@pytest.mark.parametrize("name", ["softmax_cross_entropy_with_logits",
                                  "sparse_softmax_cross_entropy_with_logits"])
def test_missing_or_bad_arguments_are_named(name):
    """A missing argument raises TF's ValueError naming both; integer logits an
    InvalidDTypeError (TF's InvalidArgumentError, and a TypeError) naming `logits`."""
    function = getattr(V1, name)
    labels = SPARSE if name.startswith("sparse") else LABELS
    with pytest.raises(ValueError, match="Both `labels` and `logits` must be provided"):
        function(labels=None, logits=LOGITS)
    with pytest.raises(xent.errors.InvalidDTypeError, match="logits"):
        function(labels=labels, logits=LOGITS.astype(np.int32))
