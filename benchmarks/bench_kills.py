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

import json
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import utils
from utils import SMALLSET


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


def parse_args(argv=None):
    ap = utils.parser(__doc__, seed=0, json=None)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--signal", choices=["KILL", "TERM", "INT"], default="KILL")
    ap.add_argument("--prefect", action="store_true", help="run through Prefect (SMALLSET_USE_PREFECT=1)")
    ap.add_argument("--span", type=float, default=1.0,
                    help="kill moments up to this fraction of a complete run (below 1: fewer runs finish first)")
    return ap.parse_args(argv)


def kill_once(out: Path, scratch: Path, env: dict, delay: float, sig: int) -> dict:
    """One run of :func:`command` sent ``sig`` after ``delay`` seconds (unless it finished first); what it left."""
    p = subprocess.Popen(command(out), env=env, cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    seen: dict[int, psutil.Process] = {}
    end = time.perf_counter() + delay
    while time.perf_counter() < end and p.poll() is None:
        seen.update((c.pid, c) for c in tree(p.pid) if c.pid not in seen)
        time.sleep(0.05)
    finished = p.poll() is not None
    if not finished:
        seen.update((c.pid, c) for c in tree(p.pid) if c.pid not in seen)
        p.send_signal(sig)
    p.wait(120)
    time.sleep(5)
    left = alive(list(seen.values()))
    for q in left:  # clean up so the next kill starts alone
        q.kill()
    return {"after_s": round(delay, 2), "finished_first": finished, "exit": p.returncode,
            "processes_left": len(left), "partial_file": not readable(out),
            "temp_files": len(list(scratch.glob(".out.parquet.*")))}


def run(args) -> dict:
    utils.print_header()
    rng = random.Random(args.seed)
    sig = getattr(signal, "SIG" + args.signal)
    with tempfile.TemporaryDirectory(prefix="smallset-kills-") as d:
        scratch = Path(d)
        env = utils.scratch_env(scratch) | ({"SMALLSET_USE_PREFECT": "1"} if args.prefect else {})
        out = scratch / "out.parquet"
        t0 = time.perf_counter()
        subprocess.run(command(out), env=env, cwd=scratch, capture_output=True, check=True, timeout=600)
        full = time.perf_counter() - t0
        out.unlink()
        print(f"# one complete run: {full:.1f} s; load {utils.load_average()[0]:.2f}", flush=True)
        kills = []
        for k in range(args.kills):
            kills.append(kill_once(out, scratch, env, rng.uniform(0.2, args.span * full), sig))
            print(json.dumps({"kill": k, **kills[-1]}), flush=True)
        final = subprocess.run(command(out), env=env, cwd=scratch, capture_output=True, timeout=600)
        summary = {"signal": args.signal, "prefect": args.prefect, "runs": args.kills,
                   "killed": sum(not k["finished_first"] for k in kills), "span": args.span, "run_s": round(full, 1),
                   "processes_left": sum(k["processes_left"] for k in kills),
                   "partial_files": sum(k["partial_file"] for k in kills),
                   "temp_files_max_between_runs": max([k["temp_files"] for k in kills] or [0]),
                   "final_run_exit": final.returncode,
                   "temp_files_after_next_write": len(list(scratch.glob(".out.parquet.*"))),
                   "output_reads_back": readable(out) and out.exists()}
        print(json.dumps(summary), flush=True)
    return utils.RowWriter(args.json, peak_memory=False).write(summary)


if __name__ == "__main__":
    run(parse_args())
