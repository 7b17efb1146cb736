"""What a method's preparation measured reaches MLflow, from the command line run in this process and from
a Prefect flow. The pipeline prepares and reduces on separate method instances (and the preparation may come
from Prefect's cache), so the information has to travel in the prepared state, never on the method."""
import json

import pytest
from mlflow.tracking import MlflowClient

from smallset import tracking
from smallset.flows.cli import main

pytestmark = pytest.mark.server

COMMON = ["--source", "{source}", "--model", "mlp", "--model-arg", "width=16", "--no-eval", "--device", "cpu",
          "--no-progress"]
CASES = {
    # a selector whose scoring runs are independent units: per-epoch accuracy of run 0 (a curve)
    "forgetting": (["prune", "--method", "forgetting", "--fraction", "0.5", "--score-epochs", "2",
                    "--score-runs", "2"], "series", "forgetting.score_train_accuracy", 2),
    "el2n": (["prune", "--method", "el2n", "--fraction", "0.5", "--models", "2", "--epochs", "1"],
             "series", "el2n.run_mean_el2n", 2),
    # a condenser whose preparation trains experts: their manifest and seconds
    "mtt": (["distill", "--method", "mtt", "--ipc", "2", "--iterations", "2", "--num-experts", "2",
             "--train-epochs", "2", "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch", "2",
             "--expert-batch", "8"], "info", "expert_manifest", 2),
}


@pytest.mark.parametrize("via", ["direct", "prefect"])
@pytest.mark.parametrize("method", sorted(CASES))
def test_prepared_information_reaches_mlflow(method, via, prefect_harness, tiny_parquet, tmp_path, monkeypatch,
                                            capsys):
    argv, where, key, expected = CASES[method]
    monkeypatch.chdir(tmp_path)
    if via == "prefect":
        monkeypatch.setenv("SMALLSET_USE_PREFECT", "1")
    out = tmp_path / f"{method}.parquet"
    common = [a.format(source=f"parquet:{tiny_parquet}") for a in COMMON]
    assert main(argv + common + ["--output", str(out), "--seed", "1"]) == 0, capsys.readouterr().err
    client = MlflowClient(tracking.tracking_uri())
    (run,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
              if r.data.tags.get("smallset.output") == str(out)]
    if where == "series":
        history = client.get_metric_history(run.info.run_id, key)
        assert len(history) == expected, f"{key} did not reach MLflow ({via})"
    else:
        local = client.download_artifacts(run.info.run_id, "info.json", str(tmp_path))
        info = json.loads(open(local).read())
        assert info[key]["experts_used"] == expected, f"{key} did not reach MLflow ({via})"
        assert run.data.metrics[f"{method}.expert_seconds"] >= 0
