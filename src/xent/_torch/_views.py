"""CPU tensors and NumPy arrays as views of one another, and the accumulator dtypes.

The kernels run on NumPy arrays; a CPU tensor reaches them as a zero-copy
view (bfloat16 through an int16 view, as `ml_dtypes.bfloat16`), and their
results come back as tensors over the same memory. Large results come from
xent's pool of buffers (`xent._buffers`).
"""
import ml_dtypes
import numpy as np
import torch

from xent import _buffers, _dtypes


_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def numpy_view(t):
    """A NumPy array sharing CPU tensor `t`'s memory (bfloat16 as `ml_dtypes.bfloat16`).

    ``numpy(force=True)`` detaches in C++: 1.3 us against 2.4 for
    ``detach().numpy()`` (and 0.7 for ``numpy()`` where there is no graph),
    a share of a small call's fixed cost.

    A tensor with its negative bit set (``z.conj().imag``: -1 times its memory,
    lazily) is made real first, a copy (torch's numpy() refuses it): only in
    the exception's path, so the others pay nothing for the check."""
    try:
        if t.dtype == torch.bfloat16:
            return t.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy(force=True) if t.requires_grad else t.numpy()
    except RuntimeError:
        if not t.is_neg():
            raise
        return numpy_view(t.detach().resolve_neg())


def own_tensor(a):
    """A CPU tensor sharing C-contiguous, writable `a`'s memory (bfloat16 through an
    int16 view), with no checks: for arrays xent has just made (0.55 against 0.8
    us for `from_numpy`; a 32x1000 torch step makes two)."""
    if a.dtype == _BFLOAT16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def from_numpy(a):
    """A CPU tensor sharing `a`'s memory (copied first if strided backwards or read-only)."""
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = a.copy()
    return own_tensor(a)


def empty_numpy(a):
    """An uninitialised NumPy array like `a` (a logits-sized result on the CPU), from
    xent's pool of large buffers (`xent._buffers`): a warm training step
    reuses the memory of the last one's gradient once nothing holds it.

    Fresh memory comes from NumPy, which asks Linux for huge pages for large
    arrays (madvise); torch's allocator does not: the first write into a
    fresh 1 GB gradient (page faults) took 90-100 ms from np.empty against
    270-320 ms from torch.empty_like."""
    return _buffers.empty_like(a)


def accumulator_dtype(dtype):
    """The torch dtype that `dtype` arithmetic runs and accumulates in
    (`_dtypes.accumulator_name`: float64 stays, every other float → float32)."""
    return getattr(torch, _dtypes.accumulator_name(str(dtype).removeprefix("torch.")))


def numpy_accumulator(dtype):
    """`accumulator_dtype` of torch `dtype` as a NumPy dtype (for NumPy work on its data)."""
    return np.dtype(_dtypes.accumulator_name(str(dtype).removeprefix("torch.")))


def accumulate(logits):
    """`logits` in the accumulator dtype (`accumulator_dtype`)."""
    return logits.to(accumulator_dtype(logits.dtype))
