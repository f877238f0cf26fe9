"""PyTorch backend: tensors in, tensors out, differentiable by `torch.autograd`.

Imported only when a `torch.Tensor` reaches a public function (see
`xent._backend`). The numbers come from one of two places:

  - CPU tensors: the fused NumPy kernel (`xent._core`), run on zero-copy NumPy
    views of the tensors (bfloat16 through an int16 view). A label outside
    ``[0, C)`` raises TensorFlow's `InvalidArgumentError` before any work.
  - any other device: the same steps as torch ops (`xent._array_kernels`), so
    the data stays on the device; a bad label gives NaN rows, as TensorFlow
    on a GPU (checking would cost a device sync).

Autograd (`_loss_function`): when the logits need a gradient, the forward
pass writes TensorFlow's backprop ``softmax - target`` into one logits-sized
tensor in the same kernel pass; the backward scales it in place by the
upstream gradient and hands it back, so forward plus backward hold the
logits and one tensor of their size. A large loss folds the upstream
gradient it expects into that pass instead (`xent._torch_upstream`). A
second backward over a retained graph recomputes it; with
``create_graph=True`` the backward is built from differentiable torch ops,
so second derivatives are TensorFlow's (which supports them too). The
dense loss also gives the labels their gradient, ``-log_softmax(logits)``.
"""
import ctypes

import ml_dtypes
import numpy as np
import torch

from xent import _array_kernels, _buffers, _core, _dtypes, _torch_upstream, _validate

_state = {"torch_ops_on_cpu": False}


def use_torch_ops_on_cpu(flag=True):
    """Run CPU tensors through the torch-ops path of other devices (for tests)."""
    _state["torch_ops_on_cpu"] = flag


