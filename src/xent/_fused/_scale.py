"""Gradient entries from kept exps, out_j = e_j f - w y_j, rounded to out's format once; NaN rows.

f is a chunk's factor w exp(t_c - M) / S (`xent._fused._pass_b.chunk_factor`),
w the row's weight (1 for TensorFlow's backprop), e_j the exp pass A kept,
and y_j the dense target (0 but at the label for sparse targets, whose label
entry the row kernel writes). Pass B stores
these entries from L2; the streamed kernel (`xent._fused._stream`) stores
the ends of its runs with them.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from xent._fused._formats import hardware_bf16, like, load, scale_to_bf16, store, store_finite, \
    tiny
from xent._fused._llvm import mul_exact
from xent._fused._options import INLINE, LLVM_INLINE

__all__ = ["scale_entries", "fill_nan"]

# A chunk's factor exp(t_c - M) / S below the smallest normal float would round
# coarsely, and its exps reach e**16: such chunks (rare: t_c more than 87 below
# M) are scaled in two steps, through 2**64.
_TWO64, _TWO_M64 = 2.0 ** 64, 2.0 ** -64


def _hardware_rounded(e, y, out, lo, hi, f):
    """Pass B's stores out[j] = e[j] * f for the whole blocks of [lo, hi) through
    `scale_to_bf16`, when out is bfloat16 with sparse labels and the CPU
    rounds to bfloat16 itself; returns where the store loop goes on from
    (lo when none were done or all must be redone; numba only)."""


@overload(_hardware_rounded, jit_options=LLVM_INLINE)
def _hardware_rounded_impl(e, y, out, lo, hi, f):
    if not (out.dtype == types.uint16 and e.dtype == types.float32
            and isinstance(y, types.NoneType) and hardware_bf16()):
        return lambda e, y, out, lo, hi, f: lo

    def blocks(e, y, out, lo, hi, f):
        j = scale_to_bf16(e, out, lo, hi, f)
        return lo if j > hi else j
    return blocks


def _finish_entry(out, y, j, p):
    """Pass B's store of p = w softmax_j: p itself (sparse, y None; finite, as a
    row with a NaN or infinity never gets here), or p - w y_j for dense
    targets y = (the target row, w) (numba only). p and the product w y_j
    are multiplies of their own (`mul_exact`: never fused into the
    subtraction), so that w = 1 gives the bits of p - y_j, and the streamed
    kernel's stores (`xent._fused._llvm.stream_scaled_less`) the same bits,
    however LLVM contracts the rest."""


@overload(_finish_entry, jit_options=LLVM_INLINE)
def _finish_entry_impl(out, y, j, p):
    if isinstance(y, types.NoneType):
        return lambda out, y, j, p: store_finite(out, j, p)
    return lambda out, y, j, p: store(out, j, p - mul_exact(load(y[0], j), like(y[1], p)))


@njit(**INLINE)
def scale_entries(e, y, out, lo, hi, factor):
    """out_j = e_j factor (minus w y_j with dense targets y = (row, w)) for j in [lo, hi),
    rounded to out's format once; a factor below the smallest normal float in
    magnitude (a negative row weight makes it negative) goes through 2**64."""
    if abs(factor) >= tiny(e[0]):
        f = like(factor, e[0])
        for j in range(_hardware_rounded(e, y, out, lo, hi, f), hi):
            _finish_entry(out, y, j, mul_exact(e[j], f))
    else:
        f, down = like(factor * _TWO64, e[0]), like(_TWO_M64, e[0])
        for j in range(lo, hi):
            _finish_entry(out, y, j, mul_exact(mul_exact(e[j], f), down))


@njit(**INLINE)
def fill_nan(out, ref):
    """Every element of `out` NaN."""
    nan = like(np.nan, ref)
    for j in range(out.shape[0]):
        store(out, j, nan)
