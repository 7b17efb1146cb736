"""Training-time methods in one harness: InfoBatch, CREST, random subsets at the same steps and full data, on the
same schedule, seeds, model, augmentation and machine (docs/methods/infobatch.md, docs/methods/crest.md).

For each dataset:seed group every arm starts from the same initial weights (``seeded_model(model, …, seed)``)
and trains with SGD on CREST's warm-up + multi-step schedule scaled to ``--epochs``, with the same crop/flip
augmentation of the training batches (``--augment``; ``auto`` flips colour images only):

- ``full``: every epoch a pass over the shuffled full training set;
- ``infobatch``: InfoBatch at its own budget (fraction 1: r = ``--prune-ratio``, δ = ``--delta``);
- ``random-ib``: every epoch a fresh uniform random subset of the size InfoBatch kept in that epoch (same seed),
  unit weights: random dynamic pruning at InfoBatch's exact per-epoch image count (``--infobatch-kept FILE``
  takes those counts from an earlier run's infobatch rows instead of running InfoBatch again);
- ``random@f``: every epoch a fresh uniform random subset of floor(f·N), one pass (CREST's step budget);
- ``random-2x@f``: the same with the loss gradient doubled (weight decay not): the step of the CREST release,
  which back-propagates twice, so the paper's CREST is compared at its effective learning rate;
- ``crest@f``: :class:`smallset.prune.crest.CrestSelector` at fraction f (same steps; ``--crest-fast`` adds the
  documented CPU options consistent_check and check_subsets=1);
- ``infobatch@f``: InfoBatch at fraction f, i.e. round(f·epochs) epochs of the compressed schedule.

Reported per run: final test accuracy, wall seconds of training (selection and checks included, test
evaluation excluded), SGD steps and image passes (examples through a training forward pass, LR-0 warm-up
epochs included; CREST's are its steps' batch sizes, without its selection and check passes), and the
speed-up over ``full`` of the same seed. One JSON line per run (``--json``); ``--table-only`` re-prints the table.

Smoke run (seconds):
    .venv/bin/python benchmarks/bench_training.py --plan mnist-mini:0 --epochs 2 --lr-milestones "" \\
        --fractions 0.2 --model convnet --model-arg width=16 --model-arg norm=batchnorm
Full runs: the commands in docs/methods/infobatch.md#infobatch-benchmark.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import utils

from smallset.context import RunContext
from smallset.models import seeded_model
from smallset.prune._training import augment_flags, crop_flip, parse_epochs, warmup_multistep_lr
from smallset.prune.crest import CrestConfig, CrestSelector
from smallset.prune.infobatch import InfoBatchConfig, InfoBatchSelector
from smallset.train import accuracy


def model_kwargs(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def train_baseline(ds, test, recipe: dict, args, seed: int, device, sizes: list[int],
                   loss_scale: float = 1.0) -> dict:
    """Epoch e trains on a fresh uniform random subset of ``sizes[e]`` examples (N: the full data), one pass,
    unit weights, on the shared schedule and augmentation (forward only at LR 0, as CREST and InfoBatch).
    ``loss_scale`` 2 is the CREST release's effective step: it back-propagates the loss twice, doubling the loss
    gradient but not the weight decay (docs/methods/crest.md)."""
    mk = model_kwargs(args.model_arg)
    model = seeded_model(args.model, ds.channels, ds.num_classes, ds.image_size, seed, **mk).to(device)
    x, y = ds.normalized().to(device), ds.labels.to(device)
    n, B = len(ds), recipe["batch_size"]
    opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                          weight_decay=recipe["weight_decay"])
    gen = torch.Generator().manual_seed(seed * 7919 + 11)
    aug_gen = torch.Generator().manual_seed(seed * 7919 + 12)
    crop, flip = augment_flags(args.augment, ds.channels)
    milestones = parse_epochs(recipe["lr_milestones"])
    steps = passes = 0
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for epoch, size in enumerate(sizes):
        lr = warmup_multistep_lr(recipe["lr"], epoch, recipe["warmup_epochs"], milestones, recipe["lr_gamma"])
        for g in opt.param_groups:
            g["lr"] = lr
        perm = torch.randperm(n, generator=gen)[:size].to(device)
        for s in range(0, size, B):
            idx = perm[s:s + B]
            xb = crop_flip(x[idx], aug_gen, crop, flip)
            if lr > 0:
                loss = loss_scale * F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                with torch.no_grad():
                    model(xb)
            steps += 1
            passes += len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return {"test_accuracy": accuracy(model, test, device), "train_seconds": secs, "steps": steps,
            "image_passes": passes}


def run_infobatch(ds, test, recipe: dict, args, seed: int, device, fraction: float) -> dict:
    cfg = InfoBatchConfig(**recipe, prune_ratio=args.prune_ratio, delta=args.delta, augment=args.augment)
    ctx = RunContext(seed=seed, device=device, model=args.model, model_kwargs=model_kwargs(args.model_arg), test=test)
    info = InfoBatchSelector(cfg).select(ds, fraction, ctx).info
    return {"test_accuracy": info["test_accuracy"], "train_seconds": info["train_seconds"],
            "steps": int(info["steps"]), "image_passes": int(info["image_passes"] + info["forward_only_passes"]),
            "epochs": int(info["epochs"]), "epoch_kept": [int(k) for k in info["epoch_kept"]],
            "saved_fraction": info["saved_fraction"]}


def run_crest(ds, test, recipe: dict, args, seed: int, device, fraction: float) -> dict:
    fast = {"consistent_check": True, "check_subsets": 1} if args.crest_fast else {}
    cfg = CrestConfig(**recipe, augment=args.augment, drop_interval=args.drop_interval, **fast)
    ctx = RunContext(seed=seed, device=device, model=args.model, model_kwargs=model_kwargs(args.model_arg), test=test)
    sel = CrestSelector(cfg).select(ds, fraction, ctx)
    info = sel.info
    return {"test_accuracy": info["test_accuracy"], "train_seconds": info["train_seconds"],
            "steps": int(info["steps"]), "image_passes": int(info["steps"]) * cfg.batch_size,  # batches of B
            "selection_seconds": info["selection_seconds"], "selections": int(info["selections"]),
            "distinct_examples": len(sel.indices),
            # per epoch: the check interval, the number of coresets P, the pool size; κ per selection
            "curves": {k: [float(v) for v in info[k]] for k in ("check_interval", "num_coresets", "pool_size",
                                                                 "kappa") if k in info}}


@dataclass
class Group:
    """One dataset:seed group: the data, recipe and device every arm of it trains with, and InfoBatch's
    per-epoch kept counts once known (``random-ib`` trains on them)."""

    ds: object
    test: object
    recipe: dict
    args: object
    seed: int
    device: torch.device
    ib_kept: list[int] | None = None

    def random_epochs(self, sizes: list[int], loss_scale: float = 1.0) -> dict:
        return train_baseline(self.ds, self.test, self.recipe, self.args, self.seed, self.device, sizes, loss_scale)

    def infobatch(self, fraction: float) -> dict:
        return run_infobatch(self.ds, self.test, self.recipe, self.args, self.seed, self.device, fraction)

    def kept(self) -> list[int]:
        if self.ib_kept is None:
            self.ib_kept = self.infobatch(1.0)["epoch_kept"]
        return self.ib_kept


def arm_infobatch(g: Group, f: float | None) -> dict:
    res = g.infobatch(1.0 if f is None else f)
    if f is None:
        g.ib_kept = res["epoch_kept"]
    return res


# arm → what it trains (group, fraction or None); the first three once per group, the others per fraction
ARMS = {
    "full": lambda g, f: g.random_epochs([len(g.ds)] * g.args.epochs),
    "infobatch": arm_infobatch,
    "random-ib": lambda g, f: g.random_epochs(g.kept()),
    "random": lambda g, f: g.random_epochs([math.floor(len(g.ds) * f)] * g.args.epochs),
    "random-2x": lambda g, f: g.random_epochs([math.floor(len(g.ds) * f)] * g.args.epochs, loss_scale=2.0),
    "crest": lambda g, f: run_crest(g.ds, g.test, g.recipe, g.args, g.seed, g.device, f),
    "infobatch-f": arm_infobatch,
}
WHOLE_ARMS = ("full", "infobatch", "random-ib")


def parse_args(argv=None):
    ap = utils.parser(__doc__, threads=0, device="auto", json="", data=str(utils.DATA))
    ap.add_argument("--plan", default="mnist:0,cifar10:0,mnist:1,cifar10:1,mnist:2,cifar10:2",
                    help="dataset:seed groups, run in this order (dataset: a folder under --data, mnist-mini or "
                         "a source spec)")
    ap.add_argument("--model", default="convnet", help="a registered model (convnet, resnet18, lenet, …)")
    ap.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="model option, e.g. norm=batchnorm width=64 (repeatable)")
    ap.add_argument("--augment", default="auto", choices=["none", "auto", "crop_flip", "crop"],
                    help="training-batch augmentation of every arm (auto: crop, plus flip on colour images)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.0, help="SGD momentum of every arm (CREST's default 0)")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup-epochs", type=int, default=0)
    ap.add_argument("--lr-milestones", default="6,9", help="decay epochs (after the warm-up), comma-separated")
    ap.add_argument("--lr-gamma", type=float, default=0.1)
    ap.add_argument("--prune-ratio", type=float, default=0.5, help="InfoBatch's r")
    ap.add_argument("--delta", type=float, default=0.875, help="InfoBatch's δ")
    ap.add_argument("--fractions", default="0.1,0.2", help="fractions of the random/crest/infobatch-f arms")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms of {', '.join(ARMS)}")
    ap.add_argument("--crest-fast", action="store_true", help="CREST with consistent_check and check_subsets=1")
    ap.add_argument("--drop-interval", type=int, default=1, help="CREST's drop_interval (scaled to short runs)")
    ap.add_argument("--table-only", action="store_true", help="re-print the table of the --json file and exit")
    ap.add_argument("--infobatch-kept", default="", metavar="FILE",
                    help="random-ib: take InfoBatch's per-epoch counts from the infobatch rows (same dataset, seed, "
                         "recipe, r and δ) of this JSON-lines file instead of running InfoBatch again")
    args = ap.parse_args(argv)
    args.arm_list = utils.comma_list(args.arms)
    if set(args.arm_list) - set(ARMS):
        ap.error(f"unknown --arms {sorted(set(args.arm_list) - set(ARMS))}; choose from {', '.join(ARMS)}")
    args.recipe = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                       lr_milestones=args.lr_milestones, lr_gamma=args.lr_gamma)
    args.earlier = {}
    if args.infobatch_kept and not args.table_only:  # refused before any dataset loads
        if not Path(args.infobatch_kept).is_file():
            ap.error(f"--infobatch-kept {args.infobatch_kept}: no such file; give the --json file of an earlier run")
        args.earlier = earlier_kept(args.infobatch_kept, args.recipe, args)
        missing = [f"{name} seed {seed}" for name, seed in utils.plan(args.plan) if (name, seed) not in args.earlier]
        if "random-ib" in args.arm_list and missing:
            ap.error(f"--infobatch-kept {args.infobatch_kept} has no infobatch row for {', '.join(missing)} with "
                     f"this recipe, r and δ")
    return args


def run(args) -> list[dict]:
    if args.table_only:
        if not (args.json and Path(args.json).exists()):
            raise SystemExit("--table-only needs --json FILE written by an earlier run")
        summarize(utils.read_rows(args.json))
        return []
    utils.set_threads(args.threads)
    device = utils.device(args.device)
    fractions = [float(f) for f in utils.comma_list(args.fractions)]
    utils.print_header(device=str(device), model=args.model, model_kwargs=model_kwargs(args.model_arg),
                       augment=args.augment, recipe=args.recipe, prune_ratio=args.prune_ratio, delta=args.delta)
    rows, began = utils.RowWriter(args.json), time.perf_counter()
    for name, seed in utils.plan(args.plan):
        src = utils.load(utils.dataset_spec(name, args.data))
        group = Group(src.train, src.test, args.recipe, args, seed, device, args.earlier.get((name, seed)))
        runs = [(a, None) for a in WHOLE_ARMS if a in args.arm_list]
        runs += [(a, f) for f in fractions for a in ARMS if a not in WHOLE_ARMS and a in args.arm_list]
        for arm, f in runs:
            res = ARMS[arm](group, f)
            label = {"infobatch-f": "infobatch"}.get(arm, arm)
            row = {"dataset": name, "seed": seed, "run": label if f is None else f"{label}@{f:g}", **res,
                   "model": args.model, "model_kwargs": model_kwargs(args.model_arg), "augment": args.augment,
                   "recipe": args.recipe, **({"prune_ratio": args.prune_ratio, "delta": args.delta}
                                             if label in ("infobatch", "random-ib") else {}),
                   "elapsed": round(time.perf_counter() - began, 1)}
            print(json.dumps({k: v for k, v in row.items() if k not in ("recipe", "epoch_kept", "curves")}), flush=True)
            rows.write(row)
    summarize(rows.rows)
    return rows.rows


def earlier_kept(path: str, recipe: dict, args) -> dict[tuple[str, int], list[int]]:
    """(dataset, seed) → InfoBatch's per-epoch kept counts from the infobatch rows of an earlier run's JSON
    lines with the same recipe, model, augmentation, r and δ (their ``epoch_kept``)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line) if line.strip() else {}
        if (r.get("run") == "infobatch" and r.get("recipe") == recipe and r.get("model") == args.model
                and r.get("model_kwargs") == model_kwargs(args.model_arg) and r.get("augment") == args.augment
                and r.get("prune_ratio", args.prune_ratio) == args.prune_ratio
                and r.get("delta", args.delta) == args.delta and r.get("epoch_kept")):
            out[(r["dataset"], r["seed"])] = r["epoch_kept"]
    return out


