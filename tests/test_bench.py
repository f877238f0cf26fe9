"""`xent bench`'s arithmetic: floors paired with each call, ratios, speed-ups."""
import time

import numpy as np
import pytest

from xent._bench import _cases, _floors, _machine, _peers, _report, _run, _timing


def _case(name, mode, role, times, floor_times=()):
    case = _cases.Case(name, mode, lambda: None, role)
    case.times, case.floor_times = list(times), list(floor_times)
    return case


def test_paired_ratio_is_the_median_of_per_call_ratios():
    # The floor doubles in the last two calls (a slow phase of the host), and
    # so does xent: each call is 1.1x the floor next to it, while the ratio of
    # the medians says 2.2 / 1.0.
    xent = _case("xent", "grad", "xent", [1.1, 1.1, 1.1, 2.2, 2.2], [1.0, 1.0, 1.0, 2.0, 2.0])
    assert _timing.paired_ratio(xent) == pytest.approx(1.1)
    assert _timing.paired_ratio(_case("peer", "grad", "peer", [3.0])) is None


def test_summarise_pairs_xent_and_keeps_the_ratio_of_medians():
    logits = np.zeros((4, 8), np.float32)
    cases = [
        _case("copy floor (memcpy)", "grad", "floor", [1.0, 1.0, 2.0]),
        _case("copy floor (row loop)", "grad", "floor", [0.9, 0.9, 0.9]),
        _case("read floor", "loss", "floor", [0.5, 0.5, 0.5]),
        _case("xent", "grad", "xent", [1.0, 2.0, 3.0], [1.0, 1.6, 2.0]),
        _case("xent", "loss", "xent", [0.6, 0.6, 0.6]),
        _case("torch", "grad", "peer", [8.0, 9.0, 10.0]),
    ]
    records = {(r["name"], r["mode"]): r for r in _report.summarise(cases, logits)}
    paired = records[("xent", "grad")]
    assert paired["x_floor_paired"] is True
    assert paired["x_floor"] == pytest.approx(1.25)            # median of 1.0, 1.25, 1.5
    assert paired["x_floor_medians"] == pytest.approx(2.0 / 0.9)
    assert paired["x_floor_best"] == pytest.approx(1.0 / 0.9)   # over the row loop's 0.9
    assert paired["peer_speedup"] == pytest.approx(9.0 / 2.0)
    assert paired["gb_per_s"] == pytest.approx(2 * logits.nbytes / 2.0 / 1e9)
    unpaired = records[("xent", "loss")]
    assert unpaired["x_floor_paired"] is False
    assert unpaired["x_floor"] == pytest.approx(0.6 / 0.5)
    assert unpaired["x_floor_best"] == pytest.approx(0.6 / 0.5)
    assert records[("torch", "grad")]["peer_speedup"] is None


def test_time_interleaved_times_the_fastest_floor_before_each_xent_call():
    order = []
    fast = _cases.Case("copy floor (row loop)", "grad", lambda: order.append("fast"), "floor")
    slow = _cases.Case("copy floor (memcpy)", "grad", lambda: order.append("slow"), "floor")
    xent = _cases.Case("xent", "grad_inplace", lambda: order.append("xent"), "xent")
    peer = _cases.Case("torch", "grad", lambda: order.append("peer"), "peer")
    _timing.time_interleaved([xent, peer], rounds=2, burst=1, budget_s=1.0, progress=lambda n: None,
                            settle_s=0.0, paired={"grad": [fast, slow], "grad_inplace": [fast, slow]})
    assert order == ["fast", "slow", "xent", "peer"] * 2
    assert len(xent.floor_times) == len(xent.times) == 2
    assert peer.floor_times == []


def test_time_interleaved_repeats_paired_xent_calls_paired_burst_times():
    """An xent case with paired floors runs `paired_burst` times per round, each
    call after its floors; the others run `burst` times."""
    order = []
    floor = _cases.Case("copy floor (memcpy)", "grad", lambda: order.append("floor"), "floor")
    xent = _cases.Case("xent", "grad", lambda: order.append("xent"), "xent")
    loss = _cases.Case("xent", "loss", lambda: order.append("loss"), "xent")
    peer = _cases.Case("torch", "grad", lambda: order.append("peer"), "peer")
    _timing.time_interleaved([xent, loss, peer], rounds=2, burst=1, budget_s=1.0,
                            progress=lambda n: None, settle_s=0.0, paired={"grad": [floor]},
                            paired_burst=3)
    assert order == (["floor", "xent"] * 3 + ["loss", "peer"]) * 2
    assert len(xent.times) == len(xent.floor_times) == 6
    assert len(loss.times) == len(peer.times) == 2


