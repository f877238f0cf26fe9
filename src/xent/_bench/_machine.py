"""What ran `xent bench`: the CPU, the versions, what the kernels were compiled for."""
import contextlib
import os
import platform
import sys

import xent
from xent import _core

_VIRTIO_BALLOON = "0x0005"
_BALLOON_REPORTING_BIT = 5   # VIRTIO_BALLOON_F_REPORTING


def machine():
    """What ran the benchmark: CPU model, cores, versions, threads, load."""
    versions = {}
    for name in ("numpy", "numba", "torch", "tensorflow", "jax", "optax"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "xent_threads": xent.get_num_threads(),
            "versions": versions, "loadavg": os.getloadavg(),
            "kernels": _core.get_kernels(), "compiled_for": compiled_for(),
            "gradient_stores": gradient_stores(),
            "free_page_reporting": free_page_reporting()}


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what `platform` knows)."""
    model = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        model = next((l.split(":", 1)[1].strip() for l in info if l.startswith("model name")), model)
    return model


def free_page_reporting(devices="/sys/bus/virtio/devices"):
    """Whether this is a Linux VM whose virtio balloon hands freed memory back to the
    hypervisor (the feature negotiated; False elsewhere).

    There a page that a process touches anew after memory was freed faults twice,
    in the guest and on the host, so the time of a call that writes fresh memory
    (a JAX step's gradient, which XLA allocates per call) varies with it: on such
    a Zen 3 VM the jitted 8192x32000 step took 120-138 ms, and 90-96 ms when glibc
    kept the freed memory (bench/RESULTS.md, session 8).
    """
    try:
        names = os.listdir(devices)
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(devices, name, "device")) as f:
                kind = f.read().strip()
            with open(os.path.join(devices, name, "features")) as f:
                features = f.read().strip()
        except OSError:
            continue
        if kind == _VIRTIO_BALLOON and features[_BALLOON_REPORTING_BIT:][:1] == "1":
            return True
    return False


def gradient_stores():
    """How the kernels store a large gradient into a buffer in this process
    (`xent._fused._stores`: plain or streamed, kept after timing both), or None
    when no large call chose yet or the kernels are NumPy's."""
    if _core.get_kernels() != "fused":
        return None
    from xent._fused import _launch

    choice = _launch.STORES
    if choice.streamed is None:
        return None
    return {"streamed": choice.streamed, "best_ms_per_gib": choice.best_ms_per_gib()}


def compiled_for():
    """The CPU and instruction set xent's kernels are compiled for (``"haswell:
    AVX2+FMA"``), or why there are none."""
    if _core.get_kernels() != "fused":
        return "none: the NumPy reference kernels"
    from xent._fused import _target

    chosen = " (NUMBA_CPU_NAME)" if os.environ.get("NUMBA_CPU_NAME") else ""
    return _target.isa() + chosen


# float32 logits-sized arrays a bench input holds at once, about: the logits,
# xent's buffers, the floors' target, the peers' copies (torch's clones, TF's,
# JAX's). Measured with every peer installed, 2048x32000 float32 (2026-12-07):
# 12.6 after the warm-up, 14.6 at the peak.
_COPIES = 15
# The share of the available memory those may take: the rest is the frameworks'
# own and the system's (20000x20000, 22.4 of 23.1 GiB, was killed for memory).
_USABLE = 0.85


def _memory_bytes():
    """The memory this machine has free for the bench, in bytes: Linux's
    ``MemAvailable`` (what can be had without swapping), else the physical
    memory, or None where neither can be read."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def too_big(shape):
    """Why the bench of ``(rows, classes)`` logits cannot fit in this machine's
    memory, or None where it can (or the memory cannot be read)."""
    needed, memory = _COPIES * 4 * shape[0] * shape[1], _memory_bytes()
    if memory and needed > _USABLE * memory:
        return (f"{shape[0]}x{shape[1]} needs about {needed / 2**30:.3g} GiB ({_COPIES} float32 "
                f"arrays of its size), more than {_USABLE:.0%} of the {memory / 2**30:.3g} GiB "
                f"this machine has available (the rest is the frameworks' and the system's)")
    return None
