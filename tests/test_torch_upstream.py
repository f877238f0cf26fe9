"""A large loss on torch folds its upstream gradient into the kernel (`xent._torch._upstream`).

Whatever the history of upstream gradients, every step's logits gradient is
the kernel's with that step's ``g`` as the rows' weights (the same bits as a
direct NumPy call), close to the float64 truth ``g (softmax - targets)`` and
to TensorFlow's; a steady ``g`` (a mean) costs one kernel pass a step. With
sparse labels and with dense ones (which fold only when they want no
gradient themselves).
"""
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import xent  # noqa: E402
from xent import _core, _fused  # noqa: E402
from xent._torch import _upstream  # noqa: E402
from xent._torch._views import numpy_view, own_tensor  # noqa: E402
from oracle import assert_close_to_truth  # noqa: E402

SPARSE = xent.nn.sparse_softmax_cross_entropy_with_logits
DENSE = xent.nn.softmax_cross_entropy_with_logits
KINDS = ["sparse", "dense"]
N, C = 256, 2048   # 2 MiB of float32 logits, 1 MiB of half: past `_upstream.MIN_BYTES`
BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(autouse=True)
def fresh_state():
    _upstream.forget()
    yield
    _upstream.forget()


def _inputs(rng, dtype=np.dtype(np.float32), kind="sparse", classes=C):
    """Logits ``[N, classes]`` and int labels (sparse) or target rows of the logits' dtype."""
    logits = (rng.normal(size=(N, classes)) * 3).astype(dtype)
    if kind == "sparse":
        return logits, rng.integers(0, classes, N)
    targets = rng.random((N, classes))
    return logits, (targets / targets.sum(-1, keepdims=True)).astype(dtype)


def _loss(labels, leaf):
    """xent.nn's per-row loss of `leaf` against NumPy `labels` (dense: rows of the logits' rank)."""
    if labels.ndim == leaf.ndim:
        return DENSE(labels=own_tensor(labels.copy()), logits=leaf)
    return SPARSE(labels=torch.from_numpy(labels), logits=leaf)


def _step(logits, labels, objective):
    """The logits' gradient of ``objective(per-row loss)``, and the upstream g the loss
    received; `objective` may call ``backward`` itself (and return None)."""
    leaf = own_tensor(logits.copy()).requires_grad_(True)
    loss = _loss(labels, leaf)
    seen = []
    loss.register_hook(lambda g: seen.append(g.detach().clone()))
    total = objective(loss)
    if total is not None:
        total.backward()
    return numpy_view(leaf.grad), seen[0]


def _kernel_reference(logits, labels, g):
    """The kernel's gradient with `g` (torch) as the rows' weights, by a direct NumPy call."""
    weights = g.to(torch.float64).numpy()
    xent_of = _core.dense_xent if labels.ndim == logits.ndim else _core.sparse_xent
    return xent_of(labels, logits, True, weights)[1]


def _truth(logits, labels, g):
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if labels.ndim == logits.ndim:
        p -= labels.astype(np.float64)
    else:
        p[np.arange(len(labels)), labels] -= 1
    return g.to(torch.float64).numpy()[:, None] * p


def _counting_kernel_calls(monkeypatch, kind="sparse"):
    """A list that records, for each fused `kind` kernel call, whether it wrote a gradient."""
    name = f"{kind}_rows"
    calls, real = [], getattr(_fused, name)

    def counted(logits, labels, grad_out=None, weights=None):
        calls.append(grad_out is not None)
        return real(logits, labels, grad_out, weights)
    monkeypatch.setattr(_fused, name, counted)
    return calls


