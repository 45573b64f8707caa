"""Faults on the direct plane between real sockets on 127.0.0.1: a broken silo-to-silo
connection under forwarded calls, and peers that do not read what is written to them."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import sys
import threading
from typing import Any

import pytest

from raygrain.actors import (
    ActorCallTimeout,
    ActorId,
    ActorOverloadedError,
    MessageTooLargeError,
    SiloUnavailableError,
    encode,
)
from raygrain.runtime.kernel import (
    Membership,
    Request,
    Response,
    SiloStatus,
    pack_batch,
    unpack_batch,
)
from raygrain.runtime.streams._observers import ObserverRegistry
from raygrain.runtime.wire import (
    LinkState,
    WireOptions,
    accept_handshake,
    offer_handshake,
    read_frame,
    write_frame,
)
from raygrain.runtime.wire._connection import PeerLog
from raygrain.runtime.wire._in_flight import InFlight
from raygrain.runtime.wire._outbox import Outboxes
from tests.app import GATES, Chain, Recorder
from tests.helpers import own_log_count
from tests.runtime.wire._silos import SECRET, Client, Directory, SiloInThread

# Small limits, so that a few MiB show the bound: the socket's buffer, a frame, the backlog.
TIGHT = WireOptions(
    SECRET, write_buffer_bytes=64 * 1024, max_frame_bytes=256 * 1024, max_backlog_bytes=1 << 20
)
HELD_AT_MOST = TIGHT.write_buffer_bytes + TIGHT.max_frame_bytes + TIGHT.backlog_limit
PAYLOAD = "x" * 60_000


def _keys_owned_by(
    silo: str, silos: list[str], type_name: str = "test.Recorder", count: int = 1
) -> list[str]:
    membership = Membership()
    for name in silos:
        membership.set_status(name, SiloStatus.ACTIVE)
    keys = (f"k{i}" for i in itertools.count())
    owned = (key for key in keys if membership.ring.owner(ActorId(type_name, key)) == silo)
    return list(itertools.islice(owned, count))


def _key_owned_by(silo: str, silos: list[str], type_name: str = "test.Recorder") -> str:
    return _keys_owned_by(silo, silos, type_name)[0]


async def test_a_forwarded_call_fails_at_once_when_the_silo_to_silo_connection_breaks() -> None:
    """The client routes by an older view (silo-a alone); silo-a forwards the call to silo-b,
    its owner by the current view, and the connection between the silos breaks while the call
    runs there. Whether it ran is unknown: the caller gets ``SiloUnavailableError`` now, not
    ``ActorCallTimeout`` at its deadline."""
    names = ["silo-a", "silo-b"]
    directory = Directory()
    silo_a, silo_b = (SiloInThread(name, directory, WireOptions(SECRET), names) for name in names)
    client = Client(directory, WireOptions(SECRET), ["silo-a"])  # an older view
    client.transport.connect("silo-b")  # answers come straight from the silo that ran the call
    key = _key_owned_by("silo-b", names)
    ref = client.ref(Recorder, key)
    try:
        call = asyncio.ensure_future(ref.wait_for("forwarded-cut"))
        await _until(lambda: silo_b.silo.calls_received >= 1)  # running on silo-b (forwarded)
        assert silo_a.silo.calls_received >= 1
        await silo_a.run_async(_close_link(silo_a, "silo-b"))
        with pytest.raises(SiloUnavailableError, match="may or may not have run"):
            await call
        # The silos reconnect; the call itself was never re-sent.
        await ref.release("forwarded-cut")
        assert await ref.wait_for("forwarded-cut") == "released"
    except ActorCallTimeout:
        pytest.fail("the forwarded call waited for its deadline")
    finally:
        await client.aclose()
        silo_a.stop()
        silo_b.stop()


async def test_a_silo_that_does_not_read_holds_its_callers_memory_bounded() -> None:
    """A silo that stops reading (a stuck process, a slow network): its caller writes while the
    socket takes it, then holds what follows in a bounded backlog, and past it refuses calls
    with ``ActorOverloadedError`` (not sent) instead of buffering without bound. When the silo
    reads again, every call that was not refused is delivered and answered."""
    reading = asyncio.Event()
    received: list[int] = []

    async def stuck_silo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_handshake(reader, writer, SECRET, "silo-a")
        await reading.wait()
        while True:
            requests = unpack_batch(await read_frame(reader, TIGHT.max_frame_bytes))
            received.extend(r.call_id for r in requests)
            answers = [Response(r.call_id, True, encode("ok")) for r in requests]
            write_frame(writer, pack_batch(answers))  # type: ignore[arg-type]

    server = await asyncio.start_server(stuck_silo, "127.0.0.1", 0)
    directory = Directory()
    directory.addresses["silo-a"] = ("127.0.0.1", server.sockets[0].getsockname()[1])
    client = Client(directory, TIGHT, ["silo-a"])
    calls: list[asyncio.Future[Any]] = []
    held = 0
    try:
        for index in itertools.count():
            calls.append(asyncio.ensure_future(client.ref(Chain, f"k{index}").echo(PAYLOAD)))
            await asyncio.sleep(0)
            link = client.transport._links["silo-a"]  # (white-box: what the writer holds)
            if link.connection is not None:
                held = max(held, link.connection.buffered_bytes())
            if calls[-1].done() or index == 5000:
                break
        with pytest.raises(ActorOverloadedError, match="not reading fast enough.*was not sent"):
            await calls[-1]
        assert held <= HELD_AT_MOST
        reading.set()
        sent = calls[:-1]
        outcomes = await asyncio.gather(*sent, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, ActorOverloadedError)]
        assert outcomes.count("ok") == len(received) == len(sent) - len(refused)
    finally:
        for call in calls:
            call.cancel()
        await client.aclose()
        server.close()


async def test_a_client_that_does_not_read_its_answers_is_cut_off(log: Any) -> None:
    """A client that sends calls and never reads the answers: the silo keeps its backlog of
    answers bounded and closes the connection once past it; it goes on serving others."""
    directory = Directory()
    silo = SiloInThread("silo-a", directory, TIGHT, ["silo-a"])
    count = 512  # 30 MiB of answers: more than the sockets' buffers and the backlog
    try:
        reader, writer = await asyncio.open_connection(*silo.address)
        await offer_handshake(reader, writer, SECRET, "client-slow")
        payload = encode([[PAYLOAD], {}])
        requests = [
            Request(i, ActorId("test.Chain", f"s{i}"), "echo", payload, "client-slow", 30.0)
            for i in range(count)
        ]
        answered = 0
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            for start in range(0, count, 4):  # (cut off while still writing, as like as not)
                write_frame(writer, pack_batch(requests[start : start + 4]))  # type: ignore[arg-type]
                await writer.drain()
            async with asyncio.timeout(60):  # (a guard: an answer that never comes)
                while True:
                    answered += len(unpack_batch(await read_frame(reader, 1 << 30)))
        assert answered < count
        writer.close()
        client = Client(directory, WireOptions(SECRET), ["silo-a"])
        try:
            assert await client.ref(Chain, "other").echo("still serving") == "still serving"
        finally:
            await client.aclose()
    finally:
        silo.stop()
    assert own_log_count(log.readouterr().err, "wire_peer_not_reading") == 1


async def test_a_silo_that_stops_reading_its_answers_sees_its_calls_fail_not_hang() -> None:
    """silo-a's actors call an actor on silo-b for large answers, and silo-a stops reading
    (its loop is blocked) while silo-b answers. silo-b keeps its backlog bounded and cuts the
    connection the answers are on. That is the connection silo-a's calls came on, so silo-a
    sees it break and fails them at once (or they completed): none waits for its deadline.
    (Were the answers on silo-b's own link to silo-a, the cut would lose them unnoticed.)"""
    names = ["silo-a", "silo-b"]
    directory = Directory()
    silo_a, silo_b = (SiloInThread(name, directory, TIGHT, names) for name in names)
    client = Client(directory, TIGHT, names)
    on_a = _keys_owned_by("silo-a", names, "test.Chain", count=40)
    holder = client.ref(Chain, _key_owned_by("silo-b", names, "test.Chain"))
    gate_keeper = client.ref(Recorder, _key_owned_by("silo-b", names))
    unblock = threading.Event()
    try:
        # silo-b gets a link of its own to silo-a (it calls an actor there).
        assert await holder.relay(client.ref(Chain, on_a[0]), "ping") == f"pong from {on_a[0]}"
        # The holder on silo-b is busy until the gate opens; the calls for large answers
        # queue behind it.
        busy = asyncio.ensure_future(holder.relay(gate_keeper, "wait_for", "answers-held"))
        await _until(lambda: "answers-held" in GATES)
        calls = [
            asyncio.ensure_future(client.ref(Chain, key).relay(holder, "make_bytes", 200_000))
            for key in on_a
        ]
        await _until(lambda: silo_b.silo.calls_received >= 3 + len(on_a))
        blocked = threading.Event()
        silo_a.loop.call_soon_threadsafe(lambda: (blocked.set(), unblock.wait(60)))
        assert await asyncio.to_thread(blocked.wait, 30)  # silo-a reads nothing from now on
        await gate_keeper.release("answers-held")  # silo-b answers 40 x 200 kB to silo-a
        await _until(lambda: silo_b.transport.cut_off >= 1, limit=30)
        unblock.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await busy
    finally:
        unblock.set()
        await client.aclose()
        silo_a.stop()
        silo_b.stop()
    timeouts = [o for o in outcomes if isinstance(o, ActorCallTimeout)]
    assert not timeouts, f"{len(timeouts)} of {len(calls)} calls waited for their deadline"
    assert all(isinstance(o, (bytes, SiloUnavailableError)) for o in outcomes), outcomes


async def _close_link(silo: SiloInThread, destination: str) -> None:
    """(On the silo's loop) close its connection to ``destination``: a network fault between
    the two silos only."""
    link = silo.transport._links[destination]  # (white-box: one connection out of several)
    assert link.connection is not None
    link.connection.close()


async def _until(condition: object, limit: float = 60.0) -> None:
    """Wait for ``condition()`` (a guard against hanging, not a timing assertion)."""
    assert callable(condition)
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


async def test_an_answer_over_the_frame_cap_fails_its_call_at_once() -> None:
    """An answer that no frame can carry (the wire's cap below the kernel's message limit)
    is replaced by ``MessageTooLargeError`` for its caller (it was dropped: the caller waited
    for its deadline and got ``ActorCallTimeout``)."""
    directory = Directory()
    silo = SiloInThread("silo-a", directory, TIGHT, ["silo-a"])
    client = Client(directory, TIGHT, ["silo-a"])
    try:
        with pytest.raises(MessageTooLargeError, match="max_frame_bytes"):
            await client.ref(Chain, "big").make_bytes(2 * TIGHT.max_frame_bytes)
        assert await client.ref(Chain, "big").ping() == "pong from big"  # the link stayed
    finally:
        await client.aclose()
        silo.stop()


class _RecordingFallback:
    """A fallback transport (Ray's, in a deployment) that only counts what it is given."""

    def __init__(self) -> None:
        self.replies = 0

    def send(self, destination: str, request: Request) -> None:
        raise AssertionError("no request goes by the fallback here")

    def reply(self, destination: str, response: Response) -> None:
        self.replies += 1


async def test_answers_held_for_a_client_that_hung_up_are_let_go() -> None:
    """A client that does not read, then hangs up: the answers the silo held for it go with
    the connection (the client fails those calls itself: their connection broke). They went
    to the fallback (on Ray: the client's mailbox on the silo, kept a minute for a client
    that never polls it, up to 64 MiB a client), so a slow reader's answers outlived it."""
    options = WireOptions(SECRET, write_buffer_bytes=64 * 1024, max_backlog_bytes=1 << 30)
    directory = Directory()
    fallback = _RecordingFallback()
    silo = SiloInThread("silo-a", directory, options, ["silo-a"], fallback=fallback)  # type: ignore[arg-type]
    count = 512  # 30 MiB of answers: more than the sockets' buffers
    try:
        reader, writer = await asyncio.open_connection(*silo.address)
        await offer_handshake(reader, writer, SECRET, "client-slow")
        payload = encode([[PAYLOAD], {}])
        requests = [
            Request(i, ActorId("test.Chain", f"s{i}"), "echo", payload, "client-slow", 30.0)
            for i in range(count)
        ]
        for start in range(0, count, 4):
            write_frame(writer, pack_batch(requests[start : start + 4]))  # type: ignore[arg-type]
        await writer.drain()
        held = 0

        async def answered() -> bool:  # (on the silo's loop) every answer written or held
            nonlocal held
            [connection] = silo.transport._connections  # (white-box)
            held = len(connection.backlog or ())
            return silo.transport.messages_sent + held == count

        async with asyncio.timeout(60):  # (a guard)
            while not await silo.run_async(answered()):
                await asyncio.sleep(0.01)
        assert held > 0  # (else this tests nothing)
        writer.transport.abort()
        await _until(lambda: not silo.transport._connections)
    finally:
        silo.stop()
    assert fallback.replies == 0


def _can_partition() -> bool:
    if not all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip")):
        return False
    probe = ["unshare", "-rn", "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_partition(), reason="needs user and network namespaces, veth")
def test_a_silo_lets_go_of_a_client_that_vanished_without_a_word() -> None:
    """A client's packets stop arriving, with no FIN or RST (its machine lost, a partition, a
    NAT that forgot the connection): the silo notices by TCP keepalive and lets the
    connection go (it held it for ever, a descriptor per vanished client). Two network
    namespaces joined by a veth pair, then the client's packets dropped
    (tests/runtime/wire/_partition.py)."""
    result = subprocess.run(
        ["unshare", "-rn", "--fork", sys.executable, "-m", "tests.runtime.wire._partition"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "let go" in result.stdout


async def test_a_notice_the_client_cannot_take_leaves_its_connection_and_calls_alone() -> None:
    """A silo (a bug, another version) pushes an observer notice whose body is not
    ``[observer, method, args]`` in the same frame as an answer: the client's observers
    cannot take it, which raised out of the connection's reader, dropped it and failed every
    call on it; now the notice alone is left out (logged) and the answer delivered."""

    async def silo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_handshake(reader, writer, SECRET, "silo-a")
        [request] = unpack_batch(await read_frame(reader, 1 << 20))
        notice = Response(-1, True, encode(5))
        write_frame(writer, pack_batch([notice, Response(request.call_id, True, encode("ok"))]))
        await reader.read()  # (until the client goes)
        writer.close()

    server = await asyncio.start_server(silo, "127.0.0.1", 0)
    directory = Directory()
    directory.addresses["silo-a"] = ("127.0.0.1", server.sockets[0].getsockname()[1])
    client = Client(directory, WireOptions(SECRET), ["silo-a"])
    ObserverRegistry.of(client.caller)  # (a client with observers takes notices)
    try:
        assert await client.ref(Chain, "k").echo("x") == "ok"
        assert client.transport.link_state("silo-a") is LinkState.UP
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


class _FakeConnection:
    """What Outboxes reads of a connection, recording the frames it is handed."""

    closed = False
    backlog = None
    outbound = False
    peer = "client-1"

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, blob: bytes) -> None:
        self.frames.append(blob)

    def congested(self) -> bool:
        return False


def test_a_notice_over_the_frame_cap_is_dropped_not_sent_as_an_error_answer() -> None:
    """An observer notice (call id < 0) that no frame can carry has no caller to tell: it is
    dropped with the sender's warning, not replaced by an error record the observers' endpoint
    then refuses as a malformed notice (while an answer's caller gets MessageTooLargeError)."""
    outboxes = Outboxes(
        TIGHT, InFlight("silo-a"), PeerLog(), lambda c: None, lambda r, e: None, lambda c: None
    )
    connection = _FakeConnection()
    big = encode(["observer", "changed", ["x" * (2 * TIGHT.max_frame_bytes)]])
    outboxes._write(connection, [Response(-1, True, big)])  # type: ignore[arg-type]
    assert connection.frames == []
    outboxes._write(connection, [Response(7, True, big)])  # type: ignore[arg-type]
    [answer] = unpack_batch(connection.frames[0])
    assert isinstance(answer, Response) and answer.call_id == 7 and not answer.ok
