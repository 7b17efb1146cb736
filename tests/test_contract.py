"""The method contract, checked for every registered selector and condenser (no list to keep up to date:
a new registry entry is picked up here).

Each test class checks one capability and declares it as ``capability`` — a base class (``Method``,
``Selector``, ``Condenser``, ``IterativeCondenser``, ``PreparesInUnits``…) or a predicate on the method class;
:func:`pytest_generate_tests` parametrises the class's tests over exactly the registered methods that have
it. Each method runs on a tiny dataset with its ``smoke`` settings, through the same prepare → reduce path
the pipeline uses."""
import dataclasses
import json
import os
import platform
from pathlib import Path

import pytest
import torch

from smallset import store
from smallset.budget import FRACTION, IPC, BudgetUnit
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.distill.base import Condenser, IterativeCondenser
from smallset.errors import SmallsetError
from smallset.method import Method, Prepared, PreparesInUnits, Reduction
from smallset.prune._training import TrainingSchedule, TrainingTimeSelector
from smallset.prune.base import Selector
from smallset.tasks.methods import all_methods, method_class

from helpers import refused_before_anything_runs, straight_and_resumed

BUDGET = {FRACTION.name: 0.5, IPC.name: 2}
GOLDEN = Path(__file__).with_name("contract_digests.json")


def budget_of(cls) -> float | int:
    return BUDGET[cls.budget_unit.name]


def ctx(seed: int = 0, **kw) -> RunContext:
    return RunContext(seed=seed, model="convnet-s", model_kwargs={"width": 8}, **kw)


def smoke_method(cls) -> Method:
    return cls(cls.make_config(cls.smoke, cls.budget_unit.config_budget(budget_of(cls))))


def run(name: str, ds: ImageDataset, seed: int = 0, **ctx_kw) -> Reduction:
    cls = method_class(name)
    method = smoke_method(cls)
    c = ctx(seed, **ctx_kw)
    prepared = method.prepare(ds, c) if cls.has_prepare() else None
    return method.reduce(ds, budget_of(cls), c, prepared)


def has(capability, cls) -> bool:
    return issubclass(cls, capability) if isinstance(capability, type) else bool(capability(cls))


def methods_with(capability) -> list[str]:
    return [n for n in all_methods() if has(capability, method_class(n))]


def pytest_generate_tests(metafunc):
    """``name`` is every registered method that has the test class's ``capability``."""
    if "name" in metafunc.fixturenames and metafunc.cls is not None:
        metafunc.parametrize("name", methods_with(getattr(metafunc.cls, "capability", Method)))


def untimed(info: dict) -> dict:
    """``info`` without what a clock measured (seconds, iterations per second)."""
    return {k: v for k, v in info.items() if "second" not in k}


def content_digest(ds: ImageDataset) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in (ds.images, ds.labels, ds.effective_weights(), ds.source_index):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def ds():
    from helpers import make_tiny_dataset

    return make_tiny_dataset(n_per_class=6, num_classes=3, size=8)


