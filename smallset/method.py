"""The one contract every reduction method follows, selectors and condensers alike.

A method has a typed config (a dataclass whose fields carry the paper's defaults, see
:mod:`smallset.config`) and two phases:

- :meth:`Method.prepare` — the expensive part that does not depend on the budget (per-example scores,
  features, expert trajectories, a teacher). The pipeline caches its result on (method, source digest,
  model when :attr:`Method.uses_model`, seed, device type, and the config fields declared with
  ``option(..., prepare=True)``), so a compare over many budgets prepares once. Methods that need no
  preparation keep the default, which returns ``None`` and is skipped.
- :meth:`Method.reduce` — the budgeted reduction: a :class:`Reduction` holding the reduced
  :class:`~smallset.data.ImageDataset` (real rows with weights, or synthetic images) and what the method
  measured along the way.

A method's budget is counted in its :attr:`Method.budget_unit` (:mod:`smallset.budget`): ``FRACTION`` of the
source for selectors, ``IPC`` (images per class) for condensers. :attr:`Method.demo` holds the small settings
``smallset demo`` runs it with on a CPU, :attr:`Method.smoke` the tiniest settings the contract tests run it
with. Adding a method is one module in prune/ or distill/ (see docs/adding-a-method.md); the registries pick
it up on import. Capabilities are base classes: :class:`PreparesInUnits` here, ``Selector``,
``Condenser`` and ``IterativeCondenser`` in prune/ and distill/.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from smallset.budget import BudgetUnit
from smallset.config import NoConfig, check_config_fields, coerce_config, config_to_dict, prepare_params
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.registry import Registry
from smallset.train import Protocol, get_protocol


@dataclass
class Prepared:
    """The state :meth:`Method.prepare` returns and :meth:`Method.reduce` consumes (coreax's
    ``reduce(dataset, state)``): a value the pipeline caches, logs and ships between processes. Nothing
    lives on the method instance between the two phases.

    ``units`` holds the results of the independent units the state was combined from (one per scoring run,
    expert…, in unit order; empty for a preparation that is one piece), so that they can be cached and
    scheduled one by one (:class:`PreparesInUnits`)."""

    value: Any = None  # what reduce needs: scores or features (CPU tensors), or a handle to files on disk
    info: dict[str, Any] = field(default_factory=dict)  # what the preparation measured; logged with each set
    units: tuple[Any, ...] = ()

    def to_cpu(self) -> "Prepared":
        """The same state with tensors on the CPU (what the cache stores)."""
        def cpu(v):
            return v.cpu() if isinstance(v, torch.Tensor) else v

        return Prepared(cpu(self.value), dict(self.info), tuple(cpu(u) for u in self.units))


@dataclass
class Reduction:
    """What :meth:`Method.reduce` returns."""

    dataset: ImageDataset  # the reduced set, pixel scale (real rows keep source_index; synthetic rows −1)
    info: dict[str, Any] = field(default_factory=dict)  # metrics, curves, counters the method measured
    scores: torch.Tensor | None = None  # one float per source row, for ranking selectors (report histograms)


class Method:
    """Base of selectors (:class:`smallset.prune.base.Selector`) and condensers
    (:class:`smallset.distill.base.Condenser`)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "prune" or "distill"
    budget_unit: ClassVar[BudgetUnit]  # how the budget is counted (smallset.budget.FRACTION or IPC)
    config_cls: ClassVar[type] = NoConfig
    uses_model: ClassVar[bool] = False  # prepare() depends on ctx.model: the cache key then includes it
    demo: ClassVar[dict[str, Any]] = {}  # config overrides for `smallset demo` (CPU-sized)
    # The tiniest settings that still run every code path (the contract tests, tests/test_contract.py).
    smoke: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.config_cls()

    # --- configs ---------------------------------------------------------------------------------
    @classmethod
    def default_config(cls, budget: float | int | None = None) -> Any:
        """The paper's defaults (condensers: for this ipc)."""
        return cls.config_cls()

    @classmethod
    def make_config(cls, overrides: dict | None = None, budget: float | int | None = None) -> Any:
        """The paper's defaults for ``budget`` with ``overrides`` coerced to the fields' types and checked as a
        whole by :meth:`check_config`, so that a bad value is refused before any flow starts."""
        config = coerce_config(cls.name, cls.config_cls, overrides, base=cls.default_config(budget))
        cls.check_config(config)
        return config

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Every field against its declaration (type, choices, ``option(ge=…, gt=…, le=…, lt=…)`` range:
        :func:`smallset.config.check_config_fields`, the check the torch-free catalogue makes too); the first
        bad field raises one :class:`SmallsetError` sentence naming it. A method overrides this only for what
        one field's declaration cannot say (rules between fields, strings to parse), calling ``super()``
        first; methods call it again on a config built by hand before they run."""
        check_config_fields(config, cls.name)

    def params(self) -> dict:
        return config_to_dict(self.config)

    def prepare_params(self) -> dict:
        return prepare_params(self.config)

    # --- the two phases --------------------------------------------------------------------------
    @classmethod
    def has_prepare(cls) -> bool:
        return cls.prepare is not Method.prepare

    def prepare(self, ds: ImageDataset, ctx: RunContext) -> Prepared | None:
        """Budget-independent, cacheable work as a :class:`Prepared` state; ``None`` when the method needs
        none."""
        return None

    def reduce(self, ds: ImageDataset, budget: float | int, ctx: RunContext,
               prepared: Prepared | None = None) -> Reduction:
        """The reduced set at ``budget`` from the state :meth:`prepare` returned (prepared here when
        ``None``); the state's ``info`` is part of the reduction's ``info``."""
        raise NotImplementedError

    def state_for(self, ds: ImageDataset, ctx: RunContext, prepared: Prepared | None) -> Prepared:
        """``prepared``, or the preparation run now when none was handed in (an empty state when the method
        has no preparation)."""
        if prepared is None:
            prepared = self.prepare(ds, ctx) if self.has_prepare() else None
        if prepared is not None and not isinstance(prepared, Prepared):
            raise TypeError(f"{self.name}: prepare() must return a Prepared state, not {type(prepared).__name__}")
        return prepared if prepared is not None else Prepared()

    # --- optional: memory beyond training ctx.model on mini-batches --------------------------------
    # The config fields that lower extra_memory_bytes, named when a run is refused for memory.
    memory_options: ClassVar[tuple[str, ...]] = ()
    # True when extra_memory_bytes models ALL of the method's working memory (its real batches and their
    # activations, e.g. the condensers of docs/methods/condenser-memory.md): the pre-run estimate then adds
    # no generic training batch for it.
    models_working_memory: ClassVar[bool] = False
    # Real images per class the pre-run estimate assumes the method holds at once when it does not model its
    # working memory itself (condensers: a 256-image real batch per class).
    assumed_real_batch_per_class: ClassVar[int] = 0

    def extra_memory_bytes(self, ds: ImageDataset, budget: float | int, ctx: RunContext) -> int:
        """Bytes the method holds at its peak beyond what training ``ctx.model`` on mini-batches needs
        (e.g. MTT's unrolled inner loop); the pre-run estimate adds them. Default: none."""
        return 0

    # --- evaluation --------------------------------------------------------------------------------
    def paper_recipe(self, dataset_key: str | None, channels: int, info: dict) -> Protocol:
        """The evaluation recipe the method's paper reports its numbers with (``--eval-recipe paper``),
        for the recognised dataset ``dataset_key`` (None: unknown data) and what :meth:`reduce` measured.
        Default: DeepCore's coreset evaluation (200 epochs, SGD 0.1, cosine; crop+flip on colour images)."""
        return get_protocol("deepcore", augment="crop_flip" if channels == 3 else None)


class PreparesInUnits(Method):
    """Capability: a preparation made of independent units (one scoring run, one expert, a teacher), combined
    when all are done. A unit's result depends only on the data, the context's seed and the unit's index,
    never on the order or the place it ran, so units can be cached and run one by one; :meth:`prepare` runs
    them in order here. The contract tests (tests/test_contract.py) check that any order gives the same
    state."""

    def unit_count(self) -> int:
        """How many independent units the preparation has (from the config)."""
        raise NotImplementedError

    def run_unit(self, ds: ImageDataset, ctx: RunContext, index: int) -> Any:
        """Unit ``index``'s result (CPU tensors or plain values)."""
        raise NotImplementedError

    def combine(self, ds: ImageDataset, ctx: RunContext, units: list[Any]) -> Prepared:
        """The state from every unit's result, in unit order."""
        raise NotImplementedError

    def prepare(self, ds: ImageDataset, ctx: RunContext) -> Prepared:
        return self.combine(ds, ctx, [self.run_unit(ds, ctx, i) for i in range(self.unit_count())])


def register_method(registry: Registry, name: str):
    """Class decorator: set the method's name and add it to ``registry``."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        return registry.register(name)(cls)

    return deco
