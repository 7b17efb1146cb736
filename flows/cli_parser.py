"""The ``smallset`` argument parser, generated from the data it exposes.

The shared options are the fields of :class:`~smallset.options.RunOptions` (their descriptions are the
help texts), a method's options are the fields of its config dataclass (``--method NAME --help`` lists
them with the paper's defaults). Nothing here runs anything: :mod:`smallset.flows.cli` holds the handlers.
"""
from __future__ import annotations

import argparse
import json
import typing
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError

from smallset.errors import SmallsetError
from smallset.options import RunOptions

EXIT_USAGE = 2
OPTION_PREFIX = "opt_"  # argparse dest of RunOptions fields
CONFIG_PREFIX = "cfg_"  # argparse dest of method config fields


def csv_of(type_):
    def parse(text: str):
        try:
            return [type_(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {type_.__name__}s, got {text!r}") from None

    return parse


def key_value(text: str) -> tuple[str, Any]:
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


# --- RunOptions → flags ----------------------------------------------------------------------------------
def _flag(name: str, info) -> str:
    extra = info.json_schema_extra or {}
    return extra.get("flag") or "--" + name.replace("_", "-")


def add_run_options(p: argparse.ArgumentParser, exclude: tuple[str, ...] = (), defaults: RunOptions | None = None
                    ) -> None:
    """One flag per :class:`RunOptions` field; unset flags keep the model's defaults (dest ``opt_NAME``)."""
    defaults = defaults or RunOptions()
    group = p.add_argument_group("run options (shared by prune, distill and compare)")
    for name, info in RunOptions.model_fields.items():
        extra = info.json_schema_extra or {}
        if name in exclude or extra.get("cli") is False:
            continue
        default = getattr(defaults, name)
        shown = f" (default: {default})" if default not in (None, [], {}) else ""
        kwargs: dict[str, Any] = {"dest": OPTION_PREFIX + name, "default": None,
                                  "help": (info.description or "") + shown}
        hint = info.annotation
        origin = typing.get_origin(hint)
        if hint is bool:
            kwargs.update(action="store_true")
        elif origin is typing.Literal:
            kwargs.update(choices=typing.get_args(hint))
        elif origin is dict:
            kwargs.update(action="append", type=key_value, metavar="KEY=VALUE")
        elif origin is list:
            kwargs.update(type=csv_of(typing.get_args(hint)[0]), metavar="A,B")
        else:
            base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
            kwargs.update(type=base, metavar=name.upper())
        group.add_argument(_flag(name, info), **kwargs)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks and Prefect's logs of bad input")


def run_options_from(args: argparse.Namespace, base: RunOptions | None = None, **fixed) -> RunOptions:
    """The :class:`RunOptions` of parsed ``args`` over ``base``, validated; one sentence on bad values."""
    given = {k[len(OPTION_PREFIX):]: v for k, v in vars(args).items() if k.startswith(OPTION_PREFIX) and v is not None}
    if isinstance(given.get("model_kwargs"), list):
        given["model_kwargs"] = dict(given["model_kwargs"])
    given["progress"] = not getattr(args, "no_progress", False)
    given.update(fixed)
    return validated_options({**(base or RunOptions()).model_dump(), **given})


def validated_options(values: dict) -> RunOptions:
    try:
        return RunOptions(**values)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else "options"
        raise SmallsetError(f"{name}: {err['msg'].rstrip('.')}; got {err.get('input')!r}.", option=name) from None


# --- method config → flags -------------------------------------------------------------------------------
def add_config_options(p: argparse.ArgumentParser, name: str, info: dict) -> None:
    """Every field of a method's config dataclass as --field-name (default None = the paper's default);
    ``info`` is the method's entry in the catalogue (:mod:`smallset.tasks.catalog`: no torch needed)."""
    group = p.add_argument_group(f"{name} options ({info['doc']})")
    types = {"int": int, "float": float, "str": str}
    for f in info["fields"]:
        flag = "--" + f["name"].replace("_", "-")
        help_ = f["help"] + f" (default: {f['default']})"
        dest = CONFIG_PREFIX + f["name"]
        if f["type"] == "bool":
            group.add_argument(flag, dest=dest, default=None, action=argparse.BooleanOptionalAction, help=help_)
        elif f["type"] == "choice":
            group.add_argument(flag, dest=dest, default=None, choices=f["choices"], help=help_)
        else:
            simple = f["type"] in types
            group.add_argument(flag, dest=dest, default=None, type=types.get(f["type"], str),
                               metavar=f["name"].upper() if simple else "JSON", help=help_)


def config_overrides(args: argparse.Namespace) -> dict:
    return {k[len(CONFIG_PREFIX):]: v for k, v in vars(args).items() if k.startswith(CONFIG_PREFIX) and v is not None}


def method_from_argv(argv: list[str], default: str) -> str:
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return default


# --- the parser --------------------------------------------------------------------------------------------
def add_fraction(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fraction", type=float, default=0.1,
                   help="fraction of the source to keep, in (0, 1] (default: 0.1)")


def add_ipc_and_checkpoints(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ipc", type=int, default=10, help="synthetic images per class (default: 10)")
    p.add_argument("--checkpoint-dir", default=None, help="save a checkpoint here every --checkpoint-every iterations")
    p.add_argument("--checkpoint-every", type=int, default=0, help="iterations between checkpoints (0: none)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")


@dataclass(frozen=True)
class MethodCommand:
    """A command that runs one method of a kind (its registry): its default method, its help and its budget."""

    default_method: str
    help: str
    add_budget: Callable[[argparse.ArgumentParser], None]


METHOD_COMMANDS = {
    "prune": MethodCommand("random", "select a coreset", add_fraction),
    "distill": MethodCommand("dm", "learn a synthetic set", add_ipc_and_checkpoints),
}


def build_parser(argv: list[str], description: str) -> argparse.ArgumentParser:
    from smallset.tasks import catalog

    parser = Parser(prog="smallset", description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Prefect's logs of bad input")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))  # after --debug & co.
    command, rest = (argv[at], argv[at + 1:]) if at < len(argv) else (None, [])
    for kind, spec in METHOD_COMMANDS.items():
        default_method = spec.default_method
        # Method names only for the command asked (the catalogue is cached, but built once with torch).
        names = ", ".join(catalog.method_names(kind)) if command == kind else "see `smallset methods`"
        p = sub.add_parser(kind, help=spec.help,
                           description=f"Methods: {names}. Add --method NAME --help for its options.")
        p.add_argument("--method", default=default_method, help=f"one of {names} (default: {default_method})")
        spec.add_budget(p)
        p.add_argument("--output", default=None, help="the Parquet file to write (default: smallset-out/…)")
        add_run_options(p)
        if command == kind:
            method = method_from_argv(rest, default_method)
            info = catalog.catalog()["methods"].get(method)
            if info is not None and info["kind"] == kind:
                add_config_options(p, method, info)

    compare_defaults = RunOptions(eval_runs=1)
    c = sub.add_parser("compare", help="compare methods side by side at matched budgets, plus full data")
    c.add_argument("--methods", type=csv_of(str), default=["random"], help="comma-separated method names")
    c.add_argument("--fractions", type=csv_of(float), default=[], help="pruning budgets, e.g. 0.01,0.05")
    c.add_argument("--ipcs", type=csv_of(int), default=[],
                   help="images per class, e.g. 1,10 (pruning runs at the matching fraction)")
    c.add_argument("--seeds", type=csv_of(int), default=[0], help="seeds, e.g. 0,1,2")
    c.add_argument("--set", action="append", type=key_value, default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. dm.iterations=200 (repeatable)")
    c.add_argument("--output-dir", default="smallset-out", help="where the Parquet files and results.csv go")
    c.add_argument("--no-full", action="store_true", help="skip the full-data reference row")
    add_runner_options(c)
    c.add_argument("--dask-address", default=None, help="an existing Dask scheduler, e.g. tcp://host:8786")
    c.add_argument("--gpus", type=int, default=0,
                   help="local Dask cluster with one worker per GPU (0: no GPU placement)")
    c.add_argument("--no-report", action="store_true", help="skip the HTML/Markdown comparison report")
    add_run_options(c, exclude=("seed",), defaults=compare_defaults)

    d = sub.add_parser(
        "demo", help="compare every method on builtin:mnist-mini in a few minutes",
        description="Runs every registered method (selectors at 2 %, the fraction matching 10 images per class; "
                    "condensers at 10 images per class) on builtin:mnist-mini (500 training and 100 test images per "
                    "class of MNIST, shipped with the package) with model convnet-s, each method's small demo "
                    "settings and one evaluation run under the demo protocol, plus the full-data reference, "
                    "through the same Prefect flow and MLflow logging as `smallset compare`. Prints both comparison "
                    "tables and writes the Parquet files, results.csv and report.html in a new compare-DATE-TIME "
                    "folder under --output-dir. About 8 minutes on a 2-core CPU (BENCHMARKS.md, \"smallset demo\").")
    d.add_argument("--output-dir", default="smallset-out", help="where the Parquet files and the report go")
    d.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
    add_runner_options(d)

    r = sub.add_parser("report", help="render the HTML/Markdown comparison report of a compare")
    r.add_argument("--run-id", default=None, help="the compare's MLflow parent run (default: the latest compare)")
    r.add_argument("--output-dir", default=None,
                   help="where report.html/report.md go (default: smallset-out/report-RUN)")

    ds = sub.add_parser("datasets", help="describe a source: shape, counts per class, digest")
    ds.add_argument("--source", default="builtin:mnist-mini", help=RunOptions.model_fields["source"].description)
    ds.add_argument("--data-root", default=None, help=RunOptions.model_fields["data_root"].description)
    ds.add_argument("--normalization", default="auto", help=RunOptions.model_fields["normalization"].description)
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


def add_runner_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runner", default="threads", choices=["threads", "dask"],
                   help="where cells run: threads in this process, or Dask worker processes (default: threads)")
    p.add_argument("--workers", type=int, default=1, help="parallel threads or Dask worker processes (default: 1)")
