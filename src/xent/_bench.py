"""`xent bench`: xent against every installed peer, in one process, interleaved.

For each shape and dtype the cases below run in turn, round after round, so
that every case sees the same machine (other processes, memory bandwidth,
turbo) and ratios within one round are trustworthy even when absolute times
drift:

  - xent: the public functions (``nn`` for the loss, ``raw_ops`` with
    ``backprop_out=`` for the gradient into a separate existing buffer or over
    the logits in place), and the same with the NumPy reference kernels (what
    xent does without numba);
  - peers, where installed: PyTorch eager (``F.cross_entropy`` + autograd),
    ``torch.compile`` of it (full run only), TensorFlow's raw op, JAX ``jit``
    of optax's loss (``value_and_grad``), plain NumPy, and xent called on
    PyTorch tensors and JAX arrays;
  - floors: the machine's copy of the logits into a preallocated buffer and
    its read of them, each on xent's thread count (the least any
    implementation can do for loss+gradient and for the loss alone).

Reported per case: median time, GB/s (logits bytes read, plus written for a
gradient), the multiple of the copy or read floor (for xent on large
inputs, the median of each call's time over the floor timed right before
it), the speed-up over the fastest peer, and the peak extra memory per row
(NumPy allocations through tracemalloc, JAX from XLA's compiled program,
others, and numba's scratch, from the resident set's high-water mark). A
good-neighbour check measures, after each implementation's gradient call,
the CPU its idle threads burn and how much slower a copy runs.
Results go to ``OUT/bench.json``, ``OUT/bench.png`` and ``OUT/bench.md``.
"""
import contextlib
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

import xent
from xent import _core, _dtypes

FULL_SHAPES = ((8192, 32000), (2048, 128256), (65536, 10), (32, 1000))
QUICK_SHAPES = ((512, 32000), (128, 128256), (65536, 10), (32, 1000))
DTYPES = ("float32", "bfloat16")
MODES = ("loss", "grad", "grad_inplace")
NEIGHBOUR_SHAPE = (512, 32000)   # 64 MB: above xent's threading threshold, quick for every peer
MODE_TITLES = {"loss": "loss", "grad": "loss+grad", "grad_inplace": "loss+grad in place"}


@dataclass
class Case:
    """One thing to time: `run()` does one call and waits for its result."""

    name: str
    mode: str
    run: Callable[[], object]
    role: str = "peer"                 # "xent", "peer" or "floor"
    memory: str = "rss"                # "tracemalloc", "rss", "both" or "xla"
    xla_bytes: Optional[int] = None
    extra_bytes: Optional[int] = None
    framework: bool = False            # run by torch, TensorFlow or JAX (see `time_interleaved`)
    times: list = field(default_factory=list)
    floor_times: list = field(default_factory=list)   # the floor timed just before each call


# --- inputs ----------------------------------------------------------------------------

def make_inputs(shape, dtype_name, seed=0):
    """Logits ``[N, C]`` (normal, scale 3) in `dtype_name` and int32 labels ``[N]``."""
    rng = np.random.default_rng(seed)
    dtype = _dtypes.bfloat16() if dtype_name == "bfloat16" else np.dtype(dtype_name)
    logits = (rng.standard_normal(shape, np.float32) * 3).astype(dtype)
    return logits, rng.integers(0, shape[1], shape[0]).astype(np.int32)


