"""xent on CUDA tensors and JAX GPU arrays: right, without host syncs, and its memory.

    python bench/gpu_check.py [--quick]

Not part of the suite (CI has no GPU); run it where torch sees a CUDA device
and/or JAX a GPU. CUDA tensors and GPU JAX arrays take the framework-ops path
(`xent._array_kernels`, `xent._large_vocab._array_math`). For each public
function, dtype and option set it checks, against the same call on CPU
tensors (the fused kernel, which the suite checks against TensorFlow):

  - the loss and the gradient with respect to the logits (and the weights of
    `linear_cross_entropy`) agree to the dtype's tolerance;
  - forward + backward make no host sync: each call runs under
    `torch.cuda.set_sync_debug_mode("error")`, which raises on a sync;
  - a label out of range gives a NaN row (no error: raising would need a sync).

Then it prints figures: the time and peak extra GPU memory of a bf16
`cross_entropy` and `linear_cross_entropy` step against `F.cross_entropy` on
the materialised logits. Without CUDA, ``--device cpu`` runs the same checks
on CPU tensors forced through the torch-ops path (to test this script).
"""
import argparse
import sys
import time

import numpy as np

import xent

TOL = {"float32": 2e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}


def _report(failures, name, ok, detail=""):
    """Print one check's line; remember a failure."""
    print(f"  {'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        failures.append(name)


def _error(got, want, loss):
    """Max |got - want| / (1 + |want|) over (torch tensors), in units of the tolerance of
    the `loss`'s dtype (a Keras loss computes in float32 whatever its inputs): <= 1 passes."""
    tol = TOL[str(loss.dtype).split(".")[1]]
    got, want = (np.asarray(a.detach().cpu().double()) for a in (got, want))
    if got.shape != want.shape:
        return float("inf")
    both_nan = np.isnan(got) & np.isnan(want)
    err = np.where(both_nan, 0.0, np.abs(got - want) / (1 + np.abs(want)))
    return float(np.max(err, initial=0.0)) / tol


def torch_cases(torch):
    """(name, function of (logits, labels, dense_labels, weights) -> loss) pairs."""
    nn, keras = xent.nn, xent.keras.losses
    return [
        ("nn.sparse", lambda x, y, d, w: nn.sparse_softmax_cross_entropy_with_logits(
            labels=y, logits=x)),
        ("nn.dense", lambda x, y, d, w: nn.softmax_cross_entropy_with_logits(labels=d, logits=x)),
        ("losses.sparse weighted", lambda x, y, d, w: xent.losses.sparse_softmax_cross_entropy(
            y, x, weights=w)),
        ("keras.SparseCCE", lambda x, y, d, w: keras.SparseCategoricalCrossentropy(
            from_logits=True)(y, x)),
        ("keras.CCE smoothing", lambda x, y, d, w: keras.CategoricalCrossentropy(
            from_logits=True, label_smoothing=0.1)(d, x)),
        ("cross_entropy", lambda x, y, d, w: xent.cross_entropy(x, y)),
        ("cross_entropy ignore+smooth+z+cap", lambda x, y, d, w: xent.cross_entropy(
            x, torch.where(y % 5 == 0, -100, y), label_smoothing=0.1, z_loss=1e-4,
            softcap=30.0, reduction="sum")),
    ]


def _torch_step(torch, fn, x, y, d, w):
    """The loss and its gradient with respect to x (sum of the loss if it is not a scalar)."""
    x = x.detach().requires_grad_()
    loss = fn(x, y, d, w)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss, grad


def check_torch(torch, device, failures):
    """Every case and dtype on `device` against the CPU kernel, without host syncs."""
    from xent import _torch
    on_cpu = device == "cpu"
    gen = torch.Generator().manual_seed(0)
    n, c = 64, 1000
    x64 = torch.randn(n, c, generator=gen, dtype=torch.float64) * 4
    y = torch.randint(0, c, (n,), generator=gen)
    d64 = torch.softmax(torch.randn(n, c, generator=gen, dtype=torch.float64), -1)
    w64 = torch.rand(n, generator=gen, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        name = str(dtype).split(".")[1]
        x, d, w = (a.to(dtype) for a in (x64, d64, w64))
        for case, fn in torch_cases(torch):
            want = _torch_step(torch, fn, x, y, d, w)
            args = [a.to(device) for a in (x, y, d, w)]
            _torch.use_torch_ops_on_cpu(on_cpu)
            sync = "" if on_cpu else "error"
            try:
                if sync:
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode(sync)
                got = _torch_step(torch, fn, *args)
                error = None
            except Exception as e:   # a sync raises RuntimeError here
                got, error = None, e
            finally:
                if sync:
                    torch.cuda.set_sync_debug_mode(0)
                _torch.use_torch_ops_on_cpu(False)
            if error is not None:
                _report(failures, f"torch {device} {name} {case}", False, f"raised {error!r:.200}")
                continue
            on_device = got[0].device.type == device and got[1].device.type == device
            worst = max(_error(g, v, want[0]) for g, v in zip(got, want))
            _report(failures, f"torch {device} {name} {case}",
                    on_device and worst <= 1 and got[0].dtype == want[0].dtype,
                    f"(err {worst:.2f} tol, dtype {got[0].dtype}, on {got[0].device})")
    _check_torch_linear(torch, device, failures)
    _check_torch_bad_label(torch, device, failures)


def _check_torch_linear(torch, device, failures):
    """`linear_cross_entropy` loss and x/W gradients on `device` against the CPU kernel."""
    from xent import _torch
    gen = torch.Generator().manual_seed(1)
    n, dim, vocab = 300, 64, 5000
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).split(".")[1]
        x = (torch.randn(n, dim, generator=gen) / 4).to(dtype)
        wt = (torch.randn(vocab, dim, generator=gen) / 4).to(dtype)
        t = torch.randint(0, vocab, (n,), generator=gen)
        t[::7] = -100

        def step(x, wt, t):
            x, wt = x.detach().requires_grad_(), wt.detach().requires_grad_()
            loss = xent.linear_cross_entropy(x, wt, t, label_smoothing=0.05, z_loss=1e-4,
                                             chunk_size=128)
            return (loss, *torch.autograd.grad(loss, (x, wt)))

        want = step(x, wt, t)
        _torch.use_torch_ops_on_cpu(device == "cpu")
        try:
            got = step(x.to(device), wt.to(device), t.to(device))
        finally:
            _torch.use_torch_ops_on_cpu(False)
        worst = max(_error(g, v, want[0]) for g, v in zip(got, want))
        _report(failures, f"torch {device} {name} linear_cross_entropy", worst <= 1,
                f"(err {worst:.2f} tol)")


def _check_torch_bad_label(torch, device, failures):
    """A label out of range: that row NaN, the others right, no exception."""
    from xent import _torch
    x = torch.randn(4, 10, dtype=torch.float32)
    y = torch.tensor([1, 10, 3, -1])
    _torch.use_torch_ops_on_cpu(device == "cpu")
    try:
        got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=y.to(device),
                                                               logits=x.to(device)).cpu()
    finally:
        _torch.use_torch_ops_on_cpu(False)
    good = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=y[[0, 2]], logits=x[[0, 2]])
    ok = bool(torch.isnan(got[[1, 3]]).all()) and bool(torch.allclose(got[[0, 2]], good))
    _report(failures, f"torch {device} label out of range -> NaN rows", ok, f"({got.tolist()})")


