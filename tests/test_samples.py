"""The samples run as users run them (``python -m samples.NAME``) and report success."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=120
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


def test_cart_expires_by_reminder_even_after_a_restart(tmp_path: Path) -> None:
    out = _run("samples.cart", "--db", str(tmp_path / "cart.db"), "--ttl", "0.5")
    assert "alice's cart expired: OK" in out
    assert "bob's cart expired after a restart: OK" in out
