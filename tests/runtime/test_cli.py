"""The ``raygrain`` command's face: ``--version``, and a status table that fits 100 columns."""

from __future__ import annotations

import subprocess
import sys

import raygrain
from raygrain.runtime.cli import MAX_WIDTH, table_console
from raygrain.runtime.cli._main import _status_table

MAIN = "import sys; from raygrain.runtime.cli import main; sys.exit(main())"


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MAIN, "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"raygrain {raygrain.__version__}"


def test_status_table_fits_100_columns_and_aligns() -> None:
    rows = [
        {
            "silo": f"raygrain-silo-{'f' * 56}-{i}-ab12cd3{i}",
            "status": "active",
            "node": "f" * 56,  # a Ray node id
            "activations": 10**i,
            "calls_received": 123456789 * i,
        }
        for i in range(3)
    ]
    rows.append({"silo": "raygrain-silo-dead", "status": "dead", "node": "?", "error": "X"})
    console = table_console()
    with console.capture() as captured:
        console.print(_status_table(7, rows))
    lines = [line.rstrip() for line in captured.get().splitlines()]
    assert lines[0] == "membership view version 7, 4 silo(s)"
    assert lines[1].split() == ["silo", "status", "node", "activations", "calls"]
    assert all(len(line) <= MAX_WIDTH for line in lines), max(map(len, lines))
    body = lines[3:]
    text = "\n".join(body)
    for row in rows:
        assert str(row["silo"])[-10:] in text  # a long name folds; its end stays
    numbered = [line for line in body if " active " in line]
    assert len(numbered) == 3 and len({len(line) for line in numbered}) == 1  # right-aligned
    assert "dead" in text and body[-1].endswith("-")
