"""Fit the float32 polynomial of `xent._fused._math.exp32` and measure its accuracy.

    python bench/fit_exp.py

exp is evaluated as e**x = 2**n * e**r with |r| <= ln(2)/2 and
e**r ~ 1 + r (c1 + r (c2 + r (c3 + r (c4 + r c5)))). The coefficients are a
least-squares fit of the relative error on Chebyshev nodes, reweighted by
Lawson's iteration toward equal ripple (a near-minimax fit). The script prints
them as float32, then how the compiled kernel's float32 results compare with
correctly rounded exp: overall (down to the underflow threshold) and where
softmax values matter (x > -20), against NumPy's own float32 exp.

It also fits `xent._fused._math.exp_half` (half-precision logits): the degree-3 fit
of e**r, rewritten for 2**f = e**(f ln 2) on |f| <= 1/2 (h_k = c_k ln(2)**k),
and measures its worst relative error through the compiled kernel.
"""
import numpy as np


def fit(degree=5, nodes=20000, iterations=300):
    """Coefficients c1..c_degree and the fit's max relative error on [-ln2/2, ln2/2]."""
    half = np.log(2) / 2
    r = half * np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    basis = np.stack([r ** k for k in range(1, degree + 1)], axis=1)
    target = np.exp(r) - 1
    weights = np.ones_like(r)
    for _ in range(iterations):
        w = np.sqrt(weights) / np.exp(r)
        coef, *_ = np.linalg.lstsq(basis * w[:, None], target * w, rcond=None)
        err = np.abs((1 + basis @ coef) / np.exp(r) - 1)
        weights *= err
        weights /= weights.sum()
    return coef, err.max()


def kernel_accuracy(low, samples=3_000_000, seed=0):
    """On x uniform in [low, 0]: fraction of `_exp32` results correctly rounded, worst
    ulp error, and NumPy's fraction."""
    from numba import njit

    from xent._fused._math import exp32 as _exp32
    from xent._fused._options import FAST as _FAST

    @njit(fastmath=_FAST)
    def run(x, out):
        for j in range(x.shape[0]):
            out[j] = _exp32(x[j])

    x = np.random.default_rng(seed).random(samples, np.float32) * np.float32(low)
    exact = np.exp(x.astype(np.float64)).astype(np.float32)
    got = np.empty_like(x)
    run(x, got)
    ulps = np.abs(got.astype(np.float64) - exact) / np.spacing(exact)
    return (got == exact).mean(), ulps.max(), (np.exp(x) == exact).mean()


def half_accuracy(samples=3_000_000, seed=0):
    """Worst relative error of `_exp_half` on x uniform in [-87, 16]."""
    from numba import njit

    from xent._fused._math import exp_half as _exp_half
    from xent._fused._options import FAST as _FAST

    @njit(fastmath=_FAST)
    def run(x, out):
        for j in range(x.shape[0]):
            out[j] = _exp_half(x[j])

    x = (np.random.default_rng(seed).random(samples) * 103 - 87).astype(np.float32)
    got = np.empty_like(x)
    run(x, got)
    exact = np.exp(x.astype(np.float64))
    return np.max(np.abs(got / exact - 1))


if __name__ == "__main__":
    half, half_err = fit(3)
    print("h1..h3 =", [float(np.float32(c * np.log(2) ** (k + 1))) for k, c in enumerate(half)],
          f"max relative error {half_err:.2e}; _exp_half on [-87, 16]: worst {half_accuracy():.2e}")
    coef, err = fit()
    print("c1..c5 =", [float(np.float32(c)) for c in coef], f"max relative error {err:.2e}")
    for low in (-87.0, -20.0):
        exact, worst, numpy_exact = kernel_accuracy(low)
        print(f"_exp32 on [{low:g}, 0]: {exact:.1%} correctly rounded, worst {worst:.0f} ulp "
              f"(NumPy float32 exp: {numpy_exact:.1%} correctly rounded)")
