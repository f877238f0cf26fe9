"""numba options shared by every kernel and helper of `xent._fused`.

Fast-math flags allow reassociation and contraction but never assume away NaN
or infinity: TensorFlow's NaN rows and ``-inf`` masks must survive. Where an
order of operations matters, `xent._fused._llvm` has operations that the
flags cannot regroup, and finiteness is tested on the bits (`is_finite`).
"""
from xent._fused._pipeline import KernelCompiler

FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
# Kernels: compiled once per signature, cached on disk, and free of the GIL;
# a kernel's untyped IR (its helpers inlined) is built once for all its
# signatures (`xent._fused._pipeline`).
KERNEL = {"fastmath": FAST, "error_model": "numpy", "nogil": True, "cache": True,
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