def test_time_interleaved_idles_longer_after_a_framework_case(monkeypatch):
    """The idle before each case: `framework_settle_s` after a framework's case
    (whose threads and deferred frees outlast the call), `settle_s` otherwise."""
    sleeps = []
    monkeypatch.setattr(_timing.time, "sleep", sleeps.append)
    xent = _cases.Case("xent", "grad", lambda: None, "xent")
    tf = _cases.Case("TensorFlow raw op", "grad", lambda: None, framework=True)
    numpy = _cases.Case("NumPy", "grad", lambda: None)
    _timing.time_interleaved([xent, tf, numpy], rounds=2, burst=1, budget_s=1.0,
                            progress=lambda n: None, settle_s=0.05, framework_settle_s=0.3)
    assert sleeps == [0.05, 0.05, 0.3, 0.05, 0.05, 0.3]


def test_interleaved_medians_warms_each_call_then_times_them_in_turn(monkeypatch):
    """bench/'s scripts' loop: one untimed call each, then `rounds` rounds of every
    call in turn; each call's median in ms (a fake clock that each call moves on)."""
    clock, order = [0.0], []
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: clock[0])
    steps = {"a": iter([9.0, 0.001, 0.003, 0.002]), "b": iter([9.0, 0.010, 0.030, 0.050])}

    def call(name):
        def run():
            order.append(name)
            clock[0] += next(steps[name])
        return run
    ms = _timing.interleaved_medians({"a": call("a"), "b": call("b")}, rounds=3)
    assert order == ["a", "b"] * 4
    assert ms == pytest.approx({"a": 2.0, "b": 30.0})


def test_every_framework_peer_and_xent_on_a_framework_is_marked(monkeypatch):
    """The bench's torch, TensorFlow and JAX cases (peers and xent through them)
    are `framework` cases; xent on NumPy, NumPy and the floors are not."""
    logits, labels = _cases.make_inputs((4, 10), "float32")
    marked = {}
    for builder in (_cases.xent_cases, _peers.numpy_cases, _floors.floor_cases,
                    _peers.torch_cases, _peers.xent_torch_cases, _peers.tf_cases,
                    _peers.jax_cases, _peers.xent_jax_cases):
        args = (logits,) if builder is _floors.floor_cases else (logits, labels)
        for case in builder(*args):
            marked[case.name] = case.framework
    assert marked.pop("copy floor (row loop)", False) is False   # present with threads
    assert marked == {"xent": False, "xent, NumPy kernels": False, "NumPy": False,
                      "copy floor (memcpy)": False, "read floor": False,
                      "PyTorch eager": True, "xent on torch": True, "TensorFlow raw op": True,
                      "JAX optax": True, "xent on JAX": True}


def test_jax_donated_step_runs_again_and_again_in_the_logits_own_buffer():
    """The bench's donated JAX step ("grad_inplace") donates each call's gradient as
    the next call's logits, so it runs any number of times; through xent the
    gradient takes the donated buffer (XLA declares no logits-sized output or
    temporary beyond it), while the step on kept logits declares one."""
    pytest.importorskip("jax")
    logits, labels = _cases.make_inputs((64, 1000), "float32")
    cases = {c.mode: c for c in _peers.xent_jax_cases(logits, labels)}
    for _ in range(3):
        cases["grad_inplace"].run()
    assert cases["grad_inplace"].xla_bytes < logits.nbytes // 8, cases["grad_inplace"].xla_bytes
    assert cases["grad"].xla_bytes >= logits.nbytes, cases["grad"].xla_bytes


def test_precompile_reports_the_childrens_own_compile_time(monkeypatch, capsys):
    """`precompile`'s seconds are those the compiling children measured themselves,
    not the wait that the peers' imports overlap: with the kernels in numba's
    disk cache, an 8 s import leaves the reported time below 8 s. (float32 only,
    its kernels compiled first in this process, which the suite's later tests
    use: a cold compile in the children took 73 s of the suite's own time.)"""
    _run.compile_kernels("float32")
    capsys.readouterr()
    monkeypatch.setattr(_run, "import_peers", lambda: time.sleep(8))
    started = time.perf_counter()
    seconds = _run.precompile(("float32",))
    waited = time.perf_counter() - started
    assert 0 < seconds < 8 <= waited, (seconds, waited)


