"""Ask Linux for huge pages behind a large buffer that is about to be written first.

XLA on the CPU hands each execution fresh memory for its large outputs
(glibc maps allocations this big anew, and unmaps them when freed), so the
first write into a 1 GB gradient pays a page fault every 4 KiB. Where
transparent huge pages are set to ``madvise`` (a common default), one
``madvise(MADV_HUGEPAGE)`` over the buffer before writing makes that a fault
every 2 MiB: NumPy does the same for its own large arrays. On 8192x32000
float32 on a 2-core Zen 4, a buffer callback writing the gradient into XLA's
output took 456 ms without it and 125 ms with it (the kernel into a warm
buffer: 84 ms; a 2-thread copy of the logits: 59 ms).

Elsewhere (not Linux, no libc, a buffer under `MIN_BYTES`) `advise` does
nothing; it never changes the buffer's contents.
"""
import ctypes
import ctypes.util
import sys

__all__ = ["advise", "MIN_BYTES"]

MIN_BYTES = 4 << 20
_HUGE = 2 << 20          # the x86-64 and arm64 (4 KiB base pages) huge page size
_MADV_HUGEPAGE = 14


def _load_madvise():
    """libc's madvise, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def advise(array):
    """Ask for huge pages behind the whole 2 MiB pages inside `array`'s memory
    (a C-contiguous NumPy array); True if the kernel accepted."""
    if _madvise is None or array.nbytes < MIN_BYTES:
        return False
    start = array.ctypes.data
    first = -(-start // _HUGE) * _HUGE
    last = (start + array.nbytes) // _HUGE * _HUGE
    return last > first and _madvise(first, last - first, _MADV_HUGEPAGE) == 0