@pytest.mark.parametrize("kind", KINDS)
def test_a_mean_costs_one_kernel_pass_a_step_once_steady(rng, monkeypatch, kind):
    """Step 1 writes the backprop for g = 1 and runs again with 1/N; step 2 makes the
    loss alone and the gradient in the backward; from step 3 on the forward folds 1/N
    in and the backward has nothing left to do. Every step gives the same bits."""
    logits, labels = _inputs(rng, kind=kind)
    calls = _counting_kernel_calls(monkeypatch, kind)
    grads, per_step = [], []
    for _ in range(5):
        before = len(calls)
        grad, g = _step(logits, labels, lambda loss: loss.mean())
        grads.append(grad)
        per_step.append(calls[before:])
    assert per_step == [[True, True], [False, True], [True], [True], [True]]
    reference = _kernel_reference(logits, labels, g)
    for grad in grads:
        np.testing.assert_array_equal(grad, reference)
    assert_close_to_truth(grad, _truth(logits, labels, g), np.float32, scale=1 / N)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float16), BF16],
                         ids=lambda d: d.name)
def test_any_history_of_upstream_gradients_gives_the_kernels_bits(rng, dtype, kind):
    """Means, scaled means, sums and changing row weights in any order: each step's
    gradient is the kernel's with its own g, whatever the step before folded in."""
    logits, labels = _inputs(rng, dtype, kind)
    weights = [torch.tensor(rng.uniform(0, 2, N).astype(np.float32)) for _ in range(2)]
    objectives = [lambda loss: loss.mean(), lambda loss: loss.mean(), lambda loss: loss.mean(),
                  lambda loss: 0.5 * loss.mean(), lambda loss: loss.sum(),
                  lambda loss: (loss * weights[0].to(loss.dtype)).sum(),
                  lambda loss: (loss * weights[1].to(loss.dtype)).sum(),
                  lambda loss: (loss * weights[1].to(loss.dtype)).sum(),
                  lambda loss: (loss * weights[1].to(loss.dtype)).sum(), lambda loss: loss.mean()]
    for objective in objectives:
        grad, g = _step(logits, labels, objective)
        np.testing.assert_array_equal(grad, _kernel_reference(logits, labels, g))
        assert_close_to_truth(grad, _truth(logits, labels, g), dtype,
                              scale=g.abs().max().item())


@pytest.mark.parametrize("kind", KINDS)
def test_a_second_backward_over_a_retained_graph_gives_the_same_bits(rng, kind):
    logits, labels = _inputs(rng, kind=kind)
    for _ in range(3):   # (steady: the first backward finds its g folded in)
        _step(logits, labels, lambda loss: loss.mean())
    leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
    total = _loss(labels, leaf).mean()
    first = torch.autograd.grad(total, leaf, retain_graph=True)[0].clone()
    second = torch.autograd.grad(total, leaf)[0]
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_small_logits_keep_the_scaling_pass(rng, monkeypatch):
    """Below `MIN_BYTES` nothing is remembered: the forward writes the backprop
    and the backward scales it, one kernel call a step."""
    logits = rng.normal(size=(32, 100)).astype(np.float32)
    labels = rng.integers(0, 100, 32)
    calls = _counting_kernel_calls(monkeypatch)
    for _ in range(3):
        leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
        SPARSE(labels=torch.from_numpy(labels), logits=leaf).mean().backward()
    assert calls == [True] * 3 and not _upstream._seen


