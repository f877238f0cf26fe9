"""xent's kernel as registered torch operators, for `torch.compile` and `torch.func`.

Eager calls on CPU tensors go through `xent._torch._eager` (an autograd
Function that scales its saved backprop in place and draws buffers from
xent's pool). A graph that `torch.compile(fullgraph=True)` captures, or a
`torch.func` transform (`grad`, `vmap`), cannot run NumPy inside; they get
the operator

    xent::rows(kind, logits [..., C], labels, want_grad) -> (loss [...], backprop [..., C])

``kind`` is ``"sparse"`` (int labels ``[...]``) or ``"dense"`` (labels of the
logits' shape); ``backprop`` is TF's ``softmax(logits) - labels`` (an empty
``[0]`` tensor without `want_grad`). It is registered with

  - a fake (meta) implementation, so the compiler knows the outputs' shapes
    and dtypes without running the kernel;
  - a vmap rule that folds the batch dimension into the rows (the kernel
    works on rows, whatever the leading dimensions);

and differentiated by `Rows`, TensorFlow's registered gradient in torch ops
(so second derivatives work too); the same formula is the operator's own, for
direct calls (`torch.library.opcheck`). Inside torch.compile the faces that need
the loss alone use `RowsLoss`, whose forward makes the loss alone and whose
backward runs the kernel again (`xent::rows_grad`) with the upstream
gradient as the rows' weights.
"""
import torch

from xent import _array_kernels
from xent._errstate import quiet
from xent._torch._math import (Ops, backprop_vjp, differentiable_backprop, gradient_rounded_once,
                               labels_grad, loss_and_backprop)
from xent._torch._views import accumulate, accumulator_dtype

__all__ = ["rows", "rows_grad", "Rows", "RowsLoss", "FuncRows", "Direct", "DirectLoss",
           "exporting", "function", "loss_function"]


