"""Deploy tier: the README's Python snippets run as written (against the lab's nodes and a
real Prefect server), so the documented SDK usage never drifts from the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[2] / "README.md"


def snippets() -> list[str]:
    """Every ```python block of the README, dedented."""
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", README.read_text(), re.M | re.S)
    return ["\n".join(line[len(indent):] for line in body.splitlines())
            for indent, body in blocks]


def test_every_python_snippet_runs(lab_nodes: str) -> None:
    found = snippets()
    assert found, "the README has no Python example"
    for code in found:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={**os.environ}, timeout=300)
        assert result.returncode == 0, f"{code}\n---\n{result.stdout}\n{result.stderr}"
        assert "coroutine object" not in result.stdout, result.stdout
        assert "node pve1 (pve): OK" in result.stdout, result.stdout
