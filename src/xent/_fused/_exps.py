"""Which exp each storage format takes, and the one-sweep loop's folded shift.

bfloat16 logits with integer labels take `exp_half` (1e-4, a fortieth of
their ulp: every use of those exps is a relative one); every other case
`exp32` or `exp64`, to the accumulator's precision (a dense gradient
softmax - y cancels). float16's ulp is 8 times finer: with `exp_half`, 95 of
20000 float16 sparse losses (33 classes, logits of scale 5) and 8 of 4000
(1000 classes) were not the exact value rounded once; with `exp32`, none
(and 3-6% more time at 4096x1000; bench/RESULTS.md, session 27). The one-sweep
loop of `xent._fused._chunks` shifts a chunk's logits by the row's running
max; for bfloat16 logits with sparse labels that shift is folded into the
exp's first multiply-add.
"""
import numpy as np
from numba import types
from numba.extending import overload

from xent._fused._formats import like
from xent._fused._llvm import fmuladd
from xent._fused._math import LOG2E32, exp2_half, exp32, exp64, exp_half
from xent._fused._options import LLVM_INLINE

__all__ = ["exp", "exp_of", "is_cheap_sparse", "sweep_k", "sweep_shift", "sweep_exp"]


def exp(x):
    """exp(x) for ``x <= 0`` in x's precision (numba only)."""


def exp_of(a, y, x):
    """exp(x) for the logits `a` with targets `y`: `exp_half` for bfloat16 logits
    with sparse labels (y None), where every use of the exps is a relative
    one; `exp` otherwise (numba only). A dense gradient softmax - y cancels,
    and needs the exps to the accumulator's precision."""


def is_cheap_sparse(a, y):
    """Whether numba types `a` (logits) and `y` (targets) take `exp_half`: bfloat16
    (its bits, uint16) with sparse labels."""
    return a.dtype == types.uint16 and isinstance(y, types.NoneType)


@overload(exp, jit_options=LLVM_INLINE)
def _exp_impl(x):
    if x == types.float32:
        return lambda x: exp32(x)
    return lambda x: exp64(x)


@overload(exp_of, jit_options=LLVM_INLINE)
def _exp_of_impl(a, y, x):
    if is_cheap_sparse(a, y):
        return lambda a, y, x: exp_half(x)
    return lambda a, y, x: exp(x)


# The one-sweep loop shifts a chunk's logits by the row's running max. For
# bfloat16 logits with sparse labels, the shift is also folded into the
# exp's first multiply: exp(x_j - shift) is taken as 2**(x_j log2(e) + k)
# with k = -shift log2(e) rounded to float32, one FMA. Those exps amount to a
# shift of exactly -k / log2(e) (up to a relative 1e-8 on x_j - shift):
# `sweep_shift` records it, so the combine and pass B use the shift the exps
# were taken against.
_LOG2E32_AS_64 = float(LOG2E32)


def sweep_k(a, y, shift):
    """The one-sweep loop's constant for shifting logits of `a` by `shift` (numba only):
    ``float32(-shift log2(e))`` when folded (bfloat16, sparse), else shift."""


def sweep_shift(a, y, k):
    """The shift, as a float64, that the one-sweep loop's exps under constant k
    amount to: ``-k / log2(e)`` when folded, else k (numba only)."""


def sweep_exp(a, y, v, k):
    """The one-sweep loop's exp(v - shift) for a logit v of `a`, under constant k (numba only)."""


@overload(sweep_k, jit_options=LLVM_INLINE)
def _sweep_k_impl(a, y, shift):
    if is_cheap_sparse(a, y):
        return lambda a, y, shift: np.float32(-np.float64(shift) * _LOG2E32_AS_64)
    return lambda a, y, shift: shift


@overload(sweep_shift, jit_options=LLVM_INLINE)
def _sweep_shift_impl(a, y, k):
    if is_cheap_sparse(a, y):
        return lambda a, y, k: -np.float64(k) / _LOG2E32_AS_64
    return lambda a, y, k: np.float64(k)


@overload(sweep_exp, jit_options=LLVM_INLINE)
def _sweep_exp_impl(a, y, v, k):
    if is_cheap_sparse(a, y):
        return lambda a, y, v, k: exp2_half(fmuladd(v, LOG2E32, k))
    if a.dtype != types.float64:
        return lambda a, y, v, k: exp32(v - like(k, v))
    return lambda a, y, v, k: exp64(v - k)
