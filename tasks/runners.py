"""Where compare's cells run: Prefect's thread pool (default) or Dask (prefect-dask).

- ``threads``: ``ThreadPoolTaskRunner(max_workers=workers)`` in the flow's process.
- ``dask``: a local cluster of ``workers`` worker processes (one thread each), or an existing cluster
  at ``dask_address``. With ``gpus=N`` the local cluster has one worker per GPU, each advertising the
  Dask resource ``GPU=1``; cells are submitted under ``dask.annotate(resources={"GPU": 1})``, so at most
  one cell runs per GPU, and :func:`placed_device` maps the worker named ``i`` to ``cuda:i``.

Workers are separate processes: the MLflow store and artifact root are exported as absolute paths in the
environment before the cluster starts, so every worker logs to the same place (SQLite writes are
serialised by :func:`smallset.tracking.write_lock`).
"""
from __future__ import annotations

import contextlib
import os

from smallset.errors import SmallsetError

RUNNERS = ("threads", "dask")


def check_runner_args(runner: str = "threads", workers: int = 1, dask_address: str | None = None,
                      gpus: int = 0) -> None:
    if runner not in RUNNERS:
        raise SmallsetError(f"Unknown runner {runner!r}; use threads or dask.")
    if workers < 1:
        raise SmallsetError("--workers must be at least 1.")
    if gpus < 0:
        raise SmallsetError("--gpus must be 0 or more.")
    if runner == "threads" and (dask_address or gpus):
        raise SmallsetError("--dask-address and --gpus need --runner dask.")


def make_task_runner(runner: str = "threads", workers: int = 1, dask_address: str | None = None, gpus: int = 0):
    from prefect.task_runners import ThreadPoolTaskRunner

    check_runner_args(runner, workers, dask_address, gpus)
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:  # pragma: no cover - declared dependency
        raise SmallsetError("--runner dask needs prefect-dask; install it with pip install prefect-dask.") from None
    export_tracking_env()
    quiet_dask()
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(workers, gpus))


def local_cluster_kwargs(workers: int, gpus: int = 0) -> dict:
    kwargs = {"n_workers": gpus or workers, "threads_per_worker": 1, "processes": True,
              "dashboard_address": None}
    if gpus:
        kwargs["resources"] = {"GPU": 1}
    return kwargs


def quiet_dask() -> None:
    """Dask logs every worker start and stop at INFO; keep only warnings (workers inherit the env)."""
    import logging

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.core",
                 "distributed.worker", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def export_tracking_env() -> None:
    from smallset import tracking

    os.environ["MLFLOW_TRACKING_URI"] = tracking.tracking_uri()
    os.environ["SMALLSET_ARTIFACTS"] = str(tracking.artifact_root())


def gpu_annotation(gpus: int):
    """Context manager for submissions: one GPU per cell on a GPU cluster, a no-op otherwise."""
    if not gpus:
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources={"GPU": 1})


def current_worker_name() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return None


def placed_device(requested: str, device_count: int | None = None, worker_name: str | None = None) -> str:
    """``cuda:i`` for Dask worker ``i`` when several GPUs are visible and the device is auto/cuda;
    otherwise the requested device unchanged."""
    if requested not in ("auto", "cuda"):
        return requested
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    if device_count < 2:
        return requested
    name = worker_name if worker_name is not None else current_worker_name()
    if name is None:
        return requested
    try:
        index = int(str(name).rsplit("-", 1)[-1])
    except ValueError:
        index = sum(map(ord, str(name)))
    return f"cuda:{index % device_count}"
