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

A method's budget is counted in :attr:`Method.budget_unit`: ``fraction`` of the source for selectors,
``ipc`` (images per class) for condensers. :attr:`Method.demo` holds the small settings ``smallset
demo`` runs it with on a CPU, :attr:`Method.smoke` the tiniest settings the contract tests run it with. Adding a method is one module in prune/ or distill/ (see
docs/adding-a-method.md); the registries pick it up on import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from smallset.config import NoConfig, coerce_config, config_to_dict, prepare_params
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.registry import Registry
from smallset.train import Protocol, get_protocol


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
    budget_unit: ClassVar[str] = ""  # "fraction" or "ipc"
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
        """Raise a one-sentence :class:`SmallsetError` naming the first bad field (value ranges the types
        cannot say); methods with such constraints override it and call it again before they run."""

    def params(self) -> dict:
        return config_to_dict(self.config)

    def prepare_params(self) -> dict:
        return prepare_params(self.config)

    # --- the two phases --------------------------------------------------------------------------
    @classmethod
    def has_prepare(cls) -> bool:
        return cls.prepare is not Method.prepare

    def prepare(self, ds: ImageDataset, ctx: RunContext) -> Any:
        """Budget-independent, cacheable work; ``None`` when the method needs none."""
        return None

    def reduce(self, ds: ImageDataset, budget: float | int, ctx: RunContext, prepared: Any = None) -> Reduction:
        raise NotImplementedError

    # --- optional: memory beyond training ctx.model on mini-batches --------------------------------
    # The config fields that lower extra_memory_bytes, named when a run is refused for memory.
    memory_options: ClassVar[tuple[str, ...]] = ()
    # True when extra_memory_bytes models ALL of the method's working memory (its real batches and their
    # activations, e.g. the condensers of docs/methods/condenser-memory.md): the pre-run estimate then adds
    # no generic training batch for it.
    models_working_memory: ClassVar[bool] = False

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


def register_method(registry: Registry, name: str):
    """Class decorator: set the method's name and add it to ``registry``."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        return registry.register(name)(cls)

    return deco
