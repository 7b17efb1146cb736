"""``parquet:PATH``: a Parquet file in the Hugging Face image layout, a directory with ``train.parquet`` and
``test.parquet``, or a reduced-dataset file (docs/FORMAT.md)."""
from __future__ import annotations

import json
from pathlib import Path

from smallset.data import (
    SOURCES,
    ImageDataset,
    Source,
    SourceExample,
    SourceKind,
    encode_png,
    load_source,
    read_hf_parquet,
)
from smallset.errors import SmallsetError


@SOURCES.register("parquet")
class ParquetSource(SourceKind):
    takes_path = True

    def load(self, argument: str, spec: str, data_root=None, download: bool = True) -> Source:
        path = Path(argument).expanduser()
        if not path.exists():
            raise SmallsetError(f"No such file or directory: {path}; give an existing Parquet file or directory.")
        if path.is_dir():
            train_p, test_p = path / "train.parquet", path / "test.parquet"
            if not train_p.exists():
                raise SmallsetError(f"{path} is a directory without train.parquet; point at a file or such a "
                                    f"directory.")
            train = read_hf_parquet(train_p, spec)
            test = read_hf_parquet(test_p, spec, stats=(train.mean, train.std)) if test_p.exists() else None
            return Source(spec, train, test)
        ds = read_hf_parquet(path, spec)
        test = None
        sibling = path.with_name("test.parquet")
        if path.name == "train.parquet" and sibling.exists():
            test = read_hf_parquet(sibling, spec, stats=(ds.mean, ds.std))
        elif ds.meta.get("source"):
            # A reduced dataset: its test split is the test split of the source it was made from.
            try:
                test = load_source(ds.meta["source"]).test
            except SmallsetError:
                test = None
        return Source(spec, ds, test)

    def write_example(self, folder: Path, train: ImageDataset, test: ImageDataset) -> SourceExample:
        for split, ds in (("train", train), ("test", test)):
            write_hf_parquet(ds, folder / f"{split}.parquet")
        return SourceExample(f"parquet:{folder}", list(train.classes))


def write_hf_parquet(ds: ImageDataset, path: Path) -> Path:
    """``ds`` in the Hugging Face image layout: PNG bytes, labels, class names in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = {"info": {"features": {"image": {"_type": "Image"},
                                      "label": {"names": list(ds.classes), "_type": "ClassLabel"}}}}
    table = pa.table({
        "image": pa.array([{"bytes": encode_png(x), "path": None} for x in ds.images], type=image_type),
        "label": pa.array(ds.labels.tolist(), type=pa.int64()),
    }).replace_schema_metadata({b"huggingface": json.dumps(features).encode()})
    pq.write_table(table, path)
    return path
