"""The `xent bench` command: compile the kernels first, then time every input."""
import contextlib
import datetime
import importlib
import os
import subprocess
import sys
import time

from xent import _core
from xent._bench._cases import make_inputs, xent_cases
from xent._bench._floors import floor_cases, floors_by_kind
from xent._bench._machine import machine, too_big
from xent._bench._memory import peak_extra_bytes
from xent._bench._peers import build_cases
from xent._bench._report import summarise, write_outputs
from xent._bench._timing import neighbour_check, settle_store_choice, time_interleaved, warm_up

FULL_SHAPES = ((8192, 32000), (2048, 128256), (65536, 10), (32, 1000))
QUICK_SHAPES = ((512, 32000), (128, 128256), (65536, 10), (32, 1000))
DTYPES = ("float32", "bfloat16")
NEIGHBOUR_SHAPE = (512, 32000)   # 64 MB: above xent's threading threshold, quick for every peer


def main(quick: bool = False, out: str = "bench/results", shapes=None, dtypes=None) -> int:
    """Run the benchmark; print the table; write JSON, PNG and Markdown under `out`.

    `shapes` (``[(rows, classes), ...]``, positive integers) and `dtypes`
    (names among `DTYPES`) restrict the run to those inputs (with `quick`'s
    repeats or the full run's); None: every input of the run. Anything else
    raises ValueError before any work."""
    _check_inputs(shapes, dtypes)
    command = "xent bench" + (" --quick" if quick else "")
    command += "".join(f" --shape {rows}x{classes}" for rows, classes in shapes or ())
    command += "".join(f" --dtype {name}" for name in dtypes or ())
    shapes = tuple(dict.fromkeys(shapes)) if shapes else QUICK_SHAPES if quick else FULL_SHAPES
    dtypes = tuple(name for name in DTYPES if name in dtypes) if dtypes else DTYPES
    _core.kernels()   # loads the fused kernels (or warns that it cannot) before any timing
    started, skipped, results = time.time(), {}, []
    unfit = {shape: too_big(shape) for shape in shapes}   # (the command line's were checked)
    skipped.update({f"{rows}x{classes}": why for (rows, classes), why in unfit.items() if why})
    jobs = [(shape, dtype) for shape in shapes if not unfit[shape] for dtype in dtypes]
    load_before = os.getloadavg()
    progress = _Progress(sum(_rounds(shape, quick) for shape, _ in jobs))
    progress.describe("xent's kernels: compiling (first run) or loading")
    compile_s = precompile(dtypes)
    neighbours = None   # the cases of NEIGHBOUR_SHAPE float32, when the run has that input
    for shape, dtype in jobs:
        progress.describe(f"{shape[0]}x{shape[1]} {dtype}")
        records, cases = bench_input(shape, dtype, quick, skipped, progress, _rounds(shape, quick))
        if (shape, dtype) == (NEIGHBOUR_SHAPE, "float32"):
            neighbours = cases
        del cases   # (each input's arrays go before the next input's are made)
        results.append({"shape": list(shape), "dtype": dtype, "records": records})
    if neighbours is None:
        logits, labels = make_inputs(NEIGHBOUR_SHAPE, "float32")
        neighbours = warm_up(build_cases(logits, labels, True, {}), {})
    neighbour = neighbour_check(neighbours, rounds=2 if quick else 5,
                                idle_s=0.05 if quick else 0.2)
    progress.close()
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": command,
              "machine": machine(), "load_before": load_before, "seconds": time.time() - started,
              "compile_s": compile_s,
              "neighbour": neighbour, "skipped": skipped, "results": results}
    write_outputs(report, out)
    return 0


def _check_inputs(shapes, dtypes):
    """Raise ValueError for `main`'s `shapes` or `dtypes` that name no input it can time."""
    for shape in shapes or ():
        if not (isinstance(shape, tuple) and len(shape) == 2
                and all(isinstance(n, int) and n > 0 for n in shape)):
            raise ValueError(f"`shapes` must hold (rows, classes) pairs of positive integers; "
                             f"received {shape!r}")
    unknown = [name for name in dtypes or () if name not in DTYPES]
    if unknown:
        raise ValueError(f"`dtypes` must be names among {DTYPES}; received {unknown!r}")


