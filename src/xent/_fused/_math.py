"""exp and log as polynomials that vectorise, from plain arithmetic and bit operations.

Every exp here works the same way: with n the integer nearest x log2(e) and
r = x - n ln 2 (|r| <= ln(2)/2), e**x = 2**n p(r) for a polynomial p. Three
steps have a one-instruction form on some CPUs only, and a portable one
beside it; `xent._fused._target` tells which the CPU numba compiles for has:

  - n: ``llvm.lrint`` (``cvtps2dq``, every x86-64), else adding 1.5 * 2**M
    and reading n from the sum's bits (`round_by_sum`).
  - r: one fused multiply-add with ln 2 where the CPU has FMA (float32), else
    two steps (Cody-Waite: ln 2 = hi + lo with n hi exact), right to an ulp
    without a fused multiply-add too.
  - 2**n p: the float32 exps take n and 2**(n + 64) together from one sum's
    bits on every CPU (`round_scale`: no conversion at all), with the 2**-64
    carried by the polynomial's coefficients, so 2**n p is one multiply. The
    float64 exp takes ``llvm.ldexp`` (``vscalefpd``) with AVX-512, else
    builds 2**(n + bias) from the bits (`scale_by_bits`; without AVX-512
    ``llvm.ldexp`` is a call to ``ldexp`` per element).

Until session 21 the float32 exps took ``llvm.ldexp`` on AVX-512 too. On an
Intel Xeon (Emerald Rapids) a vector of it whose results underflow (a
masked ``-inf`` logit, or one 87 below the max) stalls the core: rows with
a tenth of their logits masked took 4-20 times as long (float32 16x32000
loss 2.94 against 0.20 ns a logit, one thread). The bits tie it on rows
without a mask there (0.95-1.06x; bench/RESULTS.md, session 21). Masked
float64 rows took 6 times as long there until session 22, whose floors
(`_floor64`) give their exps 0 without an underflow.

x is first floored (`floor_at`, which lets NaN through) where 2**n would
leave the exponent range: below the floor exp is 0 in the format anyway, so
masked ``-inf`` logits get an exact 0 (the float64 floor also keeps that 0
from underflowing, for speed: `_floor64`). Products and sums in the polynomials
are contracted to fused multiply-adds where the CPU has them.

The float32 polynomial is good to 2 ulp where softmax values matter; the
cheaper one for bfloat16 (`exp_half`) to 1e-4, about a fortieth of its ulp
(float16, whose ulp is 8 times finer, takes the float32 one: `xent._fused._exps`);
the float64 one is a Taylor series to r**13. bench/fit_exp.py refits
the float32 and half-precision coefficients.
"""
import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from xent._fused import _target
from xent._fused._llvm import floor_at, fma, fmuladd, ldexp, lrint, mul_exact, round_by_sum, \
    round_scale, scale_by_bits, split_exponent
from xent._fused._options import INLINE, LLVM_INLINE

__all__ = ["exp32", "exp_half", "exp2_half", "exp64", "log_of_sum", "FLOOR32", "LOG2E32"]

_F32 = np.float32
LOG2E32 = _F32(math.log2(math.e))
# exp(x) below exp(-130) is 0 in float32: the floor keeps n >= -188, and
# 2**(n + 64) a normal float (`round_scale` with bias 64).
FLOOR32 = _F32(-130.0)
_BIAS32 = 64
_LN2_32 = _F32(math.log(2))
# ln 2 = _LN2_HI32 + _LN2_LO32, _LN2_HI32 with 9 significant bits (Cephes).
_LN2_HI32, _LN2_LO32 = _F32(0.693359375), _F32(-2.12194440e-4)
# e**r ~ 1 + r (c1 + r (c2 + ... + r c5)) on |r| <= ln(2)/2: least squares refined
# to equal-ripple relative error (Lawson), 9.5e-8 with these float32
# coefficients; bench/fit_exp.py reproduces them.
_C1, _C2, _C3, _C4, _C5 = (_F32(c) for c in (
    0.9999997019767761, 0.4999915063381195, 0.1666763573884964,
    0.04189793020486832, 0.008290315046906471))
# For bfloat16 logits with integer labels (8 significant bits, and the same in
# their gradient), 2**f ~ 1 + f (h1 + f (h2 + f h3)) on |f| <= 1/2: relative
# error 1.0e-4, about a fortieth of a bfloat16 ulp; bench/fit_exp.py reproduces them.
_H1, _H2, _H3 = (_F32(c) for c in (0.6932829022407532, 0.24221095442771912,
                                   0.05500892922282219))
