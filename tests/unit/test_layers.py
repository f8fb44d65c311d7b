"""Imports run one way: flows -> tasks -> blocks -> transports -> core (DESIGN.md, Layout).

Every ``dapx`` import in every module (top level and inside functions) is read from the
source; a module may import its own layer and the layers below it, never one above. And no
task calls another task: a task's body names no other task of the project (retries would
multiply).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "dapx"

# Each layer and what it may import besides itself (errors is everyone's).
ALLOWED = {
    "core": set(),
    "transports": {"core"},
    "blocks": {"transports", "core"},
    "ui_extensions": {"core"},
    "tasks": {"blocks", "transports", "core"},
    "flows": {"tasks", "blocks", "transports", "core", "ui_extensions"},
    "deployments": {"flows", "tasks", "blocks", "transports", "core", "ui_extensions", "lab"},
}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "dapx" else None


def dapx_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dapx"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dapx")}
    return found


def modules(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down(layer: str) -> None:
    wrong = []
    for path in modules(layer):
        for module in dapx_imports(path):
            target = layer_of(module)
            if target in (None, "errors", layer) or module == "dapx.errors":
                continue
            if target not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT.parent)} imports {module}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def _task_names() -> set[str]:
    """Names bound to project tasks: functions decorated with dapx_task, or wrapped by it."""
    names = set()
    for layer in ("tasks", "flows"):
        for path in modules(layer):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                        "dapx_task" in ast.unparse(d) for d in node.decorator_list):
                    names.add(node.name)
                elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                      and "dapx_task" in ast.unparse(node.value.func)):
                    names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_no_task_calls_another_task() -> None:
    tasks = _task_names()
    assert len(tasks) > 10  # the scan found the project's tasks
    wrong = []
    for layer in ("tasks", "flows"):
        for path in modules(layer):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and node.name in tasks and any("dapx_task" in ast.unparse(d)
                                                      for d in node.decorator_list)):
                    continue
                for call in ast.walk(node):
                    if isinstance(call, ast.Call):
                        func = call.func
                        called = func.attr if isinstance(func, ast.Attribute) else getattr(
                            func, "id", None)
                        if called in tasks and called != node.name:
                            wrong.append(f"{path.name}: task {node.name} calls task {called}")
    assert not wrong, "\n".join(wrong)
