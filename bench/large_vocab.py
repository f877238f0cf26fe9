"""Large-vocabulary training steps: xent.linear_cross_entropy / cross_entropy against peers.

    python bench/large_vocab.py                 # N=2048, H=512, V=65536 float32
    python bench/large_vocab.py --hidden 1024 --vocab 128256 --reps 1
    python bench/large_vocab.py --inplace       # cross_entropy(inplace_backward) at 8192x32000

Linear mode: one training step (forward, and the gradients of the inputs
and the weight) of ``loss = cross_entropy(x @ W.T, y)``, each variant in a
fresh process so that one's memory high-water mark cannot hide another's:

  matmuls        the three matmuls alone (x·Wᵀ, dz·W, dzᵀ·x) into
                 preallocated outputs: the floor any method pays
  xent-torch     xent.linear_cross_entropy on torch tensors
  xent-compiled  the same under torch.compile(fullgraph=True) (its registered operator)
  torch-eager    F.cross_entropy(x @ W.T, y)
  torch-compile  torch.compile of the same
  torch-chunked  PyTorch's F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())
  xent-numpy     xent.linear_cross_entropy(..., return_grads=True) on NumPy arrays
  xent-jax       jax.jit(jax.value_and_grad(xent.linear_cross_entropy))
  optax-jax      the same with optax on full logits

Time: the median of --reps steps after one warm-up step; with --rounds R,
every variant runs R times, in turn, and the table gives medians over rounds
(and each variant's ratio to the matmuls of its own round). Peak extra memory:
the process's resident high-water mark during a step (reset before it
through /proc/self/clear_refs) above its resident set before the step,
minus the gradients the step returns; for JAX, XLA's account of the compiled
step's temporaries. Both in MiB and in logits-sized (N×V float32) arrays.

Inplace mode: one process, interleaved: a 2-thread copy of the logits (torch
``copy_``), then a step of ``xent.cross_entropy(logits, y,
inplace_backward=True)`` (the gradient written over the logits in the forward),
then F.cross_entropy's step; medians of --reps rounds. Then steps that keep
the logits (the gradient into a tensor of its own): xent.cross_entropy eager,
its `torch.compile(fullgraph=True)` (through the registered operator; the
backward one multiply), and F.cross_entropy under `torch.compile`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LINEAR = ("matmuls", "xent-torch", "xent-compiled", "torch-eager", "torch-compile", "torch-chunked",
          "xent-numpy", "xent-jax", "optax-jax")


def _status_bytes(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _measured(step):
    """``(seconds, peak extra bytes)`` of one call of `step` (which returns its gradients)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _status_bytes("VmRSS:")
    start = time.perf_counter()
    grads = step()
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM:") - before
    returned = sum(g.nbytes for g in grads if g is not None)
    del grads
    return seconds, max(0, peak - returned)


def _torch_inputs(n, hidden, vocab):
    import torch
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, hidden, generator=gen).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) / hidden ** 0.5).requires_grad_()
    return x, w, torch.randint(0, vocab, (n,), generator=gen)


def _torch_step(variant, n, hidden, vocab):
    import torch
    import torch.nn.functional as F
    import xent
    x, w, y = _torch_inputs(n, hidden, vocab)
    if variant == "matmuls":
        z, dx, dw = torch.empty(n, vocab), torch.empty(n, hidden), torch.empty(vocab, hidden)
        dz = torch.randn(n, vocab) / vocab
        xd, wd = x.detach(), w.detach()

        def step():
            torch.mm(xd, wd.t(), out=z)
            torch.mm(dz, wd, out=dx)
            torch.mm(dz.t(), xd, out=dw)
            return ()
        return step
    if variant in ("xent-torch", "xent-compiled"):
        loss_fn = lambda x, w, y: xent.linear_cross_entropy(x, w, y)  # noqa: E731
        if variant == "xent-compiled":
            loss_fn = torch.compile(loss_fn, fullgraph=True)
    elif variant == "torch-chunked":
        options = torch.nn.LinearCrossEntropyOptions()
        loss_fn = lambda x, w, y: F.linear_cross_entropy(x, w, y, options=options)  # noqa: E731
    else:
        loss_fn = lambda x, w, y: F.cross_entropy(x @ w.t(), y)  # noqa: E731
        if variant == "torch-compile":
            loss_fn = torch.compile(loss_fn)
    return lambda: torch.autograd.grad(loss_fn(x, w, y), (x, w))


def _numpy_step(n, hidden, vocab):
    import xent
    x, w, y = (t.detach().numpy() for t in _torch_inputs(n, hidden, vocab))
    return lambda: list(xent.linear_cross_entropy(x, w, y, return_grads=True)[1].values())


def _jax_step(variant, n, hidden, vocab):
    import jax
    import optax
    import xent
    x, w, y = (jax.numpy.asarray(t.detach().numpy()) for t in _torch_inputs(n, hidden, vocab))
    if variant == "xent-jax":
        loss_fn = lambda x, w: xent.linear_cross_entropy(x, w, y)  # noqa: E731
    else:
        loss_fn = lambda x, w: optax.softmax_cross_entropy_with_integer_labels(x @ w.T, y).mean()  # noqa: E731
    compiled = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(x, w).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    return lambda: jax.block_until_ready(compiled(x, w)) and (), temp


