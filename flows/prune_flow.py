"""``prune_flow``: select a coreset from a source, evaluate it, write it to Parquet, log it to MLflow."""
from __future__ import annotations

from prefect import flow

import smallset.flows.settings  # noqa: F401  (environment defaults before Prefect loads)
from smallset.options import RunOptions
from smallset.tasks.prefect_tasks import run_single
from smallset.tasks.spec import Budget, resolve_cell


@flow(name="prune", log_prints=True)
def prune_flow(method: str = "random", fraction: float = 0.1, params: dict | None = None,
               output: str | None = None, options: RunOptions = RunOptions()) -> dict:
    """One selector at one fraction; ``params`` are the method's options, ``options`` the shared ones."""
    cell = resolve_cell(method, Budget(fraction=fraction), options, params, kind="prune", output=output)
    return run_single(cell)