def test_compile_kernels_reaches_every_fused_kernel_family(capsys):
    """`precompile` (run before any timing) compiles what the bench times: the chunk
    and narrow row kernels (threads run the same ones), for the loss, a gradient
    into a buffer and in place. Checked here for float32, in this process
    (whether compiled or loaded from numba's disk cache)."""
    from xent._fused import _narrow, _rows

    _run.compile_kernels("float32")
    seconds = float(capsys.readouterr().out.split()[-1])   # (what `precompile` reads)
    assert 0 < seconds < 600
    kernels = [_rows.sparse_loss_rows, _rows.sparse_grad_rows, _rows.sparse_grad_rows_inplace,
               _narrow.sparse_narrow_loss_rows, _narrow.sparse_narrow_grad_rows]
    for kernel in kernels:
        signatures = kernel.signatures
        assert any(str(sig[0].dtype) == "float32" for sig in signatures), (kernel, signatures)


def _report_of(records_by_input, compile_s=12.5):
    """A bench report with the given records per (shape, dtype)."""
    return {"machine": {"cpu": "Test CPU", "compiled_for": "haswell: AVX2+FMA"},
            "compile_s": compile_s,
            "results": [{"shape": list(shape), "dtype": dtype, "records": records}
                        for (shape, dtype), records in records_by_input.items()]}


def _rec(name, mode, median_s, x_floor=1.0, speedup=None, extra=0.0):
    return {"name": name, "mode": mode, "median_s": median_s, "x_floor": x_floor,
            "x_floor_best": x_floor, "peer_speedup": speedup, "extra_bytes_per_row": extra}


def test_headline_names_the_isa_compile_time_and_says_slower_when_slower():
    """The summary names what the kernels were compiled for and how long that
    took; a speed-up below 1 reads as "N x slower", not "0.6x faster"."""
    big = [_rec("xent", "grad_inplace", 0.1, 1.3, 4.2), _rec("xent", "grad", 0.1, 1.5, 3.0),
           _rec("xent", "loss", 0.05, 1.4, 1 / 1.7)]
    small = [_rec("xent", "loss", 30e-6), _rec("PyTorch eager", "loss", 20e-6),
             _rec("xent on torch", "grad", 104e-6), _rec("PyTorch eager", "grad", 80e-6)]
    lines = _report.headline(_report_of({((8192, 32000), "float32"): big,
                                     ((32, 1000), "float32"): small}))
    text = "\n".join(lines)
    assert "haswell: AVX2+FMA" in lines[0] and "Test CPU" in lines[0] and "12.5 s" in lines[0]
    assert "4.2x faster than the fastest peer" in text
    assert "1.7x slower than the fastest peer" in text and "0.6x faster" not in text
    assert ("32x1000 float32 forward: 30 us, 1.50x the time of PyTorch's F.cross_entropy "
            "(reduction='none': 20 us)") in text
    assert ("32x1000 float32 torch step: 104 us, 1.30x the time of PyTorch's F.cross_entropy "
            "(reduction='none', its step: 80 us)") in text
    no_step = [r for r in small if r["name"] != "xent on torch"]
    text = "\n".join(_report.headline(_report_of({((32, 1000), "float32"): no_step})))
    assert "forward: 30 us" in text and "torch step" not in text
    assert "Large gradients into a buffer" not in text   # no large call chose a kind

    report = _report_of({})
    report["machine"]["gradient_stores"] = {
        "streamed": False, "best_ms_per_gib": {"plain": 80.5, "streamed": 112.0}}
    assert ("Large gradients into a buffer: plain stores, kept after timing both (best 80.5 "
            "ms per GiB plain, 112.0 streamed).") in _report.headline(report)


