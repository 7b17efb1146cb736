import pytest
import torch

from smallset.context import RunContext
from smallset.errors import SmallsetError
from smallset.prune.base import SELECTORS, check_fraction, class_budgets

from helpers import make_tiny_dataset


def test_class_budgets_by_hand():
    # 0.1 × (15, 15, 10) = 1.5, 1.5, 1.0 → total round(4.0) = 4; the remainder goes to class 0 (ties: lower index)
    assert class_budgets([15, 15, 10], 0.1) == [2, 1, 1]
    assert class_budgets([500] * 10, 0.02) == [10] * 10
    assert class_budgets([3, 7], 1.0) == [3, 7]
    # a tiny fraction still keeps every class while the total allows it
    assert class_budgets([100, 100, 5], 0.02) == [2, 1, 1]
    assert sum(class_budgets([123, 77, 51], 0.37)) == round(0.37 * 251)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "x"])
def test_fraction_must_lie_in_zero_one(bad):
    with pytest.raises(SmallsetError, match="fraction must"):
        check_fraction(bad)


def test_random_is_class_balanced_seeded_and_unweighted():
    ds = make_tiny_dataset(n_per_class=30, num_classes=3)
    sel = SELECTORS.get("random")()
    a = sel.select(ds, 0.2, RunContext(seed=1))
    b = sel.select(ds, 0.2, RunContext(seed=1))
    c = sel.select(ds, 0.2, RunContext(seed=2))
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert torch.bincount(ds.labels[a.indices], minlength=3).tolist() == [6, 6, 6]
    assert torch.equal(a.weights, torch.ones(18))
    assert len(set(a.indices.tolist())) == 18
