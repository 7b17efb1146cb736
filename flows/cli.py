"""The ``smallset`` command line.

    smallset prune    --source S --method M --fraction F [method options]   select a coreset
    smallset distill  --source S --method M --ipc K --iterations N           learn a synthetic set
    smallset compare  --methods a,b --fractions .. --ipcs ..                 side by side + full data
    smallset demo                                                            every method on builtin:mnist-mini
    smallset report   [--run-id RUN] [--output-dir DIR]                      HTML/Markdown report of a compare
    smallset datasets --source S                                             describe a source
    smallset show     FILE [--json]                                          describe a reduced Parquet file
    smallset methods                                                         list methods and their options
    smallset serve    [--cron CRON] [--name NAME]                            serve the nightly compare (flow.serve)

Every method's hyperparameters (its config dataclass) become options of ``prune``/``distill``:
``smallset prune --method NAME --help`` lists them with the paper's defaults. Errors print one sentence
and exit with status 2; nothing is written. The parser is generated in :mod:`smallset.flows.cli_parser`;
the handlers below first check what needs only names (:func:`smallset.tasks.spec.precheck_cell`, from the
torch-free catalogue: refusals come in well under a second), then resolve what was asked once
(:func:`smallset.tasks.spec.resolve_cell`) before any data is read or any flow or server starts.

``prune`` and ``distill`` run their steps in this process (:mod:`smallset.tasks.direct`) unless a Prefect
server is configured (``PREFECT_API_URL``) or ``SMALLSET_USE_PREFECT=1``; then they run as Prefect flows.
``compare``, ``demo`` and ``serve`` always use Prefect.

SIGINT and SIGTERM stop a run: work in other threads stops at its next safe point, nothing is written,
MLflow runs left open are marked KILLED, the temporary Prefect server and any other process the command
started are stopped, and the exit status is 130 (SIGINT) or 143 (SIGTERM).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import smallset.flows.settings  # noqa: F401
from smallset.errors import SmallsetError
from smallset.flows import cli_output
from smallset.flows.cli_parser import EXIT_USAGE, build_parser, config_overrides, run_options_from

DEMO = dict(source="builtin:mnist-mini", ipcs=[10], seeds=[0], model="convnet-s", protocol="demo", eval_runs=1)


# --- commands -----------------------------------------------------------------------------------------
def use_prefect() -> bool:
    """prune/distill as Prefect flows: with a configured server, or when asked (SMALLSET_USE_PREFECT=1)."""
    return bool(os.environ.get("PREFECT_API_URL")) or os.environ.get("SMALLSET_USE_PREFECT", "") in ("1", "true", "yes")


def prepare_prefect() -> None:
    from smallset.tasks.prefect_guard import prepare_prefect as prepare

    prepare()


def cmd_prune(args) -> int:
    from smallset.tasks.spec import Budget, check_source, precheck_cell, resolve_cell

    options, params, budget = run_options_from(args), config_overrides(args), Budget(fraction=args.fraction)
    precheck_cell(args.method, budget, options, params, kind="prune", output=args.output)  # no torch yet
    check_source(options.source)
    cell = resolve_cell(args.method, budget, options, params, kind="prune", output=args.output)
    if use_prefect():
        prepare_prefect()
        from smallset.flows.prune_flow import prune_flow

        row = prune_flow(method=args.method, fraction=args.fraction, params=params, output=args.output, options=options)
    else:
        from smallset.tasks.direct import run_cell

        row = run_cell(cell)
    cli_output.print_row(row)
    return 0


def cmd_distill(args) -> int:
    from smallset.tasks.spec import Budget, Checkpointing, check_output, check_source, precheck_cell, resolve_cell

    options, params, budget = run_options_from(args), config_overrides(args), Budget(ipc=args.ipc)
    precheck_cell(args.method, budget, options, params, kind="distill", output=args.output)  # no torch yet
    if args.checkpoint_every < 0:
        raise SmallsetError("--checkpoint-every must be 0 or more.")
    if args.checkpoint_dir:
        check_output(str(Path(args.checkpoint_dir) / "checkpoint.pt"), option="checkpoint_dir")
    check_source(options.source)
    checkpointing = Checkpointing(args.checkpoint_dir, args.checkpoint_every, args.resume)
    cell = resolve_cell(args.method, budget, options, params, kind="distill", output=args.output,
                        checkpointing=checkpointing)
    if use_prefect():
        prepare_prefect()
        from smallset.flows.distill_flow import distill_flow

        row = distill_flow(method=args.method, ipc=args.ipc, params=params, output=args.output,
                           checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                           resume=args.resume, options=options)
    else:
        from smallset.tasks.direct import run_cell

        row = run_cell(cell)
    cli_output.print_row(row)
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
    prepare_prefect()
    from smallset.flows.compare_flow import compare_flow
    from smallset.tasks.runners import make_task_runner

    task_runner = make_task_runner(runner, workers, dask_address, kw.get("gpus", 0))
    return compare_flow.with_options(task_runner=task_runner)(**kw)


def check_compare(methods, params: dict, options) -> None:
    """Everything about a compare that needs no data, before any flow starts: first what the catalogue
    knows (no torch: fast refusals), then the full checks."""
    from smallset.tasks import catalog
    from smallset.tasks.methods import method_class
    from smallset.tasks.spec import check_options, check_source, precheck_options, schedules_apart

    for m in methods:
        catalog.method_info(m)
    for m, opts in params.items():
        if m not in methods:
            raise SmallsetError(f"--set names {m}, which is not in --methods.")
        catalog.check_overrides(m, opts)
    precheck_options(options)
    check_source(options.source)
    for m in methods:
        method_class(m)
    for m, opts in params.items():
        method_class(m).make_config(opts)
    check_options(options)
    apart = schedules_apart(list(methods), params)
    if apart:
        import warnings

        from smallset.errors import SmallsetWarning

        warnings.warn(SmallsetWarning(apart), stacklevel=2)


def check_each(values: list, check, name: str, plural: str) -> None:
    """Each value of a compare list through the check of one value (a budget's, a run option's), its
    sentence naming the list: ``fraction`` → ``fractions`` (the command line shows ``--fractions``)."""
    for value in values:
        try:
            check(value)
        except SmallsetError as e:
            raise SmallsetError(e.for_command_line({name: plural}), option=plural) from None


def check_compare_lists(args, options) -> None:
    """compare's lists, each value checked as a single run checks it: the budgets by
    :mod:`smallset.budget`, the seeds by :class:`~smallset.options.RunOptions`' ``seed`` field."""
    from smallset.budget import check_fraction, check_ipc_value
    from smallset.flows.cli_parser import validated_options

    if not args.fractions and not args.ipcs:
        raise SmallsetError("A compare needs at least one budget: give --fractions and/or --ipcs.")
    if not args.methods:
        raise SmallsetError("--methods needs at least one method name.")
    if not args.seeds:
        raise SmallsetError("--seeds needs at least one seed, e.g. 0,1,2.")
    check_each(args.fractions, check_fraction, "fraction", "fractions")
    check_each(args.ipcs, check_ipc_value, "ipc", "ipcs")
    base = options.model_dump()
    check_each(args.seeds, lambda seed: validated_options({**base, "seed": seed}), "seed", "seeds")


