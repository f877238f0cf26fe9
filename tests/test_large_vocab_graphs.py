"""The large-vocabulary functions inside captured torch graphs:
`torch.compile(fullgraph=True)` and the `torch.func` transforms run through the
registered operators (`xent._large_vocab._torch_ops`, `_torch_linear_ops`), and
match the float64 PyTorch oracle (`large_vocab_cases`), values and gradients."""
import ml_dtypes
import numpy as np
import pytest

import xent
from xent.errors import InvalidArgumentError

torch = pytest.importorskip("torch")

from large_vocab_cases import (TOL, assert_close, linear_oracle, make, make_linear,  # noqa: E402
                               oracle)

# One call of each reduction, each with its own options, in one objective
# (one compile per dtype).
CALLS = (
    ({}, "mean"),
    ({"label_smoothing": 0.25, "z_loss": 0.01, "softcap": 2.5}, "sum"),
    ({"z_loss": 1e-3, "softcap": 3.0}, "none"),
)
# Each call's upstream gradient: the reduced losses' scaled, the "none" call's per
# token, so that no gradient is a plain sum.
_UPSTREAM = np.arange(1.0, 7.0).reshape(2, 3)
_SCALE = {"mean": 0.5, "sum": -2.0}


def _upstream(reduction, shape):
    """The upstream gradient of a `reduction` call with targets of `shape`."""
    return _UPSTREAM.reshape(shape) if reduction == "none" else np.full((), _SCALE[reduction])


def _weighted(loss, reduction):
    """``Σ loss·upstream`` of a call's result (`_upstream`), in torch ops."""
    if reduction != "none":
        return loss * _SCALE[reduction]
    # (`_UPSTREAM` made in torch: dynamo's guard on a `torch.from_numpy` of it failed
    # inside a compiled torch.func transform, "Guard failed on the same frame")
    return (loss * torch.arange(1.0, 7.0, dtype=loss.dtype).reshape(loss.shape)).sum()


def _objective(x, t):
    """Σ over `CALLS` of xent's loss (the "none" one weighted by `_UPSTREAM`)."""
    total = 0
    for opts, reduction in CALLS:
        loss = xent.cross_entropy(x, t, reduction=reduction, **opts)
        total = total + _weighted(loss, reduction)
    return total


def _truth(x, t):
    """The oracle's value and logits gradient of `_objective`, in float64."""
    value, grad = 0.0, 0.0
    for opts, reduction in CALLS:
        upstream = _upstream(reduction, t.shape)
        loss, g = oracle(x, t, opts, reduction, upstream)
        value, grad = value + (loss * upstream).sum(), grad + g
    return value, grad


def _tensor(a):
    """A CPU tensor of NumPy array `a` (bfloat16 through an int16 view)."""
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _inputs(dtype, seed=0):
    """Logits [2, 3, 11] of `dtype` (every fourth token ignored) and their targets."""
    return make((2, 3), 11, dtype, seed)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, ml_dtypes.bfloat16],
                         ids=lambda d: np.dtype(d).name)
def test_compile_fullgraph_matches_the_oracle(dtype):
    torch.compiler.reset()
    logits, target = _inputs(dtype)
    want_value, want_grad = _truth(logits.astype(np.float64), target)
    x = _tensor(logits).clone().requires_grad_(True)
    value = torch.compile(_objective, fullgraph=True)(x, torch.from_numpy(target))
    grad, = torch.autograd.grad(value, x)
    assert grad.dtype == x.dtype and value.dtype == x.dtype
    assert_close(value.double().item(), want_value, dtype)
    assert_close(grad.double().numpy(), want_grad, dtype)


def test_compiled_target_out_of_range_raises_tensorflows_error():
    torch.compiler.reset()
    compiled = torch.compile(lambda x, t: xent.cross_entropy(x, t), fullgraph=True)
    with pytest.raises(InvalidArgumentError, match="label value of 11"):
        compiled(torch.zeros(2, 11), torch.tensor([1, 11]))


