"""`xent._fused._borrow`: arrays a kernel uses without counting references.

A borrowed view of an array the kernel allocated is only valid while the
owner lives; numba frees the owner after its variable's last use, so the
kernels end with `keep_alive(owner)`. These tests show that the rule is
needed (without it the memory is handed out again while the borrowed view
still points at it) and that it is enough, and that the kernels that borrow
count references to nothing but their unborrowed arguments.
"""
import re
import sys

import numpy as np
import pytest
from numba import njit

from xent._fused import _narrow, _rows
from xent._fused._borrow import borrowed, keep_alive


@njit
def _fill_reallocate_sum(view):
    """Fill `view` with 1s, allocate and fill another array of its size with 7s,
    and sum `view` (100 for 100 entries, unless the other took its memory)."""
    n = view.shape[0]
    for i in range(n):
        view[i] = 1.0
    other = np.full(n, 7.0)
    total = 0.0
    for i in range(n):
        total += view[i]
    return total + other[0] - 7.0


@njit
def _sum_after_reallocating(n):
    """`_fill_reallocate_sum` on a borrowed view of a fresh array kept alive."""
    owner = np.empty(n)
    total = _fill_reallocate_sum(borrowed(owner))
    keep_alive(owner)
    return total


@njit
def _sum_without_keep_alive(n):
    """The same with no `keep_alive`: the owner dies at `borrowed`."""
    return _fill_reallocate_sum(borrowed(np.empty(n)))


def test_keep_alive_holds_the_owner_of_a_borrowed_view():
    assert _sum_after_reallocating(100) == 100.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator reuses at once")
def test_without_keep_alive_the_borrowed_memory_is_handed_out_again():
    """The hazard the rule guards against (glibc returns a freed block of the
    same size to the next allocation): the view then reads the other's 7s."""
    assert _sum_without_keep_alive(100) == 700.0


def test_borrowed_none_stays_none():
    @njit
    def f():
        return borrowed(None) is None
    assert f()


def _counted_meminfos(dispatcher, args):
    """The meminfos `dispatcher`'s fresh compile for `args` adds references to:
    the names of the IR values passed to ``NRT_incref``."""
    dispatcher(*args)
    (ir,) = dispatcher.inspect_llvm().values()
    body = ir[ir.index("define"):]
    return set(re.findall(r"call void @NRT_incref\(ptr (?:nonnull )?(%[\w.]+)\)",
                          body[:body.index("\n}\n")]))


@pytest.mark.parametrize("kernel, make", [
    (_rows.sparse_grad_rows, lambda x, y, n: (x, y, np.ones(1), np.empty_like(x),
                                              np.empty(n, np.float32), np.empty(n, np.float32),
                                              False, 0, n)),
    (_rows.sparse_grad_rows_streamed, lambda x, y, n: (x, y, np.ones(1), np.empty_like(x),
                                                       np.empty(n, np.float32),
                                                       np.empty(n, np.float32), False, 0, n)),
    (_narrow.sparse_narrow_loss_rows, lambda x, y, n: (x, y, np.empty(n, np.float32),
                                                       np.empty(n, np.float32), 0, n)),
])
def test_kernels_count_references_to_their_arguments_only(kernel, make):
    """A kernel adds references only to the arguments it does not borrow, once on
    entry; a view of a borrowed array, or of one the kernel allocates (its
    statistics, its lanes), adds none (numba added them per row or block)."""
    options = {k: v for k, v in kernel.targetoptions.items() if k not in ("cache", "nopython")}
    fresh = njit(**options)(kernel.py_func)   # (cached code has no IR to read)
    n = 40
    x = np.random.default_rng(0).standard_normal((n, 20), dtype=np.float32)
    counted = _counted_meminfos(fresh, make(x, np.zeros(n, np.int64), n))
    assert counted and all(name.startswith("%arg.") for name in counted), counted
