"""xent's Keras losses given to Keras 3's ``model.compile`` on the JAX and torch backends.

Each backend runs in a fresh process (`keras_backend_run.py`: Keras picks its
backend once, at import), which compiles small models with an xent loss and
with Keras' own, the oracle, and reports both values of every case.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xent

RUN = Path(__file__).with_name("keras_backend_run.py")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_xent_losses_in_keras_model_compile_match_keras_losses(backend):
    """Keras wraps a loss that is not a `keras.losses.Loss` in its function wrapper,
    which drops `sample_weight` and ``class_weight`` and weights the reduced
    scalar: ``mean(l)·mean(w)`` (2.917 for Keras' 2.979 on JAX, an independent
    review). Keras' masks (`Embedding(mask_zero=True)`) live in a side table for
    JAX tracers, which ``y_pred._keras_mask`` did not read under `jit`; and the
    ``ignore_class`` function's result carried no mask, so Keras meant over the
    ignored entries too. Losses, and the weights after two epochs of SGD, within
    float32 rounding of Keras'; saved and loaded without ``custom_objects``."""
    pytest.importorskip(backend)
    pytest.importorskip("keras")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(RUN)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["backend"] == backend
    assert set(report["results"]) == {
        "sample_weight", "mean_with_sample_weight", "class_weight", "fit sample_weight",
        "categorical sample_weight", "ignore_class function", "Embedding mask",
        "saved and loaded", "is a keras Loss"}
    for case, (got, want) in report["results"].items():
        np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), rtol=1e-6,
                                   atol=3e-7, err_msg=case)


def test_loss_objects_are_keras_losses_once_keras_is_loaded(keras):
    """With Keras 3 imported (here on the TF backend, the oracle's), xent's loss
    objects are `keras.losses.Loss` instances too, and keep xent's behaviour: the
    same config, pickling and copying as their xent class, the same values."""
    import copy
    import pickle

    xk = xent.keras.losses
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
    for loss in (xk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=2, name="s"),
                 xk.CategoricalCrossentropy(label_smoothing=0.2, dtype="float64")):
        assert isinstance(loss, keras.losses.Loss) and isinstance(loss, type(loss).__mro__[1])
        labels = [0, 1] if "Sparse" in type(loss).__name__ else np.eye(3)[[0, 1]]
        value = loss(labels, logits, sample_weight=[0.5, 2.0])
        for twin in (pickle.loads(pickle.dumps(loss)), copy.deepcopy(loss),
                     type(loss).from_config(loss.get_config())):
            assert type(twin) is type(loss) and twin.get_config() == loss.get_config()
            assert twin(labels, logits, sample_weight=[0.5, 2.0]) == value
        assert keras.losses.get(keras.losses.serialize(loss)).get_config() == loss.get_config()


def test_a_symbolic_tensorflow_tensor_is_refused_by_name(tf):
    """Inside `tf.function` (or a Keras model on the TF backend), NumPy's conversion
    failed with TF's "Cannot convert a symbolic tf.Tensor": now a TypeError that
    names the argument and says to use TF's own losses there."""
    @tf.function
    def loss(x, y):
        return xent.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x)

    with pytest.raises(TypeError, match="`labels` is a symbolic TensorFlow tensor .*use "
                                        "TensorFlow's or Keras' own losses"):
        loss(tf.ones((2, 3)), tf.constant([0, 1]))

    @tf.function
    def listed(x, a, b):   # (a list of them: TF's own error before, the second diff review)
        return xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[a, b], logits=x)

    with pytest.raises(TypeError, match="`labels` is a symbolic TensorFlow tensor"):
        listed(tf.ones((2, 3)), tf.constant(0), tf.constant(1))


# A loss pickled by xent at 7ea78d4, whose `dtype` was an attribute of the instance
# (`SparseCategoricalCrossentropy(from_logits=True, dtype="float64", name="old")`).
_OLD_PICKLE = ("gASVugAAAAAAAACMEXhlbnQua2VyYXMubG9zc2VzlIwdU3BhcnNlQ2F0ZWdvcmljYWxDcm9zc2VudHJvcHmUk5Qp"
               "gZR9lCiMBG5hbWWUjANvbGSUjAlyZWR1Y3Rpb26UjBNzdW1fb3Zlcl9iYXRjaF9zaXpllIwKX2R0eXBlX2FyZ5SM"
               "B2Zsb2F0NjSUjAVkdHlwZZRoCowLZnJvbV9sb2dpdHOUiIwMaWdub3JlX2NsYXNzlE6MBGF4aXOUSv////91Yi4=")


