"""``distill_flow``: learn a synthetic set, evaluate it, write it to Parquet, log it to MLflow."""
from __future__ import annotations

from prefect import flow

import smallset.flows.settings  # noqa: F401
from smallset.options import RunOptions
from smallset.tasks.prefect_tasks import run_single
from smallset.tasks.spec import Budget, Checkpointing, resolve_cell


@flow(name="distill", log_prints=True)
def distill_flow(method: str = "dm", ipc: int = 10, params: dict | None = None, output: str | None = None,
                 checkpoint_dir: str | None = None, checkpoint_every: int = 0, resume: bool = False,
                 options: RunOptions = RunOptions()) -> dict:
    """One condenser at ``ipc`` images per class; ``params`` are its options (``iterations`` among them)."""
    cell = resolve_cell(method, Budget(ipc=ipc), options, params, kind="distill", output=output,
                        checkpointing=Checkpointing(checkpoint_dir, checkpoint_every, resume))
    return run_single(cell)
