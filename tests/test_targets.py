"""The fused kernels are right when compiled for every CPU level users have.

The every-target tests of tests/test_fused.py and the machine-code check of
tests/test_kernel_symbols.py run in subprocesses (tests/target_runs.py): with
the kernels compiled for the host, into the suite's own numba cache (the
suite's process then leaves those tests to that run: conftest.py); for
AVX2+FMA (``haswell``, unless the host is that level: the host's run is then
the AVX2 run) and for the SSE2 baseline (``x86-64``), each into an empty
numba cache. They start in the background when this file is collected, and
these tests, which run last, wait for them.
"""
import os
import time

import pytest

import target_runs

# At least the every-target tests of test_fused.py and those of test_kernel_symbols.py.
_MIN_TESTS = 60


@pytest.mark.parametrize("target", list(target_runs.TARGETS))
def test_fused_kernels_right_when_compiled_for(target):
    run = target_runs.RUNS.result(target)
    print(f"compiled for {target}: {run.passed()} passed in {run.seconds:.0f} s")   # (-rP)
    assert run.returncode == 0, f"compiled for {target}:\n{run.tail()}"
    assert run.passed() >= _MIN_TESTS, f"compiled for {target}, too few tests ran:\n{run.tail()}"


def test_older_targets_are_known_for_the_common_architectures(monkeypatch):
    """x86-64 (as Linux, macOS and Windows name it) and aarch64 have older targets to
    compile for; an architecture without any has the host's run only."""
    monkeypatch.setattr(target_runs, "_host_is_avx2_level", lambda: False)
    for machine in ("x86_64", "AMD64", "aarch64", "arm64"):
        monkeypatch.setattr(target_runs.platform, "machine", lambda m=machine: m)
        assert target_runs._older_targets(), machine
    monkeypatch.setattr(target_runs.platform, "machine", lambda: "s390x")
    assert target_runs._older_targets() == {}


@pytest.mark.parametrize("avx2_level", [True, False])
def test_the_avx2_level_runs_once_as_haswell_or_as_the_host(monkeypatch, avx2_level):
    """An AVX2-level x86-64 host (no AVX-512) runs the SSE2 baseline besides itself;
    any other x86-64 host runs haswell too."""
    monkeypatch.setattr(target_runs.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(target_runs, "_host_is_avx2_level", lambda: avx2_level)
    older = target_runs._older_targets()
    both = {"haswell": "haswell", "x86-64": "x86-64"}
    assert older == ({"x86-64": "x86-64"} if avx2_level else both)


def test_numbas_cache_saves_wait_for_the_folders_lock(tmp_path):
    """In the suite's processes a numba cache save holds its folder's lock
    (tests/shared_cache.py): while another holder has it, a save waits, then
    writes an index and data that load back."""
    import fcntl
    import threading

    import shared_cache
    from numba.core import caching

    assert shared_cache.lock_saves()
    cache = caching.IndexDataCacheFile(str(tmp_path), "kernel", source_stamp=("stamp", 1))
    holder = os.open(tmp_path / shared_cache.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    saving = threading.Thread(target=cache.save, args=(("signature",), b"machine code"))
    saving.start()
    saving.join(0.5)
    assert saving.is_alive() and not (tmp_path / "kernel.nbi").exists()
    os.close(holder)
    saving.join(10)
    assert not saving.is_alive()
    assert cache.load(("signature",)) == b"machine code"


def test_a_session_that_stops_early_ends_the_runs(monkeypatch):
    """`TargetRuns.stop` (pytest_sessionfinish) kills a run still running: its result
    comes back at once, killed, not at the end of its command."""
    monkeypatch.setattr(target_runs, "TARGETS", {"older": {}})
    monkeypatch.setattr(target_runs, "COMMAND", ["-c", "import time; time.sleep(120)"])
    runs = target_runs.TargetRuns()
    runs.start()
    started = time.perf_counter()
    while not runs._running and time.perf_counter() - started < 30:
        time.sleep(0.05)
    runs.stop()
    run = runs.result("older")
    assert run.returncode < 0 and run.seconds < 60
