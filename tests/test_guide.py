"""docs/adding-a-method.md's examples are real: each code block is executed as a module (registering its
method for the test only) and the method goes through every contract test of tests/test_contract.py that
its capabilities select, with no other edit. This is the outsider's exercise of the method contract, kept."""
import inspect
import re
import sys
import types
from pathlib import Path

import pytest
import test_contract

from smallset import distill, prune
from smallset.tasks.methods import all_methods

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
SKIP = {"test_gives_the_recorded_set"}  # the guide's toys have no recorded digest


@pytest.fixture
def guide_methods():
    """Execute every block as its own module; yield the names it registered; unregister them afterwards."""
    registries = (prune.SELECTORS, distill.CONDENSERS)
    before = [dict(r._items) for r in registries]
    known = set(all_methods())
    try:
        for i, code in enumerate(BLOCKS):
            module = types.ModuleType(f"guide_example_{i}")
            sys.modules[module.__name__] = module
            exec(compile(code, f"{GUIDE}:block{i}", "exec"), module.__dict__)
        yield sorted(set(all_methods()) - known)
    finally:
        for r, items in zip(registries, before):
            r._items = items
        for i in range(len(BLOCKS)):
            sys.modules.pop(f"guide_example_{i}", None)


def contract_checks(name: str):
    """(test class, method name) of every contract test whose capability the method has."""
    from smallset.tasks.methods import method_class

    cls = method_class(name)
    for _, test_cls in inspect.getmembers(test_contract, inspect.isclass):
        capability = getattr(test_cls, "capability", None)
        if capability is None or not test_contract.has(capability, cls):
            continue
        for attr in dir(test_cls):
            if attr.startswith("test_") and attr not in SKIP and not hasattr(getattr(test_cls, attr), "pytestmark"):
                yield test_cls, attr


def call(test_cls, attr, name, ds, tmp_path):
    method = getattr(test_cls(), attr)
    args = {"name": name, "ds": ds, "tmp_path": tmp_path / f"{name}-{attr}"}
    args["tmp_path"].mkdir()
    method(**{k: v for k, v in args.items() if k in inspect.signature(method).parameters})


def test_the_guide_has_a_selector_a_closed_form_and_an_iterative_condenser(guide_methods):
    from smallset.distill.base import Condenser, IterativeCondenser
    from smallset.method import PreparesInUnits
    from smallset.prune.base import Selector
    from smallset.tasks.methods import method_class

    classes = [method_class(n) for n in guide_methods]
    assert len(classes) == 3
    assert any(issubclass(c, Selector) and issubclass(c, PreparesInUnits) for c in classes)
    assert any(issubclass(c, Condenser) and not issubclass(c, IterativeCondenser) for c in classes)
    assert any(issubclass(c, IterativeCondenser) for c in classes)


def test_every_guide_method_passes_its_contract_tests(guide_methods, tmp_path):
    from helpers import make_tiny_dataset

    ds = make_tiny_dataset(n_per_class=6, num_classes=3, size=8)
    ran = []
    for name in guide_methods:
        for test_cls, attr in contract_checks(name):
            call(test_cls, attr, name, ds, tmp_path)
            ran.append((name, test_cls.__name__))
    by_method = {n: {c for m, c in ran if m == n} for n in guide_methods}
    assert by_method["init_loss"] >= {"TestEveryMethod", "TestSelectors", "TestPreparations", "TestUnits"}
    assert by_method["class_mean"] == {"TestEveryMethod", "TestCondensers"}
    assert by_method["mean_match"] == {"TestEveryMethod", "TestCondensers", "TestIterativeCondensers"}
