"""The bundle contract sits below export and runtime: writers and readers import it, it imports neither.

Checked on the source (every import statement, also those inside functions), so a lazy import upward counts too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "alignkd"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith("alignkd")}


def sources(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


@pytest.mark.parametrize("sub, forbidden", [
    ("contract", ("alignkd.export", "alignkd.runtime", "alignkd.models", "alignkd.distill", "alignkd.eval")),
    ("runtime", ("alignkd.export",)),
])
def test_nothing_imports_upward(sub, forbidden):
    offending = {f"{path.relative_to(PACKAGE)} imports {name}" for path in sources(sub)
                 for name in imported_modules(path) if name.startswith(forbidden)}
    assert not offending, sorted(offending)


def test_generation_loop_and_bundle_reader_do_not_import_each_other_both_ways():
    generation = imported_modules(PACKAGE / "runtime" / "generation.py")
    assert not {n for n in generation if n.startswith(("alignkd.runtime.bundle", "alignkd.runtime.loader"))}


def test_the_schema_is_package_data_of_the_contract():
    from alignkd.contract.manifest import load_schema

    assert (PACKAGE / "contract" / "manifest.schema.json").is_file()
    assert load_schema()["title"] == "alignkd exported bundle manifest"
