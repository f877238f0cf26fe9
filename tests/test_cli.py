"""The `xent` command a newcomer runs first: ``xent demo`` and ``xent bench --quick``.

The demo's examples are TensorFlow's documented ones: each is run here through
real TensorFlow, which must give xent's value and the value the demo prints as
documented. The bench runs from the command line on a tiny input and must
write its three files, timing xent's calls, whose results are TensorFlow's.
"""
import importlib.util
import os
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from oracle import assert_close_to_truth, label_scale
import xent
from xent import _core as cli_core
from xent import _demo, cli
from xent._bench import _cases, _machine, _report, _run

EXAMPLES = _demo.examples()


@pytest.mark.parametrize("example", EXAMPLES,
                         ids=[f"{e.section[:30]}-{e.what[:40]}" for e in EXAMPLES])
def test_each_demo_example_is_tensorflows_documented_value(tf, example):
    if example.what.startswith(("torch", "jax")):
        pytest.importorskip(example.what.split(" ")[0])
    want = np.asarray(example.tf_fn(tf))
    got = np.asarray(example.xent_fn())
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert _demo.agrees(want, example), (want, example.documented)   # TF's own docs
    assert _demo.agrees(got, example), (got, example.documented)


def test_the_demo_takes_a_bare_zero_to_the_digits_printed_beside_it():
    """TF's docs print ``[0.29750752, 1.1448325, 0.]``: the saturated row's 0 (logits
    of +-100), exact to 8 digits. It was taken to 0 digits: a loss of 0.4 there
    agreed, and the demo's only saturated row could catch nothing below it."""
    example = next(e for e in EXAMPLES if e.documented == "[0.29750752, 1.1448325, 0.]")
    values, tolerance = _demo.documented_values(example)
    assert tolerance[2] == 0.5e-8
    assert _demo.agrees(np.array([0.29750752, 1.1448325, 0.0], np.float32), example)
    assert not _demo.agrees(np.array([0.29750752, 1.1448325, 1e-7], np.float32), example)
    keras = next(e for e in EXAMPLES if e.documented == "[0.0513, 2.303]")   # (digits per entry)
    assert list(_demo.documented_values(keras)[1]) == [0.5e-4, 0.5e-3]


def test_xent_demo_prints_each_example_beside_tfs_documented_value():
    result = subprocess.run([sys.executable, "-m", "xent.cli", "demo"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    computed = [e for e in EXAMPLES if not e.what.startswith(("torch", "jax"))
                or _demo._installed(e.what.split(" ")[0])]
    for example in EXAMPLES:
        assert example.what in out
    for example in computed:
        assert f"TF docs {example.documented}" in out
        assert _demo._fmt(example.xent_fn()) in out
    assert sum(line.endswith("agrees") for line in out.splitlines()) == len(computed)
    assert out.count("not installed, skipped") == len(EXAMPLES) - len(computed)
    assert "DIFFERS" not in out
    assert "(probabilities)" in out and "logits (unnormalised log-probabilities)" in out


def test_xent_demo_exits_1_when_an_example_differs(monkeypatch, capsys):
    wrong = _demo.Example("section", "what", "[1.5]", lambda: np.float32(1.25), None)
    monkeypatch.setattr(_demo, "examples", lambda: [wrong])
    assert cli.main(["demo"]) == 1
    assert capsys.readouterr().out.rstrip().endswith("DIFFERS")


@pytest.fixture
def tiny_bench(monkeypatch):
    """`xent bench --quick` on one 8x16 input per dtype, its kernels compiled here."""
    monkeypatch.setattr(_run, "QUICK_SHAPES", ((8, 16),))
    monkeypatch.setattr(_run, "NEIGHBOUR_SHAPE", (8, 16))
    def precompile(dtypes):   # here, not in child processes; returns seconds, as precompile does
        started = time.perf_counter()
        for dtype in dtypes:
            _run.compile_kernels(dtype)
        return time.perf_counter() - started

    monkeypatch.setattr(_run, "precompile", precompile)


def test_xent_bench_quick_writes_its_files_from_the_command_line(tf, tiny_bench, tmp_path,
                                                                capsys):
    assert cli.main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    chart = {"bench.png"} if importlib.util.find_spec("matplotlib") else set()   # ([bench])
    assert {p.name for p in tmp_path.iterdir()} == {"bench.json", "bench.md"} | chart
    written = ", ".join(str(tmp_path / name) for name in ["bench.json", "bench.md", *chart])
    assert f"xent bench: wrote {written}\n" in capsys.readouterr().out
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["shape"], r["dtype"]) for r in report["results"]] == [
        ([8, 16], "float32"), ([8, 16], "bfloat16")]
    for entry in report["results"]:
        names = {(r["name"], r["mode"]) for r in entry["records"]}
        assert {("xent", mode) for mode in _cases.MODES} <= names
        assert ("TensorFlow raw op", "grad") in names
        assert all(r["median_s"] > 0 for r in entry["records"])
    assert "xent" in (tmp_path / "bench.md").read_text()


