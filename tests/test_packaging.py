"""One import name, raygrain: what the wheel installs, a user's tree with its own modules named
like ours, and a type checker that finds raygrain's types (issue 13, part 1)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".benchmarks"
)


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_wheel_installs_raygrain_and_nothing_else(tmp_path: Path) -> None:
    # Build from a copy, so the build leaves nothing in the working tree.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCE)
    # Build with the setuptools at hand when there is one (no download); else pip fetches it.
    at_hand = all(importlib.util.find_spec(name) for name in ("setuptools", "wheel"))
    isolation = ["--no-build-isolation"] if at_hand else []
    out = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(out), "."],
        cwd=source,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = out.glob("raygrain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    dist_info = {name for name in top_level if name.endswith(".dist-info")}
    assert top_level - dist_info == {"raygrain"}, sorted(top_level)
    # The linked folders are in it as subpackages, with their types.
    for package in ("actors", "runtime", "storage", "benchmarks"):
        assert f"raygrain/{package}/__init__.py" in names
    assert "raygrain/py.typed" in names and "raygrain/actors/py.typed" in names


USER_APP = """
import asyncio

import actors  # the user's own modules, named like raygrain's folders
import runtime
import storage
from raygrain import Actor, Cluster


class Counter(Actor[int]):
    async def increment(self) -> int:
        self.state += 1
        return self.state


async def main() -> None:
    async with Cluster.local(actors=[Counter], storage=storage.URL) as cluster:
        counter = cluster.get(Counter, runtime.KEY)
        await counter.increment()
        print(actors.NAME, await counter.increment())


asyncio.run(main())
"""


def test_a_user_tree_with_its_own_storage_runtime_and_actors_modules(tmp_path: Path) -> None:
    (tmp_path / "storage.py").write_text('URL = "memory://"\n')
    (tmp_path / "runtime.py").write_text('KEY = "mine"\n')
    (tmp_path / "actors.py").write_text('NAME = "my actors"\n')
    (tmp_path / "app.py").write_text(USER_APP)
    done = _run([sys.executable, "app.py"], cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "my actors 2"


USER_TYPED = """
import asyncio

from raygrain import Actor, Cluster


class Counter(Actor[int]):
    async def get(self) -> int:
        return self.state

    async def add(self, amount: int) -> int:
        self.state += amount
        return self.state


async def main() -> None:
    async with Cluster.local(actors=[Counter]) as cluster:
        ref = cluster.get(Counter, "a")
        total: int = await ref.add(2)
        current: int = await ref.with_timeout(2).get()
        print(total, current)
"""


@pytest.mark.slow
def test_mypy_finds_raygrains_types_in_a_users_file(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "good.py").write_text(USER_TYPED)
    # The same file with a misuse: mypy must see it, or it was not reading raygrain's types.
    (tmp_path / "bad.py").write_text(
        USER_TYPED + "\n\nasync def wrong(c: Cluster) -> str:\n"
        '    return await c.get(Counter, "a").with_timeout(2).get()\n'
    )
    mypy = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache")]
    good = _run([*mypy, "good.py"], cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = _run([*mypy, "bad.py"], cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert 'Incompatible return value type (got "int", expected "str")' in bad.stdout
    assert "Cannot find implementation" not in bad.stdout