def _split_rows(n, parts):
    """``parts`` slices covering ``range(n)``."""
    return [slice(k * n // parts, (k + 1) * n // parts) for k in range(parts)]


def _on_threads(work, n_rows, threads):
    """Run ``work(rows)`` on `threads` threads, each with its share of the rows."""
    shares = _split_rows(n_rows, threads)
    helpers = [threading.Thread(target=work, args=(rows,)) for rows in shares[1:]]
    for helper in helpers:
        helper.start()
    work(shares[0])
    for helper in helpers:
        helper.join()


# --- the cases -------------------------------------------------------------------------

def floor_threads(logits):
    """The threads xent itself would use on `logits` (one below its size threshold)."""
    launch = sys.modules.get("xent._fused._launch")
    big = launch is None or logits.nbytes >= launch.PARALLEL_MIN_BYTES
    return xent.get_num_threads() if big else 1


def floor_cases(logits):
    """The copy floors (into a preallocated buffer) and the read floor (a max).

    All work on the raw bits (NumPy copies and reduces bfloat16 element by
    element, far below memory speed), on the threads xent would use. Two
    copies, as the faster depends on the machine: one memcpy per thread (large
    copies use non-temporal stores) and a row-by-row copy loop (cached stores).
    """
    bits = logits.view(np.uint16 if logits.itemsize == 2 else np.uint32)
    target = np.empty_like(bits)
    threads = floor_threads(logits)

    def memcpy():
        _on_threads(lambda rows: np.copyto(target[rows], bits[rows]), len(bits), threads)

    def read():
        _on_threads(lambda rows: bits[rows].max(), len(bits), threads)

    cases = [Case("copy floor (memcpy)", "grad", memcpy, "floor"),
             Case("read floor", "loss", read, "floor")]
    row_copy = _row_copy_kernel() if threads > 1 else None
    if row_copy is not None:
        cases.append(Case("copy floor (row loop)", "grad",
                          lambda: row_copy(bits, target, threads), "floor"))
    return cases


def _row_copy_kernel():
    """A numba row-by-row copy over `threads` blocks, or None without numba."""
    try:
        from numba import njit, prange
    except ImportError:
        return None

    @njit(parallel=True, nogil=True, cache=True)
    def row_copy(source, target, threads):
        n = source.shape[0]
        for block in prange(threads):
            for i in range(block * n // threads, (block + 1) * n // threads):
                target[i, :] = source[i, :]
    return row_copy


def xent_cases(logits, labels):
    """xent's public functions, fused and on the NumPy reference kernels."""
    out, work = np.empty_like(logits), logits.copy()
    ops = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits
    calls = {
        "loss": lambda: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits),
        "grad": lambda: ops(logits, labels, backprop_out=out),
        "grad_inplace": lambda: ops(work, labels, backprop_out=work),
    }
    cases = [Case("xent", mode, call, "xent", "both") for mode, call in calls.items()]
    for mode in ("loss", "grad"):
        cases.append(Case("xent, NumPy kernels", mode, _with_reference(calls[mode]), "xent",
                          "tracemalloc"))
    return cases


def _with_reference(call):
    """`call` run on xent's NumPy reference kernels."""
    def run():
        with _core.using_kernels("numpy"):
            return call()
    return run


def numpy_cases(logits, labels):
    """Plain NumPy as a user would write it (half precision computed in float32)."""
    rows = np.arange(len(labels))

    def forward(x):
        x = x.astype(np.float32, copy=False)
        m = x.max(axis=1, keepdims=True)
        e = np.exp(x - m)
        s = e.sum(axis=1, keepdims=True)
        return x, m, e, s

    def loss():
        x, m, _, s = forward(logits)
        return np.log(s[:, 0]) - (x[rows, labels] - m[:, 0])

    def grad():
        x, m, e, s = forward(logits)
        e /= s
        e[rows, labels] -= 1
        return np.log(s[:, 0]) - (x[rows, labels] - m[:, 0]), e.astype(logits.dtype, copy=False)

    return [Case("NumPy", "loss", loss, memory="tracemalloc"),
            Case("NumPy", "grad", grad, memory="tracemalloc")]


def _torch_inputs(logits, labels):
    import torch

    if logits.dtype.name == "bfloat16":
        x = torch.from_numpy(logits.view(np.int16)).view(torch.bfloat16)
    else:
        x = torch.from_numpy(logits)
    return x, x.detach().clone().requires_grad_(True), torch.from_numpy(labels.astype(np.int64))


def torch_cases(logits, labels, compiled=False):
    """PyTorch eager ``F.cross_entropy`` (or its ``torch.compile``) with autograd."""
    import torch
    import torch.nn.functional as F

    x, xg, y = _torch_inputs(logits, labels)
    fn = lambda a, b: F.cross_entropy(a, b, reduction="none")
    name = "PyTorch eager"
    if compiled:
        # Each input's shapes and dtype (and grad mode) recompile `fn`; past
        # dynamo's limit of 8 per function it would silently run eager.
        torch.compiler.reset()
        fn, name = torch.compile(fn), "torch.compile"

    def loss():
        with torch.no_grad():
            return fn(x, y)

    def grad():
        value = fn(xg, y)
        return value, torch.autograd.grad(value.sum(), xg)[0]

    return [Case(name, "loss", loss, framework=True), Case(name, "grad", grad, framework=True)]


def xent_torch_cases(logits, labels, compiled=False):
    """xent's `nn` function on PyTorch tensors, gradient by autograd (or inside a
    ``torch.compile(fullgraph=True)`` graph, through xent's registered operator)."""
    import torch

    x, xg, y = _torch_inputs(logits, labels)
    y = y.to(torch.int32)
    fn = lambda a, b: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=b, logits=a)
    name = "xent on torch"
    if compiled:
        torch.compiler.reset()
        fn, name = torch.compile(fn, fullgraph=True), "xent on torch.compile"

    def loss():
        with torch.no_grad():
            return fn(x, y)

    def grad():
        value = fn(xg, y)
        return value, torch.autograd.grad(value.sum(), xg)[0]

    return [Case(name, "loss", loss, "xent", framework=True),
            Case(name, "grad", grad, "xent", framework=True)]


def tf_cases(logits, labels):
    """TensorFlow's raw op (which always computes the backprop too)."""
    import tensorflow as tf

    x, y = tf.constant(logits), tf.constant(labels)
    op = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits
    loss = lambda: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x)
    return [Case("TensorFlow raw op", "loss", loss, framework=True),
            Case("TensorFlow raw op", "grad", lambda: op(features=x, labels=y), framework=True)]


