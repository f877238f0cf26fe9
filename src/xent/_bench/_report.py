"""`xent bench`'s results: per-case records, the Markdown table, the chart, the headline."""
import contextlib
import json
import os
import statistics
import sys

import numpy as np

from xent._bench._cases import MODE_TITLES, MODES
from xent._bench._floors import floors_by_kind
from xent._bench._timing import paired_ratio

HEADLINE_SHAPES = ((8192, 32000), (2048, 128256), (512, 32000), (128, 128256))


def summarise(cases, logits):
    """One record per case: times, rates, multiples of the floors, speed-up over peers.

    "x_floor" is a case's median time over its floor's median; for xent's
    cases on large inputs it is instead the median of each call's time over
    the floor timed right before that call (`paired_ratio`), and the ratio
    of medians stays in "x_floor_medians". "x_floor_best" is the case's
    fastest call over the fastest floor call (the least disturbed of each).
    """
    median = {(c.name, c.mode): statistics.median(c.times) for c in cases}
    by_kind = floors_by_kind(cases)
    floors = {kind: min((median[(c.name, c.mode)] for c in by_kind[kind]), default=None)
              for kind in by_kind}
    best_floors = {kind: min((min(c.times) for c in by_kind[kind]), default=None)
                   for kind in by_kind}
    fastest = {}
    for case in cases:
        if case.role == "peer":
            fastest[case.mode] = min(fastest.get(case.mode, np.inf), median[(case.name, case.mode)])
    return [_record_of(case, median[(case.name, case.mode)], logits, floors, best_floors, fastest)
            for case in cases]


def _record_of(case, t, logits, floors, best_floors, fastest):
    """`summarise`'s record of one case whose median time is `t`."""
    kind = "loss" if case.mode == "loss" else "grad"
    moved = logits.nbytes * (1 if kind == "loss" else 2)
    peer = fastest.get(kind)
    of_medians = t / floors[kind] if floors[kind] else None
    paired = paired_ratio(case)
    best_floor = min(case.floor_times + [best_floors[kind] or np.inf])
    return {
        "name": case.name, "role": case.role, "mode": case.mode, "median_s": t,
        "min_s": min(case.times), "times_s": list(case.times),
        "floor_times_s": list(case.floor_times),
        "runs": len(case.times), "gb_per_s": moved / t / 1e9,
        "x_floor": paired if paired is not None else of_medians,
        "x_floor_medians": of_medians, "x_floor_paired": paired is not None,
        "x_floor_best": min(case.times) / best_floor if np.isfinite(best_floor) else None,
        "peer_speedup": peer / t if peer and case.role == "xent" else None,
        "extra_bytes_per_row": case.extra_bytes / len(logits) if case.extra_bytes is not None else None,
    }


def neighbour_table(neighbour):
    """The good-neighbour check as a Markdown table."""
    idle_ms = 1e3 * next(iter(neighbour.values()), {"idle_s": 0.2})["idle_s"]
    lines = [f"| after a loss+grad call of | CPU burnt while idle {idle_ms:.0f} ms "
             "| memcpy after call / after idle |",
             "|---|---:|---:|"]
    for name, n in neighbour.items():
        lines.append(f"| {name} | {n['idle_cpu_s'] * 1e3:.0f} ms | {n['copy_ratio']:.2f} |")
    return "\n".join(lines)


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def markdown_table(results):
    """The results as one Markdown table, grouped by input."""
    lines = ["| input | implementation | what | median ms | GB/s | × floor (lower is better) "
             "| xent's speed-up over the fastest peer (>1: faster) | extra bytes/row |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for entry in results:
        label = f"{entry['shape'][0]}×{entry['shape'][1]} {entry['dtype']}"
        for r in sorted(entry["records"], key=lambda r: (MODES.index(r["mode"]), r["median_s"])):
            floor = ("copy" if r["mode"] != "loss" else "read") + ("‡" if r.get("x_floor_paired") else "")
            lines.append(
                f"| {label} | {r['name']} | {MODE_TITLES[r['mode']]} | {r['median_s'] * 1e3:.3f} "
                f"| {_fmt(r['gb_per_s'], '.1f')} | {_fmt(r['x_floor'], '.2f')} {floor} "
                f"| {_fmt(r['peer_speedup'], '.1f')} | {_fmt(r['extra_bytes_per_row'], '.0f')} |")
    if any(r.get("x_floor_paired") for entry in results for r in entry["records"]):
        lines.append("\n‡ median over calls of each call's time over the floor timed just before "
                     "it (other rows: median time over the floor's median time).")
    return "\n".join(lines)


def plot(results, path):
    """One panel per input: each case's time as a multiple of its floor (log
    scale, lower is better), xent's cases in green and the peers' in grey,
    each bar labelled with its median time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 3.4 * len(results)), squeeze=False)
    for ax, entry in zip(axes[:, 0], results):
        _plot_input(ax, entry)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_input(ax, entry):
    """`plot`'s panel for one input."""
    from matplotlib.patches import Patch

    records = [r for r in entry["records"] if r["role"] != "floor" and r["x_floor"]]
    records.sort(key=lambda r: (MODES.index(r["mode"]), r["x_floor"]))
    labels = [f"{r['name']} · {MODE_TITLES[r['mode']]}" for r in records]
    colours = ["tab:green" if r["role"] == "xent" else "tab:grey" for r in records]
    bars = ax.barh(labels, [r["x_floor"] for r in records], color=colours)
    ax.bar_label(bars, [f"{r['median_s'] * 1e3:.3g} ms" for r in records], fontsize=6, padding=2)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("time / floor (× floor, lower is better; 1 = the machine's copy or read)",
                  fontsize=8)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"{entry['shape'][0]}×{entry['shape'][1]} {entry['dtype']}: copy floor for "
                 "gradients, read floor for the loss", fontsize=9)
    ax.legend(handles=[Patch(color="tab:green", label="xent"),
                       Patch(color="tab:grey", label="peers")], fontsize=7, loc="lower right")


