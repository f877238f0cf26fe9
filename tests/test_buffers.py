"""xent's pool of large result buffers (`xent._buffers`): reused only when nobody holds them."""
import numpy as np
import pytest

import xent
from xent import _buffers

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def empty_pool():
    xent.empty_cache()
    yield
    xent.empty_cache()


def test_a_buffer_is_reused_only_once_nothing_references_it():
    shape = (512, 1024)   # 2 MiB of float32: pooled
    a = _buffers.empty(shape, np.float32)
    held = torch.from_numpy(a)[3:]    # a torch view keeps the buffer busy
    first = a.ctypes.data
    del a
    b = _buffers.empty(shape, np.float32)
    second = b.ctypes.data
    assert second != first
    del held, b
    # same size, other shape and dtype: the two freed buffers, no new memory
    c = _buffers.empty((1024, 512), np.float32)
    d = _buffers.empty((2048, 256), np.int32)
    assert {c.ctypes.data, d.ctypes.data} == {first, second} and len(_buffers._pool) == 2


def test_small_results_bypass_the_pool_and_the_pool_is_bounded():
    small = _buffers.empty((10, 10), np.float64)
    assert small.base is None and not _buffers._pool
    held = [_buffers.empty((1 << 18,), np.float32) for _ in range(_buffers.MAX_BUFFERS + 2)]
    assert len(_buffers._pool) == _buffers.MAX_BUFFERS
    assert len({h.ctypes.data for h in held}) == len(held)
    assert xent.empty_cache() == _buffers.MAX_BUFFERS * (1 << 20) and not _buffers._pool


def test_empty_like_pools_from_the_same_size_on_as_empty():
    """`empty_like` reads the size from its array; the pool's threshold is the same."""
    below = np.zeros(_buffers.MIN_BYTES // 4 - 1, np.float32)
    at = np.zeros((2, _buffers.MIN_BYTES // 8), np.float32)
    small = _buffers.empty_like(below)
    assert small.base is None and small.shape == below.shape and not _buffers._pool
    large = _buffers.empty_like(at)
    assert (large.shape, large.dtype, large.flags.c_contiguous) == (at.shape, at.dtype, True)
    assert len(_buffers._pool) == 1 and large.base is _buffers._pool[0]


def test_ten_training_steps_keep_every_gradient_they_handed_out():
    """Each step's .grad is kept: none may be overwritten by a later step's gradient."""
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(256, 2048)).astype(np.float32))   # 2 MiB
    labels = torch.tensor(rng.integers(0, 2048, 256))
    expected = torch.softmax(logits, -1) - torch.nn.functional.one_hot(labels, 2048)
    kept = []
    for step in range(10):
        leaf = (logits + step).requires_grad_(True)   # the same softmax each step
        loss = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=leaf)
        loss.sum().backward()
        kept.append(leaf.grad)
    assert len({g.data_ptr() for g in kept}) == 10
    for grad in kept:
        torch.testing.assert_close(grad, expected, rtol=0, atol=2e-6)


def test_a_warm_step_reuses_the_last_steps_gradient_memory():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(256, 2048)).astype(np.float32))
    labels = torch.tensor(rng.integers(0, 2048, 256))
    addresses = []
    for _ in range(4):
        leaf = logits.clone().requires_grad_(True)
        xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=leaf).sum().backward()
        addresses.append(leaf.grad.data_ptr())
        del leaf   # the gradient goes with it
    assert len(set(addresses[1:])) == 1 and len(_buffers._pool) <= 2
