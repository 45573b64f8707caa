"""The samples run as users run them (``python -m samples.NAME``) and report success."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path = ROOT) -> str:
    env = dict(os.environ)  # samples/ is not installed: it runs from a checkout
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
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


def test_the_readmes_ten_lines_run(tmp_path: Path) -> None:
    out = _run("samples.ten_lines", cwd=tmp_path)
    assert out == "alice has 100\n"
    assert _run("samples.ten_lines", cwd=tmp_path) == "alice has 200\n"  # state was kept


def test_cart_expires_by_reminder_even_after_a_restart(tmp_path: Path) -> None:
    out = _run("samples.cart", "--db", str(tmp_path / "cart.db"), "--ttl", "0.5")
    assert "alice's cart expired: OK" in out
    assert "bob's cart expired after a restart: OK" in out


def test_orders_keeps_two_read_models_and_shows_each_consistency_level(tmp_path: Path) -> None:
    out = _run("samples.orders", "--orders", "60", "--db", str(tmp_path / "orders.db"))
    assert "read-your-writes: ana's open orders include 'mine': True" in out
    assert "read models agree with the write model: OK" in out


def test_trip_sagas_book_everything_or_nothing(tmp_path: Path) -> None:
    out = _run("samples.trip", "--trips", "40", "--seed", "3", "--db", str(tmp_path / "trip.db"))
    assert "no orphan bookings: OK" in out
    assert "every completed trip holds one flight, room, car and charge: OK" in out
    assert " completed " in out and " compensated " in out  # both outcomes happened
