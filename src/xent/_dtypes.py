"""dtype rules: which dtypes each argument accepts and where arithmetic happens.

TensorFlow's ops take logits in float16, bfloat16, float32 or float64 and
integer labels in int32 or int64. xent computes half precision in float32 and
rounds once at the end; float64 stays float64.
"""
import collections.abc
import math
import sys

import numpy as np

from xent.errors import InvalidDTypeError

FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
LABEL_NAMES = ("int32", "int64")
HALF_NAMES = ("float16", "bfloat16")

# The least float64 that rounds to float32's inf: its largest finite value plus half a step.
FLOAT32_OVERFLOW = 3.4028235677973366e38


def bfloat16():
    """The bfloat16 dtype from `ml_dtypes` (imported on first use)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def numpy_dtype(name):
    """The NumPy dtype called `name` (``"bfloat16"`` is `ml_dtypes`')."""
    return bfloat16() if name == "bfloat16" else np.dtype(name)


def to_array(x, name="input", dtype=None):
    """Convert `x` to an ndarray the way `tf.convert_to_tensor` would.

    Arrays, NumPy scalars and objects with a ``dtype`` keep their dtype.
    Python numbers and sequences of them (lists, tuples, ranges, ...) take
    TensorFlow's (`_python_dtype`; a value float32 or int64 cannot hold raises
    TF's ValueError naming `name`), or `dtype` where given (`_as_dtype`, as
    ``convert_to_tensor(x, dtype=...)``: a float dtype holds every number,
    those past its range as infinities). A ragged nested list raises
    ValueError, and anything that is not numbers (strings, dicts, None,
    objects) InvalidDTypeError, each naming the argument `name` (`numbers`),
    before NumPy or a framework sees it. Big-endian data (from a file, say)
    is converted to native byte order, as TensorFlow reads it.
    """
    if dtype is None and _plain_scalar(x):
        return np.array(x, np.float32 if type(x) is float else np.int32)
    if dtype is not None and is_python_numbers(x):
        return _as_dtype(x, numpy_dtype(dtype), name)
    arr = numbers(x, name)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not is_python_numbers(x):
        return arr
    return _python_dtype(arr, x, name)


def _as_dtype(x, dtype, name):
    """Python numbers `x` in `dtype`, as ``tf.convert_to_tensor(x, dtype=...)``: a
    float dtype holds every number, those past its range as infinities
    (Keras' ``sample_weight=1e39`` is inf; an integer past int64, which NumPy
    holds as an object, is read as float64 first: ``2**70`` is 1.18e21).
    Complex values are left for the caller to refuse."""
    floating = dtype.kind == "f" or _is_ml_dtype(dtype)
    arr = numbers(x, name) if not floating else _big_integers_as_floats(x, name)
    if arr.dtype.kind == "c" or arr.dtype == dtype:
        return arr
    if not floating:
        return _checked_cast(arr, dtype, name)
    with np.errstate(over="ignore", invalid="ignore"):
        return arr.astype(dtype)


def _big_integers_as_floats(x, name):
    """`numbers(x, name)`, but where NumPy holds Python numbers as objects because an
    integer is past int64 (every element an int, float or bool, Python's or NumPy's), float64."""
    try:
        raw = np.asarray(x)
    except ValueError:
        return numbers(x, name)   # (ragged: its error)
    if raw.dtype == object and raw.size and all(
            isinstance(v, (int, float, np.integer, np.floating, np.bool_)) for v in raw.flat):
        return raw.astype(np.float64)   # (Python bools are ints)
    return check_numbers(raw, name, x)


def _plain_scalar(x):
    """Whether `x` is a Python float that float32 holds (or NaN, or an inf) or a
    Python int that int32 holds: the common scalars (a default weight of 1.0),
    converted without the general path's sequence rules."""
    if type(x) is float:
        return not FLOAT32_OVERFLOW <= abs(x) < math.inf
    return type(x) is int and -2 ** 31 <= x < 2 ** 31


def is_python_numbers(x):
    """Whether `x` is a Python number or sequence, which TF converts by its own
    rules: anything without a ``dtype`` of its own (not an array, a NumPy
    scalar or a framework tensor)."""
    if isinstance(x, (np.ndarray, np.generic)):   # (first: NumPy's float64 is a float)
        return False
    if isinstance(x, (bool, int, float, complex, list, tuple)):   # (torch.compile's symbolic
        return True                                                 # numbers have no hasattr)
    return not hasattr(x, "dtype")


def _python_dtype(arr, x, name):
    """`arr`, NumPy's reading of the Python number or sequence `x`, in TF's dtype.

    Integers (any NumPy integer type too) become int32, or int64 if one does
    not fit; floats take the dtype of the first element when that is a NumPy
    float, else float32. Raises TF's ValueError for an integer past int64, a
    finite float past the dtype's largest, or a bool followed by numbers.
    """
    first = _first_element(x)
    if isinstance(first, (bool, np.bool_)) and arr.dtype.kind != "b":
        # (TF's dtype is its first element's: bool, then a number is "mixed"; a
        # number first takes a later bool as that number's type, as NumPy does)
        raise ValueError(f"Can't convert Python sequence with mixed types to Tensor: `{name}` "
                         f"starts with a bool and holds numbers; received {_short(x)}")
    if arr.dtype.kind == "f" and not _is_float(first) and _integral(arr) and not _holds_a_float(x):
        arr = _exact_integers(x, name)   # (NumPy made uint64 beside signed ints, or ints past int64, floats)
    kind = arr.dtype.kind
    if kind in "iu":
        if arr.size == 0:
            return arr.astype(np.int32)
        low, high = int(arr.min()), int(arr.max())
        if low < -2 ** 63 or high >= 2 ** 63:
            _refuse_integers(high if high >= 2 ** 63 else low, name)
        return arr.astype(np.int32 if -2 ** 31 <= low and high < 2 ** 31 else np.int64)
    if kind != "f" and not _is_ml_dtype(arr.dtype):
        return arr   # (bool; complex)
    floating = isinstance(first, np.floating) or (isinstance(first, np.generic) and _is_ml_dtype(first.dtype))
    return _checked_cast(arr, first.dtype if floating else np.dtype(np.float32), name)


def _is_float(value):
    """Whether `value`, a sequence's first element, is a float: then the
    sequence holds one, and NumPy's float array is no reading of integers."""
    return isinstance(value, (float, np.floating)) or (
        isinstance(value, np.generic) and _is_ml_dtype(value.dtype))


def _is_ml_dtype(dtype):
    """Whether `dtype` is one of ml_dtypes' (bfloat16, ...)."""
    return dtype.kind == "V" and dtype.type.__module__ == "ml_dtypes"


def _checked_cast(arr, dtype, name):
    """`arr` cast to `dtype`; TF's ValueError where a finite value becomes inf."""
    if arr.dtype == dtype:
        return arr
    with np.errstate(over="ignore", invalid="ignore"):
        cast = arr.astype(dtype)
    if (dtype.kind == "f" or _is_ml_dtype(dtype)) and np.isinf(cast).any():   # (rare: then look closer)
        overflowed = np.isinf(cast) & np.isfinite(arr)
        if overflowed.any():
            raise ValueError(f"Can't convert Python sequence with a value out of range for "
                             f"{dtype.name}: `{name}` holds {float(arr[overflowed][0])!r}")
    return cast


def _integral(arr):
    """Whether every value of float array `arr` is a whole number (none: False)."""
    return arr.size > 0 and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.trunc(arr)))