def _jax_cases(name, loss_fn, logits, labels, role="peer"):
    """`jit(loss_fn)` and `jit(value_and_grad(sum of loss_fn))` on JAX arrays."""
    import jax
    import jax.numpy as jnp

    x, y = jnp.asarray(logits), jnp.asarray(labels)
    forward = jax.jit(lambda a: loss_fn(a, y))
    both = jax.jit(jax.value_and_grad(lambda a: loss_fn(a, y).sum()))
    cases = []
    for mode, fn in (("loss", forward), ("grad", both)):
        compiled = fn.lower(x).compile()   # compiled once, timed and measured
        case = Case(name, mode, lambda c=compiled: jax.block_until_ready(c(x)), role, "xla",
                    framework=True)
        case.xla_bytes = _xla_bytes(compiled)
        cases.append(case)
    return cases


def _xla_bytes(compiled):
    """Output plus temporary bytes of a compiled XLA program, or None."""
    try:
        stats = compiled.memory_analysis()
        return int(stats.output_size_in_bytes + stats.temp_size_in_bytes)
    except Exception:   # noqa: BLE001 - the analysis is optional across jax versions
        return None


def jax_cases(logits, labels):
    import optax

    return _jax_cases("JAX optax", optax.softmax_cross_entropy_with_integer_labels, logits, labels)


def xent_jax_cases(logits, labels):
    fn = xent.nn.sparse_softmax_cross_entropy_with_logits
    return _jax_cases("xent on JAX", lambda a, y: fn(labels=y, logits=a), logits, labels, "xent")


def peer_builders(quick):
    """(name, builder) for every peer; a builder raising ImportError means not installed."""
    builders = [("NumPy", numpy_cases), ("PyTorch", torch_cases), ("TensorFlow", tf_cases),
                ("JAX", jax_cases), ("xent on torch", xent_torch_cases),
                ("xent on JAX", xent_jax_cases)]
    if not quick:
        builders.insert(2, ("torch.compile", lambda x, y: torch_cases(x, y, compiled=True)))
        builders.append(("xent on torch.compile",
                         lambda x, y: xent_torch_cases(x, y, compiled=True)))
    return builders


def build_cases(logits, labels, quick, skipped):
    """Every case for one input; peers that fail to build are noted in `skipped`."""
    cases = floor_cases(logits) + xent_cases(logits, labels)
    for name, build in peer_builders(quick):
        try:
            cases += build(logits, labels)
        except Exception as exc:   # noqa: BLE001 - a peer that is missing or broken is skipped
            skipped.setdefault(name, f"{type(exc).__name__}: {exc}"[:200])
    return cases


# --- timing and memory ------------------------------------------------------------------

def warm_up(cases, skipped):
    """Call each case once (compiles, caches); drop those that fail."""
    kept = []
    for case in cases:
        try:
            case.run()
            kept.append(case)
        except Exception as exc:   # noqa: BLE001 - a failing peer is reported, not fatal
            skipped.setdefault(case.name, f"{type(exc).__name__}: {exc}"[:200])
    return kept


