"""Benchmark the one-shot selectors (forgetting, GEDA, herding, k-center, EL2N, GraNd, CCS) against random on
a real source.

Scores are computed once per (method, seed) and reused for every fraction; each subset is evaluated with
:func:`smallset.train.evaluate` (one run per seed, the given protocol and model). Results are appended to a
JSON-lines file as they come (a partial run keeps what it measured); a Markdown table of mean ± std over
seeds is printed at the end (``--table-only`` re-prints it from the JSON file without running anything).

Run it under the shared lock, e.g.
    flock /tmp/smallset-bench.lock .venv/bin/python benchmarks/bench_oneshot.py \
        --source parquet:../shared/datasets/mnist --model lenet --seeds 0 1 2 --fractions 0.01 0.05 0.1 0.3

Also measures the GEDA selection step alone on the source's gradient norms (``--geda-timing``). ``--threads``
defaults to 1 here: spinning OpenMP threads slow training down on a shared 2-core machine (BENCHMARKS.md).

The data-diet / CCS comparison (EL2N, GraNd and CCS on forgetting, EL2N and GraNd scores; a CCS method shares
the cached scores of its score's own method, so each score is computed once per seed):
    flock /tmp/smallset-bench.lock .venv/bin/python benchmarks/bench_oneshot.py \
        --source parquet:../shared/datasets/mnist --model lenet --seeds 0 1 2 --fractions 0.01 0.05 0.1 0.3 \
        --methods random forgetting el2n grand ccs-forgetting ccs-el2n ccs-grand --json /tmp/bench_diet.jsonl
``--set NAME.OPTION=VALUE`` overrides an option of the registered method NAME everywhere it is used (as a
method and as a CCS score), e.g. ``--set el2n.models=2 --set el2n.epochs=2 --set ccs.strata=20``.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import utils

from smallset.context import RunContext
from smallset.prune import SELECTORS
from smallset.train import evaluate, get_protocol

# label → (registered selector, config overrides, which score cache to share)
METHODS = {
    "random": ("random", {}, None),
    "forgetting": ("forgetting", {}, "forgetting"),
    "geda-systematic": ("geda", {"fill": "systematic"}, "geda"),
    "geda-random": ("geda", {"fill": "random"}, "geda"),
    "herding": ("herding", {}, "herding"),
    "kcenter": ("kcenter", {}, "kcenter"),
    # the defaults measured both ways (issue 10): never-learned examples counted as forgotten (Toneva) or as
    # never forgotten (DeepCore); features of the untrained model or of one trained for 5 epochs
    "forgetting-toneva": ("forgetting", {"never_learned": "toneva"}, "forgetting-toneva"),
    "forgetting-deepcore": ("forgetting", {"never_learned": "deepcore"}, "forgetting-deepcore"),
    "herding-trained": ("herding", {"feature_epochs": 5}, "features-trained"),
    "kcenter-untrained": ("kcenter", {"feature_epochs": 0}, "features-untrained"),
    "kcenter-trained": ("kcenter", {"feature_epochs": 5}, "features-trained"),
    "el2n": ("el2n", {}, "el2n"),
    "grand": ("grand", {}, "grand"),
    # CCS on another method's scores: shares that method's score cache (same options by construction)
    "ccs-forgetting": ("ccs", {"score": "forgetting"}, "forgetting"),
    "ccs-el2n": ("ccs", {"score": "el2n"}, "el2n"),
    "ccs-grand": ("ccs", {"score": "grand"}, "grand"),
}
SETTINGS: dict[str, dict] = {}  # registered method name → option overrides (--set NAME.OPTION=VALUE)


def make_selector(label: str):
    name, overrides, _ = METHODS[label]
    cls = SELECTORS.get(name)
    overrides = {**overrides, **SETTINGS.get(name, {})}
    if name == "ccs":  # the score's own overrides reach CCS's scorer, so the shared score cache stays exact
        overrides["score_options"] = {**SETTINGS.get(overrides["score"], {}), **overrides.get("score_options", {})}
    return cls(cls.make_config(overrides))


def json_value(text: str):
    """A ``--set`` value as JSON where it parses (numbers, booleans, objects), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_args(argv=None):
    ap = utils.parser(__doc__, source="parquet:../shared/datasets/mnist", seeds=[0, 1, 2], threads=1, device="cpu",
                      json="/tmp/bench_oneshot.jsonl")
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--protocol", default="quick")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.3])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--geda-timing", action="store_true", help="also time the GEDA selection step alone")
    ap.add_argument("--table-only", action="store_true", help="print the table of --json and exit")
    ap.add_argument("--eval-epochs", type=int, default=None, help="override the protocol's epochs (smoke runs)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME.OPTION=VALUE",
                    help="override an option of a registered method (also where it is a CCS score)")
    args = ap.parse_args(argv)
    SETTINGS.update({name: {k: json_value(v) for k, v in opts.items()}
                     for name, opts in utils.method_settings(args.set).items()})
    return args