def measure(variant, n, hidden, vocab, reps):
    """One variant in this process: ``{"s": median seconds, "peak": extra bytes}``."""
    xla_temp = None
    if variant.endswith("jax"):
        step, xla_temp = _jax_step(variant, n, hidden, vocab)
    elif variant == "xent-numpy":
        step = _numpy_step(n, hidden, vocab)
    else:
        step = _torch_step(variant, n, hidden, vocab)
    _measured(step)                        # warm-up: compiles, first touches
    runs = [_measured(step) for _ in range(reps)]
    return {"s": statistics.median(r[0] for r in runs),
            "peak": xla_temp if xla_temp is not None else max(r[1] for r in runs)}


def _run_variant(variant, args):
    """`measure` of one variant in a fresh process: its dict, or the last line of its error."""
    cmd = [sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens),
           "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--reps", str(args.reps)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return done.stderr.strip().splitlines()[-1][:80]
    return json.loads(done.stdout.strip().splitlines()[-1])


def linear_table(args):
    """Every variant once per round (rounds interleave them, so a slow minute of a
    noisy machine falls on all); the table gives each variant's median step, the
    median of its per-round ratio to that round's matmuls, and its largest peak."""
    logits = args.tokens * args.vocab * 4
    variants = args.variants or LINEAR
    runs = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            runs[variant].append(_run_variant(variant, args))
    print(f"N={args.tokens}, H={args.hidden}, V={args.vocab} float32 (logits {logits / 2**20:.0f} MiB); "
          f"{args.rounds} rounds of the variants in turn, each the median of {args.reps} steps; "
          f"{os.cpu_count()} CPUs\n")
    print("| variant | step (s), median | × the matmuls (per round) | peak extra (MiB) | × the logits |")
    print("|---|---:|---:|---:|---:|")
    floors = [r["s"] if isinstance(r, dict) else None for r in runs.get("matmuls", [])]
    for variant, results in runs.items():
        good = [r for r in results if isinstance(r, dict)]
        if not good:
            print(f"| {variant} | failed: {results[-1]} | | | |")
            continue
        ratios = [r["s"] / f for r, f in zip(results, floors) if isinstance(r, dict) and f]
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "—"
        peak = max(r["peak"] for r in good)
        cells = ("—", "—") if variant == "matmuls" else (f"{peak / 2**20:.0f}", f"{peak / logits:.3f}")
        print(f"| {variant} | {statistics.median(r['s'] for r in good):.2f} | {ratio} | {cells[0]} | {cells[1]} |")
    return runs


def inplace_table(args):
    import torch
    import torch.nn.functional as F
    import xent
    n, v = args.tokens, args.vocab
    gen = torch.Generator().manual_seed(0)
    source, y = torch.randn(n, v, generator=gen), torch.randint(0, v, (n,), generator=gen)
    buffer, dst = torch.empty(n, v), torch.empty(n, v)
    param = torch.zeros((), requires_grad=True)

    class Logits(torch.autograd.Function):
        """`buffer` as a non-leaf (xent refuses to write over a leaf or a view of one),
        made from `param` at no cost, as logits come out of a model's last matmul."""

        @staticmethod
        def forward(ctx, p):
            return buffer

        @staticmethod
        def backward(ctx, g):
            return g.new_zeros(())

    def copy():
        dst.copy_(source)

    def xent_inplace():
        loss = xent.cross_entropy(Logits.apply(param), y, inplace_backward=True)
        loss.backward()
        param.grad = None

    plain = source.clone().requires_grad_()

    def step(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(plain, y), plain)

    steps = {"copy": copy, "xent inplace": xent_inplace,
             "F.cross_entropy": step(F.cross_entropy),
             "xent": step(xent.cross_entropy),
             "xent compiled": step(torch.compile(xent.cross_entropy, fullgraph=True)),
             "F.cross_entropy compiled": step(torch.compile(F.cross_entropy))}
    times = {name: [] for name in steps}
    for round_ in range(args.reps + 1):
        with torch.no_grad():
            buffer.copy_(source)
        for name, f in steps.items():
            start = time.perf_counter()
            f()
            if round_:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(t) for k, t in times.items()}
    print(f"{n} x {v} float32 logits ({n * v * 4 / 2**20:.0f} MiB), torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, xent threads {xent.get_num_threads()}; "
          f"median of {args.reps} interleaved rounds\n")
    print("| step | ms | × the copy |")
    print("|---|---:|---:|")
    for k, t in med.items():
        print(f"| {k} | {1e3 * t:.1f} | {t / med['copy']:.2f} |")
    return med


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="linear mode: rounds of every variant")
    parser.add_argument("--inplace", action="store_true")
    parser.add_argument("--variants", nargs="*", choices=LINEAR)
    parser.add_argument("--variant", choices=LINEAR, help="run one variant here (internal)")
    args = parser.parse_args()
    args.tokens = args.tokens or (8192 if args.inplace else 2048)
    args.vocab = args.vocab or (32000 if args.inplace else 65536)
    if args.variant:
        print(json.dumps(measure(args.variant, args.tokens, args.hidden, args.vocab, args.reps)))
    elif args.inplace:
        inplace_table(args)
    else:
        linear_table(args)


if __name__ == "__main__":
    main()
