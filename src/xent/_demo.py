"""`xent demo`: TensorFlow's documented examples, computed by xent beside TF's numbers.

Each example is one from TensorFlow's (or Keras') documentation: the inputs
its docstring uses, xent's result on them, and the value the docstring
prints, so that a newcomer sees at once whether xent agrees. Each example
also carries the TensorFlow call it mirrors; the test suite runs those
against real TensorFlow, and checks that the printed values are TF's.
The last lines run one example on PyTorch tensors and JAX arrays, where
those are installed. TensorFlow itself is not needed.
"""
import dataclasses
import importlib.util
from typing import Callable, Optional

import numpy as np

import xent

# Keras' examples (keras/src/losses/losses.py, SparseCategoricalCrossentropy,
# CategoricalCrossentropy and their functions): y_pred are probabilities.
Y_PRED = [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]
Y_SPARSE = [1, 2]
Y_ONEHOT = [[0, 1, 0], [0, 0, 1]]
WEIGHTS = [0.3, 0.7]
# tf.nn.sparse_softmax_cross_entropy_with_logits' example (tensorflow/python/ops/nn_ops.py).
NN_LOGITS = [[2.0, -5.0, 0.5, -0.1], [0.0, 0.0, 1.9, 1.4], [-100.0, 100.0, -100.0, -100.0]]
NN_LABELS = [0, 3, 1]
NN_DOCUMENTED = "[0.29750752, 1.1448325, 0.]"
# tf.nn.softmax_cross_entropy_with_logits' example (the same file).
DENSE_LOGITS = [[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]]
DENSE_LABELS = [[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]]


@dataclasses.dataclass(frozen=True)
class Example:
    """One documented example: xent's call, TensorFlow's call, and TF's printed value.

    `xent_fn()` and `tf_fn(tf)` compute the same thing; `documented` is the value
    as TensorFlow's docstring prints it (its digits are its precision).
    """

    section: str
    what: str
    documented: str
    xent_fn: Callable[[], object]
    tf_fn: Callable[[object], object]


def _f32(x):
    return np.asarray(x, np.float32)


def _keras(name, kwargs, call_kwargs, labels):
    """A Keras class example: ``name(**kwargs)(labels, Y_PRED, **call_kwargs)``."""
    def run(module):
        extra = {k: np.asarray(v) for k, v in call_kwargs.items()}
        return getattr(module, name)(**kwargs)(np.asarray(labels), _f32(Y_PRED), **extra)
    return lambda: run(xent.keras.losses), lambda tf: run(tf.keras.losses)


def _keras_examples(name, labels, label_text):
    kind = "class ids" if labels is Y_SPARSE else "one-hot"
    section = (f"tf.keras.losses.{name}   y_true={label_text} ({kind}), "
               f"y_pred={Y_PRED} (probabilities)")
    cases = [("default reduction (sum_over_batch_size)", {}, {}, "1.177"),
             ("sample_weight=[0.3, 0.7]", {}, {"sample_weight": WEIGHTS}, "0.814"),
             ("reduction='sum'", {"reduction": "sum"}, {}, "2.354"),
             ("reduction=None", {"reduction": None}, {}, "[0.0513, 2.303]")]
    return [Example(section, what, documented, *_keras(name, kwargs, call_kwargs, labels))
            for what, kwargs, call_kwargs, documented in cases]


def _function_examples():
    section = f"tf.keras.losses functions   y_pred={Y_PRED} (probabilities)"
    y_pred = _f32(Y_PRED)
    sparse = lambda m: m.sparse_categorical_crossentropy(  # noqa: E731
        np.asarray(Y_SPARSE), y_pred)
    onehot = lambda m: m.categorical_crossentropy(np.asarray(Y_ONEHOT), y_pred)  # noqa: E731
    return [
        Example(section, f"sparse_categorical_crossentropy(y_true={Y_SPARSE})", "[0.0513, 2.303]",
                lambda: sparse(xent.keras.losses), lambda tf: sparse(tf.keras.losses)),
        Example(section, f"categorical_crossentropy(y_true={Y_ONEHOT})", "[0.0513, 2.303]",
                lambda: onehot(xent.keras.losses), lambda tf: onehot(tf.keras.losses)),
    ]


