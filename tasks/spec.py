"""What a run will do, resolved and validated once: budgets, cells, output paths.

:func:`resolve_cell` is the one place where a method name, a budget, method options and the shared
:class:`~smallset.options.RunOptions` are checked and turned into a :class:`Cell` (the typed config is
built here, once) that the prepare, reduce, evaluate and record steps use as given. Everything it
checks needs no data, so the command line calls it before any flow or server starts; checks that need the
data (an ipc above the smallest class, label types) happen in the steps.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smallset.budget import BudgetUnit
from smallset.errors import SmallsetError
from smallset.options import RunOptions
from smallset.tasks.methods import method_class


@dataclass(frozen=True)
class Budget:
    """A reduction budget, given as a fraction of the source and/or images per class; a method reads it in
    its own unit (:class:`smallset.budget.BudgetUnit`: a fraction for selectors, ipc for condensers)."""

    fraction: float | None = None
    ipc: int | None = None

    def in_unit(self, unit: BudgetUnit, n_examples: int, n_classes: int) -> "Budget":
        """The same budget with ``unit``'s value filled in (matched on the number of images)."""
        if self.value(unit) is not None:
            return self
        value = unit.convert(self.fraction, self.ipc, n_examples, n_classes)
        return replace(self, **{unit.name: value})

    def value(self, unit: BudgetUnit) -> float | int | None:
        return getattr(self, unit.name)

    def label(self, unit: BudgetUnit) -> str:
        return unit.label(self.value(unit))


@dataclass
class Checkpointing:
    """Where a long condensation saves its state, and whether it resumes from it."""

    directory: str | None = None
    every: int = 0
    resume: bool = False


@dataclass
class Cell:
    """One resolved unit of work: a method with its typed config at a budget, and the run's options."""

    method: str
    kind: str
    budget: Budget
    config: Any
    options: RunOptions
    output: str | None = None
    checkpointing: Checkpointing = field(default_factory=Checkpointing)

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def unit(self) -> BudgetUnit:
        """How the cell's method counts its budget."""
        return method_class(self.method).budget_unit

    def budget_for(self, ds) -> Budget:
        """The cell's budget with its method's unit filled in for the dataset ``ds``."""
        return self.budget.in_unit(self.unit, len(ds), ds.num_classes)

    def method_instance(self):
        return method_class(self.method)(self.config)


def check_budget(unit: BudgetUnit, budget: Budget) -> Budget:
    """The budget's value in ``unit`` checked (when given; it may come from the other unit later)."""
    value = budget.value(unit)
    return budget if value is None else replace(budget, **{unit.name: unit.check(value)})


def check_options(options: RunOptions) -> None:
    """The checks of ``options`` that need the registries: model, evaluation models, protocol, device."""
    from smallset.models import MODELS, resolve_device
    from smallset.train import get_protocol

    for name in [options.model, *options.eval_models]:
        MODELS.get(name)
    get_protocol(options.protocol, augment=options.eval_augment, epochs=options.eval_epochs)
    resolve_device(options.device)


def check_output(output: str | None, option: str = "output") -> None:
    """An output path that can be written: not a directory or a device, inside a writable directory."""
    import os

    if not output:
        return
    path = Path(output)
    if path.is_dir():
        raise SmallsetError(f"{option} {output} is a directory; give a file name ending in .parquet.", option=option)
    if path.exists() and not path.is_file():
        raise SmallsetError(f"{option} {output} exists and is not a regular file; give a file name ending in "
                            f".parquet.", option=option)
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SmallsetError(f"{option} {output} is inside {probe}, which is a file, not a directory.", option=option)
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise SmallsetError(f"{option} {output} cannot be written: {probe} is not writable; choose a writable "
                            f"place.", option=option)


def _wrong_kind(method: str, actual: str) -> SmallsetError:
    what = "a distillation" if actual == "distill" else "a pruning"
    return SmallsetError(f"{method} is {what} method; run it with `smallset {actual}`.")


DEVICE_FORM = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(device: str) -> None:
    if not DEVICE_FORM.match(str(device)):
        raise SmallsetError(f"Unknown device {device!r}; use auto, cpu, cuda or cuda:N.")


def precheck_options(options: RunOptions) -> None:
    """:func:`check_options` as far as names go (the catalogue; no torch)."""
    from smallset.tasks import catalog

    for name in [options.model, *options.eval_models]:
        catalog.check_model(name)
    catalog.check_protocol(options.protocol)
    catalog.check_augmentation(options.eval_augment)
    check_device_name(options.device)


def precheck_cell(method: str, budget: Budget, options: RunOptions, overrides: dict | None = None, *,
                  kind: str | None = None, output: str | None = None) -> None:
    """:func:`resolve_cell`'s checks that need only names and values, from the catalogue
    (:mod:`smallset.tasks.catalog`) without importing torch: the command line's refusals in well under a
    second. The same sentences as :func:`resolve_cell`, which still runs (and checks the rest) before any
    work starts."""
    from smallset.tasks import catalog

    info = catalog.method_info(method)
    if kind is not None and info["kind"] != kind:
        raise _wrong_kind(method, info["kind"])
    from smallset.budget import BUDGET_UNITS

    check_budget(BUDGET_UNITS[info["budget_unit"]], budget)
    catalog.check_overrides(method, overrides)
    precheck_options(options)
    check_output(output)


