"""Cost of the fused row kernels per logit and thread, with the data in cache.

    python bench/kernel_ns.py [ROWS COLS] [--confident]

One thread runs each kernel of `xent._fused` (loss; loss+grad into a separate
buffer; loss+grad over the logits) on ROWS x COLS logits (default 16 x 32000,
2 MB of float32: in L2/L3, so memory speed drops out) and prints the best of 15
calls in nanoseconds per logit, for float32 and bfloat16. The in-place figure
has the copy that restores the logits before each call taken off. Multiplied
by the logits per thread, it is the compute a large call needs, to set against
the copy floor `xent bench` measures (see bench/RESULTS.md). Up to
`_fused.narrow_max()` columns, the narrow kernels (the ones xent uses there) are
measured too, next to the chunk kernels (e.g. ``python bench/kernel_ns.py 65536 10``).
With ``--confident`` each row's label logit is set 14 above the row's max
(softmax there 1 - 1e-6 or so), the rows whose small loss the kernels count
apart from the max's exp(0) = 1 (`xent._fused._chunks.SHIFT_SLACK`).
"""
import sys
import time

import numpy as np

from xent import _dtypes, _fused
from xent._fused import _fetch, _launch, _narrow, _rows
from xent._fused._formats import kernel_view


def best(call, repeats=15):
    """The fastest of `repeats` timed calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def kernels(narrow):
    """(loss, loss+grad into a buffer, loss+grad in place) row kernels: the narrow
    ones (`xent._fused._narrow`, which take the gradient buffer as an argument,
    possibly the logits) or the chunk ones."""
    if narrow:
        grad = _narrow.sparse_narrow_grad_rows
        return (_narrow.sparse_narrow_loss_rows, grad,
                lambda w, labels, ones, loss, lse, lo, hi: grad(_launch.read_only(w), labels, ones, w,
                                                                loss, lse, lo, hi))
    return _rows.sparse_loss_rows, _rows.sparse_grad_rows, _rows.sparse_grad_rows_inplace


def with_fetch(kernel, dtype, need, narrow):
    """`kernel` called with this host's prefetch choice for `need` (chunk kernels only)."""
    if narrow:
        return kernel
    fetch = _fetch.FETCH_LOGITS if _launch.fetches_ahead(dtype, need) else 0   # (sparse: no targets)
    return lambda *args: kernel(*args[:-2], fetch, *args[-2:])


def measure(dtype_name, rows, cols, narrow=False, confident=False):
    """ns per logit for (loss, loss+grad into a buffer, loss+grad in place)."""
    rng = np.random.default_rng(0)
    dtype = _dtypes.bfloat16() if dtype_name == "bfloat16" else np.dtype(dtype_name)
    x = rng.standard_normal((rows, cols), np.float32) * 3
    labels = rng.integers(0, cols, rows).astype(np.int64)
    if confident:
        x[np.arange(rows), labels] = x.max(axis=1) + 14
    original = x.astype(dtype)
    labels = _launch.read_only(labels)
    work, out = original.copy(), np.empty_like(original)
    loss, lse = np.empty(rows, np.float32), np.empty(rows, np.float32)
    x, w, o = (kernel_view(a) for a in (original, work, out))
    x = _launch.read_only(x)   # read-only logits and int64 labels, as the launch passes them
    loss_rows, grad_rows, inplace_rows = (
        with_fetch(kernel, dtype, need, narrow)
        for kernel, need in zip(kernels(narrow), ("loss", "grad", "grad_inplace")))
    ones = _launch.read_only(np.ones(1))   # every row's gradient weight

    def loss_only():
        loss_rows(x, labels, loss, lse, 0, rows)

    def into():
        grad_rows(x, labels, ones, o, loss, lse, 0, rows)

    def restore():
        np.copyto(work, original)

    def in_place():
        restore()
        inplace_rows(w, labels, ones, loss, lse, 0, rows)

    for call in (loss_only, into, in_place):
        call()
    n = rows * cols
    return (best(loss_only) / n * 1e9, best(into) / n * 1e9,
            (best(in_place) - best(restore)) / n * 1e9)


if __name__ == "__main__":
    confident = "--confident" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--confident"]
    rows, cols = (int(a) for a in args[:2]) if len(args) > 1 else (16, 32000)
    paths = (("chunk", False),) + ((("narrow", True),) if cols <= _fused.narrow_max() else ())
    for name in ("float32", "bfloat16"):
        for path, narrow in paths:
            loss_ns, into_ns, inplace_ns = measure(name, rows, cols, narrow, confident)
            print(f"{name:9s} {rows}x{cols} {path:6s}: loss {loss_ns:.3f}, loss+grad into a "
                  f"buffer {into_ns:.3f}, in place {inplace_ns:.3f} ns per logit per thread "
                  f"(x {cols} = {loss_ns * cols:.1f}, {into_ns * cols:.1f}, "
                  f"{inplace_ns * cols:.1f} ns per row)")
