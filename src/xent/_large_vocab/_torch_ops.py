"""`xent.cross_entropy` as a registered torch operator, for `torch.compile` and `torch.func`.

Eager calls on CPU tensors go through `xent._large_vocab._torch._CrossEntropy`
(an autograd Function that runs NumPy and numba, with the reduction's weights
folded into the kernel). A graph that `torch.compile(fullgraph=True)`
captures, or a `torch.func` transform (`grad`, `vmap`), cannot run NumPy
inside; they get the operator

    xent::token_rows(logits [..., V], targets [...], ignore_index, label_smoothing,
                     z_loss, softcap, want_grad) -> (losses [...], grad [..., V])

``losses`` is each token's loss (the accumulator dtype; 0 where ignored),
``grad`` its gradient ``d loss_i / d logits_i`` (0 rows where ignored; an
empty ``[0]`` tensor without `want_grad`), in the logits' dtype, float32 for
half-precision logits: rounded before the upstream gradient multiplies it,
it would be rounded twice (bfloat16 under torch.func: 1.35 ulps off, in an
independent review), and float16's narrow exponent would flush small entries
before a loss scale multiplies them. The reduction runs in
torch ops after it, so autograd hands the backward each token's weight g
(``1/count`` for the mean). Under torch.func (`TokenRows`) the backward is
one multiply, ``d logits = grad ⊙ g[..., None]``; in compiled graphs
(`TokenLosses`) the forward makes the losses alone and the backward runs the
kernel again through a second operator,

    xent::token_grad(logits, targets, g, ignore_index, ...) -> g[..., None] ⊙ grad

which writes the gradient once, rounded once, and saves nothing
logits-sized (inductor wrote a fused multiply over the saved gradient: see
`TokenLosses`).

The operators have fake implementations (the outputs' shapes and dtypes,
for the compiler); `token_rows` has a vmap rule that moves the batch to the
front (the tokens' dimensions are the operator's own) and its own autograd
formula, for direct calls (`torch.library.opcheck`); xent's faces
differentiate it through `TokenRows` and `TokenLosses`. It is
differentiable once, as the eager path: a second derivative raises.

The tokens keep the caller's dimensions through the operators (with the
logits flattened to ``[N, V]`` before `token_rows`, inductor mishandled the
saved gradient's reshape; a test keeps it in sight).
"""
from typing import Optional

import numpy as np
import torch

from xent._dtypes import accumulator
from xent._errstate import quiet
from xent._large_vocab import _numpy
from xent._large_vocab._cross_entropy import losses_and_gradient
from xent._large_vocab._options import Options
from xent._torch import _ops as torch_ops
from xent._torch import _views as torch_views

__all__ = ["token_rows", "token_grad", "TokenRows", "TokenLosses", "losses", "option_args",
           "refuse_second_derivative", "refuse_forward_mode"]


# Half dtypes, whose operator gradient is float32 (the module doc).
_WIDENED = (torch.float16, torch.bfloat16)


def _grad_dtype(dtype):
    """The dtype of the operator's gradient for `dtype` logits (float32 for half ones)."""
    return torch.float32 if dtype in _WIDENED else dtype


def _kernel_tokens(logits, targets, ignore_index):
    """``(x [N, V], targets, valid)`` for the kernel: a NumPy view of the CPU
    `logits` (a contiguous copy if they are not) and `_numpy.tokens`' checked
    targets (TensorFlow's error for one out of range)."""
    x = torch_views.numpy_view(logits.contiguous()).reshape(-1, logits.shape[-1])
    kept, valid = _numpy.tokens(torch_views.numpy_view(targets), ignore_index, x.shape[-1])
    return x, kept, valid


