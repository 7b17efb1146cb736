"""The result tables: a ± only over at least 3 evaluation runs, and the gain over random at the same number
of images and seeds, computed by hand."""
import pytest

from smallset.tasks.results import format_summary, format_table, summarize


def row(method, n, seed, accs, kind="prune", budget=None, steps=None):
    mean = sum(accs) / len(accs)
    return {"method": method, "kind": kind, "budget": budget or f"n={n}", "n_examples": n, "seed": seed,
            "test_accuracy": mean, "test_accuracy_std": 0.01, "test_accuracies": accs, "eval_runs": len(accs),
            "eval_steps": steps, "selection_seconds": 0.0, "eval_train_seconds": 1.0}


def test_single_run_prints_no_spread():
    table = format_table([row("random", 10, 0, [0.5])])
    line = table.splitlines()[2]
    assert "50.00" in line and "1.00" not in line  # the std column shows "–" for one run
    assert "1.00" in format_table([row("random", 10, 0, [0.5, 0.5, 0.5])]).splitlines()[2]


def test_gain_over_random_by_hand():
    rows = [row("random", 10, 0, [0.50, 0.52, 0.54]), row("random", 10, 1, [0.56, 0.58, 0.60]),
            row("herding", 10, 0, [0.60, 0.62, 0.64]), row("herding", 10, 1, [0.60, 0.60, 0.60]),
            row("dm", 10, 0, [0.70], kind="distill", budget="ipc=1"),
            row("random", 20, 0, [0.9, 0.9, 0.9])]
    summary = {(s["method"], s["n_examples"]): s for s in summarize(rows)}
    herd, rand = summary[("herding", 10)], summary[("random", 10)]
    assert herd["runs"] == 6 and herd["seeds"] == 2
    assert herd["accuracy"] == pytest.approx(0.61) and rand["accuracy"] == pytest.approx(0.55)
    assert herd["gain"] == pytest.approx(0.06)
    # sample stds: herding sqrt(0.0014/5), random sqrt(0.007/5); s.e. of the difference of means
    s_h, s_r = (0.0014 / 5) ** 0.5, (0.007 / 5) ** 0.5
    assert herd["accuracy_std"] == pytest.approx(s_h)
    assert herd["gain_se"] == pytest.approx((s_h ** 2 / 6 + s_r ** 2 / 6) ** 0.5)
    dm = summary[("dm", 10)]  # the same 10 images as random's budget, seed 0 only: gain against seed 0
    assert dm["gain"] == pytest.approx(0.70 - 0.52) and dm["gain_se"] is None and dm["accuracy_std"] is None
    assert rand["gain"] is None and summary[("random", 20)]["gain"] is None
    text = format_summary(list(summary.values()))
    assert "+6.00" in text and "+18.00" in text
