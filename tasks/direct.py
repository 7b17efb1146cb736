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


def run_cell(cell: Cell, retries: int = 2) -> dict:
    """prepare → reduce → evaluate (each evaluation model) → write and log; returns the result row.

    When anything stops the run after the file was written (a signal while the MLflow run is logged), the
    new file is removed again: a stopped run leaves no output."""
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
    for attempt in range(retries + 1):
        try:
            return record.write_and_log(cell, src, red, evals, output)
        except BaseException as e:
            after = _identity(output)
            if after is not None and after != before:  # written by this attempt: take it back
                try:
                    os.unlink(output)
                except OSError:
                    pass
            if attempt < retries and _transient(e):
                time.sleep(2)
                continue
            raise
    raise AssertionError("unreachable")
