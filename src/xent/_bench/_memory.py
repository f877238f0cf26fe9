"""Peak extra memory of one call: what it needs beyond its inputs and a caller's output."""
import tracemalloc


def peak_extra_bytes(case):
    """Bytes one `case.run()` needs beyond its inputs, by the case's `memory` kind, or None.

    "tracemalloc" counts NumPy's and Python's allocations; "rss" the resident
    set's high-water mark (numba's and the frameworks' own allocators);
    "both" the larger of the two; "xla" what XLA's compiled program declares.
    """
    if case.memory == "xla":
        return case.xla_bytes
    if case.memory == "tracemalloc":
        return _traced_peak_extra(case.run)
    if case.memory == "both":   # NumPy's allocations, and numba's, which tracemalloc misses
        return max(_traced_peak_extra(case.run), _rss_peak_extra(case.run) or 0)
    return _rss_peak_extra(case.run)


def _status_bytes(key):
    """A ``/proc/self/status`` field given in kB (``"VmRSS:"``), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None


def _rss_peak_extra(run):
    """High-water mark of the resident set during `run()`, above the set before it
    (None where Linux's ``/proc/self/clear_refs`` is not there to reset it)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")   # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _status_bytes("VmRSS:")
    run()
    return max(0, _status_bytes("VmHWM:") - before)


def _traced_peak_extra(run):
    """Peak NumPy/Python allocation during `run()` (tracemalloc)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
