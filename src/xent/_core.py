"""The one computation path beneath every public function.

`sparse_xent` and `dense_xent` take validated arrays of any rank, flatten them
to ``[rows, C]``, run one kernel that yields the per-row loss (and, when asked,
the gradient), and give the results back in the input's shape. The kernel is
the fused one from `_fused` when its compiler is available, else the NumPy
reference in `_kernels`.
"""
import contextlib
import math
import os

import numpy as np

from xent import _kernels, _threads, _validate
from xent._warnings import warn

_state = {"kernels": None}
# One thread chooses: threads making their first calls at once had each tried
# the import, and one whose wait ended in the other's failed import warned a
# second time, of the wrong cause ("cannot import name '_fused'").
_choice_lock = _threads.fork_safe_lock()
# Marks the choosing thread: a call made meanwhile (a signal handler's) runs on the
# NumPy kernels, the choice (an import) being half-made.
_choosing = _threads.ThreadMark()
KERNEL_NAMES = ("fused", "numpy")


def _load_fused(explicit):
    """`xent._fused`; if numba cannot load it, raise (`explicit`) or warn once and
    return the NumPy reference kernels."""
    _threads.environment_threads()   # a bad NUMBA_NUM_THREADS fails numba's import
    try:
        from xent import _fused
    except ImportError as exc:
        if explicit:
            raise ImportError(
                f"xent: the fused kernels cannot load: {exc}. They need numba with LLVM "
                "17+ and its JIT on; or choose the NumPy kernels: "
                "xent.set_kernels('numpy')") from exc
        warn(f"xent: fused kernels unavailable ({exc}); using the NumPy "
             "reference kernels", RuntimeWarning)
        return _kernels
    return _fused


def _check_name(name, where):
    """Raise ValueError unless `name` is one of `KERNEL_NAMES`."""
    if name not in KERNEL_NAMES:
        raise ValueError(f"{where} must be 'fused' or 'numpy'; received {name!r}")


def kernels():
    """The kernel module in use: `xent._fused` or `xent._kernels`.

    Chosen by `set_kernels`, else by ``XENT_KERNELS`` (``fused`` or
    ``numpy``), else the fused kernels when numba loads them.
    """
    if _state["kernels"] is None:
        if _choosing:
            return _kernels
        with _choosing, _choice_lock:
            if _state["kernels"] is None:
                env = kernel_name_from_environment()
                _state["kernels"] = (_kernels if env == "numpy"
                                     else _load_fused(explicit=env == "fused"))
    return _state["kernels"]


def kernel_name_from_environment():
    """``XENT_KERNELS``, lower-cased: ``"fused"``, ``"numpy"``, or ``""`` where
    unset; ValueError naming the variable for anything else."""
    env = os.environ.get("XENT_KERNELS", "").strip().lower()
    if env:
        _check_name(env, "the environment variable XENT_KERNELS")
    return env


def set_kernels(name):
    """Choose the kernels every xent function runs on, for the whole process.

    Args:
      name: (case and surrounding spaces aside, as in ``XENT_KERNELS``)
        ``"fused"``: the numba kernels (the default; compiled on first
        use and cached on disk where numba can write). ``"numpy"``: the NumPy reference kernels
        (no compile; several times slower on large inputs; the choice where
        numba cannot be installed, or to compare against the reference).

    Raises:
      TypeError: `name` is not a string.
      ValueError: `name` is neither.
      ImportError: ``"fused"`` where numba cannot load the kernels.

    ``XENT_KERNELS=numpy`` (or ``fused``) in the environment makes the same
    choice before the first call.
    """
    if not isinstance(name, str):
        raise TypeError(f"the name given to xent.set_kernels must be the string 'fused' or "
                        f"'numpy'; received {name!r} of type {type(name).__name__}")
    choice = name.strip().lower()   # (as ``XENT_KERNELS`` is read)
    if choice not in KERNEL_NAMES:
        _check_name(name, "the name given to xent.set_kernels")
    _state["kernels"] = _kernels if choice == "numpy" else _load_fused(explicit=True)


@contextlib.contextmanager
def using_kernels(name):
    """Run the body on kernels `name` (``"fused"``/``"numpy"``), then go back to the previous ones."""
    before = _state["kernels"]
    set_kernels(name)
    try:
        yield
    finally:
        _state["kernels"] = before


