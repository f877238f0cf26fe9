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
    compile for; an architecture without any has no run (and its test is skipped,
    which fails under CI)."""
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