def _record(report, shape, dtype, name, mode):
    """The record of case (`name`, `mode`) on input (`shape`, `dtype`), or None."""
    for entry in report["results"]:
        if tuple(entry["shape"]) == shape and entry["dtype"] == dtype:
            for r in entry["records"]:
                if r["name"] == name and r["mode"] == mode:
                    return r
    return None


def _ratios(record):
    """A record's multiple of its floor, and the best call's over the best floor's."""
    best = record.get("x_floor_best")
    return f"{record['x_floor']:.2f}x" + (f" (best {best:.2f}x)" if best else "")


def _versus_peer(speedup, peer="the fastest peer"):
    """A speed-up over a peer in words: "4.1x faster than ..." or "1.7x slower than ..."."""
    if speedup is None:
        return "no peer"
    if speedup >= 1:
        return f"{speedup:.1f}x faster than {peer}"
    return f"{1 / speedup:.1f}x slower than {peer}"


def headline(report):
    """The figures the kernels are held to, from this run (lines of text): per
    large input, loss+gradient in place and into a buffer against the copy
    floor, the loss against the read floor, and each against the fastest peer;
    bfloat16 against its own copy; a training step through torch and through
    JAX against the copy and against the frameworks' own; 32x1000 against
    PyTorch's forward and its training step."""
    lines = [f"Kernels compiled for {report['machine'].get('compiled_for')} on "
             f"{report['machine']['cpu']}; compiling or loading them took "
             f"{report.get('compile_s', 0):.1f} s, before (and apart from) the timings."]
    stores = report["machine"].get("gradient_stores")
    if stores:
        best = stores["best_ms_per_gib"]
        lines.append(f"Large gradients into a buffer: {'streamed' if stores['streamed'] else 'plain'}"
                     f" stores, kept after timing both (best {best['plain']} ms per GiB plain, "
                     f"{best['streamed']} streamed).")
    if report["machine"].get("free_page_reporting"):
        lines.append("This is a VM whose balloon hands freed memory back to its host: fresh "
                     "pages fault twice, so calls that write fresh memory (JAX's steps) and "
                     "the bandwidth-bound ratios vary from run to run.")
    for shape in HEADLINE_SHAPES:
        lines += _kernel_lines(report, shape) + _step_lines(report, shape)
    return lines + _small_input_lines(report)


