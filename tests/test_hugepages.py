"""`xent._hugepages.advise`: a paging hint that never changes a buffer."""
import os
import sys

import numpy as np

from xent import _hugepages


def test_advice_keeps_the_contents_and_skips_small_buffers():
    big = np.arange(3 << 20, dtype=np.float32)      # 12 MiB
    before = big.copy()
    accepted = _hugepages.advise(big)
    assert np.array_equal(big, before)
    if sys.platform.startswith("linux") and os.path.exists("/sys/kernel/mm/transparent_hugepage"):
        assert accepted is True
    assert _hugepages.advise(np.zeros(1000, np.float32)) is False
    assert _hugepages.advise(big[: (_hugepages.MIN_BYTES // 4) - 1]) is False
