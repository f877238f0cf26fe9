"""Shared fixtures: the TensorFlow oracle, imported once per session.

TensorFlow is a test dependency. Where it is missing, the comparison tests skip
with a loud reason; under CI (``CI=true``) a missing TensorFlow is an error, so
a green CI run always means the comparisons ran.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_or_skip(module_name):
    """Import `module_name`; skip the test loudly, or fail under CI, if absent."""
    try:
        return __import__(module_name)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        message = f"{module_name} is not installed ({exc}); comparison test SKIPPED"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " -- but CI must run every comparison")
        pytest.skip(message)


@pytest.fixture(scope="session")
def tf():
    """The real `tensorflow` module, the oracle every comparison runs against."""
    module = _import_or_skip("tensorflow")
    module.config.set_visible_devices([], "GPU")
    return module


@pytest.fixture(scope="session")
def keras(tf):
    """`tf.keras` as TensorFlow ships it (Keras 3 on the TensorFlow backend)."""
    return tf.keras


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, fresh for each test."""
    return np.random.default_rng(20261122)


@pytest.fixture(autouse=True)
def _empty_loss_collection():
    """Each test starts and ends with an empty v1 loss collection."""
    from xent import losses

    losses.clear_losses()
    yield
    losses.clear_losses()


def pytest_collection_finish(session):
    """Start the fused kernels' runs for other CPUs (tests/target_runs.py) in the
    background as soon as tests/test_targets.py is among the collected tests."""
    if any(item.nodeid.startswith("tests/test_targets.py") for item in session.items):
        import target_runs

        target_runs.RUNS.start()
