"""The comparison report: a self-contained HTML page and a Markdown summary built from MLflow runs.

For a compare (an MLflow parent run) it gathers the child runs and renders:

- the table: method, kind, budget, images kept, test accuracy mean ± std per evaluation model,
  selection (or distillation) seconds, evaluation training seconds, total cost;
- accuracy against images kept, pruned and distilled sets on one axis (log scale), full data as a line;
- accuracy against total compute seconds, with the Pareto front;
- per-class counts of every reduced set;
- synthetic image grids (distilled sets) and score histograms (ranking selectors).

Figures are PNGs, embedded as data URIs in the HTML (one file to mail or open anywhere) and written
beside the Markdown file.

One function per step: ``collect`` (``child_runs`` → ``run_row`` → ``sort_rows``) gathers the rows;
``figures`` assembles ``accuracy_vs_images``, ``accuracy_vs_seconds`` (with ``pareto_front``),
``per_class_counts`` (from ``class_counts``), ``score_histogram`` (from ``run_scores``) and ``image_grid``;
``table_rows`` builds the table; ``write_markdown`` and ``write_html`` (``markdown``, ``html_page``) write
the files; ``render`` runs them all.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

import numpy as np

from smallset import tracking
from smallset.comparison import GAIN_METRIC, REFERENCE_KINDS, budget_label, has_spread
from smallset.errors import SmallsetError
from smallset.safenames import markdown_text, safe_filename


# --- gathering -----------------------------------------------------------------------------------------
def latest_compare_run() -> str:
    from mlflow.tracking import MlflowClient

    tracking.configure()
    client = MlflowClient(tracking.tracking_uri())
    exps = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in exps], "tags.kind = 'compare'",
                              order_by=["attributes.start_time DESC"], max_results=1) if exps else []
    if not runs:
        raise SmallsetError(f"No compare runs in {tracking.tracking_uri()}; run `smallset compare` first or "
                            f"pass --run-id.")
    return runs[0].info.run_id


def child_runs(parent_run_id: str) -> list:
    """The MLflow child runs of a compare's parent run (one per cell)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException:
        raise SmallsetError(f"No MLflow run {parent_run_id} in {tracking.tracking_uri()}.") from None
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=5000)


def eval_models(params: dict) -> list[str]:
    """The evaluation models of a run, in order (the training model when none was listed)."""
    return [x for x in params.get("eval_models", params.get("model", "")).split(",") if x] or \
        [params.get("model", "?")]


def accuracies(metrics: dict, models: list[str]) -> dict[str, tuple[float, float]]:
    """Test accuracy (mean, std) per evaluation model; the plain ``test_accuracy`` counts for the first one."""
    acc = {}
    for i, name in enumerate(models):
        key = f"test_accuracy/{name}" if f"test_accuracy/{name}" in metrics else ("test_accuracy" if i == 0 else None)
        if key and key in metrics:
            std_key = key.replace("test_accuracy", "test_accuracy_std")
            acc[name] = (metrics[key], metrics.get(std_key, 0.0))
    return acc


def run_row(run) -> dict:
    """One report row from one child run."""
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    kind = t.get("kind", "?")
    sel = m.get("selection_seconds", 0.0)
    per_model = [v for k, v in m.items() if k.startswith("eval_train_seconds/")]
    train = sum(per_model) if per_model else m.get("eval_train_seconds", 0.0)
    return {
        "run_id": run.info.run_id, "method": t.get("method", p.get("method", "?")), "kind": kind,
        "budget": budget_label(kind, p), "seed": p.get("seed"), "n_examples": int(m.get("n_examples", 0)),
        "accuracy": accuracies(m, eval_models(p)), "runs": int(m.get("eval_runs", 0)),
        "gain": m.get(GAIN_METRIC),
        "selection_seconds": sel, "train_seconds": train, "total_seconds": sel + train,
        "output": t.get("smallset.output"),
    }


def sort_rows(rows: list[dict]) -> list[dict]:
    """Full data first, then pruned, then distilled sets; by method, size and seed within each (in place)."""
    kind_order = {"full": 0, "prune": 1, "distill": 2}
    rows.sort(key=lambda r: (kind_order.get(r["kind"], 3), r["method"], r["n_examples"], str(r["seed"])))
    return rows


def collect(parent_run_id: str) -> tuple[list[dict], list[str]]:
    """Rows (one per child run) and the evaluation models seen, in order."""
    rows, models = [], []
    for run in child_runs(parent_run_id):
        rows.append(run_row(run))
        for name in eval_models(run.data.params):
            if name not in models:
                models.append(name)
    return sort_rows(rows), models


