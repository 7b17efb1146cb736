"""Command-line start-up time and peak memory: ``smallset --help``, ``methods``, ``show``, a refusal, and one
whole ``prune`` run (wall time, and the peak RSS of the CLI process plus every process it started).

Run it under the shared CPU lock and report the load it ran under:
    flock /tmp/smallset-cpu.lock .venv/bin/python benchmarks/bench_cli.py [--runs 5] [--prune]

Each quick command runs ``--runs`` times in a fresh process in a scratch directory (its own PREFECT_HOME
and MLflow store); the median wall time is printed with the minimum and maximum. ``--prune`` adds one
``smallset prune --method random --fraction 0.1 --no-eval`` on builtin:mnist-mini, sampled every 50 ms with
psutil: the peak RSS of the CLI alone and the peak of the sum over its whole process tree (a temporary
Prefect server included).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SMALLSET = str(ROOT / ".venv" / "bin" / "smallset")


def env_for(scratch: Path) -> dict:
    env = dict(os.environ)
    env.update(PREFECT_HOME=str(scratch / "prefect-home"), MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}",
               SMALLSET_ARTIFACTS=str(scratch / "mlartifacts"), TQDM_DISABLE="1")
    env.pop("PREFECT_API_URL", None)
    return env


def timed(argv: list[str], scratch: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=scratch, env=env_for(scratch), capture_output=True)
    return time.perf_counter() - t0, p.returncode


def tree_sample(proc: psutil.Process) -> tuple[int, int]:
    """(RSS of proc, RSS summed over proc and its descendants) in bytes."""
    try:
        own = proc.memory_info().rss
        total = own
        for c in proc.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return own, total
    except psutil.Error:
        return 0, 0


def run_sampled(argv: list[str], scratch: Path) -> dict:
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=scratch, env=env_for(scratch), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = psutil.Process(p.pid)
    peak_own = peak_tree = 0
    max_procs = 1
    while p.poll() is None:
        own, tree = tree_sample(proc)
        peak_own, peak_tree = max(peak_own, own), max(peak_tree, tree)
        try:
            max_procs = max(max_procs, 1 + len(proc.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = p.communicate()
    return {"argv": argv[1:], "rc": p.returncode, "wall_s": round(time.perf_counter() - t0, 2),
            "peak_rss_cli_mb": round(peak_own / 2**20), "peak_rss_tree_mb": round(peak_tree / 2**20),
            "max_processes": max_procs, "stderr_tail": err.decode(errors="replace")[-300:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prune", action="store_true", help="also time one whole prune run")
    ap.add_argument("--json", default=None, help="append the results to this JSON-lines file")
    a = ap.parse_args()
    results = {"load_before": os.getloadavg(), "runs": a.runs, "commands": {}}
    with tempfile.TemporaryDirectory(prefix="smallset-bench-cli-") as tmp:
        scratch = Path(tmp)
        # a reduced file for `show`
        subprocess.run([SMALLSET, "prune", "--fraction", "0.02", "--no-eval", "--output", "x.parquet"],
                       cwd=scratch, env=env_for(scratch), check=True, capture_output=True)
        cases = {
            "--help": [SMALLSET, "--help"],
            "methods": [SMALLSET, "methods"],
            "show": [SMALLSET, "show", "x.parquet"],
            "prune --help": [SMALLSET, "prune", "--help"],
            "refusal (--fraction 0)": [SMALLSET, "prune", "--fraction", "0"],
            "refusal (--source missing)": [SMALLSET, "prune", "--source", "parquet:nope.parquet"],
        }
        for name, argv in cases.items():
            times = []
            for _ in range(a.runs):
                s, rc = timed(argv, scratch)
                times.append(s)
            results["commands"][name] = {"median_s": round(statistics.median(times), 3),
                                         "min_s": round(min(times), 3), "max_s": round(max(times), 3), "rc": rc}
            print(f"{name:<28} median {statistics.median(times):.3f} s  (min {min(times):.3f}, "
                  f"max {max(times):.3f}, rc {rc})", flush=True)
        if a.prune:
            r = run_sampled([SMALLSET, "prune", "--method", "random", "--fraction", "0.1", "--no-eval",
                             "--output", "p.parquet"], scratch)
            results["prune"] = r
            print(f"prune random 0.1 --no-eval: rc {r['rc']}, wall {r['wall_s']} s, peak RSS CLI "
                  f"{r['peak_rss_cli_mb']} MB, whole tree {r['peak_rss_tree_mb']} MB, "
                  f"{r['max_processes']} processes at most", flush=True)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
