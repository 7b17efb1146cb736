"""``builtin:NAME``: a dataset shipped with the package (``smallset/builtin/NAME-{train,test}.parquet``)."""
from __future__ import annotations

from pathlib import Path

from smallset.data import SOURCES, Source, SourceKind, read_hf_parquet
from smallset.errors import SmallsetError


@SOURCES.register("builtin")
class BuiltinSource(SourceKind):
    example = "builtin:mnist-mini"

    def load(self, argument: str, spec: str, data_root=None, download: bool = True) -> Source:
        from importlib.resources import as_file, files

        folder = files("smallset.builtin")
        known = sorted({p.name.rsplit("-", 1)[0] for p in folder.iterdir() if p.name.endswith("-train.parquet")})
        if argument not in known:
            raise SmallsetError(f"Unknown builtin dataset {argument!r}; builtin datasets: "
                                f"{', '.join(known) or 'none'}.")
        with as_file(folder / f"{argument}-train.parquet") as train_path, \
                as_file(folder / f"{argument}-test.parquet") as test_path:
            train = read_hf_parquet(Path(train_path), spec)
            test = read_hf_parquet(Path(test_path), spec, stats=(train.mean, train.std))
        return Source(spec, train, test)
