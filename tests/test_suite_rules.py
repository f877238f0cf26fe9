"""The suite's own rule: under ``CI=true`` a test that would skip fails, naming why.

A missing framework (torch, jax, optax, numba, tensorflow) makes
``pytest.importorskip`` skip; outside CI that is reported by ``-ra``, under CI
it must fail the run, so that a green CI means every comparison ran. Checked by
running pytest, with the suite's conftest.py, on two small files.
"""
import pathlib

import pytest

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


# A suite in miniature: a fused-kernel test that every target runs, one that only
# the suite's process runs, the runs' waits, a test marked for every target in a
# file the runs do not run, and a test after them by name.
KERNEL_TESTS = {
    "test_fused.py": "import pytest\n\n\n@pytest.mark.every_target\ndef test_every_target():\n"
                     "    pass\n\n\ndef test_in_the_suite_only():\n    pass\n",
    "test_targets.py": "import pytest\n\n\n"
                       "@pytest.mark.parametrize('target', ['host', 'x86-64'])\n"
                       "def test_fused_kernels_right_when_compiled_for(target):\n    pass\n",
    "test_other.py": "import pytest\n\n\n@pytest.mark.every_target\ndef test_elsewhere():\n"
                     "    pass\n",
    "test_zz_after.py": "def test_after():\n    pass\n",
}


def _run_kernel_tests(pytester, monkeypatch, *paths):
    """pytest -v on `KERNEL_TESTS` (in a ``tests`` folder), with the suite's conftest
    and the kernels' runs neither started nor stopped; the test names in the order
    they ran."""
    import target_runs

    class NoRuns:
        """Runs that neither start nor stop (the suite's own are real)."""
        start = stop = staticmethod(lambda: None)

    monkeypatch.setattr(target_runs, "RUNS", NoRuns())
    pytester.makeconftest(CONFTEST.read_text())
    folder = pytester.mkdir("tests")
    for name, text in KERNEL_TESTS.items():
        (folder / name).write_text(text)
    # (importlib: the suite's own test_fused and test_targets are imported already)
    result = pytester.runpytest("-v", "-p", "no:cacheprovider", "--import-mode=importlib",
                                *paths)
    return result, [line.split("::")[1].split(" ")[0] for line in result.outlines
                    if " PASSED" in line]


def test_the_host_run_takes_the_every_target_tests_and_the_waits_run_last(pytester,
                                                                          monkeypatch):
    """With the host's kernel run among the tests, the suite's process leaves it the
    ``every_target`` tests of the files it runs (deselected, not skipped), keeps
    one in another file, and waits for the runs after every other test."""
    result, ran = _run_kernel_tests(pytester, monkeypatch)
    result.assert_outcomes(passed=5, deselected=1)
    assert ran == ["test_in_the_suite_only", "test_elsewhere", "test_after",
                   "test_fused_kernels_right_when_compiled_for[host]",
                   "test_fused_kernels_right_when_compiled_for[x86-64]"]


HOST_WAIT = "tests/test_targets.py::test_fused_kernels_right_when_compiled_for[host]"


@pytest.mark.parametrize("selection, want, deselected", [
    (["tests/test_fused.py"], ["test_every_target", "test_in_the_suite_only"], 0),
    (["-k", "test_every_target"], ["test_every_target"], 5),
    (["-m", "every_target"], ["test_every_target", "test_elsewhere"], 4),
    (["--deselect", HOST_WAIT], ["test_every_target", "test_in_the_suite_only",
                                 "test_elsewhere", "test_after",
                                 "test_fused_kernels_right_when_compiled_for[x86-64]"], 1),
])
def test_without_the_host_run_selected_the_every_target_tests_run_in_the_suites_process(
        pytester, monkeypatch, selection, want, deselected):
    """Where the host's run is not among the selected tests (a file named, ``-k``,
    ``-m`` or ``--deselect`` leaving it out), the suite's process runs the
    ``every_target`` tests itself."""
    result, ran = _run_kernel_tests(pytester, monkeypatch, *selection)
    result.assert_outcomes(passed=len(want), deselected=deselected)
    assert ran == want
