"""The pipeline's steps as plain functions (no Prefect): build a method, reduce, evaluate, write, log.

:mod:`tasks.prefect_tasks` wraps these in Prefect tasks; tests call them directly.
"""
from __future__ import annotations

import math
import re
import tempfile
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smallset import store, tracking
from smallset.context import RunContext
from smallset.data import ImageDataset, Source, load_source
from smallset.errors import SmallsetError
from smallset.models import MODELS, resolve_device
from smallset.train import EvalResult, PROTOCOLS, evaluate, get_protocol

KINDS = ("prune", "distill")


def registries():
    from smallset import distill
    from smallset import prune

    return {"prune": prune.SELECTORS, "distill": distill.CONDENSERS}


def method_kind(name: str) -> str:
    """``prune`` or ``distill`` for a registered method name; unknown names list every method."""
    regs = registries()
    for kind, reg in regs.items():
        if name in reg:
            return kind
    known = ", ".join(f"{n} ({k})" for k, reg in regs.items() for n in reg.names())
    raise SmallsetError(f"Unknown method {name!r}; known methods: {known}.")


def method_class(name: str):
    return registries()[method_kind(name)].get(name)


def all_methods() -> list[str]:
    return [n for reg in registries().values() for n in reg.names()]


def coerce_config(method: str, overrides: dict | None, ipc: int | None = None):
    """The method's typed config with the paper's defaults (per ipc for condensers) and ``overrides``."""
    cls = method_class(method)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    names = {f.name: f for f in fields(cls.config_cls)}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise SmallsetError(
            f"Method {method!r} has no option {', '.join(unknown)}; its options are: {', '.join(names) or 'none'}."
        )
    if cls.kind == "distill" and ipc is not None:
        config = cls.config_for_ipc(ipc)
    else:
        config = cls.config_cls()
    hints = typing.get_type_hints(cls.config_cls)
    for k, v in overrides.items():
        setattr(config, k, _coerce(method, k, v, hints.get(k)))
    return config


def _coerce(method: str, key: str, value: Any, hint) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise SmallsetError(f"--{key.replace('_', '-')} for {method} must be one of {', '.join(map(str, choices))}.")
        return value
    try:
        if hint is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if hint in (int, float, str, bool):
            return hint(value)
        if isinstance(value, str):  # a list or tuple option given on the command line as JSON, e.g. [60,120]
            import json

            parsed = json.loads(value)
            return tuple(parsed) if typing.get_origin(hint) is tuple and isinstance(parsed, list) else parsed
    except (TypeError, ValueError):
        raise SmallsetError(f"--{key.replace('_', '-')} for {method} must be a {getattr(hint, '__name__', hint)}"
                            f" (lists as JSON, e.g. [1,2]), not {value!r}.") from None
    return value


def check_model(name: str) -> str:
    MODELS.get(name)
    return name


@dataclass
class Budget:
    """A reduction budget: a fraction of the source for pruning, images per class for distillation."""

    fraction: float | None = None
    ipc: int | None = None

    def for_kind(self, kind: str, ds: ImageDataset) -> "Budget":
        n, c = len(ds), ds.num_classes
        if kind == "prune" and self.fraction is None:
            return Budget(fraction=min(1.0, self.ipc * c / n), ipc=self.ipc)
        if kind == "distill" and self.ipc is None:
            return Budget(fraction=self.fraction, ipc=max(1, round(self.fraction * n / c)))
        return self

    def label(self, kind: str) -> str:
        return f"ipc={self.ipc}" if kind == "distill" else f"fraction={self.fraction:g}"


@dataclass
class CellSpec:
    """One cell of a run or a compare: a method at a budget with a seed."""

    method: str
    budget: Budget
    seed: int = 0
    model: str = "convnet"
    model_kwargs: dict = field(default_factory=dict)
    eval_models: list[str] = field(default_factory=list)  # [] → [model]
    protocol: str = "quick"
    eval_augment: str = "none"
    eval_epochs: int | None = None
    eval_runs: int = 3
    device: str = "auto"
    config: dict = field(default_factory=dict)
    no_eval: bool = False
    output: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    progress: bool = False
    force: bool = False  # run even when the memory estimate exceeds what the device has

    @property
    def kind(self) -> str:
        return method_kind(self.method)

    @property
    def evaluation_models(self) -> list[str]:
        return list(self.eval_models) or [self.model]