def test_keras_and_v1_means_match_tensorflow_step_after_step(tf, rng):
    """The reducing faces' gradients against TF's, over the steps that fold."""
    logits, labels = _inputs(rng)
    keras_loss = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    faces = {
        "keras": (lambda y, x: keras_loss(y, x),
                  lambda y, x: tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, x)),
        "v1": (lambda y, x: xent.losses.sparse_softmax_cross_entropy(labels=y, logits=x),
               lambda y, x: tf.compat.v1.losses.sparse_softmax_cross_entropy(labels=y, logits=x)),
    }
    dense_logits, targets = _inputs(rng, kind="dense")
    smoothed = xent.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    dense_faces = {
        "keras, smoothed": (lambda y, x: smoothed(y, x),
                            lambda y, x: tf.keras.losses.CategoricalCrossentropy(
                                from_logits=True, label_smoothing=0.1)(y, x)),
        "v1": (lambda y, x: xent.losses.softmax_cross_entropy(onehot_labels=y, logits=x),
               lambda y, x: tf.compat.v1.losses.softmax_cross_entropy(onehot_labels=y, logits=x)),
    }
    cases = [(faces, logits, labels, torch.from_numpy),
             (dense_faces, dense_logits, targets, torch.from_numpy)]
    for (ours, theirs), logits, labels, as_tensor in [
            (face, x, y, t) for table, x, y, t in cases for face in table.values()]:
        x = tf.constant(logits)
        with tf.GradientTape() as tape:
            tape.watch(x)
            want_loss = theirs(tf.constant(labels), x)
        want = tape.gradient(want_loss, x).numpy()
        for _ in range(4):
            leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
            loss = ours(as_tensor(labels), leaf)
            loss.backward()
            np.testing.assert_allclose(loss.item(), want_loss.numpy(), rtol=1e-6)
            np.testing.assert_allclose(leaf.grad.numpy(), want, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_a_changing_batch_size_folds_a_mean_and_a_sum_from_the_first_step(rng, monkeypatch,
                                                                          kind):
    """Shapes not seen before (padding that changes per batch) get the kind of g the
    last backward got: after one mean, each new shape's mean is folded at once (one
    kernel call a step); after a sum, a sum; after per-row weights, the loss alone
    and the gradient in the backward."""
    logits, labels = _inputs(rng, kind=kind)
    calls = _counting_kernel_calls(monkeypatch, kind)
    weights = torch.tensor(rng.uniform(0, 2, N).astype(np.float32))
    for objective, rows, want in [
            (lambda loss: loss.mean(), [N], [[True, True]]),   # (learns: a mean)
            (lambda loss: loss.mean(), [240, 200, 168, 256 - 64], [[True]] * 4),
            (lambda loss: loss.sum(), [N - 1], [[True, True]]),   # (learns: a sum)
            (lambda loss: loss.sum(), [N - 2, N - 3], [[True]] * 2),
            (lambda loss: (loss * weights[:loss.shape[0]]).sum(), [N - 4], [[True, True]]),
            (lambda loss: (loss * weights[:loss.shape[0]]).sum(), [N - 5, N - 6],
             [[False, True]] * 2)]:
        for n, expected_calls in zip(rows, want):
            before = len(calls)
            grad, g = _step(logits[:n], labels[:n], objective)
            assert calls[before:] == expected_calls, (n, calls[before:])
            np.testing.assert_array_equal(grad, _kernel_reference(logits[:n], labels[:n], g))


def test_a_float64_upstream_gradient_changed_in_place_is_not_taken_for_the_folded_one(rng):
    """The kept g is a copy: a caller's float64 `grad_outputs` changed in place
    between the forward (which folded it) and the backward gives its new values."""
    logits, labels = _inputs(rng, np.dtype(np.float64))
    w = torch.full((N,), 1.0 / N, dtype=torch.float64)
    for step in range(4):
        leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
        loss = SPARSE(labels=torch.from_numpy(labels), logits=leaf)
        if step == 3:
            w.mul_(3)
        (grad,) = torch.autograd.grad(loss, leaf, grad_outputs=w)
        np.testing.assert_array_equal(grad.numpy(), _kernel_reference(logits, labels, w))


def test_a_negative_zero_upstream_gradient_keeps_its_sign(rng):
    """g = -0.0 after a folded +0.0 (equal as numbers): the kernel's bits with -0.0."""
    logits, labels = _inputs(rng)
    for scale in (0.0, 0.0, 0.0, -0.0):
        grad, g = _step(logits, labels, lambda loss: (scale * loss).sum())
    want = _kernel_reference(logits, labels, g)
    assert np.signbit(want).sum() > N
    np.testing.assert_array_equal(np.signbit(grad), np.signbit(want))


@pytest.mark.parametrize("kind", KINDS)
def test_logits_changed_in_place_after_the_loss_raise_on_every_step(rng, kind):
    """The backward reads the saved logits on every step (a rerun needs them), so
    changing them in place raises torch's error whatever g did before."""
    logits, labels = _inputs(rng, kind=kind)
    base = torch.from_numpy(logits).requires_grad_(True)
    for objective in [lambda loss: loss.mean()] * 4 + [lambda loss: loss.sum()] * 2:
        x = base * 1.0
        loss = _loss(labels, x)
        x.mul_(2)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            objective(loss).backward()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.dtype(np.float16), BF16], ids=lambda d: d.name)
