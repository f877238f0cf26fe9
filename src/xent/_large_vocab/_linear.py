"""`linear_cross_entropy`'s chunk loop: the logits of a few tokens at a time, never all.

For the tokens that are not ignored, a chunk of ``C`` of them at a time:

    z   = x_c · Wᵀ + b                         (one [C, V] buffer, reused)
    g   = w_i · dloss_i/dz   (in place over z, `_rows.token_losses`)
    dx_c = g · W,   dW += gᵀ · x_c,   db += Σ_i g_i

so the extra memory is one chunk of logits (plus, for half precision, its
float32 copy), whatever N. The matmuls are the caller's framework's
(`NumpyMatmuls` here; torch's in `xent._large_vocab._torch`); the loss and
gradient of each chunk are the fused kernel's.
"""
import numpy as np

from xent._dtypes import accumulator_name
from xent._errstate import quiet
from xent._large_vocab import _blas
from xent._large_vocab._cross_entropy import losses_and_gradient

__all__ = ["NumpyMatmuls", "chunked"]


class NumpyMatmuls:
    """The matmuls of the chunk loop on NumPy arrays (float32/float64; half
    precision is widened to float32 by the caller)."""

    # dW += gᵀ·x_c: BLAS gemm with beta = 1 where `_blas` finds it; else a
    # [WEIGHT_ROWS, H] product at a time, so no [V, H] temporary is made
    # (NumPy's matmul has no accumulate).
    WEIGHT_ROWS = 2048

    @staticmethod
    def numpy(a):
        return a

    @staticmethod
    def empty(shape, like):
        return np.empty(shape, like.dtype)

    @staticmethod
    def rows(x, index):
        return x[index]

    @staticmethod
    def zeros_like(x):
        return np.zeros_like(x)

    @staticmethod
    def put_rows(x, index, values):
        x[index] = values

    @staticmethod
    def logits(x, weight, bias, out):
        np.matmul(x, weight.T, out=out)
        if bias is not None:
            out += bias

    @staticmethod
    def input_grad(g, weight, out):
        np.matmul(g, weight, out=out)

    @classmethod
    def add_weight_grad(cls, dw, g, x):
        if _blas.add_at_b(dw, g, x):
            return
        for lo in range(0, dw.shape[0], cls.WEIGHT_ROWS):
            hi = min(lo + cls.WEIGHT_ROWS, dw.shape[0])
            dw[lo:hi] += g[:, lo:hi].T @ x

    @staticmethod
    def add_bias_grad(db, g):
        db += g.sum(axis=0, dtype=db.dtype)


@quiet   # (also run from torch's backward and JAX's callbacks, outside the public call)
def chunked(mm, x, weight, bias, targets, valid, opts, chunk, weights=None, grads=None):
    """Per-token losses of ``x·Wᵀ + b`` and, with `grads`, the weighted gradients.

    Args:
      mm: the matmuls (`NumpyMatmuls` or torch's).
      x: ``[N, H]`` inputs (framework arrays of one dtype); weight ``[V, H]``;
        bias ``[V]`` or None.
      targets: ``[N]`` int64 NumPy, in range where `valid` (``[N]`` bool).
      opts: `Options`; chunk: tokens per chunk.
      weights: ``[N]`` NumPy, d result / d loss_i (with `grads`).
      grads: None, or ``(dx, dw, db)``: zeroed ``[N, H]``, ``[V, H]`` and ``[V]``
        that receive the gradients (dw and db may be a wider dtype than the
        inputs, to accumulate in); any of them None is not made (db without
        bias, or a frozen weight).

    Returns:
      ``[N]`` NumPy losses in the accumulator dtype, 0 where ignored.

    Ignored tokens are dropped before the first matmul (their rows of x are
    gathered out, and their rows of dx stay 0).
    """
    keep = np.flatnonzero(valid)
    losses = np.zeros(x.shape[0], accumulator_name(str(x.dtype).removeprefix("torch.")))
    if keep.size == 0:
        return losses
    some = keep.size < x.shape[0]
    xs, ts = (mm.rows(x, keep), targets[keep]) if some else (x, targets)
    ws = None if weights is None else weights[keep]
    dx, dw, db = (None, None, None) if grads is None else grads
    dxs = None if dx is None else (mm.zeros_like(xs) if some else dx)
    buffer = mm.empty((min(chunk, keep.size), weight.shape[0]), x)
    kept = np.empty(keep.size, losses.dtype)
    for lo in range(0, keep.size, chunk):
        hi = min(lo + chunk, keep.size)
        z = buffer[:hi - lo]
        mm.logits(xs[lo:hi], weight, bias, z)
        out = None if grads is None else mm.numpy(z)
        kept[lo:hi] = losses_and_gradient(mm.numpy(z), ts[lo:hi], np.ones(hi - lo, bool), opts,
                                          None if ws is None else ws[lo:hi], out)
        if dxs is not None:
            mm.input_grad(z, weight, dxs[lo:hi])
        if dw is not None:
            mm.add_weight_grad(dw, z, xs[lo:hi])
        if db is not None:
            mm.add_bias_grad(db, z)
    losses[keep] = kept
    if dxs is not None and some:
        mm.put_rows(dx, keep, dxs)
    return losses
