"""Connections that are not members, or that break the protocol, are dropped; the silo keeps
serving everyone else, and says so at most once per peer per minute, at warning."""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from raygrain.actors import ActorId, MalformedMessageError, decode, decode_error, encode
from raygrain.runtime.kernel import Request, Response, configure_logging, pack, unpack_batch
from raygrain.runtime.wire import WireOptions, dial
from tests.app import BankAccount
from tests.helpers import own_log_count, own_log_records
from tests.runtime.wire._silos import SECRET, Client, Directory, SiloInThread
from tests.runtime.wire.test_transport import _self_signed

Open = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def directory() -> Directory:
    return Directory()


@pytest.fixture
def silo(directory: Directory) -> Iterator[SiloInThread]:
    # A short handshake limit: the silent connection is dropped without a long wait.
    options = WireOptions(SECRET, handshake_timeout=0.5)
    running = SiloInThread("silo-a", directory, options, ["silo-a"])
    yield running
    running.stop()


@pytest.fixture
async def member(directory: Directory, silo: SiloInThread) -> AsyncIterator[Client]:
    connected = Client(directory, WireOptions(SECRET), ["silo-a"])
    assert await connected.ref(BankAccount, "member").deposit(1) == 1  # connected before
    yield connected
    await connected.aclose()


async def _silent(host: str, port: int) -> Open:
    return await asyncio.open_connection(host, port)  # and never says a word


async def _wrong_secret(host: str, port: int) -> Open:
    reader, writer = await asyncio.open_connection(host, port)
    challenge = await reader.readexactly(4 + 36)
    assert challenge[4:8] == b"RGW2"
    nonce = b"n" * 32
    forged = b"RGW2" + nonce + b"m" * 32 + b"client-evil"
    writer.write(struct.pack(">I", len(forged)) + forged)
    return reader, writer


async def _garbage(host: str, port: int) -> Open:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: silo\r\n\r\n")
    return reader, writer


async def _huge_frame_before_handshake(host: str, port: int) -> Open:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"\xff\xff\xff\xff")
    return reader, writer


async def _member_sends(host: str, port: int, body: bytes) -> Open:
    """A real member (it knows the secret) that then breaks the protocol."""
    connection = await dial(host, port, "client-rogue", "silo-a", WireOptions(SECRET))
    connection._writer.write(body)
    return connection._reader, connection._writer


async def _huge_frame_after_handshake(host: str, port: int) -> Open:
    return await _member_sends(host, port, b"\xff\xff\xff\xff")  # claims 4 GiB - 1


async def _bad_msgpack(host: str, port: int) -> Open:
    return await _member_sends(host, port, struct.pack(">I", 3) + b"\xc1\xc1\xc1")


async def _not_a_batch(host: str, port: int) -> Open:
    body = pack({"a": "map, not a list of messages"})
    return await _member_sends(host, port, struct.pack(">I", len(body)) + body)


BAD_PEERS: dict[str, Callable[[str, int], Awaitable[Open]]] = {
    "no_handshake": _silent,
    "wrong_secret": _wrong_secret,
    "garbage_bytes": _garbage,
    "frame_of_4_gib_before_handshake": _huge_frame_before_handshake,
    "frame_of_4_gib_after_handshake": _huge_frame_after_handshake,
    "malformed_msgpack_after_handshake": _bad_msgpack,
    "not_a_batch_after_handshake": _not_a_batch,
}


async def _dropped(reader: asyncio.StreamReader) -> None:
    """Read until the silo closes the connection (the guard only stops a hang)."""
    async with asyncio.timeout(30):
        while await reader.read(65536):
            pass


@pytest.mark.parametrize("bad", list(BAD_PEERS), ids=list(BAD_PEERS))
async def test_a_bad_peer_is_dropped_and_the_silo_serves_the_others(
    bad: str, silo: SiloInThread, member: Client
) -> None:
    host, port = silo.address
    reader, writer = await BAD_PEERS[bad](host, port)
    try:
        await _dropped(reader)
    finally:
        writer.close()
    # The member's connection was never touched, and new members still get in.
    assert await member.ref(BankAccount, "member").deposit(1) == 2
    newcomer = Client(silo_directory(silo), WireOptions(SECRET), ["silo-a"], name="client-new")
    try:
        assert await newcomer.ref(BankAccount, "member").deposit(1) == 3
    finally:
        await newcomer.aclose()
    assert silo.silo.calls_received == 3  # the bad peer's bytes reached no actor


def silo_directory(silo: SiloInThread) -> Directory:
    directory = Directory()
    directory.addresses[silo.name] = silo.address
    return directory


