"""What `xent bench` times: the `Case`, its inputs, and xent's own cases."""
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

import xent
from xent import _core, _dtypes

MODES = ("loss", "grad", "grad_inplace")
MODE_TITLES = {"loss": "loss", "grad": "loss+grad", "grad_inplace": "loss+grad in place"}


@dataclass
class Case:
    """One thing to time: `run()` does one call and waits for its result."""

    name: str
    mode: str                          # one of MODES
    run: Callable[[], object]
    role: str = "peer"                 # "xent", "peer" or "floor"
    memory: str = "rss"                # "tracemalloc", "rss", "both" or "xla" (`_memory`)
    xla_bytes: Optional[int] = None
    extra_bytes: Optional[int] = None
    framework: bool = False            # run by torch, TensorFlow or JAX (see `_timing`)
    times: list = field(default_factory=list)
    floor_times: list = field(default_factory=list)   # the floor timed just before each call


def make_inputs(shape, dtype_name, seed=0):
    """Logits ``[N, C]`` (normal, scale 3) in `dtype_name` and int32 labels ``[N]``."""
    rng = np.random.default_rng(seed)
    dtype = _dtypes.numpy_dtype(dtype_name)
    logits = (rng.standard_normal(shape, np.float32) * 3).astype(dtype)
    return logits, rng.integers(0, shape[1], shape[0]).astype(np.int32)


def xent_cases(logits, labels):
    """xent's public functions, fused and on the NumPy reference kernels."""
    out, work = np.empty_like(logits), logits.copy()
    ops = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits
    calls = {
        "loss": lambda: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits),
        "grad": lambda: ops(logits, labels, backprop_out=out),
        "grad_inplace": lambda: ops(work, labels, backprop_out=work),
    }
    cases = [Case("xent", mode, call, "xent", "both") for mode, call in calls.items()]
    for mode in ("loss", "grad"):
        cases.append(Case("xent, NumPy kernels", mode, _with_reference(calls[mode]), "xent",
                          "tracemalloc"))
    return cases


def _with_reference(call):
    """`call` run on xent's NumPy reference kernels."""
    def run():
        with _core.using_kernels("numpy"):
            return call()
    return run
