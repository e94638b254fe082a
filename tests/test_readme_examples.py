"""Every Python block of the README runs as written when pasted in order into one session.

The blocks build on each other (block 1 defines ``model`` and ``x``, later ones use them), so they run in
one namespace, in a temporary working directory (some save pictures), and a block that fails names itself.
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 5


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for line, code in python_blocks():
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as error:  # name the block, keep the cause
            pytest.fail(f"the README's Python block at line {line} fails: {type(error).__name__}: {error}")


def test_readme_links_nothing_outside_the_repository():
    """Readers of the repo do not have the workplace's shared notes: no absolute links into it."""
    assert "/work/" not in README.read_text()


def test_readme_headings_are_unique():
    """A section pasted twice (an edit gone wrong once doubled half the README) shows as a repeated heading."""
    prose = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.DOTALL | re.MULTILINE)
    headings = [line for line in prose.splitlines() if line.startswith("#")]
    repeated = sorted({heading for heading in headings if headings.count(heading) > 1})
    assert not repeated, f"headings that appear more than once: {repeated}"
