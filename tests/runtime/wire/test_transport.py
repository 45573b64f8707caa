"""The direct transport between real sockets on 127.0.0.1: silos on loops of their own, clients
on the test's loop."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from raygrain.actors import MessageTooLargeError, RaygrainError, SiloUnavailableError
from raygrain.runtime._capabilities import client_filters
from raygrain.runtime.kernel import (
    ActorRegistry,
    LocalTransport,
    Membership,
    Silo,
    SiloOptions,
    SiloStatus,
    SystemClock,
)
from raygrain.runtime.metrics import CallMetrics
from raygrain.runtime.transactions import TransactionContext, current_transaction
from raygrain.runtime.wire import LinkState, WireOptions
from raygrain.storage import MemoryStorage
from tests import app
from tests.app import BankAccount, Chain, Recorder
from tests.helpers import own_log_count
from tests.runtime.wire._silos import SECRET, Client, Directory, SiloInThread


@pytest.fixture
def directory() -> Directory:
    return Directory()


@pytest.fixture
def silo(directory: Directory) -> Iterator[SiloInThread]:
    running = SiloInThread("silo-a", directory, WireOptions(SECRET), ["silo-a"])
    yield running
    running.stop()


@pytest.fixture
async def client(directory: Directory, silo: SiloInThread) -> AsyncIterator[Client]:
    connected = Client(directory, WireOptions(SECRET), ["silo-a"])
    yield connected
    await connected.aclose()


async def test_calls_and_their_answers_travel_on_the_connection(
    client: Client, silo: SiloInThread
) -> None:
    account = client.ref(BankAccount, "alice")
    assert await account.deposit(5) == 5
    assert await account.deposit(7) == 12
    chains = [client.ref(Chain, f"k{i}") for i in range(2000)]
    await asyncio.gather(*(chain.echo(i) for i, chain in enumerate(chains)))
    # Batched: many calls to a frame, both ways. (Measured on active actors: activations end
    # one by one as their loads do, and a loaded machine spreads those answers thin.)
    client_before = (client.transport.messages_sent, client.transport.batches_sent)
    silo_before = (silo.transport.messages_sent, silo.transport.batches_sent)
    results = await asyncio.gather(*(chain.echo(i) for i, chain in enumerate(chains)))
    assert results == list(range(2000))
    client_messages = client.transport.messages_sent - client_before[0]
    silo_messages = silo.transport.messages_sent - silo_before[0]
    # (The silo's counters are read from another thread: they may lag by its last batch.)
    assert client_messages >= 2000 and silo_messages >= 1000
    assert client.transport.batches_sent - client_before[1] < client_messages / 5
    assert silo.transport.batches_sent - silo_before[1] < silo_messages / 5


async def test_silos_call_each_other_and_answer_on_the_same_connections(
    directory: Directory,
) -> None:
    names = ["silo-a", "silo-b"]
    silos = [SiloInThread(name, directory, WireOptions(SECRET), names) for name in names]
    client = Client(directory, WireOptions(SECRET), names)
    try:
        # Chain.relay calls another Chain: across silos for about half the pairs of keys.
        answers = await asyncio.gather(
            *(
                client.ref(Chain, f"a{i}").relay(client.ref(Chain, f"b{i}"), "ping")
                for i in range(200)
            )
        )
        assert answers == [f"pong from b{i}" for i in range(200)]
        assert all(s.transport.messages_sent > 0 for s in silos)
    finally:
        await client.aclose()
        for running in silos:
            running.stop()


async def test_a_large_batch_is_split_into_frames_under_the_cap(directory: Directory) -> None:
    options = WireOptions(SECRET, max_frame_bytes=64 * 1024)  # the deployment's, both sides
    silo = SiloInThread("silo-a", directory, options, ["silo-a"])
    client = Client(directory, options, ["silo-a"])
    try:
        payload = "x" * 1000
        results = await asyncio.gather(
            *(client.ref(Chain, f"k{i}").echo(payload) for i in range(500))
        )
        assert results == [payload] * 500
        with pytest.raises(MessageTooLargeError, match="frame limit"):
            await client.ref(Chain, "big").echo("y" * 100_000)
        assert await client.ref(Chain, "after").echo(payload) == payload  # still connected
    finally:
        await client.aclose()
        silo.stop()


async def test_a_silo_that_cannot_be_reached_fails_calls_as_not_delivered(
    directory: Directory,
) -> None:
    directory.addresses["silo-a"] = ("127.0.0.1", _closed_port())
    client = Client(directory, WireOptions(SECRET, connect_timeout=2.0), ["silo-a"])
    try:
        with pytest.raises(SiloUnavailableError, match="not reachable|not delivered"):
            await client.ref(Chain, "k").ping()
        assert client.transport.link_state("silo-a") in (LinkState.DOWN, LinkState.CONNECTING)
    finally:
        await client.aclose()


async def test_a_client_refuses_another_silo_at_the_address_it_dialled(
    directory: Directory, silo: SiloInThread
) -> None:
    """The address the client holds for silo-b is silo-a's (gone stale: silo-b's port taken by
    a newer silo of the same deployment). Both know the secret, but silo-a is not the silo
    the calls were for: it is refused in the handshake, and silo-b's calls never run on it
    (they ran there, an activation of an actor silo-a does not own, its answer taken as
    silo-b's)."""
    directory.addresses["silo-b"] = silo.address
    client = Client(directory, WireOptions(SECRET), ["silo-b"], name="client-stale")
    try:
        with pytest.raises(SiloUnavailableError, match="not silo-b|'silo-b'"):
            await client.ref(BankAccount, "stale").deposit(1)
        assert client.transport.link_state("silo-b") is not LinkState.UP
    finally:
        await client.aclose()
    assert silo.silo.calls_received == 0


async def test_a_send_that_raises_ends_the_call_for_its_filters_and_observers(
    directory: Directory,
) -> None:
    # A link that is down (its dial failed, the next one 60 s away) makes send itself raise;
    # the call had started for the metrics and the transaction, which must see it end.
    directory.addresses["silo-a"] = ("127.0.0.1", _closed_port())
    filters = client_filters()
    client = Client(
        directory,
        WireOptions(SECRET, connect_timeout=2.0, backoff=60.0, max_backoff=60.0),
        ["silo-a"],
        filters=filters,
    )
    metrics = next(f for f in filters if isinstance(f, CallMetrics)).metrics
    name = Chain.__actor_options__.name
    try:
        with pytest.raises(SiloUnavailableError):  # (failed by the dial, not by send)
            await client.ref(Chain, "k").ping()
        assert client.transport.link_state("silo-a") is LinkState.DOWN
        transaction = TransactionContext.new()
        token = current_transaction.set(transaction)
        try:
            with pytest.raises(SiloUnavailableError, match="is not reachable"):
                await client.ref(Chain, "k").ping()
        finally:
            current_transaction.reset(token)
        assert transaction.running == 0
        await asyncio.wait_for(transaction.end(), 5.0)  # (it waited forever before)
        failed = metrics.errors.counter("caller", name, "ping", "SiloUnavailableError")
        assert failed.value == 2
        assert metrics.duration.histogram("caller", name, "ping").count == 2
    finally:
        await client.aclose()


async def test_a_wrong_secret_gets_no_call_through(
    directory: Directory, silo: SiloInThread
) -> None:
    intruder = Client(directory, WireOptions(b"w" * 32), ["silo-a"], name="client-intruder")
    try:
        with pytest.raises(SiloUnavailableError, match="not delivered"):
            await intruder.ref(BankAccount, "victim").deposit(1)
    finally:
        await intruder.aclose()
    assert silo.transport.refused >= 1
    assert silo.silo.calls_received == 0


async def test_unreachable_direct_address_falls_back_and_says_so_once(
    log: pytest.CaptureFixture[str],
) -> None:
    """No direct address (or none that answers): calls go by the fallback transport."""
    fallback = LocalTransport()
    silo = _local_silo(fallback)
    nowhere = Directory()  # publishes no address for silo-a
    client = Client(nowhere, WireOptions(SECRET), ["silo-a"], fallback=fallback)
    fallback.register(client.caller.address, client.caller)
    try:
        for amount in range(1, 6):
            assert await client.ref(BankAccount, "fb").deposit(1) == amount
    finally:
        await client.aclose()
        await silo.aclose()
    assert own_log_count(log.readouterr().err, "wire_unreachable_using_ray") == 1


async def test_calls_go_by_the_fallback_while_an_unreachable_silo_is_redialled() -> None:
    """Once a silo could not be dialled, its calls go by the fallback while it is redialled,
    rather than waiting for each redial: behind a firewall that drops packets, every redial
    takes the whole connect timeout, and the calls stalled for it again and again."""
    fallback = LocalTransport()
    silo = _local_silo(fallback)
    silent: list[asyncio.StreamWriter] = []

    async def never_challenge(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # a dial here waits out its connect timeout

    black_hole = await asyncio.start_server(never_challenge, "127.0.0.1", 0)
    directory = Directory()
    directory.addresses["silo-a"] = ("127.0.0.1", _closed_port())
    options = WireOptions(SECRET, connect_timeout=120.0)
    client = Client(directory, options, ["silo-a"], fallback=fallback)
    fallback.register(client.caller.address, client.caller)
    try:
        account = client.ref(BankAccount, "redial")
        assert await account.deposit(1) == 1  # refused at once: by the fallback
        directory.addresses["silo-a"] = black_hole.sockets[0].getsockname()[:2]
        await _until(lambda: bool(silent))  # a redial waits there now
        async with asyncio.timeout(30):  # (a guard: the call waited for the redial)
            assert await account.deposit(1) == 2
        assert client.transport.link_state("silo-a") is LinkState.CONNECTING
    finally:
        await client.aclose()
        await silo.aclose()
        black_hole.close()
        for writer in silent:
            writer.close()
            await writer.wait_closed()


@pytest.mark.parametrize("silo_loop", ["asyncio", "uvloop"])
async def test_tls_connections_carry_calls_and_plain_ones_are_refused(
    directory: Directory, tmp_path: Path, silo_loop: str
) -> None:
    """Also with the silo on uvloop, which Ray runs silos on when it is installed (its
    ``start_tls`` on a server's stream hung every TLS handshake)."""
    cert, key = _self_signed(tmp_path)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    client_ssl = ssl.create_default_context(cafile=str(cert))
    loop_factory = (
        pytest.importorskip("uvloop").new_event_loop
        if silo_loop == "uvloop"
        else asyncio.new_event_loop
    )
    silo = SiloInThread(
        "silo-a",
        directory,
        WireOptions(SECRET, server_ssl=server_ssl),
        ["silo-a"],
        loop_factory=loop_factory,
    )
    client = Client(directory, WireOptions(SECRET, client_ssl=client_ssl), ["silo-a"])
    plain = Client(directory, WireOptions(SECRET), ["silo-a"], name="client-plain")
    try:
        assert await client.ref(BankAccount, "tls").deposit(3) == 3
        # (The TLS silo waits for a TLS hello in silence: the error says what it looks like.)
        with pytest.raises(SiloUnavailableError, match="not using TLS: does the silo"):
            await plain.ref(BankAccount, "tls").deposit(3)
        assert await client.ref(BankAccount, "tls").balance() == 3
    finally:
        await client.aclose()
        await plain.aclose()
        silo.stop()


async def test_cut_connections_fail_or_complete_each_call_once_and_the_client_reconnects(
    client: Client, silo: SiloInThread
) -> None:
    """A network fault mid-workload: the silo's sockets are closed under the calls."""
    completed: list[str] = []
    failed: list[str] = []
    cut = asyncio.Event()
    after_cut: list[str] = []
    stop = asyncio.Event()

    async def worker(index: int) -> None:
        ref = client.ref(Recorder, f"w{index}")
        serial = 0
        while not stop.is_set():
            tag = f"{index}-{serial}"
            serial += 1
            try:
                await ref.record(tag)
            except SiloUnavailableError:
                failed.append(tag)
                continue
            (after_cut if cut.is_set() else completed).append(tag)

    workers = [asyncio.ensure_future(worker(i)) for i in range(20)]
    try:
        await _until(lambda: len(completed) >= 300)
        assert await silo.drop_connections() >= 1
        cut.set()
        # The client redials by itself; calls complete again without anyone's help.
        await _until(lambda: len(after_cut) >= 300)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    entries: list[str] = []
    for index in range(20):
        entries += await client.ref(Recorder, f"w{index}").entries()
    started = [entry.removeprefix("start ") for entry in entries if entry.startswith("start ")]
    assert len(started) == len(set(started)), "a call was applied twice"
    assert set(completed + after_cut) <= set(started), "an acknowledged call is missing"
    assert client.transport.link_state("silo-a") is LinkState.UP


async def _until(condition: object, limit: float = 60.0) -> None:
    """Wait for ``condition()`` (a guard against hanging, not a timing assertion)."""
    assert callable(condition)
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_closing_a_client_mid_calls_fails_them_and_stops_its_tasks(
    directory: Directory, silo: SiloInThread
) -> None:
    client = Client(directory, WireOptions(SECRET), ["silo-a"])
    calls = [asyncio.ensure_future(client.ref(Recorder, f"c{i}").sleep(5.0)) for i in range(20)]
    await _until(lambda: silo.silo.calls_received >= 20)
    await client.aclose()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, RaygrainError) for o in outcomes), outcomes
    assert not client.transport._tasks


def _local_silo(fallback: LocalTransport) -> Silo:
    """A silo reached only through ``fallback`` (Ray's transport, in a deployment)."""
    membership = Membership()
    membership.set_status("silo-a", SiloStatus.ACTIVE)
    silo = Silo(
        "silo-a",
        ActorRegistry(app.ALL_ACTORS),
        MemoryStorage(),
        fallback,
        membership,
        SystemClock(),
        SiloOptions(),
    )
    fallback.register_silo("silo-a", silo)
    silo.start()
    return silo
