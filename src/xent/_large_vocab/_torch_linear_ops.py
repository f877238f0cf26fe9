"""`xent.linear_cross_entropy` as a registered torch operator, for `torch.compile`
and `torch.func` (as `_torch_ops` does for `cross_entropy`).

    xent::linear_rows(x [..., H], weight [V, H], bias [V]?, targets [...], weights [...],
                      ignore_index, label_smoothing, z_loss, softcap, chunk,
                      want_x, want_weight, want_bias)
        -> (total [], losses [...], dx [..., H], dW [V, H], db [V])

runs the chunk loop (`_torch_chunks.run_chunks`): ``losses`` per token (the
accumulator dtype; 0 where ignored), ``total = Σ_i weights_i·losses_i``, and
the gradients of ``total`` that are wanted (an empty ``[0]`` tensor for the
others): dx in x's dtype, dW and db in the accumulator dtype. The faces pick
the weights: ``1/count`` for the mean, 1 for the sum; their backward scales
the forward's gradients by the upstream gradient. Per-token losses
(``"none"``) and float16 (whose gradients must meet a loss scale before they
are rounded) make no gradient in the forward: the backward runs the chunks
again with the upstream gradient as the weights, as the eager path does.
The tokens keep the caller's dimensions through the operator (see `_torch_ops`).
Its own autograd formula serves direct calls (`torch.library.opcheck`); xent's
faces differentiate it through `LinearRows` and `LinearLoss`.
"""
from typing import Optional

import numpy as np
import torch

from xent._errstate import quiet
from xent._large_vocab import _numpy
from xent._large_vocab._options import Options
from xent._large_vocab._torch_chunks import gradients_in_forward, run_chunks
from xent._large_vocab._torch_ops import option_args, refuse_forward_mode, refuse_second_derivative
from xent._torch import _ops as torch_ops
from xent._torch import _views as torch_views

__all__ = ["linear_rows", "LinearRows", "LinearLoss", "loss"]


@torch.library.custom_op("xent::linear_rows", mutates_args=(), device_types="cpu")
@quiet   # (runs when the graph runs, outside the public call)
def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                targets: torch.Tensor, weights: torch.Tensor, ignore_index: int,
                label_smoothing: float, z_loss: float, softcap: Optional[float], chunk: int,
                want_x: bool, want_weight: bool, want_bias: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chunk loop on CPU tensors (see the module doc); a target outside ``[0, V)``
    that is not `ignore_index` raises TensorFlow's `InvalidArgumentError`."""
    opts = Options(ignore_index, label_smoothing, z_loss, softcap, "none")
    kept, valid = _numpy.tokens(torch_views.numpy_view(targets), ignore_index, weight.shape[0])
    acc = torch_views.numpy_accumulator(x.dtype)
    given = torch_views.numpy_view(weights.reshape(-1).contiguous())
    row_weights = np.where(valid, given, 0).astype(acc)
    wanted = (want_x, want_weight, want_bias and bias is not None)
    b = None if bias is None else bias.contiguous()
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    grads, losses = run_chunks(x2, weight.contiguous(), b, kept, valid, opts, chunk, row_weights, wanted)
    total = torch.tensor(np.dot(losses, row_weights), dtype=torch_views.accumulator_dtype(x.dtype))
    dx, dw, db = (None,) * 3 if grads is None else grads
    dx = None if dx is None else dx.reshape(x.shape)
    return (total, torch.from_numpy(losses.reshape(tuple(x.shape[:-1]))),
            *(x.new_empty(0) if g is None else g for g in (dx, dw, db)))   # (no aliases: an empty each)


@linear_rows.register_fake
def _linear_rows_fake(x, weight, bias, targets, weights, ignore_index, label_smoothing, z_loss,
                      softcap, chunk, want_x, want_weight, want_bias):
    """The outputs' shapes and dtypes, for the compiler (no data)."""
    acc = torch_views.accumulator_dtype(x.dtype)
    return (x.new_empty((), dtype=acc), x.new_empty(x.shape[:-1], dtype=acc),
            x.new_empty(x.shape if want_x else (0,)),
            x.new_empty(weight.shape if want_weight else (0,), dtype=acc if want_weight else x.dtype),
            x.new_empty(bias.shape, dtype=acc) if want_bias and bias is not None else x.new_empty(0))