@torch.library.custom_op("xent::rows", mutates_args=(), device_types=None)
@quiet   # (runs when the graph runs, outside the public call)
def rows(kind: str, logits: torch.Tensor, labels: torch.Tensor,
         want_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and TF's backprop of `kind` (see the module doc), on any device."""
    loss, backprop = loss_and_backprop(kind, labels.contiguous(), logits.contiguous(), want_grad)
    if backprop is None:
        backprop = logits.new_empty(0)
    return loss, backprop


@rows.register_fake
def _rows_fake(kind, logits, labels, want_grad):
    """The outputs' shapes and dtypes, for the compiler (no data)."""
    loss = logits.new_empty(logits.shape[:-1], dtype=accumulator_dtype(logits.dtype))
    return loss, logits.new_empty(logits.shape if want_grad else (0,))


class Rows(torch.autograd.Function):
    """`rows` made differentiable, TensorFlow's registered gradient in torch ops:
    logits get ``g_loss·backprop + softmax_vjp(g_backprop)``, dense labels
    ``-g_loss·log_softmax(logits)``.

    An autograd Function (with `setup_context`, and a vmap rule generated
    from the operator's) for xent's calls, since torch.func refuses the
    Function that the operator's own `register_autograd` generates; that one
    (the same `setup_context` and `backward`) serves direct calls.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(kind, logits, labels, want_grad):
        return rows(kind, logits, labels, want_grad)

    @staticmethod
    def setup_context(ctx, inputs, output):
        kind, logits, labels, want_grad = inputs
        ctx.kind, ctx.want_grad = kind, want_grad
        ctx.set_materialize_grads(False)   # the unused backprop's gradient: None, not zeros
        ctx.save_for_backward(logits, labels, output[1] if want_grad else None)
        ctx.save_for_forward(logits, labels)

    @staticmethod
    def backward(ctx, g_loss, g_backprop):
        return _backward(ctx, g_loss, g_backprop)


def _backward(ctx, g_loss, g_backprop):
    """The gradients of `Rows`; `ctx` holds the kind and the saved logits, labels
    and backprop (None: not made)."""
    logits, labels, backprop = ctx.saved_tensors
    if backprop is None or (gradient_rounded_once(ctx.kind, logits.dtype) and g_backprop is None):
        # (no backprop output: its gradient is empty too; float16, and bfloat16 with
        # dense labels: the backprop in float32, so that g times it is rounded
        # once, as TF's float32 computation)
        backprop, g_backprop = differentiable_backprop(ctx.kind, logits, labels), None
    d_logits = backprop_vjp(logits, backprop, g_loss, g_backprop)
    d_labels = None
    if ctx.kind == "dense" and ctx.needs_input_grad[2] and g_loss is not None:
        d_labels = labels_grad(logits, labels, g_loss)
    return None, d_logits.to(logits.dtype), d_labels, None


class FuncRows(Rows):
    """`Rows` with forward mode too, for torch.func (`jvp`, `jacfwd`, `hessian`) and
    eager forward mode (`torch.autograd.forward_ad`); torch.compile's tracer
    refuses a Function with a custom jvp, so graphs it captures get `Rows`."""

    @staticmethod
    def jvp(ctx, _, d_logits, d_labels, __):
        """Forward mode (`torch.func.jacfwd`, `hessian`), with p = softmax(logits):

            d loss     = Σ_j (p_j - labels_j)·dx_j − Σ_j log_softmax_j·dy_j   (dense)
            d backprop = p ⊙ (dx − Σ_j p_j·dx_j)

        Without `want_grad` the backprop output is an empty ``[0]``, and so is its tangent.
        A sparse label outside ``[0, C)`` (the torch-ops path, where it is not checked)
        gives its row's loss a NaN tangent and its backprop softmax's, as the
        reverse rule has it.
        """
        logits, labels = ctx.saved_tensors[:2]
        x = accumulate(logits)
        log_p = _array_kernels.log_softmax(Ops, x)
        p = log_p.exp()
        dx = torch.zeros_like(x) if d_logits is None else d_logits.to(x.dtype)
        if ctx.kind == "sparse":
            valid = _array_kernels.valid_labels(labels, x.shape[-1])
            # (a comparison, not F.one_hot: its range check reads the labels'
            # values, which vmap over batched labels refuses)
            target = Ops.one_hot(torch.where(valid, labels, 0), x.shape[-1], x.dtype)
        else:
            target = labels.to(x.dtype)
        p_dx = (p * dx).sum(-1, keepdim=True)
        d_loss = ((p - target) * dx).sum(-1)
        if ctx.kind == "sparse":
            d_loss = torch.where(valid, d_loss, float("nan"))
        if ctx.kind == "dense" and d_labels is not None:
            d_loss = d_loss - (log_p * d_labels.to(x.dtype)).sum(-1)
        if not ctx.want_grad:
            return d_loss, logits.new_empty(0)
        return d_loss, (p * (dx - p_dx)).to(logits.dtype)


@torch.library.custom_op("xent::rows_grad", mutates_args=(), device_types=None)
@quiet   # (runs when the graph runs, outside the public call)
def rows_grad(kind: str, logits: torch.Tensor, labels: torch.Tensor,
              g: torch.Tensor) -> torch.Tensor:
    """``g[..., None] ⊙ backprop`` in the logits' dtype: `RowsLoss`' backward, the
    kernel run again with g as the rows' weights, in its one pass (a g with
    an infinity scales the backprop as eager does: `loss_and_backprop`)."""
    return loss_and_backprop(kind, labels.contiguous(), logits.contiguous(), True, g)[1]


@rows_grad.register_fake
def _rows_grad_fake(kind, logits, labels, g):
    """The gradient's shape and dtype (the logits'), for the compiler."""
    return logits.new_empty(logits.shape)


class RowsLoss(torch.autograd.Function):
    """The per-row loss alone, for the `nn` faces inside torch.compile: the forward
    runs the kernel for the loss only, and the backward runs it again
    (`rows_grad`): logits get ``g·backprop``, dense labels
    ``-g·log_softmax(logits)``. Nothing logits-sized is saved but the inputs.

    Not `Rows`: the compiler traces the unused backprop output's gradient as
    zeros and differentiates it through softmax anyway (amax, two exps, two
    sums over the logits: 638 ms against 76 ms eager at 8192x32000 float32,
    Zen 4). Nor a saved backprop times g: inductor fused that multiply and
    wrote it over the saved backprop (torch 2.13, dynamic shapes), so that a
    second backward over a retained graph gave wrong numbers and changed the
    first's. Graphs only: second derivatives need `FuncRows` (torch.func).
    """

    @staticmethod
    def forward(ctx, kind, logits, labels, want_grad):
        """The loss alone (`want_grad`, in `FuncRows`' signature, is not needed)."""
        loss, _ = rows(kind, logits, labels, False)
        ctx.kind = kind
        ctx.save_for_backward(logits, labels)
        return loss

    @staticmethod
    def backward(ctx, g_loss):
        logits, labels = ctx.saved_tensors
        d_logits = rows_grad(ctx.kind, logits, labels, g_loss) if ctx.needs_input_grad[1] else None
        d_labels = None
        if ctx.kind == "dense" and ctx.needs_input_grad[2]:
            d_labels = labels_grad(logits, labels, g_loss)
        return None, d_logits, d_labels, None


class Direct:
    """`rows` called as it is, differentiated by its own `register_autograd`: for
    ``torch.export.export(..., strict=True)``, which traces an autograd
    Function's forward with autograd off and drops its backward (an
    independent review: no gradient reached a model's parameters through
    any face; a torch 2.13 behaviour for every Function). For the raw ops,
    whose backprop is an output."""

    @staticmethod
    def apply(kind, logits, labels, want_grad):
        return rows(kind, logits, labels, want_grad)


class DirectLoss:
    """`Direct` for a call that needs the loss alone: no backprop made in the forward,
    where an exported program (for inference, mostly) would make it on every call,
    asked for or not (the diff's review); the operator's backward makes it then."""

    @staticmethod
    def apply(kind, logits, labels, want_grad):
        return rows(kind, logits, labels, False)


def exporting():
    """Whether torch.export is tracing this call."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return is_exporting is not None and is_exporting()


def function():
    """The Function for this call: `Rows` inside torch.compile (`Direct` for
    torch.export), else `FuncRows`."""
    if torch.compiler.is_compiling():
        return Direct if exporting() else Rows
    return FuncRows


def loss_function():
    """The Function for a call that needs the loss alone: `RowsLoss` inside
    torch.compile (loss only; `DirectLoss` for torch.export), else `FuncRows`
    (loss and backprop)."""
    if torch.compiler.is_compiling():
        return DirectLoss if exporting() else RowsLoss
    return FuncRows


@rows.register_vmap
def _rows_vmap(info, in_dims, kind, logits, labels, want_grad):
    """Batch dimension first on both, then one call over all the rows."""
    _, x_dim, y_dim, _ = in_dims
    size = info.batch_size
    x = logits.movedim(x_dim, 0) if x_dim is not None else logits.expand(size, *logits.shape)
    y = labels.movedim(y_dim, 0) if y_dim is not None else labels.expand(size, *labels.shape)
    loss, backprop = rows(kind, x, y, want_grad)
    return (loss, backprop), (0, 0 if want_grad else None)


# (the operator's own formula: `Rows`' docstring)
rows.register_autograd(Rows.backward, setup_context=Rows.setup_context)