def run(args) -> str:
    if not args.table_only:
        measure(args)
    text = table(args.json)
    print(text)
    return text


def measure(args) -> None:
    """Scores once per (method's score cache, seed), then per fraction a selection and one evaluation."""
    utils.set_threads(args.threads)
    utils.print_header()
    t0 = time.perf_counter()
    src = utils.load(args.source)
    train, test = src.train, src.test
    device = utils.device(args.device)
    protocol = get_protocol(args.protocol, epochs=args.eval_epochs)
    rows = utils.RowWriter(args.json)
    for seed in args.seeds:
        ctx = RunContext(seed=seed, device=device, model=args.model)
        cache: dict[str, tuple] = {}  # score cache key → (prepared state, seconds)
        for label in args.methods:
            sel, key = make_selector(label), METHODS[label][2]
            if key is not None and key not in cache:
                t = time.perf_counter()
                cache[key] = (sel.prepare(train, ctx), time.perf_counter() - t)
            prepared, score_s = cache.get(key, (None, 0.0))
            for fraction in args.fractions:
                t = time.perf_counter()
                selection = sel.select(train, fraction, ctx, prepared=prepared)
                select_s = time.perf_counter() - t
                ev = evaluate(train.subset(selection.indices, selection.weights), test, model_name=args.model,
                              protocol=protocol, runs=1, seed=seed, device=device)
                rows.write({"source": args.source, "model": args.model, "protocol": args.protocol, "seed": seed,
                            "method": label, "fraction": fraction, "n": len(selection.indices),
                            "accuracy": ev.accuracies[0], "score_seconds": score_s, "select_seconds": select_s,
                            "train_seconds": ev.train_seconds[0], "settings": SETTINGS,
                            "info": {k: v for k, v in selection.info.items() if isinstance(v, (int, float))}})
                print(f"seed {seed} {label:16s} f={fraction:<5} acc={100 * ev.accuracies[0]:6.2f}% "
                      f"score={score_s:7.2f}s select={select_s:6.3f}s train={ev.train_seconds[0]:6.1f}s "
                      f"[{time.perf_counter() - t0:7.1f}s]", flush=True)
        if args.geda_timing and "geda" in cache:
            geda_timing(train, cache["geda"][0], ctx)


def geda_timing(train, norms: torch.Tensor, ctx: RunContext) -> None:
    """The GEDA selection step alone, given the gradient norms, for each solver and fill (best of 3)."""
    cls = SELECTORS.get("geda")
    for milp in ("reduced", "closed_form"):
        for fill in ("systematic", "random"):
            sel = cls(cls.config_cls(milp=milp, fill=fill))
            for fraction in (0.01, 0.1, 0.3):
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    sel.select(train, fraction, ctx, prepared=norms)
                    times.append(time.perf_counter() - t)
                print(f"geda-timing n={len(train)} milp={milp} fill={fill} f={fraction}: "
                      f"best {min(times):.3f}s, worst {max(times):.3f}s", flush=True)


def table(path: str) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["method"], r["fraction"]), []).append(r)
    fractions = sorted({r["fraction"] for r in rows})
    sources = sorted({r["source"] for r in rows})
    lines = []
    for source in sources:
        methods = [m for m in METHODS if any(k[0] == source and k[1] == m for k in groups)]
        lines.append(f"\n{source}: test accuracy % (mean ± std over seeds; n seeds in brackets)\n")
        lines.append("| method | " + " | ".join(f"f = {f}" for f in fractions)
                     + " | score s | select s (per fraction) |")
        lines.append("|---|" + "---|" * len(fractions) + "---|---|")
        for m in methods:
            cells, score_s, select_s = [], [], []
            for f in fractions:
                g = groups.get((source, m, f), [])
                if not g:
                    cells.append("–")
                    continue
                acc = [100 * r["accuracy"] for r in g]
                sd = statistics.pstdev(acc) if len(acc) > 1 else 0.0
                cells.append(f"{statistics.mean(acc):.2f} ± {sd:.2f} ({len(acc)})")
                score_s += [r["score_seconds"] for r in g]
                select_s += [r["select_seconds"] for r in g]
            lines.append(f"| {m} | " + " | ".join(cells) +
                         f" | {statistics.mean(score_s):.1f} | {statistics.mean(select_s):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    run(parse_args())
