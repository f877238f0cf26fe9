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


def test_a_smaller_request_takes_the_smallest_free_buffer_that_fits():
    """A batch one row shorter reuses the last step's buffer (the front of it); one
    that would leave more than half of a buffer unused gets its own."""
    big = _buffers.empty((1024, 1024), np.float32)        # 4 MiB
    bigger = _buffers.empty((1536, 1024), np.float32)     # 6 MiB
    addresses = {a.ctypes.data for a in (big, bigger)}
    del big, bigger
    shorter = _buffers.empty((1000, 1024), np.float32)
    assert shorter.ctypes.data in addresses and shorter.base.nbytes == 4 << 20
    assert shorter.shape == (1000, 1024) and shorter.flags.c_contiguous
    half = _buffers.empty((767, 1024), np.float32)        # 6 MiB would be over twice too large
    assert half.ctypes.data not in addresses and len(_buffers._pool) == 3
    del half
    held = torch.from_numpy(shorter)                      # busy: not handed out again
    again = _buffers.empty((900, 1024), np.float32)
    assert again.ctypes.data != held.data_ptr() and again.base.nbytes == 6 << 20


def test_training_steps_with_a_changing_batch_size_reuse_one_gradient_buffer():
    """Padding that changes per batch: each warm step's gradient takes the last
    step's memory instead of a fresh buffer of its own size."""
    rng = np.random.default_rng(2)
    logits = torch.tensor(rng.normal(size=(256, 2048)).astype(np.float32))
    labels = torch.tensor(rng.integers(0, 2048, 256))
    addresses = []
    for rows in (256, 250, 240, 251, 200):
        leaf = logits[:rows].clone().requires_grad_(True)
        xent.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels[:rows], logits=leaf).mean().backward()
        expected = (torch.softmax(logits[:rows], -1)
                    - torch.nn.functional.one_hot(labels[:rows], 2048)) / rows
        torch.testing.assert_close(leaf.grad, expected, rtol=1e-5, atol=1e-9)
        addresses.append(leaf.grad.data_ptr())
        del leaf
    assert len(set(addresses)) == 1 and len(_buffers._pool) == 1


_NESTED_CALLS = """
import numpy as np
from xent import _buffers
from xent._torch import _upstream

shape = (_buffers.MIN_BYTES // 4,)
first = _buffers.empty(shape, np.float32)
live = _buffers.empty(shape, np.float32)
del first   # (the pool: a free buffer, then `live`)
real, calls, nested = _buffers._free, [0], []

def free(index):   # (a signal handler's call, landing in the outer call's scan)
    calls[0] += 1
    if calls[0] == 2:
        nested.append(_buffers.empty(shape, np.float32))
    return real(index)

_buffers._free = free
outer = _buffers.empty(shape, np.float32)
_buffers._free = real
assert nested, "no nested call was made"
for a, b in ((outer, live), (nested[0], live), (outer, nested[0])):
    assert not np.shares_memory(a, b), "a buffer in use was handed out again"
slot = _upstream._slot((4,), "float32")   # (and the upstream tables' lock, held by this thread)
with _upstream._inside, _upstream._lock:
    assert _upstream._slot((4,), "float32")[2] is None
print("done")
"""


def test_a_call_nested_in_the_pools_scan_takes_fresh_memory():
    """A signal handler's call on a thread inside the gradient pool's lock: with a
    plain lock it waited for ever; with a reentrant one (tried) it changed the
    pool in the middle of the outer call's scan, which then handed out a buffer
    still in use (a review: 171 of 1.28M calls under a timer). It now takes
    fresh memory, and the upstream gradients' table is left alone."""
    import subprocess
    import sys
    pytest.importorskip("torch")
    run = subprocess.run([sys.executable, "-c", _NESTED_CALLS], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "done", run.stderr[-2000:]
