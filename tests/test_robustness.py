"""Bad input is one sentence, writes survive crashes, non-finite results are refused, names from data are
made safe, and round trips keep weights and indices (issue 14). Unit tests: no server, no subprocess."""
import json
import os
import pickle
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from smallset import store
from smallset.context import RunContext
from smallset.data import load_source
from smallset.errors import SmallsetError, SmallsetWarning
from smallset.flows.cli import main

from helpers import make_tiny_dataset, write_hf_parquet


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _meta(ds, **kw):
    return store.build_metadata(ds, method="random", kind="prune", params={}, seed=0, source="tiny",
                                source_digest="d" * 64, protocol="quick", **kw)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert [line.startswith("smallset: error: ") for line in lines].count(True) == 1, err
    return next(line for line in lines if line.startswith("smallset: error: "))


# --- atomic writes: leftovers, umask, errors -----------------------------------------------------------
def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_next_write_removes_the_temporary_file_of_a_killed_writer(tmp_path):
    ds = make_tiny_dataset(n_per_class=2)
    target = tmp_path / "out.parquet"
    stale = tmp_path / f".out.parquet.{dead_pid()}.0123abcd.tmp"  # what kill -9 mid-write leaves
    stale.write_bytes(b"partial")
    live = tmp_path / f".out.parquet.{os.getppid()}.0123abcd.tmp"  # a writer that still runs: left alone
    live.write_bytes(b"in progress")
    other = tmp_path / f".other.parquet.{dead_pid()}.0123abcd.tmp"  # another target's: not ours to judge
    other.write_bytes(b"x")
    store.write_reduced(ds, target, _meta(ds))
    assert not stale.exists() and live.exists() and other.exists()
    assert store.read_reduced(target).same_content(ds)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    ds = make_tiny_dataset(n_per_class=2)
    old = os.umask(umask)
    try:
        path = store.write_reduced(ds, tmp_path / "out.parquet", _meta(ds))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_permission_errors_are_one_sentence(tmp_path, monkeypatch):
    ds = make_tiny_dataset(n_per_class=2)

    def denied(src, dst):
        raise PermissionError(1, "Operation not permitted", str(dst))

    monkeypatch.setattr(os, "replace", denied)  # e.g. replacing an immutable file
    with pytest.raises(SmallsetError, match=r"output .*out.parquet cannot be written \(Operation not permitted\); "
                                            r"choose a writable place"):
        store.write_reduced(ds, tmp_path / "out.parquet", _meta(ds))
    assert list(tmp_path.iterdir()) == []


def test_an_output_inside_a_file_is_one_sentence(tmp_path):
    ds = make_tiny_dataset(n_per_class=2)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SmallsetError, match="afile is a file, not a directory"):
        store.write_reduced(ds, tmp_path / "afile" / "sub" / "out.parquet", _meta(ds))


@pytest.mark.parametrize("output, message", [
    ("afile/x.parquet", "is inside afile, which is a file"),
    ("afile/deeper/x.parquet", "is inside afile, which is a file"),
    (".", "is a directory"),
    ("/dev/null", "exists and is not a regular file"),
])
def test_cli_refuses_unwritable_outputs_before_any_work(in_tmp, capsys, output, message):
    (in_tmp / "afile").write_text("x")
    assert main(["prune", "--output", output, "--no-eval"]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in in_tmp.iterdir()) == ["afile"]


def test_cli_refuses_a_read_only_directory(in_tmp, capsys, monkeypatch):
    (in_tmp / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if str(p).endswith("ro") else real(p, m, **k))
    assert main(["prune", "--output", "ro/x.parquet", "--no-eval"]) == 2
    assert "ro is not writable; choose a writable place" in one_error_line(capsys.readouterr().err)


# --- labels and other malformed sources --------------------------------------------------------------
def _hf_with_labels(path, labels, label_type):
    ds = make_tiny_dataset(n_per_class=2, num_classes=2, size=8)
    write_hf_parquet(ds, path)
    t = pq.read_table(path)
    t = t.set_column(t.column_names.index("label"), "label", pa.array(labels, type=label_type))
    pq.write_table(t, path)
    return path


