"""The float32 loss against the read floor, per thread count and prefetch choice.

    python bench/loss_threads.py [ROWS CLASSES]

One process, interleaved rounds, medians (ms; x the read floor timed on the
same thread count): xent's loss (`xent.nn` on NumPy) with pass A prefetching
the logits ahead and without (`xent._fused._launch.FETCH_AHEAD`), at each thread
count from 1 up to the cores, doubling. Where the loss sits far above the
read floor on many threads, this says whether the prefetch choice or the
thread count is why.
"""
import os
import sys
import time

import numpy as np

import xent
from xent._bench._cases import make_inputs
from xent._bench._floors import floor_cases
from xent._fused import _launch


def main(rows=8192, classes=32000, rounds=7):
    logits, labels = make_inputs((rows, classes), "float32")
    loss = lambda: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    counts, n = [], 1
    while n < os.cpu_count():
        counts.append(n)
        n *= 2
    counts.append(os.cpu_count())
    print(f"{rows}x{classes} float32 loss, {os.cpu_count()} cores, medians of {rounds} rounds\n")
    print("| threads | read floor ms | loss, prefetch ms (x read) | loss, no prefetch ms (x read) |")
    print("|---:|---:|---:|---:|")
    for threads in counts:
        xent.set_num_threads(threads)
        read = next(c for c in floor_cases(logits) if c.name == "read floor")   # (on these threads)
        times = {"read": [], True: [], False: []}
        for _ in range(rounds + 1):   # (the first round warms up and is dropped)
            for key in times:
                _launch.FETCH_AHEAD = None if key == "read" else key
                start = time.perf_counter()
                read.run() if key == "read" else loss()
                times[key].append(time.perf_counter() - start)
        _launch.FETCH_AHEAD = None
        med = {k: 1e3 * float(np.median(v[1:])) for k, v in times.items()}
        print(f"| {threads} | {med['read']:.1f} | {med[True]:.1f} ({med[True] / med['read']:.2f}x) "
              f"| {med[False]:.1f} ({med[False] / med['read']:.2f}x) |", flush=True)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:3]))
