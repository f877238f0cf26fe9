"""xent on JAX arrays: values and `jax.grad` gradients against TensorFlow, eagerly
and under `jax.jit`, plus `vmap`, second order, NaN rows for traced bad labels,
and the residuals the backward keeps. The `path` tests run both the CPU's
fused kernel (an XLA buffer callback) and the `jax.numpy` path of other
devices.

float64 cases run inside ``jax.enable_x64(True)``; float32 cases with JAX's
default (32-bit) configuration, as most users run it.
"""
import contextlib

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import xent  # noqa: E402
from oracle import (EXTREME, assert_close_to_truth, forward_mode_inputs,  # noqa: E402
                    forward_tangents_tf, hessian_vector_tf, label_scale, tf_message)
from tf_grad_cases import CASES, assert_matches_tf, tf_oracle  # noqa: E402

DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
SPARSE = xent.nn.sparse_softmax_cross_entropy_with_logits
DENSE = xent.nn.softmax_cross_entropy_with_logits


@pytest.fixture(params=["kernel", "jax.numpy"])
def path(request):
    """The CPU kernel through a buffer callback, and the jax.numpy path of other devices."""
    from xent import _jax_cpu
    _jax_cpu.use_jax_numpy_on_cpu(request.param == "jax.numpy")
    yield request.param
    _jax_cpu.use_jax_numpy_on_cpu(False)


def _x64(dtype):
    """64-bit JAX for float64 inputs; the default configuration otherwise."""
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


def _value_and_grads(case, inputs, cotangent, jit):
    """xent's output and `jax.grad` of ``sum(out * cotangent)`` for the case's inputs."""
    diff = {k: jnp.asarray(v) for k, v in inputs.items() if k in case.wrt}
    rest = {k: jnp.asarray(v) for k, v in inputs.items() if k not in case.wrt}

    def objective(diff, rest):
        out = case.xent_fn(xent, {**rest, **diff})
        return jnp.sum(out * jnp.asarray(cotangent, out.dtype)), out

    fn = jax.value_and_grad(objective, has_aux=True)
    (_, out), grads = (jax.jit(fn) if jit else fn)(diff, rest)
    assert isinstance(out, jax.Array), type(out)
    return np.asarray(out), [np.asarray(grads[k]) for k in case.wrt]


# The kernel path eagerly and under jit; the jax.numpy path (the same trace either
# way, and the one of other devices, where jit is the norm) under jit.
@pytest.mark.parametrize("path,jit", [("kernel", False), ("kernel", True), ("jax.numpy", True)],
                         ids=["kernel-eager", "kernel-jit", "jax.numpy-jit"], indirect=["path"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_value_and_gradient_match_tensorflow(tf, rng, case, dtype, jit, path):
    inputs = case.make(rng, dtype)
    want = tf_oracle(tf, case, inputs, rng)
    with _x64(dtype):
        got_out, got_grads = _value_and_grads(case, inputs, want[1], jit)
    assert_matches_tf(case, dtype, got_out, got_grads, want)


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_grad_of_grad_matches_tensorflow(tf, rng, dense, path):
    """Reverse over reverse differentiates the custom VJP: TF's Hessian-vector products."""
    logits = rng.standard_normal((6, 5))
    labels = rng.dirichlet(np.ones(5), 6) if dense else rng.integers(0, 5, 6)
    u, weights = rng.standard_normal((6, 5)), rng.uniform(0.5, 1.5, 6)
    want_x, want_y = hessian_vector_tf(tf, logits, labels, u, weights, dense)
    fn = DENSE if dense else SPARSE

    def directional(x, y):
        grad = jax.grad(lambda x: jnp.sum(fn(labels=y, logits=x) * weights))(x)
        return jnp.sum(grad * u)

    with jax.enable_x64(True):
        hessian_vector = jax.jit(jax.grad(directional, argnums=(0, 1) if dense else (0,)))
        got = hessian_vector(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got[0], want_x, rtol=1e-10, atol=1e-12)
    if dense:  # TF sends nothing from the logits' gradient to the labels: zero
        np.testing.assert_allclose(got[1], want_y, rtol=1e-10, atol=1e-12)


def test_check_grads_float64(rng, path):
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((4, 5)))
        y = jnp.asarray(rng.dirichlet(np.ones(5), 4))
        labels = jnp.asarray([0, 3, 4, 1])
        check_grads(lambda x: SPARSE(labels=labels, logits=x), (x,), order=2, modes=["rev"])
        check_grads(lambda x, y: DENSE(labels=y, logits=x), (x, y), order=1, modes=["rev"])
        check_grads(lambda x: DENSE(labels=y, logits=x), (x,), order=2, modes=["rev"])
        raw = lambda x: xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(x, labels)  # noqa: E731
        check_grads(raw, (x,), order=2, modes=["rev"])


def test_hessian_forward_over_reverse_is_exact(rng, path):
    """`jax.hessian` (jacfwd of jacrev) differentiates the backward rule: exact."""
    with jax.enable_x64(True):
        x, labels = jnp.asarray(rng.standard_normal((2, 4))), jnp.array([0, 3])
        got = jax.hessian(lambda x: SPARSE(labels=labels, logits=x).sum())(x)
        want = jax.hessian(lambda x: jnp.sum(jax.nn.logsumexp(x, -1) - x[jnp.arange(2), labels]))(x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("face", ["sparse", "dense", "raw_sparse", "raw_dense"])
def test_forward_mode_tangents_match_tensorflows_forward_accumulator(tf, path, face, dtype):
    """`jax.jvp` under `jit` through every face, on both paths: the tangents of the
    loss (and of the raw ops' backprop) along a logits tangent, and a dense labels
    tangent too."""
    x, labels, dx, dy = forward_mode_inputs(face, dtype, np.int32)
    dense = dy is not None
    want = forward_tangents_tf(tf, face, x, labels, dx, dy)
    raw = {"raw_sparse": xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits,
           "raw_dense": xent.raw_ops.SoftmaxCrossEntropyWithLogits}.get(face)

    def outputs(x, y):
        if raw is not None:
            return tuple(raw(features=x, labels=y))
        return ((DENSE if dense else SPARSE)(labels=y, logits=x),)

    with _x64(dtype):
        tangents = (jnp.asarray(dx), jnp.asarray(dy)) if dense else (jnp.asarray(dx),)
        if dense:
            f = jax.jit(lambda x, y, dx, dy: jax.jvp(outputs, (x, y), (dx, dy))[1])
        else:
            f = jax.jit(lambda x, y, dx: jax.jvp(lambda x: outputs(x, y), (x,), (dx,))[1])
        got = f(jnp.asarray(x), jnp.asarray(labels), *tangents)
    assert len(got) == len(want)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=tol, atol=tol)


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e5])
def test_dense_labels_gradient_at_large_logits_matches_tensorflow(tf, path, offset):
    """The labels' gradient ``-log_softmax(logits)`` (reverse and forward mode), with
    logits far from 0: on the kernel path it was ``lse - logits`` with the
    kernel's ``lse = m + log S`` rounded at m's scale (8.7e-4 off at 1e5, where
    TF's is within 5e-8)."""
    x = np.array([[0.0, 1.0, 2.0, 0.5], [3.0, -1.0, 0.25, 0.0]], np.float32) + np.float32(offset)
    y = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.25, 0.25]], np.float32)
    xt, yt = tf.constant(x), tf.constant(y)
    with tf.GradientTape() as tape:
        tape.watch(yt)
        loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels=yt, logits=xt))
    want = tape.gradient(loss, yt).numpy()
    tol = dict(rtol=3e-7, atol=3e-7)
    objective = lambda a, b: DENSE(labels=b, logits=a).sum()
    for fn in (jax.grad(objective, argnums=1), jax.jit(jax.grad(objective, argnums=1))):
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x), jnp.asarray(y))), want, **tol)
    # forward mode along the labels, and the raw op's loss (its own jvp rule)
    for out in (lambda b: DENSE(labels=b, logits=jnp.asarray(x)),
                lambda b: xent.raw_ops.SoftmaxCrossEntropyWithLogits(features=jnp.asarray(x), labels=b)[0]):
        tangent = jax.jit(lambda b: jax.jvp(out, (b,), (jnp.ones_like(b),))[1])(jnp.asarray(y))
        np.testing.assert_allclose(np.asarray(tangent), want.sum(-1), **tol)