def summarize(rows: list[dict]) -> None:
    """Markdown table: mean ± std over seeds; Δ and speed-up against ``full`` of the same seed."""
    print("\n| dataset | run | SGD steps | image passes | test acc. (%) | Δ vs full | train s | speed-up vs full "
          "| seeds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["dataset"] for r in rows):
        full = {r["seed"]: r for r in rows if r["dataset"] == name and r["run"] == "full"}
        for run in dict.fromkeys(r["run"] for r in rows if r["dataset"] == name):
            rs = [r for r in rows if r["dataset"] == name and r["run"] == run]
            acc = [100 * r["test_accuracy"] for r in rs]
            sd = statistics.pstdev(acc) if len(acc) > 1 else 0.0
            with_full = [r for r in rs if r["seed"] in full]
            delta = spd = "–"
            if with_full:
                gain = [100 * (r["test_accuracy"] - full[r["seed"]]["test_accuracy"]) for r in with_full]
                speed = [full[r["seed"]]["train_seconds"] / r["train_seconds"] for r in with_full]
                delta, spd = f"{statistics.mean(gain):+.2f}", f"{statistics.mean(speed):.2f}×"
            print(f"| {name} | {run} | {statistics.mean(r['steps'] for r in rs):.0f} | "
                  f"{statistics.mean(r['image_passes'] for r in rs):.0f} | {statistics.mean(acc):.2f} ± {sd:.2f} | "
                  f"{delta} | {statistics.mean(r['train_seconds'] for r in rs):.1f} | {spd} | {len(rs)} |")


if __name__ == "__main__":
    run(parse_args())
