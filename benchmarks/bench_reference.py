"""Reference numbers reproduced: our condensers and evaluation at the settings of the official DC/DSA/DM code
run on this machine type (issue 10), beside the figures that code reached.

Protocol of every row (the reference's, at this CPU's size): ConvNet-3 (``convnet``: width 128, instance
norm), evaluation with the ``paper`` recipe (SGD lr 0.01, momentum 0.9, wd 5e-4, batch 256, 300+1 passes,
lr ×0.1 after pass 151, the reference's ``evaluate_synset`` schedule), 3 evaluation networks, the
reference's evaluation augmentation: DSA with ``color_crop_cutout_flip_scale_rotate`` (flip included, also
on MNIST: DM's default) for random real images and DM, the DC augmentation ``crop_scale_rotate`` for DC on
MNIST. Normalisation: the papers' constants (MNIST 0.1307/0.3081, CIFAR-10 0.4914…/0.2023…).

    flock /tmp/smallset-bench.lock .venv/bin/python benchmarks/bench_reference.py --threads 2 \
        --rows random-mnist-1,random-cifar10-1,dm-mnist-1,dm-cifar10-1,dc-mnist-1 --json /tmp/bench_reference.jsonl

``--table-only --json FILE`` re-prints the Markdown table of a JSON-lines file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLIP = "color_crop_cutout_flip_scale_rotate"
# row → (method, dataset, ipc, condensation settings, evaluation augmentation, the reference's figure ± std)
ROWS = {
    "random-mnist-1": ("random", "mnist", 1, {}, f"dsa:{FLIP}", (55.4, 0.9)),
    "random-mnist-10": ("random", "mnist", 10, {}, f"dsa:{FLIP}", (93.0, 0.2)),
    "random-cifar10-1": ("random", "cifar10", 1, {}, f"dsa:{FLIP}", (15.4, 0.2)),
    "random-cifar10-10": ("random", "cifar10", 10, {}, f"dsa:{FLIP}", (31.3, 0.1)),
    "dm-mnist-1": ("dm", "mnist", 1, {"iterations": 112, "lr_img": 1.0, "batch_real": 256, "init": "real",
                                      "dsa_strategy": FLIP}, f"dsa:{FLIP}", (85.5, 0.3)),
    "dm-cifar10-1": ("dm", "cifar10", 1, {"iterations": 120, "lr_img": 1.0, "batch_real": 256, "init": "real",
                                          "dsa_strategy": FLIP}, f"dsa:{FLIP}", (26.0, 0.6)),
    "dc-mnist-1": ("dc", "mnist", 1, {"iterations": 35, "lr_img": 0.1, "outer_loop": 1, "inner_loop": 1,
                                      "init": "noise"}, "dc:crop_scale_rotate", (83.7, 0.5)),
}


def load_kb() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_row(name: str, args) -> dict:
    import torch

    from smallset.context import RunContext
    from smallset.data import load_source
    from smallset.tasks.methods import method_class
    from smallset.train import evaluate, get_protocol

    method, dataset, ipc, settings, augment, reference = ROWS[name]
    src = load_source(f"parquet:{args.data}/{dataset}")
    ds = src.train
    load_before = load_kb()
    t0 = time.perf_counter()
    if method == "random":  # several random draws: one draw of ipc 1 varies by points
        g = torch.Generator().manual_seed(args.seed)
        draws = [torch.cat([idx[torch.randperm(len(idx), generator=g)[:ipc]] for idx in ds.class_indices()])
                 for _ in range(args.random_sets)]
        reduced, info = [ds.subset(keep) for keep in draws], {}
    else:
        cls = method_class(method)
        red = cls(cls.make_config(settings, ipc)).reduce(
            ds, ipc, RunContext(seed=args.seed, model="convnet", progress=not args.quiet))
        reduced, info = red.dataset, red.info
    make_s = time.perf_counter() - t0
    protocol = get_protocol("paper", augment=augment)
    sets = reduced if isinstance(reduced, list) else [reduced]
    evals = [evaluate(s, src.test, "convnet", protocol, runs=args.eval_runs, seed=args.seed + i,
                      progress=not args.quiet) for i, s in enumerate(sets)]
    accs = [a for e in evals for a in e.accuracies]
    ev = evals[0]
    ev.accuracies, ev.train_seconds = accs, [s for e in evals for s in e.train_seconds]
    return {
        "row": name, "method": method, "dataset": dataset, "ipc": ipc, "settings": settings,
        "eval_augment": augment, "normalization": list(ds.mean) + list(ds.std), "dataset_key": ds.dataset_key,
        "ours_mean": 100 * ev.mean, "ours_std": 100 * ev.std, "runs": len(ev.accuracies), "sets": len(sets),
        "accuracies": ev.accuracies, "reference_mean": reference[0], "reference_std": reference[1],
        "condense_seconds": make_s, "iterations_per_second": info.get("iterations_per_second"),
        "eval_seconds": ev.total_train_seconds, "epochs": ev.epochs, "seed": args.seed,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
        "load_before": load_before, "load_after": load_kb(), "machine": platform.node(),
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def table(rows: list[dict]) -> str:
    lines = ["| row | reference | ours (sets × nets) | gap (pts) | condense s | eval s | load before/after |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = r["ours_mean"] - r["reference_mean"]
        lines.append(f"| {r['row']} | {r['reference_mean']:.1f} ± {r['reference_std']:.1f} | "
                     f"{r['ours_mean']:.1f} ± {r['ours_std']:.1f} ({r.get('sets', 1)} × {r['runs'] // r.get('sets', 1)}) | "
                     f"{gap:+.1f} | {r['condense_seconds']:.0f} | "
                     f"{r['eval_seconds']:.0f} | {r['load_before']} / {r['load_after']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    ap.add_argument("--eval-runs", type=int, default=3, help="evaluation networks per set")
    ap.add_argument("--random-sets", type=int, default=1, help="random rows: independent draws, each evaluated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default="/tmp/bench_reference.jsonl")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if args.table_only:
        print(table([json.loads(line) for line in Path(args.json).read_text().splitlines() if line.strip()]))
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in [r for r in args.rows.split(",") if r]:
        if name not in ROWS:
            raise SystemExit(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
        row = run_row(name, args)
        rows.append(row)
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(table([row]).splitlines()[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
