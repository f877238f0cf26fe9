"""What xent's threads buy at each size: one thread against `xent.get_num_threads()`.

    python bench/thread_split.py [CLASSES]

For float32 logits of 4 MB to 250 MB (rows of CLASSES classes, default 1000),
times the sparse loss alone and the loss with its gradient into a buffer
(`xent._fused._launch.sparse_rows`, the call every face makes) on one thread
and on all of xent's threads, interleaved, and prints the medians in ms and
the speed-up. Inputs from `PARALLEL_MIN_BYTES` on are split over threads
(`xent._fused._pool`); here every size is, so that the smallest show where
splitting starts to pay on this machine.
"""
import sys
import time

import numpy as np

import xent
from xent._fused import _launch

SIZES_MB = (4, 8, 16, 64, 250)
ROUNDS = 21


def main(classes=1000):
    """Print one line per size: ms for one thread and for all, loss and gradient."""
    threads = xent.get_num_threads()
    rng = np.random.default_rng(0)
    print(f"float32 rows of {classes}; {threads} threads against 1; medians of {ROUNDS}, ms")
    saved = _launch.PARALLEL_MIN_BYTES
    _launch.PARALLEL_MIN_BYTES = 0
    try:
        for mb in SIZES_MB:
            rows = max(1, mb * 2**20 // (4 * classes))
            x = rng.standard_normal((rows, classes)).astype(np.float32)
            labels = rng.integers(0, classes, rows)
            out = np.empty_like(x)
            times = {}
            for round_index in range(ROUNDS + 1):
                for count in (1, threads):
                    xent.set_num_threads(count)
                    for need, grad in (("loss", None), ("grad", out)):
                        start = time.perf_counter()
                        _launch.sparse_rows(x, labels, grad)
                        if round_index:   # (the first round warms up)
                            times.setdefault((need, count), []).append(time.perf_counter() - start)
            line = [f"{mb:4d} MB {rows}x{classes}:"]
            for need in ("loss", "grad"):
                one, many = (np.median(times[(need, c)]) * 1e3 for c in (1, threads))
                line.append(f"{need} {one:.2f} / {many:.2f} ({one / many:.2f}x)")
            print("  ".join(line), flush=True)
    finally:
        _launch.PARALLEL_MIN_BYTES = saved
        xent.set_num_threads(threads)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
