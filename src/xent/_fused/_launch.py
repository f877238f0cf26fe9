"""The Python side: arrays in the kernels' formats, the kernel for each need, threads.

`sparse_rows` and `dense_rows` keep `xent._kernels`' contract: ``(loss,
lse)`` per row in the accumulator dtype, and ``softmax - targets`` in a
gradient buffer when one is given (which may be the logits themselves). Rows
of at most `narrow_max()` classes in float32 arithmetic go through the narrow
kernels, longer ones through the chunk kernels.

Rows are split over `xent.get_num_threads()` threads for inputs above a few
MB: the calling thread and helper threads take blocks of rows
(`xent._fused._pool`; idle helpers sleep); smaller inputs run on the calling
thread.
"""
import time

import numpy as np

from xent import _threads
from xent._dtypes import accumulator
from xent._fused import _fetch, _narrow, _pool, _rows, _target
from xent._fused._formats import kernel_view
from xent._fused._narrow import NARROW_DENSE_MAX, narrow_max
from xent._fused._stores import StoreChoice

__all__ = ["sparse_rows", "dense_rows", "PARALLEL_MIN_BYTES"]

# Below this much work one thread beats two (a helper thread takes a while to
# wake). Work is counted in bytes of logits, plus `_ROW_COST_BYTES` per row for
# the per-row steps (a log, the label, the ends of the vector loops), which
# dominate when rows are short.
PARALLEL_MIN_BYTES = 4 << 20
_ROW_COST_BYTES = 256


def _run(rows, nbytes, args):
    """Run `rows(*args, 0, n)` on this thread, or over threads (`_pool.run`); False
    if it meant to use threads but its helpers took no part (busy, or asleep
    throughout: the call then ran as on one thread).
    """
    n = args[0].shape[0]
    threads = 1 if nbytes + n * _ROW_COST_BYTES < PARALLEL_MIN_BYTES \
        else min(_threads.get_num_threads(), n)
    if threads == 1:
        rows(*args, 0, n)
        return True
    return _pool.run(rows, args, n, threads)


def read_only(a):
    """`a` as a read-only view: what the kernels
    only read is passed read-only, so that each kernel has one numba type per
    dtype whether the caller's array was writable (NumPy) or not (JAX's arrays,
    broadcasts), and compiles once for both. Over the test suite this took the
    kernels from 152 compiled signatures to 98, with int64 labels (`sparse_rows`)."""
    view = a.view()
    view.setflags(write=False)   # (0.3 us; `flags.writeable = False` takes 0.5)
    return view


def _same_buffer(a, b, overlap):
    """Whether `a` and `b` are the same elements of the same memory, given whether
    their bounds `overlap` (``__array_interface__`` builds a dict, 3 us a call)."""
    if a is b:
        return True
    if not overlap:
        return False
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.shape == b.shape and a.dtype == b.dtype)


# The row kernel of each need; the narrow gradient kernels also run in place.
_SPARSE_KERNELS = {
    "loss": _rows.sparse_loss_rows,
    "grad": _rows.sparse_grad_rows,
    "grad_streamed": _rows.sparse_grad_rows_streamed,
    "grad_inplace": _rows.sparse_grad_rows_inplace,
    "narrow_loss": _narrow.sparse_narrow_loss_rows,
    "narrow_grad": _narrow.sparse_narrow_grad_rows,
}
_DENSE_KERNELS = {
    "loss": _rows.dense_loss_rows,
    "grad": _rows.dense_grad_rows,
    "grad_streamed": _rows.dense_grad_rows_streamed,
    "grad_inplace": _rows.dense_grad_rows_inplace,
    "narrow_loss": _narrow.dense_narrow_loss_rows,
    "narrow_grad": _narrow.dense_narrow_grad_rows,
}


# Whether pass A prefetches the logits ahead (`fetches_ahead`): None chooses
# per CPU and need; the tests set True or False to run both forms.
FETCH_AHEAD = None
# LLVM's names for AMD Zen 1-3, whose half-precision gradients run faster without it.
_ZEN_UP_TO_3 = ("znver1", "znver2", "znver3")


