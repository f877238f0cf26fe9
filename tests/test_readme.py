"""The README's examples are real: every ``>>>`` line runs, and prints what the README shows.

The README's ``python`` code blocks make one doctest, compared character for
character (whitespace normalised), on the fused kernels a user gets by
default. A block that needs torch or JAX fails where they are missing, as
under CI they must not be.
"""
import doctest
import pathlib
import re

import pytest

from xent import _core

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_examples():
    """The ``python`` blocks of README.md, one after another, as a single doctest text."""
    return "\n".join(re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M))


def test_readme_examples_print_what_the_readme_shows():
    pytest.importorskip("xent._fused", reason="numba is not installed: the fused kernels are off")
    test = doctest.DocTestParser().get_doctest(readme_examples(), {}, "README.md", str(README), 0)
    assert len(test.examples) >= 15, "the README's examples were not found"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    with _core.using_kernels("fused"):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_every_python_block_of_the_readme_is_a_doctest():
    for block in re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M):
        assert block.lstrip().startswith(">>>"), block[:60]