def test_vmap_matches_the_batched_call_with_gradients(rng, path):
    logits = jnp.asarray(rng.standard_normal((3, 4, 5)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, (3, 4)))
    y = jnp.asarray(rng.dirichlet(np.ones(5), (3, 4)), jnp.float32)

    def total(x):
        sparse = jax.vmap(lambda x, l: SPARSE(labels=l, logits=x))(x, labels)
        dense = jax.vmap(lambda x, y: DENSE(labels=y, logits=x))(x, y)
        return jnp.sum(sparse) + jnp.sum(dense * 2.0)

    def reference(x):
        return jnp.sum(SPARSE(labels=labels, logits=x)) + jnp.sum(DENSE(labels=y, logits=x) * 2.0)

    np.testing.assert_allclose(jax.jit(total)(logits), reference(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(total))(logits), jax.grad(reference)(logits),
                               rtol=1e-6, atol=1e-7)


def test_label_out_of_range_raises_tensorflows_error_with_concrete_arrays():
    with pytest.raises(xent.errors.InvalidArgumentError,
                       match=r"Received a label value of 5 which is outside the valid range of \[0, 3\)"):
        jax.grad(lambda x: SPARSE(labels=jnp.array([0, 5]), logits=x).sum())(jnp.zeros((2, 3)))


RAW_SPARSE = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits
SPARSE_FACES = {
    "nn": lambda m, y, x: m.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x),
    "losses": lambda m, y, x: (m.losses if m is xent else m.compat.v1.losses)
    .sparse_softmax_cross_entropy(y, x),
    "raw_ops": lambda m, y, x: m.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=x, labels=y),
    "keras": lambda m, y, x: m.keras.losses.sparse_categorical_crossentropy(y, x, from_logits=True),
}


def test_int64_weights_jax_cannot_hold_as_integers_weigh_as_in_tensorflow(tf):
    """Weights are cast to a float dtype: NumPy int64 weights past int32 become floats
    (not an error, nor wrapped: 2**33 would weigh 0), as TensorFlow weighs them."""
    logits, labels = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32), np.array([0, 1])
    weights = np.array([2**33, 1])
    want = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights=weights)
    got = xent.losses.sparse_softmax_cross_entropy(labels, jnp.asarray(logits), weights=weights)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    want = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, logits, sample_weight=weights)
    got = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, jnp.asarray(logits), sample_weight=weights)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("labels", [np.array([0, 2**32 + 1]), [0, -2**32 + 2], np.array([0, -2**63])],
                         ids=["2**32+1", "list-2**32+2", "-2**63"])
@pytest.mark.parametrize("face", list(SPARSE_FACES))
def test_int64_labels_jax_cannot_hold_raise_as_in_tensorflow(tf, face, labels):
    """Without `jax_enable_x64` JAX holds int64 as int32 and would wrap 2**32 + 1 to
    the valid class 1: NumPy or Python labels that do not fit raise, naming the
    value, where TensorFlow raises its out-of-range error."""
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        SPARSE_FACES[face](tf, np.asarray(labels), logits)
    with pytest.raises(xent.errors.InvalidArgumentError, match=str(np.asarray(labels)[1])):
        SPARSE_FACES[face](xent, labels, jnp.asarray(logits))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16],
                         ids=["float32", "bfloat16", "float16"])
def test_raw_op_label_out_of_range_raises_tensorflows_error_with_concrete_arrays(tf, dtype):
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=np.zeros((2, 3), np.float32),
                                                       labels=np.array([0, 5]))
    with pytest.raises(xent.errors.InvalidArgumentError) as err:
        RAW_SPARSE(jnp.zeros((2, 3), dtype), jnp.array([0, 5]))
    assert str(err.value) == tf_message(tf_err.value)


def test_raw_op_label_out_of_range_under_jit_gives_nan_rows_in_a_named_tuple(path):
    """As TensorFlow on a GPU; the result keeps TF's named tuple through jit."""
    result = jax.jit(RAW_SPARSE)(jnp.zeros((3, 3)), jnp.array([0, 5, -1]))
    assert type(result).__name__ == "SparseSoftmaxCrossEntropyWithLogits"
    assert np.isnan(result.loss[1:]).all() and np.isnan(result.backprop[1:]).all()
    np.testing.assert_allclose(result.loss[0], np.log(3.0), rtol=1e-6)
    np.testing.assert_allclose(result.backprop[0], [-2 / 3, 1 / 3, 1 / 3], rtol=1e-6)