def default_output(source_id: str, spec: CellSpec, budget: Budget, out_dir: str | Path = "smallset-out") -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", source_id.split(":", 1)[-1]).strip("-")[-40:] or "source"
    b = f"ipc{budget.ipc}" if spec.kind == "distill" else f"f{budget.fraction:g}"
    return Path(out_dir) / f"{slug}-{spec.method}-{b}-s{spec.seed}.parquet"


def device_for(spec: CellSpec) -> torch.device:
    from smallset.tasks.runners import placed_device

    return resolve_device(placed_device(spec.device))


def context_for(spec: CellSpec, test: ImageDataset | None) -> RunContext:
    return RunContext(
        seed=spec.seed, device=device_for(spec), model=spec.model, model_kwargs=dict(spec.model_kwargs),
        progress=spec.progress, test=test,
        checkpoint_dir=Path(spec.checkpoint_dir) if spec.checkpoint_dir else None,
        checkpoint_every=spec.checkpoint_every, resume=spec.resume,
    )


def validate(spec: CellSpec) -> None:
    """Cheap checks before any work starts, so bad input fails fast and writes nothing."""
    kind = spec.kind
    check_model(spec.model)
    for name in spec.eval_models:
        check_model(name)
    get_protocol(spec.protocol, augment=spec.eval_augment, epochs=spec.eval_epochs)
    resolve_device(spec.device)
    if kind == "prune":
        from smallset.prune.base import check_fraction

        if spec.budget.fraction is not None:
            check_fraction(spec.budget.fraction)
    elif spec.budget.ipc is not None and spec.budget.ipc < 1:
        raise SmallsetError(f"--ipc must be at least 1; got {spec.budget.ipc}.")
    coerce_config(spec.method, spec.config, spec.budget.ipc)
    if spec.eval_runs < 1:
        raise SmallsetError("--eval-runs must be at least 1.")
    if spec.output and Path(spec.output).is_dir():
        raise SmallsetError(f"--output {spec.output} is a directory; give a file name ending in .parquet.")


# --- scores (the cacheable part of ranking selectors) -----------------------------------------------
def score_key_parts(spec: CellSpec, ds: ImageDataset) -> dict:
    cls = method_class(spec.method)
    selector = cls(coerce_config(spec.method, spec.config))
    return {
        "method": spec.method,
        "digest": ds.digest,
        "model": spec.model if cls.uses_model else None,
        "model_kwargs": spec.model_kwargs if cls.uses_model else None,
        "seed": spec.seed,
        "score_params": selector.score_params(),
        "device": device_for(spec).type,
    }


def compute_scores(spec: CellSpec, ds: ImageDataset) -> tuple[Any, float]:
    """(scores, seconds) of a ranking selector; (None, 0) for methods that do not rank."""
    cls = method_class(spec.method)
    if cls.kind != "prune" or cls.higher_is_keep is None and cls.score is _base_score():
        return None, 0.0
    selector = cls(coerce_config(spec.method, spec.config))
    t0 = time.perf_counter()
    scores = selector.score(ds, context_for(spec, None))
    return (scores.cpu() if isinstance(scores, torch.Tensor) else scores), time.perf_counter() - t0


def _base_score():
    from smallset.prune.base import Selector

    return Selector.score


# --- reduce ---------------------------------------------------------------------------------------
@dataclass
class Reduced:
    dataset: ImageDataset
    params: dict
    seconds: float
    info: dict
    scores: Any = None
    score_seconds: float = 0.0


def preflight(spec: CellSpec, ds: ImageDataset, what: str) -> None:
    """Print the memory/time estimate of the coming work and refuse it when it cannot fit (unless forced)."""
    import sys

    from smallset import estimate

    extra = 256 * ds.num_classes if spec.kind == "distill" else 0  # condensers hold a real batch per class
    est = estimate.estimate_training(ds, spec.model, spec.model_kwargs, 256, device_for(spec), extra_images=extra)
    sys.stderr.write(f"[smallset] {what}: {est.describe()}\n")
    estimate.check(est, spec.force)


