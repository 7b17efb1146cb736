"""The docs and the CLI name exactly the registered methods: the README's method table, the index
docs/methods/README.md, one docs/methods/NAME.md per method, `smallset methods` and `prune`/`distill --help`.
A method added to a registry without its docs, or a doc entry for a method that is gone, fails here."""
import re
from pathlib import Path

import pytest

from smallset.flows.cli import main
from smallset.tasks.methods import all_methods, registries

ROOT = Path(__file__).resolve().parents[1]
METHOD_DOCS = ROOT / "docs" / "methods"


def registered() -> dict[str, str]:
    """Every registered method → its kind (prune or distill)."""
    by_name = {name: kind for kind, registry in registries().items() for name in registry.names()}
    assert sorted(by_name) == sorted(all_methods())
    return by_name


def section(markdown: str, heading: str) -> str:
    """The text under a ``## heading``, up to the next ``## `` heading."""
    parts = re.split(rf"^## {re.escape(heading)}\n", markdown, flags=re.M)
    assert len(parts) == 2, f"no single '## {heading}' section"
    return re.split(r"^## ", parts[1], flags=re.M)[0]


def readme_table(readme: str) -> dict[str, str]:
    """name → kind of every row of the table under the README's ``## Methods``: ``| kind | `name` | ... |``."""
    rows = re.findall(r"^\| *(\w+) *\| *`([^`]+)` *\|", section(readme, "Methods"), flags=re.M)
    return {name: kind for kind, name in rows}


def index_entries(index: str, heading: str) -> list[str]:
    """The pages a ``- [NAME.md](NAME.md): ...`` list under ``## heading`` of docs/methods/README.md links."""
    return re.findall(r"^- \[([^\]]+)\.md\]\(\1\.md\)", section(index, heading), flags=re.M)


def mismatch(documented, where: str) -> str:
    """'' when ``documented`` names exactly the registered methods, else what is missing and what is unknown."""
    known, named = set(registered()), set(documented)
    problems = []
    if known - named:
        problems.append(f"{where} lacks {sorted(known - named)}")
    if named - known:
        problems.append(f"{where} names unregistered {sorted(named - known)}")
    return "; ".join(problems)


def test_the_readme_method_table_lists_every_registered_method_with_its_kind():
    table = readme_table((ROOT / "README.md").read_text())
    assert not mismatch(table, "README.md's method table"), mismatch(table, "README.md's method table")
    kinds = registered()
    assert {name: kinds[name] for name in table} == table  # the kind column


def test_the_docs_index_lists_every_method_page_and_every_page_is_listed():
    index = (METHOD_DOCS / "README.md").read_text()
    methods = index_entries(index, "Methods")
    assert not mismatch(methods, "docs/methods/README.md"), mismatch(methods, "docs/methods/README.md")
    assert len(methods) == len(set(methods))
    listed = set(methods) | set(index_entries(index, "Shared notes"))
    pages = {p.stem for p in METHOD_DOCS.glob("*.md")} - {"README"}
    assert pages == listed, f"pages not in the index: {sorted(pages - listed)}; missing: {sorted(listed - pages)}"


@pytest.mark.parametrize("name", all_methods())
def test_every_method_has_its_page(name):
    page = METHOD_DOCS / f"{name}.md"
    assert page.is_file(), f"{name} has no {page.relative_to(ROOT)}"
    assert f"`{name}`" in page.read_text()  # the page says which registered name it documents


def test_smallset_methods_lists_every_method_under_its_kind(capsys):
    assert main(["methods"]) == 0
    listed, kind = {}, None
    for line in capsys.readouterr().out.splitlines():
        if heading := re.fullmatch(r"(\w+) methods:", line):
            kind = heading.group(1)
        elif kind and (entry := re.match(r"  (\S+)", line)):
            listed[entry.group(1)] = kind
        else:
            kind = None
    assert listed == registered()


@pytest.mark.parametrize("kind", ["prune", "distill"])
def test_the_commands_help_lists_its_methods(kind, capsys):
    with pytest.raises(SystemExit):
        main([kind, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    names = re.search(r"Methods: (.*?)\. Add --method", help_text).group(1).split(", ")
    assert names == sorted(registries()[kind].names())


# --- the checks themselves catch a missing and an unknown method -------------------------------------------
def test_the_table_check_catches_a_missing_row_and_an_unknown_one():
    readme = (ROOT / "README.md").read_text()
    without_dm = "".join(line for line in readme.splitlines(keepends=True) if not line.startswith("| distill | `dm` |"))
    assert without_dm != readme
    assert mismatch(readme_table(without_dm), "table") == "table lacks ['dm']"
    with_magic = readme.replace("| distill | `dm` |", "| distill | `magic` | x |\n| distill | `dm` |")
    assert mismatch(readme_table(with_magic), "table") == "table names unregistered ['magic']"


def test_the_index_check_catches_a_missing_entry():
    index = (METHOD_DOCS / "README.md").read_text()
    without_mtt = "".join(line for line in index.splitlines(keepends=True) if not line.startswith("- [mtt.md]"))
    assert mismatch(index_entries(without_mtt, "Methods"), "index") == "index lacks ['mtt']"
