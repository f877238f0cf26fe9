"""xent on PyTorch tensors: values and autograd gradients against TensorFlow.

Every public function runs on torch tensors, on both CPU paths: the fused
NumPy kernel through zero-copy views (``kernel``) and the torch-ops path that
CUDA tensors take (``torch_ops``, forced on CPU here since the suite has no
GPU). TensorFlow's `tf.GradientTape` is the oracle; `torch.autograd.gradcheck`
checks the float64 gradients numerically.
"""
import gc
import subprocess
import sys
import weakref

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import xent  # noqa: E402
from xent import _torch  # noqa: E402
from oracle import (EXTREME, assert_close_to_truth, forward_mode_inputs,  # noqa: E402
                    forward_tangents_tf, hessian_vector_tf, label_scale, tf_message)
from tf_grad_cases import CASES, assert_matches_tf, tf_oracle  # noqa: E402

DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
SPARSE = xent.nn.sparse_softmax_cross_entropy_with_logits
DENSE = xent.nn.softmax_cross_entropy_with_logits


@pytest.fixture(params=["kernel", "torch_ops"])
def path(request):
    """Which CPU path runs: the fused NumPy kernel, or the torch ops of other devices."""
    _torch.use_torch_ops_on_cpu(request.param == "torch_ops")
    yield request.param
    _torch.use_torch_ops_on_cpu(False)


def _value_and_grads(case, inputs, cotangent):
    """xent's output and the gradients of ``sum(out * cotangent)``, through autograd."""
    args = {k: torch.tensor(v, requires_grad=k in case.wrt) for k, v in inputs.items()}
    out = case.xent_fn(xent, args)
    assert isinstance(out, torch.Tensor), type(out)
    objective = (out * torch.as_tensor(cotangent, dtype=out.dtype)).sum()
    wrt = [args[k] for k in case.wrt]
    grads = torch.autograd.grad(objective, wrt, allow_unused=True)
    grads = [torch.zeros_like(a) if g is None else g for a, g in zip(wrt, grads)]
    return out.detach().numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_value_and_gradient_match_tensorflow(tf, rng, case, dtype, path):
    inputs = case.make(rng, dtype)
    want = tf_oracle(tf, case, inputs, rng)
    got_out, got_grads = _value_and_grads(case, inputs, want[1])
    assert_matches_tf(case, dtype, got_out, got_grads, want)


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_double_backward_matches_tensorflow(tf, rng, path, dense):
    """Hessian-vector products: TF differentiates its gradient, and so does xent."""
    logits = rng.standard_normal((6, 5))
    labels = (rng.dirichlet(np.ones(5), 6) if dense else rng.integers(0, 5, 6))
    u = rng.standard_normal((6, 5))
    want_x, want_y = hessian_vector_tf(tf, logits, labels, u, np.arange(1.0, 7.0), dense)
    x = torch.tensor(logits, requires_grad=True)
    y = torch.tensor(labels, requires_grad=dense)
    fn = DENSE if dense else SPARSE
    loss = (fn(labels=y, logits=x) * torch.arange(1.0, 7.0, dtype=x.dtype)).sum()
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    hs = torch.autograd.grad((gx * torch.tensor(u)).sum(), [x, y] if dense else [x], allow_unused=True)
    np.testing.assert_allclose(hs[0].numpy(), want_x, rtol=1e-10, atol=1e-12)
    if dense:  # TF sends nothing from the logits' gradient to the labels: zero
        got_y = np.zeros_like(labels) if hs[1] is None else hs[1].numpy()
        np.testing.assert_allclose(got_y, want_y, rtol=1e-10, atol=1e-12)


def _probs(rng, shape):
    e = np.exp(rng.standard_normal(shape))
    return torch.tensor(e / e.sum(-1, keepdims=True))


def test_gradcheck_nn_float64(rng, path):
    x = torch.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    labels = torch.tensor([0, 3, 4, 1])
    y = _probs(rng, (4, 5)).requires_grad_()
    sparse = lambda x: SPARSE(labels=labels, logits=x)  # noqa: E731
    dense = lambda x, y: DENSE(labels=y, logits=x)  # noqa: E731
    assert torch.autograd.gradcheck(sparse, (x,))
    assert torch.autograd.gradgradcheck(sparse, (x,))
    assert torch.autograd.gradcheck(dense, (x, y))
    assert torch.autograd.gradgradcheck(lambda x: dense(x, y.detach()), (x,))


