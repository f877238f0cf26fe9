"""Fused kernels compiled with numba: per-row loss, log-sum-exp and gradient.

Same contract and numbers as the NumPy reference in `xent._kernels` (read it
first): `sparse_rows` / `dense_rows` return ``(loss, lse)`` in the
accumulator dtype and write ``softmax - labels`` into ``grad_out`` (which may
be the logits themselves). What changes is how the work is done: each row is
read from memory once, and the gradient written once, with no temporaries.

One file per idea, from the bottom up:

  _pipeline  numba's compiler for the kernels: the untyped IR built once per kernel
  _options   numba's flags for kernels and inlined helpers
  _target    the CPU numba compiles for, and what it converts natively
  _llvm      LLVM operations numba does not expose (portable, no calls)
  _math      exp and log as polynomials that vectorise
  _formats   float16/bfloat16 storage: loads, rounded stores
  _exps      which exp each format takes
  _cuts      how a row is cut: chunks, and pieces of chunks
  _scale     one gradient entry from a kept exp, rounded once
  _stream    a row's gradient stored during the next row's pass A
  _fetch     software prefetches: the logits ahead of pass A
  _chunks    one row in chunks: pass A and the combine
  _pass_b    the gradient of a row, from the exps pass A kept
  _one_row   one row's loss and gradient, per need
  _rows      the chunk path's kernels: a range of rows, per need
  _lanes     16 rows copied into vector lanes (a gather where the CPU has one)
  _narrow    rows of at most 32 or 128 classes, 16 at a time, one per vector lane
  _pool      a large call's rows over threads (the caller and helper threads)
  _labels    the label range check, compiled
  _launch    the Python side: dispatch, buffers, threads
  _notice    one line on stderr while a long compile runs
  _fork      numba's compiler lock freed in a forked child
  _cache     numba's disk cache kept in step with all these files

Machine code is compiled for the CPU numba targets (the host's, or
``NUMBA_CPU_NAME``'s) and cached on disk, so a fresh process pays only the
cache load (where numba has no directory it can write, every process compiles
them: `_options.can_cache`). Importing this module imports numba; `import xent` does not.
"""
import llvmlite.binding
import numba

if numba.config.DISABLE_JIT:
    # numba's jit decorators then return the Python functions, which cannot
    # run the kernels' LLVM intrinsics.
    raise ImportError("NUMBA_DISABLE_JIT is set, so numba compiles nothing; unset it to "
                      "use the fused kernels")

if llvmlite.binding.llvm_version_info < (17,):
    # Opaque pointers and the vector reductions the kernels rely on need LLVM 17 or newer.
    raise ImportError(f"llvmlite {llvmlite.__version__} is built on LLVM "
                      f"{llvmlite.binding.llvm_version_info}; xent's kernels need LLVM 17+")

from xent._fused import _cache  # noqa: E402
from xent._fused import _fork  # noqa: E402
from xent._fused import _notice  # noqa: E402
from xent._fused import _rows  # noqa: E402
from xent._fused._chunks import CHUNK  # noqa: E402
from xent._fused._labels import labels_fit  # noqa: E402
from xent._fused._launch import dense_rows  # noqa: E402
from xent._fused._launch import sparse_rows  # noqa: E402
from xent._fused._narrow import NARROW_DENSE_MAX  # noqa: E402
from xent._fused._narrow import narrow_max  # noqa: E402

_cache.drop_if_stale(getattr(_rows.sparse_loss_rows._cache, "cache_path", None))
_notice.install()
_cache.install()
_fork.install()

__all__ = ["labels_fit", "sparse_rows", "dense_rows", "narrow_max", "NARROW_DENSE_MAX", "CHUNK"]
