"""MLflow logging: one run per reduced dataset, nested under a parent run for a compare.

Default store: ``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlartifacts``;
``MLFLOW_TRACKING_URI`` overrides it. Each run is logged in an experiment named after the source
dataset, with params (method, budget, model, protocol, seed, hyperparameters), metrics (test accuracy
mean/std, n_examples, fraction_of_source, selection_seconds, eval_train_seconds), tags (kind, method),
the Parquet file as an artifact and as an MLflow dataset input carrying its digest, and a grid image.

MLflow's fluent "active run" is per thread, so every function here opens the run it writes to
explicitly (``run_id=`` / ``parent_run_id=``); nothing relies on an ambient run.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from smallset.data import ImageDataset

warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def configure() -> str:
    """Point MLflow at the store (env or the local SQLite default) and return its URI."""
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def artifact_root() -> Path:
    return Path(os.environ.get("SMALLSET_ARTIFACTS", Path.cwd() / "mlartifacts")).resolve()


def experiment_id(name: str) -> str:
    """The id of the experiment ``name``, created (with a local artifact root) if needed."""
    import mlflow
    from mlflow.exceptions import MlflowException

    configure()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older smallset
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_root().as_uri(),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:  # created concurrently by another worker
        return mlflow.get_experiment_by_name(name).experiment_id


# MLflow 3's UI opens an experiment by its kind: the tag marks smallset's experiments as model training (read
# when the UI's global GenAI/Model-training switch is off); MLflow 3.17 with the switch on follows the URL's
# ``workflowType`` instead (default GenAI: an empty traces "Overview"), hence experiment_url().
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_url(ui_base: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs table (not the GenAI overview)."""
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def experiment_name(source_id: str) -> str:
    """Experiments are named after the source: ``builtin:mnist-mini`` → ``smallset builtin:mnist-mini``."""
    return f"smallset {source_id}"


@contextmanager
def write_lock() -> Iterator[None]:
    """Serialise writes to a local SQLite store across processes (Dask workers): SQLite allows one
    writer, and concurrent MLflow writers otherwise fail with "database is locked". A no-op for
    server or other database stores."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock_path = uri[len("sqlite:///"):] + ".lock"
    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_LOCAL = __import__("threading").local()


@contextmanager
def _maybe_lock() -> Iterator[None]:
    """The write lock, unless this thread already holds it (inside :func:`run`)."""
    if getattr(_LOCAL, "held", False):
        yield
        return
    with write_lock():
        yield


@contextmanager
def run(source_id: str, run_name: str, parent_run_id: str | None = None, tags: dict | None = None) -> Iterator[str]:
    """Open (and finish) a run in the source's experiment; yields its run id."""
    import mlflow

    with write_lock():
        _LOCAL.held = True
        try:
            exp = experiment_id(experiment_name(source_id))
            with mlflow.start_run(experiment_id=exp, run_name=run_name, nested=parent_run_id is not None,
                                  parent_run_id=parent_run_id, tags=tags or {}) as r:
                OPEN_RUNS.add(r.info.run_id)
                try:
                    yield r.info.run_id
                except KeyboardInterrupt:  # stopped by a signal: KILLED, not FAILED
                    mlflow.end_run("KILLED")
                    raise
                finally:
                    OPEN_RUNS.discard(r.info.run_id)
        finally:
            _LOCAL.held = False


OPEN_RUNS: set[str] = set()  # runs this process started and has not finished (marked KILLED on a signal)


def kill_open_runs() -> list[str]:
    """Mark every run this process left open as KILLED (after SIGINT/SIGTERM); best effort."""
    from mlflow.tracking import MlflowClient

    killed = []
    for run_id in list(OPEN_RUNS):
        try:
            MlflowClient(tracking_uri()).set_terminated(run_id, status="KILLED")
            killed.append(run_id)
        except Exception:  # noqa: BLE001 - the store may be unreachable while shutting down
            pass
        OPEN_RUNS.discard(run_id)
    return killed