def time_interleaved(cases, rounds, burst, budget_s, progress, settle_s, paired=None,
                     framework_settle_s=None, paired_burst=None):
    """`rounds` rounds over all cases; a case whose time so far exceeds `budget_s` sits out.

    In each round a case runs `burst` times in a row (many for small inputs,
    whose calls would otherwise each start with caches full of the other
    cases' code and data) and each call's time is kept. Between cases the
    process idles `settle_s`: some runtimes' worker threads spin for a while
    after a call, and would slow whatever case comes next. After a case run
    by a framework (`Case.framework`) it idles `framework_settle_s` (default
    `settle_s`): at 8192x32000 float32 on a Zen 4, xent in place right after
    TensorFlow's loss+grad took 1.31x the copy 50 ms later and 1.08x 300 ms
    later (after JAX: 1.12x and 1.05x; alone 1.06-1.08x). Every case runs in
    at least 3 rounds.

    `paired` maps a mode to its floor cases: right before each call of an
    xent case of that mode, each of them runs once, and the fastest time is
    kept in the case's `floor_times` (the memory bandwidth of a busy host
    moves within seconds; the floor next to each call moves with it). Such a
    case runs `paired_burst` times in a row (default `burst`): its calls are
    short, and on a host whose bandwidth moves this much a median needs more
    of them than the peers' seconds-long calls leave time for (8192x32000
    float32 in place on a Zen 4 VM, 40 calls in one process: 47-103 ms, and
    0.75-1.66x the copy timed just before).
    """
    paired = paired or {}
    after_framework = settle_s if framework_settle_s is None else framework_settle_s
    previous = None
    for round_index in range(rounds):
        for case in cases:
            if round_index >= 3 and sum(case.times) > budget_s:
                continue
            time.sleep(after_framework if previous is not None and previous.framework
                       else settle_s)
            previous = case
            floors = paired.get(case.mode, ()) if case.role == "xent" else ()
            for _ in range((paired_burst or burst) if floors else burst):
                if floors:
                    case.floor_times.append(min(_timed(floor.run) for floor in floors))
                case.times.append(_timed(case.run))
        progress(1)


