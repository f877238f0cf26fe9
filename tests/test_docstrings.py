"""The `Examples:` in every public docstring run and print what they show."""
import doctest
import importlib
import warnings

import pytest

MODULES = ["xent.nn", "xent.losses", "xent.raw_ops", "xent.keras.losses"]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_print_what_they_claim(module_name):
    module = importlib.import_module(module_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module_name} has no examples"
    assert result.failed == 0