def cmd_compare(args) -> int:
    from smallset.options import RunOptions
    from smallset.tasks.runners import check_runner_args

    options = run_options_from(args, base=RunOptions(eval_runs=1))
    params = compare_params(args.set)
    check_compare_lists(args, options)
    check_runner_args(args.runner, args.workers, args.dask_address, args.gpus)
    check_compare(args.methods, params, options)
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
    from smallset.safenames import safe_filename

    out = args.output_dir or f"smallset-out/report-{safe_filename(run_id[:8])}"
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt."""


def _on_signal(signum, frame):
    """SIGINT/SIGTERM: raise in the main thread, and tell work in other threads to stop (a Prefect flow
    joins its task threads before the interrupt reaches us: they must stop first)."""
    from smallset.interrupt import request_stop

    request_stop()
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from smallset.errors import SmallsetWarning
    from smallset.safenames import terminal_safe

    if issubclass(category, SmallsetWarning):
        print(f"smallset: warning: {terminal_safe(message)}", file=sys.stderr)
    else:
        _DEFAULT_SHOWWARNING(message, category, filename, lineno, file, line)


_DEFAULT_SHOWWARNING = None


def stop_everything(own_process: bool) -> None:
    """After SIGINT/SIGTERM: stop work in other threads, mark open MLflow runs KILLED, stop the temporary
    Prefect server and (``own_process``: we are the command, not a caller's function) every process this
    command started (Dask workers…). A second signal meanwhile exits at once."""
    from smallset.interrupt import request_stop

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, lambda *_: os._exit(130))
        except ValueError:  # not the main thread
            pass
    request_stop()
    if "smallset.tracking" in sys.modules:
        sys.modules["smallset.tracking"].kill_open_runs()
    if "smallset.tasks.prefect_guard" in sys.modules:
        sys.modules["smallset.tasks.prefect_guard"].stop_ephemeral_servers()
    if own_process:
        import psutil

        children = psutil.Process().children(recursive=True)
        for c in children:
            try:
                c.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(children, timeout=5)
        for c in alive:
            try:
                c.kill()
            except psutil.Error:
                pass


def main(argv: list[str] | None = None) -> int:
    """The command line; ``argv`` None means this process is the ``smallset`` command (sys.argv)."""
    global _DEFAULT_SHOWWARNING
    import warnings

    own_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SMALLSET_DEBUG", "") in ("1", "true", "yes")
    if debug:
        os.environ["SMALLSET_DEBUG"] = "1"
    from smallset.interrupt import STOP

    STOP.clear()
    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    if _DEFAULT_SHOWWARNING is None:
        _DEFAULT_SHOWWARNING = warnings.showwarning
    warnings.showwarning = _show_warning
    code = 0
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
        if debug:
            import traceback

            traceback.print_exc()
        from smallset.flows.cli_parser import RunOptions

        flags = {n: (f.json_schema_extra or {}).get("flag") for n, f in RunOptions.model_fields.items()
                 if (f.json_schema_extra or {}).get("flag")}
        from smallset.safenames import terminal_safe

        print(f"smallset: error: {terminal_safe(e.for_command_line(flags))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt as e:
        code = 143 if isinstance(e, Terminated) else 130
        stop_everything(own_process)
        print(f"smallset: {'terminated' if code == 143 else 'interrupted'}; the run was stopped and nothing was "
              f"written.", file=sys.stderr)
        if own_process and any(t.is_alive() and not t.daemon for t in threading.enumerate()
                               if t is not threading.current_thread()):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # worker threads cannot be killed; they stop at their next check, unjoined
        return code
    finally:
        warnings.showwarning = _DEFAULT_SHOWWARNING
        for s, handler in old_handlers.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
