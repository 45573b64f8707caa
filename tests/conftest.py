"""Shared fixtures: in-process clusters over every test actor, closed after each test."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from raygrain.runtime import (
    Cluster,
    ManualClock,
    MetricsSettings,
    ReminderSettings,
    SagaSettings,
    TracingSettings,
)
from raygrain.runtime.kernel import SiloOptions
from tests import app, trace_sink

# Ray runs async actors, every silo, on uvloop when it is installed, as it is with the test
# extras: the Ray tests run silos on asyncio's loop, which is what a deployment gets without
# uvloop (tests/runtime/test_uvloop.py and the TLS wire test cover uvloop). Set before any Ray
# starts here, for Ray's processes inherit it; set it to 1 to run the Ray tests on uvloop.
os.environ.setdefault("RAY_USE_UVLOOP", "0")


@pytest.fixture(autouse=True)
def _reset_app_hooks() -> None:
    app.GATES.clear()
    app.EVENTS.clear()
    app.BARRIERS.clear()
    app.Recorder.activations = 0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def cluster(clock: ManualClock) -> AsyncIterator[Cluster]:
    async with Cluster.local(
        actors=app.ALL_ACTORS, silos=3, clock=clock, deactivation_timeout=0.5
    ) as running:
        yield running


# -- PostgreSQL ---------------------------------------------------------------------------------
# One server for the whole test run: the one RAYGRAIN_TEST_POSTGRES_DSN names, or else a
# throwaway server (initdb + pg_ctl on a free port, as the postgres user when we are root),
# removed at the end. Each test gets a schema of its own, dropped after it.

POSTGRES_DSN_VARIABLE = "RAYGRAIN_TEST_POSTGRES_DSN"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A DSN of a PostgreSQL server the tests may create schemas in."""
    given = os.environ.get(POSTGRES_DSN_VARIABLE)
    if given:
        yield given
        return
    from raygrain.benchmarks._postgres_server import ThrowawayPostgres, find_postgres_bin

    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on "
            f"the PATH: install the 'postgresql' package, or set {POSTGRES_DSN_VARIABLE}"
        )
    with ThrowawayPostgres(bin_dir) as server:
        yield server.dsn


@pytest.fixture
def postgres_url(postgres_dsn: str) -> Iterator[str]:
    """A storage URL on the test server, in a fresh schema of its own."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_dsn}{'&' if '?' in postgres_dsn else '?'}schema={schema}"
    _run_aside(drop_postgres_schema(postgres_dsn, schema))


async def drop_postgres_schema(dsn: str, schema: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture
def log(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> Any:
    """raygrain's log (from warning up) written to the captured stderr for this test, and put
    back as it was after it; ``configure_logging(level)`` in the test changes the level."""
    import logging
    import sys

    from raygrain.runtime.kernel import _logging

    # The next get_logger() configures afresh (the level from RAYGRAIN_LOG_LEVEL again).
    monkeypatch.setattr(_logging, "_logger", None)
    monkeypatch.setattr(_logging, "_configured", False)
    capsys.readouterr()

    # raygrain logs through the stdlib logger "raygrain"; under pytest the root logger has
    # pytest's handlers, so raygrain's own stderr fallback stays quiet: write to capsys here.
    class ToStderr(logging.StreamHandler):  # type: ignore[type-arg]
        def emit(self, record: logging.LogRecord) -> None:
            self.stream = sys.stderr  # capsys's stream while the test runs
            super().emit(record)

    handler = ToStderr()
    raygrain_logger = logging.getLogger("raygrain")
    raygrain_logger.addHandler(handler)
    request.addfinalizer(lambda: raygrain_logger.removeHandler(handler))
    return capsys


# -- Ray ----------------------------------------------------------------------------------------
# One Ray session for the whole test run: a 3-node ray.cluster_utils.Cluster (one CPU each) with
# one silo per node and a storage server on a temporary SQLite file. Tests connect a fresh
# client each; keys are made unique per test because the store outlives a test. The silos offer
# both data planes (they listen for direct connections and take Ray calls), and each Ray test
# runs once per client transport ("ray", "direct": the ray_transport fixture).

RAY_TRANSPORTS = ["ray", "direct"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The suite runs on two pytest-xdist workers (``-n 2 --dist loadgroup``, pyproject.toml).
    The tests on the session's Ray (marked ray, under tests/ray/, or using its silos) form one
    group, run by one worker one after another, as in a single process: the session's Ray is
    made once, and no two of them share it. The tests that start a fresh Ray of their own in a
    child process (marked fresh_ray) form another, which xdist gives the other worker (it hands
    out the largest groups first); the in-process tests fill in around both."""
    for item in items:
        if item.get_closest_marker("fresh_ray") is not None:
            _group(item, "fresh-ray")
        elif _needs_ray(item):
            _group(item, "ray")