def test_gradcheck_raw_ops_float64(rng, path):
    """Both outputs, (loss, backprop), are differentiable in the features."""
    x = torch.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    labels, y = torch.tensor([0, 3, 4, 1]), _probs(rng, (4, 5))
    sparse = lambda x: xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(x, labels)  # noqa: E731
    dense = lambda x: xent.raw_ops.SoftmaxCrossEntropyWithLogits(x, y)  # noqa: E731
    for fn in (sparse, dense):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_gradcheck_weighted_losses_float64(rng, path):
    """Non-zero weights: at a zero weight the count of non-zero weights jumps."""
    x = torch.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    w = torch.tensor([1.0, 0.25, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 4, 1])
    for reduction in dict.fromkeys(xent.losses.Reduction.all()):   # (its last two are one key)
        fn = lambda x, w: xent.losses.sparse_softmax_cross_entropy(  # noqa: E731
            labels, x, weights=w, reduction=reduction)
        assert torch.autograd.gradcheck(fn, (x, w)), reduction


def test_second_backward_over_retained_graph_gives_the_same_gradient(rng, path):
    """The saved backprop is scaled in place once; a second backward recomputes it."""
    x = torch.tensor(rng.standard_normal((3, 4)), dtype=torch.float32, requires_grad=True)
    loss = SPARSE(labels=torch.tensor([1, 0, 3]), logits=x).sum()
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_a_tensor_left_by_a_finished_torch_func_transform_is_unwrapped(tf, rng):
    """A tensor that escaped a `torch.func` transform (a dead wrapper) is unwrapped
    before the eager Function runs, as `torch.autograd.Function.apply` does
    (xent calls the Function past that layer): the loss and its gradient in
    the original tensor are TensorFlow's."""
    logits = rng.standard_normal((4, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 4])
    leaked = []

    def objective(x):
        leaked.append(x)
        return x.sum()

    x0 = torch.tensor(logits, requires_grad=True)
    torch.func.grad(objective)(x0)
    loss = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=torch.tensor(labels),
                                                             logits=leaked[0])
    grad, = torch.autograd.grad(loss.sum(), x0)
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        want = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=x)
    np.testing.assert_allclose(loss.detach().numpy(), want.numpy(), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), tape.gradient(want, x).numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(EXTREME))
def test_extreme_logits_match_the_numpy_kernel(path, name):
    """Loss and gradient equal TF's CPU kernel's (xent's NumPy path), NaN where it is."""
    logits, labels = np.asarray(EXTREME[name][0], np.float32), np.asarray(EXTREME[name][1])
    want_loss, want_grad = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(logits, labels)
    x = torch.tensor(logits, requires_grad=True)
    loss = SPARSE(labels=torch.tensor(labels), logits=x)
    loss.sum().backward()
    grad = torch.zeros_like(x) if x.grad is None else x.grad
    np.testing.assert_allclose(loss.detach().numpy(), want_loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-6, atol=1e-7)


def _as_numpy(t):
    """A tensor's values as a NumPy array of its dtype (bfloat16 as `ml_dtypes.bfloat16`)."""
    t = t.detach()
    return t.float().numpy().astype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_loss_and_gradient_round_tfs_float64_answer_once(tf, rng, path, dtype):
    """Every entry within one ulp of its dtype of TF's float64 loss and gradient on the
    same (half-rounded) logits: computed in float32, rounded once."""
    logits = torch.tensor(rng.standard_normal((8, 7)) * 3).to(dtype).requires_grad_()
    labels = torch.tensor(rng.integers(0, 7, 8))
    loss = SPARSE(labels=labels, logits=logits)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert loss.dtype == dtype and grad.dtype == dtype
    x = tf.constant(logits.detach().double().numpy())
    with tf.GradientTape() as tape:
        tape.watch(x)
        want = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels.numpy(), logits=x)
    want_grad = tape.gradient(want, x).numpy()
    np_dtype = _as_numpy(loss).dtype
    assert_close_to_truth(_as_numpy(loss), want.numpy(), np_dtype, label_scale(x.numpy(), labels))
    assert_close_to_truth(_as_numpy(grad), want_grad, np_dtype, 1.0)