def test_label_out_of_range_under_jit_gives_nan_rows(path):
    """As TensorFlow on a GPU: the bad row's loss and gradient are NaN, the rest exact."""
    x, labels = jnp.zeros((3, 3)), jnp.array([0, 5, -1])
    loss = jax.jit(lambda x, l: SPARSE(labels=l, logits=x))(x, labels)
    grad = jax.jit(jax.grad(lambda x, l: SPARSE(labels=l, logits=x)[0]))(x, labels)
    assert np.isnan(loss[1:]).all()
    np.testing.assert_allclose(loss[0], np.log(3.0), rtol=1e-6)
    np.testing.assert_allclose(grad[0], [-2 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    assert np.isnan(grad[1:]).all()  # TF's g * backprop: 0 * NaN


def test_label_out_of_range_under_jit_second_derivatives_follow_tensorflows_gradient(path):
    """A bad row's backprop is NaN, and its derivative softmax's, as TF's registered
    gradient has it whatever the label: the loss's Hessian on that row is
    softmax's Jacobian (finite; the other rows' blocks untouched), and the
    gradient of a function of the raw op's backprop is NaN there (its upstream
    gradient is). The same on both paths (it was NaN on one, 0 on the other)."""
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4)), jnp.float32)
    labels = jnp.array([1, 7])
    loss_sum = lambda x, l: SPARSE(labels=l, logits=x).sum()  # noqa: E731
    hessian = jax.jit(jax.hessian(loss_sum))(x, labels).reshape(8, 8)
    p = jax.nn.softmax(x, axis=-1)
    for row in (0, 1):
        block = hessian[4 * row:4 * row + 4, 4 * row:4 * row + 4]
        np.testing.assert_allclose(block, jnp.diag(p[row]) - jnp.outer(p[row], p[row]),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(hessian[:4, 4:], 0)
    squared = jax.jit(jax.grad(lambda x, l: jnp.sum(RAW_SPARSE(x, l).backprop ** 2)))(x, labels)
    assert np.isnan(squared[1]).all() and np.isfinite(squared[0]).all()


def _residuals(fn, *args):
    """The arrays `jax.vjp` keeps for the backward of `fn` at `args` (its pullback's leaves).

    Read from the pullback itself (a pytree of its residuals), not from
    `print_saved_residuals`' text, whose wording changes between JAX versions.
    """
    _, pullback = jax.vjp(fn, *args)
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(pullback)]


def test_backward_keeps_the_backprop_and_under_jit_no_logits_sized_temporary(rng, path):
    """Outside `jit`, the pullback keeps TF's backprop (the forward-mode rule's
    coefficient; optax keeps exp(logits)), plus -log_softmax when dense labels are
    differentiated, and O(rows) numbers. Under `jit`, XLA fuses it into the
    backward: a sparse `value_and_grad` has no logits-sized temporary, and a
    dense one keeps one (``x - max``, as its forward does), whichever inputs are
    differentiated."""
    x = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
    y = jnp.asarray(rng.dirichlet(np.ones(5), 6), jnp.float32)
    labels = jnp.arange(6) % 5
    log_p = jax.nn.log_softmax(x)
    for fn, args, want in ((lambda x: SPARSE(labels=labels, logits=x).sum(), (x,),
                            [jax.nn.softmax(x) - jax.nn.one_hot(labels, 5)]),
                           (lambda x, y: DENSE(labels=y, logits=x).sum(), (x, y),
                            [jax.nn.softmax(x) - y, -log_p])):
        kept = _residuals(fn, *args)
        big = [r for r in kept if r.shape == x.shape and not any(np.array_equal(r, a) for a in args)]
        assert len(big) == len(want), [r.shape for r in kept]
        for w in want:
            assert any(np.allclose(r, w, rtol=1e-5, atol=1e-6) for r in big), (w, big)
        others = sum(r.size for r in kept if r.shape != x.shape)
        assert others <= 2 * x.shape[0] + labels.size, [r.shape for r in kept]
    rows, classes = 64, 4096
    xs, ys = jnp.ones((rows, classes)), jnp.full((rows, classes), 1.0 / classes)
    ls = jnp.arange(rows) % classes
    for fn, args, most in ((lambda x: SPARSE(labels=ls, logits=x).sum(), (xs,), 0),
                           (lambda x: DENSE(labels=ys, logits=x).sum(), (xs,), 1),
                           (lambda x, y: DENSE(labels=y, logits=x).sum(), (xs, ys), 1)):
        step = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))
        temp = step.lower(*args).compile().memory_analysis().temp_size_in_bytes
        assert temp <= most * xs.nbytes + 64 * rows, temp


def test_jitted_sparse_loss_keeps_no_logits_sized_temporary():
    """The sparse forward is O(rows) in XLA's temporaries, as optax's: taking the
    label's logit from ``x - max`` once made XLA write that difference out whole
    (the dense loss keeps ``x - max``, as optax's does)."""
    rows, classes = 64, 4096
    x = jnp.ones((rows, classes))
    labels = jnp.arange(rows) % classes
    compiled = jax.jit(lambda x: SPARSE(labels=labels, logits=x)).lower(x).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        pytest.skip("this jaxlib gives no memory analysis")
    assert stats.temp_size_in_bytes < x.nbytes // 16, stats.temp_size_in_bytes


def _tf_truth(tf, logits, labels):
    """TF's float64 sparse loss and gradient of its sum, on `logits` widened exactly."""
    x = tf.constant(np.asarray(logits, np.float64))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=np.asarray(labels), logits=x)
    return loss.numpy(), tape.gradient(loss, x).numpy()


def _check_step(got, logits, labels, truth):
    """`got` = ``(sum of losses, gradient)`` of a step on `logits` against TF's `truth`."""
    dtype = np.asarray(logits).dtype
    loss, grad = truth
    assert_close_to_truth(np.asarray(got[1]), grad, dtype, 1.0)
    np.testing.assert_allclose(np.float64(got[0]), loss.sum(),
                               rtol=1e-2 if dtype.itemsize == 2 else 1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16],
                         ids=["float32", "bfloat16", "float16"])