def test_headline_gives_the_torch_and_jax_steps_against_the_copy_and_their_own_losses():
    """A training step through xent on torch is set against the faster of PyTorch
    eager and torch.compile, the jitted JAX step against optax (on logits kept,
    and on logits donated), each with its
    multiple of the copy floor and its peak extra memory over the logits' bytes;
    a framework that did not run gives no line."""
    rows, classes = 8192, 32000
    per_row = 1.05 * 4 * classes   # bytes of extra memory per row: 1.05x the logits
    big = [_rec("xent", "grad_inplace", 0.1, 1.3, 4.2), _rec("xent", "grad", 0.1, 1.5, 3.0),
           _rec("xent", "loss", 0.05, 1.4, 2.0),
           _rec("xent on torch", "grad", 0.12, 1.62, extra=per_row),
           _rec("PyTorch eager", "grad", 1.8), _rec("torch.compile", "grad", 0.96),
           _rec("xent on JAX", "grad", 0.2, 2.7, extra=None), _rec("JAX optax", "grad", 0.5),
           _rec("xent on JAX", "grad_inplace", 0.08, 1.1, extra=0.0),
           _rec("JAX optax", "grad_inplace", 0.4)]
    text = "\n".join(_report.headline(_report_of({((rows, classes), "float32"): big})))
    assert ("8192x32000 float32 torch step through xent: 1.62x (best 1.62x) the copy floor, "
            "8.0x faster than torch.compile; peak extra memory 1.05x the logits") in text
    assert ("8192x32000 float32 JAX step through xent: 2.70x (best 2.70x) the copy floor, "
            "2.5x faster than JAX optax") in text
    assert ("8192x32000 float32 JAX step, logits donated, through xent: 1.10x (best 1.10x) the "
            "copy floor, 5.0x faster than JAX optax; XLA's outputs and temporaries 0.00x the "
            "logits") in text
    without_jax = [r for r in big if "JAX" not in r["name"]]
    text = "\n".join(_report.headline(_report_of({((rows, classes), "float32"): without_jax})))
    assert "torch step" in text and "JAX step" not in text


def _virtio_device(root, name, kind, features):
    device = root / name
    device.mkdir()
    (device / "device").write_text(kind + "\n")
    (device / "features").write_text(features + "\n")


def test_free_page_reporting_is_read_from_the_balloon_s_negotiated_features(tmp_path):
    """A virtio balloon (device 0x0005) with feature bit 5 (REPORTING) set is found
    among other virtio devices; the bit clear, or no balloon, or no virtio bus at all
    reads False; the headline says so only when it is there."""
    bits = "0" * 64
    with_bit = bits[:5] + "1" + bits[6:]
    _virtio_device(tmp_path, "virtio0", "0x0001", with_bit)   # a network device, bit 5 set
    assert _machine.free_page_reporting(str(tmp_path)) is False
    _virtio_device(tmp_path, "virtio1", "0x0005", bits[:2] + "1" + bits[3:])   # stats only
    assert _machine.free_page_reporting(str(tmp_path)) is False
    (tmp_path / "virtio2").mkdir()   # a device without the files is passed over
    _virtio_device(tmp_path, "virtio3", "0x0005", with_bit)
    assert _machine.free_page_reporting(str(tmp_path)) is True
    assert _machine.free_page_reporting(str(tmp_path / "absent")) is False

    report = _report_of({})
    assert not any("balloon" in line for line in _report.headline(report))
    report["machine"]["free_page_reporting"] = True
    assert any("hands freed memory back" in line for line in _report.headline(report))
    assert isinstance(_machine.machine()["free_page_reporting"], bool)


def test_the_bench_settles_the_kind_of_store_before_timing_and_reports_it(monkeypatch):
    """`settle_store_choice` runs xent's into-a-buffer case until the kernels keep
    a kind of store; `gradient_stores` then reports it (None before). A
    bfloat16 input, or one below the streaming size, runs nothing."""
    pytest.importorskip("numba")
    from xent._fused import _launch
    from xent._fused._stores import StoreChoice

    choice = StoreChoice()
    monkeypatch.setattr(_launch, "STORES", choice)
    monkeypatch.setattr(_launch, "STREAM_MIN_BYTES", 16 * 1000 * 4)
    assert _machine.gradient_stores() is None
    for dtype, shape in (("bfloat16", (64, 1000)), ("float32", (8, 1000))):
        logits, labels = _cases.make_inputs(shape, dtype)
        _timing.settle_store_choice(_cases.xent_cases(logits, labels), logits)
        assert choice.streamed is None and choice._signature is None, dtype
    logits, labels = _cases.make_inputs((16, 1000), "float32")
    _timing.settle_store_choice(_cases.xent_cases(logits, labels), logits)
    assert choice.streamed is not None
    stores = _machine.gradient_stores()
    assert stores["streamed"] is choice.streamed
    assert set(stores["best_ms_per_gib"]) == {"plain", "streamed"}
    assert all(0 < ms < float("inf") for ms in stores["best_ms_per_gib"].values())


