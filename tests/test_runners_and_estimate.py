"""Task-runner choice, GPU placement, the cross-architecture matrix columns and the pre-run estimate."""
import pytest
import torch

from smallset import estimate
from smallset.errors import SmallsetError
from smallset.options import RunOptions
from smallset.report import pareto_front
from smallset.tasks import record, runners, steps
from smallset.tasks.spec import Budget, resolve_cell
from smallset.train import EvalResult

from helpers import make_tiny_dataset


def test_gpu_placement_one_cell_per_gpu_with_a_fake_device_count():
    kw = runners.local_cluster_kwargs(workers=1, gpus=4)
    assert kw["n_workers"] == 4 and kw["resources"] == {"GPU": 1} and kw["threads_per_worker"] == 1
    assert [runners.placed_device("auto", device_count=4, worker_name=str(i)) for i in range(4)] == \
        ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert runners.placed_device("cuda", device_count=2, worker_name="tcp-worker-3") == "cuda:1"
    # an explicit device, one GPU, or no Dask worker: unchanged
    assert runners.placed_device("cpu", device_count=4, worker_name="1") == "cpu"
    assert runners.placed_device("auto", device_count=1, worker_name="1") == "auto"
    assert runners.placed_device("auto", device_count=4, worker_name=None) == "auto"


def test_gpu_annotation_marks_submissions_with_the_gpu_resource():
    import dask

    with runners.gpu_annotation(2):
        assert dask.get_annotations()["resources"] == {"GPU": 1}
    with runners.gpu_annotation(0):
        assert "resources" not in dask.get_annotations()


@pytest.mark.parametrize("args, message", [
    (("processes",), "Unknown runner"), (("threads", 0), "at least 1"),
    (("threads", 1, "tcp://x:1"), "need --runner dask"), (("dask", 1, None, -1), "0 or more"),
])
def test_bad_runner_arguments(args, message):
    with pytest.raises(SmallsetError, match=message):
        runners.check_runner_args(*args)


def test_cross_architecture_matrix_columns():
    def e(model, acc):
        return EvalResult("quick", model, [acc, acc], [1.0, 2.0], 5)

    cols = record.accuracy_columns({"convnet": e("convnet", 0.9), "mlp": e("mlp", 0.7)})
    assert cols["test_accuracy"] == pytest.approx(0.9) and cols["test_accuracy/convnet"] == pytest.approx(0.9)
    assert cols["test_accuracy/mlp"] == pytest.approx(0.7)
    assert cols["eval_train_seconds/mlp"] == 3.0
    assert record.accuracy_columns({"mlp": e("mlp", 0.5)}) == {"test_accuracy": 0.5, "test_accuracy_std": 0.0,
                                                              "eval_train_seconds": 3.0, "eval_runs": 2,
                                                              "eval_steps": None, "test_accuracies": [0.5, 0.5]}
    with_recipe = EvalResult("quick", "mlp", [0.5], [1.0], 21, extra={"recipe": {"batch_size": 256}, "n_examples": 600})
    assert record.eval_steps(with_recipe) == 21 * 3  # 21 passes of ceil(600 / 256) batches


def test_pareto_front_by_hand():
    pts = [(10, 0.5), (1, 0.4), (5, 0.6), (20, 0.55), (2, 0.3)]
    assert pareto_front(pts) == [1, 2]  # (1, .4) then (5, .6); the others cost more for less


def test_estimate_counts_data_model_and_activations():
    ds = make_tiny_dataset(n_per_class=50, size=16)
    est = estimate.estimate_training(ds, "mlp", {"width": 16}, batch_size=32, device=torch.device("cpu"))
    data = 2 * 150 * 16 * 16 * 4
    params = (256 * 16 + 16) + (16 * 16 + 16) + (16 * 3 + 3)
    assert est.peak_bytes > data + 4 * params * 4
    assert est.seconds_per_epoch > 0 and est.fits
    assert "GiB" in est.describe()


def test_estimate_refuses_what_cannot_fit_unless_forced():
    big = estimate.Estimate(peak_bytes=64 * estimate.GiB, available_bytes=8 * estimate.GiB,
                            seconds_per_epoch=1.0, device="cpu")
    with pytest.raises(SmallsetError, match="needs about 64.0 GiB .* --force"):
        estimate.check(big)
    estimate.check(big, force=True)


def test_preflight_refuses_through_the_pipeline(monkeypatch):
    monkeypatch.setattr(estimate, "available_bytes", lambda device: 1024)
    ds = make_tiny_dataset(n_per_class=5, size=16)
    cell = resolve_cell("random", Budget(fraction=0.5), RunOptions(model="mlp", device="cpu"))
    with pytest.raises(SmallsetError, match="--force"):
        steps.preflight(cell, ds, "test")
    cell.options.force = True
    steps.preflight(cell, ds, "test")
