"""numba options shared by every kernel and helper of `xent._fused`.

Fast-math flags allow reassociation and contraction but never assume away NaN
or infinity: TensorFlow's NaN rows and ``-inf`` masks must survive. Where an
order of operations matters, `xent._fused._llvm` has operations that the
flags cannot regroup, and finiteness is tested on the bits (`is_finite`).
"""
import numba

from xent._fused._pipeline import KernelCompiler


def _probe():
    """Nothing: the function `can_cache` asks numba to cache."""


def can_cache():
    """Whether numba has a directory to cache this package's kernels in.

    With none (a read-only install and no writable home or
    ``NUMBA_CACHE_DIR``), ``cache=True`` raises numba's "no locator
    available" when a kernel is defined, and xent could not run at all. The
    kernels are then compiled in each process instead (`_notice` says so).
    """
    try:
        numba.njit(cache=True)(_probe)
    except RuntimeError:
        return False
    return True


FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
# Kernels: compiled once per signature, cached on disk (where numba has a
# directory to write), and free of the GIL;
# a kernel's untyped IR (its helpers inlined) is built once for all its
# signatures (`xent._fused._pipeline`).
KERNEL = {"fastmath": FAST, "error_model": "numpy", "nogil": True, "cache": can_cache(),
          "pipeline_class": KernelCompiler}
# Helpers: inlined into the kernels by numba, so that LLVM sees one loop.
# Typed overloads (``@overload``) are not, but three (`_lanes.transpose`,
# which LLVM left a call, and two in `_narrow`): see `LLVM_INLINE`.
# numba's own inlining deep-copies a helper's whole variable scope for each of
# its blocks; left to LLVM, the overloads cut a cold float32 loss+gradient
# call from 8.8-9.5 s to 6.7-7.9 s, and compiling every kernel by 9%, with the
# same kernel speed (AMD Zen 3).
INLINE = {"fastmath": FAST, "error_model": "numpy", "inline": "always"}
# Typed overloads but those three, and the scalar exps of `_math`: compiled
# once per signature and process as functions of their own (numba's own
# inlining would copy their IR at every call site, which dominates compile
# time), each marked for LLVM to inline into every caller (``forceinline``).
# Left to LLVM's judgement, whether a kernel inlined one hung on what the
# process had compiled before, and the same sum came out of an inlined loop
# and a loop of calls rounded differently: kernels loaded from one disk
# cache by processes with different histories gave float32 dense losses 1
# ulp apart (`_chunks._targets`, session 31), and, compiled for the SSE2
# baseline after every other dtype, the float64 streamed kernel's lse was 1
# ulp off the other kernels' (a call to `_math.exp64` left in; session 32).
# Read in tests/test_kernel_symbols.py: no kernel calls a helper of xent's.
LLVM_INLINE = {"fastmath": FAST, "error_model": "numpy", "forceinline": True}