def test_kernel_and_torch_ops_paths_agree(rng):
    logits = torch.tensor(rng.standard_normal((9, 11)), dtype=torch.float32)
    y = _probs(rng, (9, 11)).float()
    results = []
    for on in (False, True):
        _torch.use_torch_ops_on_cpu(on)
        x = logits.clone().requires_grad_()
        loss = DENSE(labels=y, logits=x)
        results.append((loss, *torch.autograd.grad(loss.sum(), x)))
    _torch.use_torch_ops_on_cpu(False)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


RAW_SPARSE = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("face", ["nn", "raw_ops"])
def test_label_out_of_range_raises_tensorflows_error_on_cpu(tf, face, dtype):
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=np.zeros((2, 3), np.float32),
                                                       labels=np.array([0, 5]))
    logits, labels = torch.zeros(2, 3, dtype=dtype, requires_grad=True), torch.tensor([0, 5])
    with pytest.raises(xent.errors.InvalidArgumentError) as err:
        if face == "nn":
            SPARSE(labels=labels, logits=logits)
        else:
            RAW_SPARSE(logits, labels)
    assert str(err.value) == tf_message(tf_err.value)


def test_raw_op_label_out_of_range_gives_nan_rows_on_the_device_path():
    """As TensorFlow on a GPU: the bad row's loss and backprop are NaN, the rest exact."""
    _torch.use_torch_ops_on_cpu(True)
    try:
        loss, backprop = RAW_SPARSE(torch.zeros(2, 3), torch.tensor([0, 5]))
    finally:
        _torch.use_torch_ops_on_cpu(False)
    assert torch.isnan(loss[1]) and torch.isnan(backprop[1]).all()
    torch.testing.assert_close(loss[0], torch.tensor(np.log(3.0), dtype=torch.float32))
    torch.testing.assert_close(backprop[0], torch.tensor([-2 / 3, 1 / 3, 1 / 3]))


@pytest.mark.parametrize("op", ["SparseSoftmaxCrossEntropyWithLogits",
                                "SoftmaxCrossEntropyWithLogits"])
def test_raw_ops_return_tfs_named_tuple_of_tensors(path, op):
    labels = torch.tensor([0, 2]) if op.startswith("Sparse") else torch.eye(3)[[0, 2]]
    result = getattr(xent.raw_ops, op)(torch.zeros(2, 3, requires_grad=True), labels)
    assert type(result).__name__ == op and result._fields == ("loss", "backprop")
    assert result.loss is result[0] and isinstance(result.backprop, torch.Tensor)