_FLOOR_T32 = _F32(FLOOR32 * LOG2E32)
# `round_scale` gives n and 2**(n + 64)
# from one sum's bits, and the polynomials carry the 2**-64 in their
# coefficients: scaling by a power of two is exact in each of their steps
# (the smallest, c5 2**-64, is a normal float), so p 2**-64 is p's bits with
# a lower exponent, and (p 2**-64) 2**(n + 64) is p 2**n rounded once (a
# product kept out of fused multiply-adds, `mul_exact`, so that every kernel
# rounds each exp alike).
_MAGIC32 = _F32(1.5 * 2 ** 23 + _BIAS32 + 127)
_C1S, _C2S, _C3S, _C4S, _C5S, _ONE_S = (_F32(c * 2.0 ** -_BIAS32) for c in (
    _C1, _C2, _C3, _C4, _C5, 1.0))
_H1S, _H2S, _H3S = (_F32(h * 2.0 ** -_BIAS32) for h in (_H1, _H2, _H3))

_LOG2E64 = math.log2(math.e)
# exp(x) below exp(-745.13) rounds to 0 in float64. Floored further (`_floor64`),
# a masked logit's exp is 0 with no underflow: `vscalefpd` stalls on one
# (16 ns an exp against 0.9, Intel Xeon (Emerald Rapids)) but for n below
# about -4096, whose result it gives as 0 at full speed (n = -7213 here:
# 0.89 ns; n = -2020 still 15 ns); `scale_by_bits` builds 2**(n + 128) as
# +0.0 at n = -1151 (the exponent field 0), which the rest of it never goes below.
_FLOOR64_SCALEF = -5000.0
_FLOOR64_BITS = -797.5
_BIAS64 = 128
# ln 2 = _LN2_HI64 + _LN2_LO64, _LN2_HI64 ending in 21 zero bits (fdlibm's split).
_LN2_HI64, _LN2_LO64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
# Taylor series to r**13: truncation error below 5e-18 on |r| <= ln(2)/2.
_T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10, _T11, _T12, _T13 = (
    1.0 / math.factorial(k) for k in range(1, 14))


# --- the three steps, per CPU ----------------------------------------------------------------

def round_int(t):
    """t rounded to the nearest int32, ties to even, for |t| < 2**22 (numba only)."""


def times_pow2(p, n):
    """p * 2**n for a float64 p and an int32 n: ``llvm.ldexp`` where it lowers
    natively (AVX-512; any n), else `scale_by_bits` (n >= -1151) (the float32
    exps scale by `round_scale` instead) (numba only)."""


def _floor64(x):
    """The float64 exp's floor for `times_pow2`'s path: `_FLOOR64_SCALEF` with
    ``llvm.ldexp``, `_FLOOR64_BITS` with `scale_by_bits` (numba only)."""


def reduce32(x, n):
    """x - n ln 2 for float32 x and an integral float32 n, to an ulp (numba only)."""


@overload(round_int, jit_options=LLVM_INLINE)
def _round_int_impl(t):
    if _target.lowers_natively(_target.LRINT_PROBE):
        return lambda t: lrint(t)
    return lambda t: round_by_sum(t)


# float64 keeps ``llvm.ldexp`` on AVX-512: `scale_by_bits` took unmasked
# float64 rows from 0.40 to 0.46 ns a logit on the Intel Xeon (and masked
# ones, floored at -746 then, stayed slow: its last product underflowed).
@overload(times_pow2, jit_options=LLVM_INLINE)
def _times_pow2_impl(p, n):
    if p != types.float64:
        return None
    if _target.vector_ldexp():
        return lambda p, n: ldexp(p, n)
    return lambda p, n: scale_by_bits(p, n, _BIAS64)   # (float32: `round_scale`, in `_exp32_floored` and `_exp2_half_floored`)


@overload(_floor64, jit_options=LLVM_INLINE)
def _floor64_impl(x):
    if _target.vector_ldexp():
        return lambda x: _FLOOR64_SCALEF
    return lambda x: _FLOOR64_BITS


@overload(reduce32, jit_options=LLVM_INLINE)
def _reduce32_impl(x, n):
    if _target.lowers_natively(_target.FMA_PROBE):
        return lambda x, n: fma(-n, _LN2_32, x)
    return lambda x, n: fmuladd(n, -_LN2_LO32, fmuladd(n, -_LN2_HI32, x))


# --- exp ----------------------------------------------------------------------------------------

def _exp32_floored(x):
    """`exp32` of an x already floored at `FLOOR32` (numba only)."""


def _exp2_half_floored(t):
    """`exp2_half` of a t already floored at log2(e) `FLOOR32` (numba only)."""


