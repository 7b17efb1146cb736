"""What the ``smallset`` command line prints: result tables, dataset and file descriptions, method lists."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path


def print_row(row: dict) -> None:
    from smallset import tracking
    from smallset.tasks.results import format_table

    print(format_table([row]))
    print(f"\nwrote {row['output']}")
    print(f"MLflow run {row['run_id']} in {tracking.tracking_uri()}  (browse: mlflow ui --backend-store-uri "
          f"{tracking.tracking_uri()}, then open {_experiment_page(row['run_id'])})")


def print_compare(rows: list[dict]) -> None:
    from smallset import tracking
    from smallset.tasks.results import format_table

    from smallset.tasks.results import format_summary, summarize

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
        print(json.dumps(info, indent=2))
        return 0
    print(f"source {src.id}" + (f" (recognised as {src.train.dataset_key}: the papers' normalisation constants)"
                                 if src.train.dataset_key else ""))
    for split in ("train", "test"):
        if split in info:
            d = info[split]
            print(f"  {split}: {d['examples']} images of {'×'.join(map(str, d['shape']))}, {len(d['classes'])} classes, "
                  f"mean {d['mean']}, std {d['std']}")
            print(f"    per class: " + ", ".join(f"{k}: {v}" for k, v in d["per_class"].items()))
            print(f"    digest: {d['digest']}")
    return 0


def print_show(args) -> int:
    from smallset import store

    meta = store.read_metadata(args.path)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    ds = store.read_reduced(args.path)
    print(f"{args.path}: {meta['kind']} set by {meta['method']} (seed {meta['seed']}), smallset {meta.get('smallset_version')}")
    print(f"  source: {meta['source']} (digest {meta['source_digest'][:16]}…)")
    print(f"  {len(ds)} images of {'×'.join(map(str, meta['shape']))}; per class: "
          + ", ".join(f"{c}: {n}" for c, n in zip(ds.classes, ds.class_counts())))
    w = ds.effective_weights()
    print(f"  weights: min {float(w.min()):.3g}, max {float(w.max()):.3g}, sum {float(w.sum()):.6g}")
    print(f"  params: {json.dumps(meta.get('params', {}))}")
    for name, e in (meta.get("evaluation") or {}).items():
        print(f"  evaluation ({name}, {e['protocol']}): {100 * e['mean']:.2f} ± {100 * e['std']:.2f}% over {e['runs']} runs")
    print(f"  created {meta['created']}")
    return 0


def print_methods(args) -> int:
    from smallset.models import model_names
    from smallset.train import PROTOCOLS
    from smallset.tasks.methods import registries

    for kind, reg in registries().items():
        print(f"{kind} methods:")
        for name in reg.names():
            cls = reg.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            opts = ", ".join(f.name for f in dataclasses.fields(cls.config_cls)) or "no options"
            print(f"  {name:<12} {doc[0] if doc else ''}  [{opts}]")
    print(f"models: {', '.join(model_names())}")
    print(f"protocols: {', '.join(PROTOCOLS.names())}")
    return 0


def _experiment_page(run_id: str) -> str:
    """The runs table of a run's experiment in a local `mlflow ui` (port 5000)."""
    from mlflow.tracking import MlflowClient

    from smallset import tracking

    experiment = MlflowClient(tracking.tracking_uri()).get_run(run_id).info.experiment_id
    return tracking.experiment_url("http://127.0.0.1:5000", experiment)
