"""prefect.yaml deployed for real: a Prefect server on 127.0.0.1, a process work pool, `prefect deploy
--all`, a triggered tiny run and one worker pass. Every process started here is stopped by PID."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from smallset import store, tracking

from browser import free_port

# a real `prefect server start`, `prefect deploy --all` and a worker, each its own process
pytestmark = [pytest.mark.server, pytest.mark.multiprocess, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _api(base: str, path: str, body: dict | None = None):
    req = urllib.request.Request(base + path, method="POST" if body is not None else "GET",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=30))


def _stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_deploy_trigger_and_run_with_a_worker(tmp_path, tiny_parquet):
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "server-home"), PREFECT_API_URL=base,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", SMALLSET_ROOT=str(ROOT), PREFECT_LOGGING_LEVEL="WARNING")
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if _api(base, "/health") is True:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "the Prefect server did not start in 180 s"
            time.sleep(1)

        def prefect(*args, timeout=180):
            r = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                               timeout=timeout)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
            return r.stdout

        prefect("work-pool", "create", "smallset-process", "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        names = {d["name"] for d in _api(base, "/deployments/filter", {})}
        assert {"nightly-compare", "prune", "distill"} <= names
        out = tmp_path / "deployed.parquet"
        options = {"source": f"parquet:{tiny_parquet}", "model": "mlp", "eval_epochs": 2, "eval_runs": 1,
                   "device": "cpu"}
        prefect("deployment", "run", "prune/prune", "--params",
                json.dumps({"fraction": 0.5, "output": str(out), "options": options}))
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "smallset-process", "--run-once"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        wout, _ = worker.communicate(timeout=300)
        runs = _api(base, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"is_null_": False}}})
        states = [r["state"]["type"] for r in runs if r["parameters"].get("output") == str(out)]
        assert states == ["COMPLETED"], wout[-3000:]
        assert store.read_reduced(out).class_counts() == [10, 10, 10]
        client = MlflowClient(tracking.tracking_uri())
        exp = client.get_experiment_by_name(tracking.experiment_name(f"parquet:{tiny_parquet}"))
        found = client.search_runs([exp.experiment_id], f"tags.`smallset.output` = '{out}'")
        assert len(found) == 1 and found[0].info.status == "FINISHED"
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)
        log.close()
    assert server.poll() is not None
