"""Distillation benchmark: every registered condenser against random real images and herding at the same ipc.

For each ``DATASET:IPC`` setting, each method makes ipc images per class from the training split of
``parquet:../shared/datasets/DATASET``, and the set is evaluated with :func:`smallset.train.evaluate`
(``--eval-runs`` fresh networks, test accuracy on the full test split). Rows are printed as they finish
and appended to ``--json`` (one JSON object per line) so a partial run keeps its results; a Markdown
table is printed at the end.

    flock /tmp/smallset-bench.lock .venv/bin/python benchmarks/bench_distill.py \
        --settings mnist:1,cifar10:1 --methods random,herding,dm --iterations dm=300 \
        --set dm.batch_real=64 --json /tmp/bench_distill.jsonl

Baselines: ``random`` = ipc random real images per class (seeded); ``herding`` = ``prune.SELECTORS
["herding"]`` run class by class (exactly ipc per class) on features of ``--model`` (``--set
herding.feature_epochs=N`` trains the feature model N epochs first). Condensers learn with ``--model``
(``RunContext.model``), their paper defaults for the ipc (``config_for_ipc``), ``--iterations`` and
``--set method.field=value`` overrides.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from smallset.context import RunContext  # noqa: E402
from smallset.data import load_source  # noqa: E402
from smallset.train import evaluate, get_protocol  # noqa: E402


def parse_kv(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def convert(config_cls, name: str, value: str):
    hints = typing.get_type_hints(config_cls)
    if name not in hints:
        raise SystemExit(f"{config_cls.__name__} has no field {name!r}")
    t = hints[name]
    if t is bool:
        return value.lower() in ("1", "true", "yes")
    if typing.get_origin(t) is typing.Literal:
        return value
    return t(value)


def class_balanced_random(ds, ipc: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([idx[torch.randperm(len(idx), generator=g)[:ipc]] for idx in ds.class_indices()])


def herding_per_class(ds, ipc: int, ctx: RunContext, overrides: dict) -> tuple[torch.Tensor, dict]:
    from smallset.prune import SELECTORS

    cls = SELECTORS.get("herding")
    cfg = cls.config_cls()
    for k, v in overrides.items():
        setattr(cfg, k, convert(cls.config_cls, k, v))
    sel = cls(cfg)
    feats = sel.prepare(ds, ctx)  # one feature model for the whole set
    keep = []
    for idx in ds.class_indices():
        sub = ds.subset(idx)
        s = sel.select(sub, ipc / len(idx), ctx, prepared=feats[idx])
        keep.append(idx[s.indices])
    return torch.cat(keep), dataclasses.asdict(cfg)


START = time.perf_counter()


def run_condenser(cond, ds, ipc: int, ctx: RunContext, cap: float, stop_after: int = 0):
    """``cond.condense`` — or the same steps (seed, setup, step 0, 1, …, result) stopped early: after
    ``stop_after`` iterations, or after the first iteration that ends past ``cap`` seconds, with the base
    loop's info keys. The config keeps its nominal ``iterations`` (schedules keyed to it are unchanged),
    so ``--stop-after method=N`` reproduces a time-capped run exactly."""
    if stop_after > 0:
        cap = 0.0
    elif cap <= 0:
        return cond.condense(ds, ipc, ctx)
    from smallset.distill.base import check_ipc

    ipc = check_ipc(ipc, ds)
    torch.manual_seed(ctx.seed)
    cond.setup(ds, ipc, ctx)
    losses, t0 = [], time.perf_counter()
    for it in range(cond.iterations()):
        losses.append(float(cond.step(it)))
        if (stop_after and len(losses) >= stop_after) or (cap > 0 and time.perf_counter() - t0 > cap):
            break
    seconds = time.perf_counter() - t0
    out = cond.result()
    out.info.setdefault("loss_curve", losses)
    out.info.update(iterations=len(losses), seconds=seconds, iterations_per_second=len(losses) / seconds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="mnist:1,mnist:10,cifar10:1", help="DATASET:IPC,… (datasets in ../shared/datasets)")
    ap.add_argument("--methods", default="", help="comma list; default: random, herding (if registered) and every condenser")
    ap.add_argument("--model", default="convnet-s", help="network the condensers learn with / herding embeds with")
    ap.add_argument("--model-kwargs", default="", help="k=v,… integer model options, e.g. width=32")
    ap.add_argument("--eval-model", default="convnet-s")
    ap.add_argument("--eval-protocol", default="quick")
    ap.add_argument("--eval-epochs", type=int, default=None)
    ap.add_argument("--eval-augment", default="dsa")
    ap.add_argument("--eval-runs", type=int, default=3)
    ap.add_argument("--iterations", default="", help="method=N,… outer iterations per condenser")
    ap.add_argument("--set", action="append", default=[], help="method.field=value (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--time-per-method", type=float, default=0.0,
                    help="seconds: stop a condenser after the first iteration that ends past this (0: no cap); "
                         "the iterations done are recorded, rerun with --iterations method=N to reproduce")
    ap.add_argument("--stop-after", default="", help="method=N,…: stop that condenser after N iterations "
                    "(its config keeps the nominal --iterations); overrides --time-per-method")
    ap.add_argument("--budget", type=float, default=0.0, help="seconds: skip the remaining rows after this (0: none)")
    ap.add_argument("--test-limit", type=int, default=0,
                    help="evaluate on this many test images (class-balanced, seeded); 0: the full test split")
    ap.add_argument("--json", default="/tmp/bench_distill.jsonl")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from smallset import distill
    from smallset.prune import SELECTORS

    methods = [m for m in args.methods.split(",") if m] or (
        ["random"] + (["herding"] if "herding" in SELECTORS else []) + distill.CONDENSERS.names())
    iterations = {k: int(v) for k, v in parse_kv(args.iterations).items()}
    stop_after = {k: int(v) for k, v in parse_kv(args.stop_after).items()}
    sets: dict[str, dict[str, str]] = {}
    for s in args.set:
        key, v = s.split("=", 1)
        m, f = key.split(".", 1)
        sets.setdefault(m, {})[f] = v
    model_kwargs = {k: int(v) for k, v in parse_kv(args.model_kwargs).items()}
    protocol = get_protocol(args.eval_protocol, augment=args.eval_augment, epochs=args.eval_epochs)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  torch {torch.__version__}  threads {torch.get_num_threads()}"
          f"  eval {protocol}", flush=True)

    rows, cache = [], {}
    for setting in args.settings.split(","):
        name, ipc = setting.split(":")
        ipc = int(ipc)
        if name not in cache:
            t0 = time.perf_counter()
            cache.clear()
            cache[name] = load_source(f"parquet:{os.path.join(args.data, name)}")
            print(f"# loaded {name} in {time.perf_counter() - t0:.1f}s", flush=True)
        src = cache[name]
        ds, test = src.train, src.test
        if args.test_limit and args.test_limit < len(test):
            test = test.subset(class_balanced_random(test, args.test_limit // test.num_classes, args.seed + 1))
        for method in methods:
            if args.budget and time.perf_counter() - START > args.budget:
                print(f"{name} ipc={ipc} {method:8s} SKIPPED (benchmark budget of {args.budget:.0f}s spent)", flush=True)
                continue
            ctx = RunContext(seed=args.seed, model=args.model, model_kwargs=dict(model_kwargs))
            row = {"dataset": name, "ipc": ipc, "method": method, "model": args.model, "model_kwargs": model_kwargs,
                   "eval_model": args.eval_model, "eval_protocol": protocol.to_dict()}
            t0 = time.perf_counter()
            if method == "random":
                train = ds.subset(class_balanced_random(ds, ipc, args.seed))
                row["config"] = {}
            elif method == "herding":
                idx, cfg = herding_per_class(ds, ipc, ctx, sets.get("herding", {}))
                train = ds.subset(idx)
                row["config"] = cfg
            else:
                from smallset.distill.base import to_dataset

                cls = distill.CONDENSERS.get(method)
                over = {k: convert(cls.config_cls, k, v) for k, v in sets.get(method, {}).items()}
                if method in iterations:
                    over["iterations"] = iterations[method]
                cond = cls(cls.config_for_ipc(ipc, **over))
                row["config"] = cond.params()
                syn = run_condenser(cond, ds, ipc, ctx, args.time_per_method, stop_after.get(method, 0))
                train = to_dataset(syn, ds)
                row["iterations"] = syn.info.get("iterations")
                row["iterations_per_second"] = syn.info.get("iterations_per_second")
                curve = syn.info.get("loss_curve") or []
                if curve:
                    k = max(1, len(curve) // 10)
                    row["loss_first"] = sum(curve[:k]) / k
                    row["loss_last"] = sum(curve[-k:]) / k
            row["make_seconds"] = time.perf_counter() - t0
            counts = torch.bincount(train.labels, minlength=ds.num_classes).tolist()
            assert counts == [ipc] * ds.num_classes, counts
            t1 = time.perf_counter()
            res = evaluate(train, test, model_name=args.eval_model, protocol=protocol, runs=args.eval_runs,
                           seed=args.seed)
            row.update(eval_seconds=time.perf_counter() - t1, accuracies=res.accuracies, acc_mean=res.mean,
                       acc_std=res.std, eval_epochs=res.epochs)
            rows.append(row)
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} ipc={ipc} {method:8s} acc {100 * res.mean:5.2f} ± {100 * res.std:4.2f}  "
                  f"make {row['make_seconds']:7.1f}s  it/s {row.get('iterations_per_second', float('nan')):.3g}  "
                  f"its {row.get('iterations', '-')}  eval {row['eval_seconds']:.1f}s", flush=True)

    print("\n| dataset | ipc | method | iterations | test acc % (mean ± std over the eval nets) | make s | it/s | eval s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        its = f"{r['iterations']} of {r['config'].get('iterations')}" if r.get("iterations") else "–"
        ips = f"{r['iterations_per_second']:.2f}" if r.get("iterations_per_second") else "–"
        print(f"| {r['dataset']} | {r['ipc']} | {r['method']} | {its} | {100 * r['acc_mean']:.2f} ± "
              f"{100 * r['acc_std']:.2f} | {r['make_seconds']:.1f} | {ips} | {r['eval_seconds']:.1f} |")


if __name__ == "__main__":
    main()
