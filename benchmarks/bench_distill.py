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

import time

import torch
import utils

from smallset.context import RunContext
from smallset.train import evaluate, get_protocol


def parse_kv(text: str) -> dict[str, str]:
    """``"dm=300,dc=10"`` → ``{"dm": "300", "dc": "10"}``."""
    return dict((k.strip(), v.strip()) for k, v in (part.split("=", 1) for part in utils.comma_list(text)))


def class_balanced_random(ds, ipc: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([idx[torch.randperm(len(idx), generator=g)[:ipc]] for idx in ds.class_indices()])


def limited_test(test, limit: int, seed: int):
    """``limit`` test images (class-balanced, seeded with ``seed + 1``); the whole split for 0."""
    if limit and limit < len(test):
        return test.subset(class_balanced_random(test, limit // test.num_classes, seed + 1))
    return test


def condense_capped(cond, ds, ipc: int, ctx: RunContext, cap: float = 0.0, stop_after: int = 0):
    """``cond``'s setup, then its steps until ``stop_after`` iterations or the first one that ends past ``cap``
    seconds (neither: all its iterations), then its result, with the base loop's info keys. The config keeps
    its nominal ``iterations`` (schedules keyed to it are unchanged), so ``--stop-after method=N`` reproduces
    a time-capped run exactly. Returns (Synthetic, loop seconds, setup seconds)."""
    from smallset.distill.base import check_ipc

    ipc = check_ipc(ipc, ds)
    t0 = time.perf_counter()
    cond.setup(ds, ipc, ctx)
    setup_s = time.perf_counter() - t0
    losses, t0 = [], time.perf_counter()
    for it in range(cond.iterations()):
        losses.append(float(cond.step(it)))
        if (stop_after and len(losses) >= stop_after) or (cap > 0 and time.perf_counter() - t0 > cap):
            break
    loop_s = time.perf_counter() - t0
    out = cond.result()
    out.info.setdefault("loss_curve", losses)
    out.info.update(iterations=len(losses), seconds=loop_s, iterations_per_second=len(losses) / loop_s)
    return out, loop_s, setup_s


def make_random(ds, ipc: int, ctx: RunContext, args) -> tuple:
    return ds.subset(class_balanced_random(ds, ipc, args.seed)), {"config": {}}


def make_herding(ds, ipc: int, ctx: RunContext, args) -> tuple:
    """``prune.SELECTORS["herding"]`` class by class (exactly ipc per class), one feature model for the set."""
    from smallset.prune import SELECTORS

    sel = SELECTORS.get("herding")(SELECTORS.get("herding").make_config(args.sets.get("herding", {})))
    features = sel.prepare(ds, ctx).value
    keep = [idx[sel.select(ds.subset(idx), ipc / len(idx), ctx, prepared=features[idx]).indices]
            for idx in ds.class_indices()]
    return ds.subset(torch.cat(keep)), {"config": sel.params()}


def make_condensed(ds, ipc: int, ctx: RunContext, args, method: str) -> tuple:
    """A registered condenser at its paper defaults for the ipc, ``--iterations`` and ``--set``, stopped by
    ``--stop-after`` or ``--time-per-method`` (neither: ``condense`` itself)."""
    from smallset.distill import CONDENSERS
    from smallset.distill.base import to_dataset

    cls = CONDENSERS.get(method)
    over = dict(args.sets.get(method, {}))
    if method in args.iterations:
        over["iterations"] = args.iterations[method]
    cond = cls(cls.config_for_ipc(ipc, **over))
    stop_after = args.stop_after.get(method, 0)
    if stop_after or args.time_per_method > 0:
        torch.manual_seed(ctx.seed)
        syn = condense_capped(cond, ds, ipc, ctx, 0.0 if stop_after else args.time_per_method, stop_after)[0]
    else:
        syn = cond.condense(ds, ipc, ctx)
    extra = {"config": cond.params(), "iterations": syn.info.get("iterations"),
             "iterations_per_second": syn.info.get("iterations_per_second")}
    curve = syn.info.get("loss_curve") or []
    if curve:
        k = max(1, len(curve) // 10)
        extra.update(loss_first=sum(curve[:k]) / k, loss_last=sum(curve[-k:]) / k)
    return to_dataset(syn, ds), extra


BASELINES = {"random": make_random, "herding": make_herding}  # method → maker; any other name is a condenser


def parse_args(argv=None):
    ap = utils.parser(__doc__, threads=0, seed=0, json="/tmp/bench_distill.jsonl", data=str(utils.DATA))
    ap.add_argument("--settings", default="mnist:1,mnist:10,cifar10:1",
                    help="DATASET:IPC,… (DATASET: a folder under --data or a source spec)")
    ap.add_argument("--methods", default="",
                    help="comma list; default: random, herding (if registered) and every condenser")
    ap.add_argument("--model", default="convnet-s", help="network the condensers learn with / herding embeds with")
    ap.add_argument("--model-kwargs", default="", help="k=v,… integer model options, e.g. width=32")
    ap.add_argument("--eval-model", default="convnet-s")
    ap.add_argument("--eval-protocol", default="quick")
    ap.add_argument("--eval-epochs", type=int, default=None)
    ap.add_argument("--eval-augment", default="dsa")
    ap.add_argument("--eval-runs", type=int, default=3)
    ap.add_argument("--iterations", default="", help="method=N,… outer iterations per condenser")
    ap.add_argument("--set", action="append", default=[], help="method.field=value (repeatable)")
    ap.add_argument("--time-per-method", type=float, default=0.0,
                    help="seconds: stop a condenser after the first iteration that ends past this (0: no cap); "
                         "the iterations done are recorded, rerun with --iterations method=N to reproduce")
    ap.add_argument("--stop-after", default="", help="method=N,…: stop that condenser after N iterations "
                    "(its config keeps the nominal --iterations); overrides --time-per-method")
    ap.add_argument("--budget", type=float, default=0.0, help="seconds: skip the remaining rows after this (0: none)")
    ap.add_argument("--test-limit", type=int, default=0,
                    help="evaluate on this many test images (class-balanced, seeded); 0: the full test split")
    args = ap.parse_args(argv)
    args.iterations = {k: int(v) for k, v in parse_kv(args.iterations).items()}
    args.stop_after = {k: int(v) for k, v in parse_kv(args.stop_after).items()}
    args.model_kwargs = {k: int(v) for k, v in parse_kv(args.model_kwargs).items()}
    args.sets = utils.method_settings(args.set)
    return args


def run(args) -> list[dict]:
    from smallset import distill
    from smallset.prune import SELECTORS

    began = time.perf_counter()
    utils.set_threads(args.threads)
    methods = utils.comma_list(args.methods) or (
        ["random"] + (["herding"] if "herding" in SELECTORS else []) + distill.CONDENSERS.names())
    protocol = get_protocol(args.eval_protocol, augment=args.eval_augment, epochs=args.eval_epochs)
    utils.print_header(eval=str(protocol))
    rows = utils.RowWriter(args.json)
    for name, ipc in utils.plan(args.settings):
        src = utils.load(utils.dataset_spec(name, args.data), keep_others=False)
        ds, test = src.train, limited_test(src.test, args.test_limit, args.seed)
        for method in methods:
            if args.budget and time.perf_counter() - began > args.budget:
                print(f"{name} ipc={ipc} {method:8s} SKIPPED (benchmark budget of {args.budget:.0f}s spent)",
                      flush=True)
                continue
            ctx = RunContext(seed=args.seed, model=args.model, model_kwargs=dict(args.model_kwargs))
            t0 = time.perf_counter()
            maker = BASELINES.get(method)
            train, made = maker(ds, ipc, ctx, args) if maker else make_condensed(ds, ipc, ctx, args, method)
            make_s = time.perf_counter() - t0
            counts = torch.bincount(train.labels, minlength=ds.num_classes).tolist()
            assert counts == [ipc] * ds.num_classes, counts
            t1 = time.perf_counter()
            res = evaluate(train, test, model_name=args.eval_model, protocol=protocol, runs=args.eval_runs,
                           seed=args.seed)
            row = rows.write({"dataset": name, "ipc": ipc, "method": method, "model": args.model,
                              "model_kwargs": args.model_kwargs, "eval_model": args.eval_model,
                              "eval_protocol": protocol.to_dict(), **made, "make_seconds": make_s,
                              "eval_seconds": time.perf_counter() - t1, "accuracies": res.accuracies,
                              "acc_mean": res.mean, "acc_std": res.std, "eval_epochs": res.epochs})
            print(f"{name} ipc={ipc} {method:8s} acc {100 * res.mean:5.2f} ± {100 * res.std:4.2f}  "
                  f"make {make_s:7.1f}s  it/s {row.get('iterations_per_second') or float('nan'):.3g}  "
                  f"its {row.get('iterations', '-')}  eval {row['eval_seconds']:.1f}s", flush=True)
    print(table(rows.rows))
    return rows.rows


def table(rows: list[dict]) -> str:
    lines = ["\n| dataset | ipc | method | iterations | test acc % (mean ± std over the eval nets) | make s | it/s "
             "| eval s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        its = f"{r['iterations']} of {r['config'].get('iterations')}" if r.get("iterations") else "–"
        ips = f"{r['iterations_per_second']:.2f}" if r.get("iterations_per_second") else "–"
        lines.append(f"| {r['dataset']} | {r['ipc']} | {r['method']} | {its} | {100 * r['acc_mean']:.2f} ± "
                     f"{100 * r['acc_std']:.2f} | {r['make_seconds']:.1f} | {ips} | {r['eval_seconds']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    run(parse_args())
