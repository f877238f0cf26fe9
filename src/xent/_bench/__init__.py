"""`xent bench`: xent against every installed peer, in one process, interleaved.

For each shape and dtype the cases run in turn, round after round, so that
every case sees the same machine (other processes, memory bandwidth, turbo)
and ratios within one round are trustworthy even when absolute times drift:

  - xent (`_cases`): the public functions (``nn`` for the loss, ``raw_ops``
    with ``backprop_out=`` for the gradient into a separate existing buffer or
    over the logits in place), and the same with the NumPy reference kernels
    (what xent does without numba);
  - peers, where installed (`_peers`): PyTorch eager (``F.cross_entropy`` +
    autograd), ``torch.compile`` of it (full run only), TensorFlow's raw op,
    JAX ``jit`` of optax's loss (``value_and_grad``), plain NumPy, and xent
    called on PyTorch tensors and JAX arrays;
  - floors (`_floors`): the machine's copy of the logits into a preallocated
    buffer and its read of them, each on xent's thread count (the least any
    implementation can do for loss+gradient and for the loss alone).

Reported per case (`_report`): median time, GB/s (logits bytes read, plus
written for a gradient), the multiple of the copy or read floor (for xent on
large inputs, the median of each call's time over the floor timed right
before it: `_timing`), the speed-up over the fastest peer, and the peak extra
memory per row (`_memory`). A good-neighbour check measures, after each
implementation's gradient call, the CPU its idle threads burn and how much
slower a copy runs. What ran it is in `_machine`; the command itself, which
compiles the kernels first and then walks the inputs, is `_run`. Results go
to ``OUT/bench.json``, ``OUT/bench.png`` and ``OUT/bench.md``.
"""
from xent._bench._run import main

__all__ = ["main"]
