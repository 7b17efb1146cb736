"""Data sources → one in-memory dataset type.

Every source is loaded into :class:`ImageDataset`: float32 images N×C×H×W in pixel scale (real images lie in
[0, 1]), int64 labels, class names, per-channel mean and std (used to normalise for training), optional
per-example weights, the index of each example in its source, and a content digest for provenance.

A source string is ``KIND:ARGUMENT``. Each kind is a :class:`SourceKind` in the ``SOURCES`` registry, one
module of the plugin package :mod:`smallset.sources` (found on the first lookup, :mod:`smallset.plugins`):
- ``parquet:PATH``: a Parquet file in the Hugging Face image layout (an ``image`` struct with encoded
  bytes, a ``label`` column, class names in the ``huggingface`` schema metadata), a directory holding
  ``train.parquet``/``test.parquet``, or a reduced-dataset file written by :mod:`smallset.store`.
- ``torchvision:NAME`` with NAME one of mnist, fashion_mnist, cifar10, cifar100, svhn
  (``data_root``; downloads when ``download=True``).
- ``folder:PATH``: an ImageFolder tree, either ``train/`` and ``test/`` inside or a single split.
- ``builtin:mnist-mini``: 500 train and 100 test images per class of MNIST, shipped with the package.
This module keeps what the kinds share: the dataset type, image decoding, the Parquet readers, normalisation.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from smallset.errors import SmallsetError
from smallset.plugins import PluginRegistry


@dataclass
class ImageDataset:
    """Images and labels in memory; the one type every source, selector and condenser speaks."""

    images: torch.Tensor  # float32 N×C×H×W, pixel scale (real images in [0, 1])
    labels: torch.Tensor  # int64 N
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: torch.Tensor | None = None  # float32 N: per-example loss weights; None means all 1
    source_index: torch.Tensor | None = None  # int64 N: row in the source; -1 for synthetic rows
    encoded: list[bytes] | None = None  # the source's encoded image files (PNG/JPEG), when known
    name: str = ""  # the source string this came from
    meta: dict = field(default_factory=dict)  # the smallset block of a reduced-dataset file
    dataset_key: str | None = None  # the known dataset (smallset.known_datasets) this is, or is a subset of
    _digest: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise SmallsetError(f"Images must be N×C×H×W; got shape {tuple(self.images.shape)}.")
        n = self.images.shape[0]
        if self.labels.shape != (n,):
            raise SmallsetError(f"Expected {n} labels, got shape {tuple(self.labels.shape)}.")
        for name in ("weights", "source_index"):
            t = getattr(self, name)
            if t is not None and t.shape != (n,):
                raise SmallsetError(f"Expected {n} {name}, got shape {tuple(t.shape)}.")
        if self.encoded is not None and len(self.encoded) != n:
            raise SmallsetError(f"Expected {n} encoded images, got {len(self.encoded)}.")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise SmallsetError("mean and std need one value per image channel.")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise SmallsetError(
                f"Labels must lie in 0..{len(self.classes) - 1} for {len(self.classes)} classes."
            )

    # --- shape -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def class_indices(self) -> list[torch.Tensor]:
        """Indices of the examples of each class, in dataset order."""
        return [torch.nonzero(self.labels == c, as_tuple=True)[0] for c in range(self.num_classes)]

    def effective_weights(self) -> torch.Tensor:
        return self.weights if self.weights is not None else torch.ones(len(self), dtype=torch.float32)

    # --- views -----------------------------------------------------------------------------
    def normalized(self) -> torch.Tensor:
        """Images in the normalised space the models train in: (x − mean) / std per channel."""
        mean = torch.tensor(self.mean, dtype=self.images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=self.images.dtype).view(1, -1, 1, 1)
        return (self.images - mean) / std

    def subset(self, indices: torch.Tensor, weights: torch.Tensor | None = None) -> "ImageDataset":
        """The examples at ``indices`` (source order kept as given), remembering where they came from."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        base = self.source_index if self.source_index is not None else torch.arange(len(self))
        return ImageDataset(
            images=self.images[indices],
            labels=self.labels[indices],
            classes=list(self.classes),
            mean=self.mean,
            std=self.std,
            weights=self._subset_weights(indices, weights),
            source_index=base[indices],
            encoded=None if self.encoded is None else [self.encoded[i] for i in indices.tolist()],
            name=self.name,
            dataset_key=self.dataset_key,
        )

    def _subset_weights(self, indices: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor | None:
        """A subset's weights: this set's own weights times the selection's, so weights multiply through
        repeated reductions (None when neither has any)."""
        own = None if self.weights is None else self.weights[indices].to(torch.float32)
        if weights is None:
            return own
        new = torch.as_tensor(weights, dtype=torch.float32)
        return new if own is None else own * new

    # --- provenance ------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """sha256 over the labels, pixels and weights: equal content gives an equal digest."""
        if self._digest is None:
            h = hashlib.sha256()
            h.update(json.dumps([list(self.images.shape), self.classes]).encode())
            h.update(self.labels.to(torch.int64).contiguous().numpy().tobytes())
            h.update(self.images.to(torch.float32).contiguous().numpy().tobytes())
            if self.weights is not None:
                h.update(self.weights.to(torch.float32).contiguous().numpy().tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def same_content(self, other: "ImageDataset") -> bool:
        """Exact equality of everything a reduced dataset stores (pixels bit for bit)."""
        def eq(a, b):
            if a is None or b is None:
                return a is None and b is None
            return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)

        return (
            eq(self.images, other.images)
            and eq(self.labels, other.labels)
            and eq(self.effective_weights(), other.effective_weights())  # None means all 1
            and eq(self.source_index, other.source_index)
            and self.classes == other.classes
            and tuple(self.mean) == tuple(other.mean)
            and tuple(self.std) == tuple(other.std)
        )


@dataclass
class Source:
    """A loaded source: its id, the training split and (when it has one) the test split."""

    id: str
    train: ImageDataset
    test: ImageDataset | None = None


# --- decoding -----------------------------------------------------------------------------------
def decode_images(blobs: list[bytes], what: str = "image") -> torch.Tensor:
    """Decode encoded image files into a float32 N×C×H×W tensor in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    if not blobs:
        raise SmallsetError(f"No images to decode in {what}.")

    def one(i_blob):
        i, blob = i_blob
        try:
            with Image.open(io.BytesIO(blob)) as im:
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGB" if im.mode in ("RGBA", "P", "CMYK", "I;16") else "L")
                return np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, TypeError) as e:
            raise SmallsetError(f"Row {i} of {what} holds an image that cannot be decoded ({e}).") from None

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as ex:
        arrays = list(ex.map(one, enumerate(blobs), chunksize=512))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise SmallsetError(
            f"The images of {what} differ in size or colour mode ({sorted(shapes)[:3]}…); resize them to one size "
            f"first."
        )
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[:, None]
    else:
        stacked = stacked.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked)).float().div_(255.0)


def encode_png(image: torch.Tensor) -> bytes:
    """PNG bytes of one C×H×W image in pixel scale (clamped to [0, 1], rounded to 8 bits)."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std over all pixels, rounded to 4 decimals. Float64 sums over
    slices of about 4M values (two passes: mean, then squared deviations), so no float64 copy of the whole
    set is ever made (it was 2.3× the images' own memory at the peak of loading CIFAR-10; issue 15)."""
    n_img, c = images.shape[0], images.shape[1]
    count = n_img * images.shape[2] * images.shape[3]
    step = max(1, (1 << 22) // max(1, images[0].numel()))
    total = torch.zeros(c, dtype=torch.float64)
    for s in range(0, n_img, step):
        total += images[s:s + step].double().sum(dim=(0, 2, 3))
    mean = total / count
    sq = torch.zeros(c, dtype=torch.float64)
    for s in range(0, n_img, step):
        sq += (images[s:s + step].double() - mean.view(1, c, 1, 1)).square().sum(dim=(0, 2, 3))
    std = (sq / count).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std.clamp_min(1e-3))


# --- sources --------------------------------------------------------------------------------------
class SourceKind:
    """A kind of source, ``KIND:ARGUMENT`` → :class:`Source`. Register the class with
    ``@SOURCES.register(kind)`` in a module of :mod:`smallset.sources`; it is made with no arguments.

    The contract (tests/test_sources.py checks every registered kind): a bad argument (a missing path, an
    unknown name) is refused in one sentence before any download; the kind either writes a tiny dataset in its
    own format (:meth:`write_example`) that loads back with the same pixels, labels and classes, or names an
    ``example`` source string that loads offline."""

    takes_path: ClassVar[bool] = False  # the argument is a local path: checked to exist before any run starts
    example: ClassVar[str | None] = None  # an offline source string of this kind, when write_example is None

    def load(self, argument: str, spec: str, data_root: str | os.PathLike | None = None,
             download: bool = True) -> Source:
        """Read the source ``spec`` (= ``KIND:argument``) into memory."""
        raise NotImplementedError

    def write_example(self, folder: Path, train: ImageDataset, test: ImageDataset) -> "SourceExample | None":
        """Write ``train`` and ``test`` (8-bit pixels) under ``folder`` in this kind's format; how to load them."""
        return None


@dataclass(frozen=True)
class SourceExample:
    """A tiny dataset written by :meth:`SourceKind.write_example`: the source string, the class names it
    loads with, and the extra arguments of :func:`load_source`."""

    spec: str
    classes: list[str]
    load_kwargs: dict = field(default_factory=dict)


SOURCES: PluginRegistry[type[SourceKind]] = PluginRegistry("source type", plugins="smallset.sources")


def load_source(spec: str, data_root: str | os.PathLike | None = None, download: bool = True,
                normalization: str = "auto") -> Source:
    """Load ``TYPE:ARGUMENT`` (see the module docstring) into memory.

    ``normalization``: ``auto`` (the papers' constants for a recognised dataset, the data's own statistics
    otherwise), ``data`` (always the data's statistics) or a known dataset's name (its constants).
    A reduced-dataset file keeps the constants it was written with unless one is named explicitly."""
    if ":" not in spec:
        raise SmallsetError(
            f"Source {spec!r} has no type; write TYPE:ARGUMENT, e.g. parquet:data/train.parquet, "
            f"torchvision:cifar10, folder:images/ or builtin:mnist-mini (types: {', '.join(SOURCES.names())})."
        )
    kind, arg = spec.split(":", 1)
    loaded = SOURCES.get(kind)().load(arg, spec=spec, data_root=data_root, download=download)
    return normalize_source(loaded, normalization)


def normalize_source(src: Source, normalization: str = "auto") -> Source:
    """Recognise a known dataset and set the normalisation constants of both splits (see load_source)."""
    from dataclasses import replace

    from smallset.known_datasets import KNOWN, NORMALIZATIONS, recognise

    if normalization not in NORMALIZATIONS:
        raise SmallsetError(f"Unknown normalization {normalization!r}; use one of {', '.join(NORMALIZATIONS)}.",
                            option="normalization")
    train = src.train
    key = train.meta.get("dataset_key") if train.meta else None
    if key is None:
        key = recognise(src.id, train.channels, train.image_size, train.num_classes, lambda: train.digest)
    if normalization in KNOWN:
        known = KNOWN[normalization]
        if (known.channels, known.size) != (train.channels, train.image_size):
            raise SmallsetError(f"normalization {normalization} is for {known.channels}×{known.size[0]}×"
                                f"{known.size[1]} images; this source has {train.channels}×{train.image_size[0]}×"
                                f"{train.image_size[1]}.", option="normalization")
        stats = (known.mean, known.std)
    elif normalization == "auto" and key in KNOWN and not train.meta:
        stats = (KNOWN[key].mean, KNOWN[key].std)
    elif normalization == "data" and not train.meta:
        stats = channel_stats(train.images)
    else:
        stats = (train.mean, train.std)

    def apply(ds: ImageDataset | None) -> ImageDataset | None:
        if ds is None:
            return None
        out = replace(ds, mean=tuple(stats[0]), std=tuple(stats[1]), dataset_key=key)
        out._digest = ds._digest
        return out

    return Source(src.id, apply(src.train), apply(src.test))


# Parquet readers (the parquet: and builtin: sources) -------------------------------------------------
def read_hf_parquet(path: Path, spec: str, stats: tuple | None = None) -> ImageDataset:
    """One split in the Hugging Face image layout, or a reduced-dataset file (its rows numbered from 0);
    ``stats``: the (mean, std) to use instead of the split's own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise SmallsetError(f"{path} is not a readable Parquet file ({e}).") from None
    smallset_meta = read_metadata_from_schema(table.schema)
    if smallset_meta is not None:
        ds = table_to_dataset(table, smallset_meta, path=path, name=spec)
        # As a source, a reduced file's rows are numbered from 0: what is made from it indexes this file,
        # the file its metadata names as source (docs/FORMAT.md), not the file this one came from.
        ds.source_index = torch.arange(len(ds))
        return ds
    cols = set(table.column_names)
    if {"weight", "source_index", "pixels"} <= cols:
        import warnings

        from smallset.errors import SmallsetWarning

        warnings.warn(SmallsetWarning(
            f"{path} has the columns of a smallset file but no smallset metadata (re-saved by another tool, "
            f"e.g. Hugging Face datasets?): only its 8-bit PNG previews and labels are read; the exact pixels, "
            f"weights and normalisation are lost."), stacklevel=2)
    if "image" not in cols or "label" not in cols:
        raise SmallsetError(
            f"{path} has columns {sorted(cols)}, but a dataset needs an 'image' column (encoded bytes) "
            f"and a 'label' column."
        )
    image_col = table.column("image").combine_chunks()
    if pa.types.is_struct(image_col.type) and image_col.type.get_field_index("bytes") >= 0:
        blobs = image_col.field("bytes").to_pylist()
    elif pa.types.is_binary(image_col.type) or pa.types.is_large_binary(image_col.type):
        blobs = image_col.to_pylist()
    else:
        raise SmallsetError(f"The 'image' column of {path} must hold encoded image bytes; it is {image_col.type}.")
    if any(b is None for b in blobs):
        raise SmallsetError(f"{path} has rows with no image bytes.")
    if any(not isinstance(b, (bytes, bytearray)) for b in blobs):
        raise SmallsetError(f"The 'image' column of {path} must hold encoded image bytes.")
    labels = labels_of(table.column("label"), path)
    images = decode_images(blobs, what=str(path))
    classes = _class_names_from_hf(table.schema, int(labels.max()) + 1 if len(labels) else 0)
    mean, std = stats if stats is not None else channel_stats(images)
    return ImageDataset(images, labels, classes, mean, std, encoded=blobs, name=spec,
                        source_index=torch.arange(len(labels)))


MAX_CLASSES = 100_000


def labels_of(column, path: Path | str) -> torch.Tensor:
    """A label column as int64 class indices, or one sentence: labels are whole numbers, none missing."""
    import pyarrow as pa

    col = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    what = f"The 'label' column of {path}"
    if col.null_count:
        raise SmallsetError(f"{what} has {col.null_count} missing (null) labels; every row needs a class index.")
    if pa.types.is_integer(col.type):
        values = np.asarray(col.to_numpy(zero_copy_only=False))
        if len(values) and pa.types.is_unsigned_integer(col.type) and int(values.max()) >= 2 ** 62:
            raise SmallsetError(f"{what} holds labels up to {int(values.max())}; labels are class indices 0..C-1.")
        values = values.astype(np.int64)
    elif pa.types.is_floating(col.type):
        values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(bad):
            raise SmallsetError(f"{what} holds {float(values[bad[0]])!r} in row {int(bad[0])}; labels must be whole "
                                f"numbers (class indices 0..C-1).")
        if len(values) and np.abs(values).max() >= 2 ** 62:
            raise SmallsetError(f"{what} holds labels up to {values.max():g}; labels are class indices 0..C-1.")
        values = values.astype(np.int64)
    else:
        raise SmallsetError(f"{what} holds {col.type} values; labels must be integer class indices 0..C-1 "
                            f"(class names belong in the Hugging Face metadata).")
    if len(values) and int(values.min()) < 0:
        raise SmallsetError(f"{what} holds the negative label {int(values.min())}; labels are class indices 0..C-1.")
    if len(values) and int(values.max()) >= MAX_CLASSES:
        raise SmallsetError(f"{what} holds the label {int(values.max())}; labels are class indices 0..C-1 "
                            f"with fewer than {MAX_CLASSES} classes.")
    return torch.from_numpy(np.ascontiguousarray(values))


def _class_names_from_hf(schema, n_from_labels: int) -> list[str]:
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if raw:
        try:
            feats = json.loads(raw)["info"]["features"]["label"]
            names = feats.get("names")
            if names:
                return [str(n) for n in names]
        except (KeyError, TypeError, ValueError):
            pass
    return [str(i) for i in range(n_from_labels)]


# The read side of the reduced-dataset format (docs/FORMAT.md; smallset.store writes it and re-exports
# these): a parquet: source may be a reduced file, so data reads the format without importing store.
from smallset.fileinfo import SMALLSET_KEY, read_metadata_from_schema  # noqa: E402,F401  (torch-free)


def table_to_dataset(table, meta: dict, path: Path | str = "", name: str = "") -> ImageDataset:
    """Rebuild the in-memory dataset exactly as it was written; a damaged file is one sentence."""
    import pyarrow as pa

    shape = meta.get("shape") if isinstance(meta, dict) else None
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(v) is int and 0 < v <= 1 << 16 for v in shape)
            and all(isinstance(meta.get(k), list) and len(meta[k]) == shape[0]
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in meta[k])
                    for k in ("mean", "std"))):
        raise SmallsetError(f"The smallset metadata of {path} is damaged (shape, mean or std); it cannot be read.")
    try:
        ds = _table_to_dataset(table, meta, path, name)
    except SmallsetError:
        raise
    except (pa.ArrowException, TypeError, ValueError, KeyError, IndexError, RuntimeError, AttributeError) as e:
        raise SmallsetError(f"{path} is a damaged smallset file ({type(e).__name__}: {e}).") from None
    for what, t in (("pixels", ds.images), ("weights", ds.weights)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise SmallsetError(f"{path} holds non-finite {what} (NaN or infinity); it cannot be used.")
    return ds


def _table_to_dataset(table, meta: dict, path: Path | str, name: str) -> ImageDataset:
    missing = {"image", "label", "weight", "source_index", "pixels"} - set(table.column_names)
    if missing:
        raise SmallsetError(f"{path} is a smallset file missing the columns {sorted(missing)}; it is damaged.")
    n = table.num_rows
    shape = meta.get("shape")
    labels = labels_of(table.column("label"), path)
    blobs = table.column("image").combine_chunks().field("bytes").to_pylist()
    pixels = table.column("pixels").to_pylist()
    src_raw = table.column("source_index").to_pylist()
    images = torch.empty((n, *shape), dtype=torch.float32) if n else torch.empty((0, *shape))
    need_decode = [i for i in range(n) if pixels[i] is None]
    if need_decode:
        decoded = decode_images([blobs[i] for i in need_decode], what=str(path))
        if tuple(decoded.shape[1:]) != tuple(shape):
            raise SmallsetError(f"{path}: decoded images have shape {tuple(decoded.shape[1:])}, metadata says {shape}.")
        images[need_decode] = decoded
    for i in range(n):
        if pixels[i] is not None:
            images[i] = torch.tensor(pixels[i], dtype=torch.float32).reshape(shape)
    weights = torch.from_numpy(table.column("weight").to_numpy().astype(np.float32, copy=True))
    source_index = torch.tensor([-1 if v is None else v for v in src_raw], dtype=torch.int64)
    classes = meta.get("classes") or _class_names_from_hf(table.schema, int(labels.max()) + 1)
    # Only real rows keep their source bytes; synthetic rows get a fresh PNG preview on rewrite.
    encoded = [b if s is not None and p is None else None for b, s, p in zip(blobs, src_raw, pixels)]
    return ImageDataset(
        images=images,
        labels=labels,
        classes=list(classes),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        dataset_key=meta.get("dataset_key"),
        weights=weights,
        source_index=source_index,
        encoded=encoded if all(e is not None for e in encoded) else None,
        name=name or f"parquet:{path}",
        meta=meta,
    )
