"""Signals against a running ``smallset`` process: SIGKILL in the middle of a write, SIGINT and SIGTERM during a
run. Afterwards: no partial file under the output's name (and the next write cleans what SIGKILL left), no
process left behind (the temporary Prefect server included), the right exit status and one line of output.

The direct runs (no Prefect) are ``multiprocess``; the same through Prefect's temporary server are also
``server`` and ``slow``."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from smallset import store

pytestmark = pytest.mark.multiprocess

SMALLSET = [sys.executable, "-c", "import sys; from smallset.flows.cli import main; sys.exit(main())"]

STALL_WRITE = """
import pathlib, sys, time
import pyarrow.parquet as pq
real, ready = pq.write_table, pathlib.Path(sys.argv[1])
def stalled(table, where, **kw):   # write the whole temporary file, then hang before the rename
    real(table, where, **kw)
    ready.write_text(str(where))
    time.sleep(600)
pq.write_table = stalled
from smallset.flows.cli import main
sys.argv = ["smallset"] + sys.argv[2:]
sys.exit(main())
"""


def env(prefect: bool) -> dict:
    e = dict(os.environ, TQDM_DISABLE="1")
    e.pop("SMALLSET_USE_PREFECT", None)
    if prefect:
        e["SMALLSET_USE_PREFECT"] = "1"
    return e


def spawn(argv, cwd: Path, prefect: bool) -> tuple[subprocess.Popen, Path]:
    err = cwd / "stderr.txt"
    p = subprocess.Popen(argv, cwd=cwd, env=env(prefect), stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    return p, err


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(procs: list[psutil.Process], timeout: float = 20) -> None:
    gone, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:  # do not leave them to the next test
        p.kill()
    assert not alive, [" ".join(p.cmdline()) for p in alive if p.is_running()]


def cleanup(p: subprocess.Popen) -> None:
    if p.poll() is None:
        for c in descendants(p.pid):
            c.kill()
        p.kill()
        p.wait()


# --- SIGKILL during a write --------------------------------------------------------------------------------
def kill_during_write(tmp_path: Path, source: str, prefect: bool) -> None:
    (tmp_path / "stall.py").write_text(STALL_WRITE)
    ready = tmp_path / "ready"
    argv = [sys.executable, str(tmp_path / "stall.py"), str(ready), "prune", "--source", source, "--fraction", "0.5",
            "--no-eval", "--no-progress", "--model", "mlp", "--model-arg", "width=8", "--output", "out.parquet"]
    p, _ = spawn(argv, tmp_path, prefect)
    try:
        wait_for(ready.exists, 240, "the write to start", p)
        children = descendants(p.pid)
        if prefect:
            assert any("uvicorn" in " ".join(c.cmdline()) for c in children), "no temporary Prefect server"
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        assert_all_gone(children)  # the temporary server watches its parent
    finally:
        cleanup(p)
    assert not (tmp_path / "out.parquet").exists()
    leftovers = list(tmp_path.glob(".out.parquet.*.tmp"))
    assert len(leftovers) == 1  # what the killed writer left beside the output, under a hidden name
    # The next run writes the file and removes the dead writer's temporary file.
    done = subprocess.run(SMALLSET + ["prune", "--source", source, "--fraction", "0.5", "--no-eval", "--no-progress",
                                      "--model", "mlp", "--model-arg", "width=8", "--output", "out.parquet"],
                          cwd=tmp_path, env=env(False), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(store.read_reduced(tmp_path / "out.parquet")) == 30
    assert list(tmp_path.glob(".out.parquet.*.tmp")) == []


def test_sigkill_during_a_write_leaves_no_partial_file_and_no_process(tmp_path, tiny_parquet_session):
    kill_during_write(tmp_path, f"parquet:{tiny_parquet_session}", prefect=False)


@pytest.mark.server
@pytest.mark.slow
def test_sigkill_of_a_prefect_run_takes_its_temporary_server_along(tmp_path, tiny_parquet_session):
    kill_during_write(tmp_path, f"parquet:{tiny_parquet_session}", prefect=True)


# --- SIGINT / SIGTERM during a run ------------------------------------------------------------------------
def stop_a_run(tmp_path: Path, source: str, sig: int, prefect: bool) -> None:
    argv = SMALLSET + ["prune", "--source", source, "--fraction", "0.5", "--no-progress", "--model", "mlp",
                       "--model-arg", "width=8", "--eval-epochs", "1000000", "--eval-runs", "1",
                       "--output", "out.parquet"]
    p, err = spawn(argv, tmp_path, prefect)
    try:
        wait_for(lambda: "[smallset] random fraction=0.5" in err.read_text(), 240, "the run to start", p)
        time.sleep(2)  # inside the evaluation's training now
        assert p.poll() is None, err.read_text()
        children = descendants(p.pid)
        p.send_signal(sig)
        code = p.wait(60)
    finally:
        cleanup(p)
    text = err.read_text()
    assert code == (130 if sig == signal.SIGINT else 143), text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("smallset: ")]
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert lines == [f"smallset: {word}; the run was stopped and nothing was written."], text
    assert not (tmp_path / "out.parquet").exists() and list(tmp_path.glob(".out.parquet*")) == []
    assert_all_gone(children, timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_run_writes_nothing_and_leaves_nothing(tmp_path, tiny_parquet_session, sig):
    stop_a_run(tmp_path, f"parquet:{tiny_parquet_session}", sig, prefect=False)


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_prefect_run_and_its_server(tmp_path, tiny_parquet_session, sig):
    stop_a_run(tmp_path, f"parquet:{tiny_parquet_session}", sig, prefect=True)