FACES = {   # face: its result as a scalar to differentiate, from (logits, ids, targets, weights)
    "nn.sparse": lambda x, i, y, w: SPARSE(labels=i, logits=x).sum(),
    "nn.dense": lambda x, i, y, w: DENSE(labels=y, logits=x).sum(),
    "losses.sparse": lambda x, i, y, w: xent.losses.sparse_softmax_cross_entropy(i, x, w),
    "losses.dense": lambda x, i, y, w: xent.losses.softmax_cross_entropy(y, x, w, 0.1),
    "keras.sparse": lambda x, i, y, w: xent.keras.losses.SparseCategoricalCrossentropy(
        from_logits=True)(i, x, sample_weight=w),
    "keras.categorical": lambda x, i, y, w: xent.keras.losses.CategoricalCrossentropy()(
        y, torch.softmax(x.float(), -1), sample_weight=w),
    "raw.sparse": lambda x, i, y, w: sum(
        (t.float() * torch.linspace(0.5, 1.5, t.numel()).reshape(t.shape)).sum()
        for t in xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(x, i)),
    "raw.dense": lambda x, i, y, w: sum(
        (t.float() * torch.linspace(0.5, 1.5, t.numel()).reshape(t.shape)).sum()
        for t in xent.raw_ops.SoftmaxCrossEntropyWithLogits(x, y)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("face", list(FACES))
def test_forward_and_backward_leave_every_input_tensor_unmodified(rng, path, face, dtype):
    """The CPU path runs the kernel on zero-copy views of the tensors and scales the saved
    backprop in place: none of that may write into the caller's tensors."""
    logits = torch.tensor(rng.standard_normal((5, 4)) * 3).to(dtype).requires_grad_()
    ids = torch.tensor(rng.integers(0, 4, 5))
    targets = torch.softmax(torch.tensor(rng.standard_normal((5, 4))), -1).to(dtype)
    weights = torch.tensor(rng.uniform(0.5, 2.0, 5), dtype=torch.float32, requires_grad=True)
    inputs = (logits, ids, targets, weights)
    before = [t.detach().clone() for t in inputs]
    FACES[face](*inputs).backward()
    assert logits.grad is not None
    for name, t, copy in zip(("logits", "ids", "targets", "weights"), inputs, before):
        assert torch.equal(t.detach(), copy), name


def test_label_out_of_range_gives_nan_rows_on_the_device_path():
    """As TensorFlow on a GPU: the bad row's loss and gradient are NaN, the rest exact."""
    _torch.use_torch_ops_on_cpu(True)
    try:
        x = torch.zeros(2, 3, requires_grad=True)
        loss = SPARSE(labels=torch.tensor([0, 5]), logits=x)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    finally:
        _torch.use_torch_ops_on_cpu(False)
    assert torch.isnan(loss[1]) and torch.isnan(grad[1]).all()
    torch.testing.assert_close(loss[0], torch.tensor(np.log(3.0), dtype=torch.float32))
    assert not torch.isnan(grad[0]).any()


def test_numpy_and_python_arguments_mix_with_tensors():
    """Labels and weights may be NumPy or lists; the result is a tensor on the logits' device."""
    x = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], requires_grad=True)
    loss = xent.losses.sparse_softmax_cross_entropy(np.array([0, 1]), x, weights=[1.0, 3.0])
    assert isinstance(loss, torch.Tensor) and loss.dtype == torch.float32
    want = xent.losses.sparse_softmax_cross_entropy([0, 1], x.detach().numpy(), weights=[1.0, 3.0])
    np.testing.assert_allclose(loss.item(), want, rtol=1e-6)
    loss.backward()
    assert x.grad is not None


def test_tensors_on_different_devices_are_refused():
    with pytest.raises(ValueError, match="different devices"):
        SPARSE(labels=torch.tensor([0]), logits=torch.zeros(1, 3, device="meta"))


def test_backprop_out_is_refused_for_tensors():
    with pytest.raises(TypeError, match="backprop_out"):
        xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
            torch.zeros(2, 3), torch.tensor([0, 1]), backprop_out=np.zeros((2, 3), np.float32))
    # NumPy features beside torch labels: the message names the labels too
    with pytest.raises(TypeError, match="with torch inputs .features or labels."):
        xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
            np.zeros((2, 3), np.float32), torch.tensor([0, 1]),
            backprop_out=np.zeros((2, 3), np.float32))


def test_non_contiguous_logits_and_no_grad():
    base = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        loss = DENSE(labels=torch.softmax(base, 0), logits=base, axis=0)
    want = DENSE(labels=torch.softmax(base, 0).numpy(), logits=base.numpy(), axis=0)
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-12)
    assert not loss.requires_grad


@pytest.mark.parametrize("face", ["nn_sparse", "nn_dense", "raw_op", "keras", "v1",
                                  "cross_entropy", "linear_weight"])
