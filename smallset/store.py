"""Reduced-dataset Parquet files (the format is specified in docs/FORMAT.md).

One file per reduced dataset, one row per example:

- ``image``: Hugging Face image struct ``{bytes, path}``: the source's encoded bytes for pruned sets,
  a PNG preview for synthetic images;
- ``label`` (int64), ``weight`` (float32), ``source_index`` (int64, null for synthetic rows);
- ``pixels`` (list<float32>, C·H·W values in pixel scale): the exact floats, for every row whose PNG
  would not reproduce them (all synthetic rows); null otherwise.

Schema metadata: ``huggingface`` (features, so HF ``datasets`` reads images and class names) and
``smallset`` (JSON: method, kind, params, seed, source and its digest, protocol, created, version,
mean, std, shape). Files are written to a temporary name beside the target and renamed into place,
so a crash never leaves a partial file under the final name.
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

# The read side of the format (a table back into ImageDataset) lives in smallset.data, which reads
# reduced files as parquet: sources; it is re-exported here.
from smallset.data import (  # noqa: F401
    SMALLSET_KEY,
    ImageDataset,
    encode_png,
    read_metadata_from_schema,
    table_to_dataset,
)
from smallset.errors import SmallsetError

FORMAT_VERSION = 1
HF_KEY = b"huggingface"


def smallset_version() -> str:
    try:
        from importlib.metadata import version

        return version("smallset")
    except Exception:  # pragma: no cover - running from a source tree without install
        return "0+unknown"


def build_metadata(
    ds: ImageDataset,
    *,
    method: str,
    kind: str,
    params: dict,
    seed: int,
    source: str,
    source_digest: str,
    protocol: str | None = None,
    extra: dict | None = None,
) -> dict:
    if kind not in ("prune", "distill"):
        raise ValueError(f"kind must be prune or distill, not {kind!r}")
    return {
        "format_version": FORMAT_VERSION,
        "method": method,
        "kind": kind,
        "params": params,
        "seed": seed,
        "source": source,
        "source_digest": source_digest,
        "protocol": protocol,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "smallset_version": smallset_version(),
        "mean": list(ds.mean),
        "std": list(ds.std),
        "dataset_key": ds.dataset_key,
        "shape": [ds.channels, *ds.image_size],
        "classes": list(ds.classes),
        **(extra or {}),
    }


def _hf_features(classes: list[str]) -> dict:
    return {
        "info": {
            "features": {
                "image": {"_type": "Image"},
                "label": {"names": list(classes), "_type": "ClassLabel"},
                "weight": {"dtype": "float32", "_type": "Value"},
                "source_index": {"dtype": "int64", "_type": "Value"},
                "pixels": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence"},
            }
        }
    }


def _png_is_exact(image: torch.Tensor) -> bool:
    q = (image.clamp(0, 1) * 255.0).round() / 255.0
    return torch.equal(q.to(image.dtype), image)


def dataset_to_table(ds: ImageDataset, meta: dict):
    import pyarrow as pa

    n = len(ds)
    blobs: list[bytes] = []
    pixels: list[np.ndarray | None] = []
    src = ds.source_index
    for i in range(n):
        img = ds.images[i]
        synthetic = src is None or int(src[i]) < 0
        if ds.encoded is not None and not synthetic:
            blobs.append(ds.encoded[i])
            pixels.append(None)
        else:
            blobs.append(encode_png(img))
            pixels.append(None if (not synthetic and _png_is_exact(img)) else img.float().reshape(-1).numpy())
    weights = ds.effective_weights().to(torch.float32).numpy()
    if src is None:
        src_list = [None] * n
    else:
        src_list = [None if v < 0 else int(v) for v in src.tolist()]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array([{"bytes": b, "path": None} for b in blobs], type=image_type),
            "label": pa.array(ds.labels.tolist(), type=pa.int64()),
            "weight": pa.array(weights, type=pa.float32()),
            "source_index": pa.array(src_list, type=pa.int64()),
            "pixels": pa.array(pixels, type=pa.list_(pa.float32())),
        }
    )
    schema_meta = {
        HF_KEY: json.dumps(_hf_features(ds.classes)).encode(),
        SMALLSET_KEY: json.dumps(meta).encode(),
    }
    return table.replace_schema_metadata(schema_meta)


def write_reduced(ds: ImageDataset, path: str | os.PathLike, meta: dict) -> Path:
    """Write ``ds`` with metadata ``meta`` to ``path`` atomically; returns the final path."""
    import pyarrow.parquet as pq

    from smallset.atomic import write_atomic

    path = Path(path)
    if path.exists() and path.is_dir():
        raise SmallsetError(f"{path} is a directory; output needs a file name such as {path}/reduced.parquet.",
                            option="output")
    check_finite(ds)
    table = dataset_to_table(ds, meta)
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"), option="output")


def check_finite(ds: ImageDataset) -> None:
    """Refuse a dataset with non-finite pixels or weights: such a file would poison every later training."""
    bad = [what for what, t in (("pixels", ds.images), ("weights", ds.weights))
           if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise SmallsetError(f"The reduced set has non-finite {' and '.join(bad)} (NaN or infinity); nothing was "
                            f"written. The method diverged: lower its learning rate and run again.")


def _read_parquet(path: str | os.PathLike, read):
    """``read(path)`` (pyarrow's read_table or read_schema) with one sentence for a missing or unreadable file."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise SmallsetError(f"No such file: {path}.")
    try:
        return read(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise SmallsetError(f"{path} is not a readable Parquet file ({e}).") from None


def read_reduced(path: str | os.PathLike) -> ImageDataset:
    """Read a file written by :func:`write_reduced` back into the same in-memory dataset."""
    import pyarrow.parquet as pq

    path = Path(path)
    table = _read_parquet(path, pq.read_table)
    meta = read_metadata_from_schema(table.schema)
    if meta is None:
        raise SmallsetError(f"{path} is not a smallset reduced dataset (no smallset metadata); use it as "
                            f"parquet:{path}.")
    return table_to_dataset(table, meta, path=path)


def read_metadata(path: str | os.PathLike) -> dict:
    """The smallset metadata block of a reduced file, without reading the rows."""
    import pyarrow.parquet as pq

    path = Path(path)
    meta = read_metadata_from_schema(_read_parquet(path, pq.read_schema))
    if meta is None:
        raise SmallsetError(f"{path} has no smallset metadata; it was not written by smallset.")
    return meta


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
