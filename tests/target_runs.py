"""The fused kernels' tests, compiled for this CPU and older ones, in background subprocesses.

numba compiles for the host's CPU unless ``NUMBA_CPU_NAME`` and
``NUMBA_CPU_FEATURES`` name another; a newer CPU runs code for an older one.
So an AVX-512 machine can test the kernels as an AVX2 laptop (``haswell``) or
the SSE2 baseline (``x86-64``) would compile them: the kernels take other
steps there (`xent._fused._target`). For each target, a subprocess runs the
``every_target`` tests of tests/test_fused.py and tests/test_kernel_symbols.py:
for the host into the suite's own numba cache (the suite's later tests load
the kernels it compiles, and the suite's process leaves those tests to it:
conftest.py; each save to that cache holds a lock: tests/shared_cache.py),
for each older target into an empty one.

They run in the background while the rest of the suite runs (each takes a few
minutes of compiling, on one core), started as soon as pytest has collected
tests/test_targets.py (see conftest.py), and tests/test_targets.py, which
runs last, waits for their results. The older targets' runs yield the CPU to
the suite and the host's run (a nice value of 10, where the OS has one): they
fill a core the suite leaves idle.
"""
import contextlib
import dataclasses
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time

from llvmlite import binding as llvm

import aarch64_lowering
import shared_cache

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The older CPUs to compile for, by the host's architecture: on x86-64 the
# AVX2+FMA level (haswell; the host's run where the host is that level) and
# the SSE2 baseline. An empty NUMBA_CPU_FEATURES means the named CPU's own
# features (not the host's).
_OLDER = {
    "x86_64": {"haswell": "haswell", "x86-64": "x86-64"},
    "aarch64": {"generic": "generic"},
}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}   # Windows' and macOS's names


def _host_is_avx2_level():
    """Whether this host has AVX2 and FMA but no AVX-512 (a Zen 3, an Intel laptop):
    `xent._fused._target`'s probes then answer as for ``haswell`` (a native FMA; no
    vector ldexp, no bfloat16 conversion), the kernels take the same steps, and
    the host's own run is the AVX2 level's."""
    features = llvm.get_host_cpu_features()
    return bool(features.get("avx2") and features.get("fma") and not features.get("avx512f"))


def _older_targets():
    """The older CPUs to compile for on this host: on an AVX2-level x86-64 host the
    SSE2 baseline only (a ``haswell`` run would repeat the host's run, and each
    run cost about 290 s of one core on a 2-core Zen 3)."""
    machine = platform.machine().lower()
    older = dict(_OLDER.get(_ALIASES.get(machine, machine), {}))
    if "haswell" in older and _host_is_avx2_level():
        del older["haswell"]
    return older


# The host's run: the CPU numba sees, into the suite's own cache.
HOST = "host"
TARGETS = {HOST: {}}
TARGETS.update({name: {"NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": ""}
                for name, cpu in _older_targets().items()})
# The SSE2 baseline's run also lowers the kernels it compiled for aarch64
# (tests/aarch64_lowering.py; its test is deselected in every other run).
if "x86-64" in TARGETS:
    TARGETS["x86-64"][aarch64_lowering.ENV] = "1"
# A run's limit (a hang, not a slow machine: CI allows 90 minutes). The runs
# share the cores with each other and the suite: on this session's slowed
# 2-vCPU VM the fresh clone's suite took 959 s in all, so 1200 s was too near.
TIMEOUT_S = 2400
# The older targets' runs' nice value (POSIX): they take a core only when the suite's
# process and the host's run leave it idle.
OLDER_NICE = 10
# The files whose every_target tests the runs run.
FILES = ("tests/test_fused.py", "tests/test_kernel_symbols.py")
COMMAND = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "every_target", *FILES]


@dataclasses.dataclass
class Run:
    """What one target's subprocess did."""

    target: str
    returncode: int
    output: str
    seconds: float

    def passed(self):
        """The number of tests pytest reported passed (0 if none)."""
        found = re.findall(r"(\d+) passed", self.output)
        return int(found[-1]) if found else 0

    def tail(self, lines=40):
        return "\n".join(self.output.splitlines()[-lines:])


def _yield_cpu(pid):
    """Give process `pid` the nice value `OLDER_NICE`, where the OS has nice values."""
    setpriority = getattr(os, "setpriority", None)
    if setpriority is not None:
        with contextlib.suppress(OSError):
            setpriority(os.PRIO_PROCESS, pid, OLDER_NICE)


def _run_tests(env, nice, running):
    """Run `COMMAND` with `env` (at `OLDER_NICE` if `nice`), in set `running` while it
    runs; returns its exit code (-1 if it ran past `TIMEOUT_S`) and its output."""
    with subprocess.Popen([sys.executable, *COMMAND], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        running.add(process)
        if nice:
            _yield_cpu(process.pid)
        try:
            output, _ = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            return -1, f"timed out after {TIMEOUT_S} s\n{output}"
        finally:
            running.discard(process)
    return process.returncode, output


def run_target(name, env_overrides, running):
    """Run the every-target tests compiled for target `name`; return its `Run`. The
    host's run uses the suite's numba cache (where its saves are locked:
    tests/shared_cache.py); an older target's an empty one of its own. Its process
    is in set `running` while it runs."""
    start = time.perf_counter()
    if name == HOST and shared_cache.lock_saves():
        code, output = _run_tests(dict(os.environ, **env_overrides), False, running)
    else:
        with tempfile.TemporaryDirectory(prefix=f"xent-numba-{name}-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, **env_overrides)
            code, output = _run_tests(env, True, running)
    return Run(name, code, output, time.perf_counter() - start)


class TargetRuns:
    """Every target's run, each on a background thread of its own, all at once
    (one after the other on a machine with one core).

    Each run compiles every kernel on one core, and the suite's own process
    runs beside them. On 2 cores, one after the other, the runs were the
    suite's critical path: with the host's kernels compiled cold, the suite
    took 668 s, 256 of them waiting for the second run after its own tests
    were done (Intel Xeon, 2 vCPUs, session 24). All at once, with the host's
    every-target tests in the suite's own process, that process was the
    critical path, and the second core idled once the runs were done
    (session 25); so the host's tests run here too, and the older targets'
    runs yield the CPU (`OLDER_NICE`).
    """

    def __init__(self):
        self._runs, self._done = {}, {name: threading.Event() for name in TARGETS}
        self._started = False
        self._lock = threading.Lock()
        self._running = set()   # (the runs' processes while they run)
        self._stopped = False

    def start(self):
        """Start the runs (once)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        if (os.cpu_count() or 1) >= 2:
            for name in TARGETS:
                threading.Thread(target=self._run, args=([name],), daemon=True).start()
        else:
            threading.Thread(target=self._run, args=(list(TARGETS),), daemon=True).start()

    def _run(self, names):
        for name in names:
            if self._stopped:
                self._runs[name] = Run(name, -1, "not run: the session stopped", 0.0)
            else:
                self._runs[name] = run_target(name, TARGETS[name], self._running)
            self._done[name].set()

    def stop(self):
        """End the runs still running and start no more (a session that stops early,
        ``-x``), and give their threads a moment to remove their temporary caches."""
        self._stopped = True
        for process in list(self._running):
            with contextlib.suppress(OSError):
                process.kill()
        for done in self._done.values():
            if self._started:
                done.wait(10)

    def result(self, name):
        """Target `name`'s `Run`, once it has finished."""
        self.start()
        if not self._done[name].wait(TIMEOUT_S * len(TARGETS)):
            raise TimeoutError(f"the {name} run did not finish")
        return self._runs[name]


RUNS = TargetRuns()
