"""What ``import raygrain`` brings into a process, and what waits until it is used.

Every module a process imports stays in memory as objects (functions, classes, their dicts)
that each full garbage collection goes through: under 1,000 writers, a full collection paused
the event loop 25-30 ms with raygrain's import-time objects, 15-19 ms without those deferred
here. So the logging library, the PostgreSQL driver, the Prometheus client and importlib.metadata
are imported when first used, and each still works when it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

DEFERRED = ("structlog", "rich", "asyncpg", "prometheus_client", "importlib.metadata")


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RAYGRAIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, **env},
        check=True,
    )


def test_importing_raygrain_leaves_the_optional_weight_out() -> None:
    done = _run(
        f"""
        import sys
        import raygrain
        from raygrain import Cluster, SqliteStorage
        print(sorted(m for m in {DEFERRED!r} if m in sys.modules))
        """
    )
    assert done.stdout.strip() == "[]"


def test_a_local_cluster_at_work_imports_none_of_them() -> None:
    # A quiet run: calls, durable writes, an error turned into a reply; nothing logged at the
    # default level, no metrics read, no PostgreSQL.
    done = _run(
        f"""
        import asyncio, sys, tempfile
        from pathlib import Path
        from raygrain import Actor, Cluster, SqliteStorage

        class Counter(Actor[int]):
            async def add(self, n: int) -> int:
                self.state = (self.state or 0) + n
                return self.state

        async def main() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                storage = SqliteStorage(Path(tmp) / "c.db")
                async with Cluster.local(actors=[Counter], silos=2, storage=storage) as cluster:
                    for key in range(20):
                        assert await cluster.get(Counter, key).add(key) == key
                    try:
                        await cluster.get(Counter, 1).add("x")
                    except Exception:
                        pass

        asyncio.run(main())
        print(sorted(m for m in {DEFERRED!r} if m in sys.modules))
        """
    )
    assert done.stdout.strip() == "[]"


def test_each_deferred_piece_works_when_first_used() -> None:
    done = _run(
        """
        import raygrain
        from raygrain.runtime.kernel import get_logger
        from raygrain.storage import PostgresStorage
        from raygrain.runtime.metrics import PrometheusExporter

        get_logger().info("not_written", detail=1)  # below the default level
        get_logger().warning("written", detail=2)
        exporter = PrometheusExporter(lambda: [])
        print(raygrain.__version__)
        print(PostgresStorage.__name__, exporter.text() == "")
        """
    )
    version, names = done.stdout.strip().splitlines()
    assert version and version[0].isdigit()
    assert names == "PostgresStorage True"
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(r["event"], r["detail"], r["level"]) for r in records] == [("written", 2, "warning")]


def test_the_level_chosen_by_environment_applies_before_structlog_is_imported() -> None:
    done = _run(
        """
        import sys
        from raygrain.runtime.kernel import get_logger
        get_logger().debug("debug_record", n=1)
        print("structlog" in sys.modules)
        """,
        RAYGRAIN_LOG_LEVEL="debug",
    )
    assert done.stdout.strip() == "True"
    assert '"event": "debug_record"' in done.stderr


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    done = _run(
        """
        import raygrain, raygrain.storage
        for module in (raygrain, raygrain.storage):
            try:
                module.NoSuchThing
            except AttributeError as exc:
                print(exc)
        """
    )
    assert done.stdout.splitlines() == [
        "module 'raygrain' has no attribute 'NoSuchThing'",
        "module 'raygrain.storage' has no attribute 'NoSuchThing'",
    ]