def test_a_half_precision_mean_folds_a_new_batch_size_at_once(rng, dtype, monkeypatch, kind):
    """`xent.nn` gives half logits a half loss, whose `.mean()` divides in the half
    dtype: g is 1/n rounded there, and a new shape is predicted so (logits of
    2 MiB: fewer rows of 1 MiB would drop below `MIN_BYTES`)."""
    logits, labels = _inputs(rng, dtype, kind, classes=2 * C)
    calls = _counting_kernel_calls(monkeypatch, kind)
    for n, want in [(N, [True, True]), (N - 1, [True]), (N - 3, [True]), (N - 8, [True])]:
        before = len(calls)
        grad, g = _step(logits[:n], labels[:n], lambda loss: loss.mean())
        assert calls[before:] == want, (n, calls[before:])
        np.testing.assert_array_equal(grad, _kernel_reference(logits[:n], labels[:n], g))


def test_the_kind_of_a_new_shape_is_the_last_backwards_hit_or_not(rng, monkeypatch):
    """A steady mean that hits still counts as the last backward's kind: after a
    sum on another shape, the next new shape is predicted a mean again. A mean
    over one row (g = 1, kept as no weights) is predicted without a rerun."""
    logits, labels = _inputs(rng)
    calls = _counting_kernel_calls(monkeypatch)
    mean, total = (lambda loss: loss.mean()), (lambda loss: loss.sum())
    for _ in range(3):
        _step(logits, labels, mean)                       # shape N: steady, hits
    _step(logits[:N - 1], labels[:N - 1], total)          # a sum, once
    _step(logits, labels, mean)                           # shape N hits: the kind is a mean
    before = len(calls)
    grad, g = _step(logits[:N - 2], labels[:N - 2], mean)   # new: folded at once
    assert calls[before:] == [True]
    np.testing.assert_array_equal(grad, _kernel_reference(logits[:N - 2], labels[:N - 2], g))
    wide = rng.normal(size=(1, 300_000)).astype(np.float32)   # (1.2 MB in one row)
    label = rng.integers(0, 300_000, 1)
    before = len(calls)
    grad, g = _step(wide, label, mean)
    assert calls[before:] == [True] and bool((g == 1).all())
    np.testing.assert_array_equal(grad, _kernel_reference(wide, label, g))


def test_dense_labels_that_want_a_gradient_never_fold(rng, monkeypatch):
    """Where the dense labels want a gradient too (``-g log_softmax``), the forward
    writes TF's backprop and the backward scales it, step after step (nothing
    is remembered); both gradients match the float64 truth."""
    logits, targets = _inputs(rng, kind="dense")
    calls = _counting_kernel_calls(monkeypatch, "dense")
    for _ in range(3):
        leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
        labels = torch.from_numpy(targets.copy()).requires_grad_(True)
        DENSE(labels=labels, logits=leaf).mean().backward()
        g = torch.full((N,), 1.0 / N, dtype=torch.float64)
        assert_close_to_truth(leaf.grad.numpy(), _truth(logits, targets, g), np.float32,
                              scale=1 / N)
        x = logits.astype(np.float64)
        log_softmax = x - x.max(-1, keepdims=True)
        log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
        assert_close_to_truth(labels.grad.numpy(), -log_softmax / N, np.float32,
                              scale=np.abs(log_softmax).max() / N)
    assert calls == [True] * 3 and not _upstream._seen


