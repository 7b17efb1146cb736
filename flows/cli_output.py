"""What the ``smallset`` command line prints: result tables, dataset and file descriptions, method lists.

Text that comes from data (class names, sources, parameters) goes through
:func:`smallset.safenames.terminal_safe`: a class name cannot move the cursor or recolour the terminal.
``show`` and ``methods`` need no torch (:mod:`smallset.fileinfo`, :mod:`smallset.tasks.catalog`).
"""
from __future__ import annotations

import json
from pathlib import Path

from smallset.safenames import terminal_safe as safe


def print_row(row: dict) -> None:
    from smallset import tracking
    from smallset.tasks.results import format_table

    print(format_table([row]))
    print(f"\nwrote {row['output']}")
    print(f"MLflow run {row['run_id']} in {tracking.tracking_uri()}  (browse: mlflow ui --backend-store-uri "
          f"{tracking.tracking_uri()}, then open {_experiment_page(row['run_id'])})")


def print_compare(rows: list[dict]) -> None:
    from smallset import tracking
    from smallset.tasks.results import format_summary, format_table, summarize

    print(format_table(rows))
    print()
    print(format_summary(summarize(rows)))
    if rows:
        print(f"\nresults: {rows[0]['csv']}")
        report = Path(rows[0]["csv"]).parent / "report.html"
        if report.exists():
            print(f"report: {report}")
        parent = rows[0]["parent_run_id"]
        print(f"MLflow: {tracking.tracking_uri()} (parent run {parent}); browse with: mlflow ui --backend-store-uri "
              f"{tracking.tracking_uri()}, then open {_experiment_page(parent)}")


def print_datasets(args) -> int:
    from smallset.data import load_source

    src = load_source(args.source, data_root=args.data_root, normalization=args.normalization)
    info = {"source": src.id, "recognised_as": src.train.dataset_key}
    for split, ds in (("train", src.train), ("test", src.test)):
        if ds is None:
            continue
        info[split] = {"examples": len(ds), "shape": [ds.channels, *ds.image_size],
                       "classes": ds.classes, "per_class": dict(zip(ds.classes, ds.class_counts())),
                       "mean": list(ds.mean), "std": list(ds.std), "digest": ds.digest}
    if args.json:
        print(json.dumps(info, indent=2))  # JSON escapes control characters itself
        return 0
    print(f"source {safe(src.id)}" + (f" (recognised as {src.train.dataset_key}: the papers' normalisation constants)"
                                       if src.train.dataset_key else ""))
    for split in ("train", "test"):
        if split in info:
            d = info[split]
            shape = "×".join(map(str, d["shape"]))
            print(f"  {split}: {d['examples']} images of {shape}, {len(d['classes'])} classes, "
                  f"mean {d['mean']}, std {d['std']}")
            print("    per class: " + ", ".join(f"{safe(k)}: {v}" for k, v in d["per_class"].items()))
            print(f"    digest: {d['digest']}")
    return 0


def print_show(args) -> int:
    from smallset import fileinfo
    from smallset.errors import SmallsetError

    if args.json:
        print(json.dumps(fileinfo.read_metadata(args.path), indent=2))
        return 0
    info = fileinfo.describe(args.path)
    meta = info["meta"]
    try:
        shape = "×".join(str(int(v)) for v in meta["shape"])
        print(f"{safe(args.path)}: {safe(meta['kind'])} set by {safe(meta['method'])} (seed {safe(meta['seed'])}), "
              f"smallset {safe(meta.get('smallset_version'))}")
        print(f"  source: {safe(meta['source'])} (digest {safe(str(meta['source_digest'])[:16])}…)")
        print(f"  {info['rows']} images of {shape}; per class: "
              + ", ".join(f"{safe(c)}: {n}" for c, n in zip(info["classes"], info["per_class"])))
        w = info["weights"]
        print(f"  weights: min {w['min']:.3g}, max {w['max']:.3g}, sum {w['sum']:.6g}")
        print(f"  params: {safe(json.dumps(meta.get('params', {})))}")
        for name, e in (meta.get("evaluation") or {}).items():
            print(f"  evaluation ({safe(name)}, {safe(e['protocol'])}): {100 * e['mean']:.2f} ± {100 * e['std']:.2f}% "
                  f"over {e['runs']} runs")
        print(f"  created {safe(meta['created'])}")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SmallsetError(f"{args.path} has damaged smallset metadata ({type(e).__name__}: {e}).") from None
    return 0


def print_methods(args) -> int:
    from smallset.tasks.catalog import catalog

    cat = catalog()
    for kind in ("prune", "distill"):
        print(f"{kind} methods:")
        for name, m in sorted(cat["methods"].items()):
            if m["kind"] == kind:
                opts = ", ".join(f["name"] for f in m["fields"]) or "no options"
                print(f"  {name:<12} {m['doc']}  [{opts}]")
    print(f"models: {', '.join(cat['models'])}")
    print(f"protocols: {', '.join(cat['protocols'])}")
    return 0


def _experiment_page(run_id: str) -> str:
    """The runs table of a run's experiment in a local `mlflow ui` (port 5000)."""
    from mlflow.tracking import MlflowClient

    from smallset import tracking

    experiment = MlflowClient(tracking.tracking_uri()).get_run(run_id).info.experiment_id
    return tracking.experiment_url("http://127.0.0.1:5000", experiment)
