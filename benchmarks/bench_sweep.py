"""Sweep wall time with 1 and 2 Dask workers (issue 6): the same compare, side by side in one run.

    .venv/bin/python benchmarks/bench_sweep.py [--source builtin:mnist-mini] [--out sweep.md]

Cells: random at 4 fractions × 2 seeds (8 cells) + full data, model convnet-s, protocol quick, 1
evaluation run each. Each configuration runs in a fresh process (so each pays its own Prefect and
Dask start-up, as a user would) with its own MLflow store. ``--json FILE`` also appends one row per
configuration.
"""
from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import utils

WORKERS = (1, 2)


def sweep_seconds(workers: int, source: str) -> float:
    """Wall seconds of one ``smallset compare --runner dask --workers N`` in a scratch folder."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [utils.SMALLSET, "compare", "--source", source, "--methods", "random",
               "--fractions", "0.01,0.02,0.05,0.1", "--seeds", "0,1", "--model", "convnet-s", "--eval-runs", "1",
               "--runner", "dask", "--workers", str(workers), "--device", "cpu", "--output-dir", f"{tmp}/out",
               "--no-progress"]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=utils.scratch_env(Path(tmp)), cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def parse_args(argv=None):
    ap = utils.parser(__doc__, source="builtin:mnist-mini", json="")
    ap.add_argument("--out", default="/tmp/smallset-sweep.md", help="where the Markdown section is written")
    return ap.parse_args(argv)


def run(args) -> str:
    utils.print_header()
    rows = utils.RowWriter(args.json, peak_memory=False)
    times = {}
    for w in WORKERS:
        times[w] = sweep_seconds(w, args.source)
        rows.write({"source": args.source, "workers": w, "wall_s": round(times[w], 1)})
    text = f"""## Sweep wall time: 1 against 2 Dask workers

Measured {utils.utc_now()} on the 2-core CPU (no GPU). `compare` of random at fractions 0.01, 0.02, 0.05, 0.1 ×
seeds 0, 1 (8 cells) + the full-data row on `{args.source}`, model convnet-s, protocol quick, 1 evaluation run,
`--runner dask`; each configuration in a fresh process (Prefect start-up, Dask cluster start-up included).

| workers | wall seconds | speed-up |
|---|---|---|
| 1 | {times[1]:.1f} | 1.00× |
| 2 | {times[2]:.1f} | {times[1] / times[2]:.2f}× |

Command: `.venv/bin/python benchmarks/bench_sweep.py --source {args.source}`

Both configurations run back to back in this script; compare them with each other only.
"""
    Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    run(parse_args())