def reduce(spec: CellSpec, source: Source, scores: Any = None, score_seconds: float = 0.0) -> Reduced:
    """Run the selector or condenser of ``spec`` on the source's training split."""
    ds = source.train
    budget = spec.budget.for_kind(spec.kind, ds)
    ctx = context_for(spec, source.test)
    preflight(spec, ds, f"{spec.method} {budget.label(spec.kind)}")
    cls = method_class(spec.method)
    if spec.kind == "prune":
        selector = cls(coerce_config(spec.method, spec.config))
        t0 = time.perf_counter()
        sel = selector.select(ds, budget.fraction, ctx, scores=scores)
        seconds = time.perf_counter() - t0 + score_seconds
        reduced = ds.subset(sel.indices, sel.weights)
        return Reduced(reduced, selector.params(), seconds, dict(sel.info), sel.scores if sel.scores is not None else scores,
                       score_seconds)
    from smallset.distill.base import check_ipc, to_dataset

    check_ipc(budget.ipc, ds)
    config = coerce_config(spec.method, spec.config, budget.ipc)
    condenser = cls(config)
    t0 = time.perf_counter()
    syn = condenser.condense(ds, budget.ipc, ctx)
    seconds = time.perf_counter() - t0
    return Reduced(to_dataset(syn, ds), condenser.params(), seconds, dict(syn.info))


def evaluate_reduced(spec: CellSpec, reduced: ImageDataset, test: ImageDataset | None,
                     eval_model: str | None = None) -> EvalResult:
    """The evaluation protocol on one evaluation model (default: the spec's first)."""
    protocol = get_protocol(spec.protocol, augment=spec.eval_augment, epochs=spec.eval_epochs)
    name = eval_model or spec.evaluation_models[0]
    kwargs = spec.model_kwargs if name == spec.model else {}
    return evaluate(reduced, test, name, protocol, runs=spec.eval_runs, seed=spec.seed,
                    device=device_for(spec), model_kwargs=kwargs, progress=spec.progress)


# --- record ---------------------------------------------------------------------------------------
def write_and_log(
    spec: CellSpec,
    source: Source,
    red: Reduced,
    evals: dict[str, EvalResult],
    output: Path,
    parent_run_id: str | None = None,
) -> dict:
    """Write the reduced Parquet file (atomically) and log the MLflow run; returns the result row."""
    ds = source.train
    budget = spec.budget.for_kind(spec.kind, ds)
    primary = next(iter(evals.values()), None)
    meta = store.build_metadata(
        red.dataset, method=spec.method, kind=spec.kind, params=red.params, seed=spec.seed,
        source=source.id, source_digest=ds.digest, protocol=spec.protocol,
        extra={
            "budget": {"fraction": budget.fraction, "ipc": budget.ipc},
            "model": spec.model,
            "evaluation": {name: {"mean": e.mean, "std": e.std, "runs": len(e.accuracies), "protocol": e.protocol}
                           for name, e in evals.items()},
        },
    )
    path = store.write_reduced(red.dataset, output, meta)
    digest = store.file_sha256(path)
    row = {
        "method": spec.method,
        "kind": spec.kind,
        "budget": budget.label(spec.kind),
        "fraction": budget.fraction,
        "ipc": budget.ipc,
        "seed": spec.seed,
        "n_examples": len(red.dataset),
        "fraction_of_source": len(red.dataset) / len(ds),
        "selection_seconds": red.seconds,
        "score_seconds": red.score_seconds,
        "model": spec.model,
        "protocol": spec.protocol,
        "output": str(path),
        "sha256": digest,
    }
    row.update(accuracy_columns(evals))
    row["eval_model"] = primary.model if primary else None
    row["run_id"] = log_run(spec, source, red, evals, path, digest, meta, parent_run_id, row)
    return row


