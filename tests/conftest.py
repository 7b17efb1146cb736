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

from core.data import ImageDataset  # noqa: E402


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
def tiny_dataset():
    """Factory fixture: ``tiny_dataset(n_per_class=20, num_classes=3, channels=1, size=8, seed=0)``."""
    return make_tiny_dataset


@pytest.fixture(scope="session")
def tmp_root():
    return _TMP


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TMP, ignore_errors=True)
