"""``distill_flow``: learn a synthetic set, evaluate it, write it to Parquet, log it to MLflow."""
from __future__ import annotations

import smallset.flows.settings  # noqa: F401
from prefect import flow

from smallset.tasks import steps
from smallset.tasks.prefect_tasks import run_single


@flow(name="distill", log_prints=True)
def distill_flow(
    source: str = "builtin:mnist-mini",
    method: str = "dm",
    ipc: int = 10,
    iterations: int | None = None,
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
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    data_root: str | None = None,
    progress: bool = False,
    force: bool = False,
) -> dict:
    config = dict(params or {})
    if iterations is not None:
        config["iterations"] = iterations
    spec = steps.CellSpec(
        method=method, budget=steps.Budget(ipc=ipc), seed=seed, model=model, model_kwargs=model_kwargs or {},
        eval_models=list(eval_models or []), protocol=protocol, eval_augment=eval_augment, eval_epochs=eval_epochs,
        eval_runs=eval_runs, device=device, config=config, no_eval=no_eval, output=output,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume, progress=progress, force=force,
    )
    if spec.kind != "distill":
        raise steps.SmallsetError(f"{method} is a pruning method; run it with `smallset prune`.")
    return run_single(spec, source, data_root)