def test_func_grad_and_vmap_match_the_oracle():
    logits, target = _inputs(np.float64, seed=1)
    t = torch.from_numpy(target)
    grad = torch.func.grad(_objective)(torch.from_numpy(logits), t)
    assert_close(grad.numpy(), _truth(logits, target)[1], np.float64)
    # per-example gradients: vmap of grad over 3 problems, targets batched too
    batch = np.stack([logits, -2 * logits, logits[::-1]])
    targets = np.stack([target, target[::-1], np.roll(target, 1)])
    per = torch.func.vmap(torch.func.grad(_objective))(torch.from_numpy(batch), torch.from_numpy(targets))
    for i in range(3):
        assert_close(per[i].numpy(), _truth(batch[i], targets[i])[1], np.float64)
    # the loss alone under vmap, the targets shared
    losses = torch.func.vmap(lambda x: xent.cross_entropy(x, t, z_loss=0.1))(torch.from_numpy(batch))
    for i in range(3):
        assert_close(losses[i].item(), oracle(batch[i], target, {"z_loss": 0.1}, "mean")[0], np.float64)


def test_func_second_derivatives_are_refused():
    """Differentiable once, as on the eager path: a gradient of the gradient raises,
    never a silent zero from a gradient held as a constant."""
    logits, target = _inputs(np.float64, seed=2)
    x, t = torch.from_numpy(logits), torch.from_numpy(target)
    def loss(x):
        return xent.cross_entropy(x, t, label_smoothing=0.1)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.func.grad(lambda x: torch.func.grad(loss)(x).pow(2).sum())(x)
    with pytest.raises(RuntimeError, match="in reverse mode only: no forward mode"):
        torch.func.hessian(loss)(x)
    with pytest.raises(RuntimeError, match="in reverse mode only: no forward mode"):
        torch.func.jvp(loss, (x,), (x,))


def test_func_float16_gradient_under_a_loss_scale_is_rounded_once():
    """As on the eager path (test_large_vocab.py): the operator's float16 gradient is
    float32 until the upstream gradient (here 2^15 / 4096 tokens) has multiplied it:
    rounded to float16 first, its entries below float16's smallest normal (6e-5)
    would keep only a few bits, and the scale would multiply their error by 8."""
    rng = np.random.default_rng(15)
    n, v, scale = 4096, 64, 2.0 ** 15
    logits = (rng.normal(size=(n, v)) * 3).astype(np.float16)
    target = rng.integers(0, v, n)
    want = oracle(logits.astype(np.float64), target, {}, "mean")[1] * scale
    got = torch.func.grad(lambda z: xent.cross_entropy(z, torch.from_numpy(target)).float() * scale)(
        torch.from_numpy(logits)).double().numpy()
    assert not (got == 0)[np.abs(want) >= 2.0 ** -24].any()   # would round to float16's smallest
    assert (np.abs(got - want) <= TOL[np.float16] * np.abs(want) + 2.0 ** -24).all()


def test_func_bfloat16_gradient_of_a_mean_is_rounded_once():
    """The operator's bfloat16 gradient was rounded to bfloat16, then times 1/count
    and rounded again: 1.35 ulps from the exact gradient, a quarter of the
    entries past half an ulp (an independent review). It stays float32 until
    the multiply now, as float16's does; eager's kernel is within 0.53."""
    from oracle import half_ulps
    rng = np.random.default_rng(16)
    logits = (rng.normal(size=(300, 200)) * 2).astype(ml_dtypes.bfloat16)
    target = rng.integers(0, 200, 300)
    want = oracle(logits.astype(np.float64), target, {}, "mean")[1]
    got = torch.func.grad(lambda z: xent.cross_entropy(z, torch.from_numpy(target)).float())(
        _tensor(logits))
    assert got.dtype == torch.bfloat16
    assert half_ulps(got.float().numpy(), want, ml_dtypes.bfloat16) <= 0.55


# -- linear_cross_entropy -------------------------------------------------------------------------