def test_tensors_with_the_negative_bit_set_match_torchs_loss_and_gradient(rng, path, face):
    """``z.conj().imag`` is a real tensor whose memory holds -1 times its values
    (torch's negative bit): torch's ops take it, its ``numpy()`` refuses it, and
    so did every kernel face of xent (torch's RuntimeError, naming no argument)."""
    F = torch.nn.functional
    z = torch.complex(*(torch.tensor(rng.standard_normal((6, 5)), dtype=torch.float32)
                        for _ in range(2))).requires_grad_()
    y = torch.tensor([0, 4, 2, 1, 3, 0])
    faces = {
        "nn_sparse": lambda x: SPARSE(labels=y, logits=x).sum(),
        "nn_dense": lambda x: DENSE(labels=F.one_hot(y, 5).float().conj(), logits=x).sum(),
        "raw_op": lambda x: xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
            features=x, labels=y).loss.sum(),
        "keras": lambda x: xent.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="sum")(y, x),
        "v1": lambda x: xent.losses.sparse_softmax_cross_entropy(
            y, x, reduction=xent.losses.Reduction.SUM),
        "cross_entropy": lambda x: xent.cross_entropy(x, y, reduction="sum"),
    }
    h = torch.eye(6, 5) + 0.5   # (linear_weight: a [V=6, H=5] weight with the bit, inputs [6, 5])
    faces["linear_weight"] = lambda x: xent.linear_cross_entropy(h, x, y, reduction="sum")
    peer = (lambda x: F.cross_entropy(h @ x.t(), y, reduction="sum")) if face == "linear_weight" \
        else (lambda x: F.cross_entropy(x, y, reduction="sum"))
    x = z.detach().conj().imag   # (wanting no gradient, the tensor itself reached numpy())
    assert x.is_neg() and not x.requires_grad
    torch.testing.assert_close(faces[face](x), peer(x), rtol=1e-6, atol=0)
    x = z.conj().imag
    got, want = faces[face](x), peer(x)
    got.backward()
    grad, z.grad = z.grad.clone(), None
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, z.grad, rtol=1e-5, atol=1e-7)


def test_bfloat16_numpy_labels_with_tensor_logits(tf):
    """A NumPy bfloat16 argument converts through a uint16 view (torch has no such dtype).

    The loss is ``0.25 softplus(1) + 0.75 softplus(-1)`` (``-log_softmax([1, 2])`` is
    ``[softplus(1), softplus(-1)]``); TensorFlow computes it in float64 here.
    """
    y = np.array([[0.25, 0.75]], ml_dtypes.bfloat16)
    loss = DENSE(labels=y, logits=torch.tensor([[1.0, 2.0]]))
    want = tf.nn.softmax_cross_entropy_with_logits(labels=y.astype(np.float64),
                                                   logits=np.array([[1.0, 2.0]])).numpy()
    np.testing.assert_allclose(want, 0.25 * np.logaddexp(0, 1) + 0.75 * np.logaddexp(0, -1),
                               rtol=1e-15)
    assert_close_to_truth(loss.numpy(), want, np.float32, 2.0)


def test_import_xent_imports_neither_torch_nor_jax():
    code = "import sys, xent; print('torch' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out