@pytest.mark.parametrize("kind", KINDS)
def test_an_infinite_upstream_gradient_is_scaled_as_a_small_loss_does(rng, monkeypatch, kind):
    """g with an infinity (after steady means, and twice in a row) is never folded: the
    gradient is the unweighted backprop times g, as with folding off (a small
    loss), with TF's ±inf entries where the weighted kernel gave NaN rows."""
    logits, labels = _inputs(rng, kind=kind)
    g_inf = torch.ones(N)
    g_inf[3], g_inf[7] = float("inf"), -float("inf")
    objectives = [lambda loss: loss.mean()] * 3 + [
        lambda loss: torch.autograd.backward(loss, g_inf)] * 2 + [lambda loss: loss.mean()]
    fold_min = _upstream.MIN_BYTES
    for objective in objectives:
        got, g = _step(logits, labels, objective)
        monkeypatch.setattr(_upstream, "MIN_BYTES", 1 << 62)
        want, _ = _step(logits, labels, objective)
        monkeypatch.setattr(_upstream, "MIN_BYTES", fold_min)
        np.testing.assert_array_equal(got, want)
        if not bool(torch.isfinite(g).all()):
            assert np.isinf(got[3]).any() and np.isinf(got[7]).any()
            assert not np.isnan(got[3]).all()


def test_dense_labels_changed_in_place_after_a_large_loss_raise_as_f_cross_entropy(rng):
    """The backward of a large dense loss reads its saved labels (a rerun needs them):
    changed in place, they raise torch's error, as `F.cross_entropy`'s with
    probability targets does."""
    import torch.nn.functional as F

    logits, targets = _inputs(rng, kind="dense")
    for loss_of in (lambda y, x: DENSE(labels=y, logits=x).mean(),
                    lambda y, x: F.cross_entropy(x, y)):
        for _ in range(3):
            leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
            labels = torch.from_numpy(targets.copy())
            total = loss_of(labels, leaf * 1.0)
            labels.add_(1.0)
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                total.backward()


@pytest.mark.parametrize("kind", KINDS)
def test_two_losses_of_one_shape_with_different_reductions_both_fold(rng, monkeypatch, kind):
    """``(a.mean() + 0.1 * b.mean()).backward()`` on two losses of one shape: each
    keeps its own g (its place among the step's forwards), so once steady a
    step is two kernel calls that fold, no rerun; each gradient is the
    kernel's with its own g."""
    (x1, y1), (x2, y2) = _inputs(rng, kind=kind), _inputs(rng, kind=kind)
    calls = _counting_kernel_calls(monkeypatch, kind)
    for step in range(5):
        before = len(calls)
        leaves = [own_tensor(x.copy()).requires_grad_(True) for x in (x1, x2)]
        losses = [_loss(y, leaf) for y, leaf in zip((y1, y2), leaves)]
        seen = [[], []]
        for loss, kept in zip(losses, seen):
            loss.register_hook(lambda g, kept=kept: kept.append(g.detach().clone()))
        (losses[0].mean() + 0.1 * losses[1].mean()).backward()
        if step >= 2:
            assert calls[before:] == [True, True], (step, calls[before:])
        for x, y, leaf, kept in zip((x1, x2), (y1, y2), leaves, seen):
            np.testing.assert_array_equal(numpy_view(leaf.grad), _kernel_reference(x, y, kept[0]))


def test_many_losses_before_a_backward_keep_the_tables_bounded(rng):
    """Gradient accumulation: many forwards of one loss shape before one backward.
    Each forward's place keys the kind of upstream gradient remembered for it;
    that table grew by one entry per place (and was written outside the lock),
    where the others keep `MAX_SHAPES`."""
    logits, labels = _inputs(rng)
    leaf = own_tensor(logits.copy()).requires_grad_(True)
    count = 2 * _upstream.MAX_SHAPES + 3
    total = sum(_loss(labels, leaf).mean() for _ in range(count))
    total.backward()
    assert len(_upstream._kinds) <= _upstream.MAX_SHAPES, len(_upstream._kinds)
    want = leaf.grad.clone()
    leaf.grad = None
    _loss(labels, leaf).mean().mul(count).backward()
    torch.testing.assert_close(leaf.grad, want, rtol=1e-5, atol=1e-8)


