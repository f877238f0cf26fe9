"""Which kernels run: the fused ones, or the NumPy reference where numba is missing.

Runs whether or not numba is installed: the fallback is checked in a child
process in which ``import numba`` fails, as it does where numba is not
installed, so this file never sits behind numba's own ``importorskip``.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import xent
from xent import _core

# In a child process: numba cannot be imported; the first call warns once and runs on the
# NumPy reference kernels, the second is silent; both give the reference's numbers.
NO_NUMBA = """
import sys, warnings
sys.modules["numba"] = None            # import numba now raises ImportError
""" + (FALLS_BACK := """
import warnings
import numpy as np
import xent
from xent import _kernels

logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 1], logits=logits)
    second = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(logits, np.array([0, 1]))
print(xent.get_kernels())
print(sum("fused kernels unavailable" in str(w.message) for w in caught))
print(caught[0].filename)               # the caller's line, not xent's
np.testing.assert_array_equal(first, _kernels.sparse_rows(logits, np.array([0, 1]))[0])
np.testing.assert_array_equal(second.loss, first)
try:
    xent.set_kernels("fused")
except ImportError as exc:
    print("ImportError", "numba" in str(exc), "NUMBA_DISABLE_JIT" in str(exc))
""")

# In a child process: numba has no directory to cache in (its cache locators,
# which find one, all fail, as for a read-only install run without a writable
# home): the fused kernels still run, uncached, and the compile notice says so.
NO_CACHE_DIR = """
from numba.core import caching
(getattr(caching, "CacheImpl", None) or caching._CacheImpl)._locator_classes = []
import numpy as np
import xent
from xent import _kernels
from xent._fused import _notice

_notice.DELAY = 0.0
logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
loss = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 1], logits=logits)
print(xent.get_kernels())
np.testing.assert_allclose(loss, _kernels.sparse_rows(logits, np.array([0, 1]))[0], rtol=1e-6)
"""


def _child(code, **env):
    """Run `code` in a fresh Python without XENT_KERNELS set; its stdout lines."""
    environ = {k: v for k, v in os.environ.items() if k != "XENT_KERNELS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**environ, **env}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")


def test_missing_numba_falls_back_to_the_reference_kernels_with_one_warning():
    kernels, warnings_seen, filename, explicit, _ = _child(NO_NUMBA)
    assert kernels == "numpy"
    assert warnings_seen == "1"
    assert filename == "<string>"
    assert explicit == "ImportError True False"   # asking for the fused kernels names numba


def test_numba_disable_jit_falls_back_to_the_reference_kernels_with_one_warning():
    """With NUMBA_DISABLE_JIT=1 numba's decorators return plain Python functions,
    which cannot run the kernels: every call raised AttributeError."""
    pytest.importorskip("numba")
    kernels, warnings_seen, filename, explicit, _ = _child(FALLS_BACK, NUMBA_DISABLE_JIT="1")
    assert kernels == "numpy"
    assert warnings_seen == "1"
    assert filename == "<string>"
    assert explicit == "ImportError True True"   # asking for the fused kernels names NUMBA_DISABLE_JIT


FIRST_CALLS_AT_ONCE = """
import threading, time, warnings
import numpy as np
import xent
from xent import _core

load = _core._load_fused
_core._load_fused = lambda explicit: (time.sleep(0.3), load(explicit))[1]   # (all three in at once)
logits, labels = np.ones((4, 5), np.float32), np.zeros(4, np.int64)
start = threading.Barrier(3)

