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

import json
import math
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import utils

from smallset.context import RunContext
from smallset.models import seeded_model
from smallset.prune.crest import CrestConfig, CrestSelector, lr_for_epoch
from smallset.train import accuracy

VARIANTS = {"crest": {}, "crest-fast": {"consistent_check": True, "check_subsets": 1}}  # name → CrestConfig overrides


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


def run_crest(ds, test, cfg: CrestConfig, model_name, seed, device, fraction: float) -> dict:
    """CREST's selector at ``fraction``; its training's accuracy, seconds, steps and selection counters."""
    ctx = RunContext(seed=seed, device=device, model=model_name, test=test)
    sel = CrestSelector(cfg).select(ds, fraction, ctx)
    info = sel.info
    return {"test_accuracy": info["test_accuracy"], "train_seconds": info["train_seconds"],
            "steps": int(info["steps"]), "selection_seconds": info["selection_seconds"],
            "check_seconds": info["check_seconds"], "selections": int(info["selections"]),
            "checks": len(info["check_error"]),
            "kappa_first_last": info["kappa"][:1] + info["kappa"][-1:],  # empty if never selected
            "epoch_selections": info["epoch_selections"],
            "dropped": int(info["dropped"]), "distinct_examples": len(sel.indices),
            "final_check_interval": info["check_interval"][-1],
            "final_num_coresets": info["num_coresets"][-1]}


def time_is_up(args, began: float) -> bool:
    """``--not-after`` passed, or ``--start-limit`` seconds since the start."""
    late = bool(args.not_after) and time.strftime("%H:%M") >= args.not_after
    return late or bool(args.start_limit and time.perf_counter() - began > args.start_limit)


def parse_args(argv=None):
    ap = utils.parser(__doc__, threads=0, device="auto", json="", data=str(utils.DATA))
    ap.add_argument("--plan", default="mnist:0,cifar10:0,mnist:1,cifar10:1,mnist:2,cifar10:2",
                    help="dataset:seed groups, run in this order (dataset: a folder under --data, mnist-mini or "
                         "a source spec)")
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
    ap.add_argument("--table-only", action="store_true", help="re-print the table of the --json file and exit")
    args = ap.parse_args(argv)
    unknown = sorted(set(utils.comma_list(args.variants)) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown --variants {unknown}; choose from {sorted(VARIANTS)}")
    return args


def run(args) -> list[dict]:
    if args.table_only:
        if not (args.json and Path(args.json).exists()):
            raise SystemExit("--table-only needs --json FILE written by an earlier run")
        summarize(utils.read_rows(args.json))
        return []
    utils.set_threads(args.threads)
    device = utils.device(args.device)
    cfg = CrestConfig(epochs=args.epochs, warmup_epochs=args.warmup_epochs, lr_milestones=args.lr_milestones,
                      drop_interval=args.drop_interval)
    fractions = [float(f) for f in utils.comma_list(args.fractions)]
    utils.print_header(device=str(device), model=args.model, config=asdict(cfg))
    rows, began = utils.RowWriter(args.json), time.perf_counter()
    for name, seed in utils.plan(args.plan):
        if time_is_up(args, began):
            print(f"# time limit: skipped {name}:{seed}", flush=True)
            continue
        src = utils.load(utils.dataset_spec(name, args.data))
        ds, test = src.train, src.test
        runs = [("full", None)] + [(k, f) for f in fractions for k in ("random", *utils.comma_list(args.variants))]
        for kind, f in runs:
            if kind in VARIANTS:
                res = run_crest(ds, test, replace(cfg, **VARIANTS[kind]), args.model, seed, device, f)
            else:
                res = train_baseline(ds, test, cfg, args.model, seed, device, f)
            row = {"dataset": name, "seed": seed, "run": kind if f is None else f"{kind}@{f:g}", **res,
                   "elapsed": round(time.perf_counter() - began, 1)}
            print(json.dumps(row), flush=True)
            rows.write(row)
    summarize(rows.rows)
    return rows.rows


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
    run(parse_args())