# --- figures -------------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _primary(row: dict, models: list[str]) -> tuple[float, float] | None:
    for m in models:
        if m in row["accuracy"]:
            return row["accuracy"][m]
    return None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower cost and higher accuracy), by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scored_rows(rows: list[dict], models: list[str]) -> list[tuple[dict, tuple[float, float]]]:
    """(row, (accuracy, std) on the first evaluation model it has) for the rows with an accuracy."""
    scored = [(r, _primary(r, models)) for r in rows]
    return [(r, a) for r, a in scored if a is not None]


KIND_STYLES = {"prune": {"marker": "o", "linestyle": "-"}, "distill": {"marker": "s", "linestyle": "--"}}
OTHER_KIND_MARKER = "*"  # a run of a kind without a style (full data) in the compute plot


def accuracy_vs_images(scored: list[tuple[dict, tuple[float, float]]], models: list[str]) -> bytes:
    """Accuracy against images kept (log scale): a line per method and kind, full data as a horizontal line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for kind, style in KIND_STYLES.items():
        for method in sorted({r["method"] for r, _ in scored if r["kind"] == kind}):
            # one point per budget: the mean over seeds, error bar the spread over seeds (or the
            # evaluation std when there is one seed)
            by_n: dict[int, list] = {}
            for r, a in scored:
                if r["method"] == method and r["kind"] == kind:
                    by_n.setdefault(r["n_examples"], []).append(a)
            xs = sorted(by_n)
            ys = [100 * float(np.mean([a[0] for a in by_n[n]])) for n in xs]
            es = [100 * (float(np.std([a[0] for a in by_n[n]])) if len(by_n[n]) > 1 else by_n[n][0][1])
                  for n in xs]
            ax.errorbar(xs, ys, yerr=es, **style, capsize=3, label=f"{method} ({kind})")
    for r, a in scored:
        if r["kind"] in REFERENCE_KINDS:
            ax.axhline(100 * a[0], color="k", linestyle=":", label=f"full data ({r['n_examples']} images)")
            break
    ax.set_xscale("log")
    ax.set_xlabel("images kept")
    ax.set_ylabel(f"test accuracy % ({models[0] if models else ''})")
    ax.set_title("Accuracy against images kept")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def accuracy_vs_seconds(scored: list[tuple[dict, tuple[float, float]]]) -> bytes:
    """Accuracy against total compute seconds (log scale), every run a point, with the Pareto front."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    pts = [(max(r["total_seconds"], 1e-3), 100 * a[0]) for r, a in scored]
    for (r, _), (x, y) in zip(scored, pts):
        ax.scatter(x, y, marker=KIND_STYLES.get(r["kind"], {}).get("marker", OTHER_KIND_MARKER), s=40)
        ax.annotate(r["method"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "r-", alpha=0.6, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("total compute seconds (selection or distillation + evaluation training)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def class_counts(rows: list[dict]) -> list[tuple[str, np.ndarray]]:
    """(label, images per class) for every row whose reduced set is on disk."""
    counts = []
    for r in rows:
        labels = _labels(r.get("output"))
        if labels is not None:
            counts.append((f"{r['method']} {r['budget']} s{r['seed']}", np.bincount(labels)))
    return counts


def per_class_counts(counts: list[tuple[str, np.ndarray]]) -> bytes:
    """Stacked horizontal bars: images per class of every reduced set."""
    plt = _pyplot()
    n_classes = max(len(c) for _, c in counts)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(counts) + 1.5))
    left = np.zeros(len(counts))
    cmap = plt.get_cmap("tab10" if n_classes <= 10 else "tab20")
    for k in range(n_classes):
        vals = np.array([c[k] if k < len(c) else 0 for _, c in counts])
        ax.barh(range(len(counts)), vals, left=left, color=cmap(k % cmap.N), label=str(k))
        left += vals
    ax.set_yticks(range(len(counts)), [n for n, _ in counts], fontsize=7)
    ax.set_xlabel("images per class (stacked)")
    ax.set_title("Per-class counts")
    ax.legend(fontsize=6, ncol=min(n_classes, 10), loc="lower right")
    return _png(fig)


def run_scores(row: dict) -> np.ndarray | None:
    """The per-example scores a ranking selector logged for a pruned set (``scores/scores.npy``), if 1-D."""
    scores = _artifact_array(row["run_id"], "scores/scores.npy")
    return scores if scores is not None and scores.ndim == 1 else None


def score_histogram(scores: np.ndarray, method: str, seed) -> bytes:
    """Histogram of a ranking selector's scores."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(scores, bins=40, color="tab:blue")
    ax.set_title(f"{method}: score histogram (seed {seed})")
    ax.set_xlabel("score")
    return _png(fig)


def image_grid(row: dict) -> bytes | None:
    """The grid of synthetic images a distillation run logged (``grid.png``), as it is."""
    return _artifact_bytes(row["run_id"], "grid.png")


def run_score_histogram(row: dict) -> bytes | None:
    """The histogram of a pruned run's scores, when its selector logged them."""
    scores = run_scores(row)
    return None if scores is None else score_histogram(scores, row["method"], row["seed"])


RUN_FIGURES = {  # per kind: a run's figure file name (names from tags: no '/' or markup) and how it is drawn
    "prune": (lambda r: f"scores_{safe_filename(r['method'])}.png", lambda r: run_score_histogram(r)),
    "distill": (lambda r: f"grid_{safe_filename(r['method'])}_{safe_filename(r['budget'])}.png",
                lambda r: image_grid(r)),  # looked up when drawn (tests replace the module's functions)
}


def figures(rows: list[dict], models: list[str]) -> dict[str, bytes]:
    """Every figure of the report, by file name, in the order the report shows them: accuracy against images
    and against compute, per-class counts, then per run a score histogram (the first pruned run of each ranking
    selector) or a synthetic image grid (the first distilled run of each method and budget)."""
    _pyplot()
    figs: dict[str, bytes] = {}
    scored = scored_rows(rows, models)
    if scored:
        figs["accuracy_vs_images.png"] = accuracy_vs_images(scored, models)
        figs["accuracy_vs_seconds.png"] = accuracy_vs_seconds(scored)
    counts = class_counts(rows)
    if counts:
        figs["per_class_counts.png"] = per_class_counts(counts)
    for r in rows:
        if r["kind"] not in RUN_FIGURES:
            continue
        name_of, draw = RUN_FIGURES[r["kind"]]
        name = name_of(r)
        if name not in figs and (png := draw(r)) is not None:
            figs[name] = png
    return figs


def _labels(path: str | None):
    if not path or not os.path.exists(path):
        return None
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["label"]).column("label").to_numpy()


