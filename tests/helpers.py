"""Plain helpers shared by the tests: tiny datasets, a Hugging Face-layout Parquet writer and the tiny compare's
settings. Test modules import them as ``from helpers import …``: pytest's default (prepend) import mode puts
tests/ on sys.path, so this works under both ``pytest`` and ``python -m pytest``.

Import this only from tests or conftest.py (conftest.py sets the Prefect/MLflow environment first).
"""
import torch

from smallset.data import ImageDataset


def make_tiny_dataset(n_per_class: int = 20, num_classes: int = 3, channels: int = 1, size: int = 8,
                      seed: int = 0, noise: float = 0.15) -> ImageDataset:
    """A learnable toy dataset: each class has its own random template; examples are template + noise,
    in [0, 1]. Class-major order is avoided (labels interleave) so order bugs show."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, channels, size, size, generator=g)
    labels = torch.arange(num_classes).repeat(n_per_class)
    images = (templates[labels] + noise * torch.randn(len(labels), channels, size, size, generator=g)).clamp(0, 1)
    return ImageDataset(
        images=images.float(), labels=labels.long(), classes=[f"c{i}" for i in range(num_classes)],
        mean=tuple([0.5] * channels), std=tuple([0.25] * channels), name="tiny",
        source_index=torch.arange(len(labels)),
    )


def write_hf_parquet(ds: ImageDataset, path, class_names=True):
    """Write ``ds`` in the Hugging Face image layout (PNG bytes, label, class names in metadata)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallset.data import encode_png

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": encode_png(x), "path": None} for x in ds.images], type=image_type),
        "label": pa.array(ds.labels.tolist(), type=pa.int64()),
    })
    if class_names:
        feats = {"info": {"features": {"image": {"_type": "Image"},
                                       "label": {"names": ds.classes, "_type": "ClassLabel"}}}}
        table = table.replace_schema_metadata({b"huggingface": json.dumps(feats).encode()})
    pq.write_table(table, path)
    return path


def make_tiny_parquet(d):
    """A directory with train.parquet (3 classes × 20, 1×16×16, 8-bit pixels) and test.parquet (3 × 10)."""
    d.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 20, 0), ("test", 10, 1)):
        ds = make_tiny_dataset(n_per_class=n, seed=seed, size=16)
        ds.images = (ds.images * 255).round() / 255
        write_hf_parquet(ds, d / f"{split}.parquet")
    return d


TINY_COMPARE = dict(methods=["random"], fractions=[0.2, 0.5], ipcs=[], seeds=[0, 1])
TINY_COMPARE_OPTIONS = dict(model="mlp", model_kwargs={"width": 16}, eval_models=["mlp", "lenet"], eval_epochs=3,
                            eval_runs=1, device="cpu")


def tiny_compare_kwargs(source: str) -> dict:
    """compare_flow's arguments for the shared tiny compare on ``source``."""
    from smallset.options import RunOptions

    return dict(TINY_COMPARE, options=RunOptions(source=source, **TINY_COMPARE_OPTIONS))


class Interrupted(Exception):
    """Raised inside a condenser's step to simulate a kill."""


def straight_and_resumed(cls, config, ds, ipc: int, make_ctx, checkpoint_dir, half: int):
    """An uninterrupted condensation and one stopped at iteration ``half`` then resumed from its checkpoint
    (checkpoints every ``half`` iterations in ``checkpoint_dir``); ``make_ctx(**kw)`` builds the RunContext."""
    import pytest

    straight = cls(config).condense(ds, ipc, make_ctx())
    first = cls(config)
    step = first.step

    def stop_at_half(it):
        if it == half:
            raise Interrupted
        return step(it)

    first.step = stop_at_half
    with pytest.raises(Interrupted):
        first.condense(ds, ipc, make_ctx(checkpoint_dir=checkpoint_dir, checkpoint_every=half))
    resumed = cls(config).condense(ds, ipc, make_ctx(checkpoint_dir=checkpoint_dir, checkpoint_every=half,
                                                        resume=True))
    return straight, resumed


def refused_before_anything_runs(argv: list[str], tmp_path, monkeypatch, capsys) -> str:
    """Run the command line in an empty ``tmp_path``; assert exit 2, one line on stderr and nothing written.
    Returns that line."""
    from smallset.flows.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
    return err
