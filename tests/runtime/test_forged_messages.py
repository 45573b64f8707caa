"""Responses and errors that come from a peer cannot be forged into a caller's result.

Call ids used to count up from 1, so any process that could reach a caller could answer its
calls (a forged "ok" committed a debit without its credit); and decoding an error imported
whatever module the message named.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from raygrain.actors import (
    ActorId,
    MalformedMessageError,
    RemoteActorError,
    decode,
    decode_error,
    encode,
)
from raygrain.runtime import Cluster
from raygrain.runtime.kernel import (
    MembershipView,
    Request,
    Response,
    SiloOptions,
    SiloStatus,
    pack_batch,
    unpack_batch,
)
from raygrain.runtime.ray_host._host import SiloHostImpl
from raygrain.storage import MemoryStorage
from tests import app
from tests.app import GATES, Recorder, gate


async def test_forged_responses_for_every_small_call_id_answer_no_call(cluster: Cluster) -> None:
    recorder = cluster.get(Recorder, "forged")
    pending = asyncio.ensure_future(recorder.wait_for("forged-gate"))
    for _ in range(10_000):  # until the call is in its turn, waiting on the gate
        if "forged-gate" in GATES:
            break
        await asyncio.sleep(0)
    assert "forged-gate" in GATES, "the call never reached its turn"
    caller = cluster._caller  # (white-box: the client endpoint a peer would answer)
    forged = encode("forged")
    for call_id in range(0, 100_000):
        caller.deliver_response(Response(call_id, True, forged))
    assert not pending.done(), "a forged response completed the call"
    gate("forged-gate").set()
    assert await pending == "released"


def test_decoding_an_error_never_imports_the_module_it_names() -> None:
    # In a fresh interpreter, so that the module is certainly not imported yet.
    script = (
        "import sys\n"
        "from raygrain.actors import encode, decode_error\n"
        "blob = encode(['tabnanny', 'NannyNag', encode([1, 'x', 'y']), 'm', 'w', 't'])\n"
        "error = decode_error(blob)\n"
        "print(type(error).__name__, 'tabnanny' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["RemoteActorError", "False"]


def test_an_error_of_an_imported_module_keeps_its_type() -> None:
    blob = encode(["asyncio", "InvalidStateError", encode(["late"]), "late", "w", "t"])
    error = decode_error(blob)
    assert type(error) is asyncio.InvalidStateError and error.args == ("late",)
    blob = encode(["asyncio", "no_such_thing", encode([]), "m", "w", "t"])
    assert isinstance(decode_error(blob), RemoteActorError)


async def test_a_request_whose_arguments_are_no_pair_fails_alone_on_ray() -> None:
    """(A silo's Ray actor) a batch with a request whose arguments are msgpack but not
    ``[args, kwargs]``: that call is answered ``MalformedMessageError`` and the others are
    delivered (the batch's Ray call failed, and with it every call in the batch)."""
    host = SiloHostImpl(
        "silo-a", "node", list(app.ALL_ACTORS), MemoryStorage(), SiloOptions(), None, None
    )
    host.membership.update(MembershipView(1, (("silo-a", SiloStatus.ACTIVE),)))
    host.silo.start()
    target = ActorId("test.Chain", "k")
    client = "client-0123"
    batch = pack_batch(
        [
            Request(8, target, "ping", encode(5), client, 5.0),
            Request(7, target, "ping", encode([[], {}]), client, 5.0),
        ]
    )
    try:
        answers = {m.call_id: m for m in unpack_batch(await host.receive_batch(batch, client))}
        while len(answers) < 2:  # (the rest come by the client's poll)
            answers.update((m.call_id, m) for m in unpack_batch(await host.poll(client)))
    finally:
        await host.silo.aclose()
        await host.transport.aclose()
    assert isinstance(answers[7], Response) and decode(answers[7].payload) == "pong from k"
    assert isinstance(decode_error(answers[8].payload), MalformedMessageError)