def _artifact_bytes(run_id: str, name: str) -> bytes | None:
    import tempfile

    from mlflow.tracking import MlflowClient

    try:
        with tempfile.TemporaryDirectory() as tmp:
            p = MlflowClient(tracking.tracking_uri()).download_artifacts(run_id, name, tmp)
            return Path(p).read_bytes()
    except Exception:
        return None


def _artifact_array(run_id: str, name: str):
    raw = _artifact_bytes(run_id, name)
    return None if raw is None else np.load(io.BytesIO(raw))


# --- rendering -----------------------------------------------------------------------------------------
def _accuracy_cell(acc: tuple[float, float] | None, runs: int) -> str:
    if acc is None:
        return "–"
    return f"{100 * acc[0]:.2f} ± {100 * acc[1]:.2f}" if has_spread(runs) else f"{100 * acc[0]:.2f}"


def table_rows(rows: list[dict], models: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["method", "kind", "budget", "seed", "images", "runs"] + [f"accuracy % ({m})" for m in models] + \
           ["gain vs random (pts)", "select s", "train s", "total s"]
    body = []
    for r in rows:
        accs = [_accuracy_cell(r["accuracy"].get(m), r.get("runs", 0)) for m in models]
        gain = "–" if r.get("gain") is None else f"{100 * r['gain']:+.2f}"
        body.append([r["method"], r["kind"], r["budget"], str(r["seed"]), str(r["n_examples"]), str(r.get("runs", "")),
                     *accs, gain, f"{r['selection_seconds']:.1f}", f"{r['train_seconds']:.1f}",
                     f"{r['total_seconds']:.1f}"])
    return head, body


def summary_rows(parent_run_id: str) -> tuple[list[str], list[list[str]]] | None:
    """The compare's per method × budget summary (its summary.csv artifact): accuracy over every seed and
    evaluation run, and the gain over random at the same images and seeds with its standard error."""
    import csv

    raw = _artifact_bytes(parent_run_id, "summary.csv")
    if raw is None:
        return None
    records = list(csv.DictReader(io.StringIO(raw.decode())))

    def pct(v: str, sign: bool = False) -> str:
        if v in ("", None):
            return "–"
        return f"{100 * float(v):+.2f}" if sign else f"{100 * float(v):.2f}"

    head = ["method", "kind", "budget", "images", "seeds", "runs", "accuracy %", "± %", "gain vs random (pts)",
            "± s.e."]
    body = [[r["method"], r["kind"], r["budget"], r["n_examples"], r["seeds"], r["runs"], pct(r["accuracy"]),
             pct(r["accuracy_std"]), pct(r["gain"], sign=True), pct(r["gain_se"])] for r in records]
    return head, body


def recipe_line(parent_run_id: str) -> str:
    """How every reduced set of the compare was trained for its evaluation (the parent run's tags)."""
    from mlflow.tracking import MlflowClient

    try:
        tags = MlflowClient(tracking.tracking_uri()).get_run(parent_run_id).data.tags
    except Exception:
        return ""
    if tags.get("eval_recipe") == "paper":
        return "Evaluation: each method's paper recipe (--eval-recipe paper); see each run's eval_protocol."
    return f"Evaluation, the same for every reduced set: {tags['shared_recipe']}." if tags.get("shared_recipe") else ""


def report_title(parent_run_id: str) -> str:
    return f"smallset comparison (MLflow run {parent_run_id[:8]})"


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    head, body = [markdown_text(h) for h in head], [[markdown_text(c) for c in b] for b in body]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body]


