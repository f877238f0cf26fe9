"""exp and log as polynomials that vectorise, from plain arithmetic and bit operations.

Every exp here works the same way: with n the integer nearest x log2(e) and
r = x - n ln 2 (|r| <= ln(2)/2), e**x = 2**n p(r) for a polynomial p.

  - n is rounded by adding 1.5 * 2**M (M the mantissa width), which leaves n
    in the sum's low bits (`round_to_integer`), and 2**n is built from those
    bits (`xent._fused._llvm.scale_by_rounded`). No ``lrint``, ``rint`` or
    ``ldexp``: without AVX-512 or SSE4.1 LLVM makes those library calls,
    one per element.
  - r is reduced in two steps (Cody-Waite): ln 2 = hi + lo with hi short
    enough that n hi is exact, so r is right to an ulp with or without a
    fused multiply-add. Products and sums in the polynomials are
    `fmuladd`s: fused where the CPU has FMA, a multiply and an add elsewhere.
  - x is first floored (`floor_at`, which lets NaN through) where 2**n would
    leave the exponent range: below it exp is 0 in the format anyway, so
    masked ``-inf`` logits get an exact 0.

The float32 polynomial is good to 2 ulp where softmax values matter; the
cheaper half-precision one (`exp_half`) to 1e-4, a twentieth of a float16
ulp; the float64 one is a Taylor series to r**13. bench/fit_exp.py refits
the float32 and half-precision coefficients.
"""
import math

import numpy as np
from numba import njit

from xent._fused._llvm import add_exact, floor_at, fmuladd, rounded_value, scale_by_rounded, \
    split_exponent
from xent._fused._options import INLINE

__all__ = ["exp32", "exp_half", "exp2_half", "exp64", "log_of_sum", "FLOOR32", "LOG2E32"]

_F32 = np.float32
LOG2E32 = _F32(math.log2(math.e))
# Adding this to a float32 t with |t| < 2**22 rounds it to an integer n (to
# nearest, ties to even) and leaves n in the mantissa's low bits.
_ROUND32 = _F32(1.5 * 2 ** 23)
# exp(x) below exp(-130) is 0 in float32: the floor keeps n >= -188, and
# 2**(n + 64) a normal float (`scale_by_rounded` with bias 64).
FLOOR32 = _F32(-130.0)
_BIAS32 = 64
# ln 2 = _LN2_HI32 + _LN2_LO32, _LN2_HI32 with 9 significant bits (Cephes).
_LN2_HI32, _LN2_LO32 = _F32(0.693359375), _F32(-2.12194440e-4)
# e**r ~ 1 + r (c1 + r (c2 + ... + r c5)) on |r| <= ln(2)/2: least squares refined
# to equal-ripple relative error (Lawson), 9.5e-8 with these float32
# coefficients; bench/fit_exp.py reproduces them.
_C1, _C2, _C3, _C4, _C5 = (_F32(c) for c in (
    0.9999997019767761, 0.4999915063381195, 0.1666763573884964,
    0.04189793020486832, 0.008290315046906471))
# For half-precision logits (8 or 11 significant bits, and the same in their
# gradient), 2**f ~ 1 + f (h1 + f (h2 + f h3)) on |f| <= 1/2: relative error
# 1.0e-4, a twentieth of a float16 ulp; bench/fit_exp.py reproduces them.
_H1, _H2, _H3 = (_F32(c) for c in (0.6932829022407532, 0.24221095442771912,
                                   0.05500892922282219))
_FLOOR_T32 = _F32(FLOOR32 * LOG2E32)

_LOG2E64 = math.log2(math.e)
_ROUND64 = 1.5 * 2.0 ** 52
# exp(x) below exp(-746) rounds to 0 in float64; n >= -1077, and 2**(n + 128) is normal.
_FLOOR64 = -746.0
_BIAS64 = 128
# ln 2 = _LN2_HI64 + _LN2_LO64, _LN2_HI64 ending in 21 zero bits (fdlibm's split).
_LN2_HI64, _LN2_LO64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
# Taylor series to r**13: truncation error below 5e-18 on |r| <= ln(2)/2.
_T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10, _T11, _T12, _T13 = (
    1.0 / math.factorial(k) for k in range(1, 14))


@njit(**INLINE)
def round_to_integer(t, rounder):
    """(n, s): n the integer nearest t (ties to even) as a float, and
    s = t + rounder, which holds n in its low bits (for `scale_by_rounded`).

    `rounder` is 1.5 * 2**M for t's format; |t| < 2**22. The sum is an
    `add_exact`, and n is read from its bits (`rounded_value`), so LLVM
    cannot fold the rounding away.
    """
    s = add_exact(t, rounder)
    return rounded_value(s), s


@njit(**INLINE)
def exp32(x):
    """exp(x) for float32 ``x <= 16`` (and ``-inf``: 0; NaN: NaN).

    Within 2 ulp (relative error 2e-7) for x > -87, where softmax values
    matter; exact 0 below -104 (float32's smallest subnormal is e**-103.3).
    About nine vector operations per element: once memory streams at full
    speed, exp is what bounds the kernels.
    """
    x = floor_at(FLOOR32, x)
    n, s = round_to_integer(x * LOG2E32, _ROUND32)
    r = fmuladd(n, -_LN2_LO32, fmuladd(n, -_LN2_HI32, x))
    q = _C2 + r * (_C3 + r * (_C4 + r * _C5))
    return scale_by_rounded(fmuladd(r, fmuladd(r, q, _C1), _F32(1.0)), s, _BIAS32)


@njit(**INLINE)
def exp2_half(t):
    """2**t for float32 t to 1e-4 (and ``-inf``: 0; NaN: NaN): `exp_half`'s core.

    t = n + f with n an integer and |f| <= 1/2: four multiply-adds against
    `exp32`'s seven. t is floored at log2(e) `FLOOR32`; t <= 24.
    """
    t = floor_at(_FLOOR_T32, t)
    n, s = round_to_integer(t, _ROUND32)
    f = t - n
    return scale_by_rounded(fmuladd(f, _H1 + f * (_H2 + f * _H3), _F32(1.0)), s, _BIAS32)


@njit(**INLINE)
def exp_half(x):
    """exp(x) for float32 ``x <= 16`` (or ``-inf``, NaN) to 1e-4, for half-precision logits.

    e**x = 2**(x log2(e)). The rounding of x log2(e) costs up to 2e-5
    relative error at x = -87, still far below a half-precision ulp.
    """
    return exp2_half(x * LOG2E32)


@njit(**INLINE)
def exp64(x):
    """exp(x) for float64 ``x <= 16``, ``-inf`` or NaN, as `exp32` with a longer series."""
    x = floor_at(_FLOOR64, x)
    n, s = round_to_integer(x * _LOG2E64, _ROUND64)
    r = fmuladd(n, -_LN2_LO64, fmuladd(n, -_LN2_HI64, x))
    p = _T12 + r * _T13
    p = _T9 + r * (_T10 + r * (_T11 + r * p))
    p = _T5 + r * (_T6 + r * (_T7 + r * (_T8 + r * p)))
    p = 1.0 + r * (_T1 + r * (_T2 + r * (_T3 + r * (_T4 + r * p))))
    return scale_by_rounded(p, s, _BIAS64)


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
