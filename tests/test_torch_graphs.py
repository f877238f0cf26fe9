"""xent's TensorFlow faces inside captured torch graphs: `torch.compile(fullgraph=True)`
and the `torch.func` transforms run through the registered operator
(`xent._torch._ops`), and give eager's values and gradients (eager is checked
against TensorFlow in test_torch.py)."""
import subprocess
import sys

import pytest

import xent
from xent.errors import InvalidArgumentError

torch = pytest.importorskip("torch")

SPARSE = xent.nn.sparse_softmax_cross_entropy_with_logits
DENSE = xent.nn.softmax_cross_entropy_with_logits


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, generator=g, dtype=dtype)
    labels = torch.tensor([0, 4, 2, 3, 1, 0])
    y = torch.softmax(torch.randn(6, 5, generator=g, dtype=dtype), -1)
    return x, labels, y


def _objective(x, labels, y, keras_dtype=None):
    """Every face at once: nn sparse and dense (with the labels' gradient), a Keras
    loss with its mean, and the raw op's backprop."""
    keras = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=keras_dtype)
    total = SPARSE(labels=labels, logits=x).sum() * 0.5
    total = total + (DENSE(labels=y, logits=x) * torch.arange(1.0, 7.0, dtype=x.dtype)).sum()
    total = total + keras(labels, x)
    loss, backprop = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=x, labels=labels)
    return total + loss.sum() + (backprop * backprop).sum()


def _objective_float64(x, labels, y):
    """`_objective` with its Keras loss in float64 (by default Keras computes in
    float32, whose rounding differs between the kernel and torch ops)."""
    return _objective(x, labels, y, "float64")


def _eager(x, labels, y, objective=_objective):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = objective(x, labels, y)
    return (value.detach(), *torch.autograd.grad(value, (x, y)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_compile_fullgraph_matches_eager(dtype):
    torch.compiler.reset()
    x, labels, y = _inputs(1, dtype)
    want = _eager(x, labels, y)
    compiled = torch.compile(_objective, fullgraph=True)
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = compiled(xg, labels, yg)
    got = (value.detach(), *torch.autograd.grad(value, (xg, yg)))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)


def test_compile_fullgraph_of_the_v1_losses_with_default_weights_matches_eager():
    """The v1 losses' default ``weights=1.0`` (a Python number) became an array through
    NumPy calls that dynamo cannot trace (np.iscomplexobj: fullgraph failed)."""
    torch.compiler.reset()
    x, labels, y = _inputs(5, torch.float64)

    def v1(x):
        total = xent.losses.sparse_softmax_cross_entropy(labels=labels, logits=x)
        total = total + xent.losses.softmax_cross_entropy(onehot_labels=y, logits=x, label_smoothing=0.1)
        return total + xent.losses.compute_weighted_loss(x.sum(-1), weights=2)

    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    want, got = v1(xe), torch.compile(v1, fullgraph=True)(xc)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, xc)[0], torch.autograd.grad(want, xe)[0],
                               rtol=1e-12, atol=1e-12)


def test_compile_fullgraph_with_numpy_and_list_labels_matches_eager():
    """Labels, weights, sample weights and ignore_class given as NumPy arrays, lists
    or Python numbers, as in eager code: dynamo cannot read a NumPy dtype's
    `kind`, so converting or checking them through NumPy broke the graph
    ("ndarray attribute access")."""
    import numpy as np

    torch.compiler.reset()
    x, labels, y = _inputs(7, torch.float64)
    np_labels, list_labels, onehot = labels.numpy(), labels.tolist(), y.numpy()

    def faces(x):
        total = SPARSE(labels=np_labels, logits=x).sum() + SPARSE(labels=list_labels, logits=x).sum()
        total = total + DENSE(labels=onehot, logits=x).sum()
        total = total + xent.losses.sparse_softmax_cross_entropy(np_labels, x, weights=np.arange(6.0))
        total = total + xent.losses.sparse_softmax_cross_entropy(np_labels, x, weights=[1, 0, 2, 1, 1, 3])
        total = total + xent.losses.softmax_cross_entropy(onehot, x, weights=(2.0,) * 6)
        total = total + xent.losses.compute_weighted_loss(x, weights=[[0.5] * 5] * 6)
        total = total + xent.keras.losses.sparse_categorical_crossentropy(
            np_labels, x, from_logits=True, ignore_class=1).sum()
        keras_loss = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
        return total + keras_loss(np_labels, x, sample_weight=[1.0, 0.0, 2.0, 1.0, 1.0, 3.0])

    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    want, got = faces(xe), torch.compile(faces, fullgraph=True)(xc)
    # The Keras loss computes in float32 (its dtype policy), which inductor
    # fuses in its own order: float32 tolerances.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.autograd.grad(got, xc)[0], torch.autograd.grad(want, xe)[0],
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(InvalidArgumentError, match="label value of 9"):
        torch.compile(lambda x: SPARSE(labels=np.array([0, 1, 9, 0, 0, 0]), logits=x),
                      fullgraph=True)(xc)