def _linear_objective(x, w, b, t):
    """Σ over `CALLS` of xent's linear loss (chunks of 4 tokens), each times `_upstream`."""
    total = 0
    for opts, reduction in CALLS:
        loss = xent.linear_cross_entropy(x, w, t, bias=b, reduction=reduction, chunk_size=4, **opts)
        total = total + _weighted(loss, reduction)
    return total


def _linear_truth(x, w, b, t):
    """The oracle's value and (x, w, b) gradients of `_linear_objective`, in float64."""
    value, grads = 0.0, (0.0, 0.0, 0.0)
    for opts, reduction in CALLS:
        upstream = _upstream(reduction, t.shape)
        loss, *g = linear_oracle(x, w, b, t, opts, reduction, upstream)
        value = value + (loss * upstream).sum()
        grads = tuple(a + c for a, c in zip(grads, g))
    return value, grads


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, ml_dtypes.bfloat16],
                         ids=lambda d: np.dtype(d).name)
def test_linear_compile_fullgraph_matches_the_oracle(dtype):
    """float16 makes its gradients in the backward (the chunks again), the others in
    the forward; "none" makes them in the backward in every dtype."""
    torch.compiler.reset()
    arrays = make_linear(6, 5, 17, dtype, seed=3)
    want_value, want_grads = _linear_truth(*(a.astype(np.float64) for a in arrays[:3]), arrays[3])
    x, w, b = (_tensor(a).clone().requires_grad_(True) for a in arrays[:3])
    value = torch.compile(_linear_objective, fullgraph=True)(x, w, b, torch.from_numpy(arrays[3]))
    grads = torch.autograd.grad(value, (x, w, b))
    assert value.dtype == x.dtype and all(g.dtype == x.dtype for g in grads)
    assert_close(value.double().item(), want_value, dtype)
    for got, want in zip(grads, want_grads):
        assert_close(got.double().numpy(), want, dtype)


def test_linear_func_grad_and_per_example_vmap_match_the_oracle():
    x, w, b, t = make_linear(6, 5, 17, np.float64, seed=4)
    tt = torch.from_numpy(t)
    grads = torch.func.grad(_linear_objective, argnums=(0, 1, 2))(*map(torch.from_numpy, (x, w, b)), tt)
    for got, want in zip(grads, _linear_truth(x, w, b, t)[1]):
        assert_close(got.numpy(), want, np.float64)
    # per-example gradients of the weight: each batch element its own dW, not their sum
    xs = np.stack([x, -x, 2 * x])
    per = torch.func.vmap(torch.func.grad(
        lambda x, w: xent.linear_cross_entropy(x, w, tt, label_smoothing=0.1, chunk_size=4), argnums=1),
        in_dims=(0, None))(torch.from_numpy(xs), torch.from_numpy(w))
    for i in range(3):
        want = linear_oracle(xs[i], w, None, t, {"label_smoothing": 0.1}, "mean")[2]
        assert_close(per[i].numpy(), want, np.float64)


def test_compile_fullgraph_takes_integer_options_as_arguments_that_change():
    """`ignore_index` and `chunk_size` as arguments of the compiled function: dynamo
    makes them symbolic ints (at once with ``dynamic=True``, at a second value
    otherwise), which the options' check read with `hasattr` ("Unsupported
    hasattr call")."""
    g = torch.Generator().manual_seed(8)
    x, w = torch.randn(12, 8, generator=g), torch.randn(31, 8, generator=g)
    t = torch.randint(0, 31, (12,), generator=g)
    step = lambda x, w, t, index, chunk: xent.linear_cross_entropy(
        x, w, t, ignore_index=index, chunk_size=chunk)
    for dynamic in (True, None):
        torch.compiler.reset()
        compiled = torch.compile(step, fullgraph=True, dynamic=dynamic)
        for index, chunk in ((int(t[0]), 4), (int(t[1]), 5)):
            torch.testing.assert_close(compiled(x, w, t, index, chunk), step(x, w, t, index, chunk))


