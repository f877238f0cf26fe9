"""Array backends: the caller's array type decides which one runs.

A backend converts inputs, runs the per-row kernel (differentiably, for the
frameworks) and gives back arrays of the caller's type. The faces and the
reduction code speak only to a backend's small interface:

  - ``asarray(x)``            convert like ``tf.convert_to_tensor``
  - ``dtype_name(x)``         ``"float32"``, ``"bfloat16"``, ``"int64"``, ...
  - ``astype(x, name)``       cast to a dtype given by name
  - ``xp``                    a NumPy-like namespace for elementwise ops and sums
  - ``size(x)``               number of elements
  - ``sparse_xent(labels, logits)`` / ``dense_xent(labels, logits)``
                              per-row loss in the accumulator dtype
                              (differentiable in the frameworks)
  - ``sparse_loss_and_grad(labels, logits, grad)`` / ``dense_loss_and_grad``
                              the raw ops' ``(loss, backprop)``; `grad` as
                              in `_core` (frameworks take only True)
  - ``stop_gradient(x)``      `x`, cut from the autograd graph
  - ``finish(x)``             the value handed back to the caller

Only NumPy lives here. PyTorch and JAX backends are chosen by the arrays'
types, and their modules are imported only when such an array arrives (a
framework that is not already in `sys.modules` cannot have made the array).
Other arguments (NumPy arrays, lists, scalars) are converted to the
framework's type; torch tensors and JAX arrays in one call are refused.
"""
import sys

import numpy as np

from xent import _core, _dtypes


_DTYPE_NAMES = {}


class NumpyBackend:
    """NumPy arrays in, NumPy arrays out."""

    name = "numpy"
    xp = np

    @staticmethod
    def compiling():
        """Whether a graph compiler is tracing this call (torch.compile's dynamo)."""
        return False

    @staticmethod
    def asarray(x, name="input"):
        """Convert as `tf.convert_to_tensor` does (see `_dtypes.to_array`); errors name `name`."""
        return _dtypes.to_array(x, name)

    @staticmethod
    def dtype_name(x):
        """The dtype's name, e.g. ``"bfloat16"`` (NumPy builds ``dtype.name`` anew at
        each call, 1-3 us; a small call asks for it several times)."""
        dtype = x.dtype if isinstance(x, (np.ndarray, np.generic)) else np.asarray(x).dtype
        name = _DTYPE_NAMES.get(dtype)
        if name is None:
            name = _DTYPE_NAMES.setdefault(dtype, dtype.name)
        return name

    @staticmethod
    def astype(x, name):
        """Cast `x` to the dtype called `name` (no copy if it already is)."""
        dtype = _dtypes.numpy_dtype(name)
        with np.errstate(over="ignore"):  # float32 -> float16 overflow is inf, silently, as in TF
            return np.asarray(x).astype(dtype, copy=False)

    @staticmethod
    def size(x):
        """Number of elements."""
        return np.size(x)

    @staticmethod
    def sparse_xent(labels, logits):
        """Per-row loss ``[d...]`` of `_core.sparse_xent`, accumulator dtype."""
        return _core.sparse_xent(labels, logits)[0]

    @staticmethod
    def dense_xent(labels, logits):
        """Per-row loss of `_core.dense_xent`, accumulator dtype."""
        return _core.dense_xent(labels, logits)[0]

    @staticmethod
    def sparse_loss_and_grad(labels, logits, grad=True):
        """``(loss, backprop)`` of `_core.sparse_xent`; `grad` True or an out-buffer."""
        return _core.sparse_xent(labels, logits, grad)

    @staticmethod
    def dense_loss_and_grad(labels, logits, grad=True):
        """``(loss, backprop)`` of `_core.dense_xent`; `grad` True or an out-buffer."""
        return _core.dense_xent(labels, logits, grad)

    @staticmethod
    def stop_gradient(x):
        """No gradients in NumPy: `x` itself."""
        return x

    @staticmethod
    def finish(x):
        """Return 0-d results as NumPy scalars, others as arrays."""
        return x[()] if isinstance(x, np.ndarray) and x.ndim == 0 else x


def _framework_backend(arrays):
    """The PyTorch or JAX backend if any of `arrays` belongs to one, else None.

    While torch.compile traces a call on tensors, nothing it would guard on and
    that could change later is read (`sys.modules` for JAX, the faces already
    imported): a JAX import, or xent's first eager call, after the trace had
    failed its guards and compiled the caller's whole graph again."""
    torch = sys.modules.get("torch")
    tensors = [a for a in arrays if isinstance(a, torch.Tensor)] if torch is not None else ()
    if tensors and torch.compiler.is_compiling():
        # (tensors skipped: dynamo cannot read the module of an nn.Parameter's type,
        # and linear_cross_entropy(h, head.weight, y) failed under fullgraph)
        if len(tensors) < len(arrays) and any(_jax_type(a) for a in arrays
                                              if not isinstance(a, torch.Tensor)):
            raise _mixed()
        return _import_framework_module("_torch").TorchBackend.for_tensors(tensors)
    jax = sys.modules.get("jax")
    # (all tensors: no jax.Array among them; skipping its ABC checks saves 1 us a call)
    has_jax = (jax is not None and len(tensors) < len(arrays)
               and any(isinstance(a, jax.Array) for a in arrays))
    if tensors and has_jax:
        raise _mixed()
    if tensors:
        return _framework_module("_torch").TorchBackend.for_tensors(tensors)
    if has_jax:
        return _framework_module("_jax").JaxBackend
    return None


def _mixed():
    """The error for torch tensors and JAX arrays in one call."""
    return TypeError("xent: got both torch.Tensor and jax.Array arguments; pass arrays of one "
                     "framework (NumPy arrays and Python numbers mix with either)")


def _jax_type(a):
    """Whether `a` is of a JAX type, by its type's module: no `sys.modules`
    lookup for torch.compile to guard on. (Python's and NumPy's own types
    first: dynamo cannot read a builtin type's module.)"""
    if a is None or isinstance(a, (bool, int, float, complex, list, tuple, np.ndarray, np.generic)):
        return False
    return type(a).__module__.startswith(("jax.", "jaxlib."))


# xent's framework faces once imported, by name ("_torch", "_jax"), for eager
# calls (torch.compile's traces import theirs: `_framework_backend`).
_FRAMEWORK_MODULES = {}


def _framework_module(name):
    """`xent._torch` or `xent._jax` ("_torch" or "_jax"), imported the first time it
    is asked for (an import statement on every call cost 0.5 us)."""
    module = _FRAMEWORK_MODULES.get(name)
    if module is None:
        module = _FRAMEWORK_MODULES[name] = _import_framework_module(name)
    return module


def _import_framework_module(name):
    """Import `xent._torch` or `xent._jax` by an import statement: when the first
    call on a tensor runs inside `torch.compile(fullgraph=True)`, dynamo
    traces this import, where it refuses `importlib.import_module` (a graph
    break, which fullgraph turns into an error)."""
    if name == "_torch":
        from xent import _torch
        return _torch
    from xent import _jax
    return _jax


def of(*arrays):
    """The backend for a call whose array arguments are `arrays`."""
    return _framework_backend(arrays) or NumpyBackend
