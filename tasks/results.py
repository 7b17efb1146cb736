"""Result rows → a printed table and a CSV file (no Prefect)."""
from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = [
    ("method", "method"), ("kind", "kind"), ("budget", "budget"), ("n_examples", "images"),
    ("seed", "seed"), ("test_accuracy", "accuracy %"), ("test_accuracy_std", "± %"),
    ("selection_seconds", "select s"), ("eval_train_seconds", "train s"),
]


def _fmt(key: str, v) -> str:
    if v is None:
        return "–"
    if key.startswith("test_accuracy"):
        return f"{100 * v:.2f}"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    extra = sorted({k for r in rows for k in r if k.startswith("test_accuracy_") and not k.startswith("test_accuracy_std")})
    cols = COLUMNS + [(k, k.replace("test_accuracy_", "acc % ")) for k in extra]
    cells = [[h for _, h in cols]] + [[_fmt(k, r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path


def table_artifact_rows(rows: list[dict]) -> list[dict]:
    """Rows for a Prefect table artifact: the displayed columns, formatted."""
    return [{h: _fmt(k, r.get(k)) for k, h in COLUMNS} for r in rows]


def publish_table_artifact(rows: list[dict], description: str) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key="smallset-compare", table=table_artifact_rows(rows), description=description)
