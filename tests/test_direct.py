"""A direct run (tasks/direct.py, no Prefect) that is stopped after its file was written takes the write back:
the file that was at the output before (``--force``) is put back byte for byte, or the new file is removed
when there was none; no temporary name is left beside it."""
import os

import pytest

from smallset.options import RunOptions
from smallset.tasks import direct, record
from smallset.tasks.spec import Budget, resolve_cell


def replace(output, data: bytes) -> None:
    """What smallset.atomic.write_atomic does: a new file renamed over the output."""
    new = output.with_name("new")
    new.write_bytes(data)
    os.replace(new, output)


def stopped_after_writing(monkeypatch):
    def write_then_stop(cell, src, red, evals, output):
        replace(output, b"the new file")
        raise KeyboardInterrupt  # a signal while the MLflow run is logged

    monkeypatch.setattr(record, "write_and_log", write_then_stop)


def out_dir(tmp_path):
    d = tmp_path / "out"  # the tiny source lives in tmp_path itself
    d.mkdir()
    return d


def cell_for(source, output):
    opts = RunOptions(source=f"parquet:{source}", model="mlp", model_kwargs={"width": 8}, device="cpu",
                      no_eval=True, progress=False)
    return resolve_cell("random", Budget(fraction=0.5), opts, output=str(output))


def test_a_stopped_overwrite_puts_the_previous_file_back(tmp_path, tiny_parquet, monkeypatch):
    d = out_dir(tmp_path)
    out = d / "out.parquet"
    out.write_bytes(b"the previous file")
    stopped_after_writing(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        direct.run_cell(cell_for(tiny_parquet, out))
    assert out.read_bytes() == b"the previous file"
    assert sorted(p.name for p in d.iterdir()) == ["out.parquet"]


def test_a_stopped_first_write_leaves_no_file(tmp_path, tiny_parquet, monkeypatch):
    d = out_dir(tmp_path)
    out = d / "out.parquet"
    stopped_after_writing(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        direct.run_cell(cell_for(tiny_parquet, out))
    assert list(d.iterdir()) == []


def test_a_finished_overwrite_leaves_only_the_new_file(tmp_path, tiny_parquet, monkeypatch):
    d = out_dir(tmp_path)
    out = d / "out.parquet"
    out.write_bytes(b"the previous file")

    def write(cell, src, red, evals, output):
        replace(output, b"the new file")
        return {"ok": True}

    monkeypatch.setattr(record, "write_and_log", write)
    assert direct.run_cell(cell_for(tiny_parquet, out)) == {"ok": True}
    assert out.read_bytes() == b"the new file"
    assert sorted(p.name for p in d.iterdir()) == ["out.parquet"]