@linear_rows.register_vmap
def _linear_rows_vmap(info, in_dims, x, weight, bias, targets, weights, *rest):
    """One call per batch element (folding the batch into the tokens would sum the
    weight gradients of the whole batch), the outputs stacked; an output not
    wanted stays one empty ``[0]``."""
    tensors = (x, weight, bias, targets, weights)
    calls = [linear_rows(*(a if d is None or a is None else a.select(d, i)
                           for a, d in zip(tensors, in_dims[:5])), *rest)
             for i in range(info.batch_size)]
    wanted = (True, True, *rest[-3:-1], rest[-1] and bias is not None)
    outputs = tuple(torch.stack(parts) if want else parts[0]
                    for parts, want in zip(zip(*calls), wanted))
    return outputs, tuple(0 if want else None for want in wanted)


def _call(x, weight, bias, targets, weights, opts, chunk, wanted):
    """`linear_rows` with `Options` `opts` and `wanted` = (x, weight, bias)."""
    return linear_rows(x, weight, bias, targets, weights, *option_args(opts), chunk, *wanted)


@torch.library.custom_op("xent::scale_grads", mutates_args=(), device_types="cpu")
@quiet   # (runs when the graph runs, outside the public call)
def scale_grads(grads: list[torch.Tensor], g: torch.Tensor) -> list[torch.Tensor]:
    """Each of `grads` times the 0-d `g`, as new tensors: `LinearLoss`' scaling of
    its saved gradients, an operator so that inductor cannot write the
    products over them (it did so with a fused multiply of a saved gradient
    elsewhere: see `xent._large_vocab._torch_ops.TokenLosses`)."""
    return [t * g for t in grads]


@scale_grads.register_fake
def _scale_grads_fake(grads, g):
    """The products' shapes and dtypes, for the compiler."""
    return [t.new_empty(t.shape, dtype=torch.result_type(t, g)) for t in grads]


def _scaled(grads, g):
    """``g · t`` for each of `grads` (`LinearRows` and the operator's own formula)."""
    return tuple(t * g for t in grads)


def _gradients(ctx, g_total, g_losses, rerun, scale=_scaled):
    """The gradients of x, weight and bias from `ctx`'s saved tensors (x, weight,
    bias, targets, weights, then the forward's dx, dW, db: an empty ``[0]``
    where not made): those scaled by `g_total`, or, with per-token `g_losses`
    or a needed gradient the forward did not make, the gradients of a second
    run of the chunks with those weights, ``rerun((x, weight, bias, targets,
    weights), wanted)`` (the operator's outputs). `scale(grads, g)` scales them."""
    x, weight, bias, targets, weights, *grads = ctx.saved_tensors
    inputs, wanted = (x, weight, bias), tuple(ctx.needs_input_grad[:3])
    if g_losses is None and g_total is None:
        return (None,) * 3
    made = all(g.shape == a.shape for g, a, want in zip(grads, inputs, wanted) if want)
    if g_losses is not None or not made:
        w = g_losses if g_losses is not None else 0
        w = w + (0 if g_total is None else g_total * weights)
        grads = rerun((x, weight, bias, targets, w.to(weights.dtype)), wanted)[2:]
    else:
        grads = scale(grads, g_total)
    return tuple(g.to(a.dtype) if want and g.shape == a.shape else None   # (else not made)
                 for g, a, want in zip(grads, inputs, wanted))


def _refuse_gradients_of_gradients(*g_grads):
    """Raise if any of the gradient outputs' gradients is used (not None)."""
    if any(g is not None for g in g_grads):
        refuse_second_derivative()


