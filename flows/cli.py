"""The ``smallset`` command line.

    smallset prune    --source S --method M --fraction F [method options]   select a coreset
    smallset distill  --source S --method M --ipc K --iterations N           learn a synthetic set
    smallset compare  --methods a,b --fractions .. --ipcs ..                 side by side + full data
    smallset demo                                                            every method on builtin:mnist-mini
    smallset datasets --source S                                             describe a source
    smallset show     FILE [--json]                                          describe a reduced Parquet file
    smallset methods                                                         list methods and their options

Every method's hyperparameters (its config dataclass) become options of ``prune``/``distill``:
``smallset prune --method NAME --help`` lists them with the paper's defaults. Errors print one sentence
and exit with status 2; nothing is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path
import dataclasses
import json
import os
import sys
import typing

import smallset.flows.settings  # noqa: F401

from smallset.errors import SmallsetError

EXIT_USAGE = 2

COMMON_HELP = {
    "source": "where the data comes from: parquet:PATH, torchvision:NAME, folder:PATH or builtin:mnist-mini",
    "model": "network the method scores/matches with and the evaluation trains (see `smallset methods`)",
    "protocol": "evaluation recipe: quick (CPU-sized), demo (quick, 8 epochs), paper (300 epochs) or paper-1000",
}


def _csv(type_):
    def parse(text: str):
        try:
            return [type_(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {type_.__name__}s, got {text!r}")

    return parse


def _kv(text: str) -> tuple[str, typing.Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        v = json.loads(v)
    except ValueError:
        pass
    return k, v


class Parser(argparse.ArgumentParser):
    """argparse that reports errors as one sentence and exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"smallset: error: {message}; see `{self.prog} --help`.\n")


