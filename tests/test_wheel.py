"""The wheel installs exactly one top-level name, ``smallset``, laid out as the design says.

Builds a wheel offline from a copy of the repository (so the build writes no build/ or egg-info into
the working tree), installs it with ``--no-deps --no-index`` into a fresh venv, and looks at the files
that landed in that venv's site-packages. The fresh venv has no torch: it checks only what needs none
(the file tree, and the builtin datasets found through ``importlib.resources``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Never copied into the build tree: environments, VCS data, caches, build and run outputs.
_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".pytest_cache",
    ".prefect", "mlruns", "mlartifacts", "mlflow.db*", "smallset-out", ".import_linter_cache",
)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_INDEX_URL")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _site_packages(venv: Path) -> Path:
    rel = Path(sysconfig.get_path("purelib", vars={"base": ".", "platbase": "."}))
    return venv / rel


def _source_to_installed() -> dict[Path, Path]:
    """Each package folder of the source tree -> its place under site-packages, from pyproject.toml."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {Path("smallset"): Path("smallset")}
    for package, folder in conf.get("package-dir", {}).items():
        mapping[Path(folder)] = Path(*package.split("."))
    return mapping


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site-packages of a fresh venv with only the wheel installed, what the install added there, venv)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, wheels, venv = tmp / "src", tmp / "wheels", tmp / "venv"
    try:
        shutil.copytree(ROOT, src, ignore=_IGNORE)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "-q", "-w", wheels, src])
        (wheel,) = wheels.glob("smallset-*.whl")
        _run([sys.executable, "-m", "venv", "--without-pip", venv])
        site = _site_packages(venv)
        before = {p.name for p in site.iterdir()}
        # This environment's pip installs into the fresh venv (which has no pip of its own).
        _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
              "--no-deps", "--no-index", "-q", wheel])
        added = {p.name for p in site.iterdir()} - before
        yield site, added, venv
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_one_top_level_name(installed):
    site, added, _ = installed
    dist_info = {n for n in added if n.endswith(".dist-info")}
    assert len(dist_info) == 1 and next(iter(dist_info)).startswith("smallset-"), added
    assert added - dist_info == {"smallset"}, f"the wheel added {sorted(added)} to site-packages"
    # RECORD agrees: nothing outside smallset/ and the dist-info, apart from the console script.
    record = (site / next(iter(dist_info)) / "RECORD").read_text().splitlines()
    tops = {line.split(",", 1)[0].split("/", 1)[0] for line in record if line}
    assert tops - {"..", *dist_info} == {"smallset"}, tops


def test_layout_of_the_installed_package(installed):
    site, _, venv = installed
    pkg = site / "smallset"
    for rel in ("__init__.py", "data.py", "flows/__init__.py", "flows/cli.py", "prune/__init__.py",
                "prune/base.py", "distill/__init__.py", "distill/base.py", "tasks/__init__.py",
                "builtin/__init__.py"):
        assert (pkg / rel).is_file(), f"smallset/{rel} is not installed"
    # Every source file of every package folder is installed at its package's place (a folder added
    # under prune/ without listing its package in pyproject.toml would be missing here).
    missing = []
    for folder, target in _source_to_installed().items():
        for f in (ROOT / folder).rglob("*.py"):
            rel = f.relative_to(ROOT / folder)
            if "__pycache__" not in rel.parts and not (site / target / rel).is_file():
                missing.append(f"{folder / rel} -> {target / rel}")
    assert not missing, f"not installed: {missing}"
    parquet = sorted(p.name for p in (ROOT / "smallset" / "builtin").glob("*.parquet"))
    assert parquet, "no builtin datasets in the source tree"
    assert sorted(p.name for p in (pkg / "builtin").glob("*.parquet")) == parquet
    assert (venv / "bin" / "smallset").is_file(), "the console script is not installed"


def test_builtin_data_through_importlib_resources(installed, tmp_path):
    site, _, venv = installed
    code = (
        "import importlib.resources as r, json, sys, smallset; "
        "print(json.dumps({'file': smallset.__file__, 'torch': 'torch' in sys.modules, "
        "'files': sorted(p.name for p in r.files('smallset.builtin').iterdir())}))"
    )
    # -I: isolated (no cwd or PYTHON* variables on the path), run away from the repository.
    out = _run([venv / "bin" / "python", "-I", "-c", code], cwd=tmp_path).stdout
    got = json.loads(out)
    assert Path(got["file"]).resolve().is_relative_to(site.resolve()), got["file"]
    assert not got["torch"]
    expected = sorted(p.name for p in (ROOT / "smallset" / "builtin").glob("*.parquet"))
    assert [f for f in got["files"] if f.endswith(".parquet")] == expected, got["files"]