def _kernel_lines(report, shape):
    """The headline's lines for xent's NumPy calls on one large input (none if not run)."""
    label = f"{shape[0]}x{shape[1]}"
    inplace = _record(report, shape, "float32", "xent", "grad_inplace")
    if inplace is None:
        return []
    into = _record(report, shape, "float32", "xent", "grad")
    loss = _record(report, shape, "float32", "xent", "loss")
    bf16 = [_record(report, shape, "bfloat16", "xent", m) for m in ("grad_inplace", "grad")]
    lines = [f"{label} float32: loss+grad in place {_ratios(inplace)} the copy floor "
             f"({_versus_peer(inplace['peer_speedup'])}), into a buffer {_ratios(into)} "
             f"({_versus_peer(into['peer_speedup'])}); loss {_ratios(loss)} the read floor "
             f"({_versus_peer(loss['peer_speedup'])}); peak extra memory in place "
             f"{inplace['extra_bytes_per_row']:.0f} B/row = "
             f"{100 * inplace['extra_bytes_per_row'] / (4 * shape[1]):.3f}% of a row"]
    if all(bf16):
        lines.append(f"{label} bfloat16: loss+grad in place {_ratios(bf16[0])}, into a "
                     f"buffer {_ratios(bf16[1])} its copy floor")
    return lines


def _step_lines(report, shape):
    """The headline's lines for a float32 training step through torch and through JAX
    on one large input: the step against the copy floor, against the faster of
    PyTorch eager and ``torch.compile`` (or against optax, on logits kept and
    on logits donated), and its extra memory as a multiple of the logits (none
    for a framework not installed): for torch the resident set's peak, for JAX
    what XLA's program declares (its outputs, the gradient among them, and its
    temporaries, less what reuses a donated input)."""
    label, logits_bytes = f"{shape[0]}x{shape[1]}", 4 * shape[0] * shape[1]
    lines = []
    for ours, peers, what, mode, memory_kind in (
            ("xent on torch", ("PyTorch eager", "torch.compile"), "torch step", "grad",
             "peak extra memory"),
            ("xent on JAX", ("JAX optax",), "JAX step", "grad", "XLA's outputs and temporaries"),
            ("xent on JAX", ("JAX optax",), "JAX step, logits donated,", "grad_inplace",
             "XLA's outputs and temporaries")):
        step = _record(report, shape, "float32", ours, mode)
        others = [r for r in (_record(report, shape, "float32", p, mode) for p in peers) if r]
        if step is None or not others:
            continue
        fastest = min(others, key=lambda r: r["median_s"])
        memory = ("" if step["extra_bytes_per_row"] is None else
                  f"; {memory_kind} {step['extra_bytes_per_row'] * shape[0] / logits_bytes:.2f}x "
                  "the logits")
        lines.append(f"{label} float32 {what} through xent: {_ratios(step)} the copy floor, "
                     f"{_versus_peer(fastest['median_s'] / step['median_s'], fastest['name'])}"
                     f"{memory}")
    return lines


def _small_input_lines(report):
    """The headline's lines for 32x1000 float32: xent's NumPy forward against
    PyTorch's, and a torch training step through xent against one through
    ``F.cross_entropy`` (each line only where both ran)."""
    lines = []
    for ours, what in (("xent", "forward"), ("xent on torch", "torch step")):
        mode = "loss" if what == "forward" else "grad"
        small = _record(report, (32, 1000), "float32", ours, mode)
        torch = _record(report, (32, 1000), "float32", "PyTorch eager", mode)
        if small and torch:
            lines.append(f"32x1000 float32 {what}: {small['median_s'] * 1e6:.0f} us, "
                         f"{small['median_s'] / torch['median_s']:.2f}x the time of "
                         f"PyTorch's F.cross_entropy (reduction='none'"
                         f"{', its step' if mode == 'grad' else ''}: "
                         f"{torch['median_s'] * 1e6:.0f} us)")
    return lines


def write_outputs(report, out):
    """Print the summary and write ``bench.json``, ``bench.md`` and ``bench.png`` into `out`."""
    os.makedirs(out, exist_ok=True)
    table = markdown_table(report["results"])
    notes = "\n" + neighbour_table(report["neighbour"]) + "\nLoad average before/after: "
    notes += (f"{report['load_before'][0]:.2f} / {report['machine']['loadavg'][0]:.2f}; "
              f"{report['seconds']:.0f} s.")
    if report["skipped"]:
        notes += "\nSkipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())
    notes += "\n" + "\n".join(headline(report))
    print(table + "\n" + notes)
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(table + "\n" + notes + "\n")
    written = ["bench.json", "bench.md"]
    try:
        plot(report["results"], os.path.join(out, "bench.png"))
        written.append("bench.png")
    except ImportError:
        with contextlib.suppress(FileNotFoundError):   # (an older run's chart is not this one's)
            os.remove(os.path.join(out, "bench.png"))
        print("matplotlib is not installed: no chart", file=sys.stderr)
    print(f"xent bench: wrote {', '.join(os.path.join(out, name) for name in written)}")