@torch.library.custom_op("xent::token_rows", mutates_args=(), device_types="cpu")
@quiet   # (runs when the graph runs, outside the public call)
def token_rows(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
               label_smoothing: float, z_loss: float, softcap: Optional[float],
               want_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses and gradients of ``[..., V]`` CPU `logits` (see the module
    doc); a target outside ``[0, V)`` that is not `ignore_index` raises
    TensorFlow's `InvalidArgumentError`."""
    opts = Options(ignore_index, label_smoothing, z_loss, softcap, "none")
    x, kept, valid = _kernel_tokens(logits, targets, ignore_index)
    weights = valid.astype(accumulator(x.dtype))
    grad = None
    if want_grad:
        if logits.dtype in _WIDENED:   # a float32 gradient (module doc): widened
            x = x.astype(np.float32)          # first, as the kernel writes its input's dtype
        grad = torch_views.empty_numpy(x)
    loss = losses_and_gradient(x, kept, valid, opts, weights, grad)
    shape = tuple(logits.shape)
    grad_tensor = (logits.new_empty(0) if grad is None
                   else torch_views.own_tensor(grad.reshape(shape)))
    return torch_views.own_tensor(loss.reshape(shape[:-1])), grad_tensor


@token_rows.register_fake
def _token_rows_fake(logits, targets, ignore_index, label_smoothing, z_loss, softcap, want_grad):
    """The outputs' shapes and dtypes, for the compiler (no data)."""
    loss = logits.new_empty(logits.shape[:-1], dtype=torch_views.accumulator_dtype(logits.dtype))
    grad = (logits.new_empty(logits.shape, dtype=_grad_dtype(logits.dtype)) if want_grad
            else logits.new_empty(0))
    return loss, grad


@torch.library.custom_op("xent::token_grad", mutates_args=(), device_types="cpu")
@quiet   # (runs when the graph runs, outside the public call)
def token_grad(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
               ignore_index: int, label_smoothing: float, z_loss: float,
               softcap: Optional[float]) -> torch.Tensor:
    """``weights_i · d loss_i / d logits_i`` ``[..., V]`` in the logits' dtype, each
    entry rounded once (`weights` ``[...]``, the upstream gradient of the
    losses, folded into the kernel's pass): `TokenLosses`' backward. Its
    buffer comes from xent's pool (`xent._buffers`), as the eager path's."""
    opts = Options(ignore_index, label_smoothing, z_loss, softcap, "none")
    x, kept, valid = _kernel_tokens(logits, targets, ignore_index)
    w = np.where(valid, torch_views.numpy_view(weights.contiguous()).reshape(-1), 0)
    grad = torch_views.empty_numpy(x)
    losses_and_gradient(x, kept, valid, opts, w.astype(accumulator(x.dtype)), grad)
    return torch_views.own_tensor(grad.reshape(tuple(logits.shape)))


@token_grad.register_fake
def _token_grad_fake(logits, targets, weights, *options):
    """The gradient's shape and dtype (the logits'), for the compiler."""
    return logits.new_empty(logits.shape)


@token_rows.register_vmap
def _token_rows_vmap(info, in_dims, logits, targets, *options):
    """Batch dimension first on both, then one call over all the tokens of all the batch."""
    x_dim, t_dim = in_dims[:2]
    size = info.batch_size
    x = logits.movedim(x_dim, 0) if x_dim is not None else logits.expand(size, *logits.shape)
    t = targets.movedim(t_dim, 0) if t_dim is not None else targets.expand(size, *targets.shape)
    loss, grad = token_rows(x, t, *options)
    return (loss, grad), (0, 0 if options[-1] else None)


def _token_rows_setup(ctx, inputs, output):
    """Save what `_token_rows_backward` needs: the targets (whose ignored tokens
    it keeps at 0) and the forward's gradient, or, without `want_grad`, the
    logits and options to make it again (nothing
    logits-sized beside the gradient: under torch.func the logits may be an
    intermediate that nothing else keeps)."""
    logits, targets, *options, want_grad = inputs
    ctx.set_materialize_grads(False)
    ctx.options, ctx.dtype = tuple(options), logits.dtype
    if want_grad:
        ctx.save_for_backward(None, targets, output[1])
    else:
        ctx.save_for_backward(logits, targets, None)


def _token_rows_backward(ctx, g_losses, g_grad):
    """The operator's formula (its own, and `TokenRows`'):
    ``d logits = grad ⊙ g_losses[..., None]``, the gradient made again if the
    forward had no `want_grad`; differentiable once: a gradient of the
    gradient output (a second derivative) raises. Ignored tokens' rows stay 0
    whatever their g is, as torch's (0 · NaN would be NaN)."""
    if g_grad is not None:
        refuse_second_derivative()
    logits, targets, grad = ctx.saved_tensors
    d_logits = None
    if g_losses is not None:
        if grad is None:
            grad = token_rows(logits, targets, *ctx.options, True)[1]
        kept = torch.where(targets != ctx.options[0], g_losses, 0)
        d_logits = (grad * kept[..., None]).to(ctx.dtype)
    return d_logits, *(None,) * 6


token_rows.register_autograd(_token_rows_backward, setup_context=_token_rows_setup)


def option_args(opts):
    """The operator's option arguments of `Options` `opts`."""
    return opts.ignore_index, opts.label_smoothing, opts.z_loss, opts.softcap


def refuse_second_derivative():
    """Raise: the kernel's gradient has no derivative of its own (eager and graphs)."""
    raise RuntimeError("xent's large-vocabulary functions are differentiable once: their "
                       "gradient comes from the fused kernel and has no derivative of its own "
                       "(create_graph=True, a Hessian, a gradient of a gradient, a gradient "
                       "penalty through the loss); on CPU tensors, compute such terms with "
                       "torch's own ops")


def refuse_forward_mode():
    """Raise: no forward mode (torch.func.jvp, jacfwd, hessian, forward_ad)."""
    raise RuntimeError("xent's large-vocabulary functions are differentiable once, in reverse "
                       "mode only: no forward mode (torch.func.jvp, jacfwd, hessian, "
                       "torch.autograd.forward_ad); on CPU tensors, compute such terms with "
                       "torch's own ops")


class TokenRows(torch.autograd.Function):
    """`token_rows` made differentiable once, for torch.func: logits get ``g ⊙ grad``.

    The gradient is an output, so that differentiating the backward's result
    again reaches this Function's backward with a gradient for it, which
    raises (a gradient kept as a constant would give a silent zero); so does
    forward mode (`jvp`), which `torch.func.hessian` starts with.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, targets, ignore_index, label_smoothing, z_loss, softcap, want_grad):
        """The operator; its arguments and outputs are the Function's."""
        return token_rows(logits, targets, ignore_index, label_smoothing, z_loss, softcap,
                          want_grad)

    setup_context = staticmethod(_token_rows_setup)
    backward = staticmethod(_token_rows_backward)

    @staticmethod
    def jvp(ctx, *tangents):
        refuse_forward_mode()


class TokenLosses(torch.autograd.Function):
    """The losses alone, for graphs torch.compile captures: the forward runs the
    kernel for the losses only, and the backward runs it again (`token_grad`)
    with the upstream gradient as the tokens' weights, writing the gradient
    once, rounded once. Nothing logits-sized is saved but the logits.

    Not `TokenRows`: the compiler would trace the unused gradient output's
    gradient as zeros (see `xent._torch_ops.RowsLoss`). Nor a saved gradient
    times the upstream one: inductor fused that multiply and wrote it over
    the saved gradient (torch 2.13), so that a second backward over a
    retained graph gave wrong numbers and changed the first's (at [2, 3, 5]
    float32 with a mean; with dynamic shapes and per-token losses). Compiled
    graphs have no double backward."""

    @staticmethod
    def forward(ctx, logits, targets, opts, want_grad):
        """The losses alone (`want_grad`, in `TokenRows`' signature, is not needed)."""
        loss, _ = token_rows(logits, targets, *option_args(opts), False)
        ctx.opts = opts
        ctx.save_for_backward(logits, targets)
        return loss

    @staticmethod
    def backward(ctx, g_losses):
        logits, targets = ctx.saved_tensors
        return token_grad(logits, targets, g_losses, *option_args(ctx.opts)), None, None, None


def losses(logits, targets, opts, want_grad):
    """``[...]`` per-token losses of ``[..., V]`` CPU logits, differentiable through
    the operator: `TokenLosses` inside torch.compile (the operator alone for
    torch.export), else `TokenRows`."""
    if torch.compiler.is_compiling():
        if torch_ops.exporting():   # (the operator itself, as `xent._torch._ops.Direct`)
            return token_rows(logits, targets, *option_args(opts), False)[0]
        return TokenLosses.apply(logits, targets, opts, want_grad)
    return TokenRows.apply(logits, targets, *option_args(opts), want_grad)[0]
