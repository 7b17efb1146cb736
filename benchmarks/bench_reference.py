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

``--table-only --json FILE`` re-prints the Markdown table of a JSON-lines file. The condensers run through
the pipeline's own step (``smallset.tasks.steps.reduce``: the cell's config, context and memory pre-check);
``condense_seconds`` is that step's reduction time.
"""
from __future__ import annotations

import platform
import time

import utils

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


def load_text() -> str:
    return " ".join(f"{x:.2f}" for x in utils.load_average())


def reduce_row(name: str, src, args) -> tuple[list, dict, float]:
    """(reduced sets, the reduction's info, seconds): ``--random-sets`` class-balanced draws for a random row
    (one draw of ipc 1 varies by points), the condenser through ``tasks.steps.reduce`` otherwise."""
    import torch

    method, _, ipc, settings, _, _ = ROWS[name]
    ds = src.train
    if method == "random":
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(args.seed)
        draws = [torch.cat([idx[torch.randperm(len(idx), generator=g)[:ipc]] for idx in ds.class_indices()])
                 for _ in range(args.random_sets)]
        return [ds.subset(keep) for keep in draws], {}, time.perf_counter() - t0
    from smallset.options import RunOptions
    from smallset.tasks import steps
    from smallset.tasks.spec import Budget, resolve_cell

    options = RunOptions(model="convnet", seed=args.seed, device="cpu", progress=not args.quiet, force=True)
    red = steps.reduce(resolve_cell(method, Budget(ipc=ipc), options, settings), src)
    return [red.dataset], red.info, red.seconds


def run_row(name: str, args) -> dict:
    import torch

    from smallset.train import evaluate, get_protocol

    method, dataset, ipc, settings, augment, reference = ROWS[name]
    src = utils.load(utils.dataset_spec(dataset, args.data), keep_others=False)
    load_before = load_text()
    sets, info, make_s = reduce_row(name, src, args)
    protocol = get_protocol("paper", augment=augment)
    evals = [evaluate(s, src.test, "convnet", protocol, runs=args.eval_runs, seed=args.seed + i,
                      progress=not args.quiet) for i, s in enumerate(sets)]
    ev = evals[0]  # one result over every set's networks
    ev.accuracies = [a for e in evals for a in e.accuracies]
    ev.train_seconds = [s for e in evals for s in e.train_seconds]
    return {
        "row": name, "method": method, "dataset": dataset, "ipc": ipc, "settings": settings,
        "eval_augment": augment, "normalization": list(src.train.mean) + list(src.train.std),
        "dataset_key": src.train.dataset_key, "ours_mean": 100 * ev.mean, "ours_std": 100 * ev.std,
        "runs": len(ev.accuracies), "sets": len(sets), "accuracies": ev.accuracies, "reference_mean": reference[0],
        "reference_std": reference[1],
        "condense_seconds": make_s, "iterations_per_second": info.get("iterations_per_second"),
        "eval_seconds": ev.total_train_seconds, "epochs": ev.epochs, "seed": args.seed,
        "peak_rss_gb": utils.peak_rss_mib() / 1024, "load_before": load_before, "load_after": load_text(),
        "machine": platform.node(), "threads": torch.get_num_threads(),
    }


def table(rows: list[dict]) -> str:
    lines = ["| row | reference | ours (sets × nets) | gap (pts) | condense s | eval s | load before/after |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = r["ours_mean"] - r["reference_mean"]
        lines.append(f"| {r['row']} | {r['reference_mean']:.1f} ± {r['reference_std']:.1f} | "
                     f"{r['ours_mean']:.1f} ± {r['ours_std']:.1f} "
                     f"({r.get('sets', 1)} × {r['runs'] // r.get('sets', 1)}) | "
                     f"{gap:+.1f} | {r['condense_seconds']:.0f} | "
                     f"{r['eval_seconds']:.0f} | {r['load_before']} / {r['load_after']} |")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = utils.parser(__doc__, threads=0, seed=0, json="/tmp/bench_reference.jsonl", data=str(utils.DATA))
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    ap.add_argument("--eval-runs", type=int, default=3, help="evaluation networks per set")
    ap.add_argument("--random-sets", type=int, default=1, help="random rows: independent draws, each evaluated")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    unknown = [r for r in utils.comma_list(args.rows) if r not in ROWS]
    if unknown:
        ap.error(f"unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
    return args


def run(args) -> list[dict]:
    if args.table_only:
        print(table(utils.read_rows(args.json)))
        return []
    utils.set_threads(args.threads)
    utils.print_header()
    rows = utils.RowWriter(args.json)
    for name in utils.comma_list(args.rows):
        row = rows.write(run_row(name, args))
        print(table([row]).splitlines()[-1], flush=True)
    print(table(rows.rows))
    return rows.rows


if __name__ == "__main__":
    run(parse_args())
