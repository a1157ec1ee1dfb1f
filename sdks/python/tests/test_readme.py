"""The README's examples: every Python block (and the main README's) type-checks with `mypy
--strict`, and the blocks followed by "prints `…`" print exactly that (the client's block against
a real server)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, start_server

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```python\n(.*?)```\n(?:\nprints `(.*?)`)?", re.S)


def blocks() -> list[tuple[str, str | None]]:
    found = [(m.group(1), m.group(2)) for m in BLOCK.finditer(README.read_text())]
    assert len(found) >= 4, "the README's examples were not found"
    return found


def test_the_readmes_examples_and_the_example_service_type_check(tmp_path: Path) -> None:
    files = []
    main = [m.group(1) for m in BLOCK.finditer((ROOT / "README.md").read_text())]
    assert main, "the main README shows the Python SDK"
    for i, code in enumerate([c for c, _ in blocks()] + main):
        path = tmp_path / f"block_{i}.py"
        path.write_text(code)
        files.append(str(path))
    example = ROOT / "examples" / "worker-py"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "shop.py", "main.py"],
        capture_output=True,
        text=True,
        cwd=example,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("index", [i for i, (_, printed) in enumerate(blocks()) if printed])
def test_a_readme_example_prints_what_the_readme_says(index: int, tmp_path: Path) -> None:
    code, printed = blocks()[index]
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == printed


def test_the_client_example_runs_against_a_server(tmp_path: Path) -> None:
    code = next(code for code, _ in blocks() if "Client(" in code)
    with start_server(workers=2) as s:
        s.save({"name": "etl", "tasks": [{"name": "nap", "type": "sleep", "duration": "10ms"}]})
        script = tmp_path / "client.py"
        script.write_text(code.replace("http://127.0.0.1:3000", s.base))
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env={**os.environ})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "succeeded ['succeeded']"