def check_jax(failures, platform="gpu"):
    """Jitted value_and_grad on a `platform` array against the CPU kernel's, per dtype
    (``platform="cpu"`` compares the CPU with itself, to test this script)."""
    import jax
    import jax.numpy as jnp
    gpus = [dev for dev in jax.devices(platform)] if platform == "cpu" else [
        dev for dev in jax.devices() if dev.platform == platform]
    if not gpus:
        print(f"  (no JAX {platform} device: skipped)")
        return
    rng = np.random.default_rng(2)
    x64 = rng.standard_normal((64, 1000)) * 4
    y = rng.integers(0, 1000, 64)
    funcs = {
        "nn.sparse mean": lambda x, y: xent.nn.sparse_softmax_cross_entropy_with_logits(
            labels=y, logits=x).mean(),
        "cross_entropy smooth+z+cap": lambda x, y: xent.cross_entropy(
            x, jnp.where(y % 5 == 0, -100, y), label_smoothing=0.1, z_loss=1e-4, softcap=30.0),
    }
    for name in ("float32", "bfloat16", "float16"):
        dtype = jnp.dtype(name)
        for case, fn in funcs.items():
            step = jax.jit(jax.value_and_grad(fn))
            cpu = jax.devices("cpu")[0]
            want = step(jax.device_put(jnp.asarray(x64, dtype), cpu), jax.device_put(y, cpu))
            got = step(jax.device_put(jnp.asarray(x64, dtype), gpus[0]),
                       jax.device_put(y, gpus[0]))
            placed = all(list(a.devices())[0].platform == platform for a in got)
            errs = [float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(v, np.float64))
                                 / (1 + np.abs(np.asarray(v, np.float64)))))
                    for g, v in zip(got, want)]
            _report(failures, f"jax {platform} {name} {case}", placed and max(errs) <= TOL[name],
                    f"(err {max(errs):.1e}, on {list(got[1].devices())[0]})")


