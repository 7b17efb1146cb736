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
from smallset.errors import SmallsetError


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


def collect(parent_run_id: str) -> tuple[list[dict], list[str]]:
    """Rows (one per child run) and the evaluation models seen, in order."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException:
        raise SmallsetError(f"No MLflow run {parent_run_id} in {tracking.tracking_uri()}.") from None
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=5000)
    rows, models = [], []
    for r in kids:
        m, p, t = r.data.metrics, r.data.params, r.data.tags
        evals = [x for x in p.get("eval_models", p.get("model", "")).split(",") if x] or [p.get("model", "?")]
        acc = {}
        for i, name in enumerate(evals):
            key = f"test_accuracy/{name}" if f"test_accuracy/{name}" in m else ("test_accuracy" if i == 0 else None)
            if key and key in m:
                std_key = key.replace("test_accuracy", "test_accuracy_std")
                acc[name] = (m[key], m.get(std_key, 0.0))
            if name not in models:
                models.append(name)
        kind = t.get("kind", "?")
        budget = (f"ipc={p.get('ipc')}" if kind == "distill" else
                  f"fraction={float(p['fraction']):g}" if p.get("fraction") not in (None, "None") else "fraction=1")
        sel = m.get("selection_seconds", 0.0)
        per_model = [v for k, v in m.items() if k.startswith("eval_train_seconds/")]
        train = sum(per_model) if per_model else m.get("eval_train_seconds", 0.0)
        rows.append({
            "run_id": r.info.run_id, "method": t.get("method", p.get("method", "?")), "kind": kind, "budget": budget,
            "seed": p.get("seed"), "n_examples": int(m.get("n_examples", 0)), "accuracy": acc,
            "selection_seconds": sel, "train_seconds": train, "total_seconds": sel + train,
            "output": t.get("smallset.output"),
        })
    kind_order = {"full": 0, "prune": 1, "distill": 2}
    rows.sort(key=lambda r: (kind_order.get(r["kind"], 3), r["method"], r["n_examples"], str(r["seed"])))
    return rows, models


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


def figures(rows: list[dict], models: list[str]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, bytes] = {}
    scored = [(r, _primary(r, models)) for r in rows]
    scored = [(r, a) for r, a in scored if a is not None]
    if scored:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for kind, marker in (("prune", "o"), ("distill", "s")):
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
                ax.errorbar(xs, ys, yerr=es, marker=marker, linestyle="-" if kind == "prune" else "--", capsize=3,
                            label=f"{method} ({kind})")
        for r, a in scored:
            if r["kind"] == "full":
                ax.axhline(100 * a[0], color="k", linestyle=":", label=f"full data ({r['n_examples']} images)")
                break
        ax.set_xscale("log")
        ax.set_xlabel("images kept")
        ax.set_ylabel(f"test accuracy % ({models[0] if models else ''})")
        ax.set_title("Accuracy against images kept")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        figs["accuracy_vs_images.png"] = _png(fig)

        fig, ax = plt.subplots(figsize=(7, 4.2))
        pts = [(max(r["total_seconds"], 1e-3), 100 * a[0]) for r, a in scored]
        for (r, _), (x, y) in zip(scored, pts):
            ax.scatter(x, y, marker={"prune": "o", "distill": "s"}.get(r["kind"], "*"), s=40)
            ax.annotate(r["method"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "r-", alpha=0.6, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("total compute seconds (selection or distillation + evaluation training)")
        ax.set_ylabel("test accuracy %")
        ax.set_title("Accuracy against compute")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        figs["accuracy_vs_seconds.png"] = _png(fig)

    counts = []
    for r in rows:
        labels = _labels(r.get("output"))
        if labels is not None:
            counts.append((f"{r['method']} {r['budget']} s{r['seed']}", np.bincount(labels)))
    if counts:
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
        figs["per_class_counts.png"] = _png(fig)

    for r in rows:
        scores = _artifact_array(r["run_id"], "scores/scores.npy") if r["kind"] == "prune" else None
        if scores is not None and scores.ndim == 1 and f"scores_{r['method']}.png" not in figs:
            fig, ax = plt.subplots(figsize=(5, 3))
            ax.hist(scores, bins=40, color="tab:blue")
            ax.set_title(f"{r['method']}: score histogram (seed {r['seed']})")
            ax.set_xlabel("score")
            figs[f"scores_{r['method']}.png"] = _png(fig)
        if r["kind"] == "distill" and f"grid_{r['method']}_{r['budget']}.png" not in figs:
            grid = _artifact_bytes(r["run_id"], "grid.png")
            if grid is not None:
                figs[f"grid_{r['method']}_{r['budget']}.png"] = grid
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
def table_rows(rows: list[dict], models: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["method", "kind", "budget", "seed", "images"] + [f"accuracy % ({m})" for m in models] + \
           ["select s", "train s", "total s"]
    body = []
    for r in rows:
        accs = [f"{100 * r['accuracy'][m][0]:.2f} ± {100 * r['accuracy'][m][1]:.2f}" if m in r["accuracy"] else "–"
                for m in models]
        body.append([r["method"], r["kind"], r["budget"], str(r["seed"]), str(r["n_examples"]), *accs,
                     f"{r['selection_seconds']:.1f}", f"{r['train_seconds']:.1f}", f"{r['total_seconds']:.1f}"])
    return head, body


def render(parent_run_id: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.html and report.md (with its PNGs) into ``out_dir``; returns both paths."""
    rows, models = collect(parent_run_id)
    if not rows:
        raise SmallsetError(f"The run {parent_run_id} has no child runs to report on.")
    figs = figures(rows, models)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head, body = table_rows(rows, models)
    title = f"smallset comparison (MLflow run {parent_run_id[:8]})"

    md = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(b) + " |" for b in body]
    md.append("")
    for name, png in figs.items():
        (out / name).write_bytes(png)
        md.append(f"![{name}]({name})")
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n")

    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in b) + "</tr>" for b in body)
    imgs = "".join(
        f'<figure><img alt="{html.escape(n)}" src="data:image/png;base64,{base64.b64encode(p).decode()}">'
        f"<figcaption>{html.escape(n[:-4].replace('_', ' '))}</figcaption></figure>" for n, p in figs.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
th{{background:#f0f0f0}}figure{{display:inline-block;margin:1em}}img{{max-width:640px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<table id="results"><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr></thead>
<tbody>{cells}</tbody></table>
<h2>Figures</h2><div id="figures">{imgs}</div></body></html>"""
    html_path = out / "report.html"
    html_path.write_text(page)
    return html_path, md_path