def fetches_ahead(dtype, need):
    """Whether the chunk kernels for `need` ("loss", "grad" into a buffer,
    "grad_inplace") on logits of `dtype` prefetch the logits ahead during
    pass A (`xent._fused._fetch`).

    Yes for every need but on AMD Zen hosts. Measured at 8192x32000 (ms, 2
    threads; with / without):

      - Intel Xeon (Emerald Rapids, AVX-512), prefetching a piece at a time
        8 KB ahead (2026-12, session 22): float32 loss 43 / 63 (read 31),
        in place 55 / 77, into a buffer 74 / 91 (streamed stores; memcpy 43).
        With the earlier scheme (the next row, in one burst per chunk) the
        gains were smaller and into a buffer lost (Rocket Lake: float32
        161 / 138), so float32 and float64 gradients into a buffer did not
        prefetch before.
      - AMD Zen, measured with that earlier scheme: half-precision gradients
        prefetch but on Zen 1-3; nothing else does, as Zen's own prefetchers
        stream these rows and the software prefetches stalled the loop.
        bfloat16 in place on Zen 4: 44 / 55 (4096 rows: 24 / 28); into a
        buffer about even there (58-74 / 66-70; 4096 rows: 31 / 35), with
        pass B's prefetch of the buffer's next row (`prefetch_half_chunk`).
        On a Zen 3 (znver3, AVX2; medians of 7, interleaved, in four
        processes) the prefetches cost: in place 70-90 / 64-86, into a
        buffer 82-104 / 75-97; one thread 148 / 136 and 174 / 157. Zen 4,
        one thread, 4096 rows: float32 loss 56-58 / 32-34, bfloat16 loss
        31 / 27, float32 in place 73 / 51-57. Zen 1, 2 and 5 (which LLVM
        before 19 names "generic") are assumed alike; the spread prefetches
        are not measured on Zen yet.
    """
    if FETCH_AHEAD is not None:
        return FETCH_AHEAD
    cpu = _target.host_cpu_name()
    if not cpu.startswith("znver"):
        return True
    return dtype.itemsize == 2 and need != "loss" and cpu not in _ZEN_UP_TO_3


# Whether a large gradient into a separate buffer is stored by the streamed
# kernel: None lets `STORES` choose; the tests set True or False to run both
# (then no call is timed, and `STORES` sees none).
STREAM = None
# From this size of gradient on (far above the caches it has to bypass).
STREAM_MIN_BYTES = 64 << 20
# This process's timed choice between plain and streamed stores (`_stores`).
STORES = StoreChoice()


def store_kind(x, out, kind):
    """``(streamed, timed)`` for the gradient of logits `x` into the separate
    buffer `out`, with `kind` targets ("sparse" or "dense"): whether it is
    stored with non-temporal stores (`xent._fused._stream`), and whether the
    call is timed for `STORES` (whose timed signature holds the kind: a dense
    call also reads its targets, so the two kinds of call are not compared).

    Only float32 or float64 gradients of the logits' dtype can stream.
    `STREAM` decides if set, whatever the size. Else gradients from
    `STREAM_MIN_BYTES` on go by `STORES`, which times the first large calls
    of the process and keeps the faster kind (streaming wins on Zen 3 and on
    a 16-thread Xeon, and loses by 40% on a Zen 4: `xent._fused._stores`);
    smaller ones are better left in the caches (AMD Zen 3, ms, plain /
    streamed: 2048x4096, 32 MB, 3.4 / 3.8).
    """
    if STREAM is None and out.nbytes < STREAM_MIN_BYTES:   # (first: a small call's fixed cost)
        return False, False
    if x.dtype != out.dtype or x.dtype not in (np.float32, np.float64):
        return False, False
    if STREAM is not None:
        return STREAM, False
    return STORES.next_kind((kind, out.dtype.name, out.nbytes))


# From this size of logits on, pass A prefetches dense targets too (`_fetch.FETCH_TARGETS`).
FETCH_TARGETS_MIN_BYTES = 64 << 20


