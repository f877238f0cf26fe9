"""Rows of a gradient times one factor each: a JAX step's upstream gradient.

    out[i, j] = c[i, j] g[i]          (c, g and out float32, or all float64)

A JAX `.mean()` step scales the kernels' backprop by its upstream gradient
g over the backprop's own buffer (`xent._jax_rows`). Each product is
rounded once, and one below the smallest normal float is 0, as XLA's own
threads give it (they flush such results to zero): every thread that takes
rows flushes (`flush_denormals`), so that no bit depends on which thread
took a row. Where `flush_denormals` does nothing (not x86-64), the caller
runs it on XLA's thread alone (`xent._fused._launch.scale_rows`).
"""
import numpy as np
from numba import njit

from xent._fused._borrow import borrowed
from xent._fused._llvm import flush_denormals, restore_denormals, vectorise_wide
from xent._fused._options import KERNEL

__all__ = ["scale_rows_kernel"]

_U0 = np.uint64(0)


# No fast-math flags: a product and nothing else, the sign of a zero kept.
@njit(**{**KERNEL, "fastmath": False})
def scale_rows_kernel(c, g, out, lo, hi):
    """out[i] = c[i] * g[i] for rows i in [lo, hi) of c and out ``[N, C]`` (out may
    be c), g ``[N]``, all of one float dtype."""
    vectorise_wide()
    c, out = borrowed(c), borrowed(out)   # (`_borrow`)
    n = np.uint64(c.shape[1])
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for i in range(lo, hi):
        gi = g[i]
        for j in range(_U0, n):
            out[i, j] = c[i, j] * gi
    restore_denormals(word)
