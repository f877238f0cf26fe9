"""numba's disk cache, shared by the suite's process and the host's kernel run under a lock.

numba saves a compiled signature by reading the function's cache index,
taking the first free data file name, writing the index and then the data
(`numba.core.caching.IndexDataCacheFile.save`), with no lock: two processes
saving two signatures of one kernel at once can both take the same name,
and the index then maps one signature to the other's machine code, for
every later run that loads it. The suite's process and tests/target_runs.py's
host run share a cache (each loads what the other compiled), so in the
suite's processes each save and load of an index and its data holds an
exclusive lock on one file of that cache folder (`lock_saves`, where the
OS has ``fcntl``; elsewhere the host's run gets a cache of its own).
"""
import contextlib
import functools
import os

try:
    import fcntl
except ImportError:   # (Windows)
    fcntl = None

LOCK_NAME = ".xent-tests.lock"


@contextlib.contextmanager
def _locked(folder):
    """Hold an exclusive lock on `folder`'s `LOCK_NAME` (created if missing); without
    it where the file cannot be opened (a folder numba has not made yet)."""
    try:
        handle = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)   # (releases the lock)


def _under_lock(method):
    """`method` of `IndexDataCacheFile`, run holding its cache folder's lock."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with _locked(self._cache_path):
            return method(self, *args, **kwargs)
    locked.xent_locked = True
    return locked


def lock_saves():
    """Make numba's cache saves and loads hold their folder's lock, once per process;
    returns whether they do (False without ``fcntl``, or without numba)."""
    try:
        from numba.core import caching
    except ImportError:
        return False
    if fcntl is None:
        return False
    cache_file = caching.IndexDataCacheFile
    for name in ("save", "load"):
        if not getattr(getattr(cache_file, name), "xent_locked", False):
            setattr(cache_file, name, _under_lock(getattr(cache_file, name)))
    return True
