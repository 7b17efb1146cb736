"""The command line: bad input gives one sentence, exit status 2 and writes nothing."""
import json

import pytest

from smallset import store
from smallset.flows.cli import main

from helpers import make_tiny_dataset


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["prune", "--fraction", "0"], "--fraction must lie in (0, 1]"),
    (["prune", "--fraction", "1.01"], "--fraction must lie in (0, 1]"),
    (["prune", "--method", "magic"], "Unknown method 'magic'"),
    (["prune", "--model", "vgg99"], "Unknown model 'vgg99'"),
    (["prune", "--source", "parquet:missing.parquet"], "No such file or directory"),
    (["prune", "--source", "s3:bucket"], "Unknown source type 's3'"),
    (["prune", "--protocol", "slow"], "Unknown protocol 'slow'"),
    (["prune", "--device", "tpu"], "Unknown device 'tpu'"),
    (["distill", "--method", "random"], "random is a pruning method"),
    (["distill", "--ipc", "0"], "--ipc must be a whole number of at least 1"),
    (["show", "missing.parquet"], "No such file"),
    (["compare", "--methods", "random,magic", "--ipcs", "1"], "Unknown method 'magic'"),
])
def test_bad_input_one_sentence_exit_2_nothing_written(in_tmp, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert list(in_tmp.iterdir()) == []


@pytest.mark.server
def test_ipc_above_smallest_class_is_refused(in_tmp, tiny_parquet, capsys, prefect_harness):
    # tiny_parquet has 20 training images per class
    code = main(["distill", "--source", f"parquet:{tiny_parquet}", "--ipc", "21", "--no-eval", "--no-progress"])
    assert code == 2
    assert "--ipc must lie between 1 and 20" in capsys.readouterr().err
    assert not (in_tmp / "smallset-out").exists()


def test_argparse_errors_are_one_sentence_too(in_tmp, capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--fraction", "lots"])
    assert e.value.code == 2
    assert "invalid float value" in capsys.readouterr().err


def test_show_prints_metadata(in_tmp, capsys):
    ds = make_tiny_dataset(n_per_class=2)
    meta = store.build_metadata(ds, method="random", kind="prune", params={}, seed=5, source="tiny",
                                source_digest="d" * 64, protocol="quick")
    store.write_reduced(ds, in_tmp / "x.parquet", meta)
    assert main(["show", "x.parquet", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seed"] == 5 and printed["method"] == "random"
    assert main(["show", "x.parquet"]) == 0
    out = capsys.readouterr().out
    assert "prune set by random" in out and "c0: 2" in out


def test_datasets_describes_a_source(in_tmp, tiny_parquet, capsys):
    assert main(["datasets", "--source", f"parquet:{tiny_parquet}", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"]["per_class"] == {"c0": 20, "c1": 20, "c2": 20}
    assert info["test"]["examples"] == 30 and len(info["train"]["digest"]) == 64


def test_method_options_appear_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    out = capsys.readouterr().out
    assert "--fraction" in out and "Methods:" in out


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.multiprocess
def test_bad_input_found_inside_a_prefect_flow_is_one_sentence_too(tmp_path, tiny_parquet_session):
    """Prefect would log the SmallsetError with its whole traceback (task failed, flow failed) before the
    command line's sentence; only the sentence is shown, unless --debug."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, SMALLSET_USE_PREFECT="1", TQDM_DISABLE="1")
    argv = [sys.executable, "-c", "import sys; from smallset.flows.cli import main; sys.exit(main())", "distill",
            "--source", f"parquet:{tiny_parquet_session}", "--ipc", "21", "--no-eval", "--iterations", "1"]
    quiet = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr, quiet.stderr
    lines = [line for line in quiet.stderr.splitlines() if line.strip() and not line.startswith("[smallset]")]
    assert lines == ["smallset: error: --ipc must lie between 1 and 20 (the smallest class of the source); got 21."]
    loud = subprocess.run(argv + ["--debug"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert loud.returncode == 2 and "Traceback" in loud.stderr and "Task run failed" in loud.stderr
    assert list(tmp_path.iterdir()) == []