def test_compiled_label_out_of_range_raises_tensorflows_error():
    torch.compiler.reset()
    compiled = torch.compile(lambda x, l: SPARSE(labels=l, logits=x), fullgraph=True)
    with pytest.raises(InvalidArgumentError, match="label value of 7"):
        compiled(torch.zeros(2, 5), torch.tensor([1, 7]))


def test_func_grad_and_vmap_match_eager():
    x, labels, y = _inputs(2, torch.float64)
    want = _eager(x, labels, y)
    grads = torch.func.grad(_objective, argnums=(0, 2))(x, labels, y)
    for a, b in zip(grads, want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # per-example gradients: vmap of grad over a batch of 3 problems
    xs, ys = torch.stack([x, x * 2, -x]), torch.stack([y, y.flip(-1), y])
    per = torch.func.vmap(torch.func.grad(_objective, argnums=(0, 2)), in_dims=(0, None, 0))(xs, labels, ys)
    for i in range(3):
        one = _eager(xs[i], labels, ys[i])
        torch.testing.assert_close(per[0][i], one[1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(per[1][i], one[2], rtol=1e-12, atol=1e-12)
    # vmap of the loss alone, labels batched too
    batched = torch.func.vmap(lambda x, l: SPARSE(labels=l, logits=x))(xs, torch.stack([labels] * 3))
    torch.testing.assert_close(batched, torch.stack([SPARSE(labels=labels, logits=a) for a in xs]))


@pytest.mark.parametrize("fullgraph", [True, False])
def test_compiled_func_grad_and_vmap_match_eager(fullgraph):
    """``torch.compile(torch.func.grad(f))``: dynamo differentiates an autograd.Function's
    forward there and ignores its backward (torch 2.13), so the faces run torch ops
    whose derivative is TF's gradient (`_traced`): dense rows that do not sum to 1
    (TF's ``softmax - y``, not autograd's ``Σy·softmax - y``), the labels'
    gradient, a -inf logit, and the raw op's backprop differentiated again."""
    torch.compiler.reset()
    x, labels, y = _inputs(8, torch.float64)
    x[1, 2] = -float("inf")
    y = y * torch.linspace(0.5, 2.0, 6, dtype=y.dtype)[:, None]
    want = list(_eager(x, labels, y, _objective_float64))
    # (the labels' gradient at the -inf logit: TF's +inf, 0 here, as `_traced` says)
    assert want[2][1, 2] == float("inf")
    want[2][1, 2] = 0
    grads = torch.compile(torch.func.grad(_objective_float64, argnums=(0, 2)),
                          fullgraph=fullgraph)(x, labels, y)
    for a, b in zip(grads, want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    x[1, 2] = -3.0
    xs, ys = torch.stack([x, x * 2]), torch.stack([y, y.flip(-1)])
    per = torch.compile(torch.func.vmap(torch.func.grad(_objective_float64, argnums=(0, 2)),
                                        in_dims=(0, None, 0)), fullgraph=fullgraph)(xs, labels, ys)
    for i in range(2):
        one = _eager(xs[i], labels, ys[i], _objective_float64)
        torch.testing.assert_close(per[0][i], one[1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(per[1][i], one[2], rtol=1e-12, atol=1e-12)


def test_compiled_forward_mode_and_labels_gradient_differentiated_match_eager():
    """Inside torch.compile, forward mode along the dense labels (dual tensors, which
    say no requires_grad) and d/dx of the labels' gradient came out 0 (a review);
    eager (checked against TF's ForwardAccumulator in test_torch.py) gives
    -Σ dy·log_softmax and TF's p - e_j."""
    torch.compiler.reset()
    x, _, y = _inputs(10, torch.float64)
    y = y * 1.5
    dense = lambda x, y: DENSE(labels=y, logits=x)   # noqa: E731
    raw = lambda x, y: xent.raw_ops.SoftmaxCrossEntropyWithLogits(features=x, labels=y)[0]   # noqa: E731
    w = torch.linspace(-1.0, 2.0, x.numel(), dtype=x.dtype).reshape(x.shape)
    for fn in (dense, raw):
        jvp = lambda x, y, dx, dy, fn=fn: torch.func.jvp(fn, (x, y), (dx, dy))[1]   # noqa: E731
        args = (x, y, torch.ones_like(x) * 0.3, torch.ones_like(y))
        torch.testing.assert_close(torch.compile(jvp, fullgraph=True)(*args), jvp(*args),
                                   rtol=1e-12, atol=1e-12)
    mixed = lambda x, y: torch.func.grad(   # noqa: E731
        lambda x: (w * torch.func.grad(lambda y: dense(x, y).sum())(y)).sum())(x)
    torch.testing.assert_close(torch.compile(mixed, fullgraph=True)(x, y), mixed(x, y),
                               rtol=1e-12, atol=1e-12)


def test_compiled_func_grad_of_a_label_out_of_range_gives_nan_rows():
    """Inside a compiled transform nothing can raise: the bad row's loss and gradient
    are NaN (TF on a GPU), the other rows eager's."""
    torch.compiler.reset()
    x, labels, _ = _inputs(9, torch.float32)
    bad = labels.clone()
    bad[3] = 5
    loss_of = lambda x, l: SPARSE(labels=l, logits=x).sum()
    grad, value = torch.compile(torch.func.grad_and_value(loss_of), fullgraph=True)(x, bad)
    assert torch.isnan(value) and torch.isnan(grad[3]).all()
    keep = torch.arange(6) != 3
    torch.testing.assert_close(grad[keep], torch.func.grad(loss_of)(x[keep], labels[keep]))


@pytest.mark.parametrize("axis", [0, 1])
def test_func_vmap_of_the_dense_losses_with_a_class_axis_not_last(axis):
    """A class axis that is not the last is moved there by the faces: under vmap
    too (torch.moveaxis has no batching rule; movedim has), values and
    per-example gradients as a loop of eager calls."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(3, 4, 5, 2, generator=g, dtype=torch.float64)
    y = torch.softmax(torch.randn(3, 4, 5, 2, generator=g, dtype=torch.float64), axis + 1)
    keras_loss = xent.keras.losses.CategoricalCrossentropy(from_logits=True, axis=axis)
    for loss in (lambda y, x: DENSE(labels=y, logits=x, axis=axis), keras_loss):
        got = torch.func.vmap(loss)(y, x)
        torch.testing.assert_close(got, torch.stack([loss(y[i], x[i]) for i in range(3)]))
        per = torch.func.vmap(torch.func.grad(lambda y, x: loss(y, x).sum(), argnums=1))(y, x)
        for i in range(3):
            xi = x[i].clone().requires_grad_(True)
            want, = torch.autograd.grad(loss(y[i], xi).sum(), xi)
            torch.testing.assert_close(per[i], want, rtol=1e-12, atol=1e-12)


def test_func_hessian_of_the_sparse_loss_is_exact():
    x, labels, _ = _inputs(3, torch.float64)
    got = torch.func.hessian(lambda x: SPARSE(labels=labels, logits=x).sum())(x)
    want = torch.func.hessian(
        lambda x: (torch.logsumexp(x, -1) - x.gather(-1, labels[:, None])[:, 0]).sum())(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _objective_in_torch_ops(x, labels, y):
    """`_objective` written in torch's own ops (the oracle of the forward-mode tests)."""
    log_p = torch.log_softmax(x, -1)
    sparse = -log_p.gather(-1, labels[:, None])[:, 0]
    total = sparse.sum() * 0.5
    total = total + (-(y * log_p).sum(-1) * torch.arange(1.0, 7.0, dtype=x.dtype)).sum()
    total = total + torch.nn.functional.cross_entropy(x.float(), labels)   # (Keras: in floatx)
    backprop = torch.softmax(x, -1) - torch.nn.functional.one_hot(labels, x.shape[-1]).to(x.dtype)
    return total + sparse.sum() + (backprop * backprop).sum()


def test_func_second_derivatives_of_a_label_out_of_range_on_the_torch_ops_path():
    """Off the CPU a bad label is not checked: its row's loss is NaN, and its
    derivatives TF's registered gradient's, softmax's. Forward mode (the
    Function's jvp, which torch.func.hessian starts with) gives the same
    Hessian as reverse over reverse, and a NaN loss tangent on that row (it
    raised in one_hot)."""
    from xent import _torch
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([1, 7])
    loss = lambda x: SPARSE(labels=labels, logits=x)  # noqa: E731
    _torch.use_torch_ops_on_cpu(True)
    try:
        reverse = torch.autograd.functional.hessian(lambda x: loss(x).sum(), x)
        forward = torch.func.hessian(lambda x: loss(x).sum())(x)
        _, tangent = torch.func.jvp(loss, (x,), (torch.ones_like(x),))
    finally:
        _torch.use_torch_ops_on_cpu(False)
    torch.testing.assert_close(forward, reverse, rtol=1e-12, atol=1e-14)
    p = torch.softmax(x[1], -1)
    torch.testing.assert_close(forward[1, :, 1, :], torch.diag(p) - torch.outer(p, p))
    assert torch.isnan(tangent[1]) and torch.isfinite(tangent[0])


def test_func_jvp_and_jacfwd_match_torchs_own_ops():
    """Forward mode through every face under torch.func: `jvp` along logits and
    labels tangents, and `jacfwd` of the loss alone (its backprop output is empty)."""
    x, labels, y = _inputs(4, torch.float64)
    g = torch.Generator().manual_seed(5)
    dx, dy = torch.randn(x.shape, generator=g, dtype=x.dtype), torch.randn(y.shape, generator=g, dtype=y.dtype)
    got = torch.func.jvp(lambda a, b: _objective(a, labels, b), (x, y), (dx, dy))
    want = torch.func.jvp(lambda a, b: _objective_in_torch_ops(a, labels, b), (x, y), (dx, dy))
    for a, b in zip(got, want):   # (atol: the Keras term is float32, Keras' floatx)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-6)
    jac = torch.func.jacfwd(lambda a: SPARSE(labels=labels, logits=a))(x)
    want_jac = torch.func.jacfwd(lambda a: torch.nn.functional.cross_entropy(a, labels, reduction="none"))(x)
    torch.testing.assert_close(jac, want_jac, rtol=1e-12, atol=1e-12)


def _backward_graph_ops(fn, *args):
    """The ATen ops of the backward graphs that torch.compile makes for `fn`."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    seen = []

    def keep(graph, _inputs):
        seen.extend(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
        return make_boxed_func(graph.forward)

    torch.compiler.reset()
    compiled = torch.compile(fn, fullgraph=True,
                             backend=aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g.forward), bw_compiler=keep))
    value = compiled(*args)
    grads = torch.autograd.grad((value * torch.arange(1.0, 7.0)).sum(), [a for a in args if a.requires_grad])
    return seen, value, grads


@pytest.mark.parametrize("path", ["kernel", "torch ops"])
@pytest.mark.parametrize("face", ["sparse", "dense"])
def test_compiled_second_backward_over_a_retained_graph_leaves_the_first_alone(path, face):
    """With dynamic shapes and donated buffers off (which a retained graph needs),
    inductor wrote the backward's product over the saved backprop ([2, 3, 5]
    float32, the nn sparse loss's mean): the first gradient changed in the
    second backward, which came out wrong. The backward now runs the kernel
    again (`xent::rows_grad`), on both CPU paths."""
    import torch._functorch.config as functorch_config

    from xent import _torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3), generator=g)
    y = torch.softmax(torch.randn(2, 3, 5, generator=g), -1)
    target = labels if face == "sparse" else y
    loss = ((lambda x, t: SPARSE(labels=t, logits=x).mean()) if face == "sparse"
            else (lambda x, t: DENSE(labels=t, logits=x).mean()))
    want, = torch.autograd.grad(loss(x, target) * 3, x)   # (eager: checked against TF elsewhere)
    torch.compiler.reset()
    _torch.use_torch_ops_on_cpu(path == "torch ops")
    try:
        with functorch_config.patch(donated_buffer=False):
            value = torch.compile(loss, fullgraph=True, dynamic=True)(x, target)
            first, = torch.autograd.grad(value * 3, x, retain_graph=True)
            kept = first.clone()
            second, = torch.autograd.grad(value * 3, x)
    finally:
        _torch.use_torch_ops_on_cpu(False)
    assert torch.equal(first, kept)
    for grad in (first, second):
        torch.testing.assert_close(grad, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("face", ["sparse", "dense"])
def test_compiled_loss_backward_runs_the_kernel_and_no_softmax_in_torch_ops(face):
    """The nn faces' backward in a graph is the kernel run again (`xent::rows_grad`,
    the logits' gradient), plus log_softmax for dense labels; no softmax is
    differentiated in torch ops (a pass over the logits with two exps: 8x
    the eager step at 8192x32000)."""
    x, labels, y = _inputs(4)
    x = x.requires_grad_(True)
    if face == "sparse":
        fn, args = (lambda x, l: SPARSE(labels=l, logits=x)), (x, labels)
    else:
        fn, args = (lambda x, y: DENSE(labels=y, logits=x)), (x, y.requires_grad_(True))
    ops, value, grads = _backward_graph_ops(fn, *args)
    exps = [op for op in ops if op in ("aten.exp.default", "aten.amax.default")]
    assert len(exps) == (0 if face == "sparse" else 2), ops   # dense: log_softmax's amax, exp
    assert ops.count("xent.rows_grad.default") == 1, ops
    eager_args = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    eager_value = fn(*eager_args)
    want = torch.autograd.grad((eager_value * torch.arange(1.0, 7.0)).sum(),
                               [a for a in eager_args if a.requires_grad])
    torch.testing.assert_close(value, eager_value)
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("face", ["sparse", "dense"])
def test_compiled_loss_backward_with_an_infinite_upstream_gradient_gives_eagers(face):
    """The compiled backward runs the kernel with the upstream gradient g as the
    rows' weights; a g with ±inf scales TF's backprop instead, as eager does
    (the weighted kernel gave NaN rows where the product gives ±inf); other
    rows keep their numbers."""
    x, labels, y = _inputs(6)
    target = labels if face == "sparse" else y
    fn = (lambda x, t: SPARSE(labels=t, logits=x)) if face == "sparse" \
        else (lambda x, t: DENSE(labels=t, logits=x))
    g = torch.arange(1.0, 7.0)
    g[1], g[4] = float("inf"), -float("inf")
    torch.compiler.reset()
    leaf = x.clone().requires_grad_(True)
    got, = torch.autograd.grad(torch.compile(fn, fullgraph=True)(leaf, target), leaf, g)
    leaf = x.clone().requires_grad_(True)
    want, = torch.autograd.grad(fn(leaf, target), leaf, g)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert torch.isinf(got[1]).any() and torch.isinf(got[4]).any()
    assert torch.isfinite(got[[0, 2, 3, 5]]).all()


def test_compiled_backward_twice_through_a_retained_graph_gives_the_same_gradient():
    """Nothing the backward writes is saved in the graph (it runs the kernel
    again): a second backward (retain_graph) gives the same gradient, and the
    first stays intact (a saved backprop scaled in place got both wrong)."""
    torch.compiler.reset()
    compiled = torch.compile(lambda x, l: SPARSE(labels=l, logits=x), fullgraph=True)
    x, labels, _ = _inputs(5)
    x = x.requires_grad_(True)
    total = (compiled(x, labels) * 2).sum()
    first = torch.autograd.grad(total, x, retain_graph=True)[0]
    kept = first.clone()
    second = torch.autograd.grad(total, x)[0]
    want = 2 * (torch.softmax(x.detach(), -1) - torch.nn.functional.one_hot(labels, 5))
    torch.testing.assert_close(second, want)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    torch.testing.assert_close(first, want)


def test_func_grad_of_the_loss_does_not_differentiate_the_unused_backprop(monkeypatch):
    """torch.func.grad of a loss: the operator's backprop output is unused, its
    gradient stays None and no softmax VJP is computed (that pass made
    torch.func.grad 67x the eager step at 2048x32000 float32)."""
    from xent import _array_kernels

    calls = []
    vjp = _array_kernels.softmax_vjp
    monkeypatch.setattr(_array_kernels, "softmax_vjp", lambda *a: calls.append(1) or vjp(*a))
    x, labels, y = _inputs(6, torch.float64)
    got = torch.func.grad(lambda x: (SPARSE(labels=labels, logits=x) * 3).sum())(x)
    want = 3 * (torch.softmax(x, -1) - torch.nn.functional.one_hot(labels, 5))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert calls == []
    # the raw op's backprop, when used, is differentiated (TF's second order)
    torch.func.grad(lambda x: xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
        features=x, labels=labels)[1].square().sum())(x)
    assert calls == [1]


def test_func_grad_of_the_dense_raw_ops_backprop_alone_reaches_the_labels():
    """Only the raw op's backprop is used: the loss's gradient is None (not
    materialised), and the labels get TF's answer, zero (the backprop passes
    nothing to them)."""
    x, _, y = _inputs(7, torch.float64)
    objective = lambda x, y: xent.raw_ops.SoftmaxCrossEntropyWithLogits(
        features=x, labels=y).backprop.square().sum()
    d_x, d_y = torch.func.grad(objective, argnums=(0, 1))(x, y)
    want = _eager_grads(objective, x, y)
    torch.testing.assert_close(d_x, want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d_y, torch.zeros_like(y))
    torch.testing.assert_close(want[1], torch.zeros_like(y))


def _eager_grads(objective, x, y):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    return torch.autograd.grad(objective(x, y), (x, y), allow_unused=True, materialize_grads=True)



def test_operator_passes_torchs_opcheck_and_its_own_formula_is_tensorflows_gradient():
    """A direct call of `xent::rows` on tensors that need a gradient: opcheck (fake
    implementation, aliasing, vmap rule, autograd registration and the compiled
    dispatch, which differentiates both outputs), and the operator's own
    formula gives eager's gradients (TF's, test_torch.py) of the loss and the
    backprop, both kinds, with and without the forward's backprop."""
    from xent._torch import _ops  # noqa: F401 (registers the operator)
    x, labels, y = _inputs(8, torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    for kind, target in (("sparse", labels), ("dense", y)):
        for want in (True, False):
            torch.library.opcheck(torch.ops.xent.rows.default, (kind, x, target, want))
    face = {"sparse": xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits,
            "dense": xent.raw_ops.SoftmaxCrossEntropyWithLogits}
    g = torch.Generator().manual_seed(9)
    u, v = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g,
                                                                        dtype=torch.float64)
    for kind, target in (("sparse", labels), ("dense", y)):
        inputs = (x,) if kind == "sparse" else (x, y)
        loss, backprop = face[kind](features=x, labels=target)
        want = torch.autograd.grad((loss * u).sum() + (backprop * v).sum(), inputs)
        for want_grad in (True, False):
            loss, backprop = torch.ops.xent.rows(kind, x, target, want_grad)
            objective = (loss * u).sum() + ((backprop * v).sum() if want_grad else 0)
            got = torch.autograd.grad(objective, inputs)
            if not want_grad:   # (no backprop output: the loss's gradient alone)
                want_loss = torch.autograd.grad((face[kind](features=x, labels=target)[0]
                                                 * u).sum(), inputs)
                torch.testing.assert_close(got, want_loss, rtol=1e-12, atol=1e-12)
            else:
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_compile_fullgraph_works_as_the_first_call_of_a_fresh_process():
    """The first call of xent on a tensor imports xent's torch face; inside
    `torch.compile(fullgraph=True)` that import is traced too, and must not
    break the graph (an `importlib` call did: dynamo refuses it). Nor may the
    trace guard on what changes later (the dtype names xent had seen, the faces
    it had imported, `sys.modules` for JAX): each made the caller's whole
    graph compile again, at its second call, after xent's first eager call, or
    after JAX's import. A fresh interpreter, since this process has long
    imported the face."""
    code = (
        "import torch, xent\n"
        "f = torch.compile(lambda x, l: xent.nn.sparse_softmax_cross_entropy_with_logits("
        "labels=l, logits=x).sum(), fullgraph=True)\n"
        "x = torch.randn(4, 7, requires_grad=True)\n"
        "l = torch.tensor([0, 6, 2, 3])\n"
        "loss = f(x, l)\n"
        "loss.backward()\n"
        "want = torch.nn.functional.cross_entropy(x.detach(), l, reduction='sum')\n"
        "torch.testing.assert_close(loss.detach(), want)\n"
        "torch.testing.assert_close(x.grad, torch.softmax(x.detach(), -1)"
        " - torch.nn.functional.one_hot(l, 7))\n"
        "torch.compiler.set_stance('fail_on_recompile')\n"
        "f(x, l).backward()\n"
        "xent.nn.sparse_softmax_cross_entropy_with_logits(labels=l, logits=x).sum().backward()\n"
        "import jax.numpy as jnp\n"
        "xent.nn.sparse_softmax_cross_entropy_with_logits(labels=jnp.asarray([1]),"
        " logits=jnp.ones((1, 3)))\n"
        "f(x, l).backward()\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("fullgraph", [False, True])
def test_compiled_calls_refuse_torch_tensors_beside_jax_arrays(fullgraph):
    """The refusal eager calls give, under torch.compile too (a traced call skipped
    its check of JAX arrays, to read no `sys.modules` it would guard on, and a
    JAX label array went through)."""
    jnp = pytest.importorskip("jax.numpy")
    f = torch.compile(lambda x, labels: xent.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=x), fullgraph=fullgraph)
    with pytest.raises(TypeError, match="got both torch.Tensor and jax.Array"):
        f(torch.randn(4, 7), jnp.asarray([1, 2, 3, 0]))


@pytest.mark.parametrize("face", ["v1 weights", "v1 smoothing", "keras smoothing"])
def test_fullgraph_takes_python_numbers_that_change_between_calls(face):
    """A Python float that changes between calls becomes a symbolic number in
    dynamo's next trace, on which `hasattr`/`getattr` cannot be traced: the
    second call failed under ``fullgraph=True``."""
    import xent.keras.losses as xk

    labels, x = torch.tensor([0, 1, 2, 3]), torch.randn(4, 5)
    onehot = torch.eye(5)[labels]
    call = {"v1 weights": lambda a, v: xent.losses.sparse_softmax_cross_entropy(labels, a, weights=v),
            "v1 smoothing": lambda a, v: xent.losses.softmax_cross_entropy(onehot, a, label_smoothing=v),
            "keras smoothing": lambda a, v: xk.categorical_crossentropy(
                onehot, a, from_logits=True, label_smoothing=v)}[face]
    compiled = torch.compile(call, fullgraph=True, dynamic=True)
    for value in (0.1, 0.2, 0.3):
        torch.testing.assert_close(compiled(x, value), call(x, value))


@pytest.mark.parametrize("face", ["nn", "raw op"])
def test_func_vmap_of_forward_mode_over_batched_sparse_labels(face):
    """``vmap(jacfwd(f))``, ``vmap(jvp)`` and ``vmap(hessian(f))`` with the sparse labels
    batched: the forward rule's F.one_hot checked the labels' range by reading
    their values, which vmap refuses (an independent review). Against the same
    transforms one example at a time (whose labels are not batched)."""
    from torch.func import hessian, jacfwd, jvp, vmap
    torch.manual_seed(0)
    z = torch.randn(2, 3, 4, dtype=torch.float64)
    y = torch.tensor([[0, 3, 1], [2, 2, 0]])
    if face == "nn":
        def f(z, y):
            return xent.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z).mean()
    else:
        def f(z, y):
            return xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(z, y)[0].mean()
    transforms = {
        "jacfwd": lambda z, y: jacfwd(f)(z, y),
        "jvp": lambda z, y: jvp(lambda z: f(z, y), (z,), (torch.ones_like(z),))[1],
        "hessian": lambda z, y: hessian(f)(z, y),
    }
    for name, transform in transforms.items():
        batched = vmap(transform)(z, y)
        one_by_one = torch.stack([transform(z[b], y[b]) for b in range(2)])
        torch.testing.assert_close(batched, one_by_one, rtol=1e-12, atol=1e-15, msg=name)


EXPORTED_LOSSES = {
    "nn": lambda z, y, w: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z).mean(),
    "keras": lambda z, y, w: xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, z),
    "raw op": lambda z, y, w: xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(z, y)[0].mean(),
    "cross_entropy": lambda z, y, w: xent.cross_entropy(z, y, label_smoothing=0.1),
    "linear_cross_entropy": lambda z, y, w: xent.linear_cross_entropy(z, w, y, reduction="sum"),
}


@pytest.mark.parametrize("name", list(EXPORTED_LOSSES))
def test_strict_export_keeps_the_gradients_of_the_parameters(name):
    """``torch.export.export(..., strict=True)`` traces an autograd Function's
    forward with autograd off and drops its backward: no gradient reached the
    model's parameters through any xent loss, and a bad label left grad mode
    off for the whole process (an independent review). The operators
    themselves (differentiated by their registered autograd) keep them, and
    make no gradient in the forward."""
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(6, 5)
            self.head = torch.nn.Parameter(torch.randn(7, 5))

        def forward(self, x, y):
            return EXPORTED_LOSSES[name](self.body(x), y, self.head)

    def gradients(module, loss):
        names, params = zip(*module.named_parameters())
        return dict(zip(names, torch.autograd.grad(loss, params, allow_unused=True)))

    model, x, y = Model(), torch.randn(8, 6), torch.randint(0, 5, (8,))
    eager = model(x, y)
    want = gradients(model, eager)
    program = torch.export.export(model, (x, y), strict=True)
    calls = [node for node in program.graph.nodes
             if node.op == "call_function" and str(node.target).startswith("xent.")]
    assert calls   # (and none makes a gradient in the forward, but the raw op, whose
    # backprop is an output: the diff's review saw an exported inference program make a
    # logits-sized backprop, or dW, on every call)
    if name != "raw op":
        assert all(arg is not True for node in calls for arg in node.args[-3:]), calls
    exported = program.module()
    loss = exported(x, y)
    assert loss.requires_grad
    got = gradients(exported, loss)
    torch.testing.assert_close(loss, eager, rtol=1e-6, atol=0)
    for key, value in want.items():
        if value is None:   # (an unused parameter: the exported module may drop it)
            assert got.get(key) is None, key
        else:
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-7, msg=key)
    with pytest.raises(InvalidArgumentError):
        exported(x, torch.full((8,), 9))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("name", ["nn", "keras", "raw op", "cross_entropy"])
