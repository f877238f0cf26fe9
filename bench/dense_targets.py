"""Dense targets at a large shape: the targets' prefetches, and plain against streamed stores.

    python bench/dense_targets.py [REPEATS] [N C]

One process times, interleaved round by round, on float32 logits ``[N, C]``
(default 8192x32000) and label-smoothed target rows of the same shape: the
2-thread memcpy of the logits (the copy floor), the read of logits and
targets (max of each), and `xent._fused._launch.dense_rows` for the loss, the
gradient in place and the gradient into a warm separate buffer with plain or
streamed stores (`_launch.STREAM`), each with pass A prefetching the targets
(`_launch.FETCH_TARGETS_MIN_BYTES` = 0) and without (the logits only). It
prints a markdown table of medians (ms) and of each median over the copy
floor's. The host's own prefetch choice (`_launch.fetches_ahead`) stays on.
"""
import sys

import numpy as np

import xent
from xent._bench._floors import on_threads
from xent._bench._timing import interleaved_medians
from xent._fused import _launch


def cases(logits, targets, threads):
    """{name: call}: the floors, then each need with and without the targets' prefetches."""
    copy, out, work = np.empty_like(logits), np.empty_like(logits), logits.copy()
    n, default = len(logits), _launch.FETCH_TARGETS_MIN_BYTES

    def read(rows):
        logits[rows].max()
        targets[rows].max()

    def knobs(call, fetch_targets, stream=None):
        def run():
            _launch.FETCH_TARGETS_MIN_BYTES = 0 if fetch_targets else 1 << 62
            _launch.STREAM = stream
            try:
                call()
            finally:
                _launch.FETCH_TARGETS_MIN_BYTES, _launch.STREAM = default, None
        return run

    table = {"copy floor": lambda: on_threads(lambda r: np.copyto(copy[r], logits[r]), n, threads),
             "read logits and targets": lambda: on_threads(read, n, threads)}
    for fetch in (True, False):
        tag = "targets prefetched" if fetch else "logits only"
        table[f"loss, {tag}"] = knobs(lambda: _launch.dense_rows(logits, targets), fetch)
        table[f"in place, {tag}"] = knobs(lambda: _launch.dense_rows(work, targets, work), fetch)
        for stream in (False, True):
            kind = "streamed" if stream else "plain stores"
            table[f"into a buffer ({kind}), {tag}"] = knobs(
                lambda: _launch.dense_rows(logits, targets, out), fetch, stream)
    return table


def main():
    if len(sys.argv) not in (1, 2, 4):
        sys.exit("usage: python bench/dense_targets.py [REPEATS] [N C]  (N without C is not a shape)")
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    shape = tuple(int(v) for v in sys.argv[2:4]) if len(sys.argv) > 3 else (8192, 32000)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape, np.float32) * 3
    targets = np.full(shape, 0.1 / shape[1], np.float32)
    targets[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] += np.float32(0.9)
    threads = xent.get_num_threads()
    ms = interleaved_medians(cases(logits, targets, threads), repeats)
    floor = ms["copy floor"]
    print(f"{shape[0]}×{shape[1]} float32, dense targets, {threads} threads, medians of "
          f"{repeats} interleaved rounds\n")
    print("| case | ms | × copy floor |")
    print("|---|---:|---:|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} | {value / floor:.2f} |")


if __name__ == "__main__":
    main()
