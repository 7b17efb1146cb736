"""The layering rule of ARCHITECTURE.md, checked with import-linter (contracts in pyproject.toml).

    smallset.flows -> smallset.tasks -> smallset.prune | smallset.distill -> the base modules of smallset

Algorithms (prune, distill) never import Prefect or MLflow; the base layer never imports Prefect, and
of its modules only smallset.tracking and smallset.report import MLflow; the modules of smallset form
no import cycle. Imports inside functions count (grimp reads every import statement).

import-linter finds the package through ``importlib`` and walks its folder. In the editable install
prune/, distill/, tasks/ and flows/ are not inside smallset/, so plain ``lint-imports`` in the
repository would not see the four subpackages. The tests therefore copy the sources into the layout
the wheel installs (from ``[tool.setuptools]`` in pyproject.toml) and lint that copy.
Run by hand: ``.venv/bin/python tests/test_layers.py``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def _contract_names(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """Contract id -> name, as written in [tool.importlinter]."""
    conf = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]
    return {c["id"]: c["name"] for c in conf["contracts"]}


def installed_layout(src: Path, dest: Path) -> Path:
    """Copy the .py files of every package listed in src/pyproject.toml to where the wheel installs them,
    under ``dest`` (so ``dest/smallset/prune/base.py`` comes from ``src/prune/base.py``); returns dest."""
    conf = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = conf.get("package-dir", {})
    for package in conf["packages"]:
        # setuptools' rule: the nearest listed ancestor's folder, plus the rest of the dotted name.
        parts = package.split(".")
        for i in range(len(parts), -1, -1):
            prefix = ".".join(parts[:i])
            if prefix in package_dir:
                folder = src / package_dir[prefix] / Path(*parts[i:]) if parts[i:] else src / package_dir[prefix]
                break
        else:  # pragma: no cover - no "" entry in package-dir
            folder = src / Path(*parts)
        target = dest / Path(*parts)
        target.mkdir(parents=True, exist_ok=True)
        for f in folder.glob("*.py"):
            shutil.copy2(f, target / f.name)
    return dest


def lint(layout: Path, config: Path = PYPROJECT) -> tuple[int, str, dict[str, str]]:
    """Run ``lint-imports`` from this interpreter's environment on the package under ``layout``.

    Returns (exit status, output, contract id -> "KEPT" | "BROKEN")."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), f"{lint_imports} is missing: pip install -e '.[dev]' (import-linter)"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(layout), COLUMNS="1000", NO_COLOR="1")  # one contract per line
    proc = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo", str(config)],
        cwd=layout, env=env, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    status = {}
    for cid, name in _contract_names(config).items():
        m = re.search(rf"^{re.escape(name)} (KEPT|BROKEN)$", out, re.M)
        status[cid] = m.group(1) if m else "MISSING"
    return proc.returncode, out, status


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    return installed_layout(ROOT, tmp_path_factory.mktemp("installed"))


def test_layout_has_every_layer(layout):
    for rel in ("smallset/__init__.py", "smallset/data.py", "smallset/prune/base.py",
                "smallset/distill/base.py", "smallset/tasks/steps.py", "smallset/flows/cli.py"):
        assert (layout / rel).is_file(), rel


def test_contracts_kept_on_the_real_tree(layout):
    rc, out, status = lint(layout)
    broken = sorted(cid for cid, s in status.items() if s != "KEPT")
    assert rc == 0 and not broken, f"import contracts broken: {broken}\n{out}"


@pytest.fixture(scope="module")
def baseline(layout) -> set[str]:
    """Contracts already broken in the unmodified tree (empty when the tree is clean): the injection
    tests then depend only on what they inject, not on work in progress elsewhere."""
    rc, out, status = lint(layout)
    assert "MISSING" not in status.values(), out
    return {cid for cid, s in status.items() if s == "BROKEN"}


LAZY = "\n\ndef _injected_violation():\n    {}  # injected by tests/test_layers.py\n"
TOP = "\n{}  # injected by tests/test_layers.py\n"

# (case, file in the installed layout, code appended, contracts it must break, text the report must show).
# A violation may break further contracts through indirect imports (a base module importing tasks also
# lets prune reach Prefect, and closes a cycle): those are allowed, the listed ones are required.
INJECTIONS = [
    ("base imports tasks, inside a function", "smallset/data.py",
     LAZY.format("from smallset.tasks import steps"), {"base", "layers", "base-acyclic"},
     ["smallset.data -> smallset.tasks.steps"]),
    ("base imports flows", "smallset/train.py",
     TOP.format("import smallset.flows.settings"), {"base"},
     ["smallset.train -> smallset.flows.settings"]),
    ("distill imports prune", "smallset/distill/base.py",
     TOP.format("from smallset.prune.base import Selector"), {"layers"},
     ["smallset.distill.base -> smallset.prune.base"]),
    ("prune imports distill, inside a function", "smallset/prune/random.py",
     LAZY.format("from smallset.distill import dm"), {"layers"},
     ["smallset.prune.random -> smallset.distill.dm"]),
    ("tasks imports flows", "smallset/tasks/results.py",
     LAZY.format("from smallset.flows import cli"), {"layers"},
     ["smallset.tasks.results -> smallset.flows.cli"]),
    ("prune imports mlflow, inside a function", "smallset/prune/random.py",
     LAZY.format("import mlflow"), {"algorithms-no-orchestration", "mlflow-in-tracking"},
     ["smallset.prune.random -> mlflow"]),
    ("distill reaches mlflow through smallset.tracking", "smallset/distill/dm.py",
     LAZY.format("from smallset import tracking"), {"algorithms-no-orchestration"},
     ["smallset.distill.dm -> smallset.tracking", "smallset.tracking -> mlflow"]),
    ("distill imports prefect", "smallset/distill/base.py",
     LAZY.format("from prefect import task"), {"algorithms-no-orchestration", "prefect-above-base"},
     ["smallset.distill.base -> prefect"]),
    ("base imports prefect, inside a function", "smallset/models.py",
     LAZY.format("import prefect"), {"prefect-above-base"},
     ["smallset.models -> prefect"]),
    ("a base module other than tracking/report imports mlflow", "smallset/store.py",
     LAZY.format("import mlflow"), {"mlflow-in-tracking"},
     ["smallset.store -> mlflow"]),
    ("base cycle: data imports store again, inside a function", "smallset/data.py",
     LAZY.format("from smallset import store"), {"base-acyclic"},
     ["No cycles are allowed in smallset."]),
]


@pytest.mark.parametrize("case,rel,code,contracts,shows", INJECTIONS, ids=[c[0] for c in INJECTIONS])
def test_injected_violation_is_caught(layout, baseline, tmp_path, case, rel, code, contracts, shows):
    copy = tmp_path / "installed"
    shutil.copytree(layout, copy)
    target = copy / rel
    assert target.is_file(), rel
    target.write_text(target.read_text() + code)
    rc, out, status = lint(copy)
    newly_broken = {cid for cid, s in status.items() if s == "BROKEN"} - baseline
    assert rc != 0, out
    assert contracts <= newly_broken, f"{case}: expected {sorted(contracts)} broken, got {sorted(newly_broken)}\n{out}"
    broken_section = out.split("Broken contracts", 1)[-1]
    for text in shows:
        assert text in broken_section, f"{case}: the report does not show {text!r}\n{out}"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="smallset-layers-") as tmp:
        rc, out, _ = lint(installed_layout(ROOT, Path(tmp)))
    print(out)
    sys.exit(rc)
