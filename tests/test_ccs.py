"""CCS, coverage-centric coreset selection (prune/ccs.py; docs/methods/ccs.md): the strata, the authors' budget
allocation, the hard cutoff, β from the table or a validation search, the scorer plumbing, bad options, and the
command line end to end."""
import random

import pytest
import torch

from smallset import prune  # noqa: F401  (registers every selector)
from smallset.context import RunContext
from smallset.errors import SmallsetError
from smallset.prune.base import SELECTORS, class_budgets
from smallset.prune.ccs import (
    CCSConfig,
    CCSSelector,
    allocate_budget,
    ccs_sample,
    parse_rates,
    scorer_names,
    stratum_ids,
    table_beta,
)
from smallset.prune.el2n import EL2NSelector
from smallset.prune.forgetting import ForgettingSelector

CTX = dict(model="mlp", model_kwargs={"width": 16})


def test_registered_and_scores_come_from_ranking_selectors():
    assert SELECTORS.get("ccs") is CCSSelector
    assert CCSSelector.higher_is_keep is None and CCSSelector.uses_model
    names = scorer_names()
    assert {"forgetting", "el2n", "grand"} <= set(names)
    assert "random" not in names and "ccs" not in names and "crest" not in names
    keys = CCSSelector().prepare_params()
    assert set(keys) == {"score", "score_options"}
    assert CCSConfig().strata == 50 and CCSConfig().beta == "auto"


