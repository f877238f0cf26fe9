"""A torch training step whose loss is a mean, not a sum: the upstream gradient folded in.

    python bench/torch_mean_step.py [--shape 4096x32000] [--labels sparse|dense]
                                    [--steps 9] [--rounds 5]

Each case is a training step on CPU tensors (a leaf that requires grad,
forward, ``backward`` of the scalar), run `--steps` times in a row after a
warm-up (its median step is kept), the cases interleaved over `--rounds`
rounds. "folded" is xent as shipped (`xent._torch._upstream`); "scaled" is the
same call with folding switched off (the backward scales the backprop with a
second pass, as before). The floor is a 2-thread ``copy_`` of the logits into
a tensor of their size. Prints one table (Markdown) with medians over rounds.

``--labels dense`` runs the dense faces (`softmax_cross_entropy_with_logits`,
keras `CategoricalCrossentropy`, v1 `softmax_cross_entropy`) on target rows
as large as the logits (label-smoothed one-hot rows), and the peer
``F.cross_entropy`` with probability targets.

torch is imported once the arguments are read (`_arguments`): a bad one is
reported at once, not after the seconds torch takes to import.
"""
import argparse
import statistics
import time

import numpy as np

import xent
from xent._bench._machine import compiled_for, cpu_model
from xent.cli import _shape


# Per kind of labels: the nn face's row name and function, the keras class's, the v1
# function's (labels, logits), and the peer's row name.
_FACES = {
    "sparse": ("nn", xent.nn.sparse_softmax_cross_entropy_with_logits,
               "keras SparseCategoricalCrossentropy",
               xent.keras.losses.SparseCategoricalCrossentropy,
               "v1 sparse_softmax_cross_entropy",
               lambda y, x: xent.losses.sparse_softmax_cross_entropy(labels=y, logits=x),
               "F.cross_entropy (mean)"),
    "dense": ("nn dense", xent.nn.softmax_cross_entropy_with_logits,
              "keras CategoricalCrossentropy", xent.keras.losses.CategoricalCrossentropy,
              "v1 softmax_cross_entropy",
              lambda y, x: xent.losses.softmax_cross_entropy(onehot_labels=y, logits=x),
              "F.cross_entropy, probabilities (mean)"),
}


def _cases(kind, labels):
    """The steps on `kind` labels: int labels ``[N]`` ("sparse") or target rows
    ``[N, C]`` ("dense"); each takes the logits leaf and returns a scalar."""
    import torch
    import torch.nn.functional as F

    nn_name, nn_face, keras_name, keras_class, v1_name, v1, peer = _FACES[kind]
    keras_loss = keras_class(from_logits=True)

    def nn(reduce):
        return lambda x: reduce(nn_face(labels=labels[:x.shape[0]], logits=x))
    return {
        f"xent {nn_name}, .sum()": nn(torch.sum),
        f"xent {nn_name}, .mean()": nn(torch.mean),
        f"xent {nn_name}, .mean(), a new batch size each step": nn(torch.mean),
        f"xent {keras_name}": lambda x: keras_loss(labels, x),
        f"xent {v1_name}": lambda x: v1(labels, x),
        peer: lambda x: F.cross_entropy(x, labels),
    }


def _smoothed_one_hot(labels, classes, smoothing=0.1):
    """Float32 target rows ``[N, classes]``: one-hot `labels`, smoothed as Keras does."""
    import torch

    targets = torch.full((labels.shape[0], classes), smoothing / classes)
    targets[torch.arange(labels.shape[0]), labels] += 1 - smoothing
    return targets


def _positive(text):
    """A positive int argument (argparse type)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return int(text)


def _key(name, way):
    """The table's row for case `name` run `way` ("folded" or "scaled"; xent's only)."""
    return f"{name} [{way}]" if name.startswith("xent") else name


def _burst(loss_fn, logits, steps, new_shapes=False):
    """Median seconds of `steps` training steps in a row (two warm-up steps first);
    with `new_shapes`, each step drops one more row of the logits (a batch size
    not seen before, as padding that changes per batch makes)."""
    times = []
    for k in range(steps + 2):
        rows = logits[:logits.shape[0] - k] if new_shapes else logits
        leaf = rows.detach().requires_grad_(True)
        start = time.perf_counter()
        loss_fn(leaf).backward()
        elapsed = time.perf_counter() - start
        del leaf
        if k >= 2:
            times.append(elapsed)
    return statistics.median(times)


def _copy_floor(target, logits, steps):
    """Median seconds of `steps` copies of the logits into `target` (already faulted in)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        target.copy_(logits)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _arguments():
    """The command line's arguments; argparse's error (exit 2) for a bad one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=_shape, default=(4096, 32000), metavar="ROWSxCLASSES")
    parser.add_argument("--labels", choices=("sparse", "dense"), default="sparse")
    parser.add_argument("--steps", type=_positive, default=9)
    parser.add_argument("--rounds", type=_positive, default=5)
    args = parser.parse_args()
    n, _ = args.shape
    if n <= args.steps + 2:   # (the new-shape case drops a row a step)
        parser.error(f"argument --shape: needs more than --steps + 2 = {args.steps + 2} rows; "
                     f"got {n}")
    return args


def main():
    args = _arguments()
    import torch

    from xent._torch import _upstream

    n, c = args.shape
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.standard_normal((n, c), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, c, n))
    cases = _cases(args.labels, labels if args.labels == "sparse" else _smoothed_one_hot(labels, c))
    target = torch.empty_like(logits)
    results = {"copy floor (copy_)": []}
    results.update({_key(name, way): [] for name in cases for way in ("folded", "scaled")})
    fold_min = _upstream.MIN_BYTES
    for _ in range(args.rounds):
        results["copy floor (copy_)"].append(_copy_floor(target, logits, args.steps))
        for name, fn in cases.items():
            for way in ("folded", "scaled"):
                key = _key(name, way)
                if way == "scaled" and key == _key(name, "folded"):
                    continue   # (a peer: no way to choose)
                _upstream.MIN_BYTES = fold_min if way == "folded" else 1 << 62
                _upstream.forget()
                results[key].append(_burst(fn, logits, args.steps, "new batch" in name))
        _upstream.MIN_BYTES = fold_min
    floor = statistics.median(results["copy floor (copy_)"])
    print(f"{n}x{c} float32, {args.labels} labels; {cpu_model()}, kernels for {compiled_for()}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median step of {args.steps}, median over {args.rounds} rounds\n")
    print("| step | ms | × copy |\n|---|---:|---:|")
    for key, times in results.items():
        median = statistics.median(times)
        print(f"| {key} | {median * 1e3:.1f} | {median / floor:.2f} |")


if __name__ == "__main__":
    main()
