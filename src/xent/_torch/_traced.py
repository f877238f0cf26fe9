"""The TF faces' losses in plain torch ops, for torch.func transforms inside torch.compile.

torch 2.13's dynamo traces a `torch.func` transform (``grad``, ``vmap`` of
``grad``, ``jacrev``) inside a compiled function through an
autograd.Function's forward and differentiates that forward itself: the
Function's own backward is ignored (a toy Function of ``x*x`` whose backward
gives ``5·g`` came out ``2·x``), and a registered operator inside it is
refused ("must override the setup_context staticmethod"). There the faces
get these losses instead (`in_compiled_transform`): torch ops whose autograd
derivative is TensorFlow's registered gradient. With ``lse`` each row's
log-sum-exp, ``p = softmax(x)`` and ``sg`` a stop-gradient (``detach``):

    sparse: loss = (lse - x_label) · s      s = 1, NaN where the label is out of range
            d/dx = s · (p - one_hot(label)) (NaN rows out of range, as TF on a GPU)
    dense:  loss = -Σ_j sg(y_j)·ls_j + (Σ_j sg(y_j) - 1)·(sg(lse) - lse)
                   - Σ_j (y_j - sg(y_j))·ls_j             (ls = log_softmax(x))
            value -Σ_j y_j·ls_j; d/dx = p - y (TF's, whatever Σ_j y_j); d/dy = -ls

The last dense term (zero-valued) gives the labels theirs, in reverse and
forward mode; at a -inf logit, where TF's labels gradient is +inf, it gives
0 (its 0·inf would make the loss NaN). Second derivatives in the logits are
softmax's, as TF's, and the labels' gradient differentiated in the logits is
TF's ``p - e_j``; autograd's mixed derivatives are symmetric, so the logits'
gradient differentiated in the labels is that too, where TF's is 0 (its
backprop passes nothing to the labels). The kernel does not run: these are
the torch-ops path of other devices (`_array_kernels`).
"""
import torch

from xent import _array_kernels
from xent._torch._math import Ops, differentiable_backprop
from xent._torch._views import accumulate

__all__ = ["in_compiled_transform", "loss", "loss_and_backprop"]


def in_compiled_transform():
    """Whether torch.compile is tracing a `torch.func` transform (see the module doc)."""
    return torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def loss(kind, logits, labels):
    """Per-row loss ``[...]`` (accumulator dtype) of ``[..., C]`` `logits`, differentiable
    by autograd into TF's gradient (module doc); `labels` int ``[...]`` (sparse)
    or of the logits' shape (dense)."""
    x = accumulate(logits)
    m, log_sum = _array_kernels.normaliser(Ops, x)
    if kind == "sparse":
        valid = _array_kernels.valid_labels(labels, x.shape[-1])
        picked = Ops.take_last(x, torch.where(valid, labels, 0)) - m[..., 0]
        nan_rows = torch.where(valid, 1.0, float("nan")).to(x.dtype)
        return (log_sum[..., 0] - picked) * nan_rows
    y = labels.to(x.dtype)
    ls = (x - m) - log_sum
    y_const = y.detach()
    total = -(y_const * ls).sum(-1)
    total = total + (y_const.sum(-1) - 1) * (log_sum.detach() - log_sum)[..., 0]
    # (always: under jvp/jacfwd the labels are dual tensors that say no requires_grad,
    # and a detached ls cut d/dx of the labels' gradient: both 0, found by a review)
    kept = torch.where(torch.isfinite(ls), ls, 0)
    return total - ((y - y_const) * kept).sum(-1)


def loss_and_backprop(kind, logits, labels):
    """The raw op's ``(loss, backprop)``, both differentiable into TF's gradients:
    `loss` above and TF's backprop in torch ops (logits' dtype)."""
    return loss(kind, logits, labels), differentiable_backprop(kind, logits, labels).to(logits.dtype)
