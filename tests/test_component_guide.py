"""docs/adding-a-component.md's examples are real: each code block is executed as a module (registering its
component for the test only) and the component goes through the contract tests of its registry
(tests/test_protocols.py, tests/test_sources.py, tests/test_augmentations.py) with no other edit."""
import inspect
import re
import sys
import types
from pathlib import Path

import pytest
import test_augmentations
import test_protocols
import test_sources

from smallset.augment import AUGMENTATIONS
from smallset.data import SOURCES
from smallset.protocols import OPTIMIZERS, PROTOCOLS, SCHEDULES

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-component.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)

# registry → its contract tests (the functions parametrised over it)
CONTRACTS = {
    "protocol": (PROTOCOLS, [test_protocols.test_preset_is_well_formed,
                             test_protocols.test_preset_trains_a_tiny_model_deterministically]),
    "schedule": (SCHEDULES, [test_protocols.test_schedule_gives_finite_positive_lrs_over_its_passes,
                             test_protocols.test_fit_follows_the_schedule_step_by_step]),
    "optimizer": (OPTIMIZERS, [test_protocols.test_optimizer_builds_at_the_given_lr_and_steps,
                               test_protocols.test_optimizer_trains_with_fit]),
    "source": (SOURCES, [test_sources.test_source_loads_back_what_it_wrote_or_its_example,
                         test_sources.test_a_missing_path_is_refused_in_one_sentence,
                         test_sources.test_an_unknown_name_is_refused_in_one_sentence_before_any_download]),
    "augmentation": (AUGMENTATIONS, [test_augmentations.test_augmentation_keeps_the_batch_and_leaves_the_input,
                                     test_augmentations.test_augmentation_draws_only_from_its_generator,
                                     test_augmentations.test_augmentation_trains_a_tiny_model]),
}


@pytest.fixture
def guide_components(monkeypatch):
    """Execute every block as its own module; yield {registry kind: names it registered}; unregister them
    afterwards. The catalogue (check_source) is built from the registries as they are during the test."""
    from smallset.tasks import catalog

    registries = {kind: reg for kind, (reg, _) in CONTRACTS.items()}
    before = {kind: set(reg.names()) for kind, reg in registries.items()}  # names() loads the plugins first
    saved = {kind: dict(reg._items) for kind, reg in registries.items()}
    try:
        for i, code in enumerate(BLOCKS):
            module = types.ModuleType(f"component_guide_example_{i}")
            sys.modules[module.__name__] = module
            exec(compile(code, f"{GUIDE}:block{i}", "exec"), module.__dict__)
        fresh = catalog.build()
        monkeypatch.setattr(catalog, "catalog", lambda: fresh)
        yield {kind: sorted(set(reg.names()) - before[kind]) for kind, reg in registries.items()}
    finally:
        for kind, reg in registries.items():
            reg._items = saved[kind]
        for i in range(len(BLOCKS)):
            sys.modules.pop(f"component_guide_example_{i}", None)


def test_every_guide_component_passes_its_contract_tests(guide_components, monkeypatch, tmp_path):
    assert {kind: len(names) for kind, names in guide_components.items()} == {
        "protocol": 1, "schedule": 1, "optimizer": 1, "source": 1, "augmentation": 1}
    ran = []
    for kind, names in guide_components.items():
        registry, tests = CONTRACTS[kind]
        for name in names:
            for test in tests:
                if kind == "source" and not applies_to_source(test, name):
                    continue
                params = {p.strip() for mark in getattr(test, "pytestmark", []) if mark.name == "parametrize"
                          for p in mark.args[0].split(",")}
                wanted = inspect.signature(test).parameters
                for channels in ((1, 3) if "channels" in params else (None,)):
                    folder = tmp_path / f"{test.__name__}-{name}-{channels}"
                    folder.mkdir()
                    args = {"name": name, "kind": name, "channels": channels, "monkeypatch": monkeypatch,
                            "tmp_path": folder}
                    test(**{k: v for k, v in args.items() if k in wanted})
                    ran.append((test.__name__, name, channels))
    assert len(ran) == 13  # 2 per preset, schedule, optimiser and source; 5 for the augmentation


def applies_to_source(test, kind: str) -> bool:
    """The path test is for kinds that take a path, the unknown-name test for the others."""
    takes_path = SOURCES.get(kind).takes_path
    if test is test_sources.test_a_missing_path_is_refused_in_one_sentence:
        return takes_path
    if test is test_sources.test_an_unknown_name_is_refused_in_one_sentence_before_any_download:
        return not takes_path
    return True
