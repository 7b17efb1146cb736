"""Fuzzing the command line with hypothesis: malformed Parquet sources and bad option values.

For every generated input: exit status 2, exactly one ``smallset: error:`` line, no traceback, and nothing
written. The example counts are bounded so the module runs in seconds; a failure prints the smallest input
hypothesis found (``--hypothesis-seed`` replays it)."""
import io
import json
import math
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smallset.data import encode_png
from smallset.flows.cli import main

from helpers import make_tiny_dataset

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """main(argv) in ``cwd``; (exit status, stdout, stderr) whether it returns or exits (argparse)."""
    import os

    out, err, old = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def assert_one_sentence(code: int, err: str, what) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[smallset]")
             and not line.startswith("smallset: warning:")]
    assert code == 2, (what, code, err)
    assert "Traceback" not in err, (what, err)
    assert len(lines) == 1 and lines[0].startswith("smallset: error: "), (what, err)


# --- malformed sources ------------------------------------------------------------------------------------
def base_columns(n_per_class: int = 2, classes: int = 2, size: int = 8) -> dict:
    """A valid source (``--fraction 1`` of it runs): each defect below must be what makes it fail."""
    ds = make_tiny_dataset(n_per_class=n_per_class, num_classes=classes, size=size)
    return {"image": [{"bytes": encode_png(x), "path": None} for x in ds.images], "label": ds.labels.tolist()}


DEFECTS = ["image_ints", "image_strings", "image_floats", "image_null", "image_garbage", "image_struct_no_bytes",
           "no_image", "no_label", "label_null", "label_strings", "label_fraction", "label_negative", "label_huge",
           "label_nan", "label_bool", "label_list", "mixed_sizes", "mixed_modes", "empty", "truncated", "not_parquet",
           "smallset_meta_not_json", "smallset_meta_not_object", "smallset_meta_bad_shape", "smallset_missing_cols"]


def build_table(defect: str, row: int, junk: bytes):
    cols = base_columns()
    n = len(cols["label"])
    row %= n
    image = pa.array(cols["image"], type=IMAGE_TYPE)
    label = pa.array(cols["label"], type=pa.int64())
    meta = None
    if defect == "image_ints":
        image = pa.array(list(range(n)), type=pa.int64())
    elif defect == "image_strings":
        image = pa.array([f"img{i}.png" for i in range(n)], type=pa.string())
    elif defect == "image_floats":
        image = pa.array([0.5] * n, type=pa.float32())
    elif defect == "image_null":
        cols["image"][row] = None
        image = pa.array(cols["image"], type=IMAGE_TYPE)
    elif defect == "image_garbage":
        cols["image"][row] = {"bytes": junk, "path": None}
        image = pa.array(cols["image"], type=IMAGE_TYPE)
    elif defect == "image_struct_no_bytes":
        image = pa.array([{"path": f"{i}.png"} for i in range(n)], type=pa.struct([("path", pa.string())]))
    elif defect == "label_null":
        labels = list(cols["label"])
        labels[row] = None
        label = pa.array(labels, type=pa.int64())
    elif defect == "label_strings":
        label = pa.array([f"class{v}" for v in cols["label"]], type=pa.string())
    elif defect == "label_fraction":
        label = pa.array([v + (0.5 if i == row else 0.0) for i, v in enumerate(cols["label"])], type=pa.float64())
    elif defect == "label_negative":
        label = pa.array([-1 if i == row else v for i, v in enumerate(cols["label"])], type=pa.int64())
    elif defect == "label_huge":
        label = pa.array([2 ** 40 if i == row else v for i, v in enumerate(cols["label"])], type=pa.int64())
    elif defect == "label_nan":
        label = pa.array([math.nan if i == row else float(v) for i, v in enumerate(cols["label"])], type=pa.float64())
    elif defect == "label_bool":
        label = pa.array([bool(v) for v in cols["label"]], type=pa.bool_())
    elif defect == "label_list":
        label = pa.array([[v] for v in cols["label"]], type=pa.list_(pa.int64()))
    elif defect == "mixed_sizes":
        big = make_tiny_dataset(n_per_class=1, num_classes=1, size=12).images[0]
        cols["image"][row] = {"bytes": encode_png(big), "path": None}
        image = pa.array(cols["image"], type=IMAGE_TYPE)
    elif defect == "mixed_modes":
        rgb = make_tiny_dataset(n_per_class=1, num_classes=1, size=8, channels=3).images[0]
        cols["image"][row] = {"bytes": encode_png(rgb), "path": None}
        image = pa.array(cols["image"], type=IMAGE_TYPE)
    elif defect == "empty":
        image, label = image.slice(0, 0), label.slice(0, 0)
    elif defect.startswith("smallset_"):
        meta = {"smallset_meta_not_json": b"{not json", "smallset_meta_not_object": b"[1, 2]",
                "smallset_meta_bad_shape": json.dumps({"shape": [1, -8, "x"], "mean": [0.5], "std": [0.2],
                                                       "classes": ["a", "b"]}).encode(),
                "smallset_missing_cols": json.dumps({"shape": [1, 8, 8], "mean": [0.5], "std": [0.2],
                                                     "classes": ["a", "b"]}).encode()}[defect]
    columns = {"image": image, "label": label}
    if defect == "no_image":
        columns.pop("image")
    if defect == "no_label":
        columns.pop("label")
    table = pa.table(columns)
    if meta is not None:
        table = table.replace_schema_metadata({b"smallset": meta})
    return table


