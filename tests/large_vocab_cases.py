"""The large-vocabulary tests' shared cases and oracle (test_large_vocab.py,
test_large_vocab_graphs.py).

The oracle is PyTorch in float64 on materialised logits: ``F.cross_entropy``
(with its label smoothing) plus ``z_loss·logsumexp²``, after ``c·tanh(z/c)``
for a softcap, and torch autograd for every gradient.
"""
import ml_dtypes
import numpy as np
import torch

F = torch.nn.functional

OPTIONS = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-3},
    "softcap": {"softcap": 3.0},
    "all": {"label_smoothing": 0.25, "z_loss": 0.01, "softcap": 2.5},
}
REDUCTIONS = ("mean", "sum", "none")
DTYPES = (np.float64, np.float32, np.float16, ml_dtypes.bfloat16)
# Relative rounding of each dtype's results (a few ulps: xent rounds once, the
# oracle not at all, and the gradient's entries are differences of O(1) terms).
TOL = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 4e-3, ml_dtypes.bfloat16: 3e-2}


def oracle(logits, target, opts, reduction, upstream=None):
    """float64 loss and d(Σ upstream·loss)/dlogits of `logits` [..., V] (NumPy float64)."""
    z0 = torch.tensor(np.asarray(logits, np.float64), requires_grad=True)
    t = torch.tensor(np.asarray(target, np.int64)).reshape(-1)
    z = z0.reshape(-1, z0.shape[-1])
    if opts.get("softcap"):
        z = opts["softcap"] * torch.tanh(z / opts["softcap"])
    keep = t != -100
    per = F.cross_entropy(z, t, reduction="none", label_smoothing=opts.get("label_smoothing", 0.0))
    per = per + opts.get("z_loss", 0.0) * torch.logsumexp(z, -1) ** 2 * keep
    if reduction == "none":
        loss = per.reshape(np.shape(target))
    elif reduction == "sum":
        loss = per.sum()
    else:
        loss = per.sum() / keep.sum() if keep.any() else per.sum() * 0
    weight = torch.ones(()) if upstream is None else torch.tensor(np.asarray(upstream, np.float64))
    (loss * weight).sum().backward()
    return loss.detach().numpy(), z0.grad.numpy()


def linear_oracle(x, w, b, target, opts, reduction, upstream=None):
    """float64 loss and gradients of x, w, b through materialised logits ``x·wᵀ + b``."""
    xt, wt = (torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in (x, w))
    bt = None if b is None else torch.tensor(np.asarray(b, np.float64), requires_grad=True)
    z = xt @ wt.T + (0 if bt is None else bt)
    z.retain_grad()
    loss, _ = oracle(z.detach().numpy(), target, opts, reduction, upstream)
    _, dz = oracle(z.detach().numpy(), target, opts, reduction, upstream)
    z.backward(torch.tensor(dz))
    return loss, xt.grad.numpy(), wt.grad.numpy(), None if bt is None else bt.grad.numpy()


def assert_close(got, truth, dtype, scale=None):
    """|got - truth| <= TOL·(|truth| + scale), scale defaulting to max |truth|."""
    got, truth = np.asarray(got, np.float64), np.asarray(truth, np.float64)
    scale = np.abs(truth).max(initial=0.0) if scale is None else scale
    tol = TOL[dtype] * (np.abs(truth) + scale) + (1e-300 if dtype == np.float64 else 1e-30)
    bad = ~(np.abs(got - truth) <= tol)
    assert not bad.any(), f"{bad.sum()} entries off; worst {np.abs(got - truth).max()} (tol {tol.max()})"


def make(shape, vocab, dtype, seed, ignore="scattered"):
    """Logits [*shape, V] (as `dtype`, widened back to float64 for the oracle) and targets."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(*shape, vocab)) * 3).astype(dtype)
    target = rng.integers(0, vocab, shape)
    if ignore == "scattered":
        target.reshape(-1)[::4] = -100
    elif ignore == "all":
        target[...] = -100
    return logits, target


def make_linear(n, hidden, vocab, dtype, seed, bias=True):
    """Inputs [n, hidden], a weight [vocab, hidden] and bias [vocab] of `dtype`, and targets
    (every fifth from the second ignored)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, hidden)).astype(dtype)
    w = (rng.normal(size=(vocab, hidden)) / np.sqrt(hidden) * 2).astype(dtype)
    b = rng.normal(size=vocab).astype(dtype) if bias else None
    target = rng.integers(0, vocab, n)
    target[1::5] = -100
    return x, w, b, target
