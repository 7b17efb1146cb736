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
and exit with status 2; nothing is written. The parser is generated in :mod:`smallset.flows.cli_parser`;
the handlers below resolve what was asked once (:func:`smallset.tasks.spec.resolve_cell`) before any flow
or server starts.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import smallset.flows.settings  # noqa: F401

from smallset.errors import SmallsetError
from smallset.flows import cli_output
from smallset.flows.cli_parser import EXIT_USAGE, build_parser, config_overrides, run_options_from

DEMO = dict(source="builtin:mnist-mini", ipcs=[10], seeds=[0], model="convnet-s", protocol="demo", eval_runs=1)


# --- commands -----------------------------------------------------------------------------------------
def cmd_prune(args) -> int:
    from smallset.flows.prune_flow import prune_flow
    from smallset.tasks.spec import Budget, check_source, resolve_cell

    options = run_options_from(args)
    resolve_cell(args.method, Budget(fraction=args.fraction), options, config_overrides(args), kind="prune",
                 output=args.output)
    check_source(options.source)
    cli_output.print_row(prune_flow(method=args.method, fraction=args.fraction, params=config_overrides(args),
                                    output=args.output, options=options))
    return 0


def cmd_distill(args) -> int:
    from smallset.flows.distill_flow import distill_flow
    from smallset.tasks.spec import Budget, check_source, resolve_cell

    options = run_options_from(args)
    resolve_cell(args.method, Budget(ipc=args.ipc), options, config_overrides(args), kind="distill",
                 output=args.output)
    check_source(options.source)
    if args.checkpoint_every < 0:
        raise SmallsetError("--checkpoint-every must be 0 or more.")
    cli_output.print_row(distill_flow(method=args.method, ipc=args.ipc, params=config_overrides(args),
                                      output=args.output, checkpoint_dir=args.checkpoint_dir,
                                      checkpoint_every=args.checkpoint_every, resume=args.resume, options=options))
    return 0


def compare_params(pairs) -> dict:
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


def check_compare(methods, params: dict, options) -> None:
    """Everything about a compare that needs no data, before any flow starts."""
    from smallset.tasks.methods import method_class
    from smallset.tasks.spec import check_options, check_source

    for m in methods:
        method_class(m)
    for m, opts in params.items():
        if m not in methods:
            raise SmallsetError(f"--set names {m}, which is not in --methods.")
        method_class(m).make_config(opts)
    check_options(options)
    check_source(options.source)


def cmd_compare(args) -> int:
    from smallset.options import RunOptions
    from smallset.tasks.runners import check_runner_args

    options = run_options_from(args, base=RunOptions(eval_runs=1))
    params = compare_params(args.set)
    check_compare(args.methods, params, options)
    check_runner_args(args.runner, args.workers, args.dask_address, args.gpus)
    for f in args.fractions:
        from smallset.prune.base import check_fraction

        check_fraction(f)
    if any(k < 1 for k in args.ipcs):
        raise SmallsetError("--ipcs must be whole numbers of at least 1.")
    rows = run_compare(methods=args.methods, fractions=args.fractions, ipcs=args.ipcs, seeds=args.seeds,
                       params=params, output_dir=args.output_dir, include_full=not args.no_full,
                       runner=args.runner, workers=args.workers, dask_address=args.dask_address, gpus=args.gpus,
                       report=not args.no_report, options=options)
    cli_output.print_compare(rows)
    return 0


def demo_methods() -> list[str]:
    from smallset.tasks.methods import all_methods

    return all_methods()


def cmd_demo(args) -> int:
    from smallset.options import RunOptions
    from smallset.tasks.methods import method_class

    methods = demo_methods()
    params = {m: dict(method_class(m).demo) for m in methods}
    options = RunOptions(source=DEMO["source"], model=DEMO["model"], protocol=DEMO["protocol"],
                         eval_runs=DEMO["eval_runs"], device=args.device)
    check_compare(methods, params, options)  # a renamed demo option fails here, not silently
    print(f"smallset demo: {', '.join(methods)} on {DEMO['source']} at {DEMO['ipcs'][0]} images per class "
          f"(model {DEMO['model']}, protocol {DEMO['protocol']}), plus the full-data reference.")
    rows = run_compare(methods=methods, fractions=[], ipcs=DEMO["ipcs"], seeds=DEMO["seeds"], params=params,
                       output_dir=args.output_dir, runner=args.runner, workers=args.workers, options=options)
    cli_output.print_compare(rows)
    return 0


def cmd_report(args) -> int:
    from smallset import report, tracking
    from smallset.tasks.report_task import publish_report

    tracking.configure()
    run_id = args.run_id or report.latest_compare_run()
    out = args.output_dir or f"smallset-out/report-{run_id[:8]}"
    html_path, md_path = publish_report(run_id, out)
    print(f"report: {html_path}\nsummary: {md_path}")
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
            "datasets": cli_output.print_datasets, "report": cmd_report, "show": cli_output.print_show,
            "methods": cli_output.print_methods, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv, __doc__.split("\n\n")[0] + "\n\nSee `smallset COMMAND --help`.")
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        if getattr(args, "no_progress", False):
            os.environ["TQDM_DISABLE"] = "1"
        return COMMANDS[args.command](args)
    except SmallsetError as e:
        print(f"smallset: error: {e.for_command_line()}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt:
        print("smallset: interrupted; nothing partial was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