def test_numpy_calls_through_every_face_import_no_framework():
    """The contract: neither PyTorch nor JAX is imported unless the caller passes one
    of their arrays, for calls too, not only `import xent` (nor TF or Keras)."""
    code = """if True:
        import sys
        import numpy as np
        import xent
        x = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
        y, p = np.array([0, 1]), np.array([[1.0, 0, 0], [0, 1.0, 0]], np.float32)
        xent.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x)
        xent.nn.softmax_cross_entropy_with_logits(labels=p, logits=x)
        xent.losses.sparse_softmax_cross_entropy(y, x, weights=[1.0, 2.0])
        xent.losses.softmax_cross_entropy(p, x, label_smoothing=0.1)
        xent.losses.get_total_loss()
        xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, x)
        xent.keras.losses.CategoricalCrossentropy()(p, np.abs(x))
        xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=x.copy(), labels=y,
                                                         backprop_out=None)
        xent.raw_ops.SoftmaxCrossEntropyWithLogits(features=x, labels=p)
        xent.cross_entropy(x, y, z_loss=1e-4, return_grads=True)
        xent.linear_cross_entropy(x, np.ones((4, 3), np.float32), y, return_grads=True)
        print(*(name in sys.modules for name in ("torch", "jax", "tensorflow", "keras")))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * 4, out


def test_keras_loss_with_tensor_sample_weight_returns_a_tensor_with_its_gradient():
    weights = torch.tensor([1.0, 2.0], requires_grad=True)
    logits = np.array([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]], np.float32)
    loss = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        np.array([0, 2]), logits, sample_weight=weights)
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    per_example = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 2], logits=logits)
    np.testing.assert_allclose(weights.grad.numpy(), per_example / 2, rtol=1e-6)


def test_dense_raw_op_broadcasts_one_logits_row_like_tf(tf):
    features = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)
    labels = np.array([[0.25, 0.25, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]], np.float32)
    want_loss, want_backprop = tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=features, labels=labels)
    logits = torch.tensor(features, requires_grad=True)
    loss, backprop = xent.raw_ops.SoftmaxCrossEntropyWithLogits(logits, torch.tensor(labels))
    np.testing.assert_allclose(loss.detach().numpy(), want_loss.numpy(), rtol=1e-6)
    np.testing.assert_allclose(backprop.detach().numpy(), want_backprop.numpy(), rtol=1e-6, atol=1e-7)
    loss.sum().backward()   # the broadcast row's gradient sums over the label rows
    np.testing.assert_allclose(logits.grad.numpy(), want_backprop.numpy().sum(0, keepdims=True),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_backward_scaling_rounds_once(dtype):
    """The backward's scaling (`scale_rows_` for the loss, in place; the raw op's
    ``backprop * g``, a new tensor in NumPy memory unless a graph is built) gives
    the bits of the float32 product rounded once, on the fast path (g exact in
    the half dtype) and the slow one (g not)."""
    from xent._torch._eager import LossAndBackprop
    from xent._torch._math import scale_rows_

    gen = torch.Generator().manual_seed(0)
    backprop = (torch.rand(64, 257, generator=gen) * 2 - 1).to(dtype)
    exact = torch.rand(64, generator=gen).to(dtype).to(torch.float32) * 4
    inexact = exact + 1e-5
    assert not torch.equal(inexact.to(dtype).to(torch.float32), inexact)
    for g in (exact, inexact):
        want = (backprop.to(torch.float32) * g[:, None]).to(dtype)
        got = scale_rows_(backprop.clone(), g)
        assert got.dtype == dtype
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), g is exact
        for graph in (False, True):   # a backward pass, or one building a graph
            with torch.set_grad_enabled(graph):
                raw = LossAndBackprop._logits_grad(None, backprop, g, None).to(dtype)
            assert torch.equal(raw.view(torch.int16), want.view(torch.int16)), (g is exact, graph)
            assert raw.untyped_storage().data_ptr() != backprop.untyped_storage().data_ptr()


def test_a_thousand_v1_loss_steps_keep_no_autograd_graph_alive():
    """torch runs eagerly, and TF 2's eager mode ignores loss_collection: xent.losses adds
    nothing for tensors, so each step's graph (and the logits it saved) is freed."""
    labels = torch.tensor([0, 2, 1])
    alive = []
    for _ in range(1000):
        logits = torch.randn(3, 4, requires_grad=True)
        loss = xent.losses.sparse_softmax_cross_entropy(labels, logits)
        loss.backward()
        alive.append(weakref.ref(logits))
        del logits, loss
    gc.collect()
    assert xent.losses.get_losses() == []
    assert sum(ref() is not None for ref in alive) == 0


def test_numpy_v1_losses_still_go_to_the_collection_as_in_tf_graph_mode():
    loss = xent.losses.sparse_softmax_cross_entropy([0, 1], np.eye(2, dtype=np.float32))
    tensor_loss = xent.losses.sparse_softmax_cross_entropy([0, 1], torch.eye(2))
    assert xent.losses.get_losses() == [loss]
    assert tensor_loss.item() == pytest.approx(float(loss))