def test_kernel_backprop_reuses_the_logits_buffer_and_never_changes_the_callers(tf, rng, dtype):
    """On the CPU kernel the backprop is written over the logits' buffer (an XLA
    alias): a step whose logits die at the loss (made inside the step, or donated)
    holds one logits-sized buffer, not two, and reuses a donated one; where the
    logits live on (a parameter not donated, or used after the loss) XLA copies
    them first, so the caller's array and later uses keep their values. Each
    result against TF's float64 gradient of the same logits. (float16's backprop
    is float32, and takes its own buffer.)"""
    rows, classes = 64, 1000
    x_host = np.asarray(jnp.asarray(rng.standard_normal((rows, classes)) * 3, dtype))
    labels = jnp.asarray(rng.integers(0, classes, rows))
    truth = _tf_truth(tf, x_host, labels)
    loss = lambda x: SPARSE(labels=labels, logits=x).astype(jnp.float32).sum()  # noqa: E731
    step = jax.value_and_grad(loss)
    x = jnp.asarray(x_host)

    _check_step(jax.jit(step)(x), x_host, labels, truth)   # a parameter, not donated
    _check_step(step(x), x_host, labels, truth)             # eagerly
    grad, again = jax.jit(lambda a: (jax.grad(loss)(a), a * 2))(x)   # used after the loss
    np.testing.assert_array_equal(np.asarray(again), np.asarray(x_host * 2))
    assert_close_to_truth(np.asarray(grad), truth[1], x_host.dtype, 1.0)
    np.testing.assert_array_equal(np.asarray(x), x_host)

    donated = jnp.array(x_host)
    pointer = donated.unsafe_buffer_pointer()
    got = jax.jit(step, donate_argnums=0)(donated)
    _check_step(got, x_host, labels, truth)
    assert got[1].unsafe_buffer_pointer() == pointer

    one = jnp.asarray(1, dtype)
    inner = jax.jit(lambda a, s: step(a * s))
    _check_step(inner(x, one), x_host, labels, truth)
    stats = inner.lower(x, one).compile().memory_analysis()
    held = stats.output_size_in_bytes + stats.temp_size_in_bytes
    # (float16: the backprop is float32, as TF's, `_jax_cpu.backprop_dtype`, and the
    # gradient is its float16 rounding: three times the logits, as TF's float32 pair)
    most = 3 * x.nbytes if x_host.dtype == np.float16 else x.nbytes
    assert held < most + 64 * rows, (held, x.nbytes)   # two buffers without the alias


def _one_device_shard_map(fn, in_specs, out_specs):
    """`fn` under `jax.shard_map` on a one-device mesh, jitted: its values carry the
    manual axis "d" in their types (JAX checks them), whatever the device count."""
    from jax.sharding import Mesh
    mesh = Mesh(np.array(jax.devices()[:1]), ("d",))
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs))


def test_shard_map_gradients_and_hessian_vector_products_match_tensorflow(tf, rng, path):
    """Inside `shard_map` (rows split over the mesh axis) the sparse loss's gradient,
    the dense loss's gradients of logits and labels, and a Hessian-vector product
    are TensorFlow's. The kernel's callback results had no mesh-axis type: each
    rule failed JAX's check that a tangent has its primal's type."""
    from jax.sharding import PartitionSpec as P
    x = rng.standard_normal((8, 33)).astype(np.float32) * 3
    labels = rng.integers(0, 33, 8).astype(np.int32)
    y = rng.dirichlet(np.ones(33), 8).astype(np.float32)
    u = rng.standard_normal((8, 33)).astype(np.float32)
    rows = (P("d"), P("d"))
    sparse_sum = lambda a, b: SPARSE(labels=b, logits=a).sum()  # noqa: E731
    grad = _one_device_shard_map(jax.grad(sparse_sum), rows, P("d"))(x, labels)
    dense = _one_device_shard_map(
        jax.grad(lambda a, t: DENSE(labels=t, logits=a).sum(), argnums=(0, 1)), rows, rows)(x, y)
    hvp = _one_device_shard_map(
        lambda a, v: jax.jvp(jax.grad(lambda z: sparse_sum(z, labels)), (a,), (v,))[1],
        rows, P("d"))(x, u)
    xt, yt = tf.constant(x), tf.constant(y)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([xt, yt])
        sparse_tf = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=xt))
        dense_tf = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels=yt, logits=xt))
    wants = [tape.gradient(sparse_tf, xt)] + tape.gradient(dense_tf, [xt, yt])
    for got, want in zip((grad,) + tuple(dense), wants):
        np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-6)
    want_hvp = hessian_vector_tf(tf, x.astype(np.float64), labels, u, np.ones(8), dense=False)[0]
    np.testing.assert_allclose(np.asarray(hvp), want_hvp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(EXTREME))
def test_extreme_logits_match_the_numpy_kernel_under_jit(name, path):
    """Loss and gradient equal TF's CPU kernel's (xent's NumPy path), NaN where it is."""
    logits, labels = np.asarray(EXTREME[name][0], np.float32), np.asarray(EXTREME[name][1])
    want_loss, want_grad = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(logits, labels)
    fn = jax.jit(jax.value_and_grad(lambda x, l: SPARSE(labels=l, logits=x).sum()))
    _, grad = fn(jnp.asarray(logits), jnp.asarray(labels))
    loss = jax.jit(lambda x, l: SPARSE(labels=l, logits=x))(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_half_precision_loss_and_gradient_round_tfs_float64_answer_once(tf, rng, dtype, path):
    """Every entry within one ulp of its dtype of TF's float64 loss and gradient on the
    same (half-rounded) logits: computed in float32, rounded once."""
    logits = jnp.asarray(rng.standard_normal((8, 7)) * 3, dtype)
    labels = jnp.asarray(rng.integers(0, 7, 8))
    per_row = lambda x: SPARSE(labels=labels, logits=x)  # noqa: E731
    loss = jax.jit(per_row)(logits)
    grad = jax.jit(jax.grad(lambda x: per_row(x).astype(jnp.float32).sum()))(logits)
    assert loss.dtype == dtype and grad.dtype == dtype
    x = tf.constant(np.asarray(logits, np.float64))
    with tf.GradientTape() as tape:
        tape.watch(x)
        want = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=np.asarray(labels), logits=x)
    want_grad = tape.gradient(want, x).numpy()
    np_dtype = np.asarray(loss).dtype
    assert_close_to_truth(np.asarray(loss), want.numpy(), np_dtype,
                          label_scale(x.numpy(), np.asarray(labels)))
    assert_close_to_truth(np.asarray(grad), want_grad, np_dtype, 1.0)


