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

Full run (a quiet machine; 30–40 min of experts per dataset on 2 cores, then 4 settings × 3 arms × --time):

    SMALLSET_CACHE=~/.cache/smallset flock /tmp/smallset-bench.lock .venv/bin/python benchmarks/bench_mtt.py \\
        --settings mnist:1,mnist:10,cifar10:1,cifar10:10 --model convnet-s --experts 5 --expert-epochs 15 \\
        --time 600 --methods mtt,dm,dc,random --eval-protocol quick --eval-augment dsa --eval-epochs 300 \\
        --eval-runs 3 --mtt-learned-lr --json benchmarks/results/mtt.jsonl

Smoke test (seconds): ``--settings builtin:mnist-mini:1,builtin:mnist-mini:10 --experts 2 --expert-epochs 2
--time 3 --eval-epochs 3 --eval-runs 2 --test-limit 200``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from smallset.context import RunContext  # noqa: E402
from smallset.data import load_source  # noqa: E402
from smallset.train import evaluate, get_protocol  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_distill import class_balanced_random, convert  # noqa: E402  (the distillation benchmark's helpers)


def peak_reset() -> bool:
    """Give freed heap memory back to the OS (glibc malloc_trim), then reset the process's peak RSS (Linux),
    so the next reading is this arm's; False where the reset is not possible."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def condense_for(cond, ds, ipc: int, ctx: RunContext, seconds: float):
    """``cond``'s setup then its steps until the first one that ends past ``seconds`` (0: all its
    iterations), then its result; the base loop's info keys. Returns (Synthetic, loop seconds, setup seconds)."""
    from smallset.distill.base import check_ipc

    ipc = check_ipc(ipc, ds)
    t0 = time.perf_counter()
    cond.setup(ds, ipc, ctx)
    setup_s = time.perf_counter() - t0
    losses, t0 = [], time.perf_counter()
    for it in range(cond.iterations()):
        losses.append(float(cond.step(it)))
        if seconds > 0 and time.perf_counter() - t0 > seconds:
            break
    loop_s = time.perf_counter() - t0
    out = cond.result()
    out.info.setdefault("loss_curve", losses)
    out.info.update(iterations=len(losses), seconds=loop_s, iterations_per_second=len(losses) / loop_s)
    return out, loop_s, setup_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="/tmp/bench_mtt.jsonl")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from smallset.distill import CONDENSERS
    from smallset.distill.base import to_dataset

    methods = [m for m in args.methods.split(",") if m]
    if "mtt" in methods:
        methods = ["mtt"] + [m for m in methods if m != "mtt"]
    sets: dict[str, dict[str, str]] = {}
    for s in args.set:
        key, v = s.split("=", 1)
        m, f = key.split(".", 1)
        sets.setdefault(m, {})[f] = v
    protocol = get_protocol(args.eval_protocol, augment=args.eval_augment, epochs=args.eval_epochs)
    device = torch.device(args.device)
    can_reset = peak_reset()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  torch {torch.__version__}  threads {torch.get_num_threads()}"
          f"  model {args.model}  experts {args.experts}×{args.expert_epochs} epochs  time/arm {args.time:g}s"
          f"  eval {protocol}  peak-RSS reset: {'yes' if can_reset else 'no (process-wide peak)'}", flush=True)

    rows, loaded = [], {}

    def emit(row):
        rows.append(row)
        with open(args.json, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    for setting in args.settings.split(","):
        name, ipc = setting.rsplit(":", 1)
        ipc = int(ipc)
        spec = name if ":" in name else f"parquet:{os.path.join(args.data, name)}"
        if spec not in loaded:
            loaded.clear()
            t0 = time.perf_counter()
            loaded[spec] = load_source(spec)
            print(f"# loaded {spec} in {time.perf_counter() - t0:.1f}s", flush=True)
        src = loaded[spec]
        ds, test = src.train, src.test
        if args.test_limit and args.test_limit < len(test):
            test = test.subset(class_balanced_random(test, args.test_limit // test.num_classes, args.seed + 1))
        ctx = RunContext(seed=args.seed, model=args.model, device=device)
        base = {"dataset": name, "ipc": ipc, "model": args.model, "eval_model": args.eval_model,
                "eval_protocol": protocol.to_dict(), "seed": args.seed, "time_target_s": args.time}
        budget_s = args.time
        buffer = None
        for method in methods:
            row = dict(base, method=method)
            if method == "random":
                peak_reset()
                row["rss_start_mib"] = rss_mib()
                t0 = time.perf_counter()
                train = ds.subset(class_balanced_random(ds, ipc, args.seed))
                row.update(condense_seconds=time.perf_counter() - t0, iterations=0, config={})
            else:
                cls = CONDENSERS.get(method)
                over = {k: convert(cls.config_cls, k, v) for k, v in sets.get(method, {}).items()}
                if method == "mtt":
                    over.setdefault("num_experts", args.experts)
                    over.setdefault("train_epochs", args.expert_epochs)
                    cfg = cls.config_for_ipc(ipc, **over)
                    if "max_start_epoch" not in over:
                        cfg.max_start_epoch = max(1, min(cfg.max_start_epoch, cfg.train_epochs - cfg.expert_epochs + 1))
                    cond = cls(cfg)
                    peak_reset()
                    t0 = time.perf_counter()
                    buffer = cond.prepare(ds, ctx)
                    expert_s = time.perf_counter() - t0
                    man = buffer.manifest
                    per_expert = man.get("seconds_per_expert", [])[: args.experts]
                    emit(dict(base, method="experts", experts=args.experts, epochs=man.get("epochs"),
                              seconds_this_run=expert_s, seconds_cached_total=sum(per_expert),
                              seconds_per_expert=per_expert,
                              seconds_per_epoch=sum(per_expert) / max(1, len(per_expert) * man.get("epochs", 1)),
                              final_train_accuracy=man.get("final_train_accuracy", [])[: args.experts],
                              peak_rss_mib=peak_rss_mib(), parameter_count=man.get("parameter_count"),
                              path=buffer.path))
                    print(f"{name} ipc={ipc} experts   {args.experts}×{man.get('epochs')} epochs: "
                          f"{sum(per_expert):.1f}s in all (this run {expert_s:.1f}s), "
                          f"peak RSS {peak_rss_mib():.0f} MiB", flush=True)
                    cond.use_experts(buffer)
                else:
                    cond = cls(cls.config_for_ipc(ipc, **over))
                row["config"] = cond.params()
                peak_reset()
                rss0 = rss_mib()
                syn, loop_s, setup_s = condense_for(cond, ds, ipc, ctx, budget_s)
                if method == "mtt" and budget_s <= 0:
                    budget_s = loop_s  # the baselines get the time MTT's full run took
                train = to_dataset(syn, ds)
                curve = syn.info.get("loss_curve") or []
                k = max(1, len(curve) // 10)
                row.update(condense_seconds=loop_s, setup_seconds=setup_s, iterations=syn.info["iterations"],
                           iterations_per_second=syn.info["iterations_per_second"], rss_start_mib=rss0,
                           loss_first=sum(curve[:k]) / k if curve else None,
                           loss_last=sum(curve[-k:]) / k if curve else None)
                if method == "mtt":
                    row.update(learned_lr=syn.info["learned_lr"], seconds_per_iteration=loop_s / len(curve),
                               expert_key=buffer.key_hash[:16])
            row["peak_rss_mib"] = peak_rss_mib()
            assert torch.bincount(train.labels, minlength=ds.num_classes).tolist() == [ipc] * ds.num_classes
            arms = [(method, protocol)]
            if method == "mtt" and args.mtt_learned_lr and row["learned_lr"] > 0:
                arms.append(("mtt@alpha", replace(protocol, lr=row["learned_lr"])))
            for arm, prot in arms:
                t1 = time.perf_counter()
                res = evaluate(train, test, model_name=args.eval_model, protocol=prot, runs=args.eval_runs,
                               seed=args.seed, device=device)
                out = dict(row, method=arm, eval_lr=prot.lr, eval_seconds=time.perf_counter() - t1,
                           accuracies=res.accuracies, acc_mean=res.mean, acc_std=res.std, eval_epochs=res.epochs)
                emit(out)
                print(f"{name} ipc={ipc} {arm:9s} acc {100 * res.mean:5.2f} ± {100 * res.std:4.2f}  "
                      f"condense {out['condense_seconds']:7.1f}s  its {out.get('iterations')}  "
                      f"peak RSS {out['peak_rss_mib']:.0f} MiB  eval {out['eval_seconds']:.1f}s", flush=True)

    print("\n| dataset | ipc | method | iterations | condense s | s/it | peak RSS MiB (at start) | "
          "test acc % (mean ± std) | notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["method"] == "experts":
            print(f"| {r['dataset']} | {r['ipc']} | experts | {r['experts']}×{r['epochs']} epochs | "
                  f"{r['seconds_cached_total']:.1f} | {r['seconds_per_epoch']:.2f} s/epoch | {r['peak_rss_mib']:.0f} | – | "
                  f"expert cost, not in the condensation time (this run: {r['seconds_this_run']:.1f} s) |")
            continue
        its = r.get("iterations") or 0
        spi = f"{r['condense_seconds'] / its:.3f}" if its else "–"
        note = f"α = {r['learned_lr']:.4g}, eval lr {r['eval_lr']:.4g}" if "learned_lr" in r else ""
        print(f"| {r['dataset']} | {r['ipc']} | {r['method']} | {its} | {r['condense_seconds']:.1f} | {spi} | "
              f"{r['peak_rss_mib']:.0f} ({r.get('rss_start_mib', float('nan')):.0f}) | {100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} | {note} |")


if __name__ == "__main__":
    main()