def markdown(title: str, head: list[str], body: list[list[str]], figure_names: list[str],
             summary: tuple[list[str], list[list[str]]] | None = None, recipe: str = "") -> str:
    """The Markdown summary: the recipe, the summary table, the per-run table, then the figures."""
    md = [f"# {markdown_text(title)}", ""] + ([markdown_text(recipe), ""] if recipe else [])
    if summary:
        md += ["## Per method and budget", ""] + _md_table(*summary) + ["", "## Per run", ""]
    md += _md_table(head, body)
    md.append("")
    md += [f"![{name}]({name})" for name in figure_names]
    return "\n".join(md) + "\n"


def write_markdown(out: Path, title: str, head: list[str], body: list[list[str]], figs: dict[str, bytes],
                   summary=None, recipe: str = "") -> Path:
    """Write the figures' PNGs and report.md into ``out``; returns the Markdown file's path."""
    for name, png in figs.items():
        (out / name).write_bytes(png)
    md_path = out / "report.md"
    md_path.write_text(markdown(title, head, body, list(figs), summary, recipe))
    return md_path


def _html_table(table_id: str, head: list[str], body: list[list[str]]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in b) + "</tr>" for b in body)
    return (f'<table id="{table_id}"><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr></thead>'
            f"<tbody>{cells}</tbody></table>")


def html_page(title: str, head: list[str], body: list[list[str]], figs: dict[str, bytes], summary=None,
              recipe: str = "") -> str:
    """One self-contained HTML page: the recipe, the tables and the figures embedded as data URIs."""
    top = (f"<p id=\"recipe\">{html.escape(recipe)}</p>" if recipe else "") + (
        "<h2>Per method and budget</h2>" + _html_table("summary", *summary) + "<h2>Per run</h2>" if summary else "")
    imgs = "".join(
        f'<figure><img alt="{html.escape(n)}" src="data:image/png;base64,{base64.b64encode(p).decode()}">'
        f"<figcaption>{html.escape(n[:-4].replace('_', ' '))}</figcaption></figure>" for n, p in figs.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
th{{background:#f0f0f0}}figure{{display:inline-block;margin:1em}}img{{max-width:640px}}</style></head><body>
<h1>{html.escape(title)}</h1>{top}
{_html_table("results", head, body)}
<h2>Figures</h2><div id="figures">{imgs}</div></body></html>"""


def write_html(out: Path, title: str, head: list[str], body: list[list[str]], figs: dict[str, bytes],
               summary=None, recipe: str = "") -> Path:
    """Write report.html into ``out``; returns its path."""
    html_path = out / "report.html"
    html_path.write_text(html_page(title, head, body, figs, summary, recipe))
    return html_path


def render(parent_run_id: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.html and report.md (with its PNGs) into ``out_dir``; returns both paths."""
    rows, models = collect(parent_run_id)
    if not rows:
        raise SmallsetError(f"The run {parent_run_id} has no child runs to report on.")
    figs = figures(rows, models)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head, body = table_rows(rows, models)
    title = report_title(parent_run_id)
    summary, recipe = summary_rows(parent_run_id), recipe_line(parent_run_id)
    md_path = write_markdown(out, title, head, body, figs, summary, recipe)
    html_path = write_html(out, title, head, body, figs, summary, recipe)
    return html_path, md_path
