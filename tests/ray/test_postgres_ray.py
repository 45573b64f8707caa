"""Ray with ``storage="postgresql://..."``: every silo connects to the database itself, so no
raygrain process holds the state, and killing silos (the launching side's, and a whole node with
another) loses no acknowledged write while the survivor serves every actor.

The cluster runs in a child process (tests/ray/postgres_node_kill.py) with a 3-node
``ray.cluster_utils.Cluster`` of its own: the test session's Ray already hosts a deployment
with a storage server under the same names.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
@pytest.mark.fresh_ray
@pytest.mark.slow
@pytest.mark.timeout(600)  # starting three Ray nodes on a busy 2-core machine takes a minute
def test_killing_silos_on_postgres_loses_no_acknowledged_write(postgres_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # A session of its own: if the child has to be stopped, its Ray processes go with it.
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.ray.postgres_node_kill", postgres_url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = child.communicate(timeout=540)
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 0, f"{stdout[-3000:]}\n{stderr[-6000:]}"
    seen = json.loads(stdout.strip().splitlines()[-1])
    assert seen["acknowledged"] >= seen["acknowledged_at_kill"] + 300
    print(f"\n{seen}")
