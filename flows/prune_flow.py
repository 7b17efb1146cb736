"""``prune_flow``: select a coreset from a source, evaluate it, write it to Parquet, log it to MLflow."""
from __future__ import annotations

import smallset.flows.settings  # noqa: F401  (environment defaults before Prefect loads)
from prefect import flow

from smallset.tasks import steps
from smallset.tasks.prefect_tasks import run_single


@flow(name="prune", log_prints=True)
def prune_flow(
    source: str = "builtin:mnist-mini",
    method: str = "random",
    fraction: float = 0.1,
    seed: int = 0,
    model: str = "convnet",
    model_kwargs: dict | None = None,
    eval_models: list[str] | None = None,
    protocol: str = "quick",
    eval_augment: str = "none",
    eval_epochs: int | None = None,
    eval_runs: int = 3,
    device: str = "auto",
    params: dict | None = None,
    output: str | None = None,
    no_eval: bool = False,
    data_root: str | None = None,
    progress: bool = False,
    force: bool = False,
) -> dict:
    spec = steps.CellSpec(
        method=method, budget=steps.Budget(fraction=fraction), seed=seed, model=model,
        model_kwargs=model_kwargs or {}, eval_models=list(eval_models or []), protocol=protocol, eval_augment=eval_augment,
        eval_epochs=eval_epochs, eval_runs=eval_runs, device=device, config=params or {}, no_eval=no_eval,
        output=output, progress=progress, force=force,
    )
    if spec.kind != "prune":
        raise steps.SmallsetError(f"{method} is a distillation method; run it with `smallset distill`.")
    return run_single(spec, source, data_root)
