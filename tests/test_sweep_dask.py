"""compare on a 2-worker local Dask cluster equals the sequential run, and every child is in MLflow."""
import pytest
from mlflow.tracking import MlflowClient

from smallset import store, tracking

from helpers import tiny_compare_kwargs

pytestmark = [pytest.mark.dask, pytest.mark.server, pytest.mark.slow]


def _key(r):
    return (r["method"], r["budget"], r["seed"])


def test_dask_sweep_equals_sequential(tiny_compare, tiny_parquet_session, tmp_path):
    from smallset.flows.compare_flow import compare_flow
    from smallset.tasks.runners import make_task_runner

    runner = make_task_runner("dask", workers=2)
    rows = compare_flow.with_options(task_runner=runner)(
        output_dir=str(tmp_path), report=False, **tiny_compare_kwargs(f"parquet:{tiny_parquet_session}"))
    seq = {_key(r): r for r in tiny_compare}
    par = {_key(r): r for r in rows}
    assert len(par) == 5 and set(par) == set(seq)  # 2 budgets × 2 seeds + full data
    for k, r in par.items():
        for col in ("n_examples", "test_accuracy", "test_accuracy/mlp", "test_accuracy/lenet"):
            assert r[col] == seq[k][col], (k, col)
        if r["output"]:
            a, b = store.read_reduced(r["output"]), store.read_reduced(seq[k]["output"])
            assert a.same_content(b)
    client = MlflowClient(tracking.tracking_uri())
    parent = rows[0]["parent_run_id"]
    exp = client.get_run(parent).info.experiment_id
    kids = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(k.info.run_id for k in kids) == sorted(r["run_id"] for r in rows)
    assert all(k.info.status == "FINISHED" for k in kids)
    assert client.get_run(parent).info.status == "FINISHED"