def test_xent_bench_shape_and_dtype_run_only_the_inputs_asked_for(tf, tiny_bench, tmp_path):
    """``--shape`` (repeatable) replaces the run's inputs, in both dtypes unless
    ``--dtype`` names one; the report's command names them."""
    assert cli.main(["bench", "--quick", "--shape", "4x16", "--shape", "8X3",
                     "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["shape"], r["dtype"]) for r in report["results"]] == [
        ([4, 16], "float32"), ([4, 16], "bfloat16"), ([8, 3], "float32"), ([8, 3], "bfloat16")]
    assert report["command"] == "xent bench --quick --shape 4x16 --shape 8x3"
    assert cli.main(["bench", "--quick", "--shape", "4x16", "--dtype", "bfloat16",
                     "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["shape"], r["dtype"]) for r in report["results"]] == [([4, 16], "bfloat16")]
    assert report["command"] == "xent bench --quick --shape 4x16 --dtype bfloat16"


@pytest.mark.parametrize("text", ["8192", "8192x", "x32000", "0x10", "8x-1", "axb", "8x3x2",
                                  "\u00b2x5"])
def test_xent_bench_shape_refuses_what_is_not_rows_x_classes(capsys, text):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--shape", text])
    assert exit_info.value.code == 2
    assert f"expected ROWSxCLASSES with two positive integers, such as 8192x32000; got {text!r}" \
        in capsys.readouterr().err


def test_xent_bench_shape_too_large_for_the_machine_stops_before_any_work(capsys, monkeypatch):
    """A shape whose arrays cannot fit ended in a MemoryError traceback."""
    monkeypatch.setattr(_run, "precompile", lambda *dtypes: pytest.fail("work began"))
    memory = _machine._memory_bytes()
    assert memory and memory > 2**30   # (the machine's reading works; held still from here:
    monkeypatch.setattr(_machine, "_memory_bytes", lambda: memory)   # it moves call to call)
    rows = int(0.85 * memory) // (15 * 4 * 1000) + 1   # 15 float32 arrays of rows x 1000 pass 85%
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--shape", f"{rows}x1000"])
    assert exit_info.value.code == 2
    assert f"argument --shape: {rows}x1000 needs about" in capsys.readouterr().err
    assert cli._shape(f"{rows - 1}x1000") == (rows - 1, 1000)


def test_xent_bench_out_that_cannot_be_a_folder_stops_before_any_work(capsys, monkeypatch,
                                                                       tmp_path):
    """A ``--out`` under a file: argparse's error naming ``--out`` (exit 2) before
    anything is compiled or timed, not a traceback after the whole run."""
    monkeypatch.setattr(_run, "precompile", lambda *dtypes: pytest.fail("work began"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--quick", "--out", str(blocker / "sub")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --out: expected a folder the results can be written to" in err, err
    assert err.startswith("usage: xent bench "), err   # (the usage line of bench, as --shape's)


def test_a_rejected_command_line_makes_no_folder(capsys, monkeypatch, tmp_path):
    """The default ``--out`` (bench/results under the current folder) was made
    while the arguments were parsed, before an unknown one was refused."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--quick", "extra"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: extra" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_xent_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"xent {xent.__version__}\n"


@pytest.mark.parametrize("command", [["demo"], ["bench", "--quick"]])
def test_a_bad_kernel_choice_is_an_error_line_not_a_traceback(capsys, monkeypatch, command):
    monkeypatch.setattr(_run, "precompile", lambda *dtypes: pytest.fail("work began"))
    monkeypatch.setenv("XENT_KERNELS", "bogus")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(command)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "xent: error: the environment variable XENT_KERNELS must be 'fused' or 'numpy'; " \
           "received 'bogus'" in err, err


@pytest.mark.parametrize("command", [["demo"], ["bench", "--quick", "--out", "made"]])
@pytest.mark.parametrize("problem", ["threads", "no-fused"])
def test_an_environment_the_kernels_refuse_is_an_error_line_not_a_traceback(
        capsys, monkeypatch, tmp_path, command, problem):
    """``NUMBA_NUM_THREADS=0``, or ``XENT_KERNELS=fused`` where the fused kernels
    cannot load (``NUMBA_DISABLE_JIT``): argparse's error line, exit 2, and no
    folder made, with the command line's way out (a traceback before, with
    Python's `set_kernels` as the advice)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_run, "precompile", lambda *dtypes: pytest.fail("work began"))
    if problem == "threads":
        monkeypatch.setenv("NUMBA_NUM_THREADS", "0")
        expected = "NUMBA_NUM_THREADS must be a positive integer; received '0'"
    else:
        monkeypatch.setenv("XENT_KERNELS", "fused")

        def cannot_load():
            raise ImportError("xent: the fused kernels cannot load: NUMBA_DISABLE_JIT is set")

        monkeypatch.setattr(cli_core, "kernels", cannot_load)
        expected = "NUMBA_DISABLE_JIT is set (from the command line: XENT_KERNELS=numpy)"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(command)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "xent: error: " in err and expected in err and "Traceback" not in err, err
    assert "error: xent:" not in err
    assert not (tmp_path / "made").exists()


def test_default_shapes_too_large_for_the_machine_are_skipped_and_said(monkeypatch):
    """The default inputs were never checked against the machine's memory (the
    full run's 8192x32000 peaks near 15 GB); one that cannot fit is skipped,
    with the reason in the report's Skipped line; repeated shapes run once; the
    kernels are compiled for the dtypes asked for only."""
    reports, timed, compiled = [], [], []
    monkeypatch.setattr(_run, "precompile", lambda dtypes: compiled.append(dtypes) or 0.0)
    monkeypatch.setattr(_machine, "_memory_bytes", lambda: 15 * 4 * 64 * 100 / 0.85 + 1)
    monkeypatch.setattr(_run, "QUICK_SHAPES", ((64, 100), (64, 101)))
    monkeypatch.setattr(_run, "bench_input", lambda shape, dtype, *rest: (
        timed.append((shape, dtype)) or [], {}))
    monkeypatch.setattr(_run, "neighbour_check", lambda *args, **kwargs: {})
    monkeypatch.setattr(_run, "make_inputs", lambda *args: (None, None))
    monkeypatch.setattr(_run, "build_cases", lambda *args: [])
    monkeypatch.setattr(_run, "warm_up", lambda cases, skipped: cases)
    monkeypatch.setattr(_run, "write_outputs", lambda report, out: reports.append(report))
    _run.main(quick=True, dtypes=["float32"])
    assert timed == [((64, 100), "float32")]
    assert compiled == [("float32",)]   # (only the dtypes the run times: bfloat16 was compiled too)
    assert reports[0]["skipped"]["64x101"].startswith("64x101 needs about")
    timed.clear()
    _run.main(quick=True, shapes=[(64, 100), (64, 100)], dtypes=["float32"])
    assert timed == [((64, 100), "float32")]


def test_a_run_without_matplotlib_leaves_no_older_chart(monkeypatch, tmp_path, capsys):
    """An older run's bench.png beside this run's tables looked like this run's chart."""
    (tmp_path / "bench.png").write_bytes(b"an older chart")

    def no_matplotlib(*args):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(_report, "plot", no_matplotlib)
    monkeypatch.setattr(_report, "markdown_table", lambda results: "table")
    monkeypatch.setattr(_report, "neighbour_table", lambda neighbour: "neighbours")
    monkeypatch.setattr(_report, "headline", lambda report: [])
    _report.write_outputs({"results": [], "neighbour": {}, "load_before": (0.0,), "seconds": 1,
                           "machine": {"loadavg": (0.0,)}, "skipped": {}}, str(tmp_path))
    assert not (tmp_path / "bench.png").exists()
    assert (tmp_path / "bench.md").read_text().startswith("table")
    assert "no chart" in capsys.readouterr().err


def test_xent_bench_dtype_refuses_a_dtype_it_does_not_time(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--dtype", "float16"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--dtype" in err and "invalid choice: 'float16'" in err


@pytest.mark.parametrize("shapes, dtypes, message", [
    ([(0, 10)], None, "`shapes` must hold (rows, classes) pairs of positive integers; "
                      "received (0, 10)"),
    ([(8, 16, 2)], None, "received (8, 16, 2)"),
    ([(8.0, 16)], None, "received (8.0, 16)"),
    (None, ["float16"], "`dtypes` must be names among ('float32', 'bfloat16'); "
                        "received ['float16']"),
])
def test_bench_main_refuses_inputs_it_cannot_time_before_any_work(monkeypatch, shapes, dtypes,
                                                                  message):
    """`_bench.main` called from Python checks what the command line's parser
    checks, before it loads or compiles anything."""
    monkeypatch.setattr(_run, "precompile", lambda *dtypes: pytest.fail("work began"))
    with pytest.raises(ValueError) as error:
        _run.main(shapes=shapes, dtypes=dtypes)
    assert message in str(error.value)


@pytest.mark.parametrize("dtype", _run.DTYPES)
def test_the_calls_xent_bench_times_compute_tensorflows_values(tf, dtype):
    logits, labels = _cases.make_inputs((8, 16), dtype)
    want = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
        features=np.asarray(logits, np.float64), labels=labels)
    for case in _cases.xent_cases(logits, labels):   # each called once, on fresh buffers
        result = case.run()
        loss = result if case.mode == "loss" else result.loss
        assert_close_to_truth(loss, want.loss.numpy(), logits.dtype, label_scale(logits, labels))
        if case.mode != "loss":
            assert_close_to_truth(result.backprop, want.backprop.numpy(), logits.dtype, 1.0)


def test_python_m_xent_runs_the_console_script():
    result = subprocess.run([sys.executable, "-m", "xent", "--version"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and result.stdout == f"xent {xent.__version__}\n", result


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """``xent demo | head -1``: Python's BrokenPipeError traceback, 3 times in 4."""
    script = ("import xent._demo as demo\n"
              "demo.run = lambda: [print('x' * 1000) for _ in range(1000)] and 0\n"
              "from xent.cli import main\n"
              "raise SystemExit(main(['demo']))\n")
    env = {**os.environ, "XENT_KERNELS": "numpy"}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    child.stdout.close()   # (the reader gone before the first line)
    err = child.stderr.read().decode()
    assert child.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
