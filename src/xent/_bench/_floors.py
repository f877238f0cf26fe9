"""The floors of `xent bench`: the machine's own copy and read of the logits.

A loss+gradient reads the logits and writes as many bytes; a loss reads them.
No implementation can beat a plain copy, or a plain read, on the same threads:
those are the floors every case is measured against.
"""
import threading

import numpy as np

import xent
from xent import _core
from xent._bench._cases import Case


def floor_threads(logits):
    """The threads xent itself would use on `logits`: one on the NumPy kernels or
    below the fused kernels' size threshold, never more than its rows."""
    if _core.get_kernels() != "fused":
        return 1
    from xent._fused import _launch   # (loaded with the fused kernels)

    if logits.nbytes < _launch.PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(xent.get_num_threads(), len(logits)))


def floor_cases(logits):
    """The copy floors (into a preallocated buffer) and the read floor (a max).

    All work on the raw bits (NumPy copies and reduces bfloat16 element by
    element, far below memory speed), on the threads xent would use. Two
    copies, as the faster depends on the machine: one memcpy per thread (large
    copies use non-temporal stores) and a row-by-row copy loop (cached stores).
    """
    bits = logits.view(np.uint16 if logits.itemsize == 2 else np.uint32)
    target = np.empty_like(bits)
    threads = floor_threads(logits)

    def memcpy():
        on_threads(lambda rows: np.copyto(target[rows], bits[rows]), len(bits), threads)

    def read():
        on_threads(lambda rows: bits[rows].max(), len(bits), threads)

    cases = [Case("copy floor (memcpy)", "grad", memcpy, "floor"),
             Case("read floor", "loss", read, "floor")]
    row_copy = _row_copy_kernel() if threads > 1 else None
    if row_copy is not None:
        cases.append(Case("copy floor (row loop)", "grad", lambda: on_threads(
            lambda rows: row_copy(bits, target, rows.start, rows.stop), len(bits), threads),
            "floor"))
    return cases


def floors_by_kind(cases):
    """The floor cases for each kind of work: the read floor for "loss", the copies for "grad"."""
    return {"loss": [c for c in cases if c.role == "floor" and c.mode == "loss"],
            "grad": [c for c in cases if c.role == "floor" and c.mode == "grad"]}


def _split_rows(n, parts):
    """``parts`` slices covering ``range(n)``."""
    return [slice(k * n // parts, (k + 1) * n // parts) for k in range(parts)]


def on_threads(work, n_rows, threads):
    """Run ``work(rows)`` on `threads` threads, each with its share of the rows
    (the calling thread takes the first share): the floors' threads, also bench/'s scripts'."""
    shares = _split_rows(n_rows, threads)
    helpers = [threading.Thread(target=work, args=(rows,)) for rows in shares[1:]]
    for helper in helpers:
        helper.start()
    work(shares[0])
    for helper in helpers:
        helper.join()


def _row_copy_kernel():
    """A numba row-by-row copy of rows ``[lo, hi)`` (``nogil``: run on threads as
    xent's kernels are), or None without numba."""
    try:
        from numba import njit

        from xent._fused._cache import tolerate
        from xent._fused._options import can_cache
    except ImportError:
        return None

    # (cached where numba has a directory it can write, as the kernels are: a
    # read-only install with none made `xent bench` fail, an independent review)
    @njit(nogil=True, cache=can_cache())
    def row_copy(source, target, lo, hi):
        for i in range(lo, hi):
            target[i, :] = source[i, :]
    return tolerate(row_copy)
