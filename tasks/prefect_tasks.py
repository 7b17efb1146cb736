"""Prefect tasks around the pipeline steps (:mod:`smallset.tasks.steps`, :mod:`smallset.tasks.record`).

Tasks receive the source *string* and load it through a per-process cache, so that parallel workers
(threads or Dask processes) load a source once each and no dataset is shipped between processes.

- ``prepare_task``: a method's budget-independent preparation (scores, features…), cached across flow
  runs and processes on exactly :func:`smallset.tasks.steps.prepare_key` and persisted on disk
  (``$PREFECT_HOME/storage``): a compare over many budgets prepares once.
- ``reduce_task``: run the method at the cell's budget → the reduced set.
- ``evaluate_task``: the evaluation protocol on one evaluation model (one task per model).
- ``record_task``: write the Parquet file and log the MLflow run. Retried on transient I/O errors
  (a locked SQLite store), never on bad input.
- ``full_data_task``: the full-data reference row of a compare.
"""
from __future__ import annotations

import hashlib
import json
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from smallset.data import Source, load_source
from smallset.errors import SmallsetError
from smallset.tasks import record, steps
from smallset.tasks.prefect_guard import guard_ephemeral_server
from smallset.tasks.spec import Cell, default_output
from smallset.train import EvalResult

_LOAD_LOCK = threading.Lock()
guard_ephemeral_server()  # a Dask worker's own temporary Prefect server ends with the worker (prefect_guard)


def cached_source(spec: str, data_root: str | None = None, normalization: str = "auto") -> Source:
    """Load a source once per process (thread-safe)."""
    with _LOAD_LOCK:
        return _load(spec, data_root, normalization)


@lru_cache(maxsize=4)
def _load(spec: str, data_root: str | None, normalization: str) -> Source:
    return load_source(spec, data_root=data_root, normalization=normalization)


def source_of(cell: Cell) -> Source:
    """The cell's source, loaded once per process with the cell's normalisation."""
    opts = cell.options
    return cached_source(opts.source, opts.data_root, opts.normalization)


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


def prepare_cache_key(context, parameters: dict[str, Any]) -> str:
    cell = parameters["cell"]
    parts = steps.prepare_key(cell, source_of(cell).train)
    return "smallset-prepared-" + hashlib.sha256(json.dumps(parts, sort_keys=True,
                                                            default=str).encode()).hexdigest()[:40]


@task(name="prepare", cache_key_fn=prepare_cache_key, persist_result=True)
def prepare_task(cell: Cell) -> tuple[Any, float]:
    prepared, seconds = steps.prepare(cell, source_of(cell).train)
    get_run_logger().info("prepared %s (seed %d) in %.1f s", cell.method, cell.seed, seconds)
    return prepared, seconds


@task(name="reduce", cache_policy=NO_CACHE)
def reduce_task(cell: Cell, prepared: tuple[Any, float] | None = None) -> steps.Reduced:
    value, seconds = prepared if prepared is not None else (None, 0.0)
    red = steps.reduce(cell, source_of(cell), prepared=value, prepare_seconds=seconds)
    get_run_logger().info("%s %s seed %d: %d examples in %.1f s", cell.method,
                          cell.budget.label(cell.unit), cell.seed, len(red.dataset), red.seconds)
    return red


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cell: Cell, red: steps.Reduced, model: str) -> EvalResult:
    res = steps.evaluate_reduced(cell, red.dataset, source_of(cell).test, model, red.info)
    get_run_logger().info("%s on %s: %s", cell.method, model, res.summary())
    return res


@task(name="record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def record_task(cell: Cell, red: steps.Reduced, evals: list[EvalResult], output: str,
                parent_run_id: str | None = None) -> dict:
    row = record.write_and_log(cell, source_of(cell), red, {e.model: e for e in evals}, Path(output), parent_run_id)
    get_run_logger().info("wrote %s (MLflow run %s)", row["output"], row["run_id"])
    return row


@task(name="full-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def full_data_task(cell: Cell, parent_run_id: str | None = None) -> dict:
    return record.full_data_row(source_of(cell), cell, parent_run_id)


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


def submit_cell(cell: Cell, output: str, parent_run_id: str | None = None, prepared=None) -> CellFutures:
    """Submit reduce → evaluate (one task per evaluation model) → record."""
    red = reduce_task.submit(cell, prepared)
    evals = [] if cell.options.no_eval else [evaluate_task.submit(cell, red, m)
                                             for m in cell.options.evaluation_models()]
    return CellFutures(*([prepared] if prepared is not None and hasattr(prepared, "result") else []), red, *evals,
                       record_task.submit(cell, red, evals, output, parent_run_id))


def run_single(cell: Cell) -> dict:
    """The body of prune_flow/distill_flow: one resolved cell, in the flow."""
    src = source_of(cell)
    prepared = prepare_task(cell) if steps.needs_prepare(cell) else None
    output = cell.output or str(default_output(src.id, cell))
    return submit_cell(cell, output, None, prepared).result()
