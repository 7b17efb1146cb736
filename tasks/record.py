"""Recording a result: the reduced Parquet file (atomic), the MLflow run, and the result row."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from smallset import comparison, store, tracking
from smallset.data import Source
from smallset.prune._training import schedule_key
from smallset.tasks.spec import Cell
from smallset.tasks.steps import Reduced, evaluate_reduced, preflight
from smallset.train import EvalResult


def write_and_log(
    cell: Cell,
    source: Source,
    red: Reduced,
    evals: dict[str, EvalResult],
    output: Path,
    parent_run_id: str | None = None,
) -> dict:
    """Write the reduced Parquet file (atomically) and log the MLflow run; returns the result row."""
    ds = source.train
    budget = cell.budget_for(ds)
    primary = next(iter(evals.values()), None)
    meta = store.build_metadata(
        red.dataset, method=cell.method, kind=cell.kind, params=red.params, seed=cell.seed,
        source=source.id, source_digest=ds.digest, protocol=cell.options.protocol,
        extra={
            "budget": {"fraction": budget.fraction, "ipc": budget.ipc},
            "model": cell.options.model,
            "eval_recipe": cell.options.eval_recipe,
            "evaluation": {name: {"mean": e.mean, "std": e.std, "runs": len(e.accuracies), "protocol": e.protocol,
                                  "recipe": e.extra.get("recipe")} for name, e in evals.items()},
            **({"learned_lr": float(red.info["learned_lr"])} if "learned_lr" in red.info else {}),
        },
    )
    path = store.write_reduced(red.dataset, output, meta)
    digest = store.file_sha256(path)
    row = {
        "method": cell.method,
        "kind": cell.kind,
        "budget": budget.label(cell.unit),
        "fraction": budget.fraction,
        "ipc": budget.ipc,
        "seed": cell.seed,
        "n_examples": len(red.dataset),
        "fraction_of_source": len(red.dataset) / len(ds),
        "selection_seconds": red.seconds,
        "score_seconds": red.prepare_seconds,
        "model": cell.options.model,
        "protocol": cell.options.protocol,
        "eval_recipe": cell.options.eval_recipe,
        "method_steps": red.info.get("steps"),  # SGD steps a training-time method (CREST) spent itself
        "method_test_accuracy": red.info.get("test_accuracy"),  # and the accuracy of the model it trained
        "method_schedule": schedule_key(red.params),  # its training schedule: gains only against the same one
        "output": str(path),
        "sha256": digest,
    }
    row.update(accuracy_columns(evals))
    row["eval_model"] = primary.model if primary else None
    row["run_id"] = log_run(cell, source, red, evals, path, digest, meta, parent_run_id, row)
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
            out[f"eval_runs{sfx}"] = len(e.accuracies)
            if sfx == "":
                out["test_accuracies"] = list(e.accuracies)
            out[f"eval_steps{sfx}"] = eval_steps(e)
    return out


def numeric(values: dict) -> dict[str, float]:
    """The entries MLflow can take as metrics (finite numbers)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def log_gains(rows: list[dict]) -> None:
    """Log each cell's gain over its baseline on the same seed (``smallset.comparison``: random at the same
    images and recipe, or random_steps at the same budget and schedule) as the metric ``gain_over_random`` of
    its MLflow run, so the runs table compares it directly."""
    for row, gain in comparison.cell_gains(rows):
        row[comparison.GAIN_METRIC] = gain
        tracking.log_metrics(row["run_id"], {comparison.GAIN_METRIC: gain})


def eval_steps(e: EvalResult) -> int | None:
    """SGD steps of one evaluation training under its recipe (passes × batches per pass)."""
    recipe, n = e.extra.get("recipe"), e.extra.get("n_examples")
    if not recipe or n is None:
        return None
    return int(e.epochs * max(1, -(-int(n) // int(recipe["batch_size"]))))


def log_run(cell, source, red, evals, path, digest, meta, parent_run_id, row) -> str:
    budget = cell.budget_for(source.train)
    params = {
        "method": cell.method, "kind": cell.kind, "fraction": budget.fraction, "ipc": budget.ipc,
        "model": cell.options.model, "model_kwargs": cell.options.model_kwargs,
        "eval_models": ",".join(cell.options.evaluation_models()), "protocol": cell.options.protocol,
        "eval_augment": cell.options.eval_augment, "eval_runs": cell.options.eval_runs,
        "eval_recipe": cell.options.eval_recipe, "normalization": cell.options.normalization,
        "dataset_key": red.dataset.dataset_key,
        "eval_protocol": next(iter(evals.values())).extra.get("recipe") if evals else None,
        "seed": cell.seed, "source": source.id, "source_digest": source.train.digest, "device": cell.options.device,
        "hp": red.params,
    }
    metrics = {
        "n_examples": row["n_examples"], "fraction_of_source": row["fraction_of_source"],
        "selection_seconds": red.seconds, "score_seconds": red.prepare_seconds,
    }
    metrics.update(numeric(accuracy_columns(evals)))
    series, other = {}, {}
    for k, v in red.info.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            metrics[f"{cell.method}.{k}"] = float(v)
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v):
            series[f"{cell.method}.{k}"] = [float(x) for x in v]
        else:
            other[k] = v
    tags = {"kind": cell.kind, "method": cell.method, "source": source.id, "smallset.output": str(path)}
    run_name = f"{cell.method} {budget.label(cell.unit)} seed={cell.seed}"
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


def full_data_row(source: Source, cell: Cell, parent_run_id: str | None = None) -> dict:
    """The reference every reduced set is compared to: the evaluation protocol on the whole training split."""
    ds = source.train
    preflight(cell, ds, "full-data evaluation")
    evals = {name: evaluate_reduced(cell, ds, source.test, name) for name in cell.options.evaluation_models()}
    res = next(iter(evals.values()))
    row = {
        "method": "full", "kind": "full", "budget": "fraction=1", "fraction": 1.0, "ipc": None, "seed": cell.seed,
        "n_examples": len(ds), "fraction_of_source": 1.0, "selection_seconds": 0.0, "score_seconds": 0.0,
        "model": cell.options.model, "protocol": cell.options.protocol, "eval_recipe": "shared",
        "method_steps": None, "method_test_accuracy": None, "output": None, "sha256": None,
        **accuracy_columns(evals), "eval_model": res.model,
    }
    tags = {"kind": "full", "method": "full", "source": source.id}
    with tracking.run(source.id, f"full data seed={cell.seed}", parent_run_id=parent_run_id, tags=tags) as run_id:
        tracking.log_metrics(run_id, {**numeric(accuracy_columns(evals)), "n_examples": row["n_examples"],
                                      "fraction_of_source": 1.0})
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking.tracking_uri())
        for k, v in {"method": "full", "kind": "full", "model": cell.options.model, "protocol": cell.options.protocol,
                     "seed": cell.seed, "source": source.id, "source_digest": ds.digest}.items():
            client.log_param(run_id, k, str(v))
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
    row["run_id"] = run_id
    return row