def test_a_loss_pickled_before_dtype_became_a_property_still_loads(keras):
    """`dtype` became a read-only property (Keras' `Loss` has one): a loss pickled
    before, its dtype in the instance's dict, failed every call with "no attribute
    '_dtype'" (the diff's review). Its value and config are those of the loss
    built anew, and Keras' float64 loss on the same inputs."""
    import base64
    import pickle

    old = pickle.loads(base64.b64decode(_OLD_PICKLE))
    new = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64",
                                                          name="old")
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
    assert old.get_config() == new.get_config() and old.dtype == "float64"
    want = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")(
        np.array([0, 1]), logits)
    np.testing.assert_allclose(old([0, 1], logits), np.asarray(want), rtol=1e-12)
    with pytest.raises(AttributeError):
        new.dtype = "float32"


def test_keras_subclasses_are_one_per_class_and_a_users_name_takes_no_xent_entry(tf):
    """Threads building their first loss at once built several Keras subclasses of one
    class (`lru_cache` computes unlocked), and a user's subclass named as xent's
    took xent's registry entry, so that deserialising xent's loss gave the user's
    (0.637 for Keras' 0.319; the diff's review)."""
    import threading

    import keras   # (Keras 3 itself, whose `saving` tf.keras does not export)

    from xent.keras import _keras3

    class SparseCategoricalCrossentropy(xent.keras.losses.SparseCategoricalCrossentropy):
        def __call__(self, *args, **kwargs):
            return 2 * super().__call__(*args, **kwargs)

    start, built = threading.Barrier(8), []

    def build():
        start.wait()
        built.append(type(SparseCategoricalCrossentropy(from_logits=True)))

    threads = [threading.Thread(target=build) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(built)) == 1 and issubclass(built[0], keras.losses.Loss)
    ours = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    again = keras.losses.deserialize(keras.losses.serialize(ours))
    assert type(again) is type(ours)
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
    assert again([0, 1], logits) == ours([0, 1], logits)
    assert keras.saving.get_registered_object("xent>SparseCategoricalCrossentropy") is type(ours)
    assert (SparseCategoricalCrossentropy, keras.losses.Loss) in _keras3._subclasses
    # the user's class round-trips as theirs, under its module's name or the one it was
    # registered with (with no registration of theirs it failed; the second diff review)
    @keras.saving.register_keras_serializable(package="mine")
    class Doubled(SparseCategoricalCrossentropy):
        pass

    for mine in (SparseCategoricalCrossentropy(from_logits=True), Doubled(from_logits=True)):
        back = keras.losses.deserialize(keras.losses.serialize(mine))
        assert isinstance(back, type(mine).__mro__[1]) and back([0, 1], logits) == 2 * ours([0, 1], logits)
    assert keras.saving.get_registered_name(type(Doubled(from_logits=True))) == "mine>Doubled"


def test_the_ignore_class_function_marks_numpy_results_for_keras(keras):
    """Keras' NumPy backend trains on NumPy arrays: the function's valid entries were
    marked on torch and JAX results only, so a model compiled with it meant over
    the ignored entries too there (1.592 for Keras' 2.123; the diff's review)."""
    from keras.src.backend import get_keras_mask

    logits = np.random.default_rng(16).standard_normal((6, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 3, 2, 0])
    losses = xent.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True,
                                                               ignore_class=3)
    want = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True,
                                                        ignore_class=3)
    np.testing.assert_array_equal(np.asarray(get_keras_mask(losses)), labels != 3)
    np.testing.assert_array_equal(np.asarray(get_keras_mask(losses)),
                                  np.asarray(get_keras_mask(want)))


def test_only_tensorflow_tensors_are_called_symbolic():
    """An array type whose conversion raises NotImplementedError (a lazy array) was
    reported as a symbolic TensorFlow tensor (the diff's review): its own error now."""
    class Lazy:
        def __array__(self, dtype=None, copy=None):
            raise NotImplementedError("compute() first")

    with pytest.raises(NotImplementedError, match="compute"):
        xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0], logits=Lazy())
