"""The benchmark harness (benchmarks/utils.py) and its scripts: each imports as a plain module the way
``python benchmarks/NAME.py`` runs it (no ``sys.path`` edits), exposes ``parse_args``/``run``, answers
``--help``, and parses every command line the documentation shows; the header and the one row writer
write exactly what they should."""
from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "utils")
MODULES = ["utils", *SCRIPTS]
SYS_PATH_EDIT = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)\s*\(|\+=|=[^=])")


@pytest.fixture(scope="module")
def bench():
    """The benchmark modules, imported with benchmarks/ first on the path (what running a script there does),
    each checked to leave ``sys.path`` as it found it; the previous owners of their names are put back."""
    saved = {name: sys.modules.pop(name) for name in MODULES if name in sys.modules}
    sys.path.insert(0, str(BENCH))
    try:
        modules = {}
        for name in MODULES:
            before = list(sys.path)
            modules[name] = importlib.import_module(name)
            assert sys.path == before, f"importing benchmarks/{name}.py changed sys.path"
            assert Path(modules[name].__file__).resolve() == BENCH / f"{name}.py"
        yield modules
    finally:
        sys.path.remove(str(BENCH))
        for name in MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def test_no_file_in_benchmarks_edits_sys_path():
    offenders = [f"{p.name}:{n}" for p in sorted(BENCH.rglob("*.py"))
                 for n, line in enumerate(p.read_text().splitlines(), 1) if SYS_PATH_EDIT.search(line)]
    assert offenders == []
    assert SYS_PATH_EDIT.search('sys.path.insert(0, str(ROOT))') and SYS_PATH_EDIT.search("sys.path += [x]")


