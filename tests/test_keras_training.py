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
