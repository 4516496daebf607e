"""Every `>>>` example in kcap's and tuning's docstrings runs and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest

import kcap
import tuning


def _modules_with_examples() -> list[str]:
    names = []
    for package in (kcap, tuning):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue  # running it is running the CLI
            spec = importlib.util.find_spec(info.name)
            if spec.origin and ">>>" in open(spec.origin, encoding="utf-8").read():
                names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_the_examples_are_found():
    expected = {"kcap.model.attention", "kcap.model.decoders.gru_attention", "kcap.model.samplers.base",
                "kcap.evaluation.metrics"}
    assert expected <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in finder.find(module, name, globs=vars(module).copy()):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
