"""A small pool of large result buffers, reused once nothing references them.

A training step through torch asks for a fresh logits-sized gradient every
time. Fresh memory costs its first-touch page faults: on a 2-core Zen 4, an
8192x32000 float32 step spent about as long faulting in its 1 GB gradient as
the kernel spent computing it. `empty` hands out a buffer the pool already
holds when it is free (the smallest that fits, if not twice too large), and
makes (and keeps) a new one otherwise.

A buffer is free when the pool holds the only reference to it: an array
handed out is a view whose ``base`` is the buffer, and a torch tensor made
from it (`torch.from_numpy`) keeps that view alive through its storage, as
does every view of the tensor, a ``.grad`` that holds it, or a ``.numpy()``
of it. So a buffer the caller still holds is never handed out again.

The pool keeps at most `MAX_BUFFERS` buffers (the least recently used free
one makes way), only those of `MIN_BYTES` or more (small ones come from the
allocator's own free lists); `empty_cache` drops every free one.
"""
import math
import sys

import numpy as np

from xent import _threads

__all__ = ["empty", "empty_like", "empty_cache", "MIN_BYTES", "MAX_BUFFERS"]

MIN_BYTES = 1 << 20
MAX_BUFFERS = 4
# A free buffer serves a request of up to this many times fewer bytes (the
# smallest that fits): batches padded to a length that changes from step to
# step each ask for a size of their own, and each new size faulted in fresh
# memory (8192x32000 float32 on a Zen 4 VM, a torch .mean() step with one row
# fewer each time: 107 ms against 69 with the same shape).
_SLACK = 2

_lock = _threads.fork_safe_lock()
_pool = []   # byte buffers (np.uint8, 1-D), most recently handed out last
# Marks a thread in `_lock`: a call made then (a signal handler's) takes fresh memory.
_inside = _threads.ThreadMark()


def _free(index):
    """Whether only the pool references its buffer `index` (the list's reference, and
    the call's)."""
    return sys.getrefcount(_pool[index]) <= 2


def empty(shape, dtype):
    """An uninitialised C-contiguous ``shape`` array of `dtype`, from the pool if one is free."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or _inside:
        return np.empty(shape, dtype)
    with _inside, _lock:
        fits = [index for index in range(len(_pool))
                if nbytes <= _pool[index].nbytes <= _SLACK * nbytes and _free(index)]
        if fits:
            buffer = _pool.pop(min(fits, key=lambda index: _pool[index].nbytes))
        else:
            _make_room()
            buffer = np.empty(nbytes, np.uint8)
        _pool.append(buffer)
    return buffer[:nbytes].view(dtype).reshape(shape)


def empty_like(a):
    """`empty` of `a`'s shape and dtype; a small array's size is read from `a` (a small
    call's fixed cost: 0.04 against 0.3 us for `empty`'s own sum)."""
    if a.nbytes < MIN_BYTES:
        return np.empty(a.shape, a.dtype)
    return empty(a.shape, a.dtype)


def _make_room():
    """Drop the least recently used free buffer while the pool is full (or, when
    every buffer is in use, the oldest: its holder keeps it alive)."""
    while len(_pool) >= MAX_BUFFERS:
        free = [index for index in range(len(_pool)) if _free(index)]
        del _pool[free[0] if free else 0]


def empty_cache():
    """Let go of every buffer xent keeps for reuse (`xent.empty_cache()`).

    Free buffers go back to the system at once; those still in use leave the
    pool and are freed when their last holder lets go. Returns the bytes the
    pool was keeping.

    Example:
      >>> import xent
      >>> xent.empty_cache() >= 0
      True
    """
    if _inside:   # (from a signal handler: nothing let go)
        return 0
    with _inside, _lock:
        released = sum(b.nbytes for b in _pool)
        _pool.clear()
    return released
