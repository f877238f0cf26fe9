"""float64 exps use AVX-512's vector ldexp only where LLVM compiles it right.

LLVM 22 widens a ``<4 x double>`` ``llvm.ldexp`` to a 512-bit ``vscalefpd``
where AVX-512 lacks VL (Xeon Phi: ``knl``, ``knm``), but forgets to convert the
int32 exponents to doubles: their bits were read as doubles, and float64 rows
whose tail took 4 lanes gave NaN (an independent review, session 29). The
choice (`_target.vector_ldexp`) reads the assembly of that form; each check
compiles for a named x86-64 CPU in a subprocess and runs nothing, so any
x86-64 host can check any target. Where this host can run AVX-512F code, the
kernels compiled for ``knl`` also run, against float64 NumPy.
"""
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

_X86_64 = platform.machine().lower() in ("x86_64", "amd64")

_CHOICE = """
import json
from xent._fused import _target
print(json.dumps({"vector_ldexp": _target.vector_ldexp(),
                  "lowers": _target.lowers_natively(_target.LDEXP_PROBE)}))
"""

_RUN = """
import json
import numpy as np, xent
rows = []
for c in (4, 7, 9, 15, 16, 100):
    x = np.random.default_rng(c).standard_normal((3, c))
    loss, backprop = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(x, np.array([0, 1, 2]) % c)
    rows.append([x.tolist(), loss.tolist(), backprop.tolist()])
print(json.dumps(rows))
"""


def _child(code, cpu, features, tmp_path):
    """Run `code` with numba compiling for `cpu`; its last stdout line, read as JSON."""
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features,
           "NUMBA_CACHE_DIR": str(tmp_path / f"cache_{cpu}{features}"), "XENT_KERNELS": "fused"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# (cpu, features, vector ldexp wanted): AVX-512 with VL keeps it; without VL, or
# without AVX-512 (no vector instruction: LDEXP_PROBE calls libm), it is not used.
TARGETS = [("skylake-avx512", "", True), ("znver4", "", True), ("knl", "", False),
           ("skylake-avx512", "-avx512vl", False), ("haswell", "", False)]


def test_vector_ldexp_only_where_its_narrow_form_converts_the_exponents(tmp_path):
    if not _X86_64:   # (no target to name: the choice follows the probe alone)
        from xent._fused import _target
        assert _target.vector_ldexp() == _target.lowers_natively(_target.LDEXP_PROBE)
        return
    for cpu, features, wanted in TARGETS:
        found = _child(_CHOICE, cpu, features, tmp_path)
        assert found["vector_ldexp"] is wanted, (cpu, features, found)
        assert found["lowers"] is cpu.startswith(("skylake-avx512", "znver4", "knl")), found


def _host_runs_avx512f():
    import llvmlite.binding as llvm

    return _X86_64 and llvm.get_host_cpu_features().get("avx512f", False)


@pytest.mark.parametrize("cpu", ["knl", "skylake-avx512"])
def test_float64_kernels_compiled_without_avx512vl_match_numpy(tmp_path, cpu):
    features = "" if cpu == "knl" else "-avx512vl"
    if not _host_runs_avx512f():   # (the code cannot run here: the choice is checked above)
        assert _child(_CHOICE, cpu, features, tmp_path)["vector_ldexp"] is False
        return
    for x, loss, backprop in _child(_RUN, cpu, features, tmp_path):
        x = np.array(x)
        labels = np.array([0, 1, 2]) % x.shape[1]
        lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
        truth = lse - x[np.arange(3), labels]
        grad = np.exp(x - lse[:, None]) - np.eye(x.shape[1])[labels]
        np.testing.assert_allclose(loss, truth, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(backprop, grad, rtol=1e-12, atol=1e-15)


def test_isa_names_avx_without_fma(tmp_path):
    """`isa` read FMA_PROBE's registers, which are xmm where fmaf is called (no
    FMA): AVX CPUs without FMA were reported as SSE2 (the bench's header)."""
    if not _X86_64:
        return
    code = "import json; from xent._fused import _target; print(json.dumps(_target.isa()))"
    for cpu, level in (("sandybridge", "AVX"), ("btver2", "AVX"), ("haswell", "AVX2+FMA"),
                       ("x86-64", "SSE2"), ("skylake-avx512", "AVX-512, 256-bit loops")):
        assert _child(code, cpu, "", tmp_path) == f"{cpu}: {level}"