def test_numpy_arguments_mix_with_jax_arrays():
    x = jnp.asarray([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    loss = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(np.array([0, 1]), x)
    assert isinstance(loss, jax.Array) and loss.dtype == jnp.float32
    want = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)([0, 1], np.asarray(x))
    np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_torch_and_jax_in_one_call_are_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="torch.Tensor and jax.Array"):
        SPARSE(labels=torch.tensor([0]), logits=jnp.zeros((1, 3)))


def test_backprop_out_is_refused_for_jax_arrays():
    with pytest.raises(TypeError, match="backprop_out"):
        xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
            jnp.zeros((2, 3)), jnp.array([0, 1]), backprop_out=np.zeros((2, 3), np.float32))


def test_v1_losses_on_jax_arrays_add_nothing_to_the_collection_eager_or_jitted():
    """JAX runs eagerly, as TF 2's eager mode, which ignores loss_collection; under jit a
    tracer must not outlive its trace either. 1000 eager steps keep nothing."""
    loss_fn = jax.jit(lambda x: xent.losses.sparse_softmax_cross_entropy(jnp.array([0, 1]), x))
    value = loss_fn(jnp.ones((2, 3)))
    np.testing.assert_allclose(float(value), np.log(3.0), rtol=1e-6)
    assert xent.losses.get_losses() == []
    labels, logits = jnp.array([0, 1]), jnp.ones((2, 3))
    for _ in range(1000):
        xent.losses.sparse_softmax_cross_entropy(labels, logits)
    assert xent.losses.get_losses() == []


def test_dense_raw_op_broadcasts_one_logits_row_like_tf(tf):
    features = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)
    labels = np.array([[0.25, 0.25, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]], np.float32)
    want_loss, want_backprop = tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=features, labels=labels)
    loss, backprop = jax.jit(xent.raw_ops.SoftmaxCrossEntropyWithLogits)(
        jnp.asarray(features), jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(loss), want_loss.numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(backprop), want_backprop.numpy(), rtol=1e-6, atol=1e-7)


def test_dense_loss_with_no_classes_is_zero_as_tensorflows(tf, path):
    """Logits [3, 0]: TensorFlow's dense loss is 0 and its backprop empty; the kernel
    path's callback failed to reshape, the jax.numpy path's max had no identity."""
    x = np.ones((3, 0), np.float32)
    want = tf.nn.softmax_cross_entropy_with_logits(labels=x, logits=x).numpy()
    xj = jnp.asarray(x)
    np.testing.assert_array_equal(DENSE(labels=xj, logits=xj), want)
    loss, backprop = xent.raw_ops.SoftmaxCrossEntropyWithLogits(features=xj, labels=xj)
    np.testing.assert_array_equal(loss, want)
    assert backprop.shape == (3, 0)
    for grad in (jax.grad, lambda f, **kw: jax.jit(jax.grad(f, **kw))):
        dx, dy = grad(lambda x, y: DENSE(labels=y, logits=x).sum(), argnums=(0, 1))(xj, xj)
        assert dx.shape == dy.shape == (3, 0)


def _step_temporaries(fn, *args):
    """XLA's temporaries of ``jit(grad(fn))`` at `args`, in bytes."""
    return jax.jit(jax.grad(fn)).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_a_mean_step_holds_one_logits_sized_buffer_as_a_sum_step_does(dtype):
    """The backward of a `.mean()` (or a Keras or v1 reduction) scales the kernel's
    backprop in the backprop's own buffer (`xent._jax_rows`): as ``g[..., None] *
    backprop`` in `jax.numpy`, XLA wrote it into a second logits-sized buffer
    (temporaries 2.00x the logits for a float32 step whose logits come from a
    matmul, against 1.00x for a `.sum()`)."""
    rows, classes, width = 256, 4096, 8
    h, w = jnp.ones((rows, width), dtype), jnp.ones((width, classes), dtype)
    labels = jnp.arange(rows) % classes
    onehot = jax.nn.one_hot(labels, classes, dtype=dtype)
    logits_bytes = rows * classes * jnp.dtype(dtype).itemsize
    steps = {
        "sum": lambda w: SPARSE(labels=labels, logits=h @ w).sum(),
        "mean": lambda w: SPARSE(labels=labels, logits=h @ w).mean(),
        "weighted": lambda w: (SPARSE(labels=labels, logits=h @ w) * jnp.arange(rows, dtype=dtype)).sum(),
        "dense mean": lambda w: DENSE(labels=onehot, logits=h @ w).mean(),
        "keras": lambda w: xent.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, dtype=jnp.dtype(dtype).name)(labels, h @ w),
        "v1": lambda w: xent.losses.sparse_softmax_cross_entropy(labels, h @ w),
    }
    temps = {name: _step_temporaries(step, w) for name, step in steps.items()}
    if dtype == jnp.float32:   # (bfloat16: XLA's matmul itself adds float32 logits)
        assert temps["sum"] <= logits_bytes * 1.02 + 64 * rows, temps["sum"] / logits_bytes
    for name, temp in temps.items():
        # (bfloat16 with dense labels: its backprop is float32, twice the logits, for
        # TF's single rounding: `_jax_cpu.backprop_dtype`)
        extra = logits_bytes if name == "dense mean" and dtype == jnp.bfloat16 else 0
        assert temp <= temps["sum"] + extra + 64 * rows, (name, temp / logits_bytes,
                                                         temps["sum"] / logits_bytes)


@pytest.mark.parametrize("shape", [(6, 7), (256, 4100)], ids=["small", "threaded"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16],
                         ids=["float32", "float64", "bfloat16", "float16"])
