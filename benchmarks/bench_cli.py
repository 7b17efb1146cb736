"""Command-line start-up time and peak memory: ``smallset --help``, ``methods``, ``show``, a refusal, and one
whole ``prune`` run (wall time, and the peak RSS of the CLI process plus every process it started).

Run it under the shared CPU lock and report the load it ran under:
    flock /tmp/smallset-cpu.lock .venv/bin/python benchmarks/bench_cli.py [--runs 5] [--prune]

Each quick command runs ``--runs`` times in a fresh process in a scratch directory (its own PREFECT_HOME
and MLflow store); the median wall time is printed with the minimum and maximum. ``--prune`` adds one
``smallset prune --method random --fraction 0.1 --no-eval`` on builtin:mnist-mini, sampled every 50 ms with
psutil: the peak RSS of the CLI alone and the peak of the sum over its whole process tree (a temporary
Prefect server included). ``--json FILE`` appends one row with every measurement.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import utils
from utils import SMALLSET

QUICK_COMMANDS = {
    "--help": ["--help"],
    "methods": ["methods"],
    "show": ["show", "x.parquet"],
    "prune --help": ["prune", "--help"],
    "refusal (--fraction 0)": ["prune", "--fraction", "0"],
    "refusal (--source missing)": ["prune", "--source", "parquet:nope.parquet"],
}


def timed(argv: list[str], scratch: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=scratch, env=utils.scratch_env(scratch), capture_output=True)
    return time.perf_counter() - t0, p.returncode


def tree_sample(proc: psutil.Process) -> tuple[int, int, int]:
    """(RSS of proc, RSS summed over proc and its descendants, number of processes) in bytes."""
    try:
        own = total = proc.memory_info().rss
        children = proc.children(recursive=True)
    except psutil.Error:
        return 0, 0, 1
    for c in children:
        try:
            total += c.memory_info().rss
        except psutil.Error:
            pass
    return own, total, 1 + len(children)


def run_sampled(argv: list[str], scratch: Path) -> dict:
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=scratch, env=utils.scratch_env(scratch), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    proc = psutil.Process(p.pid)
    peak_own = peak_tree = 0
    max_procs = 1
    while p.poll() is None:
        own, tree, procs = tree_sample(proc)
        peak_own, peak_tree, max_procs = max(peak_own, own), max(peak_tree, tree), max(max_procs, procs)
        time.sleep(0.05)
    _, err = p.communicate()
    return {"argv": argv[1:], "rc": p.returncode, "wall_s": round(time.perf_counter() - t0, 2),
            "peak_rss_cli_mb": round(peak_own / 2**20), "peak_rss_tree_mb": round(peak_tree / 2**20),
            "max_processes": max_procs, "stderr_tail": err.decode(errors="replace")[-300:]}


def parse_args(argv=None):
    ap = utils.parser(__doc__, json=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prune", action="store_true", help="also time one whole prune run")
    return ap.parse_args(argv)


def run(args) -> dict:
    utils.print_header()
    results = {"load_before": os.getloadavg(), "runs": args.runs, "commands": {}}
    with tempfile.TemporaryDirectory(prefix="smallset-bench-cli-") as tmp:
        scratch = Path(tmp)
        subprocess.run([SMALLSET, "prune", "--fraction", "0.02", "--no-eval", "--output", "x.parquet"],  # for `show`
                       cwd=scratch, env=utils.scratch_env(scratch), check=True, capture_output=True)
        for name, argv in QUICK_COMMANDS.items():
            times = []
            for _ in range(args.runs):
                s, rc = timed([SMALLSET, *argv], scratch)
                times.append(s)
            results["commands"][name] = {"median_s": round(statistics.median(times), 3),
                                         "min_s": round(min(times), 3), "max_s": round(max(times), 3), "rc": rc}
            print(f"{name:<28} median {statistics.median(times):.3f} s  (min {min(times):.3f}, "
                  f"max {max(times):.3f}, rc {rc})", flush=True)
        if args.prune:
            r = results["prune"] = run_sampled([SMALLSET, "prune", "--method", "random", "--fraction", "0.1",
                                                "--no-eval", "--output", "p.parquet"], scratch)
            print(f"prune random 0.1 --no-eval: rc {r['rc']}, wall {r['wall_s']} s, peak RSS CLI "
                  f"{r['peak_rss_cli_mb']} MB, whole tree {r['peak_rss_tree_mb']} MB, "
                  f"{r['max_processes']} processes at most", flush=True)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    return utils.RowWriter(args.json, peak_memory=False).write(results)


if __name__ == "__main__":
    run(parse_args())
