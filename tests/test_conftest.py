"""The shared test set-up (tests/conftest.py): every unit test runs with one torch thread, without asking."""
import pytest
import torch

from conftest import is_unit_test


def test_a_unit_test_runs_with_one_torch_thread(request):
    assert is_unit_test(request.node)
    assert "one_thread" in request.fixturenames
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("category", ["server", "browser", "dask", "multiprocess", "slow"])
def test_a_marked_test_is_not_a_unit_test(request, category):
    request.node.add_marker(getattr(pytest.mark, category))
    assert not is_unit_test(request.node)


def test_other_markers_keep_a_test_a_unit_test(request):
    """parametrize, filterwarnings, usefixtures... are not categories: only pyproject.toml's markers count."""
    request.node.add_marker(pytest.mark.filterwarnings("ignore"))
    assert is_unit_test(request.node)
