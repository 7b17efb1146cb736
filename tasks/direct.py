"""One cell run in this process, without Prefect: what ``smallset prune``/``distill`` do when no Prefect
server is configured (``PREFECT_API_URL`` unset).

A single reduced set needs no orchestration: starting a temporary Prefect server costs seconds and over a
gigabyte of memory, and leaves a process behind when the command is killed. The steps are the same as the
flows' (:mod:`smallset.tasks.steps`, :mod:`smallset.tasks.record`), so the file and the MLflow run are the
same; what Prefect adds (the preparation cache across runs, the run in the Prefect UI, retries) is what
``compare`` and the deployments keep.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from smallset.tasks import record, steps
from smallset.tasks.spec import Cell, check_budget_fits, default_output


def _transient(e: BaseException) -> bool:
    from smallset.errors import SmallsetError

    if isinstance(e, SmallsetError) or not isinstance(e, Exception):
        return False
    return "locked" in str(e).lower()  # sqlite "database is locked", wrapped by SQLAlchemy/MLflow


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _keep_previous(output: Path) -> Path | None:
    """A hard link to the file already at ``output`` (one the run may overwrite, ``--force``), under a
    temporary name of :mod:`smallset.atomic` (so a killed process's link is removed by the next write there);
    None when there is none or the file system cannot link."""
    from smallset.atomic import temp_path

    if not output.is_file():
        return None
    keep = temp_path(output)
    try:
        os.link(output, keep)
    except OSError:
        return None
    return keep


def _drop(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def run_cell(cell: Cell, retries: int = 2) -> dict:
    """prepare → reduce → evaluate (each evaluation model) → write and log; returns the result row.

    When anything stops the run after the file was written (a signal while the MLflow run is logged), the
    write is taken back: the file that was there before is put back, or the new file removed when there was
    none. A stopped run leaves the output as it found it."""
    from smallset.data import load_source

    opts = cell.options
    src = load_source(opts.source, data_root=opts.data_root, normalization=opts.normalization)
    check_budget_fits(cell, src.train)
    prepared, seconds = steps.prepare(cell, src.train) if steps.needs_prepare(cell) else (None, 0.0)
    red = steps.reduce(cell, src, prepared=prepared, prepare_seconds=seconds)
    evals = {} if opts.no_eval else {m: steps.evaluate_reduced(cell, red.dataset, src.test, m, red.info)
                                     for m in opts.evaluation_models()}
    output = Path(cell.output or default_output(src.id, cell))
    before = _identity(output)
    previous = _keep_previous(output)
    try:
        for attempt in range(retries + 1):
            try:
                return record.write_and_log(cell, src, red, evals, output)
            except BaseException as e:
                after = _identity(output)
                if after is not None and after != before:  # written by this attempt: take it back
                    if previous is None:
                        _drop(output)
                    else:
                        try:
                            os.replace(previous, output)  # the file that was there before, as it was
                            previous = _keep_previous(output)
                        except OSError:
                            pass
                if attempt < retries and _transient(e):
                    time.sleep(2)
                    continue
                raise
        raise AssertionError("unreachable")
    finally:
        _drop(previous)