BATCHED_CALLS = {
    "nn sparse": lambda x, y, s: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x),
    "nn dense": lambda x, y, s: xent.nn.softmax_cross_entropy_with_logits(labels=s, logits=x),
    "raw op loss": lambda x, y, s: xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(x, y)[0],
    "keras object": lambda x, y, s: xent.keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, dtype="float64")(y, x),
    "v1 mean": lambda x, y, s: xent.losses.sparse_softmax_cross_entropy(y, x),
    "cross_entropy none": lambda x, y, s: xent.cross_entropy(x, y, reduction="none"),
    "cross_entropy mean": lambda x, y, s: xent.cross_entropy(x, y, label_smoothing=0.1),
    "linear_cross_entropy mean": lambda x, y, s: xent.linear_cross_entropy(
        x, s[:7] if s.shape[0] >= 7 else torch.cat([s] * 7)[:7], y % 7, chunk_size=3),
}


@pytest.mark.parametrize("rows,classes", [(4, 6), (64, 4096)], ids=["small", "folded-size"])
@pytest.mark.parametrize("name", list(BATCHED_CALLS))
def test_batched_upstream_gradients_give_the_jacobian(name, rows, classes):
    """``autograd.grad(..., is_grads_batched=True)`` and ``jacobian(vectorize=True)``
    run the backward under torch's vmap with a batched g: xent's in-place products,
    ``out=`` products and reads of g's values had no batching rule there, on every
    face (an independent review). Against the row-by-row Jacobian (float64, so
    the kernel and the batched torch ops agree to rounding)."""
    rng = np.random.default_rng(8)
    x = torch.tensor(rng.normal(size=(rows, classes)) * 3, requires_grad=True)
    y = torch.tensor(rng.integers(0, classes, rows))
    s = torch.softmax(torch.tensor(rng.normal(size=(rows, classes))), -1)
    call = BATCHED_CALLS[name]
    loop = torch.autograd.functional.jacobian(lambda x: call(x, y, s), x)
    vectorized = torch.autograd.functional.jacobian(lambda x: call(x, y, s), x, vectorize=True)
    torch.testing.assert_close(vectorized, loop, rtol=1e-12, atol=1e-15)
    out = call(x, y, s)
    cotangents = torch.tensor(rng.normal(size=(3, *out.shape)))
    batched, = torch.autograd.grad(out, x, cotangents, is_grads_batched=True)
    for k in range(3):
        one, = torch.autograd.grad(call(x, y, s), x, cotangents[k])
        torch.testing.assert_close(batched[k], one, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_an_upstream_gradient_with_the_negative_bit_keeps_its_sign(kind, dtype):
    """A stride-0 g of -1 stored as +1 with torch's lazy negation bit: the check for
    a broadcast 1 read the stored +1 and skipped the scaling, so the gradient came
    back with its sign flipped (an independent review)."""
    rng = np.random.default_rng(9)
    x = torch.tensor(rng.normal(size=(8, 10)), dtype=dtype, requires_grad=True)
    y = torch.tensor(rng.integers(0, 10, 8))
    labels = y if kind == "sparse" else torch.nn.functional.one_hot(y, 10).to(dtype)
    loss = (xent.nn.sparse_softmax_cross_entropy_with_logits if kind == "sparse"
            else xent.nn.softmax_cross_entropy_with_logits)(labels=labels, logits=x)
    g = torch.complex(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)).conj().imag.expand(8)
    assert g.is_neg() and float(g[0]) == -1.0
    loss.backward(g)
    want = -(torch.softmax(x.detach().double(), -1) - torch.nn.functional.one_hot(y, 10))
    torch.testing.assert_close(x.grad.double(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_batched_upstream_gradients_of_half_precision_cross_entropy(reduction, dtype):
    """float16 `cross_entropy` makes its gradient in the backward, the upstream g in
    the tokens' weights: a batched g cannot reach the kernel (torch's "Batching rule
    not implemented for aten::detach", the diff's review). Its gradient is made in
    float32 and times g, rounded once: one example at a time's, to an ulp."""
    rng = np.random.default_rng(10)
    x = torch.tensor(rng.normal(size=(6, 40)), dtype=dtype, requires_grad=True)
    y = torch.tensor(rng.integers(0, 40, 6))
    y[2] = -100
    out = xent.cross_entropy(x, y, reduction=reduction)
    cotangents = torch.tensor(rng.normal(size=(3, *out.shape)), dtype=dtype)
    if reduction == "none":
        cotangents[:, 2] = float("nan")   # (an ignored token's: its row stays 0)
    out.backward(torch.ones_like(out), retain_graph=True)   # (then the batched one reruns it)
    batched, = torch.autograd.grad(out, x, cotangents, is_grads_batched=True)
    assert not batched[:, 2].any()
    for k in range(3):
        one, = torch.autograd.grad(xent.cross_entropy(x, y, reduction=reduction), x, cotangents[k])
        torch.testing.assert_close(batched[k].float(), one.float(), rtol=1e-2, atol=1e-6)
    # the float64 truth, each product rounded once: within half an ulp (and a bit)
    x64 = x.detach().double().requires_grad_()
    for k in range(3):
        truth, = torch.autograd.grad(torch.nn.functional.cross_entropy(
            x64, y, reduction=reduction), x64, torch.nan_to_num(cotangents[k].double()))
        ulp = torch.finfo(dtype).eps * truth.abs().clamp(min=torch.finfo(dtype).tiny)
        assert ((batched[k].double() - truth).abs() <= 0.51 * ulp + 1e-30).all()


def test_batched_upstream_gradients_of_per_token_linear_losses_are_refused_by_name():
    """`linear_cross_entropy(reduction="none")` runs its chunks again with each token's
    upstream gradient as its weight: a batched one cannot, and is refused, naming
    the way out (torch's own "Batching rule not implemented" before)."""
    rng = np.random.default_rng(11)
    for dtype, reduction in ((torch.float64, "none"), (torch.float16, "mean")):
        h = torch.tensor(rng.normal(size=(5, 4)), dtype=dtype, requires_grad=True)
        w = torch.tensor(rng.normal(size=(7, 4)), dtype=dtype, requires_grad=True)
        out = xent.linear_cross_entropy(h, w, torch.tensor([1, 2, 3, 4, 5]), reduction=reduction)
        g = torch.eye(5, dtype=dtype) if reduction == "none" else torch.ones(3, dtype=dtype)
        with pytest.raises(RuntimeError, match="batched ones .* are not supported there; use "
                                               "vectorize=False"):
            torch.autograd.grad(out, (h, w), g, is_grads_batched=True)


LARGE_VOCAB_CALLS = {
    "cross_entropy": lambda x, w, t, reduction: xent.cross_entropy(
        x @ w.t(), t, reduction=reduction, label_smoothing=0.1),
    "linear_cross_entropy": lambda x, w, t, reduction: xent.linear_cross_entropy(
        x, w, t, reduction=reduction, chunk_size=3, z_loss=1e-3),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", list(LARGE_VOCAB_CALLS))
def test_a_second_backward_over_a_retained_graph_gives_the_firsts_bits(name, reduction, dtype):
    """The first backward scales the forward's gradient by g; a second one over a
    retained graph folded g into the tokens' weights, which rounds differently:
    1.2e-7 apart in float32 (0.06 in bfloat16), and `gradcheck(fast_mode=True)`
    called the backward not reentrant. Three backwards with one g, bit for bit,
    and the batched form of a second backward (one g at a time's)."""
    rng = np.random.default_rng(12)
    x = torch.tensor(rng.normal(size=(7, 5)), dtype=dtype, requires_grad=True)
    w = torch.tensor(rng.normal(size=(11, 5)), dtype=dtype, requires_grad=True)
    t = torch.tensor([1, 0, 10, -100, 4, 4, 7])
    out = LARGE_VOCAB_CALLS[name](x, w, t, reduction)
    g = torch.tensor(rng.normal(size=out.shape) * 3.7, dtype=dtype)
    first, second, third = (torch.autograd.grad(out, (x, w), g, retain_graph=True) for _ in range(3))
    for a, b, c in zip(first, second, third):
        assert torch.equal(a, b) and torch.equal(b, c)
    if name == "linear_cross_entropy" and (reduction == "none" or dtype == torch.float16):
        return   # (their chunks run again with each g: refused batched, by name, above)
    gs = torch.stack([g, -2 * g])
    batched = torch.autograd.grad(out, (x, w), gs, is_grads_batched=True, retain_graph=True)
    for k in range(2):
        one = torch.autograd.grad(out, (x, w), gs[k], retain_graph=True)
        for b, o in zip(batched, one):   # (half precision: a batched g's product is
            # rounded once, one g's twice; x @ W's sums then cancel: ulps of the largest)
            half = dtype in (torch.float16, torch.bfloat16)
            atol = 4 * torch.finfo(dtype).eps * float(o.abs().max()) if half else 1e-6
            torch.testing.assert_close(b[k].float(), o.float(), rtol=0 if half else 1e-6,
                                       atol=atol)


@pytest.mark.parametrize("name", list(LARGE_VOCAB_CALLS))
def test_gradcheck_fast_mode_passes_for_the_large_vocabulary_functions(name):
    """`gradcheck(fast_mode=True)` checks that the backward is reentrant (exact
    equality): it failed for ``reduction="none"`` (an earlier session's note)."""
    rng = np.random.default_rng(13)
    x = torch.tensor(rng.normal(size=(6, 4)), requires_grad=True)
    w = torch.tensor(rng.normal(size=(9, 4)), requires_grad=True)
    t = torch.tensor([1, 0, 8, -100, 4, 4])
    for reduction in ("mean", "sum", "none"):
        call = LARGE_VOCAB_CALLS[name]
        assert torch.autograd.gradcheck(lambda x, w: call(x, w, t, reduction), (x, w),
                                        fast_mode=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_infinite_upstream_gradient_meets_the_unrounded_backprop_as_tfs(tf, kind, dtype):
    """An infinite upstream gradient times a half-precision backprop entry that had
    rounded to 0 (p = 1e-9) gave NaN, where TF's float32 product gives ±inf (an
    independent review): the backprop now meets g before it is rounded. The
    NaN/inf pattern and the finite entries of TF's gradient."""
    logits = np.array([[0.0, -20.0, 0.0], [1.0, -30.0, 2.0]], np.float32)
    if kind == "sparse":
        labels = np.array([0, 2])
    else:
        labels = np.array([[0.5, 0.0, 0.5], [0.25, 0.0, 0.75]], np.float32)
    g = np.array([np.inf, -np.inf], np.float32)
    tf_dtype, torch_dtype = getattr(tf, dtype), getattr(torch, dtype)
    x = tf.constant(logits, tf_dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = (tf.nn.sparse_softmax_cross_entropy_with_logits if kind == "sparse"
                else tf.nn.softmax_cross_entropy_with_logits)(
            labels=labels if kind == "sparse" else tf.constant(labels, tf_dtype), logits=x)
    want = tape.gradient(loss, x, output_gradients=tf.constant(g, tf_dtype))
    want = np.asarray(tf.cast(want, tf.float32))
    z = torch.tensor(logits, dtype=torch_dtype, requires_grad=True)
    y = torch.tensor(labels) if kind == "sparse" else torch.tensor(labels, dtype=torch_dtype)
    face = (xent.nn.sparse_softmax_cross_entropy_with_logits if kind == "sparse"
            else xent.nn.softmax_cross_entropy_with_logits)
    face(labels=y, logits=z).backward(torch.tensor(g, dtype=torch_dtype))
    got = z.grad.float().numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    np.testing.assert_array_equal(got[finite], want[finite])
