"""Whether sparse labels lie in ``[0, C)``: one compiled pass, before any kernel runs.

The check behind TensorFlow's out-of-range error (`xent._validate` words the
error). Compiled, it costs 0.2 us on 32 labels where NumPy's min and max take
2 us (Zen 4): a share of a small call that the kernel itself hardly exceeds.
"""
import numpy as np
from numba import njit

from xent._fused._llvm import vectorise_wide
from xent._fused._options import KERNEL

__all__ = ["labels_fit"]


@njit(**KERNEL)
def labels_fit(labels, num_classes):
    """True when every entry of the 1-D int array `labels` is in ``[0, num_classes)``.

    Each label is compared as unsigned (a negative one becomes larger than any
    class count), and the comparisons are or-ed without a branch, so the loop
    vectorises.
    """
    vectorise_wide()
    limit = np.uint64(num_classes)
    outside = False
    for value in labels:
        outside |= np.uint64(value) >= limit
    return not outside