def test_the_in_place_scaling_equals_the_eager_product_bit_for_bit(rng, dtype, shape):
    """Under `jit` the backward's ``backprop * g`` runs in a buffer callback; eagerly it
    is `jax.numpy`'s product, computed in float32 and rounded once: the same bits.
    Rows' weights 1 take no pass at all."""
    with _x64(dtype):
        logits = jnp.asarray(rng.standard_normal(shape) * 4, dtype)
        labels = jnp.asarray(rng.integers(0, shape[1], shape[0]))
        weights = jnp.asarray(rng.standard_normal(shape[0]), jnp.float64 if dtype == jnp.float64 else jnp.float32)
        weights = weights.at[::3].set(1.0)

        def objective(x, w):
            return jnp.sum(SPARSE(labels=labels, logits=x).astype(w.dtype) * w)

        for w in (weights, jnp.ones_like(weights), jnp.full_like(weights, 1.0 / shape[0])):
            eager = jax.grad(objective)(logits, w)
            jitted = jax.jit(jax.grad(objective))(logits, w)
            assert jitted.dtype == logits.dtype
            np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))


def test_a_jitted_pullback_never_overwrites_the_backprop_it_keeps(rng):
    """The in-place scaling writes over the backprop's buffer only where XLA lets it
    (an input-output alias): a pullback jitted on its own gets the kept backprop
    as an argument, which XLA copies first, so a second call is as right as the first."""
    logits = jnp.asarray(rng.standard_normal((64, 300)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 300, 64))
    _, pullback = jax.vjp(lambda x: SPARSE(labels=labels, logits=x), logits)
    jitted = jax.jit(pullback)
    want = jax.grad(lambda x: SPARSE(labels=labels, logits=x).sum())(logits)
    for scale in (0.5, 2.0, 0.5):
        (got,) = jitted(jnp.full((64,), scale, jnp.float32))
        np.testing.assert_allclose(np.asarray(got), scale * np.asarray(want), rtol=1e-6, atol=1e-9)


def test_per_example_gradients_of_a_mean_under_vmap(rng, path):
    """`vmap` of a `.mean()` step's gradient (the scaling's batching rule) equals a loop."""
    logits = jnp.asarray(rng.standard_normal((3, 5, 7)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 7, (3, 5)))
    grad = jax.grad(lambda x, l: SPARSE(labels=l, logits=x).mean())
    batched = jax.jit(jax.vmap(grad))(logits, labels)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(grad(logits[i], labels[i])),
                                   rtol=1e-6, atol=1e-8)
    unbatched_logits = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(logits[0], labels)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(unbatched_logits[i]),
                                   np.asarray(grad(logits[0], labels[i])), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype,dense", [("float16", False), ("float16", True), ("bfloat16", True)],
                         ids=["float16-sparse", "float16-dense", "bfloat16-dense"])
def test_half_precision_gradient_under_a_loss_scale_is_rounded_once_as_tfs(path, dtype, dense):
    """TF computes float16 losses, and bfloat16 dense ones, in float32 (its
    ``precise_logits``): the gradient of ``sum(loss * g)`` is rounded once. The
    kernel's half-precision backprop scaled by g rounded twice (float16: 506 ulps
    under a g of about 1000, on entries below its normal range; bfloat16 dense:
    up to 1.33 ulps, TF 0.98, a review); there the kernel writes its backprop in
    float32 (`_jax_cpu.backprop_dtype`), as TF's is. (TF's sparse op keeps
    bfloat16: its gradient is rounded twice, as xent's.)"""
    from oracle import half_ulps, scaled_xent_gradient
    dtype = jnp.dtype(dtype)
    rng = np.random.default_rng(0)
    rows, classes = 64, 37
    logits = jnp.asarray(rng.standard_normal((rows, classes)) * 4, dtype)
    labels = rng.integers(0, classes, rows)
    g = jnp.asarray(rng.standard_normal(rows) * 1000, dtype)
    target = jnp.asarray(np.eye(classes)[labels], dtype)

    def objective(x):
        loss = DENSE(labels=target, logits=x) if dense else SPARSE(labels=jnp.asarray(labels), logits=x)
        return (loss * g).sum()

    truth = scaled_xent_gradient(np.asarray(logits, np.float64), labels, np.asarray(g, np.float64))
    for fn in (jax.grad(objective), jax.jit(jax.grad(objective))):
        got = np.asarray(fn(logits))
        assert got.dtype == dtype
        assert half_ulps(got, truth, dtype) <= 0.51


