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
os.environ["SMALLSET_CACHE"] = os.path.join(_TMP, "cache")  # expert trajectories (MTT) never go to ~/.cache
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import browser  # noqa: E402  (tests/browser.py; tests/ is on sys.path in pytest's default import mode)
from helpers import make_tiny_dataset, make_tiny_parquet, tiny_compare_kwargs  # noqa: E402,F401


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny tensors gain nothing from intra-op threads, and on a busy 2-core
    machine they cost 3-5× (OpenMP oversubscription). Every unit test gets it (``_unit_tests_use_one_thread``);
    a marked test can still ask for it by name."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def is_unit_test(item: pytest.Item) -> bool:
    """Unit tests are the unmarked ones: no marker of pyproject.toml's list (server, browser, dask, ...)."""
    categories = {line.split(":", 1)[0].strip() for line in item.config.getini("markers")}
    return not any(item.get_closest_marker(name) for name in categories)


@pytest.fixture(autouse=True)
def _unit_tests_use_one_thread(request):
    if is_unit_test(request.node):
        request.getfixturevalue("one_thread")


@pytest.fixture
def tiny_dataset():
    """Factory fixture: ``tiny_dataset(n_per_class=20, num_classes=3, channels=1, size=8, seed=0)``."""
    return make_tiny_dataset


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


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Tests marked ``browser`` need headless Chromium: without it they skip, before any fixture (such as the
    shared compare) is set up, unless CI=true or SMALLSET_REQUIRE_BROWSER=1, where they fail instead."""
    if item.get_closest_marker("browser") is None or browser.chromium_path() is not None:
        return
    if browser.browser_required():
        pytest.fail(f"{browser.MISSING} (required: CI=true or SMALLSET_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(browser.MISSING)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (its own SQLite, under this session's PREFECT_HOME) for all flow tests."""
    from prefect.testing.utilities import prefect_test_harness  # lazy: importing it costs ~6 s

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_compare(prefect_harness, tiny_parquet_session, tmp_path_factory):
    """One sequential compare (threads, 1 worker) on the tiny source, shared by the report, browser and
    Dask tests: 4 cells (2 budgets × 2 seeds) evaluated on mlp and lenet, plus full data."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from smallset.flows.compare_flow import compare_flow

    out = tmp_path_factory.mktemp("compare")
    rows = compare_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(
        output_dir=str(out), **tiny_compare_kwargs(f"parquet:{tiny_parquet_session}"))
    return rows
