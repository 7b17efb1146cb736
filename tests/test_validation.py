"""One declaration, one validator: a method option's type, choices and range are declared once, on its config
field (``smallset.config.option``), and checked by one function (``smallset.config.check_field``) on both
paths: ``Method.make_config`` (the registries, torch loaded) and the catalogue's precheck
(``smallset.tasks.catalog.check_overrides``, no torch). Every registered method is covered without a list to
keep: a new option with a range is tested here as soon as it is declared."""
import dataclasses
import json
import math
import subprocess
import sys

import pytest

from smallset.config import check_config_fields, field_specs, option, range_of, range_words
from smallset.errors import SmallsetError
from smallset.tasks import catalog
from smallset.tasks.methods import all_methods, method_class

from helpers import refused_before_anything_runs

# Options whose boundary value is only accepted together with another option (a rule between options that
# the method's check_config adds to the declared ranges).
COMPANIONS = {
    ("mtt", "train_epochs"): {"max_start_epoch": 1, "expert_epochs": 1},
    ("mtt", "max_start_epoch"): {"min_start_epoch": 0},
    ("cafe", "max_outer_steps"): {"watch_window": 2},
    ("cafe", "max_inner_epochs"): {"watch_window": 2},
}


def _step(value, spec, direction: int):
    """The neighbour of ``value`` in ``direction`` (+1 up, -1 down) in the field's type."""
    if spec["type"] == "int":
        return value + direction
    return math.nextafter(value, direction * math.inf)


def outside_and_inside(spec: dict) -> list[tuple[str, object, object]]:
    """For each bound of ``spec``: (bound, the value just outside it, the value at the boundary inside)."""
    out = []
    for bound, b in range_of(spec).items():
        if bound == "ge":
            out.append((bound, _step(b, spec, -1), b))
        elif bound == "gt":
            out.append((bound, b, _step(b, spec, +1)))
        elif bound == "le":
            out.append((bound, _step(b, spec, +1), b))
        else:
            out.append((bound, b, _step(b, spec, -1)))
    return out


CASES = [(name, spec["name"], bound, bad, good)
         for name in all_methods() for spec in field_specs(method_class(name).config_cls)
         for bound, bad, good in outside_and_inside(spec)]


def test_the_cases_cover_every_kind_of_bound_and_both_kinds_of_method():
    assert {bound for _, _, bound, _, _ in CASES} == {"ge", "gt", "le", "lt"}
    assert {method_class(name).kind for name, *_ in CASES} == {"prune", "distill"}
    assert len(CASES) > 80


@pytest.mark.parametrize("name,field,bound,bad,good", CASES, ids=[f"{c[0]}.{c[1]}.{c[2]}" for c in CASES])
def test_a_value_just_outside_a_declared_range_is_refused_by_both_paths_with_the_same_sentence(
        name, field, bound, bad, good):
    cls = method_class(name)
    with pytest.raises(SmallsetError) as made:
        cls.make_config({**cls.smoke, field: bad})
    with pytest.raises(SmallsetError) as prechecked:
        catalog.check_overrides(name, {field: bad})
    assert str(made.value) == str(prechecked.value)
    assert made.value.option == prechecked.value.option == field
    sentence = str(made.value)
    assert sentence.startswith(f"{field} ") and "; got " in sentence and sentence.endswith(".")
    assert "\n" not in sentence
    # a config built by hand is refused by the same check before the method runs
    by_hand = dataclasses.replace(cls.make_config(cls.smoke), **{field: bad})
    with pytest.raises(SmallsetError) as checked:
        cls.check_config(by_hand)
    assert str(checked.value) == sentence and checked.value.option == field


@pytest.mark.parametrize("name,field,bound,bad,good", CASES, ids=[f"{c[0]}.{c[1]}.{c[2]}" for c in CASES])
def test_the_value_at_the_boundary_inside_is_accepted_by_both_paths(name, field, bound, bad, good):
    cls = method_class(name)
    companions = COMPANIONS.get((name, field), {})
    catalog.check_overrides(name, {**companions, field: good})
    config = cls.make_config({**cls.smoke, **companions, field: good})
    assert getattr(config, field) == good


@pytest.mark.parametrize("name", all_methods())
def test_the_catalogue_and_the_registry_agree_on_every_option(name):
    """Type, choices, range, help and default of every option: the catalogue is the declarations serialised."""
    declared = json.loads(json.dumps([dict(s) for s in field_specs(method_class(name).config_cls)]))
    assert catalog.method_info(name)["fields"] == declared
    assert [f.name for f in dataclasses.fields(method_class(name).config_cls)] == [f["name"] for f in declared]


