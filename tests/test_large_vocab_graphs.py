"""`xent.cross_entropy` inside captured torch graphs: `torch.compile(fullgraph=True)`
and the `torch.func` transforms run through the registered operator
(`xent._large_vocab._torch_ops`), and match the float64 PyTorch oracle
(`large_vocab_cases.oracle`), values and gradients."""
import ml_dtypes
import numpy as np
import pytest

import xent
from xent.errors import InvalidArgumentError

torch = pytest.importorskip("torch")

from large_vocab_cases import TOL, assert_close, make, oracle  # noqa: E402

# One call of each reduction, each with its own options, in one objective
# (one compile per dtype).
CALLS = (
    ({}, "mean"),
    ({"label_smoothing": 0.25, "z_loss": 0.01, "softcap": 2.5}, "sum"),
    ({"z_loss": 1e-3, "softcap": 3.0}, "none"),
)
# The "none" call's upstream weights, so that its gradient is not a plain sum.
_UPSTREAM = np.arange(1.0, 7.0).reshape(2, 3)


def _objective(x, t):
    """Σ over `CALLS` of xent's loss (the "none" one weighted by `_UPSTREAM`)."""
    total = 0
    for opts, reduction in CALLS:
        loss = xent.cross_entropy(x, t, reduction=reduction, **opts)
        if reduction == "none":
            loss = (loss * torch.tensor(_UPSTREAM, dtype=loss.dtype)).sum()
        total = total + loss
    return total


def _truth(x, t):
    """The oracle's value and logits gradient of `_objective`, in float64."""
    value, grad = 0.0, 0.0
    for opts, reduction in CALLS:
        upstream = _UPSTREAM if reduction == "none" else None
        loss, g = oracle(x, t, opts, reduction, upstream)
        value, grad = value + (loss * (1.0 if upstream is None else upstream)).sum(), grad + g
    return value, grad


def _inputs(dtype, seed=0):
    """Logits [2, 3, 11] of `dtype` (every fourth token ignored) and their targets."""
    return make((2, 3), 11, dtype, seed)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, ml_dtypes.bfloat16],
                         ids=lambda d: np.dtype(d).name)
def test_compile_fullgraph_matches_the_oracle(dtype):
    torch.compiler.reset()
    logits, target = _inputs(dtype)
    want_value, want_grad = _truth(logits.astype(np.float64), target)
    x = torch.from_numpy(logits.view(np.int16)).view(torch.bfloat16) if dtype == ml_dtypes.bfloat16 \
        else torch.from_numpy(logits)
    x = x.clone().requires_grad_(True)
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
