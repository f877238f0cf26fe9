"""A half-precision parameter that many chunks use, its gradients summed in float32.

Autograd adds up the gradients of a tensor used several times in that tensor's
own dtype: the weight (and bias) that every chunk of `linear_cross_entropy`'s
torch-ops path (tensors on other devices) multiplies summed its chunks'
bfloat16 gradients in bfloat16, up to 1957 ulps off at 11 chunks (an
independent review), where the kernels and JAX sum them in float32, as the
SPEC asks. `shared_in_float32(a)` gives a function that each chunk calls for
`a`: the chunk's forward uses `a` itself (no copy, the matmul in its dtype),
and the chunks' gradients meet in a float32 stand-in (a broadcast zero: no
memory until the gradient), rounded once to `a`'s dtype at the end.
"""
import torch

__all__ = ["shared_in_float32"]


class _Hub(torch.autograd.Function):
    """A float32 stand-in for `a`, whose gradient (every chunk's, summed in float32)
    reaches `a` rounded once."""

    @staticmethod
    def forward(ctx, a):
        ctx.dtype = a.dtype
        return torch.zeros((), dtype=torch.float32, device=a.device).expand(a.shape)

    @staticmethod
    def backward(ctx, g):
        return g.to(ctx.dtype)


class _Use(torch.autograd.Function):
    """`a` for one chunk (its memory, detached), its gradient sent to the hub in float32."""

    @staticmethod
    def forward(ctx, hub, a):
        return a.detach()

    @staticmethod
    def backward(ctx, g):
        return g.float(), None


def shared_in_float32(a):
    """A function giving `a` to each chunk that uses it; for a float16/bfloat16 `a`
    that autograd will differentiate (not under a torch.func transform, whose
    Functions need rules of their own), the chunks' gradients summed in float32."""
    if (a is None or a.dtype not in (torch.float16, torch.bfloat16) or not a.requires_grad
            or not torch.is_grad_enabled() or torch._C._are_functorch_transforms_active()):
        return lambda: a
    hub = _Hub.apply(a)
    return lambda: _Use.apply(hub, a)