async def test_bad_peers_are_logged_once_a_minute_and_never_above_warning(
    silo: SiloInThread, member: Client, log: pytest.CaptureFixture[str]
) -> None:
    configure_logging("debug")
    host, port = silo.address
    for _ in range(3):
        for connect in BAD_PEERS.values():
            reader, writer = await connect(host, port)
            try:
                await _dropped(reader)
            finally:
                writer.close()
            writer.close()
    assert await member.ref(BankAccount, "member").deposit(1) == 2
    records = own_log_records(log.readouterr().err)
    about_peers = [
        r for r in records if r["event"] in ("wire_connection_refused", "wire_connection_dropped")
    ]
    assert len(about_peers) == 3 * len(BAD_PEERS)  # each one noted (at debug at least)
    warnings = [r for r in about_peers if r["level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["remote"] == "127.0.0.1"
    assert not [r for r in records if r["level"] in ("error", "critical", "exception")]


async def test_a_malformed_message_in_a_good_batch_is_answered_and_the_rest_delivered(
    silo: SiloInThread,
) -> None:
    """A member's batch with one bad envelope: that one gets MalformedMessageError (it names
    its caller), the good one its answer, and the connection stays."""
    host, port = silo.address
    connection = await dial(host, port, "client-rogue", "silo-a", WireOptions(SECRET))
    good = Request(7, ActorId("test.Chain", "k"), "ping", encode([[], {}]), "client-rogue", 5.0)
    bad = [0, 8, "test.Chain", "k", "ping", "payload is not bytes", "client-rogue", 5.0, (), 0]
    connection.send(pack([good.to_wire(), [*bad, None, -1]]))
    answers: dict[int, Response] = {}
    async with asyncio.timeout(30):
        while len(answers) < 2:
            for message in unpack_batch(await connection.receive()):
                assert isinstance(message, Response)
                answers[message.call_id] = message
    assert answers[7].ok and decode(answers[7].payload) == "pong from k"
    assert not answers[8].ok
    with pytest.raises(MalformedMessageError):
        raise decode_error(answers[8].payload)
    assert not connection.closed
    connection.close()


@pytest.mark.parametrize(
    "arguments",
    [encode(5), encode(None), encode([1, 2, 3]), encode("abc")],
    ids=["int", "nil", "triple", "text"],
)
async def test_a_request_whose_arguments_are_no_pair_is_answered_and_the_link_stays(
    silo: SiloInThread, arguments: bytes
) -> None:
    """Arguments that are msgpack but not ``[args, kwargs]`` (a member's bug, another
    version): that call gets ``MalformedMessageError``, the rest of its batch is served and
    the connection stays (it was dropped, failing every other call on it)."""
    host, port = silo.address
    connection = await dial(host, port, "client-rogue", "silo-a", WireOptions(SECRET))
    target = ActorId("test.Chain", "k")
    bad = Request(8, target, "ping", arguments, "client-rogue", 5.0)
    good = Request(7, target, "ping", encode([[], {}]), "client-rogue", 5.0)
    connection.send(pack([bad.to_wire(), good.to_wire()]))
    answers: dict[int, Response] = {}
    async with asyncio.timeout(30):
        while len(answers) < 2:
            for message in unpack_batch(await connection.receive()):
                assert isinstance(message, Response)
                answers[message.call_id] = message
    assert answers[7].ok and decode(answers[7].payload) == "pong from k"
    assert not answers[8].ok
    assert isinstance(decode_error(answers[8].payload), MalformedMessageError)
    assert not connection.closed
    connection.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_connections_that_never_finish_their_handshake_are_capped(
    directory: Directory, tmp_path: Path, tls: bool, log: pytest.CaptureFixture[str]
) -> None:
    """Dialers that connect and never finish (plain or TLS) each hold a file descriptor of
    the silo for the handshake's time: past ``max_handshakes`` the oldest is dropped, so a
    flood of them cannot take every descriptor (it did: a silo at its descriptor limit
    accepted no member). Members still get in."""
    server_ssl = None
    if tls:
        cert, key = _self_signed(tmp_path)
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(cert, key)
    options = WireOptions(SECRET, server_ssl=server_ssl, handshake_timeout=60.0, max_handshakes=4)
    silo = SiloInThread("silo-a", directory, options, ["silo-a"])
    opened = [await _silent(*silo.address) for _ in range(6)]
    try:
        for reader, _ in opened[:2]:  # the two oldest went for the newest
            await _dropped(reader)
        client_ssl = None
        if tls:
            client_ssl = ssl.create_default_context(cafile=str(cert))
        member = Client(directory, WireOptions(SECRET, client_ssl=client_ssl), ["silo-a"])
        try:
            assert await member.ref(BankAccount, "capped").deposit(1) == 1
        finally:
            await member.aclose()
        assert silo.transport.refused >= 2
    finally:
        for _, writer in opened:
            writer.close()
        silo.stop()
    records = own_log_records(log.readouterr().err)
    assert any("max_handshakes" in r.get("reason", "") for r in records), records


async def test_a_tls_silo_counts_and_logs_a_peer_that_does_not_speak_tls(
    directory: Directory, tmp_path: Path, log: pytest.CaptureFixture[str]
) -> None:
    """A refusal in the TLS handshake is a refusal like any other: counted and logged (it
    was asyncio's, unseen)."""
    cert, key = _self_signed(tmp_path)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    silo = SiloInThread("silo-a", directory, WireOptions(SECRET, server_ssl=server_ssl), ["silo-a"])
    try:
        reader, writer = await _garbage(*silo.address)
        try:
            await _dropped(reader)
        finally:
            writer.close()
        async with asyncio.timeout(30):  # (its silo notes the refusal after the drop)
            while silo.transport.refused == 0:
                await asyncio.sleep(0.01)
    finally:
        silo.stop()
    assert own_log_count(log.readouterr().err, "wire_connection_refused") == 1