def test_every_script_exposes_parse_args_and_run(bench):
    assert len(SCRIPTS) == 11
    for name in SCRIPTS:
        assert callable(getattr(bench[name], "run", None)), name
        assert callable(getattr(bench[name], "parse_args", None)), name


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_exits_0_and_shows_the_shared_flags(bench, name, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench[name].parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--json" in out


def test_a_script_runs_as_a_plain_file_from_another_folder(tmp_path):
    """``python benchmarks/bench_kills.py`` finds utils and nothing else from the repository root."""
    p = subprocess.run([sys.executable, str(BENCH / "bench_kills.py"), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "--kills" in p.stdout and "--seed" in p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_help_as_a_subprocess(name, tmp_path):
    p = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


# --- the documented command lines still parse, with the same meaning --------------------------------------
def documented_commands() -> list[tuple[str, str, str]]:
    """(file, script, arguments) of every ``benchmarks/NAME.py …`` command in the docs and the scripts'
    docstrings (continuation lines joined, optional ``[…]`` opened; shell loops with ``$`` left out)."""
    out = []
    docs = [ROOT / "BENCHMARKS.md", ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for f in [*docs, *sorted(BENCH.glob("*.py"))]:
        text = re.sub(r"\\\\?\n\s*", " ", f.read_text()).replace("[--", "--").replace("]", " ")
        for m in re.finditer(r"benchmarks/(\w+)\.py((?:[ \t]+[^\s`#|;]+)*)", text):
            if m.group(1) in SCRIPTS and m.group(2).strip() and "$" not in m.group(2):
                out.append((f.name, m.group(1), m.group(2).strip()))
    return out


def test_every_documented_command_line_parses(bench, monkeypatch):
    monkeypatch.chdir(ROOT)  # relative paths in the commands (--infobatch-kept) are the repository's
    commands = documented_commands()
    assert {script for _, script, _ in commands} == set(SCRIPTS)  # every script has a documented command
    for where, script, argv in commands:
        try:
            bench[script].parse_args(shlex.split(argv))
        except SystemExit as e:
            pytest.fail(f"{where}: benchmarks/{script}.py {argv} no longer parses ({e})")
    bench["bench_oneshot"].SETTINGS.clear()


def test_documented_flags_keep_their_meaning(bench):
    crest = bench["bench_crest"].parse_args(["--plan", "mnist:0,cifar10:1", "--threads", "2", "--json", "x.jsonl"])
    assert bench["utils"].plan(crest.plan) == [("mnist", 0), ("cifar10", 1)]
    assert (crest.threads, crest.json, crest.device) == (2, "x.jsonl", "auto")
    oneshot = bench["bench_oneshot"].parse_args(["--seeds", "0", "1", "--set", "el2n.models=2"])
    assert oneshot.seeds == [0, 1] and oneshot.threads == 1
    assert bench["bench_oneshot"].SETTINGS == {"el2n": {"models": 2}}
    bench["bench_oneshot"].SETTINGS.clear()
    distill = bench["bench_distill"].parse_args(["--stop-after", "dm=105,dc=4", "--set", "dm.batch_real=64"])
    assert distill.stop_after == {"dm": 105, "dc": 4} and distill.sets == {"dm": {"batch_real": "64"}}
    assert distill.json == "/tmp/bench_distill.jsonl" and distill.data == str(ROOT.parent / "shared" / "datasets")


# --- utils ---------------------------------------------------------------------------------------------------
def test_dataset_spec_plan_and_settings(bench):
    u = bench["utils"]
    assert u.dataset_spec("mnist", "/d") == "parquet:/d/mnist"
    assert u.dataset_spec("mnist-mini", "/d") == "builtin:mnist-mini"
    assert u.dataset_spec("builtin:mnist-mini", "/d") == "builtin:mnist-mini"
    assert u.plan("builtin:mnist-mini:1, mnist:10") == [("builtin:mnist-mini", 1), ("mnist", 10)]
    assert u.method_settings(["dm.batch-real=64", "dm.init=real", "el2n.models=2"]) == {
        "dm": {"batch_real": "64", "init": "real"}, "el2n": {"models": "2"}}
    with pytest.raises(SystemExit, match="expected NAME.OPTION=VALUE"):
        u.method_settings(["batch_real=64"])


def test_threads_zero_leaves_torch_alone(bench):
    import torch

    before = torch.get_num_threads()
    bench["utils"].set_threads(0)
    assert torch.get_num_threads() == before
    bench["utils"].set_threads(1)
    try:
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_source_loads_once_per_process(bench, monkeypatch, capsys):
    import types

    import smallset.data

    u = bench["utils"]
    calls = []

    def fake_load(spec):
        calls.append(spec)
        return types.SimpleNamespace(train=[0] * 5, test=[0] * 2)

    monkeypatch.setattr(smallset.data, "load_source", fake_load)
    monkeypatch.setattr(u, "_SOURCES", {})
    a = u.load("x:a")
    assert u.load("x:a") is a and calls == ["x:a"]
    u.load("x:b")
    assert u.load("x:a") is a and calls == ["x:a", "x:b"]  # kept
    u.load("x:c", keep_others=False)
    assert set(u._SOURCES) == {"x:c"}
    u.load("x:a")
    assert calls == ["x:a", "x:b", "x:c", "x:a"]
    assert "# loaded x:a: 5 train / 2 test in" in capsys.readouterr().out


def test_header_names_the_machine_and_its_load(bench, capsys):
    from importlib.metadata import version

    u = bench["utils"]
    head = u.print_header(model="lenet")
    line = capsys.readouterr().out
    assert line.startswith("# ") and json.loads(line[2:]) == head
    assert set(head) == {"cpu", "cores", "torch", "threads", "load", "date", "host", "commit", "model"}
    assert head["cores"] == os.cpu_count() and head["torch"] == version("torch") and head["model"] == "lenet"
    assert len(head["load"]) == 3 and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", head["date"])
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert head["commit"].split("+")[0] == sha


def test_the_row_writer_appends_stamped_json_lines(bench, monkeypatch, tmp_path):
    u = bench["utils"]
    monkeypatch.setattr(u, "load_average", lambda: [1.5, 1.25, 1.0])
    monkeypatch.setattr(u, "utc_now", lambda: "2026-12-08 10:00 UTC")
    monkeypatch.setattr(u, "git_commit", lambda: "abc123")
    monkeypatch.setattr(u, "peak_rss_mib", lambda: 512.0)
    path = tmp_path / "rows.jsonl"
    path.write_text('{"earlier": 1}\n')  # rows are appended, never overwritten
    writer = u.RowWriter(path, argv=["benchmarks/bench_x.py", "--plan", "mnist:0", "--note", "a b"])
    first = writer.write({"run": "full", "test_accuracy": 0.5})
    second = writer.write({"run": "x", "date": "kept", "peak_rss_mib": 7.0})  # a row's own keys win
    stamp = {"load": [1.5, 1.25, 1.0], "date": "2026-12-08 10:00 UTC",
             "command": "benchmarks/bench_x.py --plan mnist:0 --note 'a b'", "commit": "abc123"}
    assert first == {"run": "full", "test_accuracy": 0.5, **stamp, "peak_rss_mib": 512.0}
    assert second == {"run": "x", **stamp, "date": "kept", "peak_rss_mib": 7.0}
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"earlier": 1}, first, second]
    assert writer.rows == [first, second] and u.read_rows(path) == [{"earlier": 1}, first, second]

    quiet = u.RowWriter(None, peak_memory=False, argv=["b.py"])
    assert quiet.write({"n": 1}) == {"n": 1, **stamp, "command": "b.py"}
    assert quiet.rows == [{"n": 1, **stamp, "command": "b.py"}]


def test_peak_memory_helpers(bench):
    """The resident set and its peak follow 200 MiB touched; the reset brings the peak back down."""
    u = bench["utils"]
    rss0 = u.rss_mib()
    buf = bytearray(200 * 2 ** 20)
    buf[::4096] = b"\x01" * len(range(0, len(buf), 4096))  # touch every page
    assert u.rss_mib() > rss0 + 150 and u.peak_rss_mib() > rss0 + 150
    peak = u.status_bytes("VmHWM")
    del buf
    assert u.reset_peak() is True  # Linux
    assert u.status_bytes("VmHWM") < peak - 100 * 2 ** 20