@overload(_exp32_floored, jit_options=LLVM_INLINE)
def _exp32_floored_impl(x):
    # Against `round_int` and `scale_by_bits` (two conversions, an integer add
    # and two multiplies; one constant more, where AVX2's 16 registers already
    # spill), compiled for haswell on an AMD Zen 4, one process: float32
    # 16x32000 in cache, one thread, ns per logit: loss 0.334 -> 0.273, into a
    # buffer 0.43 -> 0.34, in place 0.50 -> 0.43 (bfloat16: 7-9% less);
    # 8192x32000 on 2 threads: loss 1.81x -> 1.51x the read, in place 1.36x
    # -> 1.14x the copy. SSE2 baseline: 9% less.
    def by_bits(x):
        n, scale = round_scale(x, LOG2E32, _MAGIC32)
        r = reduce32(x, n)
        q = _C2S + r * (_C3S + r * (_C4S + r * _C5S))
        return mul_exact(fmuladd(r, fmuladd(r, q, _C1S), _ONE_S), scale)
    return by_bits


@overload(_exp2_half_floored, jit_options=LLVM_INLINE)
def _exp2_half_floored_impl(t):
    def by_bits(t):
        n, scale = round_scale(t, _F32(1.0), _MAGIC32)
        f = t - n
        return mul_exact(fmuladd(f, _H1S + f * (_H2S + f * _H3S), _ONE_S), scale)
    return by_bits


@njit(**LLVM_INLINE)
def exp32(x):
    """exp(x) for float32 ``x <= 16`` (and ``-inf``: 0; NaN: NaN).

    Within 2.5 ulp (relative error 3e-7) for x > -20, where softmax values
    matter, 5 ulp above -87: an independent review's maxima over 2 million
    points were 2.25 / 2.29 ulp where the reduction takes Cody-Waite's two
    steps (no FMA) and 2.48 / 4.74 where it is one fused step (`reduce32`);
    exact 0 below -104 (float32's smallest
    subnormal is e**-103.3). n and 2**n come from one sum's bits
    (`round_scale`): once memory streams at full speed, exp is what bounds
    the kernels.
    """
    return _exp32_floored(floor_at(FLOOR32, x))


@njit(**LLVM_INLINE)
def exp2_half(t):
    """2**t for float32 t to 1e-4 (and ``-inf``: 0; NaN: NaN): `exp_half`'s core.

    t = n + f with n an integer and |f| <= 1/2: four multiply-adds against
    `exp32`'s seven. t is floored at log2(e) `FLOOR32`; t <= 24.
    """
    return _exp2_half_floored(floor_at(_FLOOR_T32, t))


@njit(**LLVM_INLINE)
def exp_half(x):
    """exp(x) for float32 ``x <= 16`` (or ``-inf``, NaN) to 1e-4, for half-precision logits.

    e**x = 2**(x log2(e)). The rounding of x log2(e) costs up to 2e-5
    relative error at x = -87, still far below a half-precision ulp.
    """
    return exp2_half(x * LOG2E32)


@njit(**LLVM_INLINE)
def exp64(x):
    """exp(x) for float64 ``x <= 16``, ``-inf`` or NaN, as `exp32` with a longer series
    (and ln 2 always in two steps: float64 needs them even with FMA)."""
    x = floor_at(_floor64(x), x)
    n = round_int(x * _LOG2E64)
    nf = np.float64(n)
    r = fmuladd(nf, -_LN2_LO64, fmuladd(nf, -_LN2_HI64, x))
    p = _T12 + r * _T13
    p = _T9 + r * (_T10 + r * (_T11 + r * p))
    p = _T5 + r * (_T6 + r * (_T7 + r * (_T8 + r * p)))
    p = 1.0 + r * (_T1 + r * (_T2 + r * (_T3 + r * (_T4 + r * p))))
    return times_pow2(p, n)


# log(m) = 2 atanh(u), u = (m - 1) / (m + 1), |u| <= 0.1716: the series to
# u**11 leaves 2e-11 out (float32 results need 6e-8).
_A1, _A3, _A5, _A7, _A9, _A11 = (2.0 / k for k in (1, 3, 5, 7, 9, 11))
_LN2 = math.log(2)


@njit(**INLINE)
def log_of_sum(s):
    """log(s) in float64, to 2e-11, for a finite s >= 1 (a row's sum of exps,
    which includes its max's exp(0) = 1); meaningless otherwise. Vectorises."""
    k, m = split_exponent(np.float64(s))
    u = (m - 1.0) / (m + 1.0)
    u2 = u * u
    p = _A1 + u2 * (_A3 + u2 * (_A5 + u2 * (_A7 + u2 * (_A9 + u2 * _A11))))
    return fmuladd(k, _LN2, u * p)