_MEAN_STEP_CASES = {
    "sparse": (("nn, .sum()", "nn, .mean()", "nn, .mean(), a new batch size each step",
                "keras SparseCategoricalCrossentropy", "v1 sparse_softmax_cross_entropy"),
               "F.cross_entropy (mean)"),
    "dense": (("nn dense, .sum()", "nn dense, .mean()",
               "nn dense, .mean(), a new batch size each step",
               "keras CategoricalCrossentropy", "v1 softmax_cross_entropy"),
              "F.cross_entropy, probabilities (mean)"),
}


@pytest.mark.parametrize("labels", ["sparse", "dense"])
def test_the_torch_mean_step_script_prints_its_table(labels):
    """`bench/torch_mean_step.py` (folded and scaled steps, a peer, the floor) runs,
    on int labels and on target rows."""
    import pathlib
    import subprocess
    import sys

    pytest.importorskip("torch")
    script = pathlib.Path(__file__).parent.parent / "bench" / "torch_mean_step.py"
    done = subprocess.run([sys.executable, str(script), "--shape", "64x4096", "--steps", "1",
                           "--rounds", "1", "--labels", labels],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    ours, peer = _MEAN_STEP_CASES[labels]
    assert names == ["copy floor (copy_)"] + [
        f"xent {case} [{way}]" for case in ours for way in ("folded", "scaled")] + [peer]
    assert all(float(row.split(" | ")[1]) > 0 for row in rows)


@pytest.mark.parametrize("argv, named", [(["--shape", "10x"], "--shape"),
                                         (["--shape", "4x100"], "--shape"),
                                         (["--steps", "0"], "--steps"),
                                         (["--rounds", "-1"], "--rounds"),
                                         (["--labels", "soft"], "--labels")])
def test_the_torch_mean_step_script_names_a_bad_argument(argv, named):
    """A malformed shape, too few rows for the new-shape case, or a count below 1:
    argparse's error naming the argument, before any work."""
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).parent.parent / "bench" / "torch_mean_step.py"
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and f"argument {named}" in done.stderr, done.stderr


def test_the_markdown_table_explains_the_double_dagger_only_where_a_row_has_one():
    """The footnote on per-call ratios was printed under every table; a quick run's
    32x1000 rows have no paired ratio, and no ‡."""
    record = {"name": "xent", "mode": "loss", "median_s": 1e-3, "gb_per_s": 1.0, "x_floor": 1.1,
              "peer_speedup": 2.0, "extra_bytes_per_row": 0, "x_floor_paired": False}
    entry = {"shape": [32, 1000], "dtype": "float32", "records": [record]}
    assert "‡" not in _report.markdown_table([entry])
    paired = {**entry, "records": [{**record, "x_floor_paired": True}]}
    table = _report.markdown_table([paired])
    assert "read‡" in table and "\n‡ median over calls" in table


@pytest.mark.parametrize("kernels,shape,threads", [
    ("numpy", (4096, 1000), 1),               # the NumPy kernels run on one thread
    ("fused", (1, 1_100_000), 1),             # past the threads' size, but one row
    ("fused", (2, 1_100_000), 2),
    ("fused", (4, 10), 1),                    # below the threads' size
])
def test_the_floors_run_on_the_threads_xent_would_use_and_never_more_than_its_rows(
        monkeypatch, kernels, shape, threads):
    """A floor on more threads than rows reduced an empty slice (its case
    failed, its column empty); on the NumPy kernels it ran on every core, so
    xent's ratios against it flattered them."""
    pytest.importorskip("numba")
    from xent._fused import _launch

    monkeypatch.setattr(_floors._core, "get_kernels", lambda: kernels)
    monkeypatch.setattr(_floors.xent, "get_num_threads", lambda: 2)
    logits = np.zeros(shape, np.float32)
    assert shape[0] * shape[1] * 4 >= _launch.PARALLEL_MIN_BYTES or threads == 1
    assert _floors.floor_threads(logits) == threads
    for case in _floors.floor_cases(logits):
        case.run()
