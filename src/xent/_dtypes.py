"""dtype rules: which dtypes each argument accepts and where arithmetic happens.

TensorFlow's ops take logits in float16, bfloat16, float32 or float64 and
integer labels in int32 or int64. xent computes half precision in float32 and
rounds once at the end; float64 stays float64.
"""
import numpy as np

from xent.errors import InvalidDTypeError

FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
LABEL_NAMES = ("int32", "int64")
HALF_NAMES = ("float16", "bfloat16")


def bfloat16():
    """The bfloat16 dtype from `ml_dtypes` (imported on first use)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def to_array(x, name="input"):
    """Convert `x` to an ndarray the way `tf.convert_to_tensor` would.

    Arrays and NumPy scalars keep their dtype. Python floats (and lists of them)
    become float32 and Python ints int32 (int64 if they do not fit), as in TF.
    A ragged nested list raises ValueError, and anything that is not numbers
    (strings, dicts, None, objects) InvalidDTypeError, each naming the
    argument `name` (`numbers`), before NumPy or a framework sees it.
    Big-endian data (from a file, say) is converted to native byte order, as
    TensorFlow reads it.
    """
    arr = numbers(x, name)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if isinstance(x, (np.ndarray, np.generic)):
        return arr
    if arr.dtype == np.float64:
        return arr.astype(np.float32)
    if arr.dtype.kind == "i":
        info = np.iinfo(np.int32)
        fits = arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max)
        return arr.astype(np.int32 if fits else np.int64)
    return arr


def numbers(x, name):
    """``np.asarray(x)``, its dtype kept, where `x` holds numbers (`check_numbers`); a
    ragged nested list raises TensorFlow's ValueError, naming the argument `name`."""
    try:
        arr = np.asarray(x)
    except ValueError:
        raise ValueError(f"Can't convert non-rectangular Python sequence to Tensor: `{name}` "
                         f"must be rectangular (rows of one length); received "
                         f"{_short(x)}") from None
    return check_numbers(arr, name, x)


def check_numbers(arr, name, given):
    """`arr` itself if its dtype holds numbers (bool, int, float, complex, or an
    `ml_dtypes` float such as bfloat16); else InvalidDTypeError naming `name`
    and showing `given`, what the caller passed."""
    dtype = arr.dtype
    if dtype.kind in "biufc" or (dtype.kind == "V" and dtype.type.__module__ == "ml_dtypes"):
        return arr
    raise InvalidDTypeError(f"`{name}` must hold numbers; received {_short(given)} "
                            f"(dtype {dtype.name})")


def _short(x, limit=80):
    """``repr(x)``, cut to `limit` characters."""
    text = repr(x)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def name_of(dtype):
    """The name of `dtype`, however spelled: a name (``"float64"``), a dtype object
    (NumPy's, TF's, torch's ``torch.float64``) or a scalar type (``np.float64``,
    ``ml_dtypes.bfloat16``, ``jnp.float32``); else its `str`."""
    if isinstance(dtype, type):
        try:
            return np.dtype(dtype).name
        except TypeError:
            return str(dtype)
    return (getattr(dtype, "name", None) or str(dtype)).removeprefix("torch.")


_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)


def accumulator(dtype):
    """The dtype arithmetic runs in: float64 for float64 input, else float32."""
    return _FLOAT64 if np.dtype(dtype) == _FLOAT64 else _FLOAT32


def accumulator_name(dtype_name):
    """`accumulator` by dtype name: ``"float64"`` stays, every other float → ``"float32"``."""
    return "float64" if dtype_name == "float64" else "float32"


def check_float(dtype_name, arg):
    """Raise `InvalidDTypeError` unless `dtype_name` is a supported logits dtype."""
    if dtype_name not in FLOAT_NAMES:
        raise InvalidDTypeError(
            f"`{arg}` must have dtype float16, bfloat16, float32 or float64; "
            f"received dtype {dtype_name}")


def check_labels_int(dtype_name, arg="labels"):
    """Raise `InvalidDTypeError` unless `dtype_name` is int32 or int64."""
    if dtype_name not in LABEL_NAMES:
        raise InvalidDTypeError(
            f"`{arg}` must have dtype int32 or int64; received dtype {dtype_name}")


def check_real(dtype_name, arg):
    """Raise `InvalidDTypeError` for a complex `dtype_name`: casting it to a float would
    drop the imaginary part (TensorFlow does, with NumPy's ComplexWarning as the only sign)."""
    if dtype_name.startswith("complex"):
        raise InvalidDTypeError(
            f"`{arg}` must be real; received dtype {dtype_name}, whose imaginary part "
            "would be dropped")
