"""What every benchmark script shares (the torchvision ``references/`` pattern): the shared flags, torch
threads, a per-process source cache, the machine/load header, the one JSON-lines row writer, peak memory,
and the scratch environment of scripts that time the ``smallset`` command.

A script is ``parse_args(argv)`` (its own flags added to :func:`parser`) and ``run(args)``; run it as
``python benchmarks/NAME.py``, which puts this folder first on ``sys.path``, so the scripts import this
module and each other as plain modules and ``smallset`` always comes from the installed package. Nothing here
imports torch or smallset at import time (``bench_speed.py`` chooses which code ``smallset`` is first).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets"
DATASET_ALIASES = {"mnist-mini": "builtin:mnist-mini"}  # short names that are not folders under --data

# --- the shared flags ------------------------------------------------------------------------------------
SHARED_FLAGS: dict[str, dict[str, Any]] = {
    "threads": dict(type=int, help="torch CPU threads (0: leave torch's default)"),
    "json": dict(metavar="FILE", help="JSON-lines file the rows are appended to (empty: none)"),
    "device": dict(help="auto (GPU when there is one), cpu or cuda"),
    "data": dict(metavar="DIR", help="folder of the shared datasets: a dataset NAME is parquet:DIR/NAME"),
    "seed": dict(type=int, help="seed of every random choice"),
    "seeds": dict(type=int, nargs="+", metavar="SEED", help="seeds, one run of everything per seed"),
    "source": dict(help="source spec, e.g. parquet:../shared/datasets/mnist or builtin:mnist-mini"),
}


def parser(doc: str | None, **defaults: Any) -> argparse.ArgumentParser:
    """The script's parser: its docstring as description, plus the shared flags named here with the script's
    default, e.g. ``parser(__doc__, threads=0, json="/tmp/bench_x.jsonl", data=str(DATA))``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in defaults.items():
        ap.add_argument("--" + name, default=default, **SHARED_FLAGS[name])
    return ap


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def method_settings(pairs: list[str]) -> dict[str, dict[str, str]]:
    """Repeated ``--set NAME.OPTION=VALUE`` → ``{NAME: {OPTION: VALUE}}`` (dashes in OPTION read as ``_``;
    the values stay text: ``Method.make_config`` coerces them to the fields' types)."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        name, dot, option = key.partition(".")
        if not (name and dot and option and eq):
            raise SystemExit(f"--set {pair!r}: expected NAME.OPTION=VALUE, e.g. el2n.models=2")
        out.setdefault(name.strip(), {})[option.strip().replace("-", "_")] = value.strip()
    return out


def set_threads(threads: int) -> None:
    """torch's CPU threads; 0 leaves torch's default."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def device(name: str):
    """``auto`` (CUDA when there is a GPU, else CPU), ``cpu`` or ``cuda[:N]`` as a torch device."""
    from smallset.models import resolve_device

    return resolve_device(name)


# --- sources -----------------------------------------------------------------------------------------------
_SOURCES: dict[str, Any] = {}  # spec → loaded Source, for this process


def dataset_spec(name: str, data: str | os.PathLike = DATA) -> str:
    """A source spec as is (``builtin:mnist-mini``), a short alias, or a dataset folder under ``data``."""
    if ":" in name:
        return name
    return DATASET_ALIASES.get(name) or f"parquet:{Path(data) / name}"


def load(spec: str, keep_others: bool = True):
    """The source of ``spec``, loaded once per process. ``keep_others=False`` drops every other loaded source
    first (scripts whose peak memory should hold one dataset at a time)."""
    if spec not in _SOURCES:
        from smallset.data import load_source

        if not keep_others:
            _SOURCES.clear()
        t0 = time.perf_counter()
        src = _SOURCES[spec] = load_source(spec)
        test = len(src.test) if src.test is not None else 0
        print(f"# loaded {spec}: {len(src.train)} train / {test} test in {time.perf_counter() - t0:.1f}s",
              flush=True)
    return _SOURCES[spec]


def plan(text: str) -> list[tuple[str, int]]:
    """``"mnist:0,cifar10:1"`` → ``[("mnist", 0), ("cifar10", 1)]`` (the dataset part may hold a colon)."""
    return [(name, int(number)) for name, number in (part.rsplit(":", 1) for part in comma_list(text))]


# --- the machine/load header and the row writer ------------------------------------------------------------
def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (what ``uptime`` shows)."""
    return [round(x, 2) for x in os.getloadavg()]


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def git_commit() -> str | None:
    """The working tree's commit, with ``+dirty`` when tracked files differ from it; None outside git."""
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def torch_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def header() -> dict:
    """The machine and its load now: CPU, cores, torch version and threads, load, date, host, git commit."""
    torch = sys.modules.get("torch")  # threads only where the script uses torch (no import for it)
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch_version(),
            "threads": torch.get_num_threads() if torch is not None else None, "load": load_average(),
            "date": utc_now(), "host": platform.node(), "commit": git_commit()}


def print_header(**extra: Any) -> dict:
    """Print :func:`header` (plus the script's settings) as one ``# {…}`` line; returns it."""
    head = {**header(), **extra}
    print("# " + json.dumps(head, default=str), flush=True)
    return head


def command_line(argv: list[str] | None = None) -> str:
    return shlex.join(sys.argv if argv is None else argv)


class RowWriter:
    """The one row writer: each row is appended to ``path`` as one JSON line (no path: kept only) and
    stamped, without overwriting a key the row already has, with ``load`` (1/5/15 min), ``date``,
    ``command`` (the command line), ``commit`` and, with ``peak_memory``, ``peak_rss_mib`` (this process's
    peak resident set so far: scripts that time work in their own process)."""

    def __init__(self, path: str | os.PathLike | None, peak_memory: bool = True, argv: list[str] | None = None):
        self.path = Path(path) if path else None
        self.peak_memory = peak_memory
        self.command = command_line(argv)
        self.rows: list[dict] = []

    def stamp(self) -> dict:
        out = {"load": load_average(), "date": utc_now(), "command": self.command, "commit": git_commit()}
        if self.peak_memory:
            out["peak_rss_mib"] = peak_rss_mib()
        return out

    def write(self, row: dict) -> dict:
        row = {**row, **{k: v for k, v in self.stamp().items() if k not in row}}
        self.rows.append(row)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        return row


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON-lines file (``--table-only``)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# --- memory -----------------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """This process's peak resident set (``ru_maxrss``; KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status_bytes(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss_mib() -> float:
    """The resident set now, in MiB (nan where /proc is not there)."""
    try:
        return status_bytes("VmRSS") / 2 ** 20
    except (OSError, KeyError):
        return float("nan")


def clear_peak() -> bool:
    """Reset the process's peak resident set (``/proc/self/clear_refs``, Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def reset_peak() -> bool:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), then :func:`clear_peak`, so the next
    peak reading is the coming work's."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return clear_peak()


# --- the smallset command in a scratch folder --------------------------------------------------------------
SMALLSET = str(Path(sys.executable).with_name("smallset"))  # the command beside this interpreter


def scratch_env(scratch: Path) -> dict:
    """The environment of a ``smallset`` command run in ``scratch``: its own Prefect home, MLflow store and
    artifacts, no progress bars, no outside Prefect server."""
    env = dict(os.environ)
    env.update(PREFECT_HOME=str(scratch / "prefect-home"), MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}",
               SMALLSET_ARTIFACTS=str(scratch / "mlartifacts"), TQDM_DISABLE="1")
    env.pop("PREFECT_API_URL", None)
    return env
