"""A caller's NumPy error state changes nothing: no FloatingPointError under
``np.seterr(all="raise")``, no RuntimeWarning under NumPy's defaults, and the
same values (which the other files compare with TensorFlow and PyTorch).

TensorFlow gives inf and NaN silently. Before `_errstate.quiet`, NaN rows,
weights past float16's range and float16 results that round to 0 raised
FloatingPointError under ``np.seterr(all="raise")`` (one of them after part of
an in-place gradient was written) and warned under NumPy's defaults.
"""
import warnings

import ml_dtypes
import numpy as np
import pytest

import xent
from xent import _core

BF16 = np.dtype(ml_dtypes.bfloat16)


def _logits(dtype, seed=0):
    """6×5 logits with a -inf, a row of -inf, a +inf, a NaN, a huge value and a
    row of subnormals; the rest ~30 wide, so float16 results underflow."""
    x = np.random.default_rng(seed).standard_normal((6, 5)) * 30
    x[0, 1], x[1, :], x[2, 0], x[3, 2] = -np.inf, -np.inf, np.inf, np.nan
    x[4, 0] = 6e4 if dtype == np.float16 else 1e38
    x[5, :] = 1e-40
    return x.astype(dtype)


LABELS = np.array([0, 1, 2, 3, 4, 0])
WEIGHTS = np.array([np.inf, 0.0, 1e38, 1e-45, np.nan, 1e4])


def _soft(dtype):
    return np.full((6, 5), 0.2, dtype)


CALLS = {
    "nn sparse": lambda x: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=LABELS, logits=x),
    "nn dense": lambda x: xent.nn.softmax_cross_entropy_with_logits(labels=_soft(x.dtype), logits=x),
    "raw sparse": lambda x: xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(x, LABELS),
    "raw dense": lambda x: xent.raw_ops.SoftmaxCrossEntropyWithLogits(x, _soft(x.dtype)),
    "v1 sparse": lambda x: xent.losses.sparse_softmax_cross_entropy(
        LABELS, x, weights=WEIGHTS, reduction="none"),
    "v1 dense smoothed": lambda x: xent.losses.softmax_cross_entropy(
        np.eye(5, dtype=x.dtype)[LABELS], x, weights=WEIGHTS, label_smoothing=0.1),
    "v1 weighted": lambda x: xent.losses.compute_weighted_loss(x[:, 0], weights=WEIGHTS),
    "keras sparse": lambda x: xent.keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=0)(LABELS, x, sample_weight=WEIGHTS),
    "keras probabilities": lambda x: xent.keras.losses.categorical_crossentropy(
        _soft(x.dtype), np.abs(x), label_smoothing=0.2),
    "cross_entropy": lambda x: xent.cross_entropy(
        x, LABELS, label_smoothing=0.1, z_loss=1e-4, softcap=30.0, return_grads=True),
    "cross_entropy in place": lambda x: xent.cross_entropy(
        x.copy(), LABELS, label_smoothing=0.1, reduction="none", return_grads=True,
        inplace_backward=True),
    "linear_cross_entropy": lambda x: xent.linear_cross_entropy(
        np.nan_to_num(x[:, :4]), np.nan_to_num(x[:5, :4].T.copy()).T, LABELS % 4,
        label_smoothing=0.1, z_loss=1e-4, return_grads=True),
}


def _flat(result):
    """Every array in `result` (an array; a tuple or dict of them), as float64."""
    if isinstance(result, dict):
        return _flat(tuple(result.values()))
    if isinstance(result, tuple):
        return [a for part in result if part is not None for a in _flat(part)]
    return [np.asarray(result).astype(np.float64)]


@pytest.mark.parametrize("kernels", ["fused", "numpy"])
@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64],
                         ids=["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("name", list(CALLS))
def test_numpy_error_state_neither_raises_nor_warns(name, dtype, kernels):
    x = _logits(dtype)
    with _core.using_kernels(kernels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                expected = _flat(CALLS[name](x.copy()))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            default_state = _flat(CALLS[name](x.copy()))
            with np.errstate(all="raise"):
                raising_state = _flat(CALLS[name](x.copy()))
    for got in (default_state, raising_state):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)


def test_torch_backward_under_numpy_raise():
    """torch's backward runs outside the public call: its NumPy casts (the large-
    vocabulary functions' float16 gradient) are quiet too."""
    torch = pytest.importorskip("torch")
    x = (torch.randn(64, 1000, generator=torch.Generator().manual_seed(0)) * 40).half()
    target = torch.arange(64) * 7
    h = torch.randn(64, 32, generator=torch.Generator().manual_seed(1)).half()
    w = torch.randn(1000, 32, generator=torch.Generator().manual_seed(2)).half()
    grads = {}
    for state in ("ignore", "raise"):
        leaf = x.clone().requires_grad_()
        hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
        with np.errstate(all=state):
            xent.cross_entropy(leaf * 1, target, label_smoothing=0.1).backward()
            xent.linear_cross_entropy(hl, wl, target, z_loss=1e-4).backward()
        grads[state] = (leaf.grad, hl.grad, wl.grad)
    for quiet, raising in zip(grads["ignore"], grads["raise"]):
        assert torch.equal(quiet, raising)


def test_keras_call_under_numpy_raise():
    """`Loss.call` is public too (the per-example losses, unreduced)."""
    loss = xent.keras.losses.CategoricalCrossentropy()
    y, p = np.full((1, 2), 0.5, np.float32), np.array([[np.inf, 1.0]], np.float32)
    with np.errstate(all="ignore"):
        expected = loss.call(y, p)
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(loss.call(y, p), expected)
        np.testing.assert_array_equal(loss(y, p), np.mean(expected))


LINEAR_CASES = {
    # an inf upstream gradient on an ignored token (the eager backward's product)
    "inf upstream": ([[1.0, 2.0], [1.0, 2.0], [0.5, -1.0]], [1, -100, 2], [1.0, float("inf"), 1.0]),
    # a row whose float16 loss is inf, weighted 0 (the operator's dot of losses and weights)
    "inf loss weighted 0": ([[1.0, 2.0], [1.0, 2.0]], [1, 1], [1.0, 0.0]),
}


@pytest.mark.parametrize("case", list(LINEAR_CASES))
@pytest.mark.parametrize("way", ["eager", "torch.func", "torch.compile"])
def test_torch_linear_backward_and_operators_under_numpy_raise(way, case):
    """The registered operators run when torch runs the graph (torch.func,
    torch.compile), and the eager backward scales by the upstream gradient:
    both outside the public call, where NumPy raised for these float16 cases."""
    torch = pytest.importorskip("torch")
    rows, targets, upstream = LINEAR_CASES[case]
    h = torch.tensor(rows, dtype=torch.float16)
    w = torch.tensor([[6e4, 1.0], [1.0, -6e4], [0.0, 0.0]], dtype=torch.float16)
    target, upstream = torch.tensor(targets), torch.tensor(upstream, dtype=torch.float16)

    def gradient():
        f = lambda x: xent.linear_cross_entropy(x, w, target, reduction="none")
        if way == "torch.func":
            return torch.func.vjp(f, h)[1](upstream)[0]
        leaf = h.clone().requires_grad_()
        (torch.compile(f, fullgraph=True) if way == "torch.compile" else f)(leaf).backward(upstream)
        return leaf.grad

    with np.errstate(all="ignore"):
        expected = gradient()
    with np.errstate(all="raise"):
        got = gradient()
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(expected))
