"""How pass A cuts a row: chunks of `CHUNK` entries, each swept in pieces (`piece_of`).

A chunk (8 KB of float32, in L1) has its own statistics (max, shift, sum of
exps: `xent._fused._chunks`). A piece is one run of the vectorised exp loop;
between two pieces the streamed kernel stores a piece of the previous row's
gradient (`xent._fused._stream`). Every kernel on float32 or float64 logits
sums its exps piece by piece, streamed or not, so that all of them give the
same bits.

Each piece ends in a reduction of the loop's vector sums, which costs the
exp loop a little in cache (AMD Zen 3, one thread, 8x32000, ns a logit,
whole chunks / pieces of 512, alternating processes): float32 loss
0.333-0.343 / 0.328-0.362, float32 in place 0.392-0.449 / 0.411-0.447. At
8192x32000 neither moved beyond the noise (loss 48-52 / 49-50 ms, in place
63-71 / 64-69 ms, 2 threads). Half-precision logits, which are never
streamed, keep whole chunks.
"""
import numpy as np
from numba import types
from numba.extending import overload

from xent._fused._options import LLVM_INLINE

__all__ = ["CHUNK", "PIECE", "piece_of"]

CHUNK = np.uint64(2048)
# 2 KB of float32 gradient: 64 stores of 32 bytes, as many as a Zen 3 core's
# store queue holds. Pieces of 256 were slower (more reductions), and whole
# chunks gain nothing from streaming (the burst stalls the core).
PIECE = np.uint64(512)


def piece_of(x):
    """The piece length for logits `x`: `PIECE` for float32 and float64, a whole
    `CHUNK` for half precision (numba only)."""


@overload(piece_of, jit_options=LLVM_INLINE)
def _piece_of_impl(x):
    step = PIECE if x.dtype in (types.float32, types.float64) else CHUNK
    return lambda x: step
