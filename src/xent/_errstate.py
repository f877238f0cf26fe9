"""NumPy's floating-point error state, set aside while xent computes.

TensorFlow gives inf and NaN silently: a NaN row, a weight past float16's
range, a float32 result that rounds to 0 in float16. xent's NumPy arithmetic
(the final cast to half precision, the weights' product, the NumPy kernels'
exps) would instead follow the caller's NumPy settings: RuntimeWarnings by
default for overflow and invalid values, and under ``np.seterr(all="raise")``
a FloatingPointError, possibly after part of an in-place gradient was
written. Each public function runs under ``np.errstate(all="ignore")``.

torch.compile's dynamo cannot trace ``np.errstate``; while it traces, no NumPy
arithmetic runs either, so the state is left as it is.
"""
import functools
import sys

import numpy as np

__all__ = ["quiet"]


def quiet(fn):
    """`fn`, run with NumPy's floating-point errors ignored (not while dynamo traces)."""
    @functools.wraps(fn)
    def run_quietly(*args, **kwargs):
        if _dynamo_tracing():
            return fn(*args, **kwargs)
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return run_quietly


def _dynamo_tracing():
    """Whether torch.compile is tracing this call (torch is not imported for it)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()