def test_jit_trace_records_the_loss_not_a_constant(name):
    """`torch.jit.trace` of a loss on tensors that want no gradient recorded the
    NumPy call's result as a constant: the traced function gave the traced
    inputs' loss for any other inputs (an independent review). Now it records
    the operator's Function."""
    import warnings
    loss = EXPORTED_LOSSES[name]
    torch.manual_seed(0)
    z, y = torch.randn(4, 5), torch.randint(0, 5, (4,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # (torch's TracerWarnings and deprecation)
        traced = torch.jit.trace(lambda z, y: loss(z, y, None), (z, y))
    other_z, other_y = torch.randn(4, 5) * 3, torch.randint(0, 5, (4,))
    torch.testing.assert_close(traced(other_z, other_y), loss(other_z, other_y, None),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_exported_raw_ops_return_their_backprop(kind, strict):
    """The raw ops' backprop is an output: exported (strict or not, torch's default),
    it came back an empty ``[0]`` once the exported operators made the loss alone
    (the second review of this session's diff). The eager op's, which is TF's."""
    torch.manual_seed(1)
    op = (xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits if kind == "sparse"
          else xent.raw_ops.SoftmaxCrossEntropyWithLogits)

    class Model(torch.nn.Module):
        def forward(self, x, y):
            return op(x, y)

    x = torch.randn(4, 5)
    y = torch.randint(0, 5, (4,)) if kind == "sparse" else torch.softmax(torch.randn(4, 5), -1)
    loss, backprop = torch.export.export(Model(), (x, y), strict=strict).module()(x, y)
    want_loss, want_backprop = op(x, y)
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(backprop, want_backprop, rtol=1e-6, atol=1e-7)
