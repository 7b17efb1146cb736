"""The pipeline's steps as plain functions (no Prefect): prepare, reduce, evaluate.

Each takes a resolved :class:`~smallset.tasks.spec.Cell` and uses it as given. :mod:`smallset.tasks.record`
writes and logs the result; :mod:`smallset.tasks.prefect_tasks` wraps these in Prefect tasks; tests call
them directly. Nothing here branches on the method's kind: the method contract
(:mod:`smallset.method`) hides it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smallset.context import RunContext
from smallset.data import ImageDataset, Source
from smallset.method import Prepared, Reduction
from smallset.models import resolve_device
from smallset.tasks.spec import Cell, check_budget_fits
from smallset.train import EvalResult, Protocol, evaluate, get_protocol


def device_for(cell: Cell) -> torch.device:
    from smallset.tasks.runners import placed_device

    return resolve_device(placed_device(cell.options.device))


def context_for(cell: Cell, test: ImageDataset | None) -> RunContext:
    ck = cell.checkpointing
    return RunContext(
        seed=cell.seed, device=device_for(cell), model=cell.options.model,
        model_kwargs=dict(cell.options.model_kwargs), progress=cell.options.progress, test=test,
        checkpoint_dir=Path(ck.directory) if ck.directory else None, checkpoint_every=ck.every, resume=ck.resume,
    )


# --- prepare (the cacheable, budget-independent phase) ---------------------------------------------
def prepare_key(cell: Cell, ds: ImageDataset) -> dict:
    """What a method's preparation depends on; equal keys share one cached preparation."""
    cls = type(cell.method_instance())
    return {
        "method": cell.method,
        "digest": ds.digest,
        "normalization": [list(ds.mean), list(ds.std)],  # scores and features live in the normalised space
        "model": cell.options.model if cls.uses_model else None,
        "model_kwargs": cell.options.model_kwargs if cls.uses_model else None,
        "seed": cell.seed,
        "prepare_params": cell.method_instance().prepare_params(),
        "device": device_for(cell).type,
    }


def needs_prepare(cell: Cell) -> bool:
    return type(cell.method_instance()).has_prepare()


def prepare(cell: Cell, ds: ImageDataset) -> tuple[Prepared | None, float]:
    """(the prepared state, seconds); (None, 0) for methods without a preparation phase."""
    method = cell.method_instance()
    if not method.has_prepare():
        return None, 0.0
    check_budget_fits(cell, ds)
    t0 = time.perf_counter()
    prepared = method.prepare(ds, context_for(cell, None))
    return prepared.to_cpu(), time.perf_counter() - t0


# --- reduce ---------------------------------------------------------------------------------------
@dataclass
class Reduced:
    dataset: ImageDataset
    params: dict
    seconds: float  # reduction time, the preparation included
    info: dict
    scores: Any = None
    prepare_seconds: float = 0.0


def preflight(cell: Cell, ds: ImageDataset, what: str, budget: float | int | None = None) -> None:
    """Print the memory/time estimate of the coming work and refuse it when it cannot fit (unless forced).
    With the method's ``budget`` the method's own memory (``Method.extra_memory_bytes``) is added."""
    import sys

    from smallset import estimate

    method = cell.method_instance()
    own = method.extra_memory_bytes(ds, budget, context_for(cell, None)) if budget is not None else 0
    # A method whose own model covers its working memory (DM, DC, DSA, CAFE: docs/methods/condenser-memory.md)
    # adds no generic batch; other condensers are assumed to hold a 256-image real batch per class.
    whole = budget is not None and type(method).models_working_memory
    extra = 0 if whole else type(method).assumed_real_batch_per_class * ds.num_classes
    est = estimate.estimate_training(ds, cell.options.model, cell.options.model_kwargs, 0 if whole else 256,
                                     device_for(cell), extra_images=extra, extra_bytes=own)
    sys.stderr.write(f"[smallset] {what}: {est.describe()}\n")
    estimate.check(est, cell.options.force, lower=type(method).memory_options if own else ())


def reduce(cell: Cell, source: Source, prepared: Prepared | None = None, prepare_seconds: float = 0.0) -> Reduced:
    """Run the cell's method on the source's training split at the cell's budget, from the prepared state
    (whose run information becomes part of the reduction's)."""
    ds = source.train
    check_budget_fits(cell, ds)
    budget = cell.budget_for(ds)
    preflight(cell, ds, f"{cell.method} {budget.label(cell.unit)}", budget.value(cell.unit))
    method = cell.method_instance()
    t0 = time.perf_counter()
    out: Reduction = method.reduce(ds, budget.value(cell.unit), context_for(cell, source.test), prepared)
    seconds = time.perf_counter() - t0 + prepare_seconds
    return Reduced(out.dataset, method.params(), seconds, dict(out.info), out.scores, prepare_seconds)


def recipe_for(cell: Cell, reduced: ImageDataset, info: dict | None = None) -> Protocol:
    """The evaluation recipe of a cell: the shared one (``--protocol``/``--eval-augment``, the same for every
    reduced set) or, with ``eval_recipe="paper"`` and a reduction's ``info``, the method's paper recipe.
    ``dsa`` without a strategy means the reference's strategy for the recognised dataset."""
    from dataclasses import replace

    from smallset.augment import default_strategy

    opts = cell.options
    if opts.eval_recipe == "paper" and info is not None:
        protocol = cell.method_instance().paper_recipe(reduced.dataset_key, reduced.channels, info)
        return replace(protocol, epochs=opts.eval_epochs, min_steps=0) if opts.eval_epochs else protocol
    augment = opts.eval_augment
    if augment == "dsa":
        augment = f"dsa:{default_strategy(reduced.channels, reduced.dataset_key)}"
    return get_protocol(opts.protocol, augment=augment, epochs=opts.eval_epochs)


def evaluate_reduced(cell: Cell, reduced: ImageDataset, test: ImageDataset | None,
                     eval_model: str | None = None, info: dict | None = None) -> EvalResult:
    """The cell's evaluation recipe (:func:`recipe_for`) on one evaluation model (default: the cell's first)."""
    opts = cell.options
    protocol = recipe_for(cell, reduced, info)
    name = eval_model or opts.evaluation_models()[0]
    kwargs = opts.model_kwargs if name == opts.model else {}
    return evaluate(reduced, test, name, protocol, runs=opts.eval_runs, seed=cell.seed,
                    device=device_for(cell), model_kwargs=kwargs, progress=opts.progress)