def _gpu_figure(torch, label, step):
    """Median ms of `step()` and its peak GPU memory above what existed before it
    (CPU: time only)."""
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    step()
    sync()
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = f"{(torch.cuda.max_memory_allocated() - base) / 2**30:.2f}" if cuda else "-"
    print(f"| {label} | {1e3 * float(np.median(times)):.2f} | {peak} |", flush=True)


def figures(torch, dev, quick):
    """Time and peak extra memory of large-vocabulary bf16 steps on `dev`."""
    n, dim, vocab = (512, 512, 8000) if quick else (8192, 4096, 128256)
    bf16 = torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(3)
    x = torch.randn(n, dim, device=dev, dtype=bf16, generator=gen) / 8
    wt = torch.randn(vocab, dim, device=dev, dtype=bf16, generator=gen) / 8
    t = torch.randint(0, vocab, (n,), device=dev, generator=gen)
    logits = (x @ wt.t()).detach()
    F = torch.nn.functional

    def ce_step(fn):
        z = logits.detach().requires_grad_()
        torch.autograd.grad(fn(z), z)

    def linear_step(fn):
        xx, ww = x.detach().requires_grad_(), wt.detach().requires_grad_()
        torch.autograd.grad(fn(xx, ww), (xx, ww))

    print(f"\nbf16, N={n}, d={dim}, V={vocab} (logits {n * vocab * 2 / 2**30:.2f} GiB):\n")
    print("| step (forward + backward) | ms | peak extra GiB |\n|---|---:|---:|")
    _gpu_figure(torch, "F.cross_entropy(logits)", lambda: ce_step(lambda z: F.cross_entropy(z, t)))
    _gpu_figure(torch, "xent.cross_entropy(logits)", lambda: ce_step(
        lambda z: xent.cross_entropy(z, t)))
    _gpu_figure(torch, "F.cross_entropy(x @ W.T)", lambda: linear_step(
        lambda a, b: F.cross_entropy(a @ b.t(), t)))
    _gpu_figure(torch, "xent.linear_cross_entropy", lambda: linear_step(
        lambda a, b: xent.linear_cross_entropy(a, b, t)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to test this script")
    parser.add_argument("--quick", action="store_true", help="small shapes for the figures")
    args = parser.parse_args()
    failures = []
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (torch-ops path)"
    print(f"torch {torch.__version__} on {where}")
    check_torch(torch, args.device, failures)
    print("JAX:")
    check_jax(failures, "gpu" if args.device == "cuda" else "cpu")
    figures(torch, args.device, args.quick)
    print(f"\n{len(failures)} failed" + (f": {failures}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
