"""PyTorch backend: tensors in, tensors out, differentiable by `torch.autograd`.

Imported only when a `torch.Tensor` reaches a public function (see
`xent._backend`). The numbers come from one of two places (`_math.loss_and_backprop`):

  - CPU tensors: the fused NumPy kernel (`xent._core`), run on zero-copy NumPy
    views of the tensors (`_views`; bfloat16 through an int16 view). A label
    outside ``[0, C)`` raises TensorFlow's `InvalidArgumentError` before any work.
  - any other device: the same steps as torch ops (`xent._array_kernels`), so
    the data stays on the device; a bad label gives NaN rows, as TensorFlow
    on a GPU (checking would cost a device sync).

The modules, from the faces down:

  - `_backend`: `TorchBackend`, what `xent._backend` hands the faces; it sends
    each call to the eager Functions or to the registered operators.
  - `_eager`: the autograd Functions of eager calls (the backprop written in
    the forward's kernel pass and scaled in place in the backward).
  - `_upstream`: the upstream gradient a large loss expects, folded into the
    kernel's pass instead of scaled after it.
  - `_ops`: the kernel as registered torch operators, for `torch.compile` and
    `torch.func`.
  - `_math`: the loss and its gradient pieces on tensors; `_views`: tensors and
    NumPy arrays as views of one another.
"""
from xent._torch._backend import TorchBackend
from xent._torch._math import use_torch_ops_on_cpu

__all__ = ["TorchBackend", "use_torch_ops_on_cpu"]
