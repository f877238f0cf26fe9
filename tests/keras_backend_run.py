"""xent's Keras losses in Keras 3's own training loop, against Keras' losses.

Run as a script in a fresh process with ``KERAS_BACKEND`` set (a backend is
chosen once per process, before Keras is imported): builds small models,
compiles each with an xent loss and with Keras' own, and prints a JSON object
``{case: [xent's value, Keras' value]}`` for `test_keras_training.py` to compare.
"""
import json
import os
import sys
import tempfile
import warnings

import numpy as np

warnings.filterwarnings("ignore")
import keras  # noqa: E402  (after the backend is set by the caller's environment)

import xent  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 4)).astype("float32")
Y = RNG.integers(0, 5, size=24)
Y[[3, 7]] = 3   # (ignore_class's entries)
SW = RNG.uniform(0.1, 2.0, size=24).astype("float32")
CLASS_WEIGHT = {c: 1.0 + c for c in range(5)}


def dense_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])


def evaluate(loss, **fit_args):
    model = dense_model()
    model.compile(loss=loss)
    return model.evaluate(X, Y, batch_size=24, verbose=0, **fit_args)


def fitted_weights(loss, **fit_args):
    """The kernel after two epochs of SGD (batches of 8) with `loss`."""
    model = dense_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    model.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0, **fit_args)
    return np.asarray(model.layers[0].kernel).ravel().tolist()


def categorical_evaluate(loss):
    """`evaluate` with one-hot labels and sample weights."""
    model = dense_model()
    model.compile(loss=loss)
    return model.evaluate(X, np.eye(5, dtype="float32")[Y], batch_size=24, verbose=0,
                          sample_weight=SW)


def masked_evaluate(loss):
    """A sequence model whose padding (token 0) Keras masks: `Embedding(mask_zero=True)`."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 6, size=(6, 5))
    tokens[:, 3:] = 0
    model = keras.Sequential([keras.Input((5,), dtype="int32"),
                              keras.layers.Embedding(6, 3, mask_zero=True), keras.layers.Dense(5)])
    model.compile(loss=loss)
    return model.evaluate(tokens, rng.integers(0, 5, size=(6, 5)), batch_size=6, verbose=0)


def saved_and_loaded(loss):
    """`evaluate` of a model compiled with `loss`, saved to .keras and loaded back
    (no ``custom_objects``)."""
    model = dense_model()
    model.compile(loss=loss)
    path = os.path.join(tempfile.mkdtemp(), "model.keras")
    model.save(path)
    return keras.models.load_model(path).evaluate(X, Y, batch_size=24, verbose=0)


def main():
    xk, kk = xent.keras.losses, keras.losses
    results = {}

    def both(name, run, make):
        results[name] = [run(make(xk)), run(make(kk))]

    def sparse(module, **kwargs):
        return module.SparseCategoricalCrossentropy(from_logits=True, **kwargs)

    both("sample_weight", lambda l: evaluate(l, sample_weight=SW), sparse)
    both("mean_with_sample_weight", lambda l: evaluate(l, sample_weight=SW),
         lambda m: sparse(m, reduction="mean_with_sample_weight"))
    both("class_weight", lambda l: fitted_weights(l, class_weight=CLASS_WEIGHT), sparse)
    both("fit sample_weight", lambda l: fitted_weights(l, sample_weight=SW), sparse)
    both("categorical sample_weight", categorical_evaluate,
         lambda m: m.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    both("ignore_class function", evaluate, lambda m: (
        lambda y, p: m.sparse_categorical_crossentropy(y, p, from_logits=True, ignore_class=3)))
    both("Embedding mask", masked_evaluate, sparse)
    results["saved and loaded"] = [saved_and_loaded(sparse(xk, ignore_class=3)),
                                   evaluate(sparse(xk, ignore_class=3))]
    results["is a keras Loss"] = [isinstance(sparse(xk), keras.losses.Loss), True]
    json.dump({"backend": keras.backend.backend(), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
