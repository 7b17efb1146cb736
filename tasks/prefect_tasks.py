"""Prefect tasks around the pipeline steps of :mod:`tasks.steps`.

- ``load_source_task``: read a source into memory (never cached: sources can be gigabytes).
- ``score_task``: a ranking selector's per-example scores, cached across flow runs and processes on
  exactly (method, source digest, model, seed, score settings, device type) and persisted on disk
  (``$PREFECT_HOME/storage``), so a compare over many fractions scores once.
- ``cell_task``: reduce → evaluate → write Parquet → log MLflow for one (method, budget, seed). Retried
  once on transient I/O errors (a locked SQLite store, a full disk being cleaned), never on bad input.
- ``full_data_task``: the full-data reference row of a compare.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.data import ImageDataset, Source, load_source
from core.errors import SmallsetError
from tasks import steps


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


@task(name="load-source", cache_policy=NO_CACHE)
def load_source_task(spec: str, data_root: str | None = None) -> Source:
    src = load_source(spec, data_root=data_root)
    get_run_logger().info("loaded %s: %d train images, digest %s", spec, len(src.train), src.train.digest[:12])
    return src


def score_cache_key(context, parameters: dict[str, Any]) -> str:
    parts = steps.score_key_parts(parameters["spec"], parameters["ds"])
    return "smallset-scores-" + hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


@task(name="score", cache_key_fn=score_cache_key, persist_result=True)
def score_task(spec: steps.CellSpec, ds: ImageDataset) -> tuple[Any, float]:
    scores, seconds = steps.compute_scores(spec, ds)
    get_run_logger().info("scored %s (seed %d) in %.1f s", spec.method, spec.seed, seconds)
    return scores, seconds


@task(name="cell", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, retry_condition_fn=_transient)
def cell_task(spec: steps.CellSpec, source: Source, parent_run_id: str | None = None, scores: Any = None,
              score_seconds: float = 0.0, output: str | None = None) -> dict:
    row = steps.run_cell(spec, source, output=output, parent_run_id=parent_run_id, scores=scores,
                         score_seconds=score_seconds)
    acc = row.get("test_accuracy")
    get_run_logger().info("%s %s seed %d: %d examples%s → %s", spec.method, row["budget"], spec.seed,
                          row["n_examples"], "" if acc is None else f", accuracy {100 * acc:.2f}%", row["output"])
    return row


@task(name="full-data", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, retry_condition_fn=_transient)
def full_data_task(source: Source, spec: steps.CellSpec, parent_run_id: str | None = None) -> dict:
    return steps.full_data_row(source, spec, parent_run_id)
