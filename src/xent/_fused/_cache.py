"""Keep numba's disk cache of the kernels in step with every file they are built from.

numba keys a cached kernel on its own source file's time stamp and bytecode,
not on the helpers it inlines from other files (`_math`, `_formats`, ...):
after a change to a helper, a kernel whose own file did not change would be
loaded, stale, from the cache. So the cache directory holds a fingerprint of
all of `xent._fused`'s sources; when it differs, the cached kernels are
removed before any is loaded, and recompile on first use.

A process keeps running the sources it imported: after a newer process has
re-stamped the cache (the sources changed on disk meanwhile), one that
compiled a kernel then saved it, built from its old helpers, and every later
process loaded it (an independent review). So before each compile of one of
xent's kernels the stamp is read again (`install`): where it is no longer
this process's, that kernel neither loads from the cache nor saves to it.

The cache only saves compile time, so it never stops a call (`tolerate`): an
entry that cannot be read (a truncated or damaged file) is compiled again,
and one that cannot be written (a full disk, a quota) is not kept, with one
line on stderr. numba raised both out of the call: one truncated file made
every call of its kernel fail in every later process (an independent review).
"""
import hashlib
import os
import pathlib
import sys
import types

from numba.core import caching, event
from numba.core.dispatcher import Dispatcher

from xent._fused._notice import _is_xent

__all__ = ["fingerprint", "drop_if_stale", "install", "tolerate"]

_STAMP = "xent-fused-sources.sha256"
# This process's fingerprint and cache directory, once `drop_if_stale` has run.
_state = {"fingerprint": None, "cache_dir": None}


def fingerprint():
    """SHA-256 of the contents of every ``.py`` file of `xent._fused`, in name order."""
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def drop_if_stale(cache_dir):
    """Remove numba's index and data files of xent's kernels from `cache_dir`
    unless it was stamped with today's `fingerprint`; then stamp it.

    Args:
      cache_dir: the directory numba caches `xent._fused`'s kernels in (a
        dispatcher's ``_cache.cache_path``), or None when caching is off.

    Returns:
      The number of files removed. A directory that cannot be written is
      left as it is (numba then caches nowhere, or elsewhere).
    """
    if not cache_dir:
        return 0
    stamp = pathlib.Path(cache_dir, _STAMP)
    current = fingerprint()
    _state["fingerprint"], _state["cache_dir"] = current, cache_dir
    try:
        os.makedirs(cache_dir, exist_ok=True)
        if stamp.exists() and stamp.read_text() == current:
            return 0
        removed = 0
        for path in pathlib.Path(cache_dir).iterdir():
            if path.name.startswith("_") and path.suffix in (".nbi", ".nbc"):
                path.unlink(missing_ok=True)
                removed += 1
        stamp.write_text(current)
        return removed
    except OSError:
        return 0


def _still_ours():
    """Whether the cache directory's stamp is this process's fingerprint; a missing
    stamp (the directory removed meanwhile) is written anew and counts as ours."""
    if _state["fingerprint"] is None:
        return True
    stamp = pathlib.Path(_state["cache_dir"], _STAMP)
    try:
        if not stamp.exists():
            os.makedirs(_state["cache_dir"], exist_ok=True)
            stamp.write_text(_state["fingerprint"])
            return True
        return stamp.read_text() == _state["fingerprint"]
    except OSError:
        return True   # (unreadable: numba's own cache then fails as it would)


class _StaleGuard(event.Listener):
    """Before a compile of one of xent's kernels: no disk cache for it where the
    cache was re-stamped by a process with other sources."""

    def on_start(self, ev):
        dispatcher = ev.data["dispatcher"]
        cache = getattr(dispatcher, "_cache", None)
        if (_is_xent(dispatcher) and cache is not None
                and not isinstance(cache, caching.NullCache) and not _still_ours()):
            dispatcher._cache = caching.NullCache()

    def on_end(self, ev):
        pass


class _TolerantCache:
    """numba's disk cache of one kernel (`inner`, whose other attributes it
    passes on), where a load that raises is a miss and a save that raises
    keeps nothing (the module doc)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def load_overload(self, sig, target_context):
        try:
            return self._inner.load_overload(sig, target_context)
        except Exception as exc:   # (pickle's, EOFError, OSError: whatever the file holds)
            _say_once("read", exc, self._inner)
            self._drop_unreadable_index()
            return None

    def _drop_unreadable_index(self):
        """Remove the kernel's index file if it cannot be read, so that the save
        after the compile writes a new one (numba's save reads the index first,
        and failed on it in every process; a damaged data file it overwrites).
        Through numba's private names: where they differ, nothing is removed."""
        files = getattr(self._inner, "_cache_file", None)
        try:
            files._load_index()
        except Exception:
            try:
                os.unlink(files._index_path)
            except (AttributeError, OSError):
                pass

    def save_overload(self, sig, cres):
        try:
            self._inner.save_overload(sig, cres)
        except Exception as exc:
            _say_once("write", exc, self._inner)


def _say_once(verb, exc, cache):
    """One line on stderr (none without one: pythonw, daemons), once a process, for a
    cache entry xent could not `verb`."""
    if not _state.get("said") and sys.stderr is not None:
        _state["said"] = True
        then = ("compiling it in this process instead" if verb == "read"
                else "it is kept in this process only")
        print(f"xent: could not {verb} numba's cache of a kernel in "
              f"{getattr(cache, 'cache_path', '?')} ({type(exc).__name__}: {exc}); {then}",
              file=sys.stderr)


def tolerate(dispatcher):
    """`dispatcher`'s disk cache made `_TolerantCache` (once; nothing without a cache)."""
    cache = getattr(dispatcher, "_cache", None)
    if cache is not None and not isinstance(cache, (caching.NullCache, _TolerantCache)):
        dispatcher._cache = _TolerantCache(cache)
    return dispatcher


def _tolerate_all():
    """`tolerate` every kernel of xent's imported modules."""
    for name, module in list(sys.modules.items()):
        if name.startswith("xent.") and isinstance(module, types.ModuleType):
            for value in list(vars(module).values()):
                if isinstance(value, Dispatcher) and _is_xent(value):
                    tolerate(value)


def install():
    """Listen to numba's compile events, and make every kernel's cache tolerant
    (idempotent; the kernels' modules imported first)."""
    _tolerate_all()
    if not getattr(install, "done", False):
        event.register("numba:compile", _StaleGuard())
        install.done = True