def test_the_device_path_makes_no_host_sync():
    """Tensors off the CPU run torch ops with no host sync (no range check: NaN rows
    instead). Meta tensors have no data, so any sync (`.item()`, `bool()`,
    `torch.equal`) raises: forward and backward of every face run on them."""
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.empty(600, 500, device="meta", dtype=dtype, requires_grad=True)
        labels = torch.empty(600, device="meta", dtype=torch.int64)
        dense = torch.empty(600, 500, device="meta", dtype=dtype)
        total = (xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits).sum()
                 + xent.nn.softmax_cross_entropy_with_logits(labels=dense, logits=logits).sum()
                 + (xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
                    * 0.5).sum())
        loss, backprop = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=logits, labels=labels)
        total = total + loss.sum() + backprop.sum()
        total = total + xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
        total = total + xent.losses.sparse_softmax_cross_entropy(labels, logits, weights=0.5)
        total = total + xent.cross_entropy(logits, labels, label_smoothing=0.1, z_loss=1e-4)
        total.backward()
        assert logits.grad.shape == logits.shape and logits.grad.device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("face", ["sparse", "dense"])
def test_broadcast_upstream_gradients_scale_or_not_as_their_value_says(rng, face, dtype):
    """A ``.sum()``'s gradient arrives as one 1 broadcast (strides 0), which the
    backward hands over unscaled (its element read at its address, per dtype);
    a broadcast 2 or a per-row g must still scale."""
    x0 = torch.tensor(rng.standard_normal((6, 5)), dtype=dtype)
    labels = torch.tensor(rng.integers(0, 5, 6))
    targets = torch.softmax(torch.tensor(rng.standard_normal((6, 5)), dtype=dtype), -1)
    backprop = torch.softmax(x0, -1) - (torch.nn.functional.one_hot(labels, 5) if face == "sparse" else targets)
    for g in (torch.tensor(1.0, dtype=x0.dtype).expand(6), torch.tensor(2.0, dtype=x0.dtype).expand(6),
              torch.arange(6.0, dtype=x0.dtype)):
        x = x0.clone().requires_grad_(True)
        out = SPARSE(labels=labels, logits=x) if face == "sparse" else DENSE(labels=targets, logits=x)
        got, = torch.autograd.grad(out, x, grad_outputs=g)
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(got, g[:, None] * backprop, rtol=tol, atol=tol)


def _xent_face_outputs(face, x, labels):
    """xent's outputs of `face` (as `_tf_forward_tangents`), a list of tensors."""
    if face == "sparse":
        return [SPARSE(labels=labels, logits=x)]
    if face == "dense":
        return [DENSE(labels=labels, logits=x)]
    if face == "raw_sparse":
        return list(RAW_SPARSE(features=x, labels=labels))
    return list(xent.raw_ops.SoftmaxCrossEntropyWithLogits(features=x, labels=labels))


