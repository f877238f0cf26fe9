"""The suite's own rule: under ``CI=true`` a test that would skip fails, naming why.

A missing framework (torch, jax, optax, numba, tensorflow) makes
``pytest.importorskip`` skip; outside CI that is reported by ``-ra``, under CI
it must fail the run, so that a green CI means every comparison ran. Checked by
running pytest, with the suite's conftest.py, on two small files.
"""
import pathlib

CONFTEST = pathlib.Path(__file__).with_name("conftest.py")
MISSING = "a_package_that_is_not_installed"
FILES = {
    "test_module_level": f"import pytest\npytest.importorskip({MISSING!r})\n\n\n"
                         "def test_x():\n    pass\n",
    "test_in_a_test": f"import pytest\n\n\ndef test_y():\n    pytest.importorskip({MISSING!r})\n",
}


def _run(pytester, monkeypatch, ci):
    """pytest on `FILES` with the suite's conftest, CI=true or not."""
    monkeypatch.setenv("CI", "true" if ci else "false")
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(**FILES)
    return pytester.runpytest("-ra", "-p", "no:cacheprovider", "--continue-on-collection-errors")


def test_missing_package_fails_under_ci_naming_it(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, ci=True)
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines([f"ERROR test_module_level.py - *{MISSING}*",
                                 f"FAILED test_in_a_test.py::test_y - *{MISSING}*"])


def test_missing_package_skips_with_its_name_outside_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, ci=False)
    result.assert_outcomes(skipped=2)
    assert result.stdout.str().count(f"could not import '{MISSING}'") == 2