def _first_element(x):
    """The first number of a (nested) sequence `x`, or None if it holds none."""
    while _is_sequence(x):
        if not len(x):
            return None
        x = x[0]
    if isinstance(x, np.ndarray):
        return x.reshape(-1)[0] if x.size else None
    return x


def _is_sequence(x):
    """A Python sequence NumPy reads element by element (not a string)."""
    return isinstance(x, (list, tuple)) or (   # (the common case first: the ABC check is slower)
        isinstance(x, collections.abc.Sequence) and not isinstance(x, (str, bytes)))


def _holds_a_float(x):
    """Whether the Python number or (nested) sequence `x` holds a float (a Python
    or NumPy one, or an array of floats); called where its values are whole."""
    if _is_sequence(x):
        return any(_holds_a_float(item) for item in x)
    if isinstance(x, (np.ndarray, np.generic)):
        return x.dtype.kind not in "biu"
    return not isinstance(x, int)


def _exact_integers(x, name):
    """The integers of `x` as int64, exactly (NumPy read them as float64)."""
    values = np.array(x, dtype=object)
    flat = [int(v) for v in values.reshape(-1)]
    low, high = min(flat), max(flat)
    if low < -2 ** 63 or high >= 2 ** 63:
        _refuse_integers(high if high >= 2 ** 63 else low, name)
    return np.array(flat, np.int64).reshape(values.shape)


def _refuse_integers(value, name):
    """TF's ValueError for a Python integer past int64."""
    raise ValueError(f"Can't convert Python sequence with out-of-range integer to Tensor: "
                     f"`{name}` holds an integer {value} beyond int64")


def numbers(x, name):
    """``np.asarray(x)``, its dtype kept, where `x` holds numbers (`check_numbers`); a
    ragged nested list raises TensorFlow's ValueError, naming the argument `name`."""
    try:
        arr = np.asarray(x)
    except ValueError:
        raise ValueError(f"Can't convert non-rectangular Python sequence to Tensor: `{name}` "
                         f"must be rectangular (rows of one length); received "
                         f"{_short(x)}") from None
    except NotImplementedError as error:   # (TF's "Cannot convert a symbolic tf.Tensor",
        if "tensorflow" not in sys.modules or "symbolic" not in str(error):   # in a list too)
            raise
        raise TypeError(f"`{name}` is a symbolic TensorFlow tensor ({_short(x)}): xent computes "
                        "on NumPy arrays, torch tensors and JAX arrays, and reads eager "
                        "TensorFlow tensors as NumPy, with no TensorFlow gradient; inside "
                        "tf.function or a Keras model on the TensorFlow backend, use "
                        "TensorFlow's or Keras' own losses") from None
    if arr.dtype == object and arr.size and all(isinstance(v, (int, np.integer))
                                                for v in arr.flat):
        # NumPy holds integers as objects when one is past uint64 (``[2**70, 1]``):
        # TF's out-of-range ValueError, from the range check of exact integers.
        _exact_integers(arr, name)
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


def gradient_rounded_once(kind, dtype_name):
    """Whether TF rounds the logits' gradient of a `kind` ("sparse"/"dense") loss on
    `dtype_name` logits once, after the upstream gradient's product: it computes
    float16 losses, and bfloat16 dense ones, in float32 (``precise_logits``);
    its sparse op keeps bfloat16, rounding the backprop, then that product."""
    return dtype_name == "float16" or (dtype_name == "bfloat16" and kind == "dense")


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