def fetch_bits(x, need, y=None):
    """What pass A prefetches for logits `x` with `need` (`fetches_ahead`), as
    `_fetch`'s bits: nothing, the logits, or the logits and the dense target
    rows `y` (None: sparse labels), from `FETCH_TARGETS_MIN_BYTES` of logits
    on, unless y is one row for every row of logits (in cache throughout)."""
    if not fetches_ahead(x.dtype, need):
        return 0
    if y is not None and y.shape[0] > 1 and x.nbytes >= FETCH_TARGETS_MIN_BYTES:
        return _fetch.FETCH_LOGITS | _fetch.FETCH_TARGETS
    return _fetch.FETCH_LOGITS


def _fetch_arg(narrow, x, need, kernels, targets):
    """The chunk kernels' last arguments: `fetch_bits` for `x` and `targets`
    (`_dispatch`'s; the first, with `_DENSE_KERNELS`, the target rows); the
    narrow kernels take none."""
    if narrow:
        return ()
    return (fetch_bits(x, need, targets[0] if kernels is _DENSE_KERNELS else None),)


def _dispatch(kernels, narrow, logits, targets, grad_out, loss, lse, grad_targets=None):
    """Fill loss and lse (and grad_out unless None) with the kernels of `kernels`
    (`_SPARSE_KERNELS` or `_DENSE_KERNELS`; their narrow ones if `narrow`), on
    `targets` (a tuple: the labels, or the dense target rows); the gradient
    kernels take `grad_targets` instead where given (the labels and weights).

    The logits go read-only (`read_only`), except to the chunk kernel that
    overwrites them in place. The usual call, a C-contiguous gradient buffer
    of its own, goes straight to `_into`, with no copy and no closure (a
    small call's fixed cost); the rest to `_with_gradient`. `targets` and
    `grad_targets` come read-only."""
    if grad_out is None:
        x = read_only(kernel_view(np.ascontiguousarray(logits)))
        _run(kernels["narrow_loss" if narrow else "loss"], logits.nbytes,
             (x, *targets, loss, lse, *_fetch_arg(narrow, logits, "loss", kernels, targets)))
        return
    targets = grad_targets or targets
    overlap = logits is grad_out or np.may_share_memory(logits, grad_out)
    if logits.flags.c_contiguous and _stores_directly(narrow, logits, grad_out, overlap):
        _into(kernels, narrow, logits, targets, grad_out, loss, lse)
    else:
        _with_gradient(kernels, narrow, logits, targets, grad_out, loss, lse, overlap)


# LLVM's vectorised row loop that reads the logits, stores their exps into the
# gradient and sums them checks at run time that no store reaches a later load,
# by the pointers' distance alone: a gradient starting less than a few vectors
# after the logits, though apart from them, took the scalar form of the loop,
# which sums in another order (the same float64 call's loss one ulp apart from
# call to call: an independent review; within 256 bytes on AVX-512, 128 on AVX2;
# dense targets beside the gradient change nothing: pass B's loop sums none).
# Only logits smaller than this can end that close before a gradient they do not
# overlap: the chunk kernels make their gradient in a buffer this far on in its
# own allocation, then copy it (0.5 us; reading the two addresses took 1.7).
_APART_BYTES = 4096


def _stores_directly(narrow, x, grad_out, overlap):
    """Whether the kernels for C-contiguous logits `x` can write the gradient straight
    into `grad_out`: C-contiguous, apart from `x` (`overlap`: their bounds'), and
    not just after small logits unless the kernels are the narrow ones."""
    return (grad_out.flags.c_contiguous and not overlap
            and (narrow or x.nbytes >= _APART_BYTES))


def _apart_buffer(like):
    """An uninitialised array like `like` (its shape and dtype), `_APART_BYTES` on
    from the start of its own allocation: no array allocated before it is near."""
    skip = _APART_BYTES // like.itemsize
    return np.empty(skip + like.size, like.dtype)[skip:].reshape(like.shape)


