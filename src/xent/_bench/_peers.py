"""The peers `xent bench` times xent against, and xent on their arrays.

Each builder takes NumPy logits ``[N, C]`` and int32 labels ``[N]`` and
returns a "loss" and a "grad" `Case`; it imports its framework, so a builder
that raises ImportError means that peer is not installed.
"""
import importlib

import numpy as np

import xent
from xent._bench._cases import Case, xent_cases
from xent._bench._floors import floor_cases


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
    """The logits as a tensor, a copy of them that requires grad, and int64 labels."""
    import torch

    if logits.dtype.name == "bfloat16":
        x = torch.from_numpy(logits.view(np.int16)).view(torch.bfloat16)
    else:
        x = torch.from_numpy(logits)
    return x, x.detach().clone().requires_grad_(True), torch.from_numpy(labels.astype(np.int64))


def _torch_step_cases(name, fn, x, xg, y, role):
    """`fn(x, y)` without autograd, and a training step: `fn(xg, y)` and its gradient."""
    import torch

    def loss():
        with torch.no_grad():
            return fn(x, y)

    def grad():
        value = fn(xg, y)
        return value, torch.autograd.grad(value.sum(), xg)[0]

    return [Case(name, "loss", loss, role, framework=True),
            Case(name, "grad", grad, role, framework=True)]


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
    return _torch_step_cases(name, fn, x, xg, y, "peer")


def xent_torch_cases(logits, labels, compiled=False):
    """xent's `nn` function on PyTorch tensors, gradient by autograd (or inside a
    ``torch.compile(fullgraph=True)`` graph, through xent's registered operator)."""
    import torch

    x, xg, y = _torch_inputs(logits, labels)
    fn = lambda a, b: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=b, logits=a)
    name = "xent on torch"
    if compiled:
        torch.compiler.reset()
        fn, name = torch.compile(fn, fullgraph=True), "xent on torch.compile"
    return _torch_step_cases(name, fn, x, xg, y.to(torch.int32), "xent")


def tf_cases(logits, labels):
    """TensorFlow's raw op (which always computes the backprop too)."""
    import tensorflow as tf

    x, y = tf.constant(logits), tf.constant(labels)
    op = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits
    loss = lambda: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x)
    return [Case("TensorFlow raw op", "loss", loss, framework=True),
            Case("TensorFlow raw op", "grad", lambda: op(features=x, labels=y), framework=True)]


def _jax_cases(name, loss_fn, logits, labels, role="peer"):
    """`jit(loss_fn)` ("loss"), `jit(value_and_grad(sum of loss_fn))` on logits
    that stay the caller's ("grad"), and the same step with the logits donated
    ("grad_inplace", `_donated_step`), on JAX arrays."""
    import jax
    import jax.numpy as jnp

    x, y = jnp.asarray(logits), jnp.asarray(labels)
    step = jax.value_and_grad(lambda a: loss_fn(a, y).sum())
    cases = []
    for mode, fn in (("loss", jax.jit(lambda a: loss_fn(a, y))), ("grad", jax.jit(step))):
        compiled = fn.lower(x).compile()   # compiled once, timed and measured
        case = Case(name, mode, lambda c=compiled: jax.block_until_ready(c(x)), role, "xla",
                    framework=True)
        case.xla_bytes = _xla_bytes(compiled)
        cases.append(case)
    return cases + [_donated_step(name, jax.jit(step, donate_argnums=0), x, role)]


def _donated_step(name, step, x, role):
    """The step with its logits donated (``donate_argnums``), as in a training step
    whose logits die at the loss: XLA may write the gradient over them. Each
    call donates the previous call's gradient as its logits (softmax minus
    one-hot: the same work on the same shape), starting from a copy of `x`."""
    import jax
    import jax.numpy as jnp

    compiled = step.lower(x).compile()
    logits = [jnp.array(x)]

    def run():
        logits[0] = compiled(logits[0])[1]
        jax.block_until_ready(logits[0])

    case = Case(name, "grad_inplace", run, role, "xla", framework=True)
    case.xla_bytes = _xla_bytes(compiled)
    return case


def _xla_bytes(compiled):
    """Output plus temporary bytes of a compiled XLA program, less its outputs that
    are donated inputs, or None."""
    try:
        stats = compiled.memory_analysis()
        return int(stats.output_size_in_bytes + stats.temp_size_in_bytes
                   - stats.alias_size_in_bytes)
    except Exception:   # noqa: BLE001 - the analysis is optional across jax versions
        return None


def jax_cases(logits, labels):
    """optax's integer-label cross-entropy under ``jax.jit``."""
    importlib.import_module("jax")   # (first: a missing JAX is reported as jax, not optax)
    import optax

    return _jax_cases("JAX optax", optax.softmax_cross_entropy_with_integer_labels, logits, labels)


def xent_jax_cases(logits, labels):
    """xent's `nn` function on JAX arrays under ``jax.jit`` (its XLA callback on CPU)."""
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
