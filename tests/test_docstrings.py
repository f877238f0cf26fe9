"""The `Examples:` in every public docstring run and print what they show.

The docstrings print what the default, fused kernels give, digit for digit
(the same on x86-64 compiled for the host, `haswell` and the SSE2 baseline):
with them the output must match exactly. The NumPy reference kernels may
round the last digit differently, so with those numbers are compared with a
relative tolerance of 1e-5, everything else exactly. (A tolerance for both
hid eleven last digits that were TensorFlow's, not the fused kernels'.) The
README's examples are compared exactly too: test_readme.py.
"""
import doctest
import importlib
import math
import re
import warnings

import pytest

import xent

MODULES = ["xent.nn", "xent.losses", "xent.raw_ops", "xent.keras.losses", "xent._large_vocab._api",
           "xent.compat.v1.nn"]
_NUMBER = re.compile(r"-?\d+\.\d*(?:e[-+]?\d+)?")


class _CloseNumbersChecker(doctest.OutputChecker):
    """Accept output that matches, or (on the NumPy kernels) whose text matches
    and whose numbers agree to rtol 1e-5."""

    def check_output(self, want, got, optionflags):
        if super().check_output(want, got, optionflags):
            return True
        if xent.get_kernels() == "fused":
            return False
        shape = [re.sub(r"\s+", "", _NUMBER.sub("#", text)) for text in (want, got)]
        wanted, gotten = _NUMBER.findall(want), _NUMBER.findall(got)
        if shape[0] != shape[1] or len(wanted) != len(gotten):
            return False
        return all(math.isclose(float(w), float(g), rel_tol=1e-5, abs_tol=1e-7)
                   for w, g in zip(wanted, gotten))


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_print_what_they_claim(module_name):
    module = importlib.import_module(module_name)
    runner = doctest.DocTestRunner(checker=_CloseNumbersChecker(), optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = doctest.DocTestFinder().find(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for test in tests:
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{module_name} has no examples"
    assert result.failed == 0