def _into(kernels, narrow, x, targets, out, loss, lse):
    """The gradient of C-contiguous logits `x` into C-contiguous `out` (the same
    array for the narrow kernels in place); a chunk kernel's gradient goes to
    the streamed kernel where `store_kind` says so."""
    streamed, timed = (False, False) if narrow \
        else store_kind(x, out, "dense" if kernels is _DENSE_KERNELS else "sparse")
    start = time.perf_counter() if timed else 0.0
    on_its_threads = _run(kernels["grad_streamed" if streamed else "narrow_grad" if narrow
                                  else "grad"], x.nbytes,
                          (read_only(kernel_view(x)), *targets, kernel_view(out), loss, lse,
                           *_fetch_arg(narrow, x, "grad", kernels, targets)))
    if timed and on_its_threads:
        STORES.record(streamed, time.perf_counter() - start, out.nbytes)


def _inplace(kernels, narrow, x, targets, loss, lse):
    """The gradient over C-contiguous logits `x` themselves."""
    if narrow:
        _into(kernels, narrow, x, targets, x, loss, lse)
    else:
        _run(kernels["grad_inplace"], x.nbytes,
             (kernel_view(x), *targets, loss, lse,
              *_fetch_arg(narrow, x, "grad_inplace", kernels, targets)))


def _with_gradient(kernels, narrow, logits, targets, grad_out, loss, lse, overlap):
    """`_into` or `_inplace` for any layout, so that `grad_out` ends up holding
    the gradient, given whether the two arrays' bounds `overlap`.

    In place when `grad_out` is `logits` (same memory, strides and dtype);
    logits that are not C-contiguous go through a contiguous copy, and a
    gradient buffer that is not, that overlaps the logits otherwise, or that
    could start just after small logits (`_APART_BYTES`), gets the gradient
    copied in from a buffer of its own.
    """
    contiguous = logits.flags.c_contiguous
    if _same_buffer(logits, grad_out, overlap):
        # (through `grad_out`: of two views of this memory, the one written to,
        # where read-only logits may be the other)
        x = grad_out if contiguous else np.ascontiguousarray(logits)
        _inplace(kernels, narrow, x, targets, loss, lse)
        if not contiguous:
            grad_out[...] = x
        return
    x = logits if contiguous else np.ascontiguousarray(logits)
    direct = _stores_directly(narrow, x, grad_out, overlap)
    out = grad_out if direct else _apart_buffer(grad_out)
    _into(kernels, narrow, x, targets, out, loss, lse)
    if not direct:
        grad_out[...] = out


_ONE = read_only(np.ones(1))


def sparse_rows(logits, labels, grad_out=None, weights=None):
    """Sparse softmax cross-entropy of each row (the `_kernels.sparse_rows` contract).

    Args:
      logits: ``[N, C]`` float16/bfloat16/float32/float64 array, ``C >= 1``.
      labels: ``[N]`` int32/int64 array; a label outside ``[0, C)`` gives a NaN row.
      grad_out: optional ``[N, C]`` array (may be `logits` itself) that receives
        ``softmax(logits) - one_hot(labels)`` in its own dtype, each row times
        its weight.
      weights: optional ``[N]`` row weights (float64; None: all 1, TensorFlow's
        backprop), folded into the gradient's one pass (a reduction's 1/count).

    Returns:
      ``(loss, lse)``: two ``[N]`` arrays in the accumulator dtype.

    bfloat16 logits use `exp_half`, good to about a fortieth of their ulp
    (`xent._fused._exps`); a wider gradient buffer for half-precision logits
    (an internal caller's choice) gets float32 logits instead, as its
    precision asks.
    """
    if grad_out is not None and logits.itemsize == 2 and grad_out.itemsize > 2:
        return _widened(sparse_rows, logits, labels, grad_out, weights)
    acc = accumulator(logits.dtype)
    loss, lse = np.empty(logits.shape[0], acc), np.empty(logits.shape[0], acc)
    if logits.shape[0] == 0:
        return loss, lse
    # int64 labels whatever their width (widening is exact; N values against N*C
    # logits), so that the kernels compile once, not per label dtype
    labels = read_only(np.ascontiguousarray(labels, np.int64) if labels.dtype != np.int64
                       else np.ascontiguousarray(labels))
    weights = _ONE if weights is None else read_only(np.ascontiguousarray(weights, np.float64))
    # (a single half-precision logit is too short for the narrow kernels' gather)
    narrow = logits.shape[1] <= narrow_max() and acc == np.float32 and logits.size >= 2
    _dispatch(_SPARSE_KERNELS, narrow, logits, (labels,), grad_out, loss, lse, (labels, weights))
    return loss, lse


