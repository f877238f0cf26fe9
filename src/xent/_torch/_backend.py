"""The backend of torch tensors (`xent._backend`): what the faces call, on the tensors' device.

Each loss call goes to one of two places: the eager autograd Functions
(`xent._torch._eager`), or, where the call is captured by torch.compile,
runs under a torch.func transform or in forward mode (`graph_ops`), the
registered operators (`xent._torch._ops`); a torch.func transform inside
torch.compile, which ignores a Function's own backward, gets torch ops
instead (`xent._torch._traced`). A call no autograd mode can see skips
them all (`xent._torch._math.loss_and_backprop` alone).
"""
import torch

from xent import _dtypes, _validate
from xent._torch import _ops, _traced
from xent._torch._eager import DENSE_LOSS, SPARSE_LOSS, LossAndBackprop
from xent._torch._math import loss_and_backprop
from xent._torch._views import from_numpy


class _Namespace:
    """The NumPy-like calls of the faces and reductions (see `xent._backend`)."""

    where = staticmethod(torch.where)
    isnan = staticmethod(torch.isnan)
    real = staticmethod(torch.real)
    ones_like = staticmethod(torch.ones_like)
    zeros_like = staticmethod(torch.zeros_like)
    log = staticmethod(torch.log)
    moveaxis = staticmethod(torch.movedim)   # (torch.func.vmap has a rule for movedim only)
    reshape = staticmethod(torch.reshape)
    clip = staticmethod(torch.clamp)

    @staticmethod
    def sum(x, axis=None, keepdims=False):
        return torch.sum(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def expand_dims(x, axis):
        return torch.unsqueeze(x, axis)

    @staticmethod
    def squeeze(x, axis):
        return torch.squeeze(x, axis)


def graph_ops():
    """Whether to call the registered operator (`xent._torch._ops`) rather than the
    eager Functions (whose NumPy and numba calls neither dynamo nor torch.func
    can trace, and which have no forward mode): the call is being captured by
    torch.compile, runs under a torch.func transform, or inside a forward-mode
    level (``torch.autograd.forward_ad.dual_level``), where `FuncRows`' jvp serves;
    or `torch.jit.trace` records it (a NumPy call is recorded as a constant:
    the traced loss of other inputs was the traced inputs', an independent review)."""
    return (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or not _forward_mode_off() or torch.jit.is_tracing())


def _loss_only(outputs):
    """The loss of a `_ops` Function's outputs (`RowsLoss` gives it alone)."""
    return outputs[0] if isinstance(outputs, tuple) else outputs


def _wants_grad(logits):
    """Whether autograd will ask for the logits' gradient (decided before `apply`)."""
    return torch.is_grad_enabled() and logits.requires_grad


def _forward_mode_off():
    """Whether no forward-mode AD level is open. A call that no autograd mode can
    see (no tensor wants a gradient, and this) skips the Function (9 us); a
    dual tensor must reach a Function with a jvp (`graph_ops`)."""
    return getattr(torch.autograd.forward_ad, "_current_level", 0) < 0


def _dense_rows(labels, logits):
    """Labels and logits as broadcast ``[rows, C]`` views, and the loss's shape.

    `_validate.dense_layout` is the rule; expanding is differentiable.
    """
    x_shape, y_shape, rows, loss_shape = _validate.dense_layout(logits.shape, labels.shape)
    return labels.reshape(y_shape).expand(rows), logits.reshape(x_shape).expand(rows), loss_shape


class TorchBackend:
    """torch tensors in, torch tensors out, on the device they share."""

    name = "torch"
    xp = _Namespace

    def __init__(self, device):
        self.device = device

    @staticmethod
    def compiling():
        """Whether dynamo (torch.compile) is tracing: it cannot trace NumPy's dtype
        checks, so Python lists are handed to torch there (`asarray`)."""
        return torch.compiler.is_compiling()

    @classmethod
    def for_tensors(cls, tensors):
        """The backend for a call whose tensor arguments are `tensors` (one device).

        CPU tensors share one backend: their check costs 0.1 us against 1 us
        for reading each tensor's device (a small torch step's fixed cost)."""
        if all(t.is_cpu for t in tensors):
            return _CPU_BACKEND
        if len({t.device for t in tensors}) > 1:
            devices = sorted({str(t.device) for t in tensors})
            raise ValueError(
                f"xent: tensor arguments are on different devices ({', '.join(devices)}); "
                "move them to one device first")
        return cls(tensors[0].device)

    def asarray(self, x, name="input"):
        """`x` as a tensor on this device; non-tensors convert as `tf.convert_to_tensor`
        (errors name `name`: `_dtypes.to_array`)."""
        if isinstance(x, torch.Tensor):
            return x
        if self.compiling():
            # Dynamo traces NumPy calls as tensor ops and cannot read a dtype's
            # `kind`: `torch.as_tensor` is what it can put in the graph.
            return torch.as_tensor(x, device=self.device)
        return from_numpy(_dtypes.to_array(x, name)).to(self.device)

    @staticmethod
    def dtype_name(x):
        """``torch.float32`` → ``"float32"`` (remembered per dtype: a small call asks
        several times, and building the string cost 0.17 us against 0.05)."""
        name = _DTYPE_NAMES.get(x.dtype)
        if name is None:
            name = _DTYPE_NAMES.setdefault(x.dtype, str(x.dtype).removeprefix("torch."))
        return name

    def astype(self, x, name):
        """Cast to the dtype called `name` (Python scalars become tensors on this device)."""
        dtype = getattr(torch, name)
        if isinstance(x, torch.Tensor):
            return x if x.dtype == dtype else x.to(dtype)
        return torch.as_tensor(x, dtype=dtype, device=self.device)

    @staticmethod
    def size(x):
        """Number of elements."""
        return x.numel()

    @staticmethod
    def stop_gradient(x):
        """`x` detached from the graph."""
        return x.detach()

    @staticmethod
    def finish(x):
        """Tensors are handed back as they are (0-d ones included)."""
        return x

    @staticmethod
    def sparse_xent(labels, logits):
        """Per-row loss ``[...]``, accumulator dtype, differentiable in `logits`."""
        if graph_ops():
            if _traced.in_compiled_transform():
                return _traced.loss("sparse", logits, labels)
            return _loss_only(_ops.loss_function().apply(
                "sparse", logits, labels, _wants_grad(logits)))
        if not _wants_grad(logits) and _forward_mode_off():
            return loss_and_backprop("sparse", labels, logits, False)[0]
        return SPARSE_LOSS(logits, labels)

    @staticmethod
    def dense_xent(labels, logits):
        """Per-row loss, accumulator dtype, differentiable in `logits` and `labels`."""
        y2, x2, loss_shape = _dense_rows(labels, logits)
        if graph_ops():
            if _traced.in_compiled_transform():
                return _traced.loss("dense", x2, y2).reshape(loss_shape)
            want = _wants_grad(x2) or _wants_grad(y2)
            return _loss_only(_ops.loss_function().apply("dense", x2, y2, want)).reshape(loss_shape)
        if not (_wants_grad(x2) or _wants_grad(y2)) and _forward_mode_off():
            return loss_and_backprop("dense", y2, x2, False)[0].reshape(loss_shape)
        return DENSE_LOSS(x2, y2).reshape(loss_shape)

    @staticmethod
    def sparse_loss_and_grad(labels, logits, grad=True):
        """``(loss, backprop)`` of the raw op; `grad` must be True (no out-buffers)."""
        if graph_ops():
            if _traced.in_compiled_transform():
                return _traced.loss_and_backprop("sparse", logits, labels)
            return _ops.function().apply("sparse", logits, labels, True)
        return LossAndBackprop.apply("sparse", logits, labels)

    @staticmethod
    def dense_loss_and_grad(labels, logits, grad=True):
        """``(loss, backprop)`` of the dense raw op, labels broadcast to the logits."""
        y2, x2, _ = _dense_rows(labels, logits)
        if graph_ops():
            if _traced.in_compiled_transform():
                return _traced.loss_and_backprop("dense", x2, y2)
            return _ops.function().apply("dense", x2, y2, True)
        return LossAndBackprop.apply("dense", x2, y2)


# torch dtype → its name (`TorchBackend.dtype_name`), for every dtype torch has:
# torch.compile guards on the dict, so one filled while it traces (the first
# call's) made every compiled caller compile its whole graph twice.
_DTYPE_NAMES = {dtype: str(dtype).removeprefix("torch.") for dtype in vars(torch).values()
                if isinstance(dtype, torch.dtype)}
_CPU_BACKEND = TorchBackend(torch.device("cpu"))
