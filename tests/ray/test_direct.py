"""The direct data plane on Ray: calls travel on the silos' own connections, survive those
connections being cut, and go by Ray when a silo cannot be dialled."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from raygrain.actors import ConfigurationError
from raygrain.runtime import Cluster
from raygrain.runtime.ray_host._direct import DirectPlane
from raygrain.runtime.wire import LinkState, ProtocolError, TLSFiles, offer_handshake
from tests import app
from tests.app import BankAccount, Chain
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


@pytest.mark.ray
async def test_a_deployment_with_tls_carries_calls_over_tls_only(
    ray_silos: Any, tmp_path: Path
) -> None:
    """A deployment of its own on the session's Ray, launched with TLS files: its client and
    its silos (to each other) call over TLS, and a plain TCP dialer gets nowhere."""
    import ray

    node_ip = ray.util.get_node_ip_address()
    cert, key = _self_signed(tmp_path, [node_ip, "127.0.0.1"])
    tls = TLSFiles(str(cert), str(key), str(cert))
    async with Cluster.ray(
        address=ray_silos.address,
        actors=app.ALL_ACTORS,
        name="tls-test",
        storage=f"sqlite:///{tmp_path}/tls.db",
        tls=tls,
    ) as cluster:
        refs = [cluster.get(Chain, f"a{i}") for i in range(30)]
        # Chain.relay calls another Chain, on another silo for most pairs of keys.
        answers = await asyncio.gather(
            *(r.relay(cluster.get(Chain, f"b{i}"), "ping") for i, r in enumerate(refs))
        )
        assert answers == [f"pong from b{i}" for i in range(30)]
        backend: Any = cluster._backend
        assert backend.wire is not None and backend.wire.options.tls
        assert backend.wire.messages_sent >= 30
        assert backend.ray_transport.messages_sent == 0  # nothing went by Ray
        stats = await cluster.stats()
        # The 30 answers to the client, and the relays between silos (2 messages each; with 3
        # silos, all 30 pairs on one silo each is a 3**-30 chance).
        assert sum(s["direct_messages_sent"] for s in stats) > 30
        host, port = stats[0]["direct_address"]
        # Plain TCP (with the right secret): the silo waits for TLS and drops the dialer, within
        # the handshake timeout if it says nothing (5 s), at once if it speaks plain bytes.
        for speaks in (False, True):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if speaks:
                    writer.write(b"RGW1" + bytes(200))
                with pytest.raises((ProtocolError, asyncio.IncompleteReadError, ConnectionError)):
                    await asyncio.wait_for(
                        offer_handshake(reader, writer, backend.wire.options.secret, "plain"), 30
                    )
            finally:
                writer.close()
        context = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection(  # TLS, right secret: a member
            host, port, ssl=context, server_hostname=host
        )
        try:
            await offer_handshake(reader, writer, backend.wire.options.secret, "tls-member")
        finally:
            writer.close()


def _self_signed(directory: Path, ips: list[str]) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    names = ",".join(f"IP:{ip}" for ip in dict.fromkeys(ips))
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", f"/CN={ips[0]}", "-addext", f"subjectAltName={names}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_a_client_needs_only_the_ca_file_and_a_missing_file_is_named(tmp_path: Path) -> None:
    """(No Ray) A client only dials: it needs the CA file, never the silos' key, which a
    client machine should not hold (it needed both: a client without the key failed with a
    bare FileNotFoundError). A silo whose files are missing is told which, as a
    ConfigurationError."""
    cert, _ = _self_signed(tmp_path, ["127.0.0.1"])
    absent = str(tmp_path / "absent-key.pem")
    plane = DirectPlane(tls=TLSFiles(str(cert), absent, str(cert)))
    client = plane.options(listening=False)
    assert client.client_ssl is not None and client.server_ssl is None
    with pytest.raises(ConfigurationError, match="absent-key.pem"):
        plane.options()
    with pytest.raises(ConfigurationError, match="nowhere.pem"):
        DirectPlane(tls=TLSFiles(str(cert), absent, str(tmp_path / "nowhere.pem"))).options(
            listening=False
        )
