"""The range kernels spread over numba's threads, in blocks of rows.

Each wrapper takes the block count last; block b covers rows
``[b*n//blocks, (b+1)*n//blocks)``, and the threads pull blocks as they free
up (`xent._fused._launch` sets numba's chunk size to 1). They are written out
one by one: wrappers made by a factory are closures, which numba 0.68 does not
find in its disk cache (each process recompiled them), and the first call
would then pay the compile.
"""
from numba import njit, prange

from xent._fused._narrow import dense_narrow_grad_rows, dense_narrow_loss_rows, \
    sparse_narrow_grad_rows, sparse_narrow_loss_rows
from xent._fused._options import KERNEL
from xent._fused._rows import dense_grad_rows, dense_grad_rows_inplace, dense_loss_rows, \
    sparse_grad_rows, sparse_grad_rows_inplace, sparse_grad_rows_streamed, sparse_loss_rows


@njit(parallel=True, **KERNEL)
def sparse_loss_blocks(x, labels, loss, lse, fetch, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        sparse_loss_rows(x, labels, loss, lse, fetch, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **KERNEL)
def sparse_grad_blocks(x, labels, weights, out, loss, lse, fetch, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        sparse_grad_rows(x, labels, weights, out, loss, lse, fetch, b * n // blocks,
                         (b + 1) * n // blocks)


@njit(parallel=True, **KERNEL)
def sparse_grad_blocks_streamed(x, labels, weights, out, loss, lse, fetch, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        sparse_grad_rows_streamed(x, labels, weights, out, loss, lse, fetch, b * n // blocks,
                                  (b + 1) * n // blocks)


@njit(parallel=True, **KERNEL)
def sparse_grad_blocks_inplace(x, labels, weights, loss, lse, fetch, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        sparse_grad_rows_inplace(x, labels, weights, loss, lse, fetch, b * n // blocks,
                                 (b + 1) * n // blocks)


@njit(parallel=True, **KERNEL)
def sparse_narrow_loss_blocks(x, labels, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        sparse_narrow_loss_rows(x, labels, loss, lse, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **KERNEL)
def sparse_narrow_grad_blocks(x, labels, weights, out, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        sparse_narrow_grad_rows(x, labels, weights, out, loss, lse, b * n // blocks,
                                (b + 1) * n // blocks)


@njit(parallel=True, **KERNEL)
def dense_loss_blocks(x, y, loss, lse, fetch, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        dense_loss_rows(x, y, loss, lse, fetch, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **KERNEL)
def dense_grad_blocks(x, y, out, loss, lse, fetch, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        dense_grad_rows(x, y, out, loss, lse, fetch, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **KERNEL)
def dense_grad_blocks_inplace(x, y, loss, lse, fetch, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        dense_grad_rows_inplace(x, y, loss, lse, fetch, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **KERNEL)
def dense_narrow_loss_blocks(x, y, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        dense_narrow_loss_rows(x, y, loss, lse, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **KERNEL)
def dense_narrow_grad_blocks(x, y, out, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        dense_narrow_grad_rows(x, y, out, loss, lse, b * n // blocks, (b + 1) * n // blocks)