def start_parent(source_id: str, run_name: str, tags: dict | None = None) -> str:
    """Create a parent run (e.g. a compare) without holding it open in this thread; finish it with
    :func:`end_run`. Children name it as ``parent_run_id``."""
    from mlflow.tracking import MlflowClient

    with write_lock():
        exp = experiment_id(experiment_name(source_id))
        r = MlflowClient(tracking_uri()).create_run(exp, run_name=run_name, tags=tags or {})
    OPEN_RUNS.add(r.info.run_id)
    return r.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    with write_lock():
        MlflowClient(tracking_uri()).set_terminated(run_id, status=status)
    OPEN_RUNS.discard(run_id)


def _flat(params: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def image_grid(ds: ImageDataset, per_class: int = 10) -> np.ndarray:
    """An H×W×C uint8 grid: one row per class, up to ``per_class`` images each (pixel scale, clamped)."""
    from torchvision.utils import make_grid

    rows = []
    blank = torch.zeros(ds.channels, *ds.image_size)
    for idx in ds.class_indices():
        imgs = [ds.images[i] for i in idx[:per_class].tolist()]
        imgs += [blank] * (per_class - len(imgs))
        rows.extend(imgs)
    if not rows:
        rows = [blank]
    grid = make_grid(torch.stack(rows).clamp(0, 1), nrow=per_class, padding=2, pad_value=0.5)
    arr = (grid * 255).round().byte().permute(1, 2, 0).numpy()
    return arr[:, :, :1].repeat(3, axis=2) if ds.channels == 1 else arr


def log_reduced(
    run_id: str,
    *,
    reduced: ImageDataset,
    parquet_path: Path,
    file_digest: str,
    params: dict,
    metrics: dict,
    tags: dict,
    metadata: dict,
) -> None:
    """Log one reduced dataset into an open or finished run (by id)."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    client.log_batch(
        run_id,
        params=[mlflow.entities.Param(k, v) for k, v in _flat(params).items()],
        metrics=[mlflow.entities.Metric(k, float(v), 0, 0) for k, v in metrics.items() if v is not None],
        tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()],
    )
    client.log_artifact(run_id, str(parquet_path), artifact_path="dataset")
    client.log_dict(run_id, metadata, "dataset/metadata.json")
    client.log_image(run_id, image_grid(reduced), artifact_file="grid.png")
    table = pd.DataFrame({
        "label": reduced.labels.numpy(),
        "weight": reduced.effective_weights().numpy(),
        "source_index": (reduced.source_index if reduced.source_index is not None
                         else torch.full((len(reduced),), -1)).numpy(),
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = mlflow.data.from_pandas(table, source=Path(parquet_path).resolve().as_uri(),
                                     name=Path(parquet_path).stem, targets="label", digest=file_digest[:32])
        client.log_inputs(run_id, datasets=[mlflow.entities.DatasetInput(ds._to_mlflow_entity(), tags=[
            mlflow.entities.InputTag("mlflow.data.context", "reduced"),
            mlflow.entities.InputTag("sha256", file_digest),
        ])])


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    with _maybe_lock():
        for k, v in metrics.items():
            if v is not None:
                client.log_metric(run_id, k, float(v), step=step)


def log_series(run_id: str, name: str, values: list[float]) -> None:
    """A curve (e.g. loss per epoch) as a stepped metric."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if not values:
        return
    with _maybe_lock():
        MlflowClient(tracking_uri()).log_batch(
            run_id, metrics=[mlflow.entities.Metric(name, float(v), 0, i) for i, v in enumerate(values)])


def log_json(run_id: str, obj: Any, artifact_file: str) -> None:
    from mlflow.tracking import MlflowClient

    with _maybe_lock():
        MlflowClient(tracking_uri()).log_text(run_id, json.dumps(obj, indent=2, default=str), artifact_file)


def log_file(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    from mlflow.tracking import MlflowClient

    with _maybe_lock():
        MlflowClient(tracking_uri()).log_artifact(run_id, str(path), artifact_path=artifact_path)