def test_strata_have_equal_width_and_the_maximum_falls_in_the_last():
    s = torch.arange(11, dtype=torch.float32)  # 0..10, k = 5: width 2
    assert stratum_ids(s, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert stratum_ids(torch.tensor([0.0, 0.1, 9.9, 10.0]), 2).tolist() == [0, 0, 1, 1]  # width, not quantiles
    assert stratum_ids(torch.full((4,), 3.0), 50).tolist() == [0, 0, 0, 0]  # max = min: one stratum
    assert stratum_ids(torch.tensor([-5.0, -1.0]), 4).tolist() == [0, 3]  # negative maxima are fine


def test_budget_allocation_is_the_authors_smallest_first_equal_share():
    # sizes [1, 6, 0, 3, 8], m = 10. Smallest first: s2 (0) takes min(0, 10//5) = 0; s0 (1): min(1, 10//4) = 1,
    # 9 left; s3 (3): min(3, 9//3) = 3, 6 left; s1 (6): min(6, 6//2) = 3, 3 left; s4 (8): min(8, 3//1) = 3.
    assert allocate_budget(10, [1, 6, 0, 3, 8]) == [1, 3, 0, 3, 3]
    # equal sizes: ties visit the lower index first, the remainder goes to the last visited
    assert allocate_budget(7, [5, 5, 5]) == [2, 2, 3]
    assert allocate_budget(4, [10, 1, 1]) == [2, 1, 1]  # small strata taken whole, their share flows on
    assert allocate_budget(0, [3, 4]) == [0, 0]
    rng = random.Random(0)
    for _ in range(300):
        sizes = [rng.randint(0, 12) for _ in range(rng.randint(1, 8))]
        m = rng.randint(0, sum(sizes))
        b = allocate_budget(m, sizes)
        assert sum(b) == m and all(0 <= x <= s for x, s in zip(b, sizes))
        full = [x for x, s in zip(b, sizes) if x < s]  # strata not taken whole got equal shares (±1)
        assert not full or max(full) - min(full) <= 1


def test_cutoff_drops_the_hardest_then_samples_every_stratum():
    scores = torch.arange(20, dtype=torch.float32)  # high = hard
    pos, cut, filled = ccs_sample(scores, 5, 0.25, 3, torch.Generator().manual_seed(0))
    assert cut == 5 and filled == 3
    picked = pos.tolist()
    assert len(picked) == 5 and len(set(picked)) == 5
    assert all(p < 15 for p in picked)  # the 5 hardest (15..19) are cut
    # rest 0..14 in 3 strata of width 14/3: {0..4}, {5..9}, {10..14}, 5 each → budgets 1, 2, 2
    assert [sum(1 for p in picked if lo <= p <= lo + 4) for lo in (0, 5, 10)] == [1, 2, 2]
    # the cutoff never leaves fewer than m: β = 0.9 of 20 would cut 18, only 15 are cut
    pos, cut, _ = ccs_sample(scores, 5, 0.9, 3, torch.Generator().manual_seed(0))
    assert cut == 15 and sorted(pos.tolist()) == [0, 1, 2, 3, 4]


def test_one_stratum_without_cutoff_is_uniform_random_sampling():
    scores = torch.tensor([0.0, 5.0, 1.0, 9.0, 2.0, 2.0, 7.0, 3.0, 8.0, 4.0])
    counts = torch.zeros(10)
    g = torch.Generator().manual_seed(1)
    draws = 3000
    for _ in range(draws):
        pos, cut, _ = ccs_sample(scores, 3, 0.0, 1, g)
        assert cut == 0 and len(pos) == 3
        counts[pos] += 1
    assert torch.allclose(counts / draws, torch.full((10,), 0.3), atol=0.035)


def test_select_per_class_respects_budgets_and_cutoff(tiny_dataset):
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    scores = torch.zeros(len(ds))
    for c, idx in enumerate(ds.class_indices()):
        scores[idx] = torch.arange(len(idx)).float() * (c + 1)
    cfg = CCSConfig(beta="0.2", strata=4)
    out = CCSSelector(cfg).select(ds, 0.25, RunContext(seed=0, **CTX), prepared=scores)
    budgets = class_budgets(ds.class_counts(), 0.25)
    for c, idx in enumerate(ds.class_indices()):
        kept = idx[torch.isin(idx, out.indices)]
        assert len(kept) == budgets[c]
        hardest = idx[torch.argsort(scores[idx], descending=True)[:4]]  # ⌊0.2·20⌋ = 4 cut per class
        assert not torch.isin(hardest, out.indices).any()
    assert out.info["beta"] == 0.2 and out.info["cut"] == 12
    assert torch.equal(out.weights, torch.ones(len(out.indices))) and torch.equal(out.scores, scores)
    again = CCSSelector(cfg).select(ds, 0.25, RunContext(seed=0, **CTX), prepared=scores)
    assert torch.equal(again.indices, out.indices)  # deterministic for a seed
    other = CCSSelector(cfg).select(ds, 0.25, RunContext(seed=1, **CTX), prepared=scores)
    assert not torch.equal(other.indices, out.indices)
    glob = CCSSelector(CCSConfig(beta="0.5", strata=2, balance=False)).select(
        ds, 0.25, RunContext(seed=0, **CTX), prepared=scores)
    assert len(glob.indices) == 15 and glob.info["cut"] == 30
    assert float(scores[glob.indices].max()) < float(torch.sort(scores, descending=True).values[29])


def test_beta_table_follows_the_pruning_rate():
    table = parse_rates(CCSConfig().beta_table, "beta_table", pairs=True)
    assert table == [(0.3, 0.0), (0.5, 0.0), (0.7, 0.1), (0.8, 0.1), (0.9, 0.3)]
    # pruning rate α = 1 − fraction: the β of the largest listed rate not above α
    got = {f: table_beta(table, f) for f in (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.01)}
    assert got == {1.0: 0.0, 0.7: 0.0, 0.5: 0.0, 0.3: 0.1, 0.2: 0.1, 0.1: 0.3, 0.05: 0.3, 0.01: 0.3}
    ds_scores = torch.arange(100, dtype=torch.float32)
    from helpers import make_tiny_dataset

    ds = make_tiny_dataset(n_per_class=50, num_classes=2)
    out = CCSSelector(CCSConfig(beta="table", strata=5)).select(ds, 0.1, RunContext(**CTX), prepared=ds_scores)
    assert out.info["beta"] == 0.3 and out.info["cut"] == 30 and out.info["beta_rule"] == "table"


def test_auto_beta_is_the_table_on_cifar10_and_the_search_elsewhere(monkeypatch):
    from dataclasses import replace

    from helpers import make_tiny_dataset

    searched = []

    def fake_accuracy(self, train, val, ctx):
        searched.append(len(train))
        return {0: 0.2, 1: 0.9, 2: 0.5}[len(searched) - 1]  # grid 0, 0.1, 0.3: the search picks 0.1

    monkeypatch.setattr(CCSSelector, "candidate_accuracy", fake_accuracy)
    scores = torch.arange(100, dtype=torch.float32)
    ds = make_tiny_dataset(n_per_class=50, num_classes=2)
    on_cifar = CCSSelector().select(replace(ds, dataset_key="cifar10"), 0.1, RunContext(**CTX), prepared=scores)
    assert searched == [] and on_cifar.info["beta_rule"] == "table" and on_cifar.info["beta"] == 0.3
    for key in (None, "mnist"):
        searched.clear()
        out = CCSSelector().select(replace(ds, dataset_key=key), 0.1, RunContext(**CTX), prepared=scores)
        assert len(searched) == 3 and out.info["beta_rule"] == "search" and out.info["beta"] == 0.1
        assert out.info["search_betas"] == [0.0, 0.1, 0.3]
    fixed = CCSSelector(CCSConfig(beta="0.2")).select(replace(ds, dataset_key="cifar10"), 0.1, RunContext(**CTX),
                                                     prepared=scores)
    assert fixed.info["beta"] == 0.2 and fixed.info["beta_rule"] == "fixed"


def test_beta_search_scores_candidates_on_a_validation_split_of_the_training_set(tiny_dataset, monkeypatch):
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    scores = torch.rand(len(ds), generator=torch.Generator().manual_seed(0))
    seen = []
    scripted = iter([0.5, 0.8, 0.8])  # β = 0.1 and 0.2 tie: the smaller wins

    def fake_accuracy(self, train, val, ctx):
        seen.append((train.source_index.clone(), val.source_index.clone()))
        return next(scripted)

    monkeypatch.setattr(CCSSelector, "candidate_accuracy", fake_accuracy)
    cfg = CCSConfig(beta="search", search_grid="0.2,0,0.1", strata=3, val_fraction=0.25)
    ctx = RunContext(seed=0, test=None, **CTX)  # the search never needs the test split
    out = CCSSelector(cfg).select(ds, 0.5, ctx, prepared=scores)
    assert out.info["beta"] == 0.1
    assert out.info["search_betas"] == [0.0, 0.1, 0.2] and out.info["search_val_accuracy"] == [0.5, 0.8, 0.8]
    val = seen[0][1]
    assert all(torch.equal(v, val) for _, v in seen)  # one validation split for every candidate
    assert len(val) == 15 and torch.bincount(ds.labels[val]).tolist() == [5, 5, 5]  # 25 % of each class
    for train, _ in seen:
        assert not torch.isin(train, val).any()  # candidates never train on validation examples
        assert len(train) == sum(class_budgets([15, 15, 15], 0.5))  # fraction of the training part


def test_beta_search_runs_for_real(tiny_dataset):
    ds = tiny_dataset(n_per_class=12, num_classes=3, noise=0.4)
    cfg = CCSConfig(beta="search", search_grid="0,0.3", strata=3, search_protocol="demo")
    out = CCSSelector(cfg).select(ds, 0.5, RunContext(seed=0, **CTX), prepared=torch.arange(36.0))
    assert out.info["beta"] in (0.0, 0.3) and len(out.info["search_val_accuracy"]) == 2
    assert len(out.indices) == 18


def test_prepare_is_the_scorers_scores_and_the_direction_follows_it(tiny_dataset, monkeypatch):
    ds = tiny_dataset(n_per_class=6, num_classes=3)
    ctx = RunContext(seed=2, **CTX)
    cfg = CCSSelector.make_config({"score": "el2n", "score_options": '{"models": 2, "epochs": 1, "batch_size": 8}'})
    assert cfg.score_options == {"models": 2, "epochs": 1, "batch_size": 8}  # JSON from a command line
    got = CCSSelector(cfg).prepare(ds, ctx).value
    want = EL2NSelector(EL2NSelector.make_config({"models": 2, "epochs": 1, "batch_size": 8})).prepare(ds, ctx).value
    assert torch.equal(got, want)
    assert CCSSelector(cfg).prepare_params() == {"score": "el2n",
                                                  "score_options": {"models": 2, "epochs": 1, "batch_size": 8}}
    s = torch.tensor([1.0, 3.0, 2.0])
    assert torch.equal(CCSSelector(CCSConfig(score="forgetting")).difficulty(s), s)
    monkeypatch.setattr(ForgettingSelector, "higher_is_keep", False)  # a score where low = hard
    assert torch.equal(CCSSelector(CCSConfig(score="forgetting")).difficulty(s), -s)


@pytest.mark.parametrize("overrides,field", [
    ({"score": "random"}, "score"), ({"score": "nope"}, "score"), ({"score_options": "[1, 2]"}, "score_options"),
    ({"score_options": '{"nope": 1}'}, "score_options"), ({"score_options": '{"models": "many"}'}, "score_options"),
    ({"beta": "0.3x"}, "beta"), ({"beta": "automatic"}, "beta"), ({"beta": "1"}, "beta"), ({"beta": "-0.1"}, "beta"),
    ({"strata": 0}, "strata"),
    ({"beta_table": "0.9"}, "beta_table"), ({"beta_table": "0.9:1.5"}, "beta_table"),
    ({"search_grid": "a,b"}, "search_grid"), ({"val_fraction": 1.0}, "val_fraction"),
    ({"search_protocol": "slow"}, "search_protocol"),
])
def test_bad_options_are_refused_with_one_sentence(overrides, field):
    with pytest.raises(SmallsetError) as err:
        CCSSelector.make_config(overrides)
    assert err.value.option == field
    assert str(err.value).endswith(".") and "\n" not in str(err.value)


def test_bad_options_are_refused_before_any_run_on_the_command_line(tmp_path, monkeypatch, capsys):
    from helpers import refused_before_anything_runs

    err = refused_before_anything_runs(["prune", "--method", "ccs", "--score", "random", "--no-progress"],
                                       tmp_path, monkeypatch, capsys)
    assert "--score" in err and "forgetting" in err


@pytest.mark.server
def test_cli_prune_ccs_on_el2n_end_to_end(prefect_harness, tmp_path, monkeypatch, capsys):
    from smallset import store
    from smallset.flows.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ccs.parquet"
    code = main(["prune", "--source", "builtin:mnist-mini", "--method", "ccs", "--score", "el2n", "--fraction",
                 "0.05", "--model", "mlp", "--eval-epochs", "1", "--eval-runs", "1", "--device", "cpu",
                 "--no-progress", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    ds = store.read_reduced(out)
    meta = store.read_metadata(out)
    assert meta["method"] == "ccs" and meta["params"]["score"] == "el2n"
    assert len(ds) == 250 and ds.class_counts() == [25] * 10  # 5 % of 500 per class
    assert (ds.source_index >= 0).all() and len(torch.unique(ds.source_index)) == 250


@pytest.mark.parametrize("name", ["el2n", "grand", "ccs", "infobatch"])
def test_method_help_lists_the_options(name, capsys):
    """argparse formats every help text (a bare % in one would crash --help)."""
    from smallset.flows.cli import main

    with pytest.raises(SystemExit) as e:
        main(["prune", "--method", name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    flag = {"el2n": "--models", "grand": "--gradient", "ccs": "--score-options", "infobatch": "--prune-ratio"}[name]
    assert flag in out
