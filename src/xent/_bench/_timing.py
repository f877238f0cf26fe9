"""How `xent bench` times its cases: interleaved rounds, each xent call paired
with a floor timed right before it, and the good-neighbour check."""
import statistics
import time

from xent import _core


def warm_up(cases, skipped):
    """Call each case once (compiles, caches); drop those that fail, noting them in `skipped`."""
    kept = []
    for case in cases:
        try:
            case.run()
            kept.append(case)
        except Exception as exc:   # noqa: BLE001 - a failing peer is reported, not fatal
            skipped.setdefault(case.name, f"{type(exc).__name__}: {exc}"[:200])
    return kept


def settle_store_choice(cases, logits):
    """Run xent's gradient-into-a-buffer case until the kernels have kept a kind
    of store for large gradients (`xent._fused._stores` times the first large
    calls of a process), so that the timed rounds measure the kept kind, not
    its trials. The warm-up calls before it (xent's, and those of xent on
    torch and JAX) count among the trials. Nothing for NumPy kernels or for
    inputs too small to stream (those of ``--quick`` are, at 62.5 MiB)."""
    if _core.get_kernels() != "fused":
        return
    from xent._fused import _launch

    if logits.dtype.name not in ("float32", "float64") or logits.nbytes < _launch.STREAM_MIN_BYTES:
        return
    choice = _launch.STORES
    run = next((case.run for case in cases if (case.name, case.mode) == ("xent", "grad")), None)
    for _ in range(4 * (choice.TRIALS + 1) if run else 0):   # (a busy-threads call is retried)
        if choice.streamed is not None:
            return
        run()


def time_interleaved(cases, rounds, burst, budget_s, progress, settle_s, paired=None,
                     framework_settle_s=None, paired_burst=None):
    """`rounds` rounds over all cases; a case whose time so far exceeds `budget_s` sits out.

    In each round a case runs `burst` times in a row (many for small inputs,
    whose calls would otherwise each start with caches full of the other
    cases' code and data) and each call's time is kept. Between cases the
    process idles `settle_s`: some runtimes' worker threads spin for a while
    after a call, and would slow whatever case comes next. After a case run
    by a framework (`Case.framework`) it idles `framework_settle_s` (default
    `settle_s`): at 8192x32000 float32 on a Zen 4, xent in place right after
    TensorFlow's loss+grad took 1.31x the copy 50 ms later and 1.08x 300 ms
    later (after JAX: 1.12x and 1.05x; alone 1.06-1.08x). Every case runs in
    at least 3 rounds.

    `paired` maps a mode to its floor cases: right before each call of an
    xent case of that mode, each of them runs once, and the fastest time is
    kept in the case's `floor_times` (the memory bandwidth of a busy host
    moves within seconds; the floor next to each call moves with it). Such a
    case runs `paired_burst` times in a row (default `burst`): its calls are
    short, and on a host whose bandwidth moves this much a median needs more
    of them than the peers' seconds-long calls leave time for (8192x32000
    float32 in place on a Zen 4 VM, 40 calls in one process: 47-103 ms, and
    0.75-1.66x the copy timed just before).
    """
    paired = paired or {}
    after_framework = settle_s if framework_settle_s is None else framework_settle_s
    previous = None
    for round_index in range(rounds):
        for case in cases:
            if round_index >= 3 and sum(case.times) > budget_s:
                continue
            time.sleep(after_framework if previous is not None and previous.framework
                       else settle_s)
            previous = case
            floors = paired.get(case.mode, ()) if case.role == "xent" else ()
            for _ in range((paired_burst or burst) if floors else burst):
                if floors:
                    case.floor_times.append(min(timed(floor.run) for floor in floors))
                case.times.append(timed(case.run))
        progress(1)


def paired_ratio(case):
    """Median over calls of the case's time over the floor timed just before it, or None."""
    if not case.floor_times:
        return None
    return statistics.median(t / f for t, f in zip(case.times, case.floor_times))


def neighbour_check(cases, rounds=5, idle_s=0.2):
    """What each implementation costs whatever runs right after it.

    For each gradient case: the CPU time this process burns while it idles
    `idle_s` right after a call (threads that spin waiting for work show up
    here; threads that sleep do not), and the time of a memcpy copy right
    after a call over the same after idling.
    """
    memcpy = next(c for c in cases if c.name == "copy floor (memcpy)").run
    results = {}
    for case in cases:
        if case.mode != "grad" or case.role == "floor":
            continue
        burnt, after_call, after_idle = [], [], []
        for _ in range(rounds):
            case.run()
            start = time.process_time()
            time.sleep(idle_s)
            burnt.append(time.process_time() - start)
            case.run()
            after_call.append(timed(memcpy))
            time.sleep(idle_s)
            after_idle.append(timed(memcpy))
        results[case.name] = {
            "idle_cpu_s": statistics.median(burnt), "idle_s": idle_s,
            "copy_ratio": statistics.median(after_call) / statistics.median(after_idle)}
    return results


def interleaved_medians(calls, rounds):
    """{name: median ms} of each of `calls` ({name: call}), after one untimed call
    each (compiling, and faulting every buffer in), over `rounds` rounds that
    run every call once in turn: the loop of bench/'s scripts, lighter than
    `time_interleaved` (no budget, bursts or settling)."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(timed(call))
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def timed(run):
    """Seconds one `run()` takes."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start