def write_source(path: Path, defect: str, row: int, junk: bytes, cut: float) -> None:
    if defect == "not_parquet":
        path.write_bytes(junk or b"PAR1")
    elif defect == "truncated":
        pq.write_table(build_table("none", row, junk), path)
        data = path.read_bytes()
        path.write_bytes(data[: max(1, int(len(data) * cut))])
    else:
        pq.write_table(build_table(defect, row, junk), path)


@pytest.mark.parametrize("command", ["prune", "datasets"])
@FUZZ
@given(defect=st.sampled_from(DEFECTS), row=st.integers(0, 100), junk=st.binary(max_size=64),
       cut=st.floats(0.05, 0.95), layout=st.sampled_from(["file", "dir"]))
def test_malformed_sources_are_one_sentence_and_write_nothing(command, defect, row, junk, cut, layout):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if layout == "dir":
            (tmp / "src").mkdir()
            source = tmp / "src" / "train.parquet"
            pq.write_table(build_table("none", 0, b""), tmp / "src" / "test.parquet")
        else:
            source = tmp / "src.parquet"
        write_source(source, defect, row, junk, cut)
        before = sorted(p.relative_to(tmp) for p in tmp.rglob("*"))
        src = f"parquet:{source.parent if layout == 'dir' else source}"
        argv = (["prune", "--source", src, "--fraction", "1", "--no-eval", "--no-progress", "--output", "out/x.parquet"]
                if command == "prune" else ["datasets", "--source", src])
        code, _, err = run_cli(argv, tmp)
        assert_one_sentence(code, err, (command, defect, layout))
        assert sorted(p.relative_to(tmp) for p in tmp.rglob("*")) == before  # nothing written


@FUZZ
@given(defect=st.sampled_from(DEFECTS), row=st.integers(0, 100), junk=st.binary(max_size=64),
       cut=st.floats(0.05, 0.95))
def test_show_of_a_malformed_file_is_one_sentence(defect, row, junk, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.parquet"
        write_source(path, defect, row, junk, cut)
        code, _, err = run_cli(["show", str(path)], Path(tmp))
        assert_one_sentence(code, err, defect)


# --- bad option values ------------------------------------------------------------------------------------
NON_NUMBERS = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "abc", "", "0x", "1,2", "None", "[]"])
BAD_OPTIONS = st.one_of(
    st.tuples(st.just("prune"), st.just("--fraction"),
              st.one_of(NON_NUMBERS, st.sampled_from(["0", "-0", "1.0000001", "2", "-1", "1e-300", "1e-7"]),
                        # the tiny source keeps an example per class from 2.5/60 up
                        st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not 0.04 <= f <= 1)
                        .map(repr))),
    st.tuples(st.just("distill"), st.just("--ipc"),
              st.one_of(NON_NUMBERS, st.sampled_from(["0", "-1", "1.5", "21", "1000000"]))),
    st.tuples(st.sampled_from(["prune", "distill"]), st.just("--seed"),
              st.one_of(NON_NUMBERS, st.sampled_from(["-1", str(2 ** 63), str(2 ** 70), "1.5"]))),
    st.tuples(st.sampled_from(["prune", "distill"]), st.sampled_from(["--eval-runs", "--eval-epochs"]),
              st.sampled_from(["0", "-3", "1.5", "x", "nan"])),
    st.tuples(st.sampled_from(["prune", "distill"]), st.just("--model-arg"),
              st.sampled_from(["width=0", "width=-1", "width=\"a\"", "width=NaN", "width=1.5", "width=[1]",
                               "nosuch=1", "width"])),
    st.tuples(st.sampled_from(["prune", "distill"]), st.sampled_from(["--model", "--protocol", "--device",
                                                                       "--eval-augment", "--normalization",
                                                                       "--eval-models", "--source"]),
              st.sampled_from(["nope", "cuda:x", "dsa:nosuch", "dc:zoom", "../etc", "\x1b[31m", "s3:b",
                               "parquet:", "folder:/nonexistent", "builtin:nope", "torchvision:nope"])),
    st.tuples(st.just("distill"), st.sampled_from(["--lr-img", "--iterations", "--batch-real"]),
              st.one_of(NON_NUMBERS, st.sampled_from(["-1", "0"]))),
    st.tuples(st.just("distill"), st.just("--momentum"), st.one_of(NON_NUMBERS, st.sampled_from(["-1", "-0.5"]))),
    st.tuples(st.just("distill"), st.sampled_from(["--checkpoint-every"]), st.sampled_from(["-1", "x"])),
    st.tuples(st.just("distill"), st.just("--init"), st.sampled_from(["zeros", ""])),
)


@FUZZ
@given(case=BAD_OPTIONS)
def test_bad_option_values_are_one_sentence_and_write_nothing(tiny_parquet_session, case):
    command, flag, value = case
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        argv = [command, "--source", f"parquet:{tiny_parquet_session}", "--no-eval", "--no-progress",
                "--output", "out/x.parquet", "--model", "mlp", "--iterations" if command == "distill" else None,
                "2" if command == "distill" else None]
        argv = [a for a in argv if a is not None] + [f"{flag}={value}"]
        code, _, err = run_cli(argv, tmp)
        assert_one_sentence(code, err, case)
        assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("defect", DEFECTS)
def test_every_kind_of_malformed_source_once(defect, tmp_path):
    """Each defect at least once, whatever hypothesis draws above."""
    write_source(tmp_path / "src.parquet", defect, 1, b"\x89PNG garbage", 0.5)
    code, _, err = run_cli(["prune", "--source", f"parquet:{tmp_path / 'src.parquet'}", "--fraction", "1", "--no-eval",
                            "--no-progress", "--output", "out/x.parquet"], tmp_path)
    assert_one_sentence(code, err, defect)
    assert not (tmp_path / "out").exists()
