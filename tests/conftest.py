"""Shared test set-up: an isolated Prefect home and MLflow store per session, and tiny datasets.

Prefect reads its settings at import, so the environment is set here, before anything imports it.
"""
import os
import shutil
import tempfile

_TMP = tempfile.mkdtemp(prefix="smallset-tests-")
os.environ["PREFECT_HOME"] = os.path.join(_TMP, "prefect-home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.pop("PREFECT_API_URL", None)
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{os.path.join(_TMP, 'mlflow.db')}"
os.environ["SMALLSET_ARTIFACTS"] = os.path.join(_TMP, "mlartifacts")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from smallset.data import ImageDataset  # noqa: E402


def make_tiny_dataset(n_per_class: int = 20, num_classes: int = 3, channels: int = 1, size: int = 8,
                      seed: int = 0, noise: float = 0.15) -> ImageDataset:
    """A learnable toy dataset: each class has its own random template; examples are template + noise,
    in [0, 1]. Class-major order is avoided (labels interleave) so order bugs show."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, channels, size, size, generator=g)
    labels = torch.arange(num_classes).repeat(n_per_class)
    images = (templates[labels] + noise * torch.randn(len(labels), channels, size, size, generator=g)).clamp(0, 1)
    return ImageDataset(
        images=images.float(), labels=labels.long(), classes=[f"c{i}" for i in range(num_classes)],
        mean=tuple([0.5] * channels), std=tuple([0.25] * channels), name="tiny",
        source_index=torch.arange(len(labels)),
    )


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny tensors gain nothing from intra-op threads, and on a busy 2-core
    machine they cost 3-5× (OpenMP oversubscription). Modules opt in with ``pytest.mark.usefixtures``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_dataset():
    """Factory fixture: ``tiny_dataset(n_per_class=20, num_classes=3, channels=1, size=8, seed=0)``."""
    return make_tiny_dataset


def write_hf_parquet(ds: ImageDataset, path, class_names=True):
    """Write ``ds`` in the Hugging Face image layout (PNG bytes, label, class names in metadata)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallset.data import encode_png

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": encode_png(x), "path": None} for x in ds.images], type=image_type),
        "label": pa.array(ds.labels.tolist(), type=pa.int64()),
    })
    if class_names:
        feats = {"info": {"features": {"image": {"_type": "Image"},
                                       "label": {"names": ds.classes, "_type": "ClassLabel"}}}}
        table = table.replace_schema_metadata({b"huggingface": json.dumps(feats).encode()})
    pq.write_table(table, path)
    return path


def make_tiny_parquet(d):
    """A directory with train.parquet (3 classes × 20, 1×16×16, 8-bit pixels) and test.parquet (3 × 10)."""
    d.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 20, 0), ("test", 10, 1)):
        ds = make_tiny_dataset(n_per_class=n, seed=seed, size=16)
        ds.images = (ds.images * 255).round() / 255
        write_hf_parquet(ds, d / f"{split}.parquet")
    return d


@pytest.fixture
def tiny_parquet(tmp_path):
    return make_tiny_parquet(tmp_path / "tinyset")


@pytest.fixture(scope="session")
def tiny_parquet_session(tmp_path_factory):
    return make_tiny_parquet(tmp_path_factory.mktemp("tinyset"))


@pytest.fixture(scope="session")
def tmp_root():
    return _TMP


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (its own SQLite, under this session's PREFECT_HOME) for all flow tests."""
    from prefect.testing.utilities import prefect_test_harness  # lazy: importing it costs ~6 s

    with prefect_test_harness(server_startup_timeout=120):
        yield


TINY_COMPARE = dict(methods=["random"], fractions=[0.2, 0.5], ipcs=[], seeds=[0, 1], model="mlp",
                    model_kwargs={"width": 16}, eval_models=["mlp", "lenet"], eval_epochs=3, eval_runs=1,
                    device="cpu")


@pytest.fixture(scope="session")
def tiny_compare(prefect_harness, tiny_parquet_session, tmp_path_factory):
    """One sequential compare (threads, 1 worker) on the tiny source, shared by the report, browser and
    Dask tests: 4 cells (2 budgets × 2 seeds) evaluated on mlp and lenet, plus full data."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from smallset.flows.compare_flow import compare_flow

    out = tmp_path_factory.mktemp("compare")
    rows = compare_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(
        source=f"parquet:{tiny_parquet_session}", output_dir=str(out), **TINY_COMPARE)
    return rows
