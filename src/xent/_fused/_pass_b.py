"""Pass B: the gradient of a row whose exps pass A kept, rescaled while the row is in L2.

    grad_j = e_j exp(t_c - M) / S - y_j

with t_c the shift chunk c's exps were taken against, M the row's max and S
its sum of exps (`xent._fused._chunks.combine`); y_j is 0 but at the label for
sparse targets. Each entry is rounded once, to the output's format.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from xent._fused._chunks import CHUNK, SHIFT, prefetch_half_chunk
from xent._fused._formats import hardware_bf16, like, load, scale_to_bf16, store, store_finite, \
    tiny
from xent._fused._llvm import mul_exact
from xent._fused._math import exp64
from xent._fused._options import INLINE

__all__ = ["rescale", "fill_nan"]

_U0 = np.uint64(0)

# A chunk's factor exp(t_c - M) / S below the smallest normal float would round
# coarsely, and its exps reach e**16: such chunks (rare: t_c more than 87 below
# M) are scaled in two steps, through 2**64.
_TWO64, _TWO_M64 = 2.0 ** 64, 2.0 ** -64


def _hardware_rounded(e, y, out, lo, hi, f):
    """Pass B's stores out[j] = e[j] * f for the whole blocks of [lo, hi) through
    `scale_to_bf16`, when out is bfloat16 with sparse labels and the CPU
    rounds to bfloat16 itself; returns where the store loop goes on from
    (lo when none were done or all must be redone; numba only)."""


@overload(_hardware_rounded)
def _hardware_rounded_impl(e, y, out, lo, hi, f):
    if not (out.dtype == types.uint16 and e.dtype == types.float32
            and isinstance(y, types.NoneType) and hardware_bf16()):
        return lambda e, y, out, lo, hi, f: lo

    def blocks(e, y, out, lo, hi, f):
        j = scale_to_bf16(e, out, lo, hi, f)
        return lo if j > hi else j
    return blocks


def _finish_entry(out, y, j, p):
    """Pass B's store of p = softmax_j: p itself (sparse, y None; finite, as a
    row with a NaN or infinity never gets here), or p - y_j (numba only)."""


@overload(_finish_entry)
def _finish_entry_impl(out, y, j, p):
    if isinstance(y, types.NoneType):
        return lambda out, y, j, p: store_finite(out, j, p)
    return lambda out, y, j, p: store(out, j, p - load(y, j))


@njit(**INLINE)
def rescale(e, y, out, st, top, inv_s, ahead):
    """Pass B: out_j = e_j exp(t_c - M) / S (minus y_j with dense targets y),
    rounded to out's format (e may be out).

    Pass B works from L2; chunk by chunk, it prefetches `ahead` (the next
    row of a separate gradient buffer, or None), for the next pass B.
    """
    n = np.uint64(e.shape[0])
    smallest = tiny(e[0])
    c = 0
    for lo in range(_U0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        prefetch_half_chunk(ahead, lo, hi)
        factor = exp64(st[SHIFT, c] - top) * inv_s
        if factor >= smallest:
            f = like(factor, e[0])
            for j in range(_hardware_rounded(e, y, out, lo, hi, f), hi):
                _finish_entry(out, y, j, e[j] * f)
        else:
            f, down = like(factor * _TWO64, e[0]), like(_TWO_M64, e[0])
            for j in range(lo, hi):
                _finish_entry(out, y, j, mul_exact(mul_exact(e[j], f), down))
        c += 1


@njit(**INLINE)
def fill_nan(out, ref):
    """Every element of `out` NaN."""
    nan = like(np.nan, ref)
    for j in range(out.shape[0]):
        store(out, j, nan)
