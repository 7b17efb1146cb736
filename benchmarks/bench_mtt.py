"""MTT against DM and DC at the same condensation wall time, with the expert cost reported separately.

For each ``DATASET:IPC`` setting (DATASET: a directory under ``--data``, e.g. ``mnist`` or ``cifar10``, or a
source spec such as ``builtin:mnist-mini``):

1. experts: ``--experts`` trajectories of ``--expert-epochs`` epochs each are trained with ``--model`` (or
   found in the expert cache, ``$SMALLSET_CACHE``; they are shared by every ipc of a dataset). Their cost is a
   row of its own (``method = experts``): seconds of this run, the cached seconds per expert from the
   manifest, peak RSS.
2. MTT condenses for ``--time`` seconds (its loop stops after the first iteration that ends past it;
   ``--time 0``: its full ``iterations``), with the paper's CIFAR-10 row for the ipc (``MTTConfig.for_ipc``)
   except that ``max_start_epoch`` is lowered to what the shorter experts allow (``train_epochs −
   expert_epochs + 1``) unless set; ``--set mtt.field=value`` overrides.
3. DM and DC (``--methods``) then condense for the wall time MTT actually took, with their paper defaults for
   the ipc. ``random`` (ipc random real images per class) is the zero-cost reference.
4. Every set is evaluated with ONE shared recipe: :func:`smallset.train.evaluate` with the Protocol of
   ``--eval-protocol``/``--eval-augment``/``--eval-epochs``, ``--eval-runs`` networks of ``--eval-model``.
   ``--mtt-learned-lr`` adds a row ``mtt@alpha``: the MTT set trained with its learned step size as lr
   (the MTT paper's evaluation), everything else equal.

Peak RSS per arm: the process's peak resident set (``resource.getrusage``, ru_maxrss) while the arm ran,
after returning freed heap to the OS (``malloc_trim``) and resetting the peak through ``/proc/self/clear_refs``
(Linux; elsewhere the process-wide peak so far), so it includes the loaded dataset; ``rss_start_mib`` is
the resident set when the arm started. Rows are appended to ``--json`` (JSON lines) as they finish; a Markdown
table is printed at the end.

Full run (a quiet machine; the experts first, once per dataset, docs/methods/mtt.md gives their cost; then
4 settings × 3 arms × --time):

    SMALLSET_CACHE=~/.cache/smallset flock /tmp/smallset-bench.lock .venv/bin/python benchmarks/bench_mtt.py \\
        --settings mnist:1,mnist:10,cifar10:1,cifar10:10 --model convnet-s --experts 5 --expert-epochs 15 \\
        --time 600 --methods mtt,dm,dc,random --eval-protocol quick --eval-augment dsa --eval-epochs 300 \\
        --eval-runs 3 --mtt-learned-lr --json benchmarks/results/mtt.jsonl

Smoke test (seconds): ``--settings builtin:mnist-mini:1,builtin:mnist-mini:10 --experts 2 --expert-epochs 2
--time 3 --eval-epochs 3 --eval-runs 2 --test-limit 200``.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch
import utils
from bench_distill import class_balanced_random, condense_capped, limited_test

from smallset.context import RunContext
from smallset.train import evaluate, get_protocol


def make_condenser(method: str, ipc: int, args):
    """The condenser's paper defaults for the ipc with ``--set``; MTT with ``--experts``/``--expert-epochs``
    and ``max_start_epoch`` lowered to what the shorter experts allow unless set."""
    from smallset.distill import CONDENSERS

    cls = CONDENSERS.get(method)
    over = dict(args.sets.get(method, {}))
    if method != "mtt":
        return cls(cls.config_for_ipc(ipc, **over))
    over = {"num_experts": args.experts, "train_epochs": args.expert_epochs, **over}
    if "max_start_epoch" not in over:  # lowered before the config is checked against the experts' length
        paper = cls.default_config(ipc)
        latest = int(over["train_epochs"]) - int(over.get("expert_epochs", paper.expert_epochs)) + 1
        over["max_start_epoch"] = max(1, min(paper.max_start_epoch, latest))
    return cls(cls.config_for_ipc(ipc, **over))


def prepare_experts(cond, ds, ctx: RunContext, args) -> tuple:
    """MTT's expert trajectories (trained, or found in the cache): (buffer, the ``experts`` row's fields)."""
    utils.reset_peak()
    t0 = time.perf_counter()
    buffer = cond.prepare(ds, ctx).value
    expert_s = time.perf_counter() - t0
    man = buffer.manifest
    per_expert = man.get("seconds_per_expert", [])[: args.experts]
    return buffer, {"method": "experts", "experts": args.experts, "epochs": man.get("epochs"),
                    "seconds_this_run": expert_s, "seconds_cached_total": sum(per_expert),
                    "seconds_per_expert": per_expert,
                    "seconds_per_epoch": sum(per_expert) / max(1, len(per_expert) * man.get("epochs", 1)),
                    "final_train_accuracy": man.get("final_train_accuracy", [])[: args.experts],
                    "peak_rss_mib": utils.peak_rss_mib(), "parameter_count": man.get("parameter_count"),
                    "path": buffer.path}


def condense_arm(cond, ds, ipc: int, ctx: RunContext, seconds: float, row: dict):
    """Condense for ``seconds`` (0: all iterations) after a peak reset; the set, its fields added to ``row``."""
    from smallset.distill.base import to_dataset

    row["config"] = cond.params()
    utils.reset_peak()
    row["rss_start_mib"] = utils.rss_mib()
    syn, loop_s, setup_s = condense_capped(cond, ds, ipc, ctx, cap=seconds)
    curve = syn.info.get("loss_curve") or []
    k = max(1, len(curve) // 10)
    row.update(condense_seconds=loop_s, setup_seconds=setup_s, iterations=syn.info["iterations"],
               iterations_per_second=syn.info["iterations_per_second"],
               loss_first=sum(curve[:k]) / k if curve else None, loss_last=sum(curve[-k:]) / k if curve else None)
    if "learned_lr" in syn.info:
        row.update(learned_lr=syn.info["learned_lr"], seconds_per_iteration=loop_s / len(curve))
    return to_dataset(syn, ds)


def random_arm(ds, ipc: int, args, row: dict):
    utils.reset_peak()
    row["rss_start_mib"] = utils.rss_mib()
    t0 = time.perf_counter()
    train = ds.subset(class_balanced_random(ds, ipc, args.seed))
    row.update(condense_seconds=time.perf_counter() - t0, iterations=0, config={})
    return train


def parse_args(argv=None):
    ap = utils.parser(__doc__, threads=0, seed=0, device="cpu", json="/tmp/bench_mtt.jsonl", data=str(utils.DATA))
    ap.add_argument("--settings", default="mnist:1,mnist:10,cifar10:1,cifar10:10", help="DATASET:IPC,…")
    ap.add_argument("--methods", default="mtt,dm,dc,random", help="mtt first; the others get MTT's wall time")
    ap.add_argument("--model", default="convnet-s", help="the network of the experts, MTT's student and DM/DC")
    ap.add_argument("--experts", type=int, default=5, help="expert trajectories (MTT num_experts)")
    ap.add_argument("--expert-epochs", type=int, default=15, help="epochs per expert (MTT train_epochs)")
    ap.add_argument("--time", type=float, default=600.0, help="condensation seconds per arm (0: MTT's iterations)")
    ap.add_argument("--set", action="append", default=[], help="method.field=value (repeatable)")
    ap.add_argument("--eval-model", default="convnet-s")
    ap.add_argument("--eval-protocol", default="quick")
    ap.add_argument("--eval-augment", default="dsa")
    ap.add_argument("--eval-epochs", type=int, default=300)
    ap.add_argument("--eval-runs", type=int, default=3)
    ap.add_argument("--mtt-learned-lr", action="store_true", help="also evaluate MTT with its learned lr")
    ap.add_argument("--test-limit", type=int, default=0, help="evaluate on this many test images (0: all)")
    args = ap.parse_args(argv)
    args.sets = utils.method_settings(args.set)
    methods = utils.comma_list(args.methods)
    args.method_list = ["mtt"] * ("mtt" in methods) + [m for m in methods if m != "mtt"]
    return args


def run(args) -> list[dict]:
    utils.set_threads(args.threads)
    protocol = get_protocol(args.eval_protocol, augment=args.eval_augment, epochs=args.eval_epochs)
    device = utils.device(args.device)
    utils.print_header(model=args.model, experts=f"{args.experts}×{args.expert_epochs} epochs", time_per_arm=args.time,
                       eval=str(protocol), peak_rss_reset=utils.reset_peak())
    rows = utils.RowWriter(args.json)
    for name, ipc in utils.plan(args.settings):
        src = utils.load(utils.dataset_spec(name, args.data), keep_others=False)
        ds, test = src.train, limited_test(src.test, args.test_limit, args.seed)
        ctx = RunContext(seed=args.seed, model=args.model, device=device)
        base = {"dataset": name, "ipc": ipc, "model": args.model, "eval_model": args.eval_model,
                "eval_protocol": protocol.to_dict(), "seed": args.seed, "time_target_s": args.time}
        budget_s = args.time
        for method in args.method_list:
            row = dict(base, method=method)
            if method == "random":
                train = random_arm(ds, ipc, args, row)
            else:
                cond = make_condenser(method, ipc, args)
                if method == "mtt":
                    buffer, experts = prepare_experts(cond, ds, ctx, args)
                    rows.write(dict(base, **experts))
                    print(f"{name} ipc={ipc} experts   {args.experts}×{experts['epochs']} epochs: "
                          f"{experts['seconds_cached_total']:.1f}s in all "
                          f"(this run {experts['seconds_this_run']:.1f}s), "
                          f"peak RSS {experts['peak_rss_mib']:.0f} MiB", flush=True)
                    cond.use_experts(buffer)
                    row["expert_key"] = buffer.key_hash[:16]
                train = condense_arm(cond, ds, ipc, ctx, budget_s, row)
                if method == "mtt" and budget_s <= 0:
                    budget_s = row["condense_seconds"]  # the baselines get the time MTT's full run took
            row["peak_rss_mib"] = utils.peak_rss_mib()
            assert torch.bincount(train.labels, minlength=ds.num_classes).tolist() == [ipc] * ds.num_classes
            arms = [(method, protocol)]
            if method == "mtt" and args.mtt_learned_lr and row["learned_lr"] > 0:
                arms.append(("mtt@alpha", replace(protocol, lr=row["learned_lr"])))
            for arm, prot in arms:
                t1 = time.perf_counter()
                res = evaluate(train, test, model_name=args.eval_model, protocol=prot, runs=args.eval_runs,
                               seed=args.seed, device=device)
                out = rows.write(dict(row, method=arm, eval_lr=prot.lr, eval_seconds=time.perf_counter() - t1,
                                      accuracies=res.accuracies, acc_mean=res.mean, acc_std=res.std,
                                      eval_epochs=res.epochs))
                print(f"{name} ipc={ipc} {arm:9s} acc {100 * res.mean:5.2f} ± {100 * res.std:4.2f}  "
                      f"condense {out['condense_seconds']:7.1f}s  its {out.get('iterations')}  "
                      f"peak RSS {out['peak_rss_mib']:.0f} MiB  eval {out['eval_seconds']:.1f}s", flush=True)
    table(rows.rows)
    return rows.rows


def table(rows: list[dict]) -> None:
    print("\n| dataset | ipc | method | iterations | condense s | s/it | peak RSS MiB (at start) | "
          "test acc % (mean ± std) | notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["method"] == "experts":
            print(f"| {r['dataset']} | {r['ipc']} | experts | {r['experts']}×{r['epochs']} epochs | "
                  f"{r['seconds_cached_total']:.1f} | {r['seconds_per_epoch']:.2f} s/epoch | "
                  f"{r['peak_rss_mib']:.0f} | – | "
                  f"expert cost, not in the condensation time (this run: {r['seconds_this_run']:.1f} s) |")
            continue
        its = r.get("iterations") or 0
        spi = f"{r['condense_seconds'] / its:.3f}" if its else "–"
        note = f"α = {r['learned_lr']:.4g}, eval lr {r['eval_lr']:.4g}" if "learned_lr" in r else ""
        print(f"| {r['dataset']} | {r['ipc']} | {r['method']} | {its} | {r['condense_seconds']:.1f} | {spi} | "
              f"{r['peak_rss_mib']:.0f} ({r.get('rss_start_mib', float('nan')):.0f}) | "
              f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} | {note} |")


if __name__ == "__main__":
    run(parse_args())
