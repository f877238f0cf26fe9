"""A jitted JAX training step whose loss is a mean, not a sum: the backprop scaled in place.

    python bench/jax_mean_step.py [--shape 4096x32000] [--steps 9] [--rounds 5]

Two kinds of step, each ``jax.jit(jax.value_and_grad(...))``: "donated", on float32
logits made afresh before each step and donated (the kernel's backprop takes
their buffer); and "h @ W", whose logits are made inside the step from
``h [N, 8]`` and ``W [8, C]``, the gradient taken for W (a matmul reads the
logits' gradient, so XLA cannot fuse a product into it). Each runs `--steps`
times after a warm-up (the median step kept), the cases interleaved over
`--rounds` rounds. "in place" is xent as shipped: the backward's
``backprop * g`` is written over the backprop's buffer (`xent._jax_rows`);
"XLA product" is the same step with that product left to XLA, which writes it
into a fresh logits-sized buffer (as before). A `.sum()` has no product to make
(its g is all ones). The floor is a 2-thread copy of the logits into a buffer of
their size (numba, `xent._bench._floors`). Prints one table (Markdown), medians
over rounds, and each step's temporaries from XLA's `memory_analysis()` in units
of the logits.
"""
import argparse
import statistics
import time

import numpy as np

import xent
from xent._bench._floors import floor_cases
from xent._bench._machine import compiled_for, cpu_model
from xent.cli import _shape


def _positive(text):
    """A positive int argument (argparse type)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return int(text)


def _cases(labels):
    """name → the step's loss of the logits (a scalar)."""
    import jax.numpy as jnp
    import optax

    sparse = xent.nn.sparse_softmax_cross_entropy_with_logits
    keras = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return {
        "xent nn, .sum()": lambda x: sparse(labels=labels, logits=x).sum(),
        "xent nn, .mean()": lambda x: sparse(labels=labels, logits=x).mean(),
        "xent keras SparseCategoricalCrossentropy": lambda x: keras(labels, x),
        "xent v1 sparse_softmax_cross_entropy": lambda x: xent.losses.sparse_softmax_cross_entropy(labels, x),
        "optax, .mean()": lambda x: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, labels)),
    }


def _burst(step, make_input, steps):
    """Median seconds of `steps` steps (two warm-up steps first), each on a fresh input."""
    times = []
    for k in range(steps + 2):
        x = make_input()
        x.block_until_ready()
        start = time.perf_counter()
        _, grad = step(x)
        grad.block_until_ready()
        elapsed = time.perf_counter() - start
        del grad, x
        if k >= 2:
            times.append(elapsed)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=_shape, default=(4096, 32000), metavar="ROWSxCLASSES")
    parser.add_argument("--steps", type=_positive, default=9)
    parser.add_argument("--rounds", type=_positive, default=5)
    args = parser.parse_args()
    import jax
    import jax.numpy as jnp

    from xent import _jax_rows

    n, c = args.shape
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, c), dtype=np.float32)
    labels = jnp.asarray(rng.integers(0, c, n))
    floor_case = floor_cases(logits)[0]   # (the memcpy copy)
    floor_name, floor_fn = floor_case.name, floor_case.run
    h = jnp.asarray(rng.standard_normal((n, 8), dtype=np.float32))
    w = rng.standard_normal((8, c), dtype=np.float32) / 3
    kinds = {   # kind → (how a loss of the logits becomes a step's function, its input)
        "donated": (lambda loss: (lambda x: loss(x)), lambda: jnp.asarray(logits), (0,)),
        "h @ W": (lambda loss: (lambda w: loss(h @ w)), lambda: jnp.asarray(w), ()),
    }
    steps, temps, inputs = {}, {}, {}
    for kind, (make_step, make_input, donate) in kinds.items():
        for name, loss in _cases(labels).items():
            ways = ("in place", "XLA product") if name.startswith("xent") and ".sum()" not in name else ("",)
            for way in ways:
                _jax_rows.scale_in_place(way != "XLA product")
                key = f"{kind}: {name}" + (f" [{way}]" if way else "")
                step = jax.jit(jax.value_and_grad(make_step(loss)), donate_argnums=donate)
                stats = step.lower(make_input()).compile().memory_analysis()
                temps[key] = stats.temp_size_in_bytes / logits.nbytes
                step(make_input())   # (compiled now, with this way's lowering)
                steps[key], inputs[key] = step, make_input
    _jax_rows.scale_in_place(True)
    results = {floor_name: [], **{key: [] for key in steps}}
    for _ in range(args.rounds):
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            floor_fn()
            times.append(time.perf_counter() - start)
        results[floor_name].append(statistics.median(times))
        for key, step in steps.items():
            results[key].append(_burst(step, inputs[key], args.steps))
    floor = statistics.median(results[floor_name])
    print(f"{n}x{c} float32, sparse labels; {cpu_model()}, kernels for "
          f"{compiled_for()}; jax {jax.__version__}; median step of {args.steps}, median over "
          f"{args.rounds} rounds\n")
    print("| step | ms | × copy | XLA temporaries (× logits) |\n|---|---:|---:|---:|")
    for key, times in results.items():
        median = statistics.median(times)
        temp = f"{temps[key]:.2f}" if key in temps else ""
        print(f"| {key} | {median * 1e3:.1f} | {median / floor:.2f} | {temp} |")


if __name__ == "__main__":
    main()