def resolve_cell(method: str, budget: Budget, options: RunOptions, overrides: dict | None = None, *,
                 kind: str | None = None, output: str | None = None,
                 checkpointing: Checkpointing | None = None) -> Cell:
    """Validate everything about one cell that needs no data and build its typed config once.

    ``kind``, when given, is the kind the caller expects (``smallset prune`` runs selectors only).
    """
    cls = method_class(method)
    if kind is not None and cls.kind != kind:
        raise _wrong_kind(method, cls.kind)
    budget = check_budget(cls.budget_unit, budget)
    config = cls.make_config(overrides, cls.budget_unit.config_budget(budget.value(cls.budget_unit)))
    check_options(options)
    check_output(output)
    return Cell(method=method, kind=cls.kind, budget=budget, config=config, options=options, output=output,
                checkpointing=checkpointing or Checkpointing())


def check_source(source: str) -> None:
    """The source string's form and, for local paths, that they exist (no data is read)."""
    from smallset.tasks.catalog import check_source_type, source_takes_path

    if ":" not in source:
        raise SmallsetError(f"Source {source!r} has no type; write TYPE:ARGUMENT, e.g. parquet:data/train.parquet "
                            f"or builtin:mnist-mini.", option="source")
    kind, arg = source.split(":", 1)
    check_source_type(kind)
    if source_takes_path(kind) and not Path(arg).expanduser().exists():
        raise SmallsetError(f"No such file or directory: {arg}; give an existing path after {kind}:.", option="source")


def check_budget_fits(cell: Cell, ds) -> None:
    """The budget checks that need the data, before any preparation: a fraction must keep an example of
    every class, an ipc must not exceed the smallest class."""
    cell.unit.check_fits(cell.budget_for(ds).value(cell.unit), ds.class_counts())


def default_output(source_id: str, cell: Cell, out_dir: str | Path = "smallset-out") -> Path:
    """``OUT_DIR/<source>-<method>-<budget>-s<seed>.parquet``; only safe characters reach the file name."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", source_id.split(":", 1)[-1]).strip("-")[-40:] or "source"
    method = re.sub(r"[^A-Za-z0-9_-]+", "-", cell.method)
    b = cell.unit.slug(cell.budget.value(cell.unit))
    return Path(out_dir) / f"{slug}-{method}-{b}-s{cell.seed}.parquet"


def plan_cells(methods: list[str], budgets: list[Budget], seeds: list[int], options: RunOptions,
               params: dict[str, dict], n_examples: int, n_classes: int) -> list[Cell]:
    """Every method × budget × seed, each budget in its method's unit; duplicates after conversion dropped."""
    if not budgets:
        raise SmallsetError("A compare needs at least one budget: give fractions and/or ipcs.", option="fractions")
    for name in params:
        if name not in methods:
            raise SmallsetError(f"Options are given for {name}, which is not among the methods compared.")
    methods, params = with_training_baseline(methods, params)
    cells = []
    for method in methods:
        unit = method_class(method).budget_unit
        seen = set()
        for b in budgets:
            b = b.in_unit(unit, n_examples, n_classes)
            if b.value(unit) in seen:
                continue
            seen.add(b.value(unit))
            for seed in seeds:
                cells.append(resolve_cell(method, b, options.model_copy(update={"seed": seed}),
                                          params.get(method, {})))
    return cells


from smallset.comparison import TRAINING_BASELINE  # noqa: E402  (the comparison's baseline roles)


def training_methods(methods: list[str]) -> list[str]:
    """The training-time methods among ``methods``, their baseline excluded."""
    return [m for m in methods if getattr(method_class(m), "trains_model", False) and m != TRAINING_BASELINE]


def schedules_apart(methods: list[str], params: dict[str, dict]) -> str | None:
    """The warning a compare gets when a training-time method will not train on its baseline's schedule (it
    then gets no gain over random, tasks/results.py), or None. Compared by the values each trains with."""
    from smallset.prune._training import SCHEDULE_FIELDS

    methods, params = with_training_baseline(methods, params)
    trainers = training_methods(methods)
    if not trainers:
        return None
    schedules = {}  # method → its schedule: defaults and coerced overrides
    for m in [TRAINING_BASELINE, *trainers]:
        config = method_class(m).make_config({k: v for k, v in params.get(m, {}).items() if k in SCHEDULE_FIELDS})
        schedules[m] = {k: getattr(config, k) for k in SCHEDULE_FIELDS}
    base = schedules[TRAINING_BASELINE]
    apart = {m: [k for k in SCHEDULE_FIELDS if schedules[m][k] != base[k]] for m in trainers}
    apart = {m: keys for m, keys in apart.items() if keys}
    if not apart:
        return None
    m, keys = next(iter(apart.items()))
    differs = ", ".join(f"{k} {schedules[m][k]!r} vs {base[k]!r}" for k in keys)
    return (f"{', '.join(apart)} {'trains' if len(apart) == 1 else 'train'} on another schedule than "
            f"{TRAINING_BASELINE} ({m}: {differs}), so no gain over random is computed for "
            f"{'it' if len(apart) == 1 else 'them'}; give every training-time method the same schedule options to "
            f"compare them.")


def with_training_baseline(methods: list[str], params: dict[str, dict]) -> tuple[list[str], dict[str, dict]]:
    """A training-time method (CREST, InfoBatch) is judged against random subsets at its own step budget and
    schedule, not against a set retrained with the evaluation recipe: when one is compared, ``random_steps``
    joins with the schedule options the first such method was given (the fields both configs share)."""
    from smallset.prune._training import SCHEDULE_FIELDS

    trainers = training_methods(methods)
    if trainers and TRAINING_BASELINE not in methods:
        options = {k: v for k, v in params.get(trainers[0], {}).items() if k in SCHEDULE_FIELDS}
        methods, params = [*methods, TRAINING_BASELINE], {**params, TRAINING_BASELINE: options}
    return methods, params
