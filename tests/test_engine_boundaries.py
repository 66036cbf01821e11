"""The engine's edges: it asks the adapters only through their package (mmmerge/adapters/__init__.py), and its plan
records are built by keyword (a positional call would silently shift a field when one is added)."""

import ast
import dataclasses
from pathlib import Path

import pytest

import mmmerge
from mmmerge.engine.plan import Plan
from mmmerge.engine.tasks import ComponentPlan
from mmmerge.stitching.plan import StitchPlan

PACKAGE = Path(mmmerge.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports from, as an absolute dotted name (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            found.add(".".join(p for p in (base, node.module or "") if p))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("path", sorted((PACKAGE / "engine").glob("*.py")), ids=lambda p: p.name)
def test_engine_imports_no_adapter_module(path):
    reached = sorted(m for m in imported_modules(path) if m.startswith("mmmerge.adapters."))
    assert reached == [], f"{path.name} reaches past the adapter protocol into {reached}"


def test_the_import_scan_sees_adapter_modules():
    """The scan above resolves relative imports: a module known to import an adapter module is seen doing so."""
    assert "mmmerge.adapters.hf_common" in imported_modules(PACKAGE / "adapters" / "hf_vision.py")


@pytest.mark.parametrize("record", [Plan, ComponentPlan, StitchPlan], ids=lambda c: c.__name__)
def test_plan_records_take_keywords_only(record):
    required = [f for f in dataclasses.fields(record) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    with pytest.raises(TypeError):
        record(*[None] * len(required))
