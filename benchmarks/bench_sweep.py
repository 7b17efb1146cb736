"""Sweep wall time with 1 and 2 Dask workers (issue 6): the same compare, side by side in one run.

    .venv/bin/python benchmarks/bench_sweep.py [--source builtin:mnist-mini] [--out sweep.md]

Cells: random at 4 fractions × 2 seeds (8 cells) + full data, model convnet-s, protocol quick, 1
evaluation run each. Each configuration runs in a fresh process (so each pays its own Prefect and
Dask start-up, as a user would) with its own MLflow store.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(workers: int, source: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PREFECT_HOME=f"{tmp}/prefect", MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
                   SMALLSET_ARTIFACTS=f"{tmp}/art", TQDM_DISABLE="1")
        cmd = [str(Path(sys.executable).with_name("smallset")), "compare", "--source", source, "--methods", "random",
               "--fractions", "0.01,0.02,0.05,0.1", "--seeds", "0,1", "--model", "convnet-s", "--eval-runs", "1",
               "--runner", "dask", "--workers", str(workers), "--device", "cpu", "--output-dir", f"{tmp}/out",
               "--no-progress"]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="builtin:mnist-mini")
    ap.add_argument("--out", default="/tmp/smallset-sweep.md", help="where the Markdown section is written")
    a = ap.parse_args()
    times = {w: run(w, a.source) for w in (1, 2)}
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""## Sweep wall time: 1 against 2 Dask workers

Measured {date} on the 2-core CPU (no GPU). `compare` of random at fractions 0.01, 0.02, 0.05, 0.1 ×
seeds 0, 1 (8 cells) + the full-data row on `{a.source}`, model convnet-s, protocol quick, 1 evaluation run,
`--runner dask`; each configuration in a fresh process (Prefect start-up, Dask cluster start-up included).

| workers | wall seconds | speed-up |
|---|---|---|
| 1 | {times[1]:.1f} | 1.00× |
| 2 | {times[2]:.1f} | {times[1] / times[2]:.2f}× |

Command: `.venv/bin/python benchmarks/bench_sweep.py --source {a.source}`

Both configurations run back to back in this script; compare them with each other only.
"""
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
