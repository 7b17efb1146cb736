"""Environment defaults applied before Prefect is imported (it reads its settings at import time)."""
import os


def apply_defaults() -> None:
    # A fresh ephemeral Prefect server needs ~18 s to migrate its database on 2 cores; 20 s is the
    # default timeout, so give it 120 s (measured with Prefect 3.8.8 and a fresh PREFECT_HOME).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


apply_defaults()
