"""The samples run as users run them (``python -m samples.NAME``) and report success."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path = ROOT) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_bank_moves_money_in_transactions_and_conserves_it(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    out = _run("samples.bank", "--accounts", "30", "--transfers", "400", "--db", str(db))
    assert "money conserved: OK" in out
    assert "committed" in out
    again = _run("samples.bank", "--accounts", "30", "--transfers", "100", "--db", str(db))
    assert "total before 3000, after 3000" in again  # the second run reopens the same accounts


def test_hello_greets_and_remembers(tmp_path: Path) -> None:
    db = str(tmp_path / "hello.db")
    assert "greeted 1 time(s)" in _run("samples.hello", db)
    assert "greeted 2 time(s)" in _run("samples.hello", db)  # state survived the process


def test_hello_keeps_its_state_in_the_working_directory(tmp_path: Path) -> None:
    # sqlite:///hello.db is relative (SQLAlchemy's convention): not /hello.db.
    assert "state in hello.db" in _run("samples.hello", cwd=tmp_path)
    assert (tmp_path / "hello.db").is_file()
    assert "greeted 2 time(s)" in _run("samples.hello", cwd=tmp_path)
