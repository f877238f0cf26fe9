"""Large-vocabulary training: `cross_entropy` and `linear_cross_entropy` (beyond TensorFlow).

Names and meanings follow `torch.nn.functional.cross_entropy` and
`torch.nn.functional.linear_cross_entropy` where the two overlap; the class
axis is last. Modules:

  _api            the two public functions: checks, then a face per array type
  _options        the options, checked once (`Options`)
  _shapes         shape and dtype checks for every array type
  _tokens         ignored tokens, the targets' range, reductions
  _rows           one block of logits: loss and gradient on the fused kernel
  _cross_entropy  the kernel over blocks of rows
  _linear         the chunk loop of linear_cross_entropy
  _blas           dW += gᵀ·x through NumPy's BLAS (gemm with beta = 1)
  _numpy          the NumPy face (``return_grads``)
  _torch          torch autograd (CPU: the kernel; other devices: torch ops)
  _jax            jax custom_vjp (jax.numpy)
  _array_math     the per-token math in a framework's ops (torch devices, JAX)
"""
from xent._large_vocab._api import cross_entropy, linear_cross_entropy

__all__ = ["cross_entropy", "linear_cross_entropy"]
