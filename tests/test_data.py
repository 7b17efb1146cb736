
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from smallset.data import ImageDataset, channel_stats, load_source
from smallset.errors import SmallsetError

from helpers import make_tiny_dataset, write_hf_parquet


def test_parquet_directory_loads_train_and_test_with_class_names(tiny_parquet):
    src = load_source(f"parquet:{tiny_parquet}")
    assert len(src.train) == 60 and len(src.test) == 30
    assert src.train.classes == ["c0", "c1", "c2"]
    assert src.train.class_counts() == [20, 20, 20]
    assert tuple(src.train.images.shape[1:]) == (1, 16, 16)
    # the test split is normalised with the training statistics
    assert src.test.mean == src.train.mean and src.test.std == src.train.std
    # decoded pixels are the 8-bit values that were encoded
    ref = make_tiny_dataset(n_per_class=20, seed=0, size=16)
    assert torch.equal(src.train.images, (ref.images * 255).round() / 255)


def test_parquet_file_without_class_names_uses_label_numbers(tmp_path):
    ds = make_tiny_dataset(n_per_class=4, num_classes=2)
    path = write_hf_parquet(ds, tmp_path / "x.parquet", class_names=False)
    src = load_source(f"parquet:{path}")
    assert src.train.classes == ["0", "1"] and src.test is None


def test_builtin_mnist_mini_has_500_train_and_100_test_per_class():
    src = load_source("builtin:mnist-mini")
    assert src.train.class_counts() == [500] * 10
    assert src.test.class_counts() == [100] * 10
    assert tuple(src.train.images.shape[1:]) == (1, 28, 28)
    assert src.train.classes[:3] == ["0", "1", "2"]
    assert abs(src.train.mean[0] - 0.1307) < 0.01


def test_folder_source_with_train_and_test(tmp_path):
    for split in ("train", "test"):
        for c, value in (("cat", 10), ("dog", 200)):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("L", (6, 6), color=value + i).save(d / f"{i}.png")
    src = load_source(f"folder:{tmp_path}")
    assert src.train.classes == ["cat", "dog"] and len(src.train) == 6 and len(src.test) == 6
    assert float(src.train.images[0, 0, 0, 0]) == pytest.approx(10 / 255)
    assert src.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_digest_identifies_content():
    a = make_tiny_dataset(seed=0)
    b = make_tiny_dataset(seed=0)
    c = make_tiny_dataset(seed=1)
    assert a.digest == b.digest and a.digest != c.digest
    b.images[0, 0, 0, 0] += 1e-6
    b._digest = None
    assert a.digest != b.digest


def test_channel_stats_by_hand():
    x = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 1.0]]]])  # 2 images, 1 channel, 1×2
    mean, std = channel_stats(x)
    assert mean == (0.75,) and std == (round(0.4330127, 4),)


def test_subset_keeps_provenance():
    ds = make_tiny_dataset(n_per_class=4)
    sub = ds.subset(torch.tensor([5, 1]))
    assert sub.source_index.tolist() == [5, 1]
    assert torch.equal(sub.images[0], ds.images[5])
    subsub = sub.subset(torch.tensor([1]))
    assert subsub.source_index.tolist() == [1]


@pytest.mark.parametrize("spec, message", [
    ("parquet:/no/such/file.parquet", "No such file"),
    ("nonsense:abc", "Unknown source type"),
    ("mnist", "has no type"),
    ("builtin:imagenet", "Unknown builtin dataset"),
    ("torchvision:imagenet", "Unknown torchvision dataset"),
    ("folder:/no/such/dir", "No such directory"),
])
def test_bad_sources_give_one_clear_error(spec, message):
    with pytest.raises(SmallsetError, match=message):
        load_source(spec)


def test_parquet_without_image_or_label_column(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(SmallsetError, match="needs an 'image' column"):
        load_source(f"parquet:{path}")


def test_undecodable_image_names_the_row(tmp_path):
    ds = make_tiny_dataset(n_per_class=2, num_classes=2)
    path = write_hf_parquet(ds, tmp_path / "x.parquet")
    t = pq.read_table(path)
    blobs = t.column("image").combine_chunks().field("bytes").to_pylist()
    blobs[2] = b"not an image"
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    t2 = pa.table({"image": pa.array([{"bytes": b, "path": None} for b in blobs], type=image_type),
                   "label": t.column("label")})
    pq.write_table(t2, path)
    with pytest.raises(SmallsetError, match="Row 2 .* cannot be decoded"):
        load_source(f"parquet:{path}")


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_text("hello")
    with pytest.raises(SmallsetError, match="not a readable Parquet file"):
        load_source(f"parquet:{path}")


def test_dataset_validates_shapes():
    with pytest.raises(SmallsetError):
        ImageDataset(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.long), ["a"], (0.0,), (1.0,))
    with pytest.raises(SmallsetError, match="Labels must lie"):
        ImageDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 5]), ["a", "b"], (0.0,), (1.0,))
