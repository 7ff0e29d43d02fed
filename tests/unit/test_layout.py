"""The tests' layout: no test file imports another. What several test files share lives in
tests/support/ (fixtures registered in tests/conftest.py), so a test file can be moved, split or
deleted without breaking another."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "bench")


def module_name(path: Path) -> str:
    """`tests/unit/engine/test_relay.py` -> `tests.unit.engine.test_relay`."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every module the source imports, or imports a name from, with relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(base)
            # `from tests.unit.engine import test_relay` imports a test module by name
            found += [f"{base}.{alias.name}" for alias in node.names]
    return found


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and parts[-1].startswith("test_")


def test_imports_of_test_modules_are_found() -> None:
    source = (
        "from tests.unit.engine.test_relay import Client\n"
        "import tests.e2e.test_e2e_relay\n"
        "from tests.e2e import test_e2e_cluster\n"
        "from .test_listener import FakeHttp\n"
        "from tests.support.relay_clients import Client\n"
        "from sidecar.engine import relay\n"
    )
    imported = imported_modules(source, "tests.unit.edge.test_listener_fuzz")
    assert [name for name in imported if is_test_module(name)] == [
        "tests.unit.engine.test_relay",
        "tests.e2e.test_e2e_relay",
        "tests.e2e.test_e2e_cluster",
        "tests.unit.edge.test_listener",
    ]


def test_no_test_file_imports_another() -> None:
    offenders = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            imported = imported_modules(
                path.read_text(), module_name(path), is_package=path.name == "__init__.py"
            )
            offenders += [
                f"{path.relative_to(ROOT)} imports {name}"
                for name in imported
                if is_test_module(name)
            ]
    assert offenders == [], "move what is shared into tests/support/:\n" + "\n".join(offenders)