class _Ops:
    """The operations `xent._array_kernels` needs, as torch calls."""

    exp = staticmethod(torch.exp)
    tanh = staticmethod(torch.tanh)
    isfinite = staticmethod(torch.isfinite)
    log = staticmethod(torch.log)
    where = staticmethod(torch.where)

    @staticmethod
    def max_last(x):
        return torch.amax(x, dim=-1, keepdim=True)

    @staticmethod
    def logsumexp_last(x):
        """``log Σ_j exp(x_j)`` over the last axis, as one torch op: its backward
        recomputes the softmax, where a hand-made ``m + log Σ exp(x - m)`` saved
        its exp, which inductor (torch 2.13, dynamic shapes) overwrote with the
        gradient, breaking a second backward over a retained graph."""
        return torch.logsumexp(x, dim=-1)

    @staticmethod
    def sum_last(x):
        return torch.sum(x, dim=-1, keepdim=True)

    @staticmethod
    def stop_gradient(x):
        return x.detach()

    @staticmethod
    def take_last(x, idx):
        return torch.gather(x, -1, idx.long().unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def one_hot(idx, num_classes, dtype):
        return (idx.unsqueeze(-1) == torch.arange(num_classes, device=idx.device)).to(dtype)

    @staticmethod
    def zeros_rows(x):
        return x.new_zeros((*x.shape[:-1], 1))


class _Namespace:
    """The NumPy-like calls of the faces and reductions (see `xent._backend`)."""

    where = staticmethod(torch.where)
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


_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _numpy_view(t):
    """A NumPy array sharing CPU tensor `t`'s memory (bfloat16 as `ml_dtypes.bfloat16`).

    ``numpy(force=True)`` detaches in C++: 1.3 us against 2.4 for
    ``detach().numpy()`` (and 0.7 for ``numpy()`` where there is no graph),
    a share of a small call's fixed cost."""
    if t.dtype == torch.bfloat16:
        return t.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy(force=True) if t.requires_grad else t.numpy()


def _own_tensor(a):
    """A CPU tensor sharing C-contiguous, writable `a`'s memory (bfloat16 through an
    int16 view), with no checks: for arrays xent has just made (0.55 against 0.8
    us for `_from_numpy`; a 32x1000 torch step makes two)."""
    if a.dtype == _BFLOAT16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _from_numpy(a):
    """A CPU tensor sharing `a`'s memory (copied first if strided backwards or read-only)."""
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = a.copy()
    return _own_tensor(a)


def _empty_numpy(a):
    """An uninitialised NumPy array like `a` (a logits-sized result on the CPU), from
    xent's pool of large buffers (`xent._buffers`): a warm training step
    reuses the memory of the last one's gradient once nothing holds it.

    Fresh memory comes from NumPy, which asks Linux for huge pages for large
    arrays (madvise); torch's allocator does not: the first write into a
    fresh 1 GB gradient (page faults) took 90-100 ms from np.empty against
    270-320 ms from torch.empty_like."""
    return _buffers.empty_like(a)


def accumulator_dtype(dtype):
    """The torch dtype that `dtype` arithmetic runs and accumulates in
    (`_dtypes.accumulator_name`: float64 stays, every other float → float32)."""
    return getattr(torch, _dtypes.accumulator_name(str(dtype).removeprefix("torch.")))


def numpy_accumulator(dtype):
    """`accumulator_dtype` of torch `dtype` as a NumPy dtype (for NumPy work on its data)."""
    return np.dtype(_dtypes.accumulator_name(str(dtype).removeprefix("torch.")))


def _accumulate(logits):
    """`logits` in the accumulator dtype (`accumulator_dtype`)."""
    return logits.to(accumulator_dtype(logits.dtype))


_ROWS = {"sparse": _array_kernels.sparse_rows, "dense": _array_kernels.dense_rows}
_GRAD = {"sparse": _array_kernels.sparse_grad, "dense": _array_kernels.dense_grad}
_CORE = {"sparse": _core.sparse_xent, "dense": _core.dense_xent}


def _forward(kind, labels, logits, want_grad, weights=None):
    """Per-row loss (accumulator dtype) and, if wanted, TF's backprop (logits' dtype).

    `kind` is ``"sparse"`` (int labels ``[...]``) or ``"dense"`` (labels of the
    logits' shape); logits are ``[..., C]``. With `weights` (``[...]``, the
    loss's shape), each row of the backprop times its weight, folded into
    the kernel's pass on the CPU.
    """
    if _on_kernels(logits):
        x = _numpy_view(logits)
        out = _empty_numpy(x) if want_grad else None
        if weights is None:
            loss, _ = _CORE[kind](_numpy_view(labels), x, out)
        else:
            w = _numpy_view(weights.detach().to(torch.float64).contiguous())
            loss, _ = _CORE[kind](_numpy_view(labels), x, out, w)
        return _own_tensor(loss), None if out is None else _own_tensor(out)
    x = _accumulate(logits)
    loss, norm = _ROWS[kind](_Ops, x, labels)
    grad = None
    if want_grad:
        grad = _GRAD[kind](_Ops, x, labels, norm)
        grad = (grad if weights is None else grad * weights[..., None].to(grad.dtype)).to(logits.dtype)
    return loss, grad


def _differentiable_backprop(kind, logits, labels):
    """TF's backprop from torch ops that autograd can differentiate again."""
    x = _accumulate(logits)
    return _GRAD[kind](_Ops, x, labels, _array_kernels.normaliser(_Ops, x))


def _labels_grad(logits, labels, g):
    """Gradient of the dense loss for its labels: ``-g * log_softmax(logits)``."""
    return (-g[..., None] * _array_kernels.log_softmax(_Ops, _accumulate(logits))).to(labels.dtype)


def _row_factors(g, dtype):
    """``g[..., None]``, the per-row factors of a `dtype` backprop: in `dtype` itself
    when g is exact there, else as they are.

    torch multiplies a half-precision tensor by a float32 one through two
    whole-tensor conversions (8192x32000 bfloat16, in place: 610 ms). The
    per-row g (float32, the loss's accumulator dtype) is usually exact in the
    half dtype, being the upstream gradient of the loss cast from it; then
    the half-by-half product, computed exactly in float32 and rounded once,
    is the same number (20-30 ms). On other devices the check would cost a
    host sync, and is skipped (the mixed product is rounded once there too).
    """
    if g.dtype != dtype and dtype in (torch.float16, torch.bfloat16) and g.is_cpu:
        narrow = g.to(dtype)
        if torch.equal(narrow.to(g.dtype), g):
            g = narrow
    return g[..., None]


# From this many elements on, `_scale_rows_` first checks whether g is all ones
# (three small torch ops, about 10 us: more than the multiply of a small backprop).
_ONES_CHECK_MIN = 1 << 18


def _scale_rows_(backprop, g):
    """``backprop *= g[..., None]`` in place, each product rounded once to backprop's dtype;
    nothing to do on the CPU when every g is 1 (the gradient of a ``.sum()``),
    which saves a pass over a large backprop (on other devices the check
    would cost a host sync)."""
    if backprop.is_cpu and (
            _broadcast_one(g) if backprop.numel() < _ONES_CHECK_MIN else bool((g == 1).all())):
        return backprop
    return backprop.mul_(_row_factors(g, backprop.dtype))


# ctypes types to read one element of a CPU tensor in place (`_broadcast_one`).
_C_SCALARS = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


def _broadcast_one(g):
    """Whether CPU tensor `g` is one 1 broadcast to its shape (all strides 0), as
    the gradient of a ``.sum()`` arrives: 0.3 us to check (reading the element
    at its address), against 3 us for the multiply of a small backprop."""
    scalar = _C_SCALARS.get(g.dtype)
    if scalar is None or g.requires_grad or g.numel() == 0 or any(g.stride()):
        return False
    return scalar.from_address(g.data_ptr()).value == 1


def _eager_apply(function):
    """`function.apply(logits, labels)` (a Function without ``setup_context``) for
    calls made where no torch.func transform is active (`_graph_ops` is
    False), without `torch.autograd.Function.apply`'s Python layer: a 32x1000
    float32 step took 93-94 us against 98-101 (Zen 4, one process,
    interleaved). Tensors left by a finished transform are unwrapped first,
    as that layer does. Falls back to `function.apply` where torch lacks the
    pieces."""
    try:
        from torch._C._functorch import unwrap_if_dead
        apply = super(torch.autograd.Function, function).apply
    except (ImportError, AttributeError):
        return function.apply

    def eager(logits, labels):
        return apply(unwrap_if_dead(logits), unwrap_if_dead(labels))
    return eager


def _loss_function(kind):
    """The eager autograd Function of `kind` labels (``"sparse"`` or ``"dense"``):
    ``apply(logits, labels)`` gives the per-row loss, whose backward is
    TensorFlow's gradient (see the module doc).

    Tensors are its only arguments, the kind being the class's: a Function
    with two more (the kind, and whether the logits want a gradient, which
    ``ctx.needs_input_grad`` already says) cost a 32x1000 float32 step about
    1 us more (AMD Zen 4)."""

    class Loss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, labels):
            write = ctx.needs_input_grad[0]
            ctx.folds = write and not ctx.needs_input_grad[1] and _on_kernels(logits) \
                and _torch_upstream.foldable(logits)
            ctx.weights = None
            if ctx.folds:
                write, ctx.weights = _torch_upstream.expected(
                    logits.shape[:-1], accumulator_dtype(logits.dtype), logits.dtype)
            loss, ctx.backprop = _forward(kind, labels, logits, write, ctx.weights)
            ctx.save_for_backward(logits, labels)
            return loss

        @staticmethod
        def backward(ctx, g):
            need_logits, need_labels = ctx.needs_input_grad
            backprop, ctx.backprop = ctx.backprop, None   # (scaled in place: the first time only)
            if need_logits and not need_labels and not torch.is_grad_enabled():
                if ctx.folds:
                    return _with_upstream(kind, ctx, backprop, g), None
                if backprop is not None:
                    return _scale_rows_(backprop, g), None   # (no saved input needed: 2 us)
            logits, labels = ctx.saved_tensors
            d_logits = _logits_grad(kind, logits, labels, g, backprop) if need_logits else None
            d_labels = _labels_grad(logits, labels, g) if need_labels else None
            return d_logits, d_labels

    Loss.__name__ = Loss.__qualname__ = f"_{kind.title()}Loss"
    return Loss