def bench_input(shape, dtype_name, quick, skipped, progress, rounds):
    """Build, warm, time and measure every case on one input; return its records
    and the (warm) cases."""
    logits, labels = make_inputs(shape, dtype_name)
    cases = warm_up(build_cases(logits, labels, quick, skipped), skipped)
    settle_store_choice(cases, logits)
    for case in cases:
        case.extra_bytes = peak_extra_bytes(case)
    budget = 4.0 if quick else 12.0
    small = shape[0] * shape[1] < 100_000
    burst = 20 if small else 1
    settle = 0.002 if quick else 0.005 if small else 0.05
    framework_settle = settle if quick or small else 0.3
    floors = floors_by_kind(cases)
    paired = None if small else {"loss": floors["loss"], "grad": floors["grad"],
                                 "grad_inplace": floors["grad"]}
    time_interleaved(cases, rounds, burst, budget, progress, settle, paired, framework_settle,
                     paired_burst=3)
    return summarise(cases, logits), cases


def _rounds(shape, quick):
    """Timing rounds for an input: more for small inputs, whose times are noisier."""
    size = shape[0] * shape[1]
    if size < 100_000:
        return 8 if quick else 30
    if size < 10_000_000:
        return 5 if quick else 15
    return 3 if quick else 7


def compile_kernels(dtype_name):
    """Call xent's public functions once on each quick shape in `dtype_name`, so that
    numba compiles (or loads from its disk cache) every fused kernel the bench times:
    chunk and narrow rows, one thread and several, loss, gradient and in place;
    and the row-loop copy floor on this dtype's bits. Prints the seconds it took."""
    started = time.perf_counter()
    for shape in QUICK_SHAPES:
        logits, labels = make_inputs(shape, dtype_name)
        for case in xent_cases(logits, labels) + floor_cases(logits):
            if case.name in ("xent", "copy floor (row loop)"):
                case.run()
    print(time.perf_counter() - started)


def import_peers():
    """Import every installed peer's framework (TensorFlow alone takes seconds),
    so that the first input's timings do not wait on it."""
    for name in ("torch", "tensorflow", "jax", "optax"):
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def precompile(dtypes=DTYPES):
    """`compile_kernels` for each of `dtypes` (those the run times), each in a child process,
    while this process imports the peers (`import_peers`); returns the seconds
    the slower child took (compiling, or loading numba's disk cache), as it
    measured them: the imports, which overlap, are not counted (TensorFlow's
    alone took 3.6 s of a 6.4 s wait on a warm cache).

    numba compiles on one core (about 15 s per dtype on a cold cache); the
    kernels land in its disk cache, where this process then finds them.
    Without numba, only the imports. A child that fails stops the bench with
    its error (a crash in a kernel would otherwise surface as a silent abort).
    """
    children = []
    if _core.get_kernels() == "fused":
        children = [subprocess.Popen(
            [sys.executable, "-c",
             f"from xent._bench import _run; _run.compile_kernels({dtype!r})"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for dtype in dtypes]
    try:
        import_peers()
    finally:
        results = [(dtype, *child.communicate(), child.returncode)
                   for dtype, child in zip(dtypes, children)]
    for dtype, _, stderr, code in results:
        if code != 0:
            raise RuntimeError(f"xent bench: compiling the {dtype} kernels failed "
                               f"(exit {code}):\n{stderr[-2000:]}")
    return max((float(stdout.split()[-1]) for _, stdout, _, _ in results), default=0.0)


class _Progress:
    """tqdm if installed, else a one-line counter on stderr."""

    def __init__(self, total):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = tqdm(total=total, unit="round", file=sys.stderr) if tqdm else None
        self.done, self.total, self._width = 0, total, 0

    def __call__(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            self._line(f"xent bench: {self.done}/{self.total} rounds")

    def describe(self, text):
        if self.bar is not None:
            self.bar.set_description(text)
        else:   # (the counter's line, then what runs now: the first can take a minute)
            self._line(f"xent bench: {self.done}/{self.total} rounds; {text}")

    def _line(self, text):
        """Write `text` over the counter's previous line (spaces cover a longer one)."""
        print(f"\r{text:<{self._width}}", end="", file=sys.stderr, flush=True)
        self._width = len(text)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        else:
            print(file=sys.stderr)