def _group(item: pytest.Item, group: str) -> None:
    """Put ``item`` in an xdist group. xdist groups a test by a ``@group`` suffix of the id
    its worker reports, which xdist's own collection hook adds for ``xdist_group`` marks; but
    that hook runs before this one (these marks are not there yet), and pytest 9.2 keeps a
    node's id in ``_id`` (a ``NodeId``) where xdist 3.8 writes ``_nodeid``: the suffix is added
    here, in whichever the running pytest reads, and checked (a suite whose groups silently
    came apart started the session's Ray on both workers, and a third Ray beside them)."""
    item.add_marker(pytest.mark.xdist_group(group))
    if not hasattr(item.config, "workerinput"):
        return  # not an xdist worker: ids stay as they are
    suffixed = f"{item.nodeid}@{group}"
    if item.nodeid.endswith(f"@{group}"):
        return
    node_id = getattr(item, "_id", None)
    if node_id is not None and not isinstance(node_id, str):
        item._id = type(node_id).parse(suffixed)
    else:
        item._nodeid = suffixed  # type: ignore[attr-defined]
    if item.nodeid != suffixed:
        raise pytest.UsageError(f"cannot put {item.nodeid} in the xdist group {group!r}")


def _needs_ray(item: pytest.Item) -> bool:
    fixtures = getattr(item, "fixturenames", ())
    return (
        item.get_closest_marker("ray") is not None
        or "ray_silos" in fixtures
        or "ray_transport" in fixtures
        or item.path.parent.name == "ray"  # tests/ray/
    )


# Reminders with sub-second periods (the cluster default refuses periods under a minute), and
# the saga index waking live sagas every half second.
# The silos push metrics every second, and hand their spans to the trace tests' sink.
RAY_SILO_OPTIONS = SiloOptions(
    deactivation_timeout=0.5,
    capabilities=(
        ReminderSettings(minimum_period=0.2),
        SagaSettings(wake_period=0.5),
        MetricsSettings(export_period=1.0),
        TracingSettings(setup=trace_sink.SETUP),
    ),
)


@pytest.fixture(scope="session")
def ray_silos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster as RayTestCluster

    from raygrain.runtime.ray_host import RayLaunch, ensure_ray, launch, stop_everything

    nodes = RayTestCluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(2):
            nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()
        ensure_ray(nodes.address, local_code=True)
        db = tmp_path_factory.mktemp("ray-state") / "state.db"
        spec = RayLaunch(tuple(app.ALL_ACTORS), 1, None, f"sqlite:///{db}")
        handles = _run_aside(launch(spec, RAY_SILO_OPTIONS))
        head = ray.get_runtime_context().get_node_id()
        workers = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head]
        yield SimpleNamespace(
            nodes=nodes,
            handles=handles,
            address=nodes.address,
            node_ids=[head, *workers],
            worker_node_ids=workers,
        )
        _run_aside(stop_everything())
    finally:
        ray.shutdown()
        nodes.shutdown()


def _run_aside(coroutine: Any) -> Any:
    """Run a coroutine to completion on its own loop in another thread (this fixture may be
    set up from inside a test's running event loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(params=RAY_TRANSPORTS)
def ray_transport(request: pytest.FixtureRequest) -> str:
    """The transport a Ray test's clients use: each Ray test runs on both."""
    return str(request.param)


@pytest.fixture(
    params=["local", "postgres", *(pytest.param(t, marks=pytest.mark.ray) for t in RAY_TRANSPORTS)]
)
async def any_cluster(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[Cluster]:
    """The same test against an in-process cluster (in memory, and on a real PostgreSQL
    server) and against Ray silos on three nodes, the client on either transport."""
    if request.param in ("local", "postgres"):
        storage = (
            "memory://" if request.param == "local" else request.getfixturevalue("postgres_url")
        )
        async with Cluster.local(
            actors=app.ALL_ACTORS, silos=3, clock=clock, deactivation_timeout=0.5, storage=storage
        ) as local:
            yield local
    else:
        silos = request.getfixturevalue("ray_silos")
        async with Cluster.connect(
            silos.address, actors=app.ALL_ACTORS, transport=request.param
        ) as remote:
            yield remote


@pytest.fixture
def key(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Keys unique to this test (state on Ray outlives a single test)."""
    prefix = request.node.name
    return lambda name: f"{prefix}:{name}"