def _logits_grad(kind, logits, labels, g, backprop):
    """``g * backprop``: `backprop` (the forward's, or None) scaled in place, or
    made anew; differentiable torch ops when the graph is being built."""
    if torch.is_grad_enabled():
        backprop = _differentiable_backprop(kind, logits, labels)
        return (g[..., None] * backprop).to(logits.dtype)
    if backprop is None:
        backprop = _forward(kind, labels, logits, True)[1]
    return _scale_rows_(backprop, g)


def _on_kernels(logits):
    """Whether a loss on `logits` runs xent's kernels (a CPU tensor), not torch ops."""
    return logits.is_cpu and not _state["torch_ops_on_cpu"]


def _with_upstream(kind, ctx, backprop, g):
    """The logits' gradient of a `kind` loss that folds its upstream gradient g
    (`xent._torch_upstream`): the kernel's with g as the rows' weights.
    That is `backprop` as the forward wrote it where it folded in this g
    (``ctx.weights``); else the kernel runs now, over `backprop` if the
    forward wrote one (None: it did not, or a first backward took it).

    A g with an infinity or a NaN (`_torch_upstream.finite`) scales the
    unweighted backprop instead, as a small loss does: TensorFlow's ±inf
    entries, where the weighted kernel would give NaN rows.

    The saved logits are asked for every time, whether the kernel runs again
    or not, so that logits changed in place since the forward raise torch's
    error on every step, not only on those whose g changed."""
    logits, labels = ctx.saved_tensors
    done, weights = _torch_upstream.observe(g, backprop is not None, ctx.weights, logits.dtype)
    if done:
        return backprop
    if not _torch_upstream.finite(weights):
        if backprop is None:
            backprop = _forward(kind, labels, logits, True)[1]
        elif ctx.weights is not None:   # (the forward folded weights in: unweighted again)
            _CORE[kind](_numpy_view(labels), _numpy_view(logits), _numpy_view(backprop))
        return _scale_rows_(backprop, g)
    if backprop is None:
        return _forward(kind, labels, logits, True, weights)[1]
    _CORE[kind](_numpy_view(labels), _numpy_view(logits), _numpy_view(backprop),
                None if weights is None else weights.numpy())
    return backprop