def test_compiled_func_grad_and_vmap_match_the_oracle():
    """``torch.compile(torch.func.grad(f))``, and vmap of it: dynamo ignores an
    autograd.Function's own backward inside a transform (torch 2.13), so both
    functions run their torch-ops path there, differentiated by autograd."""
    torch.compiler.reset()
    logits, target = _inputs(np.float64, seed=6)
    t = torch.from_numpy(target)
    grad = torch.compile(torch.func.grad(_objective), fullgraph=True)(torch.from_numpy(logits), t)
    assert_close(grad.numpy(), _truth(logits, target)[1], np.float64)
    batch = np.stack([logits, -2 * logits])
    per = torch.compile(torch.func.vmap(torch.func.grad(_objective), in_dims=(0, None)),
                        fullgraph=True)(torch.from_numpy(batch), t)
    for i in range(2):
        assert_close(per[i].numpy(), _truth(batch[i], target)[1], np.float64)
    x, w, b, tl = make_linear(6, 5, 17, np.float64, seed=7)
    grads = torch.compile(torch.func.grad(_linear_objective, argnums=(0, 1, 2)), fullgraph=True)(
        *map(torch.from_numpy, (x, w, b)), torch.from_numpy(tl))
    for got, want in zip(grads, _linear_truth(x, w, b, tl)[1]):
        assert_close(got.numpy(), want, np.float64)


def test_linear_func_second_derivatives_and_forward_mode_are_refused():
    x, w, _, t = (torch.from_numpy(a) if a is not None else None for a in make_linear(6, 5, 17, np.float64, 5))
    def loss(w):
        return xent.linear_cross_entropy(x, w, t, z_loss=0.01)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.func.grad(lambda w: torch.func.grad(loss)(w).pow(2).sum())(w)
    with pytest.raises(RuntimeError, match="in reverse mode only: no forward mode"):
        torch.func.jvp(loss, (w,), (w,))


def test_linear_compiled_target_out_of_range_raises_tensorflows_error():
    torch.compiler.reset()
    compiled = torch.compile(lambda x, w, t: xent.linear_cross_entropy(x, w, t), fullgraph=True)
    with pytest.raises(InvalidArgumentError, match="label value of 7"):
        compiled(torch.zeros(2, 3), torch.zeros(7, 3), torch.tensor([1, 7]))


# -- both functions -------------------------------------------------------------------------------

def _both(x, w, t):
    """Both functions' means on 3-D inputs, their defaults untouched."""
    return xent.cross_entropy(x @ w.t(), t) + xent.linear_cross_entropy(x, w, t, chunk_size=4)


def _both_truth(x, w, t):
    """The oracle's value and (x, w) gradients of `_both`."""
    loss, dz = oracle(x @ w.T, t, {}, "mean")
    linear = linear_oracle(x.reshape(-1, x.shape[-1]), w, None, t.reshape(-1), {}, "mean")
    dx = dz.reshape(-1, w.shape[0]) @ w
    dw = dz.reshape(-1, w.shape[0]).T @ x.reshape(-1, x.shape[-1])
    return loss + linear[0], (dx.reshape(x.shape) + linear[1].reshape(x.shape), dw + linear[2])


