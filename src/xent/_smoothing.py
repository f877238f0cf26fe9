"""Dense targets for the kernels: label smoothing, and the dtype they reach the kernel in.

TensorFlow (v1 `softmax_cross_entropy`, Keras `categorical_crossentropy`)
smooths one-hot targets as ``labels * (1 - ls) + ls / C`` in the logits'
dtype; xent does it in the accumulator dtype (float32 for half precision),
where ``ls / C`` stays exact to float32, and with one new array, not three:
for bfloat16 logits of N x C, three float32 temporaries were 6x the logits.
"""
import numpy as np

from xent import _dtypes

__all__ = ["smooth", "kernel_targets"]


def smooth(be, labels, label_smoothing, dtype):
    """``labels * (1 - ls) + ls / C`` in the accumulator dtype of `dtype` (the
    logits' dtype name); `labels` ``[..., C]`` is not modified.

    No classes (C = 0): the empty labels as they are (TF's ls / 0 is inf
    times nothing).
    """
    smoothed = be.astype(labels, _dtypes.accumulator_name(dtype))
    scale, shift = 1.0 - label_smoothing, label_smoothing / max(labels.shape[-1], 1)
    if be.name != "numpy":
        return smoothed * scale + shift
    if np.may_share_memory(smoothed, labels):   # (the caller's memory: no cast was needed)
        smoothed = smoothed * scale
    else:
        smoothed *= scale   # (the cast's fresh array)
    smoothed += shift
    return smoothed


def kernel_targets(be, labels, dtype):
    """Dense `labels` in the dtype the kernel reads for logits of `dtype`.

    Labels already in the logits' dtype stay as they are, on every backend:
    the kernels widen each row to float32 as they read it, and the torch and
    JAX gradient code promotes half-precision labels to the accumulator dtype
    op by op, where a float32 copy would be twice half-precision logits.
    Other labels are cast to the accumulator dtype.
    """
    if be.dtype_name(labels) == dtype:
        return labels
    return be.astype(labels, _dtypes.accumulator_name(dtype))