def _nn_examples():
    section = "tf.nn and tf.raw_ops   logits (unnormalised log-probabilities)"
    sparse = lambda nn: nn.sparse_softmax_cross_entropy_with_logits(  # noqa: E731
        labels=np.asarray(NN_LABELS), logits=_f32(NN_LOGITS))
    dense = lambda nn: nn.softmax_cross_entropy_with_logits(  # noqa: E731
        labels=_f32(DENSE_LABELS), logits=_f32(DENSE_LOGITS))
    raw = lambda ops: ops.SparseSoftmaxCrossEntropyWithLogits(  # noqa: E731
        features=_f32(NN_LOGITS), labels=np.asarray(NN_LABELS))[0]
    return [
        Example(section, f"sparse_softmax_cross_entropy_with_logits(labels={NN_LABELS}, "
                         f"logits={NN_LOGITS})", NN_DOCUMENTED,
                lambda: sparse(xent.nn), lambda tf: sparse(tf.nn)),
        Example(section, f"softmax_cross_entropy_with_logits(labels={DENSE_LABELS}, "
                         f"logits={DENSE_LOGITS})", "[0.16984604, 0.82474494]",
                lambda: dense(xent.nn), lambda tf: dense(tf.nn)),
        Example(section, "raw_ops.SparseSoftmaxCrossEntropyWithLogits(the same).loss "
                         "(TF documents it for tf.nn)", NN_DOCUMENTED,
                lambda: raw(xent.raw_ops), lambda tf: raw(tf.raw_ops)),
    ]


def _framework_examples():
    """The tf.nn sparse example on torch tensors and JAX arrays (None where not installed)."""
    section = "the tf.nn sparse example on other arrays (same documented value)"

    def on_torch():
        import torch

        return xent.nn.sparse_softmax_cross_entropy_with_logits(
            labels=torch.tensor(NN_LABELS), logits=torch.tensor(NN_LOGITS)).numpy()

    def on_jax():
        import jax.numpy as jnp

        return np.asarray(xent.nn.sparse_softmax_cross_entropy_with_logits(
            labels=jnp.asarray(NN_LABELS), logits=jnp.asarray(NN_LOGITS, jnp.float32)))

    nn_tf = _nn_examples()[0].tf_fn
    return [Example(section, f"{name} (logits={kind})", NN_DOCUMENTED, run, nn_tf)
            for name, kind, run in (("torch", "torch.Tensor", on_torch),
                                    ("jax", "jax.Array", on_jax))]


def examples():
    """Every example, in the order `run` prints them."""
    return [*_keras_examples("SparseCategoricalCrossentropy", Y_SPARSE, "[1, 2]"),
            *_keras_examples("CategoricalCrossentropy", Y_ONEHOT, "[[0, 1, 0], [0, 0, 1]]"),
            *_function_examples(), *_nn_examples(), *_framework_examples()]


EPS32 = float(np.finfo(np.float32).eps)


def documented_values(example):
    """The documented value as a float64 array, and how far a float32 result may lie from it.

    That is half a unit of the last printed digit (1.177: 0.0005), and at least
    4 float32 ulps where the docs print every digit: TensorFlow 2.21 itself
    gives 0.29750744 where its docstring, from an older kernel, prints 0.29750752.
    An array's zero printed bare (``0.`` beside 0.29750752: NumPy's printing
    drops trailing zeros) is 0 to the most digits printed beside it, not to 0.5.
    """
    text = example.documented.strip("[]").replace(",", " ").split()
    values = np.array([float(t) for t in text])
    digits = np.array([len(t.split(".")[1]) if "." in t else 0 for t in text], np.float64)
    digits[(values == 0) & (digits == 0)] = digits.max()
    return values, np.maximum(0.5 * 10.0 ** -digits, 4 * EPS32 * np.abs(values))


def agrees(value, example):
    """Whether `value` is the documented value, to its printed digits (`documented_values`)."""
    want, tolerance = documented_values(example)
    got = np.asarray(value, np.float64).reshape(-1)
    return got.shape == want.shape and bool(np.all(np.abs(got - want) <= tolerance))


def _installed(module):
    return importlib.util.find_spec(module) is not None


def _result(example) -> Optional[np.ndarray]:
    """xent's value for `example`, or None where its framework is not installed."""
    name = example.what.split(" ")[0]
    if name in ("torch", "jax") and not _installed(name):
        return None
    return np.asarray(example.xent_fn())


def _fmt(value):
    return np.array2string(np.asarray(value), separator=", ", precision=8, floatmode="maxprec")


def lines():
    """The demo's text, line by line."""
    out = [f"xent {xent.__version__} on {xent.get_kernels()} kernels: TensorFlow's documented "
           "examples, xent's result beside the value TF's documentation prints",
           "(agrees: equal to the printed digits, or within 4 float32 ulps where every digit "
           "is printed)", ""]
    section = None
    for example in examples():
        if example.section != section:
            section = example.section
            out += ["" if len(out) > 3 else None, section]
        value = _result(example)
        if value is None:
            out.append(f"  {example.what}: not installed, skipped")
            continue
        mark = "agrees" if agrees(value, example) else "DIFFERS"
        out.append(f"  {example.what}")
        out.append(f"      xent {_fmt(value):<30} TF docs {example.documented:<28} {mark}")
    return [line for line in out if line is not None]


def run():
    """Print the demo; return 0 when every computed example agrees with TF's docs."""
    text = lines()
    print("\n".join(text))
    return 1 if any(line.endswith("DIFFERS") for line in text) else 0