def _status_kb(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None


def _rss_peak_extra(run):
    """High-water mark of the resident set during `run()`, above the set before it."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")   # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kb("VmRSS:")
    run()
    return max(0, _status_kb("VmHWM:") - before)


def _traced_peak_extra(run):
    """Peak NumPy/Python allocation during `run()` (tracemalloc)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def peak_extra_bytes(case):
    """Bytes a call needs beyond its inputs (and a caller's output buffer), or None."""
    if case.memory == "xla":
        return case.xla_bytes
    if case.memory == "tracemalloc":
        return _traced_peak_extra(case.run)
    if case.memory == "both":   # NumPy's allocations, and numba's, which tracemalloc misses
        return max(_traced_peak_extra(case.run), _rss_peak_extra(case.run) or 0)
    return _rss_peak_extra(case.run)


def neighbour_check(cases, rounds=5, idle_s=0.2):
    """What each implementation costs whatever runs right after it.

    For each gradient case: the CPU time this process burns while it idles
    `idle_s` right after a call (threads that spin waiting for work show up
    here; threads that sleep do not), and the time of a memcpy copy right
    after a call over the same after idling.
    """
    memcpy = next(c for c in cases if c.name == "copy floor (memcpy)").run
    results = {}
    for case in cases:
        if case.mode != "grad" or case.role == "floor":
            continue
        burnt, after_call, after_idle = [], [], []
        for _ in range(rounds):
            case.run()
            start = time.process_time()
            time.sleep(idle_s)
            burnt.append(time.process_time() - start)
            case.run()
            after_call.append(_timed(memcpy))
            time.sleep(idle_s)
            after_idle.append(_timed(memcpy))
        results[case.name] = {
            "idle_cpu_s": statistics.median(burnt), "idle_s": idle_s,
            "copy_ratio": statistics.median(after_call) / statistics.median(after_idle)}
    return results


def _timed(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


# --- one input, summarised --------------------------------------------------------------

def floors_by_kind(cases):
    """The floor cases for each kind of work: the read floor for "loss", the copies for "grad"."""
    return {"loss": [c for c in cases if c.role == "floor" and c.mode == "loss"],
            "grad": [c for c in cases if c.role == "floor" and c.mode == "grad"]}


def paired_ratio(case):
    """Median over calls of the case's time over the floor timed just before it, or None."""
    if not case.floor_times:
        return None
    return statistics.median(t / f for t, f in zip(case.times, case.floor_times))


def summarise(cases, logits):
    """One record per case: times, rates, multiples of the floors, speed-up over peers.

    "x_floor" is a case's median time over its floor's median; for xent's
    cases on large inputs it is instead the median of each call's time over
    the floor timed right before that call (`paired_ratio`), and the ratio
    of medians stays in "x_floor_medians". "x_floor_best" is the case's
    fastest call over the fastest floor call (the least disturbed of each).
    """
    nbytes = logits.nbytes
    median = {(c.name, c.mode): statistics.median(c.times) for c in cases}
    by_kind = floors_by_kind(cases)
    floors = {kind: min((median[(c.name, c.mode)] for c in by_kind[kind]), default=None)
              for kind in by_kind}
    best_floors = {kind: min((min(c.times) for c in by_kind[kind]), default=None)
                   for kind in by_kind}
    fastest = {}
    for case in cases:
        if case.role == "peer":
            fastest[case.mode] = min(fastest.get(case.mode, np.inf), median[(case.name, case.mode)])
    records = []
    for case in cases:
        t = median[(case.name, case.mode)]
        kind = "loss" if case.mode == "loss" else "grad"
        moved = nbytes * (1 if kind == "loss" else 2)
        peer = fastest.get(kind)
        of_medians = t / floors[kind] if floors[kind] else None
        paired = paired_ratio(case)
        best_floor = min(case.floor_times + [best_floors[kind] or np.inf])
        records.append({
            "name": case.name, "role": case.role, "mode": case.mode, "median_s": t,
            "min_s": min(case.times), "times_s": list(case.times),
            "floor_times_s": list(case.floor_times),
            "runs": len(case.times), "gb_per_s": moved / t / 1e9,
            "x_floor": paired if paired is not None else of_medians,
            "x_floor_medians": of_medians, "x_floor_paired": paired is not None,
            "x_floor_best": min(case.times) / best_floor if np.isfinite(best_floor) else None,
            "peer_speedup": peer / t if peer and case.role == "xent" else None,
            "extra_bytes_per_row": case.extra_bytes / len(logits) if case.extra_bytes is not None else None,
        })
    return records


def bench_input(shape, dtype_name, quick, skipped, progress, rounds):
    """Build, warm, time and measure every case on one input; return its records
    and the (warm) cases."""
    logits, labels = make_inputs(shape, dtype_name)
    cases = warm_up(build_cases(logits, labels, quick, skipped), skipped)
    for case in cases:
        case.extra_bytes = peak_extra_bytes(case)
    budget = 4.0 if quick else 12.0
    small = shape[0] * shape[1] < 100_000
    burst = 20 if small else 1
    settle = 0.002 if quick else 0.005 if small else 0.05
    framework_settle = settle if quick or small else 0.3
    floors = floors_by_kind(cases)
    paired = None if small else {"loss": floors["loss"], "grad": floors["grad"],
                                 "grad_inplace": floors["grad"]}
    time_interleaved(cases, rounds, burst, budget, progress, settle, paired, framework_settle,
                     paired_burst=3)
    return summarise(cases, logits), cases


# --- output -----------------------------------------------------------------------------

def neighbour_table(neighbour):
    """The good-neighbour check as a Markdown table."""
    idle_ms = 1e3 * next(iter(neighbour.values()), {"idle_s": 0.2})["idle_s"]
    lines = [f"| after a loss+grad call of | CPU burnt while idle {idle_ms:.0f} ms "
             "| memcpy after call / after idle |",
             "|---|---:|---:|"]
    for name, n in neighbour.items():
        lines.append(f"| {name} | {n['idle_cpu_s'] * 1e3:.0f} ms | {n['copy_ratio']:.2f} |")
    return "\n".join(lines)


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def markdown_table(results):
    """The results as one Markdown table, grouped by input."""
    lines = ["| input | implementation | what | median ms | GB/s | × floor (lower is better) "
             "| xent's speed-up over the fastest peer (>1: faster) | extra bytes/row |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for entry in results:
        label = f"{entry['shape'][0]}×{entry['shape'][1]} {entry['dtype']}"
        for r in sorted(entry["records"], key=lambda r: (MODES.index(r["mode"]), r["median_s"])):
            floor = ("copy" if r["mode"] != "loss" else "read") + ("‡" if r.get("x_floor_paired") else "")
            lines.append(
                f"| {label} | {r['name']} | {MODE_TITLES[r['mode']]} | {r['median_s'] * 1e3:.3f} "
                f"| {_fmt(r['gb_per_s'], '.1f')} | {_fmt(r['x_floor'], '.2f')} {floor} "
                f"| {_fmt(r['peer_speedup'], '.1f')} | {_fmt(r['extra_bytes_per_row'], '.0f')} |")
    lines.append("\n‡ median over calls of each call's time over the floor timed just before it "
                 "(other rows: median time over the floor's median time).")
    return "\n".join(lines)


def plot(results, path):
    """One panel per input: each case's time as a multiple of its floor (log
    scale, lower is better), xent's cases in green and the peers' in grey,
    each bar labelled with its median time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 3.4 * len(results)), squeeze=False)
    for ax, entry in zip(axes[:, 0], results):
        records = [r for r in entry["records"] if r["role"] != "floor" and r["x_floor"]]
        records.sort(key=lambda r: (MODES.index(r["mode"]), r["x_floor"]))
        labels = [f"{r['name']} · {MODE_TITLES[r['mode']]}" for r in records]
        colours = ["tab:green" if r["role"] == "xent" else "tab:grey" for r in records]
        bars = ax.barh(labels, [r["x_floor"] for r in records], color=colours)
        ax.bar_label(bars, [f"{r['median_s'] * 1e3:.3g} ms" for r in records], fontsize=6,
                     padding=2)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("time / floor (× floor, lower is better; 1 = the machine's copy or read)",
                      fontsize=8)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{entry['shape'][0]}×{entry['shape'][1]} {entry['dtype']}: copy floor for "
                     "gradients, read floor for the loss", fontsize=9)
        ax.legend(handles=[Patch(color="tab:green", label="xent"),
                           Patch(color="tab:grey", label="peers")], fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine():
    """What ran the benchmark: CPU model, cores, versions, threads, load."""
    model = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        model = next((l.split(":", 1)[1].strip() for l in info if l.startswith("model name")), model)
    versions = {}
    for name in ("numpy", "numba", "torch", "tensorflow", "jax", "optax"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    layer = None
    with contextlib.suppress(Exception):
        layer = sys.modules["numba"].threading_layer()
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "xent_threads": xent.get_num_threads(), "threading_layer": layer,
            "versions": versions, "loadavg": os.getloadavg(),
            "kernels": _core.get_kernels(), "compiled_for": compiled_for(),
            "free_page_reporting": free_page_reporting()}


_VIRTIO_BALLOON = "0x0005"
_BALLOON_REPORTING_BIT = 5   # VIRTIO_BALLOON_F_REPORTING


def free_page_reporting(devices="/sys/bus/virtio/devices"):
    """Whether this is a Linux VM whose virtio balloon hands freed memory back to the
    hypervisor (the feature negotiated; False elsewhere).

    There a page that a process touches anew after memory was freed faults twice,
    in the guest and on the host, so the time of a call that writes fresh memory
    (a JAX step's gradient, which XLA allocates per call) varies with it: on such
    a Zen 3 VM the jitted 8192x32000 step took 120-138 ms, and 90-96 ms when glibc
    kept the freed memory (bench/RESULTS.md, session 8).
    """
    try:
        names = os.listdir(devices)
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(devices, name, "device")) as f:
                kind = f.read().strip()
            with open(os.path.join(devices, name, "features")) as f:
                features = f.read().strip()
        except OSError:
            continue
        if kind == _VIRTIO_BALLOON and features[_BALLOON_REPORTING_BIT:][:1] == "1":
            return True
    return False


def compiled_for():
    """The CPU and instruction set xent's kernels are compiled for (``"haswell:
    AVX2+FMA"``), or why there are none."""
    if _core.get_kernels() != "fused":
        return "none: the NumPy reference kernels"
    from xent._fused import _target

    chosen = " (NUMBA_CPU_NAME)" if os.environ.get("NUMBA_CPU_NAME") else ""
    return _target.isa() + chosen


# --- compiling first ----------------------------------------------------------------------

def compile_kernels(dtype_name):
    """Call xent's public functions once on each quick shape in `dtype_name`, so that
    numba compiles (or loads from its disk cache) every fused kernel the bench times:
    chunk and narrow rows, one thread and several, loss, gradient and in place;
    and the row-loop copy floor on this dtype's bits."""
    for shape in QUICK_SHAPES:
        logits, labels = make_inputs(shape, dtype_name)
        for case in xent_cases(logits, labels) + floor_cases(logits):
            if case.name in ("xent", "copy floor (row loop)"):
                case.run()


def import_peers():
    """Import every installed peer's framework (TensorFlow alone takes seconds),
    so that the first input's timings do not wait on it."""
    for name in ("torch", "tensorflow", "jax", "optax"):
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def precompile():
    """`compile_kernels` for float32 and for bfloat16, each in a child process,
    while this process imports the peers (`import_peers`); returns the seconds
    the children took (compiling, or loading numba's disk cache).

    numba compiles on one core (about 15 s per dtype on a cold cache); the
    kernels land in its disk cache, where this process then finds them.
    Without numba, only the imports. A child that fails stops the bench with
    its error (a crash in a kernel would otherwise surface as a silent abort).
    """
    children = []
    started = time.perf_counter()
    if _core.get_kernels() == "fused":
        children = [subprocess.Popen(
            [sys.executable, "-c", f"from xent import _bench; _bench.compile_kernels({dtype!r})"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for dtype in DTYPES]
    try:
        import_peers()
    finally:
        errors = [(dtype, child.communicate()[1], child.returncode)
                  for dtype, child in zip(DTYPES, children)]
    for dtype, stderr, code in errors:
        if code != 0:
            raise RuntimeError(f"xent bench: compiling the {dtype} kernels failed "
                               f"(exit {code}):\n{stderr[-2000:]}")
    return time.perf_counter() - started


# --- the command --------------------------------------------------------------------------

class _Progress:
    """tqdm if installed, else a one-line counter on stderr."""

    def __init__(self, total):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = tqdm(total=total, unit="round", file=sys.stderr) if tqdm else None
        self.done, self.total = 0, total

    def __call__(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            print(f"\rxent bench: {self.done}/{self.total} rounds", end="", file=sys.stderr, flush=True)

    def describe(self, text):
        if self.bar is not None:
            self.bar.set_description(text)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        else:
            print(file=sys.stderr)


def _rounds(shape, quick):
    """Timing rounds for an input: more for small inputs, whose times are noisier."""
    size = shape[0] * shape[1]
    if size < 100_000:
        return 8 if quick else 30
    if size < 10_000_000:
        return 5 if quick else 15
    return 3 if quick else 7


def main(quick: bool = False, out: str = "bench/results") -> int:
    """Run the benchmark; print the table; write JSON, PNG and Markdown under `out`."""
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    _core.kernels()   # loads the fused kernels first: they pick numba's threading layer
    jobs = [(shape, dtype) for shape in shapes for dtype in DTYPES]
    started, skipped, results = time.time(), {}, []
    load_before = os.getloadavg()
    progress = _Progress(sum(_rounds(shape, quick) for shape, _ in jobs))
    progress.describe("xent's kernels: compiling (first run) or loading")
    compile_s = precompile()
    neighbours = None   # the cases of NEIGHBOUR_SHAPE float32, when the run has that input
    for shape, dtype in jobs:
        progress.describe(f"{shape[0]}x{shape[1]} {dtype}")
        records, cases = bench_input(shape, dtype, quick, skipped, progress, _rounds(shape, quick))
        if (shape, dtype) == (NEIGHBOUR_SHAPE, "float32"):
            neighbours = cases
        del cases   # (each input's arrays go before the next input's are made)
        results.append({"shape": list(shape), "dtype": dtype, "records": records})
    if neighbours is None:
        logits, labels = make_inputs(NEIGHBOUR_SHAPE, "float32")
        neighbours = warm_up(build_cases(logits, labels, True, {}), {})
    neighbour = neighbour_check(neighbours, rounds=2 if quick else 5,
                                idle_s=0.05 if quick else 0.2)
    progress.close()
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "xent bench" + (" --quick" if quick else ""),
              "machine": machine(), "load_before": load_before, "seconds": time.time() - started,
              "compile_s": compile_s,
              "neighbour": neighbour, "skipped": skipped, "results": results}
    write_outputs(report, out)
    return 0


def _record(report, shape, dtype, name, mode):
    for entry in report["results"]:
        if tuple(entry["shape"]) == shape and entry["dtype"] == dtype:
            for r in entry["records"]:
                if r["name"] == name and r["mode"] == mode:
                    return r
    return None


def _ratios(record):
    """A record's multiple of its floor, and the best call's over the best floor's."""
    best = record.get("x_floor_best")
    return f"{record['x_floor']:.2f}x" + (f" (best {best:.2f}x)" if best else "")


def _versus_peer(speedup):
    """A speed-up over the fastest peer in words: "4.1x faster" or "1.7x slower"."""
    if speedup is None:
        return "no peer"
    if speedup >= 1:
        return f"{speedup:.1f}x faster than the fastest peer"
    return f"{1 / speedup:.1f}x slower than the fastest peer"


def headline(report):
    """The figures the kernels are held to, from this run (lines of text): per
    large input, loss+gradient in place and into a buffer against the copy
    floor, the loss against the read floor, and each against the fastest peer;
    bfloat16 against its own copy; 32x1000 against PyTorch's forward."""
    lines = [f"Kernels compiled for {report['machine'].get('compiled_for')} on "
             f"{report['machine']['cpu']}; compiling or loading them took "
             f"{report.get('compile_s', 0):.1f} s, before (and apart from) the timings."]
    if report["machine"].get("free_page_reporting"):
        lines.append("This is a VM whose balloon hands freed memory back to its host: fresh "
                     "pages fault twice, so calls that write fresh memory (JAX's steps) and "
                     "the bandwidth-bound ratios vary from run to run.")
    for shape in ((8192, 32000), (2048, 128256), (512, 32000), (128, 128256)):
        label = f"{shape[0]}x{shape[1]}"
        inplace = _record(report, shape, "float32", "xent", "grad_inplace")
        if inplace is None:
            continue
        into = _record(report, shape, "float32", "xent", "grad")
        loss = _record(report, shape, "float32", "xent", "loss")
        bf16 = [_record(report, shape, "bfloat16", "xent", m) for m in ("grad_inplace", "grad")]
        lines.append(
            f"{label} float32: loss+grad in place {_ratios(inplace)} the copy floor "
            f"({_versus_peer(inplace['peer_speedup'])}), into a buffer {_ratios(into)} "
            f"({_versus_peer(into['peer_speedup'])}); loss {_ratios(loss)} the read floor "
            f"({_versus_peer(loss['peer_speedup'])}); peak extra memory in place "
            f"{inplace['extra_bytes_per_row']:.0f} B/row = "
            f"{100 * inplace['extra_bytes_per_row'] / (4 * shape[1]):.3f}% of a row")
        if all(bf16):
            lines.append(f"{label} bfloat16: loss+grad in place {_ratios(bf16[0])}, into a "
                         f"buffer {_ratios(bf16[1])} its copy floor")
    small = _record(report, (32, 1000), "float32", "xent", "loss")
    torch = _record(report, (32, 1000), "float32", "PyTorch eager", "loss")
    if small and torch:
        lines.append(f"32x1000 float32 forward: {small['median_s'] * 1e6:.0f} us, "
                     f"{small['median_s'] / torch['median_s']:.2f}x the time of PyTorch's "
                     f"F.cross_entropy (reduction='none', {torch['median_s'] * 1e6:.0f} us)")
    return lines


def write_outputs(report, out):
    """Print the summary and write ``bench.json``, ``bench.md`` and ``bench.png`` into `out`."""
    os.makedirs(out, exist_ok=True)
    table = markdown_table(report["results"])
    notes = "\n" + neighbour_table(report["neighbour"]) + "\nLoad average before/after: "
    notes += (
              f"{report['load_before'][0]:.2f} / {report['machine']['loadavg'][0]:.2f}; "
              f"{report['seconds']:.0f} s.")
    if report["skipped"]:
        notes += "\nSkipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())
    notes += "\n" + "\n".join(headline(report))
    print(table + "\n" + notes)
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(table + "\n" + notes + "\n")
    try:
        plot(report["results"], os.path.join(out, "bench.png"))
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
