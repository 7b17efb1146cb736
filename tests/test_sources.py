"""Contract tests for every registered source kind (smallset.sources, registered in smallset.data.SOURCES).

Parametrised over the registry, so a new module in smallset/sources/ is tested with no other edit
(docs/adding-a-component.md). Nothing here reaches the network: every socket connection fails, so a source
that tried to download would fail its test instead.
"""
import re
import socket

import pytest
import torch

from smallset.data import SOURCES, ImageDataset, Source, load_source
from smallset.errors import SmallsetError
from smallset.tasks.spec import check_source

from helpers import make_tiny_dataset


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("tests/test_sources.py: no network in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def tiny_split(seed: int, n_per_class: int) -> ImageDataset:
    """Grey 8×8 images with 8-bit pixels (exact after any 8-bit format), 3 classes, labels interleaved."""
    ds = make_tiny_dataset(n_per_class=n_per_class, num_classes=3, seed=seed)
    ds.images = (ds.images * 255).round() / 255
    return ds


def examples(ds: ImageDataset) -> list[tuple[int, bytes]]:
    """The (label, pixels) of every example, in a canonical order (a format may store them by class)."""
    return sorted((int(y), x.numpy().tobytes()) for x, y in zip(ds.images, ds.labels))


def assert_one_sentence(message: str, *, mentions: str = "") -> None:
    assert "\n" not in message and message.endswith(".") and not re.search(r"[.;]\s+[A-Z][a-z]+ ", message), (
        f"not one sentence: {message!r}")
    assert mentions in message


def check_well_formed(src: Source) -> None:
    train = src.train
    assert isinstance(src, Source) and isinstance(train, ImageDataset) and len(train) > 0
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert float(train.images.min()) >= 0 and float(train.images.max()) <= 1, "real images lie in [0, 1]"
    assert torch.equal(train.source_index, torch.arange(len(train)))
    assert len(train.mean) == len(train.std) == train.channels and min(train.std) > 0
    if src.test is not None:
        assert src.test.classes == train.classes and src.test.image_size == train.image_size
        assert (src.test.mean, src.test.std) == (train.mean, train.std), "the test split uses the train statistics"


@pytest.mark.parametrize("kind", SOURCES.names())
def test_source_loads_back_what_it_wrote_or_its_example(kind, tmp_path):
    """Each kind writes a tiny dataset in its own format that loads back exactly (pixels, labels, class names),
    or, when it cannot write one, names an example source string that loads offline."""
    train, test = tiny_split(0, 4), tiny_split(1, 2)
    source_kind = SOURCES.get(kind)()
    example = source_kind.write_example(tmp_path, train, test)
    if example is None:
        assert source_kind.example and source_kind.example.startswith(f"{kind}:"), (
            f"source kind {kind!r} neither writes an example (write_example) nor names one (example)")
        first, second = load_source(source_kind.example), load_source(source_kind.example)
        check_well_formed(first)
        assert first.train.digest == second.train.digest
        return
    assert example.spec.startswith(f"{kind}:")
    src = load_source(example.spec, **example.load_kwargs)
    check_well_formed(src)
    assert src.test is not None, "the example has a test split"
    assert src.train.classes == example.classes
    for loaded, written in ((src.train, train), (src.test, test)):
        assert examples(loaded) == examples(written), f"{kind}: the loaded examples differ from those written"
    again = load_source(example.spec, **example.load_kwargs)
    assert again.train.digest == src.train.digest and torch.equal(again.train.labels, src.train.labels)


@pytest.mark.parametrize("kind", [k for k in SOURCES.names() if SOURCES.get(k).takes_path])
def test_a_missing_path_is_refused_in_one_sentence(kind, tmp_path):
    missing = tmp_path / "no-such-thing"
    for refuse in (check_source, load_source):  # the torch-free check before a run, and the loader itself
        with pytest.raises(SmallsetError) as e:
            refuse(f"{kind}:{missing}")
        assert_one_sentence(str(e.value), mentions=str(missing))


@pytest.mark.parametrize("kind", [k for k in SOURCES.names() if not SOURCES.get(k).takes_path])
def test_an_unknown_name_is_refused_in_one_sentence_before_any_download(kind):
    check_source(f"{kind}:no-such-dataset")  # not a path: the pre-run check reads nothing
    with pytest.raises(SmallsetError) as e:
        load_source(f"{kind}:no-such-dataset", download=False)
    assert_one_sentence(str(e.value), mentions="no-such-dataset")


def test_unknown_kinds_are_refused_with_the_known_ones():
    for refuse in (check_source, load_source):
        with pytest.raises(SmallsetError, match=r"Unknown source type 'nope'; known source types: .*parquet"):
            refuse("nope:x")
