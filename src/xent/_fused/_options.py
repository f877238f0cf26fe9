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
# Typed overloads (``@overload``) are not, but one (`_lanes.transpose`,
# which LLVM left a call): each is compiled once per signature and LLVM
# inlines it (read in the assembly: no kernel calls one).
# numba's own inlining deep-copies a helper's whole variable scope for each of
# its blocks; left to LLVM, the overloads cut a cold float32 loss+gradient
# call from 8.8-9.5 s to 6.7-7.9 s, and compiling every kernel by 9%, with the
# same kernel speed (AMD Zen 3).
INLINE = {"fastmath": FAST, "error_model": "numpy", "inline": "always"}
# Scalar helpers: compiled once per signature as functions of their own,
# which LLVM inlines into the kernels' loops (numba's own inlining copies
# their IR at every call site, which dominates compile time).
CALLED = {"fastmath": FAST, "error_model": "numpy"}
