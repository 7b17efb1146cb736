"""Parallel processes logging to one SQLite MLflow store lose nothing (writes are serialised)."""
import multiprocessing as mp

import pytest
from mlflow.tracking import MlflowClient

from smallset import tracking

pytestmark = pytest.mark.multiprocess


def _worker(worker: int, parent: str, n: int) -> None:
    for i in range(n):
        with tracking.run("parallel-test", f"w{worker}-{i}", parent_run_id=parent, tags={"worker": str(worker)}) as rid:
            tracking.log_metrics(rid, {"value": worker * 100 + i, "other": 1.0})
            tracking.log_series(rid, "curve", [0.1 * k for k in range(20)])
            tracking.log_json(rid, {"worker": worker, "i": i}, "info.json")


def test_three_processes_log_every_run(tmp_path):
    parent = tracking.start_parent("parallel-test", "parent")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(w, parent, 3)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    tracking.end_run(parent)
    client = MlflowClient(tracking.tracking_uri())
    exp = client.get_experiment_by_name(tracking.experiment_name("parallel-test"))
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=100)
    assert len(kids) == 9
    assert sorted(int(k.data.metrics["value"]) for k in kids) == sorted(w * 100 + i for w in range(3) for i in range(3))
    assert all(len(client.get_metric_history(k.info.run_id, "curve")) == 20 for k in kids)
    assert all(k.info.status == "FINISHED" for k in kids)