def _linear_rows_setup(ctx, inputs, output):
    """Save what the operator's own backward needs: the tensors, the options and
    the forward's gradients (an empty ``[0]`` where not made)."""
    x, weight, bias, targets, weights, *options = inputs
    ctx.set_materialize_grads(False)
    ctx.options = tuple(options[:-3])   # (the options and the chunk, not the wants)
    ctx.save_for_backward(x, weight, bias, targets, weights, *output[2:])


def _linear_rows_backward(ctx, g_total, g_losses, *g_grads):
    """The operator's own formula, for direct calls (`LinearRows` serves xent's);
    differentiable once."""
    _refuse_gradients_of_gradients(*g_grads)
    grads = _gradients(ctx, g_total, g_losses,
                       lambda tensors, wanted: linear_rows(*tensors, *ctx.options, *wanted))
    return *grads, *(None,) * 10


linear_rows.register_autograd(_linear_rows_backward, setup_context=_linear_rows_setup)


class LinearRows(torch.autograd.Function):
    """`linear_rows` made differentiable once, for torch.func; the gradients are
    outputs, so that differentiating them again raises (see `TokenRows`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, targets, weights, opts, chunk, wanted):
        return _call(x, weight, bias, targets, weights, opts, chunk, wanted)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        x, weight, bias, targets, weights, ctx.opts, ctx.chunk, _ = inputs
        ctx.save_for_backward(x, weight, bias, targets, weights, *output[2:])

    @staticmethod
    def backward(ctx, g_total, g_losses, *g_grads):
        _refuse_gradients_of_gradients(*g_grads)
        grads = _gradients(ctx, g_total, g_losses, lambda tensors, wanted: LinearRows.apply(
            *tensors, ctx.opts, ctx.chunk, wanted))
        return (*grads, None, None, None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        refuse_forward_mode()


class LinearLoss(torch.autograd.Function):
    """The total (or, with `per_token`, the losses) alone, for graphs torch.compile
    captures (see `TokenLosses`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, weights, opts, chunk, wanted, per_token):
        total, losses, *grads = _call(x, weight, bias, targets, weights, opts, chunk, wanted)
        ctx.opts, ctx.chunk, ctx.per_token = opts, chunk, per_token
        ctx.save_for_backward(x, weight, bias, targets, weights, *grads)
        return losses if per_token else total

    @staticmethod
    def backward(ctx, g):
        g_total, g_losses = (None, g) if ctx.per_token else (g, None)
        grads = _gradients(ctx, g_total, g_losses, lambda tensors, wanted: _call(
            *tensors, ctx.opts, ctx.chunk, wanted),
            scale=lambda grads, g: scale_grads(list(grads), g))
        return (*grads, None, None, None, None, None, None)


def loss(x, weight, bias, target, opts, chunk):
    """`linear_cross_entropy` on CPU tensors through the operator: the mean, the sum or
    the per-token losses of ``x [..., H]`` against ``target [...]``, in x's dtype."""
    valid = (target != opts.ignore_index).to(torch_views.accumulator_dtype(x.dtype))
    weights = valid / valid.sum().clamp(min=1) if opts.reduction == "mean" else valid
    per_token = opts.reduction == "none"
    wanted = tuple(torch.is_grad_enabled() and a is not None and a.requires_grad
                   for a in (x, weight, bias))
    if not gradients_in_forward(opts.reduction, x.dtype):   # (in the backward: module doc)
        wanted = (False,) * 3
    if torch.compiler.is_compiling() and torch_ops.exporting():   # (`xent._torch._ops.Direct`:
        # the gradients made by the backward, not by every call of the exported program)
        total, losses = _call(x, weight, bias, target, weights, opts, chunk, (False,) * 3)[:2]
        out = losses if per_token else total
    elif torch.compiler.is_compiling():
        out = LinearLoss.apply(x, weight, bias, target, weights, opts, chunk, wanted, per_token)
    else:
        total, losses = LinearRows.apply(x, weight, bias, target, weights, opts, chunk, wanted)[:2]
        out = losses if per_token else total
    return out.to(x.dtype)