def _retained_twice(fn, *inputs):
    """The value of compiled `fn` at `inputs` and its gradients from two backwards over
    one retained graph, after checking that the second left the first's alone."""
    torch.compiler.reset()
    leaves = [torch.from_numpy(a).requires_grad_(True) for a in inputs[:-1]]
    value = torch.compile(fn, fullgraph=True)(*leaves, torch.from_numpy(inputs[-1]))
    first = torch.autograd.grad(value, leaves, retain_graph=True)
    kept = [g.clone() for g in first]
    second = torch.autograd.grad(value, leaves)
    for a, b in zip(first, kept):
        assert torch.equal(a, b)
    return value.item(), second


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("dynamic,reduction", [(False, "mean"), (True, "none")])
def test_compiled_second_backward_over_a_retained_graph_leaves_the_first_alone(
        dtype, dynamic, reduction):
    """Inductor wrote the backward's product over the saved gradient, as long as
    that product was its own code: at [2, 3, 5] float32 with a mean (default
    settings), and with dynamic shapes and donated buffers off (which a
    retained graph then needs) with per-token losses; the first gradient
    changed in the second backward, which came out wrong. Whether it did
    depended even on the compiled function's argument names. The backward now
    runs the kernel again (`xent::token_grad`), and nothing it writes is saved."""
    import torch._functorch.config as functorch_config

    g = torch.Generator().manual_seed(0)
    torch.compiler.reset()
    with functorch_config.patch(donated_buffer=not dynamic):
        f = torch.compile(lambda x, t: xent.cross_entropy(x, t, reduction=reduction),
                          fullgraph=True, dynamic=dynamic)   # (named z, it did not happen)
        z = torch.randn(2, 3, 5, generator=g, dtype=dtype, requires_grad=True)
        target = torch.randint(0, 5, (2, 3), generator=g)
        losses = f(z, target)
        upstream = torch.randn(losses.shape, generator=g, dtype=dtype)
        first, = torch.autograd.grad((losses * upstream).sum(), z, retain_graph=True)
        kept = first.clone()
        second, = torch.autograd.grad((losses * upstream).sum(), z)
    want = oracle(z.detach().double().numpy(), target.numpy(), {}, reduction,
                  upstream.double().numpy())[1]
    assert torch.equal(first, kept)
    tol = np.float32 if dtype == torch.float32 else np.float64
    for grad in (first, second):
        assert_close(grad.numpy(), want, tol)


def test_device_path_compiled_second_backward_over_a_retained_graph_leaves_the_first_alone(
        device_path):
    """Off the CPU the loss is torch ops, which inductor compiles itself. Its
    hand-made log-sum-exp saved ``exp(z - m)``, and inductor (dynamic shapes,
    donated buffers off, after another compile in the process) wrote the
    gradient over it: the first gradient changed in the second backward,
    which came out wrong. The loss now takes `torch.logsumexp`."""
    import torch._functorch.config as functorch_config

    F = torch.nn.functional
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 5, generator=g, requires_grad=True)
    target = torch.randint(0, 5, (2, 3), generator=g)
    upstream = torch.randn(3, 2, generator=g).mT
    want, = torch.autograd.grad((F.cross_entropy(z.mT, target, reduction="none") * upstream).sum(), z)
    torch.compiler.reset()
    with functorch_config.patch(donated_buffer=False):
        other = torch.compile(lambda x, t: F.cross_entropy(x.mT, t, reduction="none"),
                              fullgraph=True, dynamic=True)(z, target)
        torch.autograd.grad((other * upstream).sum(), z)
        torch.compiler.reset()
        losses = torch.compile(lambda x, t: xent.cross_entropy(x, t, reduction="none"),
                               fullgraph=True, dynamic=True)(z, target)
        first, = torch.autograd.grad((losses * upstream).sum(), z, retain_graph=True)
        kept = first.clone()
        second, = torch.autograd.grad((losses * upstream).sum(), z)
    assert torch.equal(first, kept)
    for grad in (first, second):
        torch.testing.assert_close(grad, want, rtol=1e-6, atol=1e-7)