@pytest.mark.parametrize("name", all_methods())
def test_every_range_is_on_a_number_and_holds_the_defaults(name):
    cls = method_class(name)
    for spec in field_specs(cls.config_cls):
        if range_of(spec):
            assert spec["type"] in ("int", "float"), spec
    check_config_fields(cls.config_cls(), name)
    for budget in (1, 10, 50, 100):  # condensers' per-ipc defaults
        cls.check_config(cls.default_config(budget))


def _declared_classes():
    seen = {}
    for name in all_methods():
        for klass in method_class(name).config_cls.__mro__:
            if dataclasses.is_dataclass(klass):
                seen[klass.__qualname__] = klass
    return sorted(seen.values(), key=lambda k: k.__qualname__)


@pytest.mark.parametrize("config_cls", _declared_classes(), ids=lambda k: k.__qualname__)
def test_a_field_declared_again_in_a_subclass_keeps_its_range(config_cls):
    """InfoBatch redeclares the schedule's epochs with its own help, EL2N the scoring runs' epochs…: the range
    must come along, or the subclass silently accepts what the base refuses."""
    own = {s["name"]: s for s in field_specs(config_cls)}
    for base in config_cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            for spec in field_specs(base):
                assert range_of(own[spec["name"]]) == range_of(spec), (config_cls.__name__, spec["name"])


@pytest.mark.parametrize("bounds,words", [
    ({"gt": 0}, "must be positive"), ({"ge": 0}, "cannot be negative"), ({"ge": 2}, "must be at least 2"),
    ({"gt": 1}, "must be greater than 1"), ({"le": 5}, "must be at most 5"), ({"lt": 2.5}, "must be less than 2.5"),
    ({"ge": 0, "lt": 1}, "must lie in [0, 1)"), ({"gt": 0, "le": 1}, "must lie in (0, 1]"),
    ({"ge": 0, "le": 1.0}, "must lie in [0, 1]"), ({"gt": 0, "lt": 1}, "must lie in (0, 1)")])
def test_the_range_sentences(bounds, words):
    assert range_words(bounds) == words


def test_nan_and_wrong_types_never_pass_a_range():
    from smallset.config import check_field

    spec = {"name": "lr", "type": "float", "gt": 0}
    for bad in (float("nan"), "nan", "x"):
        with pytest.raises(SmallsetError) as e:
            check_field("m", spec, bad)
        assert e.value.option == "lr"
    assert check_field("m", spec, "0.5") == 0.5
    with pytest.raises(SmallsetError, match="lr must be positive; got 0.0."):
        check_field("m", spec, 0)


def test_a_declaration_is_refused_when_it_cannot_be_checked():
    with pytest.raises(TypeError):
        option(1, "two lower bounds", ge=0, gt=0)

    @dataclasses.dataclass
    class Bad:
        name: str = option("a", "a range on text", ge=1)

    with pytest.raises(TypeError, match="range needs an int or float"):
        field_specs(Bad)


def test_the_declarations_and_their_check_need_no_torch():
    code = ("import sys; import smallset.config, smallset.tasks.catalog; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- compare's lists go through the checks of one value --------------------------------------------------------
@pytest.mark.parametrize("argv,line", [
    (["--fractions", "0.5,0"], "--fractions must lie in (0, 1]; got 0.0."),
    (["--fractions", "1.5"], "--fractions must lie in (0, 1]; got 1.5."),
    (["--ipcs", "1,0"], "--ipcs must be a whole number of at least 1; got 0."),
    (["--ipcs", "1", "--seeds", "0,-1"], "--seeds: Input should be greater than or equal to 0; got -1."),
    (["--ipcs", "1", "--seeds", str(2 ** 63)], "--seeds: Input should be less than"),
    (["--ipcs", "1", "--seeds", ","], "--seeds needs at least one seed"),
    (["--ipcs", "1", "--methods", "dm", "--set", "dm.batch_real=0"], "--batch-real must be at least 1; got 0."),
])
def test_compare_refuses_a_bad_list_value_with_the_single_value_sentence(argv, line, tmp_path, monkeypatch, capsys):
    err = refused_before_anything_runs(["compare", *argv], tmp_path, monkeypatch, capsys)
    assert err.startswith(f"smallset: error: {line}"), err
