"""Killed runs leave nothing behind: ``--kills`` runs of ``smallset prune --output`` (direct, and with
``--prefect`` through a temporary Prefect server), each killed at a random moment of its run with SIGKILL,
SIGTERM or SIGINT (issue 14). Counted after each kill: processes of the killed command still alive 5 s
later (its temporary server, workers), a partial file under the output name (one that does not read back),
hidden temporary files beside it; after all kills one more run writes the output, and the temporary files
left then are counted again (the write removes those of dead writers).

The moment of each kill is drawn uniformly between 0.2 s and ``--span`` × the duration of one complete run
(measured first), so the kills spread over start-up, selection, the write and the MLflow logging; a run that
finishes before its moment is counted as finished, not as a kill.

    flock /tmp/smallset-cpu.lock .venv/bin/python benchmarks/bench_kills.py --kills 20 --signal KILL
    flock /tmp/smallset-cpu.lock .venv/bin/python benchmarks/bench_kills.py --kills 6 --signal TERM --prefect
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_cli import SMALLSET, env_for  # noqa: E402


def command(out: Path) -> list[str]:
    return [SMALLSET, "prune", "--source", "builtin:mnist-mini", "--method", "random", "--fraction", "0.5",
            "--no-eval", "--no-progress", "--model", "mlp", "--force", "--output", str(out)]


def tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def readable(path: Path) -> bool:
    if not path.exists():
        return True  # no file is not a partial file
    from smallset import store

    try:
        store.read_reduced(path)
        return True
    except Exception:
        return False


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--signal", choices=["KILL", "TERM", "INT"], default="KILL")
    ap.add_argument("--prefect", action="store_true", help="run through Prefect (SMALLSET_USE_PREFECT=1)")
    ap.add_argument("--span", type=float, default=1.0,
                    help="kill moments up to this fraction of a complete run (below 1: fewer runs finish first)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="append the summary to this JSON-lines file")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    sig = getattr(signal, "SIG" + args.signal)
    with tempfile.TemporaryDirectory(prefix="smallset-kills-") as d:
        scratch = Path(d)
        env = env_for(scratch)
        if args.prefect:
            env["SMALLSET_USE_PREFECT"] = "1"
        out = scratch / "out.parquet"
        t0 = time.perf_counter()
        subprocess.run(command(out), env=env, cwd=scratch, capture_output=True, check=True, timeout=600)
        full = time.perf_counter() - t0
        out.unlink()
        print(f"# one complete run: {full:.1f} s; load {os.getloadavg()[0]:.2f}", flush=True)
        orphans = partial = finished_first = 0
        temps_after_kill = []
        for k in range(args.kills):
            delay = rng.uniform(0.2, args.span * full)
            p = subprocess.Popen(command(out), env=env, cwd=scratch, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            seen: list[psutil.Process] = []
            end = time.perf_counter() + delay
            while time.perf_counter() < end and p.poll() is None:
                seen += [c for c in tree(p.pid) if c.pid not in {s.pid for s in seen}]
                time.sleep(0.05)
            finished = p.poll() is not None
            finished_first += finished
            if not finished:
                seen += [c for c in tree(p.pid) if c.pid not in {s.pid for s in seen}]
                p.send_signal(sig)
            p.wait(120)
            time.sleep(5)
            left = alive(seen)
            orphans += len(left)
            for q in left:  # clean up so the next kill starts alone
                q.kill()
            bad = not readable(out)
            partial += bad
            temps = sorted(x.name for x in scratch.glob(".out.parquet.*"))
            temps_after_kill.append(len(temps))
            print(json.dumps({"kill": k, "after_s": round(delay, 2), "finished_first": finished,
                              "exit": p.returncode, "processes_left": len(left), "partial_file": bad,
                              "temp_files": len(temps)}), flush=True)
        final = subprocess.run(command(out), env=env, cwd=scratch, capture_output=True, timeout=600)
        temps_final = len(list(scratch.glob(".out.parquet.*")))
        summary = {"signal": args.signal, "prefect": args.prefect, "runs": args.kills,
                   "killed": args.kills - finished_first, "span": args.span, "run_s": round(full, 1),
                   "processes_left": orphans, "partial_files": partial,
                   "temp_files_max_between_runs": max(temps_after_kill or [0]),
                   "final_run_exit": final.returncode, "temp_files_after_next_write": temps_final,
                   "output_reads_back": readable(out) and out.exists(),
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "load1": round(os.getloadavg()[0], 2)}
        print(json.dumps(summary), flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