def test_compiled_linear_backward_scales_its_saved_gradients_through_an_operator():
    """The compiled linear backward scales the forward's dx, dW, db through
    `xent::scale_grads`, not a multiply inductor fuses: at N=2048, H=512,
    V=65536 float32 (the benchmark's shape; too large for the suite) inductor
    wrote that fused product over the saved gradients, and a second backward
    over a retained graph came out wrong and changed the first's (0.019 off;
    not at smaller shapes). Here: the backward graph calls the operator, and
    the gradients of two retained backwards are equal and right."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    seen = []

    def keep(graph, _inputs):
        seen.extend(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
        return make_boxed_func(graph.forward)

    x, w, _, t = make_linear(12, 5, 11, np.float32, seed=11)
    torch.compiler.reset()
    compiled = torch.compile(lambda x, w, t: xent.linear_cross_entropy(x, w, t, chunk_size=4),
                             fullgraph=True, backend=aot_autograd(
                                 fw_compiler=lambda g, _: make_boxed_func(g.forward), bw_compiler=keep))
    leaves = [torch.from_numpy(a).requires_grad_(True) for a in (x, w)]
    value = compiled(*leaves, torch.from_numpy(t))
    first = torch.autograd.grad(value * 3, leaves, retain_graph=True)
    kept = [g.clone() for g in first]
    second = torch.autograd.grad(value * 3, leaves)
    assert seen.count("xent.scale_grads.default") == 1, seen
    assert not [op for op in seen if op.startswith("aten.mul")], seen
    want = linear_oracle(x.astype(np.float64), w.astype(np.float64), None, t, {}, "mean",
                         np.full((), 3.0))
    for a, b, truth in zip(first, second, want[1:3]):
        assert torch.equal(a, b)
        assert_close(a.numpy(), truth, np.float32)
    assert all(torch.equal(a, b) for a, b in zip(first, kept))


def test_compiled_second_backward_over_a_retained_graph_gives_the_same_gradients():
    """With the tokens flattened before the operator, inductor wrote the backward's
    product over the saved gradient: the first gradient changed and the second was
    wrong (float32 logits [4, 5, 11], mean; not at [2, 3, 11], nor in float64).
    The operators keep the tokens' dimensions for this."""
    logits, target = make((4, 5), 11, np.float32, seed=6)
    value, (grad,) = _retained_twice(lambda z, t: xent.cross_entropy(z, t), logits, target)
    want_value, want_grad = oracle(logits.astype(np.float64), target, {}, "mean")
    assert_close(value, want_value, np.float32)
    assert_close(grad.numpy(), want_grad, np.float32)
    x, w, _, t = make_linear(20, 5, 11, np.float32, seed=6)
    value, grads = _retained_twice(lambda x, w, t: xent.linear_cross_entropy(x, w, t, chunk_size=4),
                                   x.reshape(4, 5, 5), w, t.reshape(4, 5))
    want = linear_oracle(x.astype(np.float64), w.astype(np.float64), None, t, {}, "mean")
    assert_close(value, want[0], np.float32)
    assert_close(grads[0].numpy().reshape(20, 5), want[1], np.float32)
    assert_close(grads[1].numpy(), want[2], np.float32)