_SparseLoss, _DenseLoss = _loss_function("sparse"), _loss_function("dense")
_SPARSE_LOSS, _DENSE_LOSS = _eager_apply(_SparseLoss), _eager_apply(_DenseLoss)


class _LossAndBackprop(torch.autograd.Function):
    """The raw ops: ``(loss, backprop)`` from one kernel pass, both differentiable.

    As TensorFlow's registered gradient: the logits get ``g_loss * backprop``
    plus, when the backprop itself is differentiated, its softmax term; dense
    labels get ``-g_loss * log_softmax(logits)``.
    """

    @staticmethod
    def forward(ctx, kind, logits, labels):
        ctx.set_materialize_grads(False)
        loss, backprop = _forward(kind, labels, logits, True)
        ctx.save_for_backward(logits, labels, backprop)
        return loss, backprop

    @staticmethod
    def backward(ctx, g_loss, g_backprop):
        logits, labels, backprop = ctx.saved_tensors
        d_logits = d_labels = None
        if ctx.needs_input_grad[1]:
            d_logits = _LossAndBackprop._logits_grad(logits, backprop, g_loss, g_backprop)
        if ctx.needs_input_grad[2] and g_loss is not None:
            d_labels = _labels_grad(logits, labels, g_loss)
        return None, d_logits, d_labels

    @staticmethod
    def _logits_grad(logits, backprop, g_loss, g_backprop):
        """``g_loss * backprop + softmax_vjp(g_backprop)``, either term possibly absent."""
        if g_backprop is None and g_loss is not None:   # (`_row_factors`: the same bits)
            factors = _row_factors(g_loss, backprop.dtype)
            if not backprop.is_cpu or torch.is_grad_enabled():
                return backprop * factors
            out = _from_numpy(_empty_numpy(_numpy_view(backprop)))   # (`_empty_numpy`)
            return torch.mul(backprop, factors, out=out)
        return _backprop_vjp(logits, backprop, g_loss, g_backprop)


