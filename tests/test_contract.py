"""The method contract, checked for every registered selector and condenser (no list to keep up to date:
a new registry entry is picked up here). Each method runs on a tiny dataset with its ``smoke`` settings,
through the same prepare → reduce path the pipeline uses, and must write a valid Parquet file that reads
back exactly, give the same set for the same seed and (condensers) resume exactly after an interruption."""
import dataclasses

import pytest
import torch

from smallset import store
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.method import Method, Reduction
from smallset.prune._training import TrainingSchedule
from smallset.tasks.methods import all_methods, method_class
from helpers import refused_before_anything_runs, straight_and_resumed

pytestmark = pytest.mark.usefixtures("one_thread")

BUDGET = {"prune": 0.5, "distill": 2}


def ctx(seed: int = 0, **kw) -> RunContext:
    return RunContext(seed=seed, model="convnet-s", model_kwargs={"width": 8}, **kw)


def run(name: str, ds: ImageDataset, seed: int = 0, **ctx_kw) -> Reduction:
    cls = method_class(name)
    method = cls(cls.make_config(cls.smoke, BUDGET[cls.kind]))
    c = ctx(seed, **ctx_kw)
    prepared = method.prepare(ds, c) if cls.has_prepare() else None
    return method.reduce(ds, BUDGET[cls.kind], c, prepared)


@pytest.fixture(scope="module")
def ds(request):
    from helpers import make_tiny_dataset

    return make_tiny_dataset(n_per_class=6, num_classes=3, size=8)


def test_every_method_follows_the_naming_rule():
    for name in all_methods():
        cls = method_class(name)
        assert issubclass(cls, Method) and cls.name == name
        suffix = "Selector" if cls.kind == "prune" else "Condenser"
        assert cls.__name__.endswith(suffix), cls.__name__
        assert cls.config_cls.__name__.endswith("Config"), cls.config_cls.__name__
        assert cls.budget_unit == {"prune": "fraction", "distill": "ipc"}[cls.kind]
        cls.make_config(cls.demo)  # the demo settings name real options
        cls.make_config(cls.smoke)


@pytest.mark.parametrize("name", all_methods())
def test_reduces_writes_valid_parquet_and_is_deterministic(name, ds, tmp_path):
    cls = method_class(name)
    out = run(name, ds, seed=1)
    red = out.dataset
    assert len(red) > 0 and red.classes == ds.classes and red.image_size == ds.image_size
    assert torch.isfinite(red.images).all() and torch.isfinite(red.effective_weights()).all()
    if cls.kind == "distill":
        assert red.class_counts() == [BUDGET["distill"]] * ds.num_classes
        assert (red.source_index == -1).all()
    else:
        assert ((red.source_index >= 0) & (red.source_index < len(ds))).all()
        assert torch.equal(red.images, ds.images[red.source_index])
    meta = store.build_metadata(red, method=name, kind=cls.kind, params=cls().params(), seed=1, source="tiny",
                                source_digest=ds.digest, protocol="quick")
    path = store.write_reduced(red, tmp_path / f"{name}.parquet", meta)
    back = store.read_reduced(path)
    assert back.same_content(red) and store.read_metadata(path)["method"] == name
    again = run(name, ds, seed=1).dataset
    assert again.same_content(red), f"{name}: the same seed gave a different set"


@pytest.mark.parametrize("name", [n for n in all_methods() if method_class(n).has_prepare()])
def test_preparation_is_cacheable(name, ds):
    """The prepared value is a pure function of its key: recomputed, it is equal, and reduce gives the same
    set whether it prepares itself or is handed the prepared value."""
    cls = method_class(name)
    method = cls(cls.make_config(cls.smoke))
    a, b = method.prepare(ds, ctx(2)), method.prepare(ds, ctx(2))
    if dataclasses.is_dataclass(a) or isinstance(a, dict):  # a handle to an artefact on disk (MTT's experts)
        assert a == b
    else:
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    assert method.prepare_params(), f"{name} prepares but marks no config field prepare=True"
    handed = method.reduce(ds, BUDGET[cls.kind], ctx(2), a).dataset
    own = method.reduce(ds, BUDGET[cls.kind], ctx(2)).dataset
    assert handed.same_content(own)


@pytest.mark.parametrize("name", [n for n in all_methods() if method_class(n).kind == "distill"])
def test_condenser_resumes_exactly(name, ds, tmp_path):
    cls = method_class(name)
    config = cls.make_config(cls.smoke, BUDGET["distill"])
    total = cls(config).iterations()
    assert total >= 2, f"{name}'s smoke settings need at least 2 iterations to test resume"
    half = total // 2
    straight, resumed = straight_and_resumed(cls, config, ds, BUDGET["distill"], lambda **kw: ctx(3, **kw),
                                             tmp_path, half)
    assert resumed.info["resumed_from"] == half
    assert torch.equal(resumed.images, straight.images)
    assert resumed.info["loss_curve"] == straight.info["loss_curve"]


TRAINING_TIME = [n for n in all_methods() if issubclass(method_class(n).config_cls, TrainingSchedule)]


@pytest.mark.parametrize("name", TRAINING_TIME)
@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 0), ("warmup_epochs", -1), ("lr", -0.1),
                                         ("momentum", -0.5), ("weight_decay", -1e-4), ("lr_gamma", 0.0),
                                         ("lr_milestones", "ten"), ("lr_milestones", "10,-5")])
def test_training_time_methods_refuse_a_bad_schedule_when_the_config_is_made(name, field, value):
    """One rule for the shared schedule, applied by make_config: before any data or flow exists."""
    cls = method_class(name)
    with pytest.raises(SmallsetError) as err:
        cls.make_config({**cls.smoke, field: value})
    assert err.value.option == field
    assert str(err.value).endswith(".") and "\n" not in str(err.value)
    cls.make_config({**cls.smoke, field: getattr(cls.config_cls(), field)})  # the default passes


def test_the_training_time_methods_share_the_schedule():
    assert {"crest", "infobatch", "random_steps"} <= set(TRAINING_TIME)


CONDENSERS = [n for n in all_methods() if method_class(n).kind == "distill"]
CONDENSER_REFUSALS = [("iterations", 0), ("lr_img", -0.1), ("lr_img", 0.0), ("init", "zeros"),
                      ("dsa_strategy", "colour_crop")]


@pytest.mark.parametrize("name,field,value", [
    (name, field, value) for name in CONDENSERS for field, value in CONDENSER_REFUSALS
    if field in {f.name for f in dataclasses.fields(method_class(name).config_cls)}])
def test_condensers_refuse_a_bad_value_when_the_config_is_made_and_when_built_by_hand(name, field, value, ds):
    """make_config refuses before any flow starts; a config built by hand is refused by condense before
    any work (the same check_config)."""
    cls = method_class(name)
    with pytest.raises(SmallsetError) as err:
        cls.make_config({**cls.smoke, field: value}, BUDGET["distill"])
    assert err.value.option == field
    assert str(err.value).endswith(".") and "\n" not in str(err.value)
    good = cls.make_config(cls.smoke, BUDGET["distill"])
    with pytest.raises(SmallsetError) as err:
        cls(dataclasses.replace(good, **{field: value})).condense(ds, BUDGET["distill"], ctx())
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