class TestEveryMethod:
    capability = Method

    def test_follows_the_naming_rule(self, name):
        cls = method_class(name)
        assert cls.name == name
        assert cls.config_cls.__name__.endswith("Config"), cls.config_cls.__name__
        assert isinstance(cls.budget_unit, BudgetUnit)
        assert cls.__name__.endswith({FRACTION.name: "Selector", IPC.name: "Condenser"}[cls.budget_unit.name])
        cls.make_config(cls.demo)  # the demo settings name real options
        cls.make_config(cls.smoke)

    def test_reduces_writes_valid_parquet_and_is_deterministic(self, name, ds, tmp_path):
        cls = method_class(name)
        red = run(name, ds, seed=1).dataset
        assert len(red) > 0 and red.classes == ds.classes and red.image_size == ds.image_size
        assert torch.isfinite(red.images).all() and torch.isfinite(red.effective_weights()).all()
        meta = store.build_metadata(red, method=name, kind=cls.kind, params=cls().params(), seed=1,
                                    source="tiny", source_digest=ds.digest, protocol="quick")
        path = store.write_reduced(red, tmp_path / f"{name}.parquet", meta)
        back = store.read_reduced(path)
        assert back.same_content(red) and store.read_metadata(path)["method"] == name
        again = run(name, ds, seed=1).dataset
        assert again.same_content(red), f"{name}: the same seed gave a different set"

    def test_gives_the_recorded_set(self, name, ds):
        """The same set, bit for bit, as when the digests were recorded (a redesign changes no result).
        Recorded on one platform and torch version with one thread; elsewhere float reductions may differ.
        A method whose output is meant to change: rerun with SMALLSET_UPDATE_DIGESTS=1 and say why."""
        golden = json.loads(GOLDEN.read_text())
        here = {"machine": platform.machine(), "torch": torch.__version__.split("+")[0]}
        got = content_digest(run(name, ds, seed=1).dataset)
        if os.environ.get("SMALLSET_UPDATE_DIGESTS"):
            golden = {**here, "digests": {**golden.get("digests", {}), name: got}}
            GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
            return
        if {k: golden[k] for k in here} != here:
            pytest.skip(f"digests recorded on {golden['machine']} with torch {golden['torch']}")
        assert name in golden["digests"], f"{name} has no recorded digest: run with SMALLSET_UPDATE_DIGESTS=1"
        assert got == golden["digests"][name], f"{name}'s set differs from the recorded one"

    def test_reduce_returns_the_prepared_information(self, name, ds):
        """What the preparation measured reaches the reduction's info (so MLflow), whoever prepared."""
        cls = method_class(name)
        method = smoke_method(cls)
        state = method.prepare(ds, ctx(4)) if cls.has_prepare() else None
        out = method.reduce(ds, budget_of(cls), ctx(4), state)
        for key, value in (state.info if state is not None else {}).items():
            assert out.info[key] == value, key


class TestSelectors:
    capability = Selector

    def test_keeps_real_rows_of_the_source(self, name, ds):
        red = run(name, ds, seed=1).dataset
        assert ((red.source_index >= 0) & (red.source_index < len(ds))).all()
        assert torch.equal(red.images, ds.images[red.source_index])
        assert method_class(name).budget_unit is FRACTION


class TestCondensers:
    capability = Condenser

    def test_learns_ipc_images_per_class(self, name, ds):
        red = run(name, ds, seed=1).dataset
        assert red.class_counts() == [BUDGET[IPC.name]] * ds.num_classes
        assert (red.source_index == -1).all()
        assert method_class(name).budget_unit is IPC


class TestPreparations:
    capability = staticmethod(lambda cls: cls.has_prepare())

    def test_preparation_is_a_cacheable_value(self, name, ds):
        """The prepared state is a pure function of its key: recomputed, it is equal, and reduce gives the same
        set whether it prepares itself or is handed the state."""
        cls = method_class(name)
        method = smoke_method(cls)
        a, b = method.prepare(ds, ctx(2)), method.prepare(ds, ctx(2))
        assert isinstance(a, Prepared) and isinstance(b, Prepared)
        if dataclasses.is_dataclass(a.value) or isinstance(a.value, dict):  # a handle to files (MTT's experts)
            assert a.value == b.value
        else:
            assert torch.equal(torch.as_tensor(a.value), torch.as_tensor(b.value))
        assert a.info == b.info or cls.__name__.startswith("MTT")  # MTT's info holds measured seconds
        assert method.prepare_params(), f"{name} prepares but marks no config field prepare=True"
        handed = method.reduce(ds, budget_of(cls), ctx(2), a).dataset
        own = method.reduce(ds, budget_of(cls), ctx(2)).dataset
        assert handed.same_content(own)

    def test_nothing_lives_on_the_method_between_phases(self, name, ds):
        """The pipeline prepares and reduces on separate instances: the result must not depend on it."""
        cls = method_class(name)
        state = smoke_method(cls).prepare(ds, ctx(5))
        fresh = smoke_method(cls).reduce(ds, budget_of(cls), ctx(5), state)
        same = smoke_method(cls)
        same_state = same.prepare(ds, ctx(5))
        kept = same.reduce(ds, budget_of(cls), ctx(5), same_state)
        assert fresh.dataset.same_content(kept.dataset)
        assert untimed(fresh.info) == untimed(kept.info)


class TestUnits:
    capability = PreparesInUnits

    def test_units_in_any_order_give_the_same_state(self, name, ds):
        """Units are independent: run in reverse order (as a cluster might finish them), then combined, they
        give the state prepare gives; the state holds one result per unit."""
        cls = method_class(name)
        method = smoke_method(cls)
        assert method.unit_count() >= 2, f"{name}'s smoke settings need at least 2 units"
        state = method.prepare(ds, ctx(6))
        reverse = {i: smoke_method(cls).run_unit(ds, ctx(6), i) for i in reversed(range(method.unit_count()))}
        again = method.combine(ds, ctx(6), [reverse[i] for i in range(method.unit_count())])
        assert len(state.units) == method.unit_count()
        assert torch.equal(torch.as_tensor(again.value), torch.as_tensor(state.value))
        assert again.info == state.info


