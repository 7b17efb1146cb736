import json

import pyarrow.parquet as pq
import pytest
import torch

from smallset import store
from smallset.data import load_source
from smallset.errors import SmallsetError

from helpers import make_tiny_dataset


def _meta(ds, kind="prune"):
    return store.build_metadata(ds, method="random", kind=kind, params={"a": 1}, seed=3, source="tiny",
                                source_digest="abc", protocol="quick")


def test_pruned_round_trip_is_exact(tiny_parquet, tmp_path):
    src = load_source(f"parquet:{tiny_parquet}")
    sub = src.train.subset(torch.tensor([7, 2, 40]), torch.tensor([1.5, 0.25, 3.0]))
    path = store.write_reduced(sub, tmp_path / "r.parquet", _meta(sub))
    back = store.read_reduced(path)
    assert back.same_content(sub)
    assert back.source_index.tolist() == [7, 2, 40]
    assert back.weights.tolist() == [1.5, 0.25, 3.0]
    # pruned rows keep the source's encoded bytes, and no float pixels are needed
    t = pq.read_table(path)
    assert t.column("image").combine_chunks().field("bytes").to_pylist()[0] == src.train.encoded[7]
    assert t.column("pixels").to_pylist() == [None, None, None]


def test_synthetic_round_trip_keeps_exact_floats(tmp_path):
    ds = make_tiny_dataset(n_per_class=2, num_classes=2, channels=3)
    ds.images = torch.randn_like(ds.images) * 2  # outside [0, 1], not 8-bit
    ds.source_index = torch.full((len(ds),), -1)
    path = store.write_reduced(ds, tmp_path / "s.parquet", _meta(ds, "distill"))
    back = store.read_reduced(path)
    assert back.same_content(ds)
    assert back.source_index.tolist() == [-1] * 4
    t = pq.read_table(path)
    assert t.column("source_index").to_pylist() == [None] * 4  # null for synthetic rows
    assert all(b[:8] == b"\x89PNG\r\n\x1a\n" for b in t.column("image").combine_chunks().field("bytes").to_pylist())


def test_metadata_blocks(tmp_path):
    ds = make_tiny_dataset(n_per_class=2)
    path = store.write_reduced(ds, tmp_path / "m.parquet", _meta(ds))
    schema = pq.read_schema(path)
    hf = json.loads(schema.metadata[b"huggingface"])
    assert hf["info"]["features"]["label"]["names"] == ["c0", "c1", "c2"]
    assert hf["info"]["features"]["image"]["_type"] == "Image"
    meta = store.read_metadata(path)
    for key in ("method", "kind", "params", "seed", "source", "source_digest", "protocol", "created",
                "smallset_version", "mean", "std"):
        assert key in meta
    assert meta["seed"] == 3 and meta["kind"] == "prune" and meta["mean"] == [0.5]


def test_reduced_file_is_itself_a_parquet_source(tmp_path):
    ds = make_tiny_dataset(n_per_class=3)
    path = store.write_reduced(ds, tmp_path / "r.parquet", _meta(ds))
    src = load_source(f"parquet:{path}")
    assert src.train.same_content(store.read_reduced(path))


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    ds = make_tiny_dataset(n_per_class=3)

    def boom(table, where, **kw):
        with open(where, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(SmallsetError, match=r"output .*out.parquet cannot be written \(disk full\)"):
        store.write_reduced(ds, tmp_path / "out.parquet", _meta(ds))
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_a_failed_overwrite(tmp_path, monkeypatch):
    ds = make_tiny_dataset(n_per_class=3)
    path = store.write_reduced(ds, tmp_path / "out.parquet", _meta(ds))
    before = path.read_bytes()
    monkeypatch.setattr(pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.write_reduced(ds.subset(torch.tensor([0])), path, _meta(ds))
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_reading_a_plain_parquet_as_reduced_is_an_error(tiny_parquet):
    with pytest.raises(SmallsetError, match="not a smallset reduced dataset"):
        store.read_reduced(tiny_parquet / "train.parquet")
    with pytest.raises(SmallsetError, match="No such file"):
        store.read_metadata(tiny_parquet / "nope.parquet")