@pytest.mark.parametrize("labels, label_type, message", [
    ([0, 1, None, 1], pa.int64(), "1 missing (null) labels"),
    (["a", "b", "a", "b"], pa.string(), "holds string values; labels must be integer class indices"),
    ([0.0, 1.5, 0.0, 1.0], pa.float64(), "holds 1.5 in row 1; labels must be whole numbers"),
    ([0.0, float("nan"), 0.0, 1.0], pa.float64(), "holds nan in row 1"),
    ([0, -1, 0, 1], pa.int64(), "holds the negative label -1"),
    ([0, 10 ** 12, 0, 1], pa.int64(), "holds the label 1000000000000"),
])
def test_bad_labels_are_one_sentence(tmp_path, labels, label_type, message):
    path = _hf_with_labels(tmp_path / "train.parquet", labels, label_type)
    with pytest.raises(SmallsetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_source(f"parquet:{path}")


def test_whole_float_labels_are_read_as_classes(tmp_path):
    path = _hf_with_labels(tmp_path / "train.parquet", [0.0, 1.0, 0.0, 1.0], pa.float64())
    assert load_source(f"parquet:{path}").train.labels.tolist() == [0, 1, 0, 1]


# --- budgets that need the data --------------------------------------------------------------------------
def test_a_fraction_keeping_no_example_of_a_class_is_refused(in_tmp, tiny_parquet, capsys):
    assert main(["prune", "--source", f"parquet:{tiny_parquet}", "--fraction", "1e-7", "--no-eval"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--fraction 1e-07 keeps 0 of 60 examples" in line
    assert "the smallest --fraction that keeps one example per class is 0.05" in line
    assert [p.name for p in in_tmp.iterdir()] == ["tinyset"]


def test_the_smallest_fraction_named_is_accepted(in_tmp, tiny_parquet, capsys):
    assert main(["prune", "--source", f"parquet:{tiny_parquet}", "--fraction", "0.05", "--no-eval",
                 "--output", "x.parquet", "--no-progress"]) == 0
    assert store.read_reduced(in_tmp / "x.parquet").class_counts() == [1, 1, 1]


# --- non-finite results -------------------------------------------------------------------------------
def _ctx(tmp_path=None, **kw):
    return RunContext(seed=1, model="convnet-s", model_kwargs={"width": 8},
                      checkpoint_dir=tmp_path, **kw)


def test_a_diverging_condenser_stops_keeps_the_finite_checkpoint_and_names_the_option(tmp_path):
    from smallset.distill.dm import DMCondenser

    class Diverging(DMCondenser):
        def step(self, it):
            loss = super().step(it)
            if it == 3:
                with torch.no_grad():
                    self.syn.fill_(float("nan"))
            return loss

    ds = make_tiny_dataset(n_per_class=4, num_classes=2, size=8)
    cfg = DMCondenser.make_config({"iterations": 8, "batch_real": 2, "lr_img": 0.5}, 1)
    with pytest.raises(SmallsetError, match=r"dm diverged: the synthetic images hold NaN or infinite values at "
                                            r"iteration 4\. Lower lr_img \(now 0\.5\).*no dataset was written; the "
                                            r"last finite checkpoint \(iteration 2\) is kept") as e:
        Diverging(cfg).condense(ds, 1, _ctx(tmp_path, checkpoint_every=2))
    assert e.value.option == "lr_img"
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 2 and bool(torch.isfinite(state["state"]["syn"]).all())


def test_a_nan_loss_stops_the_condenser_at_once():
    from smallset.distill.dm import DMCondenser

    calls = []

    class NanLoss(DMCondenser):
        def step(self, it):
            calls.append(it)
            super().step(it)
            return float("nan")

    ds = make_tiny_dataset(n_per_class=4, num_classes=2, size=8)
    cfg = DMCondenser.make_config({"iterations": 5, "batch_real": 2}, 1)
    with pytest.raises(SmallsetError, match="the loss is nan at iteration 1"):
        NanLoss(cfg).condense(ds, 1, _ctx())
    assert calls == [0]


def test_a_selector_with_non_finite_scores_is_refused():
    from smallset.method import Prepared
    from smallset.prune.base import SELECTORS

    cls = SELECTORS.get("forgetting")
    ds = make_tiny_dataset(n_per_class=4, num_classes=2, size=8)
    scores = torch.arange(len(ds), dtype=torch.float32)
    scores[3] = float("nan")
    with pytest.raises(SmallsetError, match=r"forgetting produced non-finite scores .* Lower lr \(now") as e:
        cls(cls.make_config()).reduce(ds, 0.5, _ctx(), prepared=Prepared(scores))
    assert e.value.option == "lr"


def test_a_diverging_evaluation_is_one_sentence():
    from smallset.train import evaluate

    ds = make_tiny_dataset(n_per_class=4, num_classes=2, size=8)
    ds.images = ds.images * 1e38  # finite pixels, but training on them overflows
    with pytest.raises(SmallsetError, match="The evaluation training diverged: its loss is"):
        evaluate(ds, make_tiny_dataset(n_per_class=2, num_classes=2, size=8), "mlp", "quick", runs=1,
                 model_kwargs={"width": 8})


def test_non_finite_sets_are_never_written(tmp_path):
    ds = make_tiny_dataset(n_per_class=2)
    ds.images[0, 0, 0, 0] = float("inf")
    with pytest.raises(SmallsetError, match="non-finite pixels"):
        store.write_reduced(ds, tmp_path / "x.parquet", _meta(ds))
    ds = make_tiny_dataset(n_per_class=2)
    ds.weights = torch.ones(len(ds))
    ds.weights[1] = float("nan")
    with pytest.raises(SmallsetError, match="non-finite weights"):
        store.write_reduced(ds, tmp_path / "x.parquet", _meta(ds))
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_cannot_be_built_is_one_sentence():
    from smallset.models import create_model

    with pytest.raises(SmallsetError, match=r"Model 'convnet' cannot be built with width=0 .*ZeroDivisionError") as e:
        create_model("convnet", 1, 10, (28, 28), width=0)
    assert e.value.for_command_line({"model_kwargs": "--model-arg"}).endswith("give other --model-arg.")


# --- round trips ---------------------------------------------------------------------------------------
def test_weights_multiply_through_repeated_pruning():
    ds = make_tiny_dataset(n_per_class=4)
    first = ds.subset(torch.tensor([0, 2, 4, 6]), torch.tensor([2.0, 3.0, 4.0, 5.0]))
    again = first.subset(torch.tensor([1, 3]), torch.tensor([10.0, 0.5]))
    assert again.weights.tolist() == [30.0, 2.5]
    assert first.subset(torch.tensor([0, 1])).weights.tolist() == [2.0, 3.0]  # no new weights: kept


def test_a_repruned_set_indexes_the_file_it_was_made_from(in_tmp, tiny_parquet):
    """docs/FORMAT.md: source_index is the row in the source named in the metadata."""
    assert main(["prune", "--source", f"parquet:{tiny_parquet}", "--fraction", "0.5", "--no-eval",
                 "--output", "a.parquet", "--no-progress", "--seed", "1"]) == 0
    first = store.read_reduced(in_tmp / "a.parquet")
    assert main(["prune", "--source", "parquet:a.parquet", "--fraction", "0.5", "--no-eval",
                 "--output", "b.parquet", "--no-progress", "--seed", "2"]) == 0
    second = store.read_reduced(in_tmp / "b.parquet")
    assert second.meta["source"] == "parquet:a.parquet"
    idx = second.source_index
    assert int(idx.max()) < len(first)
    assert torch.equal(second.images, first.images[idx]) and torch.equal(second.labels, first.labels[idx])


def test_a_reduced_file_without_its_metadata_warns(in_tmp, capsys):
    ds = make_tiny_dataset(n_per_class=3, size=8)
    path = store.write_reduced(ds, in_tmp / "r.parquet", _meta(ds))
    t = pq.read_table(path)
    pq.write_table(t.replace_schema_metadata({b"huggingface": t.schema.metadata[b"huggingface"]}), path)
    with pytest.warns(SmallsetWarning, match="only its 8-bit PNG previews and labels are read"):
        load_source(f"parquet:{path}")
    assert main(["datasets", "--source", f"parquet:{path}"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("smallset: warning: ") and err.count("\n") == 1 and "Traceback" not in err


# --- unsafe resume ------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # loading this pickle creates the marker file


def test_a_crafted_pickle_checkpoint_is_refused_without_running_code(tmp_path):
    from smallset.distill.dm import DMCondenser

    marker = tmp_path / "pwned"
    ck = tmp_path / "ck"
    ck.mkdir()
    torch.save({"iteration": 1, "losses": [], "method": "dm", "config": {}, "state": _Evil(str(marker)),
                "generators": {}}, ck / "checkpoint.pt")
    ds = make_tiny_dataset(n_per_class=4, num_classes=2, size=8)
    cfg = DMCondenser.make_config({"iterations": 2, "batch_real": 2}, 1)
    with pytest.raises(SmallsetError, match="cannot be read safely"):
        DMCondenser(cfg).condense(ds, 1, _ctx(ck, checkpoint_every=1, resume=True))
    assert not marker.exists()
    with open(ck / "checkpoint.pt", "wb") as f:  # a plain (non-zip) pickle too
        pickle.dump({"state": _Evil(str(marker))}, f)
    with pytest.raises(SmallsetError, match="cannot be read safely"):
        DMCondenser(cfg).condense(ds, 1, _ctx(ck, checkpoint_every=1, resume=True))
    assert not marker.exists()


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from smallset.distill.dm import DMCondenser

    stale = tmp_path / f".checkpoint.pt.{dead_pid()}.deadbeef.tmp"
    stale.write_bytes(b"partial")
    ds = make_tiny_dataset(n_per_class=4, num_classes=2, size=8)
    cfg = DMCondenser.make_config({"iterations": 3, "batch_real": 2}, 1)
    DMCondenser(cfg).condense(ds, 1, _ctx(tmp_path, checkpoint_every=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


# --- MLflow: a stopped run is KILLED --------------------------------------------------------------------------
def test_a_run_stopped_by_a_signal_is_marked_killed():
    from mlflow.tracking import MlflowClient

    from smallset import tracking

    with pytest.raises(KeyboardInterrupt):
        with tracking.run("tiny", "stopped") as run_id:
            raise KeyboardInterrupt
    assert MlflowClient(tracking.tracking_uri()).get_run(run_id).info.status == "KILLED"
    parent = tracking.start_parent("tiny", "open parent")
    assert parent in tracking.kill_open_runs()
    assert MlflowClient(tracking.tracking_uri()).get_run(parent).info.status == "KILLED"


# --- names from data ----------------------------------------------------------------------------------------
def test_safe_names():
    from smallset.safenames import markdown_text, safe_filename, terminal_safe

    assert safe_filename("<img src=x onerror=alert(2)>") == "img-src=x-onerror=alert-2"
    assert "/" not in safe_filename("a/../../etc/passwd") and safe_filename("..") == "x"
    assert safe_filename(".hidden") == "hidden" and safe_filename("ipc=1") == "ipc=1"
    assert terminal_safe("c\x1b[2Jx\u202e") == "c\\x1b[2Jx\\u202e"
    assert markdown_text("a|b <img src=x>[l](u)") == "a\\|b &lt;img src=x&gt;\\[l\\](u)"


def test_show_and_datasets_escape_control_characters(in_tmp, capsys):
    ds = make_tiny_dataset(n_per_class=2, num_classes=2, size=8)
    ds.classes = ["red\x1b[31m", "line\nbreak"]
    store.write_reduced(ds, in_tmp / "x.parquet", _meta(ds))
    write_hf_parquet(ds, in_tmp / "train.parquet")
    assert main(["show", "x.parquet"]) == 0
    assert main(["datasets", "--source", "parquet:train.parquet"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "red\\x1b[31m: 2" in out and "line\\x0abreak: 2" in out


def test_report_file_names_from_tags_are_safe(monkeypatch):
    from smallset import report

    monkeypatch.setattr(report, "image_grid", lambda r: b"png")
    monkeypatch.setattr(report, "run_scores", lambda r: None)
    monkeypatch.setattr(report, "class_counts", lambda rows: {})
    rows = [{"method": "<img src=x onerror=alert(2)>", "kind": "distill", "budget": "ipc=1", "accuracy": {},
             "run_id": "r", "seed": "0", "n_examples": 1},
            {"method": "a/b", "kind": "distill", "budget": "ipc=1", "accuracy": {}, "run_id": "s", "seed": "0",
             "n_examples": 1}]
    names = list(report.figures(rows, []))
    assert names == ["grid_img-src=x-onerror=alert-2_ipc=1.png", "grid_a-b_ipc=1.png"]
    md = report.markdown("t", ["method"], [["<img src=x>|"]], names)
    assert "<img" not in md and "&lt;img src=x&gt;\\|" in md


# --- the catalogue ---------------------------------------------------------------------------------------------
def test_every_float_option_refuses_non_finite_values():
    from smallset.tasks import catalog

    checked = 0
    for name, m in catalog.catalog()["methods"].items():
        for f in m["fields"]:
            if f["type"] == "float":
                for bad in ("nan", "inf", "-inf", float("nan")):
                    with pytest.raises(SmallsetError, match="must be a finite number"):
                        catalog.check_overrides(name, {f["name"]: bad})
                    with pytest.raises(SmallsetError, match="must be a finite number"):
                        from smallset.tasks.methods import method_class

                        method_class(name).make_config({f["name"]: bad})
                checked += 1
    assert checked > 10


def test_the_catalogue_matches_the_registries_and_follows_code_changes(tmp_path, monkeypatch):
    from smallset.models import model_names
    from smallset.tasks import catalog
    from smallset.tasks.methods import registries
    from smallset.train import PROTOCOLS

    cat = catalog.catalog()
    assert cat == catalog.build()
    assert sorted(cat["methods"]) == sorted(n for reg in registries().values() for n in reg.names())
    assert cat["models"] == model_names() and cat["protocols"] == PROTOCOLS.names()
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(catalog, "PACKAGES", ("fakepkg",))
    before = catalog.fingerprint()
    os.utime(pkg / "m.py", ns=(1, 1))
    assert catalog.fingerprint() != before
    (pkg / "new_method.py").write_text("")
    assert catalog.fingerprint() not in (before,)


@pytest.mark.multiprocess
@pytest.mark.parametrize("argv", [["--help"], ["methods"], ["show", "SHOWFILE"], ["prune", "--fraction", "0"],
                                  ["prune", "--method", "magic"], ["distill", "--lr-img", "nan"],
                                  ["prune", "--model", "vgg"], ["prune", "--source", "parquet:nope"],
                                  ["compare", "--methods", "random,magic", "--ipcs", "1"],
                                  ["prune", "--method", "dm", "--help"]])
def test_quick_commands_do_not_import_torch_prefect_or_mlflow(tmp_path, argv):
    from smallset.tasks import catalog

    catalog.catalog()  # cached for the subprocess (same SMALLSET_CACHE)
    ds = make_tiny_dataset(n_per_class=2)
    store.write_reduced(ds, tmp_path / "x.parquet", _meta(ds))
    argv = [str(tmp_path / "x.parquet") if a == "SHOWFILE" else a for a in argv]
    code = ("import sys, json\nfrom smallset.flows.cli import main\n"
            "try:\n    rc = main(json.loads(sys.argv[1]))\nexcept SystemExit as e:\n    rc = e.code\n"
            "print(json.dumps([rc, sorted(m for m in ('torch', 'prefect', 'mlflow') if m in sys.modules)]))")
    p = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, cwd=tmp_path)
    rc, heavy = json.loads(p.stdout.strip().splitlines()[-1])
    assert heavy == [], (argv, heavy)
    assert rc in (0, 2) and "Traceback" not in p.stderr
