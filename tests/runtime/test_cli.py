"""The ``raygrain`` command's face: ``--version``, and a status table that fits 100 columns."""

from __future__ import annotations

import subprocess
import sys

import raygrain
from raygrain.runtime.cli import MAX_WIDTH, table_console
from raygrain.runtime.cli._status import render

MAIN = "import sys; from raygrain.runtime.cli import main; sys.exit(main())"


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MAIN, "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"raygrain {raygrain.__version__}"


def test_status_table_fits_100_columns_and_aligns() -> None:
    silos = [
        {
            "silo": f"raygrain-silo-{'f' * 56}-{i}-ab12cd3{i}",
            "status": "active",
            "node": "f" * 56,  # a Ray node id
            "activations": 10**i,
            "uptime_s": 600.0,
            "calls_per_s": 1234.5 * i,
            "errors_per_s": 0.0,
            "p99_ms": 2.5,
            "storage_health": "ok",
            "types": ["app.Account", "app.Cart"],
            "version": "0.1.0",
        }
        for i in range(3)
    ]
    silos.append({"silo": "raygrain-silo-dead", "status": "dead", "node": "?", "error": "X"})
    controller = {"ok": True, "answer_ms": 2.0, "view_version": 7}
    console = table_console()
    with console.capture() as captured:
        console.print(render("demo", {"controller": controller, "silos": silos}))
    lines = [line.rstrip() for line in captured.get().splitlines()]
    assert lines[0].startswith("deployment demo: controller ok") and "view version 7" in lines[0]
    assert lines[1].split()[:3] == ["silo", "status", "node"]
    assert all(len(line) <= MAX_WIDTH for line in lines), max(map(len, lines))
    squeezed = "".join("\n".join(lines[3:]).split())  # folded cells, joined again
    for silo in silos:
        assert str(silo["silo"])[-10:] in squeezed  # a long name folds; its end stays
    assert "dead" in squeezed and "unreachable:" in squeezed
