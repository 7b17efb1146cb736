"""Build smallset/builtin/mnist-mini-{train,test}.parquet from the full MNIST Parquet files.

Takes the first 500 training and the first 100 test images of each class, in the original order, and
keeps their PNG bytes untouched (so pixels are bit-exact MNIST). Run once:

    python scripts/make_mnist_mini.py ../shared/datasets/mnist
"""
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PER_CLASS = {"train": 500, "test": 100}


def main(src: str) -> None:
    out = Path(__file__).resolve().parent.parent / "smallset" / "builtin"
    for split, k in PER_CLASS.items():
        table = pq.read_table(Path(src) / f"{split}.parquet")
        labels = table.column("label").to_pylist()
        seen: dict[int, int] = {}
        rows = []
        for i, y in enumerate(labels):
            if seen.get(y, 0) < k:
                seen[y] = seen.get(y, 0) + 1
                rows.append(i)
        small = table.take(pa.array(rows))
        pq.write_table(small, out / f"mnist-mini-{split}.parquet", compression="zstd")
        print(split, small.num_rows, "rows")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/mnist")