# Half-precision logits bound for a float32 gradient are widened this many at a time.
_WIDENED_ELEMENTS = 1 << 21


def _widened(rows, logits, labels, grad_out, weights):
    """`rows` (`sparse_rows` or `dense_rows`) over float32 copies of blocks of the
    half-precision `logits`, for a gradient buffer `grad_out` wider than them
    (the float32 backprop of float16, and of bfloat16 with dense labels:
    `xent._jax_cpu.backprop_dtype`). Each block's rows are computed as the
    whole call's would be; the copies are a block's,
    8 MiB, where one of the whole logits was twice their size (and dense
    targets' another)."""
    n, c = logits.shape
    loss, lse = np.empty(n, np.float32), np.empty(n, np.float32)
    step = max(1, _WIDENED_ELEMENTS // max(1, c))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        block_labels = labels[lo:hi] if labels.shape[0] == n else labels   # (dense: maybe one row)
        block_weights = None if weights is None else np.asarray(weights).reshape(-1)[lo:hi]
        loss[lo:hi], lse[lo:hi] = rows(logits[lo:hi].astype(np.float32), block_labels,
                                       grad_out[lo:hi], block_weights)
    return loss, lse


def _target_rows(labels, logits):
    """Dense labels as ``[1 or N, C]`` C-contiguous read-only rows, undoing a stride-0
    row broadcast.

    A class axis broadcast from width 1 is expanded (rare: labels of shape ``[N, 1]``).
    """
    if labels.shape[0] > 1 and labels.strides[0] == 0:
        labels = labels[:1]
    if labels.shape[1] != logits.shape[1]:
        labels = np.broadcast_to(labels, (labels.shape[0], logits.shape[1]))
    if labels.dtype not in (logits.dtype, accumulator(logits.dtype)):
        labels = labels.astype(accumulator(logits.dtype))
    return read_only(kernel_view(np.ascontiguousarray(labels)))


def dense_rows(logits, labels, grad_out=None, weights=None):
    """Softmax cross-entropy of each row against targets (the `_kernels.dense_rows` contract).

    Args:
      logits: ``[N, C]`` float array.
      labels: ``[N, C]`` float array, possibly a broadcast view of ``[1, C]``,
        ``[N, 1]`` or ``[1, 1]``; the logits' dtype or its accumulator dtype.
      grad_out: optional ``[N, C]`` array (may be `logits`) that receives
        ``softmax(logits) - labels``, each row times its weight; wider than
        half-precision logits (float32), it gets float32 logits and targets, a
        block of rows at a time (`_widened`).
      weights: optional ``[N]`` row weights, as in `sparse_rows`.

    Returns:
      ``(loss, lse)``: two ``[N]`` arrays in the accumulator dtype. With
      ``C == 0`` the loss is 0 and lse is ``-inf``.
    """
    acc = accumulator(logits.dtype)
    n, c = logits.shape
    if c == 0:
        return np.zeros(n, acc), np.full(n, -np.inf, acc)
    if grad_out is not None and logits.itemsize == 2 and grad_out.itemsize > 2:
        return _widened(dense_rows, logits, labels, grad_out, weights)
    loss, lse = np.empty(n, acc), np.empty(n, acc)
    if n == 0:
        return loss, lse
    y = _target_rows(labels, logits)
    weights = _ONE if weights is None else read_only(np.ascontiguousarray(weights, np.float64))
    # (a single half-precision logit or target is too short for the narrow kernels' gather)
    narrow = c <= NARROW_DENSE_MAX and acc == np.float32 and logits.size >= 2 and y.size >= 2
    _dispatch(_DENSE_KERNELS, narrow, logits, (y,), grad_out, loss, lse, (y, weights))
    return loss, lse