def test_gradients_on_an_explicitly_sharded_mesh_keep_their_inputs_types(rng):
    """Over a mesh with explicit axes (`jax.make_mesh`'s default in JAX 0.10) a
    value's type names its sharding. The kernels' buffer callbacks gave
    replicated results, so the large-vocabulary functions' gradients were
    refused by JAX (a replicated cotangent for a sharded input) and the TF
    faces' losses and gradients lost their batch sharding; the values are
    those of the unsharded call. (One device: the types name the axis all the same.)"""
    from jax.sharding import AxisType, PartitionSpec
    if not hasattr(jax, "set_mesh"):
        pytest.skip("this JAX has no explicit mesh axes")
    logits_host = rng.standard_normal((8, 6)).astype(np.float32)
    labels_host = np.arange(8) % 6
    steps = {
        "nn": lambda a, y: SPARSE(labels=y, logits=a).mean(),
        "keras": lambda a, y: xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, a),
        "cross_entropy": lambda a, y: xent.cross_entropy(a, y),
        "cross_entropy none": lambda a, y: xent.cross_entropy(a, y, reduction="none").sum(),
        "linear_cross_entropy": lambda a, y: xent.linear_cross_entropy(a, jnp.eye(6, dtype=a.dtype) * 0.5, y),
    }
    want = {name: jax.jit(jax.value_and_grad(step))(jnp.asarray(logits_host), jnp.asarray(labels_host))
            for name, step in steps.items()}
    mesh = jax.make_mesh((1,), ("d",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        x = jax.device_put(logits_host, PartitionSpec("d", None))
        y = jax.device_put(labels_host, PartitionSpec("d"))
        for name, step in steps.items():
            value, grad = jax.jit(jax.value_and_grad(step))(x, y)
            assert jax.typeof(grad) == jax.typeof(x), (name, jax.typeof(grad))
            np.testing.assert_allclose(np.asarray(value), np.asarray(want[name][0]), rtol=1e-6)
            np.testing.assert_allclose(np.asarray(grad), np.asarray(want[name][1]), rtol=1e-6, atol=1e-8)
        losses = jax.jit(lambda a, b: SPARSE(labels=b, logits=a))(x, y)
        assert jax.typeof(losses) == jax.typeof(y).update(dtype=losses.dtype), jax.typeof(losses)
    # the same arrays outside `jax.set_mesh`, as JAX's own ops take them (xent resharded
    # with a bare PartitionSpec, which JAX refuses there: "not under a mesh context")
    for name, step in steps.items():
        value, grad = jax.jit(jax.value_and_grad(step))(x, y)
        assert jax.typeof(grad) == jax.typeof(x), (name, jax.typeof(grad))
        np.testing.assert_allclose(np.asarray(grad), np.asarray(want[name][1]), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_head_on_the_jax_numpy_path_with_tokens_sharded_over_an_explicit_mesh(
        rng, path, reduction):
    """The jax.numpy linear head (other devices; half precision on the CPU) summed
    dW = dzᵀ·x over the sharded tokens with no output sharding, which JAX refuses
    ("contracting dimensions are sharded"); the gradients are the unsharded
    call's, typed as their inputs."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec
    if not hasattr(jax, "set_mesh"):
        pytest.skip("this JAX has no explicit mesh axes")
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((10, 4), (9, 4), (9,)))
    t = np.arange(10) % 9
    step = lambda x, w, b: xent.linear_cross_entropy(x, w, jnp.asarray(t), bias=b, chunk_size=4,
                                                     reduction=reduction).sum()
    grad = jax.jit(jax.grad(step, argnums=(0, 1, 2)))
    want = grad(*map(jnp.asarray, (x, w, b)))
    mesh = jax.make_mesh((1,), ("d",), axis_types=(AxisType.Explicit,))
    placed = [jax.device_put(a, NamedSharding(mesh, PartitionSpec(*spec)))
              for a, spec in ((x, ("d", None)), (w, ()), (b, ()))]
    got = grad(*placed)
    for g, a, r in zip(got, placed, want):
        assert jax.typeof(g) == jax.typeof(a), (jax.typeof(g), jax.typeof(a))
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_large_vocabulary_functions_with_the_sequence_axis_sharded_over_an_explicit_mesh(
        rng, reduction, dtype):
    """``x[B, T@d, H]``: JAX refused the reshape to tokens ("This reshape is not
    supported", a review); such arrays are gathered first, and the results keep
    the inputs' sharding."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec
    if not hasattr(jax, "set_mesh"):
        pytest.skip("this JAX has no explicit mesh axes")
    x, w = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 4), (7, 4)))
    t = rng.integers(0, 7, (2, 3))
    steps = (lambda x, w, t: xent.linear_cross_entropy(x, w, t, reduction=reduction),
             lambda x, w, t: xent.cross_entropy(jnp.einsum("bth,vh->btv", x, w), t,
                                                reduction=reduction))
    mesh = jax.make_mesh((1,), ("d",), axis_types=(AxisType.Explicit,))
    placed = (jax.device_put(jnp.asarray(x, dtype), NamedSharding(mesh, PartitionSpec(None, "d"))),
              jax.device_put(jnp.asarray(w, dtype), NamedSharding(mesh, PartitionSpec())),
              jax.device_put(jnp.asarray(t), NamedSharding(mesh, PartitionSpec(None, "d"))))
    for step in steps:
        total = lambda x, w, t, step=step: step(x, w, t).astype(jnp.float32).sum()   # noqa: E731
        grad = jax.jit(jax.grad(total, argnums=(0, 1)))
        want = grad(jnp.asarray(x, dtype), jnp.asarray(w, dtype), jnp.asarray(t))
        got = grad(*placed)
        for g, a, r in zip(got, placed, want):
            assert jax.typeof(g) == jax.typeof(a), (jax.typeof(g), jax.typeof(a))
            np.testing.assert_array_equal(np.asarray(g.astype(jnp.float32)),
                                          np.asarray(r.astype(jnp.float32)))
        out = jax.jit(step)(*placed)
        if reduction == "none":
            assert jax.typeof(out) == jax.typeof(placed[2]).update(dtype=out.dtype), jax.typeof(out)


def test_the_in_place_scaling_flushes_as_xla_does_and_keeps_numpys_error_state(rng):
    """The callback scales on XLA's own thread, which flushes subnormal products to
    zero as XLA's product does: on the kernels' helper threads (started by an
    earlier large NumPy call) they were kept, and which rows kept them changed
    from run to run. An infinite g times a zero entry is NaN with no warning,
    whatever NumPy's error state (a review saw a RuntimeWarning, and under
    ``np.seterr(all="raise")`` a failed step)."""
    import warnings
    rows, classes = 8192, 128
    x = np.zeros((rows, classes), np.float32)
    x[:, 1:] = -83.0   # (softmax entries near 1e-36: times 1/rows, subnormal)
    labels = np.zeros(rows, np.int32)
    SPARSE(labels=labels, logits=x)   # (a large NumPy call: the helper threads start here)
    step = jax.grad(lambda x: SPARSE(labels=labels, logits=x).mean())
    eager = np.asarray(step(jnp.asarray(x)))
    jitted = jax.jit(step)
    for _ in range(4):
        np.testing.assert_array_equal(np.asarray(jitted(jnp.asarray(x))), eager)
    masked = jnp.asarray(np.array([[0.0, -np.inf, 1.0], [2.0, 0.0, -np.inf]], np.float32))
    weights = jnp.asarray(np.array([np.inf, 1.0], np.float32))
    weighted = jax.jit(jax.grad(lambda x: (SPARSE(labels=jnp.asarray([0, 1]), logits=x) * weights).sum()))
    old = np.seterr(all="raise")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = np.asarray(weighted(masked))
    finally:
        np.seterr(**old)
    assert np.isnan(got[0, 1]) and np.isinf(got[0, 0]) and np.isfinite(got[1]).all(), got


def test_forward_mode_and_label_gradients_with_a_class_axis_sharded_over_a_mesh(rng):
    """Logits sharded over their class axis too, on explicit mesh axes: the rule's sum
    over classes (`_jax_rows.rows_dot`, and the dense labels' term) was refused
    ("contracting dimensions are sharded"), so `jax.jvp`, `jacfwd` and a gradient
    in the dense labels failed; they now give the rows' sharding, and the
    values of the unsharded call. (One device: the types name both axes anyway.)"""
    from jax.sharding import AxisType, PartitionSpec
    if not hasattr(jax, "set_mesh"):
        pytest.skip("this JAX has no explicit mesh axes")
    logits_host = rng.standard_normal((8, 6)).astype(np.float32)
    labels_host = np.arange(8) % 6
    onehot_host = np.eye(6, dtype=np.float32)[labels_host]
    calls = {
        "jvp": lambda x, y, t: jax.jvp(lambda a: SPARSE(labels=y, logits=a), (x,), (x,))[1],
        "jacfwd": lambda x, y, t: jax.jit(jax.jacfwd(lambda a: SPARSE(labels=y, logits=a)))(x),
        "grad": lambda x, y, t: jax.jit(jax.grad(lambda a: SPARSE(labels=y, logits=a).mean()))(x),
        "dense labels grad": lambda x, y, t: jax.jit(jax.grad(
            lambda a, b: DENSE(labels=b, logits=a).sum(), argnums=(0, 1)))(x, t)[1],
    }
    want = {name: call(jnp.asarray(logits_host), jnp.asarray(labels_host), jnp.asarray(onehot_host))
            for name, call in calls.items()}
    mesh = jax.make_mesh((1, 1), ("a", "b"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        x = jax.device_put(logits_host, PartitionSpec("a", "b"))
        t = jax.device_put(onehot_host, PartitionSpec("a", "b"))
        y = jax.device_put(labels_host, PartitionSpec("a"))
        for name, call in calls.items():
            got = call(x, y, t)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want[name]), rtol=1e-6, atol=1e-8,
                                       err_msg=name)


def test_a_traced_label_smoothing_is_refused_by_name_and_a_static_one_runs():
    """TF and Keras decide whether to smooth from the value (``if ls > 0``), which a
    tracer under ``jax.jit`` cannot give: a TypeError naming `label_smoothing`
    and the way out; as a static argument it gives the eager loss."""
    y, p = jnp.array([[0.0, 1.0, 0.0]]), jnp.array([[1.0, 2.0, 3.0]])
    for face in (lambda ls: xent.losses.softmax_cross_entropy(y, p, label_smoothing=ls),
                 lambda ls: xent.keras.losses.categorical_crossentropy(
                     y, p, from_logits=True, label_smoothing=ls)):
        with pytest.raises(TypeError, match="`label_smoothing` must be a concrete number.*static"):
            jax.jit(face)(0.1)
        np.testing.assert_allclose(jax.jit(face, static_argnums=0)(0.1), face(0.1), rtol=1e-6)


def test_a_concrete_jax_label_smoothing_works_under_jit_in_every_face(tf):
    """A concrete JAX array as `label_smoothing`, closed over by a jitted function:
    v1's ``label_smoothing > 0`` was traced there, and raised JAX's
    TracerBoolConversionError (the Keras faces, which test its truth, took it);
    TF takes ``tf.constant(0.1)``."""
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], np.float32)
    y = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    want = tf.compat.v1.losses.softmax_cross_entropy(y, x, label_smoothing=tf.constant(0.1)).numpy()
    ls = jnp.float32(0.1)
    for face in (lambda a: xent.losses.softmax_cross_entropy(y, a, label_smoothing=ls),
                 lambda a: xent.keras.losses.categorical_crossentropy(
                     y, a, from_logits=True, label_smoothing=ls).mean()):
        got = jax.jit(face)(jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_strict_dtype_and_rank_promotion_are_kept(path, dtype):
    """Under ``jax.numpy_dtype_promotion("strict")`` and ``numpy_rank_promotion("raise")``,
    which optax passes, xent's own ops promoted implicitly: a mean's float total over
    an int count, bfloat16 labels times float32 log-softmax, a ``[V]`` bias added to
    ``[C, V]`` logits (an independent review). Every face and the large-vocabulary
    functions, eager and under ``jit(grad)``, against the same calls without them."""
    rng = np.random.default_rng(3)
    labels = jnp.asarray(rng.integers(0, 5, 6).astype(np.int32))
    x = jnp.asarray(rng.normal(size=(6, 5)), dtype)
    onehot = jax.nn.one_hot(labels, 5, dtype=dtype)
    calls = [
        lambda x: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=x).sum(),
        lambda x: xent.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=x).sum(),
        lambda x: xent.losses.softmax_cross_entropy(onehot, x, label_smoothing=0.1),
        lambda x: xent.keras.losses.categorical_crossentropy(onehot, x, from_logits=True,
                                                             label_smoothing=0.1).sum(),
        lambda x: xent.cross_entropy(x, labels, label_smoothing=0.1, z_loss=1e-4, softcap=5.0),
        lambda x: xent.linear_cross_entropy(x, jnp.ones((7, 5), dtype), labels,
                                            bias=jnp.zeros(7, dtype)),
    ]
    for call in calls:
        want = (call(x), jax.jit(jax.grad(call))(x))
        with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
            got = (call(x), jax.jit(jax.grad(call))(x))
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))