def _backprop_vjp(logits, backprop, g_loss, g_backprop):
    """The logits' gradient of the raw op's two outputs, in differentiable torch ops:
    ``g_loss·backprop + softmax_vjp(g_backprop)`` (either g may be None)."""
    d = torch.zeros_like(backprop) if g_loss is None else backprop * g_loss[..., None]
    if g_backprop is not None:
        x = _accumulate(logits)
        norm = _array_kernels.normaliser(_Ops, x)
        vjp = _array_kernels.softmax_vjp(_Ops, x, norm, _accumulate(g_backprop))
        d = d + vjp.to(d.dtype)
    return d


def _graph_ops():
    """Whether to call the registered operator (`xent._torch_ops`) rather than the
    eager Functions (whose NumPy and numba calls neither dynamo nor torch.func
    can trace, and which have no forward mode): the call is being captured by
    torch.compile, runs under a torch.func transform, or inside a forward-mode
    level (``torch.autograd.forward_ad.dual_level``), where `FuncRows`' jvp serves."""
    return (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or not _forward_mode_off())


def _loss_only(outputs):
    """The loss of a `_torch_ops` Function's outputs (`RowsLoss` gives it alone)."""
    return outputs[0] if isinstance(outputs, tuple) else outputs


def _wants_grad(logits):
    """Whether autograd will ask for the logits' gradient (decided before `apply`)."""
    return torch.is_grad_enabled() and logits.requires_grad


def _forward_mode_off():
    """Whether no forward-mode AD level is open. A call that no autograd mode can
    see (no tensor wants a gradient, and this) skips the Function (9 us); a
    dual tensor must reach a Function with a jvp (`_graph_ops`)."""
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

    def asarray(self, x):
        """`x` as a tensor on this device; non-tensors convert as `tf.convert_to_tensor`."""
        if isinstance(x, torch.Tensor):
            return x
        return _from_numpy(_dtypes.to_array(x)).to(self.device)

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
        if _graph_ops():
            return _loss_only(_torch_ops.loss_function().apply(
                "sparse", logits, labels, _wants_grad(logits)))
        if not _wants_grad(logits) and _forward_mode_off():
            return _forward("sparse", labels, logits, False)[0]
        return _SPARSE_LOSS(logits, labels)

    @staticmethod
    def dense_xent(labels, logits):
        """Per-row loss, accumulator dtype, differentiable in `logits` and `labels`."""
        y2, x2, loss_shape = _dense_rows(labels, logits)
        if _graph_ops():
            want = _wants_grad(x2) or _wants_grad(y2)
            return _loss_only(_torch_ops.loss_function().apply("dense", x2, y2, want)).reshape(loss_shape)
        if not (_wants_grad(x2) or _wants_grad(y2)) and _forward_mode_off():
            return _forward("dense", y2, x2, False)[0].reshape(loss_shape)
        return _DENSE_LOSS(x2, y2).reshape(loss_shape)

    @staticmethod
    def sparse_loss_and_grad(labels, logits, grad=True):
        """``(loss, backprop)`` of the raw op; `grad` must be True (no out-buffers)."""
        if _graph_ops():
            return _torch_ops.function().apply("sparse", logits, labels, True)
        return _LossAndBackprop.apply("sparse", logits, labels)

    @staticmethod
    def dense_loss_and_grad(labels, logits, grad=True):
        """``(loss, backprop)`` of the dense raw op, labels broadcast to the logits."""
        y2, x2, _ = _dense_rows(labels, logits)
        if _graph_ops():
            return _torch_ops.function().apply("dense", x2, y2, True)
        return _LossAndBackprop.apply("dense", x2, y2)


# torch dtype → its name (`TorchBackend.dtype_name`).
_DTYPE_NAMES = {}
_CPU_BACKEND = TorchBackend(torch.device("cpu"))

# (last: the operators' module builds on this one's functions)
from xent import _torch_ops  # noqa: E402
