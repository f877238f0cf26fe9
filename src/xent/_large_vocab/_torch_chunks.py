"""`linear_cross_entropy`'s chunk loop (`xent._large_vocab._linear.chunked`) on CPU
torch tensors, with torch's matmuls. Used by the eager Function
(`xent._large_vocab._torch`) and the registered operator (`_torch_linear_ops`).
"""
import torch

from xent._large_vocab._linear import chunked
from xent._torch import _views as torch_views

__all__ = ["gradients_in_forward", "run_chunks", "TorchMatmuls"]


class TorchMatmuls:
    """The chunk loop's matmuls (`xent._large_vocab._linear`) on CPU tensors."""

    numpy = staticmethod(torch_views.numpy_view)
    zeros_like = staticmethod(torch.zeros_like)

    @staticmethod
    def empty(shape, like):
        return torch.empty(shape, dtype=like.dtype)

    @staticmethod
    def rows(x, index):
        return x[torch.from_numpy(index)]

    @staticmethod
    def put_rows(x, index, values):
        x[torch.from_numpy(index)] = values

    @staticmethod
    def logits(x, weight, bias, out):
        if bias is None:
            torch.mm(x, weight.t(), out=out)
        else:
            torch.addmm(bias, x, weight.t(), out=out)

    @staticmethod
    def input_grad(g, weight, out):
        torch.mm(g, weight, out=out)

    @staticmethod
    def add_weight_grad(dw, g, x):
        if dw.dtype != g.dtype:    # half precision: accumulate in float32
            g, x = g.to(dw.dtype), x.to(dw.dtype)
        dw.addmm_(g.t(), x)

    @staticmethod
    def add_bias_grad(db, g):
        db += g.sum(dim=0, dtype=db.dtype)


def _linear_grads(x, weight, bias, wanted):
    """Zeroed gradient buffers (None where not `wanted`): dx in x's dtype, dW and db
    in the accumulator dtype."""
    acc = torch_views.accumulator_dtype(x.dtype)
    dx = torch.zeros_like(x) if wanted[0] else None
    dw = torch.zeros(weight.shape, dtype=acc) if wanted[1] else None
    db = torch.zeros(bias.shape, dtype=acc) if wanted[2] and bias is not None else None
    return dx, dw, db


def gradients_in_forward(reduction, dtype):
    """Whether the chunk loop makes the inputs' gradients in the forward: for a mean
    or a sum (their token weights are known then), but not in float16, whose
    gradients must meet the upstream gradient (a loss scale, often) before they
    are rounded. Otherwise the backward runs the chunks again with the upstream
    gradient in the token weights."""
    return reduction != "none" and dtype != torch.float16


def run_chunks(x2, w, b, targets, valid, opts, chunk, weights, wanted):
    """``(grads or None, losses)`` of the chunk loop on CPU tensors, with torch's
    matmuls; `wanted` says which of ``(dx, dW, db)`` to make (the others are None).

    Until session 37 float32/float64 ran NumPy's matmuls on NumPy views (at
    64-token chunks its gemm had been 1.4-2x faster than torch's). At today's
    chunks torch's are as fast or faster, and they keep their speed on a busy
    host, where OpenBLAS's threads wait spinning for a descheduled partner:
    2048 tokens, H=512, V=32000 float32, a step on 2 cores (Intel Xeon,
    rocketlake), against F.linear + F.cross_entropy: quiet 0.91x (NumPy's 0.93x;
    chunks of 64: 1.11 against 1.27x), beside two busy processes 1.02x
    (NumPy's 1.93x; an independent review measured 3.7x under its load).
    """
    grads = _linear_grads(x2, w, b, wanted) if any(wanted) else None
    return grads, chunked(TorchMatmuls, x2, w, b, targets, valid, opts, chunk, weights, grads)