def accuracy_columns(evals: dict[str, EvalResult]) -> dict[str, float]:
    """The first evaluation model's figures as test_accuracy/…; every model's as test_accuracy/MODEL/…
    when there are several (the cross-architecture matrix)."""
    out: dict[str, float] = {}
    for i, (name, e) in enumerate(evals.items()):
        suffixes = ([""] if i == 0 else []) + ([f"/{name}"] if len(evals) > 1 else [])
        for sfx in suffixes:
            out[f"test_accuracy{sfx}"] = e.mean
            out[f"test_accuracy_std{sfx}"] = e.std
            out[f"eval_train_seconds{sfx}"] = e.total_train_seconds
    return out


def log_run(spec, source, red, evals, path, digest, meta, parent_run_id, row) -> str:
    budget = spec.budget.for_kind(spec.kind, source.train)
    params = {
        "method": spec.method, "kind": spec.kind, "fraction": budget.fraction, "ipc": budget.ipc,
        "model": spec.model, "model_kwargs": spec.model_kwargs, "eval_models": ",".join(spec.evaluation_models),
        "protocol": spec.protocol, "eval_augment": spec.eval_augment, "eval_runs": spec.eval_runs,
        "seed": spec.seed, "source": source.id, "source_digest": source.train.digest, "device": spec.device,
        "hp": red.params,
    }
    metrics = {
        "n_examples": row["n_examples"], "fraction_of_source": row["fraction_of_source"],
        "selection_seconds": red.seconds, "score_seconds": red.score_seconds,
    }
    metrics.update(accuracy_columns(evals))
    series, other = {}, {}
    for k, v in red.info.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            metrics[f"{spec.method}.{k}"] = float(v)
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v):
            series[f"{spec.method}.{k}"] = [float(x) for x in v]
        else:
            other[k] = v
    tags = {"kind": spec.kind, "method": spec.method, "source": source.id, "smallset.output": str(path)}
    run_name = f"{spec.method} {budget.label(spec.kind)} seed={spec.seed}"
    with tracking.run(source.id, run_name, parent_run_id=parent_run_id, tags=tags) as run_id:
        tracking.log_reduced(run_id, reduced=red.dataset, parquet_path=path, file_digest=digest,
                             params=params, metrics=metrics, tags=tags, metadata=meta)
        for name, values in series.items():
            tracking.log_series(run_id, name, values)
        if other:
            tracking.log_json(run_id, other, "info.json")
        if red.scores is not None and isinstance(red.scores, torch.Tensor):
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "scores.npy"
                np.save(p, red.scores.numpy())
                tracking.log_file(run_id, p, "scores")
    return run_id


def full_data_row(source: Source, spec: CellSpec, parent_run_id: str | None = None) -> dict:
    """The reference every reduced set is compared to: the evaluation protocol on the whole training split."""
    ds = source.train
    preflight(spec, ds, "full-data evaluation")
    evals = {name: evaluate_reduced(spec, ds, source.test, name) for name in spec.evaluation_models}
    res = next(iter(evals.values()))
    row = {
        "method": "full", "kind": "full", "budget": "fraction=1", "fraction": 1.0, "ipc": None, "seed": spec.seed,
        "n_examples": len(ds), "fraction_of_source": 1.0, "selection_seconds": 0.0, "score_seconds": 0.0,
        "model": spec.model, "protocol": spec.protocol, "output": None, "sha256": None,
        **accuracy_columns(evals), "eval_model": res.model,
    }
    tags = {"kind": "full", "method": "full", "source": source.id}
    with tracking.run(source.id, f"full data seed={spec.seed}", parent_run_id=parent_run_id, tags=tags) as run_id:
        tracking.log_metrics(run_id, {**accuracy_columns(evals), "n_examples": row["n_examples"],
                                      "fraction_of_source": 1.0})
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking.tracking_uri())
        for k, v in {"method": "full", "kind": "full", "model": spec.model, "protocol": spec.protocol,
                     "seed": spec.seed, "source": source.id, "source_digest": ds.digest}.items():
            client.log_param(run_id, k, str(v))
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
    row["run_id"] = run_id
    return row