@pytest.mark.parametrize("grad_mode", ["enabled", "no_grad"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("face", ["sparse", "dense", "raw_sparse", "raw_dense"])
def test_forward_mode_tangents_match_tensorflows_forward_accumulator(tf, path, face, dtype, grad_mode):
    """Eager forward mode (`torch.autograd.forward_ad`) through every face, on both
    CPU paths, with and without reverse mode: the tangents of the loss (and of the
    raw ops' backprop) along a logits tangent, and a dense labels tangent too."""
    import torch.autograd.forward_ad as fwAD

    x, labels, dx, dy = forward_mode_inputs(face, dtype, np.int64)
    dense = dy is not None
    want = forward_tangents_tf(tf, face, x, labels, dx, dy)
    context = torch.no_grad() if grad_mode == "no_grad" else torch.enable_grad()
    with context, fwAD.dual_level():
        xd = fwAD.make_dual(torch.from_numpy(x), torch.from_numpy(dx))
        yd = fwAD.make_dual(torch.from_numpy(labels), torch.from_numpy(dy)) if dense else torch.from_numpy(labels)
        got = [fwAD.unpack_dual(o).tangent for o in _xent_face_outputs(face, xd, yd)]
    assert len(got) == len(want)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for g, w in zip(got, want):
        assert g is not None
        np.testing.assert_allclose(g.numpy(), w, rtol=tol, atol=tol)




ROUNDED_ONCE = pytest.mark.parametrize(
    "dtype,dense", [("float16", False), ("float16", True), ("bfloat16", True)],
    ids=["float16-sparse", "float16-dense", "bfloat16-dense"])


@pytest.mark.parametrize("rows", [64, 4096], ids=["small", "large"])
@ROUNDED_ONCE
def test_half_precision_gradient_under_a_loss_scale_is_rounded_once_as_tfs(dtype, dense, rows):
    """TF computes float16 losses, and bfloat16 dense ones, in float32 (its
    ``precise_logits``): the gradient of ``sum(loss * g)`` is rounded once. The
    eager backward scaled a half-precision backprop by g, rounding twice
    (float16: up to 1580 ulps on entries below its normal range under a g of
    about 1000; bfloat16 dense: over 1 ulp, a review). It now runs the kernel
    with g as the rows' weights. (TF's sparse op keeps bfloat16, rounding
    twice, as xent.)"""
    from oracle import half_ulps, scaled_xent_gradient
    rng = np.random.default_rng(0)
    classes, dtype = 37, getattr(torch, dtype)
    logits = torch.from_numpy(rng.standard_normal((rows, classes)) * 4).to(dtype)
    labels = rng.integers(0, classes, rows)
    truth_g = torch.from_numpy(rng.standard_normal(rows) * 1000).to(dtype)
    target = torch.from_numpy(np.eye(classes)[labels]).to(dtype)
    for step in range(3):   # (a large loss folds a g it saw twice: the first steps do not)
        x = logits.clone().requires_grad_()
        loss = DENSE(labels=target, logits=x) if dense else SPARSE(labels=torch.from_numpy(labels), logits=x)
        (loss * truth_g).sum().backward()
        truth = scaled_xent_gradient(logits.double().numpy(), labels, truth_g.double().numpy())
        assert half_ulps(x.grad.float().numpy(), truth, _np_dtype(dtype)) <= 0.51, step


def _np_dtype(dtype):
    return np.dtype(ml_dtypes.bfloat16) if dtype == torch.bfloat16 else np.dtype(np.float16)


@ROUNDED_ONCE
def test_half_precision_gradient_under_a_loss_scale_through_torch_func_and_torch_ops(dtype, dense):
    """The same single rounding through `torch.func.grad` (the saved float16 backprop
    times g: 665 ulps) and the torch-ops path of other devices; a half-precision
    ``.sum()``'s all-ones g (not a broadcast, after the cast's backward) runs
    no second kernel pass."""
    from oracle import half_ulps, scaled_xent_gradient
    from xent._torch import _math
    rng = np.random.default_rng(1)
    rows, classes, dtype = 64, 37, getattr(torch, dtype)
    logits = torch.from_numpy(rng.standard_normal((rows, classes)) * 4).to(dtype)
    labels = rng.integers(0, classes, rows)
    g = torch.from_numpy(rng.standard_normal(rows) * 1000).to(dtype)
    target = torch.from_numpy(np.eye(classes)[labels]).to(dtype)

    def objective(x):
        loss = DENSE(labels=target, logits=x) if dense else SPARSE(labels=torch.from_numpy(labels), logits=x)
        return (loss * g).sum()

    truth = scaled_xent_gradient(logits.double().numpy(), labels, g.double().numpy())
    got = torch.func.grad(objective)(logits.clone())
    assert half_ulps(got.float().numpy(), truth, _np_dtype(dtype)) <= 0.51
    _math.use_torch_ops_on_cpu(True)
    try:
        x = logits.clone().requires_grad_()
        objective(x).backward()
    finally:
        _math.use_torch_ops_on_cpu(False)
    assert half_ulps(x.grad.float().numpy(), truth, _np_dtype(dtype)) <= 0.51
    calls, real = [], _math.loss_and_backprop

    def counting(*args, **kwargs):
        calls.append(args[4] if len(args) > 4 else kwargs.get("weights"))
        return real(*args, **kwargs)
    import xent._torch._eager as eager
    x = logits.clone().requires_grad_()
    original = eager.loss_and_backprop, _math.loss_and_backprop
    eager.loss_and_backprop = _math.loss_and_backprop = counting
    try:
        (DENSE(labels=target, logits=x) if dense else SPARSE(labels=torch.from_numpy(labels), logits=x)).sum().backward()
    finally:
        eager.loss_and_backprop, _math.loss_and_backprop = original
    assert calls == [None], calls   # (the forward's pass only)