def test_compile_dynamic_shapes_with_default_options():
    """`dynamic=True` traces the float options too; their check must not stop it
    (math.isfinite did)."""
    torch.compiler.reset()
    compiled = torch.compile(_both, fullgraph=True, dynamic=True)
    for n in (12, 20):
        x, w, _, t = make_linear(n, 5, 11, np.float64, seed=n)
        x, t = x.reshape(4, n // 4, 5), t.reshape(4, n // 4)
        xt, wt = (torch.from_numpy(a).requires_grad_(True) for a in (x, w))
        value = compiled(xt, wt, torch.from_numpy(t))
        want_value, want_grads = _both_truth(x, w, t)
        assert_close(value.item(), want_value, np.float64)
        for got, want in zip(torch.autograd.grad(value, (xt, wt)), want_grads):
            assert_close(got.numpy(), want, np.float64)


def test_no_tokens_give_empty_and_zero_gradients():
    x, w, t = torch.zeros(0, 5, dtype=torch.float64), torch.ones(11, 5, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    for grads in (torch.func.grad(_both, argnums=(0, 1))(x, w, t),
                  torch.autograd.grad(torch.compile(_both, fullgraph=True)(
                      xr := x.clone().requires_grad_(True), wr := w.clone().requires_grad_(True), t), (xr, wr))):
        assert grads[0].shape == (0, 5) and grads[1].shape == (11, 5) and not grads[1].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_operators_pass_torchs_opcheck(dtype):
    """`torch.library.opcheck`: the fake implementations give the real outputs'
    shapes and dtypes, no output aliases an input, the vmap rules and the
    compiled dispatch agree with eager, and the autograd formulas (for direct
    calls; xent's faces go through their Functions) are registered as torch
    asks. With inputs that need a gradient, the compiled check is left out: it
    differentiates every output, the gradient outputs too, which have no
    derivative (a second derivative raises); the next test checks the
    formulas' numbers."""
    from xent._large_vocab import _torch_linear_ops, _torch_ops  # noqa: F401 (registers them)
    g = torch.Generator().manual_seed(7)
    targets = torch.tensor([[0, 10, -100], [4, 4, 1]])
    for needs in (False, True):
        checks = {"test_utils": ("test_schema", "test_autograd_registration",
                                 "test_faketensor")} if needs else {}
        logits = torch.randn(2, 3, 11, generator=g).to(dtype).requires_grad_(needs)
        for want in (True, False):
            torch.library.opcheck(torch.ops.xent.token_rows.default,
                                  (logits, targets, -100, 0.1, 0.01, 3.0, want), **checks)
        x, w, b = (torch.randn(*s, generator=g).to(dtype).requires_grad_(needs)
                   for s in ((2, 3, 5), (11, 5), (11,)))
        weights = torch.full((2, 3), 0.25)
        for bias, wanted in ((b, (True, True, True)), (None, (False, True, False)),
                             (b, (False,) * 3), (b, (True, False, True))):
            torch.library.opcheck(torch.ops.xent.linear_rows.default,
                                  (x, w, bias, targets, weights, -100, 0.0, 0.0, None, 4, *wanted),
                                  **checks)
        torch.library.opcheck(torch.ops.xent.token_grad.default,
                              (logits, targets, torch.randn(2, 3, generator=g), -100, 0.1, 0.01, 3.0),
                              **checks)
    grads = [torch.randn(2, 3, 5, generator=g).to(dtype), torch.randn(11, 5, generator=g),
             torch.empty(0)]
    torch.library.opcheck(torch.ops.xent.scale_grads.default, (grads, torch.tensor(0.5)))


def test_operators_own_gradients_match_the_oracle():
    """A direct call of each operator, differentiated by its own formula, gives the
    float64 oracle's gradients, of per-token losses times an upstream gradient
    and of the weighted total, whether its forward made the gradients or not."""
    from xent._large_vocab import _torch_linear_ops, _torch_ops  # noqa: F401 (registers them)
    opts = {"label_smoothing": 0.1, "z_loss": 0.01, "softcap": 3.0}
    args = (-100, *opts.values())
    logits, targets = make((2, 3), 11, np.float64, seed=8)
    rng = np.random.default_rng(8)
    upstream = rng.normal(size=(2, 3))
    _, truth = oracle(logits, targets, opts, "none", upstream)
    t, up = torch.from_numpy(targets), torch.from_numpy(upstream)
    for want in (True, False):
        z = torch.tensor(logits, requires_grad=True)
        losses, _ = torch.ops.xent.token_rows(z, t, *args, want)
        (losses * up).sum().backward()
        assert_close(z.grad, truth, np.float64)
    x, w, b = (rng.normal(size=s) for s in ((2, 3, 5), (11, 5), (11,)))
    weights = rng.random((2, 3))
    for wanted in ((True,) * 3, (False,) * 3, (True, False, True)):
        for output, upstream_of_losses in ((0, weights), (1, upstream)):
            inputs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
            outputs = torch.ops.xent.linear_rows(*inputs, t, torch.from_numpy(weights), *args,
                                                 4, *wanted)
            g = 1.0 if output == 0 else torch.from_numpy(upstream_of_losses)
            (outputs[output] * g).sum().backward()
            _, *truths = linear_oracle(x, w, b, targets, opts, "none", upstream_of_losses)
            for tensor, want_grad in zip(inputs, truths):
                assert_close(tensor.grad, want_grad, np.float64)


@pytest.fixture
def device_path():
    """The torch-ops path of tensors off the CPU (CUDA), forced on the CPU."""
    from xent import _torch
    _torch.use_torch_ops_on_cpu(True)
    yield
    _torch.use_torch_ops_on_cpu(False)


def test_device_path_in_compiled_graphs_and_torch_func(device_path):
    """Off the CPU both functions are torch ops (no operator): fullgraph traces them,
    and torch.func runs the linear chunks without checkpoint's saved-tensor hooks,
    which it refuses."""
    torch.compiler.reset()
    x, w, _, t = make_linear(12, 5, 11, np.float64, seed=8)
    x, t = x.reshape(3, 4, 5), t.reshape(3, 4)
    want_value, want_grads = _both_truth(x, w, t)
    xt, wt, tt = (torch.from_numpy(a) for a in (x, w, t))
    for grads in (torch.func.grad(_both, argnums=(0, 1))(xt, wt, tt),
                  torch.autograd.grad(torch.compile(_both, fullgraph=True)(
                      xr := xt.clone().requires_grad_(True), wr := wt.clone().requires_grad_(True), tt),
                      (xr, wr))):
        for got, want in zip(grads, want_grads):
            assert_close(got.numpy(), want, np.float64)


@pytest.mark.parametrize("kwargs,text", [
    ({"label_smoothing": 2.0}, "label_smoothing must be in \\[0, 1\\]; received 2.0"),
    ({"z_loss": float("nan")}, "z_loss must be finite; received nan"),
    ({"reduction": "avg"}, "reduction must be one of"),
])
def test_bad_options_are_named_in_graphs_too(kwargs, text):
    """The options are checked before the operator: torch.func raises the ValueError
    itself; a fullgraph compile wraps it in dynamo's error, whose text keeps it."""
    x, t = torch.zeros(4, 7), torch.tensor([0, 1, 2, 3])
    for fn in (lambda x: xent.cross_entropy(x, t, **kwargs),
               lambda x: xent.linear_cross_entropy(x, torch.ones(9, 7), t, **kwargs)):
        with pytest.raises(ValueError, match=text):
            torch.func.grad(fn)(x)
        torch.compiler.reset()
        with pytest.raises(RuntimeError, match=text):
            torch.compile(fn, fullgraph=True)(x.clone().requires_grad_(True))


@pytest.mark.parametrize("how", ["eager", "torch.func", "compile", "device path"])
def test_int32_targets_and_an_ignore_index_past_int32_do_not_wrap(how):
    """torch compares an int32 tensor with a Python int in int32: an ignore_index of
    2**32 + 1 matched the targets equal to 1 in the mean's count, not in the sum
    (the graph and device paths: 3.96 for F.cross_entropy's 2.97)."""
    from xent import _torch

    g = torch.Generator().manual_seed(3)
    z, x = torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    w = torch.randn(7, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 1], dtype=torch.int32)

    def both(z, x):
        return (xent.cross_entropy(z, t, ignore_index=2 ** 32 + 1),
                xent.linear_cross_entropy(x, w, t, ignore_index=2 ** 32 + 1, chunk_size=3))

    want = (torch.nn.functional.cross_entropy(z, t.long()), torch.nn.functional.cross_entropy(x @ w.T, t.long()))
    torch.compiler.reset()
    _torch.use_torch_ops_on_cpu(how == "device path")
    try:
        if how == "torch.func":
            got = (torch.func.grad_and_value(lambda z: both(z, x)[0])(z)[1],
                   torch.func.grad_and_value(lambda x: both(z, x)[1])(x)[1])
        elif how == "compile":
            got = torch.compile(both, fullgraph=True)(z, x)
        else:
            got = both(z, x)
    finally:
        _torch.use_torch_ops_on_cpu(False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("bias", [False, True])
def test_compiled_lm_head_with_a_parameter_weight_and_no_bias(bias):
    """`linear_cross_entropy(h, head.weight, y)` with an `nn.Parameter` weight and no
    bias (the usual LM head) under ``torch.compile(fullgraph=True)``: dynamo could
    not read the module of the Parameter's type, looked at while checking
    for JAX arrays beside the None bias (an independent review). Values and
    every gradient against eager xent."""
    torch.manual_seed(0)

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(8, 16)
            self.head = torch.nn.Linear(16, 50, bias=bias)

        def forward(self, x, y):
            return xent.linear_cross_entropy(self.body(x), self.head.weight, y, bias=self.head.bias)

    model, x, y = LM(), torch.randn(32, 8), torch.randint(0, 50, (32,))
    eager = model(x, y)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x, y)
    compiled_grads = torch.autograd.grad(compiled, list(model.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
