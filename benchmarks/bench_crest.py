"""CREST vs full-data and random training at the same SGD-step budget (docs/methods/crest.md).

For each dataset and seed, in one process and with the same model, optimiser and schedule (CREST's
reference recipe scaled to ``--epochs``: SGD lr 0.1 without momentum, weight decay 1e-4, batch 128, linear
warm-up (``--warmup-epochs``, 0 by default here: in a 5-epoch run the reference's LR-0 epoch 0 would waste a
fifth of every budget), two ×0.1 decays), it trains:

- ``full``: every epoch a pass over the shuffled full training set (ceil(N/B) steps per epoch);
- ``random@f``: every epoch a fresh uniform random subset of floor(f·N) examples, one pass (the reference's
  ``random`` baseline: ceil(floor(f·N)/B) steps per epoch, so exactly CREST's step budget);
- ``crest@f``: :class:`prune.crest.CrestSelector` at fraction f (same steps), reference settings;
- ``crest-fast@f`` (with ``--variants crest,crest-fast``): the same with the two documented deviations of
  :mod:`prune.crest` that target CPU cost: ``consistent_check`` (L0 is the random subsets' own loss, so the
  check stops firing on the coreset/random-subset loss gap) and ``check_subsets=1`` (the check's forward pass
  covers one random subset instead of all P).

and reports final test accuracy and wall-clock training time (CREST's selection and checks included; test
evaluation excluded for all). The speed-up is full-data seconds / CREST seconds of the same seed.

    flock /tmp/smallset-bench.lock .venv/bin/python benchmarks/bench_crest.py --threads 2 \
        --plan mnist:0,cifar10:0,mnist:1,cifar10:1,mnist:2,cifar10:2 --epochs 10 --lr-milestones 6,9 \
        --fractions 0.1,0.2 --variants crest,crest-fast --json /tmp/bench_crest.jsonl

(the BENCHMARKS.md run; ``--table-only --json FILE`` re-prints the table of a JSON-lines file).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smallset.context import RunContext  # noqa: E402
from smallset.data import load_source  # noqa: E402
from smallset.models import seeded_model  # noqa: E402
from smallset.train import accuracy  # noqa: E402
from smallset.prune.crest import CrestConfig, CrestSelector, lr_for_epoch  # noqa: E402

VARIANTS = {"crest": {}, "crest-fast": {"consistent_check": True, "check_subsets": 1}}  # name → CrestConfig overrides
DATASETS = {"mnist": "parquet:../shared/datasets/mnist", "cifar10": "parquet:../shared/datasets/cifar10",
            "mnist-mini": "builtin:mnist-mini"}  # mnist-mini: for a quick smoke run of this script


def train_baseline(ds, test, cfg: CrestConfig, model_name, seed, device, fraction=None):
    """Full data (fraction None) or a fresh random floor(f·N) subset per epoch; CREST's schedule and optimiser."""
    model = seeded_model(model_name, ds.channels, ds.num_classes, ds.image_size, seed).to(device)  # = CREST's init
    x, y = ds.normalized().to(device), ds.labels.to(device)
    n, B = len(ds), cfg.batch_size
    n_epoch = n if fraction is None else math.floor(n * fraction)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed * 7919 + 11)
    steps = 0
    model.train()
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        lr = lr_for_epoch(cfg, epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        perm = torch.randperm(n, generator=gen)[:n_epoch].to(device)
        for s in range(0, n_epoch, B):
            idx = perm[s:s + B]
            if lr > 0:
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:  # LR 0 (epoch 0 of the warm-up): forward only, exactly as CREST does
                with torch.no_grad():
                    model(x[idx])
            steps += 1
    secs = time.perf_counter() - t0
    return {"test_accuracy": accuracy(model, test, device), "train_seconds": secs, "steps": steps}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="mnist:0,cifar10:0,mnist:1,cifar10:1,mnist:2,cifar10:2",
                    help="dataset:seed groups, run in this order")
    ap.add_argument("--start-limit", type=float, default=0.0,
                    help="seconds after which no new dataset:seed group is started (0: no limit)")
    ap.add_argument("--not-after", default="", help="HH:MM (local time): start no new group after it")
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--warmup-epochs", type=int, default=0)
    ap.add_argument("--lr-milestones", default="3,4")
    ap.add_argument("--drop-interval", type=int, default=1)
    ap.add_argument("--fractions", default="0.1,0.2")
    ap.add_argument("--variants", default="crest", help=f"comma-separated CREST variants of {sorted(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--json", default="", help="append one JSON line per run here")
    ap.add_argument("--table-only", action="store_true", help="re-print the table of the --json file and exit")
    args = ap.parse_args()
    if args.table_only:
        if not args.json or not Path(args.json).exists():
            ap.error("--table-only needs --json FILE written by an earlier run")
        summarize([json.loads(line) for line in Path(args.json).read_text().splitlines() if line.strip()])
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = CrestConfig(epochs=args.epochs, warmup_epochs=args.warmup_epochs, lr_milestones=args.lr_milestones,
                      drop_interval=args.drop_interval)
    fractions = [float(f) for f in args.fractions.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown --variants {unknown}; choose from {sorted(VARIANTS)}")
    plan = [(p.split(":")[0], int(p.split(":")[1])) for p in args.plan.split(",")]
    began = time.perf_counter()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')} {platform.processor() or platform.machine()} "
          f"threads={torch.get_num_threads()} device={device} model={args.model}", flush=True)
    print(f"# config {json.dumps(asdict(cfg))}", flush=True)
    rows, sources = [], {}
    for name, seed in plan:
        late = bool(args.not_after) and time.strftime("%H:%M") >= args.not_after
        if late or (args.start_limit and time.perf_counter() - began > args.start_limit):
            print(f"# time limit: skipped {name}:{seed}", flush=True)
            continue
        if name not in sources:
            t = time.perf_counter()
            src = load_source(DATASETS[name])
            sources[name] = (src.train, src.test)
            print(f"# loaded {name}: {len(src.train)} train / {len(src.test)} test in "
                  f"{time.perf_counter() - t:.1f}s", flush=True)
        ds, test = sources[name]
        runs = [("full", None)] + [(k, f) for f in fractions for k in ("random", *variants)]
        for kind, f in runs:
            if kind in VARIANTS:
                ctx = RunContext(seed=seed, device=device, model=args.model, test=test)
                sel = CrestSelector(replace(cfg, **VARIANTS[kind])).select(ds, f, ctx)
                info = sel.info
                res = {"test_accuracy": info["test_accuracy"], "train_seconds": info["train_seconds"],
                       "steps": int(info["steps"]), "selection_seconds": info["selection_seconds"],
                       "check_seconds": info["check_seconds"], "selections": int(info["selections"]),
                       "checks": len(info["check_error"]), "kappa_first_last": info["kappa"][:1] + info["kappa"][-1:],  # empty if never selected
                       "epoch_selections": info["epoch_selections"],
                       "dropped": int(info["dropped"]), "distinct_examples": len(sel.indices),
                       "final_check_interval": info["check_interval"][-1],
                       "final_num_coresets": info["num_coresets"][-1]}
            else:
                res = train_baseline(ds, test, cfg, args.model, seed, device, f)
            row = {"dataset": name, "seed": seed, "run": kind if f is None else f"{kind}@{f:g}", **res,
                   "elapsed": round(time.perf_counter() - began, 1), "load1": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    summarize(rows)


def summarize(rows: list[dict]) -> None:
    """Markdown table: mean ± std over seeds; speed-up = full seconds / run seconds of the same seed;
    for CREST runs also the share of its time spent selecting and checking, and its selections."""
    print("\n| dataset | run | SGD steps | test acc. (%) | Δ vs full | train s | speed-up vs full | "
          "selection+check share | selections | seeds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["dataset"] for r in rows):
        full = {r["seed"]: r for r in rows if r["dataset"] == name and r["run"] == "full"}
        for run in dict.fromkeys(r["run"] for r in rows if r["dataset"] == name):
            rs = [r for r in rows if r["dataset"] == name and r["run"] == run and r["seed"] in full]
            if not rs:
                continue
            acc = [100 * r["test_accuracy"] for r in rs]
            delta = [100 * (r["test_accuracy"] - full[r["seed"]]["test_accuracy"]) for r in rs]
            sec = [r["train_seconds"] for r in rs]
            spd = [full[r["seed"]]["train_seconds"] / r["train_seconds"] for r in rs]
            sd = statistics.pstdev(acc) if len(acc) > 1 else 0.0
            share = sels = "–"
            if "selection_seconds" in rs[0]:
                share = f"{100 * statistics.mean(r['selection_seconds'] / r['train_seconds'] for r in rs):.0f} %"
                sels = f"{statistics.mean(r['selections'] for r in rs):.0f}"
            print(f"| {name} | {run} | {rs[0]['steps']} | {statistics.mean(acc):.2f} ± {sd:.2f} | "
                  f"{statistics.mean(delta):+.2f} | {statistics.mean(sec):.1f} | {statistics.mean(spd):.2f}× | "
                  f"{share} | {sels} | {len(rs)} |")

if __name__ == "__main__":
    main()