class TestIterativeCondensers:
    capability = IterativeCondenser

    def test_resumes_exactly(self, name, ds, tmp_path):
        cls = method_class(name)
        config = cls.make_config(cls.smoke, BUDGET[IPC.name])
        total = cls(config).iterations()
        assert total >= 2, f"{name}'s smoke settings need at least 2 iterations to test resume"
        half = total // 2
        straight, resumed = straight_and_resumed(cls, config, ds, BUDGET[IPC.name], lambda **kw: ctx(3, **kw),
                                                 tmp_path, half)
        assert resumed.info["resumed_from"] == half
        assert torch.equal(resumed.images, straight.images)
        assert resumed.info["loss_curve"] == straight.info["loss_curve"]


SCHEDULE_REFUSALS = [("epochs", 0), ("batch_size", 0), ("warmup_epochs", -1), ("lr", -0.1), ("momentum", -0.5),
                     ("weight_decay", -1e-4), ("lr_gamma", 0.0), ("lr_milestones", "ten"), ("lr_milestones", "10,-5")]


class TestTrainingTimeSelectors:
    capability = TrainingTimeSelector

    @pytest.mark.parametrize("field,value", SCHEDULE_REFUSALS)
    def test_refuse_a_bad_schedule_when_the_config_is_made(self, name, field, value):
        """One rule for the shared schedule, applied by make_config: before any data or flow exists."""
        cls = method_class(name)
        with pytest.raises(SmallsetError) as err:
            cls.make_config({**cls.smoke, field: value})
        assert err.value.option == field
        assert str(err.value).endswith(".") and "\n" not in str(err.value)
        cls.make_config({**cls.smoke, field: getattr(cls.config_cls(), field)})  # the default passes


def test_the_training_time_methods_share_the_schedule():
    assert {"crest", "infobatch", "random_steps"} <= set(methods_with(TrainingTimeSelector))
    assert all(issubclass(method_class(n).config_cls, TrainingSchedule) for n in methods_with(TrainingTimeSelector))


CONDENSER_REFUSALS = [("iterations", 0), ("lr_img", -0.1), ("lr_img", 0.0), ("init", "zeros"),
                      ("dsa_strategy", "colour_crop")]


@pytest.mark.parametrize("name,field,value", [
    (name, field, value) for name in methods_with(IterativeCondenser) for field, value in CONDENSER_REFUSALS
    if field in {f.name for f in dataclasses.fields(method_class(name).config_cls)}])
def test_condensers_refuse_a_bad_value_when_made_and_when_built_by_hand(name, field, value, ds):
    """make_config refuses before any flow starts; a config built by hand is refused by condense before
    any work (the same check_config)."""
    cls = method_class(name)
    with pytest.raises(SmallsetError) as err:
        cls.make_config({**cls.smoke, field: value}, BUDGET[IPC.name])
    assert err.value.option == field
    assert str(err.value).endswith(".") and "\n" not in str(err.value)
    good = cls.make_config(cls.smoke, BUDGET[IPC.name])
    with pytest.raises(SmallsetError) as err:
        cls(dataclasses.replace(good, **{field: value})).condense(ds, BUDGET[IPC.name], ctx())
    assert err.value.option == field


def test_a_bad_value_is_refused_on_the_command_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    err = refused_before_anything_runs(["prune", "--method", "infobatch", "--lr", "-1", "--no-progress"],
                                       tmp_path, monkeypatch, capsys)
    assert "lr" in err and "negative" in err


@pytest.mark.parametrize("argv,flag", [(["distill", "--method", "dm", "--lr-img", "-1"], "--lr-img"),
                                       (["distill", "--method", "mtt", "--dsa-strategy", "colour"], "--dsa-strategy")])
def test_a_bad_condenser_value_is_refused_on_the_command_line_before_anything_runs(argv, flag, tmp_path,
                                                                                    monkeypatch, capsys):
    assert flag in refused_before_anything_runs(argv + ["--no-progress"], tmp_path, monkeypatch, capsys)