def test_set_jax_path_lets_jax_export_serialize_a_loss():
    """A host callback cannot be serialized: `jax.export` of a function calling xent
    failed on the CPU ("serialization of host_callbacks is not yet implemented",
    an independent review). With ``xent.set_jax_path("jax.numpy")`` the function
    exports, round-trips through bytes and gives the kernel path's numbers."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(6, 9)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 9, 6).astype(np.int32))

    def step(x):
        sparse = SPARSE(labels=labels, logits=x).sum()
        return sparse + xent.cross_entropy(x, labels, label_smoothing=0.1)

    jitted = jax.jit(jax.value_and_grad(step))
    want = jitted(x)   # (traced on the kernels' path: its trace must not be reused)
    assert xent.get_jax_path() == "kernels"
    with pytest.raises(ValueError, match="'kernels' or 'jax.numpy'"):
        xent.set_jax_path("numpy")
    def calls_back():
        return "callback" in jitted.lower(x).compile().as_text()

    assert calls_back()
    xent.set_jax_path("jax.numpy")
    try:
        assert not calls_back()
        exported = jax.export.export(jitted)(jax.ShapeDtypeStruct(x.shape, x.dtype))
        restored = jax.export.deserialize(exported.serialize())
    finally:
        xent.set_jax_path("kernels")
    assert calls_back()
    got = restored.call(x)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-5, atol=1e-7)
