"""Result rows → a printed table and a CSV file (no Prefect)."""
from __future__ import annotations

import csv
from pathlib import Path

MIN_RUNS_FOR_SPREAD = 3  # a ± is printed only over at least this many evaluation runs

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
    if key.startswith("test_accuracy_std") and row is not None and (row.get("eval_runs") or 0) < MIN_RUNS_FOR_SPREAD:
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


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def summarize(rows: list[dict]) -> list[dict]:
    """Per method and budget: accuracy pooled over seeds and evaluation runs (± the sample std over them,
    shown from 3 runs), and the gain over random at the same number of images on the same seeds and recipe
    (± the standard error of the difference of means). Full-data rows are kept as they are."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        trained = r.get("method_test_accuracy") is not None  # a training-time method: judged by its own model
        # a training-time method's group is its schedule (rows of several schedules stay apart), else its images
        size_or_schedule = ("schedule", r.get("method_schedule")) if trained else r["n_examples"]
        groups.setdefault((r["method"], r["kind"], r["budget"], size_or_schedule), []).append(r)
    out = []
    for (method, kind, budget, size_or_schedule), members in groups.items():
        trained = isinstance(size_or_schedule, tuple)
        n = None if trained else size_or_schedule
        accs = [a for r in members for a in _accuracies(r)]
        mean, std = _mean_std(accs)
        row = {"method": method, "kind": kind, "budget": budget,
               "n_examples": members[0]["n_examples"] if not trained else
               round(sum(r["n_examples"] for r in members) / len(members)),
               "steps": members[0].get("method_steps") or members[0].get("eval_steps"),
               "judged_by": "its own training" if trained else "the evaluation recipe",
               "seeds": len({r["seed"] for r in members}), "runs": len(accs), "accuracy": mean,
               "accuracy_std": std if len(accs) >= MIN_RUNS_FOR_SPREAD else None, "gain": None, "gain_se": None}
        if trained:  # against random subsets at the same step budget and schedule
            baseline = (groups.get(("random_steps", "prune", budget, size_or_schedule))
                        if method != "random_steps" else None)
        else:  # against random subsets of the same number of images, retrained with the same recipe
            baseline = groups.get(("random", "prune", _random_budget(groups, n), n)) if method != "random" else None
        if baseline and mean is not None and kind != "full":
            seeds = {r["seed"] for r in members}
            base = [a for r in baseline if r["seed"] in seeds for a in _accuracies(r)]
            b_mean, b_std = _mean_std(base)
            if b_mean is not None:
                row["gain"] = mean - b_mean
                if len(accs) >= MIN_RUNS_FOR_SPREAD and len(base) >= MIN_RUNS_FOR_SPREAD:
                    row["gain_se"] = (std ** 2 / len(accs) + b_std ** 2 / len(base)) ** 0.5
        out.append(row)
    return out


def _accuracies(row: dict) -> list[float]:
    """A training-time method's own model accuracy, else every evaluation run's accuracy."""
    if row.get("method_test_accuracy") is not None:
        return [row["method_test_accuracy"]]
    return row.get("test_accuracies") or ([row["test_accuracy"]] if row.get("test_accuracy") is not None else [])


def _random_budget(groups: dict, n: int) -> str | None:
    return next((budget for (m, _, budget, images) in groups if m == "random" and images == n), None)


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
