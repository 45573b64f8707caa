"""The direct data plane on Ray: calls travel on the silos' own connections, survive those
connections being cut, and go by Ray when a silo cannot be dialled."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from raygrain.actors import ConfigurationError
from raygrain.runtime import Cluster
from raygrain.runtime.wire import LinkState
from tests import app
from tests.app import BankAccount
from tests.ray.test_failover import Workload


def test_an_unknown_transport_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="transport must be 'direct' or 'ray'"):
        Cluster.ray(actors=app.ALL_ACTORS, transport="tcp")
    with pytest.raises(ConfigurationError, match="transport must be 'direct' or 'ray'"):
        Cluster.connect("auto", transport="grpc")


@pytest.mark.ray
async def test_a_direct_client_calls_over_its_own_connections(ray_silos: Any, key: Any) -> None:
    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        refs = [cluster.get(BankAccount, key(f"a{i}")) for i in range(60)]
        assert await asyncio.gather(*(r.deposit(2) for r in refs)) == [2] * 60
        backend: Any = cluster._backend
        assert backend.wire is not None
        assert backend.wire.messages_sent >= 60
        assert backend.ray_transport.messages_sent == 0  # nothing went by Ray
        stats = await cluster.stats()
        assert all(s["direct_address"] for s in stats)
        assert sum(s["direct_messages_sent"] for s in stats) >= 60  # the answers, directly


@pytest.mark.ray
async def test_cut_connections_mid_workload_fail_or_complete_calls_once_and_reconnect(
    ray_silos: Any, key: Any
) -> None:
    """Each silo closes every direct connection it has (the test's network fault)."""
    import ray

    from raygrain.runtime.ray_host import namespace_of

    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        work = Workload(cluster, key, accounts=200)
        running = asyncio.ensure_future(work.run())
        try:
            await work.until(300)
            view = cluster._caller._membership.view
            silos = [
                ray.get_actor(name, namespace=namespace_of("default")) for name in view.active()
            ]
            cut = await asyncio.gather(*(s.drop_connections.remote() for s in silos))
            assert sum(cut) >= len(silos)  # at least the client's connection to each
            before = work.acknowledged()
            await work.until(before + 300)  # the client redialled by itself
        finally:
            work.stop.set()
            await running
        await work.verify()
        wire = cluster._backend.wire  # type: ignore[attr-defined]
        assert all(wire.link_state(name) is LinkState.UP for name in view.active())


@pytest.mark.ray
async def test_a_silo_that_cannot_be_dialled_is_reached_through_ray(
    ray_silos: Any, key: Any, log: Any
) -> None:
    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        backend: Any = cluster._backend
        wire = backend.wire
        # Every silo's published address now leads nowhere (a firewall between us and it).
        closed = _closed_port()
        for name in cluster._caller._membership.view.active():
            wire.forget(name)
            wire._locate._known[name] = ("127.0.0.1", closed)
        refs = [cluster.get(BankAccount, key(f"f{i}")) for i in range(30)]
        assert await asyncio.gather(*(r.deposit(1) for r in refs)) == [1] * 30
        assert await asyncio.gather(*(r.deposit(1) for r in refs)) == [2] * 30
        assert backend.ray_transport.messages_sent >= 60
    logged = log.readouterr().err
    assert 1 <= logged.count("wire_unreachable_using_ray") <= len(ray_silos.node_ids)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
