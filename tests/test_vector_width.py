"""The kernels' loops are vectorised 512 bits wide on AVX-512 CPUs, Intel's included.

LLVM's tuning for Intel's AVX-512 CPUs (Ice Lake on) vectorises loops with
256-bit registers only; `xent._fused._llvm.vectorise_wide`, called first in
each row kernel, lifts that for the kernel that calls it, on every AVX-512
target but those whose clock drops at 512 bits (Skylake-SP to Cooper Lake).

Each check compiles for a named x86-64 CPU in a subprocess (into an empty
numba cache) and reads the assembly: nothing compiled runs, so any x86-64 host
can check any target. Elsewhere (aarch64) there are no such targets to name,
and the choice must be no.

The kernels' tests compiled for an Intel AVX-512 target run where the host is
one; on this Zen 4 the every-target tests compiled for ``icelake-server``
(``NUMBA_CPU_NAME=icelake-server NUMBA_CPU_FEATURES= pytest -m every_target
tests/test_fused.py tests/test_kernel_symbols.py``) passed, 87 of 87
(bench/RESULTS.md, session 13).
"""
import json
import os
import platform
import subprocess
import sys


_X86_64 = platform.machine().lower() in ("x86_64", "amd64")

# Two loops of the same multiply-add sum over float32 arrays, one in a function
# that calls vectorise_wide; a row kernel; and the choice, for the CPU named
# in NUMBA_CPU_NAME: the count of 512-bit register names in each assembly.
_PROBE = """
import json, re, sys
import numba, numpy as np
from xent._fused import _launch, _rows, _target
from xent._fused._llvm import vectorise_wide

def dot(a, b):
    s = np.float32(0)
    for j in range(a.shape[0]):
        s += a[j] * b[j]
    return s

def wide_dot(a, b):
    vectorise_wide()
    s = np.float32(0)
    for j in range(a.shape[0]):
        s += a[j] * b[j]
    return s

fast = {"fastmath": True}
plain, wide = numba.njit(**fast)(dot), numba.njit(**fast)(wide_dot)
sig = (numba.float32[::1], numba.float32[::1])
x = _launch.read_only(np.zeros((2, 3000), np.float32))
y = _launch.read_only(np.zeros(2, np.int64))
out = np.zeros(2, np.float32)
row_sig = tuple(numba.typeof(a) for a in (x, y, out, out)) + (
    numba.boolean, numba.int64, numba.int64)
zmm = lambda f, s: (f.compile(s), len(re.findall("zmm", f.inspect_asm(s))))[1]
found = {"wide": _target.wide_vectors(), "isa": _target.isa(), "plain_loop": zmm(plain, sig),
         "wide_loop": zmm(wide, sig)}
if sys.argv[1] == "kernel":   # (compiling a kernel takes seconds)
    found["loss_kernel"] = zmm(_rows.sparse_loss_rows, row_sig)
print(json.dumps(found))
"""


def _compiled_for(cpu, tmp_path, kernel=False):
    """The probe's counts with the loops (and, if `kernel`, the loss kernel)
    compiled for `cpu` (its own features)."""
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="",
               NUMBA_CACHE_DIR=str(tmp_path / cpu))
    done = subprocess.run([sys.executable, "-c", _PROBE, "kernel" if kernel else "loops"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_intel_avx512_loops_go_512_bits_wide_in_the_kernels_only(tmp_path):
    """On Ice Lake server, LLVM's own choice for a plain loop is 256 bits; the same
    loop under vectorise_wide, and the loss kernel, use 512-bit registers. On a
    host that is not x86-64, no 512-bit loops are asked for."""
    if not _X86_64:
        from xent._fused import _target

        assert _target.wide_vectors() is False
        return
    found = _compiled_for("icelake-server", tmp_path, kernel=True)
    assert found["wide"] is True and found["isa"] == "icelake-server: AVX-512"
    assert found["plain_loop"] == 0 and found["wide_loop"] > 0, found
    assert found["loss_kernel"] > 100, found


def test_no_wide_loops_where_the_clock_drops_at_512_bits_or_there_is_no_avx512(tmp_path):
    """Skylake-SP keeps LLVM's 256-bit loops (its clock drops for 512-bit work),
    vectorise_wide or not, and the ISA xent reports (`xent bench`) says so; an
    AVX2 CPU has no 512-bit registers at all."""
    if not _X86_64:
        from xent._fused import _target

        assert _target.wide_vectors() is False
        return
    for cpu, isa in (("skylake-avx512", "AVX-512, 256-bit loops"), ("haswell", "AVX2+FMA")):
        found = _compiled_for(cpu, tmp_path)
        assert found == {"wide": False, "isa": f"{cpu}: {isa}", "plain_loop": 0, "wide_loop": 0}, \
            (cpu, found)
