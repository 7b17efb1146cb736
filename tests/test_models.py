import pytest
import torch

from smallset.errors import SmallsetError
from smallset.models import create_model, model_names, seeded_model


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_model_runs_on_mnist_and_cifar_shapes(name, shape):
    kw = {"width": 8} if name.startswith("convnet") else {}
    model = create_model(name, shape[0], 10, shape[1:], **kw)
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, 10)
    emb = model.embed(x)
    assert emb.shape == (2, model.feature_dim)
    assert torch.allclose(model.classifier(emb), model(x), atol=1e-5)


def test_convnet_matches_the_papers_parameter_counts():
    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(create_model("convnet", 3, 10, (32, 32))) == 320_010
    assert count(create_model("convnet", 1, 10, (28, 28))) == 317_706
    assert count(create_model("convnet", 3, 100, (32, 32))) == 504_420


def test_convnet_uses_instance_norm_and_exposes_layer_outputs():
    m = create_model("convnet", 3, 10, (32, 32), width=16)
    assert isinstance(m.blocks[0][1], torch.nn.GroupNorm) and m.blocks[0][1].num_groups == 16
    outs = m.layer_outputs(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 32, 32), (16, 16, 16), (16, 8, 8), (16, 4, 4)]


def test_unknown_model_lists_known_names():
    with pytest.raises(SmallsetError, match="known models: .*convnet.*resnet18"):
        create_model("vgg", 3, 10, (32, 32))


def _flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_seeded_model_depends_on_the_seed_only_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = seeded_model("lenet", 1, 10, (28, 28), seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    torch.manual_seed(7)
    expected = create_model("lenet", 1, 10, (28, 28))  # int seed = what torch.manual_seed(seed) gives
    assert torch.equal(_flat_params(a), _flat_params(expected))
    assert not torch.equal(_flat_params(a), _flat_params(seeded_model("lenet", 1, 10, (28, 28), seed=8)))
    # A generator is used and advanced: successive calls draw successive networks of one stream.
    g = torch.Generator().manual_seed(7)
    first, second = (seeded_model("lenet", 1, 10, (28, 28), seed=g) for _ in range(2))
    assert torch.equal(_flat_params(first), _flat_params(expected))
    torch.manual_seed(7)
    create_model("lenet", 1, 10, (28, 28))
    assert torch.equal(_flat_params(second), _flat_params(create_model("lenet", 1, 10, (28, 28))))


def test_seeded_model_is_exact_when_threads_initialise_at_once():
    from concurrent.futures import ThreadPoolExecutor

    seeds = list(range(16))
    sequential = [_flat_params(seeded_model("mlp", 1, 10, (8, 8), seed=s, width=64)) for s in seeds]

    def build(s):
        return _flat_params(seeded_model("mlp", 1, 10, (8, 8), seed=s, width=64))

    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            parallel = list(pool.map(build, seeds))
            assert all(torch.equal(p, q) for p, q in zip(parallel, sequential))
