"""Shared fixtures, and the rule that makes a green CI mean every test ran.

TensorFlow, PyTorch, JAX, optax and numba are test dependencies. Where one
is missing, the tests that need it skip, saying which package is absent
(``-ra`` lists them). Under CI (``CI=true``) every skip is a failure instead,
with the same reason: a test file whose framework is missing fails loudly,
naming it, and no comparison is silently left out (test_suite_rules.py pins
this). An expected failure (``xfail``) stays one.
"""
import os
import sys

import numpy as np
import pytest

import shared_cache

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
shared_cache.lock_saves()   # (the suite's process and the host's kernel run share numba's cache)

pytest_plugins = ("pytester",)   # test_suite_rules.py runs pytest on small files


def _under_ci():
    """Whether this run is CI's (``CI=true``), where every test must run."""
    return os.environ.get("CI", "").lower() == "true"


def _skip_reason(report):
    """The reason of a skipped report (pytest keeps it as (path, line, reason))."""
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def _fail_if_skipped_under_ci(report):
    """Turn a skip into a failure under CI, keeping its reason (e.g. the missing package)."""
    if _under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI=true, where every test must run: "
                           f"{_skip_reason(report)}")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that skips (``pytest.importorskip`` inside it) fails under CI."""
    return _fail_if_skipped_under_ci((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A test file that skips as a whole (a module-level ``importorskip``) fails under CI."""
    return _fail_if_skipped_under_ci((yield))


@pytest.fixture(scope="session")
def tf():
    """The real `tensorflow` module, the oracle every comparison runs against."""
    module = pytest.importorskip("tensorflow")
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


@pytest.fixture
def force_threads(monkeypatch):
    """Make every fused-kernel call eligible for threads, and restore the thread count after."""
    import xent
    from xent._fused import _launch

    monkeypatch.setattr(_launch, "PARALLEL_MIN_BYTES", 0)
    before = xent.get_num_threads()
    yield
    xent.set_num_threads(before)


# The tests that wait for the fused kernels' runs (tests/target_runs.py).
_WAITS = "tests/test_targets.py::test_fused_kernels_right_when_compiled_for"


def _deselect(config, items, dropped):
    """Deselect `dropped` of `items` (deselected, not skipped: under CI a skip fails)."""
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        dropped = set(dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.hookimpl(trylast=True)   # (after pytest's own -k, -m and --deselect)
def pytest_collection_modifyitems(config, items):
    """Deselect the ``aarch64_lowering`` test except in the run that compiles for the
    SSE2 baseline. Where the host's kernel run is among the selected tests,
    leave it the ``every_target`` tests of the files it runs (it compiles into
    this process's numba cache); and wait for the runs last."""
    import aarch64_lowering

    if os.environ.get(aarch64_lowering.ENV) != "1":
        _deselect(config, items, [item for item in items
                                  if item.get_closest_marker("aarch64_lowering")])
    waits = [item for item in items if item.nodeid.startswith(_WAITS)]
    if any(item.nodeid == f"{_WAITS}[host]" for item in waits):
        import target_runs   # (collected with tests/test_targets.py)

        _deselect(config, items, [item for item in items
                                  if item.get_closest_marker("every_target")
                                  and item.nodeid.split("::")[0] in target_runs.FILES])
    waiting = set(waits)
    items[:] = [item for item in items if item not in waiting] + waits


# Set in the stash of a session that started the kernels' runs.
_STARTED_RUNS = pytest.StashKey[bool]()


def pytest_collection_finish(session):
    """Start the fused kernels' runs (tests/target_runs.py) in the background as
    soon as a test that waits for them is among the collected tests."""
    if any(item.nodeid.startswith(_WAITS) for item in session.items):
        import target_runs

        target_runs.RUNS.start()
        session.stash[_STARTED_RUNS] = True


def pytest_sessionfinish(session):
    """End the kernels' runs still running, in the session that started them (one
    that stopped before waiting for them: ``-x``)."""
    if session.stash.get(_STARTED_RUNS, False):
        sys.modules["target_runs"].RUNS.stop()
