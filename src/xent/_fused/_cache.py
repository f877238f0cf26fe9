"""Keep numba's disk cache of the kernels in step with every file they are built from.

numba keys a cached kernel on its own source file's time stamp and bytecode,
not on the helpers it inlines from other files (`_math`, `_formats`, ...):
after a change to a helper, a kernel whose own file did not change would be
loaded, stale, from the cache. So the cache directory holds a fingerprint of
all of `xent._fused`'s sources; when it differs, the cached kernels are
removed before any is loaded, and recompile on first use.
"""
import hashlib
import os
import pathlib

__all__ = ["fingerprint", "drop_if_stale"]

_STAMP = "xent-fused-sources.sha256"


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
