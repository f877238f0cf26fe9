"""A gradient into a separate buffer with plain stores against streamed (non-temporal) ones.

    python bench/streamed_gradient.py [REPEATS]

For each shape, one process times, interleaved round by round: the 2-thread
memcpy of the logits (the copy floor), the float32 loss+gradient into a warm
separate buffer with plain stores (`xent._fused._launch.STREAM = False`),
the same streamed (`STREAM = True`, `xent._fused._stream`) into a NumPy
buffer (whose data starts 16 bytes into a cache line) and into one that
starts on a line, and the gradient over the logits in place. It prints a markdown table of medians (ms) and of
each median over the copy floor's. From `_launch.STREAM_MIN_BYTES` of
gradient on, xent itself times both kinds on its first calls and keeps the
faster (`_launch.STORES`); both kernels give the same bits.
"""
import sys

import numpy as np

import xent
from xent._bench._floors import on_threads
from xent._bench._timing import interleaved_medians
from xent._fused import _launch

SHAPES = [(2048, 4096), (4096, 4096), (8192, 32000), (2048, 128256)]


def gradient_into(logits, labels, out, stream):
    """Loss and gradient into `out`, with streamed stores or plain ones."""
    _launch.STREAM = stream
    try:
        _launch.sparse_rows(logits, labels, out)
    finally:
        _launch.STREAM = None


def line_aligned(shape):
    """A float32 array of `shape` whose data starts on a 64-byte cache line."""
    size = int(np.prod(shape))
    raw = np.empty(size + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip:skip + size].reshape(shape)


def measure(shape, repeats):
    """Median ms per case, interleaved over `repeats` rounds."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape, np.float32) * 3
    labels = rng.integers(0, shape[1], shape[0])
    out, work, copy = np.empty_like(logits), logits.copy(), np.empty_like(logits)
    on_line = line_aligned(logits.shape)
    threads, n = xent.get_num_threads(), shape[0]
    cases = {
        "copy floor": lambda: on_threads(lambda r: np.copyto(copy[r], logits[r]), n, threads),
        "plain stores": lambda: gradient_into(logits, labels, out, False),
        "streamed": lambda: gradient_into(logits, labels, out, True),
        "streamed, on a line": lambda: gradient_into(logits, labels, on_line, True),
        "in place": lambda: _launch.sparse_rows(work, labels, work),
    }
    return interleaved_medians(cases, repeats)


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    print(f"{xent.get_num_threads()} threads, medians of {repeats} interleaved rounds (ms; "
          f"× the copy floor)\n")
    print("| float32 | MB | copy floor | plain stores | streamed | streamed, on a line | in place |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape in SHAPES:
        ms = measure(shape, repeats)
        floor = ms["copy floor"]
        cells = [f"{ms[k]:.1f} ({ms[k] / floor:.2f}×)"
                 for k in ("plain stores", "streamed", "streamed, on a line", "in place")]
        print(f"| {shape[0]}×{shape[1]} | {shape[0] * shape[1] * 4 >> 20} | {floor:.1f} | "
              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