def first_call():
    start.wait()
    xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    threads = [threading.Thread(target=first_call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
print(xent.get_kernels())
print(len(caught))
print(caught[0].message)
"""


def test_first_calls_from_threads_at_once_choose_the_kernels_once():
    """Three threads' first calls at once, numba's JIT off: one warning, naming the
    cause. Each had tried the import: 2-3 warnings, one of them of the wrong cause
    ("cannot import name '_fused'", from a thread whose wait ended in another's
    failed import)."""
    pytest.importorskip("numba")
    kernels, warnings_seen, message, _ = _child(FIRST_CALLS_AT_ONCE, NUMBA_DISABLE_JIT="1")
    assert kernels == "numpy"
    assert warnings_seen == "1"
    assert "NUMBA_DISABLE_JIT" in message


@pytest.mark.parametrize("chosen", [None, "unwritable"])
def test_fused_kernels_run_uncached_where_numba_cannot_cache(tmp_path, chosen):
    """Without a directory numba can write, ``cache=True`` raised numba's "no locator
    available" on every call. A NUMBA_CACHE_DIR numba could not use is named."""
    pytest.importorskip("numba")
    env = {k: v for k, v in os.environ.items() if k not in ("XENT_KERNELS", "NUMBA_CACHE_DIR")}
    if chosen:
        env["NUMBA_CACHE_DIR"] = str(tmp_path / chosen)
    result = subprocess.run([sys.executable, "-c", NO_CACHE_DIR], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "fused"
    assert "compiling kernels for" in result.stderr and ", once" not in result.stderr
    assert "not cached: numba has no directory it can write, so every process compiles them" \
        in result.stderr
    advice = (f"(NUMBA_CACHE_DIR={tmp_path / chosen} cannot be written: set it to a directory "
              f"that can, to cache them)" if chosen else "(set NUMBA_CACHE_DIR to one, to cache them)")
    assert advice in result.stderr, result.stderr


def test_the_benchs_copy_kernel_runs_where_numba_cannot_cache():
    """`xent bench`'s floor copies rows with a numba kernel of its own, which asked
    for a cache always: on a read-only install with no writable cache directory,
    numba's "no locator available" stopped the bench (an independent review)."""
    pytest.importorskip("numba")
    code = NO_CACHE_DIR.split("import numpy as np")[0] + (
        "import numpy as np\n"
        "from xent._bench import _floors\n"
        "source = np.arange(12.0).reshape(3, 4)\n"
        "target = np.zeros_like(source)\n"
        "_floors._row_copy_kernel()(source, target, 0, 3)\n"
        "print(bool((target == source).all()))\n")
    assert _child(code)[0] == "True"


# In a child process: one small float64 loss on the fused kernels, its bits printed.
SMALL_CALL = """
import numpy as np
import xent
xent.set_kernels("fused")
logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
print(xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 1], logits=logits).tobytes().hex())
"""


def test_a_damaged_cache_file_is_compiled_again_not_raised(tmp_path):
    """numba's cache only saves compile time: a truncated entry (a full disk mid-write,
    a killed process) made every call of its kernel raise numba's UnpicklingError,
    in every later process, until the file was deleted (an independent review).
    It is a miss now, said once on stderr, and the entry is written anew."""
    pytest.importorskip("numba")
    env = {k: v for k, v in os.environ.items() if k != "XENT_KERNELS"}
    env["NUMBA_CACHE_DIR"] = str(tmp_path)

    def run():
        result = subprocess.run([sys.executable, "-c", SMALL_CALL], capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip(), result.stderr

    want = xent.nn.sparse_softmax_cross_entropy_with_logits(
        labels=[0, 1], logits=np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])).tobytes().hex()
    assert run()[0] == want
    damaged = [p for p in tmp_path.rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert damaged
    for path in damaged:
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    out, err = run()
    assert out == want
    assert err.count("xent: could not read numba's cache of a kernel") == 1, err
    out, err = run()
    assert out == want and "could not" not in err, err


def test_a_cache_that_cannot_be_written_keeps_nothing_and_says_so_once(capsys):
    """A full disk or a quota (OSError 28 from numba's save, after the compile)
    failed the call; the compiled kernel is kept in the process instead."""
    from xent._fused import _cache

    class Failing:
        cache_path = "/full/disk"

        def load_overload(self, sig, target_context):
            raise EOFError("Ran out of input")

        def save_overload(self, sig, cres):
            raise OSError(28, "No space left on device")

    said = _cache._state.pop("said", None)
    try:
        cache = _cache._TolerantCache(Failing())
        assert cache.load_overload(None, None) is None
        cache.save_overload(None, None)
        assert cache.cache_path == "/full/disk"
        err = capsys.readouterr().err
        assert err.count("xent: could not") == 1
        assert "could not read numba's cache of a kernel in /full/disk (EOFError" in err
    finally:
        _cache._state["said"] = said


@pytest.mark.parametrize("name", ["numpy", "fused"])
def test_xent_kernels_environment_variable_chooses_the_kernels(name):
    if name == "fused":
        pytest.importorskip("xent._fused", reason="numba is not installed")
    code = "import xent; print(xent.get_kernels())"
    assert _child(code, XENT_KERNELS=name)[0] == name


def test_set_kernels_reads_a_name_as_xent_kernels_is_read():
    """Case and surrounding spaces aside, as the environment variable (a review
    found ``XENT_KERNELS=NumPy`` taken and ``set_kernels("NUMPY")`` refused)."""
    before = xent.get_kernels()
    try:
        xent.set_kernels(" NumPy")
        assert xent.get_kernels() == "numpy"
        assert _child("import xent; print(xent.get_kernels())", XENT_KERNELS=" NumPy")[0] == "numpy"
        with pytest.raises(ValueError, match="received 'NumPi'"):
            xent.set_kernels("NumPi")
    finally:
        xent.set_kernels(before)


def test_set_kernels_rejects_an_unknown_name_and_keeps_the_choice():
    before = xent.get_kernels()
    with pytest.raises(ValueError, match="'fused' or 'numpy'; received 'gpu'"):
        xent.set_kernels("gpu")
    assert xent.get_kernels() == before


@pytest.mark.parametrize("bad", [None, 1, ["numpy"]])
def test_set_kernels_rejects_a_name_that_is_not_a_string(bad):
    import numpy as np

    before = xent.get_kernels()
    for name in (bad, np.array(["numpy"])):   # (an array compared equal element-wise)
        with pytest.raises(TypeError, match="must be the string 'fused' or 'numpy'; received"):
            xent.set_kernels(name)
    assert xent.get_kernels() == before


def test_using_kernels_switches_for_its_body_only():
    before = xent.get_kernels()
    with _core.using_kernels("numpy"):
        assert xent.get_kernels() == "numpy"
    assert xent.get_kernels() == before


def test_numba_num_threads_of_zero_is_named_before_numba_fails_on_it():
    """numba's own import raised "Number of threads specified must be > 0." from
    inside xent's first call, naming no variable."""
    code = """
import numpy as np, xent
try:
    xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0], logits=np.ones((1, 3), np.float32))
except ValueError as exc:
    print(exc)
"""
    assert _child(code, NUMBA_NUM_THREADS="0")[0] == (
        "the environment variable NUMBA_NUM_THREADS must be a positive integer; received '0'")


@pytest.mark.parametrize("value", ["+2", "abc"])
def test_numba_num_threads_that_numba_takes_runs_the_fused_kernels(value):
    """numba reads NUMBA_NUM_THREADS with ``int`` ("+2" is 2) and takes its default,
    with a warning, for what is not a number: xent runs there as numba does."""
    pytest.importorskip("numba")
    code = """
import warnings
warnings.simplefilter("ignore")
import numpy as np, xent
print(xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0], logits=np.zeros((1, 4), np.float32))[0])
print(xent.get_kernels())
"""
    loss, kernels, _ = _child(code, NUMBA_NUM_THREADS=value)
    assert float(loss) == pytest.approx(np.log(4.0), rel=1e-6) and kernels == "fused"
