"""Result rows → a printed table and a CSV file (no Prefect)."""
from __future__ import annotations

import csv
from pathlib import Path

from smallset import comparison

COLUMNS = [
    ("method", "method"), ("kind", "kind"), ("budget", "budget"), ("n_examples", "images"),
    ("eval_steps", "steps"), ("seed", "seed"), ("eval_runs", "runs"), ("test_accuracy", "accuracy %"),
    ("test_accuracy_std", "± %"), ("selection_seconds", "select s"), ("eval_train_seconds", "train s"),
]

SUMMARY_COLUMNS = [
    ("method", "method"), ("kind", "kind"), ("budget", "budget"), ("n_examples", "images"), ("steps", "steps"),
    ("judged_by", "accuracy of"), ("seeds", "seeds"), ("runs", "runs"), ("accuracy", "accuracy %"),
    ("accuracy_std", "± %"),
    ("gain", "gain vs random (pts)"), ("gain_se", "± s.e."),
]


def _fmt(key: str, v, row: dict | None = None) -> str:
    if v is None:
        return "–"
    if key.startswith("test_accuracy_std") and row is not None and not comparison.has_spread(row.get("eval_runs")):
        return "–"  # one or two runs: no spread to show
    if key.startswith("test_accuracy") or key in ("accuracy", "accuracy_std", "gain", "gain_se"):
        return f"{100 * v:+.2f}" if key == "gain" else f"{100 * v:.2f}"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def _render(cols: list[tuple[str, str]], rows: list[dict]) -> str:
    cells = [[h for _, h in cols]] + [[_fmt(k, r.get(k), r) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    """One line per cell (method × budget × seed)."""
    extra = sorted({k for r in rows for k in r if k.startswith("test_accuracy/")})
    return _render(COLUMNS + [(k, k.replace("test_accuracy/", "acc % ")) for k in extra], rows)


def format_summary(summary: list[dict]) -> str:
    """One line per method × budget: accuracy over every seed and run, and the gain over random."""
    return _render(SUMMARY_COLUMNS, summary)


def summarize(rows: list[dict]) -> list[dict]:
    """Per method and budget: accuracy pooled over seeds and evaluation runs (± the sample std over them,
    shown from 3 runs), and the gain over the baseline ``smallset.comparison`` names (random subsets at the same
    number of images, same seeds and recipe; for a training-time method, random subsets at the same budget and
    schedule) ± the standard error of the difference of means. Full-data rows get no gain."""
    return [{"method": g.method, "kind": g.kind, "budget": g.budget,
             "n_examples": _images(g.members),
             "steps": g.members[0].get("method_steps") or g.members[0].get("eval_steps"),
             "judged_by": g.role.judged_by, "seeds": len(g.seeds), "runs": len(g.accuracies), "accuracy": g.mean,
             "accuracy_std": g.spread, "gain": g.gain, "gain_se": g.gain_se} for g in comparison.groups(rows)]


def _images(members: list[dict]) -> int:
    """The group's number of images: the same on every seed, else (a training-time method's) rounded mean."""
    sizes = [r["n_examples"] for r in members]
    return sizes[0] if len(set(sizes)) == 1 else round(sum(sizes) / len(sizes))


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
    return [{h: _fmt(k, r.get(k), r) for k, h in COLUMNS} for r in rows]


def publish_table_artifact(rows: list[dict], description: str) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key="smallset-compare", table=table_artifact_rows(rows), description=description)
