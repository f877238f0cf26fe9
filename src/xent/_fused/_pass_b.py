"""Pass B: the gradient of a row whose exps pass A kept, rescaled while the row is in L2.

    grad_j = w (e_j exp(t_c - M) / S - y_j)

with t_c the shift chunk c's exps were taken against, M the row's max and S
its sum of exps (`xent._fused._chunks.combine`), w the row's weight (1 for
TensorFlow's backprop); y_j is 0 but at the label for sparse targets. Each
entry is computed in the accumulator's precision and rounded to the output's
format once.
"""
import numpy as np
from numba import njit

from xent._fused._chunks import CHUNK, SHIFT
from xent._fused._fetch import prefetch_half_chunk
from xent._fused._llvm import mul_exact
from xent._fused._math import exp64
from xent._fused._options import INLINE
from xent._fused._scale import scale_entries

__all__ = ["rescale", "chunk_factor"]

_U0 = np.uint64(0)


@njit(**INLINE)
def chunk_factor(st, c, top, inv_s):
    """Chunk c's factor exp(t_c - M) / S (inv_s = 1/S, or w/S for a row weight w),
    float64. The product is not regrouped (`mul_exact`), so that every kernel
    that calls this gets the same bits, whatever LLVM does around it. (0 for
    a chunk of ``-inf``, whose shift is ``-inf``: `xent._fused._chunks`.)"""
    return mul_exact(exp64(st[SHIFT, c] - top), inv_s)


@njit(**INLINE)
def rescale(e, y, out, st, top, inv_s, ahead):
    """Pass B: out_j = e_j exp(t_c - M) inv_s (minus w y_j with dense targets
    y = (row, w), inv_s being w / S), rounded to out's format (e may be out).

    Pass B works from L2; chunk by chunk, it prefetches `ahead` (the next
    row of a separate gradient buffer, or None), for the next pass B.
    """
    n = np.uint64(e.shape[0])
    c = 0
    for lo in range(_U0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        prefetch_half_chunk(ahead, lo, hi)
        scale_entries(e, y, out, lo, hi, chunk_factor(st, c, top, inv_s))
        c += 1