def _add_common(p: argparse.ArgumentParser, with_method: bool = True) -> None:
    p.add_argument("--source", default="builtin:mnist-mini", help=COMMON_HELP["source"])
    p.add_argument("--data-root", default=None, help="where torchvision: datasets are stored or downloaded")
    p.add_argument("--model", default="convnet", help=COMMON_HELP["model"] + " (default: convnet)")
    p.add_argument("--model-arg", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="model option, e.g. width=64 (repeatable)")
    p.add_argument("--eval-models", type=_csv(str), default=[],
                   help="evaluate on these models instead of --model, e.g. convnet,resnet18,mlp,lenet (a matrix)")
    p.add_argument("--protocol", default="quick", help=COMMON_HELP["protocol"] + " (default: quick)")
    p.add_argument("--eval-augment", default="none", help="training-time augmentation in the evaluation: none or dsa")
    p.add_argument("--eval-epochs", type=int, default=None, help="override the protocol's number of epochs")
    p.add_argument("--eval-runs", type=int, default=3, help="evaluation trainings (seeds) to average (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="fixes every random choice (default: 0)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
    p.add_argument("--no-eval", action="store_true", help="write the reduced set without the evaluation training")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--force", action="store_true", help="run even when the memory estimate exceeds the machine")


def _add_config_options(p: argparse.ArgumentParser, cls) -> None:
    """Every field of a method's config dataclass as --field-name (default None = the paper's default)."""
    hints = typing.get_type_hints(cls.config_cls)
    group = p.add_argument_group(f"{cls.name} options ({cls.__doc__.strip().splitlines()[0] if cls.__doc__ else ''})")
    for f in dataclasses.fields(cls.config_cls):
        if f.name == "iterations":
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints.get(f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is None and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        help_ = f.metadata.get("help", "") + f" (default: {default})"
        if hint is bool:
            group.add_argument(flag, dest=f"cfg_{f.name}", default=None, action=argparse.BooleanOptionalAction,
                               help=help_)
        elif typing.get_origin(hint) is typing.Literal:
            group.add_argument(flag, dest=f"cfg_{f.name}", default=None, choices=typing.get_args(hint), help=help_)
        else:
            simple = hint in (int, float, str)
            group.add_argument(flag, dest=f"cfg_{f.name}", default=None, type=hint if simple else str,
                               metavar=f.name.upper() if simple else "JSON", help=help_)


def _method_from_argv(argv: list[str], default: str) -> str:
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return default


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from smallset.tasks import steps

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = Parser(prog="smallset", description=__doc__.split("\n\n")[0] + "\n\nSee `smallset COMMAND --help`.",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    for kind, default_method in (("prune", "random"), ("distill", "dm")):
        names = steps.registries()[kind].names()
        p = sub.add_parser(kind, help="select a coreset" if kind == "prune" else "learn a synthetic set",
                           description=(f"Methods: {', '.join(names)}. Add --method NAME --help for its options."))
        p.add_argument("--method", default=default_method, help=f"one of {', '.join(names)} (default: {default_method})")
        if kind == "prune":
            p.add_argument("--fraction", type=float, default=0.1, help="fraction of the source to keep, in (0, 1] (default: 0.1)")
        else:
            p.add_argument("--ipc", type=int, default=10, help="synthetic images per class (default: 10)")
            p.add_argument("--iterations", type=int, default=None, help="outer iterations (default: the paper's)")
            p.add_argument("--checkpoint-dir", default=None, help="save a checkpoint here every --checkpoint-every iterations")
            p.add_argument("--checkpoint-every", type=int, default=0, help="iterations between checkpoints (0: none)")
            p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
        p.add_argument("--output", default=None, help="the Parquet file to write (default: smallset-out/…)")
        _add_common(p)
        if sub.choices.get(kind) is p and argv and argv[0] == kind:
            method = _method_from_argv(argv[1:], default_method)
            if method in steps.registries()[kind]:
                _add_config_options(p, steps.registries()[kind].get(method))

    c = sub.add_parser("compare", help="compare methods side by side at matched budgets, plus full data")
    c.add_argument("--methods", type=_csv(str), default=["random"], help="comma-separated method names")
    c.add_argument("--fractions", type=_csv(float), default=[], help="pruning budgets, e.g. 0.01,0.05")
    c.add_argument("--ipcs", type=_csv(int), default=[], help="images per class, e.g. 1,10 (pruning runs at the matching fraction)")
    c.add_argument("--seeds", type=_csv(int), default=[0], help="seeds, e.g. 0,1,2")
    c.add_argument("--set", action="append", type=_kv, default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. dm.iterations=200 (repeatable)")
    c.add_argument("--output-dir", default="smallset-out", help="where the Parquet files and results.csv go")
    c.add_argument("--no-full", action="store_true", help="skip the full-data reference row")
    c.add_argument("--runner", default="threads", choices=["threads", "dask"],
                   help="where cells run: threads in this process, or Dask worker processes (default: threads)")
    c.add_argument("--workers", type=int, default=1, help="parallel threads or Dask worker processes (default: 1)")
    c.add_argument("--dask-address", default=None, help="an existing Dask scheduler, e.g. tcp://host:8786")
    c.add_argument("--gpus", type=int, default=0, help="local Dask cluster with one worker per GPU (0: no GPU placement)")
    c.add_argument("--no-report", action="store_true", help="skip the HTML/Markdown comparison report")
    _add_common(c)
    c.set_defaults(eval_runs=1)

    d = sub.add_parser("demo", help="compare every method on builtin:mnist-mini in a few minutes")
    d.add_argument("--output-dir", default="smallset-out")
    d.add_argument("--device", default="auto")
    d.add_argument("--runner", default="threads", choices=["threads", "dask"])
    d.add_argument("--workers", type=int, default=1)

    r = sub.add_parser("report", help="render the HTML/Markdown comparison report of a compare")
    r.add_argument("--run-id", default=None, help="the compare's MLflow parent run (default: the latest compare)")
    r.add_argument("--output-dir", default=None, help="where report.html/report.md go (default: smallset-out/report-RUN)")

    ds = sub.add_parser("datasets", help="describe a source: shape, counts per class, digest")
    ds.add_argument("--source", default="builtin:mnist-mini", help=COMMON_HELP["source"])
    ds.add_argument("--data-root", default=None)
    ds.add_argument("--json", action="store_true", help="print as JSON")

    sh = sub.add_parser("show", help="describe a reduced Parquet file written by smallset")
    sh.add_argument("path", help="the .parquet file")
    sh.add_argument("--json", action="store_true", help="print the metadata as JSON")

    sub.add_parser("methods", help="list the methods, models and protocols")

    sv = sub.add_parser("serve", help="serve the nightly compare with flow.serve (no work pool or worker needed)",
                        description="Registers the deployment 'compare/nightly-compare' with the Prefect server "
                                    "(PREFECT_API_URL) and runs its scheduled runs in this process until stopped. "
                                    "Parameters come from the nightly-compare deployment in prefect.yaml.")
    sv.add_argument("--cron", default=None, help="cron schedule (default: prefect.yaml's, 0 2 * * * UTC)")
    sv.add_argument("--name", default="nightly-compare", help="deployment name")
    return parser


# --- commands -----------------------------------------------------------------------------------------
def _config_overrides(args) -> dict:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


def _common_kwargs(args) -> dict:
    return dict(
        source=args.source, seed=args.seed, model=args.model, model_kwargs=dict(args.model_arg),
        eval_models=args.eval_models, protocol=args.protocol, eval_augment=args.eval_augment,
        eval_epochs=args.eval_epochs, eval_runs=args.eval_runs, device=args.device, no_eval=args.no_eval,
        data_root=args.data_root, force=args.force,
    )


def _precheck(method: str, kind: str, args) -> None:
    """Fail before Prefect starts (which takes seconds) on everything checkable without data."""
    from smallset.tasks import steps

    actual = steps.method_kind(method)
    if actual != kind:
        other = "distill" if kind == "prune" else "prune"
        raise SmallsetError(f"{method} is a {'distillation' if actual == 'distill' else 'pruning'} method; "
                            f"run it with `smallset {other}`.")
    budget = steps.Budget(fraction=args.fraction) if kind == "prune" else steps.Budget(ipc=args.ipc)
    spec = steps.CellSpec(method=method, budget=budget, seed=args.seed, model=args.model,
                          eval_models=args.eval_models, protocol=args.protocol, eval_augment=args.eval_augment,
                          eval_epochs=args.eval_epochs, eval_runs=args.eval_runs, device=args.device,
                          config=_config_overrides(args), output=args.output)
    steps.validate(spec)
    _precheck_source(args.source)


def _precheck_source(source: str) -> None:
    from pathlib import Path

    from smallset.data import SOURCES

    if ":" not in source:
        raise SmallsetError(f"Source {source!r} has no type; write TYPE:ARGUMENT, e.g. parquet:data/train.parquet "
                            f"or builtin:mnist-mini.")
    kind, arg = source.split(":", 1)
    SOURCES.get(kind)
    if kind in ("parquet", "folder") and not Path(arg).expanduser().exists():
        raise SmallsetError(f"No such file or directory: {arg}; give an existing path after {kind}:.")


def cmd_prune(args) -> int:
    from smallset.flows.prune_flow import prune_flow

    _precheck(args.method, "prune", args)
    row = prune_flow(method=args.method, fraction=args.fraction, params=_config_overrides(args),
                     output=args.output, progress=not args.no_progress, **_common_kwargs(args))
    _print_row(row)
    return 0


def cmd_distill(args) -> int:
    from smallset.flows.distill_flow import distill_flow

    _precheck(args.method, "distill", args)
    row = distill_flow(method=args.method, ipc=args.ipc, iterations=args.iterations, params=_config_overrides(args),
                       output=args.output, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                       resume=args.resume, progress=not args.no_progress, **_common_kwargs(args))
    _print_row(row)
    return 0


def _print_row(row: dict) -> None:
    from smallset import tracking
    from smallset.tasks.results import format_table

    print(format_table([row]))
    print(f"\nwrote {row['output']}")
    print(f"MLflow run {row['run_id']} in {tracking.tracking_uri()}  (browse: mlflow ui --backend-store-uri {tracking.tracking_uri()})")


def _compare_params(pairs) -> dict:
    out: dict = {}
    for key, value in pairs:
        if "." not in key:
            raise SmallsetError(f"--set {key}=… needs METHOD.OPTION, e.g. dm.iterations=200.")
        method, opt = key.split(".", 1)
        out.setdefault(method, {})[opt.replace("-", "_")] = value
    return out


def run_compare(runner: str = "threads", workers: int = 1, dask_address: str | None = None, **kw) -> list[dict]:
    from smallset.flows.compare_flow import compare_flow
    from smallset.tasks.runners import make_task_runner

    task_runner = make_task_runner(runner, workers, dask_address, kw.get("gpus", 0))
    return compare_flow.with_options(task_runner=task_runner)(**kw)


def cmd_compare(args) -> int:
    from smallset.tasks import steps

    for m in args.methods:
        steps.method_kind(m)
    _precheck_source(args.source)
    params = _compare_params(args.set)
    for m, opts in params.items():
        if m not in args.methods:
            raise SmallsetError(f"--set names {m}, which is not in --methods.")
        steps.coerce_config(m, opts)
    kw = _common_kwargs(args)
    kw.pop("seed")  # compare takes --seeds
    from smallset.tasks.runners import check_runner_args

    check_runner_args(args.runner, args.workers, args.dask_address, args.gpus)
    rows = run_compare(methods=args.methods, fractions=args.fractions, ipcs=args.ipcs, seeds=args.seeds,
                       params=params, output_dir=args.output_dir, include_full=not args.no_full,
                       runner=args.runner, workers=args.workers, dask_address=args.dask_address, gpus=args.gpus,
                       report=not args.no_report, **kw)
    _print_compare(rows)
    return 0


def _print_compare(rows: list[dict]) -> None:
    from smallset import tracking
    from smallset.tasks.results import format_table

    print(format_table(rows))
    if rows:
        print(f"\nresults: {rows[0]['csv']}")
        report = Path(rows[0]["csv"]).parent / "report.html"
        if report.exists():
            print(f"report: {report}")
        print(f"MLflow: {tracking.tracking_uri()} (parent run {rows[0]['parent_run_id']}); "
              f"browse with: mlflow ui --backend-store-uri {tracking.tracking_uri()}")


DEMO = dict(
    source="builtin:mnist-mini", ipcs=[10], seeds=[0], model="convnet-s", protocol="demo", eval_runs=1,
    # Small settings so that every method fits in the demo's few minutes on a 2-core CPU (the papers'
    # defaults take hours there: see BENCHMARKS.md).
    params={
        # DC starts from real images here: from noise (its paper default) 5 iterations learn nothing.
        "dc": {"iterations": 5, "outer_loop": 2, "inner_loop": 5, "batch_real": 64, "init": "real"},
        "dsa": {"iterations": 5, "outer_loop": 2, "inner_loop": 5, "batch_real": 64},
        "dm": {"iterations": 100, "batch_real": 64},
        "cafe": {"iterations": 3, "max_outer_steps": 3, "max_inner_epochs": 3, "probe_per_class": 16,
                 "batch_real": 64},
        "forgetting": {"score_epochs": 3},
        "crest": {"epochs": 10, "warmup_epochs": 1},
    },
)


def demo_methods() -> list[str]:
    from smallset.tasks import steps

    return steps.all_methods()


def cmd_demo(args) -> int:
    from smallset.tasks import steps

    methods = demo_methods()
    params = {m: DEMO["params"].get(m, {}) for m in methods}
    for m, opts in params.items():
        steps.coerce_config(m, opts)  # a renamed option fails here, not silently
    print(f"smallset demo: {', '.join(methods)} on {DEMO['source']} at {DEMO['ipcs'][0]} images per class "
          f"(model {DEMO['model']}, protocol {DEMO['protocol']}), plus the full-data reference.")
    rows = run_compare(methods=methods, fractions=[], ipcs=DEMO["ipcs"], seeds=DEMO["seeds"], params=params,
                       source=DEMO["source"], model=DEMO["model"], protocol=DEMO["protocol"],
                       eval_runs=DEMO["eval_runs"], device=args.device, output_dir=args.output_dir,
                       runner=args.runner, workers=args.workers)
    _print_compare(rows)
    return 0


def cmd_report(args) -> int:
    from smallset import report

    from smallset import tracking

    tracking.configure()
    run_id = args.run_id or report.latest_compare_run()
    out = args.output_dir or f"smallset-out/report-{run_id[:8]}"
    from smallset.tasks.report_task import publish_report

    html_path, md_path = publish_report(run_id, out)
    print(f"report: {html_path}\nsummary: {md_path}")
    return 0


def cmd_datasets(args) -> int:
    from smallset.data import load_source

    src = load_source(args.source, data_root=args.data_root)
    info = {"source": src.id}
    for split, ds in (("train", src.train), ("test", src.test)):
        if ds is None:
            continue
        info[split] = {"examples": len(ds), "shape": [ds.channels, *ds.image_size],
                       "classes": ds.classes, "per_class": dict(zip(ds.classes, ds.class_counts())),
                       "mean": list(ds.mean), "std": list(ds.std), "digest": ds.digest}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"source {src.id}")
    for split in ("train", "test"):
        if split in info:
            d = info[split]
            print(f"  {split}: {d['examples']} images of {'×'.join(map(str, d['shape']))}, {len(d['classes'])} classes, "
                  f"mean {d['mean']}, std {d['std']}")
            print(f"    per class: " + ", ".join(f"{k}: {v}" for k, v in d["per_class"].items()))
            print(f"    digest: {d['digest']}")
    return 0


def cmd_show(args) -> int:
    from smallset import store

    meta = store.read_metadata(args.path)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    ds = store.read_reduced(args.path)
    print(f"{args.path}: {meta['kind']} set by {meta['method']} (seed {meta['seed']}), smallset {meta.get('smallset_version')}")
    print(f"  source: {meta['source']} (digest {meta['source_digest'][:16]}…)")
    print(f"  {len(ds)} images of {'×'.join(map(str, meta['shape']))}; per class: "
          + ", ".join(f"{c}: {n}" for c, n in zip(ds.classes, ds.class_counts())))
    w = ds.effective_weights()
    print(f"  weights: min {float(w.min()):.3g}, max {float(w.max()):.3g}, sum {float(w.sum()):.6g}")
    print(f"  params: {json.dumps(meta.get('params', {}))}")
    for name, e in (meta.get("evaluation") or {}).items():
        print(f"  evaluation ({name}, {e['protocol']}): {100 * e['mean']:.2f} ± {100 * e['std']:.2f}% over {e['runs']} runs")
    print(f"  created {meta['created']}")
    return 0


def cmd_methods(args) -> int:
    from smallset.models import model_names
    from smallset.train import PROTOCOLS
    from smallset.tasks import steps

    for kind, reg in steps.registries().items():
        print(f"{kind} methods:")
        for name in reg.names():
            cls = reg.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            opts = ", ".join(f.name for f in dataclasses.fields(cls.config_cls)) or "no options"
            print(f"  {name:<12} {doc[0] if doc else ''}  [{opts}]")
    print(f"models: {', '.join(model_names())}")
    print(f"protocols: {', '.join(PROTOCOLS.names())}")
    return 0


def nightly_deployment() -> dict:
    import yaml

    path = Path(__file__).resolve().parent.parent / "prefect.yaml"
    deps = yaml.safe_load(path.read_text())["deployments"]
    return next(d for d in deps if d["name"] == "nightly-compare")


def cmd_serve(args) -> int:
    from smallset.flows.compare_flow import compare_flow

    dep = nightly_deployment()
    sched = (dep.get("schedules") or [{}])[0]
    cron = args.cron or sched.get("cron", "0 2 * * *")
    print(f"serving compare/{args.name} on cron {cron!r}; Ctrl-C stops")
    compare_flow.serve(name=args.name, cron=cron, parameters=dep.get("parameters", {}), tags=dep.get("tags"))
    return 0


COMMANDS = {"prune": cmd_prune, "distill": cmd_distill, "compare": cmd_compare, "demo": cmd_demo,
            "datasets": cmd_datasets, "report": cmd_report, "show": cmd_show, "methods": cmd_methods,
            "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        if getattr(args, "no_progress", False):
            os.environ["TQDM_DISABLE"] = "1"
        return COMMANDS[args.command](args)
    except SmallsetError as e:
        print(f"smallset: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt:
        print("smallset: interrupted; nothing partial was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
