"""The comparison policy (smallset.comparison), computed by hand: each result's baseline, the gain over it and
its standard error per group and per cell, the spread rule and the budget label."""
import pytest

from smallset import comparison
from smallset.comparison import budget_label, cell_gains, groups, has_spread, mean_std


def evaluated(method, seed, accs, n=10, kind="prune", budget=None):
    """A row retrained with the evaluation recipe: every run's accuracy and their mean."""
    return {"method": method, "kind": kind, "budget": budget or f"n={n}", "n_examples": n, "seed": seed,
            "test_accuracy": sum(accs) / len(accs), "test_accuracies": accs}


def trained(method, seed, own, schedule, budget="fraction=0.1", n=50):
    """A training-time method's row: judged by the accuracy of the model it trained itself."""
    return {"method": method, "kind": "prune", "budget": budget, "n_examples": n, "seed": seed,
            "test_accuracy": 0.99, "test_accuracies": [0.99], "method_test_accuracy": own,
            "method_schedule": schedule}


def by_method(rows):
    return {g.method: g for g in groups(rows)}


def gains(rows):
    return {(r["method"], r["seed"]): g for r, g in cell_gains(rows)}


def test_a_method_against_random_over_three_seeds_with_its_standard_error():
    rows = [evaluated("random", 0, [0.50]), evaluated("random", 1, [0.55]), evaluated("random", 2, [0.60]),
            evaluated("herding", 0, [0.60]), evaluated("herding", 1, [0.62]), evaluated("herding", 2, [0.64])]
    herding = by_method(rows)["herding"]
    # means 0.62 and 0.55; sample variances 0.0008/2 and 0.005/2; s.e. sqrt(0.0004/3 + 0.0025/3)
    assert herding.mean == pytest.approx(0.62) and herding.spread == pytest.approx(0.02)
    assert herding.gain == pytest.approx(0.07)
    assert herding.gain_se == pytest.approx((0.0029 / 3) ** 0.5)
    assert by_method(rows)["random"].gain is None  # the baseline is not judged against itself
    # per cell: the same seed's random run
    assert gains(rows) == pytest.approx({("herding", 0): 0.10, ("herding", 1): 0.07, ("herding", 2): 0.04})


def test_under_three_runs_there_is_no_spread_and_no_standard_error():
    rows = [evaluated("random", 0, [0.50]), evaluated("random", 1, [0.60]),
            evaluated("herding", 0, [0.70]), evaluated("herding", 1, [0.80])]
    herding = by_method(rows)["herding"]
    assert herding.gain == pytest.approx(0.20)
    assert herding.spread is None and herding.gain_se is None
    assert not has_spread(2) and has_spread(3) and not has_spread(None)
    assert mean_std([0.5]) == (0.5, None) and mean_std([]) == (None, None)
    # a third seed gives both sides a spread: now the gain has a standard error
    rows += [evaluated("random", 2, [0.70]), evaluated("herding", 2, [0.90])]
    herding = by_method(rows)["herding"]
    assert herding.spread == pytest.approx(0.1) and herding.gain_se == pytest.approx((0.02 / 3) ** 0.5)


def test_evaluation_runs_pool_over_seeds_and_the_baseline_only_on_the_methods_seeds():
    rows = [evaluated("random", 0, [0.50, 0.52, 0.54]), evaluated("random", 1, [0.90, 0.90, 0.90]),
            evaluated("herding", 0, [0.60, 0.62, 0.64])]
    herding = by_method(rows)["herding"]  # seed 0 only: random's seed 1 is no part of its baseline
    assert len(herding.accuracies) == 3 and herding.gain == pytest.approx(0.10)
    assert herding.gain_se == pytest.approx((0.0004 / 3 + 0.0004 / 3) ** 0.5)


def test_the_baseline_is_matched_on_the_number_of_images():
    rows = [evaluated("random", 0, [0.50], n=10, budget="fraction=0.1"),
            evaluated("random", 0, [0.80], n=20, budget="fraction=0.2"),
            evaluated("dm", 0, [0.70], n=10, kind="distill", budget="ipc=1")]
    assert by_method(rows)["dm"].gain == pytest.approx(0.20)  # random at 10 images, whatever its budget's label
    assert gains(rows) == pytest.approx({("dm", 0): 0.20})


def test_training_time_rows_are_matched_on_their_schedule_and_never_across_schedules():
    rows = [trained("random_steps", 0, 0.60, "A"), trained("random_steps", 0, 0.80, "B"),
            trained("crest", 0, 0.65, "A"), trained("infobatch", 0, 0.90, "B"), trained("infobatch", 0, 0.50, "C"),
            evaluated("random", 0, [0.10], n=50)]  # random at the same images: not a training-time baseline
    got = {(g.method, g.members[0].get("method_schedule")): g for g in groups(rows)}
    assert got[("crest", "A")].gain == pytest.approx(0.05)
    assert got[("infobatch", "B")].gain == pytest.approx(0.10)
    assert got[("infobatch", "C")].gain is None  # no random_steps on schedule C
    assert got[("random_steps", "A")].gain is None and got[("random_steps", "B")].gain is None
    assert got[("crest", "A")].role.judged_by == "its own training"
    assert gains(rows) == pytest.approx({("crest", 0): 0.05, ("infobatch", 0): 0.10})
    # and on another budget, the same schedule is no match either
    assert gains([trained("random_steps", 0, 0.60, "A"), trained("crest", 0, 0.65, "A", budget="fraction=0.2")]) \
        == {}


def test_full_data_rows_get_no_gain():
    rows = [evaluated("random", 0, [0.50], n=100), evaluated("full", 0, [0.95], n=100, kind="full",
                                                             budget="fraction=1")]
    assert by_method(rows)["full"].gain is None
    assert gains(rows) == {}


def test_rows_whose_baseline_is_missing_get_none():
    rows = [evaluated("random", 0, [0.50], n=10), evaluated("herding", 0, [0.60], n=20),
            evaluated("herding", 1, [0.60], n=10)]  # other images; the same images on a seed random never ran
    assert [g.gain for g in groups(rows) if g.method == "herding"] == [None, None]
    assert gains(rows) == {}
    assert comparison.baseline_rows(rows[2], rows) == []


def test_budget_label_per_kind():
    assert budget_label("distill", {"ipc": 10, "fraction": 0.2}) == "ipc=10"
    assert budget_label("prune", {"ipc": 10, "fraction": 0.2}) == "fraction=0.2"
    assert budget_label("prune", {"fraction": "0.10000"}) == "fraction=0.1"  # MLflow gives params back as text
    assert budget_label("full", {}) == "fraction=1" and budget_label("full", {"fraction": "None"}) == "fraction=1"