def get_kernels():
    """The name of the kernels in use: ``"fused"`` or ``"numpy"``."""
    return "numpy" if kernels() is _kernels else "fused"


def _rows(shape):
    """Number of rows once every axis but the last is flattened."""
    return math.prod(shape[:-1])


def _grad_buffer(grad, logits2d):
    """The ``[rows, C]`` array the kernel writes the gradient into, or None.

    None/False: no gradient. True: a new array. An array: a view of it, with no
    allocation; only where its strides allow no ``[rows, C]`` view, a new array
    that `_gradient_result` copies back.
    """
    if grad is None or grad is False:
        return None
    if grad is True:
        return np.empty(logits2d.shape, logits2d.dtype)
    if grad.shape == logits2d.shape:   # (a small call's fixed cost: no reshape, no flags)
        return grad
    view = grad.reshape(logits2d.shape)
    if view.size and not grad.flags.c_contiguous and not np.may_share_memory(view, grad):
        return np.empty(logits2d.shape, grad.dtype)   # (reshaping made a copy)
    return view


def _gradient_result(grad, out, shape):
    """What the caller gets back: its own `grad` array (filled), else `out` in `shape`."""
    if out is None:
        return None
    if grad is True:
        return out.reshape(shape)
    if out is grad:
        return grad
    if not grad.flags.c_contiguous and not np.may_share_memory(out, grad):
        grad[...] = out.reshape(grad.shape)
    return grad


def sparse_xent(labels, logits, grad=None, weights=None):
    """Per-row sparse softmax cross-entropy, and optionally its gradient.

    Args:
      labels: int array ``[d0..d(r-1)]``; checked here against ``[0, C)``.
      logits: float array ``[d0..d(r-1), C]``, ``C >= 1``.
      grad: None for no gradient, True to allocate one, or an array of the
        logits' shape to write it into (may be `logits` itself).
      weights: optional float64 ``[d0..d(r-1)]``: each row's gradient times its
        weight, in the kernel's one pass (each entry rounded once).

    Returns:
      ``(loss, grad)``: loss ``[d0..d(r-1)]`` in float32 (float64 for float64
      logits); grad ``softmax(logits) - one_hot(labels)`` (times the weights)
      in its buffer's dtype, shaped like `logits`, or None.
    """
    num_classes = logits.shape[-1]
    run = kernels()
    flat = labels if labels.ndim == 1 else labels.reshape(-1)
    if not run.labels_fit(flat, num_classes):
        _validate.labels_in_range(labels, num_classes)   # (raises TF's error)
        raise AssertionError("xent: the label checks disagree")
    x2 = logits if logits.ndim == 2 else logits.reshape(_rows(logits.shape), num_classes)
    out = _grad_buffer(grad, x2)
    loss, _ = run.sparse_rows(x2, flat, out, None if weights is None else weights.reshape(-1))
    return (loss if labels.ndim == 1 else loss.reshape(labels.shape),
            _gradient_result(grad, out, logits.shape))


def dense_xent(labels, logits, grad=None, weights=None):
    """Per-row softmax cross-entropy against target distributions.

    Args:
      labels: float array; flattened to 2-D it broadcasts with the flattened
        logits (see `_validate.dense_2d_shapes`).
      logits: float array ``[d0..d(r-1), C]``.
      grad: as in `sparse_xent`, of the broadcast rows' shape.
      weights: optional float64 of the loss's shape: each row's gradient times
        its weight, in the kernel's one pass (as in `sparse_xent`).

    Returns:
      ``(loss, grad)``: loss ``[d0..d(r-1)]`` (``[rows]`` when one row of
      logits was broadcast against many label rows) in the accumulator dtype;
      grad ``softmax(logits) - labels`` (times the weights), or None.
    """
    x_shape, y_shape, shape, lead = _validate.dense_layout(logits.shape, labels.shape)
    x2, y2 = logits.reshape(x_shape), labels.reshape(y_shape)
    if shape != x_shape:
        x2 = np.ascontiguousarray(np.broadcast_to(x2, shape))
    out = _grad_buffer(grad, x2)
    loss, _ = kernels().dense_rows(x2, np.broadcast_to(y2, shape), out,
                                   None if weights is None else weights.reshape(-1))
    return loss.reshape(lead), _gradient_result(grad, out, lead + shape[1:])
