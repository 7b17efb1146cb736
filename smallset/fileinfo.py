"""A reduced file's description for ``smallset show``, read with pyarrow and numpy only.

Importing torch costs seconds; describing a file needs none of it: the metadata block, the labels and the
weights are enough. The read side of the schema metadata (:func:`read_metadata_from_schema`) lives here
and :mod:`smallset.data` uses it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from smallset.errors import SmallsetError

SMALLSET_KEY = b"smallset"


def read_metadata_from_schema(schema) -> dict | None:
    """The ``smallset`` block of a Parquet schema's metadata (None when there is none)."""
    raw = (schema.metadata or {}).get(SMALLSET_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        raise SmallsetError("The smallset metadata of this Parquet file is not valid JSON.") from None
    if not isinstance(meta, dict):
        raise SmallsetError("The smallset metadata of this Parquet file is not a JSON object; it is damaged.")
    return meta


def _parquet_file(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise SmallsetError(f"No such file: {path}.")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise SmallsetError(f"{path} is not a readable Parquet file ({e}).") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """The smallset metadata block of a reduced file, without reading the rows."""
    path = Path(path)
    meta = read_metadata_from_schema(_parquet_file(path).schema_arrow)
    if meta is None:
        raise SmallsetError(f"{path} has no smallset metadata; it was not written by smallset.")
    return meta


def describe(path: str | os.PathLike) -> dict:
    """Metadata, row count, examples per class and weight statistics of a reduced file."""
    import numpy as np
    import pyarrow as pa

    path = Path(path)
    pf = _parquet_file(path)
    meta = read_metadata_from_schema(pf.schema_arrow)
    if meta is None:
        raise SmallsetError(f"{path} is not a smallset reduced dataset (no smallset metadata); use it as "
                            f"parquet:{path}.")
    classes = meta.get("classes")
    missing = {"label", "weight"} - set(pf.schema_arrow.names)
    if missing or not isinstance(classes, list):
        raise SmallsetError(f"{path} is a damaged smallset file (no {', '.join(sorted(missing)) or 'class names'}).")
    try:
        table = pf.read(columns=["label", "weight"])
        labels = np.asarray(table.column("label").to_numpy(zero_copy_only=False))
        weights = np.asarray(table.column("weight").to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowException, OSError, ValueError, TypeError) as e:
        raise SmallsetError(f"{path} is a damaged smallset file ({e}).") from None
    if labels.dtype.kind not in "iu" or (len(labels) and (labels.min() < 0 or labels.max() >= len(classes))):
        raise SmallsetError(f"{path} is a damaged smallset file (labels outside 0..{len(classes) - 1}).")
    counts = np.bincount(labels.astype(np.int64),
                         minlength=len(classes)).tolist() if len(labels) else [0] * len(classes)
    w = weights if len(weights) else np.ones(1)
    return {"meta": meta, "rows": int(len(labels)), "classes": [str(c) for c in classes], "per_class": counts,
            "weights": {"min": float(w.min()), "max": float(w.max()), "sum": float(weights.sum())}}
