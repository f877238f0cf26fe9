"""Time and peak memory of a loss's forward+backward: xent against each framework's own.

    python bench/torch_jax_memory.py [--rows 4096] [--classes 32000] [--reps 5]

Four variants, each in a fresh process so that one's memory high-water mark
cannot hide another's:

  - torch-xent:  `xent.nn.sparse_softmax_cross_entropy_with_logits(...).mean()`
                 then `torch.autograd.grad`, CPU float32;
  - torch-F.ce:  `torch.nn.functional.cross_entropy`, the same way;
  - jax-xent:    `jax.jit(jax.value_and_grad(...))` of xent's loss, mean;
  - jax-optax:   the same with `optax.softmax_cross_entropy_with_integer_labels`.

Time is the median wall time of `--reps` calls after one warm-up call. Peak
extra memory, in MB and in logits-sized arrays, counts the gradient handed
back (one logits-sized array) and every temporary: for torch, the process's
peak resident set (``ru_maxrss``) minus its resident set once the inputs
exist (large CPU tensors are mmap'd, so freed ones leave the resident set);
for JAX, XLA's own account of the compiled program (output + temporaries),
since its CPU allocator keeps freed buffers resident. Prints a Markdown table.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("torch-xent", "torch-F.ce", "jax-xent", "jax-optax")


def _rss_mb():
    """Current resident set size in MB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mb():
    """Peak resident set size of this process so far, in MB (ru_maxrss is KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _torch_step(variant, rows, classes):
    import torch

    import xent

    if variant == "torch-xent":
        loss_fn = lambda x, y: xent.nn.sparse_softmax_cross_entropy_with_logits(  # noqa: E731
            labels=y, logits=x).mean()
    else:
        loss_fn = torch.nn.functional.cross_entropy

    def inputs(n):
        gen = torch.Generator().manual_seed(0)
        return torch.randn(n, classes, generator=gen).requires_grad_(), torch.randint(0, classes, (n,))

    def step(logits, labels):
        (grad,) = torch.autograd.grad(loss_fn(logits, labels), logits)
        return grad

    step(*inputs(8))  # load the kernels before the baseline is taken
    return step, inputs(rows), None


def _jax_step(variant, rows, classes):
    import jax
    import optax

    import xent

    key_x, key_y = jax.random.split(jax.random.PRNGKey(0))
    logits = jax.random.normal(key_x, (rows, classes), jax.numpy.float32)
    labels = jax.random.randint(key_y, (rows,), 0, classes)
    if variant == "jax-xent":
        loss_fn = lambda x, y: xent.nn.sparse_softmax_cross_entropy_with_logits(  # noqa: E731
            labels=y, logits=x).mean()
    else:
        loss_fn = lambda x, y: optax.softmax_cross_entropy_with_integer_labels(x, y).mean()  # noqa: E731
    # Compiled ahead, so that the compiler's memory is not counted.
    compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(logits, labels).compile()

    def step(x, y):
        return jax.block_until_ready(compiled(x, y))

    stats = compiled.memory_analysis()
    extra_mb = (stats.output_size_in_bytes + stats.temp_size_in_bytes) / 2**20
    return step, jax.block_until_ready((logits, labels)), extra_mb


def measure(variant, rows, classes, reps):
    """Run one variant in this process: ``{"ms": median, "peak_mb": extra peak}``."""
    make = _torch_step if variant.startswith("torch") else _jax_step
    step, args, extra_mb = make(variant, rows, classes)
    baseline = _rss_mb()
    result = step(*args)
    del result
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = step(*args)
        times.append(time.perf_counter() - start)
        del result
    if extra_mb is None:
        # (the kernel counts resident pages per thread in batches: below a MB or so
        # the two readings disagree by their slack, which read as negative memory)
        extra_mb = max(0.0, _peak_mb() - baseline)
    return {"ms": 1e3 * statistics.median(times), "peak_mb": extra_mb}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant here (internal)")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.rows, args.classes, args.reps)))
        return
    logits_mb = args.rows * args.classes * 4 / 2**20
    print(f"{args.rows} x {args.classes} float32 logits ({logits_mb:.0f} MB), CPU, "
          f"median of {args.reps} forward+backward calls\n")
    print("| variant | time (ms) | peak extra memory (MB) | in logits-sized arrays |")
    print("|---|---:|---:|---:|")
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--rows", str(args.rows),
               "--classes", str(args.classes), "--reps", str(args.reps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {variant} | {r['ms']:.0f} | {r['peak_mb']:.0f} | {r['peak_mb'] / logits_mb:.2f} |")


if __name__ == "__main__":
    main()
