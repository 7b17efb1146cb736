"""Prefect tasks around the pipeline steps of :mod:`tasks.steps`.

Tasks receive the source *string* and load it through a per-process cache, so that parallel workers
(threads or Dask processes) load a source once each and no dataset is shipped between processes.

- ``score_task``: a ranking selector's per-example scores, cached across flow runs and processes on
  exactly (method, source digest, model, seed, score settings, device type) and persisted on disk
  (``$PREFECT_HOME/storage``): a compare over many fractions scores once.
- ``reduce_task``: run the selector or condenser → the reduced set.
- ``evaluate_task``: the evaluation protocol on one evaluation model (one cell per model).
- ``record_task``: write the Parquet file and log the MLflow run. Retried on transient I/O errors
  (a locked SQLite store), never on bad input.
- ``full_data_task``: the full-data reference row of a compare.
"""
from __future__ import annotations

import hashlib
import json
import threading
from functools import lru_cache
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from smallset.data import Source, load_source
from smallset.errors import SmallsetError
from smallset.train import EvalResult
from smallset.tasks import steps

_LOAD_LOCK = threading.Lock()


def cached_source(spec: str, data_root: str | None = None) -> Source:
    """Load a source once per process (thread-safe)."""
    with _LOAD_LOCK:
        return _load(spec, data_root)


@lru_cache(maxsize=4)
def _load(spec: str, data_root: str | None) -> Source:
    return load_source(spec, data_root=data_root)


def _transient(task, task_run, state) -> bool:
    try:
        state.result()
    except SmallsetError:
        return False
    except (OSError, TimeoutError):
        return True
    except Exception as e:  # sqlite "database is locked" arrives wrapped by SQLAlchemy/MLflow
        return "locked" in str(e).lower()
    return False


def score_cache_key(context, parameters: dict[str, Any]) -> str:
    src = cached_source(parameters["source"], parameters.get("data_root"))
    parts = steps.score_key_parts(parameters["spec"], src.train)
    return "smallset-scores-" + hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


@task(name="score", cache_key_fn=score_cache_key, persist_result=True)
def score_task(spec: steps.CellSpec, source: str, data_root: str | None = None) -> tuple[Any, float]:
    scores, seconds = steps.compute_scores(spec, cached_source(source, data_root).train)
    get_run_logger().info("scored %s (seed %d) in %.1f s", spec.method, spec.seed, seconds)
    return scores, seconds


@task(name="reduce", cache_policy=NO_CACHE)
def reduce_task(spec: steps.CellSpec, source: str, data_root: str | None = None,
                scored: tuple[Any, float] | None = None) -> steps.Reduced:
    scores, seconds = scored if scored is not None else (None, 0.0)
    red = steps.reduce(spec, cached_source(source, data_root), scores=scores, score_seconds=seconds)
    get_run_logger().info("%s %s seed %d: %d examples in %.1f s", spec.method,
                          spec.budget.label(spec.kind), spec.seed, len(red.dataset), red.seconds)
    return red


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(spec: steps.CellSpec, red: steps.Reduced, source: str, model: str,
                  data_root: str | None = None) -> EvalResult:
    res = steps.evaluate_reduced(spec, red.dataset, cached_source(source, data_root).test, model)
    get_run_logger().info("%s on %s: %s", spec.method, model, res.summary())
    return res


@task(name="record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def record_task(spec: steps.CellSpec, red: steps.Reduced, evals: list[EvalResult], source: str, output: str,
                parent_run_id: str | None = None, data_root: str | None = None) -> dict:
    src = cached_source(source, data_root)
    row = steps.write_and_log(spec, src, red, {e.model: e for e in evals}, steps.Path(output), parent_run_id)
    get_run_logger().info("wrote %s (MLflow run %s)", row["output"], row["run_id"])
    return row


@task(name="full-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def full_data_task(spec: steps.CellSpec, source: str, parent_run_id: str | None = None,
                   data_root: str | None = None) -> dict:
    return steps.full_data_row(cached_source(source, data_root), spec, parent_run_id)


class CellFutures:
    """The futures of one cell. :meth:`result` resolves them in order, so a failure surfaces as the
    exception of the step that failed (e.g. a SmallsetError from reduce) rather than as an unfinished
    downstream task."""

    def __init__(self, *futures):
        self.futures = futures

    def result(self):
        for f in self.futures[:-1]:
            f.result()
        return self.futures[-1].result()


def submit_cell(spec: steps.CellSpec, source: str, output: str, parent_run_id: str | None = None,
                data_root: str | None = None, scored=None) -> CellFutures:
    """Submit reduce → evaluate (one task per evaluation model) → record."""
    red = reduce_task.submit(spec, source, data_root, scored)
    evals = [] if spec.no_eval else [evaluate_task.submit(spec, red, source, m, data_root)
                                     for m in spec.evaluation_models]
    return CellFutures(*([scored] if scored is not None and hasattr(scored, "result") else []), red, *evals,
                       record_task.submit(spec, red, evals, source, output, parent_run_id, data_root))


def run_single(spec: steps.CellSpec, source: str, data_root: str | None = None) -> dict:
    """The body of prune_flow/distill_flow: one cell, in the flow."""
    steps.validate(spec)
    src = cached_source(source, data_root)
    scored = score_task(spec, source, data_root) if spec.kind == "prune" else None
    output = spec.output or str(steps.default_output(src.id, spec, spec.budget.for_kind(spec.kind, src.train)))
    return submit_cell(spec, source, output, None, data_root, scored).result()
