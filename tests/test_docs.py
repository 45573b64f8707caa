"""Every ```python block in README.md and docs/*.md runs as written, as a script in a fresh
directory. A block that is only a fragment says so with ``<!-- not-run: why -->`` on the line
before it (sparingly: a reader cannot tell a fragment from an example)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?P<mark><!-- not-run[^>]*-->\n)?```python\n(?P<code>.*?)^```$", re.S | re.M)


def _blocks() -> list[object]:
    # A block shown word for word on two pages (README.md's "On Ray" is docs/ray.md's first)
    # runs once, under the names of both places: running it twice proved nothing more and
    # cost CI a Ray start (about 20 s).
    places: dict[tuple[str, str | None], list[str]] = {}
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code")) + 1
            places.setdefault((match["code"], match["mark"]), []).append(f"{page.name}:{line}")
    found = []
    for (code, mark), where in places.items():
        marks = []
        if mark:
            marks.append(pytest.mark.skip(reason=f"marked {mark.strip()}"))
        elif "Cluster.ray(" in code:
            marks += [pytest.mark.ray, pytest.mark.fresh_ray, pytest.mark.slow]  # a Ray of its own
        found.append(pytest.param(code, id="+".join(where), marks=marks))
    return found


@pytest.mark.parametrize("code", _blocks())
def test_the_block_runs_as_written(code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    # A script of its own: not the test session's Ray, whatever this process joined.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_shows_the_ten_line_sample() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Ten lines") :]
    shown = BLOCK.search(section)
    assert shown is not None
    sample = (ROOT / "samples" / "ten_lines.py").read_text()
    assert shown["code"] in sample  # the file is the block, under its docstring
