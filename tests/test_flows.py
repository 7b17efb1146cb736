"""End to end through Prefect and MLflow on a tiny Parquet source (one shared Prefect test server)."""
import pytest
import torch
from mlflow.tracking import MlflowClient

from smallset import store, tracking
from smallset.flows.cli import main
from smallset.options import RunOptions

pytestmark = pytest.mark.server

FAST = dict(model="mlp", model_kwargs={"width": 16}, eval_epochs=3, eval_runs=2, device="cpu")


def fast(source, **more) -> RunOptions:
    return RunOptions(source=source, **FAST, **more)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_prune_flow_writes_parquet_and_logs_mlflow(prefect_harness, tiny_parquet, in_tmp):
    from smallset.flows.prune_flow import prune_flow

    out = in_tmp / "r.parquet"
    row = prune_flow(method="random", fraction=0.5, output=str(out), options=fast(f"parquet:{tiny_parquet}", seed=3))
    assert out.exists() and row["n_examples"] == 30 and 0 <= row["test_accuracy"] <= 1
    ds = store.read_reduced(out)
    assert ds.class_counts() == [10, 10, 10]
    meta = store.read_metadata(out)
    assert meta["method"] == "random" and meta["seed"] == 3 and meta["kind"] == "prune"
    assert meta["evaluation"]["mlp"]["runs"] == 2

    client = MlflowClient(tracking.tracking_uri())
    run = client.get_run(row["run_id"])
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == tracking.experiment_name(f"parquet:{tiny_parquet}")
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    assert m["n_examples"] == 30 and m["fraction_of_source"] == 0.5
    assert m["test_accuracy"] == pytest.approx(row["test_accuracy"])
    for key in ("test_accuracy_std", "selection_seconds", "eval_train_seconds"):
        assert key in m
    assert p["method"] == "random" and p["fraction"] == "0.5" and p["seed"] == "3" and p["protocol"] == "quick"
    assert t["kind"] == "prune" and t["method"] == "random"
    files = {f.path for f in client.list_artifacts(row["run_id"], "dataset")}
    assert "dataset/r.parquet" in files
    assert "grid.png" in {f.path for f in client.list_artifacts(row["run_id"])}
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == row["sha256"][:32]


def test_same_seed_same_selection_other_seed_differs(prefect_harness, tiny_parquet, in_tmp):
    from smallset.flows.prune_flow import prune_flow

    picks = []
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        prune_flow(method="random", fraction=0.3, output=str(in_tmp / f"{name}.parquet"),
                   options=fast(f"parquet:{tiny_parquet}", seed=seed, no_eval=True))
        picks.append(store.read_reduced(in_tmp / f"{name}.parquet").source_index)
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])


def test_compare_flow_nests_child_runs_and_saves_the_table(prefect_harness, tiny_parquet, in_tmp):
    from prefect.artifacts import Artifact

    from smallset.flows.compare_flow import compare_flow

    rows = compare_flow(methods=["random"], fractions=[0.2, 0.5], ipcs=[], seeds=[0, 1],
                        output_dir=str(in_tmp / "out"), options=fast(f"parquet:{tiny_parquet}"))
    assert [r["method"] for r in rows] == ["full"] + ["random"] * 4
    assert rows[0]["n_examples"] == 60
    parent = rows[0]["parent_run_id"]
    client = MlflowClient(tracking.tracking_uri())
    exp = client.get_experiment_by_name(tracking.experiment_name(f"parquet:{tiny_parquet}"))
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_id for r in kids) == sorted(r["run_id"] for r in rows)
    assert all(r.info.status == "FINISHED" for r in kids)
    csv_text = (in_tmp / "out").glob("compare-*/results.csv").__next__().read_text()
    assert csv_text.count("\n") == 6
    art = Artifact.get("smallset-compare")
    assert art is not None and "random" in str(art.data)


def test_cli_prune_end_to_end(prefect_harness, tiny_parquet, in_tmp, capsys):
    code = main(["prune", "--source", f"parquet:{tiny_parquet}", "--fraction", "0.5", "--model", "mlp",
                 "--model-arg", "width=16", "--eval-epochs", "2", "--eval-runs", "1", "--device", "cpu",
                 "--output", "cli.parquet", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "wrote cli.parquet" in out and "MLflow run" in out
    assert store.read_reduced(in_tmp / "cli.parquet").class_counts() == [10, 10, 10]


def test_demo_prints_the_table_and_the_mlflow_location(prefect_harness, tiny_parquet, in_tmp, capsys, monkeypatch):
    import smallset.flows.cli as cli

    monkeypatch.setattr(cli, "DEMO", dict(cli.DEMO, source=f"parquet:{tiny_parquet}", model="mlp", ipcs=[2]))
    monkeypatch.setattr(cli, "demo_methods", lambda: ["random"])
    assert main(["demo", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "full" in out and "random  prune  fraction=0.1" in out  # ipc 2 × 3 classes of 60 images
    assert "MLflow: sqlite:" in out and "report:" in out
    assert list(in_tmp.glob("smallset-out/compare-*/results.csv"))
