"""Shape and dtype checks of the large-vocabulary functions, for every array type.

They read only shapes and dtype names, so NumPy arrays, torch tensors and JAX
arrays (traced or not) go through the same checks, before any work.
"""
from xent._dtypes import FLOAT_NAMES, LABEL_NAMES
from xent.errors import InvalidDTypeError

__all__ = ["cross_entropy_shapes", "linear_shapes", "widen_target"]


def _float(name, dtype_name):
    if dtype_name not in FLOAT_NAMES:
        raise InvalidDTypeError(
            f"{name} must have a floating dtype ({', '.join(FLOAT_NAMES)}); received {dtype_name}")


# torch's F.cross_entropy also takes uint8 class indices (for [N, C] logits; xent on
# any shape, its class axis last); the functions widen them to int32 (`widen_target`).
TARGET_NAMES = (*LABEL_NAMES, "uint8")


def _target(shape, dtype_name, expected):
    if dtype_name not in TARGET_NAMES:
        raise InvalidDTypeError(
            f"target must hold class indices as int32, int64 or uint8; received dtype {dtype_name}")
    if tuple(shape) != tuple(expected):
        raise ValueError(f"target must have shape {list(expected)} (one class index per token); "
                         f"received shape {list(shape)}")


def cross_entropy_shapes(logits_shape, logits_dtype, target_shape, target_dtype):
    """Check ``logits [..., V]`` (V >= 1, float) and ``target [...]`` (int32/int64/uint8)."""
    _float("logits", logits_dtype)
    if len(logits_shape) < 1 or logits_shape[-1] < 1:
        raise ValueError(f"logits must have shape [..., V] with V >= 1 classes on the last "
                         f"axis; received shape {list(logits_shape)}")
    _target(target_shape, target_dtype, logits_shape[:-1])


def linear_shapes(input_shape, input_dtype, weight_shape, weight_dtype,
                  target_shape, target_dtype, bias_shape=None, bias_dtype=None):
    """Check ``input [..., H]``, ``weight [V, H]``, ``bias [V]`` (one float dtype) and ``target [...]``."""
    _float("input", input_dtype)
    if len(input_shape) < 1 or input_shape[-1] < 1:
        raise ValueError(f"input must have shape [..., H] with H >= 1 features on the last "
                         f"axis; received shape {list(input_shape)}")
    if len(weight_shape) != 2:
        raise ValueError(f"weight must be 2-D, [V, H]; received shape {list(weight_shape)}")
    if weight_dtype != input_dtype:
        raise InvalidDTypeError(f"weight must have input's dtype {input_dtype}; received {weight_dtype}")
    if weight_shape[1] != input_shape[-1]:
        raise ValueError(f"weight's second dimension H must equal input's last dimension "
                         f"{input_shape[-1]}; received weight shape {list(weight_shape)}")
    if weight_shape[0] < 1:
        raise ValueError(f"weight must have V >= 1 rows (classes); received shape {list(weight_shape)}")
    if bias_shape is not None:
        if tuple(bias_shape) != (weight_shape[0],):
            raise ValueError(f"bias must have shape [V] = [{weight_shape[0]}]; "
                             f"received shape {list(bias_shape)}")
        if bias_dtype != input_dtype:
            raise InvalidDTypeError(f"bias must have input's dtype {input_dtype}; received {bias_dtype}")
    _target(target_shape, target_dtype, input_shape[:-1])


def widen_target(backend, target):
    """`target` (checked) as int32 if it holds uint8, else as it is: the kernels
    and the torch and JAX paths take int32 and int64 class indices."""
    if backend.dtype_name(target) == "uint8":
        return backend.astype(target, "int32")
    return target
